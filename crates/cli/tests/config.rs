//! `collab tree` with a stage name that is a path (issue #17 item 1): refused before anything is
//! written, every file around the output folder untouched byte for byte, no temporary folder
//! left behind.

use std::path::Path;

mod common;
use common::{collab, snapshot};

/// A tree that takes seconds if it runs at all (the old code ran it): no baseline training,
/// tiny synthetic data, one epoch.
const CONFIG: &str = r#"model = "ds-cnn-s"
baseline_epochs = 0
calibration_samples = 8
synthetic_train = 64
synthetic_val = 32

[finetune]
epochs = 1
batch_size = 32
"#;

/// Run the tree of CONFIG plus a stage named `name` into an existing `--out` that holds a
/// user's file, beside a folder `victim_dir` that holds another: refused, nothing changed.
#[track_caller]
fn refused_without_a_trace(name: impl Fn(&Path) -> String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let out = root.join("tree");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"a user's notes\n").unwrap();
    std::fs::create_dir(root.join("victim_dir")).unwrap();
    std::fs::write(root.join("victim_dir/keep.txt"), b"keep me\n").unwrap();
    let name = name(root);
    let config = root.join("c.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n[[stage]]\nname={name:?}\nparent=\"baseline\"\nkind=\"qat\"\n"),
    )
    .unwrap();
    let before = snapshot(root);
    let (code, _, err) = collab(&[
        "tree",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let after = snapshot(root);
    assert_ne!(code, 0, "name {name:?} accepted:\n{err}");
    assert!(
        before == after,
        "name {name:?} changed files: before {:?}, after {:?}",
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    // The message names the file, the line of the name, the stage and what is allowed.
    for part in [
        "c.toml",
        "line 12",
        "[[stage]] #1",
        &format!("the name {name:?}"),
        "ASCII letters, digits",
    ] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }
}

#[test]
fn empty_stage_name_leaves_the_output_folder_alone() {
    refused_without_a_trace(|_| String::new());
}

#[test]
fn relative_stage_name_leaves_the_sibling_folder_alone() {
    refused_without_a_trace(|_| "../victim_dir".into());
}

#[test]
fn absolute_stage_name_writes_nothing_outside() {
    refused_without_a_trace(|root| root.join("victim_dir").to_str().unwrap().to_string());
}

#[test]
fn dot_stage_name_leaves_no_temporary_folder() {
    refused_without_a_trace(|_| ".".into());
}
