//! The cluster transform (nearest centroid per weight, straight-through gradient to the weight,
//! per-cluster sums to the centroids) as one burn backend-extension op.
//!
//! Composed from burn ops (`ClusterTransform`'s fallback), every training step builds a
//! `[rows, cols, k]` distance tensor, its argmin, a gather from the centroids expanded to
//! `[rows, cols, k]`, and in the backward pass a scatter into a zeroed `[rows, cols, k]` tensor
//! summed over the columns: about `3k` passes over the weight. On `flex` this op does one pass
//! forward (nearest centroid and its value, keeping the index), one for the weight gradient and
//! one for the centroid gradient, with rayon.
//!
//! Values and the weight gradient are bit-identical to the composed ops (ties to the lower
//! centroid index, as burn's `argmin`; the value is `c + (w − w)` as the composed straight-through
//! sum computes it). The centroid gradient is the same sum in another order: each row summed in
//! f64 over fixed chunks, deterministic for any number of threads, and equal to burn's f32 sum
//! within rounding.
//!
//! Only `flex` (with or without autodiff) has the kernel; [`cluster_fused`] returns `None` on
//! other devices and the caller composes burn ops instead.

use burn::backend::{
    Backend, Dispatch, backend_extension,
    tensor::{BoolTensor, FloatTensor, IntTensor},
};
use burn::tensor::{Bool, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use collab_core::ops::extension::{contiguous_f32, on_flex, untracked, zeros_f32, zeros_i32};

const OP: &str = "cluster_assign";

/// Weights per rayon task.
const CHUNK: usize = 1 << 13;

/// The cluster transform as backend operations (see the module documentation).
#[backend_extension(Flex, Autodiff)]
pub trait ClusterOps: Backend {
    /// Every weight of `view` `[rows, cols]` replaced by the nearest centroid of its row in
    /// `centroids` `[rows, k]`, with the index chosen, `[rows, cols]` (i32). Weights where
    /// `zeros` (`[rows, cols]`, or empty for none) is set become 0 with index 0; with
    /// `pinned_first` the centroid 0 of every row is the fixed zero that only those weights
    /// take.
    fn cluster_assign(
        view: FloatTensor<Self>,
        centroids: FloatTensor<Self>,
        zeros: BoolTensor<Self>,
        pinned_first: bool,
    ) -> (FloatTensor<Self>, IntTensor<Self>);

    /// The weight gradient: `grad` `[rows, cols]`, 0 where `zeros` is set.
    fn cluster_grad_weights(grad: FloatTensor<Self>, zeros: BoolTensor<Self>) -> FloatTensor<Self>;

    /// The centroid gradient `[rows, k]`: per row, the sum of `grad` over the weights that chose
    /// each centroid (0 for the pinned one and for weights where `zeros` is set).
    fn cluster_grad_centroids(
        grad: FloatTensor<Self>,
        index: IntTensor<Self>,
        zeros: BoolTensor<Self>,
        k: usize,
        pinned_first: bool,
    ) -> FloatTensor<Self>;
}

/// A zero mask's bytes in row-major order; `None` for the empty tensor that stands for none.
fn bool_bytes(t: &FlexTensor) -> Option<Vec<u8>> {
    use burn::backend::TensorMetadata;
    (t.shape().num_elements() > 0).then(|| t.to_contiguous().storage::<u8>().to_vec())
}

impl ClusterOps for burn::backend::Flex {
    fn cluster_assign(
        view: FlexTensor,
        centroids: FlexTensor,
        zeros: FlexTensor,
        pinned_first: bool,
    ) -> (FlexTensor, FlexTensor) {
        use burn::backend::TensorMetadata;
        let view = contiguous_f32(view, OP);
        let centroids = contiguous_f32(centroids, OP);
        let shape = view.shape();
        let cols = shape[1];
        let k = centroids.shape()[1];
        let w = view.as_slice::<f32>().expect("contiguous f32");
        let c = centroids.as_slice::<f32>().expect("contiguous f32");
        let zeros = bool_bytes(&zeros);
        let mut out = zeros_f32(shape.clone());
        let mut index = zeros_i32(shape);
        out.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(index.storage_mut::<i32>().par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, index))| {
                let first = chunk * CHUNK;
                for (i, (o, idx)) in out.iter_mut().zip(index.iter_mut()).enumerate() {
                    let at = first + i;
                    let row = &c[(at / cols) * k..(at / cols + 1) * k];
                    let v = w[at];
                    if zeros.as_ref().is_some_and(|z| z[at] != 0) {
                        *o = 0.0;
                        *idx = 0;
                        continue;
                    }
                    // burn's argmin over |w − c_j|: the first smallest; the pinned zero is
                    // never chosen (its distance is infinite).
                    let distance = |j: usize| {
                        if pinned_first && j == 0 {
                            f32::INFINITY
                        } else {
                            (v - row[j]).abs()
                        }
                    };
                    let mut best = distance(0);
                    let mut best_j = 0;
                    for j in 1..k {
                        let d = distance(j);
                        if d.is_nan() {
                            best_j = j;
                            break;
                        }
                        if d < best {
                            best = d;
                            best_j = j;
                        }
                    }
                    if best.is_nan() {
                        best_j = 0;
                    }
                    // The composed op's value: centroid + (w − w), which is the centroid with
                    // -0.0 turned into 0.0, and NaN for a non-finite weight.
                    #[allow(clippy::eq_op)]
                    let straight_through = v - v;
                    *o = row[best_j] + straight_through;
                    *idx = best_j as i32;
                }
            });
        (out, index)
    }

    fn cluster_grad_weights(grad: FlexTensor, zeros: FlexTensor) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let Some(z) = bool_bytes(&zeros) else {
            return grad;
        };
        let grad = contiguous_f32(grad, OP);
        let g = grad.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32(grad.shape());
        out.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(z.par_chunks(CHUNK)))
            .for_each(|(o, (g, z))| {
                for ((o, g), z) in o.iter_mut().zip(g).zip(z) {
                    *o = if *z != 0 { 0.0 } else { *g };
                }
            });
        out
    }

    fn cluster_grad_centroids(
        grad: FlexTensor,
        index: FlexTensor,
        zeros: FlexTensor,
        k: usize,
        pinned_first: bool,
    ) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let grad = contiguous_f32(grad, OP);
        let shape = grad.shape();
        let (rows, cols) = (shape[0], shape[1]);
        let g = grad.as_slice::<f32>().expect("contiguous f32");
        let idx = index.storage::<i32>();
        let zeros = bool_bytes(&zeros);
        // Per (row, chunk of the row) partial sums in f64, then each row's chunks in order.
        let chunks_per_row = cols.div_ceil(CHUNK).max(1);
        let partial: Vec<Vec<f64>> = (0..rows * chunks_per_row)
            .into_par_iter()
            .map(|task| {
                let (r, part) = (task / chunks_per_row, task % chunks_per_row);
                let start = r * cols + part * CHUNK;
                let end = (r * cols + cols).min(start + CHUNK);
                let mut sums = vec![0f64; k];
                for at in start..end {
                    if zeros.as_ref().is_some_and(|z| z[at] != 0) {
                        continue;
                    }
                    sums[idx[at] as usize] += f64::from(g[at]);
                }
                sums
            })
            .collect();
        let mut out = zeros_f32([rows, k]);
        let o = out.storage_mut::<f32>();
        for r in 0..rows {
            for j in 0..k {
                let sum: f64 = partial[r * chunks_per_row..(r + 1) * chunks_per_row]
                    .iter()
                    .map(|p| p[j])
                    .sum();
                o[r * k + j] = if pinned_first && j == 0 {
                    0.0
                } else {
                    sum as f32
                };
            }
        }
        out
    }
}

#[derive(Debug)]
struct ClusterBackward;

impl<B: Backend + ClusterOps> Backward<B, 2> for ClusterBackward {
    /// The chosen indices, the zero mask, `k` and whether centroid 0 is pinned.
    type State = (B::IntTensorPrimitive, B::BoolTensorPrimitive, usize, bool);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (index, zeros, k, pinned) = ops.state;
        let zeros_for_weights = zeros.clone();
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| B::cluster_grad_weights(grad, zeros_for_weights),
            |grad| B::cluster_grad_centroids(grad, index, zeros, k, pinned),
        );
    }
}

impl<B: Backend + ClusterOps, C: CheckpointStrategy> ClusterOps for Autodiff<B, C> {
    fn cluster_assign(
        view: FloatTensor<Self>,
        centroids: FloatTensor<Self>,
        zeros: BoolTensor<Self>,
        pinned_first: bool,
    ) -> (FloatTensor<Self>, IntTensor<Self>) {
        let k = {
            use burn::backend::TensorMetadata;
            centroids.shape()[1]
        };
        let guards = [view.node(), centroids.node()];
        let (out, index) = B::cluster_assign(
            view.into_primitive(),
            centroids.into_primitive(),
            zeros.clone(),
            pinned_first,
        );
        let out = match ClusterBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((index.clone(), zeros, k, pinned_first), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        (out, index)
    }

    fn cluster_grad_weights(grad: FloatTensor<Self>, zeros: BoolTensor<Self>) -> FloatTensor<Self> {
        let guards = [grad.node()];
        let out = B::cluster_grad_weights(grad.into_primitive(), zeros);
        untracked::<B, C, 1>(guards, out)
    }

    fn cluster_grad_centroids(
        grad: FloatTensor<Self>,
        index: IntTensor<Self>,
        zeros: BoolTensor<Self>,
        k: usize,
        pinned_first: bool,
    ) -> FloatTensor<Self> {
        let guards = [grad.node()];
        let out = B::cluster_grad_centroids(grad.into_primitive(), index, zeros, k, pinned_first);
        untracked::<B, C, 1>(guards, out)
    }
}

/// `view` `[rows, cols]` clustered with `centroids` `[rows, k]` in one fused op (see the module
/// documentation): the weight gradient passes straight through (0 at `zeros`), the centroids
/// get per-cluster sums. `pinned_first`: centroid 0 of each row is the fixed zero of
/// sparsity-preserving clustering. `None` where the device has no kernel.
///
/// # Shapes
/// `view`, `zeros`: `[rows, cols]`; `centroids`: `[rows, k]`; output `[rows, cols]`.
pub fn cluster_fused(
    view: Tensor<2>,
    centroids: Tensor<2>,
    zeros: Option<Tensor<2, Bool>>,
    pinned_first: bool,
) -> Option<Tensor<2>> {
    on_flex(&view.device(), || {
        let zeros = zeros.unwrap_or_else(|| Tensor::empty([0, 0], &view.device()));
        let (out, _index) = <Dispatch as ClusterOps>::cluster_assign(
            view.into_dispatch(),
            centroids.into_dispatch(),
            zeros.into_dispatch(),
            pinned_first,
        );
        Tensor::from_dispatch(out)
    })
}
