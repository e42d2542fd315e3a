//! A hostile chat template cannot fill memory: fuel bounds the bytes a render creates.
//! One test in its own binary, so the process's peak resident size (VmHWM) is its own.

use minerva_engine::EngineError;
use minerva_engine::chat::{ChatMessage, ChatTemplate, TEMPLATE_MAX_CREATED_BYTES};

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn hostile_templates_fail_within_the_memory_bound_and_long_chats_still_render() {
    // A long, legitimate conversation: 1,000 messages, 3.4 MB of prompt.
    let messages: Vec<ChatMessage> = (0..1000)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "word ".repeat(680)))
        .collect();
    let rendered = ChatTemplate::new(CHATML, "", "")
        .unwrap()
        .render(&messages, true)
        .unwrap();
    assert!(rendered.len() > 3_400_000, "{}", rendered.len());

    let before = peak_rss_bytes();
    let hostile = [
        // Doubling a string: a few dozen instructions, gigabytes without a byte charge.
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        // A filter that multiplies its input twenty-fold, twice.
        "{{ ('x' * 3000000) | replace('x', 'xxxxxxxxxxxxxxxxxxxx') | replace('x', 'xxxxxxxxxxxxxxxxxxxx') | length }}",
        // Many large strings kept alive in a list.
        "{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = ns.l + ['y' * 1000000 ~ i] %}{% endfor %}{{ ns.l | length }}",
        // A list repeated into a huge one, then joined.
        "{{ (['abcdefgh'] * 50000000) | join(',') | length }}",
        // The same message content copied over and over.
        "{% for i in range(100000) %}{% set x = messages[0].content ~ messages[0].content %}{% endfor %}",
    ];
    for source in hostile {
        let template = ChatTemplate::new(source, "", "").unwrap();
        let result = template.render(&messages[..1], false);
        assert!(
            matches!(result, Err(EngineError::ChatTemplate(ref m)) if m.contains("fuel") || m.contains("too large")),
            "{source}: {result:?}"
        );
    }
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < 2 * TEMPLATE_MAX_CREATED_BYTES,
        "peak memory grew by {} MiB (bound {} MiB)",
        grown >> 20,
        TEMPLATE_MAX_CREATED_BYTES >> 20
    );
}
