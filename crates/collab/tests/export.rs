//! int8 export of real models, proven by reading the file back and running it in LiteRT
//! (reference kernels and XNNPACK) and TensorFlow Lite Micro on real inputs.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use collab::export::{self, ExportOptions, Plan, Traceable};
use collab_cluster::ClusteringConfig;
use collab_core::{ConvBn, PlainLayer};
use collab_data::cifar::Cifar10;
use collab_data::mfcc::Frontend;
use collab_data::shared::require_shared;
use collab_data::speech::{SpeechCommands, Split};
use collab_models::GraphNet;
use collab_models::{
    ConvBlock, DsCnnConfig, DsCnnSize, MobileNetV1Config, MobileNetV2Config, Variant, import,
};
use collab_prune::{PruningConfig, PruningSchedule};
use collab_quant::{Calibration, FusedActivation, QatConfig};
use collab_tflite::tools::Validators;
use collab_tflite::{Data, Flavor, Graph, Interpreter, Report, npy};

fn tools() -> Option<Validators> {
    Validators::for_tests(&require_shared().join("tools"))
}

/// 100 real keyword clips (every class), as MFCC `[100, 1, 49, 10]` and labels.
fn kws_inputs() -> (Tensor<4>, Vec<usize>) {
    let set = SpeechCommands::open(&require_shared().join("data/speech_commands_12")).unwrap();
    let clips = set.split(Split::Validation);
    let step = clips.len() / 100;
    let chosen: Vec<_> = clips.iter().step_by(step).take(100).cloned().collect();
    let features = SpeechCommands::features(&chosen, &Frontend::new()).unwrap();
    let indices: Vec<usize> = (0..features.len()).collect();
    let (x, _) = features.batch(&indices, &Device::flex());
    (x, chosen.iter().map(|c| c.label).collect())
}

/// 100 real CIFAR-10 test images `[100, 3, 32, 32]`.
fn cifar_inputs() -> Tensor<4> {
    let set = Cifar10::open(&require_shared().join("data/cifar10"), false).unwrap();
    let indices: Vec<usize> = (0..100).collect();
    set.batch(&indices, None, &Device::flex()).0
}

fn split(x: &Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let n = x.dims()[0];
    (
        x.clone().narrow(0, 0, n / 2),
        x.clone().narrow(0, n / 2, n - n / 2),
    )
}

/// Export `plan` with a batch of half `x` (calibrated on the first half of `x`), run the second half in
/// our interpreter and in the validators; returns the int8 outputs and the file.
fn export_and_check(
    plan: &Plan,
    x: &Tensor<4>,
    softmax: bool,
    dir: &Path,
    name: &str,
) -> (Vec<i8>, Vec<u8>) {
    export_and_check_with(plan, x, softmax, dir, name, true)
}

/// As [`export_and_check`]; `calibrate: false` exports with the QAT ranges alone.
fn export_and_check_with(
    plan: &Plan,
    x: &Tensor<4>,
    softmax: bool,
    dir: &Path,
    name: &str,
    calibrate: bool,
) -> (Vec<i8>, Vec<u8>) {
    let (calib, test) = split(x);
    let batch = test.dims()[0];
    let ranges = calibrate.then(|| plan.calibrate([Ok(calib)], Calibration::MinMax).unwrap());
    let options = ExportOptions {
        batch,
        softmax,
        ..ExportOptions::default()
    };
    let bytes = export::to_tflite(plan, ranges.as_ref(), &options).unwrap();
    let path = dir.join(format!("{name}.tflite"));
    export::write(&path, &bytes).unwrap();
    let graph = Graph::open(&path).unwrap();
    let interp = Interpreter::new(&graph).unwrap();
    let [c, h, w] = plan.input;
    let values = collab_core::host::to_vec_f32(test.flatten::<1>(0, 3));
    let port = interp.inputs()[0].clone();
    // The int8 input exactly as run_int8 quantizes it.
    let nhwc = export::quantize_input(
        &export::nchw_to_nhwc(&values, batch, [c, h, w]),
        port.scale,
        port.zero_point,
    );
    let ours = interp.run_i8(&nhwc).unwrap();
    // run_int8 (the evaluation path) gives the same values, dequantized.
    let deq = export::run_int8(&interp, &values, batch, plan.input).unwrap();
    let out = interp.outputs()[0].clone();
    for (q, f) in ours.iter().zip(&deq) {
        assert_eq!(out.scale * (*q as i32 - out.zero_point) as f32, *f);
    }
    if let Some(tools) = tools() {
        let (inp, exp) = (
            dir.join(format!("{name}_in.npy")),
            dir.join(format!("{name}_ours.npy")),
        );
        npy::write(&inp, &port.shape, &Data::I8(nhwc)).unwrap();
        npy::write(&exp, &out.shape, &Data::I8(ours.clone())).unwrap();
        if let Ok(debug) = std::env::var("COLLAB_EXPORT_DEBUG") {
            let debug = Path::new(&debug).join(name);
            std::fs::create_dir_all(&debug).unwrap();
            std::fs::copy(&path, debug.join("model.tflite")).unwrap();
            std::fs::copy(&inp, debug.join("in.npy")).unwrap();
            let nhwc_in = npy::read(&inp).unwrap().1;
            for (i, t) in interp
                .run_traced(&[nhwc_in])
                .unwrap()
                .into_iter()
                .enumerate()
            {
                if let Some(t) = t {
                    let n = t.len();
                    npy::write(&debug.join(format!("t{i}.npy")), &[n], &t).unwrap();
                }
            }
        }
        // TFLite Micro and XNNPACK against our default (Micro) arithmetic…
        let micro = tools
            .max_diffs(&path, &inp, &exp, &["tflm", "litert_xnnpack"])
            .unwrap();
        // …and LiteRT's reference kernels against ours in their flavour (FC rounding).
        let reference = Interpreter::with_flavor(&graph, Flavor::LiteRtReference)
            .unwrap()
            .run_i8(&npy_i8(&inp))
            .unwrap();
        let exp_ref = dir.join(format!("{name}_ours_ref.npy"));
        npy::write(&exp_ref, &out.shape, &Data::I8(reference.clone())).unwrap();
        let litert = tools
            .max_diffs(&path, &inp, &exp_ref, &["litert_ref"])
            .unwrap();
        let flavours = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
        eprintln!(
            "{name}: max |ours − runtime| {micro:?} {litert:?}; Micro and LiteRT-reference \
             arithmetic differ in {flavours} of {} outputs",
            ours.len()
        );
        assert_eq!(micro["tflm"], 0.0, "{name}: TFLite Micro differs");
        assert_eq!(
            litert["litert_ref"], 0.0,
            "{name}: LiteRT reference kernels differ"
        );
        // XNNPACK rounds differently (measured up to 8 LSB on the MLPerf KWS model); after a
        // softmax a few logit LSB can move a probability further, so only logits are gated.
        // Random MobileNet weights drift further through 27+ layers (measured 4..27 LSB on their
        // logits), so those get a looser bound than the trained DS-CNN.
        let bound = if name.contains("mobilenet") {
            64.0
        } else {
            8.0
        };
        if !softmax {
            assert!(
                micro["litert_xnnpack"] <= bound,
                "{name}: XNNPACK differs by > {bound} LSB"
            );
        }
    }
    (ours, bytes)
}

fn npy_i8(path: &Path) -> Vec<i8> {
    match npy::read(path).unwrap().1 {
        Data::I8(v) => v,
        Data::F32(_) => panic!("expected int8"),
    }
}

/// Scale a freshly initialised block's weights to He initialisation (burn's default Kaiming
/// uniform with gain 1/√3 shrinks activations layer by layer: after 27 layers they are ~1e-9 and
/// a ReLU6 bound no longer fits int32 at that scale, which LiteRT rightly refuses).
fn he(b: ConvBlock) -> ConvBlock {
    ConvBn::new(b.conv.map_weight(|w| w * 6f32.sqrt()), b.bn)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, x)| {
            if *x > bv { (i, *x) } else { (bi, bv) }
        })
        .0
}

/// Top-1 agreement of int8 logits with the float model on the test half.
fn agreement(plan: &Plan, x: &Tensor<4>, int8: &[i8], classes: usize) -> f64 {
    let (_, test) = split(x);
    let float = collab_core::host::to_vec_f32(plan.forward(test).unwrap().flatten::<1>(0, 1));
    let same = float
        .chunks(classes)
        .zip(int8.chunks(classes))
        .filter(|(f, q)| {
            let q: Vec<f32> = q.iter().map(|v| *v as f32).collect();
            argmax(f) == argmax(&q)
        })
        .count();
    same as f64 / (float.len() / classes) as f64
}

#[test]
fn ds_cnn_s_trained_and_random_export_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (x, labels) = kws_inputs();
    let config = DsCnnConfig::new(DsCnnSize::S);
    let bytes =
        std::fs::read(require_shared().join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors"))
            .unwrap();
    let trained = import::ds_cnn(&config, &bytes, "ds_cnn_s", &device).unwrap();
    let plan = trained.trace([1, 49, 10]).unwrap();
    let (logits, _) = export_and_check(&plan, &x, false, dir.path(), "ds_cnn_s_logits");
    let agree = agreement(&plan, &x, &logits, 12);
    let correct = logits
        .chunks(12)
        .zip(&labels[50..])
        .filter(|(q, l)| argmax(&q.iter().map(|v| *v as f32).collect::<Vec<_>>()) == **l)
        .count();
    eprintln!(
        "DS-CNN-S int8: top-1 agrees with float on {:.0}%, {correct}/50 correct",
        agree * 100.0
    );
    assert!(agree >= 0.9, "int8 agrees with float on only {agree}");
    assert!(correct >= 35, "int8 DS-CNN-S gets only {correct}/50 right");
    // With the softmax at the end, as deployed.
    let (probs, file) = export_and_check(&plan, &x, true, dir.path(), "ds_cnn_s");
    assert!(probs.iter().any(|p| *p > -128 && *p < 127));
    let report = Report::new(&file).unwrap();
    assert!(report.operators.contains_key("SOFTMAX v2"));
    assert!(report.operators.contains_key("DEPTHWISE_CONV_2D v3"));

    deployment_file_runs_on_the_npu_and_with_float_io(&plan, &x, dir.path());

    device.seed(6);
    let random = config.init(&device).unwrap();
    let plan = random.trace([1, 49, 10]).unwrap();
    export_and_check(&plan, &x, false, dir.path(), "ds_cnn_s_random");
}

/// Batch 1, int8 in and out: Vela puts every operator on the Ethos-U NPU. Float in and out
/// (QUANTIZE / DEQUANTIZE at the edges): LiteRT and TFLite Micro agree with our interpreter.
fn deployment_file_runs_on_the_npu_and_with_float_io(plan: &Plan, x: &Tensor<4>, dir: &Path) {
    let Some(tools) = tools() else {
        return;
    };
    let (calib, test) = split(x);
    let batch = test.dims()[0];
    let ranges = plan.calibrate([Ok(calib)], Calibration::MinMax).unwrap();
    let bytes = export::to_tflite(plan, Some(&ranges), &ExportOptions::default()).unwrap();
    let path = dir.join("deploy.tflite");
    export::write(&path, &bytes).unwrap();
    let (code, vela) = tools
        .vela_check(&path, &["--min-npu-percent", "100"])
        .unwrap();
    eprintln!("vela: {vela}");
    assert_eq!(code, 0, "Vela: {vela}");

    let float = ExportOptions {
        batch,
        float_io: true,
        ..ExportOptions::default()
    };
    let bytes = export::to_tflite(plan, Some(&ranges), &float).unwrap();
    let path = dir.join("float_io.tflite");
    export::write(&path, &bytes).unwrap();
    let interp = Interpreter::new(&Graph::open(&path).unwrap()).unwrap();
    let [c, h, w] = plan.input;
    let values = collab_core::host::to_vec_f32(test.flatten::<1>(0, 3));
    let nhwc = export::nchw_to_nhwc(&values, batch, [c, h, w]);
    let ours = interp.run(&[Data::F32(nhwc.clone())]).unwrap().remove(0);
    let Data::F32(probs) = &ours else {
        panic!("float output expected")
    };
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    let (inp, exp) = (dir.join("float_in.npy"), dir.join("float_ours.npy"));
    npy::write(&inp, &interp.inputs()[0].shape, &Data::F32(nhwc)).unwrap();
    npy::write(&exp, &interp.outputs()[0].shape, &ours).unwrap();
    let diffs = tools.max_diffs(&path, &inp, &exp, &["tflm"]).unwrap();
    let reference = Interpreter::with_flavor(&Graph::open(&path).unwrap(), Flavor::LiteRtReference)
        .unwrap()
        .run(&[npy::read(&inp).unwrap().1])
        .unwrap()
        .remove(0);
    let exp_ref = dir.join("float_ours_ref.npy");
    npy::write(&exp_ref, &interp.outputs()[0].shape, &reference).unwrap();
    let litert = tools
        .max_diffs(&path, &inp, &exp_ref, &["litert_ref"])
        .unwrap();
    eprintln!("float I/O: {diffs:?} {litert:?}");
    assert_eq!(diffs["tflm"], 0.0);
    assert_eq!(litert["litert_ref"], 0.0);
}

#[test]
fn small_mobilenets_export_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(5);
    let x = cifar_inputs();
    let v1 = MobileNetV1Config {
        width: 0.25,
        ..MobileNetV1Config::new(Variant::Cifar, 10)
    }
    .init(&device)
    .unwrap()
    .try_map(|_, b| Ok::<_, ()>(he(b)), |_, l| Ok(l))
    .unwrap();
    let plan = v1.trace([3, 32, 32]).unwrap();
    export_and_check(&plan, &x, false, dir.path(), "mobilenet_v1_025");
    let v2 = MobileNetV2Config {
        width: 0.35,
        ..MobileNetV2Config::new(Variant::Cifar, 10)
    }
    .init(&device)
    .unwrap()
    .try_map(|_, b| Ok::<_, ()>(he(b)), |_, l| Ok(l))
    .unwrap();
    let plan = v2.trace([3, 32, 32]).unwrap();
    let (_, file) = export_and_check(&plan, &x, false, dir.path(), "mobilenet_v2_035");
    let report = Report::new(&file).unwrap();
    assert!(
        report.operators.contains_key("ADD v2"),
        "{:?}",
        report.operators
    );
}

#[test]
fn pruned_and_clustered_weights_arrive_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (x, _) = kws_inputs();
    let config = DsCnnConfig::new(DsCnnSize::S);
    let bytes =
        std::fs::read(require_shared().join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors"))
            .unwrap();
    let trained = import::ds_cnn(&config, &bytes, "ds_cnn_s", &device).unwrap();
    // Prune every convolution to 50 %, then cluster with 8 centroids per channel keeping zeros.
    let prune = PruningConfig::new(PruningSchedule::constant(0.5));
    let cluster = ClusteringConfig::new(8)
        .with_per_channel(true)
        .with_preserve_sparsity(true);
    let model = trained
        .try_map(
            |_, c: ConvBlock| {
                let p = prune.wrap(c)?;
                p.prune_to(0.5)?;
                Ok::<_, Box<dyn std::error::Error>>(p)
            },
            |_, l| Ok(l),
        )
        .unwrap();
    let pruned_plan = model.trace([1, 49, 10]).unwrap();
    let (_, file) = export_and_check(&pruned_plan, &x, true, dir.path(), "ds_cnn_s_pruned");
    let report = Report::new(&file).unwrap();
    let convs: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.dtype == collab_tflite::TensorType::Int8 && w.shape.len() == 4)
        .collect();
    assert_eq!(convs.len(), 9);
    for w in &convs {
        assert!(
            w.zero_fraction >= 0.5,
            "{}: {} zeros",
            w.name,
            w.zero_fraction
        );
    }
    let pcq = model
        .try_map(
            |name, c| cluster.wrap_named(name, c),
            |_, l| Ok::<_, collab_cluster::ClusterError>(l),
        )
        .unwrap();
    let plan = pcq.trace([1, 49, 10]).unwrap();
    let (_, file) = export_and_check(&plan, &x, true, dir.path(), "ds_cnn_s_pruned_clustered");
    let report = Report::new(&file).unwrap();
    for w in report
        .weights
        .iter()
        .filter(|w| w.dtype == collab_tflite::TensorType::Int8 && w.shape.len() == 4)
    {
        assert!(
            w.zero_fraction >= 0.5,
            "{}: {} zeros",
            w.name,
            w.zero_fraction
        );
        assert!(
            w.unique_per_channel_max.unwrap() <= 8,
            "{}: {} unique values in a channel",
            w.name,
            w.unique_per_channel_max.unwrap()
        );
    }
    eprintln!(
        "pruned+clustered DS-CNN-S: {} bytes, gzip {} ({:.1}% compression)",
        report.bytes,
        report.gzip_bytes,
        100.0 * report.compression
    );
}

/// DS-CNN-S pruned 2:4 along input channels on its pointwise convolutions and classifier: the
/// file is an ordinary int8 file (TFLite Micro and LiteRT reference agree with it bit for bit),
/// and our interpreter gives the same outputs with the N:M sparse kernel (which it picks from
/// the weights, on CPUs with AVX-512 VBMI) as with the dense and portable kernels.
#[test]
fn two_four_pruned_ds_cnn_runs_the_sparse_kernel_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (x, _) = kws_inputs();
    let config = DsCnnConfig::new(DsCnnSize::S);
    let bytes =
        std::fs::read(require_shared().join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors"))
            .unwrap();
    let trained = import::ds_cnn(&config, &bytes, "ds_cnn_s", &device).unwrap();
    let two_four = PruningConfig::new(PruningSchedule::constant(0.5))
        .with_granularity(collab_prune::Granularity::two_four());
    let dense = PruningConfig::new(PruningSchedule::constant(0.0));
    let model = trained
        .try_map(
            |name, c: ConvBlock| {
                let pointwise = name.ends_with(".pw");
                let p = if pointwise { &two_four } else { &dense }.wrap(c)?;
                p.prune_to(if pointwise { 0.5 } else { 0.0 })?;
                Ok::<_, collab_prune::PruneError>(p)
            },
            |_, l| {
                let p = two_four.wrap(l)?;
                p.prune_to(0.5)?;
                Ok(p)
            },
        )
        .unwrap();
    let plan = model.trace([1, 49, 10]).unwrap();
    let (ours, file) = export_and_check(&plan, &x, false, dir.path(), "ds_cnn_s_2_4");
    let graph = Graph::from_bytes(&file).unwrap();
    let mut interp = Interpreter::new(&graph).unwrap();
    let (_, test) = split(&x);
    let batch = test.dims()[0];
    let values = collab_core::host::to_vec_f32(test.flatten::<1>(0, 3));
    let port = interp.inputs()[0].clone();
    let nhwc = export::quantize_input(
        &export::nchw_to_nhwc(&values, batch, plan.input),
        port.scale,
        port.zero_point,
    );
    assert_eq!(interp.run_i8(&nhwc).unwrap(), ours);
    interp.set_kernels(collab_tflite::Kernels::Sparse);
    let vbmi = cfg!(target_arch = "x86_64") && {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    };
    // 4 pointwise convolutions and the classifier.
    assert_eq!(interp.sparse_layers(), if vbmi { 5 } else { 0 });
    assert_eq!(interp.run_i8(&nhwc).unwrap(), ours, "sparse kernel");
    interp.set_kernels(collab_tflite::Kernels::Portable);
    assert_eq!(interp.run_i8(&nhwc).unwrap(), ours, "portable kernels");
    eprintln!(
        "ds_cnn_s 2:4: {} layers on the sparse kernel, {} outputs identical",
        if vbmi { 5 } else { 0 },
        ours.len()
    );
}

#[test]
fn qat_ranges_export_without_calibration_data() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let (x, _) = kws_inputs();
    let (calib, test) = split(&x);
    let config = DsCnnConfig::new(DsCnnSize::S);
    let bytes =
        std::fs::read(require_shared().join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors"))
            .unwrap();
    let trained = import::ds_cnn(&config, &bytes, "ds_cnn_s", &device).unwrap();
    let qat = trained
        .try_map(
            |name, c| {
                QatConfig::new()
                    .with_activation(FusedActivation::Relu)
                    .with_input(name == "conv1")
                    .wrap(c)
            },
            |_, l| QatConfig::new().wrap(l),
        )
        .unwrap();
    // The ranges QAT would have trained, set here by its own calibration pass.
    let qat = collab_quant::calibrate(qat, [calib], |m, b| {
        m.forward(b);
    });
    let plan = qat.trace([1, 49, 10]).unwrap();
    // Without QAT ranges the plain model needs calibration data; with them it does not.
    let plain_plan = import::ds_cnn(&config, &bytes, "ds_cnn_s", &device)
        .unwrap()
        .trace([1, 49, 10])
        .unwrap();
    let err = export::to_tflite(&plain_plan, None, &ExportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("calibration"), "{err}");
    let (int8, file) = export_and_check_with(&plan, &x, false, dir.path(), "ds_cnn_s_qat", false);

    // The file carries QAT's output quantization, and computes what the fake-quant model does.
    let graph = Graph::from_bytes(&file).unwrap();
    let interp = Interpreter::new(&graph).unwrap();
    let out = interp.outputs()[0].clone();
    let fc = qat.fc.layer_quant("fc").unwrap();
    assert_eq!(out.scale, collab::export::round_scale(fc.output.scale[0]));
    assert_eq!(out.zero_point, fc.output.zero_point[0]);
    let fake = collab_core::host::to_vec_f32(qat.forward(test).flatten::<1>(0, 1));
    let (mut lsb, mut total) = (0f32, 0f32);
    let mut same = 0;
    for (q, f) in int8.chunks(12).zip(fake.chunks(12)) {
        for (a, b) in q.iter().zip(f) {
            let d = ((*a as i32 - out.zero_point) as f32 - b / out.scale).abs();
            lsb = lsb.max(d);
            total += d;
        }
        let q: Vec<f32> = q.iter().map(|v| *v as f32).collect();
        same += usize::from(argmax(&q) == argmax(f));
    }
    let mean = total / fake.len() as f32;
    eprintln!(
        "QAT export: int8 vs fake-quant logits: mean {mean:.2} LSB, max {lsb:.2} LSB; top-1 \
         agrees {same}/50"
    );
    // Fake quantization does not round the pooled average or the int32 bias / requantization,
    // so a few LSB of difference remain; the decisions agree.
    assert!(same >= 47, "top-1 agrees on only {same}/50");
    assert!(
        mean <= 1.5 && lsb <= 8.0,
        "int8 logits {mean} (max {lsb}) LSB from fake-quant"
    );
}

#[test]
fn trained_small_mobilenet_exports_bit_exact() {
    use collab::network::{ModelSpec, Task};
    use collab::train::{OptimizerConfig, TrainConfig};
    use collab::{Manifest, data};
    use collab_core::BnMode;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(7);
    // One epoch of MobileNet v1 0.25 on the 10k real CIFAR-10 training images (seconds).
    let spec = "mobilenet-v1-cifar"
        .parse::<ModelSpec>()
        .unwrap()
        .with_width(0.25)
        .unwrap();
    let data = data::load(
        Task::Images {
            side: 32,
            classes: 10,
        },
        Some(&require_shared().join("data/cifar10")),
        false,
        7,
        data::SyntheticSize::default(),
    )
    .unwrap();
    let config = TrainConfig {
        epochs: 1,
        batch_size: 100,
        devices: 1,
        optimizer: OptimizerConfig::SgdCosine {
            learning_rate: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
        },
        seed: 7,
        patience: None,
        dashboard: collab::learn::Dashboard::Log,
    };
    let network = spec.init(&device).unwrap().with_bn_mode(BnMode::Batch);
    let manifest = Manifest::new(spec, "baseline", 7);
    let (trained, history) =
        collab::train::fit(network, &data, &config, manifest, None, false).unwrap();
    let float_acc = history[0].val_accuracy;
    let net = trained.with_bn_mode(BnMode::Folded);
    let plan = net.plan([3, 32, 32]).unwrap();
    let x = cifar_inputs();
    let (logits, _) = export_and_check(&plan, &x, false, dir.path(), "mobilenet_v1_025_trained");
    let agree = agreement(&plan, &x, &logits, 10);
    eprintln!(
        "trained MobileNet v1 0.25 (1 epoch, val {:.1}%): int8 top-1 agrees with float on {:.0}%",
        100.0 * float_acc,
        100.0 * agree
    );
    assert!(
        float_acc > 0.2,
        "one epoch should beat chance clearly: {float_acc}"
    );
    assert!(agree >= 0.8, "int8 agrees with float on only {agree}");
}

/// A small residual network on CIFAR-shaped inputs, written as a graph: a stride-2 stem, a
/// residual block whose sum is followed by ReLU, a depthwise convolution (ReLU6), 3×3 max
/// `net` with every layer pruned to 50% and clustered to 8 values per channel keeping its
/// zeros, trained 3 Adam steps on `xs` `[n, 3, 32, 32]` (labels `i % 10`), wrappers kept.
fn pruned_clustered_trained(
    net: GraphNet<ConvBlock, burn::nn::Linear>,
    xs: &Tensor<4>,
    device: &Device,
) -> impl Traceable + use<> {
    let prune = PruningConfig::new(PruningSchedule::constant(0.5));
    let cluster = ClusteringConfig::new(8)
        .with_per_channel(true)
        .with_preserve_sparsity(true);
    let wrapped = net
        .try_map(
            |name, c: ConvBlock| {
                let p = prune.wrap(c)?;
                p.prune_to(0.5)?;
                Ok::<_, Box<dyn std::error::Error>>(cluster.wrap_named(name, p)?)
            },
            |name, l| {
                let p = prune.wrap(l)?;
                p.prune_to(0.5)?;
                Ok(cluster.wrap_named(name, p)?)
            },
        )
        .unwrap();
    let ad = device.clone().autodiff();
    let mut model = wrapped.fork(&ad).train();
    let mut optim = AdamConfig::new().init();
    let n = xs.dims()[0];
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let y =
        Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(labels, [n]), &ad);
    let xs = xs.clone().to_device(&ad);
    for _ in 0..3 {
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(model.forward(xs.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    model.valid()
}

/// pooling, 2×2 average pooling, global pooling and two fully-connected layers (the first with ReLU).
fn residual_graph() -> collab_models::GraphSpec {
    use collab_models::graph::{FusedActivation, GraphBuilder, Op, PoolSpec};
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("residual", input);
    let stem = g.conv(0, 16, [3, 3], [2, 2], 1, FusedActivation::Relu);
    let a = g.conv(stem, 16, [3, 3], [1, 1], 1, FusedActivation::Relu);
    let b = g.conv(a, 16, [3, 3], [1, 1], 1, FusedActivation::None);
    let sum = g.add(stem, b, FusedActivation::Relu);
    let dw = g.conv(sum, 16, [3, 3], [1, 1], 16, FusedActivation::Relu6);
    // 3×3 max pooling, stride 1, SAME (padded cells never win).
    let dw = g.node(
        "maxpool",
        Op::MaxPool(PoolSpec {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
        }),
        &[dw],
    );
    let pooled = g.node(
        "pool",
        Op::AvgPool(PoolSpec {
            kernel: [2, 2],
            stride: [2, 2],
            pads: [0; 4],
        }),
        &[dw],
    );
    let gp = g.global_avg_pool(pooled);
    let flat = g.flatten(gp);
    let hidden = g.linear(flat, 32, FusedActivation::Relu);
    g.linear(hidden, 10, FusedActivation::None);
    g.finish(true).unwrap()
}

/// A model written in Rust as a graph (residual blocks, pooling, a fully-connected ReLU
/// layer): the same description trains wrapped and exports, bit-exact in every runtime.
#[test]
fn a_graph_built_in_rust_trains_wrapped_and_exports_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let x = cifar_inputs();
    let spec = residual_graph();
    let net = GraphNet::init(spec, &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    // The float plan is the model.
    let plain = net.trace([3, 32, 32]).unwrap();
    let (_, test) = split(&x);
    let diff = (net.forward(test.clone()) - plain.forward(test).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "plan and model differ by {diff}");

    // Prune to 50 %, cluster to 8 per channel keeping zeros, train a few steps.
    let trained = pruned_clustered_trained(net, &split(&x).0, &device);
    let plan = trained.trace([3, 32, 32]).unwrap();
    let (_, file) = export_and_check(&plan, &x, true, dir.path(), "graph_residual_pcq");
    let report = Report::new(&file).unwrap();
    let layers: Vec<_> = report
        .weights
        .iter()
        .filter(|w| w.dtype == collab_tflite::TensorType::Int8 && w.shape.len() >= 2)
        .collect();
    assert_eq!(
        layers.len(),
        6,
        "4 convolutions and 2 fully-connected layers"
    );
    for w in &layers {
        assert!(
            w.zero_fraction >= 0.5,
            "{}: {} zeros",
            w.name,
            w.zero_fraction
        );
        let unique = w.unique_per_channel_max.unwrap_or(w.unique);
        assert!(unique <= 8, "{}: {unique} values in a channel", w.name);
    }
}

/// QAT on a graph: every layer and every sum gets a trained output quantization, so the file
/// is written with no calibration data at all, and runs bit-exact.
#[test]
fn a_qat_graph_exports_with_trained_ranges_for_its_sums() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let x = cifar_inputs();
    let spec = residual_graph();
    let first = |name: &str| spec.reads_model_input(name);
    let act = |name: &str| spec.activation_of(name);
    let net = GraphNet::init(spec.clone(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let qat = net
        .try_map(
            |n, c| {
                QatConfig::new()
                    .with_activation(act(n))
                    .with_input(first(n))
                    .wrap(c)
            },
            |n, l| QatConfig::new().with_activation(act(n)).wrap(l),
        )
        .unwrap()
        .with_requant(&collab_quant::ActQuantConfig::default(), &device)
        .unwrap();
    assert_eq!(qat.requant.len(), 1, "one sum");
    let (calib, _) = split(&x);
    let qat = collab_quant::calibrate(qat, [calib], |m, x| {
        m.forward(x);
    });
    let plan = qat.trace([3, 32, 32]).unwrap();
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, export::Step::Add { quant: Some(_), .. })),
        "the sum's range comes from QAT"
    );
    export_and_check_with(&plan, &x, true, dir.path(), "graph_residual_qat", false);
}

/// An Inception-style block on CIFAR-shaped inputs, written as a graph: a stride-2 stem
/// (ReLU) feeding three branches (1×1 conv with ReLU, 3×3 conv with ReLU6, 3×3 max pooling of
/// the stem itself), concatenated; then a 1×1 conv of that (no activation) concatenated with
/// it again (a concatenation of concatenations), global pooling and a classifier. The stem
/// feeds convolutions and, pooled, the concatenation, so it joins the shared quantization.
fn inception_graph() -> collab_models::GraphSpec {
    use collab_models::graph::{FusedActivation, GraphBuilder, Op, PoolSpec};
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("inception", input);
    let stem = g.conv(0, 16, [3, 3], [2, 2], 1, FusedActivation::Relu);
    let b1 = g.conv(stem, 8, [1, 1], [1, 1], 1, FusedActivation::Relu);
    let b2 = g.conv(stem, 8, [3, 3], [1, 1], 1, FusedActivation::Relu6);
    let b3 = g.node(
        "branch_pool",
        Op::MaxPool(PoolSpec {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
        }),
        &[stem],
    );
    let cat = g.concat(&[b1, b2, b3]);
    let cat = g.rename(cat, "mixed");
    let reduce = g.conv(cat, 8, [1, 1], [1, 1], 1, FusedActivation::None);
    let cat2 = g.concat(&[cat, reduce]);
    let cat2 = g.rename(cat2, "mixed_2");
    let gp = g.global_avg_pool(cat2);
    let flat = g.flatten(gp);
    g.linear(flat, 10, FusedActivation::None);
    g.finish(true).unwrap()
}

/// Every CONCATENATION of the file has its inputs quantized exactly as its output; returns
/// their (scale, zero point) per concatenation.
fn concat_quantization(file: &[u8]) -> Vec<(f32, i64)> {
    let graph = Graph::from_bytes(file).unwrap();
    let q = |i: i32| {
        let t = &graph.tensors[i as usize];
        let q = t.quantization.as_ref().unwrap();
        (q.scale[0], q.zero_point[0])
    };
    graph
        .operators
        .iter()
        .filter(|o| o.op == "CONCATENATION")
        .map(|o| {
            let out = q(o.outputs[0]);
            for i in &o.inputs {
                assert_eq!(q(*i), out, "input `{}`", graph.tensors[*i as usize].name);
            }
            out
        })
        .collect()
}

/// PTQ of concatenations: the branches, the stem that one branch pools, and both
/// concatenations share one quantization (the union of their calibrated ranges, so no member
/// is clipped); the file runs bit-exact in TFLite Micro and LiteRT's reference kernels, and
/// Vela places it wholly on the NPU.
#[test]
fn an_inception_graph_exports_its_concatenations_bit_exact_with_shared_scales() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(11);
    let x = cifar_inputs();
    let net = GraphNet::init(inception_graph(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let plan = net.trace([3, 32, 32]).unwrap();
    let (calib, test) = split(&x);
    let diff = (net.forward(test.clone()) - plan.forward(test).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "plan and model differ by {diff}");
    // One class: the stem (pooled into `mixed`), the three branches, both concatenations, the
    // 1×1 reduction and the global pooling and flattening after them (they keep their input's
    // quantization); not the model input, not the classifier.
    let classes = export::quant_classes(&plan);
    let names: Vec<&str> = plan.steps.iter().map(export::Step::name).collect();
    let shared: Vec<&str> = (1..classes.len())
        .filter(|v| classes[*v] == 1)
        .map(|v| names[v - 1])
        .collect();
    assert_eq!(
        shared,
        [
            "conv0",
            "conv1",
            "conv2",
            "branch_pool",
            "mixed",
            "conv3",
            "mixed_2",
            "globalaveragepool_7",
            "flatten_8"
        ]
    );
    assert_ne!(classes[0], 1, "the model input is quantized on its own");

    let (logits, file) = export_and_check(&plan, &x, false, dir.path(), "inception_ptq");
    let agree = agreement(&plan, &x, &logits, 10);
    eprintln!("inception PTQ: int8 top-1 agrees with float on {agree:.2}");
    let quant = concat_quantization(&file);
    assert_eq!(quant.len(), 2);
    assert_eq!(quant[0], quant[1], "one class, one quantization");
    // No member of the class is clipped: each calibrated range fits the shared one.
    let ranges = plan.calibrate([Ok(calib)], Calibration::MinMax).unwrap();
    let (scale, zp) = quant[0];
    let (lo, hi) = (scale * (-128 - zp) as f32, scale * (127 - zp) as f32);
    for v in (1..classes.len()).filter(|v| classes[*v] == 1) {
        let (a, b) = ranges.0[v].unwrap();
        let slack = scale;
        assert!(
            a >= lo - slack && b <= hi + slack,
            "{}: [{a}, {b}] outside [{lo}, {hi}]",
            names[v - 1]
        );
    }
    let report = Report::new(&file).unwrap();
    assert!(report.operators.contains_key("CONCATENATION v2"));
    deployment_file_runs_on_the_npu_and_with_float_io(&plan, &x, dir.path());
}

/// A concatenation of the model input itself (DenseNet-style): the input tensor is written
/// with the concatenation's quantization (PTQ and QAT), and the file runs bit-exact.
#[test]
fn a_concatenation_of_the_model_input_quantizes_the_input_with_it() {
    use collab_models::GraphNet;
    use collab_models::graph::{FusedActivation, GraphBuilder};
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(12);
    let x = cifar_inputs();
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("dense", input);
    let a = g.conv(0, 5, [3, 3], [1, 1], 1, FusedActivation::Relu);
    let cat = g.concat(&[0, a]);
    let b = g.conv(cat, 8, [3, 3], [2, 2], 1, FusedActivation::Relu);
    let gp = g.global_avg_pool(b);
    let flat = g.flatten(gp);
    g.linear(flat, 10, FusedActivation::None);
    let net = GraphNet::init(g.finish(false).unwrap(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let input_q = |file: &[u8]| {
        let graph = Graph::from_bytes(file).unwrap();
        let q = graph.tensors[graph.inputs[0] as usize]
            .quantization
            .clone()
            .unwrap();
        (q.scale[0], q.zero_point[0])
    };
    let plan = net.trace([3, 32, 32]).unwrap();
    let (_, file) = export_and_check(&plan, &x, false, dir.path(), "dense_input_concat");
    assert_eq!(concat_quantization(&file), [input_q(&file)]);

    // QAT: the first layer's trained input range gives way to the concatenation's, which
    // every member of the class (the input included) is written with.
    let spec = net.spec().clone();
    let qat = net
        .try_map(
            |n, c| collab::network::qat_config(&spec, n).wrap(c),
            |n, l| collab::network::qat_config(&spec, n).wrap(l),
        )
        .unwrap()
        .with_requant(&collab_quant::ActQuantConfig::default(), &device)
        .unwrap();
    assert!(
        qat.convs[0].input.is_some(),
        "the first layer quantizes its input"
    );
    let qat = collab_quant::calibrate(qat, [split(&x).0], |m, x| {
        m.forward(x);
    });
    let (lo, hi) = qat.requant[0].range().unwrap();
    let plan = qat.trace([3, 32, 32]).unwrap();
    let (_, file) = export_and_check_with(&plan, &x, false, dir.path(), "dense_qat", false);
    let p = collab_quant::QuantParams::asymmetric(lo, hi).unwrap();
    let want = (export::round_scale(p.scale[0]), p.zero_point[0] as i64);
    assert_eq!(input_q(&file), want);
    assert_eq!(concat_quantization(&file), [want]);
}

/// QAT of the Inception graph, 3 Adam steps, exported from the trained ranges alone (no
/// calibration data) and checked bit-exact; `tfmot`: the layers that feed only a
/// concatenation do not quantize their outputs (TFMOT's rule, `network::qat_config`), else
/// they do and those values are rounded twice in training. Returns, on the 50 test images,
/// how often the file's top-1 equals the fake-int8 model's, and the mean and largest
/// difference of their logits in output LSB.
fn qat_inception(tfmot: bool, dir: &Path) -> (usize, f32, f32) {
    use burn::module::Module;
    use burn::optim::{AdamConfig, GradientsParams};
    use collab_models::GraphNet;
    let device = Device::flex();
    device.seed(13);
    let x = cifar_inputs();
    let spec = inception_graph();
    let net = GraphNet::init(spec.clone(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let config = |n: &str| {
        let c = collab::network::qat_config(&spec, n);
        if tfmot {
            c
        } else {
            c.with_output_quantizer(true)
        }
    };
    let qat = net
        .try_map(|n, c| config(n).wrap(c), |n, l| config(n).wrap(l))
        .unwrap()
        .with_requant(&collab_quant::ActQuantConfig::default(), &device)
        .unwrap();
    assert_eq!(qat.requant.len(), 2, "two concatenations");
    assert_eq!(qat.convs[1].quantizes_output(), !tfmot);
    assert!(qat.convs[0].quantizes_output());
    // A few QAT steps: the ranges are the moving averages training leaves.
    let ad = device.clone().autodiff();
    let mut model = qat.fork(&ad).train();
    let mut optim = AdamConfig::new().init();
    let labels: Vec<i64> = (0..50).map(|i| i % 10).collect();
    let y =
        Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(labels, [50]), &ad);
    // Made on the autodiff device (as training batches are), so the input quantizer trains.
    let xs = Tensor::<4>::from_data(split(&x).0.into_data(), &ad);
    for _ in 0..3 {
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&ad)
            .forward(model.forward(xs.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let trained = model.valid();
    let plan = trained.trace([3, 32, 32]).unwrap();
    let concat_ranges: Vec<(f32, f32)> = plan
        .steps
        .iter()
        .filter_map(|s| match s {
            export::Step::Concat { range, .. } => *range,
            _ => None,
        })
        .collect();
    assert_eq!(concat_ranges.len(), 2, "both ranges come from QAT");
    let name = format!("inception_qat_{}", if tfmot { "tfmot" } else { "twice" });
    let (ints, file) = export_and_check_with(&plan, &x, false, dir, &name, false);
    let quant = concat_quantization(&file);
    // The class's quantization is the trained concatenations' (the union of their ranges).
    let (lo, hi) = concat_ranges
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), r| {
            (a.min(r.0), b.max(r.1))
        });
    let p = collab_quant::QuantParams::asymmetric(lo, hi).unwrap();
    assert_eq!(
        quant[0],
        (export::round_scale(p.scale[0]), p.zero_point[0] as i64)
    );
    assert_eq!(quant[0], quant[1]);

    // Fake-int8 (the trained model's forward) against the file, on the test half.
    let (_, test) = split(&x);
    let fake = collab_core::host::to_vec_f32(trained.forward(test).flatten::<1>(0, 1));
    let graph = Graph::from_bytes(&file).unwrap();
    let out = Interpreter::new(&graph).unwrap().outputs()[0].clone();
    let deq: Vec<f32> = ints
        .iter()
        .map(|q| out.scale * (*q as i32 - out.zero_point) as f32)
        .collect();
    let same = fake
        .chunks(10)
        .zip(deq.chunks(10))
        .filter(|(f, q)| argmax(f) == argmax(q))
        .count();
    let lsb: Vec<f32> = fake
        .iter()
        .zip(&deq)
        .map(|(f, q)| ((f - q) / out.scale).abs())
        .collect();
    let mean = lsb.iter().sum::<f32>() / lsb.len() as f32;
    (same, mean, lsb.iter().fold(0f32, |a, b| a.max(*b)))
}

/// QAT of concatenations (TFMOT's rule): the concatenations' output quantizers train their
/// ranges, the layers that feed only a concatenation do not quantize their outputs, and the
/// file is written from the trained ranges alone (no calibration data), bit-exact. Its
/// predictions are those of the fake-int8 model it was trained as. The same model trained
/// with those layers quantizing too (values rounded twice) is measured beside it.
#[test]
fn a_qat_inception_graph_exports_without_calibration_and_predicts_as_it_trained() {
    let dir = tempfile::tempdir().unwrap();
    let spec = inception_graph();
    // The layers whose values reach only a concatenation: the two branch convolutions and
    // the 1×1 reduction; the stem also feeds convolutions, so it quantizes its output.
    let skipped: Vec<&str> = ["conv0", "conv1", "conv2", "conv3", "fc0"]
        .into_iter()
        .filter(|n| spec.quantized_by_concat(n))
        .collect();
    assert_eq!(skipped, ["conv1", "conv2", "conv3"]);
    let (same, mean, max) = qat_inception(true, dir.path());
    let (same2, mean2, max2) = qat_inception(false, dir.path());
    eprintln!(
        "inception QAT, file vs fake-int8 on 50 images: TFMOT's rule: top-1 equal on \
         {same}/50, logits {mean:.2} LSB apart on average, {max:.0} at most; feeding layers \
         quantized too: {same2}/50, {mean2:.2}, {max2:.0}"
    );
    assert!(
        same >= 45,
        "the file predicts as the fake-int8 model on only {same}/50"
    );
}

/// A squeeze-excite block and a swish-like product written as a graph: a per-channel gate
/// (global pooling, two fully-connected layers, a ReLU6 scaled by a constant 1/6: a hard
/// sigmoid) multiplies the map, the map times a ReLU6 of a 1×1 convolution of itself, the
/// pooled map subtracted and added back (broadcast), a per-channel constant shift.
fn se_swish_graph() -> collab_models::GraphSpec {
    use collab_models::graph::{FusedActivation, GraphBuilder};
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("se_swish", input);
    let x = g.conv(0, 16, [3, 3], [2, 2], 1, FusedActivation::Relu);
    let pooled = g.global_avg_pool(x);
    let flat = g.flatten(pooled);
    let squeeze = g.linear(flat, 4, FusedActivation::Relu);
    let excite = g.linear(squeeze, 16, FusedActivation::Relu6);
    let gate = g.mul_const(excite, &[1.0 / 6.0]);
    let se = g.mul(x, gate, FusedActivation::None);
    let s = g.conv(se, 16, [1, 1], [1, 1], 1, FusedActivation::Relu6);
    let swish = g.mul(se, s, FusedActivation::None);
    let centred = g.sub(swish, pooled, FusedActivation::Relu);
    let shift: Vec<f32> = (0..16).map(|i| 0.1 * i as f32 - 0.8).collect();
    let shifted = g.add_const(centred, &shift);
    let back = g.add(shifted, pooled, FusedActivation::None);
    let gp = g.global_avg_pool(back);
    let flat = g.flatten(gp);
    g.linear(flat, 10, FusedActivation::None);
    g.finish(true).unwrap()
}

/// Element-wise products, differences and broadcasting sums (squeeze-excite, swish): the float
/// plan is the model, the PTQ file runs bit-exact in TFLite Micro and LiteRT's reference
/// kernels and Vela places it on the NPU; under QAT each of them gets a trained output
/// quantization and the file needs no calibration data.
#[test]
fn squeeze_excite_and_products_export_bit_exact() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let x = cifar_inputs();
    let spec = se_swish_graph();
    assert_eq!(
        spec.requant_nodes().len(),
        6,
        "1/6, two products, sub, shift, sum"
    );
    let net = GraphNet::init(spec.clone(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let plan = net.trace([3, 32, 32]).unwrap();
    let (_, test) = split(&x);
    let diff = (net.forward(test.clone()) - plan.forward(test).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "plan and model differ by {diff}");
    let (ours, bytes) = export_and_check(&plan, &x, false, dir.path(), "graph_se_swish");
    let graph = Graph::from_bytes(&bytes).unwrap();
    let count = |op: &str| graph.operators.iter().filter(|o| o.op == op).count();
    assert_eq!(
        (count("MUL"), count("SUB"), count("ADD")),
        (3, 1, 2),
        "{:?}",
        graph.operators.iter().map(|o| &o.op).collect::<Vec<_>>()
    );
    // The int8 logits follow the float model's.
    assert!(agreement(&plan, &x, &ours, 10) >= 0.7);
    deployment_file_runs_on_the_npu_and_with_float_io(&plan, &x, dir.path());

    // QAT: every element-wise node trains its own output range.
    let first = |name: &str| spec.reads_model_input(name);
    let act = |name: &str| spec.activation_of(name);
    let qat = net
        .try_map(
            |n, c| {
                QatConfig::new()
                    .with_activation(act(n))
                    .with_input(first(n))
                    .wrap(c)
            },
            |n, l| QatConfig::new().with_activation(act(n)).wrap(l),
        )
        .unwrap()
        .with_requant(&collab_quant::ActQuantConfig::default(), &device)
        .unwrap();
    assert_eq!(qat.requant.len(), 6);
    let (calib, _) = split(&x);
    let qat = collab_quant::calibrate(qat, [calib], |m, x| {
        m.forward(x);
    });
    let plan = qat.trace([3, 32, 32]).unwrap();
    let trained = plan
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s,
                export::Step::Binary { quant: Some(_), .. }
                    | export::Step::Add { quant: Some(_), .. }
            )
        })
        .count();
    assert_eq!(trained, 6, "every element-wise range comes from QAT");
    export_and_check_with(&plan, &x, false, dir.path(), "graph_se_swish_qat", false);
}

/// MLPerf Tiny's reference models, which nobody here wrote, imported from float TFLite and from
/// ONNX and exported with PTQ: every file runs bit-exact in TFLite Micro and LiteRT's reference
/// kernels, and Vela places the vision model wholly on the NPU. No data for VWW and the
/// autoencoder is shared, so they calibrate on random inputs of their range (the check is the
/// file, not its accuracy).
#[test]
fn mlperf_tiny_models_import_and_export_bit_exact() {
    use burn::tensor::Distribution;
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let models = require_shared().join("models/mlperf_tiny");
    for (file, softmax) in [
        ("vww_96_float.tflite", true),
        ("vww_96.onnx", true),
        ("ad01_fp32.tflite", false),
        ("ad01.onnx", false),
        ("kws_ref_model_float32.tflite", true),
        ("kws_ds_cnn.onnx", true),
    ] {
        let imported = collab_import::import(&models.join(file), None).unwrap();
        assert_eq!(imported.spec.softmax, softmax, "{file}");
        let spec = imported.spec.clone();
        let net = GraphNet::from_weights(imported.spec, imported.weights, &device).unwrap();
        let [c, h, w] = spec.input.shape;
        // VWW's activations at batch 50 outgrow TFLite Micro's default arena: batch 4.
        let x = if file.starts_with("vww") {
            Tensor::<4>::random([8, c, h, w], Distribution::Uniform(0.0, 1.0), &device)
        } else {
            Tensor::<4>::random([100, c, h, w], Distribution::Normal(0.0, 1.0), &device)
        };
        let plan = net.trace(spec.input.shape).unwrap();
        assert_eq!(plan.softmax, softmax);
        let name = file.replace('.', "_");
        let (_, bytes) = export_and_check(&plan, &x, softmax, dir.path(), &name);
        let report = Report::new(&bytes).unwrap();
        eprintln!(
            "{file}: {} operators, {} bytes int8",
            report.operator_count, report.bytes
        );
        if file == "vww_96_float.tflite" {
            deployment_file_runs_on_the_npu_and_with_float_io(&plan, &x, dir.path());
        }
    }
}

/// A graph with the layout operators of the importers on CIFAR-shaped inputs: a stride-2 stem,
/// a transposed convolution back to 32×32 (kernel 4, stride 2, pads 1: TFLite's SAME, with a
/// fused ReLU), a Transpose of height and width, a Reshape in `[c, h, w]` order that moves
/// values (TRANSPOSE, RESHAPE, TRANSPOSE in the NHWC file), a strided convolution and a
/// channels-first flatten of its 4×4 map.
fn layout_graph() -> collab_models::GraphSpec {
    use collab_models::graph::{FusedActivation, GraphBuilder, Op};
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("layout", input);
    let stem = g.conv(0, 8, [3, 3], [2, 2], 1, FusedActivation::Relu);
    let up = g.conv_transpose(stem, 6, [4, 4], [2, 2], [1, 1, 1, 1], FusedActivation::Relu);
    let swapped = g.transpose(up, [0, 2, 1]);
    let moved = g.reshape(swapped, &[24, 16, 16], false);
    let down = g.conv(moved, 8, [3, 3], [4, 4], 1, FusedActivation::Relu);
    let flat = g.node(
        "flatten_chw",
        Op::Flatten {
            channels_last: false,
        },
        &[down],
    );
    g.linear(flat, 10, FusedActivation::None);
    g.finish(true).unwrap()
}

/// Transposed convolution, Transpose, a data-moving Reshape and a channels-first flatten of a
/// 4×4 map: trained pruned and clustered, exported, bit-exact in TFLite Micro and LiteRT's
/// reference kernels, placed by Vela; the transposed convolution is also wrapped whole-model.
#[test]
fn transpose_conv_and_layout_operators_train_wrapped_and_export_bit_exact() {
    use collab_cluster::WholeClustering;
    use collab_prune::WholePruning;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    // 24 images (12 to calibrate, 12 to run): TFLite Micro's test arena (1 MiB) holds the
    // int32 scratch of TRANSPOSE_CONV's 32×32×6 output for 12 samples.
    let x = cifar_inputs().narrow(0, 0, 24);
    let spec = layout_graph();
    let net = GraphNet::init(spec, &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let (deconv, _) = net.spec().layer_names();
    assert_eq!(deconv[1], "deconv1");
    let plain = net.trace([3, 32, 32]).unwrap();
    let (_, test) = split(&x);
    let diff = (net.forward(test.clone()) - plain.forward(test).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "plan and model differ by {diff}");

    // Whole-model wrappers reach the transposed convolution's weight like any other.
    let pruning = WholePruning::new(PruningConfig::new(PruningSchedule::constant(0.5)));
    let (whole, wrapped) = pruning.wrap(net.clone()).unwrap();
    let path = "convs.1.conv.weight";
    assert!(
        wrapped.wrapped.iter().any(|s| s.path == path),
        "{:?}",
        wrapped.wrapped.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    let whole = pruning.prune_to(whole, 0.5).unwrap();
    let w = collab_core::host::to_vec_f32(whole.convs[1].conv.weight.val().flatten::<1>(0, 3));
    let zeros = w.iter().filter(|v| **v == 0.0).count() as f64 / w.len() as f64;
    assert!(zeros >= 0.5, "whole-model pruning left {zeros} zeros");
    let clustering = WholeClustering::new(ClusteringConfig::new(8));
    let (clustered, _) = clustering.wrap(collab_core::whole::strip(whole)).unwrap();
    let w = collab_core::host::to_vec_f32(clustered.convs[1].conv.weight.val().flatten::<1>(0, 3));
    let mut distinct: Vec<u32> = w.iter().map(|v| v.to_bits()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() <= 8,
        "{} values after clustering",
        distinct.len()
    );

    // Per-layer wrappers: prune to 50 %, cluster to 8 per channel keeping zeros, train.
    let trained = pruned_clustered_trained(net, &split(&x).0, &device);
    let plan = trained.trace([3, 32, 32]).unwrap();
    let (_, file) = export_and_check(&plan, &x, true, dir.path(), "graph_layout_pcq");
    let graph = Graph::from_bytes(&file).unwrap();
    let ops: Vec<&str> = graph.operators.iter().map(|o| o.op.as_str()).collect();
    eprintln!("operators: {ops:?}");
    assert_eq!(ops.iter().filter(|o| **o == "TRANSPOSE_CONV").count(), 1);
    // One TRANSPOSE for the Transpose, two around the reshape, one before the flatten.
    assert_eq!(ops.iter().filter(|o| **o == "TRANSPOSE").count(), 4);
    let report = Report::new(&file).unwrap();
    let deconv = report
        .weights
        .iter()
        .find(|w| w.name == "deconv1/weight")
        .expect("the transposed convolution's weights");
    assert!(deconv.zero_fraction >= 0.5, "{}", deconv.zero_fraction);
    assert!(deconv.unique_per_channel_max.unwrap_or(deconv.unique) <= 8);

    // A transposed convolution TFLite cannot place (neither SAME nor VALID) is refused by name.
    let mut g = collab_models::graph::GraphBuilder::new("odd", layout_graph().input);
    g.conv_transpose(
        0,
        4,
        [3, 3],
        [2, 2],
        [2, 2, 2, 2],
        collab_models::graph::FusedActivation::None,
    );
    let odd = GraphNet::init(g.finish(false).unwrap(), &device).unwrap();
    let odd = odd.trace([3, 32, 32]).unwrap();
    let ranges = odd
        .calibrate([Ok(split(&x).0)], Calibration::MinMax)
        .unwrap();
    let err = export::to_tflite(&odd, Some(&ranges), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deconv0") && err.contains("neither TFLite's SAME nor VALID"),
        "{err}"
    );

    // Vela places the deployment file (batch 1).
    if let Some(tools) = tools() {
        let (calib, _) = split(&x);
        let ranges = plan.calibrate([Ok(calib)], Calibration::MinMax).unwrap();
        let bytes = export::to_tflite(&plan, Some(&ranges), &ExportOptions::default()).unwrap();
        let path = dir.path().join("layout_deploy.tflite");
        export::write(&path, &bytes).unwrap();
        let (code, vela) = tools
            .vela_check(&path, &["--min-npu-percent", "100"])
            .unwrap();
        eprintln!("vela: {vela}");
        assert_eq!(code, 0, "Vela: {vela}");
    }
}

/// QAT through a transposed convolution and the layout operators: the transposed convolution
/// trains per-channel weights and an output range like any convolution, so the file is written
/// from QAT ranges alone and runs bit-exact.
#[test]
fn a_qat_graph_with_transpose_conv_exports_with_trained_ranges() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    // 12 samples run: TFLite Micro's 1 MiB test arena (see above).
    let x = cifar_inputs().narrow(0, 0, 24);
    let spec = layout_graph();
    let first = |name: &str| spec.reads_model_input(name);
    let act = |name: &str| spec.activation_of(name);
    let qat = GraphNet::init(spec.clone(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap()
        .try_map(
            |n, c| {
                QatConfig::new()
                    .with_activation(act(n))
                    .with_input(first(n))
                    .wrap(c)
            },
            |n, l| QatConfig::new().with_activation(act(n)).wrap(l),
        )
        .unwrap();
    assert_eq!(act("deconv1"), FusedActivation::Relu);
    let (calib, _) = split(&x);
    let qat = collab_quant::calibrate(qat, [calib], |m, x| {
        m.forward(x);
    });
    let plan = qat.trace([3, 32, 32]).unwrap();
    assert!(
        plan.steps
            .iter()
            .any(|s| matches!(s, export::Step::ConvTranspose { quant: Some(_), .. }))
    );
    export_and_check_with(&plan, &x, true, dir.path(), "graph_layout_qat", false);
}

/// A graph with every lone activation the int8 export writes: HARD_SWISH, LEAKY_RELU, TANH,
/// RELU6 (after pooling, so not fused), LOGISTIC and RELU (after pooling), between layers.
fn activation_graph() -> collab_models::graph::GraphSpec {
    use collab_models::graph::{FusedActivation, GraphBuilder, Pointwise};
    let input = collab_data::InputSpec {
        shape: [3, 32, 32],
        layout: collab_data::Layout::Nhwc,
        features: collab_data::Features::Array,
        labels: vec![],
    };
    let mut g = GraphBuilder::new("activations", input);
    let x = g.conv(0, 8, [3, 3], [2, 2], 1, FusedActivation::None);
    let x = g.act(x, Pointwise::HardSwish);
    let x = g.conv(x, 8, [3, 3], [1, 1], 8, FusedActivation::None);
    let x = g.act(x, Pointwise::LeakyRelu { alpha: 0.1 });
    let x = g.conv(x, 16, [1, 1], [1, 1], 1, FusedActivation::None);
    let x = g.act(x, Pointwise::Tanh);
    let x = g.max_pool(x, [2, 2], [2, 2]);
    let x = g.act(x, Pointwise::Relu6);
    let x = g.conv(x, 16, [3, 3], [1, 1], 1, FusedActivation::None);
    let x = g.act(x, Pointwise::Sigmoid);
    let x = g.global_avg_pool(x);
    let x = g.act(x, Pointwise::Relu);
    let x = g.flatten(x);
    g.linear(x, 10, FusedActivation::None);
    g.finish(true).unwrap()
}

/// The lone activations export with PTQ: `verify` finds our interpreter, LiteRT's reference
/// kernels and TensorFlow Lite Micro equal bit for bit, every activation is in the file with
/// the output quantization TFLite requires, and Vela compiles the deployment file.
#[test]
fn lone_activations_export_bit_exact_with_calibration() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(3);
    let x = cifar_inputs();
    let net = GraphNet::init(activation_graph(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap();
    let plan = net.trace([3, 32, 32]).unwrap();
    let (calib, test) = split(&x);
    let diff = (net.forward(test.clone()) - plan.forward(test.clone()).unwrap())
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff < 1e-5, "plan and model differ by {diff}");
    let ranges = plan.calibrate([Ok(calib)], Calibration::MinMax).unwrap();
    let bytes = export::to_tflite(&plan, Some(&ranges), &ExportOptions::default()).unwrap();
    let graph = Graph::from_bytes(&bytes).unwrap();
    let ops: Vec<&str> = graph.operators.iter().map(|o| o.op.as_str()).collect();
    for op in [
        "HARD_SWISH",
        "LEAKY_RELU",
        "TANH",
        "RELU6",
        "LOGISTIC",
        "RELU",
    ] {
        assert_eq!(
            ops.iter().filter(|o| **o == op).count(),
            1,
            "{op} in {ops:?}"
        );
    }
    for (i, op) in graph.operators.iter().enumerate() {
        let q = |t: i32| {
            let q = graph.tensors[t as usize].quantization.clone().unwrap();
            (q.scale[0], q.zero_point[0])
        };
        match op.op.as_str() {
            "LOGISTIC" => assert_eq!(q(op.outputs[0]), (1.0 / 256.0, -128)),
            "TANH" => assert_eq!(q(op.outputs[0]), (1.0 / 128.0, 0)),
            "RELU6" => assert_eq!(q(op.outputs[0]), q(op.inputs[0]), "operator {i}"),
            _ => {}
        }
    }
    let Some(tools) = tools() else {
        return;
    };
    let v = export::verify(&tools, &plan, Some(&ranges), test, &dir.path().join("v")).unwrap();
    eprintln!("lone activations (PTQ): {v:?}");
    assert!(v.exact(), "{v:?}");
    let path = dir.path().join("acts.tflite");
    export::write(&path, &bytes).unwrap();
    let (code, vela) = tools.vela_check(&path, &[]).unwrap();
    eprintln!(
        "vela: exit {code}, {} of the operators on the NPU ({}%), on the CPU: {}",
        vela["npu_operators"], vela["npu_operators_percent"], vela["cpu_ops_listed"]
    );
    assert_eq!(code, 0, "Vela: {vela}");
}

/// Under QAT the requantizing lone activations (HARD_SWISH, LEAKY_RELU, RELU) get trained output
/// ranges, LOGISTIC and TANH train with their fixed quantization, RELU6 keeps its input's: the
/// file is written with no calibration data and runs bit-exact.
#[test]
fn lone_activations_export_bit_exact_with_qat_ranges() {
    use collab_models::GraphNet;
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    device.seed(4);
    let x = cifar_inputs();
    let spec = activation_graph();
    assert_eq!(spec.requant_nodes().len(), 5, "all activations but RELU6");
    let first = |name: &str| spec.reads_model_input(name);
    let act = |name: &str| spec.activation_of(name);
    let qat = GraphNet::init(spec.clone(), &device)
        .unwrap()
        .try_map(|_, c| Ok::<_, ()>(he(c)), |_, l| Ok(l))
        .unwrap()
        .try_map(
            |n, c| {
                QatConfig::new()
                    .with_activation(act(n))
                    .with_input(first(n))
                    .wrap(c)
            },
            |n, l| QatConfig::new().with_activation(act(n)).wrap(l),
        )
        .unwrap()
        .with_requant(&collab_quant::ActQuantConfig::default(), &device)
        .unwrap();
    let (calib, test) = split(&x);
    let qat = collab_quant::calibrate(qat, [calib], |m, x| {
        m.forward(x);
    });
    // The sigmoid's output under QAT is already on TFLite's int8 grid (multiples of 1/256).
    let mut sigmoid = Vec::new();
    qat.forward_values(test.clone(), |k, v| {
        if k == 10 {
            sigmoid = collab_core::host::to_vec_f32(v.clone().flat());
        }
    });
    assert!(!sigmoid.is_empty());
    assert!(sigmoid.iter().all(|v| (v * 256.0).fract() == 0.0));
    let plan = qat.trace([3, 32, 32]).unwrap();
    let trained = plan
        .steps
        .iter()
        .filter(|s| matches!(s, export::Step::Act { quant: Some(_), .. }))
        .count();
    assert_eq!(
        trained, 3,
        "HARD_SWISH, LEAKY_RELU and RELU have trained ranges"
    );
    let Some(tools) = tools() else {
        return;
    };
    let v = export::verify(&tools, &plan, None, test, &dir.path().join("v")).unwrap();
    eprintln!("lone activations (QAT): {v:?}");
    assert!(v.exact(), "{v:?}");
}
