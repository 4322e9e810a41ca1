//! Clients a test drives: a raw line-level SMTP client for exact reply
//! codes, Python's smtplib, our own SASL client over raw SMTP, and a gRPC
//! channel.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::{ClientCert, support, tls_client};

/// Run tests/support/client.py (Python's smtplib) with a JSON plan; the
/// password travels in the environment, never in argv.
pub fn smtplib(plan: serde_json::Value, password: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(support("client.py"))
        .arg(plan.to_string())
        .env("SMTP_PASSWORD", password)
        .output()
        .expect("python3 must be installed (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "client.py gave no JSON:\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A raw line-level SMTP client for exact reply codes.
pub struct Raw {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, _) = r.read();
        assert_eq!(code, 220, "greeting");
        r
    }

    /// One reply: (code, full text).
    pub fn read(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, text);
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap_or(0), text);
            }
        }
    }

    pub fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(line);
        self.read()
    }

    /// Connect and send `preamble` (e.g. a PROXY header) before reading the
    /// greeting. Returns the greeting code with the connection.
    pub fn connect_with_preamble(addr: SocketAddr, preamble: &[u8]) -> (Raw, u16) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(preamble).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, _) = r.read();
        (r, code)
    }

    /// Hand the socket over for STARTTLS (after the 220 reply).
    pub fn into_tls(self) -> tls_client::TlsRaw {
        drop(self.reader);
        tls_client::TlsRaw::handshake(self.stream)
    }

    /// STARTTLS handover presenting a client certificate.
    pub fn into_tls_with_client_cert(self, cert: &ClientCert) -> tls_client::TlsRaw {
        drop(self.reader);
        tls_client::TlsRaw::handshake_with_client_cert(
            self.stream,
            vec![cert.cert_der.clone()],
            cert.key_der.clone(),
        )
    }

    /// Connect from a given local address (e.g. 127.0.0.2) to `addr`.
    pub fn connect_from(local: &str, addr: SocketAddr) -> Option<(Raw, u16, String)> {
        let stream = bind_connect(local, addr)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut r = Raw { stream, reader };
        let (code, text) = r.read();
        Some((r, code, text))
    }
}

pub fn b64(s: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A TCP connection from a chosen loopback source address (std has no
/// bind-before-connect; tokio's TcpSocket does).
fn bind_connect(local: &str, addr: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(format!("{local}:0").parse().ok()?).ok()?;
        let s = sock.connect(addr).await.ok()?;
        s.into_std().ok()
    })
    .and_then(|s| {
        s.set_nonblocking(false).ok()?;
        Some(s)
    })
}

/// AUTH over a plain-text SMTP connection with our own client mechanism
/// (for mechanisms offered before TLS: CRAM-MD5, DIGEST-MD5, SCRAM). Returns
/// the final reply code.
pub fn auth_raw(c: &mut Raw, mech: authrelay_sasl::Mechanism, user: &str, password: &str) -> u16 {
    use authrelay_sasl::{ClientCredentials, ClientExchange, ClientStep};
    use base64::Engine;
    let mut ex = ClientExchange::new(
        mech,
        ClientCredentials::new(user.to_owned(), password.to_owned()),
    )
    .unwrap();
    let (mut code, mut text) = match ex.initial_response() {
        Some(ir) => c.cmd(&format!("AUTH {} {}", mech.name(), b64(&ir))),
        None => c.cmd(&format!("AUTH {}", mech.name())),
    };
    while code == 334 {
        let challenge = base64::engine::general_purpose::STANDARD
            .decode(text[4..].trim())
            .unwrap();
        let resp = match ex.step(&challenge) {
            Ok(ClientStep::Respond(r)) => r,
            Ok(ClientStep::Done) => Vec::new(),
            Err(_) => b"*".to_vec(),
        };
        (code, text) = c.cmd(&b64(&resp));
    }
    code
}

/// A gRPC channel to `http://ADDR`.
pub async fn channel_to(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// One plain HTTP/1.1 GET, the body as text.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out)
}
