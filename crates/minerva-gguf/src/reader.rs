//! Reading the GGUF header: metadata and tensor table, every length checked against the
//! bytes actually present.

use super::*;

/// A reader that knows its position and how many bytes the file has left, so that every
/// length can be checked before anything is allocated.
pub(super) struct Reader<R> {
    pub(super) inner: R,
    pub(super) pos: u64,
    pub(super) len: u64,
}

impl<R: BufRead> Reader<R> {
    pub(super) fn new(inner: R, len: u64) -> Self {
        Self { inner, pos: 0, len }
    }

    pub(super) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails with `Truncated` unless `n` more bytes exist.
    pub(super) fn need(&self, n: u64, what: &str) -> Result<(), GgufErrorKind> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        Ok(())
    }

    pub(super) fn truncated(&self, what: &str) -> GgufErrorKind {
        truncated(what, self.pos)
    }

    pub(super) fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), GgufErrorKind> {
        let n = buf.len() as u64;
        self.need(n, what)?;
        let pos = self.pos;
        self.inner.read_exact(buf).map_err(|e| io_error(e, what, pos))?;
        self.pos += n;
        Ok(())
    }

    pub(super) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufErrorKind> {
        let mut buf = [0; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, GgufErrorKind> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, GgufErrorKind> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, GgufErrorKind> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Skips `n` bytes by reading through them: header arrays are small enough.
    pub(super) fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufErrorKind> {
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
    pub(super) fn string_len(&mut self, what: &str) -> Result<u64, GgufErrorKind> {
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

    pub(super) fn string(&mut self, what: &str) -> Result<String, GgufErrorKind> {
        let len = self.string_len(what)?;
        // `string_len` bounded `len` by MAX_STRING_LEN, so it fits in memory.
        let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
        self.fill(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufErrorKind::InvalidUtf8 { what: what.to_owned() })
    }

    /// Skips a string we do not keep, still checking its length.
    pub(super) fn skip_string(&mut self, what: &str) -> Result<(), GgufErrorKind> {
        let len = self.string_len(what)?;
        self.skip(len, what)
    }
}

pub(super) fn truncated(what: &str, offset: u64) -> GgufErrorKind {
    GgufErrorKind::Truncated {
        what: what.to_owned(),
        offset,
    }
}

pub(super) fn io_error(e: io::Error, what: &str, offset: u64) -> GgufErrorKind {
    // The file may shrink after we measured it; that is truncation too.
    match e.kind() {
        io::ErrorKind::UnexpectedEof => truncated(what, offset),
        _ => GgufErrorKind::Io(e),
    }
}

/// One entry of the tensor table, already checked for consistency on its own.
pub(super) struct TensorInfo {
    pub(super) name: String,
    pub(super) type_id: u32,
    pub(super) n_dims: u32,
    pub(super) dims: [u64; MAX_DIMS as usize],
    pub(super) elements: u64,
    pub(super) bytes: u64,
    pub(super) offset: u64,
}

/// Everything read from the header, before the cross-checks against the file size.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, MetadataValue>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) alignment: u64,
    /// Where the tensor table ends.
    pub(super) end: u64,
}

pub(super) fn read_header<R: BufRead>(r: &mut Reader<R>) -> Result<Header, GgufErrorKind> {
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
pub(super) fn check_count(count: u64, what: &str, max: u64) -> Result<(), GgufErrorKind> {
    if count > max {
        return Err(GgufErrorKind::TooMany {
            what: what.to_owned(),
            count,
            max,
        });
    }
    Ok(())
}

pub(super) fn read_metadata<R: BufRead>(
    r: &mut Reader<R>,
    count: u64,
) -> Result<BTreeMap<String, MetadataValue>, GgufErrorKind> {
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

pub(super) fn bad_metadata(key: impl Into<String>, reason: impl Into<String>) -> GgufErrorKind {
    GgufErrorKind::BadMetadata {
        key: key.into(),
        reason: reason.into(),
    }
}

pub(super) fn read_value<R: BufRead>(r: &mut Reader<R>, key: &str) -> Result<MetadataValue, GgufErrorKind> {
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

pub(super) fn read_scalar<R: BufRead>(
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

pub(super) fn read_array<R: BufRead>(r: &mut Reader<R>, key: &str, what: &str) -> Result<MetadataValue, GgufErrorKind> {
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
pub(super) fn alignment(metadata: &BTreeMap<String, MetadataValue>) -> Result<u64, GgufErrorKind> {
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

pub(super) fn read_tensor_infos<R: BufRead>(r: &mut Reader<R>, count: u64) -> Result<Vec<TensorInfo>, GgufErrorKind> {
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

pub(super) fn bad_tensor(tensor: &str, reason: impl Into<String>) -> GgufErrorKind {
    GgufErrorKind::BadTensor {
        tensor: tensor.to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn read_tensor_info<R: BufRead>(r: &mut Reader<R>, name: String) -> Result<TensorInfo, GgufErrorKind> {
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
        n_dims,
        dims,
        elements,
        bytes,
        offset,
    })
}

/// Element count and byte size of a tensor, with the checks llama.cpp makes: dimensions are
/// signed 64-bit there, rows hold whole blocks, and nothing may overflow.
pub(super) fn tensor_size(dims: &[u64; MAX_DIMS as usize], ggml: GgmlType) -> Result<(u64, u64), String> {
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
