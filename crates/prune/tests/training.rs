//! Pruning during real training: zeros stay zero, masks follow the schedule, the target is met.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Distribution, Tensor};
use collab_core::host::to_vec_f32;
use collab_core::{LayerForward, WeightLayer};
use collab_prune::{Granularity, Prunable, PruningConfig, PruningSchedule, mask::prune_count};
use common::{TinyNet, accuracy, data, device, train};
use proptest::prelude::*;

/// Effective weights are 0 wherever the mask is off; the raw weight is untouched there.
fn assert_masked_zero<L: WeightLayer>(layer: &Prunable<L>, what: &str) {
    let mask = layer.mask_values();
    let w = to_vec_f32(layer.effective_weight());
    for (i, (keep, w)) in mask.iter().zip(&w).enumerate() {
        if !keep {
            assert_eq!(*w, 0.0, "{what}: pruned weight {i} is {w}");
        }
    }
}

#[test]
fn tiny_net_trains_pruned_to_target_and_keeps_zeros() {
    // 300 steps, polynomial 0 -> 0.5 over steps 0..200, mask every 25 steps.
    let schedule = PruningSchedule::polynomial(0.0, 0.5, 0, 200).with_frequency(25);
    let config = PruningConfig::new(schedule.clone());
    let device = device();
    device.seed(3);
    let model = TinyNet::new(&config, 8, &device).unwrap();
    let train_set = data(256, 1);
    let test_set = data(256, 2);
    let mut previous: Option<Vec<Vec<bool>>> = None;
    let model = train(model, &train_set, 300, 7, |step, m| {
        let masks = [
            m.conv.mask_values(),
            m.dw.mask_values(),
            m.pw.mask_values(),
            m.fc.mask_values(),
        ];
        assert_masked_zero(&m.conv, "conv");
        assert_masked_zero(&m.dw, "depthwise");
        assert_masked_zero(&m.pw, "pointwise");
        assert_masked_zero(&m.fc, "linear");
        assert_eq!(m.conv.steps(), step as u64);
        if let Some(prev) = &previous {
            for (now, before) in masks.iter().zip(prev) {
                // Never un-prune.
                assert!(
                    now.iter().zip(before).all(|(n, b)| *b || !n),
                    "step {step}: a weight came back"
                );
                // Constant inside a frequency window.
                if !schedule.is_update_step(step as u64) {
                    assert_eq!(now, before, "step {step}: mask changed off an update step");
                }
            }
        }
        previous = Some(masks.to_vec());
    });
    for (name, report) in [
        ("conv", model.conv.report("conv")),
        ("dw", model.dw.report("dw")),
        ("pw", model.pw.report("pw")),
        ("fc", model.fc.report("fc")),
    ] {
        let want = prune_count(report.weights, 0.5);
        assert!(
            report.pruned.abs_diff(want) <= 1,
            "{name}: {} pruned, want {want}",
            report.pruned
        );
        assert!(report.zeros >= report.pruned, "{name}");
        assert!((report.target_sparsity - 0.5).abs() < 1e-6);
    }
    let acc = accuracy(&model, &test_set);
    assert!(
        acc > 0.3,
        "pruned tiny net should stay well above chance (1/8), got {acc}"
    );

    // Stripping gives plain burn layers with the zeros in their weights.
    let conv_mask = model.conv.mask_values();
    let plain = model.conv.clone().strip();
    let w = to_vec_f32(plain.weight.val());
    assert!(conv_mask.iter().zip(&w).all(|(k, w)| *k || *w == 0.0));
}

#[test]
fn eval_passes_do_not_advance_the_schedule() {
    let config = PruningConfig::new(PruningSchedule::constant(0.5).with_frequency(1));
    let device = device();
    let model = TinyNet::new(&config, 8, &device).unwrap();
    let set = data(16, 0);
    let (x, _) = set.batch(&[0, 1, 2, 3], &device);
    let valid = model.valid();
    let _ = valid.forward(x.clone().without_autodiff());
    assert_eq!(valid.conv.steps(), 0);
    assert!(valid.conv.mask_values().iter().all(|k| *k));
    let _ = model.forward(x);
    assert_eq!(model.conv.steps(), 1);
    assert_eq!(model.conv.report("c").pruned, prune_count(72, 0.5));
}

#[test]
fn clone_is_a_snapshot() {
    let config = PruningConfig::new(PruningSchedule::constant(0.5).with_frequency(1));
    let device = device();
    let model = TinyNet::new(&config, 8, &device).unwrap();
    let snapshot = model.clone();
    let (x, _) = data(4, 0).batch(&[0, 1], &device);
    let _ = model.forward(x);
    assert_eq!(model.fc.steps(), 1);
    assert_eq!(snapshot.fc.steps(), 0);
    assert!(snapshot.fc.mask_values().iter().all(|k| *k));
}

#[test]
fn structured_patterns_hold_after_training() {
    let device = device();
    let schedule = PruningSchedule::polynomial(0.0, 0.5, 0, 20).with_frequency(5);
    // 1x4 blocks on a pointwise conv [16, 8, 1, 1]: view [16, 8], blocks of 1 row x 4 columns.
    let pw = PruningConfig::new(schedule.clone())
        .with_granularity(Granularity::Block { rows: 1, cols: 4 })
        .wrap(Conv2dConfig::new([8, 16], [1, 1]).init(&device))
        .unwrap();
    // 2:4 on a 3x3 conv with 8 input channels.
    let conv = PruningConfig::new(schedule)
        .with_granularity(Granularity::two_four())
        .wrap(
            Conv2dConfig::new([8, 4], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(&device),
        )
        .unwrap();
    let mut optim_pw = AdamConfig::new().init();
    let mut optim_conv = AdamConfig::new().init();
    let (mut pw, mut conv) = (pw, conv);
    let mut nm_mask_at_first_update = None;
    for step in 1..=30u64 {
        let x = Tensor::<4>::random([4, 8, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let loss =
            pw.forward(x.clone()).powi_scalar(2).mean() + conv.forward(x).powi_scalar(2).mean();
        let grads = loss.backward();
        let g_pw = GradientsParams::from_grads(grads, &pw);
        pw = optim_pw.step(1e-2, pw, g_pw);
        let x = Tensor::<4>::random([4, 8, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let loss = conv.forward(x).powi_scalar(2).mean();
        let g_conv = GradientsParams::from_grads(loss.backward(), &conv);
        conv = optim_conv.step(1e-2, conv, g_conv);
        if step == 6 {
            nm_mask_at_first_update = Some(conv.mask_values());
        }
    }
    // Block: every 1x4 block of the [out, in] view is all kept or all pruned; half are pruned.
    let mask = pw.mask_values();
    let layout = pw.layout();
    let mut pruned_blocks = 0;
    for out in 0..16 {
        for block in 0..2 {
            let cells: Vec<bool> = (0..4)
                .map(|c| mask[layout.index_2d(out, block * 4 + c)])
                .collect();
            assert!(
                cells.iter().all(|k| *k == cells[0]),
                "block ({out}, {block}) is split: {cells:?}"
            );
            pruned_blocks += usize::from(!cells[0]);
        }
    }
    assert_eq!(pruned_blocks, 16);
    // 2:4: in each run of 4 input channels, per output channel and kernel position, exactly 2 kept.
    let mask = conv.mask_values();
    let layout = conv.layout();
    for out in 0..4 {
        for k in 0..9 {
            for start in [0, 4] {
                let kept = (start..start + 4)
                    .filter(|&i| mask[layout.index(out, i, k)])
                    .count();
                assert_eq!(kept, 2, "out {out}, k {k}, inputs {start}..{}", start + 4);
            }
        }
    }
    // Computed once: the first update fixed it (steps were counted 1, 2, ... and the schedule
    // begins at 0, so the first update is step 5).
    assert_eq!(nm_mask_at_first_update.unwrap(), mask);
    assert_masked_zero(&conv, "2:4 conv");
    assert_masked_zero(&pw, "block pw");
}

/// Train one randomly shaped layer with a random schedule; masked weights must be exactly 0
/// after every step, and the final sparsity must be the target (±1 weight).
fn train_random_layer(
    out_per_group: usize,
    in_per_group: usize,
    groups: usize,
    kernel: usize,
    sparsity: f64,
    frequency: u64,
    linear: bool,
) {
    let device = device();
    let schedule = PruningSchedule::polynomial(0.0, sparsity, 0, 12).with_frequency(frequency);
    let config = PruningConfig::new(schedule);
    let steps = 16;
    if linear {
        let mut layer = config
            .wrap(LinearConfig::new(in_per_group, out_per_group).init(&device))
            .unwrap();
        let mut optim = AdamConfig::new().init();
        for _ in 0..steps {
            let x = Tensor::<2>::random([8, in_per_group], Distribution::Normal(0.0, 1.0), &device);
            let loss = (layer.forward(x) - 1.0).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(5e-2, layer, grads);
            assert_masked_zero(&layer, "linear");
        }
        let r = layer.report("linear");
        assert!(r.pruned.abs_diff(prune_count(r.weights, sparsity)) <= 1);
    } else {
        let (cin, cout) = (in_per_group * groups, out_per_group * groups);
        let mut layer = config
            .wrap(
                Conv2dConfig::new([cin, cout], [kernel, kernel])
                    .with_groups(groups)
                    .with_padding(PaddingConfig2d::Same)
                    .init(&device),
            )
            .unwrap();
        let mut optim = AdamConfig::new().init();
        for _ in 0..steps {
            let x = Tensor::<4>::random([2, cin, 5, 5], Distribution::Normal(0.0, 1.0), &device);
            let loss = (layer.forward_transformed(x, &collab_core::NoTransform) - 1.0)
                .powi_scalar(2)
                .mean();
            let grads = GradientsParams::from_grads(loss.backward(), &layer);
            layer = optim.step(5e-2, layer, grads);
            assert_masked_zero(&layer, "conv");
        }
        let r = layer.report("conv");
        assert!(
            r.pruned.abs_diff(prune_count(r.weights, sparsity)) <= 1,
            "{} pruned of {}, target {sparsity}",
            r.pruned,
            r.weights
        );
        // The pruned values also survive a record round trip.
        let restored = {
            let record = layer.clone().into_record();
            config
                .wrap(
                    Conv2dConfig::new([cin, cout], [kernel, kernel])
                        .with_groups(groups)
                        .with_padding(PaddingConfig2d::Same)
                        .init(&device),
                )
                .unwrap()
                .load_record(record)
        };
        assert_eq!(restored.mask_values(), layer.mask_values());
        assert_eq!(
            to_vec_f32(restored.effective_weight()),
            to_vec_f32(layer.effective_weight())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn masked_weights_stay_zero_for_random_layers(
        out_per_group in 1usize..6,
        in_per_group in 1usize..6,
        groups in 1usize..4,
        kernel in prop::sample::select(vec![1usize, 3]),
        sparsity in 0.05f64..0.95,
        frequency in 1u64..5,
        linear in any::<bool>(),
        depthwise in any::<bool>(),
    ) {
        let (out_per_group, in_per_group) = if depthwise && !linear { (out_per_group, 1) } else { (out_per_group, in_per_group) };
        train_random_layer(out_per_group, in_per_group, groups, kernel, sparsity, frequency, linear);
    }
}
