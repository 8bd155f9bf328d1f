//! Any model in (issue #18): `collab import FILE` turns an ONNX or float TFLite file into a
//! checkpoint that every command takes, and refuses what it cannot express — an unsupported
//! operator, a truncated or full-integer file, data of the wrong shape — with a message that
//! names it, a non-zero exit and nothing written.

mod common;
use common::{collab, snapshot};

use std::path::{Path, PathBuf};

/// A file of `../shared/models/mlperf_tiny/`; `None` (the test is skipped) without `../shared`,
/// a failure under `COLLAB_REQUIRE_TOOLS=1`.
fn mlperf(name: &str) -> Option<PathBuf> {
    let dir = if std::env::var_os("COLLAB_REQUIRE_TOOLS").is_some() {
        Some(collab_data::shared::require_shared())
    } else {
        collab_data::shared::shared_dir()
    };
    match dir {
        Some(d) => Some(d.join("models/mlperf_tiny").join(name)),
        None => {
            eprintln!("skipped: no ../shared (set COLLAB_SHARED)");
            None
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_imported_model_evaluates_and_exports_like_a_built_in_one() {
    let Some(file) = mlperf("pretrainedResnet.tflite") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("resnet8");
    let (code, out, err) = collab(&["import", s(&file), "--pixels", "raw", "--out", s(&ckpt)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("10 weight layers"), "{out}");
    // The spec travels in the manifest: eval and export need nothing but the checkpoint.
    let cifar = file.parent().unwrap().join("../../data/cifar10");
    let (code, out, err) = collab(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&cifar),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!(
        accuracy > 0.7,
        "raw pixels reach the model as it expects: {accuracy}"
    );
    let int8 = tmp.path().join("resnet8.tflite");
    let (code, _, err) = collab(&[
        "export",
        "--checkpoint",
        s(&ckpt),
        "--calibration",
        s(&cifar),
        "--calibration-samples",
        "100",
        "--out",
        s(&int8),
    ]);
    assert_eq!(code, 0, "{err}");
    // The int8 input follows from the raw-pixel record: q = pixel − 128, as MLPerf's own file.
    let graph = collab_tflite::Graph::open(&int8).unwrap();
    let interp = collab_tflite::Interpreter::new(&graph).unwrap();
    let port = &interp.inputs()[0];
    assert_eq!((port.scale, port.zero_point), (1.0, -128));
    let (code, out, err) = collab(&[
        "eval",
        "--model",
        s(&int8),
        "--like",
        s(&ckpt),
        "--data",
        s(&cifar),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let int8_accuracy = report["accuracy"].as_f64().unwrap();
    assert!(
        (int8_accuracy - accuracy).abs() < 0.02,
        "PTQ keeps the accuracy: float {accuracy}, int8 {int8_accuracy}"
    );
}

#[test]
fn truncated_and_full_integer_files_are_refused_and_nothing_is_written() {
    let Some(tflite) = mlperf("pretrainedResnet.tflite") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("half.tflite", std::fs::read(&tflite).unwrap()),
        (
            "half.onnx",
            std::fs::read(mlperf("resnet8.onnx").unwrap()).unwrap(),
        ),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let out = tmp.path().join(format!("{name}.out"));
        let before = snapshot(tmp.path());
        let (code, _, err) = collab(&["import", s(&path), "--out", s(&out)]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the message names the file: {err}"
        );
        assert!(!out.exists(), "{name}: nothing written");
        assert_eq!(before, snapshot(tmp.path()));
    }
    let int8 = mlperf("pretrainedResnet_quant.tflite").unwrap();
    let out = tmp.path().join("int8.out");
    let (code, _, err) = collab(&["import", s(&int8), "--out", s(&out)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("full-integer"), "{err}");
    assert!(!out.exists());
}

#[test]
fn an_unsupported_operator_is_named_with_its_node_before_any_work() {
    let Some(onnx) = mlperf("resnet8.onnx") else {
        return;
    };
    // The file's first Relu, renamed to another four-letter operator in its bytes.
    let mut bytes = std::fs::read(&onnx).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"\x22\x04Relu")
        .expect("an op_type field `Relu`");
    bytes[at + 2..at + 6].copy_from_slice(b"Sign");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sign.onnx");
    std::fs::write(&path, bytes).unwrap();
    let out = tmp.path().join("out");
    let (code, _, err) = collab(&["import", s(&path), "--out", s(&out)]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Sign") && err.contains("node"), "{err}");
    assert!(!out.exists());
}

#[test]
fn settings_that_contradict_the_file_are_usage_errors() {
    let Some(file) = mlperf("pretrainedResnet.tflite") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (code, _, err) = collab(&["import", s(&file), "--labels", "a,b", "--out", s(&out)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("10 outputs"), "{err}");
    let (code, _, err) = collab(&[
        "import",
        s(&file),
        "--pixels",
        "raw",
        "--mfcc",
        "tf-signal",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(!out.exists());
}

#[test]
fn data_of_the_wrong_shape_names_both_shapes() {
    let Some(file) = mlperf("pretrainedResnet.tflite") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("resnet8");
    let (code, _, err) = collab(&["import", s(&file), "--out", s(&ckpt)]);
    assert_eq!(code, 0, "{err}");
    // Channels-first images for a channels-last model.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    collab_data::npy::write_f32(
        &data.join("x.npy"),
        &[4, 3, 32, 32],
        &[0.5; 4 * 3 * 32 * 32],
    )
    .unwrap();
    std::fs::write(
        data.join("y.npy"),
        collab_data::npy::encode_i64(&[4], &[0, 1, 2, 3]).unwrap(),
    )
    .unwrap();
    let (code, _, err) = collab(&[
        "eval",
        "--checkpoint",
        s(&ckpt),
        "--data",
        s(&data.join("x.npy")),
    ]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("[3, 32, 32]") && err.contains("[32, 32, 3]"),
        "{err}"
    );
}
