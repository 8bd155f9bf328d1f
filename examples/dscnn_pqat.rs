//! PQAT on DS-CNN: baseline → pruned 50% → PQAT (and plain QAT for comparison), each exported
//! to int8 and measured, as the published PQAT table.
//!
//! Without `--data` it trains DS-CNN-S from scratch on the shipped Speech Commands sample
//! (`datasets/speech_commands_sample`); with a Speech Commands folder it starts from the
//! published DS-CNN-L weights; `--quick` runs on the synthetic set.
//!
//! ```text
//! cargo run --release --example dscnn_pqat                                    # shipped sample
//! cargo run --release --example dscnn_pqat -- --data ../shared/data/speech_commands_12
//! ```

#[path = "common/trees.rs"]
mod trees;

use burn_collab::workflow::tree::Scheme;
use clap::Parser;
use trees::{Args, prune, stage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = trees::dscnn(
        &args,
        vec![
            stage("pruned", "baseline", prune(0.5)),
            stage("qat", "baseline", Scheme::Qat),
            stage("pqat", "pruned", Scheme::Qat),
        ],
    );
    trees::run(&args, &config, "dscnn_pqat")
}
