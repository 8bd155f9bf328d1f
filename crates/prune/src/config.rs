//! `PruningConfig`: what to prune, how and when. One value, serialisable, passed to `wrap`.

use collab_core::WeightLayer;
use serde::{Deserialize, Serialize};

use crate::{Granularity, Prunable, PruneError, PruningSchedule};

/// Whose weights a mask update ranks together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each layer reaches the target sparsity on its own (TFMOT). The layer updates its mask
    /// itself, in its training forward passes.
    #[default]
    Layer,
    /// All `Scope::Global` layers of a model are ranked together, so layers with many small
    /// weights lose more. The layer only counts steps and applies its mask; masks are set by
    /// [`GlobalPruning`](crate::GlobalPruning), called once after each optimizer step.
    Global,
}

/// How a [`Prunable`] layer is pruned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruningConfig {
    /// When masks are updated and to which sparsity.
    pub schedule: PruningSchedule,
    /// Which weights are removed together.
    #[serde(default)]
    pub granularity: Granularity,
    /// Rank per layer or across the model.
    #[serde(default)]
    pub scope: Scope,
}

impl PruningConfig {
    /// Unstructured, per-layer pruning on `schedule`.
    pub fn new(schedule: PruningSchedule) -> Self {
        Self {
            schedule,
            granularity: Granularity::Unstructured,
            scope: Scope::Layer,
        }
    }

    /// The same configuration with another sparsity pattern.
    pub fn with_granularity(mut self, granularity: Granularity) -> Self {
        self.granularity = granularity;
        self
    }

    /// The same configuration with another ranking scope.
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Check the schedule and pattern (layer-independent parts).
    pub fn validate(&self) -> Result<(), PruneError> {
        self.schedule.validate()?;
        self.granularity.validate()?;
        if self.scope == Scope::Global && matches!(self.granularity, Granularity::NOfM { .. }) {
            return Err(PruneError::Granularity {
                layer: "configuration".into(),
                granularity: self.granularity.describe(),
                reason: "N:M fixes the sparsity of every layer, so there is nothing to rank \
                         globally; use Scope::Layer"
                    .into(),
            });
        }
        Ok(())
    }

    /// Wrap `layer` so that it is pruned during training. Fails if the configuration is
    /// invalid or the pattern does not fit the layer (e.g. 2:4 on a depthwise convolution).
    pub fn wrap<L: WeightLayer>(&self, layer: L) -> Result<Prunable<L>, PruneError> {
        Prunable::new(layer, self, None)
    }

    /// As [`wrap`](Self::wrap), for the layer called `name` (its path in the model), which
    /// errors then name. The same call as the other wrappers' configs, so code wrapping a model
    /// layer by layer reads the same for the three.
    pub fn wrap_named<L: WeightLayer>(
        &self,
        name: &str,
        layer: L,
    ) -> Result<Prunable<L>, PruneError> {
        Prunable::new(layer, self, Some(name))
    }
}
