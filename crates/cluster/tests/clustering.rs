//! Clustering during training: at most k values, centroids train, zeros preserved, records.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use collab_cluster::{CentroidInit, ClusterError, Clustered, ClusteringConfig, distinct_count};
use collab_core::host::to_vec_f32;
use collab_core::{LayerForward, PlainLayer, WeightLayer};
use collab_prune::{PruningConfig, PruningSchedule};
use proptest::prelude::*;

fn device() -> Device {
    Device::flex().autodiff()
}

/// Distinct effective values per output channel (and for the tensor).
fn unique_counts<L: WeightLayer>(layer: &L) -> (usize, Vec<usize>) {
    let layout = layer.layout();
    let values = to_vec_f32(layer.effective_weight());
    let mut rows = vec![Vec::new(); layout.out_channels()];
    for (i, v) in values.iter().enumerate() {
        rows[layout.out_channel_of(i)].push(*v);
    }
    (
        distinct_count(&values),
        rows.iter().map(|r| distinct_count(r)).collect(),
    )
}

/// `steps` Adam steps of a regression towards 1 on random input.
fn train_conv<L: LayerForward<4>>(
    mut layer: L,
    cin: usize,
    steps: usize,
    mut check: impl FnMut(&L),
) -> L {
    let device = device();
    let mut optim = AdamConfig::new().init();
    for _ in 0..steps {
        let x = Tensor::<4>::random([2, cin, 5, 5], Distribution::Normal(0.0, 1.0), &device);
        let loss = (layer.forward(x) - 1.0).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(2e-2, layer, grads);
        check(&layer);
    }
    layer
}

#[test]
fn per_tensor_and_per_channel_bounds_hold_through_training() {
    let device = device();
    for per_channel in [false, true] {
        let config = ClusteringConfig::new(4)
            .with_per_channel(per_channel)
            .with_seed(1);
        // Regular, depthwise and grouped convolutions.
        for (cin, cout, groups) in [(6, 8, 1), (8, 8, 8), (6, 4, 2)] {
            let conv = Conv2dConfig::new([cin, cout], [3, 3])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let before = to_vec_f32(conv.weight.val());
            let layer = config.wrap(conv).unwrap();
            let start = layer.centroid_table();
            let check = |l: &Clustered<burn::nn::conv::Conv2d>| {
                let (tensor, channels) = unique_counts(l);
                if per_channel {
                    assert!(channels.iter().all(|u| *u <= 4), "{channels:?}");
                } else {
                    assert!(tensor <= 4, "{tensor} values");
                }
            };
            check(&layer);
            let layer = train_conv(layer, cin, 15, check);
            // Centroids trained, weights trained, and every effective value is a centroid of its row.
            assert_ne!(layer.centroid_table(), start, "centroids did not move");
            assert_ne!(
                to_vec_f32(layer.inner.weight.val()),
                before,
                "weights did not move"
            );
            let table = layer.centroid_table();
            let layout = layer.layout();
            for (i, v) in to_vec_f32(layer.effective_weight()).iter().enumerate() {
                let row = if per_channel {
                    layout.out_channel_of(i)
                } else {
                    0
                };
                assert!(
                    table[row].contains(v),
                    "weight {i} = {v} is not a centroid of row {row}"
                );
            }
        }
    }
}

#[test]
fn linear_per_channel_uses_output_features() {
    let device = device();
    let fc = LinearConfig::new(12, 3).init(&device);
    let layer = ClusteringConfig::new(3)
        .with_per_channel(true)
        .wrap(fc)
        .unwrap();
    assert_eq!(layer.centroid_table().len(), 3);
    let (_, channels) = unique_counts(&layer);
    assert!(channels.iter().all(|u| *u <= 3));
    let report = layer.report("fc");
    assert!(report.max_unique_per_channel <= 3 && report.unique_per_tensor <= 9);
    let plain = layer.strip();
    let (_, channels) = unique_counts(&plain);
    assert!(
        channels.iter().all(|u| *u <= 3),
        "stripped layer keeps the bound"
    );
}

#[test]
fn gradients_are_straight_through_to_weights_and_summed_into_centroids() {
    let device = device();
    let fc = LinearConfig::new(1, 4).with_bias(false).init(&device);
    let fc = fc.map_weight(|w| {
        Tensor::from_data(
            TensorData::new(vec![0.1f32, 0.2, 0.9, 1.0], [4]),
            &w.device(),
        )
    });
    let layer = ClusteringConfig::new(2)
        .with_init(CentroidInit::Linear)
        .wrap(fc)
        .unwrap();
    let table = layer.centroid_table();
    assert!(
        (table[0][0] - 0.15).abs() < 1e-6 && (table[0][1] - 0.95).abs() < 1e-6,
        "{table:?}"
    );
    // loss = sum over outputs of (output · [1, 2, 3, 4]) with input 1: dL/dw_eff = [1, 2, 3, 4].
    let x = Tensor::<2>::ones([1, 1], &device);
    let scale = Tensor::<2>::from_data(TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [1, 4]), &device);
    let loss = (layer.forward(x) * scale).sum();
    let grads = loss.backward();
    let w_grad = to_vec_f32(layer.inner.weight.val().grad(&grads).unwrap());
    let c_grad = to_vec_f32(layer.centroids.val().grad(&grads).unwrap());
    assert_eq!(w_grad, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(c_grad, vec![3.0, 7.0]);
}

#[test]
fn sparsity_preserving_clustering_of_a_pruned_layer() {
    let device = device();
    // Prune a conv to 50%, strip it, then cluster with the zeros preserved.
    let conv = Conv2dConfig::new([8, 8], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(conv)
        .unwrap();
    pruned.prune_to(0.5).unwrap();
    let plain = pruned.strip();
    let zeros_before: Vec<bool> = to_vec_f32(plain.weight.val())
        .iter()
        .map(|w| *w == 0.0)
        .collect();
    let layer = ClusteringConfig::new(8)
        .with_preserve_sparsity(true)
        .wrap(plain)
        .unwrap();
    let layer = train_conv(layer, 8, 20, |l| {
        let values = to_vec_f32(l.effective_weight());
        for (i, z) in zeros_before.iter().enumerate() {
            assert_eq!(
                *z,
                values[i] == 0.0,
                "weight {i}: zero before = {z}, now {}",
                values[i]
            );
        }
        assert!(distinct_count(&values) <= 8);
    });
    assert_eq!(
        layer.report("c").zeros,
        zeros_before.iter().filter(|z| **z).count()
    );
    assert_eq!(layer.centroid_table()[0][0], 0.0);
}

#[test]
fn clustered_stacks_on_prunable() {
    let device = device();
    let conv = Conv2dConfig::new([4, 6], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(conv)
        .unwrap();
    pruned.prune_to(0.5).unwrap();
    let zeros = pruned.mask_values().iter().filter(|k| !**k).count();
    let stacked = ClusteringConfig::new(6)
        .with_per_channel(true)
        .with_preserve_sparsity(true)
        .wrap(pruned)
        .unwrap();
    let stacked = train_conv(stacked, 4, 10, |l| {
        let (_, channels) = unique_counts(l);
        assert!(channels.iter().all(|u| *u <= 6));
    });
    assert_eq!(stacked.report("s").zeros, zeros);
    let plain = stacked.strip();
    let values = to_vec_f32(plain.weight.val());
    assert_eq!(values.iter().filter(|v| **v == 0.0).count(), zeros);
}

#[test]
fn save_load_continue_is_identical() {
    let device = device();
    device.seed(4);
    let make = || {
        Conv2dConfig::new([3, 5], [3, 3])
            .with_padding(PaddingConfig2d::Same)
            .init(&device)
    };
    let config = ClusteringConfig::new(5).with_per_channel(true);
    let layer = train_conv(config.wrap(make()).unwrap(), 3, 5, |_| {});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clustered.bpk");
    layer.clone().save_file(&path).unwrap();
    let loaded = config.wrap(make()).unwrap().load_file(&path);
    assert_eq!(loaded.centroid_table(), layer.centroid_table());
    assert_eq!(
        to_vec_f32(loaded.effective_weight()),
        to_vec_f32(layer.effective_weight())
    );
    // Continue both on the same inputs: identical.
    let x = Tensor::<4>::random([2, 3, 5, 5], Distribution::Normal(0.0, 1.0), &device);
    let step = |l: Clustered<burn::nn::conv::Conv2d>| {
        let mut optim = AdamConfig::new().init();
        let loss = l.forward(x.clone()).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &l);
        optim.step(1e-2, l, grads)
    };
    let (a, b) = (step(layer), step(loaded));
    assert_eq!(a.centroid_table(), b.centroid_table());
    assert_eq!(
        to_vec_f32(a.effective_weight()),
        to_vec_f32(b.effective_weight())
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let device = Device::flex();
    let fc = || LinearConfig::new(4, 2).init(&device);
    let err = ClusteringConfig::new(0).wrap(fc()).unwrap_err();
    assert!(
        matches!(err, ClusterError::NumClusters { .. }) && err.to_string().contains("at least 1"),
        "{err}"
    );
    let err = ClusteringConfig::new(9).wrap(fc()).unwrap_err();
    assert!(
        err.to_string().contains("exceeds the 8 weights per tensor"),
        "{err}"
    );
    let err = ClusteringConfig::new(5)
        .with_per_channel(true)
        .wrap(fc())
        .unwrap_err();
    assert!(err.to_string().contains("per output channel"), "{err}");
    let err = ClusteringConfig::new(1)
        .with_preserve_sparsity(true)
        .wrap(fc())
        .unwrap_err();
    assert!(err.to_string().contains(">= 2"), "{err}");
    let nan = fc().map_weight(|w| w / 0.0);
    let err = ClusteringConfig::new(2).wrap(nan).unwrap_err();
    assert!(
        matches!(err, ClusterError::Core(_)) && err.to_string().contains("non-finite"),
        "{err}"
    );
    // Overrides by name.
    let config = ClusteringConfig::new(2).with_override("head", 3);
    assert_eq!(config.wrap_named("head", fc()).unwrap().num_clusters(), 3);
    assert_eq!(config.wrap_named("body", fc()).unwrap().num_clusters(), 2);
    let err = config
        .with_override("tiny", 50)
        .wrap_named("tiny", fc())
        .unwrap_err();
    assert!(err.to_string().starts_with("tiny"), "{err}");
}

#[test]
fn fewer_distinct_weights_than_k_uses_fewer_clusters() {
    let device = Device::flex();
    let fc = LinearConfig::new(4, 2)
        .init(&device)
        .map_weight(|w| w.zeros_like() + 0.5);
    let layer = ClusteringConfig::new(4).wrap(fc).unwrap();
    assert_eq!(layer.num_clusters(), 1);
    assert_eq!(layer.report("fc").unique_per_tensor, 1);
}

#[test]
fn kmeans_plus_plus_wrap_is_deterministic_by_seed() {
    let device = Device::flex();
    let fc = LinearConfig::new(32, 8).init(&device);
    let w = fc.weight.val();
    let same = |seed| {
        let layer = fc.clone();
        let layer = burn::nn::Linear {
            weight: Param::from_tensor(w.clone()),
            ..layer
        };
        ClusteringConfig::new(6)
            .with_seed(seed)
            .wrap(layer)
            .unwrap()
            .centroid_table()
    };
    assert_eq!(same(3), same(3));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, .. ProptestConfig::default() })]

    /// Sparsity-preserving clustering keeps every zero (and makes no new ones) over training,
    /// for random shapes, k and sparsity, per tensor or per channel.
    #[test]
    fn zeros_survive_training(
        cin in 1usize..5,
        cout in 1usize..6,
        k in 2usize..6,
        sparsity in 0.1f64..0.9,
        scope in 0usize..3,
        seed in 0u64..1000,
    ) {
        // Per tensor, per channel, channel-scaled (which needs k ≥ 4 with the zero pinned).
        let per_channel = scope == 1;
        let k = if scope == 2 { k + 2 } else { k };
        let device = device();
        let conv = Conv2dConfig::new([cin, cout], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device);
        let pruned = PruningConfig::new(PruningSchedule::constant(sparsity)).wrap(conv).unwrap();
        pruned.prune_to(sparsity).unwrap();
        let plain = pruned.strip();
        let zeros: Vec<bool> = to_vec_f32(plain.weight.val()).iter().map(|w| *w == 0.0).collect();
        let config = ClusteringConfig::new(k).with_per_channel(per_channel).with_channel_scaled(scope == 2).with_preserve_sparsity(true).with_seed(seed);
        let layer = config.wrap(plain).unwrap();
        let layer = train_conv(layer, cin, 6, |l| {
            let values = to_vec_f32(l.effective_weight());
            for (i, z) in zeros.iter().enumerate() {
                assert_eq!(*z, values[i] == 0.0);
            }
        });
        let (tensor, channels) = unique_counts(&layer);
        if per_channel {
            prop_assert!(channels.iter().all(|u| *u <= k));
        } else if scope == 2 {
            // Channels scale one codebook: ≤ k int8 codes per tensor, not ≤ k floats.
            prop_assert!(int8_codes(&layer).0.len() <= k);
        } else {
            prop_assert!(tensor <= k);
        }
    }
}

/// The int8 codes per-channel symmetric quantization gives `values` (TFLite's weight scheme:
/// scale `max|w| / 127` per output channel), and the codes of each channel.
fn int8_codes<L: WeightLayer>(layer: &L) -> (Vec<i32>, Vec<Vec<i32>>) {
    let layout = layer.layout();
    let values = to_vec_f32(layer.effective_weight());
    let mut max_abs = vec![0f32; layout.out_channels()];
    for (i, v) in values.iter().enumerate() {
        let c = layout.out_channel_of(i);
        max_abs[c] = max_abs[c].max(v.abs());
    }
    let mut channels = vec![Vec::new(); layout.out_channels()];
    for (i, v) in values.iter().enumerate() {
        let c = layout.out_channel_of(i);
        let scale = if max_abs[c] > 0.0 {
            max_abs[c] / 127.0
        } else {
            1.0
        };
        channels[c].push((v / scale).round() as i32);
    }
    let mut all: Vec<i32> = channels.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    for c in &mut channels {
        c.sort_unstable();
        c.dedup();
    }
    (all, channels)
}

#[test]
fn channel_scaled_clustering_gives_every_channel_the_same_int8_codes() {
    let device = device();
    let k = 6;
    for preserve in [false, true] {
        let config = ClusteringConfig::new(k)
            .with_channel_scaled(true)
            .with_preserve_sparsity(preserve)
            .with_seed(3);
        for (cin, cout, groups) in [(6, 8, 1), (8, 8, 8), (6, 4, 2)] {
            let conv = Conv2dConfig::new([cin, cout], [3, 3])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let conv = if preserve {
                let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
                    .wrap(conv)
                    .unwrap();
                pruned.prune_to(0.5).unwrap();
                pruned.strip()
            } else {
                conv
            };
            let zeros: Vec<bool> = to_vec_f32(conv.weight.val())
                .iter()
                .map(|w| *w == 0.0)
                .collect();
            let layer = config.wrap(conv).unwrap();
            let start = layer.centroid_table();
            assert_eq!(start.len(), 1, "one shared codebook");
            let check = |l: &Clustered<burn::nn::conv::Conv2d>| {
                let table = l.centroid_table();
                let codebook: Vec<i32> = table[0]
                    .iter()
                    .map(|c| (c * 127.0).round() as i32)
                    .collect();
                let (all, channels) = int8_codes(l);
                // ≤ k codes for the whole tensor, each the codebook's, although the int8 scale
                // is per channel.
                assert!(all.len() <= k, "{} codes: {all:?}", all.len());
                assert!(
                    all.iter().all(|c| codebook.contains(c)),
                    "{all:?} vs {codebook:?}"
                );
                // Every channel reaches ±127: its scale is exactly its largest |w| / 127.
                for c in &channels {
                    assert!(
                        c.iter().all(|v| *v == 0) || c.contains(&127) || c.contains(&-127),
                        "{c:?}"
                    );
                }
                if preserve {
                    let values = to_vec_f32(l.effective_weight());
                    for (i, z) in zeros.iter().enumerate() {
                        assert_eq!(*z, values[i] == 0.0, "weight {i}: zero set changed");
                    }
                }
            };
            check(&layer);
            let layer = train_conv(layer, cin, 12, check);
            assert_ne!(layer.centroid_table(), start, "the codebook did not train");
            let table = layer.centroid_table();
            assert_eq!(&table[0][table[0].len() - 2..], &[-1.0, 1.0]);
            // Stripped: the same weights, plain layer.
            let values = to_vec_f32(layer.effective_weight());
            assert_eq!(to_vec_f32(layer.strip().weight.val()), values);
        }
    }
    // Linear: output features are the channels.
    let linear = ClusteringConfig::new(5)
        .with_channel_scaled(true)
        .wrap(LinearConfig::new(20, 7).init(&device))
        .unwrap();
    let (all, _) = int8_codes(&linear);
    assert!(all.len() <= 5, "{all:?}");
}

#[test]
fn channel_scaled_clustering_refuses_what_cannot_work() {
    let device = device();
    let conv = || Conv2dConfig::new([2, 3], [3, 3]).init(&device);
    let both = ClusteringConfig::new(8)
        .with_channel_scaled(true)
        .with_per_channel(true);
    let err = both.wrap(conv()).unwrap_err().to_string();
    assert!(err.contains("exclusive"), "{err}");
    let small = ClusteringConfig::new(2).with_channel_scaled(true);
    let err = small.wrap(conv()).unwrap_err().to_string();
    assert!(err.contains("num_clusters >= 3"), "{err}");
    let small = ClusteringConfig::new(3)
        .with_channel_scaled(true)
        .with_preserve_sparsity(true);
    let err = small.wrap(conv()).unwrap_err().to_string();
    assert!(err.contains("num_clusters >= 4"), "{err}");
}
