//! The streaming detokenizer's UTF-8 assembly: token bytes cut at arbitrary points must
//! come out as exactly the text a lossy decoding of all the bytes at once gives (every
//! character whole, one U+FFFD per invalid sequence, none dropped or doubled).
#![no_main]

use libfuzzer_sys::fuzz_target;
use minerva_engine::detokenize::Utf8Stream;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the cut points: pieces of 1 to 8 bytes, as tokens are.
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    let mut stream = Utf8Stream::new();
    let mut streamed = String::new();
    let mut rest = bytes;
    let mut k = u32::from(seed);
    while !rest.is_empty() {
        k = k.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = (1 + (k >> 16) as usize % 8).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        streamed.push_str(&stream.push(piece));
        rest = tail;
    }
    streamed.push_str(&stream.finish());
    assert_eq!(streamed, String::from_utf8_lossy(bytes));
});
