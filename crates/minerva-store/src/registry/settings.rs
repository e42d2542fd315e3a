//! Per-model settings: a model's own defaults (context size, parallel sequences, KV type,
//! system prompt, sampling), kept in the registry beside its record and read when the
//! model loads. `minerva config NAME key=value` sets them; a new value takes effect on
//! the model's next load.

use super::db::args;
use super::{Registry, RegistryError};
use crate::ModelId;

/// Every key, with what it means (for `minerva config --help` and errors).
pub const SETTING_KEYS: &[(&str, &str)] = &[
    ("num_ctx", "tokens of one request's context (prompt and reply)"),
    ("parallel", "requests generated at once, batched"),
    ("threads", "CPU threads of the model's forward passes"),
    (
        "draft_max",
        "longest speculative draft (prompt lookup) per step: 0 turns speculative decoding off",
    ),
    ("kv_type", "element type of the KV cache: f16, q8_0 or q4_0"),
    (
        "batch",
        "most tokens of one forward pass, the chunk a long prompt is read in: 64 to 512",
    ),
    (
        "draft_model",
        "a model of the models directory with the same vocabulary that drafts its greedy replies",
    ),
    (
        "flash_attention",
        "false: attention without llama.cpp's flash-attention kernels (needs kv_type f16)",
    ),
    (
        "rope_scaling",
        "stretch the context past the trained length: none, linear or yarn (with rope_factor)",
    ),
    (
        "rope_factor",
        "how many times the trained context RoPE scaling reads (above 1, at most 64)",
    ),
    ("system", "system prompt of chats that bring none"),
    (
        "template",
        "a Jinja chat template used instead of the model file's (Hugging Face's format)",
    ),
    (
        "keep_alive",
        "how long the model stays loaded after its last request: 5m, 1h, 0, -1 (forever)",
    ),
    ("pinned", "true: never evicted for room or idleness (as --pin)"),
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
    pub threads: Option<usize>,
    pub draft_max: Option<usize>,
    pub kv_type: Option<String>,
    pub batch: Option<usize>,
    pub flash_attention: Option<bool>,
    pub draft_model: Option<String>,
    pub rope_scaling: Option<String>,
    pub rope_factor: Option<f64>,
    pub system: Option<String>,
    pub template: Option<String>,
    pub keep_alive: Option<String>,
    pub pinned: Option<bool>,
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
            "threads" => {
                let n: Option<usize> = parse(value).map_err(invalid)?;
                if n.is_some_and(|n| !(1..=256).contains(&n)) {
                    return Err(invalid("must be between 1 and 256".into()));
                }
                self.threads = n;
            }
            "draft_max" => {
                let n: Option<usize> = parse(value).map_err(invalid)?;
                if n.is_some_and(|n| n > 32) {
                    return Err(invalid("must be between 0 and 32".into()));
                }
                self.draft_max = n;
            }
            "kv_type" => {
                if value.is_some_and(|v| !matches!(v, "f16" | "q8_0" | "q4_0")) {
                    return Err(invalid("must be f16, q8_0 or q4_0".into()));
                }
                self.kv_type = value.map(str::to_owned);
            }
            "batch" => {
                let n: Option<usize> = parse(value).map_err(invalid)?;
                if n.is_some_and(|n| !(64..=512).contains(&n)) {
                    return Err(invalid("must be between 64 and 512".into()));
                }
                self.batch = n;
            }
            "flash_attention" => self.flash_attention = parse(value).map_err(invalid)?,
            "draft_model" => {
                if let Some(v) = value {
                    ModelId::new(v.trim()).map_err(|e| invalid(e.to_string()))?;
                }
                self.draft_model = value.map(|v| v.trim().to_owned());
            }
            "rope_scaling" => {
                if value.is_some_and(|v| !matches!(v, "none" | "linear" | "yarn")) {
                    return Err(invalid("must be none, linear or yarn".into()));
                }
                self.rope_scaling = value.map(str::to_owned);
            }
            "rope_factor" => {
                let f: Option<f64> = parse(value).map_err(invalid)?;
                if f.is_some_and(|f| !(f > 1.0 && f <= 64.0)) {
                    return Err(invalid("must be above 1 and at most 64".into()));
                }
                self.rope_factor = f;
            }
            "system" => {
                if value.is_some_and(|v| v.len() > 64 << 10) {
                    return Err(invalid("must be at most 64 KiB".into()));
                }
                self.system = value.map(str::to_owned);
            }
            "template" => {
                if value.is_some_and(|v| v.len() > 64 << 10) {
                    return Err(invalid("must be at most 64 KiB".into()));
                }
                self.template = value.map(str::to_owned);
            }
            "keep_alive" => {
                if value.is_some_and(|v| !is_duration(v)) {
                    return Err(invalid(
                        "must be a duration such as 30s, 5m or 1h30m, seconds, 0, or -1 for ever".into(),
                    ));
                }
                self.keep_alive = value.map(|v| v.trim().to_owned());
            }
            "pinned" => self.pinned = parse(value).map_err(invalid)?,
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
                if value.is_some_and(|v| !matches!(v, "f32" | "bf16" | "int8")) {
                    return Err(invalid("must be f32, bf16 or int8".into()));
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
        push("threads", self.threads.map(|v| v.to_string()));
        push("draft_max", self.draft_max.map(|v| v.to_string()));
        push("kv_type", self.kv_type.clone());
        push("batch", self.batch.map(|v| v.to_string()));
        push("flash_attention", self.flash_attention.map(|v| v.to_string()));
        push("draft_model", self.draft_model.clone());
        push("rope_scaling", self.rope_scaling.clone());
        push("rope_factor", self.rope_factor.map(|v| v.to_string()));
        push("system", self.system.clone());
        push("template", self.template.clone());
        push("keep_alive", self.keep_alive.clone());
        push("pinned", self.pinned.map(|v| v.to_string()));
        push("temperature", self.temperature.map(|v| v.to_string()));
        push("top_p", self.top_p.map(|v| v.to_string()));
        push("top_k", self.top_k.map(|v| v.to_string()));
        push("embedding_dtype", self.embedding_dtype.clone());
        pairs
    }

    /// Checks what single values cannot: a RoPE scaling needs its factor, and a quantized
    /// KV cache flash attention.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.flash_attention == Some(false) && self.kv_type.as_deref().is_some_and(|t| t != "f16") {
            return Err(RegistryError::InvalidSetting {
                key: "flash_attention".into(),
                reason: "a quantized KV cache (kv_type q8_0 or q4_0) needs flash attention".into(),
            });
        }
        if matches!(self.rope_scaling.as_deref(), Some("linear" | "yarn")) && self.rope_factor.is_none() {
            return Err(RegistryError::InvalidSetting {
                key: "rope_scaling".into(),
                reason: "needs rope_factor too (how many times the trained context to read)".into(),
            });
        }
        Ok(())
    }
}

/// Whether `text` reads as a keep-alive: seconds (negative: for ever), or a sum of
/// numbers with units (`1h30m`, `250ms`), optionally negative.
fn is_duration(text: &str) -> bool {
    let text = text.trim();
    if text.parse::<f64>().is_ok_and(|n| !n.is_nan()) {
        return true;
    }
    let body = text.strip_prefix('-').unwrap_or(text);
    let mut rest = body;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        if !matches!(&rest[..unit], "ns" | "us" | "ms" | "s" | "m" | "h" | "d") {
            return false;
        }
        rest = &rest[unit..];
    }
    true
}

impl Registry {
    /// Model `id`'s settings (all defaults when none were set).
    pub fn settings(&self, id: &ModelId) -> Result<ModelSettings, RegistryError> {
        let rows: Vec<(String, String)> = self.read(|db| {
            db.query("SELECT key, value FROM settings WHERE id = ?1", args![id.as_str()])?
                .iter()
                .map(|row| Ok((row.get(0)?, row.get(1)?)))
                .collect()
        })?;
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
        settings.validate()?;
        self.write(|tx| {
            tx.execute("DELETE FROM settings WHERE id = ?1", args![id.as_str()])?;
            for (key, value) in settings.pairs() {
                tx.execute(
                    "INSERT INTO settings (id, key, value) VALUES (?1, ?2, ?3)",
                    args![id.as_str(), key, value],
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
            ("keep_alive", "soon"),
            ("keep_alive", "5 parsecs"),
            ("pinned", "maybe"),
            ("batch", "32"),
            ("batch", "4096"),
            ("flash_attention", "sometimes"),
            ("draft_model", "../elsewhere"),
        ] {
            let before = s.clone();
            assert!(s.set(key, Some(value)).is_err(), "{key}={value} was accepted");
            assert_eq!(s, before, "a refused {key} changed the settings");
        }
        for ok in ["5m", "1h30m", "250ms", "0", "-1", "90"] {
            s.set("keep_alive", Some(ok)).unwrap();
        }
        s.set("keep_alive", None).unwrap();
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

    #[test]
    fn a_quantized_kv_cache_without_flash_attention_is_refused_as_a_whole() {
        let mut s = ModelSettings::default();
        s.set("kv_type", Some("q8_0")).unwrap();
        s.set("flash_attention", Some("false")).unwrap();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("flash attention"), "{e}");
        s.set("kv_type", Some("f16")).unwrap();
        s.set("batch", Some("128")).unwrap();
        s.validate().unwrap();
        assert_eq!(
            s.pairs(),
            [
                ("kv_type", "f16".to_owned()),
                ("batch", "128".to_owned()),
                ("flash_attention", "false".to_owned())
            ]
        );
    }
}
