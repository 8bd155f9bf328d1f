//! A per-channel bias add, optionally followed by ReLU or ReLU6, as one burn backend-extension
//! op each way on `flex`.
//!
//! burn computes `y + b` over a `[N, C, H, W]` activation with a broadcast add whose backward
//! reduces the gradient to `[C]` with `sum_dim` over three axes; on flex each of those reductions
//! first copies the whole gradient into a layout that puts the reduced axis last, and with
//! folded BatchNorm every layer adds a bias. Here the
//! forward is one pass (`act(x + b)`), the backward one pass that masks the gradient where the
//! activation does and sums it per channel. Both run in the tensor's storage order, channels
//! first or channels last ([`super::layout`]), and return that layout. The sums are taken in
//! fixed chunks combined in order (the same result for any thread count). Other devices never
//! reach the op: [`bias_activation`] returns `None` for them.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::batchnorm::act_code;
use super::extension::{
    contiguous_f32, dims4, has_flex_kernels, on_flex, owned_f32, untracked, zeros_f32,
};
use super::layout::{in_order, restore_order, storage_order};
use crate::ops::activation::Activation;
use crate::ops::activation::{backward_one, forward_one};
use crate::widest;

/// `b` `[channels]` shaped `[1, channels, 1, …]` to broadcast over dimension 1 of a rank-`D`
/// activation.
pub fn channel_broadcast<const D: usize>(b: Tensor<1>) -> Tensor<D> {
    let mut shape = [1i64; D];
    shape[D.min(2) - 1] = -1;
    b.reshape(shape)
}

/// `y + b` for the split that [`crate::LayerForward::forward_transformed_unbiased`] returns (`b`
/// broadcast over dimension 1), or `y` where there is no bias to add.
///
/// On flex a rank-4 sum is [`bias_activation`]: one pass each way in the
/// tensor's storage order, where burn's broadcast add copies the gradient three times to
/// reduce it to the bias.
pub fn join_bias<const D: usize>((y, b): (Tensor<D>, Option<Tensor<1>>)) -> Tensor<D> {
    match b {
        Some(b) if fusable(&y) => fused_bias(y, b, None),
        Some(b) => y + channel_broadcast(b),
        None => y,
    }
}

/// Whether `y + b` (and an activation) can be [`bias_activation`]: rank 4 on flex.
fn fusable<const D: usize>(y: &Tensor<D>) -> bool {
    D == 4 && has_flex_kernels(&y.device())
}

/// [`bias_activation`] for a rank-`D` tensor that [`fusable`] accepted.
fn fused_bias<const D: usize>(y: Tensor<D>, b: Tensor<1>, act: Option<Activation>) -> Tensor<D> {
    let y: Tensor<4> = Tensor::from_dispatch(y.into_dispatch());
    let out = bias_activation(y, b, act).expect("flex");
    Tensor::from_dispatch(out.into_dispatch())
}

/// `activation(y + b)` for the split of [`crate::LayerForward::forward_transformed_unbiased`]: on flex
/// for rank 4 one fused op each way ([`bias_activation`]), else [`join_bias`] and
/// then [`Activation::apply`].
pub fn join_bias_activated<const D: usize>(
    (y, b): (Tensor<D>, Option<Tensor<1>>),
    activation: Activation,
) -> Tensor<D> {
    match b {
        Some(b) if fusable(&y) => fused_bias(y, b, Some(activation)),
        b => activation.apply(join_bias((y, b))),
    }
}

const OP: &str = "bias_activation";

/// Values per rayon task (whole rows or planes).
const CHUNK: usize = 1 << 14;

/// `act(x + b)` with a per-channel `b` as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait BiasOps: Backend {
    /// `x` `[N, C, H, W]` plus `b` `[C]` on every channel's values, then `activation`
    /// ([`act_code`]); stored as `x` is (channels first or last).
    fn bias_act_forward(
        x: FloatTensor<Self>,
        b: FloatTensor<Self>,
        activation: u8,
    ) -> FloatTensor<Self>;

    /// The gradients of `x` (stored as `x`) and `b` `[C]` given the output gradient `grad`.
    fn bias_act_backward(
        x: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// `act(v)` for an activation code.
#[inline(always)]
fn act_forward(v: f32, act: u8) -> f32 {
    match act {
        0 => v,
        1 => forward_one(v, false),
        _ => forward_one(v, true),
    }
}

/// `g` where the activation keeps the gradient at pre-activation `v`, else 0.
#[inline(always)]
fn act_backward(v: f32, g: f32, act: u8) -> f32 {
    match act {
        0 => g,
        1 => backward_one(v, g, false),
        _ => backward_one(v, g, true),
    }
}

/// How the values of a `[N, C, H, W]` tensor are laid out in its buffer: runs of equal
/// channel. Channels last: `N·H·W` rows of `C` (channel `i % C`); channels first: `N·C` planes
/// of `H·W` (channel `(i / (H·W)) % C`).
#[derive(Clone, Copy)]
struct Order {
    channels_last: bool,
    c: usize,
    hw: usize,
}

impl Order {
    /// Values per run that share one bias pattern (a row of `C`, or a plane of `H·W`).
    fn unit(&self) -> usize {
        if self.channels_last { self.c } else { self.hw }
    }

    /// Whole units per rayon task.
    fn chunk(&self) -> usize {
        (CHUNK / self.unit().max(1)).max(1) * self.unit()
    }
}

widest! {
    /// `out = act(x + b)` over one task's values starting at value `start`.
    fn forward_chunk(o: Order, start: usize, x: &[f32], b: &[f32], out: &mut [f32], act: u8) -> () {
        if o.channels_last {
            for (row, dst) in x.chunks_exact(o.c).zip(out.chunks_exact_mut(o.c)) {
                for ((d, v), bias) in dst.iter_mut().zip(row).zip(b) {
                    *d = act_forward(v + bias, act);
                }
            }
        } else {
            let first = start / o.hw;
            for (p, (plane, dst)) in x.chunks_exact(o.hw).zip(out.chunks_exact_mut(o.hw)).enumerate() {
                let bias = b[(first + p) % o.c];
                for (d, v) in dst.iter_mut().zip(plane) {
                    *d = act_forward(v + bias, act);
                }
            }
        }
    }
}

widest! {
    /// One task's backward: `g` masked by the activation (at `x + b`) in place, and its sums
    /// per channel (`f64`, in storage order).
    fn backward_chunk(o: Order, start: usize, x: &[f32], b: &[f32], g: &mut [f32], act: u8) -> Vec<f64> {
        let mut sums = vec![0f64; o.c];
        if o.channels_last {
            let mut acc = vec![0f32; o.c];
            for (row, grow) in x.chunks_exact(o.c).zip(g.chunks_exact_mut(o.c)) {
                for (((a, gv), v), bias) in acc.iter_mut().zip(grow).zip(row).zip(b) {
                    *gv = act_backward(v + bias, *gv, act);
                    *a += *gv;
                }
            }
            for (s, a) in sums.iter_mut().zip(&acc) {
                *s += *a as f64;
            }
        } else {
            let first = start / o.hw;
            for (p, (plane, gp)) in x.chunks_exact(o.hw).zip(g.chunks_exact_mut(o.hw)).enumerate() {
                let ch = (first + p) % o.c;
                let bias = b[ch];
                let mut acc = 0f32;
                for (gv, v) in gp.iter_mut().zip(plane) {
                    *gv = act_backward(v + bias, *gv, act);
                    acc += *gv;
                }
                sums[ch] += acc as f64;
            }
        }
        sums
    }
}

/// `x` as a contiguous buffer in its storage order ([`storage_order`]), and that order.
fn storage(x: FlexTensor) -> (FlexTensor, Order) {
    let [_, c, h, w] = dims4(&x);
    let (buffer, channels_last) = storage_order(x, OP);
    let hw = h * w;
    (
        buffer,
        Order {
            channels_last,
            c,
            hw,
        },
    )
}

impl BiasOps for burn::backend::Flex {
    fn bias_act_forward(x: FlexTensor, b: FlexTensor, activation: u8) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let (x, o) = storage(x);
        let b = contiguous_f32(b, OP);
        let bs = b.as_slice::<f32>().expect("contiguous f32");
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(x.shape());
        let chunk = o.chunk();
        out.storage_mut::<f32>()
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .enumerate()
            .for_each(|(i, (dst, src))| forward_chunk(o, i * chunk, src, bs, dst, activation));
        restore_order(out, o.channels_last)
    }

    fn bias_act_backward(
        x: FlexTensor,
        b: FlexTensor,
        grad: FlexTensor,
        activation: u8,
    ) -> (FlexTensor, FlexTensor) {
        let (x, o) = storage(x);
        let b = contiguous_f32(b, OP);
        let bs = b.as_slice::<f32>().expect("contiguous f32");
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        // The input gradient is the output gradient masked: written over it when autodiff
        // handed over its only reference, else over a copy.
        let mut g = owned_f32(in_order(grad, o.channels_last, OP));
        let chunk = o.chunk();
        let gs = g.try_storage_mut::<f32>().expect("a buffer of its own");
        let parts: Vec<Vec<f64>> = gs
            .par_chunks_mut(chunk)
            .zip(xs.par_chunks(chunk))
            .enumerate()
            .map(|(i, (gc, xc))| backward_chunk(o, i * chunk, xc, bs, gc, activation))
            .collect();
        let mut db = vec![0f64; o.c];
        for part in &parts {
            for (s, p) in db.iter_mut().zip(part) {
                *s += p;
            }
        }
        let db: Vec<f32> = db.into_iter().map(|v| v as f32).collect();
        (
            restore_order(g, o.channels_last),
            FlexTensor::from_data(TensorData::new(db, [o.c])),
        )
    }
}

#[derive(Debug)]
struct BiasBackward;

impl<B: Backend + BiasOps> Backward<B, 2> for BiasBackward {
    /// `x`, `b` and the activation.
    type State = (B::FloatTensorPrimitive, B::FloatTensorPrimitive, u8);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, b, act) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, db) = B::bias_act_backward(x, b, grad, act);
        let [x_node, b_node] = ops.parents;
        for (node, g) in [(x_node, dx), (b_node, db)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend + BiasOps, C: CheckpointStrategy> BiasOps for Autodiff<B, C> {
    fn bias_act_forward(
        x: FloatTensor<Self>,
        b: FloatTensor<Self>,
        activation: u8,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), b.node()];
        let (x, b) = (x.into_primitive(), b.into_primitive());
        match BiasBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::bias_act_forward(x.clone(), b.clone(), activation);
                prep.finish((x, b, activation), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bias_act_forward(x, b, activation)),
        }
    }

    fn bias_act_backward(
        x: FloatTensor<Self>,
        b: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second derivatives are not needed: the results pass nothing back.
        let guards = || [x.node(), b.node(), grad.node()];
        let (dx, db) = B::bias_act_backward(
            x.clone().into_primitive(),
            b.clone().into_primitive(),
            grad.clone().into_primitive(),
            activation,
        );
        (
            untracked::<B, C, 3>(guards(), dx),
            untracked::<B, C, 3>(guards(), db),
        )
    }
}

/// `activation(x + b)` for `x` `[N, C, H, W]` and a per-channel `b` `[C]`, as one fused op
/// each way; stored as `x` is. The same values as the broadcast add followed by
/// [`Activation::apply`], and the same gradients up to summation order. `None` where the
/// device has no kernel ([`on_flex`]).
pub fn bias_activation(
    x: Tensor<4>,
    b: Tensor<1>,
    activation: Option<Activation>,
) -> Option<Tensor<4>> {
    on_flex(&x.device(), || {
        Tensor::from_dispatch(<Dispatch as BiasOps>::bias_act_forward(
            x.into_dispatch(),
            b.into_dispatch(),
            act_code(activation),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Values and gradients of `x` and `b` equal the broadcast add followed by burn's
    /// activation, for every activation, with `x` stored channels first and last, outputs on
    /// both sides of 0 and 6, and a tensor over several rayon tasks whose first plane is not
    /// channel 0.
    #[test]
    fn equals_add_then_activation() {
        let device = Device::flex().autodiff();
        device.seed(17);
        for act in [None, Some(Activation::Relu), Some(Activation::Relu6)] {
            for (stored_last, shape) in [
                (false, [3, 5, 4, 7]),
                (true, [3, 5, 4, 7]),
                (false, [2, 3, 60, 50]),
                (true, [2, 3, 60, 50]),
            ] {
                let c = shape[1];
                let x = Tensor::<4>::random(shape, Distribution::Normal(2.0, 4.0), &device)
                    .require_grad();
                let b = Tensor::<1>::random([c], Distribution::Normal(0.0, 3.0), &device)
                    .require_grad();
                let input = if stored_last {
                    crate::ops::layout::channels_last(x.clone())
                } else {
                    x.clone()
                };
                let ours = bias_activation(input, b.clone(), act).expect("flex");
                let sum = x.clone() + b.clone().reshape([1, c, 1, 1]);
                let theirs = match act {
                    None => sum,
                    Some(Activation::Relu) => burn::tensor::activation::relu(sum),
                    Some(Activation::Relu6) => sum.clamp(0.0, 6.0),
                };
                assert_eq!(
                    ours.clone().into_data(),
                    theirs.clone().into_data(),
                    "{act:?}"
                );
                let g = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
                let ga = (ours * g.clone()).sum().backward();
                let gb = (theirs * g).sum().backward();
                assert_eq!(
                    x.grad(&ga).unwrap().into_data(),
                    x.grad(&gb).unwrap().into_data(),
                    "{act:?} input gradient"
                );
                b.grad(&ga).unwrap().into_data().assert_approx_eq::<f32>(
                    &b.grad(&gb).unwrap().into_data(),
                    Tolerance::absolute(1e-4).set_relative(1e-4),
                );
            }
        }
    }
}
