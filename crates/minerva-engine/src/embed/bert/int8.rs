//! int8 matrix products: the encoder's reduced-precision path for CPUs without
//! AVX512-BF16 (`--embedding-dtype int8`), on VNNI's `vpdpbusd` (64 u8 × i8 products
//! summed four by four into 16 i32 lanes per instruction, four times the f32 FMA's
//! work) where the CPU has AVX512-VNNI, its 256-bit form where it has AVX-VNNI (Alder
//! Lake and later), and portable integer code elsewhere (correct, not fast).
//!
//! Both operands are quantized symmetrically in groups of 32 along the inner dimension,
//! as llama.cpp's q8_0 is: a scale per group of 32 weights of a column (`w ≈ s · q`,
//! `q ∈ [-127, 127]`), fixed at load, and per group of 32 values of an activation row,
//! before each product (`x ≈ t · (u − 128)`, `u ∈ [1, 255]`, unsigned because `vpdpbusd`
//! takes its first operand so). A scale per whole row and column is faster but loses too
//! much: on all-MiniLM-L6-v2 its lowest cosine to sentence-transformers was 0.986 (groups:
//! 0.998), because a few channels of the layer norms' outputs are far larger than the
//! rest. Weights are packed in panels of 32 columns whose rows come in quads (the
//! instruction's layout). A group's products accumulate exactly in i32, starting from
//! `−128 · Σ q` (which takes the activations' offset back out), and are added to the f32
//! result scaled by `t · s`.

use rayon::prelude::*;

/// Columns per panel.
const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 6;
/// Values per quantization group along the inner dimension (8 quads).
pub(super) const GROUP: usize = 32;
/// Rows per block (a task's rows).
const MB: usize = 64;

/// The kernel this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AVX512-VNNI: 512-bit `vpdpbusd`.
    Avx512Vnni,
    /// AVX-VNNI: 256-bit `vpdpbusd`.
    AvxVnni,
    /// Plain integer code (no VNNI).
    Portable,
}

impl Kernel {
    /// The best kernel for this CPU.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Self::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("avxvnni") {
                return Self::AvxVnni;
            }
        }
        Self::Portable
    }

    /// How the kernel is named in logs and reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Avx512Vnni => "int8 avx512_vnni (vpdpbusd), i32 accumulation",
            Self::AvxVnni => "int8 avx_vnni (vpdpbusd ymm), i32 accumulation",
            Self::Portable => "int8 portable (no VNNI on this CPU: slower than f32)",
        }
    }
}

/// A `k × n` weight matrix quantized to int8 in groups of 32 rows per column and packed:
/// panel `j` holds columns `32j..32j+32`; for each quad of rows `(4p..4p+4)` it stores 128
/// bytes, column `c`'s four rows at `(c / 16)·64 + (c % 16)·4`. Rows and columns past the
/// matrix are zero.
pub(super) struct PackedI8 {
    data: Vec<i8>,
    /// Per panel, group and column (32 per group): the scale (`w ≈ scale · q`).
    scales: Vec<f32>,
    /// Per panel, group and column: `−128 · Σ q`, where a group's sums start.
    offsets: Vec<i32>,
    pub k: usize,
    pub n: usize,
    quads: usize,
    groups: usize,
}

impl PackedI8 {
    /// Quantizes and packs the row-major `k × n` matrix `b`.
    pub(super) fn pack(b: &[f32], k: usize, n: usize) -> Self {
        let quads = k.div_ceil(4);
        let groups = k.div_ceil(GROUP);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * NR * quads * 4];
        let mut scales = vec![1.0f32; panels * groups * NR];
        let mut offsets = vec![0i32; panels * groups * NR];
        for col in 0..n {
            let (panel, c) = (col / NR, col % NR);
            for group in 0..groups {
                let rows = group * GROUP..(group * GROUP + GROUP).min(k);
                let largest = rows.clone().map(|row| b[row * n + col].abs()).fold(0.0f32, f32::max);
                let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
                let mut sum = 0i32;
                for row in rows {
                    let q = (b[row * n + col] / scale).round().clamp(-127.0, 127.0) as i8;
                    sum += i32::from(q);
                    let index = panel * quads * 128 + (row / 4) * 128 + (c / 16) * 64 + (c % 16) * 4 + row % 4;
                    data[index] = q;
                }
                let at = (panel * groups + group) * NR + c;
                scales[at] = scale;
                offsets[at] = -128 * sum;
            }
        }
        Self {
            data,
            scales,
            offsets,
            k,
            n,
            quads,
            groups,
        }
    }

    /// Bytes the packed matrix takes.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() + 4 * (self.scales.len() + self.offsets.len())
    }
}

/// Scratch for the quantized left operand, reused across products.
#[derive(Default)]
pub(super) struct Scratch {
    bytes: Vec<u8>,
    scales: Vec<f32>,
}

/// Quantizes the rows of `a` (`m × k`) into `scratch` in groups of 32, rows padded to
/// a multiple of 4 (the padding meets zero weights); returns the row stride. A row's
/// group scales are at `scales[row · groups..]`.
fn quantize_rows(a: &[f32], m: usize, k: usize, scratch: &mut Scratch) -> usize {
    let stride = k.div_ceil(4) * 4;
    let groups = k.div_ceil(GROUP);
    if scratch.bytes.len() < m * stride {
        scratch.bytes.resize(m * stride, 128);
    }
    if scratch.scales.len() < m * groups {
        scratch.scales.resize(m * groups, 1.0);
    }
    scratch.bytes[..m * stride]
        .par_chunks_mut(stride)
        .zip(scratch.scales[..m * groups].par_chunks_mut(groups))
        .zip(a.par_chunks(k))
        .with_min_len(16)
        .for_each(|((dst, scales), src)| {
            for ((dst, src), scale) in dst.chunks_mut(GROUP).zip(src.chunks(GROUP)).zip(scales) {
                let largest = src.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                *scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
                let inverse = 1.0 / *scale;
                for (d, &x) in dst.iter_mut().zip(src) {
                    // |x · inverse| ≤ 127 (up to rounding, which the clamp absorbs).
                    *d = ((x * inverse).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
                }
            }
            dst[k..].fill(128);
        });
    stride
}

/// `dst[m × n] = (accumulate ? dst : 0) + a[m × k] · b`, with `a` quantized in
/// `scratch`, on `kernel` (which must be [`Kernel::detect`]'s, [`Kernel::Portable`], or
/// one the CPU has).
pub(super) fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &PackedI8,
    m: usize,
    accumulate: bool,
    kernel: Kernel,
    scratch: &mut Scratch,
) {
    assert!(
        kernel.runs_here(),
        "int8 kernel {kernel:?} is not available on this CPU"
    );
    let (k, n) = (b.k, b.n);
    assert!(dst.len() >= m * n && a.len() >= m * k, "int8 matmul operands too small");
    let stride = quantize_rows(a, m, k, scratch);
    let (a8, a_scales): (&[u8], &[f32]) = (&scratch.bytes, &scratch.scales);
    let groups = b.groups;
    // Every tile writes its own rows × columns.
    let out = super::kernels::SharedMut(dst.as_mut_ptr());
    super::kernels::for_each_tile(m, n, MB, NR, MR, |panel, cols, r, count| {
        let out = out;
        let tile = Tile {
            a: &a8[r * stride..(r + count) * stride],
            stride,
            a_scales: &a_scales[r * groups..(r + count) * groups],
            rows: count,
            panel: &b.data[panel * b.quads * 128..][..b.quads * 128],
            w_scales: &b.scales[panel * groups * NR..][..groups * NR],
            w_offsets: &b.offsets[panel * groups * NR..][..groups * NR],
            quads: b.quads,
            groups,
            // SAFETY: row r, column cols.start lies inside `dst` (m × n).
            c: unsafe { out.0.add(r * n + cols.start) },
            c_stride: n,
            width: cols.len(),
            accumulate,
        };
        // SAFETY: the tile's rows × columns of `dst` are this tile's alone; the CPU has
        // the kernel's features (asserted above).
        unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni => avx512::tile(&tile),
                #[cfg(target_arch = "x86_64")]
                Kernel::AvxVnni => avx2::tile(&tile),
                _ => portable_tile(&tile),
            }
        }
    });
}

impl Kernel {
    /// Whether this CPU has the kernel's features.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512Vnni => Self::detect() == Self::Avx512Vnni,
                Self::AvxVnni => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                        && std::arch::is_x86_feature_detected!("avxvnni")
                }
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }
}

/// One register tile's operands: `rows ≤ MR` quantized rows against one panel of 32
/// columns, into `c`.
struct Tile<'a> {
    /// `rows` rows of `stride` bytes (a multiple of 4, at least `4 · quads`).
    a: &'a [u8],
    stride: usize,
    /// `rows × groups` activation scales.
    a_scales: &'a [f32],
    rows: usize,
    /// `quads · 128` packed weight bytes.
    panel: &'a [i8],
    /// `groups × 32` weight scales and starting sums.
    w_scales: &'a [f32],
    w_offsets: &'a [i32],
    quads: usize,
    groups: usize,
    /// `rows` rows of `c_stride` f32, `width ≤ 32` valid columns each.
    c: *mut f32,
    c_stride: usize,
    width: usize,
    accumulate: bool,
}

/// Quads per group.
const GROUP_QUADS: usize = GROUP / 4;

/// Writes `values` (32 per row; `width` valid) into the tile's output.
///
/// # Safety
/// The tile's `c` bounds.
unsafe fn store_rows(tile: &Tile, row: usize, values: &[f32; NR]) {
    for (col, &value) in values.iter().enumerate().take(tile.width) {
        // SAFETY: row < rows, col < width (the caller's bounds).
        unsafe {
            let slot = tile.c.add(row * tile.c_stride + col);
            *slot = if tile.accumulate { *slot + value } else { value };
        }
    }
}

/// The tile in plain integer code.
///
/// # Safety
/// The tile's `c` bounds.
unsafe fn portable_tile(tile: &Tile) {
    for r in 0..tile.rows {
        let row = &tile.a[r * tile.stride..][..tile.quads * 4];
        let mut out = [0.0f32; NR];
        for g in 0..tile.groups {
            let mut sums = [0i32; NR];
            sums.copy_from_slice(&tile.w_offsets[g * NR..][..NR]);
            let quads = g * GROUP_QUADS..((g + 1) * GROUP_QUADS).min(tile.quads);
            for p in quads {
                let (a4, b) = (&row[4 * p..][..4], &tile.panel[p * 128..][..128]);
                for (col, sum) in sums.iter_mut().enumerate() {
                    let w = &b[(col / 16) * 64 + (col % 16) * 4..][..4];
                    *sum += (0..4).map(|i| i32::from(a4[i]) * i32::from(w[i])).sum::<i32>();
                }
            }
            let a_scale = tile.a_scales[r * tile.groups + g];
            for ((o, &sum), &w_scale) in out.iter_mut().zip(&sums).zip(&tile.w_scales[g * NR..][..NR]) {
                *o += sum as f32 * (a_scale * w_scale);
            }
        }
        // SAFETY: forwarded.
        unsafe { store_rows(tile, r, &out) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{GROUP_QUADS, MR, Tile};

    /// The tile on AVX512-VNNI.
    ///
    /// # Safety
    /// AVX512F/BW/VNNI present; the tile's bounds.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(tile: &Tile) {
        // SAFETY: forwarded.
        unsafe {
            match tile.rows {
                6 => rows::<6>(tile),
                5 => rows::<5>(tile),
                4 => rows::<4>(tile),
                3 => rows::<3>(tile),
                2 => rows::<2>(tile),
                _ => rows::<1>(tile),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn rows<const R: usize>(tile: &Tile) {
        debug_assert!(R <= MR && tile.rows == R && tile.a.len() >= R * tile.stride);
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let (ap, bp) = (tile.a.as_ptr(), tile.panel.as_ptr());
        // SAFETY: quad p's 4 bytes of row r lie inside `a` (stride ≥ 4·quads), its 128
        // panel bytes inside `panel`, group g's 32 scales and offsets inside theirs; `c`'s
        // bounds are the caller's.
        unsafe {
            for g in 0..tile.groups {
                let offsets = tile.w_offsets.as_ptr().add(g * 32);
                let (off_lo, off_hi) = (
                    _mm512_loadu_si512(offsets as *const __m512i),
                    _mm512_loadu_si512(offsets.add(16) as *const __m512i),
                );
                let mut sum_lo = [off_lo; R];
                let mut sum_hi = [off_hi; R];
                for p in g * GROUP_QUADS..((g + 1) * GROUP_QUADS).min(tile.quads) {
                    let b0 = _mm512_loadu_si512(bp.add(p * 128) as *const __m512i);
                    let b1 = _mm512_loadu_si512(bp.add(p * 128 + 64) as *const __m512i);
                    for r in 0..R {
                        let quad = (ap.add(r * tile.stride + 4 * p) as *const i32).read_unaligned();
                        let av = _mm512_set1_epi32(quad);
                        sum_lo[r] = _mm512_dpbusd_epi32(sum_lo[r], av, b0);
                        sum_hi[r] = _mm512_dpbusd_epi32(sum_hi[r], av, b1);
                    }
                }
                let scales = tile.w_scales.as_ptr().add(g * 32);
                let (scale_lo, scale_hi) = (_mm512_loadu_ps(scales), _mm512_loadu_ps(scales.add(16)));
                for r in 0..R {
                    let a_scale = _mm512_set1_ps(*tile.a_scales.get_unchecked(r * tile.groups + g));
                    lo[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum_lo[r]), _mm512_mul_ps(scale_lo, a_scale), lo[r]);
                    hi[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum_hi[r]), _mm512_mul_ps(scale_hi, a_scale), hi[r]);
                }
            }
            super::super::kernels::store_panel_rows(&lo, &hi, tile.c, tile.c_stride, tile.width, tile.accumulate);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{GROUP_QUADS, NR, Tile, store_rows};

    /// The tile on AVX2 + AVX-VNNI, a row at a time (four 8-lane sums and four results
    /// per row, beside the panel's four registers, fill AVX2's 16).
    ///
    /// # Safety
    /// AVX2, FMA and AVX-VNNI present; the tile's bounds.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn tile(tile: &Tile) {
        let (ap, bp) = (tile.a.as_ptr(), tile.panel.as_ptr());
        for r in 0..tile.rows {
            let mut out = [_mm256_setzero_ps(); 4];
            // SAFETY: as in the AVX-512 tile; the panel layout puts columns 8q..8q+8 at
            // bytes 32q..32q+32 of a quad's 128.
            unsafe {
                for g in 0..tile.groups {
                    let offsets = tile.w_offsets.as_ptr().add(g * NR);
                    let mut sums = [0, 1, 2, 3].map(|q| _mm256_loadu_si256(offsets.add(8 * q) as *const __m256i));
                    for p in g * GROUP_QUADS..((g + 1) * GROUP_QUADS).min(tile.quads) {
                        let quad = (ap.add(r * tile.stride + 4 * p) as *const i32).read_unaligned();
                        let av = _mm256_set1_epi32(quad);
                        for (q, sum) in sums.iter_mut().enumerate() {
                            let b = _mm256_loadu_si256(bp.add(p * 128 + 32 * q) as *const __m256i);
                            *sum = _mm256_dpbusd_avx_epi32(*sum, av, b);
                        }
                    }
                    let a_scale = _mm256_set1_ps(tile.a_scales[r * tile.groups + g]);
                    let scales = tile.w_scales.as_ptr().add(g * NR);
                    for (q, o) in out.iter_mut().enumerate() {
                        let scale = _mm256_mul_ps(_mm256_loadu_ps(scales.add(8 * q)), a_scale);
                        *o = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[q]), scale, *o);
                    }
                }
                let mut values = [0.0f32; NR];
                for (q, o) in out.iter().enumerate() {
                    _mm256_storeu_ps(values.as_mut_ptr().add(8 * q), *o);
                }
                store_rows(tile, r, &values);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU has computes exactly the integer products of the quantized
    /// operands (checked against a plain f64 sum of the dequantized values), for sizes
    /// with partial quads, groups, tiles and panels.
    #[test]
    fn int8_products_match_the_products_of_the_quantized_operands() {
        let kernels: Vec<Kernel> = [Kernel::Portable, Kernel::AvxVnni, Kernel::Avx512Vnni]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect();
        eprintln!("kernels tested: {kernels:?}");
        let quantize = |v: &[f32]| -> Vec<f32> {
            v.chunks(GROUP)
                .flat_map(|g| {
                    let largest = g.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                    let s = if largest > 0.0 { largest / 127.0 } else { 1.0 };
                    g.iter().map(move |x| (x / s).round() * s)
                })
                .collect()
        };
        for kernel in kernels {
            for &(m, k, n) in &[
                (1, 4, 1),
                (13, 37, 45),
                (70, 384, 96),
                (9, 64, 33),
                (3, 5, 70),
                (7, 100, 40),
            ] {
                let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13).collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07 + (i % 3) as f32)
                    .collect();
                let packed = PackedI8::pack(&b, k, n);
                let mut dst = vec![0.5f32; m * n];
                let mut scratch = Scratch::default();
                matmul(&mut dst, &a, &packed, m, true, kernel, &mut scratch);
                for i in 0..m {
                    let row = quantize(&a[i * k..][..k]);
                    for j in 0..n {
                        let col = quantize(&(0..k).map(|l| b[l * n + j]).collect::<Vec<_>>());
                        let want: f64 = 0.5 + (0..k).map(|l| f64::from(row[l]) * f64::from(col[l])).sum::<f64>();
                        let got = f64::from(dst[i * n + j]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{kernel:?} {m}x{k}x{n} at ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
