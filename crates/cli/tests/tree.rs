//! `collab tree` on the synthetic default (configs/quick.toml): every node, the invariants in
//! the written files, numbers that `collab eval` / `collab inspect` reproduce, and reuse.

use std::path::Path;

mod common;
use common::collab;

/// `collab tree --config CONFIG --out OUT --json`, which must succeed: its leaves.
#[track_caller]
fn tree_json(config: &Path, out: &Path) -> serde_json::Value {
    let (code, stdout, err) = collab(&[
        "tree",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn quick_tree_produces_every_leaf_with_its_invariants() {
    // Tests run in their crate's folder; the build-time path is only the fallback (a build
    // cache shared between clones can carry another clone's path).
    let config = [Path::new("../../configs/quick.toml").to_path_buf()]
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/quick.toml")])
        .find(|p| p.is_file())
        .expect("configs/quick.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quick");
    let run = || tree_json(&config, &out);
    let leaves = run();
    let leaves = leaves.as_array().unwrap();
    let stages: Vec<&str> = leaves
        .iter()
        .map(|l| l["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        [
            "baseline",
            "pruned",
            "qat",
            "pqat",
            "clustered",
            "cqat",
            "sparsity_preserving_clustered",
            "pcqat"
        ]
    );
    let leaf = |name: &str| leaves.iter().find(|l| l["stage"] == name).unwrap();
    // The baseline learned the synthetic task; the compressed nodes keep most of it.
    for l in leaves {
        let acc = l["int8_accuracy"].as_f64().unwrap();
        assert!(acc > 0.8, "{}: int8 accuracy {acc}", l["stage"]);
        // Every file was run in the reference runtimes (CI installs them) and matched ours.
        if std::env::var_os("COLLAB_REQUIRE_TOOLS").is_some() {
            let v = &l["verified"]["max_lsb"];
            assert_eq!(v["litert_ref"], 0.0, "{}: {v}", l["stage"]);
            assert_eq!(v["tflm"], 0.0, "{}: {v}", l["stage"]);
        }
    }
    // Pruned lineages: ≥ 50% zeros in every weight tensor of the file.
    for name in ["pruned", "pqat", "sparsity_preserving_clustered", "pcqat"] {
        for layer in leaf(name)["layers"].as_array().unwrap() {
            let z = layer["zero_fraction"].as_f64().unwrap();
            assert!(z >= 0.495, "{name} {}: {z}", layer["name"]);
        }
    }
    // Clustered lineages: ≤ 16 values per channel.
    for name in [
        "clustered",
        "cqat",
        "sparsity_preserving_clustered",
        "pcqat",
    ] {
        for layer in leaf(name)["layers"].as_array().unwrap() {
            let u = layer["unique_per_channel_max"].as_u64().unwrap_or(0);
            assert!(u <= 16, "{name} {}: {u}", layer["name"]);
        }
    }
    // The table's numbers are what `collab eval` and `collab inspect` say about the files.
    for name in ["baseline", "pcqat"] {
        let file = out.join(leaf(name)["tflite"].as_str().unwrap());
        let (code, stdout, err) = collab(&["eval", "--model", file.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let eval: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(eval["accuracy"], leaf(name)["int8_accuracy"]);
        assert_eq!(eval["samples"], leaf(name)["samples"]);
        let (code, stdout, err) = collab(&["inspect", file.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{err}");
        let inspect: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(inspect["bytes"], leaf(name)["bytes"]);
        assert_eq!(inspect["gzip_bytes"], leaf(name)["gzip_bytes"]);
    }
    assert!(out.join("results.json").is_file() && out.join("table.md").is_file());
    // One stage from a tree node: QAT of the pruned checkpoint is PQAT (its lineage says so).
    let single = dir.path().join("single");
    let (code, stdout, err) = collab(&[
        "qat",
        "--checkpoint",
        out.join("pruned").to_str().unwrap(),
        "--out",
        single.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let single: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let qat = &single.as_array().unwrap()[1];
    assert_eq!(qat["stage"], "qat");
    for layer in qat["layers"].as_array().unwrap() {
        let z = layer["zero_fraction"].as_f64().unwrap();
        assert!(z >= 0.495, "single-stage PQAT {}: {z}", layer["name"]);
    }
    // Every node was timed in our interpreter; with the tools, in XNNPACK and TFLite Micro too.
    let tools = std::env::var_os("COLLAB_REQUIRE_TOOLS").is_some();
    for l in leaves {
        let d = &l["device"];
        assert!(d["latency"]["median_ms"].as_f64().unwrap() > 0.0, "{d}");
        assert!(d["latency"]["runs"].as_u64().unwrap() >= 30, "{d}");
        assert_eq!(d["flash_bytes"], l["bytes"]);
        if tools {
            assert!(d["xnnpack_ms"].as_f64().unwrap() > 0.0, "{d}");
            // The arena holds at least the largest activation (DS-CNN-S: 64 × 25 × 5 int8).
            assert!(d["arena_bytes"].as_u64().unwrap() >= 64 * 25 * 5, "{d}");
        }
    }
    // Targets: walked level by level (baseline; pruned, qat, clustered; …), the tree stops at
    // the first node small enough: `pruned` meets its own gzip size, the baseline does not, and
    // the walk says so. The finished nodes are reused and compiled for the NPU asked for.
    let target = leaf("pruned")["gzip_bytes"].as_u64().unwrap();
    let baseline_gzip = leaf("baseline")["gzip_bytes"].as_u64().unwrap();
    assert!(baseline_gzip > target);
    let mut args = vec![
        "tree".to_string(),
        "--config".into(),
        config.to_str().unwrap().into(),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--target-gzip".into(),
        target.to_string(),
        "--max-accuracy-drop".into(),
        "5".into(),
        "--target-latency-ms".into(),
        "1000".into(),
    ];
    if tools {
        args.extend(["--npu".into(), "ethos-u55-128".into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, err) = collab(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        stdout.contains("targets met by: baseline → pruned"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "baseline: rejected (gzip {baseline_gzip} bytes > {target})"
        )) && stdout.contains("pruned: meets every target"),
        "{stdout}"
    );
    if tools {
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
        for l in results["leaves"].as_array().unwrap() {
            let npu = &l["device"]["npu"];
            assert_eq!(npu["accelerator"], "ethos-u55-128", "{}", l["stage"]);
            assert!(npu["inference_ms"].as_f64().unwrap() > 0.0, "{npu}");
            assert_eq!(npu["npu_ops_percent"], 100.0, "{npu}");
        }
        let table = std::fs::read_to_string(out.join("table.md")).unwrap();
        assert!(
            table.contains("Vela's estimates for ethos-u55-128"),
            "{table}"
        );
    }
    // A second run reuses every finished node and reports the same numbers.
    let again = run();
    for (a, b) in leaves.iter().zip(again.as_array().unwrap()) {
        assert_eq!(a["int8_accuracy"], b["int8_accuracy"]);
        assert_eq!(a["gzip_bytes"], b["gzip_bytes"]);
    }
}

#[test]
fn bad_tree_configs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "model = \"ds-cnn-s\"\n[finetune]\nepochs = 1\n[[stage]]\nname = \"pqat\"\nparent = \"pruned\"\nkind = \"qat\"\n",
    )
    .unwrap();
    let (code, _, err) = collab(&[
        "tree",
        "--config",
        bad.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 6: [[stage]] #1 (`pqat`) starts from `pruned`, which is neither"),
        "{err}"
    );
    std::fs::write(&bad, "model = 3").unwrap();
    let (code, _, err) = collab(&["tree", "--config", bad.to_str().unwrap(), "--out", "x"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("line 1: `model` at the top level must be a string"),
        "{err}"
    );
}

#[test]
fn channel_scaled_clusters_give_every_file_at_most_k_codes_per_tensor() {
    // Per-channel clustering gives each channel k int8 codes of its own; channel-scaled
    // clustering gives every channel the same k, through CQAT and export.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cs.toml");
    std::fs::write(
        &config,
        r#"model = "ds-cnn-s"
seed = 0
baseline_epochs = 8
augment = false
calibration_samples = 50
synthetic_train = 600
synthetic_val = 100
latency_seconds = 0.01

[finetune]
epochs = 1
batch_size = 50
learning_rate = 5e-4

[[stage]]
name = "per_channel"
parent = "baseline"
kind = "cluster"
clusters = 8
per_channel = true

[[stage]]
name = "channel_scaled"
parent = "baseline"
kind = "cluster"
clusters = 8
channel_scaled = true

[[stage]]
name = "cqat_channel_scaled"
parent = "channel_scaled"
kind = "qat"
"#,
    )
    .unwrap();
    let leaves = tree_json(&config, &dir.path().join("out"));
    let leaf = |name: &str| {
        leaves
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["stage"] == name)
            .unwrap()
            .clone()
    };
    let most = |name: &str| {
        leaf(name)["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["unique"].as_u64().unwrap())
            .max()
            .unwrap()
    };
    assert!(
        most("per_channel") > 8,
        "per-channel codes differ by channel"
    );
    for name in ["channel_scaled", "cqat_channel_scaled"] {
        assert!(most(name) <= 8, "{name}: {} codes in a tensor", most(name));
        let l = leaf(name);
        // Well above chance (1/12): the clustered model still classifies.
        assert!(l["int8_accuracy"].as_f64().unwrap() > 0.5, "{l}");
        if std::env::var_os("COLLAB_REQUIRE_TOOLS").is_some() {
            let v = &l["verified"]["max_lsb"];
            assert_eq!(v["litert_ref"], 0.0, "{name}: {v}");
            assert_eq!(v["tflm"], 0.0, "{name}: {v}");
        }
    }
    // Same k, far smaller file once compressed.
    assert!(
        leaf("channel_scaled")["gzip_bytes"].as_u64() < leaf("per_channel")["gzip_bytes"].as_u64()
    );
}
