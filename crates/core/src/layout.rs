//! `[A, B, K]` → `[B, A, K]` as one burn backend-extension op on `flex`, a row copy per
//! `(a, b)`.
//!
//! The pointwise convolution runs as one GEMM over `[C, N·H·W]` (see [`crate::conv`]), so its
//! input and output change between `[N, C, H·W]` and `[C, N, H·W]`, and so do their gradients.
//! burn's `swap_dims` + `reshape` make that copy element by element (`copy_2d_tiled`); here each
//! of the `A·B` rows of `K` contiguous values is one `copy_from_slice`, split over rayon tasks.
//! The gradient of the swap is the same swap. Other devices never reach the op: [`swap_outer`]
//! calls `swap_dims` for them.

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::extension::{contiguous_f32, has_flex_kernels, zeros_f32};

const OP: &str = "swap_outer";

/// The swap of the two outer dimensions of a rank-3 tensor, as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait LayoutOps: Backend {
    /// `x` `[A, B, K]` → `[B, A, K]`, contiguous.
    fn swap_outer_dims(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl LayoutOps for burn::backend::Flex {
    fn swap_outer_dims(x: FlexTensor) -> FlexTensor {
        use burn::backend::TensorMetadata;
        let shape = x.shape();
        let (a, b, k) = (shape[0], shape[1], shape[2]);
        let x = contiguous_f32(x, OP);
        let src = x.as_slice::<f32>().expect("contiguous f32");
        let mut out = zeros_f32([b, a, k]);
        if k > 0 {
            out.storage_mut::<f32>()
                .par_chunks_mut(a * k)
                .enumerate()
                .for_each(|(j, dst)| {
                    for (i, row) in dst.chunks_exact_mut(k).enumerate() {
                        row.copy_from_slice(&src[(i * b + j) * k..][..k]);
                    }
                });
        }
        out
    }
}

#[derive(Debug)]
struct SwapBackward;

impl<B: Backend + LayoutOps> Backward<B, 1> for SwapBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| {
            B::swap_outer_dims(grad)
        });
    }
}

impl<B: Backend + LayoutOps, C: CheckpointStrategy> LayoutOps for Autodiff<B, C> {
    fn swap_outer_dims(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let guard = x.node();
        let x = x.into_primitive();
        SwapBackward
            .prepare::<C>([guard])
            .compute_bound()
            .stateless(B::swap_outer_dims(x))
    }
}

/// `x` `[A, B, K]` as `[B, A, K]`: on flex a contiguous copy by rows (differentiable), on other
/// devices burn's `swap_dims(0, 1)`.
pub fn swap_outer(x: Tensor<3>) -> Tensor<3> {
    if !has_flex_kernels(&x.device()) {
        return x.swap_dims(0, 1);
    }
    Tensor::from_dispatch(<Dispatch as LayoutOps>::swap_outer_dims(x.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// Values and gradients equal burn's `swap_dims(0, 1)`.
    #[test]
    fn equals_swap_dims() {
        let device = Device::flex().autodiff();
        device.seed(5);
        let base = Tensor::<3>::random([7, 5, 13], Distribution::Default, &device);
        let up = Tensor::<3>::random([5, 7, 13], Distribution::Default, &device);
        let run = |ours: bool| {
            let x = base.clone().detach().require_grad();
            let y = if ours {
                swap_outer(x.clone())
            } else {
                x.clone().swap_dims(0, 1)
            };
            let g = (y.clone() * up.clone()).sum().backward();
            (
                crate::host::to_vec_f32(y.inner()),
                crate::host::to_vec_f32(x.grad(&g).expect("gradient")),
            )
        };
        assert_eq!(run(true), run(false));
    }
}
