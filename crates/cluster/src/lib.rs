//! Weight clustering for burn layers.
//!
//! Wrap a `Linear`, `Conv1d` or `Conv2d` (depthwise and grouped included), or a
//! [`Prunable`](https://docs.rs/collab-prune) one, in [`Clustered`] through a
//! [`ClusteringConfig`]: k-means (k-means++ / linear / random / density init, then Lloyd)
//! chooses `num_clusters` centroids per tensor or per output channel, the forward pass uses the
//! nearest centroid for every weight, and training moves both the weights and the centroids.
//! [`strip`](Clustered::strip) returns the plain burn layer with at most k values
//! per tensor (or per channel). A model whose types cannot change is clustered as a whole with
//! [`WholeClustering`] (burn's parameter reparameterization; see [`whole`]). The fused flex
//! kernel with its autodiff backward lives apart from the API, in [`ops`].
//!
//! The three layer wrappers of the workspace (`Prunable`, this one, `QatAware`) share one
//! shape, shown in [`clustered`]: a config, `wrap` / `wrap_named` a layer, `forward` (training
//! steps), `report(name)`, `strip`.

pub mod clustered;
pub mod config;
pub mod error;
pub mod kmeans;
pub mod ops;
pub mod whole;

pub use clustered::{ClusterReport, ClusterTransform, Clustered, distinct_count};
pub use config::ClusteringConfig;
pub use error::ClusterError;
pub use kmeans::{CentroidInit, KMeans, kmeans};
pub use whole::{ClusterCentroids, WholeClustering};
