//! `Prunable<L>`: a layer whose weights become sparse during training and stay sparse.
//!
//! The shape shared with `Clustered` (collab-cluster) and `QatAware` (collab-quant): a
//! [`PruningConfig`], [`wrap`](PruningConfig::wrap) or
//! [`wrap_named`](PruningConfig::wrap_named) a layer, train with
//! [`forward`](Prunable::forward), read [`report`](Prunable::report), and
//! [`strip`](Prunable::strip) back to the plain burn layer.
//!
//! ```
//! use burn::nn::conv::Conv2dConfig;
//! use burn::tensor::{Device, Tensor};
//! use collab_prune::{PruningConfig, PruningSchedule};
//!
//! let device = Device::flex().autodiff();
//! let conv = Conv2dConfig::new([8, 16], [3, 3]).init(&device);
//! let config = PruningConfig::new(PruningSchedule::constant(0.5).with_frequency(1));
//! let conv = config.wrap_named("conv", conv)?;
//! // A training step: step 1, an update step of the schedule, prunes half the weights.
//! let y = conv.forward(Tensor::<4>::ones([1, 8, 12, 12], &device));
//! let report = conv.report("conv");
//! assert_eq!((report.step, report.pruned), (1, 576));
//! let plain = conv.strip(); // burn `Conv2d` with zeros in its weight
//! # Ok::<(), collab_prune::PruneError>(())
//! ```

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Tensor};
use collab_core::host::{bool_tensor, to_finite_vec_f32, to_vec_bool};
use collab_core::layer::{WeightOnlyWrapper, WeightWrapper};
use collab_core::{Counter, LayerForward, StateTensor, WeightLayer, WeightTransform};
use serde::Serialize;

use crate::mask::magnitude_mask;
use crate::{Granularity, PruneError, PruningConfig, Scope};

/// A burn layer (or a wrapper around one) pruned by magnitude.
///
/// - The forward pass computes with `weight ⊙ mask`. Pruned weights are exactly 0 in every
///   forward after their mask is set, and receive a zero gradient (see `docs/DESIGN.md`).
/// - In training (autodiff device, training flag on; see [`Module::valid`]), each forward pass
///   is one step: the layer advances its own step counter (the first training batch is step 1)
///   and updates its mask at the schedule's update steps. No callback to remember.
/// - The mask (`true` = kept, flattened in burn's weight layout), the step counter and the
///   target sparsity of the current mask are module state: saved and loaded with the record,
///   moved with `to_device`, never trained. Stopping and resuming mid-schedule gives the same
///   masks as an uninterrupted run.
/// - Masks only shrink: ranking uses the masked weight, whose pruned entries are 0, so a pruned
///   weight is never revived by a later update of a rising schedule.
#[derive(Module, Debug)]
pub struct Prunable<L> {
    /// The wrapped layer (a burn layer or another wrapper). Its weight is the dense,
    /// trainable one; use [`WeightLayer::effective_weight`] or [`WeightLayer::strip`] for the
    /// pruned one.
    pub inner: L,
    /// Kept weights, `[numel]` bool in burn's layout of the inner weight.
    pub mask: StateTensor<1, Bool>,
    /// Training steps taken (training forward passes).
    pub step: Counter,
    /// The sparsity the current mask was computed for, `[1]`.
    pub target_sparsity: StateTensor<1>,
    /// Whether forward passes on an autodiff device advance the schedule (`valid()` clears it).
    pub training: Param<burn::module::Flag>,
    #[module(skip)]
    config: PruningConfig,
}

/// Per-layer pruning figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerReport {
    /// The name given by the caller (its path in the model).
    pub name: String,
    /// e.g. `conv2d [64, 1, 3, 3] depthwise`.
    pub layer: String,
    /// Weight shape in burn's layout.
    pub shape: Vec<usize>,
    /// Number of weights.
    pub weights: usize,
    /// Weights removed by the mask.
    pub pruned: usize,
    /// Effective weights that are exactly 0 (pruned ones and any others).
    pub zeros: usize,
    /// `zeros / weights`.
    pub sparsity: f64,
    /// The sparsity the current mask was computed for.
    pub target_sparsity: f64,
    /// Training steps taken.
    pub step: u64,
}

impl LayerReport {
    /// The figures of a weight from its effective values and mask (both flattened in the
    /// weight's own order, `[numel]`), shared by `Prunable` and the whole-model wrapper.
    pub(crate) fn of(
        name: &str,
        layer: String,
        shape: Vec<usize>,
        effective: &[f32],
        mask: &[bool],
        target_sparsity: f64,
        step: u64,
    ) -> Self {
        let zeros = effective.iter().filter(|w| **w == 0.0).count();
        let weights = effective.len();
        Self {
            name: name.to_string(),
            layer,
            shape,
            weights,
            pruned: mask.iter().filter(|k| !**k).count(),
            zeros,
            sparsity: zeros as f64 / weights.max(1) as f64,
            target_sparsity,
            step,
        }
    }
}

/// `weight ⊙ mask` for any rank; the gradient is masked too.
///
/// Computed as `weight · keep + 0` with `keep` the mask as 0.0 / 1.0: pruned entries are +0.0
/// (`-w · 0 + 0 = +0`), kept ones unchanged, and the gradient is `grad · keep`. A multiply, not
/// burn-flex's `mask_fill`, which branches per element on a mask that is close to random.
#[derive(Clone, Debug)]
pub struct MaskTransform {
    /// Kept weights, flattened `[numel]`.
    pub mask: Tensor<1, Bool>,
}

impl WeightTransform for MaskTransform {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        let keep: Tensor<D> = self.mask.clone().reshape(weight.shape()).float();
        weight * keep + 0.0
    }
}

impl<L: WeightLayer> Prunable<L> {
    /// Wrap `inner` with `config`: a dense mask, step 0. `name` (if given) leads the layout
    /// in errors. See [`PruningConfig::wrap`].
    pub(crate) fn new(
        inner: L,
        config: &PruningConfig,
        name: Option<&str>,
    ) -> Result<Self, PruneError> {
        config.validate()?;
        let layout = inner.layout();
        config
            .granularity
            .check_layout(&layout)
            .map_err(|err| match (err, name) {
                (
                    PruneError::Granularity {
                        layer,
                        granularity,
                        reason,
                    },
                    Some(name),
                ) => PruneError::Granularity {
                    layer: format!("{name} ({layer})"),
                    granularity,
                    reason,
                },
                (err, _) => err,
            })?;
        let device = inner.effective_weight().device();
        let mask = bool_tensor(vec![true; layout.numel()], &device);
        Ok(Self {
            inner,
            mask: StateTensor::new(mask),
            step: Counter::new(0, &device),
            target_sparsity: StateTensor::new(Tensor::zeros([1], &device)),
            training: Param::from_bool(true),
            config: config.clone(),
        })
    }

    /// The configuration this layer was wrapped with.
    pub fn config(&self) -> &PruningConfig {
        &self.config
    }

    /// Forward pass with the pruned weight; in training, advances the schedule first.
    ///
    /// # Shapes
    /// As the wrapped layer: `Linear` `[.., d_input] -> [.., d_output]`, `Conv1d`
    /// `[batch, in, len] -> [batch, out, len']`, `Conv2d` `[batch, in, h, w] -> [batch, out, h', w']`.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D>
    where
        L: LayerForward<D>,
    {
        self.forward_transformed(input, &collab_core::NoTransform)
    }

    /// Training steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step.get()
    }

    /// The current mask on the host (`true` = kept), flattened in burn's weight layout.
    pub fn mask_values(&self) -> Vec<bool> {
        to_vec_bool(self.mask.get())
    }

    /// Recompute the mask for `sparsity` from the current effective weights, now.
    ///
    /// Used by the schedule and by [`GlobalPruning`](crate::GlobalPruning); call it yourself for
    /// one-shot pruning. For N:M the pattern's own sparsity is used.
    pub fn prune_to(&self, sparsity: f64) -> Result<(), PruneError> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(PruneError::Sparsity {
                field: "sparsity",
                value: sparsity,
            });
        }
        let layout = self.inner.layout();
        let weights = to_finite_vec_f32(self.effective_weight(), &layout.describe())?;
        let mask = magnitude_mask(&weights, &layout, &self.config.granularity, sparsity)?;
        self.set_mask(
            mask,
            self.config.granularity.fixed_sparsity().unwrap_or(sparsity),
        )
    }

    /// Replace the mask (`true` = kept, `[numel]` in burn's weight layout). The caller states
    /// the sparsity it was computed for (reported as the target).
    pub fn set_mask(&self, mask: Vec<bool>, target_sparsity: f64) -> Result<(), PruneError> {
        let layout = self.inner.layout();
        if mask.len() != layout.numel() {
            return Err(collab_core::CoreError::Shape {
                what: format!("mask of {}", layout.describe()),
                expected: vec![layout.numel()],
                got: vec![mask.len()],
            }
            .into());
        }
        let device = self.mask.get().device();
        self.mask.set(bool_tensor(mask, &device));
        self.target_sparsity
            .set(Tensor::from_floats([target_sparsity as f32], &device));
        Ok(())
    }

    /// Per-layer figures, computed from the effective weight.
    pub fn report(&self, name: &str) -> LayerReport {
        let layout = self.inner.layout();
        LayerReport::of(
            name,
            layout.describe(),
            layout.shape.clone(),
            &collab_core::host::to_vec_f32(self.effective_weight()),
            &self.mask_values(),
            collab_core::host::to_vec_f32(self.target_sparsity.get())[0] as f64,
            self.step.get(),
        )
    }

    /// The plain layer with pruned weights set to 0 (as [`WeightLayer::strip`], without
    /// importing the trait).
    pub fn strip(self) -> L::Plain {
        WeightLayer::strip(self)
    }

    /// One training step: count it, and update the mask when the schedule says so.
    fn advance(&self) {
        let step = self.step.increment();
        if self.config.scope == Scope::Global {
            return;
        }
        let Some(sparsity) =
            update_sparsity(&self.config, step, || self.mask_values().iter().any(|k| !k))
        else {
            return;
        };
        if let Err(err) = self.prune_to(sparsity) {
            // forward() cannot return an error; keep the previous mask and say why.
            tracing::error!(step, %err, "mask update skipped");
        } else {
            tracing::debug!(step, sparsity, layer = %self.inner.layout().describe(), "mask updated");
        }
    }
}

/// The sparsity a layer's own mask is recomputed for at training step `step`, if the schedule
/// updates it there. N:M masks are computed once: never again once `has_pruned()` says the mask
/// already removes weights.
pub(crate) fn update_sparsity(
    config: &PruningConfig,
    step: u64,
    has_pruned: impl FnOnce() -> bool,
) -> Option<f64> {
    let sparsity = config.schedule.update_at(step)?;
    if matches!(config.granularity, Granularity::NOfM { .. }) && has_pruned() {
        return None;
    }
    Some(sparsity)
}

/// [`WeightLayer`] and [`LayerForward`] follow (collab-core's blanket implementations): the
/// forward pass computes with `weight ⊙ mask`, `strip` sets pruned weights to 0.
impl<L: WeightLayer> WeightWrapper for Prunable<L> {
    type Inner = L;
    type Transform = MaskTransform;

    fn inner(&self) -> &L {
        &self.inner
    }

    fn into_inner(self) -> L {
        self.inner
    }

    fn weight_transform(&self) -> MaskTransform {
        MaskTransform {
            mask: self.mask.get(),
        }
    }

    fn strip_transform(&self) -> MaskTransform {
        MaskTransform {
            mask: self.mask.get().without_autodiff(),
        }
    }
}

impl<L: WeightLayer> WeightOnlyWrapper for Prunable<L> {
    /// A training pass (training flag on, autodiff input) is one step: count it and update
    /// the mask when the schedule says so, before the mask is read.
    fn begin_forward(&self, input_device: &Device) {
        if self.training.is_enabled() && input_device.is_autodiff() {
            self.advance();
        }
    }
}
