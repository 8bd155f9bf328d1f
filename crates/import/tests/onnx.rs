//! ONNX import against onnxruntime: every MLPerf Tiny ONNX model, and small models written here
//! with `onnx.helper` that cover each supported operator, import; the burn model computes what
//! onnxruntime computes; damaged files and unsupported operators are errors that say what.
//!
//! Needs `../shared` (skipped with a note without it) and Python with onnx and onnxruntime
//! (`pip install -r ../shared/tools/requirements.txt`); with `COLLAB_REQUIRE_TOOLS=1` a missing
//! piece fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};
use collab_data::shared::{require_shared, shared_dir};
use collab_data::{Cifar10, Features, ImageNorm, InputSpec, Layout};
use collab_import::{ImportError, Imported, onnx};
use collab_models::GraphNet;
use collab_models::graph::Op;
use collab_tflite::{Data, npy};

fn required() -> bool {
    std::env::var("COLLAB_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// `../shared`, or `None` with a note (a failure under `COLLAB_REQUIRE_TOOLS=1`).
fn shared() -> Option<PathBuf> {
    if required() {
        return Some(require_shared());
    }
    let dir = shared_dir();
    if dir.is_none() {
        eprintln!("skipped: no shared data folder (clone next to `shared/` or set COLLAB_SHARED)");
    }
    dir
}

/// A Python that imports onnx and onnxruntime, or `None` with a note.
fn python() -> Option<String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required(),
            "COLLAB_REQUIRE_TOOLS=1 but onnx / onnxruntime are not installed: \
             pip install -r ../shared/tools/requirements.txt"
        );
        eprintln!("skipped: pip install -r ../shared/tools/requirements.txt to run this test");
        return None;
    }
    Some(python)
}

fn mlperf(shared: &Path, file: &str) -> PathBuf {
    shared.join("models/mlperf_tiny").join(file)
}

/// Deterministic values uniform in `[lo, hi)` (xorshift).
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

/// The trainable model (its weights require gradients, so the device is an autodiff one).
fn net(imported: &Imported) -> GraphNet<collab_models::ConvBlock, burn::nn::Linear> {
    GraphNet::from_weights(
        imported.spec.clone(),
        imported.weights.clone(),
        &Device::flex().autodiff(),
    )
    .expect("the imported weights fit the imported graph")
}

/// The model's outputs (probabilities where it ends with a softmax) for `samples` given in
/// burn's `[c, h, w]` order, one after the other.
fn forward(imported: &Imported, samples: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let [c, h, w] = imported.spec.input.shape;
    let n = samples.len() / (c * h * w);
    let device = Device::flex().autodiff();
    let x = Tensor::<4>::from_data(TensorData::new(samples.to_vec(), [n, c, h, w]), &device);
    let mut y = net(imported).forward(x);
    if imported.spec.softmax {
        y = softmax(y, 1);
    }
    (
        y.dims().to_vec(),
        y.into_data().try_to_vec::<f32>().unwrap(),
    )
}

/// Run `batch` random samples (values in `range`) through the imported model and through
/// onnxruntime (`onnx_check.py`); returns the largest difference relative to the largest
/// output. `file_shape` is one sample's shape as the ONNX input takes it.
fn against_onnxruntime(
    python: &str,
    shared: &Path,
    model: &Path,
    imported: &Imported,
    file_shape: &[usize],
    batch: usize,
    range: (f32, f32),
) -> f64 {
    let input = &imported.spec.input;
    let per: usize = input.shape.iter().product();
    let file = uniform(batch * per, batch as u64 + per as u64, range.0, range.1);
    let burn: Vec<f32> = file
        .chunks(per)
        .flat_map(|s| input.to_burn_order(s))
        .collect();
    let (dims, ours) = forward(imported, &burn);
    assert_eq!(dims[0], batch);

    let dir = tempfile::tempdir().unwrap();
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("ours.npy"));
    let mut shape = vec![batch];
    shape.extend_from_slice(file_shape);
    npy::write(&x_path, &shape, &Data::F32(file)).unwrap();
    npy::write(&y_path, &dims, &Data::F32(ours.clone())).unwrap();
    let scale = ours.iter().fold(1.0f32, |m, v| m.max(v.abs())) as f64;
    let out = Command::new(python)
        .arg(shared.join("tools/onnx_check.py"))
        .arg(model)
        .args(["--inputs", &x_path.to_string_lossy()])
        .args(["--expect", &y_path.to_string_lossy()])
        .args(["--atol", &format!("{}", 1e-4 * scale)])
        .arg("--json")
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "onnx_check.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        report["vs_expect"].is_array(),
        "{}: onnxruntime did not run: {}",
        model.display(),
        report["error"]
    );
    let vs = &report["vs_expect"][0];
    let diff = vs["max_abs_diff"].as_f64().unwrap_or(f64::INFINITY) / scale;
    assert_eq!(
        report["outputs"][0]["shape"],
        serde_json::json!(dims),
        "{}: output shapes differ",
        model.display()
    );
    assert!(
        report["ok"] == true,
        "{}: burn and onnxruntime differ by {diff:e} (relative); report {vs}",
        model.display()
    );
    diff
}

fn count(imported: &Imported, what: fn(&Op) -> bool) -> usize {
    imported.spec.nodes.iter().filter(|n| what(&n.op)).count()
}

/// Import an MLPerf file, check what it takes, compare with onnxruntime on 3 random samples.
fn mlperf_case(
    file: &str,
    layout: Layout,
    shape: [usize; 3],
    layers: (usize, usize),
    softmax: bool,
    range: (f32, f32),
) {
    let Some(shared) = shared() else { return };
    let path = mlperf(&shared, file);
    let imported = onnx::import(&path, None).unwrap_or_else(|e| panic!("{e}"));
    let spec = &imported.spec;
    assert_eq!(
        (spec.input.layout, spec.input.shape),
        (layout, shape),
        "{file}"
    );
    assert_eq!(spec.input.features, Features::Array);
    assert_eq!((spec.convs.len(), spec.linears.len()), layers, "{file}");
    assert_eq!(spec.softmax, softmax, "{file}");
    // Layer paths: from the file, sanitised, unique.
    let (convs, linears) = spec.layer_names();
    let names: Vec<&String> = convs.iter().chain(&linears).collect();
    for n in &names {
        assert!(
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{file}: layer name `{n}`"
        );
    }
    let unique: std::collections::HashSet<_> = spec.nodes.iter().map(|n| &n.name).collect();
    assert_eq!(unique.len(), spec.nodes.len(), "{file}: node names repeat");
    let Some(python) = python() else { return };
    let diff = against_onnxruntime(
        &python,
        &shared,
        &path,
        &imported,
        &spec.input.file_shape(),
        3,
        range,
    );
    eprintln!(
        "{file}: {} nodes, layers {names:?}, max relative difference {diff:.2e}",
        spec.nodes.len()
    );
}

#[test]
fn resnet8_matches_onnxruntime() {
    mlperf_case(
        "resnet8.onnx",
        Layout::Nhwc,
        [3, 32, 32],
        (9, 1),
        true,
        (0.0, 255.0),
    );
}

#[test]
fn resnet8_from_h5_with_keras_batch_norm_as_mul_add_matches_onnxruntime() {
    mlperf_case(
        "resnet8_from_h5.onnx",
        Layout::Nhwc,
        [3, 32, 32],
        (9, 1),
        true,
        (0.0, 255.0),
    );
}

#[test]
fn vww_96_matches_onnxruntime() {
    mlperf_case(
        "vww_96.onnx",
        Layout::Nhwc,
        [3, 96, 96],
        (27, 1),
        true,
        (0.0, 1.0),
    );
}

#[test]
fn ad01_fully_connected_autoencoder_matches_onnxruntime() {
    mlperf_case(
        "ad01.onnx",
        Layout::Flat,
        [640, 1, 1],
        (0, 10),
        false,
        (-2.0, 2.0),
    );
}

#[test]
fn kws_ds_cnn_with_dequantized_weights_matches_onnxruntime() {
    mlperf_case(
        "kws_ds_cnn.onnx",
        Layout::Nhwc,
        [1, 49, 10],
        (9, 1),
        true,
        (-10.0, 10.0),
    );
}

#[test]
fn resnet8_and_resnet8_from_h5_predict_alike_on_cifar10() {
    let Some(shared) = shared() else { return };
    let set = match Cifar10::open(&shared.join("data/cifar10"), false) {
        Ok(set) => set,
        Err(e) => {
            assert!(!required(), "CIFAR-10 test batch: {e}");
            eprintln!("skipped: {e}");
            return;
        }
    };
    let n = 200.min(set.len());
    // Raw pixels 0..255, channel-planar: burn's order, and what ResNet-8 takes.
    let pixels: Vec<f32> = set.pixels[..n * 3072].iter().map(|&p| p as f32).collect();
    let argmax = |file: &str| -> Vec<usize> {
        let imported = onnx::import(&mlperf(&shared, file), None).unwrap();
        let (_, y) = forward(&imported, &pixels);
        y.chunks(10)
            .map(|r| (0..10).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap())
            .collect()
    };
    let (a, b) = (argmax("resnet8.onnx"), argmax("resnet8_from_h5.onnx"));
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    let correct = a.iter().zip(&set.labels).filter(|(p, l)| p == l).count();
    eprintln!("{same}/{n} predictions agree; {correct}/{n} correct");
    assert_eq!(same, n, "the two exports of one model predict differently");
    // Raw-pixel input read in the right layout: far above chance (10%).
    assert!(
        correct * 2 > n,
        "{correct}/{n} correct: input layout or scaling is wrong"
    );
}

#[test]
fn a_given_input_spec_supplies_features_and_must_match_the_file() {
    let Some(shared) = shared() else { return };
    let path = mlperf(&shared, "resnet8.onnx");
    let mut given = InputSpec {
        shape: [3, 32, 32],
        layout: Layout::Nhwc,
        features: Features::Image(ImageNorm::raw()),
        labels: (0..10).map(|i| format!("class{i}")).collect(),
    };
    let imported = onnx::import(&path, Some(&given)).unwrap();
    assert_eq!(imported.spec.input, given);
    given.shape = [3, 28, 28];
    let err = onnx::import(&path, Some(&given)).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(
        err.contains("[3, 28, 28]") && err.contains("[3, 32, 32]"),
        "{err}"
    );
    given.shape = [3, 32, 32];
    given.layout = Layout::Nchw;
    assert!(onnx::import(&path, Some(&given)).is_err());
}

#[test]
fn a_truncated_file_is_a_format_error() {
    let Some(shared) = shared() else { return };
    let bytes = std::fs::read(mlperf(&shared, "resnet8.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, cut) in [
        ("half.onnx", bytes.len() / 2),
        ("head.onnx", 100),
        ("empty.onnx", 0),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = onnx::import(&path, None).unwrap_err();
        eprintln!("{err}");
        assert!(matches!(err, ImportError::Format { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
    let missing = onnx::import(&dir.path().join("missing.onnx"), None).unwrap_err();
    assert!(matches!(missing, ImportError::Io { .. }), "{missing:?}");
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let Some(shared) = shared() else { return };
    let bytes = std::fs::read(mlperf(&shared, "kws_ds_cnn.onnx")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.onnx");
    let mut errors = 0;
    for (i, r) in uniform(3 * 100, 7, 0.0, 1.0).chunks(3).enumerate() {
        let mut damaged = bytes.clone();
        let at = (r[0] * damaged.len() as f32) as usize % damaged.len();
        let len = 1 + (r[1] * 8.0) as usize;
        for (j, b) in damaged.iter_mut().skip(at).take(len).enumerate() {
            *b = (r[2] * 256.0) as u8 ^ (i + j) as u8;
        }
        std::fs::write(&path, &damaged).unwrap();
        // Some damage only changes weight values: the model still imports.
        let result = std::panic::catch_unwind(|| onnx::import(&path, None));
        assert!(
            result.is_ok(),
            "damage {i} at byte {at}: the import panicked"
        );
        errors += result.unwrap().is_err() as usize;
    }
    eprintln!("{errors} of 100 damaged copies refused with an error, the rest import");
    assert!(errors > 0);
}

#[test]
fn an_unsupported_operator_is_named_with_its_node_and_inputs() {
    let Some(shared) = shared() else { return };
    let mut bytes = std::fs::read(mlperf(&shared, "resnet8.onnx")).unwrap();
    // The first `op_type: "Relu"` (field 4, length 4) becomes `Sign`: a valid ONNX model with
    // an operator the graph has no equivalent for.
    let at = bytes
        .windows(6)
        .position(|w| w == b"\x22\x04Relu")
        .expect("resnet8.onnx has a Relu node");
    bytes[at + 2..at + 6].copy_from_slice(b"Sign");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sign.onnx");
    std::fs::write(&path, &bytes).unwrap();
    let err = onnx::import(&path, None).unwrap_err();
    eprintln!("{err}");
    match &err {
        ImportError::Unsupported {
            node, op, inputs, ..
        } => {
            assert_eq!(op, "Sign");
            assert_eq!(node, "Relu__5");
            assert_eq!(inputs.len(), 1);
            assert!(inputs[0].contains("model/conv2d/Conv2D1"), "{inputs:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// Small ONNX models written with `onnx.helper`, each covering operators the MLPerf files do
/// not: PyTorch-style NCHW (Pad, BatchNormalization, Clip, grouped / dilated / SAME convs,
/// LeakyRelu, Sigmoid, HardSwish, Tanh, MaxPool, Concat, AveragePool with padding,
/// GlobalAveragePool, Flatten, Gemm with alpha / beta / transB), tf2onnx-style NHWC (a Pad
/// before the transpose, per-channel DequantizeLinear, Mul / Add / Sub / Div folding, a flatten
/// in [h, w, c] order), 1-D convolutions (dilated, SAME_LOWER, pooling, ReduceMean, Squeeze), a
/// vector model (also with its weights in an external data file), ReduceMean with Unsqueeze, a
/// MatMul by dequantized uint8 weights (its bias Add folded); plus two unsupported ones. (onnxruntime refuses SAME padding with dilation, so
/// the dilated convolutions have explicit pads.)
const MODELS_PY: &str = r#"
import sys
import numpy as np
import onnx
from onnx import TensorProto as T, helper as h, numpy_helper as nh

out = sys.argv[1]
rng = np.random.default_rng(0)

def w(*shape, s=0.4):
    return rng.normal(0.0, s, shape).astype(np.float32)

def save(name, nodes, x, y, inits):
    g = h.make_graph(nodes, name, [x], [y], [nh.from_array(np.asarray(a), n) for n, a in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 14)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, f"{out}/{name}.onnx")

def io(name, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)

def bn(name, x, c):
    return (h.make_node("BatchNormalization", [x, name + "_g", name + "_b", name + "_m", name + "_v"], [name], name=name, epsilon=1e-3),
            {name + "_g": rng.uniform(0.5, 1.5, c).astype(np.float32), name + "_b": w(c), name + "_m": w(c),
             name + "_v": rng.uniform(0.5, 1.5, c).astype(np.float32)})

n = []
i = {}
def add(node, inits=None):
    n.append(node)
    i.update(inits or {})

add(h.make_node("Pad", ["x", "pads"], ["p"], name="pad"), {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)})
add(h.make_node("Conv", ["p", "w1", "b1"], ["c1"], name="/stem/conv/Conv"), {"w1": w(8, 3, 3, 3), "b1": w(8)})
add(*bn("bn1", "c1", 8))
add(h.make_node("Clip", ["bn1", "lo", "hi"], ["r1"], name="relu6"), {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)})
add(h.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", group=8, dilations=[2, 2], pads=[2, 2, 2, 2]), {"w2": w(8, 1, 3, 3)})
add(*bn("bn2", "c2", 8))
add(h.make_node("LeakyRelu", ["bn2"], ["r2"], name="leaky", alpha=0.1))
add(h.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="same", strides=[2, 2], auto_pad="SAME_UPPER"), {"w3": w(8, 8, 3, 3), "b3": w(8)})
add(h.make_node("Sigmoid", ["c3"], ["a"], name="sigmoid"))
add(h.make_node("MaxPool", ["a"], ["mp"], name="maxpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
add(h.make_node("Conv", ["a", "w4", "b4"], ["c4"], name="pw"), {"w4": w(4, 8, 1, 1), "b4": w(4)})
add(h.make_node("HardSwish", ["c4"], ["hs"], name="hardswish"))
add(h.make_node("Concat", ["mp", "hs"], ["d"], name="concat", axis=1))
add(h.make_node("Conv", ["d", "w5", "b5"], ["c5"], name="conv5", pads=[1, 1, 1, 1]), {"w5": w(12, 12, 3, 3), "b5": w(12)})
add(h.make_node("Tanh", ["c5"], ["e"], name="tanh"))
add(h.make_node("Conv", ["d", "w6", "b6"], ["c6"], name="conv6"), {"w6": w(12, 12, 1, 1), "b6": w(12)})
add(h.make_node("Add", ["e", "c6"], ["f0"], name="sum"))
add(h.make_node("Relu", ["f0"], ["f"], name="relu"))
add(h.make_node("AveragePool", ["f"], ["g"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]))
add(h.make_node("GlobalAveragePool", ["g"], ["gp"], name="gap"))
add(h.make_node("Flatten", ["gp"], ["fl"], name="flatten"))
add(h.make_node("Gemm", ["fl", "g1", "gc1"], ["h1"], name="fc1", alpha=0.5, beta=2.0, transB=1), {"g1": w(5, 12), "gc1": w(5)})
add(h.make_node("Relu", ["h1"], ["h1r"], name="relu_fc"))
add(h.make_node("Gemm", ["h1r", "g2", "gc2"], ["y"], name="fc2"), {"g2": w(5, 3), "gc2": w(3)})
add(h.make_node("Softmax", ["y"], ["prob"], name="softmax", axis=1))
save("nchw_ops", n, io("x", ["N", 3, 12, 12]), io("prob", ["N", 3]), i)

n, i = [], {}
wq = rng.integers(-127, 128, (6, 2, 3, 3)).astype(np.int8)
add(h.make_node("Pad", ["x", "pads"], ["xp"], name="pad_nhwc"), {"pads": np.array([0, 1, 1, 0, 0, 1, 0, 0], np.int64)})
add(h.make_node("Transpose", ["xp"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]))
add(h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dequant", axis=0),
    {"wq": wq, "ws": rng.uniform(0.002, 0.01, 6).astype(np.float32), "wz": rng.integers(-3, 4, 6).astype(np.int8)})
add(h.make_node("Conv", ["t", "wd"], ["c"], name="model/conv2d/Conv2D", kernel_shape=[3, 3], pads=[0, 0, 1, 1]))
add(h.make_node("Mul", ["c", "s1"], ["m"], name="bn/mul"), {"s1": rng.uniform(0.5, 2, (1, 6, 1, 1)).astype(np.float32)})
add(h.make_node("Add", ["m", "s2"], ["a"], name="bn/add"), {"s2": w(6, 1, 1)})
add(h.make_node("Sub", ["a", "s3"], ["s"], name="sub"), {"s3": w(6, 1, 1)})
add(h.make_node("Div", ["s", "s4"], ["dv"], name="div"), {"s4": rng.uniform(0.5, 2, (6, 1, 1)).astype(np.float32)})
add(h.make_node("Relu", ["dv"], ["r"], name="relu"))
add(h.make_node("Transpose", ["r"], ["tt"], name="to_nhwc", perm=[0, 2, 3, 1]))
add(h.make_node("Reshape", ["tt", "shape"], ["fl"], name="flatten/Reshape"), {"shape": np.array([-1, 11 * 10 * 6], np.int64)})
add(h.make_node("MatMul", ["fl", "wm"], ["mm"], name="dense/MatMul"), {"wm": w(660, 7, s=0.05)})
add(h.make_node("Add", ["mm", "bm"], ["y"], name="dense/BiasAdd"), {"bm": w(7)})
add(h.make_node("Softmax", ["y"], ["prob"], name="softmax"))
save("nhwc_tf", n, io("x", ["N", 10, 10, 2]), io("prob", ["N", 7]), i)

n, i = [], {}
add(h.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1d", strides=[2], dilations=[2], pads=[1, 2]), {"w1": w(6, 4, 5), "b1": w(6)})
add(h.make_node("Relu", ["c"], ["r"], name="relu"))
add(h.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2], strides=[2]))
add(h.make_node("Conv", ["p", "w2"], ["c2"], name="dw1d", group=6, auto_pad="SAME_LOWER"), {"w2": w(6, 1, 4)})
add(h.make_node("AveragePool", ["c2"], ["a"], name="avg", kernel_shape=[2], strides=[1]))
add(h.make_node("ReduceMean", ["a"], ["rm"], name="mean", axes=[2], keepdims=1))
add(h.make_node("Squeeze", ["rm", "ax"], ["s"], name="squeeze"), {"ax": np.array([2], np.int64)})
add(h.make_node("Gemm", ["s", "g", "gc"], ["y"], name="fc"), {"g": w(6, 3), "gc": w(3)})
save("conv1d", n, io("x", ["N", 4, 20]), io("y", ["N", 3]), i)

n, i = [], {}
add(h.make_node("Gemm", ["x", "g", "gc"], ["g1"], name="fc1", transB=1), {"g": w(8, 16), "gc": w(8)})
add(h.make_node("Tanh", ["g1"], ["t"], name="tanh"))
add(h.make_node("MatMul", ["t", "w2"], ["m"], name="fc2"), {"w2": w(8, 4)})
add(h.make_node("Add", ["m", "b2"], ["a"], name="fc2_bias"), {"b2": w(4)})
add(h.make_node("Sigmoid", ["a"], ["y"], name="sigmoid"))
save("flat", n, io("x", ["N", 16]), io("y", ["N", 4]), i)
onnx.save_model(onnx.load(f"{out}/flat.onnx"), f"{out}/flat_external.onnx", save_as_external_data=True,
                location="flat_external.bin", size_threshold=0)

# onnxruntime's optimizer runs a MatMul by dequantized weights on a quantized activation
# (MatMulIntegerToFloat), so it is no reference here: the test compares the weights.
n, i = [], {}
wq, ws, wz, b = rng.integers(0, 256, (8, 4)).astype(np.uint8), np.float32(0.01), np.uint8(3), w(4)
add(h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dense_dequant"), {"wq": wq, "ws": ws, "wz": wz})
add(h.make_node("MatMul", ["x", "wd"], ["m"], name="dense"))
add(h.make_node("Add", ["m", "b"], ["y"], name="dense_bias"), {"b": b})
save("dq_matmul", n, io("x", ["N", 8]), io("y", ["N", 4]), i)
np.save(f"{out}/dq_matmul_weight.npy", (wq.astype(np.float32) - 3) * ws)
np.save(f"{out}/dq_matmul_bias.npy", b)

n, i = [], {}
add(h.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]))
add(h.make_node("Conv", ["t", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]), {"w1": w(5, 3, 3, 3), "b1": w(5)})
add(h.make_node("Relu", ["c"], ["r"], name="relu"))
add(h.make_node("Transpose", ["r"], ["tt"], name="to_nhwc", perm=[0, 2, 3, 1]))
add(h.make_node("ReduceMean", ["tt"], ["rm"], name="mean", axes=[1, 2], keepdims=0))
add(h.make_node("Unsqueeze", ["rm", "ax"], ["u"], name="unsqueeze"), {"ax": np.array([1, 2], np.int64)})
add(h.make_node("Flatten", ["u"], ["fl"], name="flatten"))
add(h.make_node("MatMul", ["fl", "wm"], ["y"], name="dense"), {"wm": w(5, 2)})
save("reduce_nhwc", n, io("x", ["N", 8, 8, 3]), io("y", ["N", 2]), i)

n, i = [], {}
add(h.make_node("ConvTranspose", ["x", "wt"], ["y"], name="deconv", dilations=[2, 2]), {"wt": w(2, 3, 3, 3)})
save("conv_transpose", n, io("x", ["N", 2, 4, 4]), io("y", ["N", 3, 8, 8]), i)

# Data-moving layout: a strided ConvTranspose with pads and output_padding, BatchNorm after it,
# a mid-graph Transpose a Conv reads, Reshapes that move data (to a map, to a 1-D map after a
# Transpose of an order that is neither [c, h, w] nor [h, w, c]).
n, i = [], {}
add(h.make_node("ConvTranspose", ["x", "wt", "bt"], ["u"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
                output_padding=[1, 1]), {"wt": w(3, 4, 3, 3), "bt": w(4)})
add(*bn("bn_up", "u", 4))
add(h.make_node("Relu", ["bn_up"], ["ur"], name="relu_up"))
add(h.make_node("Transpose", ["ur"], ["sw"], name="swap_hw", perm=[0, 1, 3, 2]))
add(h.make_node("Conv", ["sw", "wp", "bp"], ["pw"], name="pw"), {"wp": w(5, 4, 1, 1), "bp": w(5)})
add(h.make_node("Reshape", ["pw", "s1"], ["rg"], name="regroup"), {"s1": np.array([-1, 10, 6, 12], np.int64)})
add(h.make_node("Transpose", ["rg"], ["wch"], name="wch", perm=[0, 3, 1, 2]))
add(h.make_node("Reshape", ["wch", "s2"], ["fold"], name="fold"), {"s2": np.array([-1, 24, 30], np.int64)})
add(h.make_node("Conv", ["fold", "w1d", "b1d"], ["c1"], name="conv1d"), {"w1d": w(6, 24, 3, s=0.2), "b1d": w(6)})
add(h.make_node("Relu", ["c1"], ["r1"], name="relu1d"))
add(h.make_node("Flatten", ["r1"], ["fl"], name="flatten"))
add(h.make_node("Gemm", ["fl", "g", "gc"], ["y"], name="fc", transB=1), {"g": w(3, 168, s=0.1), "gc": w(3)})
save("data_moves", n, io("x", ["N", 3, 6, 6]), io("y", ["N", 3]), i)

n, i = [], {}
add(h.make_node("ConvTranspose", ["x", "wt"], ["u"], name="up1d", strides=[2], pads=[1, 1]), {"wt": w(4, 3, 4)})
add(h.make_node("Relu", ["u"], ["r"], name="relu"))
add(h.make_node("Reshape", ["r", "s"], ["rs"], name="reshape"), {"s": np.array([0, 6, 10], np.int64)})
add(h.make_node("Conv", ["rs", "wc", "bc"], ["c"], name="conv", pads=[1, 1]), {"wc": w(2, 6, 3), "bc": w(2)})
add(h.make_node("Flatten", ["c"], ["fl"], name="flatten"))
add(h.make_node("Gemm", ["fl", "g"], ["y"], name="fc"), {"g": w(20, 2, s=0.2)})
save("deconv1d", n, io("x", ["N", 4, 10]), io("y", ["N", 2]), i)

# tf2onnx-style NHWC: a Reshape in [h, w, c] order, a Transpose to [n, c, w] for a 1-D Conv,
# a Reshape of that 1-D map into a 2-D one.
n, i = [], {}
add(h.make_node("Transpose", ["x"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]))
add(h.make_node("Conv", ["t", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]), {"w1": w(4, 2, 3, 3), "b1": w(4)})
add(h.make_node("Relu", ["c"], ["r"], name="relu"))
add(h.make_node("Transpose", ["r"], ["tt"], name="to_nhwc", perm=[0, 2, 3, 1]))
add(h.make_node("Reshape", ["tt", "s1"], ["seq"], name="to_seq"), {"s1": np.array([-1, 36, 4], np.int64)})
add(h.make_node("Transpose", ["seq"], ["ts"], name="seq_nchw", perm=[0, 2, 1]))
add(h.make_node("Conv", ["ts", "w2", "b2"], ["c2"], name="conv_seq"), {"w2": w(3, 4, 3), "b2": w(3)})
add(h.make_node("Relu", ["c2"], ["r2"], name="relu_seq"))
add(h.make_node("Reshape", ["r2", "s2"], ["m"], name="to_map"), {"s2": np.array([-1, 3, 2, 17], np.int64)})
add(h.make_node("Conv", ["m", "w3"], ["c3"], name="pw"), {"w3": w(2, 3, 1, 1)})
add(h.make_node("Flatten", ["c3"], ["fl"], name="flatten"))
add(h.make_node("MatMul", ["fl", "wm"], ["y"], name="dense"), {"wm": w(68, 2, s=0.2)})
save("nhwc_moves", n, io("x", ["N", 6, 6, 2]), io("y", ["N", 2]), i)

n, i = [], {}
add(h.make_node("Conv", ["x", "w1"], ["c"], name="conv"), {"w1": w(3, 2, 1, 1)})
add(h.make_node("Sigmoid", ["c"], ["s"], name="sigmoid"))
add(h.make_node("Div", ["c", "s"], ["y"], name="divide"))
save("divide", n, io("x", ["N", 2, 4, 4]), io("y", ["N", 3, 4, 4]), i)

# Swish and a squeeze-excite gate from linear layers (PyTorch's view(n, c, 1, 1)), a
# broadcast Sub of the pooled map, constants that fold into nothing (Mul, constant − x, Div,
# a scalar Add).
n, i = [], {}
add(h.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1]), {"w1": w(8, 4, 3, 3), "b1": w(8)})
add(h.make_node("Sigmoid", ["c"], ["s"], name="swish_sigmoid"))
add(h.make_node("Mul", ["c", "s"], ["sw"], name="swish"))
add(h.make_node("GlobalAveragePool", ["sw"], ["gp"], name="se_pool"))
add(h.make_node("Flatten", ["gp"], ["fl"], name="se_flatten"))
add(h.make_node("Gemm", ["fl", "f1", "fb1"], ["z1"], name="se_fc1", transB=1), {"f1": w(2, 8), "fb1": w(2)})
add(h.make_node("Relu", ["z1"], ["r1"], name="se_relu"))
add(h.make_node("Gemm", ["r1", "f2", "fb2"], ["z2"], name="se_fc2", transB=1), {"f2": w(8, 2), "fb2": w(8)})
add(h.make_node("Sigmoid", ["z2"], ["gate"], name="se_sigmoid"))
add(h.make_node("Reshape", ["gate", "gshape"], ["g4"], name="se_view"), {"gshape": np.array([-1, 8, 1, 1], np.int64)})
add(h.make_node("Mul", ["sw", "g4"], ["se"], name="se_scale"))
add(h.make_node("GlobalAveragePool", ["se"], ["mean"], name="mean"))
add(h.make_node("Sub", ["se", "mean"], ["centred"], name="centre"))
add(h.make_node("Mul", ["centred", "k"], ["scaled"], name="scale"), {"k": rng.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32)})
add(h.make_node("Sub", ["one", "scaled"], ["flipped"], name="flip"), {"one": np.array(1.0, np.float32)})
add(h.make_node("Div", ["flipped", "two"], ["halved"], name="halve"), {"two": np.array([2.0], np.float32)})
add(h.make_node("Add", ["halved", "bias"], ["biased"], name="bias"), {"bias": np.array(0.25, np.float32)})
add(h.make_node("Relu", ["biased"], ["r"], name="relu"))
add(h.make_node("GlobalAveragePool", ["r"], ["gp2"], name="head_pool"))
add(h.make_node("Flatten", ["gp2"], ["fl2"], name="head_flatten"))
add(h.make_node("Gemm", ["fl2", "f3", "fb3"], ["y"], name="head", transB=1), {"f3": w(3, 8), "fb3": w(3)})
save("se_swish", n, io("x", ["N", 4, 6, 6]), io("y", ["N", 3]), i)

# A squeeze-excite gate from 1×1 convolutions on the pooled map, broadcast by Mul and Add.
n, i = [], {}
add(h.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv"), {"w1": w(6, 3, 1, 1), "b1": w(6)})
add(h.make_node("Relu", ["c"], ["r"], name="relu"))
add(h.make_node("GlobalAveragePool", ["r"], ["gp"], name="se_pool"))
add(h.make_node("Conv", ["gp", "w2", "b2"], ["z"], name="se_reduce"), {"w2": w(3, 6, 1, 1), "b2": w(3)})
add(h.make_node("Relu", ["z"], ["zr"], name="se_relu"))
add(h.make_node("Conv", ["zr", "w3", "b3"], ["e"], name="se_expand"), {"w3": w(6, 3, 1, 1), "b3": w(6)})
add(h.make_node("Sigmoid", ["e"], ["gate"], name="se_gate"))
add(h.make_node("Mul", ["gate", "r"], ["se"], name="se_scale"))
add(h.make_node("Add", ["se", "gp"], ["sum"], name="se_residual"))
add(h.make_node("GlobalAveragePool", ["sum"], ["gp2"], name="head_pool"))
add(h.make_node("Flatten", ["gp2"], ["y"], name="head_flatten"))
save("se_conv", n, io("x", ["N", 3, 5, 5]), io("y", ["N", 6]), i)
"#;

/// The synthetic models in a temporary folder, or `None` where Python lacks onnx.
fn synthetic() -> Option<(String, tempfile::TempDir)> {
    let python = python()?;
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .args(["-c", MODELS_PY])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "writing the test models failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((python, dir))
}

#[test]
fn synthetic_models_cover_every_supported_operator_and_match_onnxruntime() {
    let Some(shared) = shared() else { return };
    let Some((python, dir)) = synthetic() else {
        return;
    };
    let cases: [(&str, &[usize], Layout, usize, usize); 5] = [
        ("nchw_ops", &[3, 12, 12], Layout::Nchw, 6, 2),
        ("nhwc_tf", &[10, 10, 2], Layout::Nhwc, 1, 1),
        ("conv1d", &[4, 20], Layout::Nchw, 2, 1),
        ("flat", &[16], Layout::Flat, 0, 2),
        ("reduce_nhwc", &[8, 8, 3], Layout::Nhwc, 1, 1),
    ];
    for (name, file_shape, layout, convs, linears) in cases {
        let path = dir.path().join(format!("{name}.onnx"));
        let imported = onnx::import(&path, None).unwrap_or_else(|e| panic!("{e}"));
        let spec = &imported.spec;
        assert_eq!(spec.input.layout, layout, "{name}");
        assert_eq!(
            (spec.convs.len(), spec.linears.len()),
            (convs, linears),
            "{name}"
        );
        let diff = against_onnxruntime(
            &python,
            &shared,
            &path,
            &imported,
            file_shape,
            4,
            (-1.0, 1.0),
        );
        let ops: Vec<&str> = spec.nodes.iter().map(|n| n.op.kind()).collect();
        eprintln!("{name}: {ops:?}, max relative difference {diff:.2e}");
    }
    // What was absorbed: the Pad merged into the first convolution's padding, BatchNorm and
    // the constant Mul / Add / Sub / Div folded, the NHWC flatten kept in its order.
    let nchw = onnx::import(&dir.path().join("nchw_ops.onnx"), None).unwrap();
    assert_eq!(nchw.spec.convs[0].pads, [1, 2, 2, 1]);
    assert_eq!(nchw.spec.convs[1].groups, 8);
    assert_eq!(nchw.spec.convs[1].dilation, [2, 2]);
    assert!(
        nchw.spec.convs[1].bias,
        "BatchNorm folded into a bias-free conv adds a bias"
    );
    assert_eq!(nchw.spec.layer_names().0[0], "stem_conv_Conv");
    assert!(nchw.spec.softmax);
    let tf = onnx::import(&dir.path().join("nhwc_tf.onnx"), None).unwrap();
    assert_eq!(
        tf.spec.convs[0].pads,
        [1, 1, 2, 1],
        "the NHWC Pad merged through the transpose"
    );
    assert_eq!(
        count(&tf, |op| matches!(
            op,
            Op::Flatten {
                channels_last: true
            }
        )),
        1
    );
    assert_eq!(
        tf.spec.nodes.len(),
        3,
        "conv+relu, flatten, linear: {:?}",
        tf.spec.nodes
    );
    let reduce = onnx::import(&dir.path().join("reduce_nhwc.onnx"), None).unwrap();
    assert_eq!(count(&reduce, |op| matches!(op, Op::GlobalAvgPool)), 1);
    // Weights in an external data file.
    let flat = onnx::import(&dir.path().join("flat.onnx"), None).unwrap();
    let external = onnx::import(&dir.path().join("flat_external.onnx"), None).unwrap();
    assert_eq!(external.weights.linears, flat.weights.linears);
    // Weights behind DequantizeLinear: (q - zero point) · scale, burn's [in, out] layout.
    let dq = onnx::import(&dir.path().join("dq_matmul.onnx"), None).unwrap();
    let (weight, bias) = &dq.weights.linears[0];
    let read = |name: &str| match npy::read(&dir.path().join(name)).unwrap() {
        (_, Data::F32(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(dq.spec.linears, vec![([8, 4], true)]);
    assert_eq!(*weight, read("dq_matmul_weight.npy"));
    assert_eq!(bias.as_deref(), Some(&read("dq_matmul_bias.npy")[..]));
}

/// ConvTranspose (2-D with stride, pads, output_padding and a BatchNorm folded into it; 1-D),
/// mid-graph Transposes and Reshapes that move data, in PyTorch's NCHW and tf2onnx's NHWC
/// conventions: the imported graph computes what onnxruntime computes.
#[test]
fn conv_transpose_and_data_moving_layout_match_onnxruntime() {
    let Some(shared) = shared() else { return };
    let Some((python, dir)) = synthetic() else {
        return;
    };
    let cases: [(&str, &[usize], Layout, usize); 3] = [
        ("data_moves", &[3, 6, 6], Layout::Nchw, 3),
        ("deconv1d", &[4, 10], Layout::Nchw, 2),
        ("nhwc_moves", &[6, 6, 2], Layout::Nhwc, 3),
    ];
    for (name, file_shape, layout, convs) in cases {
        let path = dir.path().join(format!("{name}.onnx"));
        let imported = onnx::import(&path, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(imported.spec.input.layout, layout, "{name}");
        assert_eq!(imported.spec.convs.len(), convs, "{name}");
        let diff = against_onnxruntime(
            &python,
            &shared,
            &path,
            &imported,
            file_shape,
            3,
            (-1.0, 1.0),
        );
        let ops: Vec<&str> = imported.spec.nodes.iter().map(|n| n.op.kind()).collect();
        eprintln!("{name}: {ops:?}, max relative difference {diff:.2e}");
    }
    let moves = onnx::import(&dir.path().join("data_moves.onnx"), None).unwrap();
    // The BatchNorm folded into the transposed convolution and its ReLU fused.
    assert!(matches!(
        moves.spec.nodes[0].op,
        Op::ConvTranspose {
            stride: [2, 2],
            pads: [1, 1, 1, 1],
            output_padding: [1, 1],
            act: collab_models::graph::FusedActivation::Relu,
            ..
        }
    ));
    assert_eq!(count(&moves, |op| matches!(op, Op::Transpose { .. })), 2);
    assert_eq!(count(&moves, |op| matches!(op, Op::Reshape { .. })), 2);
    let nhwc = onnx::import(&dir.path().join("nhwc_moves.onnx"), None).unwrap();
    assert!(nhwc.spec.nodes.iter().any(|n| matches!(
        n.op,
        Op::Reshape {
            channels_last: true,
            ..
        }
    )));
}

#[test]
fn unsupported_operators_in_synthetic_models_are_named() {
    let Some((_, dir)) = synthetic() else { return };
    for (name, want_op, want_node, want_inputs) in [
        ("conv_transpose", "ConvTranspose", "deconv", vec!["x", "wt"]),
        ("divide", "Div", "divide", vec!["c", "s"]),
    ] {
        let err = onnx::import(&dir.path().join(format!("{name}.onnx")), None).unwrap_err();
        eprintln!("{err}");
        match err {
            ImportError::Unsupported {
                node, op, inputs, ..
            } => assert_eq!(
                (op.as_str(), node.as_str(), inputs),
                (
                    want_op,
                    want_node,
                    want_inputs.iter().map(|s| s.to_string()).collect()
                )
            ),
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// Swish (`x · sigmoid(x)`) and squeeze-excite gates, from linear layers viewed as
/// `[n, c, 1, 1]` and from 1×1 convolutions on the pooled map, broadcast by Mul, Sub and Add,
/// with constants that fold into no layer: the imported model computes what onnxruntime does.
#[test]
fn swish_and_squeeze_excite_match_onnxruntime() {
    let Some(shared) = shared() else { return };
    let Some((python, dir)) = synthetic() else {
        return;
    };
    for (name, file_shape, muls, subs) in [
        ("se_swish", &[4usize, 6, 6][..], 2, 1),
        ("se_conv", &[3, 5, 5][..], 1, 0),
    ] {
        let path = dir.path().join(format!("{name}.onnx"));
        let imported = onnx::import(&path, None).unwrap_or_else(|e| panic!("{e}"));
        let ops: Vec<&str> = imported.spec.nodes.iter().map(|n| n.op.kind()).collect();
        assert_eq!(
            count(&imported, |op| matches!(op, Op::Mul { .. })),
            muls,
            "{ops:?}"
        );
        assert_eq!(
            count(&imported, |op| matches!(op, Op::Sub { .. })),
            subs,
            "{ops:?}"
        );
        let diff = against_onnxruntime(
            &python,
            &shared,
            &path,
            &imported,
            file_shape,
            4,
            (-1.0, 1.0),
        );
        eprintln!("{name}: {ops:?}, max relative difference {diff:.2e}");
    }
    let se = onnx::import(&dir.path().join("se_swish.onnx"), None).unwrap();
    // Mul by k; 1 − x as −x + 1; ÷ 2 as × 0.5; + 0.25 (one node each, the first two joined).
    assert_eq!(count(&se, |op| matches!(op, Op::MulConst { .. })), 3);
    assert_eq!(count(&se, |op| matches!(op, Op::AddConst { .. })), 2);
    let conv = onnx::import(&dir.path().join("se_conv.onnx"), None).unwrap();
    assert_eq!(count(&conv, |op| matches!(op, Op::Add { .. })), 1);
}
