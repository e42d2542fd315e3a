//! The prefix cache's token matching and eviction (minerva-workers) under arbitrary
//! sequences of inserts and lookups: the longest shared prefix is found, the token cap
//! holds, no entry is a prefix of another, and logits come back only for their prompt.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| minerva_workers::fuzzing::prefix_cache(data));
