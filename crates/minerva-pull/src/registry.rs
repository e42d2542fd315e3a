//! Ollama-style registries: an OCI-like manifest per `NAME:TAG` whose model layer is a
//! GGUF blob addressed by its SHA-256.

use reqwest::blocking::Client;
use serde::Deserialize;

use crate::{Artifact, PullError, get_json};

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

#[derive(Deserialize)]
struct Manifest {
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    media_type: String,
    digest: String,
    size: u64,
}

pub fn resolve(client: &Client, base: &str, namespace: &str, name: &str, tag: &str) -> Result<Artifact, PullError> {
    let base = base.trim_end_matches('/');
    let manifest_url = format!("{base}/v2/{namespace}/{name}/manifests/{tag}");
    let manifest: Manifest = get_json(client, &manifest_url, None)?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .ok_or_else(|| PullError::Resolve {
            what: format!("{namespace}/{name}:{tag}"),
            why: "the manifest has no model layer".into(),
        })?;
    let sha256 = layer
        .digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| PullError::Resolve {
            what: format!("{namespace}/{name}:{tag}"),
            why: format!("unsupported layer digest {:?}", layer.digest),
        })?;
    Ok(Artifact {
        url: format!("{base}/v2/{namespace}/{name}/blobs/{}", layer.digest),
        token: None,
        sha256: Some(sha256.to_ascii_lowercase()),
        size: Some(layer.size),
        default_name: if tag == "latest" {
            name.to_owned()
        } else {
            format!("{name}:{tag}")
        },
    })
}
