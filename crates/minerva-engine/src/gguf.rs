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
use std::path::{Path, PathBuf};

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

/// Why a file was rejected, together with the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct GgufError {
    /// The file that was inspected.
    pub path: PathBuf,
    /// What is wrong with it.
    pub kind: GgufErrorKind,
}

/// What is wrong with a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufErrorKind {
    /// Nothing exists at the path.
    #[error("file not found")]
    NotFound,
    /// The path is a directory or a special file.
    #[error("not a regular file (a directory?); expected a .gguf model file")]
    NotAFile,
    /// Reading failed for a reason other than the file's content.
    #[error("cannot read the file: {0}")]
    Io(io::Error),
    /// The file does not start with "GGUF".
    #[error("not a GGUF model file: it starts with {} instead of \"GGUF\"{}", show_magic(.found), magic_hint(.found))]
    BadMagic {
        /// The first four bytes of the file.
        found: [u8; 4],
    },
    /// The GGUF version is not 2 or 3.
    #[error("GGUF version {v} is not supported (only versions 2 and 3 are){hint}", v = .0, hint = version_hint(*.0))]
    UnsupportedVersion(u32),
    /// The file ends in the middle of its header.
    #[error("the file is cut short: it ends within {what}, read from byte {offset} (incomplete download?)")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where the read started.
        offset: u64,
    },
    /// A count in the header is beyond what any real model uses.
    #[error("the header claims {count} {what}, more than the limit of {max}; the file is corrupt")]
    TooMany {
        /// What is counted.
        what: String,
        /// The count claimed by the file.
        count: u64,
        /// The largest count accepted.
        max: u64,
    },
    /// A string in the header is longer than any real model needs.
    #[error("{what} is {len} bytes long, more than the limit of {max}; the file is corrupt")]
    StringTooLong {
        /// Which string.
        what: String,
        /// Its claimed length.
        len: u64,
        /// The longest length accepted.
        max: u64,
    },
    /// A key, name or string value is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which string.
        what: String,
    },
    /// A metadata value has a type id outside GGUF's 0..=12.
    #[error("metadata `{key}` has unknown value type {type_id}; the file is corrupt")]
    UnknownValueType {
        /// The key whose value it is.
        key: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// A metadata entry is malformed (empty or duplicate key, wrong type, bad value).
    #[error("metadata `{key}`: {reason}")]
    BadMetadata {
        /// The key concerned.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a ggml type id llama.cpp does not know.
    #[error(
        "tensor `{tensor}` has ggml type {type_id}, which llama.cpp does not know (removed, or newer than this build)"
    )]
    UnknownTensorType {
        /// The tensor's name.
        tensor: String,
        /// The type id in the file.
        type_id: u32,
    },
    /// A tensor's name, shape or placement is invalid.
    #[error("tensor `{tensor}`: {reason}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's data lies (partly) past the end of the file.
    #[error(
        "tensor `{tensor}` needs {size} bytes at offset {offset} of the data section, which holds only {data_size} bytes (incomplete download?)"
    )]
    TensorOutOfBounds {
        /// The tensor's name.
        tensor: String,
        /// Its offset within the data section.
        offset: u64,
        /// Its size in bytes.
        size: u64,
        /// Size of the data section present in the file.
        data_size: u64,
    },
    /// A metadata key every model needs is absent.
    #[error("required metadata `{0}` is missing")]
    MissingKey(&'static str),
    /// The model's architecture is not one we run.
    #[error(
        "model architecture `{0}` is not supported; Minerva runs decoder-only text models (llama, qwen2, gemma3, ...)"
    )]
    UnsupportedArchitecture(String),
}

/// The magic bytes as hex and, when printable, as text.
fn show_magic(found: &[u8; 4]) -> String {
    let hex = found.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    if found.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{hex} (\"{}\")", String::from_utf8_lossy(found))
    } else {
        hex
    }
}

/// A guess at what the file really is, for the usual download mistakes.
fn magic_hint(found: &[u8; 4]) -> &'static str {
    match found {
        b"vers" => "; it looks like a Git LFS pointer, not the model itself",
        [b'<', ..] => "; it looks like an HTML page, so the download probably failed",
        [b'{', ..] => "; it looks like a JSON file",
        _ => "",
    }
}

/// Advice for the usual reasons a version is unsupported.
fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        "; re-convert the model with a current llama.cpp"
    } else if version != 0 && version & 0xFFFF == 0 {
        "; the file seems to be big-endian"
    } else {
        ""
    }
}

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

fn open_error(e: io::Error) -> GgufErrorKind {
    match e.kind() {
        io::ErrorKind::NotFound => GgufErrorKind::NotFound,
        _ => GgufErrorKind::Io(e),
    }
}

/// A reader that knows its position and how many bytes the file has left, so that every
/// length can be checked before anything is allocated.
struct Reader<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: BufRead> Reader<R> {
    fn new(inner: R, len: u64) -> Self {
        Self { inner, pos: 0, len }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails with `Truncated` unless `n` more bytes exist.
    fn need(&self, n: u64, what: &str) -> Result<(), GgufErrorKind> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        Ok(())
    }

    fn truncated(&self, what: &str) -> GgufErrorKind {
        truncated(what, self.pos)
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufErrorKind> {
        let n = buf.len() as u64;
        self.need(n, what)?;
        let pos = self.pos;
        self.inner.read_exact(buf).map_err(|e| io_error(e, what, pos))?;
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufErrorKind> {
        let mut buf = [0; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufErrorKind> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufErrorKind> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufErrorKind> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Skips `n` bytes by reading through them: header arrays are small enough.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufErrorKind> {
        self.need(n, what)?;
        let mut left = n;
        while left > 0 {
            let pos = self.pos;
            let available = self.inner.fill_buf().map_err(|e| io_error(e, what, pos))?;
            if available.is_empty() {
                return Err(self.truncated(what));
            }
            let step = usize::try_from(left).unwrap_or(usize::MAX).min(available.len());
            self.inner.consume(step);
            self.pos += step as u64;
            left -= step as u64;
        }
        Ok(())
    }

    /// Reads a string's length prefix and checks it against the limit and the file.
    fn string_len(&mut self, what: &str) -> Result<u64, GgufErrorKind> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(GgufErrorKind::StringTooLong {
                what: what.to_owned(),
                len,
                max: MAX_STRING_LEN,
            });
        }
        self.need(len, what)?;
        Ok(len)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufErrorKind> {
        let len = self.string_len(what)?;
        // `string_len` bounded `len` by MAX_STRING_LEN, so it fits in memory.
        let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
        self.fill(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufErrorKind::InvalidUtf8 { what: what.to_owned() })
    }

    /// Skips a string we do not keep, still checking its length.
    fn skip_string(&mut self, what: &str) -> Result<(), GgufErrorKind> {
        let len = self.string_len(what)?;
        self.skip(len, what)
    }
}

fn truncated(what: &str, offset: u64) -> GgufErrorKind {
    GgufErrorKind::Truncated {
        what: what.to_owned(),
        offset,
    }
}

fn io_error(e: io::Error, what: &str, offset: u64) -> GgufErrorKind {
    // The file may shrink after we measured it; that is truncation too.
    match e.kind() {
        io::ErrorKind::UnexpectedEof => truncated(what, offset),
        _ => GgufErrorKind::Io(e),
    }
}

/// One entry of the tensor table, already checked for consistency on its own.
struct TensorInfo {
    name: String,
    type_id: u32,
    elements: u64,
    bytes: u64,
    offset: u64,
}

/// Everything read from the header, before the cross-checks against the file size.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    /// Where the tensor table ends.
    end: u64,
}

fn read_header<R: BufRead>(r: &mut Reader<R>) -> Result<Header, GgufErrorKind> {
    let magic: [u8; 4] = r.array("the GGUF magic")?;
    if &magic != b"GGUF" {
        return Err(GgufErrorKind::BadMagic { found: magic });
    }
    let version = r.u32("the GGUF version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufErrorKind::UnsupportedVersion(version));
    }
    let tensor_count = r.u64("the tensor count")?;
    check_count(tensor_count, "tensors", MAX_TENSORS)?;
    let kv_count = r.u64("the metadata count")?;
    check_count(kv_count, "metadata entries", MAX_METADATA_ENTRIES)?;

    let metadata = read_metadata(r, kv_count)?;
    let alignment = alignment(&metadata)?;
    let tensors = read_tensor_infos(r, tensor_count)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        end: r.pos,
    })
}

/// Rejects a count above `max` before anything is allocated or looped over for it.
fn check_count(count: u64, what: &str, max: u64) -> Result<(), GgufErrorKind> {
    if count > max {
        return Err(GgufErrorKind::TooMany {
            what: what.to_owned(),
            count,
            max,
        });
    }
    Ok(())
}

fn read_metadata<R: BufRead>(r: &mut Reader<R>, count: u64) -> Result<BTreeMap<String, MetadataValue>, GgufErrorKind> {
    let mut metadata = BTreeMap::new();
    for i in 0..count {
        let key = r.string(&format!("the key of metadata entry {i}"))?;
        if key.is_empty() {
            return Err(bad_metadata(format!("#{i}"), "the key is empty"));
        }
        if metadata.contains_key(&key) {
            return Err(bad_metadata(key, "the key appears twice"));
        }
        let value = read_value(r, &key)?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

fn bad_metadata(key: impl Into<String>, reason: impl Into<String>) -> GgufErrorKind {
    GgufErrorKind::BadMetadata {
        key: key.into(),
        reason: reason.into(),
    }
}

fn read_value<R: BufRead>(r: &mut Reader<R>, key: &str) -> Result<MetadataValue, GgufErrorKind> {
    let what = format!("the value of metadata `{key}`");
    let type_id = r.u32(&what)?;
    if type_id == ARRAY_TYPE_ID {
        return read_array(r, key, &what);
    }
    let value_type = ValueType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
        key: key.to_owned(),
        type_id,
    })?;
    read_scalar(r, value_type, key, &what)
}

fn read_scalar<R: BufRead>(
    r: &mut Reader<R>,
    value_type: ValueType,
    key: &str,
    what: &str,
) -> Result<MetadataValue, GgufErrorKind> {
    use MetadataValue as V;
    Ok(match value_type {
        ValueType::U8 => V::U8(r.u8(what)?),
        ValueType::I8 => V::I8(i8::from_le_bytes(r.array(what)?)),
        ValueType::U16 => V::U16(u16::from_le_bytes(r.array(what)?)),
        ValueType::I16 => V::I16(i16::from_le_bytes(r.array(what)?)),
        ValueType::U32 => V::U32(r.u32(what)?),
        ValueType::I32 => V::I32(i32::from_le_bytes(r.array(what)?)),
        ValueType::F32 => V::F32(f32::from_le_bytes(r.array(what)?)),
        ValueType::U64 => V::U64(r.u64(what)?),
        ValueType::I64 => V::I64(i64::from_le_bytes(r.array(what)?)),
        ValueType::F64 => V::F64(f64::from_le_bytes(r.array(what)?)),
        ValueType::String => V::String(r.string(what)?),
        // llama.cpp reads the byte straight into a C++ bool, so only 0 and 1 are safe.
        ValueType::Bool => match r.u8(what)? {
            0 => V::Bool(false),
            1 => V::Bool(true),
            b => {
                return Err(bad_metadata(key, format!("boolean byte is {b}, expected 0 or 1")));
            }
        },
    })
}

fn read_array<R: BufRead>(r: &mut Reader<R>, key: &str, what: &str) -> Result<MetadataValue, GgufErrorKind> {
    let type_id = r.u32(what)?;
    if type_id == ARRAY_TYPE_ID {
        // The GGUF spec allows nesting but llama.cpp's reader rejects it.
        return Err(bad_metadata(key, "is an array of arrays, which llama.cpp cannot read"));
    }
    let element_type = ValueType::from_id(type_id).ok_or_else(|| GgufErrorKind::UnknownValueType {
        key: key.to_owned(),
        type_id,
    })?;
    let len = r.u64(what)?;
    let elements = format!("elements in array `{key}`");
    check_count(len, &elements, MAX_ARRAY_LEN)?;
    // `len <= MAX_ARRAY_LEN`, so the product cannot overflow.
    r.need(len * element_type.min_size(), &format!("the {len} {elements}"))?;

    if len <= MAX_KEPT_ARRAY_LEN {
        let values = (0..len)
            .map(|_| read_scalar(r, element_type, key, what))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(MetadataValue::Array {
            element_type,
            len,
            values: Some(values),
        });
    }
    match element_type {
        ValueType::String => {
            for _ in 0..len {
                r.skip_string(what)?;
            }
        }
        // Booleans must still be 0 or 1, for the same reason as scalars.
        ValueType::Bool => {
            for _ in 0..len {
                read_scalar(r, element_type, key, what)?;
            }
        }
        // `need` checked `len * min_size` against the bytes left in the file.
        _ => r.skip(len * element_type.min_size(), what)?,
    }
    Ok(MetadataValue::Array {
        element_type,
        len,
        values: None,
    })
}

/// `general.alignment`, which llama.cpp requires to be a `u32` power of two.
fn alignment(metadata: &BTreeMap<String, MetadataValue>) -> Result<u64, GgufErrorKind> {
    const KEY: &str = "general.alignment";
    match metadata.get(KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetadataValue::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(MetadataValue::U32(a)) => Err(bad_metadata(KEY, format!("{a} is not a power of two"))),
        Some(other) => Err(bad_metadata(
            KEY,
            format!("expected a u32, found a {}", other.type_name()),
        )),
    }
}

fn read_tensor_infos<R: BufRead>(r: &mut Reader<R>, count: u64) -> Result<Vec<TensorInfo>, GgufErrorKind> {
    // Bounded by MAX_TENSORS and by how many records the rest of the file could hold.
    let capacity = count.min(r.remaining() / MIN_TENSOR_INFO_SIZE);
    let mut tensors = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    let mut seen = HashSet::new();
    for i in 0..count {
        let name = r.string(&format!("the name of tensor {i}"))?;
        if name.len() > MAX_TENSOR_NAME_LEN {
            return Err(bad_tensor(
                &name,
                format!(
                    "the name is {} bytes long; llama.cpp allows at most {MAX_TENSOR_NAME_LEN}",
                    name.len()
                ),
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(bad_tensor(&name, "two tensors have this name"));
        }
        tensors.push(read_tensor_info(r, name)?);
    }
    Ok(tensors)
}

fn bad_tensor(tensor: &str, reason: impl Into<String>) -> GgufErrorKind {
    GgufErrorKind::BadTensor {
        tensor: tensor.to_owned(),
        reason: reason.into(),
    }
}

fn read_tensor_info<R: BufRead>(r: &mut Reader<R>, name: String) -> Result<TensorInfo, GgufErrorKind> {
    let what = format!("the shape of tensor `{name}`");
    let n_dims = r.u32(&what)?;
    // llama.cpp accepts 0 dimensions (a scalar); more than GGML_MAX_DIMS would overflow its arrays.
    if n_dims > MAX_DIMS {
        return Err(bad_tensor(
            &name,
            format!("has {n_dims} dimensions; llama.cpp supports at most {MAX_DIMS}"),
        ));
    }
    let mut dims = [1u64; MAX_DIMS as usize];
    for dim in dims.iter_mut().take(n_dims as usize) {
        *dim = r.u64(&what)?;
    }
    let type_id = r.u32(&format!("the type of tensor `{name}`"))?;
    let offset = r.u64(&format!("the data offset of tensor `{name}`"))?;

    let ggml = ggml_type(type_id).ok_or_else(|| GgufErrorKind::UnknownTensorType {
        tensor: name.clone(),
        type_id,
    })?;
    let (elements, bytes) = tensor_size(&dims, ggml).map_err(|reason| bad_tensor(&name, reason))?;
    Ok(TensorInfo {
        name,
        type_id,
        elements,
        bytes,
        offset,
    })
}

/// Element count and byte size of a tensor, with the checks llama.cpp makes: dimensions are
/// signed 64-bit there, rows hold whole blocks, and nothing may overflow.
fn tensor_size(dims: &[u64; MAX_DIMS as usize], ggml: GgmlType) -> Result<(u64, u64), String> {
    let shape = || dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
    if dims.iter().any(|&d| i64::try_from(d).is_err()) {
        return Err(format!(
            "shape {} has a dimension of 2^63 or more (negative to llama.cpp)",
            shape()
        ));
    }
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(|| format!("shape {} has more than 2^63 elements", shape()))?;
    if !dims[0].is_multiple_of(ggml.block_size) {
        return Err(format!(
            "rows of {} elements are not a multiple of the {} block size {}",
            dims[0], ggml.name, ggml.block_size
        ));
    }
    let bytes = (dims[0] / ggml.block_size)
        .checked_mul(ggml.block_bytes)
        .and_then(|row| dims[1..].iter().try_fold(row, |acc, &d| acc.checked_mul(d)))
        .ok_or_else(|| format!("shape {} of type {} needs more than 2^64 bytes", shape(), ggml.name))?;
    Ok((elements, bytes))
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

/// Short name of a llama.cpp `llama_ftype` (include/llama.h), as used in file names.
fn ftype_name(file_type: u32) -> Option<&'static str> {
    Some(match file_type & !FTYPE_GUESSED {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        40 => "Q1_0",
        41 => "Q2_0",
        _ => return None,
    })
}

/// Block layout of a ggml tensor type: `block_size` elements take `block_bytes` bytes.
#[derive(Clone, Copy)]
struct GgmlType {
    name: &'static str,
    block_size: u64,
    block_bytes: u64,
}

/// ggml's `type_traits` (ggml/src/ggml.c, sizes from ggml-common.h). Ids 4, 5, 31-33 and
/// 36-38 were removed from GGUF files and are unknown, as llama.cpp treats them.
fn ggml_type(id: u32) -> Option<GgmlType> {
    const QK_K: u64 = 256;
    let (name, block_size, block_bytes) = match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", QK_K, 84),
        11 => ("Q3_K", QK_K, 110),
        12 => ("Q4_K", QK_K, 144),
        13 => ("Q5_K", QK_K, 176),
        14 => ("Q6_K", QK_K, 210),
        15 => ("Q8_K", QK_K, 292),
        16 => ("IQ2_XXS", QK_K, 66),
        17 => ("IQ2_XS", QK_K, 74),
        18 => ("IQ3_XXS", QK_K, 98),
        19 => ("IQ1_S", QK_K, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", QK_K, 110),
        22 => ("IQ2_S", QK_K, 82),
        23 => ("IQ4_XS", QK_K, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", QK_K, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", QK_K, 54),
        35 => ("TQ2_0", QK_K, 66),
        39 => ("MXFP4", 32, 17),
        40 => ("NVFP4", 64, 36),
        41 => ("Q1_0", 128, 18),
        42 => ("Q2_0", 64, 18),
        _ => return None,
    };
    Some(GgmlType {
        name,
        block_size,
        block_bytes,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
}
