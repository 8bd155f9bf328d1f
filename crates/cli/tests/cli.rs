//! The `collab` binary end to end: info, import of the published weights, evaluation on the
//! real shared clips, and error exits.

mod common;
use common::collab;
use std::path::Path;

#[test]
fn info_prints_parameter_counts() {
    let (code, out, _) = collab(&["info", "--model", "ds-cnn-l", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params"], 410_700);
    let (code, out, _) = collab(&["info", "--model", "mobilenet-v1"]);
    assert_eq!(code, 0);
    assert!(out.contains("4210088 parameters"), "{out}");
}

#[test]
fn import_then_eval_reproduces_the_published_accuracy() {
    let shared = collab_data::shared::require_shared();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ds-cnn-s");
    let weights = shared.join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors");
    let (code, out, err) = collab(&[
        "import",
        "--model",
        "ds-cnn-s",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        ck.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["model"], "ds-cnn-s");
    assert_eq!(v["checkpoint"], ck.to_str().unwrap());
    assert_eq!(v["input"], serde_json::json!([1, 49, 10]));
    assert!(v["params"].as_u64().unwrap() > 0, "{v}");
    let data = shared.join("data/speech_commands_12");
    let (code, out, err) = collab(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--all",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["samples"], 3964);
    let acc = v["accuracy"].as_f64().unwrap();
    assert!(
        (acc - 3530.0 / 3964.0).abs() < 1e-9,
        "DS-CNN-S accuracy {acc}, published 89.05 %"
    );
    assert_eq!(v["per_class"].as_object().unwrap().len(), 12);
}

#[test]
fn export_then_eval_the_int8_file() {
    let shared = collab_data::shared::require_shared();
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ds-cnn-s");
    let weights = shared.join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors");
    let data = shared.join("data/speech_commands_12");
    let (code, _, err) = collab(&[
        "import",
        "--model",
        "ds-cnn-s",
        "--weights",
        weights.to_str().unwrap(),
        "--out",
        ck.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let file = dir.path().join("ds_cnn_s.tflite");
    let (code, out, err) = collab(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--calibration",
        data.to_str().unwrap(),
        "--calibration-samples",
        "200",
        "--out",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["bytes"], std::fs::metadata(&file).unwrap().len());
    assert!(
        v["gzip_bytes"].as_u64().unwrap() < v["bytes"].as_u64().unwrap(),
        "{v}"
    );
    assert_eq!(v["calibration_samples"], 200);
    let eval = |what: &str, path: &std::path::Path| {
        let (code, out, err) = collab(&[
            "eval",
            what,
            path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };
    let float = eval("--checkpoint", &ck);
    let int8 = eval("--model", &file);
    assert_eq!(float["samples"], int8["samples"]);
    assert_eq!(
        float["per_class"].as_object().unwrap().len(),
        int8["per_class"].as_object().unwrap().len()
    );
    let (f, q) = (
        float["accuracy"].as_f64().unwrap(),
        int8["accuracy"].as_f64().unwrap(),
    );
    eprintln!("validation speakers: float {f:.4}, int8 {q:.4}");
    assert!(q > f - 0.05 && q < f + 0.02, "int8 {q} vs float {f}");

    // A damaged file is an error naming it, not a panic.
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.path().join("truncated.tflite");
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let (code, _, err) = collab(&["eval", "--model", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("truncated.tflite"), "{err}");
    // The original file is untouched by a failed export into it.
    let (code, _, _) = collab(&[
        "export",
        "--checkpoint",
        "/nonexistent",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
}

#[test]
fn bench_prints_timings() {
    for wrap in ["none", "pcqat"] {
        let (code, out, err) = collab(&[
            "bench",
            "train",
            "--model",
            "ds-cnn-s",
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--wrap",
            wrap,
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["median_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(v["steps"], 1);
        assert_eq!(v["backend"], "flex");
    }
    // With real batches read (and augmented) inside each timed step.
    let cifar = collab_data::shared::require_shared().join("data/cifar10");
    let (code, out, err) = collab(&[
        "bench",
        "train",
        "--model",
        "mobilenet-v1-cifar",
        "--width",
        "0.25",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--data",
        cifar.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        v["what"].as_str().unwrap().contains("batches read from"),
        "{v}"
    );
    let model = collab_data::shared::require_shared().join("tools/testdata/kws_ref_model.tflite");
    let (code, out, err) = collab(&[
        "bench",
        "infer",
        "--model",
        model.to_str().unwrap(),
        "--runs",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["min_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["steps"], 5);
    let (code, out, err) = collab(&[
        "bench",
        "infer",
        "--model",
        model.to_str().unwrap(),
        "--runs",
        "3",
        "--kernels",
        "portable",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("portable kernels"), "{out}");
    // Unknown choices are usage errors (exit 2) listing the choices (more in tests/usage.rs).
    let (code, _, err) = collab(&["bench", "infer", "--model", "x.tflite", "--kernels", "gpu"]);
    assert_eq!(code, 2);
    assert!(err.contains("'gpu'") && err.contains("--kernels"), "{err}");
    let (code, _, err) = collab(&["bench", "train", "--model", "ds-cnn-s", "--wrap", "magic"]);
    assert_eq!(code, 2);
    assert!(err.contains("'magic'") && err.contains("pcqat"), "{err}");
}

#[test]
fn inspect_reports_a_tflite_file() {
    let model = collab_data::shared::require_shared().join("tools/testdata/kws_ref_model.tflite");
    let (code, out, err) = collab(&["inspect", model.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bytes"], 53_936);
    assert_eq!(v["total_zeros"], 168);
    let (code, _, err) = collab(&["inspect", "/nonexistent.tflite"]);
    assert_eq!(code, 1);
    assert!(err.contains("nonexistent.tflite"), "{err}");
}

#[test]
fn failures_exit_with_a_message() {
    let (code, _, err) = collab(&["info", "--model", "resnet-50"]);
    assert_eq!(code, 2, "an unknown model is a usage error");
    assert!(
        err.contains("'resnet-50'") && err.contains("ds-cnn-l"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = collab(&["eval", "--checkpoint", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("manifest.json"), "{err}");
    let (code, _, _) = collab(&["train"]);
    assert_eq!(code, 2, "missing required arguments is a usage error");
    let (code, _, err) = collab(&[
        "import",
        "--model",
        "mobilenet-v1",
        "--weights",
        "x",
        "--out",
        "y",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("DS-CNN models only"), "{err}");
    // --device is global; an unknown one (usage, 2), or wgpu in a build without it (1), says
    // how to fix it.
    let (code, _, err) = collab(&["info", "--model", "ds-cnn-s", "--device", "tpu"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'tpu'") && err.contains("--device") && err.contains("cpu"),
        "{err}"
    );
    if !cfg!(feature = "wgpu") {
        let (code, _, err) = collab(&["--device", "wgpu", "info", "--model", "ds-cnn-s"]);
        assert_eq!(code, 1);
        assert!(err.contains("--features wgpu"), "{err}");
    }
    let (code, out, err) = collab(&["info", "--model", "ds-cnn-s", "--device", "cpu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("conv1"), "{out}");
}

#[test]
fn train_on_two_devices_ends_as_one_device_with_the_doubled_batch() {
    let dir = tempfile::tempdir().unwrap();
    let run = |devices: &str, batch: &str, out: &Path| {
        let (code, stdout, err) = collab(&[
            "--quiet",
            "train",
            "--json",
            "--model",
            "ds-cnn-s",
            "--epochs",
            "2",
            "--batch-size",
            batch,
            "--devices",
            devices,
            "--seed",
            "3",
            "--no-augment",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("INFO"), "--quiet logged:\n{err}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["history"].as_array().unwrap().len(), 2, "{v}");
        assert_eq!(v["checkpoint"], out.to_str().unwrap());
        // epoch, train loss, train accuracy, val loss, val accuracy, learning rate (no times).
        let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
        csv.lines()
            .skip(1)
            .map(|l| {
                l.split(',')
                    .take(6)
                    .map(|c| c.parse::<f64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let one = run("1", "200", &dir.path().join("one"));
    let two = run("2", "100", &dir.path().join("two"));
    assert_eq!(one.len(), 2);
    // A model trained from scratch normalizes with batch statistics, which each replica
    // takes over its own half of the batch: the figures agree closely, not exactly.
    for (a, b) in one.iter().zip(&two) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 0.02 * x.abs().max(1.0), "{b:?} vs {a:?}");
        }
    }
    let manifest = std::fs::read_to_string(dir.path().join("two/manifest.json")).unwrap();
    assert!(manifest.contains("\"devices\": 2"), "{manifest}");
}
