//! Usage errors exit 2 (README: "0 success, 1 failure, 2 usage") before any work, and the
//! message names the option and what it accepts (issue #17, items 5 and 10).

mod common;
use common::collab;

use std::path::Path;

/// `(arguments, what stderr must contain)`: each a usage error. Outputs go under `out` (a
/// temporary folder) and `train` reads a missing data folder, so that a build which misses a
/// check fails at once instead of training or writing anywhere.
fn cases(out: &'static str) -> Vec<(Vec<&'static str>, Vec<&'static str>)> {
    let info = |extra: &[&'static str]| {
        let mut a = vec!["info", "--model", "ds-cnn-s"];
        a.extend_from_slice(extra);
        a
    };
    let train = |extra: &[&'static str]| {
        let mut a = vec![
            "train",
            "--model",
            "ds-cnn-s",
            "--data",
            "/nonexistent/data",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        a
    };
    let stage = |cmd: &'static str, extra: &[&'static str]| {
        let mut a = vec![cmd, "--checkpoint", "/nonexistent/c", "--out", out];
        a.extend_from_slice(extra);
        a
    };
    let export = |extra: &[&'static str]| {
        let mut a = vec![
            "export",
            "--checkpoint",
            "/nonexistent/c",
            "--out",
            "/nonexistent/x.tflite",
        ];
        a.extend_from_slice(extra);
        a
    };
    let bench_train = |extra: &[&'static str]| {
        let mut a = vec!["bench", "train", "--model", "ds-cnn-s"];
        a.extend_from_slice(extra);
        a
    };
    let bench_infer = |extra: &[&'static str]| {
        let mut a = vec!["bench", "infer", "--model", "/nonexistent/x.tflite"];
        a.extend_from_slice(extra);
        a
    };
    let tree = |extra: &[&'static str]| {
        let mut a = vec!["tree", "--config", "/nonexistent/c.toml", "--out", out];
        a.extend_from_slice(extra);
        a
    };
    vec![
        // Choices.
        (info(&["--device", "tpu"]), vec!["--device", "cpu", "wgpu"]),
        (
            vec!["info", "--model", "resnet9000"],
            vec![
                "--model",
                "resnet9000",
                "ds-cnn-s",
                "ds-cnn-l",
                "mobilenet-v2-cifar",
            ],
        ),
        (
            bench_infer(&["--kernels", "gpu"]),
            vec!["--kernels", "best", "avx2", "portable", "sparse"],
        ),
        (
            bench_train(&["--bn", "foo"]),
            vec!["--bn", "folded", "batch"],
        ),
        (
            bench_train(&["--wrap", "foo"]),
            vec!["--wrap", "none", "prune", "cluster", "qat", "pcqat"],
        ),
        (
            train(&["--init", "foo"]),
            vec!["--init", "pretrained", "scratch"],
        ),
        (
            vec![
                "import",
                "/nonexistent/m.onnx",
                "--pixels",
                "foo",
                "--out",
                out,
            ],
            vec!["--pixels", "raw", "unit"],
        ),
        (
            vec![
                "import",
                "/nonexistent/m.onnx",
                "--mfcc",
                "foo",
                "--out",
                out,
            ],
            vec!["--mfcc", "ml-kws", "tf-signal"],
        ),
        // An unknown NPU is refused before the file is read or the tree config opened.
        (
            vec!["inspect", "/nonexistent/x.tflite", "--npu", "ethos-u55-100"],
            vec!["--npu", "ethos-u55-32", "ethos-u65-256", "ethos-u85-2048"],
        ),
        (
            tree(&["--npu", "foo"]),
            vec!["--npu", "ethos-u55-32", "ethos-u65-256", "ethos-u85-2048"],
        ),
        // Ranges.
        (
            export(&["--percentile", "20"]),
            vec!["--percentile", "(50, 100]"],
        ),
        (
            export(&["--percentile", "nan"]),
            vec!["--percentile", "(50, 100]"],
        ),
        (
            export(&["--calibration-samples", "0"]),
            vec!["--calibration-samples", "at least 1"],
        ),
        (
            stage("prune", &["--sparsity", "1.5"]),
            vec!["--sparsity", "[0, 1)"],
        ),
        (
            stage("prune", &["--sparsity", "1"]),
            vec!["--sparsity", "[0, 1)"],
        ),
        (
            stage("cluster", &["--clusters", "1"]),
            vec!["--clusters", "2..=256"],
        ),
        (
            stage("cluster", &["--clusters", "300"]),
            vec!["--clusters", "2..=256"],
        ),
        (
            stage("qat", &["--epochs", "0"]),
            vec!["--epochs", "1..=10000"],
        ),
        (stage("qat", &["--lr", "-1e-4"]), vec!["--lr", "> 0"]),
        (train(&["--epochs", "0"]), vec!["--epochs", "1..=10000"]),
        (
            train(&["--epochs", "1000000000000"]),
            vec!["--epochs", "1..=10000"],
        ),
        (
            train(&["--batch-size", "0"]),
            vec!["--batch-size", "at least 1"],
        ),
        (train(&["--lr", "nan"]), vec!["--lr", "> 0"]),
        (train(&["--lr", "inf"]), vec!["--lr", "> 0"]),
        (train(&["--lr", "-0.1"]), vec!["--lr", "> 0"]),
        (train(&["--lr", "0"]), vec!["--lr", "> 0"]),
        (train(&["--devices", "0"]), vec!["--devices", "1..=1024"]),
        (info(&["-v", "--quiet"]), vec!["--quiet", "--verbose"]),
        (
            stage("prune", &["--devices", "-2"]),
            vec!["--devices", "1..=1024"],
        ),
        (train(&["--epochs", "-3"]), vec!["--epochs", "1..=10000"]),
        (
            train(&["--batch-size", "-1"]),
            vec!["--batch-size", "at least 1"],
        ),
        (train(&["--width", "0"]), vec!["--width", "(0, 4]"]),
        (info(&["--width", "0"]), vec!["--width", "(0, 4]"]),
        (info(&["--width", "nan"]), vec!["--width", "(0, 4]"]),
        (info(&["--width", "5"]), vec!["--width", "(0, 4]"]),
        (
            bench_train(&["--steps", "0"]),
            vec!["--steps", "at least 1"],
        ),
        (
            bench_train(&["--batch-size", "0"]),
            vec!["--batch-size", "at least 1"],
        ),
        (bench_infer(&["--runs", "0"]), vec!["--runs", "at least 1"]),
        (
            bench_infer(&["--threads", "4"]),
            vec!["--threads", "one thread"],
        ),
        (
            tree(&["--max-accuracy-drop", "-1"]),
            vec!["--max-accuracy-drop", ">= 0"],
        ),
        (
            tree(&["--max-accuracy-drop", "nan"]),
            vec!["--max-accuracy-drop", ">= 0"],
        ),
        (tree(&["--target-size", "-5"]), vec!["--target-size"]),
        // Options that do not fit together.
        (
            vec!["eval", "--model", "/nonexistent/x.tflite", "--all"],
            vec!["--data"],
        ),
        (vec!["eval", "--json"], vec!["--checkpoint"]),
        (train(&["--init", "pretrained"]), vec!["--weights"]),
        (
            vec![
                "train",
                "--model",
                "mobilenet-v1-cifar",
                "--init",
                "pretrained",
                "--weights",
                "/nonexistent/w.safetensors",
                "--data",
                "/nonexistent/data",
                "--out",
                out,
            ],
            vec!["--init pretrained", "DS-CNN", "mobilenet-v1"],
        ),
        (
            train(&["--weights", "/nonexistent/w.safetensors"]),
            vec!["--weights", "--init pretrained"],
        ),
        (train(&["--resume", "--force"]), vec!["--resume", "--force"]),
        (
            vec![
                "import",
                "--model",
                "mobilenet-v1",
                "--weights",
                "/nonexistent/w",
                "--out",
                out,
            ],
            vec!["--model mobilenet-v1", "DS-CNN"],
        ),
        (info(&["--width", "0.5"]), vec!["--width 0.5", "ds-cnn-s"]),
    ]
}

#[test]
fn every_usage_error_exits_2_naming_the_option_and_what_it_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out: &'static str = dir.path().join("out").to_str().unwrap().to_string().leak();
    let mut wrong = Vec::new();
    for (args, needles) in cases(out) {
        let (code, _, err) = collab(&args);
        let missing: Vec<_> = needles.iter().filter(|n| !err.contains(*n)).collect();
        if code != 2 || !missing.is_empty() {
            wrong.push(format!(
                "collab {}: exit {code}, missing {missing:?} in:\n{err}",
                args.join(" ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));
    assert!(!Path::new(out).exists(), "no usage error writes anything");
}

#[test]
fn failures_that_are_not_usage_errors_still_exit_1() {
    // A library error that is no usage error (a missing checkpoint, an unreadable model).
    let (code, _, err) = collab(&["eval", "--checkpoint", "/nonexistent/c"]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) = collab(&["bench", "infer", "--model", "/nonexistent/x.tflite"]);
    assert_eq!(code, 1, "{err}");
    // Model aliases the parser accepts through ModelSpec's FromStr, not only the listed names.
    let (code, _, err) = collab(&["info", "--model", "DS_CNN_S", "--json"]);
    assert_eq!(code, 0, "{err}");
}

/// `(subcommand, option, its choices as `-h` lists them)`: the spellings scripts and docs use.
const CHOICES: &[(&[&str], &str, &str)] = &[
    (&["info"], "--device", "cpu, wgpu"),
    (
        &["info"],
        "--model",
        "ds-cnn-s, ds-cnn-m, ds-cnn-l, mobilenet-v1, mobilenet-v1-cifar, mobilenet-v2, \
         mobilenet-v2-cifar",
    ),
    (&["train"], "--init", "pretrained, scratch"),
    (&["import"], "--pixels", "raw, unit"),
    (&["import"], "--mfcc", "ml-kws, tf-signal"),
    (
        &["bench", "train"],
        "--wrap",
        "none, prune, cluster, qat, pcqat",
    ),
    (&["bench", "train"], "--bn", "folded, batch"),
    (
        &["bench", "infer"],
        "--kernels",
        "best, avx2, portable, sparse",
    ),
    (
        &["tree"],
        "--npu",
        "ethos-u55-32, ethos-u55-64, ethos-u55-128, ethos-u55-256, ethos-u65-256, \
         ethos-u65-512, ethos-u85-128, ethos-u85-256, ethos-u85-512, ethos-u85-1024, \
         ethos-u85-2048",
    ),
    (&["inspect"], "--npu", "ethos-u55-32, ethos-u55-64"),
];

#[test]
fn help_lists_the_choices_of_every_option_that_takes_one() {
    let mut wrong = Vec::new();
    for (command, option, choices) in CHOICES {
        let mut args = command.to_vec();
        args.push("-h");
        let (code, help, err) = collab(&args);
        // The option's entry: its line and, where clap puts the help below it, the lines up
        // to the next option.
        let entry: String = help
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(&format!("{option} <")))
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
            .map(|(_, l)| l)
            .collect();
        if code != 0 || !entry.contains(&format!("[possible values: {choices}")) {
            wrong.push(format!(
                "collab {}: exit {code}, {option}'s entry {entry:?} does not list {choices}\n{err}",
                args.join(" ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));
}
