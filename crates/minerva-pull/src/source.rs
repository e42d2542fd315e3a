//! What users type after `minerva pull`, parsed.

use crate::PullError;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A Hugging Face-compatible hub: `hf.co/OWNER/REPO[:QUANT]` or `hf.co/OWNER/REPO/FILE.gguf`.
    Hub {
        repo: String,
        quant: Option<String>,
        file: Option<String>,
    },
    /// An Ollama-style registry: `ollama.com/[NAMESPACE/]NAME[:TAG]`, or just
    /// `[NAMESPACE/]NAME[:TAG]` as Ollama's users type it.
    Registry {
        namespace: String,
        name: String,
        tag: String,
    },
    /// A plain `http://` or `https://` URL of a GGUF file.
    Url(String),
}

/// `source` as it may be kept (in a model's history) and shown: a URL without the user
/// name, password, query or fragment it carried, where signed links and tokens live.
pub fn redact(source: &str) -> String {
    match reqwest::Url::parse(source) {
        Ok(mut url) if matches!(url.scheme(), "http" | "https") => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        _ => source.to_owned(),
    }
}

const HUB_HOSTS: &[&str] = &["hf.co/", "huggingface.co/", "https://huggingface.co/", "https://hf.co/"];
const REGISTRY_HOSTS: &[&str] = &["ollama.com/", "registry.ollama.ai/", "https://ollama.com/"];

impl Source {
    pub fn parse(text: &str) -> Result<Self, PullError> {
        let text = text.trim();
        let invalid = |why: &str| PullError::InvalidSource {
            source_text: text.to_owned(),
            why: why.to_owned(),
        };
        if let Some(rest) = HUB_HOSTS.iter().find_map(|h| text.strip_prefix(h)) {
            let parts: Vec<&str> = rest.split('/').collect();
            let segment_ok = |s: &str| {
                !s.is_empty()
                    && s != "."
                    && s != ".."
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            return match parts.as_slice() {
                [owner, repo] => {
                    let (repo, quant) = match repo.split_once(':') {
                        Some((r, q)) => (r, Some(q.to_owned())),
                        None => (*repo, None),
                    };
                    if !segment_ok(owner) || !segment_ok(repo) || quant.as_deref().is_some_and(|q| !segment_ok(q)) {
                        return Err(invalid("expected hf.co/OWNER/REPO[:QUANT]"));
                    }
                    Ok(Self::Hub {
                        repo: format!("{owner}/{repo}"),
                        quant,
                        file: None,
                    })
                }
                [owner, repo, file @ ..] if file.iter().all(|s| segment_ok(s)) && rest.ends_with(".gguf") => {
                    if !segment_ok(owner) || !segment_ok(repo) {
                        return Err(invalid("expected hf.co/OWNER/REPO/FILE.gguf"));
                    }
                    Ok(Self::Hub {
                        repo: format!("{owner}/{repo}"),
                        quant: None,
                        file: Some(file.join("/")),
                    })
                }
                _ => Err(invalid(
                    "expected hf.co/OWNER/REPO[:QUANT] or hf.co/OWNER/REPO/FILE.gguf",
                )),
            };
        }
        let is_url = text.starts_with("http://") || text.starts_with("https://");
        let registry_path = REGISTRY_HOSTS
            .iter()
            .find_map(|h| text.strip_prefix(h))
            .or((!is_url && !text.contains("://")).then_some(text));
        if let Some(rest) = registry_path {
            let (path, tag) = rest.split_once(':').unwrap_or((rest, "latest"));
            let (namespace, name) = path.split_once('/').unwrap_or(("library", path));
            let name_ok = |s: &str| {
                !s.is_empty()
                    && !s.starts_with('.')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if !name_ok(namespace) || !name_ok(name) || !name_ok(tag) {
                return Err(invalid(
                    "expected hf.co/OWNER/REPO[:QUANT], hf.co/OWNER/REPO/FILE.gguf, [ollama.com/]NAME[:TAG] or an http(s):// URL",
                ));
            }
            return Ok(Self::Registry {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                tag: tag.to_owned(),
            });
        }
        if is_url {
            return Ok(Self::Url(text.to_owned()));
        }
        Err(invalid(
            "expected hf.co/OWNER/REPO[:QUANT], hf.co/OWNER/REPO/FILE.gguf, [ollama.com/]NAME[:TAG] or an http(s):// URL",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_signed_queries_are_kept_out_of_what_is_recorded() {
        assert_eq!(
            redact("https://bob:hunter2@models.example/a/m.gguf?X-Signature=abc&token=t#x"),
            "https://models.example/a/m.gguf"
        );
        assert_eq!(redact("hf.co/owner/repo:Q8_0"), "hf.co/owner/repo:Q8_0");
        assert_eq!(redact("smollm2:135m"), "smollm2:135m");
    }

    #[test]
    fn hub_registry_and_url_sources_parse() {
        assert_eq!(
            Source::parse("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q8_0").unwrap(),
            Source::Hub {
                repo: "bartowski/SmolLM2-135M-Instruct-GGUF".into(),
                quant: Some("Q8_0".into()),
                file: None
            }
        );
        assert_eq!(
            Source::parse("huggingface.co/o/r/sub/m.gguf").unwrap(),
            Source::Hub {
                repo: "o/r".into(),
                quant: None,
                file: Some("sub/m.gguf".into())
            }
        );
        assert_eq!(
            Source::parse("ollama.com/smollm2:135m").unwrap(),
            Source::Registry {
                namespace: "library".into(),
                name: "smollm2".into(),
                tag: "135m".into()
            }
        );
        assert_eq!(
            Source::parse("ollama.com/library/smollm2").unwrap(),
            Source::Registry {
                namespace: "library".into(),
                name: "smollm2".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(
            Source::parse("smollm2").unwrap(),
            Source::Registry {
                namespace: "library".into(),
                name: "smollm2".into(),
                tag: "latest".into()
            }
        );
        assert!(matches!(
            Source::parse("http://127.0.0.1:9/x.gguf").unwrap(),
            Source::Url(_)
        ));
    }

    #[test]
    fn sources_that_could_escape_a_url_path_or_mean_nothing_are_refused() {
        for text in [
            "hf.co/owner",
            "hf.co/../etc:passwd",
            "hf.co/o/r/../../x.gguf",
            "hf.co/o/r/file.bin",
            "ollama.com/../x",
            "ollama.com/a/b/c",
            "small model",
            "file:///etc/passwd",
        ] {
            assert!(Source::parse(text).is_err(), "{text:?} was accepted");
        }
    }
}
