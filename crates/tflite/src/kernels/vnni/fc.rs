//! FULLY_CONNECTED on the convolution GEMM's packed weights: a matrix–vector product per batch
//! row, with `vpdpbusd` (AVX-512 VNNI) or `vpmaddwd` (AVX2).
//!
//! A fully-connected layer `[batches, depth] × [units, depth]ᵀ` is a 1×1 convolution with
//! `k = depth` and `oc = units`, so its weights are packed once by [`Packed::new`] /
//! [`Packed16::new`] (the input zero point folded into the per-unit constant
//! `bias − (zp + 128)·Σw`, as there). The convolution GEMM's tiles hold 8 pixels × 32 channels,
//! but a fully-connected layer usually has one row (batch 1): here a tile is one row × up to
//! 128 units (8 accumulator registers), so the chains of dependent `vpdpbusd` are 8 wide.
//!
//! The kernels write the exact int32 sums `bias + Σ w·(x − zp)` (wrapping as the portable
//! kernel) to `acc` (`[batches, stride]`); [`requantize`] turns a row of them into int8 with
//! TFLite's two-rounding `MultiplyByQuantizedMultiplier` in registers. LiteRT's reference
//! kernel rounds once (`fixed::mbqm_single`); its caller requantizes those sums itself.

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{gemv, gemv_avx2, requantize, requantize_avx2};

/// Row stride of the `acc` buffer the kernels fill: `units` rounded up to 32.
pub(crate) fn acc_stride(units: usize) -> usize {
    units.div_ceil(32) * 32
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::acc_stride;
    use crate::kernels::vnni::avx2::Packed16;
    use crate::kernels::vnni::x86::{Gemm, ld32, ld256, ld512};
    use crate::kernels::vnni::{Packed, Requant, Scratch};
    use std::arch::x86_64::*;

    /// Blocks of 32 units (VNNI) or 16 units (AVX2) per tile.
    const BLOCKS: usize = 4;

    /// One row (`xu`: `k4` unsigned inputs) × the `32·NB` units starting at `ob`, into `acc`.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn tile_vnni<const NB: usize>(
        p: &Packed,
        xu: &[u8],
        ob: usize,
        acc: &mut [i32],
    ) {
        // SAFETY: `xu` holds `k4` bytes, every weight read is below `k4 · oc32` (`ob + 32·NB ≤
        // oc32`), and `store_sums` writes what it documents.
        unsafe {
            let mut a = [[_mm512_setzero_si512(); 2]; NB];
            let w = p.w.as_ptr().wrapping_add(ob * 4);
            let x = xu.as_ptr();
            for kg in 0..p.k4 / 4 {
                let xb = _mm512_set1_epi32(ld32(x.wrapping_add(kg * 4)));
                let base = w.wrapping_add(kg * p.oc32 * 4);
                for (j, a) in a.iter_mut().enumerate() {
                    let w0 = ld512(base.wrapping_add(128 * j));
                    let w1 = ld512(base.wrapping_add(128 * j + 64));
                    a[0] = _mm512_dpbusd_epi32(a[0], xb, w0);
                    a[1] = _mm512_dpbusd_epi32(a[1], xb, w1);
                }
            }
            store_sums(&a, &p.corr, ob, acc);
        }
    }

    /// The end of every GEMV tile: `acc[at] = a + corr[at]` for the `32·NB` units at `ob`
    /// (`a[j][h]`: units `ob + 32j + 16h..` + 16).
    ///
    /// # Safety
    /// The caller has AVX-512 F; `corr` and `acc` hold `ob + 32·NB` values.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn store_sums<const NB: usize>(
        a: &[[__m512i; 2]; NB],
        corr: &[i32],
        ob: usize,
        acc: &mut [i32],
    ) {
        for (j, a) in a.iter().enumerate() {
            for (h, v) in a.iter().enumerate() {
                let at = ob + 32 * j + 16 * h;
                // SAFETY: as documented, `at + 16 ≤ ob + 32·NB`.
                unsafe {
                    let c = ld512(corr.as_ptr().wrapping_add(at));
                    _mm512_storeu_si512(
                        acc.as_mut_ptr().wrapping_add(at) as *mut __m512i,
                        _mm512_add_epi32(*v, c),
                    );
                }
            }
        }
    }

    /// FULLY_CONNECTED sums on any [`Gemm`] packing: per batch row, the inputs shifted to
    /// unsigned (padded with zeros to `depth()`), then the packing's row tiles over all units.
    ///
    /// # Safety
    /// As the packing's `gemv`: the CPU has its features, `p` is packed for `k = depth`, `x`
    /// holds `batches · depth` values and `acc` `batches · acc_stride(units)`.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn gemv_rows<P: Gemm>(
        p: &P,
        x: &[i8],
        batches: usize,
        depth: usize,
        acc: &mut [i32],
    ) {
        let (oc32, k) = (p.oc32(), p.depth());
        let stride = acc_stride(oc32);
        let mut scratch = Scratch::bytes(k);
        let xu = &mut scratch.0[..k];
        for b in 0..batches {
            crate::kernels::vnni::copy_bytes(
                &mut xu[..depth],
                &x[b * depth..(b + 1) * depth],
                0x80,
            );
            // The padded `k` meet zero weights: any value will do, but a defined one.
            xu[depth..].fill(0);
            let row = &mut acc[b * stride..(b + 1) * stride];
            let mut ob = 0;
            // SAFETY: as `tile_gemv` requires; `ob + 32·NB ≤ oc32 = stride`.
            unsafe {
                while oc32 - ob >= 32 * BLOCKS {
                    p.tile_gemv::<BLOCKS>(xu, ob, row);
                    ob += 32 * BLOCKS;
                }
                match (oc32 - ob) / 32 {
                    3 => p.tile_gemv::<3>(xu, ob, row),
                    2 => p.tile_gemv::<2>(xu, ob, row),
                    1 => p.tile_gemv::<1>(xu, ob, row),
                    _ => {}
                }
            }
        }
    }

    /// FULLY_CONNECTED sums with AVX-512 VNNI: `acc[b · stride + u] = bias[u] + Σ_d
    /// w[u, d]·(x[b, d] − zp)` for `x` `[batches, depth]` int8, `stride = acc_stride(units)`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI ([`crate::kernels::Cpu::avx512_vnni`]);
    /// `p` must be packed for `k = depth`, `x` must hold `batches · depth` values and `acc`
    /// `batches · stride`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn gemv(p: &Packed, x: &[i8], batches: usize, depth: usize, acc: &mut [i32]) {
        // SAFETY: forwarded.
        unsafe { gemv_rows(p, x, batches, depth, acc) }
    }

    /// One row (`xw`: `k4` inputs `x + 128` as i16) × the `16·NB` units at `ob`, into `acc`.
    #[inline(always)]
    unsafe fn tile_avx2<const NB: usize>(p: &Packed16, xw: &[i16], ob: usize, acc: &mut [i32]) {
        // SAFETY: `xw` holds `k4` values, every weight read is below `k4 · oc16` (`ob + 16·NB ≤
        // oc16`), the corrections are padded to a multiple of 32 ≥ `oc16`, and `acc` holds
        // `ob + 16·NB` values.
        unsafe {
            let mut a = [[_mm256_setzero_si256(); 2]; NB];
            let w = p.w.as_ptr().wrapping_add(ob * 2);
            let x = xw.as_ptr();
            for kp in 0..p.k4 / 2 {
                let xb = _mm256_set1_epi32(ld32(x.wrapping_add(kp * 2)));
                let base = w.wrapping_add(kp * p.oc16 * 2);
                for (j, a) in a.iter_mut().enumerate() {
                    let w0 = ld256(base.wrapping_add(32 * j));
                    let w1 = ld256(base.wrapping_add(32 * j + 16));
                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(xb, w0));
                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(xb, w1));
                }
            }
            for (j, a) in a.iter().enumerate() {
                for (h, v) in a.iter().enumerate() {
                    let at = ob + 16 * j + 8 * h;
                    let c = ld256(p.corr.as_ptr().wrapping_add(at));
                    _mm256_storeu_si256(
                        acc.as_mut_ptr().wrapping_add(at) as *mut __m256i,
                        _mm256_add_epi32(*v, c),
                    );
                }
            }
        }
    }

    /// [`gemv`] with AVX2 on [`Packed16`] weights.
    ///
    /// # Safety
    /// The CPU must support AVX2; otherwise as [`gemv`].
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn gemv_avx2(
        p: &Packed16,
        x: &[i8],
        batches: usize,
        depth: usize,
        acc: &mut [i32],
    ) {
        let stride = acc_stride(p.oc16);
        let mut scratch = Scratch::words(p.k4);
        let xw = &mut scratch.0[..p.k4];
        for b in 0..batches {
            for (d, s) in xw.iter_mut().zip(&x[b * depth..(b + 1) * depth]) {
                *d = *s as i16 + 128;
            }
            xw[depth..].fill(0);
            let row = &mut acc[b * stride..(b + 1) * stride];
            let mut ob = 0;
            // SAFETY: as `tile_avx2` requires; `ob + 16·NB ≤ oc16 ≤ stride`.
            unsafe {
                while p.oc16 - ob >= 16 * BLOCKS {
                    tile_avx2::<BLOCKS>(p, xw, ob, row);
                    ob += 16 * BLOCKS;
                }
                match (p.oc16 - ob) / 16 {
                    3 => tile_avx2::<3>(p, xw, ob, row),
                    2 => tile_avx2::<2>(p, xw, ob, row),
                    1 => tile_avx2::<1>(p, xw, ob, row),
                    _ => {}
                }
            }
        }
    }

    /// One row of int32 sums (`acc`, at least `units` rounded up to 16 values) to int8 `out`
    /// (`units` values): `clamp(MultiplyByQuantizedMultiplier(v) + zp)` per unit, AVX-512.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL; `rq` must hold at least `units` channels.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn requantize(rq: &Requant, acc: &[i32], out: &mut [i8]) {
        let units = out.len();
        assert!(acc.len() >= units.div_ceil(16) * 16);
        for at in (0..units).step_by(16) {
            // SAFETY: 16 sums at `at` are in `acc` (checked above), the constants are padded to
            // 32 channels, and only `min(16, units − at)` bytes of `out` are written.
            unsafe {
                let v = ld512(acc.as_ptr().wrapping_add(at));
                let q = crate::kernels::vnni::x86::requant16(v, rq, at);
                let n = (units - at).min(16);
                _mm_mask_storeu_epi8(
                    out.as_mut_ptr().wrapping_add(at),
                    ((1u32 << n) - 1) as u16,
                    q,
                );
            }
        }
    }

    /// [`requantize`] with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2; `rq` must hold at least `units` channels.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn requantize_avx2(rq: &Requant, acc: &[i32], out: &mut [i8]) {
        use crate::kernels::vnni::avx2::x86::{pack16, requant8, store16};
        let units = out.len();
        assert!(acc.len() >= units.div_ceil(16) * 16);
        for at in (0..units).step_by(16) {
            // SAFETY: as in `requantize`, on 2 × 8 lanes; `store16` writes `min(16, units − at)`.
            unsafe {
                let lo = ld256(acc.as_ptr().wrapping_add(at));
                let hi = ld256(acc.as_ptr().wrapping_add(at + 8));
                let q = pack16(requant8(lo, rq, at), requant8(hi, rq, at + 8));
                store16(out.as_mut_ptr().wrapping_add(at), q, units - at);
            }
        }
    }
}
