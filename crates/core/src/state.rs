//! Module state that a forward pass may update.
//!
//! burn modules run `forward(&self)`, yet pruning masks, step counters and quantization ranges
//! change during training. burn's own `RunningState` (BatchNorm statistics) solves this with
//! interior mutability but only for float tensors, averages updates across threads, and shares
//! its value between clones. The two types here are exact instead:
//!
//! - [`StateTensor`]: a float, int or bool tensor that `forward` may replace.
//! - [`Counter`]: a host-side step counter (no device round trip to read it).
//!
//! Both are saved and loaded with the module record (as ordinary tensor entries), moved by
//! `to_device`/`fork`, never visited as trainable (no optimizer, `unfreeze` or
//! `set_require_grad` can change them), and **deep-copied on `clone`**: a cloned module is a
//! snapshot that later training of the original does not touch.
//!
//! Data-parallel replicas are such clones; their writes are recorded and folded back into the
//! main model by [`crate::replica`], each tensor by the [`Reduce`] rule it was created with.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId,
};
use burn::tensor::{Bool, Device, Float, Int, Tensor, TensorData};

use crate::replica::{self, Reduce};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while holding the lock leaves the value itself intact.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for burn::tensor::Float {}
    impl Sealed for burn::tensor::Int {}
    impl Sealed for burn::tensor::Bool {}
}

/// The tensor kinds a [`StateTensor`] can hold, with the matching visitor / mapper calls.
pub trait StateKind:
    sealed::Sealed + burn::tensor::kind::Autodiff + Clone + Send + Sync + fmt::Debug + 'static
{
    #[doc(hidden)]
    fn plain<const D: usize>(tensor: Tensor<D, Self>) -> Tensor<D, Self>;
    #[doc(hidden)]
    fn tracked<const D: usize>(tensor: Tensor<D, Self>) -> Tensor<D, Self>;
    #[doc(hidden)]
    const NAME: &'static str;
}

impl StateKind for Float {
    fn plain<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
        tensor.without_autodiff()
    }
    fn tracked<const D: usize>(tensor: Tensor<D>) -> Tensor<D> {
        // Never a gradient leaf: state is not trained.
        tensor.detach().set_require_grad(false)
    }
    const NAME: &'static str = "float";
}

impl StateKind for Int {
    fn plain<const D: usize>(tensor: Tensor<D, Int>) -> Tensor<D, Int> {
        tensor.without_autodiff()
    }
    fn tracked<const D: usize>(tensor: Tensor<D, Int>) -> Tensor<D, Int> {
        tensor
    }
    const NAME: &'static str = "int";
}

impl StateKind for Bool {
    fn plain<const D: usize>(tensor: Tensor<D, Bool>) -> Tensor<D, Bool> {
        tensor.without_autodiff()
    }
    fn tracked<const D: usize>(tensor: Tensor<D, Bool>) -> Tensor<D, Bool> {
        tensor
    }
    const NAME: &'static str = "bool";
}

/// A tensor of module state that `forward(&self)` may replace.
///
/// Saved in the record under the field's path like a parameter; never trainable.
pub struct StateTensor<const D: usize, K: StateKind = Float> {
    id: ParamId,
    value: Arc<Mutex<Tensor<D, K>>>,
    reduce: Reduce,
}

impl<const D: usize, K: StateKind> StateTensor<D, K> {
    /// New state holding `value`, which data-parallel replicas must agree on
    /// ([`Reduce::Same`]).
    pub fn new(value: Tensor<D, K>) -> Self {
        Self::with_id(ParamId::new(), value, Reduce::Same)
    }

    /// New state holding `value`, combined across data-parallel replicas by `reduce`.
    pub fn reduced(value: Tensor<D, K>, reduce: Reduce) -> Self {
        Self::with_id(ParamId::new(), value, reduce)
    }

    fn with_id(id: ParamId, value: Tensor<D, K>, reduce: Reduce) -> Self {
        Self {
            id,
            value: Arc::new(Mutex::new(K::tracked(value))),
            reduce,
        }
    }

    fn same_state(&self, value: Tensor<D, K>) -> Self {
        Self::with_id(self.id, value, self.reduce)
    }

    /// The current value (a cheap handle clone).
    pub fn get(&self) -> Tensor<D, K> {
        lock(&self.value).clone()
    }

    /// Replace the value. Visible to every holder of this module value (not to clones); inside
    /// [`replica::recording`] also recorded for the main model.
    pub fn set(&self, value: Tensor<D, K>) {
        let value = K::tracked(value);
        replica::record_tensor(self.id, self.reduce, &value);
        *lock(&self.value) = value;
    }

    /// Replace the value without recording it (device moves and record loads).
    fn put(&self, value: Tensor<D, K>) {
        *lock(&self.value) = K::tracked(value);
    }
}

impl<const D: usize, K: StateKind> Clone for StateTensor<D, K> {
    /// A deep copy: the clone's value no longer follows updates of the original.
    fn clone(&self) -> Self {
        self.same_state(self.get())
    }
}

impl<const D: usize, K: StateKind> fmt::Debug for StateTensor<D, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StateTensor {{ kind: {}, shape: {:?} }}",
            K::NAME,
            self.get().dims()
        )
    }
}

impl<const D: usize, K: StateKind> ModuleDisplayDefault for StateTensor<D, K> {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&format!("StateTensor {{rank: {D}, kind: {}}}", K::NAME))
            .optional()
    }
}

impl<const D: usize, K: StateKind> ModuleDisplay for StateTensor<D, K> {}

macro_rules! state_tensor_module {
    ($kind:ty, $visit:ident, $map:ident) => {
        impl<const D: usize> Module for StateTensor<D, $kind> {
            fn collect_devices(&self, mut devices: Devices) -> Devices {
                let device = self.get().device();
                if !devices.contains(&device) {
                    devices.push(device);
                }
                devices
            }

            fn fork(self, device: &Device) -> Self {
                self.to_device(device)
            }

            fn to_device(self, device: &Device) -> Self {
                let moved = self.get().to_device(device);
                self.put(moved);
                self
            }

            fn train(self) -> Self {
                let value = self.get();
                let value = if value.device().is_autodiff() {
                    value
                } else {
                    value.autodiff()
                };
                self.same_state(value)
            }

            fn valid(&self) -> Self {
                self.same_state(<$kind as StateKind>::plain(self.get()))
            }

            fn materialize(self) -> Self {
                self
            }

            fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
                visitor.$visit(&Param::initialized(self.id, self.get()));
            }

            fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
                let mapped = mapper.$map(Param::initialized(self.id, self.get()));
                let (_, value, _) = mapped.consume();
                self.put(value);
                self
            }
        }
    };
}

state_tensor_module!(Float, visit_float, map_float);
state_tensor_module!(Int, visit_int, map_int);
state_tensor_module!(Bool, visit_bool, map_bool);

/// A step counter kept on the host, saved in the record as a one-element int tensor.
///
/// Reading it in `forward` costs nothing (no device synchronisation); the device copy exists
/// only while the module is visited or mapped (record save/load, device moves).
pub struct Counter {
    id: ParamId,
    inner: Arc<Mutex<CounterValue>>,
}

#[derive(Clone)]
struct CounterValue {
    value: u64,
    device: Device,
}

impl Counter {
    /// A counter at `value`, recorded on `device`.
    pub fn new(value: u64, device: &Device) -> Self {
        Self::with_id(
            ParamId::new(),
            CounterValue {
                value,
                device: device.clone(),
            },
        )
    }

    fn with_id(id: ParamId, value: CounterValue) -> Self {
        Self {
            id,
            inner: Arc::new(Mutex::new(value)),
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        lock(&self.inner).value
    }

    /// Set the value (inside [`replica::recording`] also recorded for the main model).
    pub fn set(&self, value: u64) {
        lock(&self.inner).value = value;
        replica::record_count(self.id, value);
    }

    /// Add one and return the new value (recorded as [`Self::set`] is).
    pub fn increment(&self) -> u64 {
        let value = {
            let mut inner = lock(&self.inner);
            inner.value += 1;
            inner.value
        };
        replica::record_count(self.id, value);
        value
    }

    fn param(&self) -> Param<Tensor<1, Int>> {
        let inner = lock(&self.inner).clone();
        let tensor = Tensor::from_data(
            TensorData::new(vec![inner.value as i64], [1]),
            &inner.device,
        );
        Param::initialized(self.id, tensor)
    }
}

impl Clone for Counter {
    /// A deep copy: the clone's count no longer follows the original.
    fn clone(&self) -> Self {
        Self::with_id(self.id, lock(&self.inner).clone())
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counter({})", self.get())
    }
}

impl ModuleDisplayDefault for Counter {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&format!("Counter({})", self.get()))
            .optional()
    }
}

impl ModuleDisplay for Counter {}

impl Module for Counter {
    fn collect_devices(&self, devices: Devices) -> Devices {
        // Host-side control state, like burn's `Flag`: it does not pin a device.
        devices
    }

    fn fork(self, device: &Device) -> Self {
        self.to_device(device)
    }

    fn to_device(self, device: &Device) -> Self {
        lock(&self.inner).device = device.clone();
        self
    }

    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.clone()
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_int(&self.param());
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let mapped = mapper.map_int(self.param());
        let (_, tensor, _) = mapped.consume();
        let device = tensor.device();
        let values = crate::host::to_vec_i64(tensor);
        {
            let mut inner = lock(&self.inner);
            // A record entry of the wrong size is caught by burn's shape validation on load;
            // a negative count can only come from a hand-edited record.
            inner.value = values.first().copied().unwrap_or(0).max(0) as u64;
            inner.device = device;
        }
        self
    }
}
