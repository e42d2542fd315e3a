//! Why a file is not a usable GGUF model, in words a user can act on.

use std::io;
use std::path::PathBuf;

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
pub(super) fn show_magic(found: &[u8; 4]) -> String {
    let hex = found.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    if found.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{hex} (\"{}\")", String::from_utf8_lossy(found))
    } else {
        hex
    }
}

/// A guess at what the file really is, for the usual download mistakes.
pub(super) fn magic_hint(found: &[u8; 4]) -> &'static str {
    match found {
        b"vers" => "; it looks like a Git LFS pointer, not the model itself",
        [b'<', ..] => "; it looks like an HTML page, so the download probably failed",
        [b'{', ..] => "; it looks like a JSON file",
        _ => "",
    }
}

/// Advice for the usual reasons a version is unsupported.
pub(super) fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        "; re-convert the model with a current llama.cpp"
    } else if version != 0 && version & 0xFFFF == 0 {
        "; the file seems to be big-endian"
    } else {
        ""
    }
}
