//! An OTLP trace receiver on loopback, over gRPC and over HTTP
//! (`http/protobuf`), built from the official OTLP protobuf definitions
//! (opentelemetry-proto): it keeps every span exported to it, with the
//! service name and attributes of the resource that sent it.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
    /// The resource the span came with (service.instance.id, k8s.*, …).
    pub resource: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
}

impl Received {
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        self.resource
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                Value::IntValue(i) => Some(i.to_string()),
                Value::BoolValue(b) => Some(b.to_string()),
                Value::DoubleValue(d) => Some(d.to_string()),
                _ => None,
            })
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Received>>>);

impl Sink {
    fn ingest(&self, req: ExportTraceServiceRequest) {
        let mut out = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Received {
                        service: service.clone(),
                        span,
                        resource: resource.clone(),
                    });
                }
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.ingest(req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One OTLP/HTTP request (`POST /v1/traces`, protobuf body) on `sock`,
/// answered the way a collector does.
async fn http_export(mut sock: tokio::net::TcpStream, sink: Sink) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let ok_request = head.starts_with("POST /v1/traces ")
        && header("content-type").as_deref() == Some("application/x-protobuf");
    let decoded = ok_request
        .then(|| {
            <ExportTraceServiceRequest as prost::Message>::decode(
                &buf[head_end..head_end + len.min(buf.len() - head_end)],
            )
            .ok()
        })
        .flatten();
    let (status, body) = match decoded {
        Some(req) => {
            sink.ingest(req);
            let resp = ExportTraceServiceResponse {
                partial_success: None,
            };
            ("200 OK", prost::Message::encode_to_vec(&resp))
        }
        None => ("400 Bad Request", Vec::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&body).await?;
    sock.shutdown().await
}

/// Spans by OTLP/gRPC at `addr` and by OTLP/HTTP at `http_addr`, into
/// one list.
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    pub fn start() -> Receiver {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let sink = Sink::default();
        let spans = sink.0.clone();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let http = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let http_addr = http.local_addr().unwrap();
        let http_sink = sink.clone();
        rt.spawn(async move {
            while let Ok((sock, _)) = http.accept().await {
                tokio::spawn(http_export(sock, http_sink.clone()));
            }
        });
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Receiver {
            addr,
            http_addr,
            spans,
            _rt: rt,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The same receiver over OTLP/HTTP (`http/protobuf`): its base URL,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it (`/v1/traces` is added
    /// by the exporter).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Everything received, as text, for secret greps.
    pub fn dump(&self) -> String {
        format!("{:?}", self.spans())
    }
}
