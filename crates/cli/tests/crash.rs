//! Crash safety of `collab tree`: the process is aborted right after every durable step of a
//! small tree in turn (`COLLAB_FAULT_AT`, see `collab::fault`), rerun each time, and the tree it
//! ends with must equal an uninterrupted run's: the same accuracies, sizes and `.tflite` bytes
//! for every node. Also: deleting one node of a finished tree and rerunning rebuilds it bit
//! for bit.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

/// A five-node tree on a tiny synthetic set: seconds per run.
const CONFIG: &str = r#"
model = "ds-cnn-s"
seed = 3
baseline_epochs = 1
augment = false
calibration_samples = 20
synthetic_train = 100
synthetic_val = 40
latency_seconds = 0.01

[finetune]
epochs = 1
batch_size = 50
learning_rate = 5e-4

[[stage]]
name = "pruned"
parent = "baseline"
kind = "prune"
sparsity = 0.5
frequency = 1

[[stage]]
name = "pqat"
parent = "pruned"
kind = "qat"

[[stage]]
name = "spc"
parent = "pruned"
kind = "cluster"
clusters = 8
preserve_sparsity = true

[[stage]]
name = "pcqat"
parent = "spc"
kind = "qat"
"#;

const NODES: [&str; 5] = ["baseline", "pruned", "pqat", "spc", "pcqat"];

/// `collab tree` into `out`, with `COLLAB_FAULT_AT` set when `fault` is given.
fn tree(config: &Path, out: &Path, fault: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_collab"));
    cmd.args(["tree", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--json");
    match fault {
        Some(at) => cmd.env("COLLAB_FAULT_AT", at),
        None => cmd.env_remove("COLLAB_FAULT_AT"),
    };
    let o = cmd.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What must be identical between two runs: every leaf without its wall time and latencies
/// (measured on a busy machine; the arena and the other figures stay), and the bytes of every
/// node's int8 file (compared as a 64-bit FNV-1a hash, so a failure prints short).
fn outcome(out: &Path) -> (serde_json::Value, Vec<(&'static str, u64)>) {
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let mut results: serde_json::Value = serde_json::from_str(&text).unwrap();
    for leaf in results["leaves"].as_array_mut().unwrap() {
        leaf.as_object_mut().unwrap().remove("seconds");
        let device = leaf["device"]
            .as_object_mut()
            .expect("every node is measured");
        device.remove("latency");
        device.remove("xnnpack_ms");
    }
    let files = NODES
        .iter()
        .map(|n| {
            let bytes = std::fs::read(out.join(n).join("model.tflite")).unwrap();
            let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
            });
            (*n, hash)
        })
        .collect();
    (results["leaves"].clone(), files)
}

/// No temporary file or folder is left anywhere below `dir` (the lock file aside).
fn leftovers(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !(name.starts_with('.') && name != ".collab.lock"),
                "leftover {}",
                path.display()
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
}

fn config_file(dir: &Path) -> PathBuf {
    let path = dir.join("crash.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path
}

#[test]
fn a_tree_killed_after_any_durable_step_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path());
    let clean = dir.path().join("clean");
    let (code, err) = tree(&config, &clean, None);
    assert_eq!(code, 0, "{err}");
    let expected = outcome(&clean);

    // How many durable steps an uninterrupted run takes.
    let listed = dir.path().join("listed");
    let (code, err) = tree(&config, &listed, Some("list"));
    assert_eq!(code, 0, "{err}");
    let points = err.matches("fault point ").count();
    assert!(
        points >= 2 * NODES.len(),
        "only {points} fault points:\n{err}"
    );
    assert_eq!(outcome(&listed), expected, "listing changed the result");

    // Abort after each durable step in turn, in a fresh folder each time; for every other step
    // the rerun is aborted too, after its own first durable step (a crash during recovery);
    // then a plain rerun must end with the uninterrupted run's tree.
    for at in 1..=points {
        let crashed = dir.path().join(format!("crashed-{at}"));
        let mut faults = vec![at.to_string()];
        if at % 2 == 1 {
            faults.push("1".into());
        }
        for fault in &faults {
            let (code, err) = tree(&config, &crashed, Some(fault));
            assert_ne!(code, 0, "no crash at point {fault} (first crash at {at})");
            assert!(
                err.contains(&format!("fault injection: aborting after point {fault} ")),
                "crash at {at}: failed without the injected fault:\n{err}"
            );
        }
        let (code, err) = tree(&config, &crashed, None);
        assert_eq!(code, 0, "rerun after a crash at point {at}: {err}");
        assert_eq!(outcome(&crashed), expected, "after a crash at point {at}");
        leftovers(&crashed);
        if at > 1 {
            std::fs::remove_dir_all(&crashed).unwrap();
        }
    }
    // Deleting one node of a finished tree rebuilds exactly that node, bit for bit.
    std::fs::remove_dir_all(clean.join("pqat")).unwrap();
    let (code, err) = tree(&config, &clean, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.matches("reusing finished stage").count() == NODES.len() - 1,
        "{err}"
    );
    assert_eq!(outcome(&clean), expected);
    let _ = common::collab;
}
