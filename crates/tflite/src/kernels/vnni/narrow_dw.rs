//! DEPTHWISE_CONV_2D (channel multiplier 1) with few channels (1 to 16) on AVX-512 VNNI.
//!
//! The depthwise kernel in [`super`] computes 32 channels of one pixel per step: on 8 channels
//! three quarters of its lanes, loads and requantizations would be padding. Here the input is
//! padded to `cp` channels (4, 8 or 16) and one step computes `32 / cp` adjacent pixels of an
//! output row: with stride 1 their inputs at any tap are 32 contiguous bytes of the padded
//! input, so the step is the 32-channel kernel's own (`vpdpwssd` on two taps at a time, weights
//! packed by [`DwPacked`]) on "channels" that are `pixel · cp + channel`, with the weights,
//! constants and requantization repeated for each pixel. With stride 2 and 16 channels the two
//! pixels' 16 bytes are loaded separately. Other strides stay with the 32-channel kernel.
//!
//! The integers are the 32-channel kernel's (`bias − zp·Σw` per channel, the same
//! `requant16`); tests compare the kernel with the plain formula and with that kernel.

use super::{DwPacked, Geometry, Requant};

/// A depthwise convolution with at most 16 channels, packed for [`depthwise`].
#[derive(Clone, Debug)]
pub(crate) struct NarrowDw {
    /// Channels per pixel in the padded input: 4, 8 or 16.
    cp: usize,
    /// Pixels per step (`32 / cp`).
    per: usize,
    /// The weights over the 32 lanes `pixel · cp + channel` (zero past the real channels).
    packed: DwPacked,
    /// Requantization constants in the same lane order.
    rq: Requant,
}

impl NarrowDw {
    /// From `[kh · kw, c]` weights (TFLite's `[1, kh, kw, c]`), the int32 bias, TFLite's
    /// per-channel `(multiplier, shift)`, the output zero point and the activation range, for
    /// the depthwise convolution `geo` with multiplier 1; `None` when it has more than 16
    /// channels or a stride this kernel does not take.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        geo: &Geometry,
        w: &[i32],
        bias: &[i32],
        multiplier: &[i32],
        shift: &[i32],
        zero_point: i32,
        act: [i32; 2],
    ) -> Option<Self> {
        let c = geo.in_shape[3];
        if c == 0 || c > 16 || geo.out_shape[3] != c {
            return None;
        }
        let cp = if c <= 4 {
            4
        } else if c <= 8 {
            8
        } else {
            16
        };
        if geo.stride[1] != 1 && cp != 16 {
            return None;
        }
        let taps = geo.kernel[0] * geo.kernel[1];
        let lanes = |v: &[i32]| -> Vec<i32> {
            (0..32)
                .map(|l| v.get(l % cp).copied().filter(|_| l % cp < c).unwrap_or(0))
                .collect()
        };
        let wv: Vec<i32> = (0..taps)
            .flat_map(|t| lanes(&w[t * c..(t + 1) * c]))
            .collect();
        Some(Self {
            cp,
            per: 32 / cp,
            packed: DwPacked::new(&wv, taps, 32, &lanes(bias), geo.input_zp, 32),
            rq: Requant::new(&lanes(multiplier), &lanes(shift), zero_point, act),
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::depthwise;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NarrowDw;
    use crate::kernels::vnni::x86::{Rq16, dw_order, ld128, ld256, ld512, store32};
    use crate::kernels::vnni::{Geometry, Scratch, pad_input, tap_pairs};
    use std::arch::x86_64::*;

    /// Depthwise convolution with at most 16 channels, multiplier 1, into `out` (`[pixels, c]`
    /// int8).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW, VL and VNNI ([`crate::kernels::Cpu::avx512_vnni`]);
    /// `x` and `out` must have the geometry's sizes and `p` must be built by [`NarrowDw::new`] for it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) unsafe fn depthwise(g: &Geometry, p: &NarrowDw, x: &[i8], out: &mut [i8]) {
        // SAFETY: forwarded; copies for the common tap counts (3×3 → 5 pairs).
        unsafe {
            match (p.packed.pairs, g.stride[1]) {
                (5, 1) => run::<1>(g, p, x, out, 5),
                (5, _) => run::<2>(g, p, x, out, 5),
                (n, 1) => run::<1>(g, p, x, out, n),
                (n, _) => run::<2>(g, p, x, out, n),
            }
        }
    }

    /// `S`: 1 when the step's pixels are adjacent (stride 1), else 2 (16 channels: two loads).
    #[inline(always)]
    unsafe fn run<const S: usize>(
        g: &Geometry,
        p: &NarrowDw,
        x: &[i8],
        out: &mut [i8],
        pairs: usize,
    ) {
        let [nb, _, _, c] = g.in_shape;
        let [_, oh, ow, _] = g.out_shape;
        let [kh, kw] = g.kernel;
        let (s, d) = (g.stride, g.dilation);
        let (cp, per) = (p.cp, p.per);
        let hp = (oh - 1) * s[0] + (kh - 1) * d[0] + 1;
        let wp = (ow - 1) * s[1] + (kw - 1) * d[1] + 1;
        // The last step of a row reads up to `per` pixels past its first.
        let spare = (per * s[1] + 1) * cp + 64;
        let mut scratch = Scratch::bytes(nb * hp * wp * cp + spare);
        pad_input(g, x, cp, &mut scratch.0);
        let src = scratch.0.as_ptr() as *const i8;
        let taps = tap_pairs(g, pairs, wp, cp);
        let next = s[1] * cp;
        // SAFETY: every tap of every output pixel lies inside the padded input and `spare`
        // bytes follow it (the steps' pixels past the row's end read there; their outputs are
        // not stored); the stores write `min(per, ow − ox)` pixels of the row in `out`.
        unsafe {
            let load = |at: *const i8| -> __m512i {
                if S == 1 {
                    _mm512_cvtepi8_epi16(ld256(at))
                } else {
                    let lo = ld128(at);
                    let hi = ld128(at.wrapping_add(next));
                    _mm512_cvtepi8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1))
                }
            };
            let i0 = ld512(dw_order(0).as_ptr());
            let i1 = ld512(dw_order(16).as_ptr());
            let w = p.packed.w.as_ptr();
            let c0 = ld512(p.packed.corr.as_ptr());
            let c1 = ld512(p.packed.corr.as_ptr().wrapping_add(16));
            let (r0, r1) = (Rq16::new(&p.rq, 0), Rq16::new(&p.rq, 16));
            for b in 0..nb {
                for oy in 0..oh {
                    let row = src.wrapping_add((b * hp + oy * s[0]) * wp * cp);
                    let out_row = out.as_mut_ptr().wrapping_add((b * oh + oy) * ow * c);
                    for ox in (0..ow).step_by(per) {
                        // Wrapping arithmetic: no overflow checks in the pixel loop.
                        let base = row.wrapping_add(ox.wrapping_mul(next));
                        let mut lo = _mm512_setzero_si512();
                        let mut hi = _mm512_setzero_si512();
                        for (j, [t0, t1]) in taps.iter().enumerate().take(pairs) {
                            let a = load(base.wrapping_add(*t0));
                            let bb = load(base.wrapping_add(*t1));
                            let wl = ld512(w.wrapping_add(j * 64));
                            let wh = ld512(w.wrapping_add(j * 64 + 32));
                            lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(a, bb), wl);
                            hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(a, bb), wh);
                        }
                        let v0 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, i0, hi), c0);
                        let v1 = _mm512_add_epi32(_mm512_permutex2var_epi32(lo, i1, hi), c1);
                        let (q0, q1) = (r0.apply8(v0), r1.apply8(v1));
                        let n = per.min(ow - ox);
                        let dst = out_row.wrapping_add(ox.wrapping_mul(c));
                        if c == cp {
                            store32(dst, q0, q1, n * c);
                        } else {
                            let mut tmp = [0i8; 32];
                            store32(tmp.as_mut_ptr(), q0, q1, 32);
                            for j in 0..n {
                                std::ptr::copy_nonoverlapping(
                                    tmp.as_ptr().wrapping_add(j * cp),
                                    dst.wrapping_add(j * c),
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::fixed::mbqm;
    use crate::kernels::vnni::test_cases::{channels, draws, geometry};
    use proptest::prelude::*;

    /// A random depthwise convolution with at most 16 channels and its input.
    struct Case {
        geo: Geometry,
        w: Vec<i32>,
        bias: Vec<i32>,
        m: Vec<(i32, i32)>,
        zp: i32,
        act: [i32; 2],
        x: Vec<i8>,
    }

    impl std::fmt::Debug for Case {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let g = &self.geo;
            write!(
                f,
                "in {:?} out {:?} kernel {:?} stride {:?} dilation {:?} pad {:?}",
                g.in_shape, g.out_shape, g.kernel, g.stride, g.dilation, g.pad
            )
        }
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..12, 1usize..40, 1usize..17),
            (1usize..4, 1usize..4),
            (1usize..3, 1usize..3, 1usize..3),
            (any::<bool>(), any::<bool>()),
            prop::sample::select(vec![1e-2f64, 1e-3, 3e-5, 2.0]),
            any::<u64>(),
        )
            .prop_filter("kernel fits", |(s, k, (_, _, d), (same, _), ..)| {
                *same || ((k.0 - 1) * d < s.1 && (k.1 - 1) * d < s.2)
            })
            .prop_map(|(s, k, (sy, sx, d), (same, relu), scale, seed)| {
                let mut next = draws(seed);
                let [nb, ih, iw, c] = [s.0, s.1, s.2, s.3];
                let geo = geometry([nb, ih, iw, c], c, k, (sy, sx), d, same, &mut next);
                let w = (0..k.0 * k.1 * c).map(|_| next(-127, 127)).collect();
                let (bias, m, zp, act) = channels(c, scale, relu, &mut next);
                let x = (0..nb * ih * iw * c)
                    .map(|_| next(-128, 127) as i8)
                    .collect();
                Case {
                    geo,
                    w,
                    bias,
                    m,
                    zp,
                    act,
                    x,
                }
            })
    }

    /// TFLite's depthwise formula, plainly.
    fn plain(c: &Case) -> Vec<i8> {
        let g = &c.geo;
        let [nb, ih, iw, ch] = g.in_shape;
        let [_, oh, ow, _] = g.out_shape;
        let [kh, kw] = g.kernel;
        let mut y = Vec::new();
        for b in 0..nb {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..ch {
                        let mut acc = c.bias[o];
                        for fy in 0..kh {
                            for fx in 0..kw {
                                let iy = (oy * g.stride[0] + fy * g.dilation[0]) as isize
                                    - g.pad[0] as isize;
                                let ix = (ox * g.stride[1] + fx * g.dilation[1]) as isize
                                    - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= ih as isize || ix >= iw as isize {
                                    continue;
                                }
                                let v = c.x[((b * ih + iy as usize) * iw + ix as usize) * ch + o];
                                acc += c.w[(fy * kw + fx) * ch + o] * (v as i32 - g.input_zp);
                            }
                        }
                        let v = mbqm(acc, c.m[o].0, c.m[o].1) + c.zp;
                        y.push(v.clamp(c.act[0], c.act[1]) as i8);
                    }
                }
            }
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The narrow depthwise kernel (4-, 8- and 16-channel padding, ragged channel counts and
        /// rows, padding, strides, dilation, multipliers above 1) gives the plain formula's
        /// bytes, and the 32-channel kernel's; strides it does not take are refused.
        #[test]
        fn narrow_depthwise_equals_the_plain_formula_and_the_wide_kernel(c in case()) {
            prop_assume!(crate::kernels::cpu().avx512_vnni);
            let (mult, shift): (Vec<i32>, Vec<i32>) = c.m.iter().copied().unzip();
            let ch = c.geo.in_shape[3];
            let Some(p) = NarrowDw::new(&c.geo, &c.w, &c.bias, &mult, &shift, c.zp, c.act) else {
                prop_assert!(c.geo.stride[1] > 1 && ch <= 8);
                return Ok(());
            };
            let n: usize = c.geo.out_shape.iter().product();
            let mut got = vec![0i8; n];
            // SAFETY: the CPU has AVX-512 VNNI (checked above); sizes follow the geometry.
            unsafe { depthwise(&c.geo, &p, &c.x, &mut got) };
            prop_assert_eq!(&got, &plain(&c), "cp {}", p.cp);
            let taps = c.geo.kernel[0] * c.geo.kernel[1];
            let wide = DwPacked::new(&c.w, taps, ch, &c.bias, c.geo.input_zp, 32);
            let rq = Requant::new(&mult, &shift, c.zp, c.act);
            let mut other = vec![0i8; n];
            // SAFETY: as above.
            unsafe { crate::kernels::vnni::depthwise(&c.geo, &wide, &rq, &c.x, &mut other) };
            prop_assert_eq!(&got, &other);
        }
    }
}
