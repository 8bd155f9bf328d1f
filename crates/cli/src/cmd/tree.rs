//! `collab tree`: run a deployment tree from its config, with targets and devices from the
//! command line replacing the config's.

use std::path::PathBuf;

use crate::args::parse;
use crate::error::CliError;
use crate::output;

/// `collab tree`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The tree (configs/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// Data folder (Speech Commands / CIFAR-10); the synthetic set when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder (finished nodes in it are reused).
    #[arg(long)]
    out: PathBuf,
    /// Print results.json instead of the table.
    #[arg(long)]
    json: bool,
    /// Devices every stage trains on, data parallel (replaces the config's
    /// `finetune.devices`; see `collab train --devices`).
    #[arg(long, allow_negative_numbers = true, value_parser = parse::devices)]
    devices: Option<usize>,
    /// Stop at the first node (level by level) whose .tflite is at most this many bytes…
    #[arg(long, allow_negative_numbers = true)]
    target_size: Option<usize>,
    /// … whose gzip -9 size is at most this …
    #[arg(long, allow_negative_numbers = true)]
    target_gzip: Option<usize>,
    /// … whose int8 accuracy is at most this many points (>= 0) below the baseline's …
    #[arg(long, allow_hyphen_values = true, value_parser = parse::non_negative)]
    max_accuracy_drop: Option<f64>,
    /// … whose median latency in our interpreter (batch 1, one thread, this machine) is at
    /// most this many milliseconds …
    #[arg(long, allow_hyphen_values = true, value_parser = parse::latency)]
    target_latency_ms: Option<f64>,
    /// … whose inference time on --npu, as Vela estimates it, is at most this many ms …
    #[arg(long, allow_hyphen_values = true, value_parser = parse::npu_ms, requires = "npu")]
    target_npu_ms: Option<f64>,
    /// … whose flash use is at most this many bytes (Vela's flash with --npu, else the
    /// .tflite file) …
    #[arg(long, allow_negative_numbers = true)]
    target_flash_bytes: Option<usize>,
    /// … and whose TFLite Micro tensor arena is at most this many bytes.
    #[arg(long, allow_negative_numbers = true)]
    target_arena_bytes: Option<usize>,
    /// Compile every node with Vela for this Ethos-U configuration: NPU time, cycles, SRAM,
    /// flash and encoded weights.
    #[arg(long, value_parser = parse::npu())]
    npu: Option<String>,
}

/// Run the tree; print its nodes, and with targets the walk that checked them.
pub fn run(args: Args) -> Result<(), CliError> {
    let mut tree = collab::tree::TreeConfig::open(&args.config)?;
    if let Some(n) = args.devices {
        tree.finetune.devices = n;
    }
    let given = collab::tree::Targets {
        max_bytes: args.target_size,
        max_gzip: args.target_gzip,
        max_accuracy_drop: args.max_accuracy_drop,
        max_latency_ms: args.target_latency_ms,
        max_npu_ms: args.target_npu_ms,
        max_flash_bytes: args.target_flash_bytes,
        max_arena_bytes: args.target_arena_bytes,
    };
    // Targets on the command line replace the config's.
    if given.any() {
        tree.targets = given;
    }
    if args.npu.is_some() {
        tree.npu = args.npu;
    }
    let outcome = collab::tree::run(&tree, args.data.as_deref(), &args.out)?;
    output::leaves(&outcome.leaves, args.json);
    if args.json {
        return Ok(());
    }
    if tree.targets.any() {
        for step in &outcome.walk {
            match step.misses.is_empty() {
                true => println!("{}: meets every target", step.stage),
                false => println!("{}: rejected ({})", step.stage, step.misses.join("; ")),
            }
        }
        match &outcome.targets_met_by {
            Some(path) => println!("targets met by: {}", path.join(" → ")),
            None => println!("no node meets the targets"),
        }
    }
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}
