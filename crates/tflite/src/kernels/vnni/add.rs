//! Same-shape int8 ADD with AVX-512 (16 lanes) or AVX2 (8 lanes).
//!
//! Every element is add.cc's `clamp(MBQM(MBQM((x − zx)·2^20, mx) + MBQM((y − zy)·2^20, my),
//! mo) + zo)`, with TFLite's two-rounding `MultiplyByQuantizedMultiplier` for all three: the
//! convolutions' register requantization ([`Requant`] with one multiplier repeated over the
//! lanes), so the integers are those of `fixed::mbqm` (tests compare with the portable kernel).
//! The inputs' two requantizations use an unbounded clamp and no zero point.

use super::Requant;

/// The three requantizations of one ADD, each one `(multiplier, shift)` repeated over 32 lanes.
#[derive(Clone, Debug)]
pub(crate) struct AddConsts {
    a: Requant,
    b: Requant,
    out: Requant,
    /// Minus the inputs' zero points.
    offsets: [i32; 2],
}

impl AddConsts {
    /// From add.cc's constants (`multipliers` ≥ 0 with shifts in −31..=30, as
    /// `quantize_multiplier` returns them), the output zero point and the activation range.
    pub(crate) fn new(
        offsets: [i32; 2],
        multipliers: [(i32, i32); 2],
        output: (i32, i32),
        zero_point: i32,
        act: [i32; 2],
    ) -> Self {
        let rq =
            |(m, s): (i32, i32), zp: i32, act: [i32; 2]| Requant::new(&[m; 32], &[s; 32], zp, act);
        let unbounded = [i32::MIN, i32::MAX];
        Self {
            a: rq(multipliers[0], 0, unbounded),
            b: rq(multipliers[1], 0, unbounded),
            out: rq(output, zero_point, act),
            offsets,
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{add_avx2, add_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::AddConsts;
    use crate::kernels::vnni::avx2::x86::{pack16, requant8, store16};
    use crate::kernels::vnni::x86::{ld128, requant16_i32};
    use std::arch::x86_64::*;

    /// `out[i] = ADD(a[i], b[i])` for `i < out.len()` (`a` and `b` at least as long), 16 at a
    /// time; the last block uses masked loads and stores.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn add_avx512(c: &AddConsts, a: &[i8], b: &[i8], out: &mut [i8]) {
        let n = out.len().min(a.len()).min(b.len());
        let oa = _mm512_set1_epi32(c.offsets[0]);
        let ob = _mm512_set1_epi32(c.offsets[1]);
        let mut i = 0;
        while i < n {
            let mask = ((1u32 << (n - i).min(16)) - 1) as u16;
            // SAFETY: the masked loads and the store touch only bytes below `n` in each slice;
            // the requantization constants hold 32 lanes; the caller has AVX-512 F/BW/VL.
            unsafe {
                let x =
                    _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, a.as_ptr().wrapping_add(i)));
                let y =
                    _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, b.as_ptr().wrapping_add(i)));
                let x = _mm512_slli_epi32(_mm512_add_epi32(x, oa), 20);
                let y = _mm512_slli_epi32(_mm512_add_epi32(y, ob), 20);
                let s = _mm512_add_epi32(requant16_i32(x, &c.a, 0), requant16_i32(y, &c.b, 0));
                let r = _mm512_cvtepi32_epi8(requant16_i32(s, &c.out, 0));
                _mm_mask_storeu_epi8(out.as_mut_ptr().wrapping_add(i), mask, r);
            }
            i += 16;
        }
    }

    /// [`add_avx512`] on AVX2: 16 elements a time as two halves of 8 lanes.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn add_avx2(c: &AddConsts, a: &[i8], b: &[i8], out: &mut [i8]) {
        let n = out.len().min(a.len()).min(b.len());
        let mut i = 0;
        while i < n {
            let k = (n - i).min(16);
            // SAFETY: full blocks read 16 bytes below `n`; the last one is copied to a
            // buffer first; `store16` writes `k` bytes; the caller has AVX2.
            unsafe {
                let load = |s: &[i8]| {
                    if k == 16 {
                        ld128(s.as_ptr().wrapping_add(i))
                    } else {
                        let mut tmp = [0i8; 16];
                        tmp[..k].copy_from_slice(&s[i..n]);
                        ld128(tmp.as_ptr())
                    }
                };
                let (x, y) = (load(a), load(b));
                let lo = lanes8(c, _mm256_cvtepi8_epi32(x), _mm256_cvtepi8_epi32(y));
                let hi = lanes8(
                    c,
                    _mm256_cvtepi8_epi32(_mm_srli_si128(x, 8)),
                    _mm256_cvtepi8_epi32(_mm_srli_si128(y, 8)),
                );
                store16(out.as_mut_ptr().wrapping_add(i), pack16(lo, hi), k);
            }
            i += 16;
        }
    }

    /// ADD of 8 lanes of sign-extended inputs: the outputs as i32 in the activation range.
    #[inline(always)]
    unsafe fn lanes8(c: &AddConsts, x: __m256i, y: __m256i) -> __m256i {
        // SAFETY: register arithmetic; the constants hold 32 lanes; the caller has AVX2.
        unsafe {
            let x = _mm256_slli_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(c.offsets[0])), 20);
            let y = _mm256_slli_epi32(_mm256_add_epi32(y, _mm256_set1_epi32(c.offsets[1])), 20);
            let s = _mm256_add_epi32(requant8(x, &c.a, 0), requant8(y, &c.b, 0));
            requant8(s, &c.out, 0)
        }
    }
}
