//! `Clustered<L>`: a layer whose weight takes at most k distinct values (per tensor or per
//! output channel), with trainable centroids.
//!
//! The shape shared with `Prunable` (collab-prune) and `QatAware` (collab-quant): a
//! [`ClusteringConfig`], [`wrap`](ClusteringConfig::wrap) or
//! [`wrap_named`](ClusteringConfig::wrap_named) a layer, train with
//! [`forward`](Clustered::forward), read [`report`](Clustered::report), and
//! [`strip`](Clustered::strip) back to the plain burn layer.
//!
//! ```
//! use burn::nn::conv::Conv2dConfig;
//! use burn::tensor::{Device, Tensor};
//! use collab_cluster::ClusteringConfig;
//!
//! let device = Device::flex().autodiff();
//! let conv = Conv2dConfig::new([8, 16], [3, 3]).init(&device);
//! let config = ClusteringConfig::new(16).with_override("head", 4);
//! let conv = config.wrap_named("conv", conv)?; // k-means now: 16 centroids
//! // A training step moves the weights and the centroids (here only the forward pass).
//! let y = conv.forward(Tensor::<4>::ones([1, 8, 12, 12], &device));
//! let report = conv.report("conv");
//! assert_eq!((report.num_clusters, report.unique_per_tensor), (16, 16));
//! let plain = conv.strip(); // burn `Conv2d` with ≤ 16 distinct weight values
//! # Ok::<(), collab_cluster::ClusterError>(())
//! ```

use burn::module::{Module, Param};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use collab_core::host::{bool_tensor, to_finite_vec_f32, to_vec_f32};
use collab_core::layer::{WeightOnlyWrapper, WeightWrapper};
use collab_core::{
    ChannelView, LayerForward, StateTensor, WeightLayer, WeightLayout, WeightTransform,
};
use serde::Serialize;

use crate::kmeans::kmeans;
use crate::{ClusterError, ClusteringConfig};

/// Number of distinct values (by bit pattern, with -0.0 = 0.0); lives in `collab_core::host`.
pub use collab_core::host::distinct_count;

/// A burn layer (or a wrapper around one) whose weight is replaced, in every forward pass, by
/// the nearest of its centroids.
///
/// - Forward: `index = argmin_j |w - c_j|` (recomputed each pass, ties to the lower index),
///   `weight = c[index]`. Gradients pass straight through to the underlying weight `w` and are
///   summed per cluster into the centroids, so both train (TFMOT's semantics).
/// - Per channel: one row of centroids per output channel (axis 0 of conv weights, the output
///   feature of `Linear`), for every layer kind, depthwise included.
/// - Channel-scaled (`channel_scaled`): every output channel is divided by its largest `|w|`
///   (recomputed each pass, not trained), the normalized weights of the whole tensor share one
///   row of centroids, and the result is scaled back. The centroids are snapped to the int8 grid
///   (`round(127·c) / 127`, straight-through) and the last two are fixed at −1 and +1, which
///   each channel's largest weight takes. The per-channel symmetric int8 scale is then exactly
///   `max|w| / 127` and the int8 codes are `127·c`: the same ≤ k codes in every channel, where
///   per-channel clustering gives each channel codes of its own (and per-tensor clustering,
///   once quantized per channel, does too).
/// - `preserve_sparsity`: column 0 of the centroids is pinned at 0 and serves exactly the
///   weights that were 0 when the layer was wrapped (`zero_mask`); other weights choose among
///   the remaining centroids, so the zero count never changes.
/// - State: `centroids` (a trainable parameter), `zero_mask` and `pinned` (module state);
///   all are saved with the record. The underlying weight stays in the inner layer.
#[derive(Module, Debug)]
pub struct Clustered<L> {
    /// The wrapped layer. Its weight keeps training (straight-through gradients).
    pub inner: L,
    /// `[channels, k]`: one row per output channel, or a single row per tensor (also when
    /// channel-scaled: the shared codebook of normalized values).
    pub centroids: Param<Tensor<2>>,
    /// Weights pinned to the zero centroid, `[numel]` in burn's layout (all false unless
    /// sparsity is preserved).
    pub zero_mask: StateTensor<1, Bool>,
    /// Centroid slots fixed at 0, `[channels, k]` (column 0 when sparsity is preserved).
    pub pinned: StateTensor<2, Bool>,
    #[module(skip)]
    per_channel: bool,
    #[module(skip)]
    preserve_sparsity: bool,
    #[module(skip)]
    channel_scaled: bool,
}

/// Per-layer clustering figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterReport {
    /// The name given by the caller.
    pub name: String,
    /// e.g. `conv2d [64, 1, 3, 3] depthwise`.
    pub layer: String,
    /// Number of weights.
    pub weights: usize,
    /// Effective weights that are exactly 0.
    pub zeros: usize,
    /// Distinct effective values in the whole tensor.
    pub unique_per_tensor: usize,
    /// Most distinct effective values in one output channel.
    pub max_unique_per_channel: usize,
    /// Centroids per row (`k`).
    pub num_clusters: usize,
    /// Whether each output channel has its own centroids.
    pub per_channel: bool,
    /// Whether the channels share one codebook of normalized values, each scaled by its
    /// largest `|w|`.
    pub channel_scaled: bool,
    /// The centroid table, one row per channel (or one row).
    pub centroids: Vec<Vec<f32>>,
}

/// The clustering of a weight, as a transform any layer of the stack can apply.
#[derive(Clone, Debug)]
pub struct ClusterTransform {
    view: ChannelView,
    centroids: Tensor<2>,
    zero_mask: Option<Tensor<2, Bool>>,
    pinned: Option<Tensor<2, Bool>>,
    channel_scaled: bool,
}

impl ClusterTransform {
    /// The transform for a weight seen through `view`: `centroids` `[rows, k]`, and with
    /// sparsity preserved the zeros' mask in the `[rows, cols]` view and the pinned centroid
    /// slots `[rows, k]`.
    pub fn new(
        view: ChannelView,
        centroids: Tensor<2>,
        zero_mask: Option<Tensor<2, Bool>>,
        pinned: Option<Tensor<2, Bool>>,
    ) -> Self {
        Self {
            view,
            centroids,
            zero_mask,
            pinned,
            channel_scaled: false,
        }
    }

    /// Channel-scaled clustering (see [`Clustered`]): `view` is per output channel
    /// `[rows, cols]`, `centroids` is the shared codebook `[1, k]` (k ≥ 3: the last two are
    /// fixed at −1 and +1) and the zero mask and pinned slots are given as for one row.
    pub fn with_channel_scale(mut self) -> Self {
        self.channel_scaled = true;
        self
    }

    /// Nearest-centroid indices of a `[rows, cols]` view, `[rows, cols, 1]`.
    fn indices(&self, view: Tensor<2>, centroids: Tensor<2>) -> Tensor<3, Int> {
        let [rows, cols] = view.dims();
        let k = centroids.dims()[1];
        let mut distance = (view.detach().unsqueeze_dim::<3>(2)
            - centroids.clone().detach().unsqueeze_dim::<3>(1))
        .abs();
        if let Some(pinned) = &self.pinned {
            // Free weights never pick a pinned (zero) centroid.
            let block = pinned.clone().unsqueeze_dim::<3>(1).expand([rows, cols, k]);
            distance = distance.mask_fill(block, f32::INFINITY);
        }
        let index = distance.argmin(2);
        match &self.zero_mask {
            Some(zeros) => index.mask_fill(zeros.clone().unsqueeze_dim::<3>(2), 0),
            None => index,
        }
    }
}

impl WeightTransform for ClusterTransform {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        let shape = weight.shape();
        let view = self.view.flatten_rows(weight);
        let clustered = if self.channel_scaled {
            self.scaled(view)
        } else {
            self.assign(view)
        };
        self.view.unflatten_rows(clustered, shape)
    }
}

impl ClusterTransform {
    /// Nearest centroid of every weight of a `[rows, cols]` view: one fused op on flex, the
    /// same maths from burn ops elsewhere.
    fn assign(&self, view: Tensor<2>) -> Tensor<2> {
        crate::ops::fused::cluster_fused(
            view.clone(),
            self.centroids.clone(),
            self.zero_mask.clone(),
            self.pinned.is_some(),
        )
        .unwrap_or_else(|| self.composed(view))
    }

    /// Channel-scaled clustering of a per-channel `[rows, cols]` view: each row divided by its
    /// largest `|w|` (a constant for autodiff), all rows clustered with the one grid-snapped
    /// codebook, and scaled back. The weight gradient stays the identity; the codebook gets the
    /// scaled per-cluster sums. An all-zero row stays zero.
    fn scaled(&self, view: Tensor<2>) -> Tensor<2> {
        self.scaled_with(view, Self::assign)
    }

    /// [`scaled`](Self::scaled) with the nearest-centroid step given (the fused op, or in
    /// tests the composed burn ops).
    fn scaled_with(
        &self,
        view: Tensor<2>,
        assign: impl Fn(&ClusterTransform, Tensor<2>) -> Tensor<2>,
    ) -> Tensor<2> {
        let [rows, cols] = view.dims();
        let scale = view.clone().detach().abs().max_dim(1);
        let divisor = scale.clone().mask_fill(scale.clone().equal_elem(0.0), 1.0);
        let flat = (view / divisor).reshape([1, rows * cols]);
        let shared = ClusterTransform {
            view: self.view,
            centroids: self.centroids_effective(),
            zero_mask: self
                .zero_mask
                .as_ref()
                .map(|z| z.clone().reshape([1, rows * cols])),
            pinned: self.pinned.clone(),
            channel_scaled: false,
        };
        assign(&shared, flat).reshape([rows, cols]) * scale
    }
}

impl ClusterTransform {
    /// The transform of a `[rows, cols]` view from burn ops (every device; the reference the
    /// fused op is tested against).
    pub(crate) fn composed(&self, view: Tensor<2>) -> Tensor<2> {
        let centroids = self.centroids_effective();
        let index = self.indices(view.clone(), centroids.clone());
        let [rows, cols] = view.dims();
        let k = centroids.dims()[1];
        let gathered: Tensor<2> = centroids
            .unsqueeze_dim::<3>(1)
            .expand([rows, cols, k])
            .gather(2, index)
            .reshape([rows, cols]);
        // Value: the centroid. Gradient: identity to the weight, summed per cluster into the
        // centroids through `gather`.
        let mut clustered = gathered + (view.clone() - view.detach());
        if let Some(zeros) = &self.zero_mask {
            clustered = clustered.mask_fill(zeros.clone(), 0.0);
        }
        clustered
    }
}

impl<L: WeightLayer> Clustered<L> {
    /// Run k-means on `inner`'s effective weight and wrap it (see [`ClusteringConfig::wrap`]).
    pub(crate) fn new(
        inner: L,
        config: &ClusteringConfig,
        name: Option<&str>,
    ) -> Result<Self, ClusterError> {
        let num_clusters = name.map_or(config.num_clusters, |n| config.num_clusters_for(n));
        let name = name.unwrap_or("layer");
        let layout = inner.layout();
        let what = format!("{name} ({})", layout.describe());
        let device = inner.effective_weight().device();
        let weights = to_finite_vec_f32(inner.effective_weight(), &what)?;
        if weights.is_empty() {
            return Err(ClusterError::Empty { what });
        }
        let state = initial_state(&weights, &layout, config, num_clusters, &what, &device)?;
        Ok(Self {
            inner,
            centroids: Param::from_tensor(state.centroids),
            zero_mask: StateTensor::new(state.zero_mask),
            pinned: StateTensor::new(state.pinned),
            per_channel: config.per_channel,
            preserve_sparsity: config.preserve_sparsity,
            channel_scaled: config.channel_scaled,
        })
    }

    /// Forward pass with the clustered weight.
    ///
    /// # Shapes
    /// As the wrapped layer.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D>
    where
        L: LayerForward<D>,
    {
        self.forward_transformed(input, &collab_core::NoTransform)
    }

    /// Centroids per row (`k`).
    pub fn num_clusters(&self) -> usize {
        self.centroids.dims()[1]
    }

    /// Whether each output channel has its own centroids.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }

    /// Whether the channels share one int8-grid codebook, each scaled by its largest `|w|`.
    pub fn channel_scaled(&self) -> bool {
        self.channel_scaled
    }

    /// The current centroid table, one row per channel (or one row; channel-scaled: the shared
    /// codebook of normalized values, snapped to the int8 grid).
    pub fn centroid_table(&self) -> Vec<Vec<f32>> {
        let k = self.num_clusters();
        let mut values = to_vec_f32(self.transform().centroids_effective());
        values.truncate(self.centroids.dims()[0] * k);
        values.chunks(k).map(|c| c.to_vec()).collect()
    }

    fn transform(&self) -> ClusterTransform {
        let layout = self.inner.layout();
        let view = ChannelView::new(&layout, self.per_channel || self.channel_scaled);
        ClusterTransform {
            view,
            centroids: self.centroids.val(),
            zero_mask: self
                .preserve_sparsity
                .then(|| view.flatten_rows(self.zero_mask.get())),
            pinned: self.preserve_sparsity.then(|| self.pinned.get()),
            channel_scaled: self.channel_scaled,
        }
    }

    /// The plain layer whose weight holds only centroid values (as [`WeightLayer::strip`],
    /// without importing the trait).
    pub fn strip(self) -> L::Plain {
        WeightLayer::strip(self)
    }

    /// Per-layer figures from the effective weight.
    pub fn report(&self, name: &str) -> ClusterReport {
        let layout = self.inner.layout();
        let values = to_vec_f32(self.effective_weight());
        let channels = layout.out_channels();
        let mut per_channel: Vec<Vec<f32>> = vec![Vec::new(); channels];
        for (i, v) in values.iter().enumerate() {
            per_channel[layout.out_channel_of(i)].push(*v);
        }
        ClusterReport {
            name: name.to_string(),
            layer: layout.describe(),
            weights: values.len(),
            zeros: values.iter().filter(|v| **v == 0.0).count(),
            unique_per_tensor: distinct_count(&values),
            max_unique_per_channel: per_channel
                .iter()
                .map(|c| distinct_count(c))
                .max()
                .unwrap_or(0),
            num_clusters: self.num_clusters(),
            per_channel: self.per_channel,
            channel_scaled: self.channel_scaled,
            centroids: self.centroid_table(),
        }
    }
}

/// The clustering state of a weight when it is wrapped: centroids `[rows, k]` (k-means per row),
/// the preserved zeros `[numel]` and the pinned centroid slots `[rows, k]`.
pub(crate) struct InitialState {
    pub centroids: Tensor<2>,
    pub zero_mask: Tensor<1, Bool>,
    pub pinned: Tensor<2, Bool>,
}

/// k-means on `weights` (finite, non-empty, flattened in burn's layout of `layout`) for
/// `num_clusters` per tensor or per output channel as `config` says; `what` names the weight in
/// errors and warnings. Shared by [`Clustered`] and the whole-model wrapper.
pub(crate) fn initial_state(
    weights: &[f32],
    layout: &WeightLayout,
    config: &ClusteringConfig,
    num_clusters: usize,
    what: &str,
    device: &Device,
) -> Result<InitialState, ClusterError> {
    let view = ChannelView::new(layout, config.per_channel);
    let preserve = config.preserve_sparsity;
    let k_err = |reason: String| ClusterError::NumClusters {
        what: what.to_string(),
        reason,
    };
    if num_clusters < 1 {
        return Err(k_err(
            "num_clusters is 0; use at least 1 (16 is TFMOT's usual choice)".into(),
        ));
    }
    if preserve && num_clusters < 2 {
        return Err(k_err(
            "sparsity-preserving clustering needs num_clusters >= 2 (one is the fixed zero)".into(),
        ));
    }
    if config.channel_scaled {
        if config.per_channel {
            return Err(k_err(
                "per_channel and channel_scaled are exclusive; choose one (channel_scaled shares \
                 one codebook across channels, per_channel gives each channel its own)"
                    .into(),
            ));
        }
        return scaled_state(weights, layout, config, num_clusters, what, device);
    }
    if num_clusters > view.cols {
        let unit = if view.rows == 1 {
            "tensor"
        } else {
            "output channel"
        };
        return Err(k_err(format!(
            "num_clusters {num_clusters} exceeds the {} weights per {unit}; use at most {}{}",
            view.cols,
            view.cols,
            if view.rows > 1 {
                " or per-tensor clustering"
            } else {
                ""
            }
        )));
    }

    // Group weights by row (channel), excluding preserved zeros.
    let mut rows: Vec<Vec<f32>> = vec![Vec::with_capacity(view.cols); view.rows];
    let zero_mask: Vec<bool> = weights.iter().map(|w| preserve && *w == 0.0).collect();
    for (i, w) in weights.iter().enumerate() {
        if !zero_mask[i] {
            rows[view.row_of(layout, i)].push(*w);
        }
    }
    let free = num_clusters - usize::from(preserve);
    let mut k_free = free;
    if view.rows == 1 {
        let distinct = distinct_count(&rows[0]);
        if distinct < free {
            tracing::warn!(layer = %what, num_clusters, distinct, "fewer distinct weights than clusters; using fewer clusters");
            k_free = distinct.max(1);
        }
    } else if let Some((r, d)) = rows
        .iter()
        .map(|r| distinct_count(r))
        .enumerate()
        .find(|(_, d)| *d < free)
    {
        tracing::warn!(layer = %what, channel = r, distinct = d, num_clusters, "a channel has fewer distinct weights than clusters; its centroids repeat");
    }
    let k = k_free + usize::from(preserve);
    let mut table = Vec::with_capacity(view.rows * k);
    for (r, values) in rows.iter().enumerate() {
        if preserve {
            table.push(0.0);
        }
        let seed = config.seed.wrapping_add(r as u64);
        table.extend(kmeans(values, k_free, config.init, seed).centroids);
        if values.is_empty() {
            tracing::warn!(layer = %what, channel = r, "channel is all zeros; its free centroids are 0");
        }
    }
    let centroids = Tensor::<2>::from_data(TensorData::new(table, [view.rows, k]), device);
    let pinned: Vec<bool> = (0..view.rows * k).map(|i| preserve && i % k == 0).collect();
    let pinned = Tensor::<2, Bool>::from_data(TensorData::new(pinned, [view.rows, k]), device);
    Ok(InitialState {
        centroids,
        zero_mask: bool_tensor(zero_mask, device),
        pinned,
    })
}

/// [`initial_state`] for channel-scaled clustering: k-means on every weight divided by its
/// channel's largest `|w|`, one row `[1, k]`: the fixed zero first when sparsity is preserved,
/// then `k − 2` (or `k − 3`) free centroids, then −1 and +1.
fn scaled_state(
    weights: &[f32],
    layout: &WeightLayout,
    config: &ClusteringConfig,
    num_clusters: usize,
    what: &str,
    device: &Device,
) -> Result<InitialState, ClusterError> {
    let preserve = config.preserve_sparsity;
    let fixed = 2 + usize::from(preserve);
    if num_clusters <= fixed {
        return Err(ClusterError::NumClusters {
            what: what.to_string(),
            reason: format!(
                "channel-scaled clustering needs num_clusters >= {} (−1 and +1{} are fixed)",
                fixed + 1,
                if preserve { " and the zero" } else { "" }
            ),
        });
    }
    let view = ChannelView::new(layout, true);
    let mut scale = vec![0f32; view.rows];
    for (i, w) in weights.iter().enumerate() {
        let r = view.row_of(layout, i);
        scale[r] = scale[r].max(w.abs());
    }
    let zero_mask: Vec<bool> = weights.iter().map(|w| preserve && *w == 0.0).collect();
    let normalized: Vec<f32> = weights
        .iter()
        .enumerate()
        .filter(|(i, _)| !zero_mask[*i])
        .filter_map(|(i, w)| {
            let s = scale[view.row_of(layout, i)];
            (s > 0.0).then(|| w / s)
        })
        .collect();
    let mut k_free = num_clusters - fixed;
    let distinct = distinct_count(&normalized);
    if distinct < k_free {
        tracing::warn!(layer = %what, num_clusters, distinct, "fewer distinct normalized weights than clusters; using fewer clusters");
        k_free = distinct.max(1);
    }
    let mut table = Vec::with_capacity(k_free + fixed);
    if preserve {
        table.push(0.0);
    }
    table.extend(kmeans(&normalized, k_free, config.init, config.seed).centroids);
    table.extend([-1.0, 1.0]);
    let k = table.len();
    let centroids = Tensor::<2>::from_data(TensorData::new(table, [1, k]), device);
    let pinned: Vec<bool> = (0..k).map(|i| preserve && i == 0).collect();
    let pinned = Tensor::<2, Bool>::from_data(TensorData::new(pinned, [1, k]), device);
    Ok(InitialState {
        centroids,
        zero_mask: bool_tensor(zero_mask, device),
        pinned,
    })
}

impl ClusterTransform {
    /// The centroids the weights take: pinned slots at 0; channel-scaled, also snapped to the
    /// int8 grid (straight-through) with the last two slots at −1 and +1.
    fn centroids_effective(&self) -> Tensor<2> {
        let centroids = match &self.pinned {
            Some(pinned) => self.centroids.clone().mask_fill(pinned.clone(), 0.0),
            None => self.centroids.clone(),
        };
        if !self.channel_scaled {
            return centroids;
        }
        let [rows, k] = centroids.dims();
        let detached = centroids.clone().detach();
        let mut codes = (detached.clone() * 127.0).round().clamp(-127.0, 127.0);
        if let Some(pinned) = &self.pinned {
            // Sparsity preserved: only the pinned slot may be 0, so a free centroid that rounds
            // to 0 takes the nearest non-zero code and no non-zero weight becomes 0.
            let zero = codes
                .clone()
                .equal_elem(0.0)
                .bool_and(pinned.clone().bool_not());
            let negative = detached.clone().lower_elem(0.0);
            codes = codes
                .mask_fill(zero.clone().bool_and(negative.clone().bool_not()), 1.0)
                .mask_fill(zero.bool_and(negative), -1.0);
        }
        let snapped = codes / 127.0;
        let free = centroids.clone() + (snapped - centroids.detach());
        let ends = Tensor::<2>::from_data(
            TensorData::new([-1.0f32, 1.0].repeat(rows), [rows, 2]),
            &free.device(),
        );
        Tensor::cat(vec![free.slice([0..rows, 0..k - 2]), ends], 1)
    }
}

/// [`WeightLayer`] and [`LayerForward`] follow (collab-core's blanket implementations): the
/// forward pass computes with the nearest centroids, `strip` leaves only centroid values.
impl<L: WeightLayer> WeightWrapper for Clustered<L> {
    type Inner = L;
    type Transform = ClusterTransform;

    fn inner(&self) -> &L {
        &self.inner
    }

    fn into_inner(self) -> L {
        self.inner
    }

    fn weight_transform(&self) -> ClusterTransform {
        self.transform()
    }

    /// The transform with its centroids detached.
    fn strip_transform(&self) -> ClusterTransform {
        let transform = self.transform();
        ClusterTransform {
            centroids: transform.centroids.clone().detach(),
            ..transform
        }
    }
}

impl<L: WeightLayer> WeightOnlyWrapper for Clustered<L> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusteringConfig;
    use burn::nn::LinearConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};
    use collab_core::PlainLayer;

    /// The fused transform against the composed one: the same values and weight gradient bit
    /// for bit, the same centroid gradient within rounding (another summation order).
    fn check<L: WeightLayer>(layer: L, config: &ClusteringConfig) {
        let device = Device::flex().autodiff();
        let clustered = config.wrap(layer).unwrap();
        let t = clustered.transform();
        let weight = clustered.inner.effective_weight();
        let n = weight.shape().num_elements();
        let leaf = || {
            (
                Tensor::<1>::from_data(weight.clone().into_data(), &device).require_grad(),
                Tensor::<2>::from_data(t.centroids.clone().into_data(), &device).require_grad(),
            )
        };
        let g = Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let run = |fused: bool| {
            let (w, c) = leaf();
            let t = ClusterTransform {
                centroids: c.clone(),
                ..t.clone()
            };
            let y = if fused {
                t.apply(w.clone())
            } else {
                let shape = w.shape();
                let view = t.view.flatten_rows(w.clone());
                let y = if t.channel_scaled {
                    t.scaled_with(view, ClusterTransform::composed)
                } else {
                    t.composed(view)
                };
                t.view.unflatten_rows(y, shape)
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (
                to_vec_f32(y),
                to_vec_f32(w.grad(&grads).unwrap()),
                to_vec_f32(c.grad(&grads).unwrap()),
            )
        };
        let (fused, composed) = (run(true), run(false));
        assert_eq!(fused.0, composed.0, "values");
        assert_eq!(fused.1, composed.1, "weight gradient");
        let scale = composed.2.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (a, b) in fused.2.iter().zip(&composed.2) {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "centroid gradient {a} vs {b}"
            );
        }
    }

    /// Half the weights set to 0, as pruning leaves them.
    fn sparse(weight: Tensor<1>) -> Tensor<1> {
        let n = weight.shape().num_elements();
        let mask: Vec<f32> = (0..n).map(|i| ((i * 7) % 2) as f32).collect();
        weight.clone() * Tensor::from_data(TensorData::new(mask, [n]), &weight.device())
    }

    #[test]
    fn fused_transform_matches_the_composed_ops() {
        let device = Device::flex().autodiff();
        let conv = || Conv2dConfig::new([6, 10], [3, 3]).init(&device);
        let depthwise = || {
            Conv2dConfig::new([12, 12], [3, 3])
                .with_groups(12)
                .init(&device)
        };
        // Per tensor, per channel, and a Linear (transposed view) with more weights per row
        // than one kernel chunk.
        check(conv(), &ClusteringConfig::new(8));
        check(conv(), &ClusteringConfig::new(5).with_per_channel(true));
        check(
            depthwise(),
            &ClusteringConfig::new(4).with_per_channel(true),
        );
        check(
            LinearConfig::new(300, 120).init(&device),
            &ClusteringConfig::new(16),
        );
        check(
            LinearConfig::new(40, 30).init(&device),
            &ClusteringConfig::new(6).with_per_channel(true),
        );
        // Sparsity-preserving: zeros kept, centroid 0 pinned.
        let preserve = ClusteringConfig::new(6).with_preserve_sparsity(true);
        check(conv().map_weight(sparse), &preserve);
        check(
            conv().map_weight(sparse),
            &preserve.clone().with_per_channel(true),
        );
        check(
            LinearConfig::new(300, 120).init(&device).map_weight(sparse),
            &preserve,
        );
        // Channel-scaled: one codebook for every channel, with and without zeros kept.
        let scaled = ClusteringConfig::new(7).with_channel_scaled(true);
        check(conv(), &scaled);
        check(depthwise(), &scaled);
        check(LinearConfig::new(40, 30).init(&device), &scaled);
        check(
            conv().map_weight(sparse),
            &scaled.clone().with_preserve_sparsity(true),
        );
    }
}
