//! Arbitrary bytes as a checkpoint folder (`manifest.json`, `model.bpk`, maybe
//! `optimizer.bpk`) into `checkpoint::load` and `checkpoint::load_optimizer`: errors are fine,
//! panics are bugs.
//!
//! Input layout: one flags byte, the manifest's length and the record's length (u32 little
//! endian each), then the manifest, the record and (flag bit 0) the optimizer state, which is
//! the rest. With flag bit 1 the harness writes the true sizes and SHA-256 of the record and the
//! optimizer state into the manifest (when it is a JSON object), so the fuzzer gets past the
//! checksums to the record readers.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use collab::checkpoint::{self, FileDigest};
use libfuzzer_sys::fuzz_target;

fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("collab-fuzz-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch folder for the fuzz target");
        dir
    })
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (head, tail) = data.split_at(n);
    *data = tail;
    head
}

fn length(data: &mut &[u8]) -> usize {
    let mut b = [0u8; 4];
    let got = take(data, 4);
    b[..got.len()].copy_from_slice(got);
    u32::from_le_bytes(b) as usize
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let manifest_len = length(&mut data);
    let record_len = length(&mut data);
    let manifest = take(&mut data, manifest_len);
    let record = take(&mut data, record_len);
    let optimizer = (flags & 1 != 0).then_some(data);

    let dir = folder();
    let mut manifest = manifest.to_vec();
    if flags & 2 != 0
        && let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&manifest)
    {
        let mut files = serde_json::Map::new();
        let digest = |b: &[u8]| serde_json::to_value(FileDigest::of(b)).unwrap_or_default();
        files.insert(checkpoint::RECORD.into(), digest(record));
        if let Some(o) = optimizer {
            files.insert(checkpoint::OPTIMIZER.into(), digest(o));
        }
        m.insert("files".into(), files.into());
        manifest = serde_json::to_vec(&m).unwrap_or_default();
    }
    std::fs::write(dir.join(checkpoint::MANIFEST), &manifest).expect("scratch write");
    std::fs::write(dir.join(checkpoint::RECORD), record).expect("scratch write");
    let opt_path = dir.join(checkpoint::OPTIMIZER);
    match optimizer {
        Some(o) => std::fs::write(&opt_path, o).expect("scratch write"),
        None => {
            let _ = std::fs::remove_file(&opt_path);
        }
    }
    let _ = checkpoint::manifest(dir);
    let _ = checkpoint::load(dir, &collab::device::compute());
    let _ = checkpoint::load_optimizer(dir);
});
