//! The request log, off unless asked for (`serve --request-log DIR`): each finished
//! generation's prompt (as the model saw it, template included), output and stage
//! figures, one JSON line each, in a file per UTC day (`requests-YYYY-MM-DD.jsonl`).
//! Files older than the retention (`--request-log-days`, 7 by default) are deleted when
//! the log starts and at each new day. Nothing else the server logs ever holds a prompt
//! or an output.
//!
//! Lines go through a bounded channel to a thread of their own, which owns the file: a
//! request never waits for the disk, and a slow or full disk loses log lines (counted in
//! a warning), never requests or memory. The directory is private to the server's user
//! (0700) and so are the files (0600): they hold what users typed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// Where the log goes and how long it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLogConfig {
    pub dir: PathBuf,
    pub retention_days: u32,
}

/// The log's handle; dropping it writes what is queued and ends the thread.
#[derive(Debug)]
pub struct RequestLog {
    lines: Option<mpsc::SyncSender<serde_json::Value>>,
    dropped: std::sync::atomic::AtomicU64,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        drop(self.lines.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const PREFIX: &str = "requests-";
const SUFFIX: &str = ".jsonl";
/// Lines queued at most before new ones are dropped.
const QUEUE: usize = 4096;
/// Longest retention (ten years): further would reach before the epoch.
const MAX_RETENTION_DAYS: u32 = 3650;

/// `YYYY-MM-DD` of `time`, in UTC.
fn day(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()[..10].to_owned()
}

/// Deletes the day files of `dir` older than `retention_days` before `now`.
fn prune(dir: &Path, retention_days: u32, now: SystemTime) {
    let keep = Duration::from_secs(u64::from(retention_days.min(MAX_RETENTION_DAYS)) * 86_400);
    let Some(oldest) = now.checked_sub(keep).map(day) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(date) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(SUFFIX)) else {
            continue;
        };
        // ISO dates compare as strings.
        if date.len() == 10 && date < oldest.as_str() {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "an expired request log file was not deleted");
            }
        }
    }
}

impl RequestLog {
    /// Starts the log in `config.dir` (created if needed), pruning expired days.
    pub fn start(config: RequestLogConfig) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)?;
        prune(&config.dir, config.retention_days, SystemTime::now());
        let (lines, inbox) = mpsc::sync_channel::<serde_json::Value>(QUEUE);
        let thread = std::thread::Builder::new().name("request-log".into()).spawn(move || {
            let mut open: Option<(String, std::fs::File)> = None;
            for line in inbox {
                let today = day(SystemTime::now());
                if open.as_ref().is_none_or(|(d, _)| *d != today) {
                    if open.is_some() {
                        prune(&config.dir, config.retention_days, SystemTime::now());
                    }
                    let path = config.dir.join(format!("{PREFIX}{today}{SUFFIX}"));
                    match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(&path)
                    {
                        Ok(file) => open = Some((today, file)),
                        Err(e) => {
                            tracing::warn!(error = %e, "the request log cannot be opened; this line is lost");
                            continue;
                        }
                    }
                }
                if let Some((_, file)) = open.as_mut()
                    && let Err(e) = writeln!(file, "{line}")
                {
                    tracing::warn!(error = %e, "a request log line was not written");
                }
            }
        })?;
        Ok(Self {
            lines: Some(lines),
            dropped: std::sync::atomic::AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    /// Queues one line, or drops it when the writer is that far behind.
    pub fn record(&self, line: serde_json::Value) {
        if let Some(lines) = &self.lines
            && let Err(mpsc::TrySendError::Full(_)) = lines.try_send(line)
        {
            let dropped = self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "the request log's disk is behind; lines are dropped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_past_the_retention_are_deleted_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01
        for name in [
            "requests-2026-11-20.jsonl",
            "requests-2026-11-24.jsonl",
            "requests-2026-11-30.jsonl",
            "requests-2026-12-01.jsonl",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), "{}\n").unwrap();
        }
        prune(dir.path(), 7, now);
        // A retention past the epoch is capped, not a panic.
        prune(dir.path(), u32::MAX, now);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "requests-2026-11-24.jsonl",
                "requests-2026-11-30.jsonl",
                "requests-2026-12-01.jsonl"
            ]
        );
    }

    #[test]
    fn lines_land_in_todays_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = RequestLog::start(RequestLogConfig {
            dir: dir.path().join("log"),
            retention_days: 7,
        })
        .unwrap();
        log.record(serde_json::json!({ "prompt": "p", "output": "o" }));
        // Dropping the log writes what it queued.
        drop(log);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("log")), 0o700);
        let path = dir
            .path()
            .join("log")
            .join(format!("{PREFIX}{}{SUFFIX}", day(SystemTime::now())));
        assert_eq!(mode(&path), 0o600, "prompts are for the server's user only");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"prompt\":\"p\",\"output\":\"o\"}\n"
        );
    }
}
