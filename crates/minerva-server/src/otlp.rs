//! OTLP export of the request spans (`serve --otlp-endpoint http://HOST:4318`): every
//! request's span tree (`request` with its id, method and path; `acquire_model`,
//! `prepare`, `admission`, and `generate` with its prompt, cached and generated tokens,
//! prefill, decode and time to first token) goes to an OpenTelemetry collector, Jaeger
//! or Tempo over OTLP/HTTP with protobuf bodies. The SDK's batch processor exports on a
//! thread of its own through the workspace's blocking reqwest client (rustls), so a slow
//! or absent collector never holds up a request: its spans are dropped when the queue
//! is full.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::registry::LookupSpan;

/// The path OTLP/HTTP receivers take traces on.
const TRACES_PATH: &str = "/v1/traces";

/// Why export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// The exporter's provider: flush and stop it before the process exits
/// ([`Exporter::shutdown`]), or the last batch is lost.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends the spans still queued and stops the export thread.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last spans were not exported");
        }
    }

    /// Sends the spans queued so far (and waits for the collector's answer).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "spans were not exported");
        }
    }
}

/// The traces URL for `endpoint`: a base URL (`http://host:4318`) gets OTLP's
/// `/v1/traces`; a URL with a path is taken as it is.
pub fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let bad = |why: &str| OtlpError::Endpoint(endpoint.to_owned(), why.to_owned());
    let uri: axum::http::Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must be an http:// or https:// URL")),
    }
    if uri.host().is_none() {
        return Err(bad("has no host"));
    }
    Ok(match uri.path() {
        "" | "/" => format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/')),
        _ => endpoint.to_owned(),
    })
}

/// A `tracing` layer that exports spans to `endpoint` as service `service`, and the
/// exporter to shut down at exit.
pub fn layer<S>(endpoint: &str, service: &str) -> Result<(impl tracing_subscriber::Layer<S>, Exporter), OtlpError>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let url = traces_url(endpoint)?;
    minerva_pull::install_crypto_provider();
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|e| OtlpError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .build();
    let tracer = provider.tracer("minerva");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Exporter { provider }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path_and_a_bad_one_is_refused() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example/custom/traces").unwrap(),
            "https://otel.example/custom/traces"
        );
        for bad in ["collector:4318", "ftp://host/", "not a url", ""] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
