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

use super::extension::{contiguous_f32, dims4, on_flex, untracked, zeros_f32};
use super::layout::{channels_last_buffer, from_channels_last};
use crate::widest;

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

/// Where one operand of [`accumulate`] takes its `C` values for a pair of a row triple and a
/// column triple of [`taps_of`]: entry `part` of both (0 the output position, 1 the tap, 2 the
/// input position), the row's times `width` (that grid's row length) plus the column's.
#[derive(Clone, Copy)]
struct Operand {
    part: usize,
    width: usize,
}

impl Operand {
    /// The first of the operand's `c` values for rows triple `r` and column triple `q`.
    #[inline(always)]
    fn at(self, r: &[usize; 3], q: &[usize; 3], c: usize) -> usize {
        (r[self.part] * self.width + q[self.part]) * c
    }
}

widest! {
    /// `acc += a ⊙ b` over the `c` channels, for every row triple × column triple (see
    /// [`taps_of`]), each operand at its [`Operand`] position: the forward (into the output,
    /// tap × input), the input gradient (into the input, tap × output gradient) and the weight
    /// gradient (into the tap, input × output gradient) are this one loop.
    #[allow(clippy::too_many_arguments)]
    fn accumulate(
        rows: &[[usize; 3]],
        cols: &[[usize; 3]],
        c: usize,
        acc: &mut [f32],
        at_acc: Operand,
        a: &[f32],
        at_a: Operand,
        b: &[f32],
        at_b: Operand,
    ) -> () {
        for r in rows {
            for q in cols {
                let acc = &mut acc[at_acc.at(r, q, c)..][..c];
                let a = &a[at_a.at(r, q, c)..][..c];
                let b = &b[at_b.at(r, q, c)..][..c];
                for ((s, a), b) in acc.iter_mut().zip(a).zip(b) {
                    *s += a * b;
                }
            }
        }
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

/// The [`Operand`] positions of the output (rows of `wo`), the tap (rows of `kw`) and the
/// input (rows of `w`).
fn positions(wo: usize, kw: usize, w: usize) -> (Operand, Operand, Operand) {
    let at = |part, width| Operand { part, width };
    (at(0, wo), at(1, kw), at(2, w))
}

/// Flex kernels: channels last, so every inner loop is an element-wise multiply-add over the
/// channels (`C` contiguous floats, vectorised by [`accumulate`]) whatever the plane size, stride
/// or padding. Inputs stored channels last ([`super::layout::is_channels_last`]) are read in
/// place, others transposed once; the output and the input gradient are returned stored
/// channels last, so the next channels-last kernel reads them without a copy.
impl DepthwiseOps for burn::backend::Flex {
    fn depthwise_forward(x: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
        let [sh, sw, pt, pb, pl, pr] = geometry;
        let [n, c, h, w] = dims4(&x);
        let [_, _, kh, kw] = dims4(&weight);
        let ho = (h + pt + pb - kh) / sh + 1;
        let wo = (w + pl + pr - kw) / sw + 1;
        let weight = contiguous_f32(weight, OP);
        let xb = channels_last_buffer(x, OP);
        let xt = xb.as_slice::<f32>().expect("contiguous");
        let k = taps_last(weight.as_slice::<f32>().expect("contiguous"), c, kh * kw);
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let (out, tap, input) = positions(wo, kw, w);
        let mut yt = vec![0f32; n * ho * wo * c];
        yt.par_chunks_mut(ho * wo * c)
            .zip(xt.par_chunks(h * w * c))
            .for_each(|(y, x)| accumulate(&rows, &cols, c, y, out, &k, tap, x, input));
        from_channels_last(yt, [n, c, ho, wo])
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
        let weight = contiguous_f32(weight, OP);
        let gb = channels_last_buffer(grad, OP);
        let gt = gb.as_slice::<f32>().expect("contiguous");
        let k = taps_last(weight.as_slice::<f32>().expect("contiguous"), c, kh * kw);
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let (out, tap, input) = positions(wo, kw, w);
        let mut dxt = vec![0f32; n * h * w * c];
        dxt.par_chunks_mut(h * w * c)
            .zip(gt.par_chunks(ho * wo * c))
            .for_each(|(dx, dy)| accumulate(&rows, &cols, c, dx, input, &k, tap, dy, out));
        from_channels_last(dxt, [n, c, h, w])
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
        let (xb, gb) = (channels_last_buffer(x, OP), channels_last_buffer(grad, OP));
        let xt = xb.as_slice::<f32>().expect("contiguous");
        let gt = gb.as_slice::<f32>().expect("contiguous");
        let (rows, cols) = (taps_of(ho, kh, sh, pt, h), taps_of(wo, kw, sw, pl, w));
        let taps = kh * kw;
        // One `[kh·kw, C]` partial sum per image in f32, summed over the batch in f64 in image
        // order: the result does not depend on the thread count.
        let (out, tap, input) = positions(wo, kw, w);
        let mut partial = vec![0f32; n * taps * c];
        partial
            .par_chunks_mut(taps * c)
            .zip(xt.par_chunks(h * w * c).zip(gt.par_chunks(ho * wo * c)))
            .for_each(|(dw, (x, dy))| accumulate(&rows, &cols, c, dw, tap, x, input, dy, out));
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
/// device has no kernel ([`on_flex`]).
pub fn depthwise_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [(usize, usize); 2],
) -> Option<Tensor<4>> {
    let geometry = [
        stride[0],
        stride[1],
        padding[0].0,
        padding[0].1,
        padding[1].0,
        padding[1].1,
    ];
    on_flex(&x.device(), || {
        Tensor::from_dispatch(<Dispatch as DepthwiseOps>::depthwise_forward(
            x.into_dispatch(),
            weight.into_dispatch(),
            geometry,
        ))
    })
}
