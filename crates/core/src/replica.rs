//! Module state across data-parallel replicas.
//!
//! Data-parallel training runs one training step on several copies (replicas) of the model at
//! once, each on its own share of the batch, and sums their gradients into one optimizer step of
//! the main model. Parameters need nothing more. State that `forward` replaces
//! ([`StateTensor`](crate::StateTensor), [`Counter`](crate::Counter)) does: each replica
//! advances its own deep copy, and the main model, which ran no forward pass, would never see
//! it. This module carries that state back:
//!
//! 1. around each replica's forward pass, [`recording`] collects every state write the pass
//!    makes (the last value of each piece of state) into a [`ReplicaState`];
//! 2. before the optimizer step, [`reconcile`] folds the replicas' writes into the main model,
//!    each piece of state by its [`Reduce`] rule.
//!
//! The rules make the result independent of how the batch was split:
//! - [`Reduce::Same`]: step counters, masks and targets are computed from the weights, which
//!   every replica shares, so every replica must have written the same value. One that differs
//!   is a bug, reported as [`Divergence`] rather than silently averaged away.
//! - [`Reduce::Min`] / [`Reduce::Max`]: an activation range's moving average
//!   `min ← d·min + (1 − d)·batch_min` is monotone in the batch minimum (rounding included), so
//!   the smallest of the replicas' updated minima is exactly the update from the whole global
//!   batch's minimum; the same for maxima.
//!
//! Recording is per thread (burn-train runs each replica's step on a worker thread of its own)
//! and costs nothing when no recording is active.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// How the replicas' values of one piece of state combine into the value the model keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduce {
    /// Every replica must hold the same value (counters, masks): a difference is a
    /// [`Divergence`].
    #[default]
    Same,
    /// The elementwise minimum (the lower end of a moving-average range).
    Min,
    /// The elementwise maximum (the upper end of a moving-average range).
    Max,
}

/// One state write recorded during a replica's forward pass.
struct Write {
    reduce: Reduce,
    value: Value,
}

enum Value {
    Count(u64),
    /// A `Tensor<D, K>`, taken back with the rank and kind the mapper visits it with.
    Tensor(Box<dyn Any + Send>),
}

/// The state writes of one replica's forward pass: the last value written to each piece of
/// state, by parameter id.
#[derive(Default)]
pub struct ReplicaState {
    writes: HashMap<ParamId, Write>,
}

impl ReplicaState {
    /// Pieces of state written.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether the pass wrote no state.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

impl fmt::Debug for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicaState({} writes)", self.writes.len())
    }
}

thread_local! {
    static RECORDING: RefCell<Option<ReplicaState>> = const { RefCell::new(None) };
}

/// Run `f` (a replica's forward pass) and return what it wrote to module state on this thread.
///
/// Nested calls record into the innermost one.
pub fn recording<R>(f: impl FnOnce() -> R) -> (R, ReplicaState) {
    let outer = RECORDING.with(|r| r.borrow_mut().replace(ReplicaState::default()));
    let result = f();
    let state = RECORDING.with(|r| std::mem::replace(&mut *r.borrow_mut(), outer));
    (result, state.unwrap_or_default())
}

fn record(id: ParamId, reduce: Reduce, value: impl FnOnce() -> Value) {
    RECORDING.with(|r| {
        if let Some(state) = r.borrow_mut().as_mut() {
            state.writes.insert(
                id,
                Write {
                    reduce,
                    value: value(),
                },
            );
        }
    });
}

pub(crate) fn record_count(id: ParamId, value: u64) {
    record(id, Reduce::Same, || Value::Count(value));
}

pub(crate) fn record_tensor<T: Clone + Send + 'static>(id: ParamId, reduce: Reduce, value: &T) {
    record(id, reduce, || Value::Tensor(Box::new(value.clone())));
}

/// Replicas that disagree on a piece of state every replica must share ([`Reduce::Same`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "data-parallel replicas diverged: `{path}` is {detail}; every replica computes it from the \
     same weights, so this is a bug in the layer that writes it (train on one device meanwhile)"
)]
pub struct Divergence {
    /// The state's dotted path in the model.
    pub path: String,
    /// What differs.
    pub detail: String,
}

/// Fold the replicas' state writes into `model` (the main copy, which ran no forward pass),
/// each piece of state by its [`Reduce`] rule; state no replica wrote keeps its value.
///
/// Returns the model, and `Err` with the first piece of [`Reduce::Same`] state the replicas
/// disagree on (that one, and any state after it, left as it was).
pub fn reconcile<M: Module>(model: M, replicas: &[ReplicaState]) -> (M, Result<(), Divergence>) {
    if replicas.iter().all(ReplicaState::is_empty) {
        return (model, Ok(()));
    }
    let mut mapper = Reconciler {
        replicas,
        path: Vec::new(),
        error: None,
    };
    let model = model.map(&mut mapper);
    let agreed = match mapper.error {
        Some(err) => Err(err),
        None => Ok(()),
    };
    (model, agreed)
}

struct Reconciler<'a> {
    replicas: &'a [ReplicaState],
    path: Vec<String>,
    error: Option<Divergence>,
}

impl<'a> Reconciler<'a> {
    fn writes(&self, id: ParamId) -> Vec<&'a Write> {
        let replicas: &'a [ReplicaState] = self.replicas;
        replicas.iter().filter_map(|r| r.writes.get(&id)).collect()
    }

    fn fail(&mut self, detail: String) {
        if self.error.is_none() {
            self.error = Some(Divergence {
                path: self.path.join("."),
                detail,
            });
        }
    }

    /// The replicas' tensors of this state on `device`, or `None` (and an error) when one is
    /// not a tensor of this rank and kind.
    fn tensors<const D: usize, K>(
        &mut self,
        writes: &[&Write],
        device: &Device,
    ) -> Option<Vec<Tensor<D, K>>>
    where
        K: burn::tensor::kind::Basic + 'static,
        Tensor<D, K>: Clone,
    {
        let mut tensors = Vec::with_capacity(writes.len());
        for write in writes {
            match &write.value {
                Value::Tensor(any) => match any.downcast_ref::<Tensor<D, K>>() {
                    Some(t) => tensors.push(t.clone().to_device(device)),
                    None => {
                        self.fail(format!("not a rank-{D} tensor on every replica"));
                        return None;
                    }
                },
                Value::Count(_) => {
                    self.fail("a counter on one replica and a tensor on another".into());
                    return None;
                }
            }
        }
        Some(tensors)
    }

    fn same<const D: usize, K>(&mut self, tensors: &[Tensor<D, K>]) -> bool
    where
        K: burn::tensor::kind::Basic + 'static,
        Tensor<D, K>: Clone,
    {
        let first = &tensors[0];
        for (i, other) in tensors.iter().enumerate().skip(1) {
            if other.dims() != first.dims() {
                self.fail(format!(
                    "shaped {:?} on replica 0 and {:?} on replica {i}",
                    first.dims(),
                    other.dims()
                ));
                return false;
            }
            let (a, b) = (first.clone().into_data(), other.clone().into_data());
            if let Some(at) = first_difference(&a, &b) {
                self.fail(format!(
                    "different on replica 0 and replica {i} (first at flat index {at})"
                ));
                return false;
            }
        }
        true
    }

    /// The replicas' values of one piece of numeric state combined by its rule; `value` (the
    /// main model's) when they cannot be (the error is recorded).
    fn reduce<const D: usize, K>(&mut self, writes: &[&Write], value: Tensor<D, K>) -> Tensor<D, K>
    where
        K: burn::tensor::kind::Ordered + 'static,
        Tensor<D, K>: Clone,
    {
        let Some(tensors) = self.tensors::<D, K>(writes, &value.device()) else {
            return value;
        };
        match writes[0].reduce {
            Reduce::Same if !self.same(&tensors) => value,
            Reduce::Same => tensors[0].clone(),
            Reduce::Min => tensors
                .into_iter()
                .reduce(Tensor::min_pair)
                .unwrap_or(value),
            Reduce::Max => tensors
                .into_iter()
                .reduce(Tensor::max_pair)
                .unwrap_or(value),
        }
    }
}

/// The first flat index where two tensors' values differ (bitwise for floats).
fn first_difference(a: &TensorData, b: &TensorData) -> Option<usize> {
    let width = a.dtype().size().max(1);
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return Some(0);
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|byte| byte / width)
}

impl ModuleMapper for Reconciler<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let writes = self.writes(param.id);
        if writes.is_empty() || self.error.is_some() {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let reduced = self.reduce(&writes, value);
        Param::from_mapped_value(id, reduced, mapper)
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        let writes = self.writes(param.id);
        if writes.is_empty() || self.error.is_some() {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let device = value.device();
        // Counters: every replica advanced the same count from the same start.
        if let Value::Count(first) = writes[0].value {
            for (i, write) in writes.iter().enumerate().skip(1) {
                match write.value {
                    Value::Count(c) if c == first => {}
                    Value::Count(c) => {
                        self.fail(format!("{first} on replica 0 and {c} on replica {i}"));
                        return Param::from_mapped_value(id, value, mapper);
                    }
                    Value::Tensor(_) => {
                        self.fail("a counter on one replica and a tensor on another".into());
                        return Param::from_mapped_value(id, value, mapper);
                    }
                }
            }
            let shape = value.dims();
            if shape.as_slice() != [1] {
                self.fail(format!("a counter recorded with shape {shape:?}"));
                return Param::from_mapped_value(id, value, mapper);
            }
            let count = Tensor::from_data(TensorData::new(vec![first as i64], shape), &device);
            return Param::from_mapped_value(id, count, mapper);
        }
        let reduced = self.reduce(&writes, value);
        Param::from_mapped_value(id, reduced, mapper)
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        let writes = self.writes(param.id);
        if writes.is_empty() || self.error.is_some() {
            return param;
        }
        let (id, value, mapper) = param.consume();
        let Some(tensors) = self.tensors::<D, Bool>(&writes, &value.device()) else {
            return Param::from_mapped_value(id, value, mapper);
        };
        // Masks have no order to reduce by: only `Same` makes sense.
        if !self.same(&tensors) {
            return Param::from_mapped_value(id, value, mapper);
        }
        Param::from_mapped_value(id, tensors[0].clone(), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{to_vec_bool, to_vec_f32};
    use crate::{Counter, StateTensor};

    #[derive(Module, Debug)]
    struct Inner {
        seen: StateTensor<1>,
    }

    #[derive(Module, Debug)]
    struct Probe {
        low: StateTensor<1>,
        high: StateTensor<1>,
        mask: StateTensor<1, Bool>,
        steps: Counter,
        inner: Inner,
    }

    fn probe() -> Probe {
        let device = Device::flex();
        Probe {
            low: StateTensor::reduced(Tensor::zeros([1], &device), Reduce::Min),
            high: StateTensor::reduced(Tensor::zeros([1], &device), Reduce::Max),
            mask: StateTensor::new(crate::host::bool_tensor(vec![true; 3], &device)),
            steps: Counter::new(0, &device),
            inner: Inner {
                seen: StateTensor::new(Tensor::zeros([1], &device)),
            },
        }
    }

    /// A replica's forward pass: a copy of `main` that writes these values.
    fn pass(main: &Probe, low: f32, high: f32, mask: [bool; 3], seen: f32) -> ReplicaState {
        let replica = main.clone();
        let device = Device::flex();
        let f = |v: f32| Tensor::<1>::from_floats([v], &device);
        let ((), state) = recording(|| {
            replica.low.set(f(low));
            replica.high.set(f(high));
            replica
                .mask
                .set(crate::host::bool_tensor(mask.to_vec(), &device));
            replica.steps.increment();
            replica.inner.seen.set(f(seen));
        });
        state
    }

    fn value(t: &StateTensor<1>) -> f32 {
        to_vec_f32(t.get())[0]
    }

    #[test]
    fn only_writes_inside_a_recording_count_and_the_last_one_wins() {
        let main = probe();
        let p = main.clone();
        p.steps.increment();
        let ((), state) = recording(|| {
            p.inner
                .seen
                .set(Tensor::from_floats([1.0], &Device::flex()));
            p.inner
                .seen
                .set(Tensor::from_floats([2.0], &Device::flex()));
        });
        assert_eq!(state.len(), 1, "{state:?}");
        let (main, agreed) = reconcile(main, &[state]);
        agreed.unwrap();
        assert_eq!(value(&main.inner.seen), 2.0);
        assert_eq!(
            main.steps.get(),
            0,
            "a write outside the recording was recorded"
        );
        // Nested recordings: the inner one takes the writes, the outer goes on afterwards.
        let ((inner, ()), outer) = recording(|| {
            let nested = recording(|| p.steps.set(7));
            p.steps.set(8);
            (nested.1, ())
        });
        assert_eq!((inner.len(), outer.len()), (1, 1));
    }

    #[test]
    fn replicas_fold_into_the_main_model_by_each_state_rule() {
        let main = probe();
        let replicas = [
            pass(&main, -1.0, 3.0, [true, false, true], 0.5),
            pass(&main, -2.0, 2.0, [true, false, true], 0.5),
            pass(&main, -1.5, 4.0, [true, false, true], 0.5),
        ];
        let (main, agreed) = reconcile(main, &replicas);
        agreed.unwrap();
        assert_eq!(value(&main.low), -2.0);
        assert_eq!(value(&main.high), 4.0);
        assert_eq!(to_vec_bool(main.mask.get()), vec![true, false, true]);
        assert_eq!(main.inner.seen.get().dims(), [1]);
        assert_eq!(value(&main.inner.seen), 0.5);
        // Three replicas ran one step each: one global step.
        assert_eq!(main.steps.get(), 1);
        // Nothing recorded: nothing changes.
        let (same, agreed) = reconcile(main, &[ReplicaState::default()]);
        agreed.unwrap();
        assert_eq!((value(&same.low), same.steps.get()), (-2.0, 1));
    }

    #[test]
    fn replicas_that_disagree_on_shared_state_are_a_divergence_that_names_it() {
        let main = probe();
        let replicas = [
            pass(&main, 0.0, 1.0, [true; 3], 0.5),
            pass(&main, 0.0, 1.0, [true; 3], 0.25),
        ];
        let (_, agreed) = reconcile(main, &replicas);
        let err = agreed.unwrap_err();
        assert_eq!(err.path, "inner.seen");
        assert!(err.detail.contains("replica 1"), "{err}");

        let main = probe();
        let replicas = [
            pass(&main, 0.0, 1.0, [true, true, false], 0.5),
            pass(&main, 0.0, 1.0, [true, false, false], 0.5),
        ];
        let err = reconcile(main, &replicas).1.unwrap_err();
        assert_eq!(err.path, "mask");
        assert!(err.detail.contains("flat index 1"), "{err}");
        assert!(err.to_string().contains("diverged"), "{err}");

        let main = probe();
        let a = pass(&main, 0.0, 1.0, [true; 3], 0.5);
        main.steps.set(5);
        let b = pass(&main, 0.0, 1.0, [true; 3], 0.5);
        let err = reconcile(main, &[a, b]).1.unwrap_err();
        assert_eq!(err.path, "steps");
        assert!(
            err.detail.contains("1 on replica 0 and 6 on replica 1"),
            "{err}"
        );
    }
}
