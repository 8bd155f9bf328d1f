//! The training loop and evaluation.
//!
//! A plain loop rather than burn-train's `Learner`: the wrappers advance their own state in
//! the forward pass, so nothing needs the Learner's hooks, and this keeps burn-train (and its
//! build time) out of the workspace. It gives what the Learner would: Adam / SGD with the
//! schedules of the papers, per-epoch checkpoints with the optimizer state, best-on-validation,
//! exact resume, a progress bar on terminals and one log line per epoch everywhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::checkpoint::{self, Manifest};
use crate::data::{Batches, TaskData, epoch_rng};
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

    fn init(&self) -> ModuleOptimizer {
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
    /// Batch size.
    pub batch_size: usize,
    /// Optimizer and schedule.
    pub optimizer: OptimizerConfig,
    /// Seed for shuffling and augmentation (per epoch: same seed, same batches).
    pub seed: u64,
}

/// Figures of one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy (on the augmented batches).
    pub train_accuracy: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
}

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

/// Train `network` on `data.train`, validating on `data.val` after each epoch.
///
/// With `out`, the state after every epoch goes to `out/last` (model, optimizer, manifest) and
/// the best validation model to `out` itself; `resume` continues from `out/last`.
pub fn fit(
    network: Network,
    data: &TaskData,
    config: &TrainConfig,
    mut manifest: Manifest,
    out: Option<&Path>,
    resume: bool,
) -> Result<(Network, Vec<EpochMetrics>), CollabError> {
    let device = crate::device::compute().autodiff();
    // `train()` moves plain tensors onto the autodiff device with their configured trainability.
    let mut network = network.fork(&device).train();
    let mut optim = config.optimizer.init();
    let mut start_epoch = 0;
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut best = f64::NEG_INFINITY;
    if resume {
        let out = out.ok_or_else(|| CollabError::Usage("--resume needs --out".into()))?;
        let last = out.join("last");
        let m = resume_point(out, &manifest.model)?;
        let (loaded, _) = checkpoint::load(&last, &device)?;
        network = loaded.with_bn_mode(current_mode(&network));
        // `resume_point` checked that the file is there.
        let record = checkpoint::load_optimizer(&last)?.ok_or_else(|| missing_optimizer(&last))?;
        optim = optim.load_record(record);
        start_epoch = m.epoch;
        history = serde_json::from_value(m.metrics.get("history").cloned().unwrap_or_default())
            .unwrap_or_default();
        best = history
            .iter()
            .map(|h| h.val_accuracy)
            .fold(f64::NEG_INFINITY, f64::max);
        tracing::info!(epoch = start_epoch, "resuming");
    }
    if data.train.is_empty() || data.val.is_empty() {
        return Err(CollabError::Training(format!(
            "the {} set is empty ({}); training needs samples in both the training and the \
             validation split",
            if data.train.is_empty() {
                "training"
            } else {
                "validation"
            },
            if data.train.is_empty() {
                data.train.describe()
            } else {
                data.val.describe()
            }
        )));
    }
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let steps_per_epoch = data.train.len().div_ceil(config.batch_size.max(1));
    let total_steps = steps_per_epoch * config.epochs;
    manifest.config = serde_json::to_value(config).unwrap_or_default();
    manifest.data = Some(format!(
        "{}; {}",
        data.train.describe(),
        data.train.fingerprint()
    ));
    for epoch in start_epoch..config.epochs {
        let bar = crate::train::progress(steps_per_epoch as u64, &format!("epoch {}", epoch + 1));
        let start = Instant::now();
        let mut rng = epoch_rng(config.seed, epoch);
        let batches = collab_data::shuffled_batches(
            data.train.len(),
            config.batch_size,
            config.seed.wrapping_add(epoch as u64),
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (i, indices) in batches.iter().enumerate() {
            let step = epoch * steps_per_epoch + i;
            let (x, y) = data.train.batch(indices, Some(&mut rng), &device)?;
            let logits = network.forward(x);
            let pred =
                collab_core::host::to_vec_i64(logits.clone().detach().argmax(1).flatten::<1>(0, 1));
            let target = collab_core::host::to_vec_i64(y.clone());
            correct += pred.iter().zip(&target).filter(|(a, b)| a == b).count();
            seen += indices.len();
            let loss = loss_fn.forward(logits, y);
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                return Err(diverged(
                    epoch + 1,
                    i + 1,
                    &format!("the loss became {value}"),
                    config.optimizer.learning_rate(step, total_steps),
                ));
            }
            loss_sum += value * indices.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &network);
            network = optim.step(
                config.optimizer.learning_rate(step, total_steps),
                network,
                grads,
            );
            bar.inc(1);
        }
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        if let Some(name) = first_non_finite(&network) {
            return Err(diverged(
                epoch + 1,
                steps_per_epoch,
                &format!("parameter `{name}` holds NaN or infinite values"),
                config
                    .optimizer
                    .learning_rate((epoch + 1) * steps_per_epoch - 1, total_steps),
            ));
        }
        let eval = network.valid();
        let val = evaluate(|x| eval.forward(x), data.val.as_ref(), 256)?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_accuracy: val.accuracy,
            seconds,
        };
        tracing::info!(
            epoch = metrics.epoch,
            loss = format!("{:.4}", metrics.loss),
            train_accuracy = format!("{:.4}", metrics.train_accuracy),
            val_accuracy = format!("{:.4}", metrics.val_accuracy),
            seconds = format!("{:.1}", seconds),
            "epoch done"
        );
        history.push(metrics);
        if let Some(out) = out {
            manifest.epoch = epoch + 1;
            manifest.metrics = serde_json::json!({
                "val_accuracy": val.accuracy,
                "val_samples": val.samples,
                "history": history,
            });
            checkpoint::save(
                &out.join("last"),
                &network,
                &manifest,
                Some(optim.to_record()),
            )?;
            if val.accuracy > best {
                best = val.accuracy;
                let mut best_manifest = manifest.clone();
                best_manifest.metrics["best_epoch"] = serde_json::json!(epoch + 1);
                save_best(out, &network, &best_manifest)?;
            }
        }
    }
    Ok((network, history))
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
    if !last.join(checkpoint::OPTIMIZER).is_file() {
        return Err(missing_optimizer(&last));
    }
    Ok(m)
}

fn missing_optimizer(last: &Path) -> CollabError {
    CollabError::checkpoint(
        last,
        format!(
            "--resume: the optimizer state ({}) is missing, so training cannot continue \
             exactly; start again with --force (replacing this checkpoint) or train into \
             another --out",
            checkpoint::OPTIMIZER
        ),
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

fn current_mode(network: &Network) -> collab_core::BnMode {
    match network {
        Network::DsCnn(m) => m.conv1.mode,
        Network::MobileNetV1(m) => m.stem.mode,
        Network::MobileNetV2(m) => m.stem.mode,
        Network::Graph(m) => m.convs.first().map(|c| c.mode).unwrap_or_default(),
    }
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
