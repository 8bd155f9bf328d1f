//! Locating the shared real data (`../shared` beside the repository) for tests and examples.

use std::path::PathBuf;

/// `$COLLAB_SHARED`, else a `shared` folder beside an ancestor of the current directory (tests
/// run in their crate's folder, examples in the repository), else `<repository>/../shared` as
/// this crate was built. `None` when none is there.
///
/// The build-time path alone is not enough: a build cache shared between clones at different
/// paths can hand a test the path of another clone.
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("COLLAB_SHARED") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir));
    }
    let from_cwd = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .map(|a| a.join("shared"))
            .find(|c| c.join("data").is_dir() || c.join("tools").is_dir())
    });
    let candidate = from_cwd
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    candidate
        .is_dir()
        .then(|| candidate.canonicalize().unwrap_or(candidate))
}

/// Like [`shared_dir`] but panics with instructions (for tests that need the real data).
pub fn require_shared() -> PathBuf {
    shared_dir().expect(
        "the shared data folder is missing: clone the repository next to `shared/`, \
         or set COLLAB_SHARED=/path/to/shared",
    )
}

/// Read one tensor of a safetensors file as `f32` (converting from i32 where needed).
pub fn read_safetensor_f32(bytes: &[u8], name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let view = file.tensor(name).map_err(|e| format!("{name}: {e}"))?;
    let data = view.data();
    let values = match view.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        safetensors::Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        other => return Err(format!("{name}: dtype {other:?} is not f32 or i32")),
    };
    Ok((view.shape().to_vec(), values))
}
