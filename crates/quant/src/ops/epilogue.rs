//! The output epilogue of a QAT layer over a folded `ConvBn` with a fused ReLU, as one burn
//! backend-extension op: `fake_quant(relu(y + shift))`, `shift` `[channels]` broadcast over
//! dimension 1 of the convolution output `y` `[N, C, …]`.
//!
//! Composed, that is an add pass (and its allocation), the range's reductions over the sum, the
//! fused ReLU + fake-quant pass, and in the backward pass the fake-quant mask and a reduction
//! of the gradient over `[0, 2, 3]` for the shift. Here: one pass for the per-channel
//! `[min, max]` of `y` (the range of `y + shift` follows exactly, since rounding a sum is
//! monotonic), one pass forward, and one backward pass that writes the gradient of `y` and
//! sums the shift's per channel.
//!
//! Values, the range and the gradient of `y` are bit-identical to the composed ops (`y + shift`
//! in f32, then [`super::fused::fake_quant_relu_fused`]); the shift's gradient is the same sum
//! in another order (f64 per `(n, c)` plane, planes in order: deterministic), equal within
//! rounding. Only `flex` has the kernels; elsewhere the caller composes burn ops.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use collab_core::ops::extension::{contiguous_f32, on_flex, untracked, zeros_f32};
use collab_core::ops::layout::{channels_first, channels_last_buffer, is_channels_last};

use crate::QuantParams;
use crate::params::{PARALLEL_CHUNK, clamp_bounds, fake_quant_one};

const OP: &str = "fake_quant_shift_relu";

/// The epilogue as backend operations (see the module documentation). `y` is `[N, C, …]`,
/// `shift` `[C]`; `inner` is the number of elements per `(n, c)` plane (the product of the
/// dimensions after 1).
#[backend_extension(Flex, Autodiff)]
pub trait ShiftReluQuantOps: Backend {
    /// Per channel, `[min, max]` of `y` over everything but dimension 1: `[C, 2]` (NaN for a
    /// channel that holds a NaN). Not differentiated.
    fn channel_min_max(y: FloatTensor<Self>, inner: usize) -> FloatTensor<Self>;

    /// `relu(y + shift)` (`min(relu(y + shift), top)` for a finite `top`: ReLU6 with `top = 6`)
    /// quantized to `[qmin, qmax]` and dequantized; the shape of `y`.
    #[allow(clippy::too_many_arguments)]
    fn fake_quant_shift_relu(
        y: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        inner: usize,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        top: f32,
    ) -> FloatTensor<Self>;

    /// The gradients of `y` and `shift`: `grad` where `v = y + shift` is inside `[low, high]`
    /// and above 0 (with a finite `top`, inside `[0, top]`) or NaN, 0 elsewhere; and that summed
    /// per channel.
    fn fake_quant_shift_relu_backward(
        y: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        inner: usize,
        low: f32,
        high: f32,
        top: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Whole `(n, c)` planes of `inner` elements per rayon task: about [`PARALLEL_CHUNK`] elements
/// (a plane of DS-CNN is 65 elements; one task each would drown the work in scheduling).
fn task_len(inner: usize) -> usize {
    let inner = inner.max(1);
    inner * (PARALLEL_CHUNK / inner).max(1)
}

/// Independent accumulators per plane loop: lets the compiler keep several vector lanes in
/// flight instead of one serial dependency chain.
const LANES: usize = 16;

collab_core::widest! {
    /// `(min, max)` of a plane, NaN for both if it holds a NaN.
    fn plane_min_max(plane: &[f32]) -> (f32, f32) {
        let mut low = [f32::INFINITY; LANES];
        let mut high = [f32::NEG_INFINITY; LANES];
        let mut nan = false;
        let mut chunks = plane.chunks_exact(LANES);
        for chunk in &mut chunks {
            for l in 0..LANES {
                let v = chunk[l];
                nan |= v.is_nan();
                low[l] = if v < low[l] { v } else { low[l] };
                high[l] = if v > high[l] { v } else { high[l] };
            }
        }
        for v in chunks.remainder() {
            nan |= v.is_nan();
            low[0] = if *v < low[0] { *v } else { low[0] };
            high[0] = if *v > high[0] { *v } else { high[0] };
        }
        if nan {
            return (f32::NAN, f32::NAN);
        }
        let low = low.iter().fold(f32::INFINITY, |a, b| a.min(*b));
        let high = high.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
        (low, high)
    }
}

/// `relu(v)`, capped at `top` (ReLU6 for `top = 6`; infinite for ReLU). burn's relu and clamp
/// on flex: NaN propagates, all else not above 0 becomes 0 (ReLU6's -0.0 quantizes as 0.0).
#[inline(always)]
fn activated(v: f32, top: f32) -> f32 {
    let v = if v.is_nan() | (v > 0.0) { v } else { 0.0 };
    if v > top { top } else { v }
}

collab_core::widest! {
    /// One plane of the forward pass: `fake_quant(act(y + shift))`.
    #[allow(clippy::too_many_arguments)]
    fn plane_forward(
        d: &mut [f32],
        y: &[f32],
        shift: f32,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        top: f32,
    ) -> () {
        for (d, y) in d.iter_mut().zip(y) {
            let v = activated(*y + shift, top);
            *d = fake_quant_one(v, scale, zero_point, qmin, qmax);
        }
    }
}

collab_core::widest! {
    /// One plane of the backward pass: `dy` where the gradient passes, and its sum (f32 lanes
    /// over the plane, then f64; a fixed order).
    fn plane_backward(d: &mut [f32], y: &[f32], g: &[f32], shift: f32, bounds: [f32; 3]) -> f64 {
        let [low, high, top] = bounds;
        let mut acc = [0f32; LANES];
        let mut dc = d.chunks_exact_mut(LANES);
        let mut yc = y.chunks_exact(LANES);
        let mut gc = g.chunks_exact(LANES);
        for ((d, y), g) in (&mut dc).zip(&mut yc).zip(&mut gc) {
            let d: &mut [f32; LANES] = d.try_into().expect("LANES elements");
            let y: &[f32; LANES] = y.try_into().expect("LANES elements");
            let g: &[f32; LANES] = g.try_into().expect("LANES elements");
            for l in 0..LANES {
                let v = if passes(y[l] + shift, low, high, top) {
                    g[l]
                } else {
                    0.0
                };
                d[l] = v;
                acc[l] += v;
            }
        }
        let mut rest = 0f64;
        for ((d, y), g) in dc
            .into_remainder()
            .iter_mut()
            .zip(yc.remainder())
            .zip(gc.remainder())
        {
            *d = if passes(*y + shift, low, high, top) {
                *g
            } else {
                0.0
            };
            rest += f64::from(*d);
        }
        acc.iter().map(|v| f64::from(*v)).sum::<f64>() + rest
    }
}

/// Where the gradient passes, as burn's `clamp` and `relu` backward passes decide it (ReLU:
/// above 0; ReLU6, a finite `top`: burn's clamp keeps `[0, top]`, 0 included).
/// Branch-free (`&`, `|` on the comparisons) so that the loops vectorize.
#[inline(always)]
fn passes(v: f32, low: f32, high: f32, top: f32) -> bool {
    let active = if top.is_finite() {
        (v >= 0.0) & (v <= top)
    } else {
        v > 0.0
    };
    // NaN passes everywhere (neither clamp nor relu masks it).
    v.is_nan() | ((v >= low) & (v <= high) & active)
}

impl ShiftReluQuantOps for burn::backend::Flex {
    fn channel_min_max(y: FlexTensor, inner: usize) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let channels = y.shape()[1];
        if is_channels_last(&y) {
            return channels_last::min_max(channels_last_buffer(y, OP), channels);
        }
        let y = contiguous_f32(y, OP);
        let src = y.as_slice::<f32>().expect("contiguous f32");
        let planes: Vec<(f32, f32)> = src
            .par_chunks(task_len(inner))
            .flat_map_iter(|task| task.chunks(inner.max(1)).map(plane_min_max))
            .collect();
        let mut out = vec![f32::INFINITY; channels * 2];
        for c in 0..channels {
            out[2 * c + 1] = f32::NEG_INFINITY;
        }
        for (i, (low, high)) in planes.iter().enumerate() {
            let c = i % channels;
            // NaN sticks: `f32::min` would drop it.
            out[2 * c] = if low.is_nan() || out[2 * c].is_nan() {
                f32::NAN
            } else {
                out[2 * c].min(*low)
            };
            out[2 * c + 1] = if high.is_nan() || out[2 * c + 1].is_nan() {
                f32::NAN
            } else {
                out[2 * c + 1].max(*high)
            };
        }
        FlexTensor::from_data(TensorData::new(out, [channels, 2]))
    }

    fn fake_quant_shift_relu(
        y: FlexTensor,
        shift: FlexTensor,
        inner: usize,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        top: f32,
    ) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let shift = contiguous_f32(shift, OP);
        let s = shift.as_slice::<f32>().expect("contiguous f32");
        if is_channels_last(&y) {
            let q = [scale, zero_point as f32, qmin as f32, qmax as f32, top];
            let out = channels_last::forward(channels_last_buffer(y, OP), s, q);
            return out.permute(&[0, 3, 1, 2]);
        }
        let y = contiguous_f32(y, OP);
        let channels = s.len();
        let src = y.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(y.shape());
        let task = task_len(inner);
        let inner = inner.max(1);
        out.storage_mut::<f32>()
            .par_chunks_mut(task)
            .zip(src.par_chunks(task))
            .enumerate()
            .for_each(|(t, (d, y))| {
                let first = t * task / inner;
                for (p, (d, y)) in d.chunks_mut(inner).zip(y.chunks(inner)).enumerate() {
                    let shift = s[(first + p) % channels];
                    plane_forward(d, y, shift, scale, zero_point, qmin, qmax, top);
                }
            });
        out
    }

    fn fake_quant_shift_relu_backward(
        y: FlexTensor,
        shift: FlexTensor,
        grad: FlexTensor,
        inner: usize,
        low: f32,
        high: f32,
        top: f32,
    ) -> (FlexTensor, FlexTensor) {
        use burn::backend::TensorMetadata;
        let shift = contiguous_f32(shift, OP);
        let s = shift.as_slice::<f32>().expect("contiguous f32");
        if is_channels_last(&y) {
            let y = channels_last_buffer(y, OP);
            let grad = channels_last_buffer(grad, OP);
            let (dy, ds) = channels_last::backward(y, grad, s, [low, high, top]);
            return (
                dy.permute(&[0, 3, 1, 2]),
                FlexTensor::from_data(TensorData::new(ds, [s.len()])),
            );
        }
        let y = contiguous_f32(y, OP);
        let grad = channels_first(grad, OP);
        let channels = s.len();
        let ys = y.as_slice::<f32>().expect("contiguous f32");
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let mut dy = zeros_f32(y.shape());
        let task = task_len(inner);
        let inner = inner.max(1);
        let planes: Vec<f64> = dy
            .storage_mut::<f32>()
            .par_chunks_mut(task)
            .zip(ys.par_chunks(task).zip(gs.par_chunks(task)))
            .enumerate()
            .flat_map_iter(|(t, (d, (y, g)))| {
                let first = t * task / inner;
                d.chunks_mut(inner)
                    .zip(y.chunks(inner).zip(g.chunks(inner)))
                    .enumerate()
                    .map(move |(p, (d, (y, g)))| {
                        plane_backward(d, y, g, s[(first + p) % channels], [low, high, top])
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut ds = vec![0f64; channels];
        for (i, sum) in planes.iter().enumerate() {
            ds[i % channels] += sum;
        }
        let ds: Vec<f32> = ds.into_iter().map(|v| v as f32).collect();
        (dy, FlexTensor::from_data(TensorData::new(ds, [channels])))
    }
}

/// The three kernels for `y` stored channels last (`collab_core::ops::layout`): `M = N·H·W` rows
/// of `C` values, channel `j` at position `j` of every row. Per-channel results go down the
/// rows in fixed chunks combined in order (deterministic for any thread count); values are
/// computed exactly as the channels-first kernels compute them.
mod channels_last {
    use super::*;

    /// Rows per rayon task.
    const ROWS: usize = 64;

    collab_core::widest! {
        /// One chunk's per-channel minimum, maximum and NaN flag (rows of `c`).
        fn chunk_min_max(chunk: &[f32], c: usize) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
            let (mut low, mut high) = (vec![f32::INFINITY; c], vec![f32::NEG_INFINITY; c]);
            let mut nan = vec![0u8; c];
            for row in chunk.chunks_exact(c) {
                for (((l, h), n), v) in low.iter_mut().zip(high.iter_mut()).zip(nan.iter_mut()).zip(row) {
                    *n |= v.is_nan() as u8;
                    *l = if *v < *l { *v } else { *l };
                    *h = if *v > *h { *v } else { *h };
                }
            }
            (low, high, nan)
        }
    }

    /// Per-channel `[min, max]` (`[C, 2]`), NaN for both where the channel holds a NaN.
    pub(super) fn min_max(y: FlexTensor, c: usize) -> FlexTensor {
        let ys = y.as_slice::<f32>().expect("contiguous f32");
        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<u8>)> = ys
            .par_chunks(ROWS * c)
            .map(|chunk| chunk_min_max(chunk, c))
            .collect();
        let mut out = vec![0f32; 2 * c];
        for j in 0..c {
            let (mut low, mut high, mut nan) = (f32::INFINITY, f32::NEG_INFINITY, false);
            for (l, h, n) in &parts {
                low = low.min(l[j]);
                high = high.max(h[j]);
                nan |= n[j] != 0;
            }
            let (low, high) = if nan {
                (f32::NAN, f32::NAN)
            } else {
                (low, high)
            };
            out[2 * j] = low;
            out[2 * j + 1] = high;
        }
        FlexTensor::from_data(TensorData::new(out, [c, 2]))
    }

    collab_core::widest! {
        /// One chunk of the forward: rows of `s.len()` values.
        /// `q = [scale, zero point, qmin, qmax, top]`.
        fn chunk_forward(src: &[f32], d: &mut [f32], s: &[f32], q: [f32; 5]) -> () {
            let c = s.len();
            let [scale, zp, qmin, qmax, top] = q;
            let (zp, qmin, qmax) = (zp as i32, qmin as i32, qmax as i32);
            for (drow, row) in d.chunks_exact_mut(c).zip(src.chunks_exact(c)) {
                for ((d, v), shift) in drow.iter_mut().zip(row).zip(s) {
                    let v = activated(*v + shift, top);
                    *d = fake_quant_one(v, scale, zp, qmin, qmax);
                }
            }
        }
    }

    collab_core::widest! {
        /// One chunk of the backward: `d` and the chunk's per-channel sums of it.
        fn chunk_backward(d: &mut [f32], yc: &[f32], gc: &[f32], s: &[f32], low: f32, high: f32, top: f32) -> Vec<f32> {
            let c = s.len();
            let mut acc = vec![0f32; c];
            let rows = d.chunks_exact_mut(c).zip(yc.chunks_exact(c).zip(gc.chunks_exact(c)));
            for (drow, (yrow, grow)) in rows {
                let values = drow.iter_mut().zip(yrow).zip(grow).zip(s).zip(acc.iter_mut());
                for ((((d, y), g), shift), a) in values {
                    *d = if passes(*y + shift, low, high, top) { *g } else { 0.0 };
                    *a += *d;
                }
            }
            acc
        }
    }

    /// `fake_quant(relu(y + shift))` in buffer order; `q = [scale, zero point, qmin, qmax]`.
    pub(super) fn forward(y: FlexTensor, s: &[f32], q: [f32; 5]) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let c = s.len();
        let ys = y.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(y.shape());
        out.storage_mut::<f32>()
            .par_chunks_mut(ROWS * c)
            .zip(ys.par_chunks(ROWS * c))
            .for_each(|(d, src)| chunk_forward(src, d, s, q));
        out
    }

    /// The gradient of `y` (buffer order) and of the shift.
    pub(super) fn backward(
        y: FlexTensor,
        grad: FlexTensor,
        s: &[f32],
        [low, high, top]: [f32; 3],
    ) -> (FlexTensor, Vec<f32>) {
        use burn::backend::TensorMetadata;
        let c = s.len();
        let ys = y.as_slice::<f32>().expect("contiguous f32");
        let gs = grad.as_slice::<f32>().expect("contiguous f32");
        let mut dy = zeros_f32(y.shape());
        let parts: Vec<Vec<f32>> = dy
            .storage_mut::<f32>()
            .par_chunks_mut(ROWS * c)
            .zip(ys.par_chunks(ROWS * c).zip(gs.par_chunks(ROWS * c)))
            .map(|(d, (yc, gc))| chunk_backward(d, yc, gc, s, low, high, top))
            .collect();
        let mut ds = vec![0f64; c];
        for part in &parts {
            for (t, p) in ds.iter_mut().zip(part) {
                *t += f64::from(*p);
            }
        }
        (dy, ds.into_iter().map(|v| v as f32).collect())
    }
}

#[derive(Debug)]
struct ShiftReluQuantBackward;

impl<B: Backend + ShiftReluQuantOps> Backward<B, 2> for ShiftReluQuantBackward {
    /// `y`, `shift`, the plane size, the range's dequantized ends and the activation's top.
    type State = (
        B::FloatTensorPrimitive,
        B::FloatTensorPrimitive,
        usize,
        [f32; 3],
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, shift, inner, [low, high, top]) = ops.state;
        let grad = grads.consume::<B>(&ops.node);
        let (dy, ds) = B::fake_quant_shift_relu_backward(y, shift, grad, inner, low, high, top);
        let [y_node, shift_node] = ops.parents;
        if let Some(node) = y_node {
            grads.register::<B>(node.id, dy);
        }
        if let Some(node) = shift_node {
            grads.register::<B>(node.id, ds);
        }
    }
}

impl<B: Backend + ShiftReluQuantOps, C: CheckpointStrategy> ShiftReluQuantOps for Autodiff<B, C> {
    fn channel_min_max(y: FloatTensor<Self>, inner: usize) -> FloatTensor<Self> {
        let guards = [y.node()];
        let out = B::channel_min_max(y.into_primitive(), inner);
        untracked::<B, C, 1>(guards, out)
    }

    fn fake_quant_shift_relu(
        y: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        inner: usize,
        scale: f32,
        zero_point: i32,
        qmin: i32,
        qmax: i32,
        top: f32,
    ) -> FloatTensor<Self> {
        let (low, high) = clamp_bounds(scale, zero_point, qmin, qmax);
        let guards = [y.node(), shift.node()];
        let (y, shift) = (y.into_primitive(), shift.into_primitive());
        match ShiftReluQuantBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::fake_quant_shift_relu(
                    y.clone(),
                    shift.clone(),
                    inner,
                    scale,
                    zero_point,
                    qmin,
                    qmax,
                    top,
                );
                prep.finish((y, shift, inner, [low, high, top]), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fake_quant_shift_relu(
                y, shift, inner, scale, zero_point, qmin, qmax, top,
            )),
        }
    }

    fn fake_quant_shift_relu_backward(
        y: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        inner: usize,
        low: f32,
        high: f32,
        top: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        // Second derivatives are not needed: both results pass nothing back.
        let (dy, ds) = B::fake_quant_shift_relu_backward(
            y.clone().into_primitive(),
            shift.clone().into_primitive(),
            grad.clone().into_primitive(),
            inner,
            low,
            high,
            top,
        );
        let guards = || [y.node(), shift.node(), grad.node()];
        (
            untracked::<B, C, 3>(guards(), dy),
            untracked::<B, C, 3>(guards(), ds),
        )
    }
}

/// Elements per `(n, c)` plane of a rank-`D` activation.
fn plane<const D: usize>(y: &Tensor<D>) -> usize {
    y.dims()[2..].iter().product()
}

/// `(min, max)` of `y + shift` over all of `y` (`shift` broadcast over dimension 1) from one
/// pass over `y`; `None` where the device has no kernel.
///
/// # Shapes
/// `y`: `[N, C, …]`; `shift`: `[C]`.
pub fn shifted_range<const D: usize>(y: &Tensor<D>, shift: &Tensor<1>) -> Option<(f32, f32)> {
    if D < 2 {
        return None;
    }
    on_flex(&y.device(), || {
        let shift = collab_core::host::to_vec_f32(shift.clone());
        folded_range(y, Some(&shift))
    })
}

/// `(min, max)` over all of a rank-4 `y` from the per-channel kernel (either storage order,
/// one pass); NaN for both if `y` holds a NaN. `None` for other ranks or devices.
pub fn channel_range<const D: usize>(y: &Tensor<D>) -> Option<(f32, f32)> {
    if D != 4 {
        return None;
    }
    on_flex(&y.device(), || folded_range(y, None))
}

/// The per-channel `[min, max]` of `y` (flex), each plus `shift[c]` when given, folded into one
/// `(min, max)`; NaN for both if any is NaN.
fn folded_range<const D: usize>(y: &Tensor<D>, shift: Option<&[f32]>) -> (f32, f32) {
    let per_channel: Tensor<2> =
        Tensor::from_dispatch(<Dispatch as ShiftReluQuantOps>::channel_min_max(
            y.clone().without_autodiff().into_dispatch(),
            plane(y),
        ));
    let per_channel = collab_core::host::to_vec_f32(per_channel);
    let mut low = f32::INFINITY;
    let mut high = f32::NEG_INFINITY;
    for (c, pair) in per_channel.chunks_exact(2).enumerate() {
        // fl(min y + s) = min fl(y + s): rounding a sum is monotonic.
        let (a, b) = match shift {
            Some(s) => (pair[0] + s[c], pair[1] + s[c]),
            None => (pair[0], pair[1]),
        };
        if a.is_nan() || b.is_nan() {
            return (f32::NAN, f32::NAN);
        }
        low = low.min(a);
        high = high.max(b);
    }
    (low, high)
}

/// `relu(y + shift)` (with `six`, `relu6(y + shift)`) fake-quantized with the per-tensor
/// `params` in one fused op (see the module documentation); `None` where the device has no
/// kernel or the parameters are per channel.
///
/// # Shapes
/// `y`: `[N, C, …]`; `shift`: `[C]`; the output has `y`'s shape.
pub fn fake_quant_shift_relu_fused<const D: usize>(
    y: Tensor<D>,
    shift: Tensor<1>,
    params: &QuantParams,
    six: bool,
) -> Option<Tensor<D>> {
    if D < 2 || params.scale.len() != 1 {
        return None;
    }
    let inner = plane(&y);
    on_flex(&y.device(), || {
        Tensor::from_dispatch(<Dispatch as ShiftReluQuantOps>::fake_quant_shift_relu(
            y.into_dispatch(),
            shift.into_dispatch(),
            inner,
            params.scale[0],
            params.zero_point[0],
            params.qmin,
            params.qmax,
            if six { 6.0 } else { f32::INFINITY },
        ))
    })
}
