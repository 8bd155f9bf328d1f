//! CQAT on MobileNet v1 (CIFAR variant): baseline trained here → clustered (16 per tensor) →
//! CQAT, each exported to int8 and measured, as the published MobileNet CQAT table.
//!
//! ```text
//! cargo run --release --example mobilenet_cqat                                  # synthetic
//! cargo run --release --example mobilenet_cqat -- --data ../shared/data/cifar10 --width 0.5
//! ```

#[path = "common/trees.rs"]
mod trees;

use burn_collab::workflow::tree::{FineTune, Scheme, TreeConfig};
use clap::Parser;
use trees::{cluster, stage};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: trees::Args,
    /// Width multiplier.
    #[arg(long, default_value_t = 0.5)]
    width: f64,
    /// Epochs to train the baseline.
    #[arg(long, default_value_t = 10)]
    baseline_epochs: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let args = &cli.common;
    let config = TreeConfig {
        model: "mobilenet-v1-cifar".into(),
        width: if args.quick { 0.25 } else { cli.width },
        weights: None,
        checkpoint: None,
        baseline_epochs: if args.quick { 2 } else { cli.baseline_epochs },
        seed: args.seed,
        finetune: FineTune {
            epochs: args.epochs.unwrap_or(if args.quick { 1 } else { 3 }),
            devices: 1,
            batch_size: 64,
            learning_rate: 1e-4,
        },
        calibration_samples: 200,
        synthetic_train: Some(if args.quick { 300 } else { 1200 }),
        synthetic_val: Some(if args.quick { 100 } else { 300 }),
        stages: vec![
            stage("clustered", "baseline", cluster(16, false, false)),
            stage("cqat", "clustered", Scheme::Qat),
            stage("qat", "baseline", Scheme::Qat),
        ],
        targets: Default::default(),
        plot_layer: None,
        npu: None,
        latency_seconds: None,
        input: None,
        augment: true,
    };
    trees::run(args, &config, "mobilenet_cqat")
}
