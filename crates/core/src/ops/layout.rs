//! Channels last on `flex`. A `[N, C, H, W]` tensor may be stored as a contiguous `[N, H, W, C]`
//! buffer viewed through a permutation ([`is_channels_last`]): its values, shape and every burn
//! op on it are unchanged, only where each value sits in memory. Our depthwise and BatchNorm
//! kernels read and write that layout directly, and the pointwise convolution is then one GEMM
//! `[N·H·W, C_in] × [C_in, C_out]` over the buffer, so a stack of depthwise-separable blocks
//! runs without a transpose between layers. [`channels_last`] converts a tensor once (on entry
//! to such a stack); ops that do not know the layout see a strided view and copy it, as for
//! any view. The conversion is a backend-extension op whose gradient passes through; other
//! devices never reach it ([`channels_last`] returns its input there).

use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, unary};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::cpu;
use super::extension::{contiguous_f32, dims4, from_vec_f32, has_flex_kernels, zeros_f32};

/// The conversion to channels last as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait LayoutOps: Backend {
    /// `x` `[N, C, H, W]` with the same values stored channels last ([`is_channels_last`]);
    /// returned as it is when it already is.
    fn channels_last(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether `t` is a rank-4 `f32` tensor `[N, C, H, W]` stored as a contiguous `[N, H, W, C]`
/// buffer from its first byte (strides `[H·W·C, 1, W·C, C]`; any stride on an axis of size 1).
pub fn is_channels_last(t: &FlexTensor) -> bool {
    let layout = t.layout();
    let shape = layout.shape();
    if shape.num_dims() != 4 || layout.start_offset() != 0 || t.dtype() != burn::tensor::DType::F32
    {
        return false;
    }
    let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
    let want = [h * w * c, 1, w * c, c];
    let sizes = [n, c, h, w];
    let dense = t.bytes().len() == n * c * h * w * 4;
    dense && (0..4).all(|i| sizes[i] == 1 || layout.strides()[i] == want[i] as isize)
}

/// A contiguous `[N, H, W, C]` buffer (`values`) as the `[N, C, H, W]` tensor it stores.
pub fn from_channels_last(values: Vec<f32>, [n, c, h, w]: [usize; 4]) -> FlexTensor {
    debug_assert_eq!(values.len(), n * c * h * w);
    from_vec_f32(values, [n, h, w, c]).permute(&[0, 3, 1, 2])
}

/// The values of `x` `[N, C, H, W]` as a contiguous `[N, H, W, C]` tensor: a view of its buffer
/// when it is stored channels last, else a transposed copy. `op` names the caller in messages.
pub fn channels_last_buffer(x: FlexTensor, op: &str) -> FlexTensor {
    if is_channels_last(&x) {
        return x.permute(&[0, 2, 3, 1]);
    }
    let dims = dims4(&x);
    let x = contiguous_f32(x, op);
    let values = to_channels_last(x.as_slice::<f32>().expect("contiguous f32"), dims);
    from_vec_f32(values, [dims[0], dims[2], dims[3], dims[1]])
}

/// For element-wise kernels: `x` as a contiguous buffer in its storage order (a tensor stored
/// channels last stays so, other views are copied channels first), and whether it was stored
/// channels last. Compute in buffer order, then [`restore_order`].
pub fn storage_order(x: FlexTensor, op: &str) -> (FlexTensor, bool) {
    if is_channels_last(&x) {
        (channels_last_buffer(x, op), true)
    } else {
        (contiguous_f32(x, op), false)
    }
}

/// A second operand (a gradient) in the buffer order [`storage_order`] chose for the first.
pub fn in_order(t: FlexTensor, stored_last: bool, op: &str) -> FlexTensor {
    if stored_last {
        channels_last_buffer(t, op)
    } else {
        channels_first(t, op)
    }
}

/// A result computed in buffer order back as the tensor it stores (see [`storage_order`]).
pub fn restore_order(out: FlexTensor, stored_last: bool) -> FlexTensor {
    if stored_last {
        out.permute(&[0, 3, 1, 2])
    } else {
        out
    }
}

/// `x` `[N, C, H, W]` as a contiguous `[N, C, H, W]` tensor (a transposed copy when it is
/// stored channels last; flex's strided copy for other views).
pub fn channels_first(x: FlexTensor, op: &str) -> FlexTensor {
    if is_channels_last(&x) && !x.is_contiguous() {
        let dims = dims4(&x);
        let buffer = x.permute(&[0, 2, 3, 1]);
        let mut out = zeros_f32(dims);
        to_channels_first(
            buffer.as_slice::<f32>().expect("contiguous f32"),
            dims,
            out.storage_mut::<f32>(),
        );
        return out;
    }
    contiguous_f32(x, op)
}

impl LayoutOps for burn::backend::Flex {
    fn channels_last(x: FlexTensor) -> FlexTensor {
        if is_channels_last(&x) {
            return x;
        }
        channels_last_buffer(x, "channels_last").permute(&[0, 3, 1, 2])
    }
}

#[derive(Debug)]
struct SameValues;

impl<B: Backend + LayoutOps> Backward<B, 1> for SameValues {
    type State = ();

    /// The values did not change: the gradient passes through as it is (in whatever layout).
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<B, _>(ops.parents, ops.node, grads, |grad| grad);
    }
}

impl<B: Backend + LayoutOps, C: CheckpointStrategy> LayoutOps for Autodiff<B, C> {
    fn channels_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let guard = x.node();
        let x = x.into_primitive();
        SameValues
            .prepare::<C>([guard])
            .compute_bound()
            .stateless(B::channels_last(x))
    }
}

/// `x` `[N, C, H, W]` with the same values, stored channels last on flex (see the module
/// documentation); unchanged on other devices. Differentiable: the gradient passes through.
pub fn channels_last(x: Tensor<4>) -> Tensor<4> {
    if !has_flex_kernels(&x.device()) {
        return x;
    }
    Tensor::from_dispatch(<Dispatch as LayoutOps>::channels_last(x.into_dispatch()))
}

/// `src` `[rows, cols]` → `dst` `[cols, rows]`: 8 × 8 blocks through AVX registers where the
/// CPU has AVX2 ([`avx2::transpose_blocks`]), the plain loop for the ragged edges and
/// elsewhere. A copy: the same values at every level.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols);
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    let blocked = if cpu::avx2_fma() {
        // SAFETY: the probe found AVX2 on this CPU; the sizes were checked above.
        unsafe { avx2::transpose_blocks(src, rows, cols, dst) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let blocked = false;
    let (r8, c8) = if blocked { (r8, c8) } else { (0, 0) };
    // What the blocks left: the last columns of every row, the last rows of the rest.
    for r in 0..rows {
        let first = if r < r8 { c8 } else { 0 };
        for c in first..cols {
            dst[c * rows + r] = src[r * cols + c];
        }
    }
}

/// The AVX2 intrinsic kernel of [`transpose`] (see [`super::cpu`], point 3).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    /// The full 8 × 8 blocks of [`super::transpose`].
    ///
    /// # Safety
    /// The CPU has AVX2; `src` and `dst` hold `rows · cols` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose_blocks(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
        use std::arch::x86_64::*;
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        for r0 in (0..rows / 8 * 8).step_by(8) {
            for c0 in (0..cols / 8 * 8).step_by(8) {
                // SAFETY: rows r0..r0 + 8 and columns c0..c0 + 8 are inside both matrices.
                unsafe {
                    let row = |i: usize| _mm256_loadu_ps(s.add((r0 + i) * cols + c0));
                    let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                    let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
                    let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                    let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                    let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                    let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                    let u0 = _mm256_shuffle_ps(t0, t2, 0x44);
                    let u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                    let u2 = _mm256_shuffle_ps(t1, t3, 0x44);
                    let u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                    let u4 = _mm256_shuffle_ps(t4, t6, 0x44);
                    let u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                    let u6 = _mm256_shuffle_ps(t5, t7, 0x44);
                    let u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                    let out = [
                        _mm256_permute2f128_ps(u0, u4, 0x20),
                        _mm256_permute2f128_ps(u1, u5, 0x20),
                        _mm256_permute2f128_ps(u2, u6, 0x20),
                        _mm256_permute2f128_ps(u3, u7, 0x20),
                        _mm256_permute2f128_ps(u0, u4, 0x31),
                        _mm256_permute2f128_ps(u1, u5, 0x31),
                        _mm256_permute2f128_ps(u2, u6, 0x31),
                        _mm256_permute2f128_ps(u3, u7, 0x31),
                    ];
                    for (i, v) in out.into_iter().enumerate() {
                        _mm256_storeu_ps(d.add((c0 + i) * rows + r0), v);
                    }
                }
            }
        }
    }
}

/// `[N, C, H, W]` → `[N, H, W, C]` (channels last), one rayon task per image.
pub(crate) fn to_channels_last(x: &[f32], [n, c, h, w]: [usize; 4]) -> Vec<f32> {
    let hw = h * w;
    let mut out = vec![0f32; n * c * hw];
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(dst, src)| transpose(src, c, hw, dst));
    out
}

/// `[N, H, W, C]` → `[N, C, H, W]` into `out`, one rayon task per image.
pub(crate) fn to_channels_first(x: &[f32], [_, c, h, w]: [usize; 4], out: &mut [f32]) {
    let hw = h * w;
    out.par_chunks_mut(c * hw)
        .zip(x.par_chunks(c * hw))
        .for_each(|(dst, src)| transpose(src, hw, c, dst));
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// `channels_last` keeps the values and shape, stores the tensor channels last (one that
    /// already is, unchanged), and passes the gradient through.
    #[test]
    fn channels_last_keeps_values_and_gradient() {
        use burn::tensor::TensorData;
        let dims = [3, 5, 4, 7];
        let values: Vec<f32> = (0..3 * 5 * 4 * 7).map(|v| v as f32).collect();
        let t = FlexTensor::from_data(TensorData::new(values, dims));
        let cl = <burn::backend::Flex as LayoutOps>::channels_last(t.clone());
        assert!(is_channels_last(&cl) && !cl.is_contiguous());
        assert_eq!(cl.clone().into_data(), t.clone().into_data());
        let again = <burn::backend::Flex as LayoutOps>::channels_last(cl.clone());
        assert_eq!(again.layout(), cl.layout());
        assert!(!is_channels_last(&t));

        let device = Device::flex().autodiff();
        device.seed(5);
        let x = Tensor::<4>::random(dims, Distribution::Default, &device).require_grad();
        let up = Tensor::<4>::random(dims, Distribution::Default, &device);
        let y = channels_last(x.clone());
        assert_eq!(y.clone().into_data(), x.clone().into_data());
        let g = (y * up.clone()).sum().backward();
        assert_eq!(
            x.grad(&g).expect("gradient").into_data(),
            up.inner().into_data()
        );
    }
}
