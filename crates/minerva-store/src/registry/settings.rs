//! Per-model settings: a model's own defaults (context size, parallel sequences, KV type,
//! system prompt, sampling), kept in the registry beside its record and read when the
//! model loads. `minerva config NAME key=value` sets them; a new value takes effect on
//! the model's next load.

use rusqlite::params;

use super::{Registry, RegistryError};
use crate::ModelId;

/// Every key, with what it means (for `minerva config --help` and errors).
pub const SETTING_KEYS: &[(&str, &str)] = &[
    ("num_ctx", "tokens of one request's context (prompt and reply)"),
    ("parallel", "requests generated at once, batched"),
    ("kv_type", "element type of the KV cache: f16, q8_0 or q4_0"),
    ("system", "system prompt of chats that bring none"),
    ("temperature", "sampling temperature when a request gives none"),
    ("top_p", "nucleus sampling threshold when a request gives none"),
    ("top_k", "top-k sampling when a request gives none (0: off)"),
    (
        "embedding_dtype",
        "an embedding model's precision: f32, or bf16 (AVX512-BF16, about twice as fast)",
    ),
];

/// A model's settings; `None` means the server's default.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ModelSettings {
    pub num_ctx: Option<u32>,
    pub parallel: Option<usize>,
    pub kv_type: Option<String>,
    pub system: Option<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub embedding_dtype: Option<String>,
}

impl ModelSettings {
    /// Sets `key` to `value` (`None` or an empty value: back to the default), validated.
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), RegistryError> {
        let value = value.filter(|v| !v.is_empty());
        let invalid = |reason: String| RegistryError::InvalidSetting {
            key: key.to_owned(),
            reason,
        };
        fn parse<T: std::str::FromStr>(v: Option<&str>) -> Result<Option<T>, String> {
            v.map(|v| v.trim().parse::<T>().map_err(|_| format!("{v:?} is not a valid value")))
                .transpose()
        }
        // Each value is checked before it is stored: a refused value leaves the old one.
        match key {
            "num_ctx" => {
                let n: Option<u32> = parse(value).map_err(invalid)?;
                if n.is_some_and(|n| !(16..=1 << 20).contains(&n)) {
                    return Err(invalid("must be between 16 and 1048576".into()));
                }
                self.num_ctx = n;
            }
            "parallel" => {
                let n: Option<usize> = parse(value).map_err(invalid)?;
                if n.is_some_and(|n| !(1..=64).contains(&n)) {
                    return Err(invalid("must be between 1 and 64".into()));
                }
                self.parallel = n;
            }
            "kv_type" => {
                if value.is_some_and(|v| !matches!(v, "f16" | "q8_0" | "q4_0")) {
                    return Err(invalid("must be f16, q8_0 or q4_0".into()));
                }
                self.kv_type = value.map(str::to_owned);
            }
            "system" => {
                if value.is_some_and(|v| v.len() > 64 << 10) {
                    return Err(invalid("must be at most 64 KiB".into()));
                }
                self.system = value.map(str::to_owned);
            }
            "temperature" => {
                let t: Option<f64> = parse(value).map_err(invalid)?;
                if t.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                    return Err(invalid("must be between 0 and 2".into()));
                }
                self.temperature = t;
            }
            "top_p" => {
                let p: Option<f64> = parse(value).map_err(invalid)?;
                if p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
                    return Err(invalid("must be in (0, 1]".into()));
                }
                self.top_p = p;
            }
            "top_k" => self.top_k = parse(value).map_err(invalid)?,
            "embedding_dtype" => {
                if value.is_some_and(|v| !matches!(v, "f32" | "bf16")) {
                    return Err(invalid("must be f32 or bf16".into()));
                }
                self.embedding_dtype = value.map(str::to_owned);
            }
            _ => {
                let known: Vec<&str> = SETTING_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(invalid(format!(
                    "unknown setting; the settings are {}",
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The settings that are set, as `(key, value)` text.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let mut push = |key, value: Option<String>| {
            if let Some(v) = value {
                pairs.push((key, v));
            }
        };
        push("num_ctx", self.num_ctx.map(|v| v.to_string()));
        push("parallel", self.parallel.map(|v| v.to_string()));
        push("kv_type", self.kv_type.clone());
        push("system", self.system.clone());
        push("temperature", self.temperature.map(|v| v.to_string()));
        push("top_p", self.top_p.map(|v| v.to_string()));
        push("top_k", self.top_k.map(|v| v.to_string()));
        push("embedding_dtype", self.embedding_dtype.clone());
        pairs
    }
}

impl Registry {
    /// Model `id`'s settings (all defaults when none were set).
    pub fn settings(&self, id: &ModelId) -> Result<ModelSettings, RegistryError> {
        let rows: Vec<(String, String)> = {
            let conn = self.lock();
            let mut stmt = conn
                .prepare("SELECT key, value FROM settings WHERE id = ?1")
                .map_err(|e| self.db(e))?;
            let rows = stmt
                .query_map([id.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(|e| self.db(e))?;
            rows.collect::<rusqlite::Result<_>>().map_err(|e| self.db(e))?
        };
        let mut settings = ModelSettings::default();
        for (key, value) in rows {
            // A key an older or newer Minerva wrote and this one does not know is skipped.
            if let Err(e) = settings.set(&key, Some(&value)) {
                tracing::warn!(%id, error = %e, "ignoring a stored setting");
            }
        }
        Ok(settings)
    }

    /// Replaces model `id`'s settings in one transaction.
    pub fn set_settings(&self, id: &ModelId, settings: &ModelSettings) -> Result<(), RegistryError> {
        if self.record(id)?.is_none() {
            return Err(RegistryError::NotRegistered { id: id.clone() });
        }
        self.write(|tx| {
            tx.execute("DELETE FROM settings WHERE id = ?1", [id.as_str()])?;
            for (key, value) in settings.pairs() {
                tx.execute(
                    "INSERT INTO settings (id, key, value) VALUES (?1, ?2, ?3)",
                    params![id.as_str(), key, value],
                )?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_validated_and_an_empty_value_resets() {
        let mut s = ModelSettings::default();
        s.set("num_ctx", Some("2048")).unwrap();
        s.set("system", Some("Answer in French.")).unwrap();
        s.set("temperature", Some("0.2")).unwrap();
        assert_eq!((s.num_ctx, s.temperature), (Some(2048), Some(0.2)));
        for (key, value) in [
            ("num_ctx", "lots"),
            ("num_ctx", "8"),
            ("kv_type", "q2"),
            ("temperature", "9"),
            ("top_p", "0"),
            ("colour", "red"),
        ] {
            let before = s.clone();
            assert!(s.set(key, Some(value)).is_err(), "{key}={value} was accepted");
            assert_eq!(s, before, "a refused {key} changed the settings");
        }
        s.set("num_ctx", Some("")).unwrap();
        assert_eq!(s.num_ctx, None);
        assert_eq!(
            s.pairs(),
            [
                ("system", "Answer in French.".to_owned()),
                ("temperature", "0.2".to_owned())
            ]
        );
    }
}
