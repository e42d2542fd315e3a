//! Structured outputs: OpenAI's `response_format` (`text`, `json_object`, `json_schema`)
//! and a raw `grammar` (llguidance's Lark syntax) or `regex`, turned into the grammar the
//! engine enforces token by token. An invalid or unsupported schema is a 400 that names
//! the offending part.

use minerva_engine::constraint::{Constraint, Grammar};
use minerva_pool::LlmLease;
use serde::Deserialize;

use crate::error::ApiError;

/// Largest schema or grammar accepted, in bytes of its JSON or text.
const MAX_GRAMMAR_BYTES: usize = 64 << 10;

/// `response_format`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
    json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
struct JsonSchemaFormat {
    #[allow(dead_code)] // OpenAI requires it; it names the schema and changes nothing.
    name: Option<String>,
    schema: Option<serde_json::Value>,
    /// OpenAI's `strict`: the output always follows the schema here, strict or not.
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// The grammar fields of a request: OpenAI's `response_format`, and llama-server-style
/// extensions.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct GrammarFields {
    pub response_format: Option<ResponseFormat>,
    /// A grammar in llguidance's Lark syntax (`start: ...`).
    pub grammar: Option<String>,
    /// A regular expression the whole output matches.
    pub regex: Option<String>,
}

impl GrammarFields {
    /// The grammar the request asks for, if any; at most one of the fields may set one.
    pub fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        let format = match &self.response_format {
            None => None,
            Some(format) => match format.kind.as_str() {
                "text" => None,
                "json_object" => Some(Grammar::JsonObject),
                "json_schema" => {
                    let schema = format
                        .json_schema
                        .as_ref()
                        .and_then(|s| s.schema.clone())
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "response_format.json_schema.schema",
                                "a json_schema format needs a schema",
                            )
                        })?;
                    if !schema.is_object() && !schema.is_boolean() {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.schema",
                            "must be a JSON schema object",
                        ));
                    }
                    let bytes = schema.to_string().len();
                    if bytes > MAX_GRAMMAR_BYTES {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.schema",
                            format!("{bytes} bytes exceed the limit of {MAX_GRAMMAR_BYTES}"),
                        ));
                    }
                    Some(Grammar::JsonSchema(schema))
                }
                other => {
                    return Err(ApiError::invalid(
                        "response_format.type",
                        format!("{other:?} is not one of \"text\", \"json_object\", \"json_schema\""),
                    ));
                }
            },
        };
        let raw = [
            self.grammar.clone().map(|g| ("grammar", Grammar::Lark(g))),
            self.regex.clone().map(|r| ("regex", Grammar::Regex(r))),
        ];
        let mut chosen: Vec<(&str, Grammar)> = raw.into_iter().flatten().collect();
        for (field, grammar) in &chosen {
            let text = match grammar {
                Grammar::Lark(text) | Grammar::Regex(text) => text,
                _ => continue,
            };
            if text.is_empty() || text.len() > MAX_GRAMMAR_BYTES {
                return Err(ApiError::invalid(
                    field.to_string(),
                    format!("must have 1 to {MAX_GRAMMAR_BYTES} bytes"),
                ));
            }
        }
        if let Some(format) = format {
            chosen.push(("response_format", format));
        }
        if chosen.len() > 1 {
            let fields: Vec<&str> = chosen.iter().map(|(f, _)| *f).collect();
            return Err(ApiError::invalid(
                chosen[1].0.to_string(),
                format!("give one of {} (they would conflict)", fields.join(", ")),
            ));
        }
        Ok(chosen.pop().map(|(_, grammar)| grammar))
    }
}

/// Compiles `grammar` for the model of `lease` (off the async threads: the first use
/// walks the model's vocabulary, and a big schema takes a while to compile).
pub async fn constraint(lease: &LlmLease, grammar: Grammar) -> Result<Constraint, ApiError> {
    let lease = lease.clone();
    tokio::task::spawn_blocking(move || {
        let vocabulary = lease.vocabulary()?;
        Constraint::new(&vocabulary, &grammar)
    })
    .await
    .map_err(|_| ApiError::Internal("compiling the grammar failed".into()))?
    .map_err(ApiError::from)
}
