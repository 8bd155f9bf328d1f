//! [`Activation`] (ReLU, ReLU6), computed on `flex` as one burn backend-extension op each way,
//! and [`FusedActivation`] (none, ReLU, ReLU6), the activation fused into a layer's output.
//!
//! burn's `clamp(0, 6)` (ReLU6) records a `clamp_min` and a `clamp_max` whose backward passes
//! each fill the gradient through a byte mask element by element (`mask_fill`, a branch per
//! element), a large share of a MobileNet training step. Here the forward is one
//! vectorized pass and the backward one pass that keeps the gradient where burn's would (ReLU:
//! `x > 0` or NaN; ReLU6: `0 ≤ x ≤ 6` or NaN, burn's clamp masks only values strictly outside),
//! split over rayon tasks of `CHUNK` elements. Values and gradients are the same as burn's ops
//! (tests). Other devices never reach the op: [`activation`] returns `None` for them.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ops::cpu::wide;
use crate::ops::extension::{has_flex_kernels, untracked, zeros_f32};
use crate::ops::layout::{in_order, restore_order, storage_order};

/// An activation a model applies after a layer (the ones the fused kernels compute); serialised
/// as `"relu"`, `"relu6"`. A layer's *fused* activation, which may be none, is a
/// [`FusedActivation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Apply the activation.
    ///
    /// # Shapes
    /// Any; the output has the input's shape.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        // One fused op each way on flex (`crate::activation`): the same values and gradients
        // as the burn ops below, which other devices run.
        if let Some(y) = activation(x.clone(), self) {
            return y;
        }
        match self {
            Self::Relu => burn::tensor::activation::relu(x),
            Self::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// The activation fused into a layer's output, as TFLite's `fused_activation_function`: none,
/// ReLU or ReLU6. The one fused-activation type of the workspace: the QAT wrapper's output
/// quantizer (`collab_quant::FusedActivation`), the graph spec (`collab_models::graph::FusedActivation`)
/// and export all use it. Serialised as `"none"`, `"relu"`, `"relu6"`.
///
/// It is [`Activation`] plus `None`; the fused kernels take the [`Option<Activation>`] form
/// ([`activation`](Self::activation)).
///
/// ```
/// use collab_core::Activation;
/// use collab_core::FusedActivation;
///
/// assert_eq!(FusedActivation::default(), FusedActivation::None);
/// assert_eq!(FusedActivation::Relu6.activation(), Some(Activation::Relu6));
/// assert_eq!(FusedActivation::from(Activation::Relu), FusedActivation::Relu);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusedActivation {
    /// No activation.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl FusedActivation {
    /// Apply the activation (none: `x` unchanged; else [`Activation::apply`], one fused op each
    /// way on flex).
    ///
    /// # Shapes
    /// Any; the output has the input's shape.
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self.activation() {
            Some(a) => a.apply(x),
            None => x,
        }
    }

    /// The activation, `None` for none (the form the fused kernels take).
    pub fn activation(self) -> Option<Activation> {
        match self {
            Self::None => None,
            Self::Relu => Some(Activation::Relu),
            Self::Relu6 => Some(Activation::Relu6),
        }
    }

    /// From the kernels' form (`None`: no activation).
    pub fn from_activation(activation: Option<Activation>) -> Self {
        match activation {
            None => Self::None,
            Some(Activation::Relu) => Self::Relu,
            Some(Activation::Relu6) => Self::Relu6,
        }
    }
}

impl From<Activation> for FusedActivation {
    fn from(activation: Activation) -> Self {
        Self::from_activation(Some(activation))
    }
}

impl From<Option<Activation>> for FusedActivation {
    fn from(activation: Option<Activation>) -> Self {
        Self::from_activation(activation)
    }
}

const OP: &str = "activation";

/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

/// ReLU (`six = false`) and ReLU6 (`six = true`) as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait ActivationOps: Backend {
    /// `relu(x)` or `clamp(x, 0, 6)`; same shape.
    fn fused_relu_forward(x: FloatTensor<Self>, six: bool) -> FloatTensor<Self>;

    /// The input gradient given the output gradient `grad`; the shape of `x`.
    fn fused_relu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        six: bool,
    ) -> FloatTensor<Self>;
}

/// `relu(x)` or `clamp(x, 0, 6)` of one value, as burn computes it on flex.
#[inline(always)]
pub(crate) fn forward_one(x: f32, six: bool) -> f32 {
    if six {
        // What burn's clamp computes on flex (NaN stays NaN).
        x.clamp(0.0, 6.0)
    } else if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// The gradient `g` where burn's activation backward keeps it (input `x`), else 0.
#[inline(always)]
#[allow(clippy::manual_range_contains)] // NaN keeps its gradient, as in burn's clamp
pub(crate) fn backward_one(x: f32, g: f32, six: bool) -> f32 {
    let keep = if six {
        !(x < 0.0 || x > 6.0)
    } else {
        x > 0.0 || x.is_nan()
    };
    if keep { g } else { 0.0 }
}

impl ActivationOps for burn::backend::Flex {
    fn fused_relu_forward(x: FlexTensor, six: bool) -> FlexTensor {
        use burn::backend::TensorMetadata;
        // Element-wise: a tensor stored channels last is computed in its own buffer order,
        // and so is its output (no copy to channels first).
        let (x, stored_last) = storage_order(x, OP);
        let mut out = zeros_f32(x.shape());
        let src = x.as_slice::<f32>().expect("contiguous f32");
        out.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                wide(|| {
                    for (d, s) in d.iter_mut().zip(s) {
                        *d = forward_one(*s, six);
                    }
                })
            });
        restore_order(out, stored_last)
    }

    fn fused_relu_backward(x: FlexTensor, grad: FlexTensor, six: bool) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let (x, stored_last) = storage_order(x, OP);
        let grad = in_order(grad, stored_last, OP);
        let mut out = zeros_f32(x.shape());
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        out.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
            .for_each(|(d, (x, g))| {
                wide(|| {
                    for ((d, x), g) in d.iter_mut().zip(x).zip(g) {
                        *d = backward_one(*x, *g, six);
                    }
                })
            });
        restore_order(out, stored_last)
    }
}

#[derive(Debug)]
struct ReluBackward;

impl<B: Backend + ActivationOps> Backward<B, 1> for ReluBackward {
    type State = (B::FloatTensorPrimitive, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, six) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::fused_relu_backward(x, grad, six)
        });
    }
}

impl<B: Backend + ActivationOps, C: CheckpointStrategy> ActivationOps for Autodiff<B, C> {
    fn fused_relu_forward(x: FloatTensor<Self>, six: bool) -> FloatTensor<Self> {
        let guard = x.node();
        let x = x.into_primitive();
        match ReluBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fused_relu_forward(x.clone(), six);
                prep.finish((x, six), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_relu_forward(x, six)),
        }
    }

    fn fused_relu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        six: bool,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), grad.node()];
        let out = B::fused_relu_backward(x.into_primitive(), grad.into_primitive(), six);
        untracked::<B, C, 2>(guards, out)
    }
}

/// `activation(x)` as one fused op each way; `None` where the device has no kernel
/// ([`has_flex_kernels`]).
///
/// # Shapes
/// Any; the output has the input's shape.
pub fn activation<const D: usize>(x: Tensor<D>, activation: Activation) -> Option<Tensor<D>> {
    if !has_flex_kernels(&x.device()) {
        return None;
    }
    let six = activation == Activation::Relu6;
    Some(Tensor::from_dispatch(
        <Dispatch as ActivationOps>::fused_relu_forward(x.into_dispatch(), six),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and gradients of the fused op equal burn's `relu` / `clamp(0, 6)`, including
    /// values exactly at 0 and 6.
    #[test]
    fn fused_equals_burn_ops() {
        let device = Device::flex().autodiff();
        device.seed(3);
        for act in [Activation::Relu, Activation::Relu6] {
            let base =
                Tensor::<4>::random([3, 5, 70, 300], Distribution::Normal(1.0, 4.0), &device)
                    .round();
            let upstream =
                Tensor::<4>::random([3, 5, 70, 300], Distribution::Normal(0.0, 1.0), &device);
            let run = |fused: bool| {
                let x = base.clone().detach().require_grad();
                let y = if fused {
                    activation(x.clone(), act).expect("flex has the kernel")
                } else {
                    match act {
                        Activation::Relu => burn::tensor::activation::relu(x.clone()),
                        Activation::Relu6 => x.clone().clamp(0.0, 6.0),
                    }
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                let g = x.grad(&grads).expect("gradient");
                (
                    crate::host::to_vec_f32(y.inner()),
                    crate::host::to_vec_f32(g),
                )
            };
            let (fused, composed) = (run(true), run(false));
            assert_eq!(fused.0, composed.0, "{act:?} values");
            assert_eq!(fused.1, composed.1, "{act:?} gradients");
        }
        assert!(activation(Tensor::<1>::zeros([4], &Device::flex()), Activation::Relu).is_some());
    }
}
