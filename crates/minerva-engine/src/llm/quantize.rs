//! Quantizing a GGUF language model with llama.cpp's own quantizer (what `llama-quantize`
//! runs), so a Minerva-made file is the file llama.cpp would make.
//!
//! Only the types that need no importance matrix are offered: the i-quants and the
//! smallest k-quants are refused by name before any work starts.

use std::ffi::CString;
use std::path::Path;
use std::str::FromStr;

use llama_cpp_sys_2 as sys;

use super::llama::backend;
use crate::{EngineError, Result, gguf};

/// A quantization type of `minerva quantize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QuantType {
    F16,
    Bf16,
    Q8_0,
    Q6K,
    Q5KM,
    Q5KS,
    Q5_1,
    Q5_0,
    Q4KM,
    Q4KS,
    Q4_1,
    Q4_0,
    Q3KL,
    Q3KM,
    Q3KS,
}

impl QuantType {
    /// Every offered type, largest first.
    pub const ALL: [Self; 15] = [
        Self::F16,
        Self::Bf16,
        Self::Q8_0,
        Self::Q6K,
        Self::Q5KM,
        Self::Q5KS,
        Self::Q5_1,
        Self::Q5_0,
        Self::Q4KM,
        Self::Q4KS,
        Self::Q4_1,
        Self::Q4_0,
        Self::Q3KL,
        Self::Q3KM,
        Self::Q3KS,
    ];

    /// The name users type (and tags carry): `q4_k_m`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q6K => "q6_k",
            Self::Q5KM => "q5_k_m",
            Self::Q5KS => "q5_k_s",
            Self::Q5_1 => "q5_1",
            Self::Q5_0 => "q5_0",
            Self::Q4KM => "q4_k_m",
            Self::Q4KS => "q4_k_s",
            Self::Q4_1 => "q4_1",
            Self::Q4_0 => "q4_0",
            Self::Q3KL => "q3_k_l",
            Self::Q3KM => "q3_k_m",
            Self::Q3KS => "q3_k_s",
        }
    }

    fn ftype(self) -> sys::llama_ftype {
        match self {
            Self::F16 => sys::LLAMA_FTYPE_MOSTLY_F16,
            Self::Bf16 => sys::LLAMA_FTYPE_MOSTLY_BF16,
            Self::Q8_0 => sys::LLAMA_FTYPE_MOSTLY_Q8_0,
            Self::Q6K => sys::LLAMA_FTYPE_MOSTLY_Q6_K,
            Self::Q5KM => sys::LLAMA_FTYPE_MOSTLY_Q5_K_M,
            Self::Q5KS => sys::LLAMA_FTYPE_MOSTLY_Q5_K_S,
            Self::Q5_1 => sys::LLAMA_FTYPE_MOSTLY_Q5_1,
            Self::Q5_0 => sys::LLAMA_FTYPE_MOSTLY_Q5_0,
            Self::Q4KM => sys::LLAMA_FTYPE_MOSTLY_Q4_K_M,
            Self::Q4KS => sys::LLAMA_FTYPE_MOSTLY_Q4_K_S,
            Self::Q4_1 => sys::LLAMA_FTYPE_MOSTLY_Q4_1,
            Self::Q4_0 => sys::LLAMA_FTYPE_MOSTLY_Q4_0,
            Self::Q3KL => sys::LLAMA_FTYPE_MOSTLY_Q3_K_L,
            Self::Q3KM => sys::LLAMA_FTYPE_MOSTLY_Q3_K_M,
            Self::Q3KS => sys::LLAMA_FTYPE_MOSTLY_Q3_K_S,
        }
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QuantType {
    type Err = EngineError;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase();
        if let Some(t) = Self::ALL.into_iter().find(|t| t.as_str() == wanted) {
            return Ok(t);
        }
        let offered: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
        let reason = if wanted.starts_with("iq") || matches!(wanted.as_str(), "q2_k" | "q2_k_s" | "tq1_0" | "tq2_0") {
            format!(
                "{s} needs an importance matrix (llama.cpp's llama-imatrix), which Minerva does not make yet; choose one of {}",
                offered.join(", ")
            )
        } else {
            format!("unknown quantization type {s:?}; choose one of {}", offered.join(", "))
        };
        Err(EngineError::invalid("type", reason))
    }
}

/// Writes `src` quantized to `ty` into `dst` with `threads` threads. `src` is validated
/// first; an already quantized source is dequantized and requantized (llama.cpp's
/// `--allow-requantize`), which loses what the source's quantization lost.
pub fn quantize(src: &Path, dst: &Path, ty: QuantType, threads: usize) -> Result<()> {
    gguf::inspect(src)?;
    backend()?;
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| EngineError::invalid("path", format!("{} contains a NUL byte", p.display())))
    };
    let (src_c, dst_c) = (c_path(src)?, c_path(dst)?);
    // SAFETY: a plain struct of defaults from llama.cpp.
    let mut params = unsafe { sys::llama_model_quantize_default_params() };
    params.nthread = i32::try_from(threads.max(1)).unwrap_or(1);
    params.ftype = ty.ftype();
    params.allow_requantize = true;
    // SAFETY: both paths are valid NUL-terminated strings and `params` outlives the call;
    // llama.cpp reads them and writes only `dst`.
    let status = unsafe { sys::llama_model_quantize(src_c.as_ptr(), dst_c.as_ptr(), &params) };
    if status != 0 {
        let _ = std::fs::remove_file(dst);
        return Err(EngineError::LlamaLoad {
            path: src.to_owned(),
            reason: format!("llama.cpp could not quantize it to {ty} (status {status})"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_by_name_and_importance_matrix_types_are_refused_with_the_reason() {
        assert_eq!("Q4_K_M".parse::<QuantType>().unwrap(), QuantType::Q4KM);
        for t in QuantType::ALL {
            assert_eq!(t.as_str().parse::<QuantType>().unwrap(), t);
        }
        let err = "iq2_xxs".parse::<QuantType>().unwrap_err().to_string();
        assert!(err.contains("importance matrix"), "{err}");
        let err = "q9_9".parse::<QuantType>().unwrap_err().to_string();
        assert!(err.contains("unknown") && err.contains("q8_0"), "{err}");
    }
}
