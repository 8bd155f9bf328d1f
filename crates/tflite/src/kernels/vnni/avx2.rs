//! The same two kernels for x86-64 CPUs with AVX2 but without AVX-512 VNNI (most laptops before
//! 2019–2022): `vpmaddwd` on i16 (16 products per instruction) instead of `vpdpbusd`.
//!
//! - **CONV_2D**: the unfolded input (`x + 128`, as for the VNNI GEMM) is widened to i16, the
//!   weights are packed as i16 pairs `[k / 2][oc][2]`; tiles of 4 pixels × 16 channels keep 8
//!   accumulators. The per-channel constant is the VNNI GEMM's, `bias − (zp + 128)·Σw`.
//! - **DEPTHWISE_CONV_2D** (multiplier 1): blocks of 16 channels, two taps at a time, as the
//!   AVX-512 kernel does with `vpdpwssd`.
//! - **Requantization**: the AVX-512 formula on 8 lanes (`vpmuldq` for the 64-bit products; the
//!   shifts that take bits 31..62 need no 64-bit arithmetic shift, which AVX2 lacks).

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{conv, depthwise};

/// Weights packed for the AVX2 GEMM: `k = (fy, fx, i)` padded to a multiple of 4, output
/// channels padded to a multiple of 16, laid out `[k / 2][oc][2]` as i16.
#[derive(Clone, Debug)]
pub(crate) struct Packed16 {
    /// `k` rounded up to 4.
    pub(in crate::kernels::vnni) k4: usize,
    /// Output channels rounded up to 16.
    pub(in crate::kernels::vnni) oc16: usize,
    pub(in crate::kernels::vnni) w: Vec<i16>,
    /// `bias − (zp + 128)·Σw` per output channel, padded to a multiple of 32.
    pub(in crate::kernels::vnni) corr: Vec<i32>,
    /// Per block of 16 output channels, the pairs of `k` that hold a non-zero weight.
    active: Vec<Vec<u32>>,
}

impl Packed16 {
    /// From HWIO `i32` weights (`[kh, kw, ic, oc]`), the int32 bias and the input zero point.
    pub(crate) fn new(hwio: &[i32], k: usize, oc: usize, bias: &[i32], input_zp: i32) -> Self {
        let k4 = k.div_ceil(4) * 4;
        let oc16 = oc.div_ceil(16) * 16;
        let mut w = vec![0i16; k4 * oc16];
        let mut sums = vec![0i32; oc];
        for kk in 0..k {
            for o in 0..oc {
                let v = hwio[kk * oc + o];
                w[((kk / 2) * oc16 + o) * 2 + kk % 2] = v as i16;
                sums[o] = sums[o].wrapping_add(v);
            }
        }
        let mut corr: Vec<i32> = (0..oc)
            .map(|o| bias[o].wrapping_sub((input_zp.wrapping_add(128)).wrapping_mul(sums[o])))
            .collect();
        corr.resize(oc.div_ceil(32) * 32, 0);
        let active = (0..oc16 / 16)
            .map(|ob| {
                (0..k4 / 2)
                    .filter(|kp| {
                        let start = (kp * oc16 + ob * 16) * 2;
                        w[start..start + 32].iter().any(|v| *v != 0)
                    })
                    .map(|kp| kp as u32)
                    .collect()
            })
            .collect();
        Self {
            k4,
            oc16,
            w,
            corr,
            active,
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::Packed16;
    use crate::kernels::vnni::{
        DwPacked, Geometry, Requant, Scratch, gather, pad_input, tap_pairs,
    };
    use std::arch::x86_64::*;

    /// Pixels per GEMM tile: 4 rows × 16 channels = 8 accumulators.
    const ROWS: usize = 4;

    /// `clamp(MultiplyByQuantizedMultiplier(v) + zp)` of 8 channels starting at `at`, as i32 in
    /// −128..=127 (the AVX-512 `requant16`, on 8 lanes).
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn requant8(
        v: __m256i,
        rq: &Requant,
        at: usize,
    ) -> __m256i {
        // SAFETY: `at + 8` is within the constants (padded to 32 channels, `at` a multiple of 8
        // below the padded count), and the caller has AVX2.
        unsafe {
            let load = |v: &Vec<i32>| _mm256_loadu_si256(v.as_ptr().add(at) as *const __m256i);
            let x = _mm256_sllv_epi32(v, load(&rq.left));
            let round = _mm256_set1_epi64x(1 << 30);
            let even = _mm256_add_epi64(_mm256_mul_epi32(x, load(&rq.multiplier)), round);
            let odd = _mm256_add_epi64(
                _mm256_mul_epi32(_mm256_srli_epi64(x, 32), load(&rq.multiplier_odd)),
                round,
            );
            let high = _mm256_blend_epi32(
                _mm256_srli_epi64(even, 31),
                _mm256_slli_epi64(odd, 1),
                0b1010_1010,
            );
            let remainder = _mm256_and_si256(high, load(&rq.mask));
            let threshold = _mm256_add_epi32(load(&rq.half), _mm256_srli_epi32(high, 31));
            let shifted = _mm256_srav_epi32(high, load(&rq.right));
            // `cmpgt` is −1 where the remainder rounds up.
            let r = _mm256_sub_epi32(shifted, _mm256_cmpgt_epi32(remainder, threshold));
            let r = _mm256_add_epi32(r, _mm256_set1_epi32(rq.zero_point));
            let r = _mm256_max_epi32(r, _mm256_set1_epi32(rq.lo));
            _mm256_min_epi32(r, _mm256_set1_epi32(rq.hi))
        }
    }

    /// 16 int8 from two vectors of 8 i32 already in −128..=127, in order.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn pack16(a: __m256i, b: __m256i) -> __m128i {
        // SAFETY: register shuffles; the caller has AVX2.
        unsafe {
            // Per 128-bit lane: a0..3 b0..3 | a4..7 b4..7 → a0..3 a4..7 b0..3 b4..7.
            let p = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0b11_01_10_00);
            _mm_packs_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1))
        }
    }

    /// Store 16 int8 at `dst`, only the first `n` when `n < 16`.
    #[inline(always)]
    pub(in crate::kernels::vnni) unsafe fn store16(dst: *mut i8, v: __m128i, n: usize) {
        // SAFETY: the caller owns `min(n, 16)` bytes at `dst`; no others are written.
        unsafe {
            if n >= 16 {
                _mm_storeu_si128(dst as *mut __m128i, v);
            } else {
                let mut tmp = [0i8; 16];
                _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n);
            }
        }
    }

    /// One tile of `R` pixels × the 16 output channels at `ob`: accumulate, requantize, store the
    /// first `rows` pixels.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(
        p: &Packed16,
        rq: &Requant,
        col: &[i16],
        start: usize,
        rows: usize,
        ob: usize,
        oc: usize,
        out: &mut [i8],
    ) {
        // SAFETY: `col` holds at least `start + R` rows of `k4` values (the caller pads it), every
        // active pair `kp < k4 / 2`, `ob + 16 <= oc16`, and only `rows` rows × `min(16, oc − ob)`
        // channels of `out` are written.
        unsafe {
            let mut acc = [_mm256_setzero_si256(); 8];
            let cols = col.as_ptr().add(start * p.k4);
            let w = p.w.as_ptr().add(ob * 2);
            for &kp in &p.active[ob / 16] {
                let kp = kp as usize;
                let base = w.add(kp * p.oc16 * 2);
                let w0 = _mm256_loadu_si256(base as *const __m256i);
                let w1 = _mm256_loadu_si256(base.add(16) as *const __m256i);
                for r in 0..R {
                    let xb = _mm256_set1_epi32(std::ptr::read_unaligned(
                        cols.add(r * p.k4 + kp * 2) as *const i32,
                    ));
                    acc[2 * r] = _mm256_add_epi32(acc[2 * r], _mm256_madd_epi16(xb, w0));
                    acc[2 * r + 1] = _mm256_add_epi32(acc[2 * r + 1], _mm256_madd_epi16(xb, w1));
                }
            }
            let c0 = _mm256_loadu_si256(p.corr.as_ptr().add(ob) as *const __m256i);
            let c1 = _mm256_loadu_si256(p.corr.as_ptr().add(ob + 8) as *const __m256i);
            // A loop of constant trip count, so the accumulators stay in registers.
            for r in 0..R {
                if r < rows {
                    let lo = requant8(_mm256_add_epi32(acc[2 * r], c0), rq, ob);
                    let hi = requant8(_mm256_add_epi32(acc[2 * r + 1], c1), rq, ob + 8);
                    store16(
                        out.as_mut_ptr().add((start + r) * oc + ob),
                        pack16(lo, hi),
                        oc - ob,
                    );
                }
            }
        }
    }

    /// CONV_2D: unfold the input, widen it to i16, GEMM against the packed weights, requantize into
    /// `out` (`[pixels, oc]` int8).
    ///
    /// # Safety
    /// The CPU must support AVX2; `x` and `out` must have the geometry's sizes, `p` and `rq` must
    /// be built for this convolution.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn conv(g: &Geometry, p: &Packed16, rq: &Requant, x: &[i8], out: &mut [i8]) {
        let [nb, _, _, _] = g.in_shape;
        let [_, oh, ow, oc] = g.out_shape;
        let pixels = nb * oh * ow;
        let mut bytes = Scratch::bytes(p.k4);
        let mut words = Scratch::words((pixels + ROWS) * p.k4);
        let col = &mut words.0[..(pixels + ROWS) * p.k4];
        for (px, dst) in col.chunks_exact_mut(p.k4).take(pixels).enumerate() {
            let (b, rest) = (px / (oh * ow), px % (oh * ow));
            let row = &mut bytes.0[..p.k4];
            gather(g, x, b, rest / ow, rest % ow, row);
            for (d, s) in dst.iter_mut().zip(row.iter()) {
                *d = *s as i16;
            }
        }
        for ob in (0..p.oc16).step_by(16) {
            let mut start = 0;
            // SAFETY: as `tile` requires: `col` has `ROWS` spare rows (whatever they hold; their
            // results are not stored), `out` is `[pixels, oc]`.
            unsafe {
                while pixels - start >= ROWS {
                    tile::<ROWS>(p, rq, col, start, ROWS, ob, oc, out);
                    start += ROWS;
                }
                let rest = pixels - start;
                if rest > 2 {
                    tile::<ROWS>(p, rq, col, start, rest, ob, oc, out);
                } else if rest > 0 {
                    tile::<2>(p, rq, col, start, rest, ob, oc, out);
                }
            }
        }
    }

    /// Depthwise convolution, channel multiplier 1, into `out` (`[pixels, c]` int8).
    ///
    /// # Safety
    /// As [`conv`], with `p` built by [`DwPacked::new`] with width 16 for this convolution.
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn depthwise(
        g: &Geometry,
        p: &DwPacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
    ) {
        // SAFETY: forwarded.
        unsafe {
            match p.pairs {
                5 => depthwise_impl(g, p, rq, x, out, 5),
                2 => depthwise_impl(g, p, rq, x, out, 2),
                n => depthwise_impl(g, p, rq, x, out, n),
            }
        }
    }

    #[inline(always)]
    unsafe fn depthwise_impl(
        g: &Geometry,
        p: &DwPacked,
        rq: &Requant,
        x: &[i8],
        out: &mut [i8],
        pairs: usize,
    ) {
        let [nb, _, _, c] = g.in_shape;
        let [_, oh, ow, _] = g.out_shape;
        let s = g.stride;
        let cp = p.padded;
        let mut scratch = Scratch::bytes(0);
        let (padded, hp, wp) = pad_input(g, x, cp, &mut scratch.0);
        let offsets = tap_pairs(g, pairs, wp, cp);
        // SAFETY: every tap of every output pixel lies inside `padded`, each block reads 16
        // channels of `cp`, and `store16` writes `min(16, c − cb·16)` channels of the pixel's row.
        unsafe {
            let src = padded.as_ptr() as *const i8;
            for cb in 0..cp / 16 {
                let w = p.w.as_ptr().add(cb * pairs * 32);
                let c0 = _mm256_loadu_si256(p.corr.as_ptr().add(cb * 16) as *const __m256i);
                let c1 = _mm256_loadu_si256(p.corr.as_ptr().add(cb * 16 + 8) as *const __m256i);
                for b in 0..nb {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let base =
                                src.add(((b * hp + oy * s[0]) * wp + ox * s[1]) * cp + cb * 16);
                            let mut lo = _mm256_setzero_si256();
                            let mut hi = _mm256_setzero_si256();
                            for (j, [t0, t1]) in offsets.iter().enumerate().take(pairs) {
                                let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                    base.add(*t0) as *const __m128i
                                ));
                                let bb = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                    base.add(*t1) as *const __m128i
                                ));
                                let wl = _mm256_loadu_si256(w.add(j * 32) as *const __m256i);
                                let wh = _mm256_loadu_si256(w.add(j * 32 + 16) as *const __m256i);
                                lo = _mm256_add_epi32(
                                    lo,
                                    _mm256_madd_epi16(_mm256_unpacklo_epi16(a, bb), wl),
                                );
                                hi = _mm256_add_epi32(
                                    hi,
                                    _mm256_madd_epi16(_mm256_unpackhi_epi16(a, bb), wh),
                                );
                            }
                            // lo holds channels 0..4 and 8..12, hi 4..8 and 12..16.
                            let v0 = _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), c0);
                            let v1 = _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x31), c1);
                            let q =
                                pack16(requant8(v0, rq, cb * 16), requant8(v1, rq, cb * 16 + 8));
                            let px = (b * oh + oy) * ow + ox;
                            store16(out.as_mut_ptr().add(px * c + cb * 16), q, c - cb * 16);
                        }
                    }
                }
            }
        }
    }
}
