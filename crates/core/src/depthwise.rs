//! Depthwise 2-D convolution with a fast backward pass on `flex`, as a burn backend extension.
//!
//! burn computes a depthwise convolution's input gradient with a transposed convolution and its
//! weight gradient with one small convolution per channel; on DS-CNN-L shapes that backward is
//! 3–10× the forward, and its forward walks each channel's small plane (13 × 5 in DS-CNN-L).
//! Here all three run channels last (`[N, H, W, C]`): every inner loop is a multiply-add over
//! the `C` contiguous channels, vectorised whatever the plane size or stride, split over images
//! with rayon; the weight gradient is summed over the batch in a fixed order (deterministic).
//! Other devices never reach the op: [`depthwise_conv2d`] returns `None` for them and the caller
//! uses burn's `conv2d`.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::extension::{contiguous_f32, has_flex_kernels, untracked, wide, zeros_f32};

const OP: &str = "depthwise";

/// Geometry shared by the forward and both gradients: `[stride_h, stride_w, pad_top,
/// pad_bottom, pad_left, pad_right]`.
pub type Geometry = [usize; 6];

/// Depthwise convolution (groups = channels, one filter per channel, no bias, no dilation).
#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseOps: Backend {
    /// `x` `[N, C, H, W]` with `weight` `[C, 1, kh, kw]` → `[N, C, H_out, W_out]`.
    fn depthwise_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self>;

    /// The gradient of the input `x` (shape of `x`) given the output gradient `grad`.
    fn depthwise_backward_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self>;

    /// The gradient of `weight` (shape of `weight`) given the output gradient `grad`.
    fn depthwise_backward_weight(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self>;
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// `src` `[rows, cols]` → `dst` `[cols, rows]`: 8 × 8 blocks through AVX registers where the
/// CPU has AVX2, the plain loop for the ragged edges and elsewhere.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    let blocked = if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; the sizes were checked above.
        unsafe { transpose_avx2(src, rows, cols, dst) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let blocked = false;
    let (r8, c8) = if blocked { (r8, c8) } else { (0, 0) };
    // What the blocks left: the last columns of every row, the last rows of the rest.
    for r in 0..rows {
        let first = if r < r8 { c8 } else { 0 };
        for c in first..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// The full 8 × 8 blocks of [`transpose`].
///
/// # Safety
/// AVX2; `src` and `dst` hold `rows · cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_avx2(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    for r0 in (0..rows / 8 * 8).step_by(8) {
        for c0 in (0..cols / 8 * 8).step_by(8) {
            // SAFETY: rows r0..r0 + 8 and columns c0..c0 + 8 are inside both matrices.
            unsafe {
                let row = |i: usize| _mm256_loadu_ps(s.add((r0 + i) * cols + c0));
                let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                let u0 = _mm256_shuffle_ps(t0, t2, 0x44);
                let u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                let u2 = _mm256_shuffle_ps(t1, t3, 0x44);
                let u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                let u4 = _mm256_shuffle_ps(t4, t6, 0x44);
                let u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                let u6 = _mm256_shuffle_ps(t5, t7, 0x44);
                let u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                let out = [
                    _mm256_permute2f128_ps(u0, u4, 0x20),
                    _mm256_permute2f128_ps(u1, u5, 0x20),
                    _mm256_permute2f128_ps(u2, u6, 0x20),
                    _mm256_permute2f128_ps(u3, u7, 0x20),
                    _mm256_permute2f128_ps(u0, u4, 0x31),
                    _mm256_permute2f128_ps(u1, u5, 0x31),
                    _mm256_permute2f128_ps(u2, u6, 0x31),
                    _mm256_permute2f128_ps(u3, u7, 0x31),
                ];
                for (i, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(d.add((c0 + i) * rows + r0), v);
                }
            }
        }
    }
}

/// `[N, C, H, W]` → `[N, H, W, C]` (channels last), one rayon task per image.
fn to_channels_last(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let mut out = vec![0f32; n * c * hw];
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(dst, src)| transpose(src, c, hw, dst));
    out
}

/// `[N, H, W, C]` → `[N, C, H, W]` into `out`, one rayon task per image.
fn to_channels_first(x: &[f32], [_, c, h, w]: [usize; 4], out: &mut [f32]) {
    let hw = h * w;
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(dst, src)| transpose(src, hw, c, dst));
}

/// `[C, 1, kh, kw]` weights as `[kh·kw, C]`.
fn taps_last(weight: &[f32], c: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * taps];
    for ch in 0..c {
        for t in 0..taps {
            out[t * c + ch] = weight[ch * taps + t];
        }
    }
    out
}

/// `acc += k ⊙ x` (element-wise over channels).
#[inline(always)]
fn fma_into(acc: &mut [f32], k: &[f32], x: &[f32]) {
    for ((a, k), x) in acc.iter_mut().zip(k).zip(x) {
        *a += k * x;
    }
}

/// The output positions `o` of one axis with the input position each tap reads:
/// `(o, tap, o·stride + tap − pad)` for every in-bounds pair.
fn taps_of(out: usize, k: usize, stride: usize, pad: usize, size: usize) -> Vec<[usize; 3]> {
    let mut v = Vec::new();
    for o in 0..out {
        for t in 0..k {
            let i = (o * stride + t) as isize - pad as isize;
            if i >= 0 && (i as usize) < size {
                v.push([o, t, i as usize]);
            }
        }
    }
    v
}

/// Flex kernels: channels last, so every inner loop is an element-wise multiply-add over the
/// channels (`C` contiguous floats, vectorised under [`wide`]) whatever the plane size, stride
/// or padding. The layout changes cost one pass each way over the tensors.
impl DepthwiseOps for burn::backend::Flex {
    fn depthwise_forward(x: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
        let [sh, sw, pt, pb, pl, pr] = geometry;
        let [n, c, h, w] = dims4(&x);
        let [_, _, kh, kw] = dims4(&weight);
        let ho = (h + pt + pb - kh) / sh + 1;
        let wo = (w + pl + pr - kw) / sw + 1;
        let (x, weight) = (contiguous_f32(x, OP), contiguous_f32(weight, OP));
        let xt = to_channels_last(x.as_slice::<f32>().expect("contiguous"), [n, c, h, w]);
        let k = taps_last(weight.as_slice::<f32>().expect("contiguous"), c, kh * kw);
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let mut yt = vec![0f32; n * ho * wo * c];
        yt.par_chunks_mut(ho * wo * c)
            .zip(xt.par_chunks(h * w * c))
            .for_each(|(y, x)| {
                wide(|| {
                    for &[i, a, r] in &rows {
                        for &[j, b, q] in &cols {
                            let acc = &mut y[(i * wo + j) * c..][..c];
                            fma_into(acc, &k[(a * kw + b) * c..][..c], &x[(r * w + q) * c..][..c]);
                        }
                    }
                })
            });
        let mut out = zeros_f32([n, c, ho, wo]);
        to_channels_first(&yt, [n, c, ho, wo], out.storage_mut::<f32>());
        out
    }

    fn depthwise_backward_input(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        geometry: Geometry,
    ) -> FlexTensor {
        let [sh, sw, pt, _, pl, _] = geometry;
        let [n, c, h, w] = dims4(&x);
        let [_, _, kh, kw] = dims4(&weight);
        let [_, _, ho, wo] = dims4(&grad);
        let (weight, grad) = (contiguous_f32(weight, OP), contiguous_f32(grad, OP));
        let gt = to_channels_last(grad.as_slice::<f32>().expect("contiguous"), [n, c, ho, wo]);
        let k = taps_last(weight.as_slice::<f32>().expect("contiguous"), c, kh * kw);
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let mut dxt = vec![0f32; n * h * w * c];
        dxt.par_chunks_mut(h * w * c)
            .zip(gt.par_chunks(ho * wo * c))
            .for_each(|(dx, dy)| {
                wide(|| {
                    for &[i, a, r] in &rows {
                        for &[j, b, q] in &cols {
                            let acc = &mut dx[(r * w + q) * c..][..c];
                            fma_into(
                                acc,
                                &k[(a * kw + b) * c..][..c],
                                &dy[(i * wo + j) * c..][..c],
                            );
                        }
                    }
                })
            });
        let mut out = zeros_f32([n, c, h, w]);
        to_channels_first(&dxt, [n, c, h, w], out.storage_mut::<f32>());
        out
    }

    fn depthwise_backward_weight(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        geometry: Geometry,
    ) -> FlexTensor {
        let [sh, sw, pt, _, pl, _] = geometry;
        let [n, c, h, w] = dims4(&x);
        let [_, _, kh, kw] = dims4(&weight);
        let [_, _, ho, wo] = dims4(&grad);
        let (x, grad) = (contiguous_f32(x, OP), contiguous_f32(grad, OP));
        let xt = to_channels_last(x.as_slice::<f32>().expect("contiguous"), [n, c, h, w]);
        let gt = to_channels_last(grad.as_slice::<f32>().expect("contiguous"), [n, c, ho, wo]);
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let taps = kh * kw;
        // One `[kh·kw, C]` partial sum per image in f32, summed over the batch in f64 in image
        // order: the result does not depend on the thread count.
        let mut partial = vec![0f32; n * taps * c];
        partial
            .par_chunks_mut(taps * c)
            .zip(xt.par_chunks(h * w * c).zip(gt.par_chunks(ho * wo * c)))
            .for_each(|(dw, (x, dy))| {
                wide(|| {
                    for &[i, a, r] in &rows {
                        for &[j, b, q] in &cols {
                            let acc = &mut dw[(a * kw + b) * c..][..c];
                            fma_into(
                                acc,
                                &x[(r * w + q) * c..][..c],
                                &dy[(i * wo + j) * c..][..c],
                            );
                        }
                    }
                })
            });
        let mut sum = vec![0f64; taps * c];
        for image in partial.chunks_exact(taps * c) {
            for (s, v) in sum.iter_mut().zip(image) {
                *s += *v as f64;
            }
        }
        use burn::backend::TensorMetadata;
        let mut out = zeros_f32(weight.shape());
        let dst = out.storage_mut::<f32>();
        for ch in 0..c {
            for t in 0..taps {
                dst[ch * taps + t] = sum[t * c + ch] as f32;
            }
        }
        out
    }
}

#[derive(Debug)]
struct DepthwiseBackward;

impl<B: Backend + DepthwiseOps> Backward<B, 2> for DepthwiseBackward {
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, Geometry);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, weight, geometry) = ops.state;
        let (x2, w2) = (x.clone(), weight.clone());
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::depthwise_backward_input(x, weight, grad, geometry),
            |grad| B::depthwise_backward_weight(x2, w2, grad, geometry),
        );
    }
}

impl<B: Backend + DepthwiseOps, C: CheckpointStrategy> DepthwiseOps for Autodiff<B, C> {
    fn depthwise_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weight.node()];
        let (x, weight) = (x.into_primitive(), weight.into_primitive());
        match DepthwiseBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::depthwise_forward(x.clone(), weight.clone(), geometry);
                prep.finish((x, weight, geometry), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::depthwise_forward(x, weight, geometry)),
        }
    }

    fn depthwise_backward_input(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weight.node(), grad.node()];
        let out = B::depthwise_backward_input(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            geometry,
        );
        untracked::<B, C, 3>(guards, out)
    }

    fn depthwise_backward_weight(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weight.node(), grad.node()];
        let out = B::depthwise_backward_weight(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            geometry,
        );
        untracked::<B, C, 3>(guards, out)
    }
}

/// Depthwise convolution of `x` `[N, C, H, W]` with `weight` `[C, 1, kh, kw]`, `stride` and
/// `(begin, end)` zero `padding` per axis, giving `[N, C, H_out, W_out]`; `None` where the
/// device has no kernel ([`has_flex_kernels`]).
pub fn depthwise_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [(usize, usize); 2],
) -> Option<Tensor<4>> {
    if !has_flex_kernels(&x.device()) {
        return None;
    }
    let geometry = [
        stride[0],
        stride[1],
        padding[0].0,
        padding[0].1,
        padding[1].0,
        padding[1].1,
    ];
    Some(Tensor::from_dispatch(
        <Dispatch as DepthwiseOps>::depthwise_forward(
            x.into_dispatch(),
            weight.into_dispatch(),
            geometry,
        ),
    ))
}
