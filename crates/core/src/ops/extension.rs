//! Plumbing shared by burn-collab's backend-extension ops (this crate's [`super`], and
//! `collab_quant::ops`, `collab_cluster::ops`): which devices have our kernels ([`on_flex`]),
//! `f32` buffers of flex tensors, and results recorded without a gradient. CPU SIMD dispatch is
//! [`super::cpu`].

use burn::backend::{Backend, tensor::FloatTensor};
use burn::tensor::{Bytes, Shape};
use burn::tensor::{DType, Device};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn_flex::{FlexTensor, Layout};

/// Whether tensors on `device` reach our flex kernels: `flex`, with or without autodiff. On any
/// other device the ops' Tensor-level functions return `None` and callers compose burn ops.
pub fn has_flex_kernels(device: &Device) -> bool {
    let flex = Device::flex();
    *device == flex || *device == flex.autodiff()
}

/// `Some(kernel())` where tensors on `device` reach our flex kernels ([`has_flex_kernels`]),
/// `None` elsewhere without calling it: the one way an op's Tensor-level function decides
/// between its kernel and the caller's composed burn ops.
#[inline]
pub fn on_flex<T>(device: &Device, kernel: impl FnOnce() -> T) -> Option<T> {
    has_flex_kernels(device).then(kernel)
}

/// The four dimensions of a rank-4 flex tensor.
pub fn dims4(t: &FlexTensor) -> [usize; 4] {
    use burn::backend::TensorMetadata;
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// `t` with a contiguous `f32` storage (copied only when it is a strided view), so that
/// `as_slice::<f32>()` succeeds.
///
/// # Panics
/// On another dtype: `op` names the operation in the message.
pub fn contiguous_f32(t: FlexTensor, op: &str) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "{op}: f32 tensors only");
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// A contiguous zero-filled `f32` flex tensor of `shape`, for a kernel's output.
///
/// Use this rather than `FlexTensor::empty`: burn-flex 0.22 builds that from a `Vec<u8>` and
/// `Bytes::from_bytes_vec` then reallocates it at 16-byte alignment and copies it, so a fresh
/// output costs a memset, a copy and two allocations. A
/// `Vec<f32>` goes into `Bytes` as it is.
pub fn zeros_f32(shape: impl Into<Shape>) -> FlexTensor {
    let shape = shape.into();
    let data = Bytes::from_elems(vec![0f32; shape.num_elements()]);
    FlexTensor::new(data, Layout::contiguous(shape), DType::F32)
}

/// `values` as a contiguous `f32` flex tensor of `shape` (no copy; see [`zeros_f32`]).
pub fn from_vec_f32(values: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    let shape = shape.into();
    debug_assert_eq!(values.len(), shape.num_elements());
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `t` (a contiguous `f32` tensor, `as_slice` succeeds) with a buffer of its own holding exactly
/// its values, for a kernel to write its result over: `t` itself when autodiff handed over the
/// only reference to such a buffer, else a copy. `try_storage_mut` then succeeds on it.
pub fn owned_f32(mut t: FlexTensor) -> FlexTensor {
    use burn::backend::TensorMetadata;
    let numel = t.shape().num_elements();
    if t.try_storage_mut::<f32>().map(|v| v.len()) == Some(numel) {
        return t;
    }
    let shape = t.shape();
    from_vec_f32(t.as_slice::<f32>().expect("contiguous f32").to_vec(), shape)
}

/// [`zeros_f32`] for `i32` (index tensors).
pub fn zeros_i32(shape: impl Into<Shape>) -> FlexTensor {
    let shape = shape.into();
    let data = Bytes::from_elems(vec![0i32; shape.num_elements()]);
    FlexTensor::new(data, Layout::contiguous(shape), DType::I32)
}

#[derive(Debug)]
struct NoGradient;

impl<B: Backend, const N: usize> Backward<B, N> for NoGradient {
    type State = ();

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let _ = grads.consume::<B>(&ops.node);
    }
}

/// `out`, computed from the tensors behind `guards`, recorded as an autodiff op that passes no
/// gradient back: for the backward ops of backend extensions, whose second derivatives no
/// training here needs.
pub fn untracked<B: Backend, C: CheckpointStrategy, const N: usize>(
    guards: [NodeGuard; N],
    out: B::FloatTensorPrimitive,
) -> FloatTensor<Autodiff<B, C>> {
    match NoGradient.prepare::<C>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
