//! Tool calls on `/v1/chat/completions`: `tools`, `tool_choice` (`none`, `auto`,
//! `required`, a named function) and the `tool` messages that bring results back.
//!
//! The tools reach the model through a system prompt (the fallback every model can
//! follow: the functions with their JSON-schema parameters, and the one reply format
//! `{"name": ..., "arguments": {...}}`). With `required` or a named function the reply is
//! grammar-constrained to exactly such a call, its arguments valid against the function's
//! `parameters`, so even a small model returns a call that validates. With `auto` the
//! model may answer in text; a reply that is such a call is returned as one. One call per
//! reply (`parallel_tool_calls` is accepted; several calls are not generated).

use std::collections::HashMap;

use minerva_engine::chat::ChatMessage;
use minerva_engine::constraint::Grammar;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;

/// Most tools in one request.
const MAX_TOOLS: usize = 64;

/// `tools[i]`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ToolSpec {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionSpec,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
struct FunctionSpec {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

/// `tool_choice`: a mode or `{"type": "function", "function": {"name": ...}}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named { function: NamedFunction },
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NamedFunction {
    name: String,
}

/// The tool fields of a chat request.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ToolFields {
    pub tools: Option<Vec<ToolSpec>>,
    pub tool_choice: Option<ToolChoice>,
    /// Accepted; one call is generated per reply.
    #[allow(dead_code)]
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    Auto,
    Required,
    Named(String),
}

/// The functions a request offers and how the model must use them.
#[derive(Debug)]
pub struct Tools {
    functions: Vec<FunctionSpec>,
    mode: Mode,
}

/// A call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as a JSON object's text (OpenAI's `function.arguments`).
    pub arguments: String,
}

impl ToolFields {
    /// The tools in force, checked; `None` without tools or with `tool_choice: "none"`.
    pub fn tools(&self) -> Result<Option<Tools>, ApiError> {
        let functions = match &self.tools {
            None => Vec::new(),
            Some(tools) => check_tools(tools)?,
        };
        let mode = match &self.tool_choice {
            None => Mode::Auto,
            Some(ToolChoice::Mode(mode)) => match mode.as_str() {
                "none" => return Ok(None),
                "auto" => Mode::Auto,
                "required" => Mode::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("{other:?} is not one of \"none\", \"auto\", \"required\" or a named function"),
                    ));
                }
            },
            Some(ToolChoice::Named { function }) => {
                if !functions.iter().any(|f| f.name == function.name) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("no tool named {:?} in tools", function.name),
                    ));
                }
                Mode::Named(function.name.clone())
            }
        };
        if functions.is_empty() {
            return match mode {
                Mode::Auto => Ok(None),
                _ => Err(ApiError::invalid("tool_choice", "needs tools")),
            };
        }
        Ok(Some(Tools { functions, mode }))
    }
}

fn check_tools(tools: &[ToolSpec]) -> Result<Vec<FunctionSpec>, ApiError> {
    if tools.is_empty() || tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("give 1 to {MAX_TOOLS} tools")));
    }
    let mut functions: Vec<FunctionSpec> = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        if tool.kind != "function" {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                format!("{:?} is not \"function\"", tool.kind),
            ));
        }
        let f = &tool.function;
        let valid_name = !f.name.is_empty()
            && f.name.len() <= 64
            && f.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                "1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if functions.iter().any(|g| g.name == f.name) {
            return Err(ApiError::invalid(
                format!("{param}.function.name"),
                format!("{:?} is offered twice", f.name),
            ));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(ApiError::invalid(
                format!("{param}.function.parameters"),
                "must be a JSON schema object",
            ));
        }
        functions.push(f.clone());
    }
    Ok(functions)
}

impl Tools {
    /// Puts the system prompt that offers the functions before the conversation (after
    /// the request's own system message, when it has one).
    pub fn offer(&self, messages: &mut Vec<ChatMessage>) {
        let prompt = self.system_prompt();
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{prompt}", first.content);
            }
            _ => messages.insert(0, ChatMessage::new("system", prompt)),
        }
    }

    /// The system prompt that offers the functions.
    pub fn system_prompt(&self) -> String {
        let mut prompt = String::from(
            "You can call functions. To call one, reply with only a JSON object \
             {\"name\": <function name>, \"arguments\": <object of arguments>} and nothing else. \
             Otherwise reply normally.\nFunctions:\n",
        );
        for f in &self.functions {
            let description = f.description.as_deref().unwrap_or("");
            let parameters = f.parameters.clone().unwrap_or_else(|| json!({"type": "object"}));
            prompt.push_str(&format!("- {}: {description} Parameters: {parameters}\n", f.name));
        }
        if let Mode::Named(name) = &self.mode {
            prompt.push_str(&format!("Call {name} now.\n"));
        } else if self.mode == Mode::Required {
            prompt.push_str("Call one of them now.\n");
        }
        prompt
    }

    /// The grammar a reply must follow: exactly one call, for `required` and a named
    /// function; none (free text or a call) for `auto`.
    pub fn grammar(&self) -> Option<Grammar> {
        let call = |f: &FunctionSpec| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": f.name},
                    "arguments": f.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                },
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        match &self.mode {
            Mode::Auto => None,
            Mode::Named(name) => self
                .functions
                .iter()
                .find(|f| &f.name == name)
                .map(|f| Grammar::JsonSchema(call(f))),
            Mode::Required => Some(Grammar::JsonSchema(json!({
                "anyOf": self.functions.iter().map(call).collect::<Vec<_>>(),
            }))),
        }
    }

    /// The call in a reply, when the whole reply is one call of an offered function.
    pub fn parse(&self, text: &str) -> Option<ToolCall> {
        let value: Value = serde_json::from_str(text.trim()).ok()?;
        let name = value.get("name")?.as_str()?;
        let arguments = value.get("arguments")?;
        if !arguments.is_object() || !self.functions.iter().any(|f| f.name == name) {
            return None;
        }
        Some(ToolCall {
            name: name.to_owned(),
            arguments: arguments.to_string(),
        })
    }
}

/// A call as OpenAI's `message.tool_calls[i]` (and as a streamed delta, with `index`).
pub fn call_json(call: &ToolCall, id: &str, index: Option<usize>) -> Value {
    let mut value = json!({
        "id": id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    });
    if let Some(index) = index {
        value["index"] = json!(index);
    }
    value
}

/// A fresh call id, unique within the server's run.
pub fn call_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}_{n}", super::generation::response_id("call"))
}

/// A past call in an assistant message (`messages[i].tool_calls[j]`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// The arguments' JSON text.
    pub arguments: String,
}

/// The text an assistant's past calls are shown to the model as: the calls in the format
/// it was asked to reply in, one per line. Remembers each call's id, for the results.
pub fn past_calls(calls: &[ToolCallIn], names: &mut HashMap<String, String>) -> String {
    let mut text = String::new();
    for call in calls {
        let arguments: Value = serde_json::from_str(&call.function.arguments).unwrap_or(Value::Null);
        text.push_str(&json!({"name": call.function.name, "arguments": arguments}).to_string());
        text.push('\n');
        if let Some(id) = &call.id {
            names.insert(id.clone(), call.function.name.clone());
        }
    }
    text
}

/// The text a `tool` message (a call's result) is shown to the model as.
pub fn result_text(content: &str, call_id: Option<&str>, names: &HashMap<String, String>) -> String {
    result_of(call_id.and_then(|id| names.get(id)).map(String::as_str), content)
}

/// The text of the result of function `name` (when known).
pub fn result_of(name: Option<&str>, content: &str) -> String {
    match name {
        Some(name) => format!("Result of {name}: {content}"),
        None => format!("Function result: {content}"),
    }
}
