//! `collab train`: train a model from scratch or from published weights, checkpointing every
//! epoch; `--resume` continues an interrupted run. `--out` is checked before any work, and a run
//! that fails before its first checkpoint leaves nothing behind.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use collab::ModelSpec;
use collab::checkpoint::{self, Existing, Manifest};
use collab::data::{self, SyntheticSize};
use collab::train::{self, OptimizerConfig, TrainConfig};
use collab_core::BnMode;

use crate::args::{DevicesArg, ModelArgs, WrittenArg, parse};
use crate::cmd::import::published_ds_cnn;
use crate::error::{self, CliError};
use crate::output::Trained;

/// `train --init`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Init {
    /// Start from published weights (`--weights`).
    Pretrained,
    /// Start from a random initialisation.
    Scratch,
}

/// `collab train`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Data folder (Speech Commands or CIFAR-10); the synthetic set when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Start point.
    #[arg(long, value_enum, default_value = "scratch")]
    init: Init,
    /// Weights for `--init pretrained` (DS-CNN).
    #[arg(long, required_if_eq("init", "pretrained"))]
    weights: Option<PathBuf>,
    /// Epochs, 1..=10000.
    #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = parse::epochs)]
    epochs: usize,
    /// Batch size (at least 1).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
    batch_size: usize,
    /// Learning rate, > 0 (Adam: constant; SGD: initial cosine value). Default: the paper's
    /// schedule.
    #[arg(long, allow_hyphen_values = true, value_parser = parse::learning_rate)]
    lr: Option<f64>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Run folder: the best model, `last/` (the last completed epoch), burn-train's
    /// `checkpoint/` (for --resume), `metrics.csv`, `learning_curve.png`. New or empty; a
    /// checkpoint there needs --resume or --force.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the last completed epoch's checkpoint in OUT (after Ctrl-C or a killed
    /// run, or to train a finished run for more --epochs).
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Replace the checkpoint already at --out with a new run.
    #[arg(long)]
    force: bool,
    /// Early stopping: stop when validation accuracy has not improved for this many
    /// epochs (at least 1).
    #[arg(long, allow_negative_numbers = true, value_parser = parse::positive)]
    patience: Option<usize>,
    #[command(flatten)]
    devices: DevicesArg,
    #[command(flatten)]
    json: WrittenArg,
}

/// Check the options and `--out`, train, and print what was written.
pub fn run(args: Args) -> Result<(), CliError> {
    if args.init == Init::Scratch && args.weights.is_some() {
        return Err(CliError::Usage(
            "--weights is read with --init pretrained only; add --init pretrained or drop \
             --weights"
                .into(),
        ));
    }
    let spec = args.model.spec()?;
    let pretrained = match (args.weights.as_deref(), &spec) {
        (Some(w), ModelSpec::DsCnn { size }) => Some((w, *size)),
        (Some(_), _) => {
            return Err(CliError::Usage(format!(
                "--init pretrained: published weights exist for the DS-CNN models only, not \
                 {}; use --init scratch",
                spec.name()
            )));
        }
        (None, _) => None,
    };
    let out = args.out.as_path();
    let existing = check_train_out(out, &spec, args.resume, args.force)?;
    // Held for the run; a folder this user cannot write is found here, before any work.
    let lock = collab::lock::OutLock::acquire(out)?;
    // Ctrl-C stops after the current step; the last full epoch's checkpoint stays for --resume.
    collab::learn::interrupt_on_ctrl_c();
    let result = train_into(&args, &spec, pretrained);
    if result.is_err() && existing == Existing::Nothing {
        // burn-train's logs and checkpoints of a run that failed, and its start in OUT/last.
        collab::learn::clear_run(out);
        let _ = std::fs::remove_dir_all(out.join("last"));
        // This run made the folder and wrote nothing but its lock: leave nothing behind.
        let only_lock = std::fs::read_dir(out).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == collab::lock::LOCK_FILE)
        });
        if only_lock {
            let _ = std::fs::remove_file(lock.path());
            let _ = std::fs::remove_dir(out);
        }
    }
    drop(lock);
    args.json.emit(&result?);
    Ok(())
}

/// Entries a `collab train` run leaves in its `--out` before its first best model is saved:
/// the lock, `last/`, burn-train's checkpoints and metric logs, and the temporary names of an
/// interrupted save.
fn train_leftover(name: &str) -> bool {
    name == collab::lock::LOCK_FILE
        || name == "last"
        || collab::learn::is_run_file(name)
        || name == ".best-tmp"
        || name.starts_with("..best-tmp.")
        || name.starts_with(".last.")
        || name.starts_with(".collab-probe-")
}

/// What `train --out` holds: [`checkpoint::inspect_target`], except that a folder holding only
/// what an interrupted `collab train` leaves (see [`train_leftover`]) counts as that run's
/// output (its `last/` checkpoint, or empty) instead of a foreign folder.
fn inspect_train_out(out: &Path) -> Result<Existing, CliError> {
    match checkpoint::inspect_target(out) {
        Ok(existing) => Ok(existing),
        Err(err) => {
            let ours = out.is_dir()
                && std::fs::read_dir(out).is_ok_and(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .all(|e| train_leftover(&e.file_name().to_string_lossy()))
                });
            if !ours {
                return Err(err.into());
            }
            checkpoint::writable_parent(out)?;
            let last = out.join("last");
            Ok(if last.join(checkpoint::MANIFEST).is_file() {
                Existing::Checkpoint(Box::new(checkpoint::manifest(&last)?))
            } else {
                Existing::EmptyFolder
            })
        }
    }
}

/// Check `train --out` before any work: refuse a file, device or foreign folder, and a
/// checkpoint of an earlier run unless `--resume` (then `OUT/last` must be a resumable
/// checkpoint of the same model) or `--force`.
fn check_train_out(
    out: &Path,
    spec: &ModelSpec,
    resume: bool,
    force: bool,
) -> Result<Existing, CliError> {
    let existing = inspect_train_out(out)?;
    match &existing {
        Existing::Checkpoint(_) if resume => {
            train::resume_point(out, spec)?;
        }
        Existing::Checkpoint(old) if force => {
            tracing::warn!(
                out = %out.display(),
                old = %old.model.name(),
                "--force: this run replaces the checkpoint there"
            );
        }
        Existing::Checkpoint(old) => {
            return Err(error::failed(
                out,
                format!(
                    "already holds a checkpoint ({}, {}, epoch {}) from an earlier run; pass \
                     --resume to continue it, --force to replace it, or choose another --out",
                    old.model.name(),
                    old.stage,
                    old.epoch
                ),
            ));
        }
        Existing::Nothing | Existing::EmptyFolder if resume => {
            return Err(error::failed(
                out,
                "--resume: there is no checkpoint here to continue; drop --resume to start a \
                 new run",
            ));
        }
        Existing::Nothing | Existing::EmptyFolder => {}
    }
    Ok(existing)
}

/// Train `spec` (from the published DS-CNN weights in `pretrained`, else from scratch) into
/// `args.out`.
fn train_into(
    args: &Args,
    spec: &ModelSpec,
    pretrained: Option<(&Path, collab_models::DsCnnSize)>,
) -> Result<Trained, CliError> {
    let device = collab::device::compute();
    device.seed(args.seed);
    let network = match pretrained {
        Some((w, size)) => published_ds_cnn(w, size, &device)?,
        None => spec.init(&device)?,
    };
    let network = network.with_bn_mode(BnMode::Batch);
    tracing::info!(model = %spec.name(), "loading data");
    let data = data::load(
        spec.task(),
        args.data.as_deref(),
        !args.no_augment,
        args.seed,
        SyntheticSize::default(),
    )?;
    let mut optimizer = OptimizerConfig::for_model(spec);
    if let Some(lr) = args.lr {
        optimizer = match optimizer {
            OptimizerConfig::Adam { .. } => OptimizerConfig::Adam {
                learning_rates: vec![lr],
            },
            OptimizerConfig::SgdCosine {
                momentum,
                weight_decay,
                ..
            } => OptimizerConfig::SgdCosine {
                learning_rate: lr,
                momentum,
                weight_decay,
            },
        };
    }
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        devices: args.devices.devices,
        optimizer,
        seed: args.seed,
        patience: args.patience,
        dashboard: collab::learn::Dashboard::Auto,
    };
    let stage = if pretrained.is_some() {
        "finetuned"
    } else {
        "baseline"
    };
    let manifest = Manifest::new(spec.clone(), stage, args.seed);
    let (_, history) = train::fit(
        network,
        &data,
        &config,
        manifest,
        Some(&args.out),
        args.resume,
    )?;
    Ok(Trained {
        checkpoint: args.out.clone(),
        history,
    })
}
