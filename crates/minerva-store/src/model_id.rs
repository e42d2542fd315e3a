//! Model ids: the names clients use, restricted so they can never name a path.

use std::fmt;

/// Longest accepted id.
const MAX_LEN: usize = 128;

/// A validated model id: 1–128 characters of `[A-Za-z0-9._:-]`, not starting with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ModelId(String);

/// Why a string is not a model id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid model id {id:?}: ids are 1-{MAX_LEN} characters of A-Z a-z 0-9 . _ : - and do not start with a dot")]
pub struct InvalidModelId {
    /// The rejected input.
    pub id: String,
}

impl ModelId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, InvalidModelId> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if id.is_empty() || id.len() > MAX_LEN || id.starts_with('.') || !id.chars().all(allowed) {
            return Err(InvalidModelId { id: id.to_owned() });
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ModelId {
    type Err = InvalidModelId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_ids_are_accepted() {
        for id in [
            "smollm2-135m-instruct",
            "gemma-3-270m",
            "all-minilm-l6-v2",
            "qwen3:0.6b",
            "a.b_c",
        ] {
            assert_eq!(ModelId::new(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn ids_that_could_name_a_path_are_rejected() {
        for id in [
            "",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "%2e%2e",
            "x y",
            "é",
            &"a".repeat(129),
        ] {
            assert!(ModelId::new(id).is_err(), "{id:?} was accepted");
        }
    }
}
