//! Co-located services over Unix-domain sockets: sasl-auth, credential-store
//! and relay-queue listen on sockets beside their TCP ports, every client
//! (frontend, sasl-auth, the admin CLI) dials `unix:` endpoints, and Redis is
//! reached through its socket. If any hop silently fell back to nothing,
//! AUTH would answer 454 and DATA 451: these tests log in, relay a message
//! and read the admin view through the sockets only.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use authrelay_e2e::*;
use serde_json::json;

const PASSWORD: &str = "unix-Socket-Secret-7";

/// The usual stack, co-located: every hop on a Unix socket. The CLI adds
/// the user through credential-store's socket too.
fn unix_stack(name: &str) -> (std::path::PathBuf, Redis, Sink, Stack) {
    let opts = StackOptions {
        unix_sockets: true,
        ..Default::default()
    };
    standard_stack_with(name, opts, PASSWORD)
}

#[test]
fn auth_and_relay_work_with_every_hop_on_unix_sockets() {
    let (dir, _redis, sink, stack) = unix_stack("unix-sockets");
    for name in ["sasl-auth", "credential-store", "relay-queue"] {
        let meta = std::fs::metadata(dir.join(format!("{name}.sock")))
            .unwrap_or_else(|e| panic!("{name}.sock: {e}"));
        assert!(meta.file_type().is_socket(), "{name}.sock is a socket");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o660,
            "{name}.sock is 0660"
        );
    }
    for (k, v) in &stack.endpoints {
        if k.starts_with("AUTHRELAY__ENDPOINTS__") {
            assert!(v.starts_with("unix:/"), "{k} = {v}");
        }
    }
    // One-step (PLAIN) and two-step (CRAM-MD5) mechanisms, then a message
    // through relay-queue's socket to the sink.
    for (i, mech) in ["PLAIN", "CRAM-MD5"].iter().enumerate() {
        let res = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": mech,
                   "user": "test@mailserver.foo.com", "from": "test@mailserver.foo.com",
                   "to": [format!("friend{i}@outside.example")],
                   "body": format!("Subject: over unix sockets {i}\r\n\r\nhello\r\n")}),
            PASSWORD,
        );
        assert_eq!(res["auth"][0], 235, "{mech}: {res}\n{}", stack.logs());
        assert_eq!(res["send"]["ok"], true, "{mech}: {res}\n{}", stack.logs());
        let wrong = smtplib(
            json!({"port": stack.submission.port(), "starttls": true, "mech": mech,
                   "user": "test@mailserver.foo.com"}),
            "not-the-password",
        );
        assert_eq!(wrong["auth"][0], 535, "{mech}: {wrong}");
    }
    let msgs = sink.wait_messages(2, Duration::from_secs(20));
    assert_eq!(msgs.len(), 2, "logs:\n{}", stack.logs());
    let (ok, out, err) = stack.authrelay(&["user", "list"], "");
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("user: test realm: mailserver.foo.com mech: CRAM-MD5"),
        "{out}"
    );
}

#[test]
fn a_stale_socket_is_replaced_but_any_other_file_is_refused() {
    let dir = scratch("unix-stale");
    let config = dir.join("cs.toml");
    let sock = dir.join("cs.sock");
    // A socket left by a killed process: bound, then its listener dropped.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[sasl]\n# No Redis here: no sasl-auth cache to tell of changes.\nsecret_cache_size = 0\n[credential_store]\nlisten = \"127.0.0.1:0\"\nlisten_unix = \"{}\"\n{}",
            dir.join("data").display(),
            sock.display(),
            tokens_toml(&dir)
        ),
    )
    .unwrap();
    let mut cs = spawn_service("credential-store", &config, &dir, &[]);
    let line = cs.wait_line("(grpc unix)");
    assert!(line.contains(&sock.display().to_string()), "{line}");
    cs.kill();

    // A regular file where the socket should be: refused, named, untouched.
    std::fs::remove_file(&sock).ok();
    std::fs::write(&sock, "precious").unwrap();
    let out = std::process::Command::new(bin("credential-store"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("credential_store.listen_unix") && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "precious");
}
