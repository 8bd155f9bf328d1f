//! `ClusteringConfig`: how many clusters, per tensor or per channel, how initialised.

use std::collections::BTreeMap;

use collab_core::WeightLayer;
use serde::{Deserialize, Serialize};

use crate::{CentroidInit, ClusterError, Clustered};

/// How a [`Clustered`] layer is clustered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusteringConfig {
    /// Distinct weight values per tensor (or per output channel), the zero included when
    /// `preserve_sparsity` is on.
    pub num_clusters: usize,
    /// One set of centroids per output channel instead of one per tensor.
    #[serde(default)]
    pub per_channel: bool,
    /// Channel-scaled clustering: one table of `num_clusters` codes on the int8 grid shared by
    /// every output channel, each channel scaled by its largest `|w|` (see [`Clustered`]). Per
    /// output channel ranges like `per_channel`, yet the int8 file holds the same ≤ k codes in
    /// every channel, so gzip and Vela's weight encoding keep the gain of per-tensor
    /// clustering. Excludes `per_channel`.
    #[serde(default)]
    pub channel_scaled: bool,
    /// Centroid initialisation before k-means.
    #[serde(default)]
    pub init: CentroidInit,
    /// Keep every zero weight at exactly 0 (a fixed zero centroid and the zeros' mask), and
    /// never turn a non-zero weight into 0: sparsity-preserving clustering of a pruned layer.
    #[serde(default)]
    pub preserve_sparsity: bool,
    /// Seed of the initialisation (k-means++ and random).
    #[serde(default)]
    pub seed: u64,
    /// Per-layer `num_clusters`, by the name given to [`wrap_named`](Self::wrap_named).
    #[serde(default)]
    pub overrides: BTreeMap<String, usize>,
}

impl ClusteringConfig {
    /// `num_clusters` per tensor, k-means++ init, seed 0.
    pub fn new(num_clusters: usize) -> Self {
        Self {
            num_clusters,
            per_channel: false,
            channel_scaled: false,
            init: CentroidInit::KMeansPlusPlus,
            preserve_sparsity: false,
            seed: 0,
            overrides: BTreeMap::new(),
        }
    }

    /// Per output channel (`true`) or per tensor.
    pub fn with_per_channel(mut self, per_channel: bool) -> Self {
        self.per_channel = per_channel;
        self
    }

    /// Channel-scaled clustering (one int8-grid codebook, a scale per output channel) on or
    /// off.
    pub fn with_channel_scaled(mut self, channel_scaled: bool) -> Self {
        self.channel_scaled = channel_scaled;
        self
    }

    /// Another initialisation.
    pub fn with_init(mut self, init: CentroidInit) -> Self {
        self.init = init;
        self
    }

    /// Sparsity-preserving clustering on or off.
    pub fn with_preserve_sparsity(mut self, preserve: bool) -> Self {
        self.preserve_sparsity = preserve;
        self
    }

    /// Another seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// `num_clusters` for the layer wrapped as `name`.
    pub fn with_override(mut self, name: &str, num_clusters: usize) -> Self {
        self.overrides.insert(name.to_string(), num_clusters);
        self
    }

    /// The number of clusters for the layer called `name`.
    pub fn num_clusters_for(&self, name: &str) -> usize {
        self.overrides
            .get(name)
            .copied()
            .unwrap_or(self.num_clusters)
    }

    /// Cluster `layer`'s current effective weight with k-means and wrap it.
    pub fn wrap<L: WeightLayer>(&self, layer: L) -> Result<Clustered<L>, ClusterError> {
        Clustered::new(layer, self, None)
    }

    /// As [`wrap`](Self::wrap), for the layer called `name` (its path in the model): with this
    /// layer's override of `num_clusters`, if any; `name` also appears in errors and warnings.
    pub fn wrap_named<L: WeightLayer>(
        &self,
        name: &str,
        layer: L,
    ) -> Result<Clustered<L>, ClusterError> {
        Clustered::new(layer, self, Some(name))
    }
}
