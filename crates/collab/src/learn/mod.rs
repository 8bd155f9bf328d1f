//! Training through burn-train: the one training path of the project.
//!
//! `collab train` and every tree stage hand their model to burn-train's `Learner` and
//! `SupervisedTraining`, as a burn user does for a plain model. Nothing here reaches into the
//! wrappers: pruning masks, schedules, centroids and activation ranges advance in their own
//! `forward` (state that `forward(&self)` may replace, `collab_core::state`), so on one device
//! burn-train's optimizer step is all they need, and burn-train's checkpoints carry that state
//! with the record.
//!
//! What this module adds around burn-train:
//! - [`Classifier`]: the `TrainStep` / `InferenceStep` of any [`Classify`] model (logits and
//!   cross-entropy), which also stops the run at the first step whose loss is not finite;
//! - [`IndexLoader`]: a burn `DataLoader` over the project's
//!   [`Batches`](crate::data::Batches), shuffled and augmented per epoch from the seed, so that
//!   the same seed gives the same batches (and a resumed run the batches an uninterrupted one
//!   would have had);
//! - [`Scheduled`]: the papers' learning-rate schedules as a burn `LrScheduler` whose step count
//!   is saved with the checkpoint;
//! - a plain renderer (a progress bar on terminals, one log line per split) used wherever
//!   burn-train's terminal dashboard is not;
//! - the per-epoch figures read back from burn-train's metric logs ([`EpochMetrics`]), for
//!   manifests, `metrics.csv` and the learning-curve plot;
//! - Ctrl-C: [`interrupt_on_ctrl_c`] routes the signal to the running Learner's `Interrupter`,
//!   which stops after the current step; the last completed epoch's checkpoint is what
//!   `--resume` continues from;
//! - data parallel ([`Plan::devices`]): burn-train's multi-device strategy runs each step on
//!   copies of the model, so [`Classifier::data_parallel`] carries the state the copies'
//!   forward passes advance back to the main model ([`collab_core::replica`]), and
//!   [`IndexLoader::split`] deals each device its share of the global batch.

mod files;
mod loader;
mod metrics;
mod replicas;
mod schedule;

use files::{AtomicCheckpointer, METRICS_TMP};
pub use files::{RUN_FILES, clear_run, is_run_file, last_checkpoint, load_checkpoint};
pub use loader::IndexLoader;
pub use metrics::{EpochMetrics, StepTimeMetric, log_renderer, read_history};
use replicas::{Posted, ReplicaLog, Replicas, scale_gradients};
pub use schedule::{OptimizerConfig, Scheduled};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::Tensor;
use burn::train::checkpoint::{
    ComposedCheckpointingStrategy, KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric};
use burn::train::{
    ClassificationOutput, ExecutionStrategy, InferenceStep, Interrupter, Learner,
    MetricEarlyStoppingStrategy, MultiDeviceOptim, StoppingCondition, SupervisedTraining,
    TrainOutput, TrainStep,
};

use crate::CollabError;
use crate::data::{Batch, TaskData};
use crate::network::Network;

/// A model that maps a batch of inputs to class logits: what [`Classifier`] trains.
///
/// Implemented for [`Network`] and for every built-in family whatever its layers are wrapped
/// in (`DsCnn<Prunable<…>, …>` and so on). A model of your own implements it in one line, or
/// implements burn-train's `TrainStep` / `InferenceStep` itself.
pub trait Classify: Module + burn::module::ModuleDisplay + 'static {
    /// Inputs `[batch, channels, h, w]` → logits `[batch, classes]`.
    fn logits(&self, x: Tensor<4>) -> Tensor<2>;

    /// Called after every optimizer step (burn-train's `TrainStep::optimize`), so before the
    /// next batch: where a model wrapped whole advances its schedule
    /// (`collab_prune::WholePruning::advance`; call it once before training too) or global
    /// pruning re-ranks (`GlobalPruning::update`). Layer wrappers advance in `forward` and need
    /// nothing here; the default returns the model as it is.
    fn after_step(self) -> Self
    where
        Self: Sized,
    {
        self
    }
}

macro_rules! classify_family {
    ($($family:ident),*) => {$(
        impl<C, L> Classify for collab_models::$family<C, L>
        where
            C: collab_core::LayerForward<4>,
            L: collab_core::LayerForward<2>,
            collab_models::$family<C, L>: Module + burn::module::ModuleDisplay + 'static,
        {
            fn logits(&self, x: Tensor<4>) -> Tensor<2> {
                self.forward(x)
            }
        }
    )*};
}
classify_family!(DsCnn, MobileNetV1, MobileNetV2, GraphNet);

impl Classify for Network {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward(x)
    }
}

/// A [`Classify`] model with cross-entropy: burn-train's `TrainStep` and `InferenceStep`.
///
/// The model is the module's only field, so its record is the model's record under `model`.
#[derive(Module, Debug)]
pub struct Classifier<M> {
    /// The model trained.
    pub model: M,
    #[module(skip)]
    guard: Guard,
    #[module(skip)]
    replicas: Replicas,
}

impl<M: Classify> Classifier<M> {
    /// Wrap `model` for burn-train.
    pub fn new(model: M) -> Self {
        Self {
            model,
            guard: Guard::default(),
            replicas: Replicas::default(),
        }
    }

    /// Wrap `model` for burn-train's multi-device strategy (`ExecutionStrategy::multi` with
    /// `MultiDeviceOptim::OptimMainDevice`), each replica taking `batch_size` items of the
    /// global batch.
    ///
    /// burn-train runs each replica's step on a copy of the model and sums the gradients into
    /// one optimizer step of the main copy; state the wrappers advance in `forward` (step
    /// counters, masks, activation ranges) would stay on the copies. Here each replica records
    /// its state writes, and before the optimizer step the main model takes them, reduced
    /// across replicas ([`collab_core::replica`]): counters and masks must agree (the run
    /// stops with an error if they do not), ranges take the smallest minimum and the largest
    /// maximum, so they equal the update from the whole global batch. Each replica's loss is
    /// weighted by its share of the items, so the step is the one of the whole batch's mean
    /// loss, whatever the number of replicas.
    pub fn data_parallel(model: M, batch_size: usize) -> Self {
        Self {
            replicas: Replicas(Some(Arc::new(ReplicaLog {
                batch_size: batch_size.max(1),
                posted: Mutex::new(Vec::new()),
            }))),
            ..Self::new(model)
        }
    }

    fn classify(&self, (x, y): Batch) -> ClassificationOutput {
        let logits = self.model.logits(x);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), y.clone());
        ClassificationOutput::new(loss, logits, y)
    }
}

impl<M: Classify> TrainStep for Classifier<M> {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, item: Batch) -> TrainOutput<ClassificationOutput> {
        let Some(log) = &self.replicas.0 else {
            let out = self.classify(item);
            self.guard.check(&out.loss);
            let grads = out.loss.backward();
            return TrainOutput::new(self, grads, out);
        };
        let items = item.1.dims()[0];
        let (out, state) = collab_core::replica::recording(|| self.classify(item));
        self.guard.check(&out.loss);
        // Summed over replicas and divided by the global batch's items in `optimize`: the
        // gradient of the global batch's mean loss.
        let weight = items as f32 / log.batch_size as f32;
        let grads = out.loss.clone().mul_scalar(weight).backward();
        log.post(Posted { state, items });
        TrainOutput::new(self, grads, out)
    }

    fn optimize(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
        grads: burn::optim::GradientsParams,
    ) -> Self {
        match self.gather() {
            Ok((classifier, factor)) => {
                let grads = scale_gradients(&classifier, grads, factor);
                optim.step(lr, classifier, grads).after_step()
            }
            Err(unchanged) => unchanged,
        }
    }

    fn optimize_multi(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
        grads: burn::optim::MultiGradientsParams,
    ) -> Self {
        match self.gather() {
            Ok((classifier, factor)) => {
                let mut grads = grads;
                grads.grads = std::mem::take(&mut grads.grads)
                    .into_iter()
                    .map(|(g, device)| (scale_gradients(&classifier, g, factor), device))
                    .collect();
                optim.step_multi(lr, classifier, grads).after_step()
            }
            Err(unchanged) => unchanged,
        }
    }
}

impl<M: Classify> Classifier<M> {
    /// Before an optimizer step: in a data-parallel run, the replicas' state writes folded into
    /// this (main) model and the factor that turns the sum of the replicas' weighted gradients
    /// into the global batch's mean; otherwise the model as it is and 1. `Err` (the model as
    /// it is) when the replicas diverged: the run is stopping with that error.
    fn gather(self) -> Result<(Self, f32), Self> {
        let Some(log) = self.replicas.0.clone() else {
            return Ok((self, 1.0));
        };
        let posted = log.take();
        if posted.is_empty() {
            return Ok((self, 1.0));
        }
        let items: usize = posted.iter().map(|p| p.items).sum();
        let states: Vec<_> = posted.into_iter().map(|p| p.state).collect();
        let Self {
            model,
            guard,
            replicas,
        } = self;
        let (model, agreed) = collab_core::replica::reconcile(model, &states);
        let classifier = Self {
            model,
            guard,
            replicas,
        };
        match agreed {
            Ok(()) => Ok((classifier, log.batch_size as f32 / items.max(1) as f32)),
            Err(divergence) => {
                classifier.guard.fail(divergence.to_string());
                Err(classifier)
            }
        }
    }

    /// After the optimizer step: the model's own hook, and one global step counted.
    fn after_step(self) -> Self {
        self.guard.advance();
        Self {
            model: self.model.after_step(),
            ..self
        }
    }
}

impl<M: Classify> InferenceStep for Classifier<M> {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, item: Batch) -> ClassificationOutput {
        self.classify(item)
    }
}

/// Stops the run at the first training step whose loss is not finite (what was saved is the
/// last good epoch), and says where.
#[derive(Clone, Default)]
struct Guard(Option<Arc<GuardState>>);

struct GuardState {
    interrupter: Interrupter,
    /// Global step of the next training step.
    step: AtomicUsize,
    steps_per_epoch: usize,
    schedule: Scheduled,
    diverged: Mutex<Option<CollabError>>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Guard")
    }
}

impl Guard {
    /// One optimizer step done.
    fn advance(&self) {
        if let Some(state) = &self.0 {
            state.step.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Stop the run with `reason` as its error (the first one given is kept).
    fn fail(&self, reason: String) {
        let Some(state) = &self.0 else {
            tracing::error!("{reason}");
            return;
        };
        let (epoch, step) = state.place(state.step.load(Ordering::SeqCst));
        state.stop(
            CollabError::Training(format!("epoch {epoch}, step {step}: {reason}")),
            "training failed",
        );
    }

    fn check(&self, loss: &Tensor<1>) {
        let Some(state) = &self.0 else { return };
        let value = loss.clone().into_scalar::<f32>();
        if value.is_finite() {
            return;
        }
        let global = state.step.load(Ordering::SeqCst);
        let (epoch, step) = state.place(global);
        state.stop(
            diverged(
                epoch,
                step,
                &format!("the loss became {value}"),
                state.schedule.at(global),
            ),
            "the loss is not finite",
        );
    }
}

impl GuardState {
    /// The 1-based epoch, and step within it, of global step `step` (0-based).
    fn place(&self, step: usize) -> (usize, usize) {
        let per_epoch = self.steps_per_epoch.max(1);
        (step / per_epoch + 1, step % per_epoch + 1)
    }

    /// Keep `err` as the run's error (the first one kept) and stop the Learner.
    fn stop(&self, err: CollabError, why: &str) {
        let mut slot = self.diverged.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        self.interrupter.stop(Some(why));
    }
}

/// The error of a run whose loss or weights stopped being finite (a step's loss here, the
/// trained weights in `train::fit`).
pub(crate) fn diverged(epoch: usize, step: usize, what: &str, learning_rate: f64) -> CollabError {
    CollabError::Training(format!(
        "training diverged at epoch {epoch}, step {step}: {what} (learning rate {learning_rate:e}); \
         nothing of this epoch was saved. Lower the learning rate (--lr, or the config's \
         learning_rate), e.g. by 10x"
    ))
}

/// `dir/metrics.csv` (one row per epoch) and `dir/learning_curve.png`.
pub fn write_metrics(dir: &Path, history: &[EpochMetrics]) -> Result<(), CollabError> {
    let mut csv = String::from(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,learning_rate,step_ms\n",
    );
    for h in history {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            h.epoch,
            h.loss,
            h.train_accuracy,
            h.val_loss,
            h.val_accuracy,
            h.learning_rate,
            h.step_ms
        ));
    }
    let path = dir.join("metrics.csv");
    let tmp = dir.join(METRICS_TMP);
    std::fs::write(&tmp, csv)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| CollabError::checkpoint(&path, e))?;
    if !history.is_empty() {
        crate::plot::learning_curve(&dir.join("learning_curve.png"), history)?;
    }
    Ok(())
}

/// Where the terminal output of a run goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dashboard {
    /// burn-train's terminal dashboard when stdout is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// A progress bar (terminals only) and log lines, never the dashboard.
    Log,
}

/// What a run trains for, and where it keeps its files.
#[derive(Clone)]
pub struct Plan {
    /// burn-train's artifact folder: `checkpoint/`, `train/` and `valid/` metric logs, and
    /// (written here) `metrics.csv` and `learning_curve.png`.
    pub dir: PathBuf,
    /// Label of the run in logs (`train`, or the tree stage's name).
    pub label: String,
    /// Epochs in all (a resumed run counts those already done).
    pub epochs: usize,
    /// Batch size (of each device, with `devices` > 1).
    pub batch_size: usize,
    /// Devices to train on, data parallel (burn-train's multi-device strategy): each step takes
    /// `devices × batch_size` items, `batch_size` on each device.
    pub devices: usize,
    /// Optimizer and schedule.
    pub optimizer: OptimizerConfig,
    /// Seed of shuffling and augmentation.
    pub seed: u64,
    /// Augment the training batches (when the data supports it).
    pub augment: bool,
    /// Stop when validation accuracy has not improved for this many epochs.
    pub patience: Option<usize>,
    /// Continue from burn-train's checkpoint of this (1-based) epoch in `dir`.
    pub resume_from: Option<usize>,
    /// Terminal output.
    pub dashboard: Dashboard,
    /// A handle to stop the run from elsewhere (it stops after the current step, as on
    /// Ctrl-C); a new one when `None`.
    pub interrupter: Option<Interrupter>,
}

impl Plan {
    /// A run of `epochs` epochs of `batch_size` with `optimizer` into `dir`: seed 0, augmented,
    /// no early stopping, not resumed, the dashboard on terminals. Set the other fields as needed.
    pub fn new(
        dir: impl Into<PathBuf>,
        epochs: usize,
        batch_size: usize,
        optimizer: OptimizerConfig,
    ) -> Self {
        Self {
            dir: dir.into(),
            label: "train".into(),
            epochs,
            batch_size,
            devices: 1,
            optimizer,
            seed: 0,
            augment: true,
            patience: None,
            resume_from: None,
            dashboard: Dashboard::Auto,
            interrupter: None,
        }
    }
}

/// The serde default of the `devices` settings: one device.
pub fn one_device() -> usize {
    1
}

/// Optimizer steps in one epoch of `items` training items, `batch_size` on each of `devices`
/// devices (the last step may be short).
pub fn steps_per_epoch(items: usize, batch_size: usize, devices: usize) -> usize {
    items.div_ceil(batch_size.max(1) * devices.max(1))
}

/// What a run ended with.
pub struct Learned<M> {
    /// The model after the last step, in evaluation mode.
    pub model: M,
    /// Every epoch's figures so far (a resumed run's include the earlier ones).
    pub history: Vec<EpochMetrics>,
    /// Stopped by Ctrl-C before the last epoch (the last checkpoint is the last full epoch).
    pub interrupted: bool,
    /// Stopped by early stopping.
    pub stopped_early: bool,
}

/// The interrupter of the run in progress, for the Ctrl-C handler.
static RUNNING: Mutex<Option<Interrupter>> = Mutex::new(None);

/// Install a Ctrl-C handler that stops the running Learner after its current step (once per
/// process; later calls do nothing). Without it Ctrl-C ends the process at once.
pub fn interrupt_on_ctrl_c() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let result = ctrlc::set_handler(|| {
            let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
            match running.as_ref() {
                Some(interrupter) => {
                    tracing::warn!("Ctrl-C: stopping after the current step");
                    interrupter.stop(Some("Ctrl-C"));
                }
                None => std::process::exit(130),
            }
        });
        if let Err(e) = result {
            tracing::warn!("Ctrl-C will end the process at once: {e}");
        }
    });
}

/// Train `model` with burn-train on `data.train`, validating on `data.val` after each epoch.
///
/// burn-train checkpoints model, optimizer and schedule after every epoch in
/// `plan.dir/checkpoint` (the last two and the best on validation accuracy are kept);
/// `plan.resume_from` continues from one. The per-epoch figures are written to
/// `plan.dir/metrics.csv` and drawn in `plan.dir/learning_curve.png`.
pub fn learn<M: Classify>(
    model: M,
    data: &TaskData,
    plan: &Plan,
) -> Result<Learned<M>, CollabError> {
    if data.train.is_empty() || data.val.is_empty() {
        let (which, set) = if data.train.is_empty() {
            ("training", &data.train)
        } else {
            ("validation", &data.val)
        };
        return Err(CollabError::Training(format!(
            "the {which} set is empty ({}); training needs samples in both the training and \
             the validation split",
            set.describe()
        )));
    }
    std::fs::create_dir_all(&plan.dir).map_err(|e| CollabError::checkpoint(&plan.dir, e))?;
    let devices = plan.devices.max(1);
    let steps_per_epoch = steps_per_epoch(data.train.len(), plan.batch_size, devices);
    let total_steps = steps_per_epoch * plan.epochs;
    let first_epoch = plan.resume_from.unwrap_or(0);
    let schedule = Scheduled::new(plan.optimizer.clone(), total_steps);
    let interrupter = plan.interrupter.clone().unwrap_or_default();
    let guard = Arc::new(GuardState {
        interrupter: interrupter.clone(),
        step: AtomicUsize::new(first_epoch * steps_per_epoch),
        steps_per_epoch,
        schedule: schedule.clone(),
        diverged: Mutex::new(None),
    });
    let device = crate::device::compute().autodiff();
    let model = model.fork(&device).train();
    let mut classifier = if devices > 1 {
        Classifier::data_parallel(model, plan.batch_size)
    } else {
        Classifier::new(model)
    };
    classifier.guard = Guard(Some(guard.clone()));
    let learner = Learner::new(classifier, plan.optimizer.init(), schedule);

    let train = IndexLoader::train(
        data.train.clone(),
        plan.batch_size,
        plan.seed,
        plan.augment,
        first_epoch,
    )
    .split(devices);
    let valid = IndexLoader::eval(data.val.clone(), 256);
    let checkpoints = ComposedCheckpointingStrategy::builder()
        .add(KeepLastNCheckpoints::new(2))
        .add(MetricCheckpointingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            Direction::Highest,
            Split::Valid,
        ))
        .build();
    let folder = plan.dir.join("checkpoint");
    let mut training = SupervisedTraining::new(&plan.dir, Arc::new(train), Arc::new(valid))
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .metric_train_numeric(LearningRateMetric::new())
        .metric_train_numeric(StepTimeMetric::new(devices))
        .num_epochs(plan.epochs)
        .with_custom_checkpointers(
            AtomicCheckpointer::new(&folder, "model"),
            AtomicCheckpointer::new(&folder, "optim"),
            AtomicCheckpointer::new(&folder, "scheduler"),
        )
        .with_checkpointing_strategy(checkpoints)
        .with_interrupter(interrupter.clone())
        .with_application_logger(None)
        .label(&plan.label);
    let dashboard =
        plan.dashboard == Dashboard::Auto && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if !dashboard {
        training = training.renderer(log_renderer(&plan.label));
    }
    if let Some(k) = plan.resume_from {
        training = training.checkpoint(k);
    }
    if devices > 1 {
        training = training.with_training_strategy(
            ExecutionStrategy::multi(
                crate::device::replicas(devices),
                MultiDeviceOptim::OptimMainDevice,
            )
            .into(),
        );
    }
    if let Some(n) = plan.patience {
        training = training.early_stopping(MetricEarlyStoppingStrategy::new(
            &AccuracyMetric::new(),
            Aggregate::Mean,
            Direction::Highest,
            Split::Valid,
            StoppingCondition::NoImprovementSince { n_epochs: n },
        ));
    }
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some(interrupter.clone());
    let result = training.launch(learner);
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = None;

    if let Some(err) = guard
        .diverged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(err);
    }
    if let Some(err) = &result.error {
        return Err(CollabError::Training(format!(
            "burn-train stopped with an error: {err}"
        )));
    }
    let history = read_history(&plan.dir, steps_per_epoch)?;
    let completed = history.last().map_or(0, |h| h.epoch);
    // burn-train's dashboard resets the interrupter when it closes, so a stop by its `q` key
    // may not show in `result.interrupted`: a short run stopped early only when the patience
    // rule explains it.
    let short = completed < plan.epochs;
    let stalled = plan.patience.is_some_and(|n| {
        let best = history
            .iter()
            .map(|h| h.val_accuracy)
            .fold(f64::NEG_INFINITY, f64::max);
        let first_best = history.iter().position(|h| h.val_accuracy == best);
        first_best.is_some_and(|i| history.len() >= i + 1 + n)
    });
    let stopped_early = short && stalled && result.interrupted.is_none();
    let interrupted = short && !stopped_early;
    write_metrics(&plan.dir, &history)?;
    Ok(Learned {
        model: result.model.model,
        history,
        interrupted,
        stopped_early,
    })
}
