//! OpenTelemetry traces over OTLP, configured the standard way: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_RESOURCE_ATTRIBUTES`;
//! the config file's `otlp` section supplies what the environment leaves unset. Off unless an
//! endpoint is given. The pod's identity comes from the downward API variables the injector sets.

use anyhow::{Context, Result, bail};
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    runtime::Tokio,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use trueip_sidecar_app::config::{OtlpConfig, OtlpProtocol};

/// Downward-API variables → resource attributes (semantic conventions `k8s.*`).
const K8S_ENV: [(&str, &str); 4] = [
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NODE_NAME", "k8s.node.name"),
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Builds the tracer provider when an endpoint is configured. Must run inside the Tokio
/// runtime: the gRPC and HTTP clients live on it.
pub(crate) fn provider(file: Option<&OtlpConfig>) -> Result<Option<SdkTracerProvider>> {
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or_else(|| file.map(|f| f.endpoint.clone()));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        Some("grpc") => OtlpProtocol::Grpc,
        Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some(other) => {
            bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other}: trueip speaks grpc and http/protobuf")
        }
        None => file.map_or(OtlpProtocol::HttpProtobuf, |f| f.protocol),
    };
    let exporter = match protocol {
        OtlpProtocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        OtlpProtocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_traces_url(&endpoint))
            .build(),
    }
    .with_context(|| format!("OTLP exporter for {endpoint}"))?;

    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none()
        && !env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="))
    {
        resource = resource.with_service_name("trueip-sidecar");
    }
    let k8s = K8S_ENV
        .iter()
        .filter_map(|(var, key)| env(var).map(|v| KeyValue::new(*key, v)));
    // Exports on the Tokio runtime: the gRPC and HTTP clients need it (the SDK's default
    // batch processor exports from a thread of its own, without a reactor).
    let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.with_attributes(k8s).build())
        .build();
    Ok(Some(provider))
}

/// The tracing layer that turns spans into OpenTelemetry spans.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("trueip-sidecar"))
}

/// OTLP/HTTP wants the signal path: the base endpoint of the variable gets `/v1/traces`
/// (the per-signal variable is used as given, per the specification).
fn http_traces_url(endpoint: &str) -> String {
    if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() || endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}
