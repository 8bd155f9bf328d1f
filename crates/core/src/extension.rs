//! Plumbing shared by burn-collab's backend-extension ops ([`crate::depthwise`],
//! `collab_quant::fused`, `collab_quant::epilogue`, `collab_cluster::fused`): which devices have
//! our kernels, `f32` slices of flex tensors, AVX2 dispatch for element loops, and results
//! recorded without a gradient.

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

/// Whether the CPU has AVX2 and FMA (the features [`wide`] compiles for). A cached flag.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Run `f` compiled for AVX2 and FMA where the CPU has them, for the portable build otherwise.
///
/// The workspace builds for baseline x86-64 (SSE2), so the element loops of our kernels stay
/// scalar unless they are compiled with wider features; call this around the innermost loop
/// (inside each rayon task: `f` must be inlined into the feature-enabled frame to be
/// vectorized). Feature detection is a cached flag.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn run<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { run(f) };
        }
    }
    f()
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

/// Define `fn $name(args) -> ret { body }` that runs `body` compiled for AVX-512F, else AVX2 +
/// FMA, else the baseline (runtime detection): a named `target_feature` function per level,
/// with the body inlined into each, so its loops are vectorized for it. (A closure handed to
/// [`wide`] may stay out of line, and so scalar, when it is large.) The body must not depend
/// on the vector width for its results (no reductions across lanes), so that every CPU gets the
/// same values.
#[macro_export]
macro_rules! widest {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn w512($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn w256($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { w512($($arg),*) };
                }
                if $crate::extension::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { w256($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub use crate::widest;
