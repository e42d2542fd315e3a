//! Ollama's `options`, `format` and `keep_alive`, mapped onto Minerva's generation
//! options.

use minerva_engine::constraint::Grammar;
use minerva_engine::generate::{ContextShift, GenerateOptions};
use minerva_engine::{LanguageModel, TokenId};
use serde::Deserialize;

use crate::error::ApiError;
use crate::routes::generation::{self, ContextFields, SamplingFields, StopSpec};
use crate::state::AppState;

/// Largest `format` schema accepted, in bytes of its JSON.
const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// `options` of `/api/chat` and `/api/generate`. Options this server has no use for
/// (`num_thread`, `mirostat`, `num_gpu`, ...) are ignored, as Ollama ignores the ones
/// its runner does not know.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[schema(as = OllamaOptions)]
pub struct Options {
    /// The request's context. Minerva's session is sized once per model (`--ctx-size`,
    /// the model's `num_ctx` setting, the memory budget): a smaller `num_ctx` holds this
    /// request to it, a larger one gets the session's (Ollama would reload the model).
    num_ctx: Option<i64>,
    /// Tokens at the start of the context a context shift keeps (-1: the whole prompt).
    num_keep: Option<i64>,
    /// Tokens to generate; negative means "until the end" (the server's limit here).
    num_predict: Option<i64>,
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    /// Negative means random, as in Ollama.
    seed: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
}

/// Smallest `num_ctx` accepted.
const MIN_NUM_CTX: i64 = 16;

/// Ollama's defaults where they differ from OpenAI's (`api/types.go`, `DefaultOptions`).
const TEMPERATURE: f32 = 0.8;
const TOP_K: usize = 40;
const TOP_P: f32 = 0.9;
const REPEAT_PENALTY: f32 = 1.1;

impl Options {
    /// Which sampling fields the request gave (Ollama's defaults fill in the others,
    /// unless the model's settings do).
    pub fn given(&self) -> generation::Given {
        generation::Given {
            temperature: self.temperature.is_some(),
            top_p: self.top_p.is_some(),
            top_k: self.top_k.is_some(),
        }
    }

    /// The generation options these options ask for.
    pub fn generate_options(&self, state: &AppState) -> Result<GenerateOptions, ApiError> {
        let sampling = SamplingFields {
            temperature: Some(self.temperature.unwrap_or(TEMPERATURE)),
            top_p: Some(self.top_p.unwrap_or(TOP_P)),
            top_k: Some(match self.top_k {
                None => TOP_K,
                Some(k) => usize::try_from(k).unwrap_or(0),
            }),
            min_p: self.min_p,
            repeat_penalty: Some(self.repeat_penalty.unwrap_or(REPEAT_PENALTY)),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed.and_then(|s| u64::try_from(s).ok()),
            logit_bias: None,
        };
        // Ollama generates until the end when asked for -1 (its default) or -2; so does
        // this server, up to its own limit. A larger positive number is cut to the limit.
        let max_tokens = match self.num_predict {
            None => None,
            Some(n) if n < 0 => Some(state.config.max_tokens as i64),
            Some(0) => return Err(ApiError::invalid("options.num_predict", "must not be 0")),
            Some(n) => Some(n.min(state.config.max_tokens as i64)),
        };
        let stop = self.stop.clone().map(StopSpec::Many);
        let mut options =
            generation::options(state, &sampling, max_tokens, stop, None).map_err(|e| rename_param(e, "options."))?;
        options.n_ctx = match self.num_ctx {
            None => None,
            Some(n) if n < MIN_NUM_CTX => {
                return Err(ApiError::invalid(
                    "options.num_ctx",
                    format!("must be at least {MIN_NUM_CTX}"),
                ));
            }
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
        };
        Ok(options)
    }

    /// The context shift of a request for `prompt`: Ollama shifts a full context unless
    /// the request's `shift` is false, keeping `num_keep` tokens.
    pub fn context_shift(
        &self,
        state: &AppState,
        shift: Option<bool>,
        model: &dyn LanguageModel,
        prompt: &[TokenId],
    ) -> Result<Option<ContextShift>, ApiError> {
        let fields = ContextFields {
            context_shift: Some(shift.unwrap_or(true)),
            n_keep: self.num_keep,
        };
        fields.shift(state, model, prompt, "options.num_keep")
    }
}

/// The same error with `prefix` before its field's name (`temperature` becomes
/// `options.temperature`).
fn rename_param(e: ApiError, prefix: &str) -> ApiError {
    match e {
        ApiError::InvalidRequest {
            message,
            param: Some(param),
        } => ApiError::InvalidRequest {
            message,
            param: Some(format!("{prefix}{param}")),
        },
        other => other,
    }
}

/// `format`: `"json"`, or a JSON schema the output follows.
pub fn grammar(format: Option<&serde_json::Value>) -> Result<Option<Grammar>, ApiError> {
    match format {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) if s == "json" => Ok(Some(Grammar::JsonObject)),
        Some(schema @ serde_json::Value::Object(_)) => {
            let bytes = schema.to_string().len();
            if bytes > MAX_SCHEMA_BYTES {
                return Err(ApiError::invalid(
                    "format",
                    format!("{bytes} bytes exceed the limit of {MAX_SCHEMA_BYTES}"),
                ));
            }
            Ok(Some(Grammar::JsonSchema(schema.clone())))
        }
        Some(other) => Err(ApiError::invalid(
            "format",
            format!("must be \"json\" or a JSON schema object, not {other}"),
        )),
    }
}
