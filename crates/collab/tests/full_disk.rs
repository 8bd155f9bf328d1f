//! Writes that fail as on a full disk (issue #17, item 9): `checkpoint::save` and
//! `export::write` return errors, leave no `.tmp` / `.old` siblings behind, and what was at
//! the path stays intact byte for byte.
//!
//! One test in its own process: the file-size limit (RLIMIT_FSIZE) set here is process-wide.

use std::path::{Path, PathBuf};

use collab::checkpoint::{self, Manifest};
use collab::{ModelSpec, Network};

/// Every file under `dir` with its bytes, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                out.push((path, b"<dir>".to_vec()));
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn set_file_size_limit(bytes: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) },
        0
    );
    limit.rlim_cur = bytes.min(limit.rlim_max);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);
}

#[test]
fn failed_writes_leave_no_leftovers_and_the_previous_files_intact() {
    let spec: ModelSpec = "ds-cnn-s".parse().unwrap();
    let device = collab::device::compute();
    let model = || -> Network { spec.init(&device).unwrap() };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ck = root.join("ck");
    let file = root.join("m.tflite");
    checkpoint::save(
        &ck,
        &model(),
        &Manifest::new(spec.clone(), "baseline", 1),
        None,
    )
    .unwrap();
    collab::export::write(&file, b"the previous model").unwrap();
    let before = snapshot(root);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    // Past 4 KiB a write fails with EFBIG instead of killing the process (SIGXFSZ ignored).
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    set_file_size_limit(4096);

    let err = checkpoint::save(
        &ck,
        &model(),
        &Manifest::new(spec.clone(), "baseline", 2),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.bpk") && err.contains("unchanged"),
        "{err}"
    );
    let err = checkpoint::save(
        &root.join("new"),
        &model(),
        &Manifest::new(spec.clone(), "x", 3),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("new"), "{err}");
    let err = collab::export::write(&file, &big).unwrap_err().to_string();
    assert!(err.contains("m.tflite"), "{err}");
    let err = collab::export::write(&root.join("n.tflite"), &big)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n.tflite"), "{err}");

    set_file_size_limit(libc::RLIM_INFINITY);
    // Nothing new (no `.ck.tmp-PID`, `.m.tflite.tmpPID`, `new`), nothing changed.
    assert_eq!(snapshot(root), before);
    let (_, m) = checkpoint::load(&ck, &device).unwrap();
    assert_eq!(m.seed, 1);
    // And with room again, both write.
    checkpoint::save(
        &ck,
        &model(),
        &Manifest::new(spec.clone(), "baseline", 2),
        None,
    )
    .unwrap();
    collab::export::write(&file, &big).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), big);
}
