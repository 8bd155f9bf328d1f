//! CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV loops: the portable kernels (compiled for
//! AVX-512 and AVX2 too, [`super::multiversion`]) and the choice of the SIMD kernels of
//! [`super::vnni`] for a prepared convolution ([`Fast`]).

use super::{Tier, multiversion};
use crate::interp::Kernels;

/// TFLite's per-output-channel `(multiplier, shift)`.
#[derive(Clone, Debug)]
pub(crate) struct Requant {
    pub(crate) multiplier: Vec<i32>,
    pub(crate) shift: Vec<i32>,
}

/// A prepared convolution (CONV_2D, DEPTHWISE_CONV_2D or TRANSPOSE_CONV).
#[derive(Clone, Debug)]
pub(crate) struct ConvKernel {
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// `[n, h, w, c]` of the input and output.
    pub(crate) in_shape: [usize; 4],
    pub(crate) out_shape: [usize; 4],
    /// Filter values as `i32`, laid out `[kh, kw, in_c, out_c]` (CONV_2D) or `[kh, kw, out_c]`
    /// (depthwise), so the innermost loop runs over contiguous output channels;
    /// `[out, kh, kw, in]` as in the file for TRANSPOSE_CONV.
    pub(crate) filter: Vec<i32>,
    pub(crate) kernel: [usize; 2],
    pub(crate) stride: [usize; 2],
    pub(crate) dilation: [usize; 2],
    /// Padding before (top, left).
    pub(crate) pad: [usize; 2],
    pub(crate) bias: Vec<i32>,
    pub(crate) input_offset: i32,
    pub(crate) output_offset: i32,
    pub(crate) requant: Requant,
    pub(crate) act: [i32; 2],
    pub(crate) depthwise: bool,
    pub(crate) multiplier: usize,
    /// Weights and requantization constants for the SIMD kernels (CPUs that have them).
    pub(crate) fast: Option<Fast>,
}

/// A convolution prepared for the SIMD kernels.
#[derive(Clone, Debug)]
pub(crate) enum Fast {
    /// CONV_2D as an AVX-512 VNNI GEMM.
    Gemm(super::vnni::Packed, super::vnni::Requant),
    /// DEPTHWISE_CONV_2D with channel multiplier 1, AVX-512 VNNI.
    Depthwise(super::vnni::DwPacked, super::vnni::Requant),
    /// CONV_2D as an AVX2 GEMM.
    Avx2Gemm(super::vnni::avx2::Packed16, super::vnni::Requant),
    /// DEPTHWISE_CONV_2D with channel multiplier 1, AVX2.
    Avx2Depthwise(super::vnni::DwPacked, super::vnni::Requant),
    /// CONV_2D on N:M-sparse weights (at most 4 non-zeros in every run of 8 `k`), AVX-512
    /// VNNI + VBMI.
    Sparse(super::vnni::sparse::SparsePacked, super::vnni::Requant),
    /// CONV_2D with dense weights, AVX-512 VNNI, direct (16-channel blocks, no unfolding).
    Narrow(super::vnni::narrow::Narrow),
    /// DEPTHWISE_CONV_2D with at most 16 channels and multiplier 1, AVX-512 VNNI.
    NarrowDw(super::vnni::narrow_dw::NarrowDw),
}

/// The SIMD form of convolution `c` for `kernels` on this CPU, if any.
pub(crate) fn build_fast(c: &ConvKernel, kernels: Kernels) -> Option<Fast> {
    let tier = Tier::of(kernels);
    let vnni = tier == Tier::Vnni;
    if tier == Tier::Portable || (c.depthwise && c.multiplier != 1) {
        return None;
    }
    let requant = super::vnni::Requant::new(
        &c.requant.multiplier,
        &c.requant.shift,
        c.output_offset,
        c.act,
    );
    let taps = c.kernel[0] * c.kernel[1];
    let units = c.out_shape[3];
    let zp = -c.input_offset;
    if Tier::sparse(kernels) && !c.depthwise {
        let k = taps * c.in_shape[3];
        if let Some(p) = super::vnni::sparse::SparsePacked::new(&c.filter, k, units, &c.bias, zp) {
            return Some(Fast::Sparse(p, requant));
        }
    }
    // The direct kernel (no unfolding, 16-channel blocks) unless the weights have zero blocks
    // of 32 channels × 4 `k` for the GEMM to skip (block-pruned files).
    let ic = c.in_shape[3];
    let gemm = || super::vnni::Packed::new(&c.filter, taps * ic, units, &c.bias, zp);
    if vnni {
        let (geo, w, bias) = (geometry(c), &c.filter, &c.bias);
        let (m, shift, out_zp, act) = (
            &c.requant.multiplier,
            &c.requant.shift,
            c.output_offset,
            c.act,
        );
        if c.depthwise {
            let narrow =
                super::vnni::narrow_dw::NarrowDw::new(&geo, w, bias, m, shift, out_zp, act);
            if let Some(n) = narrow {
                return Some(Fast::NarrowDw(n));
            }
        } else if gemm().is_dense() {
            let narrow = super::vnni::narrow::Narrow::new(&geo, w, bias, m, shift, out_zp, act);
            if let Some(n) = narrow {
                return Some(Fast::Narrow(n));
            }
        }
    }
    Some(match (c.depthwise, vnni) {
        (false, true) => Fast::Gemm(gemm(), requant),
        (true, true) => Fast::Depthwise(
            super::vnni::DwPacked::new(&c.filter, taps, units, &c.bias, zp, 32),
            requant,
        ),
        (false, false) => Fast::Avx2Gemm(
            super::vnni::avx2::Packed16::new(&c.filter, taps * c.in_shape[3], units, &c.bias, zp),
            requant,
        ),
        (true, false) => Fast::Avx2Depthwise(
            super::vnni::DwPacked::new(&c.filter, taps, units, &c.bias, zp, 16),
            requant,
        ),
    })
}

impl ConvKernel {
    /// The kernel set it runs on: `"avx512-vnni"`, `"avx512-vnni-sparse"`, `"avx2"` or
    /// `"portable"`.
    pub(crate) fn kernel_name(&self) -> &'static str {
        match self.fast {
            Some(Fast::Gemm(..) | Fast::Depthwise(..) | Fast::Narrow(..) | Fast::NarrowDw(..)) => {
                "avx512-vnni"
            }
            Some(Fast::Avx2Gemm(..) | Fast::Avx2Depthwise(..)) => "avx2",
            Some(Fast::Sparse(..)) => "avx512-vnni-sparse",
            None => "portable",
        }
    }

    /// CONV_2D / DEPTHWISE_CONV_2D of `x` on the kernels [`build_fast`] chose.
    pub(crate) fn run(&self, x: &[i8]) -> Vec<i8> {
        match &self.fast {
            Some(f) => conv_vnni(self, f, x),
            None => conv(self, x),
        }
    }
}

/// The geometry the SIMD kernels read of convolution `c`.
fn geometry(c: &ConvKernel) -> super::vnni::Geometry {
    super::vnni::Geometry {
        in_shape: c.in_shape,
        out_shape: c.out_shape,
        kernel: c.kernel,
        stride: c.stride,
        dilation: c.dilation,
        pad: c.pad,
        input_zp: -c.input_offset,
    }
}

/// CONV_2D / DEPTHWISE_CONV_2D through the AVX-512 VNNI kernels (the same integers as
/// [`conv`]).
fn conv_vnni(c: &ConvKernel, f: &Fast, x: &[i8]) -> Vec<i8> {
    #[cfg(target_arch = "x86_64")]
    {
        let g = geometry(c);
        let mut out = vec![0i8; c.out_shape.iter().product()];
        // SAFETY: `build_fast` builds the VNNI forms only for `Tier::Vnni` (the probe found
        // AVX-512 F/BW/VL/VNNI), `Sparse` only where it also found VBMI, and the AVX2 forms
        // only for `Tier::Avx2`, for this kernel's geometry; `x` and `out` have its input and
        // output sizes.
        unsafe {
            match f {
                Fast::Gemm(p, rq) => super::vnni::conv(&g, p, rq, x, &mut out),
                Fast::Depthwise(p, rq) => super::vnni::depthwise(&g, p, rq, x, &mut out),
                Fast::Avx2Gemm(p, rq) => super::vnni::avx2::conv(&g, p, rq, x, &mut out),
                Fast::Avx2Depthwise(p, rq) => super::vnni::avx2::depthwise(&g, p, rq, x, &mut out),
                Fast::Sparse(p, rq) => super::vnni::sparse::conv(&g, p, rq, x, &mut out),
                Fast::Narrow(p) => super::vnni::narrow::conv(&g, p, x, &mut out),
                Fast::NarrowDw(p) => super::vnni::narrow_dw::depthwise(&g, p, x, &mut out),
            }
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = f;
        conv(c, x)
    }
}

multiversion! {
    /// CONV_2D / DEPTHWISE_CONV_2D: `acc = Σ f·(x + input_offset) + bias`, requantized per
    /// channel (the portable kernel).
    fn conv(c: &ConvKernel, x: &[i8]) -> Vec<i8> = conv_impl;
}

#[inline(always)]
fn conv_impl(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    let [nb, ih, iw, ic] = c.in_shape;
    let [_, oh, ow, oc] = c.out_shape;
    let [kh, kw] = c.kernel;
    let mut out = vec![0i8; nb * oh * ow * oc];
    let mut acc = vec![0i32; oc];
    let mut expanded = vec![0i32; oc];
    for b in 0..nb {
        for oy in 0..oh {
            let y0 = (oy * c.stride[0]) as isize - c.pad[0] as isize;
            for ox in 0..ow {
                let x0 = (ox * c.stride[1]) as isize - c.pad[1] as isize;
                acc.copy_from_slice(&c.bias);
                for fy in 0..kh {
                    let y = y0 + (fy * c.dilation[0]) as isize;
                    if y < 0 || y >= ih as isize {
                        continue;
                    }
                    for fx in 0..kw {
                        let xx = x0 + (fx * c.dilation[1]) as isize;
                        if xx < 0 || xx >= iw as isize {
                            continue;
                        }
                        let pixel = &x[((b * ih + y as usize) * iw + xx as usize) * ic..][..ic];
                        let tap = fy * kw + fx;
                        if c.depthwise {
                            let f = &c.filter[tap * oc..][..oc];
                            if c.multiplier == 1 {
                                for ((a, w), v) in acc.iter_mut().zip(f).zip(pixel) {
                                    *a = a.wrapping_add(w.wrapping_mul(*v as i32 + c.input_offset));
                                }
                            } else {
                                for (o, e) in expanded.iter_mut().enumerate() {
                                    *e = pixel[o / c.multiplier] as i32 + c.input_offset;
                                }
                                for ((a, w), v) in acc.iter_mut().zip(f).zip(&expanded) {
                                    *a = a.wrapping_add(w.wrapping_mul(*v));
                                }
                            }
                        } else {
                            let f = &c.filter[tap * ic * oc..][..ic * oc];
                            for (i, v) in pixel.iter().enumerate() {
                                let v = *v as i32 + c.input_offset;
                                if v == 0 {
                                    // A real zero (e.g. after ReLU) adds nothing.
                                    continue;
                                }
                                for (a, w) in acc.iter_mut().zip(&f[i * oc..][..oc]) {
                                    *a = a.wrapping_add(w.wrapping_mul(v));
                                }
                            }
                        }
                    }
                }
                let o = &mut out[((b * oh + oy) * ow + ox) * oc..][..oc];
                requantize_row_impl(&acc, c, o);
            }
        }
    }
    out
}

/// Branch-free `MultiplyByQuantizedMultiplier` (multipliers are ≥ 0, so the one saturating case
/// of the doubling high multiply, `i32::MIN · i32::MIN`, cannot occur) so the loop vectorises.
#[inline(always)]
fn requantize_row_impl(acc: &[i32], c: &ConvKernel, out: &mut [i8]) {
    let (m, sh) = (&c.requant.multiplier, &c.requant.shift);
    let (zp, lo, hi) = (c.output_offset, c.act[0], c.act[1]);
    for (((o, a), m), s) in out.iter_mut().zip(acc).zip(m).zip(sh) {
        let left = (*s).max(0);
        let right = (-*s).max(0);
        let x = a.wrapping_shl(left as u32) as i64;
        let ab = x * *m as i64;
        let nudge = if ab >= 0 {
            1i64 << 30
        } else {
            1 - (1i64 << 30)
        };
        let q = ab + nudge;
        // Division by 2^31 truncating toward zero.
        let high = ((q + ((q >> 63) & ((1i64 << 31) - 1))) >> 31) as i32;
        let mask = ((1i64 << right) - 1) as i32;
        let remainder = high & mask;
        let threshold = (mask >> 1) + (high >> 31 & 1);
        let v = (high >> right) + i32::from(remainder > threshold);
        *o = v.wrapping_add(zp).clamp(lo, hi) as i8;
    }
}

/// TRANSPOSE_CONV as LiteRT's and TFLite Micro's reference kernel computes it: every input
/// value `(x + input_offset)` scattered through the filter `[out, kh, kw, in]` into an int32
/// accumulator (outputs outside `[0, out)` dropped), then bias and the per-channel
/// requantization of CONV_2D.
pub(crate) fn transpose_conv(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    let [nb, ih, iw, ic] = c.in_shape;
    let [_, oh, ow, oc] = c.out_shape;
    let [kh, kw] = c.kernel;
    let mut acc = vec![0i32; nb * oh * ow * oc];
    for b in 0..nb {
        for y in 0..ih {
            for xx in 0..iw {
                let pixel = &x[((b * ih + y) * iw + xx) * ic..][..ic];
                for fy in 0..kh {
                    let oy = (y * c.stride[0] + fy) as isize - c.pad[0] as isize;
                    if oy < 0 || oy >= oh as isize {
                        continue;
                    }
                    for fx in 0..kw {
                        let ox = (xx * c.stride[1] + fx) as isize - c.pad[1] as isize;
                        if ox < 0 || ox >= ow as isize {
                            continue;
                        }
                        let row =
                            &mut acc[((b * oh + oy as usize) * ow + ox as usize) * oc..][..oc];
                        for (o, a) in row.iter_mut().enumerate() {
                            let f = &c.filter[((o * kh + fy) * kw + fx) * ic..][..ic];
                            let dot = f.iter().zip(pixel).fold(0i32, |s, (w, v)| {
                                s.wrapping_add(w.wrapping_mul(*v as i32 + c.input_offset))
                            });
                            *a = a.wrapping_add(dot);
                        }
                    }
                }
            }
        }
    }
    let mut out = vec![0i8; acc.len()];
    for (a, o) in acc.chunks_exact_mut(oc).zip(out.chunks_exact_mut(oc)) {
        for (v, bias) in a.iter_mut().zip(&c.bias) {
            *v = v.wrapping_add(*bias);
        }
        requantize_row_impl(a, c, o);
    }
    out
}
