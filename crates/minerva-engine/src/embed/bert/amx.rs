//! bf16 matrix products on AMX (Sapphire Rapids and later): `tdpbf16ps` multiplies a
//! 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32 tile, 8192 products per
//! instruction, where AVX512-BF16's `vdpbf16ps` does 32. The bf16 path (`bf16.rs`) runs
//! its products here when the CPU has AMX-BF16, Linux grants the tile state and the inner
//! dimension is a multiple of 32 (every BERT's is), in blocks of 32 rows (a last partial
//! block reads rows past the batch and drops their results), and on its AVX512-BF16
//! tiles otherwise: both accumulate the same bf16 products in f32.
//!
//! The packed weights need no other layout: a panel's pair-interleaved rows are AMX's
//! "VNNI" layout for B, 16 columns per 64-byte row. A block of 32 rows × 32 columns keeps
//! four accumulator tiles (tmm0–3), two activation tiles (tmm4–5) and two weight tiles
//! (tmm6–7). The intrinsics are not stable in Rust, so the instructions are written as
//! inline assembly; the compiler never touches the tile registers, so they keep their
//! values from one block of assembly to the next on the same thread.

use std::arch::asm;
use std::sync::OnceLock;

/// Rows per AMX block (two tiles of 16).
pub(super) const ROWS: usize = 32;
/// bf16 values of the inner dimension per tile.
pub(super) const DEPTH: usize = 32;

/// Whether the CPU has AMX-TILE and AMX-BF16 and Linux granted this process the tile
/// state (asked once; `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
pub(crate) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 || !super::bf16::available() {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes the process's permitted
        // XSAVE features; it reads and writes no memory of ours.
        let status = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) };
        if status != 0 {
            tracing::info!("AMX present but the kernel refused the tile state; bf16 stays on AVX512-BF16");
        }
        status == 0
    })
}

/// The palette-1 tile configuration: all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut bytes = [0u8; 64];
        bytes[0] = 1; // palette
        for tile in 0..8 {
            bytes[16 + 2 * tile..16 + 2 * tile + 2].copy_from_slice(&64u16.to_le_bytes());
            bytes[48 + tile] = 16;
        }
        Self(bytes)
    }
}

/// The tile registers configured for [`block`] on this thread, released on drop.
pub(super) struct Tiles(());

impl Tiles {
    /// Configures the tiles.
    ///
    /// # Safety
    /// [`available`] returned true.
    pub(super) unsafe fn configure() -> Self {
        let config = TileConfig::new();
        // SAFETY: the configuration is a valid palette-1 one; the CPU has AMX and the
        // process the tile state (the caller's guarantee).
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured (see `configure`).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `c[rows × 32] (+)= a[32 × depth·32] · panel`: 32 rows of `a` (bf16, `a_stride` values
/// apart) against one 32-column panel of packed weights with `depth · 16` row pairs,
/// into `width ≤ 32` columns of the first `rows ≤ 32` rows of `c` (`c_stride` f32 apart).
///
/// # Safety
/// The tiles are configured on this thread (`_tiles`); `a` points at 32 rows of at least `depth · 32` values,
/// `panel` at `depth · 16 · 64` values, `c` at `rows` rows of at least `width` f32.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    _tiles: &Tiles,
    a: *const u16,
    a_stride: usize,
    panel: *const u16,
    depth: usize,
    c: *mut f32,
    c_stride: usize,
    rows: usize,
    width: usize,
    accumulate: bool,
) {
    let a_bytes = a_stride * 2;
    // A weight tile's rows (pairs) are a panel row apart: 64 values, 128 bytes.
    let b_bytes: usize = 128;
    let mut out = [[0.0f32; 16 * 16]; 4];
    // SAFETY: the caller's bounds; every tile load reads 16 rows of 64 bytes inside them,
    // every store writes 16 rows of 64 bytes inside `out`.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        for step in 0..depth {
            let a0 = a.add(step * DEPTH);
            let a1 = a0.add(16 * a_stride);
            // Pairs 16·step.., columns 0–15 then 16–31 of the panel.
            let b0 = panel.add(step * 16 * 64);
            let b1 = b0.add(32);
            asm!(
                "tileloadd tmm4, [{a0} + {sa}]",
                "tileloadd tmm5, [{a1} + {sa}]",
                "tileloadd tmm6, [{b0} + {sb}]",
                "tileloadd tmm7, [{b1} + {sb}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                sa = in(reg) a_bytes,
                sb = in(reg) b_bytes,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{o0} + {s}], tmm0",
            "tilestored [{o1} + {s}], tmm1",
            "tilestored [{o2} + {s}], tmm2",
            "tilestored [{o3} + {s}], tmm3",
            o0 = in(reg) out[0].as_mut_ptr(),
            o1 = in(reg) out[1].as_mut_ptr(),
            o2 = in(reg) out[2].as_mut_ptr(),
            o3 = in(reg) out[3].as_mut_ptr(),
            s = in(reg) 64usize,
            options(nostack),
        );
        // Tile t holds rows 16·(t / 2).., columns 16·(t % 2)...
        for (t, tile) in out.iter().enumerate() {
            let (row0, col0) = (16 * (t / 2), 16 * (t % 2));
            let cols = width.saturating_sub(col0).min(16);
            for r in 0..16.min(rows.saturating_sub(row0)) {
                let dst = c.add((row0 + r) * c_stride + col0);
                for (j, &value) in tile[r * 16..r * 16 + cols].iter().enumerate() {
                    let slot = dst.add(j);
                    *slot = if accumulate { *slot + value } else { value };
                }
            }
        }
    }
}
