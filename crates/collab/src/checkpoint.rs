//! Checkpoints: a folder with `model.bpk` (burn record), `manifest.json` and, for resuming,
//! `optimizer.bpk`.
//!
//! Integrity: the manifest (format [`FORMAT`]) records the size and SHA-256 of each file saved
//! with it, and [`load`] / [`load_optimizer`] verify them, so a file changed or damaged after it
//! was written is an error naming it, never a silently different model. Format 1 manifests
//! (older burn-collab, no checksums) still load, with a warning; newer formats are refused.
//!
//! Crash safety of [`save`]: the files are written into a temporary sibling folder
//! (`.NAME.tmp-PID`), flushed to disk with the folder, and the folder is swapped in: one atomic
//! exchange where the OS has one (`renameat2(RENAME_EXCHANGE)` on Linux), otherwise two renames
//! through `.NAME.old-PID`. So a crash never leaves a half-written checkpoint in place of a good
//! one; the leftovers of a crashed save are cleaned (or, between the two renames, the old
//! checkpoint restored) by the next save to the same path ([`recover`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::CollabError;
use crate::network::{ModelSpec, Network};

/// File name of the model record.
pub const RECORD: &str = "model.bpk";
/// File name of the manifest.
pub const MANIFEST: &str = "manifest.json";
/// File name of the optimizer state.
pub const OPTIMIZER: &str = "optimizer.bpk";
/// The manifest format this build writes: 2 records each file's size and SHA-256.
pub const FORMAT: u32 = 2;
/// The oldest manifest format this build reads (1: no checksums).
pub const OLDEST_FORMAT: u32 = 1;

/// What a checkpoint holds, readable without loading the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version ([`FORMAT`] when written by [`save`]).
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
    /// Size and SHA-256 of each file saved with the checkpoint, by file name (format 2 on;
    /// filled in by [`save`], whatever the caller puts here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileDigest>,
}

impl Manifest {
    /// A manifest for `model` at `stage`.
    pub fn new(model: ModelSpec, stage: &str, seed: u64) -> Self {
        Self {
            format: FORMAT,
            model,
            stage: stage.to_string(),
            seed,
            epoch: 0,
            config: serde_json::Value::Null,
            metrics: serde_json::json!({}),
            data: None,
            files: BTreeMap::new(),
        }
    }
}

/// Size and SHA-256 of a file, as recorded in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Length in bytes.
    pub bytes: u64,
    /// SHA-256 of the contents, lowercase hex.
    pub sha256: String,
}

impl FileDigest {
    /// The size and SHA-256 of `contents`.
    pub fn of(contents: &[u8]) -> Self {
        let digest = sha2::Sha256::digest(contents);
        Self {
            bytes: contents.len() as u64,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

impl std::fmt::Display for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256 {} ({} bytes)", self.sha256, self.bytes)
    }
}

/// The folder's file name, or an error for paths that name none (ending in `.` or `..`, a
/// root).
fn folder_name(dir: &Path) -> Result<String, CollabError> {
    let text = dir.as_os_str().as_encoded_bytes();
    let end = text.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    let last = text[..end]
        .rsplit(|&b| b == b'/')
        .next()
        .unwrap_or_default();
    match dir.file_name() {
        Some(n) if !matches!(last, b"" | b"." | b"..") => Ok(n.to_string_lossy().into_owned()),
        _ => Err(CollabError::checkpoint(
            dir,
            "does not name a folder a checkpoint can be written to (it ends in `.` or `..`, or \
             is a root); give a path that ends in the checkpoint's folder name",
        )),
    }
}

fn sibling(dir: &Path, name: &str, tag: &str, pid: u32) -> PathBuf {
    dir.with_file_name(format!(".{name}.{tag}-{pid}"))
}

/// A temporary folder removed when dropped, unless [`Scratch::keep`] was called.
pub(crate) struct Scratch(Option<PathBuf>);

impl Scratch {
    /// A new empty folder in the system's temporary folder, unique to this process and call.
    pub(crate) fn temp() -> Result<Self, CollabError> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("collab-run-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| CollabError::checkpoint(&dir, e))?;
        Ok(Self(Some(dir)))
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

/// Write `bytes` to the new file `path` and flush it to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flush a folder's entries to disk.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// What is at a checkpoint path, without reading the manifest.
enum Found {
    Nothing,
    Empty,
    WithManifest,
}

/// Refuse what is not ours to replace: a file, a device, a link, a non-empty folder without
/// `manifest.json`.
fn what_is_there(dir: &Path) -> Result<Found, CollabError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(CollabError::checkpoint(dir, e)),
    };
    if !meta.is_dir() {
        return Err(CollabError::checkpoint(
            dir,
            "exists and is not a folder (a checkpoint is a folder); choose another path or \
             remove it",
        ));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| CollabError::checkpoint(dir, e))?;
    if entries.next().is_none() {
        Ok(Found::Empty)
    } else if dir.join(MANIFEST).is_file() {
        Ok(Found::WithManifest)
    } else {
        Err(CollabError::checkpoint(
            dir,
            "is a folder with files but no checkpoint (no manifest.json): burn-collab does not \
             write over it; choose another path or empty it",
        ))
    }
}

/// Whether process `pid` may still be running. Where `/proc` is missing every process counts
/// as alive (nothing is cleaned up).
fn process_alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Clean up after a save to `dir` that crashed: the temporary `.NAME.tmp-PID` and
/// `.NAME.old-PID` siblings left by processes that no longer run are removed, and if `dir`
/// itself is missing while such a `.NAME.old-PID` exists (a crash between the two renames of
/// the fallback swap), that old checkpoint is first renamed back to `dir`. Returns what it
/// restored or removed. [`save`] and [`inspect_target`] call it; siblings of running processes
/// (another run saving right now) are left alone.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>, CollabError> {
    let Ok(name) = folder_name(dir) else {
        return Ok(Vec::new());
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(Vec::new());
    };
    let me = std::process::id();
    let mut stale_tmp = Vec::new();
    let mut stale_old = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        for (tag, list) in [("tmp", &mut stale_tmp), ("old", &mut stale_old)] {
            let Some(pid) = file_name
                .strip_prefix(&format!(".{name}.{tag}-"))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !process_alive(pid) {
                list.push(sibling(dir, &name, tag, pid));
            }
        }
    }
    stale_old.sort();
    let mut done = Vec::new();
    let missing = matches!(std::fs::symlink_metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if missing && let Some(old) = stale_old.first() {
        std::fs::rename(old, dir).map_err(|e| {
            CollabError::checkpoint(
                dir,
                format!(
                    "is missing after an interrupted save, and restoring the previous checkpoint \
                     from `{}` failed: {e}; rename it back by hand",
                    old.display()
                ),
            )
        })?;
        tracing::warn!(
            "{}: restored the previous checkpoint from `{}` (a save was interrupted)",
            dir.display(),
            old.display()
        );
        done.push(dir.to_path_buf());
        stale_old.remove(0);
    }
    for path in stale_tmp.into_iter().chain(stale_old) {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!("removed `{}`, left by an interrupted save", path.display());
                done.push(path);
            }
            Err(e) => tracing::warn!(
                "cannot remove `{}`, left by an interrupted save: {e}",
                path.display()
            ),
        }
    }
    Ok(done)
}

/// Swap the folder `tmp` into place at `dir`. Returns the path that now holds the previous
/// checkpoint, to remove (none when `dir` did not exist).
/// With `atomic` false the fallback (two renames) is used even where the OS can exchange.
fn swap_in(
    tmp: &Path,
    dir: &Path,
    name: &str,
    atomic: bool,
) -> Result<Option<PathBuf>, CollabError> {
    if matches!(what_is_there(dir)?, Found::Nothing) {
        std::fs::rename(tmp, dir).map_err(|e| CollabError::checkpoint(dir, e))?;
        return Ok(None);
    }
    if atomic && exchange(tmp, dir)? {
        // `tmp` now holds the previous checkpoint.
        return Ok(Some(tmp.to_path_buf()));
    }
    // Fallback: two renames; a crash between them is repaired by `recover`.
    let old = sibling(dir, name, "old", std::process::id());
    let _ = std::fs::remove_dir_all(&old);
    std::fs::rename(dir, &old).map_err(|e| CollabError::checkpoint(dir, e))?;
    if let Err(e) = std::fs::rename(tmp, dir) {
        let restored = std::fs::rename(&old, dir);
        return Err(CollabError::checkpoint(
            dir,
            match restored {
                Ok(()) => format!("cannot move the new checkpoint into place: {e}"),
                Err(r) => format!(
                    "cannot move the new checkpoint into place ({e}), nor the previous one back \
                     ({r}): it is in `{}`; rename it back by hand",
                    old.display()
                ),
            },
        ));
    }
    Ok(Some(old))
}

/// Exchange two folders atomically. `Ok(false)` where the OS or file system cannot.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> Result<bool, CollabError> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    use rustix::io::Errno;
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP | Errno::PERM) => Ok(false),
        Err(e) => Err(CollabError::checkpoint(
            b,
            format!("cannot swap the new checkpoint into place: {e}"),
        )),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(_a: &Path, _b: &Path) -> Result<bool, CollabError> {
    Ok(false)
}

/// Write a checkpoint to `dir` (created, or replaced as a whole).
///
/// Refuses what [`inspect_target`] refuses (a file, a device, a non-empty folder without
/// `manifest.json`): callers decide whether an existing checkpoint may be replaced, `save` only
/// makes sure nothing else is. The manifest is written as format [`FORMAT`] with the size and
/// SHA-256 of `model.bpk` (and `optimizer.bpk`). On any error nothing is left behind and what
/// was at `dir` is unchanged; a fault-injection point ([`crate::fault::point`]) follows the swap.
pub fn save(
    dir: &Path,
    network: &Network,
    manifest: &Manifest,
    optimizer: Option<OptimizerRecord>,
) -> Result<(), CollabError> {
    let name = folder_name(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| CollabError::checkpoint(parent, e))?;
    }
    recover(dir)?;
    what_is_there(dir)?;
    let record = network
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| CollabError::checkpoint(&dir.join(RECORD), e))?;
    let optimizer = optimizer
        .map(|o| o.into_bytes())
        .transpose()
        .map_err(|e| CollabError::checkpoint(&dir.join(OPTIMIZER), e))?;
    let mut manifest = manifest.clone();
    manifest.format = FORMAT;
    manifest.files = BTreeMap::from([(RECORD.to_string(), FileDigest::of(&record))]);
    if let Some(bytes) = &optimizer {
        manifest
            .files
            .insert(OPTIMIZER.to_string(), FileDigest::of(bytes));
    }
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| CollabError::checkpoint(dir, e))?;

    let mut scratch = Scratch(Some(sibling(dir, &name, "tmp", std::process::id())));
    let tmp = scratch.path().to_path_buf();
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| CollabError::checkpoint(&tmp, e))?;
    let mut files: Vec<(&str, &[u8])> = vec![(RECORD, &record), (MANIFEST, text.as_bytes())];
    if let Some(bytes) = &optimizer {
        files.push((OPTIMIZER, bytes));
    }
    for (file, bytes) in files {
        let path = tmp.join(file);
        write_synced(&path, bytes).map_err(|e| {
            CollabError::checkpoint(
                &path,
                format!("cannot write it: {e}; the previous checkpoint (if any) is unchanged"),
            )
        })?;
    }
    sync_dir(&tmp).map_err(|e| CollabError::checkpoint(&tmp, e))?;
    let previous = swap_in(&tmp, dir, &name, true)?;
    // From here `tmp` is either gone (renamed to `dir`) or holds the previous checkpoint.
    scratch.keep();
    crate::fault::point(&format!("checkpoint {}", dir.display()));
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        && let Err(e) = sync_dir(parent)
    {
        tracing::warn!("{}: cannot flush the folder to disk: {e}", parent.display());
    }
    if let Some(previous) = previous {
        let _ = std::fs::remove_dir_all(&previous);
    }
    Ok(())
}

/// Check a manifest's `format` number: 1 and 2 are read, 0 and anything newer are not.
fn check_format(path: &Path, format: Option<u64>) -> Result<(), CollabError> {
    match format {
        None => Err(CollabError::checkpoint(
            path,
            "has no `format` number (a whole number); the manifest is damaged: restore the \
             checkpoint or train it again",
        )),
        Some(0) => Err(CollabError::checkpoint(
            path,
            format!(
                "format 0 is not a checkpoint format (formats start at {OLDEST_FORMAT}); the \
                 manifest is damaged: restore the checkpoint or train it again"
            ),
        )),
        Some(f) if f > u64::from(FORMAT) => Err(CollabError::checkpoint(
            path,
            format!(
                "made by a newer burn-collab (format {f}); this build reads formats \
                 {OLDEST_FORMAT}-{FORMAT}: update burn-collab to use it"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Read a checkpoint's manifest (its format checked: [`OLDEST_FORMAT`] to [`FORMAT`]).
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
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CollabError::checkpoint(&path, format!("not a valid manifest: {e}")))?;
    check_format(&path, value.get("format").and_then(|f| f.as_u64()))?;
    serde_json::from_value(value)
        .map_err(|e| CollabError::checkpoint(&path, format!("not a valid manifest: {e}")))
}

/// Read `dir/name` and, for format 2 on, check it against the size and SHA-256 the manifest
/// recorded. Format 1 files are read unverified, with a warning.
fn read_verified(dir: &Path, manifest: &Manifest, name: &str) -> Result<Vec<u8>, CollabError> {
    let path = dir.join(name);
    let damaged = "the file was changed or damaged after it was written: restore it (or the \
                   whole checkpoint folder) from a backup, or train again";
    let expected = if manifest.format >= 2 {
        Some(manifest.files.get(name).ok_or_else(|| {
            CollabError::checkpoint(
                &dir.join(MANIFEST),
                format!(
                    "records no checksum for {name}; the manifest is damaged: restore the \
                     checkpoint or train it again"
                ),
            )
        })?)
    } else {
        tracing::warn!(
            "{}: format 1 checkpoint (made by an older burn-collab): {name} has no checksum and \
             is not verified; save the checkpoint again to add one",
            dir.display()
        );
        None
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CollabError::checkpoint(
                &path,
                "is missing: the checkpoint is incomplete; restore it or train again",
            ),
            _ => CollabError::checkpoint(&path, e),
        })?
        .len();
    if let Some(expected) = expected
        && len != expected.bytes
    {
        return Err(CollabError::checkpoint(
            &path,
            format!(
                "checksum mismatch: the manifest records {expected}, the file has {len} bytes; \
                 {damaged}"
            ),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
    if let Some(expected) = expected {
        let actual = FileDigest::of(&bytes);
        if &actual != expected {
            return Err(CollabError::checkpoint(
                &path,
                format!(
                    "checksum mismatch: the manifest records {expected}, the file has {actual}; \
                     {damaged}"
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Refuse a manifest whose model could not fit in a record of `len` bytes before building it
/// (a damaged class count would otherwise allocate without bound).
fn plausible(spec: &ModelSpec, len: usize, record: &Path) -> Result<(), CollabError> {
    let classes = match spec {
        ModelSpec::DsCnn { .. } => return Ok(()),
        ModelSpec::MobileNetV1(c) => c.classes,
        ModelSpec::MobileNetV2(c) => c.classes,
        ModelSpec::Graph(g) => {
            // Every weight is at least one byte of the record.
            let params = g
                .info()
                .map_err(|e| CollabError::checkpoint(record, format!("the manifest's graph: {e}")))?
                .params;
            if params > len {
                return Err(CollabError::checkpoint(
                    record,
                    format!(
                        "the manifest's graph has {params} weights, more than this {len}-byte \
                         record can hold: the manifest or the record is damaged; restore the \
                         checkpoint or import the model again"
                    ),
                ));
            }
            return Ok(());
        }
    };
    // The classifier holds at least 8 weights per class, each at least one byte.
    if classes.saturating_mul(8) > len {
        return Err(CollabError::checkpoint(
            record,
            format!(
                "the manifest's model has {classes} classes, more than this {len}-byte record \
                 can hold: the manifest or the record is damaged; restore the checkpoint or \
                 train again"
            ),
        ));
    }
    Ok(())
}

/// Load a checkpoint's model and manifest, verifying `model.bpk` against the manifest's
/// checksum (format 2 on).
pub fn load(dir: &Path, device: &Device) -> Result<(Network, Manifest), CollabError> {
    let manifest = manifest(dir)?;
    let path = dir.join(RECORD);
    let bytes = read_verified(dir, &manifest, RECORD)?;
    plausible(&manifest.model, bytes.len(), &path)?;
    let network = manifest.model.init(device)?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| {
        CollabError::checkpoint(&path, format!("cannot load the model record: {e}"))
    })?;
    let network = network.try_load_record(record).map_err(|e| {
        CollabError::checkpoint(&path, format!("cannot load the model record: {e}"))
    })?;
    // BatchNorm's ε is a setting, not a tensor: the record does not hold it.
    let network = match manifest.config.get(BN_EPSILON).and_then(|v| v.as_f64()) {
        Some(eps) => network.with_bn_epsilon(eps),
        None => network,
    };
    Ok((network, manifest))
}

/// Key of `Manifest::config` holding the BatchNorm ε of every block when it is not the
/// family's own (a refolded tree node: `tree::REFOLD_EPSILON`); [`load`] restores it.
pub const BN_EPSILON: &str = "bn_epsilon";

/// The optimizer state saved with a checkpoint, verified against the manifest's checksum:
/// `Ok(None)` only when none was saved; an error when the manifest lists one that is missing
/// or damaged.
pub fn load_optimizer(dir: &Path) -> Result<Option<OptimizerRecord>, CollabError> {
    let manifest = manifest(dir)?;
    let path = dir.join(OPTIMIZER);
    let listed = manifest.files.contains_key(OPTIMIZER);
    if manifest.format >= 2 && !listed {
        if path.exists() {
            tracing::warn!(
                "{}: not saved with this checkpoint (the manifest does not list it); ignored",
                path.display()
            );
        }
        return Ok(None);
    }
    if !path.exists() {
        if !listed {
            return Ok(None);
        }
        return Err(CollabError::checkpoint(
            &path,
            "is missing, but the manifest lists it (the optimizer state was saved with this \
             checkpoint): restore it, or train again without resuming",
        ));
    }
    let bytes = read_verified(dir, &manifest, OPTIMIZER)?;
    OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .map(Some)
        .map_err(|e| {
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
///
/// It first repairs what a crashed save left at `dir` ([`recover`]), so a checkpoint that an
/// interrupted save had moved aside is seen (and protected) as the checkpoint it is.
pub fn inspect_target(dir: &Path) -> Result<Existing, CollabError> {
    recover(dir)?;
    let existing = match what_is_there(dir)? {
        Found::Nothing => Existing::Nothing,
        Found::Empty => Existing::EmptyFolder,
        Found::WithManifest => Existing::Checkpoint(Box::new(manifest(dir)?)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join(file), text).unwrap();
    }

    #[test]
    fn both_swaps_put_the_new_folder_in_place_and_hand_back_the_old_one() {
        for atomic in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let dir = root.path().join("ck");
            let tmp = root.path().join(".ck.tmp-1");
            folder(&dir, MANIFEST, "old");
            folder(&tmp, MANIFEST, "new");
            let previous = swap_in(&tmp, &dir, "ck", atomic).unwrap().unwrap();
            assert_eq!(std::fs::read_to_string(dir.join(MANIFEST)).unwrap(), "new");
            assert_eq!(
                std::fs::read_to_string(previous.join(MANIFEST)).unwrap(),
                "old"
            );
            if !atomic {
                assert_eq!(previous, sibling(&dir, "ck", "old", std::process::id()));
                assert!(!tmp.exists());
            }
            // Into an empty folder: what comes back is that empty folder.
            std::fs::remove_dir_all(&previous).unwrap();
            let empty = root.path().join("empty");
            std::fs::create_dir(&empty).unwrap();
            folder(&tmp, MANIFEST, "new");
            let previous = swap_in(&tmp, &empty, "empty", atomic).unwrap().unwrap();
            assert_eq!(std::fs::read_dir(&previous).unwrap().count(), 0);
            assert_eq!(
                std::fs::read_to_string(empty.join(MANIFEST)).unwrap(),
                "new"
            );
            // Into nothing: a rename, nothing to remove.
            folder(&tmp, MANIFEST, "newer");
            let fresh = root.path().join("fresh");
            assert_eq!(swap_in(&tmp, &fresh, "fresh", atomic).unwrap(), None);
            assert_eq!(
                std::fs::read_to_string(fresh.join(MANIFEST)).unwrap(),
                "newer"
            );
        }
    }
}
