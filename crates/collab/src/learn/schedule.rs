//! The papers' optimizers and learning-rate schedules ([`OptimizerConfig`]), and the schedule
//! as a burn-train `LrScheduler` ([`Scheduled`]) whose step is saved in the checkpoint.

use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::network::ModelSpec;

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

    pub(super) fn at(&self, step: usize) -> f64 {
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
