//! Pulling models into the store: from a Hugging Face-compatible hub, an Ollama-style
//! registry, or a plain URL.
//!
//! A pull resolves its [`Source`] to one file (URL, expected SHA-256 and size), downloads
//! it into `.pull-SHA256.partial` in the models directory (resuming an earlier partial
//! file of the same digest, retrying dropped connections with a `Range`), verifies the
//! digest, and hands the file to the registry's crash-safe import (a hard link, so no
//! second copy). Two pulls of one file share the download: the second waits on the
//! first's lock (per digest) and then finds the file in the store and links it. Nothing here runs unless a pull was asked for, and [`PullOptions::offline`]
//! refuses even that.
//!
//! This is the only crate that speaks HTTP as a client; TLS is rustls on aws-lc-rs.

mod client;
mod download;
mod error;
mod hub;
mod registry;
mod source;

use std::fs::File;
use std::path::{Path, PathBuf};

use minerva_store::{
    ImportMode, ImportOptions, ModelId, ModelRecord, ModelStatus, ModelStore, Registry, RegistryError,
};
use reqwest::blocking::Client;

pub use client::{http_client, install_crypto_provider};
pub use error::PullError;
pub use source::{Source, redact};

/// The hub used when `HF_ENDPOINT` is unset.
pub const DEFAULT_HUB: &str = "https://huggingface.co";
/// The registry used when `MINERVA_OLLAMA_REGISTRY` is unset.
pub const DEFAULT_REGISTRY: &str = "https://registry.ollama.ai";

/// Where sources resolve, and with which credentials.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL of the Hugging Face-compatible hub (`HF_ENDPOINT`).
    pub hub: String,
    /// Bearer token for the hub (`HF_TOKEN`).
    pub hub_token: Option<String>,
    /// Base URL of the Ollama-style registry (`MINERVA_OLLAMA_REGISTRY`).
    pub registry: String,
}

impl Default for Endpoints {
    /// The public services, no token.
    fn default() -> Self {
        Self {
            hub: DEFAULT_HUB.into(),
            hub_token: None,
            registry: DEFAULT_REGISTRY.into(),
        }
    }
}

impl Endpoints {
    /// From `HF_ENDPOINT`, `HF_TOKEN` and `MINERVA_OLLAMA_REGISTRY`, with the public
    /// services as defaults.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            hub: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_HUB.into()),
            hub_token: var("HF_TOKEN"),
            registry: var("MINERVA_OLLAMA_REGISTRY").unwrap_or_else(|| DEFAULT_REGISTRY.into()),
        }
    }
}

/// Whether `MINERVA_OFFLINE` asks for no network access at all.
pub fn offline_from_env() -> bool {
    std::env::var("MINERVA_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// How a pull runs. The default: the public services, online, no name or digest given.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The model's name in the store (default: derived from the source).
    pub name: Option<ModelId>,
    /// The SHA-256 the file must have (required for plain URLs).
    pub sha256: Option<String>,
    /// Refuse to touch the network.
    pub offline: bool,
    /// Extra trusted CA certificates (PEM).
    pub ca_file: Option<PathBuf>,
    pub endpoints: Endpoints,
}

impl PullOptions {
    /// Options from the environment, with no name or digest given.
    pub fn from_env() -> Self {
        Self {
            name: None,
            sha256: None,
            offline: offline_from_env(),
            ca_file: None,
            endpoints: Endpoints::from_env(),
        }
    }
}

/// What a pull is doing, for progress bars and streamed responses.
#[derive(Debug, Clone)]
pub enum PullEvent<'a> {
    /// Asking the hub or registry which file the source means.
    Resolving,
    /// Bytes of the file on disk so far.
    Downloading {
        name: &'a str,
        sha256: Option<&'a str>,
        done: u64,
        total: Option<u64>,
    },
    /// The download is complete; registering it (hashing the linked file once more).
    Registering,
}

/// The one file a source resolved to.
#[derive(Debug, Clone)]
struct Artifact {
    url: String,
    token: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
    default_name: String,
}

/// How a pull ended.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub record: ModelRecord,
    /// `false` when the store had the file already (under this name or another, which
    /// then shares it: one copy on disk).
    pub downloaded: bool,
}

/// Pulls `source` into `store` and registers it.
pub fn pull(
    store: &ModelStore,
    registry: &Registry,
    source: &str,
    options: &PullOptions,
    events: &mut dyn FnMut(PullEvent<'_>),
) -> Result<Pulled, PullError> {
    let parsed = Source::parse(source)?;
    if options.offline {
        return Err(PullError::Offline(source.to_owned()));
    }
    let client = client::build(options.ca_file.as_deref())?;
    events(PullEvent::Resolving);
    let mut artifact = resolve(&client, &parsed, &options.endpoints)?;
    if let Some(sha256) = &options.sha256 {
        if !(sha256.len() == 64 && sha256.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(PullError::InvalidSource {
                source_text: sha256.clone(),
                why: "--sha256 takes 64 hexadecimal digits".into(),
            });
        }
        artifact.sha256 = Some(sha256.to_ascii_lowercase());
    }
    let expected = artifact.sha256.clone().ok_or_else(|| PullError::NoDigest {
        url: artifact.url.clone(),
    })?;
    let name = match &options.name {
        Some(name) => name.clone(),
        None => ModelId::new(&artifact.default_name)?,
    };
    let root = store.root();
    std::fs::create_dir_all(root).map_err(|e| io(root, e))?;
    // One download per file at a time, whatever the names: a second pull of the same
    // digest waits here, then finds it in the store and links it.
    let lock_path = root.join(format!(".pull-{expected}.lock"));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, e))?;
    lock.lock().map_err(|e| io(&lock_path, e))?;
    if let Some(record) = registry.record(&name)? {
        let intact = record.status == ModelStatus::Ok && store.resolve(&name).is_ok();
        return match (record.sha256 == expected, intact) {
            (true, true) => Ok(Pulled {
                record,
                downloaded: false,
            }),
            (true, false) => Err(PullError::Damaged { id: name.to_string() }),
            (false, _) => Err(PullError::Conflict {
                id: name.to_string(),
                have: record.sha256,
            }),
        };
    }
    if store.resolve(&name).is_ok() {
        // A file of that name that nobody registered: found before the download, not after.
        return Err(PullError::Conflict {
            id: name.to_string(),
            have: "an unregistered file".into(),
        });
    }
    // A file the store holds already under another name is linked, not downloaded again.
    if let Some(entry) = registry
        .records()?
        .into_iter()
        .filter(|r| r.sha256 == expected && r.status == ModelStatus::Ok)
        .find_map(|r| store.resolve(&r.id).ok())
        .filter(|e| e.format == minerva_store::ModelFormat::Gguf)
    {
        let import = ImportOptions {
            id: Some(name.clone()),
            mode: ImportMode::HardLink,
            origin: format!(
                "pull {} (the file of {}, already in the store)",
                source::redact(source),
                entry.id
            ),
            ..Default::default()
        };
        let record = registry.import(store, &entry.path, &import, &mut |_, _| {})?;
        if record.sha256 != expected {
            // The donor's bytes changed since it was verified: do not keep them.
            registry.remove(store, &name)?;
            return Err(PullError::HashMismatch {
                url: entry.id.to_string(),
                expected,
                actual: record.sha256,
            });
        }
        tracing::info!(%name, from = %entry.id, "pulled model linked to a file already in the store");
        return Ok(Pulled {
            record,
            downloaded: false,
        });
    }
    // Named by digest: an interrupted pull of another file under this name never
    // resumes onto these bytes.
    let partial = root.join(format!(".pull-{expected}.partial"));
    let digest = download::download(
        &client,
        &artifact.url,
        artifact.token.as_deref(),
        &partial,
        &download::Expected {
            sha256: Some(&expected),
            size: artifact.size,
        },
        &mut |done, total| {
            events(PullEvent::Downloading {
                name: name.as_str(),
                sha256: Some(&expected),
                done,
                total,
            })
        },
    )?;
    events(PullEvent::Registering);
    let import = ImportOptions {
        id: Some(name.clone()),
        mode: ImportMode::HardLink,
        origin: format!("pull {}", source::redact(source)),
        ..Default::default()
    };
    let record = match registry.import(store, &partial, &import, &mut |_, _| {}) {
        Ok(record) => record,
        Err(e) => {
            // A verified download is kept for the next try, unless the file itself is
            // what the import refused.
            if matches!(e, RegistryError::InvalidModel { .. } | RegistryError::Gguf(_)) {
                let _ = std::fs::remove_file(&partial);
            }
            return Err(e.into());
        }
    };
    let _ = std::fs::remove_file(&partial);
    tracing::info!(%name, url = %artifact.url, sha256 = %digest, "pulled model");
    // The empty lock file stays: removing it would let a waiter and a newcomer lock
    // two different files of one digest.
    drop(lock);
    Ok(Pulled {
        record,
        downloaded: true,
    })
}

fn resolve(client: &Client, source: &Source, endpoints: &Endpoints) -> Result<Artifact, PullError> {
    match source {
        Source::Hub { repo, quant, file } => hub::resolve(
            client,
            &endpoints.hub,
            endpoints.hub_token.as_deref(),
            repo,
            quant.as_deref(),
            file.as_deref(),
        ),
        Source::Registry { namespace, name, tag } => {
            registry::resolve(client, &endpoints.registry, namespace, name, tag)
        }
        Source::Url(url) => {
            let file = url
                .split(['?', '#'])
                .next()
                .unwrap_or(url)
                .rsplit('/')
                .next()
                .unwrap_or("");
            Ok(Artifact {
                url: url.clone(),
                token: None,
                sha256: None,
                size: None,
                default_name: file.strip_suffix(".gguf").unwrap_or(file).to_owned(),
            })
        }
    }
}

/// GETs `url` and parses its JSON body, with the same error typing as downloads.
fn get_json<T: serde::de::DeserializeOwned>(client: &Client, url: &str, token: Option<&str>) -> Result<T, PullError> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let network = |e: reqwest::Error| PullError::Network {
        url: url.to_owned(),
        message: download::error_chain(&e),
    };
    let response = request.send().map_err(network)?;
    match response.status().as_u16() {
        200 => response.json().map_err(|e| PullError::Resolve {
            what: url.to_owned(),
            why: format!("unexpected response: {e}"),
        }),
        404 => Err(PullError::NotFound { url: url.to_owned() }),
        status => Err(PullError::Http {
            url: url.to_owned(),
            status,
        }),
    }
}

fn io(path: &Path, source: std::io::Error) -> PullError {
    PullError::Io {
        path: path.to_owned(),
        source,
    }
}
