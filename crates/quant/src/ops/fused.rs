//! Fused per-tensor fake quantization with its straight-through gradient, as one burn backend
//! extension op.
//!
//! Composed from burn ops, an activation's fake quantization costs about ten passes over the
//! activation (host copy out, quantize, copy in, then clamp, subtract and add through autodiff,
//! and the clamp's masks in the backward pass). On `flex` this op does one pass forward
//! (quantize–dequantize) and one backward (the gradient where `low ≤ x ≤ high`, 0 outside), with
//! rayon. Values are bit-identical to [`QuantParams::fake_quant_slice`], gradients to burn's
//! `clamp` (the gradient passes where `x` is neither below `low` nor above `high`, NaN included).
//!
//! With `relu`, the op fake-quantizes `relu(x)` in the same pass (a quantizer whose layer has a
//! fused ReLU, as TFLite fuses it): values bit-identical to quantizing burn's `relu`, gradients to
//! `relu`'s backward (the gradient passes where `x > 0` or `x` is NaN) times the clamp's. That
//! saves the ReLU's own pass each way and its activation-sized buffers.
//!
//! Only `flex` (with or without autodiff) has the kernel; [`fake_quant_fused`] returns `None` on
//! other devices and the caller composes burn ops instead.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use collab_core::ops::extension::{on_flex, untracked, zeros_f32};
use collab_core::ops::layout::{in_order, restore_order, storage_order};

use crate::QuantParams;
use crate::params::{PARALLEL_CHUNK, clamp_bounds, fake_quant_one};

const OP: &str = "fake_quant_ste";

/// Fake quantization as a backend operation (see the module documentation).
#[backend_extension(Flex, Autodiff)]
pub trait FakeQuantOps: Backend {
    /// `x` (`relu(x)` with `relu`) quantized to `[qmin, qmax]` with `scale` and `zero_point`
    /// and dequantized; same shape.
    fn fake_quant_ste(
        x: FloatTensor<Self>,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `grad` where `low ≤ x ≤ high` (or `x` is NaN), 0 elsewhere; with `relu` also 0 where
    /// `x ≤ 0`. The shape of `x`.
    fn fake_quant_ste_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        low: f32,
        high: f32,
        relu: bool,
    ) -> FloatTensor<Self>;
}

collab_core::widest! {
    /// One task's forward: `q = [scale, zero point, qmin, qmax]`.
    fn forward_chunk(d: &mut [f32], s: &[f32], q: [f32; 4], relu: bool) -> () {
        let [scale, zero_point, qmin, qmax] = q;
        let (zero_point, qmin, qmax) = (zero_point as i32, qmin as i32, qmax as i32);
        for (d, s) in d.iter_mut().zip(s) {
            // burn's relu on flex: NaN propagates, all else not above 0 becomes 0.
            let s = if relu && !(s.is_nan() || *s > 0.0) { 0.0 } else { *s };
            *d = fake_quant_one(s, scale, zero_point, qmin, qmax);
        }
    }
}

collab_core::widest! {
    /// One task's backward.
    fn backward_chunk(d: &mut [f32], x: &[f32], g: &[f32], low: f32, high: f32, relu: bool) -> () {
        for ((d, x), g) in d.iter_mut().zip(x).zip(g) {
            // Where burn's clamp masks: strictly below low or above high; where its
            // relu_backward masks: not above 0 and not NaN (relu(x) = x there).
            let relu_masks = relu && !(x.is_nan() || *x > 0.0);
            *d = if *x < low || *x > high || relu_masks { 0.0 } else { *g };
        }
    }
}

impl FakeQuantOps for burn::backend::Flex {
    fn fake_quant_ste(
        x: FlexTensor,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
    ) -> FlexTensor {
        use burn::backend::TensorMetadata;
        // Element-wise: computed in the buffer's order (channels last stays channels last).
        let (x, stored_last) = storage_order(x, OP);
        let mut out = zeros_f32(x.shape());
        let src = x.as_slice::<f32>().expect("contiguous f32");
        let dst = out.storage_mut::<f32>();
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(src.par_chunks(PARALLEL_CHUNK))
            .for_each(|(d, s)| {
                forward_chunk(
                    d,
                    s,
                    [scale, zero_point as f32, qmin as f32, qmax as f32],
                    relu,
                )
            });
        restore_order(out, stored_last)
    }

    fn fake_quant_ste_backward(
        x: FlexTensor,
        grad: FlexTensor,
        low: f32,
        high: f32,
        relu: bool,
    ) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let (x, stored_last) = storage_order(x, OP);
        let grad = in_order(grad, stored_last, OP);
        let mut out = zeros_f32(x.shape());
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let dst = out.storage_mut::<f32>();
        dst.par_chunks_mut(PARALLEL_CHUNK)
            .zip(
                xs.par_chunks(PARALLEL_CHUNK)
                    .zip(gs.par_chunks(PARALLEL_CHUNK)),
            )
            .for_each(|(d, (x, g))| backward_chunk(d, x, g, low, high, relu));
        restore_order(out, stored_last)
    }
}

#[derive(Debug)]
struct FakeQuantBackward;

impl<B: Backend + FakeQuantOps> Backward<B, 1> for FakeQuantBackward {
    type State = (B::FloatTensorPrimitive, f32, f32, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, low, high, relu) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::fake_quant_ste_backward(x, grad, low, high, relu)
        });
    }
}

impl<B: Backend + FakeQuantOps, C: CheckpointStrategy> FakeQuantOps for Autodiff<B, C> {
    fn fake_quant_ste(
        x: FloatTensor<Self>,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        relu: bool,
    ) -> FloatTensor<Self> {
        let (low, high) = clamp_bounds(scale, zero_point, qmin, qmax);
        let guard = x.node();
        let x = x.into_primitive();
        match FakeQuantBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fake_quant_ste(x.clone(), scale, zero_point, qmin, qmax, relu);
                prep.finish((x, low, high, relu), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fake_quant_ste(x, scale, zero_point, qmin, qmax, relu))
            }
        }
    }

    fn fake_quant_ste_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        low: f32,
        high: f32,
        relu: bool,
    ) -> FloatTensor<Self> {
        // A gradient of a gradient is not needed for QAT: computed, and recorded as an op
        // that passes nothing back.
        let guards = [x.node(), grad.node()];
        let out =
            B::fake_quant_ste_backward(x.into_primitive(), grad.into_primitive(), low, high, relu);
        untracked::<B, C, 2>(guards, out)
    }
}

/// `x` fake-quantized with the per-tensor `params`, with the clipped straight-through gradient,
/// in one fused op; `None` where the device has no kernel (see [`on_flex`]) or the
/// parameters are per channel.
///
/// # Shapes
/// Any; the output has the input's shape.
pub fn fake_quant_fused<const D: usize>(x: Tensor<D>, params: &QuantParams) -> Option<Tensor<D>> {
    fused(x, params, false)
}

/// `relu(x)` fake-quantized as [`fake_quant_fused`] does, in the same single pass each way:
/// the same values and gradients as `fake_quant_fused(relu(x), params)`; `None` where that
/// returns `None`.
///
/// # Shapes
/// Any; the output has the input's shape.
pub fn fake_quant_relu_fused<const D: usize>(
    x: Tensor<D>,
    params: &QuantParams,
) -> Option<Tensor<D>> {
    fused(x, params, true)
}

fn fused<const D: usize>(x: Tensor<D>, params: &QuantParams, relu: bool) -> Option<Tensor<D>> {
    if params.scale.len() != 1 {
        return None;
    }
    on_flex(&x.device(), || {
        Tensor::from_dispatch(<Dispatch as FakeQuantOps>::fake_quant_ste(
            x.into_dispatch(),
            params.scale[0],
            params.zero_point[0],
            params.qmin,
            params.qmax,
            relu,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData};
    use proptest::prelude::*;

    fn composed<const D: usize>(x: Tensor<D>, p: &QuantParams) -> Tensor<D> {
        // The burn-op formulation the fused op replaces: host values, clamp STE.
        let values = crate::fake::host_values(&x);
        crate::fake::quantize_host_values(x, values, p)
    }

    /// Fused and composed: the same bits forward, the same gradient backward; likewise the
    /// ReLU-fused op against burn's `relu` followed by the composed op.
    fn check(values: Vec<f32>, min: f32, max: f32) {
        let device = Device::flex().autodiff();
        let p = QuantParams::asymmetric(min, max).unwrap();
        let n = values.len();
        let x = Tensor::<1>::from_data(TensorData::new(values, [n]), &device).require_grad();
        let g = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let same = |a: Tensor<1>, b: Tensor<1>| {
            assert_eq!(
                collab_core::host::to_vec_f32(a.clone()),
                collab_core::host::to_vec_f32(b.clone())
            );
            let ga = x.grad(&(a * g.clone()).sum().backward()).unwrap();
            let gb = x.grad(&(b * g.clone()).sum().backward()).unwrap();
            assert_eq!(ga.into_data(), gb.into_data());
        };
        same(
            fake_quant_fused(x.clone(), &p).expect("flex has the kernel"),
            composed(x.clone(), &p),
        );
        same(
            fake_quant_relu_fused(x.clone(), &p).expect("flex has the kernel"),
            composed(burn::tensor::activation::relu(x.clone()), &p),
        );
    }

    #[test]
    fn boundaries_ties_and_saturation_match_the_composed_op() {
        let p = QuantParams::asymmetric(-1.0, 3.0).unwrap();
        let (low, high) = clamp_bounds(p.scale[0], p.zero_point[0], p.qmin, p.qmax);
        let s = p.scale[0];
        check(
            vec![
                0.0,
                -0.0,
                low,
                high,
                low - 1e-6,
                high + 1e-6,
                -10.0,
                10.0,
                2.5 * s,
                -2.5 * s,
                0.5 * s,
                1e30,
                -1e30,
            ],
            -1.0,
            3.0,
        );
        // A ReLU output's range starts at 0: negative inputs land exactly on the zero point.
        check(vec![-1.0, -0.0, 0.0, 1e-9, 0.5, 2.0, 9.0], 0.0, 2.0);
    }

    #[test]
    fn without_autodiff_it_is_the_host_fake_quant_and_per_channel_is_declined() {
        let device = Device::flex();
        let p = QuantParams::asymmetric(-2.0, 2.0).unwrap();
        let x = Tensor::<2>::random([7, 300], Distribution::Normal(0.0, 2.0), &device);
        let mut want = collab_core::host::to_vec_f32(x.clone());
        p.fake_quant_slice(&mut want, 0);
        let got = collab_core::host::to_vec_f32(fake_quant_fused(x.clone(), &p).unwrap());
        assert_eq!(got, want);
        let per_channel = QuantParams::symmetric(&[1.0, 2.0], true);
        assert!(fake_quant_fused(x, &per_channel).is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_tensors_match_the_composed_op(
            values in proptest::collection::vec(-50.0f32..50.0, 1..3000),
            min in -20.0f32..0.0,
            width in 0.01f32..40.0,
            relu_range in proptest::bool::ANY,
        ) {
            let min = if relu_range { 0.0 } else { min };
            check(values, min, min + width);
        }
    }
}
