//! `collab` never writes over what is not its own, refuses a checkpoint of an earlier run
//! without `--resume` / `--force`, checks its outputs before any work, and never reports a
//! degenerate run as a success (issue #17, items 3, 5, 6 and 11). Each data-loss case runs in
//! a temporary folder and checks that the files there are untouched, byte for byte.

mod common;
use common::{collab, snapshot};

use std::path::{Path, PathBuf};

use collab::ModelSpec;
use collab::checkpoint::{self, Manifest};

/// A freshly initialised checkpoint of `model` at `dir` (epoch `epoch`, no optimizer state).
fn save_checkpoint(dir: &Path, model: &str, epoch: usize) {
    let spec: ModelSpec = model.parse().unwrap();
    let net = spec.init(&collab::device::compute()).unwrap();
    let mut manifest = Manifest::new(spec, "baseline", 0);
    manifest.epoch = epoch;
    checkpoint::save(dir, &net, &manifest, None).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 16 kHz PCM WAV file of `frames` frames (a quiet ramp), written byte by byte.
fn wav(path: &Path, channels: u16, bits: u16, frames: usize) {
    let width = (bits / 8) as usize;
    let len = frames * channels as usize * width;
    let mut b = Vec::with_capacity(44 + len);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + len as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&(16_000 * channels as u32 * width as u32).to_le_bytes());
    b.extend_from_slice(&(channels * width as u16).to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(len as u32).to_le_bytes());
    for i in 0..frames * channels as usize {
        let v = ((i % 64) as i32 - 32) * 64; // 16-bit scale
        match width {
            1 => b.push((128 + v / 256) as u8),
            2 => b.extend_from_slice(&(v as i16).to_le_bytes()),
            3 => b.extend_from_slice(&(v * 256).to_le_bytes()[..3]),
            _ => unreachable!(),
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b).unwrap();
}

/// A speaker name whose clips all fall in the training split (sha1 bucket not 0).
fn training_speaker() -> String {
    (0..)
        .map(|i| format!("spk{i:04}"))
        .find(|s| collab_data::val_bucket(s) != 0)
        .unwrap()
}

/// A Speech Commands folder (standard layout) with a few clips of one training speaker.
fn one_speaker_folder(root: &Path) -> PathBuf {
    let data = root.join("speech");
    let speaker = training_speaker();
    for (word, k) in [("yes", 0), ("no", 1), ("up", 2), ("yes", 3)] {
        wav(
            &data.join(word).join(format!("{speaker}_nohash_{k}.wav")),
            1,
            16,
            16_000,
        );
    }
    data
}

#[test]
fn import_refuses_a_file_and_an_earlier_checkpoint_without_force() {
    let shared = collab_data::shared::require_shared();
    let weights = shared.join("pretrained/ml-kws-for-mcu/ds_cnn_s.safetensors");
    let dir = tempfile::tempdir().unwrap();
    // A user's file: refused with a clear message, its bytes and its folder untouched.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"a user's notes").unwrap();
    let before = snapshot(dir.path());
    let import = |out: &Path, force: bool| {
        let mut args = vec![
            "import",
            "--model",
            "ds-cnn-s",
            "--weights",
            s(&weights),
            "--out",
            s(out),
        ];
        if force {
            args.push("--force");
        }
        collab(&args)
    };
    let (code, _, err) = import(&file, false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not a folder"),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
    let entries = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(entries, 1, "no hidden copy of the file is left beside it");
    // A checkpoint of an earlier run: refused without --force, replaced with it.
    let ck = dir.path().join("ck");
    let (code, _, err) = import(&ck, false);
    assert_eq!(code, 0, "{err}");
    std::fs::write(ck.join("marker"), b"earlier run").unwrap();
    let before = snapshot(dir.path());
    let (code, _, err) = import(&ck, false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force") && err.contains("ds-cnn-s"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
    let (code, _, err) = import(&ck, true);
    assert_eq!(code, 0, "{err}");
    assert!(
        !ck.join("marker").exists(),
        "--force replaces the checkpoint"
    );
    assert!(ck.join(checkpoint::MANIFEST).is_file());
    assert_eq!(std::fs::read(&file).unwrap(), b"a user's notes");
}

#[test]
fn train_refuses_an_earlier_checkpoint_a_file_and_a_foreign_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    save_checkpoint(&out, "ds-cnn-s", 3);
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"a user's notes").unwrap();
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"not a checkpoint").unwrap();
    let before = snapshot(dir.path());
    let train = |out: &Path| {
        collab(&[
            "train",
            "--model",
            "ds-cnn-s",
            "--epochs",
            "1",
            "--out",
            s(out),
        ])
    };
    let (code, _, err) = train(&out);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    assert!(
        !err.contains("epoch done"),
        "refused before training: {err}"
    );
    let (code, _, err) = train(&file);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not a folder"),
        "{err}"
    );
    assert!(!err.contains("os error 17"), "{err}");
    let (code, _, err) = train(&foreign);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("photos") && err.contains("no checkpoint"),
        "{err}"
    );
    assert_eq!(snapshot(dir.path()), before, "nothing was touched");
}

#[test]
fn resuming_another_model_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    save_checkpoint(&out, "ds-cnn-m", 1);
    save_checkpoint(&out.join("last"), "ds-cnn-m", 1);
    let before = snapshot(dir.path());
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "2",
        "--resume",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("ds-cnn-m") && err.contains("ds-cnn-s"),
        "{err}"
    );
    assert!(
        !err.contains("loading data"),
        "refused before loading data: {err}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn resuming_without_optimizer_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    save_checkpoint(&out, "ds-cnn-s", 1);
    save_checkpoint(&out.join("last"), "ds-cnn-s", 1);
    let before = snapshot(dir.path());
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "2",
        "--resume",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("optimizer state") && err.contains("missing") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_second_train_into_a_locked_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let _held = collab::lock::OutLock::acquire(&out).unwrap();
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another collab run"), "{err}");
    assert!(!err.contains("epoch done"), "{err}");
    assert!(!out.join(checkpoint::MANIFEST).exists());
}

#[test]
fn train_finds_an_unwritable_out_before_the_first_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "1",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("plain-file"), "{err}");
    assert!(
        !err.contains("epoch done"),
        "checked before training: {err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

#[test]
fn nan_learning_rate_is_rejected_before_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--lr",
        "nan",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--lr") && err.contains("> 0"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_nan_loss_stops_training_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--no-augment",
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("diverged at epoch 1, step")
            && err.contains("learning rate")
            && err.contains("--lr"),
        "{err}"
    );
    assert!(
        !out.join(checkpoint::MANIFEST).exists(),
        "no NaN best model"
    );
    assert!(!out.join("last").exists(), "no NaN last checkpoint");
}

#[test]
fn an_empty_validation_split_is_an_error_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = one_speaker_folder(dir.path());
    let out = dir.path().join("run");
    let (code, _, err) = collab(&[
        "train",
        "--model",
        "ds-cnn-s",
        "--epochs",
        "1",
        "--data",
        s(&data),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("validation split has no clips") && err.contains("speaker"),
        "{err}"
    );
    assert!(!err.contains("epoch done"), "{err}");
    assert!(!out.join(checkpoint::MANIFEST).exists(), "no best model");
    assert!(
        !out.exists(),
        "the run leaves no empty output folder behind"
    );
    // Evaluating a checkpoint there says so too instead of reporting 0 %.
    let ck = dir.path().join("ck");
    save_checkpoint(&ck, "ds-cnn-s", 1);
    let (code, out, err) = collab(&["eval", "--checkpoint", s(&ck), "--data", s(&data)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("validation split has no clips"), "{err}");
}

#[test]
fn converted_wav_files_are_counted_once_per_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = one_speaker_folder(dir.path());
    let speaker = training_speaker();
    wav(
        &data.join("no").join(format!("{speaker}_nohash_7.wav")),
        2,
        16,
        8_000,
    );
    wav(
        &data.join("go").join(format!("{speaker}_nohash_8.wav")),
        1,
        24,
        8_000,
    );
    wav(
        &data.join("go").join(format!("{speaker}_nohash_9.wav")),
        1,
        8,
        8_000,
    );
    wav(
        &data.join("on").join(format!("{speaker}_nohash_5.wav")),
        1,
        16,
        20_000,
    );
    wav(
        &data.join("on").join(format!("{speaker}_nohash_6.wav")),
        2,
        16,
        24_000,
    );
    let ck = dir.path().join("ck");
    save_checkpoint(&ck, "ds-cnn-s", 1);
    let (code, out, err) = collab(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--data",
        s(&data),
        "--all",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["samples"], 9, "every clip is still evaluated");
    for note in [
        "2 WAV files stereo",
        "1 WAV file 8-bit",
        "1 WAV file 24-bit",
        "2 WAV files longer than 1 s",
    ] {
        assert!(err.contains(note), "{note}: {err}");
    }
    assert_eq!(err.matches("WAV file").count(), 4, "one warning: {err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("WAV file")).count(),
        1,
        "{err}"
    );
}

#[test]
fn export_checks_its_out_before_calibrating() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    save_checkpoint(&ck, "ds-cnn-s", 1);
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, b"a user's notes").unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    let before = snapshot(dir.path());
    let export = |out: &Path, force: bool| {
        let mut args = vec![
            "export",
            "--checkpoint",
            s(&ck),
            "--calibration-samples",
            "4",
            "--out",
            s(out),
        ];
        if force {
            args.push("--force");
        }
        collab(&args)
    };
    let missing = dir.path().join("nodir");
    let (code, _, err) = export(&missing.join("m.tflite"), false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("nodir") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        !err.contains("calibrating"),
        "checked before calibrating: {err}"
    );
    let (code, _, err) = export(&notes, false);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("notes.txt") && err.contains("not a .tflite") && err.contains("--force"),
        "{err}"
    );
    assert!(!err.contains("calibrating"), "{err}");
    let (code, _, err) = export(&folder, false);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is a folder"), "{err}");
    assert_eq!(snapshot(dir.path()), before, "nothing was touched");
    // --force writes over the file; an existing .tflite needs no --force.
    let (code, _, err) = export(&notes, true);
    assert_eq!(code, 0, "{err}");
    assert_eq!(&std::fs::read(&notes).unwrap()[4..8], b"TFL3");
    let (code, _, err) = export(&notes, false);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_float_tflite_given_to_eval_says_int8_only() {
    let shared = collab_data::shared::require_shared();
    let float = [
        "models/mlperf_tiny/kws_ref_model_float32.tflite",
        "models/mlperf_tiny/ad01_fp32.tflite",
    ]
    .iter()
    .map(|p| shared.join(p))
    .find(|p| p.is_file())
    .expect("a float .tflite in ../shared/models/mlperf_tiny");
    let (code, _, err) = collab(&["eval", "--model", s(&float)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("float model")
            && err.contains("int8")
            && err.contains("not supported")
            && err.contains("collab export"),
        "{err}"
    );
}
