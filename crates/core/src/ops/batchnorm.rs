//! BatchNorm in training mode (batch statistics) as one burn backend-extension op each way on
//! `flex`.
//!
//! Composed from tensor ops, a training BatchNorm makes about a dozen passes over the activation
//! forward and backward (mean, centring, square, mean, scale, shift, and their gradients). Here each channel
//! is one rayon task that walks its `N` planes (a few hundred KiB, so the passes after the first
//! hit the core's cache): forward, the two-pass mean and biased variance (sums in `f64`) and the
//! normalized output; backward, `Σ dy` and `Σ dy·x̂` and then
//! `dx = γ·σ⁻¹/M · (M·dy − Σ dy − x̂·Σ dy·x̂)`, the gradient of the same function with the
//! statistics differentiated through (`M = N·H·W`). Element loops run in eight fixed lanes,
//! compiled for the widest vector units the CPU has ([`super::cpu`]), so results are
//! deterministic. Other devices never reach the op: [`batch_norm_train`] returns `None` for
//! them, and [`batch_norm`] (a burn `BatchNorm` module's forward pass) composes burn ops there.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::nn::BatchNorm;
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::cpu;
use super::extension::{contiguous_f32, dims4, on_flex, owned_f32, untracked, zeros_f32};
use super::layout::{channels_first, channels_last_buffer, from_channels_last, is_channels_last};
use crate::ops::activation::Activation;
use crate::ops::activation::{backward_one, forward_one};
use crate::widest;

const OP: &str = "batch_norm_train";

mod channels_last;

/// Channels per backward task: their planes of one image are adjacent, and a block's input and
/// gradient (`2·BLOCK·N·H·W` values, 400 KiB for DS-CNN-L) stay in a core's L2 between the
/// sum pass and the output pass.
const BLOCK: usize = 4;

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

/// Raw pointer to the output gradient, read by all channel tasks; it may be [`Out`]'s buffer
/// (see [`backward_in_place`]).
#[derive(Clone, Copy)]
struct Grad(*const f32);
// SAFETY: tasks read only; where it is the output buffer, each task reads only its own planes.
unsafe impl Send for Grad {}
unsafe impl Sync for Grad {}

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

widest! {
    /// [`forward_channel`] compiled for the widest features the CPU has (its sums run in eight
    /// fixed lanes, so the result does not depend on them).
    fn forward_channel_fast(p: Planes, xs: &[f32], out: Out, k: [f32; 3], act: u8) -> (f32, f32) {
        forward_channel(p, xs, out, k, act)
    }
}

/// [`backward_channel`] for the channels `p.ch..p.ch + ks.len()` (`ks[j]` the constants of
/// channel `p.ch + j`) on the widest kernel the CPU has: [`avx512::backward_block`] with
/// AVX-512F, else [`backward_block_portable`].
///
/// `dys` may be `out` itself (the gradient overwritten in place) only on the AVX-512 kernel
/// ([`backward_in_place`]).
fn backward_block_fast(
    p: Planes,
    xs: &[f32],
    dys: Grad,
    out: Out,
    ks: &[[f32; 6]],
    act: u8,
) -> Vec<(f32, f32)> {
    #[cfg(target_arch = "x86_64")]
    if backward_in_place() {
        // SAFETY: the probe found AVX-512F on this CPU (`backward_in_place`); `out` and `dys`
        // hold these channels' planes, each written by this task only.
        return unsafe {
            match act {
                0 => avx512::backward_block::<0>(p, xs, dys, out, ks),
                1 => avx512::backward_block::<1>(p, xs, dys, out, ks),
                _ => avx512::backward_block::<2>(p, xs, dys, out, ks),
            }
        };
    }
    // SAFETY: without AVX-512 `dys` is a buffer of its own (see `backward_in_place`), as long
    // as `xs`, and nothing writes to it.
    let dys = unsafe { std::slice::from_raw_parts(dys.0, xs.len()) };
    backward_block_portable(p, xs, dys, out, ks, act)
}

/// Whether the backward may write the input gradient over the output gradient: the AVX-512
/// kernel reads each value of a plane just before storing over it, through raw pointers.
fn backward_in_place() -> bool {
    cpu::avx512()
}

widest! {
    /// [`backward_block_fast`] without the AVX-512 intrinsics: channel by channel, compiled for
    /// the widest features the CPU has (the sums run in eight fixed lanes, so the result does
    /// not depend on them).
    fn backward_block_portable(
        p: Planes,
        xs: &[f32],
        dys: &[f32],
        out: Out,
        ks: &[[f32; 6]],
        act: u8,
    ) -> Vec<(f32, f32)> {
        let each = |(j, &k): (usize, &[f32; 6])| {
            backward_channel(Planes { ch: p.ch + j, ..p }, xs, dys, out, k, act)
        };
        ks.iter().enumerate().map(each).collect()
    }
}

/// The backward channel kernel in AVX-512F intrinsics.
///
/// The portable loops of [`backward_channel`] vectorize badly (the activation mask and the two
/// sums per element left them in 4-wide and scalar code). Here one pass
/// takes both sums in 16 lanes, the plane's tail (DS-CNN-L planes are 125 values) goes through
/// a masked load whose dead lanes carry `dy = 0`, and the activation is a compare mask on the
/// pre-activation value recomputed as the forward computes it (multiply, then add: no FMA, so
/// the mask is the forward's bit for bit).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Grad, Out, Planes, plane};
    use std::arch::x86_64::*;

    /// `g` where activation `ACT` (0 none, 1 ReLU, 2 ReLU6) passes the gradient at
    /// pre-activation `pre`, else 0: the masks of `activation::backward_one` (NaN keeps it).
    #[inline(always)]
    unsafe fn masked<const ACT: u8>(pre: __m512, g: __m512) -> __m512 {
        // SAFETY (whole body): plain register arithmetic, AVX-512F enabled by the caller.
        unsafe {
            match ACT {
                0 => g,
                1 => _mm512_maskz_mov_ps(
                    _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(pre, _mm512_setzero_ps()),
                    g,
                ),
                _ => {
                    let lo = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(pre, _mm512_setzero_ps());
                    let hi = _mm512_cmp_ps_mask::<_CMP_NGT_UQ>(pre, _mm512_set1_ps(6.0));
                    _mm512_maskz_mov_ps(lo & hi, g)
                }
            }
        }
    }

    /// Mask of the first `n < 16` lanes.
    #[inline(always)]
    fn tail_mask(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// [`super::backward_channel`] with `act = ACT` for the channels `first..first + ks.len()`
    /// (`ks[j]` the constants of channel `first + j`), image by image: one image's planes of
    /// these channels are adjacent in memory, so the loads run through `ks.len()` planes in a
    /// row instead of jumping `C·H·W` values after each plane. Returns each channel's
    /// `(Σ dy·x̂, Σ dy)`; the sums are taken in the same order as one channel at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `out` as in [`super::backward_channel`], for all these channels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn backward_block<const ACT: u8>(
        p: Planes,
        xs: &[f32],
        dys: Grad,
        out: Out,
        ks: &[[f32; 6]],
    ) -> Vec<(f32, f32)> {
        struct Chan {
            mean: __m512,
            scale: __m512,
            beta: __m512,
            inv: f32,
        }
        let chans: Vec<Chan> = ks
            .iter()
            .map(|&[mean, var, gamma, beta, eps, _]| Chan {
                mean: _mm512_set1_ps(mean),
                scale: _mm512_set1_ps(gamma / (var + eps).sqrt()),
                beta: _mm512_set1_ps(beta),
                inv: 1.0 / (var + eps).sqrt(),
            })
            .collect();
        let full = p.hw / 16 * 16;
        let tail = tail_mask(p.hw - full);
        // dy after the activation mask, and x − mean, for the 16 values at `at` of a plane.
        let load = |ch: &Chan, xp: &[f32], gp: *const f32, at: usize, mask: __mmask16| {
            // SAFETY: `mask` covers only lanes inside both planes.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, xp.as_ptr().add(at));
                let g = _mm512_maskz_loadu_ps(mask, gp.add(at));
                let centred = _mm512_sub_ps(v, ch.mean);
                let pre = _mm512_add_ps(_mm512_mul_ps(centred, ch.scale), ch.beta);
                (masked::<ACT>(pre, g), centred)
            }
        };
        let planes = |j: usize, b: usize| {
            let at = Planes { ch: p.ch + j, ..p }.at(b);
            // SAFETY: plane `at` lies inside the gradient buffer.
            (at, plane(xs, at, p.hw), unsafe { dys.0.add(at * p.hw) })
        };
        let mut sums = vec![(0f64, 0f64); ks.len()];
        for b in 0..p.n {
            for (j, ch) in chans.iter().enumerate() {
                let (_, xp, gp) = planes(j, b);
                let (mut acc_b, mut acc_x) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let mut at = 0;
                while at < full {
                    let (e, c) = load(ch, xp, gp, at, 0xffff);
                    acc_b = _mm512_add_ps(acc_b, e);
                    acc_x = _mm512_fmadd_ps(e, c, acc_x);
                    at += 16;
                }
                if tail != 0 {
                    let (e, c) = load(ch, xp, gp, at, tail);
                    acc_b = _mm512_add_ps(acc_b, e);
                    acc_x = _mm512_fmadd_ps(e, c, acc_x);
                }
                sums[j].0 += _mm512_reduce_add_ps(acc_b) as f64;
                sums[j].1 += _mm512_reduce_add_ps(acc_x) as f64;
            }
        }
        // Σ dy·x̂ = σ⁻¹ · Σ dy·(x − mean), and
        // dx = γσ⁻¹/M · (M·dy − Σdy − x̂·Σdy·x̂) = a·dy + c·(x − mean) + d.
        let result: Vec<(f32, f32)> = sums
            .iter()
            .zip(&chans)
            .map(|(&(dy, dy_xc), ch)| ((dy_xc * ch.inv as f64) as f32, dy as f32))
            .collect();
        let coef: Vec<[__m512; 3]> = ks
            .iter()
            .zip(&chans)
            .zip(&result)
            .map(|((k, ch), &(xsum, bsum))| {
                let (gamma, m) = (k[2], k[5]);
                let scale = gamma * ch.inv / m;
                [
                    _mm512_set1_ps(scale * m),
                    _mm512_set1_ps(-scale * ch.inv * xsum),
                    _mm512_set1_ps(-scale * bsum),
                ]
            })
            .collect();
        for b in 0..p.n {
            for (j, (ch, &[a, c, d])) in chans.iter().zip(&coef).enumerate() {
                let (at0, xp, gp) = planes(j, b);
                // Plane (b, first + j) belongs to this block's task only. No reference to it:
                // it may be the gradient's own plane, read just before each store.
                // SAFETY: plane `at0` lies inside the output buffer.
                let dst = unsafe { out.0.add(at0 * p.hw) };
                let dx = |e: __m512, cen: __m512| _mm512_fmadd_ps(a, e, _mm512_fmadd_ps(c, cen, d));
                let mut at = 0;
                while at < full {
                    let (e, cen) = load(ch, xp, gp, at, 0xffff);
                    // SAFETY: 16 values inside the plane.
                    unsafe { _mm512_storeu_ps(dst.add(at), dx(e, cen)) };
                    at += 16;
                }
                if tail != 0 {
                    let (e, cen) = load(ch, xp, gp, at, tail);
                    // SAFETY: the mask covers only lanes inside the plane.
                    unsafe { _mm512_mask_storeu_ps(dst.add(at), tail, dx(e, cen)) };
                }
            }
        }
        result
    }
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
        let (gamma, beta) = (contiguous_f32(gamma, OP), contiguous_f32(beta, OP));
        if is_channels_last(&x) {
            let xb = channels_last_buffer(x, OP);
            let xs = xb.as_slice::<f32>().expect("contiguous f32");
            let mut y = vec![0f32; xs.len()];
            let gs = gamma.as_slice::<f32>().expect("contiguous f32");
            let bs = beta.as_slice::<f32>().expect("contiguous f32");
            let (mean, var) = channels_last::forward(xs, &mut y, gs, bs, epsilon, activation);
            let stats = FlexTensor::from_data(TensorData::new([mean, var].concat(), [2, c]));
            return (from_channels_last(y, [n, c, h, w]), stats);
        }
        let x = contiguous_f32(x, OP);
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = gamma.as_slice::<f32>().expect("contiguous f32");
        let bs = beta.as_slice::<f32>().expect("contiguous f32");
        let mut y = zeros_f32(x.shape());
        let mut stats = zeros_f32([2, c]);
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
        let (gamma, stats) = (contiguous_f32(gamma, OP), contiguous_f32(stats, OP));
        let beta = contiguous_f32(beta, OP);
        if is_channels_last(&x) {
            return backward_channels_last(x, [gamma, beta, stats, grad], epsilon, activation);
        }
        let (x, mut grad) = (contiguous_f32(x, OP), channels_first(grad, OP));
        let xs = x.as_slice::<f32>().expect("contiguous f32");
        let gs = gamma.as_slice::<f32>().expect("contiguous f32");
        let bs = beta.as_slice::<f32>().expect("contiguous f32");
        let st = stats.as_slice::<f32>().expect("contiguous f32");
        // The output gradient is usually the only reference to its buffer (autodiff hands it
        // over): dx then takes its place, no 4·N·C·H·W-byte allocation, memset and first write.
        let whole = grad.layout().contiguous_offsets() == Some((0, xs.len()));
        let (dx, dys, out) = if backward_in_place() && whole && grad.is_unique() {
            let ptr = grad.try_storage_mut::<f32>().expect("unique").as_mut_ptr();
            (grad, Grad(ptr), Out(ptr))
        } else {
            // `grad` lives (unchanged) until the end of this function.
            let dys = Grad(grad.as_slice::<f32>().expect("contiguous f32").as_ptr());
            let mut dx = zeros_f32(x.shape());
            let out = Out(dx.storage_mut::<f32>().as_mut_ptr());
            (dx, dys, out)
        };
        let ks: Vec<[f32; 6]> = (0..c)
            .map(|ch| [st[ch], st[c + ch], gs[ch], bs[ch], epsilon, m as f32])
            .collect();
        let sums: Vec<(f32, f32)> = ks
            .par_chunks(BLOCK)
            .enumerate()
            .flat_map_iter(|(i, ks)| {
                let p = Planes {
                    n,
                    c,
                    hw,
                    ch: i * BLOCK,
                };
                backward_block_fast(p, xs, dys, out, ks, activation)
            })
            .collect();
        let mut dgamma = zeros_f32([c]);
        let mut dbeta = zeros_f32([c]);
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

/// The backward for an input stored channels last: the output gradient read channels last too
/// (a copy only if it arrives otherwise), the input gradient returned channels last, written
/// over the output gradient's buffer when autodiff hands over its only reference.
fn backward_channels_last(
    x: FlexTensor,
    [gamma, beta, stats, grad]: [FlexTensor; 4],
    epsilon: f32,
    activation: u8,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let [n, c, h, w] = dims4(&x);
    let m = (n * h * w) as f32;
    let xb = channels_last_buffer(x, OP);
    let xs = xb.as_slice::<f32>().expect("contiguous f32");
    let gs = gamma.as_slice::<f32>().expect("contiguous f32");
    let bs = beta.as_slice::<f32>().expect("contiguous f32");
    let st = stats.as_slice::<f32>().expect("contiguous f32");
    let ks: Vec<[f32; 6]> = (0..c)
        .map(|ch| [st[ch], st[c + ch], gs[ch], bs[ch], epsilon, m])
        .collect();
    // Written over the output gradient: its buffer when autodiff handed over the only
    // reference, else a copy.
    let mut gb = owned_f32(channels_last_buffer(grad, OP));
    let g = gb.try_storage_mut::<f32>().expect("a buffer of its own");
    let sums = channels_last::backward(xs, g, &ks, activation);
    let dx = gb.permute(&[0, 3, 1, 2]);
    let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
    (
        dx,
        FlexTensor::from_data(TensorData::new(dgamma, [c])),
        FlexTensor::from_data(TensorData::new(dbeta, [c])),
    )
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
/// ([`on_flex`]).
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f32,
    activation: Option<Activation>,
) -> Option<(Tensor<4>, Tensor<2>)> {
    on_flex(&x.device(), || {
        let (y, stats) = <Dispatch as BatchNormOps>::bn_train_forward(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
            act_code(activation),
        );
        (Tensor::from_dispatch(y), Tensor::from_dispatch(stats))
    })
}

/// `bn.forward(x)` for `x` `[N, C, H, W]`, with the training-mode statistics computed by
/// per-channel reductions over `[0, 2, 3]` instead of burn's transpose-and-reshape copies: the
/// same two-pass mean and biased variance, the same running-statistics update, and a backward
/// pass through plain tensor ops. Inference (no autodiff, or the layer frozen) is burn's own.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    batch_norm_activated(bn, x, None)
}

/// [`batch_norm`] followed by `activation`: on flex in training one fused op each way
/// ([`batch_norm_train`]), elsewhere the two in turn. The same values and gradients either way.
pub fn batch_norm_activated(
    bn: &BatchNorm,
    x: Tensor<4>,
    activation: Option<Activation>,
) -> Tensor<4> {
    let act = |y: Tensor<4>| match activation {
        Some(a) => a.apply(y),
        None => y,
    };
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return act(bn.forward(x));
    }
    let device = x.device();
    let momentum = bn.momentum;
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let running = state.value_sync().to_device(&device);
        state.update((running * (1.0 - momentum) + batch.detach() * momentum).detach());
    };
    // One fused op each way on flex.
    if let Some((y, stats)) = batch_norm_train(
        x.clone(),
        bn.gamma.val(),
        bn.beta.val(),
        bn.epsilon as f32,
        activation,
    ) {
        let [_, c] = stats.dims();
        update(
            &bn.running_mean,
            stats.clone().slice([0..1, 0..c]).reshape([c]),
        );
        update(&bn.running_var, stats.slice([1..2, 0..c]).reshape([c]));
        return y;
    }
    let mean = x.clone().mean_dims(&[0, 2, 3]);
    let centered = x - mean.clone();
    let variance = centered.clone().square().mean_dims(&[0, 2, 3]);
    let scale =
        (variance.clone() + bn.epsilon).sqrt().recip() * bn.gamma.val().reshape([1, -1, 1, 1]);
    let y = centered * scale + bn.beta.val().reshape([1, -1, 1, 1]);
    update(&bn.running_mean, mean.reshape([-1]));
    update(&bn.running_var, variance.reshape([-1]));
    act(y)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Device, Distribution};
    use proptest::prelude::*;

    /// A BatchNorm over `channels` with random γ, β and running statistics.
    pub(crate) fn bn_with_stats(channels: usize, device: &Device) -> BatchNorm {
        let mut bn = BatchNormConfig::new(channels)
            .with_epsilon(1e-3)
            .init(device);
        bn.gamma = Param::from_tensor(Tensor::random(
            [channels],
            Distribution::Uniform(0.5, 1.5),
            device,
        ));
        bn.beta = Param::from_tensor(Tensor::random(
            [channels],
            Distribution::Normal(0.0, 0.5),
            device,
        ));
        bn.running_mean = burn::module::RunningState::new(Tensor::random(
            [channels],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        bn.running_var = burn::module::RunningState::new(Tensor::random(
            [channels],
            Distribution::Uniform(0.2, 3.0),
            device,
        ));
        bn
    }

    /// The fused BatchNorm + activation equals the BatchNorm followed by the activation:
    /// values, the gradients of the input, γ and β, and the running statistics, exactly.
    #[test]
    fn fused_activation_equals_batch_norm_then_activation() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for act in [Activation::Relu, Activation::Relu6] {
            let mut fused = bn_with_stats(6, &device);
            // γ up to 5: a good share of outputs above 6, where ReLU and ReLU6 differ.
            fused.gamma = Param::from_tensor(Tensor::random(
                [6],
                Distribution::Uniform(2.0, 5.0),
                &device,
            ));
            let plain = fused.clone();
            let x = (Tensor::<4>::random([3, 6, 7, 5], Distribution::Normal(0.5, 3.0), &device)
                * 2.0)
                .round()
                .require_grad();
            let g = Tensor::<4>::random([3, 6, 7, 5], Distribution::Normal(0.0, 1.0), &device);
            let a = batch_norm_activated(&fused, x.clone(), Some(act));
            let b = act.apply(batch_norm(&plain, x.clone()));
            assert_eq!(
                a.clone().into_data(),
                b.clone().into_data(),
                "{act:?} values"
            );
            let ga = (a * g.clone()).sum().backward();
            let gb = (b * g).sum().backward();
            assert_eq!(
                x.grad(&ga).unwrap().into_data(),
                x.grad(&gb).unwrap().into_data(),
                "{act:?} input gradient"
            );
            for (p, q) in [(&fused.gamma, &plain.gamma), (&fused.beta, &plain.beta)] {
                assert_eq!(
                    p.val().grad(&ga).unwrap().into_data(),
                    q.val().grad(&gb).unwrap().into_data(),
                    "{act:?} parameter gradient"
                );
            }
            assert_eq!(
                fused.running_var.value_sync().into_data(),
                plain.running_var.value_sync().into_data()
            );
        }
    }

    #[test]
    fn batch_norm_training_equals_burn_in_values_gradients_and_running_stats() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let ours = bn_with_stats(5, &device);
        let theirs = ours.clone();
        // A large per-channel offset: the two-pass variance must not cancel.
        let x = (Tensor::<4>::random([4, 5, 6, 3], Distribution::Normal(0.0, 2.0), &device)
            + 300.0)
            .require_grad();
        let g = Tensor::<4>::random([4, 5, 6, 3], Distribution::Normal(0.0, 1.0), &device);
        let a = batch_norm(&ours, x.clone());
        let b = theirs.forward(x.clone());
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-4).set_relative(1e-3);
        a.clone()
            .into_data()
            .assert_approx_eq(&b.clone().into_data(), tol);
        let ga = (a * g.clone()).sum().backward();
        let gb = (b * g).sum().backward();
        let pairs = [(x.grad(&ga), x.grad(&gb))];
        for (p, q) in pairs {
            p.unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&q.unwrap().into_data(), tol);
        }
        for (p, q) in [(&ours.gamma, &theirs.gamma), (&ours.beta, &theirs.beta)] {
            p.val()
                .grad(&ga)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&q.val().grad(&gb).unwrap().into_data(), tol);
        }
        for (p, q) in [
            (&ours.running_mean, &theirs.running_mean),
            (&ours.running_var, &theirs.running_var),
        ] {
            p.value_sync()
                .into_data()
                .assert_approx_eq::<f32>(&q.value_sync().into_data(), tol);
        }
        // Without autodiff it is burn's inference path, running statistics untouched.
        let plain = Device::flex();
        let bn = bn_with_stats(5, &plain);
        let before = bn.running_mean.value().into_data();
        let x = Tensor::<4>::random([2, 5, 3, 3], Distribution::Default, &plain);
        batch_norm(&bn, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&bn.forward(x).into_data(), tol);
        assert_eq!(bn.running_mean.value().into_data(), before);
    }

    /// A MobileNet / DS-CNN block computed by our kernels (its activations stored channels
    /// last from the depthwise on: BatchNorm, pointwise GEMM and depthwise read and return that
    /// layout, gradients included) equals the block composed of burn's ops: values and the
    /// gradients of the input, both weights, γ and β. Input stored channels first and last,
    /// stride 1 and 2, both activations.
    #[test]
    fn channels_last_block_equals_burn_ops() {
        use crate::ops::conv::{ConvSpec, conv2d};
        use burn::tensor::module::conv2d as burn_conv2d;
        use burn::tensor::ops::ConvOptions;
        let device = Device::flex().autodiff();
        device.seed(21);
        for (stride, act, stored_last) in [
            (1, Activation::Relu, false),
            (2, Activation::Relu6, false),
            (1, Activation::Relu6, true),
            (2, Activation::Relu, true),
        ] {
            let (n, c, co, h, w) = (3, 5, 7, 9, 6);
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.5, 2.0), &device)
                .require_grad();
            let wd = Tensor::<4>::random([c, 1, 3, 3], Distribution::Normal(0.0, 0.6), &device)
                .require_grad();
            let wp = Tensor::<4>::random([co, c, 1, 1], Distribution::Normal(0.0, 0.6), &device)
                .require_grad();
            let (bn1, bn2) = (bn_with_stats(c, &device), bn_with_stats(co, &device));
            let dw = ConvSpec {
                stride: [stride, stride],
                padding: [(1, 1), (1, 1)],
                dilation: [1, 1],
                groups: c,
            };
            let pw = ConvSpec {
                stride: [1, 1],
                padding: [(0, 0), (0, 0)],
                dilation: [1, 1],
                groups: 1,
            };
            let input = if stored_last {
                crate::ops::layout::channels_last(x.clone())
            } else {
                x.clone()
            };
            let y = conv2d(input, wd.clone(), None, &dw);
            let y = batch_norm_activated(&bn1, y, Some(act));
            let y = conv2d(y, wp.clone(), None, &pw);
            let ours = batch_norm_activated(&bn2, y, Some(act));
            let opts = |s: &ConvSpec| {
                ConvOptions::new_with_padding(s.stride, s.padding, s.dilation, s.groups)
            };
            let (r1, r2) = (bn1.clone(), bn2.clone());
            let reference = |y: Tensor<4>| match act {
                Activation::Relu => burn::tensor::activation::relu(y),
                Activation::Relu6 => y.clamp(0.0, 6.0),
            };
            let y = burn_conv2d(x.clone(), wd.clone(), None, opts(&dw));
            let y = reference(r1.forward(y));
            let y = burn_conv2d(y, wp.clone(), None, opts(&pw));
            let theirs = reference(r2.forward(y));
            let tol = burn::tensor::Tolerance::<f32>::absolute(2e-4).set_relative(2e-3);
            let what = format!("stride {stride}, {act:?}, stored channels last {stored_last}");
            ours.clone()
                .into_data()
                .assert_approx_eq::<f32>(&theirs.clone().into_data(), tol);
            let g = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ga = (ours * g.clone()).sum().backward();
            let gb = (theirs * g).sum().backward();
            let data4 = |t: Option<Tensor<4>>| t.map(|t| t.into_data());
            let data1 = |t: Option<Tensor<1>>| t.map(|t| t.into_data());
            for (name, a, b) in [
                ("input", data4(x.grad(&ga)), data4(x.grad(&gb))),
                ("depthwise weight", data4(wd.grad(&ga)), data4(wd.grad(&gb))),
                ("pointwise weight", data4(wp.grad(&ga)), data4(wp.grad(&gb))),
                (
                    "gamma 1",
                    data1(bn1.gamma.val().grad(&ga)),
                    data1(r1.gamma.val().grad(&gb)),
                ),
                (
                    "beta 2",
                    data1(bn2.beta.val().grad(&ga)),
                    data1(r2.beta.val().grad(&gb)),
                ),
            ] {
                let (a, b) = (a.expect(name), b.expect(name));
                assert_eq!(a.shape(), b.shape(), "{what}: {name}");
                a.assert_approx_eq::<f32>(&b, tol);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The backward kernel the CPU runs (AVX-512 where present) equals the portable loops:
        /// input gradients and both sums, for every activation, planes with a tail of 1..15
        /// values, gradients partly masked by the activation, and the output written over the
        /// gradient buffer as the op does.
        #[test]
        fn fast_backward_equals_portable(
            n in 1usize..4,
            c in 1usize..7,
            hw in 1usize..40,
            act in 0u8..3,
            seed in 0u64..1000,
        ) {
            let len = n * c * hw;
            let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let mut next = || {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 3.0
            };
            let xs: Vec<f32> = (0..len).map(|_| next()).collect();
            let dys: Vec<f32> = (0..len).map(|_| next()).collect();
            let ks: Vec<[f32; 6]> = (0..c)
                .map(|_| [next() * 0.3, next().abs() + 0.5, next() + 4.0, next(), 1e-3, (n * hw) as f32])
                .collect();
            let p = Planes { n, c, hw, ch: 0 };
            let mut want = vec![0f32; len];
            let sums_want = backward_block_portable(p, &xs, &dys, Out(want.as_mut_ptr()), &ks, act);
            let mut got = dys.clone();
            let ptr = got.as_mut_ptr();
            let sums_got = backward_block_fast(p, &xs, Grad(ptr), Out(ptr), &ks, act);
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()));
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                prop_assert!(close(*a, *b), "dx[{i}]: {a} vs {b}");
            }
            for ((a, b), (x, y)) in sums_got.iter().zip(&sums_want) {
                prop_assert!(close(*a, *x) && close(*b, *y), "sums ({a}, {b}) vs ({x}, {y})");
            }
        }
    }
}
