//! PCQAT on DS-CNN: baseline → pruned 50% → sparsity-preserving clustered (16) → PCQAT, each
//! exported to int8 and measured.
//!
//! Without `--data` it trains DS-CNN-S from scratch on the shipped Speech Commands sample
//! (`datasets/speech_commands_sample`); with a Speech Commands folder it starts from the
//! published DS-CNN-L weights; `--quick` runs on the synthetic set.
//!
//! ```text
//! cargo run --release --example dscnn_pcqat [-- --data ../shared/data/speech_commands_12]
//! ```

#[path = "common/trees.rs"]
mod trees;

use burn_collab::workflow::tree::Scheme;
use clap::Parser;
use trees::{Args, cluster, prune, stage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = trees::dscnn(
        &args,
        vec![
            stage("pruned", "baseline", prune(0.5)),
            stage(
                "sparsity_preserving_clustered",
                "pruned",
                cluster(16, false, true),
            ),
            stage("pcqat", "sparsity_preserving_clustered", Scheme::Qat),
        ],
    );
    trees::run(&args, &config, "dscnn_pcqat")
}
