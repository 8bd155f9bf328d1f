//! A run's files: burn-train's checkpoints (written atomically), and finding, loading and
//! clearing them.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};

use crate::CollabError;

use super::{Classifier, Classify};

/// burn-train's file checkpointer (`NAME-EPOCH.bpk` in one folder), writing each file under a
/// temporary name, synced, then renamed: a run killed while saving never leaves a truncated
/// checkpoint for `--resume` to find.
pub(super) struct AtomicCheckpointer {
    folder: PathBuf,
    name: &'static str,
}

impl AtomicCheckpointer {
    pub(super) fn new(folder: &Path, name: &'static str) -> Self {
        Self {
            folder: folder.to_path_buf(),
            name,
        }
    }

    fn path(&self, epoch: usize) -> PathBuf {
        self.folder.join(format!("{}-{epoch}.bpk", self.name))
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        std::fs::create_dir_all(&self.folder).map_err(CheckpointerError::IOError)?;
        let path = self.path(epoch);
        let tmp = self.folder.join(format!(
            ".{}-{epoch}.bpk.tmp-{}",
            self.name,
            std::process::id()
        ));
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CheckpointerError::IOError(e)
        })
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        match std::fs::remove_file(self.path(epoch)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointerError::IOError(e))
            }
            _ => Ok(()),
        }
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let bytes = std::fs::read(self.path(epoch)).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(CheckpointerError::Record)
    }
}

/// What burn-train writes in a run's folder (checkpoints, metric logs) and [`learn`](super::learn) adds.
pub const RUN_FILES: [&str; 5] = [
    "checkpoint",
    "train",
    "valid",
    "metrics.csv",
    "learning_curve.png",
];

/// Whether `name` is one of a run's files ([`RUN_FILES`]) or the temporary name one is written
/// under.
pub fn is_run_file(name: &str) -> bool {
    RUN_FILES.contains(&name) || name == METRICS_TMP
}

/// The temporary name `metrics.csv` is written under before it is renamed into place.
pub(super) const METRICS_TMP: &str = ".metrics.csv.tmp";

/// Remove a previous run's [`RUN_FILES`] from `dir`, so that a new run there starts clean.
pub fn clear_run(dir: &Path) {
    for name in RUN_FILES {
        let path = dir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
    }
}

/// The last epoch in `dir` whose model, optimizer and schedule checkpoints are all there.
pub fn last_checkpoint(dir: &Path) -> Option<usize> {
    let folder = dir.join("checkpoint");
    let entries = std::fs::read_dir(&folder).ok()?;
    let epochs = entries.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.strip_prefix("model-")?
            .strip_suffix(".bpk")?
            .parse::<usize>()
            .ok()
    });
    epochs
        .filter(|n| {
            ["optim", "scheduler"]
                .iter()
                .all(|kind| folder.join(format!("{kind}-{n}.bpk")).is_file())
        })
        .max()
}

/// Load burn-train's model checkpoint of `epoch` in `dir` into `model` (as returned by
/// [`learn`](super::learn): the model without the [`Classifier`] around it).
pub fn load_checkpoint<M: Classify>(model: M, dir: &Path, epoch: usize) -> Result<M, CollabError> {
    let path = dir.join("checkpoint").join(format!("model-{epoch}.bpk"));
    let bytes = std::fs::read(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| CollabError::checkpoint(&path, format!("{e:?}")))?;
    let classifier = Classifier::new(model).load_record(record);
    Ok(classifier.model)
}
