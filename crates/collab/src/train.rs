//! Training runs of `collab train` and evaluation.
//!
//! [`fit`] trains a [`Network`] through burn-train ([`crate::learn`]) with the optimizers and
//! schedules of the papers ([`OptimizerConfig`]), and keeps the project's checkpoints with
//! manifests around burn-train's own: the best validation model in `out`, the last completed
//! epoch in `out/last`. Evaluation is [`crate::eval`] (re-exported here).

use std::path::Path;

use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::checkpoint::{self, Manifest};
use crate::data::TaskData;
use crate::network::{ModelSpec, Network};

pub use crate::learn::OptimizerConfig;

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size (of each device, with `devices` > 1).
    pub batch_size: usize,
    /// Devices to train on, data parallel: each step takes `devices × batch_size` items
    /// ([`crate::learn::Plan::devices`]).
    #[serde(default = "crate::learn::one_device")]
    pub devices: usize,
    /// Optimizer and schedule.
    pub optimizer: OptimizerConfig,
    /// Seed for shuffling and augmentation (per epoch: same seed, same batches).
    pub seed: u64,
    /// Early stopping: stop when validation accuracy has not improved for this many epochs.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Terminal output: burn-train's dashboard on a terminal, or log lines.
    #[serde(skip)]
    pub dashboard: crate::learn::Dashboard,
}

pub use crate::learn::EpochMetrics;

pub use crate::eval::{ClassAccuracy, EvalReport, evaluate};

/// Train `network` on `data.train` with burn-train ([`crate::learn`]), validating on
/// `data.val` after each epoch.
///
/// With `out`, burn-train's files (checkpoints of model, optimizer and schedule per epoch,
/// metric logs, `metrics.csv`, `learning_curve.png`) go to `out`; at the end the best
/// validation model is saved to `out` itself and the last completed epoch's to `out/last`,
/// each with its manifest. `resume` continues from the last checkpoint in `out`. Without
/// `out` the run's files go to a temporary folder, removed afterwards.
pub fn fit(
    network: Network,
    data: &TaskData,
    config: &TrainConfig,
    mut manifest: Manifest,
    out: Option<&Path>,
    resume: bool,
) -> Result<(Network, Vec<EpochMetrics>), CollabError> {
    let mut resume_from = None;
    if resume {
        let out = out.ok_or_else(|| CollabError::Usage("--resume needs --out".into()))?;
        resume_point(out, &manifest.model)?;
        resume_from = crate::learn::last_checkpoint(out);
        tracing::info!(epoch = resume_from.unwrap_or(0), "resuming");
    }
    // Without `out`, the run's files go to a temporary folder removed when this returns.
    let scratch;
    let dir = match out {
        Some(out) => out,
        None => {
            scratch = checkpoint::Scratch::temp()?;
            scratch.path()
        }
    };
    manifest.config = serde_json::to_value(config).unwrap_or_default();
    manifest.data = Some(format!(
        "{}; {}",
        data.train.describe(),
        data.train.fingerprint()
    ));
    if let (Some(out), None) = (out, resume_from) {
        // A new run: nothing of an earlier one in OUT, and OUT/last names this run's model from
        // the start, so that a run killed before its end can still be resumed.
        crate::learn::clear_run(out);
        let mut start = manifest.clone();
        start.epoch = 0;
        checkpoint::save(&out.join("last"), &network, &start, None)?;
    }
    let plan = crate::learn::Plan {
        dir: dir.to_path_buf(),
        label: "train".into(),
        epochs: config.epochs,
        batch_size: config.batch_size,
        devices: config.devices,
        optimizer: config.optimizer.clone(),
        seed: config.seed,
        augment: true,
        patience: config.patience,
        resume_from,
        dashboard: config.dashboard,
        interrupter: None,
    };
    let learned = crate::learn::learn(network.clone(), data, &plan)?;
    let history = learned.history;
    if let Some(name) = first_non_finite(&learned.model) {
        let done = history.last().map_or(0, |h| h.epoch);
        let steps =
            crate::learn::steps_per_epoch(data.train.len(), config.batch_size, config.devices);
        return Err(crate::learn::diverged(
            done + 1,
            steps,
            &format!("parameter `{name}` holds NaN or infinite values"),
            config
                .optimizer
                .learning_rate((done + 1) * steps - 1, steps * config.epochs),
        ));
    }
    if learned.interrupted {
        tracing::warn!(
            epochs = history.len(),
            "interrupted: the last full epoch is saved; --resume continues from it"
        );
    }
    if learned.stopped_early {
        tracing::info!(
            epochs = history.len(),
            patience = config.patience.unwrap_or(0),
            "early stopping: validation accuracy stopped improving"
        );
    }
    if let Some((out, last)) = out.and_then(|o| Some((o, crate::learn::last_checkpoint(o)?))) {
        let mut best: Option<&EpochMetrics> = None;
        for h in &history {
            let saved = out
                .join("checkpoint")
                .join(format!("model-{}.bpk", h.epoch))
                .is_file();
            if saved && best.is_none_or(|b| h.val_accuracy > b.val_accuracy) {
                best = Some(h);
            }
        }
        manifest.epoch = last;
        manifest.metrics = serde_json::json!({
            "val_accuracy": history.iter().find(|h| h.epoch == last).map(|h| h.val_accuracy),
            "history": history,
            "interrupted": learned.interrupted,
            "stopped_early": learned.stopped_early,
        });
        let last_net = crate::learn::load_checkpoint(network.clone(), out, last)?;
        checkpoint::save(&out.join("last"), &last_net, &manifest, None)?;
        if let Some(b) = best {
            let best_net = match b.epoch == last {
                true => last_net,
                false => crate::learn::load_checkpoint(network, out, b.epoch)?,
            };
            let mut best_manifest = manifest.clone();
            best_manifest.epoch = b.epoch;
            best_manifest.metrics["val_accuracy"] = serde_json::json!(b.val_accuracy);
            best_manifest.metrics["val_samples"] = serde_json::json!(data.val.len());
            best_manifest.metrics["best_epoch"] = serde_json::json!(b.epoch);
            save_best(out, &best_net, &best_manifest)?;
        }
    }
    Ok((learned.model, history))
}

/// Check that `out/last` is a checkpoint `collab train --resume` can continue for `model`:
/// its manifest reads, it was made for the same model (the error names both), and its
/// optimizer state is there. Returns its manifest.
pub fn resume_point(out: &Path, model: &ModelSpec) -> Result<Manifest, CollabError> {
    let last = out.join("last");
    if !last.join(checkpoint::MANIFEST).is_file() {
        return Err(CollabError::checkpoint(
            &last,
            "--resume: no checkpoint to continue here (a training run writes its state to \
             OUT/last after each epoch); drop --resume to start a new run, with --force to \
             replace the checkpoint in OUT",
        ));
    }
    let m = checkpoint::manifest(&last)?;
    if m.model != *model {
        return Err(CollabError::checkpoint(
            &last,
            format!(
                "--resume: this checkpoint is a {} model, the run asks for {}; resume with \
                 --model {0} (and its --width), or start a new {1} run with --force or another \
                 --out",
                m.model.name(),
                model.name()
            ),
        ));
    }
    if crate::learn::last_checkpoint(out).is_none() {
        return Err(missing_optimizer(&out.join("checkpoint")));
    }
    Ok(m)
}

fn missing_optimizer(folder: &Path) -> CollabError {
    CollabError::checkpoint(
        folder,
        "--resume: the optimizer state (burn-train's optim-N.bpk, with model-N.bpk and \
         scheduler-N.bpk, of one epoch) is missing, so training cannot continue exactly; start \
         again with --force (replacing this checkpoint) or train into another --out",
    )
}

/// The path of the first parameter of `network` holding a NaN or an infinity, if any.
fn first_non_finite(network: &Network) -> Option<String> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    #[derive(Default)]
    struct Finder {
        path: Vec<String>,
        found: Option<String>,
    }
    impl ModuleVisitor for Finder {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none()
                && collab_core::host::to_vec_f32(param.val())
                    .iter()
                    .any(|v| !v.is_finite())
            {
                self.found = Some(self.path.join("."));
            }
        }
    }
    let mut finder = Finder::default();
    network.visit(&mut finder);
    finder.found
}

/// The best model goes to `out` itself (keeping `out/last` in place).
fn save_best(out: &Path, network: &Network, manifest: &Manifest) -> Result<(), CollabError> {
    let tmp = out.join(".best-tmp");
    checkpoint::save(&tmp, network, manifest, None)?;
    for name in [checkpoint::RECORD, checkpoint::MANIFEST] {
        std::fs::rename(tmp.join(name), out.join(name))
            .map_err(|e| CollabError::checkpoint(&out.join(name), e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
