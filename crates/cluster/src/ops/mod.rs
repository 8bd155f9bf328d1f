//! Backend kernels of weight clustering, apart from the API (the `Clustered` wrapper, its
//! configuration, k-means, whole-model clustering).
//!
//! Why apart: this code is backend-specific: a burn backend extension with a `flex` kernel and
//! an `Autodiff` backward, the fused form of the burn ops that `ClusterTransform` composes on
//! other devices. It has the op shape described in `collab_core::ops` (and, should it gain
//! SIMD loops, follows `collab_core::ops::cpu`).
//!
//! - [`fused`]: nearest centroid per weight with the straight-through gradient to the weight
//!   and per-cluster sums to the centroids, one pass each.
//!
//! # What it may import
//! burn, burn-flex, burn-autodiff, rayon and `collab_core::ops`; nothing of this crate's API.

pub mod fused;
