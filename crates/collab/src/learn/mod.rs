//! Training through burn-train: the one training path of the project.
//!
//! `collab train` and every tree stage hand their model to burn-train's `Learner` and
//! `SupervisedTraining`, as a burn user does for a plain model. Nothing here reaches into the
//! wrappers: pruning masks, schedules, centroids and activation ranges advance in their own
//! `forward` (state that `forward(&self)` may replace, `collab_core::state`), so burn-train's
//! default `optimize` is all they need, and burn-train's checkpoints carry that state with the
//! record.
//!
//! What this module adds around burn-train:
//! - [`Classifier`]: the `TrainStep` / `InferenceStep` of any [`Classify`] model (logits and
//!   cross-entropy), which also stops the run at the first step whose loss is not finite;
//! - [`IndexLoader`]: a burn `DataLoader` over the project's [`Batches`], shuffled and augmented
//!   per epoch from the seed, so that the same seed gives the same batches (and a resumed run
//!   the batches an uninterrupted one would have had);
//! - [`Scheduled`]: the papers' learning-rate schedules as a burn `LrScheduler` whose step count
//!   is saved with the checkpoint;
//! - a plain renderer (a progress bar on terminals, one log line per split) used wherever
//!   burn-train's terminal dashboard is not;
//! - the per-epoch figures read back from burn-train's metric logs ([`EpochMetrics`]), for
//!   manifests, `metrics.csv` and the learning-curve plot;
//! - Ctrl-C: [`interrupt_on_ctrl_c`] routes the signal to the running Learner's `Interrupter`,
//!   which stops after the current step; the last completed epoch's checkpoint is what
//!   `--resume` continues from.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Tensor};
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, ComposedCheckpointingStrategy,
    KeepLastNCheckpoints, MetricCheckpointingStrategy,
};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::store::{Aggregate, Direction, Split};
use burn::train::metric::{
    AccuracyMetric, IterationSpeedMetric, LearningRateMetric, LossMetric, MetricDefinition,
    MetricId,
};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Interrupter, Learner, LearnerSummary,
    MetricEarlyStoppingStrategy, StoppingCondition, SupervisedTraining, TrainOutput, TrainStep,
};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::data::{Batch, Batches, TaskData, epoch_rng};
use crate::network::Network;
use crate::train::OptimizerConfig;

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
}

impl<M: Classify> Classifier<M> {
    /// Wrap `model` for burn-train.
    pub fn new(model: M) -> Self {
        Self {
            model,
            guard: Guard::default(),
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
        let out = self.classify(item);
        self.guard.check(&out.loss);
        let grads = out.loss.backward();
        TrainOutput::new(self, grads, out)
    }

    fn optimize(
        self,
        optim: &mut burn::optim::ModuleOptimizer,
        lr: burn::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
        grads: burn::optim::GradientsParams,
    ) -> Self {
        let Self { model, guard } = optim.step(lr, self, grads);
        Self {
            model: model.after_step(),
            guard,
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
    fn check(&self, loss: &Tensor<1>) {
        let Some(state) = &self.0 else { return };
        let step = state.step.fetch_add(1, Ordering::SeqCst);
        let value = loss.clone().into_scalar::<f32>();
        if value.is_finite() {
            return;
        }
        let per_epoch = state.steps_per_epoch.max(1);
        let err = crate::train::diverged(
            step / per_epoch + 1,
            step % per_epoch + 1,
            &format!("the loss became {value}"),
            state.schedule.at(step),
        );
        let mut slot = state.diverged.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(err);
        }
        state.interrupter.stop(Some("the loss is not finite"));
    }
}

/// The papers' learning-rate schedules ([`OptimizerConfig::learning_rate`]) as a burn
/// `LrScheduler`; its step count is saved in burn-train's checkpoint, so a resumed run
/// continues the schedule.
#[derive(Clone, Debug)]
pub struct Scheduled {
    optimizer: OptimizerConfig,
    total_steps: usize,
    step: usize,
}

impl Scheduled {
    /// The schedule of `optimizer` over `total_steps` optimizer steps, at step 0.
    pub fn new(optimizer: OptimizerConfig, total_steps: usize) -> Self {
        Self {
            optimizer,
            total_steps,
            step: 0,
        }
    }

    fn at(&self, step: usize) -> f64 {
        self.optimizer.learning_rate(step, self.total_steps)
    }
}

impl LrScheduler for Scheduled {
    fn step(&mut self) -> f64 {
        let lr = self.at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("step", self.step)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(step) = record.scalar::<usize>("step") {
            self.step = step;
        }
    }
}

/// A burn `DataLoader` over [`Batches`]: batches of `batch_size` indices, shuffled per epoch
/// from the seed (training) or in order (validation), augmented per epoch from the seed when
/// asked. `iter()` is one epoch; the epoch counter starts where a resumed run starts.
#[derive(Clone)]
pub struct IndexLoader {
    data: Arc<dyn Batches>,
    range: (usize, usize),
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    augment: bool,
    epoch: Arc<AtomicUsize>,
    device: Device,
}

impl IndexLoader {
    /// Training batches: shuffled (and augmented with `augment`) per epoch from `seed`,
    /// starting at epoch `first_epoch` (0-based).
    pub fn train(
        data: Arc<dyn Batches>,
        batch_size: usize,
        seed: u64,
        augment: bool,
        first_epoch: usize,
    ) -> Self {
        let len = data.len();
        Self {
            data,
            range: (0, len),
            batch_size: batch_size.max(1),
            seed,
            shuffle: true,
            augment,
            epoch: Arc::new(AtomicUsize::new(first_epoch)),
            device: crate::device::compute(),
        }
    }

    /// Evaluation batches, in order, never augmented.
    pub fn eval(data: Arc<dyn Batches>, batch_size: usize) -> Self {
        let len = data.len();
        Self {
            data,
            range: (0, len),
            batch_size: batch_size.max(1),
            seed: 0,
            shuffle: false,
            augment: false,
            epoch: Arc::new(AtomicUsize::new(0)),
            device: crate::device::compute(),
        }
    }
}

struct IndexIter<'a> {
    loader: &'a IndexLoader,
    batches: std::vec::IntoIter<Vec<usize>>,
    rng: Option<StdRng>,
    done: usize,
    total: usize,
}

impl Iterator for IndexIter<'_> {
    type Item = Result<Batch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let indices = self.batches.next()?;
        self.done += indices.len();
        Some(
            self.loader
                .data
                .batch(&indices, self.rng.as_mut(), &self.loader.device)
                .map_err(DatasetError::new),
        )
    }
}

impl DataLoaderIterator<Batch> for IndexIter<'_> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("items".into()))
    }
}

impl DataLoader<Batch> for IndexLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<Batch> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        let (lo, hi) = self.range;
        let n = hi - lo;
        let mut batches: Vec<Vec<usize>> = if self.shuffle {
            collab_data::shuffled_batches(n, self.batch_size, self.seed.wrapping_add(epoch as u64))
        } else {
            (0..n)
                .collect::<Vec<_>>()
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect()
        };
        batches.iter_mut().flatten().for_each(|i| *i += lo);
        Box::new(IndexIter {
            loader: self,
            batches: batches.into_iter(),
            rng: self.augment.then(|| epoch_rng(self.seed, epoch)),
            done: 0,
            total: n,
        })
    }

    fn num_items(&self) -> usize {
        self.range.1 - self.range.0
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<Batch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<Batch>> {
        let lo = self.range.0;
        Arc::new(Self {
            range: (lo + start, (lo + end).min(self.range.1)),
            ..self.clone()
        })
    }
}

/// Figures of one epoch, read back from burn-train's metric logs.
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
    /// Mean validation loss.
    #[serde(default)]
    pub val_loss: f64,
    /// Mean learning rate of the epoch's steps.
    #[serde(default)]
    pub learning_rate: f64,
    /// Mean wall time of a training step, milliseconds (from burn-train's iteration speed).
    #[serde(default)]
    pub step_ms: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
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
    /// Batch size.
    pub batch_size: usize,
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
    let steps_per_epoch = data.train.len().div_ceil(plan.batch_size.max(1));
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
    let mut classifier = Classifier::new(model.fork(&device).train());
    classifier.guard = Guard(Some(guard.clone()));
    let learner = Learner::new(classifier, plan.optimizer.init(), schedule);

    let train = IndexLoader::train(
        data.train.clone(),
        plan.batch_size,
        plan.seed,
        plan.augment,
        first_epoch,
    );
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
        .metric_train_numeric(IterationSpeedMetric::new())
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

/// burn-train's file checkpointer (`NAME-EPOCH.bpk` in one folder), writing each file under a
/// temporary name, synced, then renamed: a run killed while saving never leaves a truncated
/// checkpoint for `--resume` to find.
struct AtomicCheckpointer {
    folder: PathBuf,
    name: &'static str,
}

impl AtomicCheckpointer {
    fn new(folder: &Path, name: &'static str) -> Self {
        Self {
            folder: folder.to_path_buf(),
            name,
        }
    }

    fn path(&self, epoch: usize) -> PathBuf {
        self.folder.join(format!("{}-{epoch}.bpk", self.name))
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        std::fs::create_dir_all(&self.folder).map_err(CheckpointerError::IOError)?;
        let path = self.path(epoch);
        let tmp = self.folder.join(format!(
            ".{}-{epoch}.bpk.tmp-{}",
            self.name,
            std::process::id()
        ));
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CheckpointerError::IOError(e)
        })
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        match std::fs::remove_file(self.path(epoch)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointerError::IOError(e))
            }
            _ => Ok(()),
        }
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let bytes = std::fs::read(self.path(epoch)).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(CheckpointerError::Record)
    }
}

/// What burn-train writes in a run's folder (checkpoints, metric logs) and [`learn`] adds.
pub const RUN_FILES: [&str; 5] = [
    "checkpoint",
    "train",
    "valid",
    "metrics.csv",
    "learning_curve.png",
];

/// Whether `name` is one of a run's files ([`RUN_FILES`]) or the temporary name one is written
/// under.
pub fn is_run_file(name: &str) -> bool {
    RUN_FILES.contains(&name) || name == METRICS_TMP
}

/// The temporary name `metrics.csv` is written under before it is renamed into place.
const METRICS_TMP: &str = ".metrics.csv.tmp";

/// Remove a previous run's [`RUN_FILES`] from `dir`, so that a new run there starts clean.
pub fn clear_run(dir: &Path) {
    for name in RUN_FILES {
        let path = dir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
    }
}

/// The last epoch in `dir` whose model, optimizer and schedule checkpoints are all there.
pub fn last_checkpoint(dir: &Path) -> Option<usize> {
    let folder = dir.join("checkpoint");
    let entries = std::fs::read_dir(&folder).ok()?;
    let epochs = entries.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        name.strip_prefix("model-")?
            .strip_suffix(".bpk")?
            .parse::<usize>()
            .ok()
    });
    epochs
        .filter(|n| {
            ["optim", "scheduler"]
                .iter()
                .all(|kind| folder.join(format!("{kind}-{n}.bpk")).is_file())
        })
        .max()
}

/// Load burn-train's model checkpoint of `epoch` in `dir` into `model` (as returned by
/// [`learn`]: the model without the [`Classifier`] around it).
pub fn load_checkpoint<M: Classify>(model: M, dir: &Path, epoch: usize) -> Result<M, CollabError> {
    let path = dir.join("checkpoint").join(format!("model-{epoch}.bpk"));
    let bytes = std::fs::read(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| CollabError::checkpoint(&path, format!("{e:?}")))?;
    let classifier = Classifier::new(model).load_record(record);
    Ok(classifier.model)
}

/// Every epoch's figures from burn-train's metric logs in `dir`.
pub fn read_history(dir: &Path, steps_per_epoch: usize) -> Result<Vec<EpochMetrics>, CollabError> {
    const NAMES: [&str; 4] = ["Accuracy", "Loss", "Learning Rate", "Iteration Speed"];
    let Ok(summary) = LearnerSummary::new(dir, &NAMES) else {
        return Ok(Vec::new());
    };
    let series = |split: &[burn::train::MetricSummary], name: &str| -> HashMap<usize, f64> {
        split
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.entries.iter().map(|e| (e.step, e.value)).collect())
            .unwrap_or_default()
    };
    let train = &summary.metrics.train;
    let valid = &summary.metrics.valid;
    let (acc, loss) = (series(train, "Accuracy"), series(train, "Loss"));
    let (val_acc, val_loss) = (series(valid, "Accuracy"), series(valid, "Loss"));
    let (lr, speed) = (
        series(train, "Learning Rate"),
        series(train, "Iteration Speed"),
    );
    let mut epochs: Vec<usize> = val_acc.keys().copied().collect();
    epochs.sort_unstable();
    Ok(epochs
        .into_iter()
        .map(|epoch| {
            let per_second = speed.get(&epoch).copied().unwrap_or(0.0);
            let step_ms = if per_second > 0.0 {
                1000.0 / per_second
            } else {
                0.0
            };
            EpochMetrics {
                epoch,
                loss: loss.get(&epoch).copied().unwrap_or(f64::NAN),
                // burn-train logs accuracy in percent.
                train_accuracy: acc.get(&epoch).copied().unwrap_or(f64::NAN) / 100.0,
                val_accuracy: val_acc[&epoch] / 100.0,
                val_loss: val_loss.get(&epoch).copied().unwrap_or(f64::NAN),
                learning_rate: lr.get(&epoch).copied().unwrap_or(f64::NAN),
                step_ms,
                seconds: step_ms * steps_per_epoch as f64 / 1000.0,
            }
        })
        .collect())
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

/// burn-train's renderer where its dashboard is not used: a progress bar on terminals and one
/// `tracing` line per split with the split's metrics, nothing on stdout (burn-train's own plain
/// renderer prints every batch there). For `SupervisedTraining::renderer` in a training of your
/// own: `.renderer(log_renderer("my run"))`.
pub fn log_renderer(label: &str) -> Box<dyn MetricsRenderer> {
    Box::new(LogRenderer::new(label))
}

struct LogRenderer {
    label: String,
    epoch: usize,
    epochs: usize,
    split: String,
    bar: Option<indicatif::ProgressBar>,
    names: HashMap<MetricId, String>,
    latest: Vec<(MetricId, String)>,
}

impl LogRenderer {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            epoch: 1,
            epochs: 0,
            split: String::new(),
            bar: None,
            names: HashMap::new(),
            latest: Vec::new(),
        }
    }

    fn record(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => entry,
        };
        let text = entry.serialized_entry.formatted;
        match self
            .latest
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some(slot) => slot.1 = text,
            None => self.latest.push((entry.metric_id, text)),
        }
    }
}

impl MetricsRendererTraining for LogRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for LogRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        // The 1-based epoch it starts with.
        self.epoch = starting_epoch.max(1);
    }

    fn update_epoch(&mut self, epoch: usize) {
        // Called once epoch `epoch` (1-based) is done.
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.latest.clear();
        self.bar = Some(crate::train::progress(
            total_items as u64,
            &format!("{} {} {}", self.label, self.epoch, split),
        ));
    }

    fn update_split(&mut self, items_processed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(items_processed as u64);
        }
    }

    fn end_split(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let figures = self
            .latest
            .iter()
            .map(|(id, text)| {
                let name = self.names.get(id).map_or("?", String::as_str);
                // burn-train shows "epoch VALUE - batch VALUE": the epoch's running value.
                let value = text.split(" - batch").next().unwrap_or(text);
                format!("{name} {}", value.trim_start_matches("epoch "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            run = self.label.as_str(),
            epoch = self.epoch,
            of = self.epochs,
            split = self.split.as_str(),
            "{figures}"
        );
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn log_event_training(&mut self, event: String) {
        tracing::debug!(run = self.label.as_str(), "{event}");
    }
}

impl EvaluationProgressLogger for LogRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for LogRenderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for LogRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
