//! OpenTelemetry traces over OTLP, configured the standard way: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`), `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_RESOURCE_ATTRIBUTES`
//! (the SDK reads the last three); a binary's own configuration may supply the endpoint and
//! protocol the environment leaves unset ([`Fallback`]). Off unless an endpoint is given. The
//! pod's (or node's) identity comes from the downward-API variables the chart sets.

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{ExporterBuildError, SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    runtime::Tokio,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};

use crate::logs::{self, LogFormat};

/// Downward-API variables → resource attributes (semantic conventions `k8s.*`).
const K8S_ENV: [(&str, &str); 4] = [
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NODE_NAME", "k8s.node.name"),
];

/// The OTLP transports trueip speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318), the specification's default.
    #[default]
    HttpProtobuf,
}

/// What a binary's configuration file says about OTLP, for what the environment leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct Fallback<'a> {
    /// The collector.
    pub endpoint: &'a str,
    /// How to talk to it.
    pub protocol: Protocol,
}

/// Why no exporter could be built.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The protocol variable names one trueip does not speak.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0}: trueip speaks grpc and http/protobuf")]
    Protocol(String),
    /// An `https://` endpoint: the exporter is built without TLS, and a collector that seems
    /// configured but never receives anything is worse than a refusal at start.
    #[error(
        "OTLP endpoint {0}: trueip exports over plain http only (no TLS client is built in); \
         send to an OpenTelemetry Collector on the node or in the cluster (http://…:4318 or \
         :4317), which can forward over TLS"
    )]
    Tls(String),
    /// The SDK refused the endpoint.
    #[error("OTLP exporter for {endpoint}")]
    Exporter {
        /// The endpoint given.
        endpoint: String,
        /// The SDK's reason.
        #[source]
        source: ExporterBuildError,
    },
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Builds the tracer provider when an endpoint is configured (the environment first, then
/// `fallback`); `service` names the service unless `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES` does. Must run inside a Tokio runtime: the gRPC and HTTP clients
/// and the batch exporter live on it.
fn provider(
    service: &'static str,
    fallback: Option<Fallback<'_>>,
) -> Result<Option<SdkTracerProvider>, OtlpError> {
    let endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .or_else(|| fallback.map(|f| f.endpoint.to_owned()));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    check_endpoint(&endpoint)?;
    let protocol = match env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => return Err(OtlpError::Protocol(other.to_owned())),
        None => fallback.map_or(Protocol::HttpProtobuf, |f| f.protocol),
    };
    let exporter = match protocol {
        Protocol::Grpc => SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build(),
        Protocol::HttpProtobuf => SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(http_traces_url(&endpoint))
            .build(),
    }
    .map_err(|source| OtlpError::Exporter {
        endpoint: endpoint.clone(),
        source,
    })?;

    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none()
        && !env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| names_the_service(&a))
    {
        resource = resource.with_service_name(service);
    }
    let k8s = K8S_ENV
        .iter()
        .filter_map(|(var, key)| env(var).map(|v| KeyValue::new(*key, v)));
    // Exports on the Tokio runtime: the gRPC and HTTP clients need it (the SDK's default
    // batch processor exports from a thread of its own, without a reactor).
    let processor = BatchSpanProcessor::builder(exporter, Tokio).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.with_attributes(k8s).build())
            .build(),
    ))
}

/// What a binary sets up first: its logging, and its traces when an OTLP endpoint is configured;
/// kept to flush the last spans at exit.
#[derive(Debug)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Logs in `log_format` (a `--log-format` word; a deprecated spelling is logged as such),
    /// and, when `wanted`, exports spans as `service` to the endpoint of the `OTEL_*` variables
    /// or `fallback`. Runs inside a Tokio runtime (the exporter lives on it). Logging is set up
    /// whatever happens; the error says why traces that were asked for cannot start, for the
    /// binary to report as its start-up failure.
    pub fn start(
        service: &'static str,
        log_format: &str,
        wanted: bool,
        fallback: Option<Fallback<'_>>,
    ) -> (Self, Option<OtlpError>) {
        let (traces, error) = if wanted {
            match provider(service, fallback) {
                Ok(traces) => (traces, None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        let format = LogFormat::parse(log_format).unwrap_or_default();
        init_logging(format, traces.as_ref(), service);
        if let Some(line) = LogFormat::deprecation(log_format) {
            tracing::warn!("{line}");
        }
        if traces.is_some() {
            tracing::info!("exporting traces over OTLP");
        }
        (Self { traces }, error)
    }

    /// Flushes the spans not exported yet (at exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush traces");
        }
    }
}

/// [`crate::init_logging`], plus every span exported through `traces` (when given) under the
/// instrumentation scope `tracer`.
fn init_logging(format: LogFormat, traces: Option<&SdkTracerProvider>, tracer: &'static str) {
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let otel =
        traces.map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(tracer)));
    tracing_subscriber::registry()
        .with(logs::filter())
        .with(logs::stderr(format))
        .with(otel)
        .init();
}

/// Whether `OTEL_RESOURCE_ATTRIBUTES` (`key=value,…`) has the key `service.name` itself (not
/// one that merely ends so, like `my.service.name`).
fn names_the_service(attributes: &str) -> bool {
    attributes
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, _)| key.trim() == "service.name")
}

/// Refuses what the exporter cannot reach: an `https://` endpoint (no TLS client is built in).
fn check_endpoint(endpoint: &str) -> Result<(), OtlpError> {
    if endpoint
        .trim_start()
        .get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https:"))
    {
        return Err(OtlpError::Tls(endpoint.to_owned()));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_service_name_key_names_the_service() {
        assert!(names_the_service("service.name=shop-web"));
        assert!(names_the_service("team=net, service.name = shop-web"));
        assert!(!names_the_service("my.service.name=x,team=net"));
        assert!(!names_the_service("deployment.environment=prod"));
    }

    #[test]
    fn an_https_endpoint_is_refused_saying_what_to_do() {
        for endpoint in ["https://collector:4318", " HTTPS://collector:4317"] {
            let e = check_endpoint(endpoint).unwrap_err().to_string();
            assert!(e.contains("plain http only"), "{e}");
            assert!(e.contains("OpenTelemetry Collector"), "{e}");
        }
        for endpoint in ["http://collector:4318", "http://[fd00::1]:4317"] {
            assert!(check_endpoint(endpoint).is_ok(), "{endpoint}");
        }
    }
}
