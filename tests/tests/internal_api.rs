//! Nobody inside the box gets in: every RPC of every service, walked from
//! the proto descriptors (so an RPC added later is covered without
//! touching this file), called the way an attacker with a shell on the host
//! would — a raw gRPC client that is not ours, empty messages, no
//! credentials, or the wrong ones — answers UNAUTHENTICATED. And
//! `authrelay serve` exposes no internal API on any port at all.

use std::net::SocketAddr;
use std::time::Duration;

use authrelay_e2e::*;
use bytes::{Buf, BufMut};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Bytes in, bytes out: messages as the descriptors say, without our
/// generated client code.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

struct Rpc {
    path: String,
    service: String,
    client_streaming: bool,
}

/// Every RPC in the protos authrelay-proto was built from.
fn every_rpc() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(authrelay_proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = Vec::new();
    for file in set.file {
        for svc in &file.service {
            let service = format!("{}.{}", file.package(), svc.name());
            for m in &svc.method {
                out.push(Rpc {
                    path: format!("/{service}/{}", m.name()),
                    service: service.clone(),
                    client_streaming: m.client_streaming(),
                });
            }
        }
    }
    out
}

async fn call(addr: SocketAddr, rpc: &Rpc, metadata: &[(&'static str, String)]) -> Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{}: connect {addr}: {e}", rpc.path));
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path: http::uri::PathAndQuery = rpc.path.parse().unwrap();
    fn with_md<T>(mut req: tonic::Request<T>, md: &[(&'static str, String)]) -> tonic::Request<T> {
        for (k, v) in md {
            req.metadata_mut().insert(*k, v.parse().unwrap());
        }
        req
    }
    let res = if rpc.client_streaming {
        grpc.client_streaming(
            with_md(
                tonic::Request::new(tokio_stream::iter(vec![Vec::<u8>::new()])),
                metadata,
            ),
            path,
            RawCodec,
        )
        .await
        .map(|_| ())
    } else {
        grpc.unary(
            with_md(tonic::Request::new(Vec::new()), metadata),
            path,
            RawCodec,
        )
        .await
        .map(|_| ())
    };
    match res {
        Ok(()) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[test]
fn every_rpc_of_every_service_refuses_a_caller_without_the_right_credentials() {
    let dir = scratch("internal-api");
    let redis = Redis::start(&dir);
    let mut stack = Stack::start(&dir, &redis, StackOptions::default());
    let addr = |var: &str| -> SocketAddr {
        stack
            .endpoint(var)
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    };
    let hosts = [
        (
            "authrelay.sasl.v1.SaslAuth",
            addr("AUTHRELAY__ENDPOINTS__SASL_AUTH"),
        ),
        (
            "authrelay.credentials.v1.CredentialStore",
            addr("AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE"),
        ),
        (
            "authrelay.queue.v1.RelayQueue",
            addr("AUTHRELAY__ENDPOINTS__RELAY_QUEUE"),
        ),
        (
            "authrelay.frontend.v1.Sessions",
            stack.frontend.addr("grpc admin"),
        ),
        (
            "authrelay.frontend.v1.AccountLimits",
            stack.frontend.addr("grpc admin"),
        ),
    ];
    let admin = std::fs::read_to_string(token_file(&dir, "admin.token")).unwrap();
    let internal = std::fs::read_to_string(token_file(&dir, "internal.token")).unwrap();
    let rpcs = every_rpc();
    assert!(rpcs.len() >= 15, "the descriptors list {} RPCs", rpcs.len());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for rpc in &rpcs {
            let host = hosts
                .iter()
                .find(|(s, _)| *s == rpc.service)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: a new service — add where it listens to this test",
                        rpc.service
                    )
                })
                .1;
            let wrong = "not-the-token-0123456789abcdef".to_owned();
            for (what, md) in [
                ("no credentials", vec![]),
                (
                    "wrong tokens",
                    vec![
                        ("authorization", format!("Bearer {wrong}")),
                        ("x-authrelay-internal-token", wrong.clone()),
                    ],
                ),
            ] {
                assert_eq!(
                    call(host, rpc, &md).await,
                    Code::Unauthenticated,
                    "{} with {what}",
                    rpc.path
                );
            }
            // Each token opens only its own kind of RPC: the admin token
            // is no way onto the auth path, nor the internal one into
            // user management.
            let as_admin = call(host, rpc, &[("authorization", format!("Bearer {admin}"))]).await;
            let as_service = call(
                host,
                rpc,
                &[("x-authrelay-internal-token", internal.clone())],
            )
            .await;
            let caller = authrelay_grpc_tls::guard::caller_for(&rpc.path);
            use authrelay_grpc_tls::guard::Caller;
            let (admin_ok, service_ok) = match caller {
                Caller::Anyone => (true, true),
                Caller::Service => (false, true),
                Caller::Admin => (true, false),
                Caller::ServiceOrAdmin => (true, true),
            };
            assert_eq!(
                as_admin != Code::Unauthenticated,
                admin_ok,
                "{} with the admin token: {as_admin:?}",
                rpc.path
            );
            assert_eq!(
                as_service != Code::Unauthenticated,
                service_ok,
                "{} with the internal token: {as_service:?}",
                rpc.path
            );
        }
    });
    // The refusals are logged by the service that refused.
    assert!(stack.creds.log_text().contains("call refused"));
}

/// `authrelay serve`: the quick start binds the SMTP listeners and nothing
/// else on the network; its admin sockets are in a 0700 directory; and
/// even there the internal APIs (GetSecret, Enqueue) answer no one.
#[test]
fn serve_exposes_no_internal_api() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("serve-closed");
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[frontend]\nadmin_listen = \"127.0.0.1:0\"\n\
             [[frontend.listeners]]\naddress = \"127.0.0.1:0\"\nrole = \"submission\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(bin("authrelay"));
    cmd.arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info");
    let mut serve = Proc::spawn("authrelay serve", cmd, dir.join("serve.log"));
    let submission = serve.addr("smtp submission");
    // Every TCP port the process listens on (from /proc: its sockets'
    // inodes matched against the kernel's listening-socket table).
    let pid = serve.pid();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // state 0A = LISTEN; field 9 = inode
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = u16::from_str_radix(f[1].rsplit(':').next().unwrap(), 16).unwrap();
                ports.push(port);
            }
        }
    }
    assert_eq!(
        ports,
        vec![submission.port()],
        "serve listens on TCP ports {ports:?}; only the SMTP listener may be there"
    );
    let run = dir.join("data/run");
    let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", run.display());

    // The owner's admin command works over the socket, found on its own.
    let (ok, _, err) = run_authrelay(
        &config,
        &[],
        &["user", "add", "--realm", "example.org", "alice"],
        "s3cret-alice-pw\n",
    );
    assert!(ok, "{err}");
    // GetSecret on that very socket: refused even to the owner.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let code = rt.block_on(async {
        let sock = run.join("credential-store.sock");
        let channel = tonic::transport::Endpoint::from_static("http://serve.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut client =
            authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient::new(
                channel,
            );
        client
            .get_secret(authrelay_proto::credentials::v1::GetSecretRequest {
                name: "alice".into(),
                realm: "example.org".into(),
                family: "digest-md5".into(),
            })
            .await
            .map(|_| ())
            .err()
            .map(|s| s.code())
    });
    assert_eq!(code, Some(Code::Unauthenticated));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(15)).is_some());
}
