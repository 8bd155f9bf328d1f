//! Ctrl-C during `collab train`: burn-train stops after the current step, the last full
//! epoch's checkpoint stays, and `--resume` ends the run exactly as an uninterrupted one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::collab;

const EPOCHS: &str = "8";

fn args(out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        EPOCHS,
        "--batch-size",
        "100",
        "--seed",
        "2",
        "--no-augment",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.to_str().unwrap().to_string()])
    .collect()
}

/// `metrics.csv` without the step times (wall clock): epoch, losses, accuracies, learning rate.
fn figures(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
}

/// `collab train ARGS` to the end.
fn train(args: &[String]) {
    let (code, _, err) = collab(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(
        !args.contains(&"--resume".to_string()) || err.contains("resuming"),
        "{err}"
    );
}

/// Start `collab train ARGS`, wait for its first epoch's complete checkpoint, send `signal`.
fn signalled(out: &Path, signal: &str) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_collab"))
        .args(args(out))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Epoch 1's checkpoint is complete once its three files are there (they are written one
    // after another; a kill before the last would leave nothing to resume).
    let complete = || {
        ["model", "optim", "scheduler"]
            .iter()
            .all(|k| out.join("checkpoint").join(format!("{k}-1.bpk")).exists())
    };
    let start = Instant::now();
    while !complete() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
#[test]
fn a_killed_run_resumes_from_its_last_checkpoint_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    train(&args(&full));
    let part = dir.path().join("part");
    let out = signalled(&part, "-KILL");
    assert!(!out.status.success());
    let mut r = args(&part);
    r.push("--resume".into());
    train(&r);
    assert_eq!(figures(&part), figures(&full));
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_training_and_resume_ends_as_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    train(&args(&full));
    let part = dir.path().join("part");
    let out = signalled(&part, "-INT");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(part.join("last").join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["metrics"]["interrupted"], true, "{manifest}");
    let done = manifest["epoch"].as_u64().unwrap();
    assert!(
        (1..8).contains(&done),
        "interrupted after epoch {done} of {EPOCHS}"
    );

    let mut r = args(&part);
    r.push("--resume".into());
    train(&r);
    assert_eq!(figures(&part), figures(&full));
    assert_eq!(figures(&full).len(), 9);
}
