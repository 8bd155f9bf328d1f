//! QAT layers: weight scales, exact fake-quant, ranges as state, stacking on pruning/clustering.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use collab_cluster::{ClusteringConfig, distinct_count};
use collab_core::host::to_vec_f32;
use collab_core::{ConvBn, LayerForward, WeightLayer};
use collab_prune::{PruningConfig, PruningSchedule};
use collab_quant::{ActReport, FusedActivation, QatAware, QatConfig};

fn device() -> Device {
    Device::flex().autodiff()
}

/// Largest magnitude per output channel (or of the tensor), from the weight itself.
fn max_abs_rows<L: WeightLayer>(layer: &L, per_channel: bool) -> Vec<f32> {
    let layout = layer.layout();
    let values = to_vec_f32(layer.effective_weight());
    let rows = if per_channel {
        layout.out_channels()
    } else {
        1
    };
    let mut max = vec![0f32; rows];
    for (i, v) in values.iter().enumerate() {
        let r = if per_channel {
            layout.out_channel_of(i)
        } else {
            0
        };
        max[r] = max[r].max(v.abs());
    }
    max
}

#[test]
fn weight_scales_per_output_channel_and_per_channel_multiplier() {
    let device = Device::flex();
    // Depthwise with multiplier 2: 3 input channels, 6 outputs, weight [6, 1, 3, 3].
    let dw = Conv2dConfig::new([3, 6], [3, 3])
        .with_groups(3)
        .init(&device);
    let want: Vec<f32> = max_abs_rows(&dw, true).iter().map(|m| m / 127.0).collect();
    let q = QatConfig::new().wrap(dw).unwrap();
    let p = q.weight_params();
    assert!(p.per_channel && p.scale.len() == 6);
    assert_eq!(p.scale, want);
    assert!(p.zero_point.iter().all(|z| *z == 0) && p.qmin == -127 && p.qmax == 127);
    // Linear: per tensor by default (TFLite), per output feature on request.
    let fc = LinearConfig::new(5, 3).init(&device);
    let q = QatConfig::new().wrap(fc.clone()).unwrap();
    assert_eq!(
        q.weight_params().scale,
        vec![max_abs_rows(&fc, false)[0] / 127.0]
    );
    let q = QatConfig::new()
        .with_weight_per_channel(true)
        .wrap(fc.clone())
        .unwrap();
    let want: Vec<f32> = max_abs_rows(&fc, true).iter().map(|m| m / 127.0).collect();
    assert_eq!(q.weight_params().scale, want);
    // The effective weight is exactly quantize -> dequantize with those parameters.
    let p = q.weight_params();
    let layout = q.layout();
    let raw = to_vec_f32(fc.effective_weight());
    let fake = to_vec_f32(q.effective_weight());
    for (i, (w, f)) in raw.iter().zip(&fake).enumerate() {
        assert_eq!(*f, p.fake_quant(*w, layout.out_channel_of(i)), "weight {i}");
    }
}

#[test]
fn output_is_fake_quantized_after_the_fused_activation() {
    let device = device();
    let conv = Conv2dConfig::new([2, 4], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let q = QatConfig::new()
        .with_activation(FusedActivation::Relu6)
        .with_input(true)
        .wrap(conv)
        .unwrap();
    let x = Tensor::<4>::random([2, 2, 5, 5], Distribution::Normal(0.0, 3.0), &device);
    let y = q.forward(x.clone());
    let values = to_vec_f32(y);
    assert!(
        values.iter().all(|v| (0.0..=6.0).contains(v)),
        "ReLU6 is applied before quantizing"
    );
    let quant = q.layer_quant("conv").unwrap();
    assert_eq!(quant.activation, FusedActivation::Relu6);
    assert!(quant.input.is_some());
    // Every output value lies on the output grid.
    let p = &quant.output;
    for v in values {
        assert_eq!(v, p.fake_quant(v, 0));
    }
    let (_, max) = q.output.range().unwrap();
    assert!(max <= 6.0);
}

#[test]
fn ranges_are_saved_and_loaded() {
    let device = device();
    let make = || {
        QatConfig::new()
            .with_input(true)
            .wrap(LinearConfig::new(4, 3).init(&device))
            .unwrap()
    };
    let q = make();
    for _ in 0..3 {
        let _ = q.forward(Tensor::<2>::random(
            [8, 4],
            Distribution::Normal(1.0, 2.0),
            &device,
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qat.bpk");
    q.clone().save_file(&path).unwrap();
    let loaded = make().load_file(&path);
    assert_eq!(loaded.output.range(), q.output.range());
    assert_eq!(
        loaded.input.as_ref().unwrap().range(),
        q.input.as_ref().unwrap().range()
    );
    assert_eq!(loaded.output.observed.get(), 3);
    assert_eq!(loaded.report("fc"), q.report("fc"));
    assert_eq!(
        loaded.layer_quant("fc").unwrap(),
        q.layer_quant("fc").unwrap()
    );
}

/// `report` reads the wrapper's state: weight bits and scales, the fused activation, and each
/// activation quantizer's range with the number of batches that set it (none before the first).
#[test]
fn report_reads_the_wrapper_state() {
    let device = device();
    let q = QatConfig::new()
        .with_activation(collab_core::Activation::Relu)
        .with_input(true)
        .wrap_named("fc", LinearConfig::new(4, 3).init(&device))
        .unwrap();
    let fresh = q.report("fc");
    assert_eq!(
        fresh.output,
        ActReport {
            range: None,
            batches: 0
        }
    );
    assert_eq!(fresh.input, Some(fresh.output.clone()));
    for _ in 0..2 {
        let x = Tensor::<2>::random([8, 4], Distribution::Normal(1.0, 2.0), &device);
        let _ = q.forward(x);
    }
    let r = q.report("fc");
    assert_eq!(
        (
            r.weight.name.as_str(),
            r.weight.weights,
            r.weight.weight_bits,
            r.weight.per_channel
        ),
        ("fc", 12, 8, false)
    );
    assert_eq!(r.weight.weight_scales, q.weight_params().scale);
    assert_eq!(r.activation, FusedActivation::Relu);
    assert!(r.quantizes_output);
    let range = |a: &collab_quant::ActQuant| a.range().map(|(min, max)| [min, max]);
    let input = r.input.unwrap();
    assert_eq!(input.batches, 2);
    assert_eq!(input.range, range(q.input.as_ref().unwrap()));
    assert!(input.range.is_some());
    assert_eq!((r.output.batches, r.output.range), (2, range(&q.output)));
    assert!(r.output.range.unwrap()[0] >= 0.0, "after the ReLU");
}

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
        let loss = (layer.forward(x) - 0.5).powi_scalar(2).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(1e-2, layer, grads);
        check(&layer);
    }
    layer
}

/// A model applies its activation after a layer unless the layer's QAT output quantizer has
/// it fused (the values are then already activated); the result is the same either way.
#[test]
fn forward_activated_skips_only_an_activation_the_stack_applied() {
    use burn::tensor::activation::relu;
    use collab_core::Activation;
    let device = device();
    let conv = Conv2dConfig::new([3, 5], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 2.0), &device);
    assert!(!conv.applies_activation(Activation::Relu));
    assert_eq!(
        to_vec_f32(conv.forward_activated(x.clone(), Activation::Relu)),
        // The trait's forward (burn-collab's convolution), not burn's inherent `Conv2d::forward`.
        to_vec_f32(relu(LayerForward::forward(&conv, x.clone())))
    );
    // PQAT's stack: the pruning wrapper inside answers for nothing, the QAT layer for its ReLU.
    let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(conv.clone())
        .unwrap();
    assert!(!pruned.applies_activation(Activation::Relu));
    let q = QatConfig::new()
        .with_activation(FusedActivation::Relu)
        .wrap(pruned)
        .unwrap();
    assert!(q.applies_activation(Activation::Relu));
    assert!(!q.applies_activation(Activation::Relu6));
    let relu6 = QatConfig::new()
        .with_activation(FusedActivation::Relu6)
        .wrap(conv)
        .unwrap();
    assert!(relu6.applies_activation(Activation::Relu6));
    assert!(!relu6.applies_activation(Activation::Relu));
    // Training (the range moves with each batch: compare twins) and evaluation.
    for shift in [0.0, 1.0, -0.5] {
        let twin = q.clone();
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(shift, 2.0), &device);
        assert_eq!(
            to_vec_f32(q.forward_activated(x.clone(), Activation::Relu)),
            to_vec_f32(relu(twin.forward(x)))
        );
    }
    let eval = q.valid();
    let x = Tensor::<4>::random(
        [2, 3, 6, 6],
        Distribution::Normal(0.0, 2.0),
        &Device::flex(),
    );
    assert_eq!(
        to_vec_f32(eval.forward_activated(x.clone(), Activation::Relu)),
        to_vec_f32(relu(eval.forward(x)))
    );
}

#[test]
fn pqat_keeps_zeros_through_fake_quant() {
    let device = device();
    let conv = Conv2dConfig::new([4, 6], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(conv)
        .unwrap();
    pruned.prune_to(0.5).unwrap();
    let mask = pruned.mask_values();
    let q = QatConfig::new()
        .with_activation(FusedActivation::Relu)
        .wrap(pruned)
        .unwrap();
    let q = train_conv(q, 4, 15, |l| {
        let w = to_vec_f32(l.effective_weight());
        assert!(
            mask.iter().zip(&w).all(|(k, w)| *k || *w == 0.0),
            "a pruned weight is non-zero after fake-quant"
        );
    });
    // Every pruned weight is 0 in the stripped layer; int8 rounding may zero a few more.
    let plain = q.strip();
    let w = to_vec_f32(plain.weight.val());
    assert!(mask.iter().zip(&w).all(|(k, w)| *k || *w == 0.0));
    assert!(w.iter().filter(|v| **v == 0.0).count() >= mask.iter().filter(|k| !**k).count());
}

#[test]
fn cqat_keeps_at_most_k_values_per_channel() {
    let device = device();
    let conv = Conv2dConfig::new([4, 6], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let clustered = ClusteringConfig::new(5)
        .with_per_channel(true)
        .wrap(conv)
        .unwrap();
    let q = QatConfig::new().wrap(clustered).unwrap();
    let check = |l: &QatAware<collab_cluster::Clustered<burn::nn::conv::Conv2d>>| {
        let layout = l.layout();
        let w = to_vec_f32(l.effective_weight());
        let mut rows = vec![Vec::new(); layout.out_channels()];
        for (i, v) in w.iter().enumerate() {
            rows[layout.out_channel_of(i)].push(*v);
        }
        assert!(rows.iter().all(|r| distinct_count(r) <= 5));
    };
    check(&q);
    let q = train_conv(q, 4, 10, check);
    // The int8 values (quantize with the exported parameters) keep the bound too.
    let p = q.weight_params();
    let layout = q.layout();
    let mut rows = vec![Vec::new(); layout.out_channels()];
    for (i, v) in to_vec_f32(q.inner.effective_weight()).iter().enumerate() {
        let c = layout.out_channel_of(i);
        rows[c].push(p.quantize(*v, c) as f32);
    }
    assert!(rows.iter().all(|r| distinct_count(r) <= 5));
}

#[test]
fn qat_on_a_folded_conv_bn_quantizes_the_folded_weight() {
    let device = device();
    let conv = Conv2dConfig::new([3, 4], [3, 3])
        .with_padding(PaddingConfig2d::Same)
        .init(&device);
    let bn = BatchNormConfig::new(4).init(&device);
    let block = ConvBn::new(conv, bn);
    let folded = max_abs_rows(&block, true);
    let q = QatConfig::new()
        .with_activation(FusedActivation::Relu)
        .wrap(block)
        .unwrap();
    let want: Vec<f32> = folded.iter().map(|m| m / 127.0).collect();
    assert_eq!(q.weight_params().scale, want);
    let q = train_conv(q, 3, 5, |_| {});
    // Stripping gives a plain Conv2d (BatchNorm gone) whose weight is the fake-quantized folded one.
    let effective = to_vec_f32(q.effective_weight());
    let plain = q.strip();
    assert_eq!(to_vec_f32(plain.weight.val()), effective);
    assert!(plain.bias.is_some());
}
