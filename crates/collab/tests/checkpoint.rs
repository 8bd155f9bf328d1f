//! Checkpoint integrity and crash safety (issue #17, items 3, 6 and 9): checksums verified on
//! load, manifest formats, a missing optimizer state, `save` refusing to replace what is not a
//! checkpoint, leftovers of crashed saves, and random damage never loading as a model.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::OptimizerRecord;
use burn::tensor::Tensor;
use collab::checkpoint::{self, Existing, Manifest};
use collab::{ModelSpec, Network};
use proptest::prelude::*;

fn spec() -> ModelSpec {
    "ds-cnn-s".parse().unwrap()
}

fn model() -> Network {
    spec().init(&collab::device::compute()).unwrap()
}

/// Every float the model holds (parameters and BatchNorm running statistics), as bits, in
/// module order: equal values, same model. (Record bytes would also hold the parameter ids,
/// which a loaded module does not keep.)
fn weights(network: &Network) -> Vec<u32> {
    struct Floats(Vec<u32>);
    impl ModuleVisitor for Floats {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let values = param.val().into_data().try_to_vec::<f32>().unwrap();
            self.0.extend(values.iter().map(|v| v.to_bits()));
        }
    }
    let mut floats = Floats(Vec::new());
    network.visit(&mut floats);
    assert!(floats.0.len() > 1000, "{} floats", floats.0.len());
    floats.0
}

fn manifest() -> Manifest {
    let mut m = Manifest::new(spec(), "baseline", 7);
    m.epoch = 3;
    m.metrics = serde_json::json!({ "val_accuracy": 0.898 });
    m
}

/// A checkpoint at `parent/ck` (with an optimizer state when `optimizer`), and its model's
/// record bytes.
fn saved(parent: &Path, optimizer: bool) -> (PathBuf, Vec<u32>) {
    let dir = parent.join("ck");
    let network = model();
    let optimizer = optimizer.then(OptimizerRecord::default);
    checkpoint::save(&dir, &network, &manifest(), optimizer).unwrap();
    (dir, weights(&network))
}

fn load_err(dir: &Path) -> String {
    match checkpoint::load(dir, &collab::device::compute()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Every entry of `dir` with its bytes (files) or type (others), recursively, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            let content = if kind.is_file() {
                std::fs::read(&path).unwrap()
            } else if kind.is_dir() {
                stack.push(path.clone());
                b"<dir>".to_vec()
            } else {
                format!("<{kind:?}>").into_bytes()
            };
            out.push((path, content));
        }
    }
    out.sort();
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(checkpoint::MANIFEST);
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

#[test]
fn a_flipped_or_truncated_record_is_a_checksum_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, original) = saved(tmp.path(), true);
    let m = checkpoint::manifest(&dir).unwrap();
    assert_eq!(m.format, checkpoint::FORMAT);
    assert_eq!(m.files.len(), 2, "{:?}", m.files);
    let (net, loaded) = checkpoint::load(&dir, &collab::device::compute()).unwrap();
    assert_eq!(weights(&net), original);
    assert_eq!(loaded.seed, 7);
    assert!(checkpoint::load_optimizer(&dir).unwrap().is_some());

    // One bit of one weight (the last bytes of the record are tensor data).
    let record = dir.join(checkpoint::RECORD);
    let good = std::fs::read(&record).unwrap();
    let mut bad = good.clone();
    let at = bad.len() - 9;
    bad[at] ^= 0x10;
    std::fs::write(&record, &bad).unwrap();
    let err = load_err(&dir);
    for part in [
        "model.bpk",
        "checksum mismatch",
        &m.files["model.bpk"].sha256,
        &checkpoint::FileDigest::of(&bad).sha256,
        "changed or damaged after it was written",
    ] {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }

    // Truncated.
    std::fs::write(&record, &good[..good.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model.bpk")
            && err.contains("checksum mismatch")
            && err.contains(&format!("{} bytes", good.len() / 2)),
        "{err}"
    );
    std::fs::write(&record, &good).unwrap();
    checkpoint::load(&dir, &collab::device::compute()).unwrap();

    // The optimizer state is verified too.
    let opt = dir.join(checkpoint::OPTIMIZER);
    let mut state = std::fs::read(&opt).unwrap();
    let last = state.len() - 1;
    state[last] ^= 1;
    std::fs::write(&opt, &state).unwrap();
    let err = checkpoint::load_optimizer(&dir).unwrap_err().to_string();
    assert!(
        err.contains("optimizer.bpk") && err.contains("checksum mismatch"),
        "{err}"
    );
}

#[test]
fn formats_outside_1_to_2_are_refused_and_format_1_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, original) = saved(tmp.path(), false);

    edit_manifest(&dir, |v| v["format"] = 99.into());
    let err = load_err(&dir);
    assert!(
        err.contains("manifest.json")
            && err
                .contains("made by a newer burn-collab (format 99); this build reads formats 1-2"),
        "{err}"
    );
    assert!(checkpoint::inspect_target(&dir).is_err());

    edit_manifest(&dir, |v| v["format"] = 0.into());
    let err = load_err(&dir);
    assert!(err.contains("format 0"), "{err}");

    edit_manifest(&dir, |v| {
        v.as_object_mut().unwrap().remove("format");
    });
    assert!(load_err(&dir).contains("no `format`"));

    // Format 1, as written by earlier builds: no checksums; loads unverified.
    edit_manifest(&dir, |v| {
        v["format"] = 1.into();
        v.as_object_mut().unwrap().remove("files");
    });
    let (net, m) = checkpoint::load(&dir, &collab::device::compute()).unwrap();
    assert_eq!(m.format, 1);
    assert_eq!(weights(&net), original);
    assert!(checkpoint::load_optimizer(&dir).unwrap().is_none());

    // Format 2 without the record's checksum: damaged.
    edit_manifest(&dir, |v| v["format"] = 2.into());
    let err = load_err(&dir);
    assert!(err.contains("records no checksum for model.bpk"), "{err}");
}

#[test]
fn a_listed_optimizer_state_that_is_missing_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = saved(tmp.path(), true);
    std::fs::remove_file(dir.join(checkpoint::OPTIMIZER)).unwrap();
    let err = checkpoint::load_optimizer(&dir).unwrap_err().to_string();
    assert!(
        err.contains("optimizer.bpk") && err.contains("is missing") && err.contains("manifest"),
        "{err}"
    );
    // Saved without one: none, and no error.
    let (plain, _) = saved(&tmp.path().join("plain"), false);
    assert!(checkpoint::load_optimizer(&plain).unwrap().is_none());
}

#[test]
fn save_refuses_files_devices_and_foreign_folders_leaving_them_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let network = model();
    let file = root.join("notes.txt");
    std::fs::write(&file, b"a user's file\n").unwrap();
    let folder = root.join("photos");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("cat.jpg"), b"\xff\xd8 not ours").unwrap();
    let fifo = root.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A character device (as /dev/null) needs root to create; skipped otherwise.
    let device = root.join("null");
    let c = std::ffi::CString::new(device.as_os_str().as_encoded_bytes()).unwrap();
    let have_device =
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
    if !have_device {
        eprintln!("not root: the device case is skipped");
    }
    let before = snapshot(root);
    let mut targets = vec![file.clone(), folder.clone(), fifo.clone()];
    if have_device {
        targets.push(device.clone());
    }
    for target in &targets {
        let err = checkpoint::save(target, &network, &manifest(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&target.display().to_string())
                && (err.contains("not a folder") || err.contains("no checkpoint")),
            "{err}"
        );
        assert!(checkpoint::inspect_target(target).is_err());
    }
    assert_eq!(snapshot(root), before, "something outside was changed");
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    if have_device {
        assert!(
            std::fs::symlink_metadata(&device)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // `.` names no folder: refused, nothing left.
    let err = checkpoint::save(&root.join("."), &network, &manifest(), None).unwrap_err();
    assert!(err.to_string().contains("does not name a folder"), "{err}");
    assert_eq!(snapshot(root), before);
}

#[test]
fn file_writes_refuse_folders_devices_and_fifos_leaving_them_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let folder = root.join("m.tflite");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("keep"), b"a user's file").unwrap();
    let fifo = root.join("fifo.tflite");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // As `/dev/full` (needs root to create; skipped otherwise).
    let full = root.join("full");
    let c = std::ffi::CString::new(full.as_os_str().as_encoded_bytes()).unwrap();
    let have_device =
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 7)) } == 0;
    let before = snapshot(root);
    let mut targets = vec![(folder, "a folder"), (fifo, "not a regular file")];
    if have_device {
        targets.push((full.clone(), "not a regular file"));
    }
    for (target, why) in &targets {
        let err = collab::export::write(target, b"model bytes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&target.display().to_string()) && err.contains(why),
            "{err}"
        );
    }
    assert_eq!(snapshot(root), before, "something was changed");
    if have_device {
        assert!(
            std::fs::symlink_metadata(&full)
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // A missing folder is named.
    let err = collab::export::write(&root.join("nodir/x.tflite"), b"x").unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A pid no process has (a reaped child's).
fn dead_pid() -> u32 {
    loop {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        if !Path::new("/proc").join(pid.to_string()).exists() {
            return pid;
        }
    }
}

#[test]
fn leftovers_of_crashed_saves_are_cleaned_and_an_interrupted_swap_restored() {
    assert!(Path::new("/proc/self").exists(), "needs /proc");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (dir, _) = saved(root, false);
    let dead = dead_pid();
    // Leftovers of a dead save (a half-written temp folder, an old checkpoint not yet removed)
    // and of a live one (pid 1 runs: another save in progress is not touched).
    for name in [
        format!(".ck.tmp-{dead}"),
        format!(".ck.old-{dead}"),
        ".ck.tmp-1".into(),
    ] {
        std::fs::create_dir(root.join(&name)).unwrap();
        std::fs::write(root.join(&name).join("model.bpk"), b"partial").unwrap();
    }
    std::fs::write(root.join("other.txt"), b"keep").unwrap();
    std::fs::write(root.join(".ck.tmp-x"), b"not a pid: keep").unwrap();
    let network = model();
    checkpoint::save(&dir, &network, &manifest(), None).unwrap();
    assert_eq!(
        names(root),
        [".ck.tmp-1", ".ck.tmp-x", "ck", "other.txt"],
        "the dead save's leftovers remain"
    );
    let (loaded, _) = checkpoint::load(&dir, &collab::device::compute()).unwrap();
    assert_eq!(weights(&loaded), weights(&network));

    // A crash between the two renames of the fallback swap: the checkpoint sits in
    // `.ck.old-DEAD` and `ck` is missing. The next look at `ck` puts it back.
    let before = snapshot(&dir);
    let aside = root.join(format!(".ck.old-{dead}"));
    std::fs::rename(&dir, &aside).unwrap();
    std::fs::create_dir(root.join(format!(".ck.tmp-{dead}"))).unwrap();
    let Existing::Checkpoint(m) = checkpoint::inspect_target(&dir).unwrap() else {
        panic!("the moved-aside checkpoint was not restored");
    };
    assert_eq!(m.seed, 7);
    let restored: Vec<_> = snapshot(&dir)
        .into_iter()
        .map(|(p, b)| (aside.join(p.strip_prefix(&dir).unwrap()), b))
        .collect();
    let expected: Vec<_> = before
        .into_iter()
        .map(|(p, b)| (aside.join(p.strip_prefix(&dir).unwrap()), b))
        .collect();
    assert_eq!(restored, expected, "restored byte for byte");
    assert_eq!(names(root), [".ck.tmp-1", ".ck.tmp-x", "ck", "other.txt"]);

    // `save` alone restores it too (before deciding what it replaces).
    std::fs::rename(&dir, &aside).unwrap();
    assert!(checkpoint::recover(&dir).unwrap().contains(&dir));
    checkpoint::load(&dir, &collab::device::compute()).unwrap();
}

/// What a proptest case does to a saved checkpoint.
#[derive(Clone, Debug)]
enum Damage {
    /// Flip bit `bit` of byte `at` (modulo the length) of a file.
    Flip { file: usize, at: usize, bit: u8 },
    /// Cut a file to `keep` of its bytes (modulo the length).
    Truncate { file: usize, keep: usize },
    /// Set a manifest key (by path) to a value.
    Json {
        key: usize,
        value: serde_json::Value,
    },
    /// Remove a manifest key.
    Remove { key: usize },
    /// Re-indent the manifest: whitespace only.
    Whitespace { compact: bool, extra: usize },
}

const FILES: [&str; 3] = ["model.bpk", "manifest.json", "optimizer.bpk"];
const KEYS: [&[&str]; 9] = [
    &["format"],
    &["model"],
    &["stage"],
    &["seed"],
    &["epoch"],
    &["files", "model.bpk", "sha256"],
    &["files", "model.bpk", "bytes"],
    &["files", "optimizer.bpk"],
    &["files"],
];

fn damage() -> impl Strategy<Value = Damage> {
    let value = prop_oneof![
        any::<u64>().prop_map(serde_json::Value::from),
        (0u64..4).prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!("ds-cnn-m")),
        Just(serde_json::json!({"DsCnn": {"size": "L"}})),
        Just(
            serde_json::json!({"MobileNetV1": {"width": 4.0, "variant": "Imagenet", "classes": 1_000_000_000_000u64}})
        ),
        "[0-9a-f]{64}".prop_map(serde_json::Value::from),
    ];
    prop_oneof![
        (0usize..3, any::<usize>(), 0u8..8).prop_map(|(file, at, bit)| Damage::Flip {
            file,
            at,
            bit
        }),
        (0usize..3, any::<usize>()).prop_map(|(file, keep)| Damage::Truncate { file, keep }),
        (0..KEYS.len(), value).prop_map(|(key, value)| Damage::Json { key, value }),
        (0..KEYS.len()).prop_map(|key| Damage::Remove { key }),
        (any::<bool>(), 0usize..6)
            .prop_map(|(compact, extra)| Damage::Whitespace { compact, extra }),
    ]
}

fn apply(dir: &Path, damage: &Damage) -> Option<String> {
    let read = |f: usize| std::fs::read(dir.join(FILES[f])).unwrap();
    let write = |f: usize, b: &[u8]| std::fs::write(dir.join(FILES[f]), b).unwrap();
    let json = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join(checkpoint::MANIFEST)).unwrap()).unwrap()
    };
    match damage {
        Damage::Flip { file, at, bit } => {
            let mut b = read(*file);
            let at = at % b.len();
            b[at] ^= 1 << bit;
            write(*file, &b);
            Some(FILES[*file].into())
        }
        Damage::Truncate { file, keep } => {
            let b = read(*file);
            write(*file, &b[..keep % b.len()]);
            Some(FILES[*file].into())
        }
        Damage::Json { key, value } => {
            let mut v = json();
            let path = KEYS[*key];
            let mut at = &mut v;
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            at[path[path.len() - 1]] = value.clone();
            write(1, serde_json::to_string_pretty(&v).unwrap().as_bytes());
            None
        }
        Damage::Remove { key } => {
            let mut v = json();
            let path = KEYS[*key];
            let mut at = &mut v;
            for k in &path[..path.len() - 1] {
                at = &mut at[*k];
            }
            if let Some(o) = at.as_object_mut() {
                o.remove(path[path.len() - 1]);
            }
            write(1, serde_json::to_string_pretty(&v).unwrap().as_bytes());
            None
        }
        Damage::Whitespace { compact, extra } => {
            let v = json();
            let text = if *compact {
                serde_json::to_string(&v).unwrap()
            } else {
                serde_json::to_string_pretty(&v)
                    .unwrap()
                    .replace(",\n", &format!(",\n{}", " \t\r\n".repeat(*extra)))
            };
            write(1, format!("{}{text}\n ", "\n".repeat(*extra)).as_bytes());
            Some("whitespace".into())
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Damage never loads as a different model: a changed record is always an error, a
    /// re-indented manifest loads the same model and manifest, anything else is an error or
    /// the very model that was saved. Never a panic.
    #[test]
    fn damaged_checkpoints_never_load_as_another_model(damage in damage()) {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, original) = saved(tmp.path(), true);
        let manifest_before = checkpoint::manifest(&dir).unwrap();
        let what = apply(&dir, &damage);
        let loaded = checkpoint::load(&dir, &collab::device::compute());
        let optimizer = checkpoint::load_optimizer(&dir);
        match what.as_deref() {
            Some("model.bpk") => prop_assert!(loaded.is_err(), "{damage:?} loaded"),
            Some("optimizer.bpk") => prop_assert!(optimizer.is_err(), "{damage:?} loaded"),
            Some("whitespace") => {
                let (net, m) = loaded.unwrap();
                prop_assert_eq!(weights(&net), original);
                prop_assert_eq!(m, manifest_before);
                prop_assert!(optimizer.unwrap().is_some());
            }
            _ => {
                if let Ok((net, _)) = loaded {
                    prop_assert_eq!(weights(&net), original, "{:?}", damage);
                }
            }
        }
    }
}
