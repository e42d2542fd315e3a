//! `minerva top`: the dashboard's numbers in a terminal, for servers without a browser.
//! It reads a running server's `/v1/monitor` every interval and redraws one screen:
//! memory against the budget and the system, request and token rates, latency
//! percentiles over the last minute, and each loaded model with its leases, running and
//! waiting requests, KV-cache use and expiry.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::client::{ServerArgs, from_now, send};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds between screens (rates are taken over it).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one screen (after one interval, for the rates) and exit.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: Args) -> Result<()> {
    // A snapshot is quick: a server that does not answer in 10 s is reported, not waited on.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let interval = Duration::try_from_secs_f64(args.interval)
        .ok()
        .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d))
        .ok_or_else(|| anyhow::anyhow!("--interval {}: 0.1 to 3600 seconds", args.interval))?;
    let snapshot = || -> Result<Value> {
        Ok(send(
            args.server.request(&client, reqwest::Method::GET, "/v1/monitor"),
            &args.server.url,
        )?
        .json()?)
    };
    let terminal = std::io::stdout().is_terminal() && !args.once;
    let mut previous = snapshot()?;
    loop {
        std::thread::sleep(interval);
        let now = snapshot()?;
        let screen = frame(Some(&previous), &now);
        let mut out = std::io::stdout().lock();
        if terminal {
            // Home and clear, as `top` redraws.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(out, "{screen}")?;
        out.flush()?;
        if args.once {
            return Ok(());
        }
        previous = now;
    }
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "–".to_owned(), |b| format!("{:.0} MiB", b as f64 / 1_048_576.0))
}

fn millis(v: &Value) -> String {
    match v.as_f64() {
        None => "–".to_owned(),
        Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{:.2} s", ms / 1000.0),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

/// One screen from the snapshot `now` (and `previous`, for the rates).
pub fn frame(previous: Option<&Value>, now: &Value) -> String {
    let mut s = String::new();
    let memory = &now["memory"];
    let totals = &now["totals"];
    let models = now["models"].as_array().cloned().unwrap_or_default();
    let uptime = now["uptime_s"].as_f64().unwrap_or(0.0) as u64;
    let system = match (
        memory["system_total_bytes"].as_u64(),
        memory["system_available_bytes"].as_u64(),
    ) {
        (Some(total), Some(available)) => format!(
            "system {} used of {}",
            mib(Some(total.saturating_sub(available))),
            mib(Some(total))
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "minerva  up {}h{:02}m{:02}s  {} model(s)  {} of {} budget  RSS {}  {system}",
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60,
        models.len(),
        mib(memory["in_use_bytes"].as_u64()),
        mib(memory["budget_bytes"].as_u64()),
        mib(memory["process_rss_bytes"].as_u64()),
    );
    let rate = |key: &str| -> String {
        let Some(previous) = previous else {
            return "–".to_owned();
        };
        let seconds = (now["time_ms"].as_f64().unwrap_or(0.0) - previous["time_ms"].as_f64().unwrap_or(0.0)) / 1e3;
        let delta = totals[key]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(previous["totals"][key].as_u64().unwrap_or(0));
        if seconds > 0.0 {
            format!("{:.1}", delta as f64 / seconds)
        } else {
            "–".to_owned()
        }
    };
    let _ = writeln!(
        s,
        "requests {}/s  generated {} tok/s  embedded {}/s  total {}  errors {}  refused {}  queue {}",
        rate("requests"),
        rate("generated_tokens"),
        rate("embedded_inputs"),
        totals["requests"].as_u64().unwrap_or(0),
        totals["errors"].as_u64().unwrap_or(0),
        totals["refused"].as_u64().unwrap_or(0),
        now["queue_depth"].as_u64().unwrap_or(0),
    );
    let latency = &now["latency_ms"];
    let _ = writeln!(
        s,
        "TTFT p50 {} p95 {}  inter-token p50 {}  latency p50 {} p95 {}  ({} requests in the last {} s)",
        millis(&latency["ttft"]["p50"]),
        millis(&latency["ttft"]["p95"]),
        millis(&latency["itl"]["p50"]),
        millis(&latency["total"]["p50"]),
        millis(&latency["total"]["p95"]),
        latency["requests"].as_u64().unwrap_or(0),
        latency["window_s"].as_u64().unwrap_or(0),
    );
    let _ = writeln!(
        s,
        "loads {}  evictions {}  embedding cache hits {}",
        totals["loads"].as_u64().unwrap_or(0),
        totals["evictions"].as_u64().unwrap_or(0),
        percent(now["caches"]["embedding_hit_ratio"].as_f64()),
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<32} {:<9} {:>9} {:>6} {:>4} {:>5} {:>5} {:>7}  EXPIRES",
        "MODEL", "KIND", "MEMORY", "LEASES", "RUN", "WAIT", "KV", "PREFIX"
    );
    let now_s = now["time_ms"].as_u64().unwrap_or(0) / 1000;
    for m in &models {
        let llm = m["kind"] == "llm";
        let field = |key: &str| {
            if llm {
                m[key].as_u64().unwrap_or(0).to_string()
            } else {
                String::new()
            }
        };
        let expires = match m["expires_at"].as_u64() {
            Some(t) => from_now(t.saturating_sub(now_s)),
            None if m["leases"].as_u64().unwrap_or(0) > 0 => "in use".to_owned(),
            None => "never".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<32} {:<9} {:>9} {:>6} {:>4} {:>5} {:>5} {:>7}  {expires}",
            m["id"].as_str().unwrap_or("?"),
            m["kind"].as_str().unwrap_or("?"),
            mib(m["bytes"].as_u64()),
            m["leases"].as_u64().unwrap_or(0),
            field("running"),
            field("waiting"),
            if llm {
                percent(m["kv_usage"].as_f64())
            } else {
                String::new()
            },
            if llm {
                percent(m["prefix_cache_hit_ratio"].as_f64())
            } else {
                String::new()
            },
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_screen_shows_rates_over_the_interval_and_each_model() {
        let snapshot = |ms: u64, requests: u64, tokens: u64| {
            json!({
                "time_ms": ms, "uptime_s": 3725.0,
                "memory": { "budget_bytes": 1u64 << 32, "in_use_bytes": 300u64 << 20, "process_rss_bytes": 400u64 << 20,
                            "system_total_bytes": 8u64 << 30, "system_available_bytes": 6u64 << 30 },
                "totals": { "requests": requests, "generated_tokens": tokens, "embedded_inputs": 0, "errors": 0, "refused": 1, "loads": 2, "evictions": 1 },
                "queue_depth": 3,
                "caches": { "embedding_hit_ratio": 0.5 },
                "latency_ms": { "window_s": 60, "requests": 4, "ttft": { "p50": 12.0, "p95": 1500.0 }, "itl": { "p50": 8.0 }, "total": { "p50": 300.0, "p95": 2000.0 } },
                "models": [
                    { "id": "smollm2", "kind": "llm", "bytes": 300u64 << 20, "leases": 1, "running": 2, "waiting": 1, "kv_usage": 0.25, "prefix_cache_hit_ratio": 0.5, "expires_at": null },
                    { "id": "minilm", "kind": "embedding", "bytes": 100u64 << 20, "leases": 0, "expires_at": (ms / 1000) + 120 },
                ],
            })
        };
        let before = snapshot(1_000_000, 10, 100);
        let after = snapshot(1_002_000, 30, 500);
        let screen = frame(Some(&before), &after);
        assert!(screen.contains("up 1h02m05s"), "{screen}");
        assert!(screen.contains("300 MiB of 4096 MiB budget"), "{screen}");
        assert!(screen.contains("requests 10.0/s"), "{screen}");
        assert!(screen.contains("generated 200.0 tok/s"), "{screen}");
        assert!(screen.contains("queue 3"), "{screen}");
        assert!(screen.contains("TTFT p50 12 ms p95 1.50 s"), "{screen}");
        let llm = screen.lines().find(|l| l.starts_with("smollm2")).unwrap();
        assert!(llm.contains("25%") && llm.contains("in use"), "{llm}");
        let encoder = screen.lines().find(|l| l.starts_with("minilm")).unwrap();
        assert!(encoder.contains("2 minutes from now"), "{encoder}");
        // Without a previous snapshot there is no rate to show.
        assert!(frame(None, &after).contains("requests –/s"));
    }
}
