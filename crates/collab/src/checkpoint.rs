//! Checkpoints: a folder with `model.bpk` (burn record), `manifest.json` and, for resuming,
//! `optimizer.bpk`. Written into a temporary sibling folder, then swapped in by renames, so a
//! crash never leaves a half-written checkpoint in place of a good one.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::network::{ModelSpec, Network};

/// File name of the model record.
pub const RECORD: &str = "model.bpk";
/// File name of the manifest.
pub const MANIFEST: &str = "manifest.json";
/// File name of the optimizer state.
pub const OPTIMIZER: &str = "optimizer.bpk";

/// What a checkpoint holds, readable without loading the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The model and its settings.
    pub model: ModelSpec,
    /// Which stage produced it (`baseline`, `imported`, `pruned`, …).
    pub stage: String,
    /// Seed of the run.
    pub seed: u64,
    /// Epochs trained so far in this stage (for `--resume`).
    pub epoch: usize,
    /// The stage's settings.
    pub config: serde_json::Value,
    /// Figures measured at save time (e.g. `val_accuracy`).
    pub metrics: serde_json::Value,
    /// The data it was trained / evaluated on, and its fingerprint.
    pub data: Option<String>,
}

impl Manifest {
    /// A manifest for `model` at `stage`.
    pub fn new(model: ModelSpec, stage: &str, seed: u64) -> Self {
        Self {
            format: 1,
            model,
            stage: stage.to_string(),
            seed,
            epoch: 0,
            config: serde_json::Value::Null,
            metrics: serde_json::json!({}),
            data: None,
        }
    }
}

fn tmp_sibling(dir: &Path, tag: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    dir.with_file_name(format!(".{name}.{tag}-{}", std::process::id()))
}

/// Write a checkpoint to `dir` (created or replaced as a whole).
pub fn save(
    dir: &Path,
    network: &Network,
    manifest: &Manifest,
    optimizer: Option<OptimizerRecord>,
) -> Result<(), CollabError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| CollabError::checkpoint(parent, e))?;
    }
    let tmp = tmp_sibling(dir, "tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| CollabError::checkpoint(&tmp, e))?;
    network
        .clone()
        .save_file(tmp.join(RECORD))
        .map_err(|e| CollabError::checkpoint(&tmp.join(RECORD), e))?;
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| CollabError::checkpoint(dir, e))?;
    std::fs::write(tmp.join(MANIFEST), text)
        .map_err(|e| CollabError::checkpoint(&tmp.join(MANIFEST), e))?;
    if let Some(record) = optimizer {
        record
            .save(tmp.join(OPTIMIZER))
            .map_err(|e| CollabError::checkpoint(&tmp.join(OPTIMIZER), e))?;
    }
    // Swap: old → .old, tmp → dir, remove .old.
    let old = tmp_sibling(dir, "old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| CollabError::checkpoint(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| CollabError::checkpoint(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    crate::fault::point(&format!("checkpoint {}", dir.display()));
    Ok(())
}

/// Read a checkpoint's manifest.
pub fn manifest(dir: &Path) -> Result<Manifest, CollabError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CollabError::checkpoint(
            &path,
            format!(
                "{e}; is `{}` a checkpoint folder (made by `collab train` or `collab import`)?",
                dir.display()
            ),
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CollabError::checkpoint(&path, format!("not a valid manifest: {e}")))
}

/// Load a checkpoint's model and manifest.
pub fn load(dir: &Path, device: &Device) -> Result<(Network, Manifest), CollabError> {
    let manifest = manifest(dir)?;
    let network = manifest.model.init(device)?;
    let record = dir.join(RECORD);
    let network = network.try_load_file(&record).map_err(|e| {
        CollabError::checkpoint(&record, format!("cannot load the model record: {e}"))
    })?;
    Ok((network, manifest))
}

/// The optimizer state saved with a checkpoint, if any.
pub fn load_optimizer(dir: &Path) -> Result<Option<OptimizerRecord>, CollabError> {
    let path = dir.join(OPTIMIZER);
    if !path.exists() {
        return Ok(None);
    }
    OptimizerRecord::load(&path).map(Some).map_err(|e| {
        CollabError::checkpoint(&path, format!("cannot load the optimizer state: {e}"))
    })
}

/// What a path holds before a checkpoint is written there ([`inspect_target`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Existing {
    /// Nothing: the folder will be created.
    Nothing,
    /// An empty folder.
    EmptyFolder,
    /// A checkpoint folder (its manifest reads).
    Checkpoint(Box<Manifest>),
}

/// Check, before any work, that `dir` can become a checkpoint folder: an error (naming the path
/// and what to do) when it is a file, a device or another non-folder, a non-empty folder that is
/// not a checkpoint, or when its parent cannot be created or written. What is there decides
/// whether the caller may replace it (a checkpoint made by an earlier run needs the user's
/// `--resume` or `--force`).
pub fn inspect_target(dir: &Path) -> Result<Existing, CollabError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CollabError::checkpoint(dir, e)),
    };
    let existing = match meta {
        None => Existing::Nothing,
        Some(m) if !m.is_dir() => {
            return Err(CollabError::checkpoint(
                dir,
                "exists and is not a folder (a checkpoint is a folder); choose another path or \
                 remove it",
            ));
        }
        Some(_) => {
            let mut entries =
                std::fs::read_dir(dir).map_err(|e| CollabError::checkpoint(dir, e))?;
            if entries.next().is_none() {
                Existing::EmptyFolder
            } else if dir.join(MANIFEST).is_file() {
                Existing::Checkpoint(Box::new(manifest(dir)?))
            } else {
                return Err(CollabError::checkpoint(
                    dir,
                    "is a folder with files but no checkpoint (no manifest.json): burn-collab \
                     does not write over it; choose another path or empty it",
                ));
            }
        }
    };
    writable_parent(dir)?;
    Ok(existing)
}

/// Create `path`'s parent folder if needed and check that files can be created in it.
pub fn writable_parent(path: &Path) -> Result<(), CollabError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| {
        CollabError::checkpoint(parent, format!("cannot create the output's folder: {e}"))
    })?;
    let probe = parent.join(format!(".collab-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        CollabError::checkpoint(
            parent,
            format!("cannot write into the output's folder: {e}"),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
