//! Streaming detokenization that only ever emits valid UTF-8.
//!
//! Byte-level vocabularies split multi-byte characters across tokens (an emoji is often
//! three or four tokens). [`Utf8Stream`] holds back an incomplete character until the
//! token that completes it arrives, so streamed text is never broken mid-character.

/// Accumulates token bytes and releases the longest valid UTF-8 prefix.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Creates an empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid_up_to` marks a valid prefix, so this conversion cannot fail.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Invalid bytes in the middle: replace them and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                        // An incomplete character (at most 3 bytes) at the end: wait for more.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: a dangling partial character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_across_tokens_is_held_back_until_complete() {
        let crab = "🦀".as_bytes();
        let mut stream = Utf8Stream::new();
        assert_eq!(stream.push(&crab[..1]), "");
        assert_eq!(stream.push(&crab[1..3]), "");
        assert_eq!(stream.push(&crab[3..]), "🦀");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn complete_prefix_is_released_and_partial_tail_kept() {
        let text = "añ日".as_bytes();
        let mut stream = Utf8Stream::new();
        // "a" + first byte of "ñ"
        assert_eq!(stream.push(&text[..2]), "a");
        // rest of "ñ" + first two bytes of "日"
        assert_eq!(stream.push(&text[2..5]), "ñ");
        assert_eq!(stream.push(&text[5..]), "日");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_without_stalling() {
        let mut stream = Utf8Stream::new();
        assert_eq!(stream.push(&[b'x', 0xff, b'y']), "x\u{fffd}y");
        assert_eq!(stream.push(&[0xe6]), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }

    #[test]
    fn every_split_of_a_mixed_string_reassembles_exactly() {
        let text = "héllo 世界 👨‍👩‍👧 ok";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut stream = Utf8Stream::new();
            let mut out = stream.push(&bytes[..cut]);
            out += &stream.push(&bytes[cut..]);
            out += &stream.finish();
            assert_eq!(out, text, "split at {cut}");
        }
    }
}
