//! An OTLP trace collector for tests: it receives `ExportTraceServiceRequest`s over gRPC or
//! OTLP/HTTP (`POST /v1/traces`, protobuf) on a runtime of its own thread and keeps every span
//! with its resource's attributes, so a test can assert what a trueip binary exported.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};

/// A received span with its resource's attributes.
pub type ResourceSpan = (HashMap<String, String>, Span);

/// The spans received so far.
#[derive(Debug, Clone, Default)]
pub struct Collector(Arc<Mutex<Vec<ResourceSpan>>>);

impl Collector {
    /// Starts a collector on `127.0.0.1` (gRPC, or OTLP/HTTP); returns it and its address.
    ///
    /// # Panics
    /// If no local port can be bound.
    pub fn start(grpc: bool) -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the collector");
        let addr = listener.local_addr().expect("the collector's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let serving = collector.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("the collector's runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("the collector's listener");
                if grpc {
                    let incoming =
                        tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(TraceServiceServer::new(serving))
                        .serve_with_incoming(incoming)
                        .await;
                } else {
                    serve_http(listener, serving).await;
                }
            });
        });
        (collector, addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ResourceSpan> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (up to 20 s) until `n` spans named `name` arrived; returns every span received.
    ///
    /// # Panics
    /// If they do not arrive in time.
    pub fn wait_for_named(&self, name: &str, n: usize) -> Vec<ResourceSpan> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let spans = self.spans();
            if spans.iter().filter(|(_, s)| s.name == name).count() >= n {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fewer than {n} {name} spans: {:?}", self.spans());
    }

    fn take(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for rs in request.resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (resource.clone(), s)));
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute's value as text.
pub fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Attributes as a map of texts.
pub fn attrs(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// OTLP/HTTP: POST /v1/traces with a protobuf body; anything else gets a 404.
async fn serve_http(listener: tokio::net::TcpListener, collector: Collector) {
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Response, StatusCode, body::Bytes, service::service_fn};
    use prost::Message as _;
    while let Ok((stream, _)) = listener.accept().await {
        let collector = collector.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let collector = collector.clone();
                async move {
                    let path_ok = req.uri().path() == "/v1/traces";
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(http_body_util::Collected::to_bytes);
                    let decoded = body
                        .ok()
                        .filter(|_| path_ok)
                        .and_then(|b| ExportTraceServiceRequest::decode(b).ok());
                    let mut response = match decoded {
                        Some(request) => {
                            collector.take(request);
                            Response::new(Full::new(Bytes::from(
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )))
                        }
                        None => Response::new(Full::new(Bytes::new())),
                    };
                    if !path_ok {
                        *response.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
