//! Model-wide pruning: global magnitude ranking and per-layer reports.
//!
//! burn models are plain structs, so these functions find the [`Prunable`](crate::Prunable)
//! layers of any model by walking it with burn's `ModuleVisitor` / `ModuleMapper` (a
//! `Prunable` shows up as a module of container type `Struct:Prunable` with fields `inner`,
//! `mask`, `step`, `target_sparsity`). They handle a `Prunable` directly around a burn
//! `Linear`, `Conv1d` or `Conv2d`; anything else is an error naming the layer's path.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Bool, Int, Tensor};
use collab_core::host::{bool_tensor, to_finite_vec_f32, to_vec_bool, to_vec_f32, to_vec_i64};
use collab_core::{LayerKind, WeightLayout};

use crate::mask::{Units, prune_count, smallest};
use crate::{Granularity, LayerReport, PruneError, PruningSchedule};

const PRUNABLE: &str = "Struct:Prunable";

#[derive(Default)]
struct Found {
    mask: Option<Vec<bool>>,
    step: Option<u64>,
    target: Option<f64>,
    weight: Option<(Tensor<1>, WeightLayout)>,
}

#[derive(Default)]
struct Finder {
    stack: Vec<(String, String)>,
    layers: BTreeMap<String, Found>,
}

/// The dotted path of the first `len` `(field name, container type)` entries of `stack`.
fn prefix(stack: &[(String, String)], len: usize) -> String {
    stack[..len]
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// `(path of the Prunable, field)` when the value being visited is a direct field of one.
fn prunable_field(stack: &[(String, String)]) -> Option<(String, &str)> {
    let (field, container) = stack.last()?;
    (container == PRUNABLE).then(|| (prefix(stack, stack.len() - 1), field.as_str()))
}

impl ModuleVisitor for Finder {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some((prefix, "target_sparsity")) = prunable_field(&self.stack) {
            let value = to_vec_f32(param.val()).first().copied().unwrap_or(0.0);
            self.layers.entry(prefix).or_default().target = Some(value as f64);
            return;
        }
        // `<prefix>.inner.weight` with `inner` a field of a Prunable and `weight` of a layer.
        let n = self.stack.len();
        if n < 2
            || self.stack[n - 1].0 != "weight"
            || self.stack[n - 2] != ("inner".into(), PRUNABLE.into())
        {
            return;
        }
        let kind = match self.stack[n - 1].1.as_str() {
            "Struct:Linear" => LayerKind::Linear,
            "Struct:Conv1d" => LayerKind::Conv1d,
            "Struct:Conv2d" => LayerKind::Conv2d,
            _ => return,
        };
        let weight = param.val();
        let layout = WeightLayout {
            kind,
            shape: weight.dims().to_vec(),
            // Not visible to a visitor; ranking and reports do not depend on it.
            groups: 1,
        };
        let flat = weight.reshape([layout.numel()]);
        self.layers
            .entry(prefix(&self.stack, n - 2))
            .or_default()
            .weight = Some((flat, layout));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        if let Some((prefix, "step")) = prunable_field(&self.stack) {
            let step = to_vec_i64(param.val()).first().copied().unwrap_or(0).max(0) as u64;
            self.layers.entry(prefix).or_default().step = Some(step);
        }
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        if let Some((prefix, "mask")) = prunable_field(&self.stack) {
            self.layers.entry(prefix).or_default().mask = Some(to_vec_bool(param.val()));
        }
    }
}

/// A `Prunable` found in a model, with its effective weight on the host.
struct Layer {
    path: String,
    layout: WeightLayout,
    effective: Vec<f32>,
    mask: Vec<bool>,
    step: u64,
    target: f64,
}

fn find_layers<M: Module>(model: &M) -> Result<Vec<Layer>, PruneError> {
    let mut finder = Finder::default();
    model.visit(&mut finder);
    finder
        .layers
        .into_iter()
        .map(|(path, found)| {
            let (Some(mask), Some((weight, layout))) = (found.mask, found.weight) else {
                return Err(PruneError::UnsupportedLayer {
                    path,
                    reason: "model-wide pruning handles a Prunable directly around a burn \
                             Linear, Conv1d or Conv2d; call report() / prune_to() on this \
                             layer itself"
                        .into(),
                });
            };
            let raw = to_finite_vec_f32(weight, &path)?;
            if raw.len() != mask.len() {
                return Err(PruneError::UnsupportedLayer {
                    path,
                    reason: format!("mask has {} entries for {} weights", mask.len(), raw.len()),
                });
            }
            let effective = raw
                .iter()
                .zip(&mask)
                .map(|(w, k)| if *k { *w } else { 0.0 })
                .collect();
            Ok(Layer {
                path,
                layout,
                effective,
                mask,
                step: found.step.unwrap_or(0),
                target: found.target.unwrap_or(0.0),
            })
        })
        .collect()
}

fn report_of(layer: &Layer) -> LayerReport {
    let zeros = layer.effective.iter().filter(|w| **w == 0.0).count();
    let weights = layer.layout.numel();
    LayerReport {
        name: layer.path.clone(),
        layer: layer.layout.describe(),
        shape: layer.layout.shape.clone(),
        weights,
        pruned: layer.mask.iter().filter(|k| !**k).count(),
        zeros,
        sparsity: zeros as f64 / weights.max(1) as f64,
        target_sparsity: layer.target,
        step: layer.step,
    }
}

/// Per-layer pruning figures of every `Prunable` in `model`, by path, in path order.
pub fn model_report<M: Module>(model: &M) -> Result<Vec<LayerReport>, PruneError> {
    Ok(find_layers(model)?.iter().map(report_of).collect())
}

/// Writes new masks and targets into the `Prunable` layers of a model.
struct MaskWriter {
    stack: Vec<(String, String)>,
    masks: BTreeMap<String, (Vec<bool>, f64)>,
}

impl ModuleMapper for MaskWriter {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        if let Some((prefix, "mask")) = prunable_field(&self.stack)
            && let Some((mask, _)) = self.masks.get(&prefix)
        {
            let id = param.id;
            let value = param.val();
            let mask = bool_tensor(mask.clone(), &value.device()).reshape(value.shape());
            return Param::initialized(id, mask);
        }
        param
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some((prefix, "target_sparsity")) = prunable_field(&self.stack)
            && let Some((_, target)) = self.masks.get(&prefix)
        {
            let id = param.id;
            let value = param.val();
            let target =
                Tensor::<1>::from_floats([*target as f32], &value.device()).reshape(value.shape());
            return Param::initialized(id, target);
        }
        param
    }
}

/// One magnitude ranking over several weights (each flattened in burn's layout of its
/// layout): the masks (`true` = kept) that prune `sparsity` of all their weights, or blocks,
/// together. Unstructured or block granularity.
pub(crate) fn rank_together<'a>(
    weights: impl Iterator<Item = (&'a [f32], &'a WeightLayout)>,
    granularity: &Granularity,
    sparsity: f64,
) -> Vec<Vec<bool>> {
    let units: Vec<Units> = weights
        .map(|(effective, layout)| {
            let magnitudes = effective.iter().map(|w| w.abs()).collect();
            Units::new(magnitudes, layout, granularity)
        })
        .collect();
    let scores: Vec<f32> = units
        .iter()
        .flat_map(|u| u.scores.iter().copied())
        .collect();
    let mut pruned = vec![false; scores.len()];
    for i in smallest(&scores, prune_count(scores.len(), sparsity)) {
        pruned[i] = true;
    }
    let mut offset = 0;
    units
        .iter()
        .map(|units| {
            let count = units.scores.len();
            let mask = units.mask(&pruned[offset..offset + count]);
            offset += count;
            mask
        })
        .collect()
}

/// Global magnitude pruning: one ranking over the weights of every `Prunable` in a model.
///
/// Wrap the layers with [`Scope::Global`](crate::Scope::Global) (they then count steps and apply
/// their masks but leave the ranking to this), and call [`update`](Self::update) once after each
/// optimizer step, or [`prune_to`](Self::prune_to) for one-shot pruning.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalPruning {
    /// When masks are updated and to which overall sparsity.
    pub schedule: PruningSchedule,
    /// Unstructured or block (N:M has nothing to rank globally).
    pub granularity: Granularity,
}

impl GlobalPruning {
    /// Unstructured global pruning on `schedule`.
    pub fn new(schedule: PruningSchedule) -> Result<Self, PruneError> {
        Self {
            schedule,
            granularity: Granularity::Unstructured,
        }
        .validated()
    }

    /// The same with another pattern.
    pub fn with_granularity(self, granularity: Granularity) -> Result<Self, PruneError> {
        Self {
            granularity,
            ..self
        }
        .validated()
    }

    fn validated(self) -> Result<Self, PruneError> {
        crate::PruningConfig::new(self.schedule.clone())
            .with_granularity(self.granularity.clone())
            .with_scope(crate::Scope::Global)
            .validate()?;
        Ok(self)
    }

    /// Call after the optimizer step of training step `t` (the layers' step counters read `t`):
    /// when `t + 1` is an update step of the schedule, re-rank all layers for the sparsity of
    /// step `t + 1`, so that step's forward pass uses the new masks, as in per-layer pruning.
    /// Returns the per-layer report when masks changed.
    pub fn update<M: Module>(&self, model: M) -> Result<(M, Option<Vec<LayerReport>>), PruneError> {
        let layers = find_layers(&model)?;
        let Some(step) = layers.iter().map(|l| l.step).max() else {
            return Ok((model, None));
        };
        match self.schedule.update_at(step + 1) {
            Some(sparsity) => {
                let (model, report) = self.apply(model, layers, sparsity)?;
                Ok((model, Some(report)))
            }
            None => Ok((model, None)),
        }
    }

    /// Rank all layers now and prune `sparsity` of all their weights (or blocks) together.
    pub fn prune_to<M: Module>(
        &self,
        model: M,
        sparsity: f64,
    ) -> Result<(M, Vec<LayerReport>), PruneError> {
        if !(0.0..1.0).contains(&sparsity) {
            return Err(PruneError::Sparsity {
                field: "sparsity",
                value: sparsity,
            });
        }
        let layers = find_layers(&model)?;
        self.apply(model, layers, sparsity)
    }

    fn apply<M: Module>(
        &self,
        model: M,
        mut layers: Vec<Layer>,
        sparsity: f64,
    ) -> Result<(M, Vec<LayerReport>), PruneError> {
        let ranked = rank_together(
            layers.iter().map(|l| (l.effective.as_slice(), &l.layout)),
            &self.granularity,
            sparsity,
        );
        let mut masks = BTreeMap::new();
        for (layer, mask) in layers.iter_mut().zip(ranked) {
            for (w, keep) in layer.effective.iter_mut().zip(&mask) {
                if !keep {
                    *w = 0.0;
                }
            }
            layer.mask = mask.clone();
            layer.target = sparsity;
            masks.insert(layer.path.clone(), (mask, sparsity));
        }
        let model = model.map(&mut MaskWriter {
            stack: Vec::new(),
            masks,
        });
        tracing::debug!(sparsity, layers = layers.len(), "global masks updated");
        Ok((model, layers.iter().map(report_of).collect()))
    }
}
