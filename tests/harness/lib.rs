//! The end-to-end harness: real binaries as separate processes on ephemeral
//! loopback ports, a real `redis-server` per test (so a test may stop it),
//! an independent sink SMTP server (aiosmtpd), and independent clients
//! (Python's smtplib). Nothing here fakes a part of the system.
//!
//! Missing tools fail loudly with how to get them: `scripts/test.sh`
//! installs and builds everything these tests need.
//!
//! One module per kind of part, all re-exported here, so a test says
//! `use authrelay_e2e::*;`:
//! - `process`: our binaries and external tools as child processes;
//! - `redis`: a private `redis-server` per test;
//! - `peers`: independent servers the services talk to (the aiosmtpd sink);
//! - `stack`: the four services as separate processes, and the usual set-up;
//! - `tokens`: the deployment's token and key files, and gRPC interceptors presenting them;
//! - `certs`: test certificates (server, client CA, internal mutual TLS);
//! - `clients`: raw SMTP, smtplib, our SASL client over raw SMTP, a gRPC channel;
//! - [`tls_client`]: the same raw SMTP client over TLS;
//! - [`otlp`]: an OTLP trace receiver (gRPC and HTTP).

mod certs;
mod clients;
mod peers;
mod process;
mod redis;
mod stack;
mod tokens;

pub mod otlp;
pub mod tls_client;

pub use certs::*;
pub use clients::*;
pub use peers::*;
pub use process::*;
pub use redis::*;
pub use stack::*;
pub use tokens::*;
