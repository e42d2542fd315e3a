//! Chat prompts rendered from the model's own Jinja template, in a sandbox.
//!
//! Templates come from model files, so they are untrusted code: the environment has no
//! loader (no file access), minijinja bounds recursion, output is capped while it is
//! written, and fuel bounds both work and memory. minijinja charges fuel for every
//! instruction and for every byte and list slot a template creates (operators, literals,
//! filter results), and checks sizes it can know before allocating them, so a template
//! with [`TEMPLATE_FUEL`] can create at most [`TEMPLATE_MAX_CREATED_BYTES`] of strings and
//! lists in one render. A failing template fails that request only.

use std::io;

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value, context};

use crate::{EngineError, LanguageModel, Result, TokenId};

/// Fuel per render: one per instruction, one per 64 bytes created.
pub const TEMPLATE_FUEL: u64 = 1_000_000;
/// The memory a render can fill with the strings and lists it creates (minijinja charges
/// one fuel per 64 bytes). A 4 MiB prompt built from long messages uses under a tenth.
pub const TEMPLATE_MAX_CREATED_BYTES: u64 = TEMPLATE_FUEL * 64;
/// Largest rendered prompt, in bytes.
const MAX_RENDERED_BYTES: usize = 4 << 20;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts of those tokens.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| EngineError::ChatTemplate(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template of `model`, or an error when the file has none.
    pub fn for_model(model: &dyn LanguageModel) -> Result<Self> {
        Self::for_model_with(model, None)
    }

    /// `own` (a template the model's settings give) for `model`, else the model file's.
    pub fn for_model_with(model: &dyn LanguageModel, own: Option<&str>) -> Result<Self> {
        let meta = model.metadata();
        let source = own.or(meta.chat_template.as_deref()).ok_or_else(|| {
            EngineError::ChatTemplate("the model file has no chat template (tokenizer.chat_template)".into())
        })?;
        let text = |token: Option<TokenId>| {
            token
                .map(|t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned())
                .unwrap_or_default()
        };
        Self::new(source, &text(meta.bos_token), &text(meta.eos_token))
    }

    /// Renders a conversation, ending with the assistant's turn opener when
    /// `add_generation_prompt` is set.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::ChatTemplate(describe(&e)))?;
        let ctx = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        let mut out = BoundedBuffer::default();
        template.render_captured_to(ctx, &mut out).map_err(|e| {
            if out.overflowed {
                EngineError::ChatTemplate(format!("rendered prompt exceeds {MAX_RENDERED_BYTES} bytes"))
            } else {
                EngineError::ChatTemplate(describe(&e))
            }
        })?;
        String::from_utf8(out.bytes).map_err(|_| EngineError::ChatTemplate("rendered prompt is not valid UTF-8".into()))
    }
}

/// Renders `messages` with the model's template and tokenizes the result as llama.cpp's
/// server does: special-token text is parsed, and a BOS the template wrote is dropped
/// when the tokenizer adds one itself (no double BOS).
pub fn chat_prompt_tokens(
    model: &dyn LanguageModel,
    template: &ChatTemplate,
    messages: &[ChatMessage],
) -> Result<Vec<TokenId>> {
    let rendered = template.render(messages, true)?;
    let adds_bos = model.metadata().bos_token.is_some();
    let text = match rendered.strip_prefix(template.bos_token.as_str()) {
        Some(rest) if adds_bos && !template.bos_token.is_empty() => rest,
        _ => rendered.as_str(),
    };
    model.tokenize(text, true, true)
}

fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{} ({detail})", e.kind()),
        None => e.to_string(),
    }
}

/// An output sink that refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct BoundedBuffer {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl io::Write for BoundedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("rendered prompt too long"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn chatml_template_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "").unwrap();
        let out = t
            .render(
                &[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")],
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip() | upper }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  hi  ")], false).unwrap(), "<s>HI");
        let err = t.render(&[ChatMessage::new("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first message must be from the user"), "{err}");
    }

    #[test]
    fn runaway_templates_fail_instead_of_hanging() {
        let infinite = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(infinite.render(&[], false), Err(EngineError::ChatTemplate(_))));
        let recursive = ChatTemplate::new("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "", "").unwrap();
        assert!(matches!(
            recursive.render(&[], false),
            Err(EngineError::ChatTemplate(_))
        ));
    }

    #[test]
    fn templates_cannot_include_files() {
        // Without a loader there is nothing to include from: the statement is refused.
        let err = ChatTemplate::new("{% include '/etc/passwd' %}", "", "")
            .err()
            .expect("include is refused");
        // Refused because nothing can be loaded, not because of what the file holds.
        assert!(matches!(err, EngineError::ChatTemplate(_)), "{err}");
        let rendered = ChatTemplate::new("{{ messages[0].content }}", "", "")
            .unwrap()
            .render(&[ChatMessage::new("user", "{% include '/etc/passwd' %}")], false)
            .unwrap();
        // Message text is data, never template code.
        assert_eq!(rendered, "{% include '/etc/passwd' %}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(EngineError::ChatTemplate(_))
        ));
    }
}
