//! Clustering a whole model without changing its types: trainable centroids attached to every
//! selected weight through burn's parameter reparameterization.
//!
//! Each weight gets a [`ClusterCentroids`] module: the forward pass uses the nearest centroid
//! for every weight ([`ClusterTransform`], the transform `Clustered` uses), the weights and the
//! centroids both train, and with `preserve_sparsity` the weights that are 0 when the model is
//! wrapped stay exactly 0. The centroids and masks are saved in the record as
//! `<weight path>.cluster.{centroids,zero_mask,pinned}`. Nothing advances per step.
//!
//! ```no_run
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use collab_cluster::{ClusteringConfig, WholeClustering};
//!
//! #[derive(Module, Debug)]
//! struct Net {
//!     fc: Linear,
//! }
//!
//! let device = Device::flex().autodiff();
//! let net = Net { fc: LinearConfig::new(16, 8).init(&device) };
//! let clustering = WholeClustering::new(ClusteringConfig::new(8).with_preserve_sparsity(true));
//! let (net, _wrapped) = clustering.wrap(net)?; // k-means on `fc.weight`
//! // train as usual
//! let plain = collab_core::whole::strip(net); // ≤ 8 distinct values in `fc.weight`
//! # Ok::<(), collab_cluster::ClusterError>(())
//! ```

use std::collections::BTreeMap;

use burn::module::{Module, Param, Reparameterization};
use burn::tensor::{Bool, Tensor};
use collab_core::host::{to_finite_vec_f32, to_vec_f32};
use collab_core::whole::{self, Selection, Wrapped};
use collab_core::{ChannelView, StateTensor, WeightTransform};

use crate::clustered::initial_state;
use crate::{ClusterError, ClusterReport, ClusterTransform, ClusteringConfig};

/// The reparameterization's name: its state is saved under `<weight path>.cluster.<field>`.
pub const NAME: &str = "cluster";

/// The clustering state attached to one weight.
#[derive(Module, Debug)]
pub struct ClusterCentroids {
    /// `[rows, k]`: one row per output channel, or a single row per tensor (trainable).
    pub centroids: Param<Tensor<2>>,
    /// Weights pinned to the zero centroid, `[numel]` in the view's order (all false unless
    /// sparsity is preserved).
    pub zero_mask: StateTensor<1, Bool>,
    /// Centroid slots fixed at 0, `[rows, k]` (column 0 when sparsity is preserved).
    pub pinned: StateTensor<2, Bool>,
    /// The `[rows, cols]` view of the weight (after `swapped`).
    #[module(skip)]
    view: ChannelView,
    /// Whether the weight's first two axes are swapped to put output channels first.
    #[module(skip)]
    swapped: bool,
    #[module(skip)]
    preserve_sparsity: bool,
    /// One shared codebook, each output channel scaled by its largest `|w|`.
    #[module(skip)]
    channel_scaled: bool,
}

impl ClusterCentroids {
    fn transform(&self) -> ClusterTransform {
        let transform = ClusterTransform::new(
            self.view,
            self.centroids.val(),
            self.preserve_sparsity
                .then(|| self.view.flatten_rows(self.zero_mask.get())),
            self.preserve_sparsity.then(|| self.pinned.get()),
        );
        if self.channel_scaled {
            transform.with_channel_scale()
        } else {
            transform
        }
    }

    /// Centroids per row (`k`).
    pub fn num_clusters(&self) -> usize {
        self.centroids.dims()[1]
    }
}

impl Reparameterization for ClusterCentroids {
    const NAME: &'static str = NAME;

    /// Every weight replaced by its nearest centroid (straight-through gradient to the weight,
    /// per-cluster sums to the centroids); same shape.
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let swap = |t: Tensor<D>| if self.swapped { t.swap_dims(0, 1) } else { t };
        swap(self.transform().apply(swap(base)))
    }
}

/// k-means clustering of every selected weight of a model whose types stay unchanged.
///
/// [`wrap`](Self::wrap) runs k-means once on each weight (`num_clusters` per tensor or per
/// output channel, `ClusteringConfig::overrides` keyed by the weight's path) and attaches the
/// centroids. Training then moves weights and centroids; nothing needs to be called per step.
#[derive(Clone, Debug)]
pub struct WholeClustering {
    config: ClusteringConfig,
    selection: Selection,
}

impl WholeClustering {
    /// Cluster every rank-2+ weight ([`Selection::all`]) with `config`.
    pub fn new(config: ClusteringConfig) -> Self {
        Self {
            config,
            selection: Selection::all(),
        }
    }

    /// Cluster the weights `selection` picks instead.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The clustering configuration.
    pub fn config(&self) -> &ClusteringConfig {
        &self.config
    }

    /// Run k-means on every selected weight and attach its centroids. Returns the model and
    /// what was wrapped and left as is. Fails (naming the weight's path) on a number of clusters
    /// that does not fit a weight, non-finite weights, per-channel clustering of a weight whose
    /// output-channel axis is unknown, or a weight that already carries a reparameterization.
    ///
    /// To load a record saved from a wrapped model, wrap a freshly built model the same way
    /// first, then load into it (its centroid tables must have the same shapes: k is reduced
    /// when a tensor has fewer distinct values than clusters).
    pub fn wrap<M: Module>(&self, model: M) -> Result<(M, Wrapped), ClusterError> {
        let (selected, summary) = whole::plan(&model, &self.selection)?;
        let mut states = BTreeMap::new();
        for weight in &selected {
            let site = &weight.site;
            let view = site.channel_view(self.config.per_channel || self.config.channel_scaled)?;
            let what = format!("`{}` ({})", site.path, site.describe());
            let values = site.view_order(&to_finite_vec_f32(weight.value.clone(), &what)?);
            if values.is_empty() {
                return Err(ClusterError::Empty { what });
            }
            let device = weight.value.device();
            let k = self.config.num_clusters_for(&site.path);
            let state = initial_state(&values, &site.layout(), &self.config, k, &what, &device)?;
            states.insert(
                site.path.clone(),
                ClusterCentroids {
                    centroids: Param::from_tensor(state.centroids),
                    zero_mask: StateTensor::new(state.zero_mask),
                    pinned: StateTensor::new(state.pinned),
                    view,
                    swapped: site.swapped(),
                    preserve_sparsity: self.config.preserve_sparsity,
                    channel_scaled: self.config.channel_scaled,
                },
            );
        }
        tracing::info!(
            wrapped = summary.wrapped.len(),
            left_as_is = summary.left_as_is.len(),
            "whole-model clustering attached"
        );
        Ok((whole::attach(model, states), summary))
    }

    /// Per-weight clustering figures of every weight of `model` wrapped by this clustering, in
    /// traversal order (`name` is the weight's path, `layer` e.g. `Conv2d [8, 4, 3, 3]`), from
    /// the effective weights: the whole-model form of `Clustered::report`, shaped as
    /// `WholePruning::report` and `WholeQat::report`. Fails on a wrapped weight whose state
    /// cannot be read (naming the path).
    pub fn report<M: Module>(&self, model: &M) -> Result<Vec<ClusterReport>, ClusterError> {
        let stats: BTreeMap<String, whole::WeightStats> = whole::report(model)
            .into_iter()
            .map(|s| (s.path.clone(), s))
            .collect();
        whole::scan(model, Some(NAME))
            .into_iter()
            .filter_map(|w| Some((stats.get(&w.site.path)?, w)))
            .map(|(s, w)| {
                let state = |reason: &str| ClusterError::State {
                    path: w.site.path.clone(),
                    reason: format!("its `{NAME}` state {reason}"),
                };
                let centroids = w
                    .state
                    .get("centroids")
                    .ok_or_else(|| state("has no tensor `centroids`"))?;
                let shape = centroids.shape().to_vec();
                let k = shape.get(1).copied().unwrap_or(1).max(1);
                let mut table = to_vec_f32(
                    centroids
                        .float()
                        .ok_or_else(|| state("holds `centroids` of another kind than float"))?,
                );
                if let Some(pinned) = w.state.get("pinned").and_then(|p| p.bool()) {
                    let pinned = collab_core::host::to_vec_bool(pinned);
                    for (c, p) in table.iter_mut().zip(pinned) {
                        if p {
                            *c = 0.0;
                        }
                    }
                }
                if self.config.channel_scaled {
                    // As the transform uses it: on the int8 grid, the last two at −1 and +1.
                    let n = table.len();
                    for (i, c) in table.iter_mut().enumerate() {
                        *c = match n - i {
                            2 => -1.0,
                            1 => 1.0,
                            _ => ((*c * 127.0).round().clamp(-127.0, 127.0)) / 127.0,
                        };
                    }
                }
                let site = self.selection.refine(w.site);
                Ok(ClusterReport {
                    name: site.path.clone(),
                    layer: site.describe(),
                    weights: s.weights,
                    zeros: s.zeros,
                    unique_per_tensor: s.unique_values,
                    max_unique_per_channel: s.max_unique_per_channel.unwrap_or(s.unique_values),
                    num_clusters: k,
                    per_channel: self.config.per_channel,
                    channel_scaled: self.config.channel_scaled,
                    centroids: table.chunks(k).map(|c| c.to_vec()).collect(),
                })
            })
            .collect()
    }
}
