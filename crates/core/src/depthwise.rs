//! Depthwise 2-D convolution with a fast backward pass on `flex`, as a burn backend extension.
//!
//! burn computes a depthwise convolution's input gradient with a transposed convolution and its
//! weight gradient with one small convolution per channel; on DS-CNN-L shapes that backward is
//! 3–10× the forward. Here the forward is burn's own (flex has a fast depthwise kernel) and the
//! two gradients are direct loops over each channel's plane, split over channels with rayon.
//! Other devices never reach the op: [`depthwise_conv2d`] returns `None` for them and the caller
//! uses burn's `conv2d`.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::extension::{contiguous_f32, has_flex_kernels, untracked, wide};

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

fn options(geometry: Geometry, channels: usize) -> ConvOptions<2> {
    let [sh, sw, t, b, l, r] = geometry;
    ConvOptions::new_with_padding([sh, sw], [(t, b), (l, r)], [1, 1], channels)
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// The outputs `o` in `0..out` whose tap `tap` reads inside the input
/// (`0 ≤ o·stride + tap − pad < size`).
#[inline(always)]
fn valid(tap: usize, pad: usize, stride: usize, size: usize, out: usize) -> std::ops::Range<usize> {
    let start = pad.saturating_sub(tap).div_ceil(stride);
    let end = if size + pad > tap {
        ((size - 1 + pad - tap) / stride + 1).min(out)
    } else {
        0
    };
    start..end.max(start)
}

/// `dst += a · src`.
#[inline(always)]
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += a * s;
    }
}

/// `Σ x·y` in eight lanes (fixed order: the same result every run).
#[inline(always)]
fn dot8(x: &[f32], y: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            lanes[l] += xs[l] * ys[l];
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in xr.iter().zip(yr) {
        sum += x * y;
    }
    sum
}

impl DepthwiseOps for burn::backend::Flex {
    fn depthwise_forward(x: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
        let channels = dims4(&x)[1];
        <Self as burn::backend::ops::ModuleOps<Self>>::conv2d(
            x,
            weight,
            None,
            options(geometry, channels),
        )
    }

    fn depthwise_backward_input(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        geometry: Geometry,
    ) -> FlexTensor {
        let [sh, sw, pt, _, pl, _] = geometry;
        let [_, c, h, w] = dims4(&x);
        let [_, _, kh, kw] = dims4(&weight);
        let [_, _, ho, wo] = dims4(&grad);
        let (weight, grad) = (contiguous_f32(weight, OP), contiguous_f32(grad, OP));
        let wt = weight.as_slice::<f32>().expect("contiguous");
        let gs = grad.as_slice::<f32>().expect("contiguous");
        use burn::backend::TensorMetadata;
        let mut out = FlexTensor::zeros(x.shape(), DType::F32);
        out.storage_mut::<f32>()
            .par_chunks_mut(h * w)
            .zip(gs.par_chunks(ho * wo))
            .enumerate()
            .for_each(|(plane, (dx, dy))| {
                let k = &wt[(plane % c) * kh * kw..][..kh * kw];
                let mut body = || {
                    for a in 0..kh {
                        let rows = valid(a, pt, sh, h, ho);
                        for b in 0..kw {
                            let cols = valid(b, pl, sw, w, wo);
                            let kv = k[a * kw + b];
                            for i in rows.clone() {
                                let row = i * sh + a - pt;
                                let src = &dy[i * wo..][..wo];
                                let dst = &mut dx[row * w..][..w];
                                if sw == 1 {
                                    let (j0, j1) = (cols.start, cols.end);
                                    axpy(&mut dst[j0 + b - pl..j1 + b - pl], kv, &src[j0..j1]);
                                } else {
                                    for j in cols.clone() {
                                        dst[j * sw + b - pl] += kv * src[j];
                                    }
                                }
                            }
                        }
                    }
                };
                // AVX2 for the contiguous rows of stride 1; strided rows ran slower under it.
                if sw == 1 { wide(body) } else { body() }
            });
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
        let xs = x.as_slice::<f32>().expect("contiguous");
        let gs = grad.as_slice::<f32>().expect("contiguous");
        use burn::backend::TensorMetadata;
        let mut out = FlexTensor::zeros(weight.shape(), DType::F32);
        out.storage_mut::<f32>()
            .par_chunks_mut(kh * kw)
            .enumerate()
            .for_each(|(ch, dw)| {
                // Sum in f64 over the batch: the order is fixed, so the result is deterministic.
                let mut acc = vec![0f64; kh * kw];
                for b_ in 0..n {
                    let plane = b_ * c + ch;
                    let xp = &xs[plane * h * w..][..h * w];
                    let dy = &gs[plane * ho * wo..][..ho * wo];
                    let mut body = || {
                        for a in 0..kh {
                            let rows = valid(a, pt, sh, h, ho);
                            for b in 0..kw {
                                let cols = valid(b, pl, sw, w, wo);
                                // One plane's dot product in f32 (eight fixed lanes, so it
                                // vectorizes and stays deterministic), accumulated over the batch
                                // in f64.
                                let mut dot = 0f32;
                                for i in rows.clone() {
                                    let row = i * sh + a - pt;
                                    let src = &xp[row * w..][..w];
                                    let g = &dy[i * wo..][..wo];
                                    if sw == 1 {
                                        let (j0, j1) = (cols.start, cols.end);
                                        dot += dot8(&src[j0 + b - pl..j1 + b - pl], &g[j0..j1]);
                                    } else {
                                        for j in cols.clone() {
                                            dot += src[j * sw + b - pl] * g[j];
                                        }
                                    }
                                }
                                acc[a * kw + b] += dot as f64;
                            }
                        }
                    };
                    if sw == 1 { wide(body) } else { body() }
                }
                for (d, a) in dw.iter_mut().zip(acc) {
                    *d = a as f32;
                }
            });
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
