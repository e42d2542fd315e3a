//! bf16 matrix products on AVX512-BF16 (`vdpbf16ps`: 32 bf16 products summed pairwise
//! into 16 f32 lanes per instruction, twice the f32 FMA's work): the encoder's
//! reduced-precision path (`--embedding-dtype bf16`).
//!
//! Weights are rounded to bf16 once, at load, and packed in panels of 32 columns whose
//! rows come in pairs (the instruction's layout); activations are rounded to bf16 before
//! each product (round to nearest even, `vcvtne2ps2bf16`); products accumulate in f32.
//! A 8 × 32 register tile runs over the whole inner dimension; the rows are cut in
//! blocks of 64 that stay in L2 while the panels stream past, and (block, panel) tasks
//! are spread over Rayon's pool.

use std::arch::x86_64::*;

use rayon::prelude::*;

/// Columns per panel: two registers of 16 f32.
const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 8;
/// Rows per block (a task's rows).
const MB: usize = 64;

/// Whether this CPU runs the bf16 kernels.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// A `k × n` weight matrix in bf16, packed: panel `j` holds columns `32j..32j+32`; for
/// each pair of rows `(2p, 2p+1)` it stores 64 values, columns 0–15 then 16–31, each
/// column as its two rows side by side. Rows and columns past the matrix are zero.
pub(super) struct PackedB {
    data: Vec<u16>,
    pub k: usize,
    pub n: usize,
    pairs: usize,
}

impl PackedB {
    /// Packs the row-major `k × n` matrix `b`.
    pub(super) fn pack(b: &[f32], k: usize, n: usize) -> Self {
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u16; panels * pairs * 2 * NR];
        for row in 0..k {
            let (p, odd) = (row / 2, row % 2);
            for col in 0..n {
                let (panel, c) = (col / NR, col % NR);
                let index = panel * pairs * 2 * NR + p * 2 * NR + (c / 16) * 32 + (c % 16) * 2 + odd;
                data[index] = half::bf16::from_f32(b[row * n + col]).to_bits();
            }
        }
        Self { data, k, n, pairs }
    }

    /// Bytes the packed matrix takes.
    pub(super) fn bytes(&self) -> usize {
        self.data.len() * 2
    }
}

/// `a` (`m × k` f32, row-major) rounded to bf16 into `out`, rows padded to an even
/// length with zeros; returns the row stride.
fn convert_rows(a: &[f32], m: usize, k: usize, out: &mut Vec<u16>) -> usize {
    let stride = k.div_ceil(2) * 2;
    if out.len() < m * stride {
        out.resize(m * stride, 0);
    }
    out[..m * stride]
        .par_chunks_mut(stride)
        .zip(a.par_chunks(k))
        .with_min_len(16)
        .for_each(|(dst, src)| {
            // SAFETY: `available()` was checked before any product (see `matmul`).
            unsafe { convert_row(src, &mut dst[..k]) }
            // An odd row's padding pairs with the zero row of the packed weights.
            dst[k..].fill(0);
        });
    stride
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(src: &[f32], dst: &mut [u16]) {
    let chunks = src.len() / 32;
    for i in 0..chunks {
        // SAFETY: 32 floats from 32·i lie inside `src`, 32 u16 inside `dst`.
        unsafe {
            let lo = _mm512_loadu_ps(src.as_ptr().add(32 * i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(32 * i + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(32 * i) as *mut __m512i, packed);
        }
    }
    for i in chunks * 32..src.len() {
        dst[i] = half::bf16::from_f32(src[i]).to_bits();
    }
}

/// `dst[m × n] = (accumulate ? dst : 0) + a[m × k] · b`, with `a` rounded to bf16 in
/// `scratch`. Panics unless [`available`].
pub(super) fn matmul(dst: &mut [f32], a: &[f32], b: &PackedB, m: usize, accumulate: bool, scratch: &mut Vec<u16>) {
    assert!(available(), "bf16 kernels need AVX512-BF16");
    let (k, n) = (b.k, b.n);
    assert!(dst.len() >= m * n && a.len() >= m * k, "bf16 matmul operands too small");
    let stride = convert_rows(a, m, k, scratch);
    let a16: &[u16] = scratch;
    if k % super::amx::DEPTH == 0 && super::amx::available() {
        // The tiles read whole blocks of 32 rows: the rows past `m` are read (whatever
        // they hold) and their results dropped.
        let rows = m.next_multiple_of(super::amx::ROWS);
        if scratch.len() < rows * stride {
            scratch.resize(rows * stride, 0);
        }
        return amx_matmul(dst, scratch, stride, b, m, accumulate);
    }
    // Every tile writes its own rows × columns.
    let out = super::kernels::SharedMut(dst.as_mut_ptr());
    super::kernels::for_each_tile(m, n, MB, NR, MR, |panel, cols, r, count| {
        let out = out;
        let bp = &b.data[panel * b.pairs * 2 * NR..][..b.pairs * 2 * NR];
        // SAFETY: rows r..r+count and columns `cols` lie inside `dst` (m × n) and `a16`
        // (m × stride); no other tile writes them; the CPU has the features.
        unsafe {
            let a_rows = a16.as_ptr().add(r * stride);
            let c = out.0.add(r * n + cols.start);
            tiles_for(count, a_rows, stride, bp, b.pairs, c, n, cols.len(), accumulate);
        }
    });
}

/// The `count × 32` tile (`count ≤ 8`) of [`tile`].
///
/// # Safety
/// As [`tile`]'s.
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_for(
    count: usize,
    a: *const u16,
    stride: usize,
    panel: &[u16],
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
    width: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded.
    unsafe {
        match count {
            8 => tile::<8>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            7 => tile::<7>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            6 => tile::<6>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            5 => tile::<5>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            4 => tile::<4>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            3 => tile::<3>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            2 => tile::<2>(a, stride, panel, pairs, c, c_stride, width, accumulate),
            _ => tile::<1>(a, stride, panel, pairs, c, c_stride, width, accumulate),
        }
    }
}

/// [`matmul`] on AMX: tasks of 64 rows against every panel (the rows stay in L2 while
/// the panels stream past), in blocks of 32 rows (`a16` holds whole blocks; the results
/// of rows past `m` are dropped).
fn amx_matmul(dst: &mut [f32], a16: &[u16], stride: usize, b: &PackedB, m: usize, accumulate: bool) {
    let n = b.n;
    let panels = n.div_ceil(NR);
    let depth = b.k / super::amx::DEPTH;
    assert!(a16.len() >= m.next_multiple_of(super::amx::ROWS) * stride);
    let out = super::kernels::SharedMut(dst.as_mut_ptr());
    (0..m.div_ceil(MB)).into_par_iter().for_each(|block| {
        let out = out;
        let rows = block * MB..(block * MB + MB).min(m);
        // SAFETY: `amx_matmul` runs only when `amx::available()`.
        let tiles = unsafe { super::amx::Tiles::configure() };
        for panel in 0..panels {
            let cols = panel * NR..(panel * NR + NR).min(n);
            let bp = &b.data[panel * b.pairs * 2 * NR..][..b.pairs * 2 * NR];
            for r in rows.clone().step_by(super::amx::ROWS) {
                // SAFETY: rows r..r+32 of `a16` exist (asserted), rows r..r+valid of
                // `dst`; the panel holds k/2 pairs; no other task writes these rows.
                unsafe {
                    super::amx::block(
                        &tiles,
                        a16.as_ptr().add(r * stride),
                        stride,
                        bp.as_ptr(),
                        depth,
                        out.0.add(r * n + cols.start),
                        n,
                        (rows.end - r).min(super::amx::ROWS),
                        cols.len(),
                        accumulate,
                    );
                }
            }
        }
        drop(tiles);
    });
}

/// One `R × 32` tile: `c[R × width] (+)= a[R × 2·pairs] · panel`.
///
/// # Safety
/// `a` holds `R` rows of `stride` bf16 (at least `2·pairs`), `panel` `pairs · 64` values,
/// `c` `R` rows of `c_stride` f32 with `width ≤ 32` valid columns; AVX512-BF16 present.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(
    a: *const u16,
    stride: usize,
    panel: &[u16],
    pairs: usize,
    c: *mut f32,
    c_stride: usize,
    width: usize,
    accumulate: bool,
) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let bp = panel.as_ptr();
    // SAFETY: the caller's bounds (see above).
    unsafe {
        for p in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 64) as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 64 + 32) as *const __m512i));
            for r in 0..R {
                let pair = (a.add(r * stride + 2 * p) as *const i32).read_unaligned();
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
            }
        }
        super::kernels::store_panel_rows(&lo, &hi, c, c_stride, width, accumulate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_products_match_f32_products_of_the_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(m, k, n) in &[
            (1, 2, 1),
            (13, 37, 45),
            (70, 384, 96),
            (9, 64, 33),
            (33, 64, 45),
            (128, 32, 17),
            (5, 64, 40),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.07).collect();
            let round = |x: f32| half::bf16::from_f32(x).to_f32();
            let packed = PackedB::pack(&b, k, n);
            let mut dst = vec![0.5f32; m * n];
            let mut scratch = Vec::new();
            matmul(&mut dst, &a, &packed, m, true, &mut scratch);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = 0.5
                        + (0..k)
                            .map(|l| f64::from(round(a[i * k + l])) * f64::from(round(b[l * n + j])))
                            .sum::<f64>();
                    let got = f64::from(dst[i * n + j]);
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} at ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
