//! The chat-template renderer (minijinja in its sandbox) on hostile templates: a model
//! file's `tokenizer.chat_template` is untrusted code. The input is a template and a
//! conversation, split at the first NUL: rendering must end (fuel), stay within its
//! output cap, and fail as an error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minerva_engine::chat::{ChatMessage, ChatTemplate};

/// The engine's cap on a rendered prompt (chat.rs: MAX_RENDERED_BYTES).
const MAX_RENDERED_BYTES: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (source, conversation) = text.split_once('\0').unwrap_or((text, "Hello"));
    let messages: Vec<ChatMessage> = conversation
        .split('\u{1}')
        .enumerate()
        .map(|(i, content)| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, content))
        .collect();
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    if let Ok(prompt) = template.render(&messages, true) {
        assert!(prompt.len() <= MAX_RENDERED_BYTES, "{} bytes rendered", prompt.len());
    }
});
