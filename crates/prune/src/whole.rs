//! Pruning a whole model without changing its types: a magnitude mask attached to every
//! selected weight through burn's parameter reparameterization.
//!
//! The mask, the step counter and the target sparsity live in a [`PruneMask`] module attached
//! to the weight's `Param`: burn's own layers compute with `weight ⊙ mask`, the state is saved
//! in the record as `<weight path>.prune.{mask,step,target_sparsity}`, moved with the model,
//! never trained. The mask is the one [`Prunable`](crate::Prunable) uses ([`MaskTransform`]),
//! computed by the same [`magnitude_mask`] on the same schedule; see `docs/DESIGN.md`
//! ("Whole models") for why a step is one explicit call here.
//!
//! ```no_run
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use collab_prune::{PruningConfig, PruningSchedule, WholePruning};
//!
//! #[derive(Module, Debug)]
//! struct Net {
//!     fc: Linear,
//! }
//!
//! let device = Device::flex().autodiff();
//! let net = Net { fc: LinearConfig::new(16, 8).init(&device) };
//! let pruning = WholePruning::new(PruningConfig::new(
//!     PruningSchedule::polynomial(0.0, 0.5, 0, 100).with_frequency(10),
//! ));
//! let (mut net, _wrapped) = pruning.wrap(net)?; // `fc.weight` wrapped, `fc.bias` left as is
//! for _batch in 0..100 {
//!     net = pruning.advance(net)?; // one training step begins: counters, masks
//!     // forward, backward, optimizer step as usual
//! }
//! let plain = collab_core::whole::strip(net); // zeros written into `fc.weight`
//! # Ok::<(), collab_prune::PruneError>(())
//! ```

use std::collections::BTreeMap;

use burn::module::{Module, Reparameterization};
use burn::tensor::{Bool, Device, Tensor};
use collab_core::host::{bool_tensor, float_tensor, to_finite_vec_f32, to_vec_bool, to_vec_i64};
use collab_core::whole::{self, Selection, StateUpdates, StateValue, WeightSite, Wrapped};
use collab_core::{Counter, StateTensor, WeightTransform};

use crate::global::rank_together;
use crate::mask::magnitude_mask;
use crate::prunable::update_sparsity;
use crate::{Granularity, LayerReport, MaskTransform, PruneError, PruningConfig, Scope};

/// The reparameterization's name: its state is saved under `<weight path>.prune.<field>`.
pub const NAME: &str = "prune";

/// The pruning state attached to one weight.
#[derive(Module, Debug)]
pub struct PruneMask {
    /// Kept weights, `[numel]` bool, flattened in the parameter's own layout.
    pub mask: StateTensor<1, Bool>,
    /// Training steps begun ([`WholePruning::advance`] calls).
    pub step: Counter,
    /// The sparsity the current mask was computed for, `[1]`.
    pub target_sparsity: StateTensor<1>,
}

impl Reparameterization for PruneMask {
    const NAME: &'static str = NAME;

    /// `weight ⊙ mask`, any rank: pruned entries are exactly 0 and get a zero gradient.
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        MaskTransform {
            mask: self.mask.get(),
        }
        .apply(base)
    }
}

impl PruneMask {
    fn dense(numel: usize, device: &Device) -> Self {
        Self {
            mask: StateTensor::new(bool_tensor(vec![true; numel], device)),
            step: Counter::new(0, device),
            target_sparsity: StateTensor::new(Tensor::zeros([1], device)),
        }
    }
}

/// Magnitude pruning of every selected weight of a model whose types stay unchanged.
///
/// [`wrap`](Self::wrap) attaches a dense mask to each weight; [`advance`](Self::advance), called
/// once per training batch before its forward pass, counts the step and recomputes masks at the
/// schedule's update steps (per weight with [`Scope::Layer`], one ranking over all wrapped
/// weights with [`Scope::Global`]); [`prune_to`](Self::prune_to) prunes now, once.
#[derive(Clone, Debug)]
pub struct WholePruning {
    config: PruningConfig,
    selection: Selection,
}

/// A wrapped weight with its state, read from the model.
struct Layer {
    site: WeightSite,
    base: Tensor<1>,
    mask: Tensor<1, Bool>,
    step: u64,
    target: f64,
}

impl Layer {
    /// Base ⊙ mask on the host, in the parameter's order.
    fn effective(&self) -> Result<Vec<f32>, PruneError> {
        let raw = to_finite_vec_f32(self.base.clone(), &self.site.path)?;
        let mask = to_vec_bool(self.mask.clone());
        Ok(raw
            .iter()
            .zip(&mask)
            .map(|(w, keep)| if *keep { *w } else { 0.0 })
            .collect())
    }

    /// The weight's figures, from its effective value.
    fn report(&self) -> Result<LayerReport, PruneError> {
        let site = &self.site;
        Ok(LayerReport::of(
            &site.path,
            site.describe(),
            site.shape.clone(),
            &self.effective()?,
            &to_vec_bool(self.mask.clone()),
            self.target,
            self.step,
        ))
    }
}

impl WholePruning {
    /// Prune every rank-2+ weight ([`Selection::all`]) with `config`.
    pub fn new(config: PruningConfig) -> Self {
        Self {
            config,
            selection: Selection::all(),
        }
    }

    /// Prune the weights `selection` picks instead.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The pruning configuration.
    pub fn config(&self) -> &PruningConfig {
        &self.config
    }

    /// Per-weight pruning figures of every weight of `model` wrapped by this pruning, in
    /// traversal order (`name` is the weight's path, `layer` e.g. `Conv2d [8, 4, 3, 3]`), from
    /// the effective weights: the whole-model form of `Prunable::report`, shaped as
    /// `WholeClustering::report` and `WholeQat::report`. Fails on a wrapped weight whose state
    /// cannot be read, or on non-finite weights (naming the path).
    pub fn report<M: Module>(&self, model: &M) -> Result<Vec<LayerReport>, PruneError> {
        read_layers(model, Some(&self.selection))?
            .iter()
            .map(Layer::report)
            .collect()
    }

    /// Attach a dense mask (step 0) to every selected weight. Returns the model and what was
    /// wrapped and left as is. Fails on an invalid configuration, a pattern that does not fit a
    /// weight (naming its path), or a weight that already carries a reparameterization.
    ///
    /// To load a record saved from a wrapped model, wrap a freshly built model the same way
    /// first, then load into it.
    pub fn wrap<M: Module>(&self, model: M) -> Result<(M, Wrapped), PruneError> {
        self.config.validate()?;
        let (selected, summary) = whole::plan(&model, &self.selection)?;
        let mut states = BTreeMap::new();
        for weight in &selected {
            self.check(&weight.site)?;
            let device = weight.value.device();
            states.insert(
                weight.site.path.clone(),
                PruneMask::dense(weight.site.numel(), &device),
            );
        }
        tracing::info!(
            wrapped = summary.wrapped.len(),
            left_as_is = summary.left_as_is.len(),
            "whole-model pruning attached"
        );
        Ok((whole::attach(model, states), summary))
    }

    fn check(&self, site: &WeightSite) -> Result<(), PruneError> {
        let granularity = &self.config.granularity;
        if *granularity != Granularity::Unstructured && site.channel_axis.is_none() {
            return Err(site
                .unknown_axis(&format!("{} pruning", granularity.describe()))
                .into());
        }
        granularity
            .check_layout(&site.layout())
            .map_err(|err| match err {
                PruneError::Granularity {
                    granularity,
                    reason,
                    ..
                } => PruneError::Granularity {
                    layer: format!("`{}` ({})", site.path, site.describe()),
                    granularity,
                    reason,
                },
                other => other,
            })
    }

    /// Begin one training step: every wrapped weight's step counter advances (the first call
    /// makes it step 1, as `Prunable` counts its first training forward pass), and masks are
    /// recomputed from the current effective weights where the schedule updates them. Call it
    /// once per training batch, before the forward pass. Masks only shrink: ranking sees the
    /// masked weights, whose pruned entries are 0.
    pub fn advance<M: Module>(&self, model: M) -> Result<M, PruneError> {
        let layers = self.layers(&model)?;
        let mut updates = StateUpdates::new();
        for layer in &layers {
            updates.entry(layer.site.path.clone()).or_default().insert(
                "step".into(),
                whole::int_scalar(layer.step as i64 + 1, &layer.base.device()),
            );
        }
        let targets: Vec<Option<f64>> = match self.config.scope {
            Scope::Layer => layers
                .iter()
                .map(|l| {
                    update_sparsity(&self.config, l.step + 1, || {
                        to_vec_bool(l.mask.clone()).iter().any(|k| !k)
                    })
                })
                .collect(),
            Scope::Global => {
                let step = layers.iter().map(|l| l.step).max().unwrap_or(0) + 1;
                vec![self.config.schedule.update_at(step); layers.len()]
            }
        };
        self.remask(&layers, &targets, &mut updates)?;
        Ok(whole::write_state(model, NAME, updates)?)
    }

    /// Recompute every mask now for `sparsity` (one-shot pruning; N:M uses its own sparsity),
    /// per weight or globally as configured. Step counters are unchanged.
    pub fn prune_to<M: Module>(&self, model: M, sparsity: f64) -> Result<M, PruneError> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(PruneError::Sparsity {
                field: "sparsity",
                value: sparsity,
            });
        }
        let layers = self.layers(&model)?;
        let mut updates = StateUpdates::new();
        self.remask(&layers, &vec![Some(sparsity); layers.len()], &mut updates)?;
        Ok(whole::write_state(model, NAME, updates)?)
    }

    /// New masks for the layers with a target (all of them, or none, with global scope).
    fn remask(
        &self,
        layers: &[Layer],
        targets: &[Option<f64>],
        updates: &mut StateUpdates,
    ) -> Result<(), PruneError> {
        let granularity = &self.config.granularity;
        let mut masks: Vec<Option<(Vec<bool>, f64)>> = vec![None; layers.len()];
        match self.config.scope {
            Scope::Layer => {
                for ((layer, target), slot) in layers.iter().zip(targets).zip(&mut masks) {
                    let Some(sparsity) = *target else { continue };
                    let site = &layer.site;
                    let effective = site.view_order(&layer.effective()?);
                    let mask = magnitude_mask(&effective, &site.layout(), granularity, sparsity)?;
                    let target = granularity.fixed_sparsity().unwrap_or(sparsity);
                    *slot = Some((site.param_order(&mask), target));
                }
            }
            Scope::Global => {
                let Some(sparsity) = targets.iter().flatten().next().copied() else {
                    return Ok(());
                };
                let effective = layers
                    .iter()
                    .map(|l| Ok(l.site.view_order(&l.effective()?)))
                    .collect::<Result<Vec<_>, PruneError>>()?;
                let layouts: Vec<_> = layers.iter().map(|l| l.site.layout()).collect();
                let ranked = rank_together(
                    effective.iter().map(Vec::as_slice).zip(&layouts),
                    granularity,
                    sparsity,
                );
                for ((layer, mask), slot) in layers.iter().zip(ranked).zip(&mut masks) {
                    *slot = Some((layer.site.param_order(&mask), sparsity));
                }
            }
        }
        for (layer, mask) in layers.iter().zip(masks) {
            let Some((mask, target)) = mask else { continue };
            let device = layer.base.device();
            let n = mask.len();
            let fields = updates.entry(layer.site.path.clone()).or_default();
            fields.insert(
                "mask".into(),
                StateValue::Bool(bool_tensor(mask, &device), vec![n]),
            );
            fields.insert(
                "target_sparsity".into(),
                StateValue::Float(float_tensor(vec![target as f32], &device), vec![1]),
            );
            tracing::debug!(path = %layer.site.path, target, "mask updated");
        }
        Ok(())
    }

    /// The wrapped weights of `model` with their state.
    fn layers<M: Module>(&self, model: &M) -> Result<Vec<Layer>, PruneError> {
        let layers = read_layers(model, Some(&self.selection))?;
        if layers.is_empty() {
            return Err(not_wrapped());
        }
        Ok(layers)
    }
}

fn not_wrapped() -> PruneError {
    PruneError::UnsupportedLayer {
        path: "(model)".into(),
        reason: format!(
            "no weight carries a `{NAME}` reparameterization; wrap the model with \
             WholePruning::wrap first (to load a record, wrap a fresh model, then load)"
        ),
    }
}

fn read_layers<M: Module>(
    model: &M,
    selection: Option<&Selection>,
) -> Result<Vec<Layer>, PruneError> {
    whole::scan(model, Some(NAME))
        .into_iter()
        .map(|w| {
            let path = w.site.path.clone();
            let missing = |field: &str| PruneError::UnsupportedLayer {
                path: path.clone(),
                reason: format!("its `{NAME}` state has no tensor `{field}` of the right kind"),
            };
            let get = |field: &str| w.state.get(field).ok_or_else(|| missing(field));
            let mask = get("mask")?.bool().ok_or_else(|| missing("mask"))?;
            let step = get("step")?.int().ok_or_else(|| missing("step"))?;
            let target = get("target_sparsity")?
                .float()
                .ok_or_else(|| missing("target_sparsity"))?;
            let target = collab_core::host::to_vec_f32(target)
                .first()
                .copied()
                .unwrap_or(0.0);
            Ok(Layer {
                site: match selection {
                    Some(selection) => selection.refine(w.site),
                    None => w.site,
                },
                base: w.base,
                mask,
                step: to_vec_i64(step).first().copied().unwrap_or(0).max(0) as u64,
                target: target as f64,
            })
        })
        .collect()
}

/// Per-weight pruning figures of every weight of `model` wrapped by [`WholePruning`], in
/// traversal order: [`WholePruning::report`] for a caller without the `WholePruning` at hand
/// (the figures do not depend on its configuration).
pub fn report<M: Module>(model: &M) -> Result<Vec<LayerReport>, PruneError> {
    read_layers(model, None)?
        .iter()
        .map(Layer::report)
        .collect()
}
