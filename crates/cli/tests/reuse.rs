//! When `collab tree` may reuse a node on disk, and one run per output folder: a node is
//! reused only when everything that made it is the same, a changed setting, parent, data or
//! start checkpoint rebuilds it (and what is below it), a damaged file is rebuilt, and a second
//! run into a folder in use is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::collab;

fn config(dir: &Path, name: &str, sparsity: f64, lr: f64, extra: &str) -> PathBuf {
    let text = format!(
        r#"model = "ds-cnn-s"
seed = 1
baseline_epochs = 1
augment = false
calibration_samples = 20
synthetic_train = 100
synthetic_val = 40
{extra}
[finetune]
epochs = 1
batch_size = 50
learning_rate = {lr}

[[stage]]
name = "pruned"
parent = "baseline"
kind = "prune"
sparsity = {sparsity}
frequency = 1

[[stage]]
name = "pqat"
parent = "pruned"
kind = "qat"
"#
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn tree(config: &Path, out: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec![
        "tree",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, err) = collab(&args);
    assert_eq!(code, 0, "{err}");
    (serde_json::from_str(&stdout).unwrap(), err)
}

fn leaf<'a>(leaves: &'a serde_json::Value, stage: &str) -> &'a serde_json::Value {
    leaves
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["stage"] == stage)
        .unwrap()
}

fn min_zeros(leaf: &serde_json::Value) -> f64 {
    leaf["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["zero_fraction"].as_f64().unwrap())
        .fold(1.0, f64::min)
}

#[test]
fn a_node_is_reused_only_when_what_made_it_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tree");
    let first = config(dir.path(), "a.toml", 0.5, 5e-4, "");
    let (leaves, err) = tree(&first, &out, &[]);
    assert!(min_zeros(leaf(&leaves, "pruned")) >= 0.495);
    assert_eq!(err.matches("reusing finished stage").count(), 0, "{err}");

    // Same config: everything reused, same numbers.
    let (again, err) = tree(&first, &out, &[]);
    assert_eq!(err.matches("reusing finished stage").count(), 3, "{err}");
    assert_eq!(
        leaf(&again, "pqat")["gzip_bytes"],
        leaf(&leaves, "pqat")["gzip_bytes"]
    );

    // Sparsity 0.5 → 0.8 and another learning rate: the baseline is reused, `pruned` and its
    // child are rebuilt (the old 0.5 node would fail the new target), and the log says why.
    let second = config(dir.path(), "b.toml", 0.8, 3e-4, "");
    let (changed, err) = tree(&second, &out, &[]);
    // The baseline's identity has no stage setting: it alone is reused.
    assert_eq!(err.matches("reusing finished stage").count(), 1, "{err}");
    assert!(err.contains("other settings"), "{err}");
    assert!(err.contains("sparsity"), "{err}");
    assert!(min_zeros(leaf(&changed, "pruned")) >= 0.795, "{changed}");
    assert!(min_zeros(leaf(&changed, "pqat")) >= 0.795, "{changed}");

    // Another data set (a different synthetic size): every node rebuilt, with the new samples.
    let third = config(dir.path(), "c.toml", 0.8, 3e-4, "")
        .to_str()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(&third)
        .unwrap()
        .replace("synthetic_val = 40", "synthetic_val = 30");
    std::fs::write(&third, text).unwrap();
    let (moved, err) = tree(Path::new(&third), &out, &[]);
    assert_eq!(err.matches("reusing finished stage").count(), 0, "{err}");
    assert!(err.contains("data"), "{err}");
    for l in moved.as_array().unwrap() {
        assert_eq!(l["samples"], 30, "{l}");
    }

    // A damaged int8 file of a finished node: rebuilt, not reported.
    std::fs::write(out.join("pqat/model.tflite"), b"").unwrap();
    let (_, err) = tree(Path::new(&third), &out, &[]);
    assert!(
        err.contains("pqat/model.tflite is missing or changed"),
        "{err}"
    );
    assert_eq!(err.matches("reusing finished stage").count(), 2, "{err}");
    assert!(
        std::fs::metadata(out.join("pqat/model.tflite"))
            .unwrap()
            .len()
            > 1000
    );

    // One stage from another checkpoint into the same folder: `qat --checkpoint OUT/pruned
    // --out OUT` must start from the pruned node, not reuse the tree's baseline.
    let (code, stdout, err) = collab(&[
        "qat",
        "--checkpoint",
        out.join("pruned").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let single: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(min_zeros(leaf(&single, "baseline")) >= 0.795, "{single}");
    assert!(min_zeros(leaf(&single, "qat")) >= 0.795, "{single}");
    // The pruned node it started from is untouched.
    assert!(out.join("pruned/leaf.json").is_file());
}

#[test]
fn a_second_run_into_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tree");
    // Enough work to still be running when the second one starts.
    let slow = config(dir.path(), "slow.toml", 0.5, 5e-4, "");
    let text = std::fs::read_to_string(&slow)
        .unwrap()
        .replace("baseline_epochs = 1", "baseline_epochs = 200");
    std::fs::write(&slow, text).unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_collab"))
        .args(["tree", "--config", slow.to_str().unwrap(), "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".collab.lock");
    let t = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with("pid")) {
        assert!(
            t.elapsed().as_secs() < 60,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, _, err) = collab(&[
        "tree",
        "--config",
        slow.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another collab run"), "{err}");
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
}

#[test]
fn a_plot_layer_that_does_not_exist_is_an_error_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tree");
    let bad = config(
        dir.path(),
        "p.toml",
        0.5,
        5e-4,
        "plot_layer = \"blocks.9.pw\"",
    );
    let (code, _, err) = collab(&[
        "tree",
        "--config",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("plot_layer = \"blocks.9.pw\""), "{err}");
    assert!(err.contains("blocks.3.pw"), "{err}");
    assert!(!out.exists(), "the tree started before the check");
}
