//! `minerva run`, `minerva ps` and `minerva stop`: talking to a running `minerva serve`
//! over its HTTP API, like `ollama run/ps/stop`.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result, bail};
use reqwest::blocking::{Client, RequestBuilder, Response};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Base URL of the server.
    #[arg(long, env = "MINERVA_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    /// API key, when the server requires one (`minerva stop` needs an admin key).
    #[arg(long, env = "MINERVA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Model id.
    model: String,
    /// A single prompt; without one, an interactive chat reads lines from stdin.
    prompt: Option<String>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: u32,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// Model id.
    model: String,
    #[command(flatten)]
    server: ServerArgs,
}

impl ServerArgs {
    pub(crate) fn request(&self, client: &Client, method: reqwest::Method, path: &str) -> RequestBuilder {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let request = client.request(method, url);
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

fn client() -> Result<Client> {
    // Generations can be long; the server bounds them itself.
    Client::builder()
        .timeout(None)
        .build()
        .context("creating the HTTP client")
}

/// Turns a non-2xx response into an error carrying the server's message.
fn check(response: Response) -> Result<Response> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body: serde_json::Value = response.json().unwrap_or_default();
    let message = body["error"]["message"].as_str().unwrap_or("no details");
    bail!("server answered {status}: {message}")
}

pub(crate) fn send(request: RequestBuilder, url: &str) -> Result<Response> {
    check(
        request
            .send()
            .with_context(|| format!("cannot reach the server at {url} (is `minerva serve` running?)"))?,
    )
}

pub fn run(args: RunArgs) -> Result<()> {
    let client = client()?;
    let mut history: Vec<serde_json::Value> = Vec::new();
    let mut out = std::io::stdout().lock();
    if let Some(prompt) = &args.prompt {
        history.push(serde_json::json!({ "role": "user", "content": prompt }));
        chat_turn(&client, &args, &history, &mut out)?;
        return Ok(());
    }
    eprintln!("chatting with {} (Ctrl-D to quit)", args.model);
    let stdin = std::io::stdin();
    loop {
        write!(out, ">>> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        history.push(serde_json::json!({ "role": "user", "content": line }));
        let reply = chat_turn(&client, &args, &history, &mut out)?;
        history.push(serde_json::json!({ "role": "assistant", "content": reply }));
    }
}

/// Streams one assistant reply to `out` and returns its text.
fn chat_turn(client: &Client, args: &RunArgs, history: &[serde_json::Value], out: &mut impl Write) -> Result<String> {
    let body =
        serde_json::json!({ "model": args.model, "messages": history, "stream": true, "max_tokens": args.max_tokens });
    let request = args
        .server
        .request(client, reqwest::Method::POST, "/v1/chat/completions")
        .json(&body);
    let response = send(request, &args.server.url)?;
    let mut reply = String::new();
    for line in BufReader::new(response).lines() {
        let line = line.context("reading the stream")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let event: serde_json::Value = serde_json::from_str(data).context("malformed stream event")?;
        if let Some(message) = event["error"]["message"].as_str() {
            bail!("generation failed: {message}");
        }
        if let Some(text) = event["choices"][0]["delta"]["content"].as_str() {
            out.write_all(text.as_bytes())?;
            out.flush()?;
            reply.push_str(text);
        }
    }
    writeln!(out)?;
    Ok(reply)
}

pub fn ps(args: ServerArgs) -> Result<()> {
    let client = client()?;
    let loaded: serde_json::Value = send(
        args.request(&client, reqwest::Method::GET, "/v1/models/loaded"),
        &args.url,
    )?
    .json()?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<28} {:>10}  {:<10}", "MODEL", "MEMORY", "UNTIL")?;
    for model in loaded["data"].as_array().into_iter().flatten() {
        let bytes = model["bytes"].as_u64().unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let until = model["expires_at"]
            .as_u64()
            .map_or_else(|| "until stopped".to_owned(), |t| from_now(t.saturating_sub(now)));
        writeln!(
            out,
            "{:<28} {:>7.0} MB  {until}",
            model["id"].as_str().unwrap_or("?"),
            bytes as f64 / 1e6
        )?;
    }
    Ok(())
}

pub fn stop(args: StopArgs) -> Result<()> {
    let client = client()?;
    let path = format!("/v1/models/{}", args.model);
    let answer: serde_json::Value = send(
        args.server.request(&client, reqwest::Method::DELETE, &path),
        &args.server.url,
    )?
    .json()?;
    if answer["unloaded"].as_bool() == Some(true) {
        println!("unloaded {}", args.model);
    } else {
        println!("{} was not loaded", args.model);
    }
    Ok(())
}

/// "4 minutes from now", as `ollama ps` says it.
pub(crate) fn from_now(seconds: u64) -> String {
    let (n, unit) = match seconds {
        0 => return "now".to_owned(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    format!("{n} {unit}{} from now", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::from_now;

    #[test]
    fn expiry_reads_like_ollama() {
        assert_eq!(from_now(0), "now");
        assert_eq!(from_now(1), "1 second from now");
        assert_eq!(from_now(59), "59 seconds from now");
        assert_eq!(from_now(299), "4 minutes from now");
        assert_eq!(from_now(3600), "1 hour from now");
        assert_eq!(from_now(3 * 86_400 + 5), "3 days from now");
    }
}

#[derive(clap::Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    action: ExperimentAction,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(clap::Subcommand)]
enum ExperimentAction {
    /// Weights and figures per variant, with 95 % confidence intervals of the differences.
    Status { name: String },
    /// Send all of the experiment's traffic to one variant (admin key).
    Promote { name: String, variant: String },
    /// Restore the weights before the last promote or change (admin key).
    Rollback { name: String },
}

/// `minerva experiment status|promote|rollback NAME`.
pub fn experiment(args: ExperimentArgs) -> Result<()> {
    let client = client()?;
    let url = &args.server.url;
    let (method, path, body) = match &args.action {
        ExperimentAction::Status { name } => (reqwest::Method::GET, format!("/v1/experiments/{name}"), None),
        ExperimentAction::Promote { name, variant } => (
            reqwest::Method::POST,
            format!("/v1/experiments/{name}/promote"),
            Some(serde_json::json!({ "variant": variant })),
        ),
        ExperimentAction::Rollback { name } => (
            reqwest::Method::POST,
            format!("/v1/experiments/{name}/rollback"),
            Some(serde_json::json!({})),
        ),
    };
    let mut request = args.server.request(&client, method, &path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let status: serde_json::Value = send(request, url)?.json().context("reading the server's answer")?;
    print_experiment(&status);
    Ok(())
}

fn print_experiment(status: &serde_json::Value) {
    println!("experiment {}", status["name"].as_str().unwrap_or("?"));
    let ci = |v: &serde_json::Value| match (v["difference"].as_f64(), v["ci95"][0].as_f64(), v["ci95"][1].as_f64()) {
        (Some(d), Some(lo), Some(hi)) => format!("{d:+.4} [{lo:+.4}, {hi:+.4}]"),
        _ => "-".to_owned(),
    };
    let mean = |v: &serde_json::Value| match v["n"].as_u64() {
        Some(n) if n > 0 => format!("{:.4}", v["mean"].as_f64().unwrap_or(0.0)),
        _ => "-".to_owned(),
    };
    println!("{:<28} {:>7} {:>9} {:>7}", "variant", "weight", "requests", "errors");
    let variants = status["variants"].as_array().cloned().unwrap_or_default();
    for v in &variants {
        println!(
            "{:<28} {:>6.1}% {:>9} {:>7}",
            v["variant"].as_str().unwrap_or("?"),
            v["weight"].as_f64().unwrap_or(0.0) * 100.0,
            v["requests"].as_u64().unwrap_or(0),
            v["errors"].as_u64().unwrap_or(0),
        );
    }
    // One table per figure: its mean per variant and the difference from the first
    // variant with its 95 % confidence interval.
    for (figure, key, versus) in [
        ("latency s", "latency_seconds", "latency_vs_first"),
        ("ttft s", "ttft_seconds", "ttft_vs_first"),
        ("tokens/s", "tokens_per_second", "tokens_per_second_vs_first"),
        ("feedback", "feedback", "feedback_vs_first"),
    ] {
        println!();
        println!("{:<28} {:>7} {:>12} {:>30}", figure, "n", "mean", "vs first (95% CI)");
        for v in &variants {
            println!(
                "{:<28} {:>7} {:>12} {:>30}",
                v["variant"].as_str().unwrap_or("?"),
                v[key]["n"].as_u64().unwrap_or(0),
                mean(&v[key]),
                ci(&v[versus]),
            );
        }
    }
}
