use std::io::Write;
use std::path::PathBuf;

use super::*;

const F32: u32 = 0;
const Q4_0: u32 = 2;

/// A metadata value as the test writer encodes it.
enum Val {
    U32(u32),
    I32(i32),
    Bool(u8),
    Str(String),
    Strs(Vec<String>),
    /// A raw type id followed by raw bytes, for malformed values.
    Raw(u32, Vec<u8>),
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    /// `None`: placed right after the previous tensor, as llama.cpp writes them.
    offset: Option<u64>,
}

/// Builds GGUF files in memory, valid unless a test breaks them on purpose.
struct Gguf {
    version: u32,
    tensor_count: Option<u64>,
    kv: Vec<(String, Val)>,
    tensors: Vec<Tensor>,
}

impl Gguf {
    /// A tiny llama model: two Q4_0 matrices and an F32 norm.
    fn llama() -> Self {
        Gguf {
            version: 3,
            tensor_count: None,
            kv: vec![],
            tensors: vec![],
        }
        .kv("general.architecture", Val::Str("llama".into()))
        .kv("general.name", Val::Str("Tiny".into()))
        .kv("general.file_type", Val::U32(2))
        .kv("llama.context_length", Val::I32(2048))
        .kv("tokenizer.chat_template", Val::Str("{{ messages }}".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Val::Strs((0..100).map(|i| format!("tok{i}")).collect()),
        )
        .kv("tokenizer.ggml.merges", Val::Strs(vec!["a b".into(), "c d".into()]))
        .tensor("token_embd.weight", &[64, 8], Q4_0)
        .tensor("output_norm.weight", &[64], F32)
        .tensor("blk.0.attn_q.weight", &[64, 64], Q4_0)
    }

    fn kv(mut self, key: &str, value: Val) -> Self {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), value));
        self
    }

    fn without(mut self, key: &str) -> Self {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32) -> Self {
        self.tensors.push(Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            type_id,
            offset: None,
        });
        self
    }

    fn last_offset(mut self, offset: u64) -> Self {
        if let Some(t) = self.tensors.last_mut() {
            t.offset = Some(offset);
        }
        self
    }

    /// The header alone, and the full file with zeroed tensor data.
    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.tensor_count.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (key, value) in &self.kv {
            put_str(&mut b, key);
            match value {
                Val::U32(v) => put(&mut b, 4, &v.to_le_bytes()),
                Val::I32(v) => put(&mut b, 5, &v.to_le_bytes()),
                Val::Bool(v) => put(&mut b, 7, &[*v]),
                Val::Str(s) => {
                    b.extend(8u32.to_le_bytes());
                    put_str(&mut b, s);
                }
                Val::Strs(list) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(8u32.to_le_bytes());
                    b.extend((list.len() as u64).to_le_bytes());
                    list.iter().for_each(|s| put_str(&mut b, s));
                }
                Val::Raw(type_id, bytes) => put(&mut b, *type_id, bytes),
            }
        }
        let mut next = 0;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.type_id.to_le_bytes());
            b.extend(t.offset.unwrap_or(next).to_le_bytes());
            next += test_size(t).next_multiple_of(32);
        }
        let header = b.clone();
        b.resize(b.len().next_multiple_of(32) + next as usize, 0);
        (header, b)
    }

    fn bytes(&self) -> Vec<u8> {
        self.build().1
    }
}

fn put(b: &mut Vec<u8>, type_id: u32, bytes: &[u8]) {
    b.extend(type_id.to_le_bytes());
    b.extend(bytes);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// Data bytes of a test tensor; 0 for the absurd shapes and types that tests reject anyway.
fn test_size(t: &Tensor) -> u64 {
    let n = t.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    match t.type_id {
        F32 => n.and_then(|n| n.checked_mul(4)).unwrap_or(0),
        Q4_0 => n.map_or(0, |n| n / 32 * 18),
        _ => 0,
    }
}

fn inspect_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufError> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    inspect(file.path())
}

fn kind(bytes: &[u8]) -> GgufErrorKind {
    match inspect_bytes(bytes) {
        Ok(info) => panic!("expected an error, got {info:?}"),
        Err(e) => e.kind,
    }
}

#[test]
fn valid_file_reports_model_facts() {
    let bytes = Gguf::llama().bytes();
    let info = inspect_bytes(&bytes).expect("valid file");
    assert_eq!(info.version, 3);
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.name.as_deref(), Some("Tiny"));
    assert_eq!(info.file_type, Some(2));
    assert_eq!(info.quantization, "Q4_0");
    assert_eq!(info.context_length, Some(2048));
    assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(info.tensor_count, 3);
    assert_eq!(info.parameter_count, 64 * 8 + 64 + 64 * 64);
    assert_eq!(info.tensor_bytes, 16 * 18 + 64 * 4 + 128 * 18);
    assert_eq!(info.file_size, bytes.len() as u64);
    assert_eq!(info.get_u64("llama.context_length"), Some(2048));
    assert_eq!(info.get_str("general.name"), Some("Tiny"));
    assert_eq!(info.get_u64("general.name"), None);
    // The vocabulary is validated but not kept; short arrays are kept.
    assert_eq!(
        info.metadata["tokenizer.ggml.tokens"],
        MetadataValue::Array {
            element_type: ValueType::String,
            len: 100,
            values: None
        }
    );
    assert_eq!(
        info.metadata["tokenizer.ggml.merges"],
        MetadataValue::Array {
            element_type: ValueType::String,
            len: 2,
            values: Some(vec![
                MetadataValue::String("a b".into()),
                MetadataValue::String("c d".into())
            ]),
        }
    );
}

#[test]
fn quantization_names_follow_llama_cpp() {
    let name = |g: Gguf| inspect_bytes(&g.bytes()).expect("valid file").quantization;
    assert_eq!(name(Gguf::llama().kv("general.file_type", Val::U32(15))), "Q4_K_M");
    assert_eq!(name(Gguf::llama().kv("general.file_type", Val::U32(3))), "Q4_1");
    // Without a file type, or with one llama.cpp no longer knows, the bulk of the weights decides.
    assert_eq!(name(Gguf::llama().without("general.file_type")), "Q4_0");
    assert_eq!(name(Gguf::llama().kv("general.file_type", Val::U32(4))), "Q4_0");
}

#[test]
fn truncation_anywhere_is_reported_not_crashed() {
    let (header, bytes) = Gguf::llama().build();
    // Every cut inside the header or its padding, including an empty file.
    for cut in 0..header.len().next_multiple_of(32) {
        match kind(&bytes[..cut]) {
            GgufErrorKind::Truncated { .. } => {}
            other => panic!("cut at {cut}: expected Truncated, got {other}"),
        }
    }
    // A cut in the tensor data leaves the header intact but the last tensor short.
    let cut = bytes.len() - 1;
    assert!(
        matches!(kind(&bytes[..cut]), GgufErrorKind::TensorOutOfBounds { tensor, .. } if tensor == "blk.0.attn_q.weight")
    );
}

#[test]
fn garbage_is_not_a_gguf_file() {
    let err = inspect_bytes(b"<!DOCTYPE html><html>Not found</html>").expect_err("garbage");
    assert!(matches!(err.kind, GgufErrorKind::BadMagic { found } if &found == b"<!DO"));
    assert!(err.to_string().contains("HTML"), "{err}");
    assert!(matches!(
        kind(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0]),
        GgufErrorKind::BadMagic { .. }
    ));
}

#[test]
fn old_and_future_versions_are_rejected() {
    for version in [1, 4, 0x0300_0000] {
        let g = Gguf {
            version,
            ..Gguf::llama()
        };
        assert!(matches!(kind(&g.bytes()), GgufErrorKind::UnsupportedVersion(v) if v == version));
    }
}

#[test]
fn absurd_counts_fail_fast() {
    let g = Gguf {
        tensor_count: Some(1 << 63),
        ..Gguf::llama()
    };
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::TooMany { count, .. } if count == 1 << 63));

    // The metadata count follows the tensor count.
    let mut bytes = Gguf::llama().bytes();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(kind(&bytes), GgufErrorKind::TooMany { count: u64::MAX, .. }));

    // An array claiming 2^40 elements.
    let g = Gguf::llama().kv(
        "huge",
        Val::Raw(
            9,
            [4u32.to_le_bytes().to_vec(), (1u64 << 40).to_le_bytes().to_vec()].concat(),
        ),
    );
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::TooMany { what, .. } if what.contains("huge")));
}

#[test]
fn huge_string_lengths_are_rejected_without_allocating() {
    let g = Gguf::llama().kv("general.name", Val::Raw(8, u64::MAX.to_le_bytes().to_vec()));
    assert!(matches!(
        kind(&g.bytes()),
        GgufErrorKind::StringTooLong { len: u64::MAX, .. }
    ));
    // Under the limit but longer than the file.
    let g = Gguf::llama().kv("general.name", Val::Raw(8, (1u64 << 20).to_le_bytes().to_vec()));
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::Truncated { .. }));
}

#[test]
fn tensor_past_the_end_is_out_of_bounds() {
    let g = Gguf::llama().last_offset(1 << 20);
    match kind(&g.bytes()) {
        GgufErrorKind::TensorOutOfBounds { tensor, offset, .. } => {
            assert_eq!((tensor.as_str(), offset), ("blk.0.attn_q.weight", 1 << 20));
        }
        other => panic!("expected TensorOutOfBounds, got {other}"),
    }
    // An offset so large that offset + size overflows.
    let g = Gguf::llama().last_offset(u64::MAX - 31);
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::TensorOutOfBounds { .. }));
}

#[test]
fn misplaced_tensor_data_is_rejected() {
    let misaligned = Gguf::llama().last_offset(16 * 18 + 1);
    assert!(
        matches!(kind(&misaligned.bytes()), GgufErrorKind::BadTensor { reason, .. } if reason.contains("alignment"))
    );
    // Aligned and in bounds, but overlapping the previous tensor: llama.cpp refuses it.
    let overlapping = Gguf::llama().last_offset(0);
    assert!(
        matches!(kind(&overlapping.bytes()), GgufErrorKind::BadTensor { reason, .. } if reason.contains("expects"))
    );
}

#[test]
fn malformed_tensors_are_rejected() {
    let bad = |g: Gguf| match kind(&g.bytes()) {
        GgufErrorKind::BadTensor { reason, .. } => reason,
        other => panic!("expected BadTensor, got {other}"),
    };
    assert!(bad(Gguf::llama().tensor("output_norm.weight", &[64], F32)).contains("two tensors"));
    assert!(bad(Gguf::llama().tensor("odd", &[33, 2], Q4_0)).contains("block size"));
    assert!(bad(Gguf::llama().tensor("five_d", &[1, 1, 1, 1, 1], F32)).contains("dimensions"));
    assert!(bad(Gguf::llama().tensor("huge", &[1 << 40, 1 << 40], F32)).contains("elements"));
    assert!(bad(Gguf::llama().tensor("negative", &[u64::MAX], F32)).contains("2^63"));
    assert!(bad(Gguf::llama().tensor(&"x".repeat(64), &[1], F32)).contains("63"));
    // Type 4 (Q4_2) was removed from ggml.
    let g = Gguf::llama().tensor("old", &[32], 4);
    assert!(matches!(
        kind(&g.bytes()),
        GgufErrorKind::UnknownTensorType { type_id: 4, .. }
    ));
}

#[test]
fn malformed_metadata_is_rejected() {
    let g = Gguf::llama().kv("weird", Val::Raw(13, vec![0; 8]));
    assert!(matches!(
        kind(&g.bytes()),
        GgufErrorKind::UnknownValueType { type_id: 13, .. }
    ));
    let g = Gguf::llama().kv("general.alignment", Val::U32(48));
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::BadMetadata { key, .. } if key == "general.alignment"));
    let g = Gguf::llama().kv("flag", Val::Bool(2));
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::BadMetadata { key, .. } if key == "flag"));
    let nested = [9u32.to_le_bytes().to_vec(), 1u64.to_le_bytes().to_vec()].concat();
    let g = Gguf::llama().kv("nested", Val::Raw(9, nested));
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::BadMetadata { key, .. } if key == "nested"));
    let mut g = Gguf::llama();
    g.kv.push(("general.name".into(), Val::Str("again".into())));
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::BadMetadata { reason, .. } if reason.contains("twice")));
    let g = Gguf::llama().kv(
        "general.name",
        Val::Raw(8, [2u64.to_le_bytes().to_vec(), vec![0xff, 0xfe]].concat()),
    );
    assert!(matches!(kind(&g.bytes()), GgufErrorKind::InvalidUtf8 { .. }));
}

#[test]
fn non_text_architectures_are_refused() {
    for arch in ["bert", "whisper"] {
        let g = Gguf::llama().kv("general.architecture", Val::Str(arch.into()));
        assert!(matches!(kind(&g.bytes()), GgufErrorKind::UnsupportedArchitecture(a) if a == arch));
    }
    let g = Gguf::llama().without("general.architecture");
    assert!(matches!(
        kind(&g.bytes()),
        GgufErrorKind::MissingKey("general.architecture")
    ));
}

#[test]
fn paths_that_are_not_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = inspect(dir.path()).expect_err("a directory");
    assert!(matches!(err.kind, GgufErrorKind::NotAFile));
    let missing = dir.path().join("missing.gguf");
    let err = inspect(&missing).expect_err("a missing file");
    assert!(matches!(err.kind, GgufErrorKind::NotFound));
    // The message names the file.
    assert_eq!(err.to_string(), format!("{}: file not found", missing.display()));
}

fn models_dir() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/minerva")))
        .expect("neither MINERVA_HOME nor HOME is set");
    home.join("models")
}

#[test]
fn real_models_are_recognised() {
    // The pinned Gemma 3 270M file is the base model: it has no chat template.
    let cases = [
        (
            "smollm2-135m-instruct.gguf",
            "llama",
            "Q4_1",
            true,
            120_000_000..150_000_000,
        ),
        ("gemma-3-270m.gguf", "gemma3", "Q4_K_M", false, 250_000_000..290_000_000),
    ];
    for (file, arch, quant, has_template, params) in cases {
        let path = models_dir().join(file);
        assert!(
            path.is_file(),
            "{} is missing; run scripts/fetch-models.sh",
            path.display()
        );
        let info = inspect(&path).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "{file}: {} parameters, {} tensors, {}",
            info.parameter_count, info.tensor_count, info.quantization
        );
        assert_eq!(info.architecture, arch);
        assert_eq!(info.quantization, quant);
        assert_eq!(
            info.chat_template.as_deref().is_some_and(|t| !t.is_empty()),
            has_template,
            "{file}: chat template"
        );
        assert!(
            params.contains(&info.parameter_count),
            "{file}: {} parameters",
            info.parameter_count
        );
        assert!(info.context_length.is_some(), "{file}: no context length");
        assert!(info.tensor_bytes < info.file_size);
    }
}
