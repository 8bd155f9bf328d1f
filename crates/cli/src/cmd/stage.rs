//! `collab prune`, `collab cluster` and `collab qat`: one compression stage on a checkpoint,
//! run as a one-stage tree (OUT/baseline is the input, evaluated; OUT/<stage> the new
//! checkpoint with its model.tflite and leaf.json).

use std::path::PathBuf;

use collab::tree::Scheme;

use crate::args::{DevicesArg, parse};
use crate::error::CliError;
use crate::output;

/// What every single-stage command takes.
#[derive(clap::Args, Debug)]
pub struct StageArgs {
    /// The checkpoint to start from (`collab import` / `train` output, or a tree node).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data folder; the synthetic set when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder: OUT/baseline (the input, evaluated) and OUT/<stage> (the new checkpoint
    /// with its model.tflite and leaf.json).
    #[arg(long)]
    out: PathBuf,
    /// Fine-tuning epochs, 1..=10000.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = parse::epochs)]
    epochs: usize,
    /// Batch size (at least 1).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
    batch_size: usize,
    /// Adam learning rate (constant), > 0.
    #[arg(long, default_value_t = 1e-4, allow_hyphen_values = true, value_parser = parse::learning_rate)]
    lr: f64,
    #[command(flatten)]
    devices: DevicesArg,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `collab prune`'s options.
#[derive(clap::Args, Debug)]
pub struct Prune {
    #[command(flatten)]
    stage: StageArgs,
    /// Final sparsity, in [0, 1).
    #[arg(long, default_value_t = 0.5, allow_hyphen_values = true, value_parser = parse::sparsity)]
    sparsity: f64,
    /// Leave depthwise convolutions dense.
    #[arg(long)]
    skip_depthwise: bool,
}

/// `collab cluster`'s options.
#[derive(clap::Args, Debug)]
pub struct Cluster {
    #[command(flatten)]
    stage: StageArgs,
    /// Clusters per tensor (or per channel), 2..=256.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = parse::clusters)]
    clusters: usize,
    /// One set of centroids per output channel.
    #[arg(long)]
    per_channel: bool,
    /// Keep the checkpoint's zeros exactly.
    #[arg(long)]
    preserve_sparsity: bool,
    /// One int8-grid codebook shared by all output channels, each scaled by its largest
    /// |w|: per-channel ranges, the same ≤ k int8 codes in every channel.
    #[arg(long, conflicts_with = "per_channel")]
    channel_scaled: bool,
}

/// `collab prune`: PolynomialDecay to `--sparsity` while fine-tuning.
pub fn prune(args: Prune) -> Result<(), CliError> {
    let scheme = Scheme::Prune {
        sparsity: args.sparsity,
        end_step: None,
        frequency: 10,
        power: 3.0,
        skip_depthwise: args.skip_depthwise,
    };
    args.stage.run("pruned", scheme)
}

/// `collab cluster`: weight clustering while fine-tuning.
pub fn cluster(args: Cluster) -> Result<(), CliError> {
    let scheme = Scheme::Cluster {
        clusters: args.clusters,
        per_channel: args.per_channel,
        preserve_sparsity: args.preserve_sparsity,
        channel_scaled: args.channel_scaled,
    };
    args.stage.run("clustered", scheme)
}

/// `collab qat`: quantization-aware training, keeping what the checkpoint's lineage says.
pub fn qat(args: StageArgs) -> Result<(), CliError> {
    args.run("qat", Scheme::Qat)
}

impl StageArgs {
    /// Run the one-stage tree `baseline → name` and print its nodes.
    fn run(self, name: &str, scheme: Scheme) -> Result<(), CliError> {
        let config = collab::tree::TreeConfig {
            model: String::new(),
            width: 1.0,
            weights: None,
            checkpoint: Some(self.checkpoint.clone()),
            baseline_epochs: 0,
            seed: self.seed,
            finetune: collab::tree::FineTune {
                epochs: self.epochs,
                devices: self.devices.devices,
                batch_size: self.batch_size,
                learning_rate: self.lr,
            },
            calibration_samples: 200,
            synthetic_train: None,
            synthetic_val: None,
            stages: vec![collab::tree::StageSpec {
                name: name.into(),
                parent: "baseline".into(),
                scheme,
            }],
            targets: Default::default(),
            plot_layer: None,
            npu: None,
            latency_seconds: None,
            input: None,
            augment: true,
        };
        let leaves = collab::tree::run(&config, self.data.as_deref(), &self.out)?.leaves;
        output::leaves(&leaves, self.json);
        if !self.json {
            println!("checkpoint: {}", self.out.join(name).display());
        }
        Ok(())
    }
}
