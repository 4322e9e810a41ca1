//! A TLS client that accepts any server certificate (the tests' servers
//! use throwaway self-signed ones) — for STARTTLS and implicit-TLS tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

pub fn config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(authrelay_tls_any::AnyCertificate::new(provider))
            .with_no_client_auth(),
    )
}

/// An SMTP connection over TLS, line oriented like `Raw`.
pub struct TlsRaw {
    pub stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsRaw {
    /// Handshake on an already connected socket.
    pub fn handshake(tcp: TcpStream) -> TlsRaw {
        Self::handshake_with(tcp, config())
    }

    /// Handshake presenting a client certificate (DER chain, PKCS#8 key).
    pub fn handshake_with_client_cert(tcp: TcpStream, chain: Vec<Vec<u8>>, key: Vec<u8>) -> TlsRaw {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        let cfg = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(authrelay_tls_any::AnyCertificate::new(provider))
            .with_client_auth_cert(chain, key)
            .unwrap();
        Self::handshake_with(tcp, Arc::new(cfg))
    }

    fn handshake_with(tcp: TcpStream, config: Arc<ClientConfig>) -> TlsRaw {
        let conn =
            ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("TLS handshake");
        }
        TlsRaw {
            stream: BufReader::new(s),
        }
    }

    /// The server's leaf certificate.
    pub fn peer_cert(&self) -> Vec<u8> {
        self.stream.get_ref().conn.peer_certificates().unwrap()[0]
            .as_ref()
            .to_vec()
    }

    pub fn read(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, text);
            }
            text.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap_or(0), text);
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        let s = self.stream.get_mut();
        s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        s.flush().unwrap();
        self.read()
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let s = self.stream.get_mut();
        s.write_all(bytes).unwrap();
        s.flush().unwrap();
    }

    pub fn read_some(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let n = self.stream.read(&mut buf).unwrap_or(0);
        buf.truncate(n);
        buf
    }
}
