//! Training runs of `collab train` and evaluation.
//!
//! [`fit`] trains a [`Network`] through burn-train ([`crate::learn`]) with the optimizers and
//! schedules of the papers ([`OptimizerConfig`]), and keeps the project's checkpoints with
//! manifests around burn-train's own: the best validation model in `out`, the last completed
//! epoch in `out/last`. [`evaluate`] gives accuracy overall and per class.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::checkpoint::{self, Manifest};
use crate::data::{Batches, TaskData};
use crate::network::{ModelSpec, Network};

/// Optimizer and learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Adam (β 0.9 / 0.999, ε 1e-7 as Keras); the run is split into equal parts, one learning
    /// rate each (ML-KWS-for-MCU: 5e-4, 1e-4, 2e-5).
    Adam {
        /// Learning rates of the consecutive parts.
        learning_rates: Vec<f64>,
    },
    /// SGD with momentum and weight decay, cosine decay of the learning rate to 0.
    SgdCosine {
        /// Initial learning rate.
        learning_rate: f64,
        /// Momentum (no dampening).
        momentum: f64,
        /// L2 weight decay.
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The papers' choice for `model`: Adam with the ML-KWS steps for DS-CNN, SGD 0.05,
    /// momentum 0.9, weight decay 5e-4, cosine for MobileNet.
    pub fn for_model(model: &ModelSpec) -> Self {
        match model {
            ModelSpec::DsCnn { .. } => Self::Adam {
                learning_rates: vec![5e-4, 1e-4, 2e-5],
            },
            _ => Self::SgdCosine {
                learning_rate: 0.05,
                momentum: 0.9,
                weight_decay: 5e-4,
            },
        }
    }

    /// Learning rate at `step` of `total`.
    pub fn learning_rate(&self, step: usize, total: usize) -> f64 {
        match self {
            Self::Adam { learning_rates } => {
                let parts = learning_rates.len().max(1);
                let part = (step * parts / total.max(1)).min(parts - 1);
                learning_rates.get(part).copied().unwrap_or(1e-3)
            }
            Self::SgdCosine { learning_rate, .. } => {
                let p = step as f64 / total.max(1) as f64;
                0.5 * learning_rate * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }

    /// The optimizer (Adam with ε 1e-7 as Keras, or SGD with momentum and weight decay).
    pub fn init(&self) -> ModuleOptimizer {
        match self {
            Self::Adam { .. } => AdamConfig::new().with_epsilon(1e-7).init(),
            Self::SgdCosine {
                momentum,
                weight_decay,
                ..
            } => SgdConfig::new()
                .with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(*momentum)
                        .with_dampening(0.0),
                ))
                .with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)))
                .init(),
        }
    }
}

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

/// Accuracy on a set, overall and per class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: usize,
    /// Per class: accuracy and sample count.
    pub per_class: BTreeMap<String, ClassAccuracy>,
}

/// One class's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Top-1 accuracy within the class.
    pub accuracy: f64,
    /// Samples of the class.
    pub samples: usize,
}

/// Evaluate `forward` (in evaluation mode, no autodiff) on all of `data`.
pub fn evaluate<F>(
    forward: F,
    data: &dyn Batches,
    batch_size: usize,
) -> Result<EvalReport, CollabError>
where
    F: Fn(burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2>,
{
    let device = crate::device::compute();
    let names = data.class_names();
    let mut correct = vec![0usize; names.len()];
    let mut total = vec![0usize; names.len()];
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = data.batch(chunk, None, &device)?;
        let pred = forward(x).argmax(1).flatten::<1>(0, 1);
        let pred = collab_core::host::to_vec_i64(pred);
        let y = collab_core::host::to_vec_i64(y);
        for (p, t) in pred.iter().zip(&y) {
            let t = *t as usize;
            if t < total.len() {
                total[t] += 1;
                correct[t] += usize::from(p == &(t as i64));
            }
        }
    }
    let samples: usize = total.iter().sum();
    let per_class = names
        .into_iter()
        .enumerate()
        .filter(|(c, _)| total[*c] > 0)
        .map(|(c, name)| {
            (
                name,
                ClassAccuracy {
                    accuracy: correct[c] as f64 / total[c] as f64,
                    samples: total[c],
                },
            )
        })
        .collect();
    Ok(EvalReport {
        accuracy: correct.iter().sum::<usize>() as f64 / samples.max(1) as f64,
        samples,
        per_class,
    })
}

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
        return Err(diverged(
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

/// The error of a run whose loss or weights stopped being finite (the training loop here and
/// the tree's fine-tuning).
pub(crate) fn diverged(epoch: usize, step: usize, what: &str, learning_rate: f64) -> CollabError {
    CollabError::Training(format!(
        "training diverged at epoch {epoch}, step {step}: {what} (learning rate {learning_rate:e}); \
         nothing of this epoch was saved. Lower the learning rate (--lr, or the config's \
         learning_rate), e.g. by 10x"
    ))
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

/// A progress bar drawn on terminals only; logs carry the figures elsewhere.
pub fn progress(len: u64, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}
