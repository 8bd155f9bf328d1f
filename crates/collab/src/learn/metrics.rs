//! The per-epoch figures: burn-train's metric logs read back ([`EpochMetrics`]), our step time
//! metric, `metrics.csv` with the learning-curve plot, and the plain renderer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use burn::train::LearnerSummary;
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use serde::{Deserialize, Serialize};

use crate::CollabError;

/// Name of [`StepTimeMetric`] in burn-train's logs.
const STEP_TIME: &str = "Step Time";

/// Wall time of an optimizer step, in milliseconds: the time between the first items of
/// consecutive steps. burn-train's `IterationSpeedMetric` counts one iteration per device and
/// starts its clock at the split's first item, which on several devices is answered an instant
/// before the second device's item of the same step; this counts global steps.
#[derive(Clone)]
pub struct StepTimeMetric {
    name: burn::train::metric::MetricName,
    devices: usize,
    state: burn::train::metric::state::NumericMetricState,
    /// When the last step began, and its number.
    last: Option<(std::time::Instant, usize)>,
}

impl StepTimeMetric {
    /// Step time of a run on `devices` devices (one item each per step).
    pub fn new(devices: usize) -> Self {
        Self {
            name: Arc::new(STEP_TIME.to_string()),
            devices: devices.max(1),
            state: Default::default(),
            last: None,
        }
    }
}

impl burn::train::metric::Metric for StepTimeMetric {
    type Input = ();

    fn update(
        &mut self,
        _: &(),
        metadata: &burn::train::metric::MetricMetadata,
    ) -> Result<burn::train::metric::SerializedEntry, burn::tensor::TensorReadError> {
        let now = std::time::Instant::now();
        let item = metadata
            .iteration
            .unwrap_or(metadata.progress.items_processed);
        let step = item.div_ceil(self.devices);
        match self.last {
            Some((then, last)) if step > last => {
                let ms = now.duration_since(then).as_secs_f64() * 1000.0 / (step - last) as f64;
                self.state.update(ms, 1);
                self.last = Some((now, step));
            }
            Some(_) => self.state.update(f64::NAN, 0),
            None => {
                self.state.update(f64::NAN, 0);
                self.last = Some((now, step));
            }
        }
        Ok(self.state.compute_update(
            burn::train::metric::state::FormatOptions::new(self.name())
                .unit("ms")
                .precision(1),
        ))
    }

    fn compute(
        &mut self,
    ) -> Result<burn::train::metric::SerializedEntry, burn::tensor::TensorReadError> {
        Ok(self.state.compute_final(
            burn::train::metric::state::FormatOptions::new(self.name())
                .unit("ms")
                .precision(1),
        ))
    }

    fn clear(&mut self) {
        self.state.reset();
        self.last = None;
    }

    fn name(&self) -> burn::train::metric::MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> burn::train::metric::MetricAttributes {
        burn::train::metric::NumericAttributes {
            unit: Some("ms".into()),
            higher_is_better: false,
        }
        .into()
    }
}

impl burn::train::metric::Numeric for StepTimeMetric {
    fn value(&self) -> Option<burn::train::metric::NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<burn::train::metric::NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> burn::train::metric::NumericEntry {
        self.state.final_value()
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
    /// Mean wall time of an optimizer step, milliseconds ([`StepTimeMetric`]; the epoch's first
    /// step, which has no start to time from, left out).
    #[serde(default)]
    pub step_ms: f64,
    /// Wall time of the epoch's training steps.
    pub seconds: f64,
}

/// Every epoch's figures from burn-train's metric logs in `dir`.
pub fn read_history(dir: &Path, steps_per_epoch: usize) -> Result<Vec<EpochMetrics>, CollabError> {
    const NAMES: [&str; 4] = ["Accuracy", "Loss", "Learning Rate", STEP_TIME];
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
    let (lr, step_time) = (series(train, "Learning Rate"), series(train, STEP_TIME));
    let mut epochs: Vec<usize> = val_acc.keys().copied().collect();
    epochs.sort_unstable();
    Ok(epochs
        .into_iter()
        .map(|epoch| {
            let step_ms = step_time
                .get(&epoch)
                .copied()
                .filter(|ms| ms.is_finite())
                .unwrap_or(0.0);
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
        self.bar = Some(progress(
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
