//! Locating the shared real data (`../shared` beside the repository) for tests and examples.

use std::path::PathBuf;

/// `$COLLAB_SHARED`, else `<repository>/../shared`. `None` when it is not there.
pub fn shared_dir() -> Option<PathBuf> {
    let candidate = match std::env::var_os("COLLAB_SHARED") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
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
