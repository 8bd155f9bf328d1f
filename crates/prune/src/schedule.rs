//! When masks are updated and to which sparsity: TFMOT's `ConstantSparsity` and
//! `PolynomialDecay`, with their step semantics.
//!
//! Steps count training batches from 1 (the first training forward pass is step 1).
//! A mask update happens at step `t` when `begin_step <= t <= end_step` and
//! `(t - begin_step) % frequency == 0`, and, unlike TFMOT, also at `end_step` itself, so the
//! final sparsity is always reached even when `end_step - begin_step` is not a multiple of
//! `frequency` (TFMOT then stops one window short of it).

use serde::{Deserialize, Serialize};

use crate::PruneError;

/// A pruning schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PruningSchedule {
    /// One sparsity, applied at every update step in `[begin_step, end_step]`.
    Constant {
        /// Target sparsity in `[0, 1)`.
        sparsity: f64,
        /// First step that may update the mask.
        begin_step: u64,
        /// Last step that may update the mask; `None` keeps re-ranking every `frequency` steps
        /// for as long as training runs (TFMOT's `end_step = -1`). Since pruned weights stay 0,
        /// re-ranking at constant sparsity only ever re-selects among surviving weights.
        end_step: Option<u64>,
        /// Steps between mask updates (TFMOT default 100).
        frequency: u64,
    },
    /// `s(t) = s_f + (s_i - s_f) (1 - p)^power`, `p = clamp((t - begin) / (end - begin), 0, 1)`.
    PolynomialDecay {
        /// Sparsity at `begin_step`.
        initial_sparsity: f64,
        /// Sparsity reached at `end_step` and kept after it.
        final_sparsity: f64,
        /// First step that updates the mask.
        begin_step: u64,
        /// Step at which `final_sparsity` is reached (must be after `begin_step`).
        end_step: u64,
        /// Exponent of the decay (TFMOT default 3).
        power: f64,
        /// Steps between mask updates (TFMOT default 100).
        frequency: u64,
    },
}

impl PruningSchedule {
    /// Constant sparsity from step 0, never stopping, a mask update every 100 steps.
    pub fn constant(sparsity: f64) -> Self {
        Self::Constant {
            sparsity,
            begin_step: 0,
            end_step: None,
            frequency: 100,
        }
    }

    /// TFMOT's `PolynomialDecay` with its defaults (`power` 3, `frequency` 100).
    pub fn polynomial(
        initial_sparsity: f64,
        final_sparsity: f64,
        begin_step: u64,
        end_step: u64,
    ) -> Self {
        Self::PolynomialDecay {
            initial_sparsity,
            final_sparsity,
            begin_step,
            end_step,
            power: 3.0,
            frequency: 100,
        }
    }

    /// The same schedule with another update frequency.
    pub fn with_frequency(mut self, value: u64) -> Self {
        match &mut self {
            Self::Constant { frequency, .. } | Self::PolynomialDecay { frequency, .. } => {
                *frequency = value
            }
        }
        self
    }

    /// The same schedule with another decay exponent (polynomial only; constant ignores it).
    pub fn with_power(mut self, value: f64) -> Self {
        if let Self::PolynomialDecay { power, .. } = &mut self {
            *power = value;
        }
        self
    }

    /// Check every field; the error says which one is wrong and what would work.
    pub fn validate(&self) -> Result<(), PruneError> {
        let check_sparsity = |field: &'static str, value: f64| {
            if (0.0..1.0).contains(&value) {
                Ok(())
            } else {
                Err(PruneError::Sparsity { field, value })
            }
        };
        if self.frequency() == 0 {
            return Err(PruneError::Schedule(
                "frequency is 0; use 1 or more steps between mask updates".into(),
            ));
        }
        match *self {
            Self::Constant {
                sparsity,
                begin_step,
                end_step,
                ..
            } => {
                check_sparsity("sparsity", sparsity)?;
                if let Some(end) = end_step
                    && end < begin_step
                {
                    return Err(PruneError::Schedule(format!(
                        "begin_step {begin_step} is after end_step {end}; use begin_step <= end_step"
                    )));
                }
            }
            Self::PolynomialDecay {
                initial_sparsity,
                final_sparsity,
                begin_step,
                end_step,
                power,
                ..
            } => {
                check_sparsity("initial_sparsity", initial_sparsity)?;
                check_sparsity("final_sparsity", final_sparsity)?;
                if end_step <= begin_step {
                    return Err(PruneError::Schedule(format!(
                        "polynomial decay needs begin_step < end_step, got {begin_step} and {end_step}"
                    )));
                }
                if !(power.is_finite() && power > 0.0) {
                    return Err(PruneError::Schedule(format!(
                        "power {power} must be a finite number > 0"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Steps between mask updates.
    pub fn frequency(&self) -> u64 {
        match *self {
            Self::Constant { frequency, .. } | Self::PolynomialDecay { frequency, .. } => frequency,
        }
    }

    /// The first step that may update the mask.
    pub fn begin_step(&self) -> u64 {
        match *self {
            Self::Constant { begin_step, .. } | Self::PolynomialDecay { begin_step, .. } => {
                begin_step
            }
        }
    }

    /// The target sparsity at `step` (defined at every step, updated or not).
    pub fn sparsity_at(&self, step: u64) -> f64 {
        match *self {
            Self::Constant { sparsity, .. } => sparsity,
            Self::PolynomialDecay {
                initial_sparsity,
                final_sparsity,
                begin_step,
                end_step,
                power,
                ..
            } => {
                let p = (step as f64 - begin_step as f64) / (end_step as f64 - begin_step as f64);
                let p = p.clamp(0.0, 1.0);
                final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p).powf(power)
            }
        }
    }

    /// Whether the mask is updated at `step`.
    pub fn is_update_step(&self, step: u64) -> bool {
        let (begin, end, frequency) = match *self {
            Self::Constant {
                begin_step,
                end_step,
                frequency,
                ..
            } => (begin_step, end_step, frequency),
            Self::PolynomialDecay {
                begin_step,
                end_step,
                frequency,
                ..
            } => (begin_step, Some(end_step), frequency),
        };
        if step < begin || end.is_some_and(|end| step > end) {
            return false;
        }
        (step - begin).is_multiple_of(frequency.max(1)) || end == Some(step)
    }

    /// `Some(target sparsity)` when the mask is updated at `step`, else `None`.
    pub fn update_at(&self, step: u64) -> Option<f64> {
        self.is_update_step(step).then(|| self.sparsity_at(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFMOT's formula, written independently of the implementation above.
    fn tfmot_polynomial(s_i: f64, s_f: f64, begin: f64, end: f64, power: f64, step: f64) -> f64 {
        let p = ((step - begin) / (end - begin)).clamp(0.0, 1.0);
        (s_i - s_f) * (1.0 - p).powf(power) + s_f
    }

    #[test]
    fn polynomial_values_equal_tfmot_formula() {
        let s = PruningSchedule::polynomial(0.1, 0.8, 20, 220).with_power(3.0);
        for step in [0, 19, 20, 21, 50, 120, 219, 220, 221, 10_000] {
            let want = tfmot_polynomial(0.1, 0.8, 20.0, 220.0, 3.0, step as f64);
            assert!((s.sparsity_at(step) - want).abs() < 1e-12, "step {step}");
        }
        // Hand-computed: half way, (1 - 0.5)^3 = 0.125.
        assert!((s.sparsity_at(120) - (0.8 - 0.7 * 0.125)).abs() < 1e-12);
        assert!((s.sparsity_at(20) - 0.1).abs() < 1e-12);
        assert_eq!(s.sparsity_at(500), 0.8);
    }

    #[test]
    fn update_steps_follow_begin_end_frequency() {
        let s = PruningSchedule::polynomial(0.0, 0.5, 10, 95).with_frequency(20);
        let steps: Vec<u64> = (0..200).filter(|&t| s.is_update_step(t)).collect();
        // 10, 30, 50, 70, 90 on the grid, plus end_step 95 so the final sparsity is reached.
        assert_eq!(steps, vec![10, 30, 50, 70, 90, 95]);
        assert_eq!(s.update_at(95), Some(0.5));
        assert_eq!(s.update_at(96), None);

        let c = PruningSchedule::Constant {
            sparsity: 0.3,
            begin_step: 5,
            end_step: None,
            frequency: 50,
        };
        assert!(c.is_update_step(5) && c.is_update_step(1005) && !c.is_update_step(6));
        assert_eq!(c.update_at(55), Some(0.3));
    }

    #[test]
    fn invalid_schedules_are_rejected_with_the_field_named() {
        let bad = [
            (PruningSchedule::constant(1.0), "sparsity"),
            (PruningSchedule::constant(-0.1), "sparsity"),
            (
                PruningSchedule::polynomial(0.0, 1.2, 0, 10),
                "final_sparsity",
            ),
            (
                PruningSchedule::polynomial(0.0, 0.5, 10, 10),
                "begin_step < end_step",
            ),
            (
                PruningSchedule::polynomial(0.0, 0.5, 20, 10),
                "begin_step < end_step",
            ),
            (
                PruningSchedule::constant(0.5).with_frequency(0),
                "frequency is 0",
            ),
            (
                PruningSchedule::polynomial(0.0, 0.5, 0, 10).with_power(f64::NAN),
                "power",
            ),
            (
                PruningSchedule::Constant {
                    sparsity: 0.5,
                    begin_step: 10,
                    end_step: Some(5),
                    frequency: 1,
                },
                "after end_step",
            ),
        ];
        for (schedule, needle) in bad {
            let err = schedule.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
        assert!(
            PruningSchedule::polynomial(0.0, 0.9, 0, 1)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn schedules_round_trip_through_json() {
        let s = PruningSchedule::polynomial(0.0, 0.5, 0, 100).with_frequency(10);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"kind\":\"polynomial_decay\""));
        assert_eq!(serde_json::from_str::<PruningSchedule>(&text).unwrap(), s);
    }
}
