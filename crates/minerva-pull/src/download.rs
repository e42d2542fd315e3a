//! One file from a URL into a partial file, resumably, hashed on the way.
//!
//! The partial file survives an interrupted pull (a dropped connection, a killed process):
//! the next attempt hashes what is there and asks for the rest with an HTTP `Range`. A
//! server that ignores the range (200 instead of 206) gets the whole file again. The
//! digest is compared with the expected one before the file is handed on; a mismatch
//! deletes it.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};

use crate::PullError;

/// Attempts per file before a transient failure is reported.
const MAX_ATTEMPTS: u32 = 6;
const CHUNK: usize = 1 << 18;

/// What the downloaded file must be.
pub struct Expected<'a> {
    pub sha256: Option<&'a str>,
    pub size: Option<u64>,
}

/// Downloads `url` into `partial` (resuming what is there) and returns its SHA-256.
/// `progress(done, total)` follows the bytes on disk.
pub fn download(
    client: &Client,
    url: &str,
    token: Option<&str>,
    partial: &Path,
    expected: &Expected<'_>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, PullError> {
    let io = |source| PullError::Io {
        path: partial.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(partial)
        .map_err(io)?;
    let mut state = State {
        have: 0,
        hasher: Sha256::new(),
    };
    let on_disk = file.metadata().map_err(io)?.len();
    if expected.size.is_some_and(|size| on_disk > size) {
        file.set_len(0).map_err(io)?;
    } else if on_disk > 0 {
        state.have = hash_prefix(&mut file, &mut state.hasher).map_err(io)?;
        tracing::info!(url, bytes = state.have, "resuming a download");
    }
    let mut attempt = 0;
    while expected.size != Some(state.have) {
        let before = state.have;
        match fetch(client, url, token, &mut file, &mut state, expected.size, progress) {
            Ok(()) => break,
            Err(e) if e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                // A try that brought bytes starts the count again: a long download over
                // a flaky link fails only when tries stop making progress.
                attempt = if state.have > before { 1 } else { attempt + 1 };
                let wait = Duration::from_millis(250 << attempt.min(5));
                tracing::warn!(url, attempt, error = %e, "download interrupted; resuming");
                std::thread::sleep(wait);
            }
            Err(e) => return Err(e),
        }
    }
    file.sync_all().map_err(io)?;
    progress(state.have, expected.size.or(Some(state.have)));
    let actual = hex(&state.hasher.finalize());
    if let Some(size) = expected.size
        && size != state.have
    {
        let _ = std::fs::remove_file(partial);
        return Err(PullError::SizeMismatch {
            url: url.to_owned(),
            expected: size,
            actual: state.have,
        });
    }
    if let Some(want) = expected.sha256
        && !want.eq_ignore_ascii_case(&actual)
    {
        let _ = std::fs::remove_file(partial);
        return Err(PullError::HashMismatch {
            url: url.to_owned(),
            expected: want.to_ascii_lowercase(),
            actual,
        });
    }
    Ok(actual)
}

struct State {
    have: u64,
    hasher: Sha256,
}

fn fetch(
    client: &Client,
    url: &str,
    token: Option<&str>,
    file: &mut File,
    state: &mut State,
    size: Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<(), PullError> {
    let network = |e: &dyn std::fmt::Display| PullError::Network {
        url: url.to_owned(),
        message: e.to_string(),
    };
    let io = |source| PullError::Io {
        path: "partial download".into(),
        source,
    };
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    if state.have > 0 {
        request = request.header(RANGE, format!("bytes={}-", state.have));
    }
    let mut response = request.send().map_err(|e| network(&error_chain(&e)))?;
    match response.status() {
        StatusCode::PARTIAL_CONTENT => {
            let start = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(state.have) {
                return Err(network(&format!(
                    "asked for bytes from {} and got Content-Range {start:?}",
                    state.have
                )));
            }
        }
        StatusCode::OK => {
            if state.have > 0 {
                tracing::info!(url, "the server ignored the range; downloading from the start");
                file.set_len(0).map_err(io)?;
                *state = State {
                    have: 0,
                    hasher: Sha256::new(),
                };
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if state.have > 0 && size.is_none() => return Ok(()),
        StatusCode::NOT_FOUND => return Err(PullError::NotFound { url: url.to_owned() }),
        status => {
            return Err(PullError::Http {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
    }
    let total = size.or_else(|| response.content_length().map(|len| len + state.have));
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(network(&error_chain(&e))),
        };
        if size.is_some_and(|size| state.have + n as u64 > size) {
            // A server that sends more than the file's size never fills the disk.
            return Err(PullError::SizeMismatch {
                url: url.to_owned(),
                expected: size.unwrap_or(0),
                actual: state.have + n as u64,
            });
        }
        file.write_all(&buf[..n]).map_err(io)?;
        state.hasher.update(&buf[..n]);
        state.have += n as u64;
        progress(state.have, total);
    }
    match total {
        Some(total) if state.have < total => Err(network(&format!(
            "connection closed after {} of {total} bytes",
            state.have
        ))),
        _ => Ok(()),
    }
}

/// Hashes the bytes already in `file`; returns their count.
fn hash_prefix(file: &mut File, hasher: &mut Sha256) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(total),
            n => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
        }
    }
}

/// A reqwest error with its causes (reqwest's own message alone says "error sending
/// request" and hides why).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
