//! Hugging Face-compatible hubs: the file list from `/api/models/REPO/tree/main`, the
//! bytes from `/REPO/resolve/main/FILE`, the SHA-256 from the file's LFS metadata.

use reqwest::blocking::Client;
use serde::Deserialize;

use crate::{Artifact, PullError, get_json};

/// The quantizations tried, in order, when the source names none (llama.cpp's `-hf` and
/// Ollama default to Q4_K_M as well).
const DEFAULT_QUANTS: &[&str] = &["Q4_K_M", "Q8_0", "Q4_0", "F16", "BF16"];

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    size: Option<u64>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

pub fn resolve(
    client: &Client,
    endpoint: &str,
    token: Option<&str>,
    repo: &str,
    quant: Option<&str>,
    file: Option<&str>,
) -> Result<Artifact, PullError> {
    let endpoint = endpoint.trim_end_matches('/');
    let tree_url = format!("{endpoint}/api/models/{repo}/tree/main?recursive=true");
    let tree: Vec<TreeEntry> = get_json(client, &tree_url, token)?;
    let ggufs: Vec<&TreeEntry> = tree
        .iter()
        .filter(|e| e.kind == "file" && e.path.ends_with(".gguf") && !e.path.contains("mmproj"))
        // Only plain names go into a URL (no `..`, `?`, `#` or `%` a hub could send).
        .filter(|e| e.path.split('/').all(plain_segment))
        .collect();
    let what = format!("hf.co/{repo}");
    let resolve_error = |why: String| PullError::Resolve {
        what: what.clone(),
        why,
    };
    let chosen = match (file, quant) {
        (Some(file), _) => ggufs
            .iter()
            .find(|e| e.path == file)
            .ok_or_else(|| resolve_error(format!("no file {file} in the repository")))?,
        (None, Some(quant)) => pick(&ggufs, quant).ok_or_else(|| {
            resolve_error(format!(
                "no GGUF file for quantization {quant}; the repository has {}",
                list(&ggufs)
            ))
        })?,
        (None, None) => DEFAULT_QUANTS
            .iter()
            .find_map(|q| pick(&ggufs, q))
            .or_else(|| ggufs.first().copied())
            .ok_or_else(|| resolve_error("the repository has no GGUF file".into()))?,
    };
    if chosen.path.contains("-of-0") {
        return Err(resolve_error(format!(
            "{} is one part of a split GGUF; split files are not supported yet",
            chosen.path
        )));
    }
    let lfs = chosen.lfs.as_ref();
    Ok(Artifact {
        url: format!("{endpoint}/{repo}/resolve/main/{}", chosen.path),
        token: token.map(str::to_owned),
        sha256: lfs.map(|l| l.oid.to_ascii_lowercase()),
        size: lfs.map(|l| l.size).or(chosen.size),
        default_name: default_name(repo, &chosen.path),
    })
}

fn plain_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The GGUF whose name carries `quant` as a whole token (`-Q4_K_M.gguf`, `.q8_0.gguf`).
fn pick<'a>(ggufs: &[&'a TreeEntry], quant: &str) -> Option<&'a TreeEntry> {
    let quant = quant.to_ascii_lowercase();
    ggufs.iter().copied().find(|e| {
        let stem = e.path.rsplit('/').next().unwrap_or(&e.path).to_ascii_lowercase();
        let stem = stem.trim_end_matches(".gguf");
        stem.ends_with(&format!("-{quant}"))
            || stem.ends_with(&format!(".{quant}"))
            || stem.ends_with(&format!("_{quant}"))
    })
}

fn list(ggufs: &[&TreeEntry]) -> String {
    if ggufs.is_empty() {
        return "no GGUF file".into();
    }
    ggufs.iter().map(|e| e.path.as_str()).collect::<Vec<_>>().join(", ")
}

/// `owner/SmolLM2-135M-Instruct-GGUF` + `SmolLM2-135M-Instruct-Q8_0.gguf` →
/// `smollm2-135m-instruct:q8_0`.
fn default_name(repo: &str, file: &str) -> String {
    let repo = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
    let base = repo.strip_suffix("-gguf").unwrap_or(&repo).to_owned();
    let stem = file
        .rsplit('/')
        .next()
        .unwrap_or(file)
        .trim_end_matches(".gguf")
        .to_ascii_lowercase();
    match stem.strip_prefix(&base).map(|q| q.trim_start_matches(['-', '.', '_'])) {
        Some(quant) if !quant.is_empty() => format!("{base}:{quant}"),
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_repository_and_the_quantization() {
        assert_eq!(
            default_name(
                "bartowski/SmolLM2-135M-Instruct-GGUF",
                "SmolLM2-135M-Instruct-Q8_0.gguf"
            ),
            "smollm2-135m-instruct:q8_0"
        );
        assert_eq!(default_name("o/weird", "other-file.gguf"), "other-file");
    }
}
