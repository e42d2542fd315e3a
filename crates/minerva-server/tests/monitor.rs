//! What the server shows of itself: Prometheus families a scraper understands (help,
//! type, per-model histograms of each request's stages, the running/waiting/KV gauges
//! that routers read), the monitor's snapshot and live stream, and the dashboard's page.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use minerva_server::ServerConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Families by name, from the text exposition format: their `# TYPE`, whether they have
/// `# HELP`, and the samples (series with labels, value).
#[derive(Default, Debug)]
struct Family {
    kind: Option<String>,
    help: bool,
    samples: Vec<(String, f64)>,
}

fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            families.entry(name.to_owned()).or_default().help = true;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            families.entry(name.to_owned()).or_default().kind = parts.next().map(str::to_owned);
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|base| families.contains_key(*base)))
                .unwrap_or(name);
            families
                .entry(family.to_owned())
                .or_default()
                .samples
                .push((series.to_owned(), value));
        }
    }
    families
}

fn sample(family: &Family, series_contains: &[&str]) -> Option<f64> {
    family
        .samples
        .iter()
        .find(|(s, _)| series_contains.iter().all(|c| s.contains(c)))
        .map(|(_, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_described_and_a_generation_fills_its_models_histograms() {
    let server = TestServer::shared();
    let reply = server
        .ok(
            "/v1/completions",
            &completion_body(
                CHAT,
                "The capital of France is",
                json!({ "max_tokens": 6, "temperature": 0 }),
            ),
        )
        .await;
    let generated = reply["usage"]["completion_tokens"].as_u64().unwrap();
    let prompt_tokens = reply["usage"]["prompt_tokens"].as_u64().unwrap();
    let text = server.get("/metrics").await.text().await.unwrap();
    let families = parse_exposition(&text);

    for (name, family) in &families {
        assert!(family.help, "{name} has no # HELP");
        let kind = family.kind.as_deref().unwrap_or_else(|| panic!("{name} has no # TYPE"));
        assert!(name.starts_with("minerva_"), "{name}");
        // Prometheus conventions: a counter's name ends in _total, and only a counter's.
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }

    let model = format!("model=\"{CHAT}\"");
    for name in [
        "minerva_time_to_first_token_seconds",
        "minerva_inter_token_latency_seconds",
        "minerva_request_duration_seconds",
        "minerva_request_queue_seconds",
        "minerva_request_prompt_tokens",
        "minerva_request_generation_tokens",
    ] {
        let family = &families[name];
        assert_eq!(family.kind.as_deref(), Some("histogram"), "{name}");
        let count = sample(family, &[&format!("{name}_count"), &model]).unwrap_or(0.0);
        assert!(count >= 1.0, "{name} has no observation for {CHAT}:\n{family:?}");
    }
    // This request's counts are in the token histograms' sums (other tests of this binary
    // add theirs).
    let sum = |name: &str| sample(&families[name], &[&format!("{name}_sum"), &model]).unwrap();
    assert!(sum("minerva_request_prompt_tokens") >= prompt_tokens as f64);
    assert!(sum("minerva_request_generation_tokens") >= generated as f64);
    // The time to the first token is part of the whole request's.
    assert!(sum("minerva_time_to_first_token_seconds") <= sum("minerva_request_duration_seconds"));

    // What the Gateway API inference extension reads, per loaded model.
    for name in [
        "minerva_requests_running",
        "minerva_requests_waiting",
        "minerva_kv_cache_usage_ratio",
        "minerva_prefix_cache_hit_ratio",
        "minerva_model_bytes",
    ] {
        let value = sample(&families[name], &[&model]).unwrap_or_else(|| panic!("no {name} for {CHAT}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    let budget = sample(&families["minerva_model_budget_bytes"], &[]).unwrap();
    let model_bytes = sample(&families["minerva_model_bytes"], &[&model]).unwrap();
    assert!(model_bytes > 0.0 && model_bytes <= budget, "{model_bytes} of {budget}");
}

/// A stream of up to 1,500 tokens with the end-of-text tokens banned, read up to its first
/// chunk: a generation that runs until its client leaves.
async fn long_stream(server: &TestServer) -> SseReader {
    let mut bias = serde_json::Map::new();
    for token in ["<|im_end|>", "<|endoftext|>"] {
        let ids = server
            .ok(
                "/v1/tokenize",
                &json!({ "model": CHAT, "prompt": token, "parse_special": true }),
            )
            .await;
        for id in ids["tokens"].as_array().unwrap() {
            bias.insert(id.to_string(), json!(-100));
        }
    }
    let body = completion_body(
        CHAT,
        "Once upon a time",
        json!({ "max_tokens": 1500, "stream": true, "temperature": 0, "logit_bias": bias }),
    );
    let response = server
        .client
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = SseReader::new(response);
    stream.next().await.expect("a first chunk");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_sees_a_generation_run_and_lists_its_stages_when_done() {
    let server = TestServer::shared();
    let before = server.ok_get("/v1/monitor").await;
    let generated_before = before["totals"]["generated_tokens"].as_u64().unwrap();

    let stream = long_stream(&server).await;

    let during = server.ok_get("/v1/monitor").await;
    let model = during["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == CHAT)
        .cloned()
        .expect("the model is listed while it runs");
    assert_eq!(model["kind"], "llm");
    assert!(model["running"].as_u64().unwrap() >= 1, "{model}");
    assert!(model["leases"].as_u64().unwrap() >= 1, "{model}");
    let kv = model["kv_usage"].as_f64().unwrap();
    assert!(kv > 0.0 && kv <= 1.0, "{model}");
    assert!(during["memory"]["in_use_bytes"].as_u64().unwrap() >= model["bytes"].as_u64().unwrap());

    // Cancelled by leaving: the model stops running it.
    drop(stream);
    let stopped = eventually(Duration::from_secs(30), || async {
        let now = server.ok_get("/v1/monitor").await;
        now["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == CHAT && m["running"] == 0)
    })
    .await;
    assert!(stopped, "the cancelled generation is still counted as running");

    // A request that finishes is counted and listed with its stages.
    let reply = server
        .ok(
            "/v1/completions",
            &completion_body(
                CHAT,
                "The monitor lists this request",
                json!({ "max_tokens": 5, "temperature": 0 }),
            ),
        )
        .await;
    let (prompt_tokens, completion_tokens, _) = usage(&reply);
    let after = server.ok_get("/v1/monitor").await;
    assert!(after["totals"]["generated_tokens"].as_u64().unwrap() >= generated_before + completion_tokens);
    let record = after["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["model"] == CHAT
                && r["api"] == "completion"
                && r["prompt_tokens"].as_u64() == Some(prompt_tokens)
                && r["generated_tokens"].as_u64() == Some(completion_tokens)
        })
        .cloned()
        .unwrap_or_else(|| panic!("the request is not among the recent ones: {}", after["recent"]));
    let stage = |name: &str| record[name].as_f64().unwrap();
    let parts = stage("model_ms") + stage("prepare_ms") + stage("queue_ms") + stage("prefill_ms") + stage("decode_ms");
    assert!(parts <= stage("total_ms") + 1.0, "{record}");
    assert!(stage("ttft_ms") <= stage("total_ms"), "{record}");
    let latency = &after["latency_ms"];
    assert!(latency["requests"].as_u64().unwrap() >= 1);
    assert!(latency["ttft"]["p50"].as_f64().unwrap() <= latency["ttft"]["p99"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_sends_snapshots_that_move() {
    let server = TestServer::shared();
    let response = server.get("/v1/monitor/events").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = SseReader::new(response);
    let snapshot = |data: Option<SseData>| match data {
        Some(SseData::Json(v)) => v,
        other => panic!("not a snapshot: {other:?}"),
    };
    let first = snapshot(stream.next().await);
    assert_eq!(first["object"], "monitor");
    server
        .ok(
            "/v1/completions",
            &completion_body(CHAT, "Hello", json!({ "max_tokens": 2, "temperature": 0 })),
        )
        .await;
    // The next snapshots count the request (each is taken when it is sent).
    let mut seen = false;
    for _ in 0..5 {
        let next = snapshot(stream.next().await);
        if next["totals"]["requests"].as_u64() > first["totals"]["requests"].as_u64() {
            assert!(next["time_ms"].as_u64() > first["time_ms"].as_u64());
            seen = true;
            break;
        }
    }
    assert!(seen, "the stream's snapshots do not count the request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_and_its_data_asks_for_the_key() {
    let server = TestServer::start(ServerConfig {
        api_keys: vec!["k1".to_owned()],
        ..ServerConfig::default()
    })
    .await;
    let page = server.get("/dashboard").await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    // Every script and stylesheet the page names is served, with its type, and none comes
    // from another host.
    let assets: BTreeSet<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("/dashboard/") || s.starts_with("http"))
        .collect();
    assert!(assets.len() >= 4, "{assets:?}");
    for asset in assets {
        assert!(asset.starts_with("/dashboard/"), "{asset} is not served by the binary");
        let response = server.get(asset).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if asset.ends_with(".js") {
            "text/javascript"
        } else {
            "text/css"
        };
        assert!(kind.starts_with(want), "{asset}: {kind}");
        assert!(!response.bytes().await.unwrap().is_empty());
    }
    expect_error(server.get("/dashboard/nope.js").await, StatusCode::NOT_FOUND, None).await;

    // The data is the server's: it needs the key.
    expect_error(server.get("/v1/monitor").await, StatusCode::UNAUTHORIZED, None).await;
    expect_error(server.get("/v1/monitor/events").await, StatusCode::UNAUTHORIZED, None).await;
    let keyed = server
        .client
        .get(server.url("/v1/monitor"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap();
    let snapshot: Value = json_of(keyed, StatusCode::OK).await;
    assert_eq!(snapshot["object"], "monitor");
    assert!(snapshot["memory"]["budget_bytes"].as_u64().unwrap() > 0);
}

/// A client that leaves mid-stream gives back what it held: its admission slot (as
/// `/health`'s `free_slots` shows) and its sequence in the model's scheduler (running 0,
/// its KV cells cleared), while the stream would have gone on for 1,500 tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_frees_its_slot_and_its_sequence() {
    let server = TestServer::start(ServerConfig {
        max_concurrent_requests: 2,
        ..ServerConfig::default()
    })
    .await;
    let free = |health: &Value| health["free_slots"].as_u64().unwrap();
    assert_eq!(free(&server.ok_get("/health").await), 2);

    let stream = long_stream(&server).await;
    assert_eq!(free(&server.ok_get("/health").await), 1, "the stream holds a slot");

    drop(stream);
    let freed = eventually(Duration::from_secs(30), || async {
        let slots = free(&server.ok_get("/health").await);
        let monitor = server.ok_get("/v1/monitor").await;
        let model = monitor["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == CHAT)
            .cloned();
        slots == 2 && model.is_some_and(|m| m["running"] == 0 && m["kv_usage"].as_f64() == Some(0.0))
    })
    .await;
    assert!(freed, "the slot or the sequence of a client that left is still held");
    // The stream is counted as dropped, for its model.
    let monitor = server.ok_get("/v1/monitor").await;
    assert!(
        monitor["totals"]["dropped_streams"].as_u64() >= Some(1),
        "{}",
        monitor["totals"]
    );
    let text = server.get("/metrics").await.text().await.unwrap();
    let families = parse_exposition(&text);
    let dropped = sample(
        &families["minerva_streams_dropped_total"],
        &[&format!("model=\"{CHAT}\"")],
    );
    assert!(dropped >= Some(1.0), "{:?}", families["minerva_streams_dropped_total"]);
    // And the slot serves the next request.
    server
        .ok(
            "/v1/completions",
            &completion_body(CHAT, "Hello", json!({ "max_tokens": 2 })),
        )
        .await;
}

/// The live feed is bounded: as many watchers as it allows get their stream, one more is
/// a 503 with an OpenAI-style body, and a watcher that leaves gives its place back. All
/// watchers see the same snapshots (one task takes them for all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_has_a_bounded_number_of_watchers_who_share_its_snapshots() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut watchers = Vec::new();
    for _ in 0..minerva_server::live_feed::MAX_SUBSCRIBERS {
        let response = server.get("/v1/monitor/events").await;
        assert_eq!(response.status(), StatusCode::OK);
        watchers.push(SseReader::new(response));
    }
    let error = expect_error(
        server.get("/v1/monitor/events").await,
        StatusCode::SERVICE_UNAVAILABLE,
        None,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("live monitor feed"),
        "{error}"
    );
    // The plain snapshot is still served.
    assert_eq!(server.ok_get("/v1/monitor").await["object"], "monitor");

    // Two watchers read the same snapshot (the same instant) once the feed has ticked.
    let time = |data: Option<SseData>| match data {
        Some(SseData::Json(v)) => v["time_ms"].as_u64().unwrap(),
        other => panic!("not a snapshot: {other:?}"),
    };
    let (mut a, mut b) = (watchers.pop().unwrap(), watchers.pop().unwrap());
    let (mut ta, mut tb) = (time(a.next().await), time(b.next().await));
    for _ in 0..5 {
        if ta == tb {
            break;
        }
        if ta < tb {
            ta = time(a.next().await);
        } else {
            tb = time(b.next().await);
        }
    }
    assert_eq!(ta, tb, "the watchers share the feed's snapshots");

    // One leaves: its place is free again (given back when its connection closes).
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.get("/v1/monitor/events").await;
        if response.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
