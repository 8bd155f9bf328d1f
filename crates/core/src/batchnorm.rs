//! BatchNorm in training mode (batch statistics) as one burn backend-extension op each way on
//! `flex`.
//!
//! Composed from tensor ops, a training BatchNorm makes about a dozen passes over the activation
//! forward and backward (mean, centring, square, mean, scale, shift, and their gradients); on
//! DS-CNN-L's largest activation (`[100, 276, 25, 10]`) that took 61 ms a step. Here each channel
//! is one rayon task that walks its `N` planes (a few hundred KiB, so the passes after the first
//! hit the core's cache): forward, the two-pass mean and biased variance (sums in `f64`) and the
//! normalized output; backward, `Σ dy` and `Σ dy·x̂` and then
//! `dx = γ·σ⁻¹/M · (M·dy − Σ dy − x̂·Σ dy·x̂)`, the gradient of the same function with the
//! statistics differentiated through (`M = N·H·W`). Element loops run in eight fixed lanes,
//! compiled for AVX2 + FMA where the CPU has them, so results are deterministic. Other devices never reach the op:
//! [`batch_norm_train`] returns `None` for them.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::activation::{backward_one, forward_one};
use crate::extension::{contiguous_f32, has_avx2_fma, has_flex_kernels, untracked};
use crate::layer::Activation;

const OP: &str = "batch_norm_train";

/// Training-mode BatchNorm as backend operations.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: Backend {
    /// `x` `[N, C, H, W]` normalized with its per-channel batch mean and biased variance, scaled
    /// by `gamma` `[C]` and shifted by `beta` `[C]`, then passed through `activation` (see
    /// [`act_code`]); also the statistics `[2, C]` (means, then variances; not differentiated).
    fn bn_train_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of `x`, `gamma` and `beta` given the output gradient `grad` and the
    /// forward's statistics `stats` `[2, C]`.
    fn bn_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// `Σ f(v)` over `values` in eight fixed lanes (the same result every run).
#[inline(always)]
fn lanes_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            lanes[l] += f(c[l]);
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for v in rest {
        sum += f(*v);
    }
    sum
}

/// `Σ f(a, b)` over pairs, in eight fixed lanes.
#[inline(always)]
fn lanes_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            lanes[l] += f(x[l], y[l]);
        }
    }
    let mut sum = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (x, y) in ar.iter().zip(br) {
        sum += f(*x, *y);
    }
    sum
}

/// Plane `p` of `len` values of `s`.
#[inline(always)]
fn plane(s: &[f32], p: usize, len: usize) -> &[f32] {
    &s[p * len..][..len]
}

/// Raw pointer to write one channel's disjoint planes from its rayon task.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes only the planes of its own channel (disjoint ranges).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// Plane `p` (`len` values from `p · len`) as a mutable slice.
    ///
    /// # Safety
    /// No other live reference to that range; the buffer holds it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane(&self, p: usize, len: usize) -> &mut [f32] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(p * len), len) }
    }
}

/// The `N` planes of channel `ch` in an `[N, C, H·W]` buffer.
#[derive(Clone, Copy)]
struct Planes {
    n: usize,
    c: usize,
    hw: usize,
    ch: usize,
}

impl Planes {
    /// Index of image `b`'s plane.
    #[inline(always)]
    fn at(&self, b: usize) -> usize {
        b * self.c + self.ch
    }
}

/// One channel's forward: statistics, then the normalized planes into `out`; returns
/// `(mean, biased variance)`.
#[inline(always)]
fn forward_channel(
    p: Planes,
    xs: &[f32],
    out: Out,
    [gamma, beta, eps]: [f32; 3],
    act: u8,
) -> (f32, f32) {
    let m = (p.n * p.hw) as f64;
    let sum: f64 = (0..p.n)
        .map(|b| lanes_sum(plane(xs, p.at(b), p.hw), |v| v) as f64)
        .sum();
    let mean = (sum / m) as f32;
    let sq: f64 = (0..p.n)
        .map(|b| lanes_sum(plane(xs, p.at(b), p.hw), |v| (v - mean) * (v - mean)) as f64)
        .sum();
    let var = (sq / m) as f32;
    let scale = gamma / (var + eps).sqrt();
    for b in 0..p.n {
        // SAFETY: plane (b, ch) belongs to this channel's task only.
        let dst = unsafe { out.plane(p.at(b), p.hw) };
        let src = plane(xs, p.at(b), p.hw);
        match act {
            0 => {
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = (v - mean) * scale + beta;
                }
            }
            _ => {
                let six = act == 2;
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = forward_one((v - mean) * scale + beta, six);
                }
            }
        }
    }
    (mean, var)
}

/// One channel's backward: `Σ dy·x̂` and `Σ dy`, then `dx` into `out`; returns both sums.
/// `k = [mean, variance, γ, β, ε, M]`; with an activation, `dy` is first masked where its
/// backward would mask it, at the pre-activation value recomputed exactly as the forward did.
#[inline(always)]
fn backward_channel(
    p: Planes,
    xs: &[f32],
    dys: &[f32],
    out: Out,
    k: [f32; 6],
    act: u8,
) -> (f32, f32) {
    let [mean, var, gamma, beta, eps, m] = k;
    let inv = 1.0 / (var + eps).sqrt();
    let fscale = gamma / (var + eps).sqrt();
    let six = act == 2;
    let eff = |v: f32, g: f32| {
        if act == 0 {
            g
        } else {
            backward_one((v - mean) * fscale + beta, g, six)
        }
    };
    let mut sum_dy = 0f64;
    let mut sum_dy_xhat = 0f64;
    for b in 0..p.n {
        let (xp, gp) = (plane(xs, p.at(b), p.hw), plane(dys, p.at(b), p.hw));
        sum_dy += lanes_sum2(xp, gp, eff) as f64;
        sum_dy_xhat += lanes_sum2(xp, gp, |v, g| eff(v, g) * ((v - mean) * inv)) as f64;
    }
    let scale = gamma * inv / m;
    let (bsum, xsum) = (sum_dy as f32, sum_dy_xhat as f32);
    for b in 0..p.n {
        let (xp, gp) = (plane(xs, p.at(b), p.hw), plane(dys, p.at(b), p.hw));
        // SAFETY: plane (b, ch) belongs to this channel's task only.
        let dst = unsafe { out.plane(p.at(b), p.hw) };
        for ((d, v), g) in dst.iter_mut().zip(xp).zip(gp) {
            let xhat = (v - mean) * inv;
            *d = scale * (m * eff(*v, *g) - bsum - xhat * xsum);
        }
    }
    (xsum, bsum)
}

/// [`forward_channel`] compiled for AVX2 + FMA where the CPU has them. A named
/// `target_feature` function rather than [`crate::extension::wide`]'s closure, which the compiler may leave out
/// of line (and so unvectorized) when the body is large.
fn forward_channel_fast(p: Planes, xs: &[f32], out: Out, k: [f32; 3], act: u8) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        fn run(p: Planes, xs: &[f32], out: Out, k: [f32; 3], act: u8) -> (f32, f32) {
            forward_channel(p, xs, out, k, act)
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { run(p, xs, out, k, act) };
    }
    forward_channel(p, xs, out, k, act)
}

/// [`backward_channel`] compiled for AVX2 + FMA where the CPU has them (see
/// [`forward_channel_fast`]).
fn backward_channel_fast(
    p: Planes,
    xs: &[f32],
    dys: &[f32],
    out: Out,
    k: [f32; 6],
    act: u8,
) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        fn run(p: Planes, xs: &[f32], dys: &[f32], out: Out, k: [f32; 6], act: u8) -> (f32, f32) {
            backward_channel(p, xs, dys, out, k, act)
        }
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { run(p, xs, dys, out, k, act) };
    }
    backward_channel(p, xs, dys, out, k, act)
}

impl BatchNormOps for burn::backend::Flex {
    fn bn_train_forward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f32,
        activation: u8,
    ) -> (FlexTensor, FlexTensor) {
        use burn::backend::TensorMetadata;
        let [n, c, h, w] = dims4(&x);
        let hw = h * w;
        let x = contiguous_f32(x, OP);
        let (gamma, beta) = (contiguous_f32(gamma, OP), contiguous_f32(beta, OP));
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = gamma.as_slice::<f32>().expect("contiguous f32");
        let bs = beta.as_slice::<f32>().expect("contiguous f32");
        let mut y = FlexTensor::empty(x.shape(), DType::F32);
        let mut stats = FlexTensor::empty([2, c].into(), DType::F32);
        let out = Out(y.storage_mut::<f32>().as_mut_ptr());
        let per_channel: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = Planes { n, c, hw, ch };
                forward_channel_fast(planes, xs, out, [gs[ch], bs[ch], epsilon], activation)
            })
            .collect();
        let st = stats.storage_mut::<f32>();
        for (ch, (mean, var)) in per_channel.into_iter().enumerate() {
            st[ch] = mean;
            st[c + ch] = var;
        }
        (y, stats)
    }

    fn bn_train_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        stats: FlexTensor,
        grad: FlexTensor,
        epsilon: f32,
        activation: u8,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        use burn::backend::TensorMetadata;
        let [n, c, h, w] = dims4(&x);
        let hw = h * w;
        let m = (n * hw) as f64;
        let (x, grad) = (contiguous_f32(x, OP), contiguous_f32(grad, OP));
        let (gamma, stats) = (contiguous_f32(gamma, OP), contiguous_f32(stats, OP));
        let beta = contiguous_f32(beta, OP);
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let dys = grad.as_slice::<f32>().expect("contiguous f32");
        let gs = gamma.as_slice::<f32>().expect("contiguous f32");
        let bs = beta.as_slice::<f32>().expect("contiguous f32");
        let st = stats.as_slice::<f32>().expect("contiguous f32");
        let mut dx = FlexTensor::empty(x.shape(), DType::F32);
        let out = Out(dx.storage_mut::<f32>().as_mut_ptr());
        let sums: Vec<(f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let k = [st[ch], st[c + ch], gs[ch], bs[ch], epsilon, m as f32];
                backward_channel_fast(Planes { n, c, hw, ch }, xs, dys, out, k, activation)
            })
            .collect();
        let mut dgamma = FlexTensor::empty([c].into(), DType::F32);
        let mut dbeta = FlexTensor::empty([c].into(), DType::F32);
        {
            let (dg, db) = (dgamma.storage_mut::<f32>(), dbeta.storage_mut::<f32>());
            for (ch, (xsum, bsum)) in sums.into_iter().enumerate() {
                dg[ch] = xsum;
                db[ch] = bsum;
            }
        }
        (dx, dgamma, dbeta)
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl<B: Backend + BatchNormOps> Backward<B, 3> for BatchNormBackward {
    /// `x`, `gamma`, `beta`, the statistics, ε and the activation.
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        f32,
        u8,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma, beta, stats, epsilon, act) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dx, dgamma, dbeta) = B::bn_train_backward(x, gamma, beta, stats, grad, epsilon, act);
        let [x_node, gamma_node, beta_node] = ops.parents;
        for (node, g) in [(x_node, dx), (gamma_node, dgamma), (beta_node, dbeta)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend + BatchNormOps, C: CheckpointStrategy> BatchNormOps for Autodiff<B, C> {
    fn bn_train_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f32,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let guards = [x.node(), gamma.node(), beta.node()];
        let stats_guards = [x.node(), gamma.node(), beta.node()];
        let (x, gamma, beta) = (
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
        );
        let (y, stats) =
            B::bn_train_forward(x.clone(), gamma.clone(), beta.clone(), epsilon, activation);
        let y = match BatchNormBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish((x, gamma, beta, stats.clone(), epsilon, activation), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, untracked::<B, C, 3>(stats_guards, stats))
    }

    fn bn_train_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f32,
        activation: u8,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // Second derivatives are not needed: the results pass nothing back.
        let guards = || {
            [
                x.node(),
                gamma.node(),
                beta.node(),
                stats.node(),
                grad.node(),
            ]
        };
        let (dx, dgamma, dbeta) = B::bn_train_backward(
            x.clone().into_primitive(),
            gamma.clone().into_primitive(),
            beta.clone().into_primitive(),
            stats.clone().into_primitive(),
            grad.clone().into_primitive(),
            epsilon,
            activation,
        );
        (
            untracked::<B, C, 5>(guards(), dx),
            untracked::<B, C, 5>(guards(), dgamma),
            untracked::<B, C, 5>(guards(), dbeta),
        )
    }
}

/// The op's code for an activation after the BatchNorm: 0 none, 1 ReLU, 2 ReLU6.
pub fn act_code(activation: Option<Activation>) -> u8 {
    match activation {
        None => 0,
        Some(Activation::Relu) => 1,
        Some(Activation::Relu6) => 2,
    }
}

/// Training-mode BatchNorm of `x` `[N, C, H, W]` with `gamma`, `beta` `[C]` and `epsilon`,
/// followed by `activation`, as one fused op each way: the output, and the batch statistics
/// `[2, C]` (means, then biased variances; detached). The same values and gradients as the
/// BatchNorm followed by [`Activation::apply`]. `None` where the device has no kernel
/// ([`has_flex_kernels`]).
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f32,
    activation: Option<Activation>,
) -> Option<(Tensor<4>, Tensor<2>)> {
    if !has_flex_kernels(&x.device()) {
        return None;
    }
    let (y, stats) = <Dispatch as BatchNormOps>::bn_train_forward(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        act_code(activation),
    );
    Some((Tensor::from_dispatch(y), Tensor::from_dispatch(stats)))
}
