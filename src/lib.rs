//! burn-collab: collaborative model optimization (pruning, weight clustering and int8
//! quantization, alone and chained) for the burn deep-learning framework.
//!
//! This umbrella crate re-exports the workspace crates and owns the runnable `examples/`.

pub use collab_cluster as cluster;
pub use collab_core as core;
pub use collab_data as data;
pub use collab_import as import;
pub use collab_models as models;
pub use collab_prune as prune;
pub use collab_quant as quant;
pub use collab_tflite as tflite;

/// The workflow layer (model registry, training through burn-train, checkpoints, int8 export).
pub use collab as workflow;
