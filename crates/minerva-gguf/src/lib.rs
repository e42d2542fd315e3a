//! GGUF header validation and metadata reading, run before a file reaches llama.cpp.
//!
//! llama.cpp's C++ loader trusts much of what a file says, and a truncated download or a
//! hostile file can make it fail obscurely or crash the process. [`inspect`] reads the
//! whole header (metadata and tensor table) with every length checked against the bytes
//! actually present, validates the tensor layout the way llama.cpp's `gguf.cpp` does, and
//! turns any problem into a [`GgufError`] naming the file and the reason. It never reads
//! tensor data and never allocates more than the header itself needs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// Model architectures (`general.architecture`) we hand to llama.cpp: its decoder-only
/// text generators. Encoders, embedding-only, vision, speech and diffusion models are left out.
#[rustfmt::skip]
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama", "llama4", "deci", "mistral3", "smollm3", "arcee", "apertus",
    "qwen", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "qwen3next", "qwen35", "qwen35moe",
    "gemma", "gemma2", "gemma3", "gemma3n", "gemma4",
    "phi2", "phi3", "phimoe",
    "falcon", "falcon-h1", "grok", "gpt2", "gptj", "gptneox", "gpt-oss", "mpt", "bloom",
    "starcoder", "starcoder2", "refact", "codeshell", "stablelm", "baichuan", "orion", "xverse",
    "internlm2", "minicpm", "minicpm3", "plamo", "plamo2", "command-r", "cohere2", "dbrx",
    "olmo", "olmo2", "olmoe", "openelm", "arctic", "deepseek", "deepseek2",
    "chatglm", "glm4", "glm4moe", "bitnet", "jais", "nemotron", "nemotron_h",
    "exaone", "exaone4", "granite", "granitemoe", "granitehybrid",
    "mamba", "mamba2", "jamba", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7",
    "bailingmoe", "bailingmoe2", "dots1", "ernie4_5", "ernie4_5-moe",
    "hunyuan-moe", "hunyuan-dense", "lfm2", "lfm2moe", "seed_oss", "minimax-m2",
];

// Limits. Real models stay far below them; they exist so that a hostile header cannot make
// us allocate or loop without bound.
const MAX_TENSORS: u64 = 65_536;
const MAX_METADATA_ENTRIES: u64 = 65_536;
/// Chat templates and vocabulary entries are a few KiB at most.
const MAX_STRING_LEN: u64 = 16 << 20;
/// llama.cpp's `GGUF_MAX_ARRAY_ELEMENTS`.
const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Arrays longer than this (vocabularies, merges, scores) are validated but not kept.
const MAX_KEPT_ARRAY_LEN: u64 = 64;
/// llama.cpp's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// llama.cpp's `GGML_MAX_NAME` minus the terminating NUL.
const MAX_TENSOR_NAME_LEN: usize = 63;
/// llama.cpp's `GGUF_DEFAULT_ALIGNMENT`.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Smallest possible tensor-info record: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;
/// llama.cpp marks a file type it guessed with this bit (`LLAMA_FTYPE_GUESSED`).
const FTYPE_GUESSED: u32 = 1024;

/// What [`inspect`] learned from a valid GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufInfo {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// `general.architecture`, one of [`SUPPORTED_ARCHITECTURES`].
    pub architecture: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// `general.file_type` (llama.cpp's `llama_ftype`), if present.
    pub file_type: Option<u32>,
    /// Human name of the quantization, e.g. "Q4_K_M"; the dominant tensor type when the file does not say.
    pub quantization: String,
    /// `<architecture>.context_length`, the training context, if present.
    pub context_length: Option<u64>,
    /// `tokenizer.chat_template`, if present.
    pub chat_template: Option<String>,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Sum of the element counts of all tensors.
    pub parameter_count: u64,
    /// Sum of the byte sizes of all tensors.
    pub tensor_bytes: u64,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Every metadata entry; arrays longer than 64 elements keep only their type and length.
    pub metadata: BTreeMap<String, MetadataValue>,
    /// The tensor table, in file order.
    pub tensors: Vec<GgufTensor>,
}

/// One entry of a file's tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml type name, e.g. "Q4_K".
    pub ggml_type: &'static str,
    /// Number of dimensions (0 to 4).
    pub n_dims: u32,
    /// Shape, innermost first (ggml's `ne`); unused dimensions are 1.
    pub dims: [u64; 4],
    /// Bytes of its data.
    pub bytes: u64,
}

impl GgufInfo {
    /// The value of `key` if it is a non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata.get(key).and_then(MetadataValue::as_u64)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(MetadataValue::as_str)
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// GGUF type 0.
    U8(u8),
    /// GGUF type 1.
    I8(i8),
    /// GGUF type 2.
    U16(u16),
    /// GGUF type 3.
    I16(i16),
    /// GGUF type 4.
    U32(u32),
    /// GGUF type 5.
    I32(i32),
    /// GGUF type 6.
    F32(f32),
    /// GGUF type 7.
    Bool(bool),
    /// GGUF type 8.
    String(String),
    /// GGUF type 10.
    U64(u64),
    /// GGUF type 11.
    I64(i64),
    /// GGUF type 12.
    F64(f64),
    /// GGUF type 9; `values` is `None` when the array has more than 64 elements.
    Array {
        /// Type of every element.
        element_type: ValueType,
        /// Number of elements in the file.
        len: u64,
        /// The elements, kept only for short arrays.
        values: Option<Vec<MetadataValue>>,
    },
}

impl MetadataValue {
    /// The value as `u64` if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as `&str` if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The GGUF type name of this value, for error messages.
    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
            Self::Array { .. } => "array",
        }
    }
}

/// Type of the elements of a metadata array (llama.cpp cannot read arrays of arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// GGUF type 0.
    U8,
    /// GGUF type 1.
    I8,
    /// GGUF type 2.
    U16,
    /// GGUF type 3.
    I16,
    /// GGUF type 4.
    U32,
    /// GGUF type 5.
    I32,
    /// GGUF type 6.
    F32,
    /// GGUF type 7.
    Bool,
    /// GGUF type 8.
    String,
    /// GGUF type 10.
    U64,
    /// GGUF type 11.
    I64,
    /// GGUF type 12.
    F64,
}

/// GGUF's type id of arrays, which is not a [`ValueType`].
const ARRAY_TYPE_ID: u32 = 9;

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// Bytes one value takes in the file; for strings, only their length prefix.
    fn min_size(self) -> u64 {
        match self {
            Self::U8 | Self::I8 | Self::Bool => 1,
            Self::U16 | Self::I16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 | Self::String => 8,
        }
    }
}

mod error;
mod ggml_types;
mod reader;
#[cfg(test)]
mod tests;

pub use error::{GgufError, GgufErrorKind};

/// The key in which Minerva's LoRA adapter files record the SHA-256 of the base model
/// they were made for (llama.cpp ignores it): written by the engine, read by the engine
/// when it loads an adapter and by the registry when it lists one.
pub const ADAPTER_BASE_DIGEST_KEY: &str = "minerva.adapter.base_sha256";
use ggml_types::*;
use reader::*;

/// Validates the GGUF file at `path` and returns its metadata, or why llama.cpp must not load it.
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufError> {
    inspect_file(path).map_err(|kind| GgufError {
        path: path.to_owned(),
        kind,
    })
}

fn inspect_file(path: &Path) -> Result<GgufInfo, GgufErrorKind> {
    // Check the type before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(open_error)?;
    if !meta.is_file() {
        return Err(GgufErrorKind::NotAFile);
    }
    let file = File::open(path).map_err(open_error)?;
    // The length of the opened file, in case the path was replaced meanwhile.
    let meta = file.metadata().map_err(GgufErrorKind::Io)?;
    if !meta.is_file() {
        return Err(GgufErrorKind::NotAFile);
    }
    let mut reader = Reader::new(BufReader::with_capacity(64 * 1024, file), meta.len());
    let header = read_header(&mut reader)?;
    summarize(header, meta.len())
}

/// Validates a GGUF file held in memory (the whole file: the tensor table is checked
/// against its length). The fuzzer's entry point, and a way to check a header that
/// arrives over the network before any of it touches the disk.
pub fn inspect_bytes(bytes: &[u8]) -> Result<GgufInfo, GgufErrorKind> {
    let mut reader = Reader::new(io::Cursor::new(bytes), bytes.len() as u64);
    let header = read_header(&mut reader)?;
    summarize(header, bytes.len() as u64)
}

fn open_error(e: io::Error) -> GgufErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => GgufErrorKind::NotFound,
        _ => GgufErrorKind::Io(e),
    }
}

/// Cross-checks the tensor table against the file and gathers the summary.
fn summarize(header: Header, file_size: u64) -> Result<GgufInfo, GgufErrorKind> {
    let Header {
        version,
        metadata,
        tensors,
        alignment,
        end,
    } = header;
    let (tensor_bytes, parameter_count) = check_layout(&tensors, alignment, end, file_size)?;
    let table = tensors
        .iter()
        .map(|t| GgufTensor {
            name: t.name.clone(),
            // Every type id was resolved when the table was read.
            ggml_type: ggml_type(t.type_id).map_or("unknown", |g| g.name),
            n_dims: t.n_dims,
            dims: t.dims,
            bytes: t.bytes,
        })
        .collect();

    let architecture = match metadata.get("general.architecture") {
        None => return Err(GgufErrorKind::MissingKey("general.architecture")),
        Some(MetadataValue::String(arch)) => arch.clone(),
        Some(other) => {
            return Err(bad_metadata(
                "general.architecture",
                format!("expected a string, found a {}", other.type_name()),
            ));
        }
    };
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(GgufErrorKind::UnsupportedArchitecture(architecture));
    }

    let get_u64 = |key: &str| metadata.get(key).and_then(MetadataValue::as_u64);
    let get_string = |key: &str| metadata.get(key).and_then(MetadataValue::as_str).map(str::to_owned);
    let file_type = get_u64("general.file_type").and_then(|t| u32::try_from(t).ok());
    let quantization = file_type
        .and_then(ftype_name)
        .map(str::to_owned)
        .unwrap_or_else(|| dominant_type(&tensors));

    Ok(GgufInfo {
        version,
        name: get_string("general.name"),
        file_type,
        quantization,
        context_length: get_u64(&format!("{architecture}.context_length")),
        chat_template: get_string("tokenizer.chat_template"),
        architecture,
        tensor_count: tensors.len() as u64,
        parameter_count,
        tensor_bytes,
        file_size,
        metadata,
        tensors: table,
    })
}

/// Checks that every tensor's data is aligned, inside the file and where llama.cpp expects
/// it; returns the total bytes and elements.
fn check_layout(
    tensors: &[TensorInfo],
    alignment: u64,
    header_end: u64,
    file_size: u64,
) -> Result<(u64, u64), GgufErrorKind> {
    if tensors.is_empty() {
        return Ok((0, 0));
    }
    // The data section starts at the next multiple of the alignment after the header.
    let data_start = align_up(header_end, alignment)
        .filter(|&start| start <= file_size)
        .ok_or_else(|| truncated("the padding before the tensor data", header_end))?;
    let data_size = file_size - data_start;

    let (mut bytes, mut elements, mut expected) = (0u64, 0u64, 0u64);
    for t in tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(bad_tensor(
                &t.name,
                format!(
                    "data offset {} is not a multiple of the alignment {alignment}",
                    t.offset
                ),
            ));
        }
        if t.offset.checked_add(t.bytes).is_none_or(|end| end > data_size) {
            return Err(GgufErrorKind::TensorOutOfBounds {
                tensor: t.name.clone(),
                offset: t.offset,
                size: t.bytes,
                data_size,
            });
        }
        // llama.cpp's loader requires tensors stored in table order, each padded to the
        // alignment, with no gaps or overlaps.
        if t.offset != expected {
            return Err(bad_tensor(
                &t.name,
                format!(
                    "data offset is {} but llama.cpp expects {expected} (tensors must follow each other in table order)",
                    t.offset
                ),
            ));
        }
        // In bounds, so both sums stay below the file size (times a small factor for elements).
        expected = align_up(t.offset + t.bytes, alignment).unwrap_or(u64::MAX);
        bytes += t.bytes;
        elements = elements
            .checked_add(t.elements)
            .ok_or_else(|| bad_tensor(&t.name, "the total parameter count overflows"))?;
    }
    Ok((bytes, elements))
}

/// `n` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
fn align_up(n: u64, alignment: u64) -> Option<u64> {
    Some(n.checked_add(alignment - 1)? & !(alignment - 1))
}

/// The tensor type holding the most elements, for files without `general.file_type`.
fn dominant_type(tensors: &[TensorInfo]) -> String {
    let mut per_type: HashMap<u32, u64> = HashMap::new();
    for t in tensors {
        *per_type.entry(t.type_id).or_default() += t.elements;
    }
    // Ties go to the lower type id so that the answer does not depend on hash order.
    per_type
        .into_iter()
        .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
        .and_then(|(id, _)| ggml_type(id))
        .map_or_else(|| "unknown".to_owned(), |t| t.name.to_owned())
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        };
        f.write_str(name)
    }
}
