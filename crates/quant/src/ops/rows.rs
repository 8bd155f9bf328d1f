//! Per-row (per-output-channel) symmetric fake quantization of a weight, with its clipped
//! straight-through gradient, as one burn backend-extension op each way on `flex`.
//!
//! Composed from burn ops ([`crate::fake::fake_quant`]: expand, divide, round, add, clamp,
//! subtract, multiply, and the clipping's `max_pair` / `min_pair` with their masks), a
//! per-channel weight costs about a dozen passes each step, several of them strided. Here one pass forward and one backward.
//! Values are bit-identical to the composed ops (the per-element arithmetic of
//! `fake_quant_one`, zero point 0), gradients too: the gradient passes where `x` is neither
//! below its row's `low` nor above its `high` (NaN passes), as `max_pair` / `min_pair` decide.
//! Only `flex` has the kernel; [`fake_quant_rows_fused`] returns `None` elsewhere.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use collab_core::ops::extension::{contiguous_f32, on_flex, untracked, zeros_f32};

use crate::params::{clamp_bounds, fake_quant_one};

const OP: &str = "fake_quant_rows";

/// Per-row fake quantization as backend operations (see the module documentation).
#[backend_extension(Flex, Autodiff)]
pub trait FakeQuantRowsOps: Backend {
    /// `x` `[R, C]`, row `r` quantized to `[qmin, qmax]` with `scale[r]` (`[R]`, zero point 0)
    /// and dequantized; same shape.
    fn fake_quant_rows(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        qmin: i32,
        qmax: i32,
    ) -> FloatTensor<Self>;

    /// `grad` where `qmin·scale[r] ≤ x ≤ qmax·scale[r]` (or `x` is NaN), 0 elsewhere.
    fn fake_quant_rows_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        qmin: i32,
        qmax: i32,
    ) -> FloatTensor<Self>;
}

collab_core::widest! {
    /// One row forward.
    fn row_forward(d: &mut [f32], x: &[f32], scale: f32, qmin: i32, qmax: i32) -> () {
        for (d, x) in d.iter_mut().zip(x) {
            *d = fake_quant_one(*x, scale, 0, qmin, qmax);
        }
    }
}

collab_core::widest! {
    /// One row backward: the gradient where `low ≤ x ≤ high` or `x` is NaN.
    fn row_backward(d: &mut [f32], x: &[f32], g: &[f32], low: f32, high: f32) -> () {
        for ((d, x), g) in d.iter_mut().zip(x).zip(g) {
            *d = if *x < low || *x > high { 0.0 } else { *g };
        }
    }
}

fn dims2(t: &FlexTensor) -> [usize; 2] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[0], s[1]]
}

impl FakeQuantRowsOps for burn::backend::Flex {
    fn fake_quant_rows(x: FlexTensor, scale: FlexTensor, qmin: i32, qmax: i32) -> FlexTensor {
        let [_, cols] = dims2(&x);
        let (x, scale) = (contiguous_f32(x, OP), contiguous_f32(scale, OP));
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let ss = scale.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(dims2(&x));
        out.storage_mut::<f32>()
            .par_chunks_mut(cols.max(1))
            .zip(xs.par_chunks(cols.max(1)))
            .zip(ss.par_iter())
            .for_each(|((d, x), s)| row_forward(d, x, *s, qmin, qmax));
        out
    }

    fn fake_quant_rows_backward(
        x: FlexTensor,
        grad: FlexTensor,
        scale: FlexTensor,
        qmin: i32,
        qmax: i32,
    ) -> FlexTensor {
        let [_, cols] = dims2(&x);
        let (x, grad) = (contiguous_f32(x, OP), contiguous_f32(grad, OP));
        let scale = contiguous_f32(scale, OP);
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let ss = scale.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(dims2(&x));
        out.storage_mut::<f32>()
            .par_chunks_mut(cols.max(1))
            .zip(xs.par_chunks(cols.max(1)).zip(gs.par_chunks(cols.max(1))))
            .zip(ss.par_iter())
            .for_each(|((d, (x, g)), s)| {
                let (low, high) = clamp_bounds(*s, 0, qmin, qmax);
                row_backward(d, x, g, low, high)
            });
        out
    }
}

#[derive(Debug)]
struct RowsBackward;

impl<B: Backend + FakeQuantRowsOps> Backward<B, 1> for RowsBackward {
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, i32, i32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, scale, qmin, qmax) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::fake_quant_rows_backward(x, grad, scale, qmin, qmax)
        });
    }
}

impl<B: Backend + FakeQuantRowsOps, C: CheckpointStrategy> FakeQuantRowsOps for Autodiff<B, C> {
    fn fake_quant_rows(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        qmin: i32,
        qmax: i32,
    ) -> FloatTensor<Self> {
        // The scale is a constant here (computed from the detached weight).
        let guard = x.node();
        let (x, scale) = (x.into_primitive(), scale.into_primitive());
        match RowsBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fake_quant_rows(x.clone(), scale.clone(), qmin, qmax);
                prep.finish((x, scale, qmin, qmax), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fake_quant_rows(x, scale, qmin, qmax)),
        }
    }

    fn fake_quant_rows_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        qmin: i32,
        qmax: i32,
    ) -> FloatTensor<Self> {
        // Second derivatives are not needed for QAT.
        let guards = [x.node(), grad.node(), scale.node()];
        let out = B::fake_quant_rows_backward(
            x.into_primitive(),
            grad.into_primitive(),
            scale.into_primitive(),
            qmin,
            qmax,
        );
        untracked::<B, C, 3>(guards, out)
    }
}

/// `rows` `[R, C]` fake-quantized per row with `scale` `[R]` (zero point 0, `[qmin, qmax]`),
/// with the clipped straight-through gradient, in one fused op each way; the same values and
/// gradient as [`crate::fake::fake_quant`] with those parameters. `None` where the device has
/// no kernel.
pub fn fake_quant_rows_fused(
    rows: Tensor<2>,
    scale: Tensor<1>,
    qmin: i32,
    qmax: i32,
) -> Option<Tensor<2>> {
    on_flex(&rows.device(), || {
        Tensor::from_dispatch(<Dispatch as FakeQuantRowsOps>::fake_quant_rows(
            rows.into_dispatch(),
            scale.detach().into_dispatch(),
            qmin,
            qmax,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and the gradient equal the composed [`crate::fake::fake_quant`] bit for bit, on
    /// a transposed view too, with values exactly at the range's ends, ties of the rounding,
    /// and an all-zero row (scale 1).
    #[test]
    fn equals_composed_fake_quant() {
        let device = Device::flex().autodiff();
        device.seed(29);
        for transposed in [false, true] {
            let base = Tensor::<2>::random([9, 37], Distribution::Normal(0.0, 1.0), &device);
            let base = if transposed {
                base.reshape([37, 9]).transpose()
            } else {
                base
            };
            // Quarter steps: exact ties of x / scale and values exactly at ±max.
            let x = ((base * 8.0).round() / 8.0).detach();
            let zero_row = Tensor::<2>::zeros([1, 37], &device);
            let x = Tensor::cat(vec![x, zero_row], 0).require_grad();
            let max_abs = x.clone().detach().abs().max_dim(1);
            let scale = max_abs.clone().div_scalar(127.0);
            let scale = scale
                .clone()
                .mask_where(max_abs.lower_equal_elem(0.0), scale.ones_like());
            let ours = fake_quant_rows_fused(x.clone(), scale.clone().reshape([10]), -127, 127)
                .expect("flex");
            let theirs =
                crate::fake::fake_quant(x.clone(), scale.clone(), scale.zeros_like(), -127, 127);
            assert_eq!(ours.clone().into_data(), theirs.clone().into_data());
            let g = Tensor::<2>::random([10, 37], Distribution::Normal(0.0, 1.0), &device);
            let ga = (ours * g.clone()).sum().backward();
            let gb = (theirs * g).sum().backward();
            assert_eq!(
                x.grad(&ga).unwrap().into_data(),
                x.grad(&gb).unwrap().into_data()
            );
        }
    }
}
