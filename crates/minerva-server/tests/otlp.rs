//! OTLP export against a local receiver: an HTTP server in the test that takes
//! OTLP/HTTP protobuf bodies on `/v1/traces`, as a collector does. A chat request (and a
//! streamed one) on the real SmolLM2 must arrive as one span tree: `request` with the
//! request's id, and under it `acquire_model`, `prepare`, `admission` and `generate`
//! with the generation's figures.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::*;
use minerva_server::ServerConfig;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

type Received = Arc<Mutex<Vec<Span>>>;

/// A collector's OTLP/HTTP traces endpoint on a free loopback port.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = Arc::clone(&store);
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans);
                store.lock().unwrap().extend(spans);
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), received)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key)? {
        AnyValue::IntValue(n) => Some(*n),
        AnyValue::DoubleValue(x) => Some(*x as i64),
        _ => None,
    }
}

/// The spans of the trace whose `request` span has id `request_id`: the root, and its
/// children by name.
fn tree(spans: &[Span], request_id: &str) -> Option<(Span, Vec<Span>)> {
    let root = spans.iter().find(|s| {
        s.name == "request" && matches!(attribute(s, "id"), Some(AnyValue::StringValue(id)) if id == request_id)
    })?;
    let children = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id && s.parent_span_id == root.span_id)
        .cloned()
        .collect();
    Some((root.clone(), children))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_arrives_at_the_collector_as_one_span_tree_with_its_stages() {
    let (endpoint, received) = receiver().await;
    let (layer, exporter) = minerva_server::otlp::layer::<tracing_subscriber::Registry>(&endpoint, "minerva-test")
        .expect("the exporter starts");
    // The server's tasks run on the runtime's threads: the subscriber must be global.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
    let exporter = Arc::new(exporter);

    let server = TestServer::start(ServerConfig::default()).await;
    let plain = server
        .client
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "otlp-plain")
        .json(&chat_body(
            "Name a colour.",
            json!({ "max_tokens": 6, "temperature": 0 }),
        ))
        .send()
        .await
        .unwrap();
    let reply = json_of(plain, reqwest::StatusCode::OK).await;
    let generated = reply["usage"]["completion_tokens"].as_i64().unwrap();
    let streamed = server
        .client
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "otlp-stream")
        .json(&chat_body(
            "Name a fruit.",
            json!({ "max_tokens": 6, "temperature": 0, "stream": true }),
        ))
        .send()
        .await
        .unwrap();
    read_sse(streamed).await;

    // A stream's spans end as its task does, just after the last event: flush until both
    // trees are whole.
    let whole = |id: &str| {
        let spans = received.lock().unwrap().clone();
        tree(&spans, id).is_some_and(|(_, children)| children.iter().any(|c| c.name == "generate"))
    };
    let arrived = eventually(Duration::from_secs(30), || {
        let exporter = Arc::clone(&exporter);
        let done = whole("otlp-plain") && whole("otlp-stream");
        async move {
            if !done {
                tokio::task::spawn_blocking(move || exporter.flush()).await.unwrap();
            }
            done
        }
    })
    .await;
    let spans = received.lock().unwrap().clone();
    assert!(
        arrived,
        "the collector got {} spans: {:?}",
        spans.len(),
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    let (root, children) = tree(&spans, "otlp-plain").unwrap();
    assert!(matches!(attribute(&root, "path"), Some(AnyValue::StringValue(p)) if p == "/v1/chat/completions"));
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    for stage in ["acquire_model", "prepare", "admission", "generate"] {
        assert!(
            names.contains(&stage),
            "{stage} is not a child of the request: {names:?}"
        );
    }
    // The stages come one after the other, inside the request.
    let start = |name: &str| children.iter().find(|s| s.name == name).unwrap().start_time_unix_nano;
    assert!(start("acquire_model") <= start("prepare"));
    assert!(start("prepare") <= start("admission"));
    assert!(start("admission") <= start("generate"));
    let generate = children.iter().find(|s| s.name == "generate").unwrap();
    assert!(generate.end_time_unix_nano <= root.end_time_unix_nano);
    assert_eq!(int(generate, "generated_tokens"), Some(generated), "{generate:?}");
    assert!(int(generate, "prompt_tokens").unwrap() > 0);
    assert!(attribute(generate, "prefill_ms").is_some() && attribute(generate, "ttft_ms").is_some());

    let (_, children) = tree(&spans, "otlp-stream").unwrap();
    let generate = children.iter().find(|s| s.name == "generate").unwrap();
    assert!(int(generate, "generated_tokens").unwrap() > 0, "{generate:?}");
}
