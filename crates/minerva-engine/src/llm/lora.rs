//! LoRA adapters in llama.cpp's GGUF adapter format: written, checked against a base,
//! and merged into a copy of the base (what llama.cpp's `llama-export-lora` does).
//!
//! An adapter adds `scale · B·A` to some of the base's matrices, with
//! `scale = user_scale · alpha / rank`. In the file, each target `W` (ggml shape
//! `[n_in, n_out]`) has `W.lora_a`, shape `[n_in, rank]` (A: `rank` rows of `n_in`), and
//! `W.lora_b`, shape `[rank, n_out]` (B: `n_out` rows of `rank`), so the layer computes
//! `W·x + scale · B·(A·x)`. Files are written and read through ggml's own GGUF code (the
//! format's reference implementation, linked already through `llama-cpp-sys-2`).

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

use crate::{EngineError, Result, gguf};

/// `general.type` of an adapter file.
const ADAPTER_TYPE: &str = "adapter";
/// Where Minerva records the SHA-256 of the base an adapter was made for.
pub use minerva_gguf::ADAPTER_BASE_DIGEST_KEY as BASE_DIGEST_KEY;

/// One adapted matrix: the base tensor's name and the two factors.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// The base tensor, e.g. `blk.0.attn_q.weight`.
    pub target: String,
    /// Inputs of the target (its ggml `ne[0]`).
    pub n_in: usize,
    /// Outputs of the target (its ggml `ne[1]`).
    pub n_out: usize,
    /// `rank × n_in`, row-major.
    pub a: Vec<f32>,
    /// `n_out × rank`, row-major.
    pub b: Vec<f32>,
}

impl LoraPair {
    /// The pair's rank (rows of A).
    pub fn rank(&self) -> usize {
        if self.n_in == 0 { 0 } else { self.a.len() / self.n_in }
    }

    /// `B·A`, `n_out × n_in` row-major (ggml's layout of the target).
    pub fn delta(&self) -> Vec<f32> {
        let rank = self.rank();
        let mut delta = vec![0.0f32; self.n_out * self.n_in];
        for (o, row) in delta.chunks_exact_mut(self.n_in).enumerate() {
            for k in 0..rank {
                let b = self.b[o * rank + k];
                if b == 0.0 {
                    continue;
                }
                for (d, a) in row.iter_mut().zip(&self.a[k * self.n_in..(k + 1) * self.n_in]) {
                    *d += b * a;
                }
            }
        }
        delta
    }
}

/// A LoRA adapter as Minerva writes it.
#[derive(Debug, Clone)]
pub struct LoraAdapterFile {
    /// `general.architecture` of the base.
    pub architecture: String,
    /// `adapter.lora.alpha`: the scale is `alpha / rank` times the request's.
    pub alpha: f32,
    /// SHA-256 of the base file, hex.
    pub base_sha256: Option<String>,
    /// The adapted matrices.
    pub pairs: Vec<LoraPair>,
}

impl LoraAdapterFile {
    /// A fresh adapter of `rank` for the model in `base` on every matrix whose name ends with one of
    /// `targets` (`attn_q.weight`, say), initialized as LoRA's authors and PEFT do: A
    /// uniform in ±1/√n_in from `seed`, B zero, so it changes nothing until trained.
    pub fn init(base: &Path, targets: &[&str], rank: usize, alpha: f32, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let base = gguf::inspect(base)?;
        if rank == 0 {
            return Err(EngineError::invalid("rank", "must be at least 1"));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let pairs: Vec<LoraPair> = base
            .tensors
            .iter()
            .filter(|t| t.n_dims == 2 && targets.iter().any(|suffix| t.name.ends_with(suffix)))
            .map(|t| {
                let (n_in, n_out) = (t.dims[0] as usize, t.dims[1] as usize);
                let bound = 1.0 / (n_in as f32).sqrt();
                LoraPair {
                    target: t.name.clone(),
                    n_in,
                    n_out,
                    a: (0..rank * n_in).map(|_| rng.random_range(-bound..bound)).collect(),
                    b: vec![0.0; n_out * rank],
                }
            })
            .collect();
        if pairs.is_empty() {
            return Err(EngineError::invalid(
                "targets",
                format!("no matrix of the base ends with any of {targets:?}"),
            ));
        }
        Ok(Self {
            architecture: base.architecture.clone(),
            alpha,
            base_sha256: None,
            pairs,
        })
    }

    /// The rank of the adapter (of its first pair; Minerva's adapters have one rank).
    pub fn rank(&self) -> usize {
        self.pairs.first().map_or(0, LoraPair::rank)
    }

    /// The factor a request's scale is multiplied by: `alpha / rank`, as llama.cpp does
    /// (an alpha of 0 means 1 per unit of scale).
    pub fn scale_factor(&self) -> f32 {
        let rank = self.rank();
        if self.alpha == 0.0 || rank == 0 {
            1.0
        } else {
            self.alpha / rank as f32
        }
    }

    /// Checks the factors' shapes against each other.
    fn validate(&self) -> Result<()> {
        if self.pairs.is_empty() {
            return Err(EngineError::invalid("adapter", "has no tensors"));
        }
        for p in &self.pairs {
            let rank = p.rank();
            if rank == 0 || p.a.len() != rank * p.n_in || p.b.len() != p.n_out * rank {
                return Err(EngineError::invalid(
                    "adapter",
                    format!(
                        "{}: A has {} values and B {} for {} inputs and {} outputs",
                        p.target,
                        p.a.len(),
                        p.b.len(),
                        p.n_in,
                        p.n_out
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Writes the adapter as llama.cpp's GGUF LoRA file (f32 factors).
    pub fn write(&self, path: &Path) -> Result<()> {
        self.validate()?;
        let mut gguf = GgufOut::new(
            self.pairs.iter().map(|p| (p.a.len() + p.b.len()) * 4).sum(),
            2 * self.pairs.len(),
        )?;
        gguf.set_str("general.type", ADAPTER_TYPE)?;
        gguf.set_str("general.architecture", &self.architecture)?;
        gguf.set_str("adapter.type", "lora")?;
        gguf.set_f32("adapter.lora.alpha", self.alpha)?;
        if let Some(digest) = &self.base_sha256 {
            gguf.set_str(BASE_DIGEST_KEY, digest)?;
        }
        for p in &self.pairs {
            let rank = p.rank();
            gguf.add_f32(&format!("{}.lora_a", p.target), &[p.n_in, rank], &p.a)?;
            gguf.add_f32(&format!("{}.lora_b", p.target), &[rank, p.n_out], &p.b)?;
        }
        gguf.write(path)
    }
}

/// When the adapter at `path` is sealed (encrypted at rest), its plaintext in memory,
/// opened with `key`.
pub fn unseal(path: &Path, key: Option<&minerva_seal::Key>) -> Result<Option<minerva_seal::MemoryFile>> {
    let invalid = |reason: String| EngineError::InvalidAdapter {
        path: path.to_owned(),
        reason,
    };
    if !minerva_seal::file_is_sealed(path).map_err(|e| invalid(e.to_string()))? {
        return Ok(None);
    }
    let plaintext = minerva_seal::read(path, key).map_err(|e| {
        invalid(match e {
            minerva_seal::SealError::MissingKey(_) => format!(
                "it is encrypted and no key is configured ({} or {})",
                minerva_seal::KEY_ENV,
                minerva_seal::KEY_FILE_ENV
            ),
            minerva_seal::SealError::WrongKey(_) => "it is encrypted with another key than the configured one".into(),
            other => other.to_string(),
        })
    })?;
    minerva_seal::MemoryFile::new("minerva-adapter", &plaintext)
        .map(Some)
        .map_err(|e| invalid(format!("cannot hold it in memory: {e}")))
}

impl LoraAdapterFile {
    /// Writes the adapter sealed with `key` (encryption at rest; the plaintext is only
    /// ever in memory), or as [`Self::write`] does without one.
    pub fn write_with(&self, path: &Path, key: Option<&minerva_seal::Key>) -> Result<()> {
        let Some(key) = key else { return self.write(path) };
        let file_error = |reason: String| EngineError::File {
            path: path.to_owned(),
            reason,
        };
        let memory = minerva_seal::MemoryFile::new("minerva-adapter", &[]).map_err(|e| file_error(e.to_string()))?;
        self.write(&memory.path())?;
        let bytes = std::fs::read(memory.path()).map_err(|e| file_error(e.to_string()))?;
        minerva_seal::write(path, Some(key), &bytes).map_err(|e| file_error(e.to_string()))
    }
}

/// What an adapter file declares, read without llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// The file.
    pub path: std::path::PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// `adapter.lora.alpha` (0 when absent).
    pub alpha: f32,
    /// The largest rank among its pairs.
    pub rank: u64,
    /// The base's SHA-256 the adapter was made for, when recorded.
    pub base_sha256: Option<String>,
    /// Targets and their `(n_in, n_out)`.
    pub targets: Vec<(String, u64, u64)>,
    /// Bytes of its tensors (what it costs in memory once loaded).
    pub tensor_bytes: u64,
}

/// Reads and checks an adapter file: a GGUF of `general.type = adapter`, `adapter.type =
/// lora`, whose every `.lora_a` has its `.lora_b` with agreeing ranks.
pub fn inspect_adapter(path: &Path) -> Result<AdapterInfo> {
    let info = gguf::inspect(path)?;
    let bad = |reason: String| EngineError::InvalidAdapter {
        path: path.to_owned(),
        reason,
    };
    if info.get_str("general.type") != Some(ADAPTER_TYPE) || info.get_str("adapter.type") != Some("lora") {
        return Err(bad(
            "not a LoRA adapter (general.type must be `adapter` and adapter.type `lora`)".into(),
        ));
    }
    let alpha = match info.metadata.get("adapter.lora.alpha") {
        Some(gguf::MetadataValue::F32(v)) => *v,
        Some(other) => return Err(bad(format!("adapter.lora.alpha is {other:?}, not an f32"))),
        None => 0.0,
    };
    let mut targets = Vec::new();
    let mut rank = 0;
    for a in &info.tensors {
        let Some(target) = a.name.strip_suffix(".lora_a") else {
            if !a.name.ends_with(".lora_b") {
                return Err(bad(format!("tensor `{}` is neither a .lora_a nor a .lora_b", a.name)));
            }
            continue;
        };
        let b_name = format!("{target}.lora_b");
        let b = info
            .tensors
            .iter()
            .find(|t| t.name == b_name)
            .ok_or_else(|| bad(format!("`{}` has no `{b_name}`", a.name)))?;
        if a.n_dims != 2 || b.n_dims != 2 || a.dims[1] != b.dims[0] {
            return Err(bad(format!(
                "`{target}`: the factors' shapes {:?} and {:?} do not chain",
                &a.dims[..2],
                &b.dims[..2]
            )));
        }
        rank = rank.max(a.dims[1]);
        targets.push((target.to_owned(), a.dims[0], b.dims[1]));
    }
    if targets.is_empty() {
        return Err(bad("it adapts no tensor".into()));
    }
    Ok(AdapterInfo {
        path: path.to_owned(),
        architecture: info.architecture.clone(),
        alpha,
        rank,
        base_sha256: info.get_str(BASE_DIGEST_KEY).map(str::to_owned),
        targets,
        tensor_bytes: info.tensor_bytes,
    })
}

/// Checks that `adapter` fits the base described by `base`: same architecture, every
/// target a matrix of the base with the adapter's shape, and (when both are known) the
/// base's digest the one the adapter was made for.
pub fn check_fits(adapter: &AdapterInfo, base: &gguf::GgufInfo, base_sha256: Option<&str>) -> Result<()> {
    let refuse = |reason: String| EngineError::InvalidAdapter {
        path: adapter.path.clone(),
        reason,
    };
    if adapter.architecture != base.architecture {
        return Err(refuse(format!(
            "the adapter is for a `{}` model, the base is `{}`",
            adapter.architecture, base.architecture
        )));
    }
    if let (Some(made_for), Some(base)) = (&adapter.base_sha256, base_sha256)
        && !made_for.eq_ignore_ascii_case(base)
    {
        return Err(refuse(format!(
            "the adapter was made for the base with SHA-256 {made_for}, not this one ({base})"
        )));
    }
    for (target, n_in, n_out) in &adapter.targets {
        let tensor = base
            .tensors
            .iter()
            .find(|t| &t.name == target)
            .ok_or_else(|| refuse(format!("the base has no tensor `{target}`")))?;
        if tensor.dims[0] != *n_in || tensor.dims[1] != *n_out {
            return Err(refuse(format!(
                "`{target}` is {}x{} in the base, {n_in}x{n_out} in the adapter",
                tensor.dims[0], tensor.dims[1]
            )));
        }
    }
    Ok(())
}

/// Writes `base` with `scale · B·A` of each of `adapter`'s pairs added into its target, the
/// merged matrices in f32 and everything else (metadata, other tensors) copied as it is:
/// the model llama.cpp's `llama-export-lora` would write.
pub fn merge(base: &Path, adapter: &LoraAdapterFile, scale: f32, out: &Path) -> Result<()> {
    adapter.validate()?;
    let info = gguf::inspect(base)?;
    let adapter_info = AdapterInfo {
        path: out.to_owned(),
        architecture: adapter.architecture.clone(),
        alpha: adapter.alpha,
        rank: adapter.rank() as u64,
        base_sha256: None,
        targets: adapter
            .pairs
            .iter()
            .map(|p| (p.target.clone(), p.n_in as u64, p.n_out as u64))
            .collect(),
        tensor_bytes: 0,
    };
    check_fits(&adapter_info, &info, None)?;
    let factor = scale * adapter.scale_factor();
    let merged_bytes: usize = adapter.pairs.iter().map(|p| p.n_in * p.n_out * 4).sum();
    rewrite(base, out, merged_bytes, adapter.pairs.len(), |source, name| {
        let Some(pair) = adapter.pairs.iter().find(|p| p.target == name) else {
            return Ok(None);
        };
        let mut weights = source.tensor_f32(name)?;
        for (w, d) in weights.iter_mut().zip(pair.delta()) {
            *w += factor * d;
        }
        Ok(Some(weights))
    })
}

/// Writes `base` with every tensor in f32 (ggml's own dequantization): the weights a
/// trainer starts from, and a reference free of the kernels' 8-bit rounding of
/// activations.
pub fn dequantize(base: &Path, out: &Path) -> Result<()> {
    let info = gguf::inspect(base)?;
    let bytes = info.parameter_count.saturating_mul(4);
    rewrite(
        base,
        out,
        usize::try_from(bytes).unwrap_or(usize::MAX),
        info.tensors.len(),
        |source, name| source.tensor_f32(name).map(Some),
    )
}

/// Copies the GGUF `base` to `out` (metadata, and tensors in their order), replacing the
/// tensors for which `change` gives f32 values (of the same shape); `new_bytes` and
/// `new_tensors` bound what the replacements take.
fn rewrite(
    base: &Path,
    out: &Path,
    new_bytes: usize,
    new_tensors: usize,
    mut change: impl FnMut(&GgufIn, &str) -> Result<Option<Vec<f32>>>,
) -> Result<()> {
    let source = GgufIn::open(base)?;
    let mut out_gguf = GgufOut::new(new_bytes, new_tensors)?;
    // SAFETY: both contexts are alive; `gguf_set_kv` copies every key and value.
    unsafe { sys::gguf_set_kv(out_gguf.gguf, source.gguf) };
    for i in 0..source.n_tensors() {
        let name = source.tensor_name(i);
        match change(&source, &name)? {
            Some(values) => out_gguf.add_f32(&name, &source.tensor_shape(&name)?, &values)?,
            None => out_gguf.add_existing(&source, &name)?,
        }
    }
    out_gguf.write(out)
}

/// A GGUF being built: ggml's writer and the ggml context holding new tensors' data.
struct GgufOut {
    gguf: *mut sys::gguf_context,
    tensors: *mut sys::ggml_context,
}

impl GgufOut {
    fn new(data_bytes: usize, n_tensors: usize) -> Result<Self> {
        super::llama::backend()?;
        // SAFETY: plain constructors; null results are checked.
        let (gguf, tensors) = unsafe {
            let overhead = sys::ggml_tensor_overhead() * (n_tensors + 1);
            let tensors = sys::ggml_init(sys::ggml_init_params {
                mem_size: data_bytes + overhead + 1024,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: false,
            });
            (sys::gguf_init_empty(), tensors)
        };
        if gguf.is_null() || tensors.is_null() {
            return Err(EngineError::Decode(
                "ggml could not allocate the GGUF being written".into(),
            ));
        }
        Ok(Self { gguf, tensors })
    }

    fn set_str(&mut self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (cstring(key)?, cstring(value)?);
        // SAFETY: valid context and NUL-terminated strings, copied by ggml.
        unsafe { sys::gguf_set_val_str(self.gguf, key.as_ptr(), value.as_ptr()) };
        Ok(())
    }

    fn set_f32(&mut self, key: &str, value: f32) -> Result<()> {
        let key = cstring(key)?;
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_f32(self.gguf, key.as_ptr(), value) };
        Ok(())
    }

    /// Adds an f32 tensor of ggml shape `ne` (1 to 4 dimensions, innermost first) with
    /// `data`.
    fn add_f32(&mut self, name: &str, ne: &[usize], data: &[f32]) -> Result<()> {
        assert!((1..=4).contains(&ne.len()), "{name} has {} dimensions", ne.len());
        assert_eq!(ne.iter().product::<usize>(), data.len(), "shape and data of {name}");
        let cname = cstring(name)?;
        let ne: Vec<i64> = ne.iter().map(|&n| i64::try_from(n).unwrap_or(i64::MAX)).collect();
        // SAFETY: the context was sized for every tensor added; the new tensor's data is
        // the product of `ne` contiguous f32 values, which the copy fills exactly.
        unsafe {
            let t = sys::ggml_new_tensor(self.tensors, sys::GGML_TYPE_F32, ne.len() as i32, ne.as_ptr());
            if t.is_null() {
                return Err(EngineError::Decode(format!("ggml could not allocate tensor {name}")));
            }
            sys::ggml_set_name(t, cname.as_ptr());
            std::ptr::copy_nonoverlapping(data.as_ptr(), sys::ggml_get_data_f32(t), data.len());
            sys::gguf_add_tensor(self.gguf, t);
        }
        Ok(())
    }

    /// Adds `source`'s tensor `name` as it is (type and bytes).
    fn add_existing(&mut self, source: &GgufIn, name: &str) -> Result<()> {
        let cname = cstring(name)?;
        // SAFETY: `source` keeps its ggml context (and so the tensor) alive until the
        // file is written, which `merge` does before dropping `source`.
        unsafe {
            let t = sys::ggml_get_tensor(source.tensors, cname.as_ptr());
            if t.is_null() {
                return Err(EngineError::Decode(format!("the base has no tensor {name}")));
            }
            sys::gguf_add_tensor(self.gguf, t);
        }
        Ok(())
    }

    fn write(self, path: &Path) -> Result<()> {
        let cpath = cstring(&path.to_string_lossy())?;
        // SAFETY: valid context; ggml writes the metadata and every tensor's data.
        if unsafe { sys::gguf_write_to_file(self.gguf, cpath.as_ptr(), false) } {
            Ok(())
        } else {
            Err(EngineError::File {
                path: path.to_owned(),
                reason: "ggml could not write the GGUF file (is the directory writable, the disk full?)".into(),
            })
        }
    }
}

impl Drop for GgufOut {
    fn drop(&mut self) {
        // SAFETY: both were created in `new` and are freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.tensors);
        }
    }
}

/// A GGUF file read whole by ggml (metadata and every tensor's data in memory).
struct GgufIn {
    gguf: *mut sys::gguf_context,
    tensors: *mut sys::ggml_context,
}

impl GgufIn {
    /// Opens a file `gguf::inspect` has validated.
    fn open(path: &Path) -> Result<Self> {
        let cpath = cstring(&path.to_string_lossy())?;
        let mut tensors: *mut sys::ggml_context = std::ptr::null_mut();
        // SAFETY: ggml reads the file into a context it allocates and returns in `tensors`.
        let gguf = unsafe {
            sys::gguf_init_from_file(
                cpath.as_ptr(),
                sys::gguf_init_params {
                    no_alloc: false,
                    ctx: &mut tensors,
                },
            )
        };
        if gguf.is_null() || tensors.is_null() {
            return Err(EngineError::File {
                path: path.to_owned(),
                reason: "ggml could not read the GGUF file".into(),
            });
        }
        Ok(Self { gguf, tensors })
    }

    fn n_tensors(&self) -> i64 {
        // SAFETY: valid context.
        unsafe { sys::gguf_get_n_tensors(self.gguf) }
    }

    fn tensor_name(&self, i: i64) -> String {
        // SAFETY: `i` is below the tensor count; ggml owns the string.
        unsafe { CStr::from_ptr(sys::gguf_get_tensor_name(self.gguf, i)) }
            .to_string_lossy()
            .into_owned()
    }

    /// The tensor's shape, innermost first, without trailing dimensions of 1.
    fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        let cname = cstring(name)?;
        // SAFETY: the tensor lives in `self.tensors`; `ne` has four entries.
        let ne = unsafe {
            let t = sys::ggml_get_tensor(self.tensors, cname.as_ptr());
            if t.is_null() {
                return Err(EngineError::Decode(format!("the base has no tensor {name}")));
            }
            (*t).ne
        };
        let dims = ne.iter().rposition(|&n| n != 1).map_or(1, |last| last + 1);
        Ok(ne[..dims].iter().map(|&n| usize::try_from(n).unwrap_or(0)).collect())
    }

    /// The tensor's values in f32, dequantized by ggml's own routine for its type.
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let cname = cstring(name)?;
        // SAFETY: the tensor lives in `self.tensors`, its data holds `nelements` values
        // of its type, and `to_float` writes exactly that many f32 values.
        unsafe {
            let t = sys::ggml_get_tensor(self.tensors, cname.as_ptr());
            if t.is_null() {
                return Err(EngineError::Decode(format!("the base has no tensor {name}")));
            }
            let n = usize::try_from(sys::ggml_nelements(t)).unwrap_or(0);
            let mut out = vec![0.0f32; n];
            let ty = (*t).type_;
            if ty == sys::GGML_TYPE_F32 {
                std::ptr::copy_nonoverlapping(sys::ggml_get_data_f32(t), out.as_mut_ptr(), n);
                return Ok(out);
            }
            let traits = sys::ggml_get_type_traits(ty);
            let Some(to_float) = traits.as_ref().and_then(|tr| tr.to_float) else {
                return Err(EngineError::Decode(format!("ggml cannot dequantize tensor {name}")));
            };
            to_float(sys::ggml_get_data(t), out.as_mut_ptr(), i64::try_from(n).unwrap_or(0));
            Ok(out)
        }
    }
}

impl Drop for GgufIn {
    fn drop(&mut self) {
        // SAFETY: created in `open`, freed once.
        unsafe {
            sys::gguf_free(self.gguf);
            sys::ggml_free(self.tensors);
        }
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| EngineError::invalid("name", format!("{s:?} holds a NUL byte")))
}
