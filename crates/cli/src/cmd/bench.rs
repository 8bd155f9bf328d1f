//! `collab bench train` and `collab bench infer`: time training steps, or int8 inference in our
//! interpreter (whole runs, or per operator with `--profile`).

use std::path::PathBuf;

use clap::ValueEnum;
use collab::data::{self, SyntheticSize};
use collab_core::BnMode;

use crate::args::{ModelArgs, parse};
use crate::error::CliError;
use crate::output;

/// `bench train --wrap`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum WrapArg {
    /// Plain layers.
    None,
    /// Prunable layers.
    Prune,
    /// Clustered layers.
    Cluster,
    /// Quantization-aware layers.
    Qat,
    /// Pruned, clustered and quantization-aware layers.
    Pcqat,
}

impl From<WrapArg> for collab::bench::Wrap {
    fn from(w: WrapArg) -> Self {
        match w {
            WrapArg::None => Self::None,
            WrapArg::Prune => Self::Prune,
            WrapArg::Cluster => Self::Cluster,
            WrapArg::Qat => Self::Qat,
            WrapArg::Pcqat => Self::Pcqat,
        }
    }
}

/// `bench train --bn`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum BnArg {
    /// Folded into the convolution (compression stages).
    Folded,
    /// Batch statistics (training from scratch).
    Batch,
}

impl From<BnArg> for BnMode {
    fn from(b: BnArg) -> Self {
        match b {
            BnArg::Folded => Self::Folded,
            BnArg::Batch => Self::Batch,
        }
    }
}

/// `bench infer --kernels`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum KernelsArg {
    /// AVX-512 VNNI, else AVX2, else portable.
    Best,
    /// What a CPU without VNNI runs.
    Avx2,
    /// Plain Rust loops, on every CPU.
    Portable,
    /// `best`, plus the N:M kernel for 2:4-sparse CONV_2D / FULLY_CONNECTED weights
    /// (AVX-512 VBMI).
    Sparse,
}

impl From<KernelsArg> for collab_tflite::Kernels {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Best => Self::Best,
            KernelsArg::Avx2 => Self::Avx2,
            KernelsArg::Portable => Self::Portable,
            KernelsArg::Sparse => Self::Sparse,
        }
    }
}

/// `collab bench`'s subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Median ms per training step (forward + backward + Adam) on random input, after warm-up.
    Train {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch size (at least 1).
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
        batch_size: usize,
        /// Timed steps (after 2 warm-up steps), at least 1.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = parse::positive)]
        steps: usize,
        /// Layer wrappers.
        #[arg(long, value_enum, default_value = "none")]
        wrap: WrapArg,
        /// BatchNorm.
        #[arg(long, value_enum, default_value = "folded")]
        bn: BnArg,
        /// Read (and augment) real batches from this data folder inside each timed step.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print `{"median_ms", "min_ms", "steps", "backend", "what"}`.
        #[arg(long)]
        json: bool,
        /// Time the steps through burn-train's Learner (the training path of `collab train`
        /// and the tree) instead of a plain loop.
        #[arg(long, conflicts_with = "data")]
        learner: bool,
    },
    /// Median latency of our int8 interpreter on a .tflite file (single thread).
    Infer {
        /// The .tflite file.
        #[arg(long)]
        model: PathBuf,
        /// Threads (the interpreter is single-threaded; only 1 is accepted).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = parse::threads)]
        threads: usize,
        /// Timed runs (after 10 warm-up runs), at least 1.
        #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = parse::positive)]
        runs: usize,
        /// Convolution kernels.
        #[arg(long, value_enum, default_value = "best")]
        kernels: KernelsArg,
        /// Print each operator's median time (name, shapes, kernel, share of the total)
        /// instead of the whole run's.
        #[arg(long)]
        profile: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Time what `what` asks for and print the timing.
pub fn run(what: Command) -> Result<(), CliError> {
    let (timing, json) = match what {
        Command::Train {
            model,
            batch_size,
            steps,
            wrap,
            bn,
            data,
            seed,
            json,
            learner,
        } => {
            let spec = model.spec()?;
            let sets = match &data {
                Some(dir) => Some(data::load(
                    spec.task(),
                    Some(dir),
                    true,
                    seed,
                    SyntheticSize::default(),
                )?),
                None => None,
            };
            let t = collab::bench::train_step(
                &spec,
                wrap.into(),
                bn.into(),
                batch_size,
                steps,
                seed,
                sets.as_ref().map(|s| s.train.as_ref()),
                learner,
            )?;
            (t, json)
        }
        Command::Infer {
            model,
            threads: _,
            runs,
            kernels,
            profile: true,
            json,
        } => {
            let ops = collab::bench::profile(&model, runs, kernels.into())?;
            if json {
                output::json_line(&ops);
            } else {
                let total: f64 = ops.iter().map(|o| o.seconds).sum();
                println!(
                    "{}: operators' medians sum to {:.4} ms over {runs} runs",
                    model.display(),
                    total * 1e3
                );
                for o in &ops {
                    println!(
                        "{:>3} {:<18} {:>8.4} ms {:>5.1}%  {:<11} {:?} -> {:?}",
                        o.index,
                        o.op,
                        o.seconds * 1e3,
                        100.0 * o.seconds / total.max(f64::MIN_POSITIVE),
                        o.kernel,
                        o.inputs,
                        o.output
                    );
                }
            }
            return Ok(());
        }
        Command::Infer {
            model,
            threads: _,
            runs,
            kernels,
            profile: false,
            json,
        } => (collab::bench::infer(&model, runs, kernels.into())?, json),
    };
    if json {
        output::json_line(&timing);
    } else {
        println!(
            "{}: median {:.3} ms, min {:.3} ms over {} steps ({})",
            timing.what, timing.median_ms, timing.min_ms, timing.steps, timing.backend
        );
    }
    Ok(())
}
