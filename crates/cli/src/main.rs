//! `collab`: train, evaluate, import and describe the models of burn-collab.
//!
//! This file is the command tree and its dispatch; each subcommand lives in [`cmd`], the
//! options several share in [`args`], what they print in [`output`]. Exit codes ([`error`]):
//! 0 success, 1 a failure (the message says what and how to fix it), 2 bad usage.

mod alloc;
mod args;
mod cmd;
mod error;
mod logging;
mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

#[derive(Parser, Debug)]
#[command(
    name = "collab",
    version,
    about = "Collaborative optimization of burn models: train, evaluate, import, export to int8 TFLite, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device for models, training and evaluation. The int8 interpreter always runs on
    /// the CPU.
    #[arg(long, global = true, value_enum, default_value = "cpu")]
    device: args::DeviceArg,
    #[command(flatten)]
    log: logging::Verbosity,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model's layers, parameters and MACs.
    Info(cmd::info::Args),
    /// Import a model file (ONNX, float TFLite) as a trainable checkpoint, or published DS-CNN
    /// weights (safetensors, TF layouts).
    Import(cmd::import::Args),
    /// Train a model (from scratch or published weights); checkpoints every epoch.
    Train(cmd::train::Args),
    /// Run a deployment tree (baseline → pruned / clustered / QAT → PQAT / CQAT / PCQAT), every
    /// node a checkpoint exported to int8, evaluated and sized; writes results.json and table.md.
    Tree(cmd::tree::Args),
    /// Prune a checkpoint while fine-tuning (PolynomialDecay to --sparsity); writes OUT/pruned.
    Prune(cmd::stage::Prune),
    /// Cluster a checkpoint's weights while fine-tuning; writes OUT/clustered. From a pruned
    /// checkpoint with --preserve-sparsity: sparsity-preserving clustering.
    Cluster(cmd::stage::Cluster),
    /// Quantization-aware training of a checkpoint, keeping its zeros (PQAT) and clusters (CQAT,
    /// PCQAT) as its lineage says; writes OUT/qat with its int8 file.
    Qat(cmd::stage::StageArgs),
    /// Time training steps or int8 inference.
    Bench {
        #[command(subcommand)]
        what: cmd::bench::Command,
    },
    /// Report a .tflite file: operators, tensors, weight zeros and unique values, size and gzip size.
    Inspect(cmd::inspect::Args),
    /// Write a checkpoint as a full-integer int8 .tflite (PTQ calibration where it has no QAT
    /// ranges); `ptq` is the same command.
    #[command(alias = "ptq")]
    Export(cmd::export::Args),
    /// Evaluate a checkpoint or an int8 .tflite file (our interpreter) on a data set.
    Eval(cmd::eval::Args),
}

fn run(cli: Cli) -> Result<(), CliError> {
    collab::device::select(cli.device.into())?;
    match cli.command {
        Command::Info(args) => cmd::info::run(args),
        Command::Import(args) => cmd::import::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Tree(args) => cmd::tree::run(args),
        Command::Prune(args) => cmd::stage::prune(args),
        Command::Cluster(args) => cmd::stage::cluster(args),
        Command::Qat(args) => cmd::stage::qat(args),
        Command::Bench { what } => cmd::bench::run(what),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Eval(args) => cmd::eval::run(args),
    }
}

fn main() -> ExitCode {
    alloc::keep_freed_memory();
    let cli = Cli::parse();
    cli.log.init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => err.report(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        // clap's own checks: unique option names and ids, valid defaults, existing
        // `requires` / `conflicts_with` targets, across every subcommand.
        super::Cli::command().debug_assert();
    }
}
