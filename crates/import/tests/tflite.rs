//! Float `.tflite` import against LiteRT running the same file: the MLPerf Tiny float models,
//! ResNet-8 on real CIFAR-10 images, small files written here for the operators those models
//! lack, and the files the importer must refuse.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use collab_data::shared::shared_dir;
use collab_data::{Cifar10, Features, ImageNorm, InputSpec, Layout};
use collab_import::{ImportError, Imported, tflite};
use collab_models::GraphNet;
use collab_models::graph::Op;
use collab_tflite::tflite as fb;
use collab_tflite::tools::Validators;
use collab_tflite::{Data, npy};

/// The shared folder, or `None` with a note (a panic under `COLLAB_REQUIRE_TOOLS=1`).
fn shared() -> Option<PathBuf> {
    let dir = shared_dir();
    if dir.is_none() {
        assert!(
            std::env::var("COLLAB_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "COLLAB_REQUIRE_TOOLS=1 but the shared folder is missing (set COLLAB_SHARED)"
        );
        eprintln!("skipped: no shared folder (set COLLAB_SHARED=/path/to/shared)");
    }
    dir
}

fn mlperf(shared: &Path, file: &str) -> PathBuf {
    shared.join("models/mlperf_tiny").join(file)
}

/// Deterministic uniform values in `[lo, hi)` (xorshift).
fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// The imported model's outputs on `samples` (each in the file's layout), as log-probabilities
/// where the file ends in a softmax: `[n, outputs]`.
fn ours(imported: &Imported, samples: &[f32], n: usize) -> Vec<f32> {
    // `from_weights` makes trainable parameters: an autodiff device.
    let device = Device::flex().autodiff();
    let input = &imported.spec.input;
    let per = samples.len() / n;
    let burn: Vec<f32> = samples
        .chunks(per)
        .flat_map(|s| input.to_burn_order(s))
        .collect();
    let [c, h, w] = input.shape;
    let x = Tensor::<4>::from_data(TensorData::new(burn, [n, c, h, w]), &device);
    let net =
        GraphNet::from_weights(imported.spec.clone(), imported.weights.clone(), &device).unwrap();
    let mut y = net.forward(x);
    if imported.spec.softmax {
        y = burn::tensor::activation::log_softmax(y, 1);
    }
    y.into_data().try_to_vec::<f32>().unwrap()
}

/// LiteRT's (reference kernels) outputs of `model` on `samples`: `[n, outputs]`.
/// Probabilities (`softmax`) come back as logarithms: next to 0 and 1 they would hide any
/// difference in the logits.
fn litert(tools: &Validators, model: &Path, samples: &[f32], n: usize, softmax: bool) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let (inputs, outputs) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    npy::write(
        &inputs,
        &[n, samples.len() / n],
        &Data::F32(samples.to_vec()),
    )
    .unwrap();
    let (shape, y) = tools
        .litert_outputs(model, &inputs, &outputs, "litert_ref")
        .unwrap();
    assert_eq!(shape[0], n);
    if !softmax {
        return y;
    }
    assert!(
        y.iter().all(|p| *p > 0.0),
        "a probability underflowed to 0: choose smaller inputs"
    );
    y.iter().map(|p| p.ln()).collect()
}

/// The largest difference of `a` from `b` relative to `b`'s largest magnitude, per sample.
fn max_relative(a: &[f32], b: &[f32], n: usize) -> f32 {
    assert_eq!(a.len(), b.len(), "output sizes differ");
    let per = a.len() / n;
    a.chunks(per)
        .zip(b.chunks(per))
        .map(|(a, b)| {
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            diff / scale
        })
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// Import `model`, run it and LiteRT on `n` random samples in `[lo, hi)`: the largest relative
/// difference.
fn compare(tools: &Validators, model: &Path, n: usize, lo: f32, hi: f32) -> (Imported, f32) {
    let imported = tflite::import(model, None).unwrap();
    let per: usize = imported.spec.input.shape.iter().product();
    let x = uniform(n * per, 7, lo, hi);
    let reference = litert(tools, model, &x, n, imported.spec.softmax);
    let rel = max_relative(&ours(&imported, &x, n), &reference, n);
    eprintln!("{}: max relative difference {rel:.2e}", model.display());
    (imported, rel)
}

fn count(imported: &Imported, kind: &str) -> usize {
    imported
        .spec
        .nodes
        .iter()
        .filter(|n| n.op.kind() == kind)
        .count()
}

#[test]
fn mlperf_float_models_compute_what_litert_computes() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    // ResNet-8: raw pixels; 9 convolutions, 3 residual sums, one classifier, a softmax.
    let (resnet, rel) = compare(
        &tools,
        &mlperf(&shared, "pretrainedResnet.tflite"),
        3,
        0.0,
        255.0,
    );
    assert!(rel < 1e-4, "ResNet-8 differs from LiteRT by {rel:e}");
    let spec = &resnet.spec;
    assert_eq!(
        (spec.input.shape, spec.input.layout),
        ([3, 32, 32], Layout::Nhwc)
    );
    assert_eq!((spec.convs.len(), spec.linears.len()), (9, 1));
    assert_eq!(
        (count(&resnet, "Add"), count(&resnet, "Activation")),
        (3, 0)
    );
    assert!(spec.softmax && spec.input.features == Features::Array);
    let (convs, linears) = spec.layer_names();
    assert_eq!(convs[0], "model_conv2d");
    assert_eq!(linears, ["model_dense"]);
    // Visual wake words: MobileNet v1 0.25 with depthwise convolutions.
    let (vww, rel) = compare(
        &tools,
        &mlperf(&shared, "vww_96_float.tflite"),
        2,
        -1.0,
        1.0,
    );
    assert!(rel < 1e-4, "VWW differs from LiteRT by {rel:e}");
    assert_eq!(vww.spec.convs.len(), 27);
    assert_eq!(vww.spec.convs.iter().filter(|c| c.groups > 1).count(), 13);
    // Anomaly detection: a vector input and ten fully-connected layers, no softmax.
    let (ad, rel) = compare(&tools, &mlperf(&shared, "ad01_fp32.tflite"), 3, -1.0, 1.0);
    assert!(rel < 1e-4, "AD01 differs from LiteRT by {rel:e}");
    assert_eq!(
        (ad.spec.input.shape, ad.spec.input.layout),
        ([640, 1, 1], Layout::Flat)
    );
    assert_eq!((ad.spec.linears.len(), ad.spec.softmax), (10, false));
    assert_eq!(ad.spec.outputs().unwrap(), 640);
    // Names are unique and plain.
    for imported in [&resnet, &vww, &ad] {
        let mut names: Vec<&str> = imported
            .spec
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        );
        names.sort_unstable();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len, "duplicate node names");
    }
}

/// `bytes` with every constant int8 tensor that has a quantization replaced by its float32
/// dequantization: the pure float model a hybrid file stands for.
fn dequantized_copy(bytes: &[u8]) -> Vec<u8> {
    let mut model = fb::root_as_model(bytes).unwrap().unpack();
    let graph = collab_tflite::Graph::from_bytes(bytes).unwrap();
    let buffers = model.buffers.as_mut().unwrap();
    let sub = &mut model.subgraphs.as_mut().unwrap()[0];
    for (t, info) in sub.tensors.as_mut().unwrap().iter_mut().zip(&graph.tensors) {
        if info.dtype == collab_tflite::TensorType::Int8 && info.data.is_some() {
            let floats = info.to_f32().unwrap();
            buffers[t.buffer as usize].data =
                Some(floats.iter().flat_map(|f| f.to_le_bytes()).collect());
            t.type_ = fb::TensorType::FLOAT32;
            t.quantization = None;
        }
    }
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = model.pack(&mut fbb);
    fbb.finish(root, Some("TFL3"));
    fbb.finished_data().to_vec()
}

#[test]
fn hybrid_kws_model_imports_as_its_float_model() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    let path = mlperf(&shared, "kws_ref_model_float32.tflite");
    let imported = tflite::import(&path, None).unwrap();
    assert_eq!(imported.spec.input.shape, [1, 49, 10]);
    assert_eq!(imported.spec.convs.len(), 9);
    let n = 3;
    let x = uniform(n * 490, 3, -30.0, 30.0);
    let y = ours(&imported, &x, n);
    // LiteRT on the same weights as float32: the float model, to float rounding.
    let dir = tempfile::tempdir().unwrap();
    let float = dir.path().join("kws_float.tflite");
    std::fs::write(&float, dequantized_copy(&std::fs::read(&path).unwrap())).unwrap();
    let rel = max_relative(&y, &litert(&tools, &float, &x, n, true), n);
    eprintln!("KWS vs its dequantized float file: {rel:.2e}");
    assert!(rel < 1e-4, "KWS differs from its float model by {rel:e}");
    // LiteRT on the hybrid file itself quantizes each layer's input to int8 on the fly: close,
    // not equal.
    let hybrid = litert(&tools, &path, &x, n, true);
    let rel = max_relative(&y, &hybrid, n);
    eprintln!("KWS vs LiteRT's hybrid kernels: {rel:.2e}");
    assert!(rel < 0.05, "KWS differs from the hybrid run by {rel:e}");
}

#[test]
fn resnet8_predicts_cifar10_as_litert_does() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    let path = mlperf(&shared, "pretrainedResnet.tflite");
    let input = InputSpec {
        shape: [3, 32, 32],
        layout: Layout::Nhwc,
        features: Features::Image(ImageNorm::raw()),
        labels: vec![],
    };
    let imported = tflite::import(&path, Some(&input)).unwrap();
    assert_eq!(imported.spec.input, input);
    let cifar = Cifar10::open(&shared.join("data/cifar10"), false).unwrap();
    // Every shared test image.
    let n = cifar.len();
    // The files hold [3, 32, 32] planes; the model takes raw pixels as [32, 32, 3].
    let norm = ImageNorm::raw();
    let nhwc: Vec<f32> = (0..n)
        .flat_map(|i| {
            let img = &cifar.pixels[i * 3072..(i + 1) * 3072];
            let norm = &norm;
            (0..1024)
                .flat_map(move |p| (0..3).map(move |c| norm.apply(img[c * 1024 + p] as f32, c)))
        })
        .collect();
    let y = ours(&imported, &nhwc, n);
    let reference = litert(&tools, &path, &nhwc, n, true);
    let (a, b): (Vec<usize>, Vec<usize>) = y
        .chunks(10)
        .zip(reference.chunks(10))
        .map(|(a, b)| (argmax(a), argmax(b)))
        .unzip();
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let correct = a.iter().zip(&cifar.labels).filter(|(p, l)| p == l).count();
    eprintln!(
        "ResNet-8, {n} CIFAR-10 test images: {same} same predictions as LiteRT, {correct} correct"
    );
    assert_eq!(same, n, "predictions differ from LiteRT's");
    assert!(max_relative(&y, &reference, n) < 1e-4);
    // The same model through ONNX (tf2onnx's conversion of this file) predicts the same.
    let onnx = collab_import::onnx::import(&mlperf(&shared, "resnet8.onnx"), Some(&input)).unwrap();
    let z = ours(&onnx, &nhwc, n);
    let same_onnx = z
        .chunks(10)
        .zip(&b)
        .filter(|(z, b)| argmax(z) == **b)
        .count();
    eprintln!("ResNet-8 from ONNX: {same_onnx} of {n} predictions as LiteRT's float run");
    assert_eq!(same_onnx, n, "the ONNX import predicts otherwise");
    // A working classifier, not a constant one (MLPerf's float file: 76.4% on these images).
    assert!(correct > n / 2, "{correct} of {n} correct");
}

#[test]
fn integer_truncated_and_mismatched_files_are_refused() {
    let Some(shared) = shared() else { return };
    for file in ["pretrainedResnet_quant.tflite", "kws_ref_model.tflite"] {
        let err = tflite::import(&mlperf(&shared, file), None).unwrap_err();
        let text = err.to_string();
        eprintln!("{text}");
        assert!(matches!(err, ImportError::Format { .. }), "{text}");
        for want in ["full-integer", "float", "collab inspect", file] {
            assert!(text.contains(want), "`{want}` not in: {text}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(mlperf(&shared, "pretrainedResnet.tflite")).unwrap();
    let cut = dir.path().join("cut.tflite");
    for len in [bytes.len() / 2, bytes.len() - 1, 6] {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let err = tflite::import(&cut, None).unwrap_err();
        assert!(
            matches!(err, ImportError::Format { .. }) && err.to_string().contains("cut.tflite"),
            "{err}"
        );
    }
    let err = tflite::import(&dir.path().join("missing.tflite"), None).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err}");
    // A given input must be the file's.
    let wrong = InputSpec {
        shape: [32, 32, 3],
        layout: Layout::Nhwc,
        features: Features::Array,
        labels: vec![],
    };
    let err = tflite::import(&mlperf(&shared, "pretrainedResnet.tflite"), Some(&wrong))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("[32, 32, 3]") && err.contains("[3, 32, 32]"),
        "{err}"
    );
}

/// A float `.tflite` file written with the schema's object API.
#[derive(Default)]
struct File {
    tensors: Vec<fb::TensorT>,
    buffers: Vec<fb::BufferT>,
    ops: Vec<fb::OperatorT>,
    codes: Vec<(fb::BuiltinOperator, i32)>,
}

impl File {
    fn new() -> Self {
        Self {
            buffers: vec![fb::BufferT::default()],
            ..Self::default()
        }
    }

    fn tensor(&mut self, name: &str, shape: &[i32], data: Option<Vec<u8>>) -> i32 {
        let mut t = fb::TensorT::default();
        t.name = Some(name.into());
        t.shape = Some(shape.to_vec());
        if let Some(d) = data {
            let mut b = fb::BufferT::default();
            b.data = Some(d);
            self.buffers.push(b);
            t.buffer = self.buffers.len() as u32 - 1;
        }
        self.tensors.push(t);
        self.tensors.len() as i32 - 1
    }

    /// A computed float tensor.
    fn value(&mut self, name: &str, shape: &[i32]) -> i32 {
        self.tensor(name, shape, None)
    }

    /// Constant float32 values (random in `[-1, 1)`).
    fn weights(&mut self, name: &str, shape: &[i32], seed: u64) -> i32 {
        let n = shape.iter().product::<i32>() as usize;
        let v = uniform(n, seed, -1.0, 1.0);
        self.tensor(
            name,
            shape,
            Some(v.iter().flat_map(|f| f.to_le_bytes()).collect()),
        )
    }

    fn int32(&mut self, name: &str, values: &[i32]) -> i32 {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = self.tensor(name, &[values.len() as i32], Some(data));
        self.tensors[t as usize].type_ = fb::TensorType::INT32;
        t
    }

    /// Constant int8 values with per-channel scales along `axis`.
    fn int8(&mut self, name: &str, shape: &[i32], axis: usize, seed: u64) -> i32 {
        let n = shape.iter().product::<i32>() as usize;
        let q: Vec<u8> = uniform(n, seed, -127.0, 127.0)
            .iter()
            .map(|v| *v as i8 as u8)
            .collect();
        let t = self.tensor(name, shape, Some(q));
        let channels = shape[axis] as usize;
        let tensor = &mut self.tensors[t as usize];
        tensor.type_ = fb::TensorType::INT8;
        let mut quant = fb::QuantizationParametersT::default();
        quant.scale = Some((0..channels).map(|c| 0.01 + 0.002 * c as f32).collect());
        quant.zero_point = Some(vec![0; channels]);
        quant.quantized_dimension = axis as i32;
        tensor.quantization = Some(Box::new(quant));
        t
    }

    fn op(
        &mut self,
        code: fb::BuiltinOperator,
        version: i32,
        inputs: &[i32],
        output: i32,
        options: fb::BuiltinOptionsT,
    ) -> i32 {
        let index = match self.codes.iter().position(|c| *c == (code, version)) {
            Some(i) => i,
            None => {
                self.codes.push((code, version));
                self.codes.len() - 1
            }
        };
        let mut op = fb::OperatorT::default();
        op.opcode_index = index as u32;
        op.inputs = Some(inputs.to_vec());
        op.outputs = Some(vec![output]);
        op.builtin_options = options;
        self.ops.push(op);
        output
    }

    fn write(self, path: &Path, input: i32, output: i32) {
        let mut model = fb::ModelT::default();
        model.version = 3;
        model.operator_codes = Some(
            self.codes
                .iter()
                .map(|(code, version)| {
                    let mut c = fb::OperatorCodeT::default();
                    c.builtin_code = *code;
                    c.deprecated_builtin_code = code.0.min(127) as i8;
                    c.version = *version;
                    c
                })
                .collect(),
        );
        let mut sub = fb::SubGraphT::default();
        sub.tensors = Some(self.tensors);
        sub.operators = Some(self.ops);
        sub.inputs = Some(vec![input]);
        sub.outputs = Some(vec![output]);
        model.subgraphs = Some(vec![sub]);
        model.buffers = Some(self.buffers);
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let root = model.pack(&mut fbb);
        fbb.finish(root, Some("TFL3"));
        std::fs::write(path, fbb.finished_data()).unwrap();
    }
}

fn conv_options(
    padding: fb::Padding,
    stride: i32,
    dilation: i32,
    act: fb::ActivationFunctionType,
) -> fb::BuiltinOptionsT {
    let mut o = fb::Conv2DOptionsT::default();
    (o.padding, o.stride_h, o.stride_w) = (padding, stride, stride);
    (o.dilation_h_factor, o.dilation_w_factor) = (dilation, dilation);
    o.fused_activation_function = act;
    fb::BuiltinOptionsT::Conv2DOptions(Box::new(o))
}

fn pool_options(padding: fb::Padding, filter: i32, stride: i32) -> fb::BuiltinOptionsT {
    let mut o = fb::Pool2DOptionsT::default();
    (o.padding, o.stride_h, o.stride_w) = (padding, stride, stride);
    (o.filter_height, o.filter_width) = (filter, filter);
    fb::BuiltinOptionsT::Pool2DOptions(Box::new(o))
}

fn fc_options(act: fb::ActivationFunctionType) -> fb::BuiltinOptionsT {
    let mut o = fb::FullyConnectedOptionsT::default();
    o.fused_activation_function = act;
    fb::BuiltinOptionsT::FullyConnectedOptions(Box::new(o))
}

use fb::ActivationFunctionType as A;
use fb::BuiltinOperator as B;
use fb::BuiltinOptionsT as O;

/// Every operator the MLPerf files lack, in one small network on a 10×10×3 input: SAME padding
/// with stride 2 (an odd total: the extra row at the end) and with dilation, a depthwise multiplier of 2 on `DEQUANTIZE`d
/// per-channel int8 weights, a strided VALID 1×1 convolution, max pooling with padding, channel
/// concatenation, LEAKY_RELU, LOGISTIC, TANH, HARD_SWISH, a sum with a fused ReLU, flattening a
/// 3×3 map (TensorFlow's order), a fully-connected layer without bias, a softmax.
fn operator_zoo(path: &Path) {
    let mut f = File::new();
    let x = f.value("input", &[1, 10, 10, 3]);
    let (w, b) = (
        f.weights("c1/w", &[8, 3, 3, 3], 1),
        f.weights("c1/b", &[8], 2),
    );
    let a = f.value("c1/Relu", &[1, 5, 5, 8]);
    f.op(
        B::CONV_2D,
        1,
        &[x, w, b],
        a,
        conv_options(fb::Padding::SAME, 2, 1, A::RELU),
    );
    let q = f.int8("dw/w_int8", &[1, 3, 3, 16], 3, 3);
    let dq = f.value("dw/w", &[1, 3, 3, 16]);
    f.op(B::DEQUANTIZE, 2, &[q], dq, O::NONE);
    let db = f.weights("dw/b", &[16], 4);
    let d = f.value("dw/depthwise", &[1, 5, 5, 16]);
    let mut o = fb::DepthwiseConv2DOptionsT::default();
    (o.padding, o.stride_h, o.stride_w, o.depth_multiplier) = (fb::Padding::SAME, 1, 1, 2);
    (o.dilation_h_factor, o.dilation_w_factor) = (2, 2);
    f.op(
        B::DEPTHWISE_CONV_2D,
        2,
        &[a, dq, db],
        d,
        O::DepthwiseConv2DOptions(Box::new(o)),
    );
    let l = f.value("leaky/LeakyRelu", &[1, 5, 5, 16]);
    let mut o = fb::LeakyReluOptionsT::default();
    o.alpha = 0.2;
    f.op(B::LEAKY_RELU, 1, &[d], l, O::LeakyReluOptions(Box::new(o)));
    let m = f.value("pool/MaxPool", &[1, 3, 3, 16]);
    f.op(
        B::MAX_POOL_2D,
        1,
        &[l],
        m,
        pool_options(fb::Padding::SAME, 2, 2),
    );
    let (w2, b2) = (
        f.weights("c2/w", &[16, 1, 1, 8], 5),
        f.weights("c2/b", &[16], 13),
    );
    let e = f.value("c2/Conv2D", &[1, 3, 3, 16]);
    f.op(
        B::CONV_2D,
        1,
        &[a, w2, b2],
        e,
        conv_options(fb::Padding::VALID, 2, 1, A::NONE),
    );
    let s = f.value("sig/Sigmoid", &[1, 3, 3, 16]);
    f.op(B::LOGISTIC, 1, &[e], s, O::NONE);
    let c = f.value("cat/concat", &[1, 3, 3, 32]);
    let mut o = fb::ConcatenationOptionsT::default();
    o.axis = -1;
    f.op(
        B::CONCATENATION,
        1,
        &[m, s],
        c,
        O::ConcatenationOptions(Box::new(o)),
    );
    let h = f.value("hs/HardSwish", &[1, 3, 3, 32]);
    f.op(B::HARD_SWISH, 1, &[c], h, O::NONE);
    let (w3, b3) = (
        f.weights("c3/w", &[8, 3, 3, 32], 6),
        f.weights("c3/b", &[8], 7),
    );
    let i = f.value("c3/Relu6", &[1, 3, 3, 8]);
    f.op(
        B::CONV_2D,
        1,
        &[h, w3, b3],
        i,
        conv_options(fb::Padding::SAME, 1, 1, A::RELU6),
    );
    let t = f.value("tanh/Tanh", &[1, 3, 3, 8]);
    f.op(B::TANH, 1, &[i], t, O::NONE);
    let s = f.value("add/add", &[1, 3, 3, 8]);
    let mut o = fb::AddOptionsT::default();
    o.fused_activation_function = A::RELU;
    f.op(B::ADD, 1, &[i, t], s, O::AddOptions(Box::new(o)));
    let shape = f.int32("flatten/Const", &[1, 72]);
    let r = f.value("flatten/Reshape", &[1, 72]);
    f.op(B::RESHAPE, 1, &[s, shape], r, O::NONE);
    let wf = f.weights("dense/MatMul", &[5, 72], 8);
    let y = f.value("dense/BiasAdd", &[1, 5]);
    f.op(B::FULLY_CONNECTED, 1, &[r, wf, -1], y, fc_options(A::NONE));
    let p = f.value("Identity", &[1, 5]);
    let mut o = fb::SoftmaxOptionsT::default();
    o.beta = 1.0;
    f.op(B::SOFTMAX, 1, &[y], p, O::SoftmaxOptions(Box::new(o)));
    f.write(path, x, p);
}

/// Average pooling with SAME padding (padded cells not counted), MEAN over space with negative
/// axes and without kept dimensions, a fully-connected layer with a fused ReLU; and a second
/// head-less model whose output is a map (compared in the file's `[h, w, c]` order).
fn pooling_files(mean: &Path, map: &Path) {
    let mut f = File::new();
    let x = f.value("input", &[1, 6, 6, 4]);
    let a = f.value("avg/AvgPool", &[1, 3, 3, 4]);
    f.op(
        B::AVERAGE_POOL_2D,
        1,
        &[x],
        a,
        pool_options(fb::Padding::SAME, 3, 2),
    );
    let axes = f.int32("mean/axes", &[-3, 2]);
    let m = f.value("mean/Mean", &[1, 4]);
    let mut o = fb::ReducerOptionsT::default();
    o.keep_dims = false;
    f.op(B::MEAN, 1, &[a, axes], m, O::ReducerOptions(Box::new(o)));
    let (w, b) = (f.weights("fc/w", &[6, 4], 9), f.weights("fc/b", &[6], 10));
    let y = f.value("fc/Relu", &[1, 6]);
    f.op(B::FULLY_CONNECTED, 1, &[m, w, b], y, fc_options(A::RELU));
    f.write(mean, x, y);

    let mut f = File::new();
    let x = f.value("input", &[1, 4, 5, 2]);
    let (w, b) = (
        f.weights("c/w", &[3, 3, 3, 2], 11),
        f.weights("c/b", &[3], 12),
    );
    let y = f.value("c/Conv2D", &[1, 4, 5, 3]);
    f.op(
        B::CONV_2D,
        1,
        &[x, w, b],
        y,
        conv_options(fb::Padding::SAME, 1, 1, A::NONE),
    );
    f.write(map, x, y);
}

#[test]
fn every_mapped_operator_computes_what_litert_computes() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (zoo, mean, map) = (
        dir.path().join("zoo.tflite"),
        dir.path().join("mean.tflite"),
        dir.path().join("map.tflite"),
    );
    operator_zoo(&zoo);
    pooling_files(&mean, &map);
    let (imported, rel) = compare(&tools, &zoo, 4, -2.0, 2.0);
    assert!(rel < 1e-4, "operator zoo differs from LiteRT by {rel:e}");
    let spec = &imported.spec;
    assert!(spec.softmax);
    assert_eq!(spec.convs[1].groups, 8);
    assert_eq!(spec.convs[1].dilation, [2, 2]);
    assert_eq!(spec.convs[0].pads, [0, 0, 1, 1]);
    assert!(spec.convs[2].bias && !spec.linears[0].1);
    // ReLU / ReLU6 fused into their layer, the others kept as nodes.
    assert_eq!(count(&imported, "Activation"), 4);
    assert!(spec.nodes.iter().any(|n| matches!(
        n.op,
        Op::Flatten {
            channels_last: true
        }
    )));
    let (imported, rel) = compare(&tools, &mean, 3, -2.0, 2.0);
    assert!(rel < 1e-4, "pooling file differs from LiteRT by {rel:e}");
    assert_eq!(count(&imported, "GlobalAveragePool"), 1);
    let (imported, rel) = compare(&tools, &map, 2, -2.0, 2.0);
    assert!(rel < 1e-4, "map-output file differs from LiteRT by {rel:e}");
    assert_eq!(imported.spec.outputs().unwrap(), 60);
}

#[test]
fn unsupported_operators_are_named_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("div.tflite");
    let mut f = File::new();
    let x = f.value("input", &[1, 4, 4, 2]);
    let w = f.weights("scale", &[2], 1);
    let y = f.value("div/out", &[1, 4, 4, 2]);
    f.op(B::DIV, 1, &[x, w], y, O::NONE);
    f.write(&path, x, y);
    let err = tflite::import(&path, None).unwrap_err();
    eprintln!("{err}");
    let ImportError::Unsupported {
        node, op, inputs, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (node.as_str(), op.as_str()),
        ("operator 0, output div/out", "DIV")
    );
    assert_eq!(inputs, &["input", "scale"]);
    let text = err.to_string();
    assert!(
        text.contains("div.tflite") && text.contains("CONV_2D"),
        "{text}"
    );

    // A fused activation the graph has no form for.
    let path = dir.path().join("n1.tflite");
    let mut f = File::new();
    let x = f.value("input", &[1, 4, 4, 2]);
    let (w, b) = (f.weights("w", &[2, 1, 1, 2], 1), f.weights("b", &[2], 2));
    let y = f.value("out", &[1, 4, 4, 2]);
    f.op(
        B::CONV_2D,
        1,
        &[x, w, b],
        y,
        conv_options(fb::Padding::SAME, 1, 1, A::RELU_N1_TO_1),
    );
    f.write(&path, x, y);
    let err = tflite::import(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("ReluN1To1") && err.contains("operator 0"),
        "{err}"
    );
}

fn transpose_conv_options(
    padding: fb::Padding,
    stride: i32,
    act: fb::ActivationFunctionType,
) -> fb::BuiltinOptionsT {
    let mut o = fb::TransposeConvOptionsT::default();
    (o.padding, o.stride_h, o.stride_w) = (padding, stride, stride);
    o.fused_activation_function = act;
    fb::BuiltinOptionsT::TransposeConvOptions(Box::new(o))
}

/// TRANSPOSE_CONV (SAME with stride 2 and a bias; VALID with a fused ReLU and no bias),
/// TRANSPOSE of the spatial axes and of channels with space, RESHAPE from map to map and from
/// vector to map (moving values in TFLite's [h, w, c] order), on a 5×5×3 input.
fn layout_moves(path: &Path) {
    let mut f = File::new();
    let x = f.value("input", &[1, 5, 5, 3]);
    let os = f.int32("up/output_shape", &[1, 10, 10, 4]);
    let (w, b) = (
        f.weights("up/conv2d_transpose", &[4, 3, 3, 3], 21),
        f.weights("up/bias", &[4], 22),
    );
    let u = f.value("up/conv2d_transpose1", &[1, 10, 10, 4]);
    f.op(
        B::TRANSPOSE_CONV,
        3,
        &[os, w, x, b],
        u,
        transpose_conv_options(fb::Padding::SAME, 2, A::NONE),
    );
    let perm = f.int32("swap/perm", &[0, 2, 1, 3]);
    let s = f.value("swap/transpose", &[1, 10, 10, 4]);
    f.op(B::TRANSPOSE, 2, &[u, perm], s, O::NONE);
    let shape = f.int32("regroup/shape", &[1, 20, 5, 4]);
    let r = f.value("regroup/Reshape", &[1, 20, 5, 4]);
    f.op(B::RESHAPE, 1, &[s, shape], r, O::NONE);
    let perm = f.int32("cfirst/perm", &[0, 3, 1, 2]);
    let t = f.value("cfirst/transpose", &[1, 4, 20, 5]);
    f.op(B::TRANSPOSE, 2, &[r, perm], t, O::NONE);
    let os = f.int32("up2/output_shape", &[1, 9, 41, 2]);
    let w2 = f.weights("up2/conv2d_transpose", &[2, 3, 3, 5], 23);
    let v = f.value("up2/Relu", &[1, 9, 41, 2]);
    f.op(
        B::TRANSPOSE_CONV,
        3,
        &[os, w2, t, -1],
        v,
        transpose_conv_options(fb::Padding::VALID, 2, A::RELU),
    );
    let shape = f.int32("flat/shape", &[1, 738]);
    let fl = f.value("flat/Reshape", &[1, 738]);
    f.op(B::RESHAPE, 1, &[v, shape], fl, O::NONE);
    let shape = f.int32("unflat/shape", &[1, 9, 41, 2]);
    let m = f.value("unflat/Reshape", &[1, 9, 41, 2]);
    f.op(B::RESHAPE, 1, &[fl, shape], m, O::NONE);
    let (wc, bc) = (
        f.weights("head/w", &[3, 1, 1, 2], 24),
        f.weights("head/b", &[3], 25),
    );
    let y = f.value("head/Conv2D", &[1, 9, 41, 3]);
    f.op(
        B::CONV_2D,
        1,
        &[m, wc, bc],
        y,
        conv_options(fb::Padding::VALID, 1, 1, A::NONE),
    );
    f.write(path, x, y);
}

#[test]
fn transpose_conv_transpose_and_reshape_compute_what_litert_computes() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layout.tflite");
    layout_moves(&path);
    let (imported, rel) = compare(&tools, &path, 3, -2.0, 2.0);
    assert!(rel < 1e-4, "layout file differs from LiteRT by {rel:e}");
    let spec = &imported.spec;
    assert_eq!(count(&imported, "ConvTranspose"), 2);
    assert_eq!(count(&imported, "Transpose"), 2);
    // Map → map and vector → map reshapes move values; map → vector stays a flatten (one
    // more flattens the map output in the file's order).
    assert_eq!(count(&imported, "Reshape"), 2);
    assert_eq!(count(&imported, "Flatten"), 2);
    let deconvs: Vec<&Op> = spec
        .nodes
        .iter()
        .map(|n| &n.op)
        .filter(|op| matches!(op, Op::ConvTranspose { .. }))
        .collect();
    // SAME, stride 2, kernel 3 on 5 → 10: nothing cropped before, the 11th row dropped.
    assert!(matches!(
        deconvs[0],
        Op::ConvTranspose {
            stride: [2, 2],
            pads: [0, 0, 1, 1],
            ..
        }
    ));
    assert!(matches!(
        deconvs[1],
        Op::ConvTranspose {
            pads: [0, 0, 0, 0],
            act: collab_models::graph::FusedActivation::Relu,
            ..
        }
    ));
}

/// Swish (`x · LOGISTIC(x)`), a squeeze-excite gate (MEAN, two fully-connected layers,
/// LOGISTIC, RESHAPE to `[1, 1, 1, c]`, MUL broadcast over the map), SUB of the pooled map
/// (broadcast), MUL by a per-channel constant, a constant minus the map, ADD of a scalar with a
/// fused ReLU: the imported float model computes what LiteRT computes.
#[test]
fn swish_squeeze_excite_and_constant_operands_compute_what_litert_computes() {
    let Some(shared) = shared() else { return };
    let Some(tools) = Validators::for_tests(&shared.join("tools")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("se.tflite");
    let mut f = File::new();
    let x = f.value("input", &[1, 6, 6, 4]);
    let (w, b) = (
        f.weights("c/w", &[8, 1, 1, 4], 1),
        f.weights("c/b", &[8], 2),
    );
    let c = f.value("c/Conv2D", &[1, 6, 6, 8]);
    f.op(
        B::CONV_2D,
        1,
        &[x, w, b],
        c,
        conv_options(fb::Padding::SAME, 1, 1, A::NONE),
    );
    let s = f.value("swish/Sigmoid", &[1, 6, 6, 8]);
    f.op(B::LOGISTIC, 1, &[c], s, O::NONE);
    let sw = f.value("swish/mul", &[1, 6, 6, 8]);
    f.op(B::MUL, 1, &[c, s], sw, O::MulOptions(Box::default()));
    let axes = f.int32("se/axes", &[1, 2]);
    let m = f.value("se/Mean", &[1, 8]);
    let mut o = fb::ReducerOptionsT::default();
    o.keep_dims = false;
    f.op(B::MEAN, 1, &[sw, axes], m, O::ReducerOptions(Box::new(o)));
    let (w1, b1) = (
        f.weights("se/fc1/w", &[2, 8], 3),
        f.weights("se/fc1/b", &[2], 4),
    );
    let h = f.value("se/fc1/Relu", &[1, 2]);
    f.op(B::FULLY_CONNECTED, 1, &[m, w1, b1], h, fc_options(A::RELU));
    let (w2, b2) = (
        f.weights("se/fc2/w", &[8, 2], 5),
        f.weights("se/fc2/b", &[8], 6),
    );
    let z = f.value("se/fc2/BiasAdd", &[1, 8]);
    f.op(B::FULLY_CONNECTED, 1, &[h, w2, b2], z, fc_options(A::NONE));
    let g = f.value("se/Sigmoid", &[1, 8]);
    f.op(B::LOGISTIC, 1, &[z], g, O::NONE);
    let shape = f.int32("se/shape", &[1, 1, 1, 8]);
    let gr = f.value("se/Reshape", &[1, 1, 1, 8]);
    f.op(B::RESHAPE, 1, &[g, shape], gr, O::NONE);
    let se = f.value("se/mul", &[1, 6, 6, 8]);
    f.op(B::MUL, 1, &[sw, gr], se, O::MulOptions(Box::default()));
    let pooled = f.value("pool/Mean", &[1, 1, 1, 8]);
    let mut o = fb::ReducerOptionsT::default();
    o.keep_dims = true;
    f.op(
        B::MEAN,
        1,
        &[se, axes],
        pooled,
        O::ReducerOptions(Box::new(o)),
    );
    let centred = f.value("centre/sub", &[1, 6, 6, 8]);
    f.op(
        B::SUB,
        1,
        &[se, pooled],
        centred,
        O::SubOptions(Box::default()),
    );
    let k = f.weights("scale/k", &[8], 7);
    let scaled = f.value("scale/mul", &[1, 6, 6, 8]);
    f.op(
        B::MUL,
        1,
        &[centred, k],
        scaled,
        O::MulOptions(Box::default()),
    );
    let one = f.weights("flip/one", &[1], 8);
    let flipped = f.value("flip/sub", &[1, 6, 6, 8]);
    f.op(
        B::SUB,
        1,
        &[one, scaled],
        flipped,
        O::SubOptions(Box::default()),
    );
    let half = f.weights("bias/half", &[], 9);
    let y = f.value("bias/add", &[1, 6, 6, 8]);
    let mut o = fb::AddOptionsT::default();
    o.fused_activation_function = A::RELU;
    f.op(B::ADD, 1, &[flipped, half], y, O::AddOptions(Box::new(o)));
    f.write(&path, x, y);
    let (imported, rel) = compare(&tools, &path, 3, -2.0, 2.0);
    assert!(
        rel < 1e-4,
        "squeeze-excite file differs from LiteRT by {rel:e}"
    );
    let kinds: Vec<&str> = imported.spec.nodes.iter().map(|n| n.op.kind()).collect();
    eprintln!("{kinds:?}");
    assert_eq!(count(&imported, "Mul"), 2, "swish and the gate");
    assert_eq!(count(&imported, "Sub"), 1);
    assert_eq!(count(&imported, "MulConstant"), 2, "the scale and the flip");
    assert_eq!(
        count(&imported, "AddConstant"),
        2,
        "the constant and the bias"
    );
}
