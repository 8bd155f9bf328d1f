//! Per-tensor vs per-channel clustering (16 clusters) and their CQAT, on DS-CNN: the
//! published per-channel comparison. Without `--data`, DS-CNN-S on the shipped Speech
//! Commands sample (`datasets/speech_commands_sample`).
//!
//! ```text
//! cargo run --release --example per_channel [-- --data ../shared/data/speech_commands_12]
//! ```

#[path = "common/trees.rs"]
mod trees;

use burn_collab::workflow::tree::Scheme;
use clap::Parser;
use trees::{Args, cluster, stage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = trees::dscnn(
        &args,
        vec![
            stage("clustered", "baseline", cluster(16, false, false)),
            stage(
                "clustered_per_channel",
                "baseline",
                cluster(16, true, false),
            ),
            stage("cqat", "clustered", Scheme::Qat),
            stage("cqat_per_channel", "clustered_per_channel", Scheme::Qat),
        ],
    );
    trees::run(&args, &config, "per_channel")
}
