//! The audit log from the command line: `minerva audit [--since 1d] [--json]` lists the
//! administrative actions the registry recorded (the server's admin routes, and the
//! commands that change the store: import, pull, rm, quantize, create, config, tag,
//! rollback, tune), and [`record`] adds a command's own row.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use minerva_store::{AuditEntry, ModelStore};

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// Only actions newer than this: a duration (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// One JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let since = match args.since.as_deref() {
        None => 0,
        Some(text) => since_millis(text)?,
    };
    let entries = model_arg::registry(store)?.audit_since(since)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20}  {:<32} {:<14} {:<8} TARGET",
        "WHEN", "ACTION", "ACTOR", "OUTCOME"
    )?;
    for e in &entries {
        let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(e.at).unwrap_or(0));
        writeln!(
            out,
            "{:<20}  {:<32} {:<14} {:<8} {}",
            humantime::format_rfc3339_seconds(at).to_string(),
            e.action,
            e.actor,
            e.outcome,
            e.target
        )?;
    }
    Ok(())
}

/// `--since` as milliseconds since the epoch.
fn since_millis(text: &str) -> Result<i64> {
    let at = if let Ok(ago) = humantime::parse_duration(text) {
        SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH)
    } else if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        at
    } else {
        bail!("--since {text:?}: a duration such as 1h or 7d, or a time such as 2026-12-01T00:00:00Z");
    };
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}

/// Records subcommand `command` as `action`, with its arguments as the target, and how
/// it ended. The actor is `cli:` and the user; a registry that cannot be written only
/// warns.
pub fn record(store: &ModelStore, command: &str, action: &str, result: &Result<()>) {
    let target = std::env::args()
        .skip(1)
        .skip_while(|a| a != command)
        .skip(1)
        .map(|arg| redact(command, &arg))
        .collect::<Vec<_>>()
        .join(" ");
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
    let outcome = match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {}", e.to_string().lines().next().unwrap_or_default()),
    };
    let entry = AuditEntry::now(action, target, format!("cli:{user}"), outcome);
    match model_arg::registry(store) {
        Ok(registry) => {
            if let Err(e) = registry.audit(&entry) {
                tracing::warn!(error = %e, "the action was not written to the audit log");
            }
        }
        Err(e) => tracing::warn!(error = %e, "the action was not written to the audit log"),
    }
}

/// An argument as the audit log keeps it: a URL without its credentials and query (a
/// pull's `https://user:pass@…` or signed `?X-Amz-Signature=…`), and a setting's key
/// without its value (a system prompt is a user's text).
fn redact(command: &str, arg: &str) -> String {
    if let Some((scheme, rest)) = arg.split_once("://") {
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let rest = match rest.split_once('/') {
            Some((authority, path)) => format!("{}/{path}", authority.rsplit('@').next().unwrap_or_default()),
            None => rest.rsplit('@').next().unwrap_or_default().to_owned(),
        };
        return format!("{scheme}://{rest}");
    }
    if command == "config"
        && let Some((key, _)) = arg.split_once('=')
    {
        return format!("{key}=…");
    }
    arg.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_signatures_and_setting_values_stay_out_of_the_log() {
        assert_eq!(
            redact("pull", "https://ann:secret@host.example/m.gguf?X-Amz-Signature=abc"),
            "https://host.example/m.gguf"
        );
        assert_eq!(redact("pull", "http://tok@host:8080"), "http://host:8080");
        assert_eq!(redact("pull", "hf.co/owner/repo:Q4_K_M"), "hf.co/owner/repo:Q4_K_M");
        assert_eq!(redact("config", "system=You are my lawyer"), "system=…");
        assert_eq!(redact("config", "smollm2"), "smollm2");
        assert_eq!(redact("import", "./a=b.gguf"), "./a=b.gguf");
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let hour_ago = since_millis("1h").unwrap();
        assert!((now - 3_600_000 - hour_ago).abs() < 5_000, "{hour_ago}");
        assert_eq!(since_millis("2026-12-01T00:00:00Z").unwrap(), 1_796_083_200_000);
        assert!(since_millis("yesterday-ish").is_err());
    }
}
