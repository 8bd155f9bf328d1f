//! Reusing finished nodes: what made a node (its identity: settings, parent, data content,
//! seed, format) and the digests of its files, recorded when it was written and compared
//! before it is reused.

use std::path::Path;

use collab_core::host::to_vec_f32;

use super::{Leaf, StageSpec, TreeConfig};
use crate::CollabError;
use crate::checkpoint;
use crate::data;
use crate::network::{ModelSpec, Network};

/// Bumped whenever a node made from the same inputs would come out differently: nodes written
/// under another format are rebuilt, never reused.
pub const NODE_FORMAT: u32 = 2;

/// sha256 of `bytes` in hex (the digest checkpoints record, [`checkpoint::FileDigest`]).
pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    checkpoint::FileDigest::of(bytes).sha256
}

pub(super) fn file_digest(path: &Path) -> Result<String, CollabError> {
    let bytes = std::fs::read(path).map_err(|e| CollabError::checkpoint(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// A content fingerprint of a data set: its size, every label, and the values of up to 256
/// evenly spaced samples as the model sees them (no augmentation). Moving the folder keeps it;
/// other clips, another split or the synthetic set instead of real data change it.
pub(super) fn data_fingerprint(set: &dyn data::Batches) -> Result<String, CollabError> {
    let n = set.len();
    let take = n.min(256);
    let mut bytes: Vec<u8> = Vec::new();
    bytes.extend_from_slice(&(n as u64).to_le_bytes());
    for label in set.labels() {
        bytes.extend_from_slice(&(label as u64).to_le_bytes());
    }
    let device = crate::device::compute();
    let indices: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
    for chunk in indices.chunks(64) {
        let (x, _) = set.batch(chunk, None, &device)?;
        for v in to_vec_f32(x.flatten::<1>(0, 3)) {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    Ok(sha256_hex(&bytes))
}

/// Everything that made the root node (the baseline): the model and where its weights came
/// from, how it was trained, the data, the seed and the node format.
pub(super) fn root_identity(
    config: &TreeConfig,
    spec: &ModelSpec,
    data: &serde_json::Value,
) -> Result<serde_json::Value, CollabError> {
    let start = match &config.checkpoint {
        Some(dir) => serde_json::json!({
            "checkpoint": file_digest(&dir.join(checkpoint::RECORD))?,
        }),
        None => serde_json::json!({
            "weights": config.weights.as_deref().map(file_digest).transpose()?,
            "model_file": crate::network::is_model_file(&config.model)
                .then(|| file_digest(Path::new(&config.model)))
                .transpose()?,
            "baseline_epochs": config.baseline_epochs,
            "augment": config.augment && config.baseline_epochs > 0,
            "batch_size": (config.baseline_epochs > 0).then_some(config.finetune.batch_size),
        }),
    };
    Ok(serde_json::json!({
        "format": NODE_FORMAT,
        "model": spec,
        "start": start,
        "seed": config.seed,
        "calibration_samples": config.calibration_samples,
        "data": data,
    }))
}

/// Everything that made a stage node: its spec, the fine-tuning, its parent's identity, the
/// data, the seed and the node format.
pub(super) fn stage_identity(
    config: &TreeConfig,
    stage: &StageSpec,
    parent: &serde_json::Value,
    data: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "format": NODE_FORMAT,
        "stage": stage,
        "finetune": config.finetune,
        "parent": sha256_hex(parent.to_string().as_bytes()),
        "seed": config.seed,
        "calibration_samples": config.calibration_samples,
        "data": data,
    })
}

/// What differs between two identities, key by key (`finetune: {…} → {…}`).
fn identity_diff(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            if k == "parent" {
                "its parent node changed".to_string()
            } else {
                format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A finished node in `dir` made from exactly `identity`, with its files intact: its leaf and
/// model. `None` (logging why) when the node must be built: missing, unfinished, made from
/// something else, or with a file that no longer has the digest written at the time.
pub(super) fn reusable(
    dir: &Path,
    name: &str,
    identity: &serde_json::Value,
    device: &burn::tensor::Device,
) -> Result<Option<(Leaf, Network)>, CollabError> {
    let leaf_file = dir.join(LEAF);
    if !leaf_file.is_file() {
        if dir.exists() {
            tracing::info!(
                stage = name,
                "unfinished node from an earlier run: rebuilding it"
            );
        }
        return Ok(None);
    }
    let manifest = checkpoint::manifest(dir)?;
    let recorded = manifest.config.get("identity").cloned().unwrap_or_default();
    if &recorded != identity {
        tracing::warn!(
            stage = name,
            "rebuilding: the node on disk was made from other settings ({})",
            identity_diff(&recorded, identity)
        );
        return Ok(None);
    }
    let tflite = dir.join("model.tflite");
    let written = manifest
        .config
        .get("tflite_sha256")
        .and_then(|v| v.as_str());
    let actual = file_digest(&tflite).ok();
    if written.is_none() || actual.as_deref() != written {
        tracing::warn!(
            stage = name,
            "rebuilding: {} is missing or changed since the node was written",
            tflite.display()
        );
        return Ok(None);
    }
    let leaf: Option<Leaf> = std::fs::read_to_string(&leaf_file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let Some(leaf) = leaf else {
        tracing::warn!(
            stage = name,
            "rebuilding: {} cannot be read",
            leaf_file.display()
        );
        return Ok(None);
    };
    let (net, _) = checkpoint::load(dir, device)?;
    Ok(Some((leaf, net)))
}

/// File name of a finished node's figures; written last, so its presence marks the node done.
pub(super) const LEAF: &str = "leaf.json";

/// The node's file in `dir` measured for deployment into `leaf`, then `dir/leaf.json` written
/// (its presence marks the node finished).
pub(super) fn measure_and_finish(
    leaf: &mut Leaf,
    dir: &Path,
    deploy: &crate::deploy::DeployOptions,
    tools: Option<&collab_tflite::tools::Validators>,
) -> Result<(), CollabError> {
    leaf.device = Some(crate::deploy::measure(
        &dir.join("model.tflite"),
        deploy,
        tools,
    )?);
    crate::export::write(
        &dir.join(LEAF),
        serde_json::to_string_pretty(leaf)
            .unwrap_or_default()
            .as_bytes(),
    )
}
