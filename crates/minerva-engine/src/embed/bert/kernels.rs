//! The encoder's numeric kernels: matrix products through the `gemm` crate (the same
//! packed AVX-512/AVX2 micro-kernels Candle multiplies with, chosen at run time), and
//! the element-wise passes between them.
//!
//! The element-wise passes are plain loops without calls or branches in their inner
//! bodies, so the compiler vectorizes them for the CPU the binary targets: `exp` and
//! `erf` are polynomial approximations written out here (libm's scalar calls would stop
//! vectorization), and reductions keep [`LANES`] partial sums so they do not depend on
//! the order of additions the compiler may not change. Passes over many rows split the
//! rows over Rayon's pool.

use rayon::prelude::*;

/// Partial sums kept by row reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// Rows below this count run on the calling thread: splitting them costs more than it
/// saves.
const PARALLEL_ROWS: usize = 16;

/// A row-major matrix operand: `rows × cols` elements at `ptr`, element `(i, j)` at
/// `ptr + i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub ptr: *const f32,
    pub row_stride: isize,
    pub col_stride: isize,
}

impl View {
    /// A dense row-major matrix with `cols` columns.
    pub(super) fn dense(data: &[f32], cols: usize) -> Self {
        Self {
            ptr: data.as_ptr(),
            row_stride: cols as isize,
            col_stride: 1,
        }
    }
}

/// `dst[m × n] = (accumulate ? dst : 0) + scale · lhs[m × k] · rhs[k × n]`, every operand
/// described by its strides.
///
/// # Safety
/// Every element the shapes and strides address must lie inside the operand's
/// allocation, and `dst`'s elements must not be written by anyone else meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_row_stride: isize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    scale: f32,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller vouches for the operands (see above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride,
            accumulate,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `dst[m × n] = (accumulate ? dst : 0) + a[m × k] · b[k × n]`, all dense row-major, on
/// `threads` threads.
pub(super) fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    threads: usize,
) {
    assert!(
        dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n,
        "matmul operands too small"
    );
    // SAFETY: the dense shapes lie inside the slices (asserted above), and `dst` is
    // borrowed mutably.
    unsafe {
        gemm_strided(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            n as isize,
            accumulate,
            View::dense(a, k),
            View::dense(b, n),
            1.0,
            threads,
        );
    }
}

/// See [`crate::embed::gemm_rate`].
pub(crate) fn gemm_rate(rows: usize, shapes: &[(usize, usize)], duration: std::time::Duration) -> f64 {
    let threads = rayon::current_num_threads();
    let operands: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .map(|&(k, n)| {
            let a = (0..rows * k).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
            let b = (0..k * n).map(|i| ((i % 89) as f32 - 44.0) * 0.01).collect();
            (a, b, vec![0f32; rows * n])
        })
        .collect();
    let flops: f64 = shapes.iter().map(|&(k, n)| 2.0 * (rows * k * n) as f64).sum();
    let round = |ops: &mut Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>| {
        let started = std::time::Instant::now();
        for ((a, b, c), &(k, n)) in ops.iter_mut().zip(shapes) {
            matmul(c, a, b, rows, k, n, false, threads);
        }
        started.elapsed().as_secs_f64()
    };
    let mut operands = operands;
    round(&mut operands); // warm-up: pages touched, packing buffers allocated
    let started = std::time::Instant::now();
    let mut rates = Vec::new();
    while rates.len() < 3 || (started.elapsed() < duration && rates.len() < 1000) {
        rates.push(flops / round(&mut operands));
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// A destination pointer shared by parallel tasks that each write their own disjoint
/// part of one buffer (attention heads, product tiles); the buffer outlives the tasks,
/// which are joined before it is touched again. Users state their disjointness.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub *mut f32);
// SAFETY: see the type's contract: no two tasks write the same element.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Spreads an `m × n` product over Rayon's pool for the panel kernels (bf16, int8):
/// tasks of `block_rows` rows against one `panel_cols`-wide panel (the rows stay in L2
/// while the panels stream past), and within a task register tiles of up to `tile_rows`
/// rows. `tile(panel, cols, r, count)` computes rows `r..r + count`, columns `cols` (of
/// panel `panel`); no two calls share an output element.
pub(super) fn for_each_tile(
    m: usize,
    n: usize,
    block_rows: usize,
    panel_cols: usize,
    tile_rows: usize,
    tile: impl Fn(usize, std::ops::Range<usize>, usize, usize) + Sync,
) {
    let panels = n.div_ceil(panel_cols);
    (0..m.div_ceil(block_rows) * panels).into_par_iter().for_each(|task| {
        let (block, panel) = (task / panels, task % panels);
        let rows = block * block_rows..(block * block_rows + block_rows).min(m);
        let cols = panel * panel_cols..(panel * panel_cols + panel_cols).min(n);
        let mut r = rows.start;
        while r < rows.end {
            let count = (rows.end - r).min(tile_rows);
            tile(panel, cols.clone(), r, count);
            r += count;
        }
    });
}

/// `dst = src + bias`, row by row (`width`-long rows): a residual with the next
/// product's bias, which the product then accumulates onto.
pub(super) fn residual_with_bias(dst: &mut [f32], src: &[f32], bias: &[f32], width: usize) {
    dst.par_chunks_mut(width)
        .zip(src.par_chunks(width))
        .with_min_len(8)
        .for_each(|(dst, src)| {
            dst.copy_from_slice(src);
            add(dst, bias);
        });
}

/// Runs `f` on each `width`-long row of `data`, split over the pool when there are many.
pub(super) fn for_rows(data: &mut [f32], width: usize, f: impl Fn(&mut [f32]) + Sync + Send) {
    if data.len() / width >= PARALLEL_ROWS {
        data.par_chunks_mut(width).with_min_len(PARALLEL_ROWS / 2).for_each(f);
    } else {
        data.chunks_mut(width).for_each(f);
    }
}

/// Sum of `x` (in [`LANES`] partial sums, then added up).
#[inline]
pub(super) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// Largest element of `x` (`-inf` when empty).
#[inline]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    acc.iter().chain(tail).copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Layer normalization of one row in place: `(x - mean) / sqrt(var + eps) · gamma + beta`
/// (variance over the row, biased, as PyTorch's `LayerNorm`).
#[inline]
pub(super) fn layer_norm(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a = d.mul_add(d, *a);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in x.iter_mut().zip(gamma).zip(beta) {
        *v = ((*v - mean) * inv).mul_add(*g, *b);
    }
}

/// `x += bias`, elementwise.
#[inline]
pub(super) fn add(x: &mut [f32], bias: &[f32]) {
    for (v, b) in x.iter_mut().zip(bias) {
        *v += b;
    }
}

/// `e^x`, within 2 ulp over the range softmax uses (Cephes' `expf`: reduction by
/// `ln 2`, a degree-6 polynomial, the exponent set by bits). Inputs below -87 give
/// `e^-87` (1.6e-38) rather than a denormal or zero.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x.mul_add(LOG2E, 0.5)).floor();
    let r = n.mul_add(-C2, n.mul_add(-C1, x));
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 5.000_000_1e-1);
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n from the bits of n + 1.5·2^23, whose low mantissa bits hold n: integer work
    // only, so the loop vectorizes (a float-to-int cast did not).
    let shifted = (n + 12_582_912.0).to_bits();
    let scale = f32::from_bits(shifted.wrapping_sub(0x4B40_0000 - 127) << 23);
    y * scale
}

/// The error function, within a few ulp (the rational approximation Eigen and XLA use
/// for `erf`, clamped to ±4 where `erf` is ±1 in f32).
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = (-2.726_142_3e-10f32).mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_2e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = (-1.456_607_2e-5f32).mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_473_9e-2);
    x * p / q
}

/// The activations BERT-family configurations name (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// `gelu`: `x · Φ(x)` through `erf`, as PyTorch's default GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

/// `x = act(x + bias)`, elementwise.
#[inline]
pub(super) fn bias_activation(x: &mut [f32], bias: &[f32], activation: Activation) {
    match activation {
        Activation::Gelu => {
            const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
            for (v, b) in x.iter_mut().zip(bias) {
                let y = *v + b;
                *v = 0.5 * y * (1.0 + erf(y * FRAC_1_SQRT_2));
            }
        }
        Activation::GeluTanh => {
            // tanh(u) = 1 - 2 / (e^{2u} + 1)
            const C: f32 = 0.797_884_6; // sqrt(2 / pi)
            for (v, b) in x.iter_mut().zip(bias) {
                let y = *v + b;
                let u = C * y.mul_add(0.044_715 * y * y, y);
                let t = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                *v = 0.5 * y * (1.0 + t);
            }
        }
        Activation::Relu => {
            for (v, b) in x.iter_mut().zip(bias) {
                *v = (*v + b).max(0.0);
            }
        }
    }
}

/// Softmax of one row in place.
#[inline]
pub(super) fn softmax(x: &mut [f32]) {
    let m = max(x);
    // Fixed-width chunks: the compiler vectorizes each into one register's work.
    let mut chunks = x.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for v in chunk {
            *v = exp(*v - m);
        }
    }
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
    }
    let inv = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Abramowitz & Stegun 7.1.26 is too coarse to judge ours; integrate instead:
        // erf(x) = 2/sqrt(pi) ∫0^x e^{-t²} dt by Simpson's rule on 20000 intervals.
        let n = 20_000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn exp_and_erf_agree_with_the_exact_functions() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            let e = f64::from(x).exp();
            worst_exp = worst_exp.max((f64::from(exp(x)) - e).abs() / e);
            if i % 10 == 0 {
                let r = erf_f64(f64::from(x) / 4.0);
                worst_erf = worst_erf.max((f64::from(erf(x / 4.0)) - r).abs());
            }
        }
        assert!(worst_exp < 4e-7, "exp's relative error {worst_exp}");
        assert!(worst_erf < 4e-7, "erf's absolute error {worst_erf}");
    }

    #[test]
    fn softmax_and_layer_norm_match_their_definitions() {
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let reference: Vec<f64> = {
            let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax(&mut row);
        for (a, b) in row.iter().zip(&reference) {
            assert!((f64::from(*a) - b).abs() < 1e-6);
        }

        let mut row: Vec<f32> = (0..40).map(|i| i as f32 * 0.5 - 3.0).collect();
        let gamma = vec![2.0; 40];
        let beta = vec![1.0; 40];
        let mean = row.iter().sum::<f32>() / 40.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 40.0;
        let expected: Vec<f32> = row
            .iter()
            .map(|v| (v - mean) / (var + 1e-12).sqrt() * 2.0 + 1.0)
            .collect();
        layer_norm(&mut row, &gamma, &beta, 1e-12);
        for (a, b) in row.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn strided_products_match_a_plain_loop() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.1).collect();
        // b stored transposed (n × k): read through strides as k × n.
        let bt: Vec<f32> = (0..n * k).map(|i| 1.0 - i as f32 * 0.05).collect();
        let mut dst = vec![1.0f32; m * n];
        // SAFETY: the shapes lie inside the vectors.
        unsafe {
            gemm_strided(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                n as isize,
                true,
                View::dense(&a, k),
                View {
                    ptr: bt.as_ptr(),
                    row_stride: 1,
                    col_stride: k as isize,
                },
                0.5,
                1,
            );
        }
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|l| a[i * k + l] * bt[j * k + l]).sum();
                assert!((dst[i * n + j] - (1.0 + 0.5 * dot)).abs() < 1e-4);
            }
        }
    }
}

/// Writes rows of a 32-column register tile, `lo[r]` (columns 0–15) and `hi[r]` (16–31),
/// into `c` (rows `c_stride` f32 apart), `width ≤ 32` columns, added to what is there when
/// `accumulate`: the epilogue of the bf16 and int8 tiles.
///
/// # Safety
/// AVX-512F present; `c` holds `lo.len()` rows of `c_stride` f32 with `width` valid
/// columns each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_panel_rows(
    lo: &[std::arch::x86_64::__m512],
    hi: &[std::arch::x86_64::__m512],
    c: *mut f32,
    c_stride: usize,
    width: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mask_lo: __mmask16 = if width >= 16 { 0xffff } else { (1u16 << width) - 1 };
    let mask_hi: __mmask16 = if width >= 32 {
        0xffff
    } else if width <= 16 {
        0
    } else {
        (1u16 << (width - 16)) - 1
    };
    for (r, (&v0, &v1)) in lo.iter().zip(hi).enumerate() {
        // SAFETY: row r's `width` columns lie inside `c` (the caller's bounds); the masks
        // keep the loads and stores inside them.
        unsafe {
            let row = c.add(r * c_stride);
            let (mut v0, mut v1) = (v0, v1);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask_lo, row));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask_hi, row.add(16)));
            }
            _mm512_mask_storeu_ps(row, mask_lo, v0);
            _mm512_mask_storeu_ps(row.add(16), mask_hi, v1);
        }
    }
}
