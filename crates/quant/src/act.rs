//! `ActQuant`: per-tensor asymmetric int8 fake quantization of activations with a range that is
//! learned from data: a moving average of batch min/max in training, frozen in evaluation, or
//! calibrated over representative batches (PTQ).

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use collab_core::host::{to_finite_vec_f32, to_vec_f32};
use collab_core::{Counter, Reduce, StateTensor};
use serde::{Deserialize, Serialize};

use crate::fake::{host_values, quantize_host_values};
use crate::{QuantError, QuantParams};
use collab_core::ops::extension::has_flex_kernels;

/// How calibration (PTQ) turns the observed batches into a range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Calibration {
    /// The smallest and largest value seen over all calibration batches.
    MinMax,
    /// The `percentile`-th and `(100 − percentile)`-th percentiles of each batch, averaged over
    /// batches: clips rare outliers (e.g. 99.99).
    Percentile {
        /// In (50, 100].
        percentile: f64,
    },
}

/// Settings of an activation quantizer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActQuantConfig {
    /// Moving-average decay of the range in training (TFMOT: 0.999).
    pub decay: f64,
    /// Range rule used while calibrating.
    pub calibration: Calibration,
}

impl Default for ActQuantConfig {
    fn default() -> Self {
        Self {
            decay: 0.999,
            calibration: Calibration::MinMax,
        }
    }
}

impl ActQuantConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<(), QuantError> {
        if !(0.0..1.0).contains(&self.decay) {
            return Err(QuantError::Setting {
                field: "decay",
                reason: format!("{} is not in [0, 1); TFMOT uses 0.999", self.decay),
            });
        }
        if let Calibration::Percentile { percentile } = self.calibration
            && !(percentile > 50.0 && percentile <= 100.0)
        {
            return Err(QuantError::Setting {
                field: "percentile",
                reason: format!("{percentile} is not in (50, 100]; 99.99 is a common choice"),
            });
        }
        Ok(())
    }
}

/// The state of one activation quantizer ([`ActQuant::report`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ActReport {
    /// `[min, max]` of the range; `None` until a batch has set it.
    pub range: Option<[f32; 2]>,
    /// Batches that have set the range (training steps, or calibration batches).
    pub batches: u64,
}

/// Fake quantization of an activation tensor, per tensor, asymmetric int8.
///
/// - Training (autodiff device, training flag on): the range follows the batches,
///   `min ← decay·min + (1 − decay)·batch_min` (the first batch sets it), then the batch is
///   fake-quantized with it.
/// - Evaluation: the range is frozen.
/// - Calibration (flag set by [`crate::begin_calibration`]): the batch passes through
///   unchanged and only the range is updated, by [`Calibration`].
/// - Before any batch has been seen there is no range and the tensor passes unchanged.
///
/// `min`, `max` and the number of batches seen are module state, saved with the record.
#[derive(Module, Debug)]
pub struct ActQuant {
    /// Lower end of the range, `[1]`.
    pub min: StateTensor<1>,
    /// Upper end of the range, `[1]`.
    pub max: StateTensor<1>,
    /// Batches that have set the range.
    pub observed: Counter,
    /// Training behaviour (range follows batches); cleared by `valid()`.
    pub training: Param<burn::module::Flag>,
    /// Calibration behaviour (PTQ).
    pub calibrating: Param<burn::module::Flag>,
    #[module(skip)]
    config: ActQuantConfig,
}

impl ActQuant {
    /// A quantizer with no range yet.
    pub fn new(config: ActQuantConfig, device: &Device) -> Result<Self, QuantError> {
        config.validate()?;
        Ok(Self {
            // Data-parallel replicas each update the range from their share of the batch; the
            // moving average is monotone in the batch's ends, so the smallest minimum and the
            // largest maximum are the update from the whole batch (collab_core::replica).
            min: StateTensor::reduced(Tensor::zeros([1], device), Reduce::Min),
            max: StateTensor::reduced(Tensor::zeros([1], device), Reduce::Max),
            observed: Counter::new(0, device),
            training: Param::from_bool(true),
            calibrating: Param::from_bool(false),
            config,
        })
    }

    /// Fake-quantize `x` (see the type's documentation for when the range changes).
    ///
    /// # Shapes
    /// Any; the output has the input's shape.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.calibrating.is_enabled() {
            self.calibrate(&x);
            return x;
        }
        let training = self.is_training(&x);
        let current = self.range();
        if !training && current.is_none() {
            return x;
        }
        // On flex: the range from two parallel reductions, then one fused pass each way.
        // Elsewhere one host read of the activation serves both the range and the quantization.
        let host = (!has_flex_kernels(&x.device())).then(|| host_values(&x));
        let range = if training {
            let (low, high) = match &host {
                Some(values) => host_range(values),
                None => Self::batch_range(&x),
            };
            self.observe(low, high, current)
        } else {
            current
        };
        let Some(p) = range.and_then(usable_params) else {
            return x;
        };
        match host {
            Some(values) => quantize_host_values(x, values, &p),
            None => crate::ops::fused::fake_quant_fused(x.clone(), &p).unwrap_or(x),
        }
    }

    /// `x` unchanged, the range updated from it exactly as [`Self::forward`] would (training:
    /// moving average; calibration: the calibration rule; evaluation: nothing): for a value the
    /// int8 graph quantizes elsewhere (a layer feeding a concatenation, which quantizes the
    /// joined values once), whose own range is still worth keeping.
    ///
    /// # Shapes
    /// Any; the output is the input.
    pub fn observe_only<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.calibrating.is_enabled() {
            self.calibrate(&x);
        } else if self.is_training(&x) {
            let (low, high) = Self::batch_range(&x);
            self.observe(low, high, self.range());
        }
        x
    }

    /// `relu(x)` fake-quantized: the same values, gradients and range updates as
    /// `self.forward(relu(x))`. On flex, outside calibration, the ReLU happens inside the fused
    /// quantization pass (one pass each way instead of two, no ReLU-sized buffers): the range
    /// of `relu(x)` is `[max(min x, 0), max(max x, 0)]`, computed from `x` directly.
    ///
    /// # Shapes
    /// Any; the output has the input's shape.
    pub fn forward_relu<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if self.calibrating.is_enabled() || !has_flex_kernels(&x.device()) {
            return self.forward(relu(x));
        }
        let batch = self.is_training(&x).then(|| Self::batch_range(&x));
        match self.relu_params(batch, false) {
            Some(p) => {
                crate::ops::fused::fake_quant_relu_fused(x.clone(), &p).unwrap_or_else(|| relu(x))
            }
            None => relu(x),
        }
    }

    /// `relu(y + shift)` fake-quantized (`shift` `[C]` broadcast over dimension 1): the same
    /// values, gradient of `y`, range updates, and gradient of `shift` within rounding, as
    /// `self.forward_relu(y + shift)`. On flex, outside calibration, one fused pass each way
    /// (see [`crate::ops::epilogue`]) instead of the add, the ReLU and the quantizer.
    ///
    /// # Shapes
    /// `y`: `[N, C, …]`; `shift`: `[C]`; the output has `y`'s shape.
    pub fn forward_shift_relu<const D: usize>(&self, y: Tensor<D>, shift: Tensor<1>) -> Tensor<D> {
        self.forward_shift_act(y, shift, false)
    }

    /// [`Self::forward_shift_relu`] with ReLU6: the same values, gradient of `y` and range
    /// updates as `self.forward(relu6(y + shift))`, the gradient of `shift` within rounding.
    ///
    /// # Shapes
    /// `y`: `[N, C, …]`; `shift`: `[C]`; the output has `y`'s shape.
    pub fn forward_shift_relu6<const D: usize>(&self, y: Tensor<D>, shift: Tensor<1>) -> Tensor<D> {
        self.forward_shift_act(y, shift, true)
    }

    /// `forward_shift_relu` (`six = false`) or `forward_shift_relu6`.
    fn forward_shift_act<const D: usize>(
        &self,
        y: Tensor<D>,
        shift: Tensor<1>,
        six: bool,
    ) -> Tensor<D> {
        let sum =
            |y: Tensor<D>, shift: Tensor<1>| y + collab_core::ops::bias::channel_broadcast(shift);
        let act = |x: Tensor<D>| {
            if six {
                collab_core::Activation::Relu6.apply(x)
            } else {
                relu(x)
            }
        };
        let composed = |y: Tensor<D>, shift: Tensor<1>| {
            if six {
                self.forward(act(sum(y, shift)))
            } else {
                self.forward_relu(sum(y, shift))
            }
        };
        if self.calibrating.is_enabled() || !has_flex_kernels(&y.device()) {
            return composed(y, shift);
        }
        let batch = if self.is_training(&y) {
            let Some(range) = crate::ops::epilogue::shifted_range(&y, &shift) else {
                return composed(y, shift);
            };
            Some(range)
        } else {
            None
        };
        match self.relu_params(batch, six) {
            Some(p) => {
                crate::ops::epilogue::fake_quant_shift_relu_fused(y.clone(), shift.clone(), &p, six)
                    .unwrap_or_else(|| act(sum(y, shift)))
            }
            None => act(sum(y, shift)),
        }
    }

    /// Whether `x` is a training batch: the range follows it.
    fn is_training<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.training.is_enabled() && x.device().is_autodiff()
    }

    /// The range step of the ReLU-fused quantizers: with `batch` (the training batch's
    /// `[min, max]` before the ReLU), fold the ReLU's range of it into the stored one; then the
    /// parameters to quantize with, or `None` (no range yet, or an unusable one): the ReLU
    /// alone.
    ///
    /// With `six`, ReLU6's range of the batch: each end clamped to `[0, 6]` as burn's clamp
    /// computes it (the minimum and maximum of `relu6(x)`, as the quantizer after a ReLU6 sees
    /// them).
    fn relu_params(&self, batch: Option<(f32, f32)>, six: bool) -> Option<QuantParams> {
        let current = self.range();
        let range = match batch {
            Some((low, high)) if six => {
                let clamped = |v: f32| v.clamp(0.0, 6.0);
                self.observe(clamped(low), clamped(high), current)
            }
            Some((low, high)) => {
                // relu's minimum and maximum: +0.0 where they are 0 (never -0.0); a NaN stays
                // NaN so that `observe` leaves the batch out, as it would the NaN of relu(NaN).
                let positive = |v: f32| if v.is_nan() || v > 0.0 { v } else { 0.0 };
                self.observe(positive(low), positive(high), current)
            }
            None => current,
        };
        usable_params(range?)
    }

    /// The range on the host, if any batch has been seen.
    pub fn range(&self) -> Option<(f32, f32)> {
        (self.observed.get() > 0).then(|| {
            let min = to_vec_f32(self.min.get())[0];
            let max = to_vec_f32(self.max.get())[0];
            (min, max)
        })
    }

    /// The range and the number of batches that set it, on the host.
    pub fn report(&self) -> ActReport {
        ActReport {
            range: self.range().map(|(min, max)| [min, max]),
            batches: self.observed.get(),
        }
    }

    /// The quantization parameters export will use.
    pub fn params(&self, what: &str) -> Result<QuantParams, QuantError> {
        let (min, max) = self.range().ok_or_else(|| QuantError::Uncalibrated {
            what: what.to_string(),
        })?;
        QuantParams::asymmetric(min, max)
    }

    /// The batch's smallest and largest value, on the host.
    fn batch_range<const D: usize>(x: &Tensor<D>) -> (f32, f32) {
        // Rank 4 on flex: the per-channel kernel reads the buffer in its storage order (a
        // channels-last activation is not copied to flatten it).
        if let Some(range) = crate::ops::epilogue::channel_range(x) {
            return range;
        }
        let x = x.clone().without_autodiff();
        let n = x.shape().num_elements();
        let flat = x.reshape([n]);
        let both = Tensor::cat(vec![flat.clone().min(), flat.max()], 0);
        let values = to_vec_f32(both);
        (values[0], values[1])
    }

    fn set_range(&self, min: f32, max: f32) {
        let device = self.min.get().device();
        self.min.set(Tensor::from_floats([min], &device));
        self.max.set(Tensor::from_floats([max], &device));
    }

    /// Fold a batch's `[low, high]` into the range `current` (the stored one) and return the
    /// new range, without reading the stored one again.
    fn observe(&self, low: f32, high: f32, current: Option<(f32, f32)>) -> Option<(f32, f32)> {
        if !(low.is_finite() && high.is_finite()) {
            tracing::warn!("batch with non-finite activations left out of the range");
            return current;
        }
        let (min, max) = match current {
            None => (low, high),
            Some((min, max)) => {
                let d = self.config.decay as f32;
                (d * min + (1.0 - d) * low, d * max + (1.0 - d) * high)
            }
        };
        self.set_range(min, max);
        self.observed.increment();
        Some((min, max))
    }

    fn calibrate<const D: usize>(&self, x: &Tensor<D>) {
        match self.config.calibration {
            Calibration::MinMax => {
                let (low, high) = Self::batch_range(x);
                if !(low.is_finite() && high.is_finite()) {
                    tracing::warn!("calibration batch with non-finite activations skipped");
                    return;
                }
                match self.range() {
                    None => self.set_range(low, high),
                    Some((min, max)) => self.set_range(min.min(low), max.max(high)),
                }
            }
            Calibration::Percentile { percentile } => {
                let n = x.shape().num_elements();
                let Ok(mut values) = to_finite_vec_f32(x.clone().reshape([n]), "activation") else {
                    tracing::warn!("calibration batch with non-finite activations skipped");
                    return;
                };
                values.sort_by(f32::total_cmp);
                let pick = |q: f64| {
                    let pos = ((q / 100.0) * (values.len() - 1) as f64).round() as usize;
                    values[pos.min(values.len() - 1)] as f64
                };
                let (low, high) = (pick(100.0 - percentile), pick(percentile));
                let count = self.observed.get() as f64 + 1.0;
                let (old_low, old_high) = self
                    .range()
                    .map_or((low, high), |(a, b)| (a as f64, b as f64));
                let new_low = old_low + (low - old_low) / count;
                let new_high = old_high + (high - old_high) / count;
                self.set_range(new_low as f32, new_high as f32);
            }
        }
        self.observed.increment();
    }
}

/// The quantization parameters of the range `(min, max)`, or `None` (logged) where it cannot
/// give any: the quantizer then passes its tensor through.
fn usable_params((min, max): (f32, f32)) -> Option<QuantParams> {
    QuantParams::asymmetric(min, max)
        .map_err(
            |err| tracing::error!(%err, "activation range unusable; passing the tensor through"),
        )
        .ok()
}

/// The smallest and largest of `values` (rayon; min and max do not depend on the order, so the
/// split is exact).
fn host_range(values: &[f32]) -> (f32, f32) {
    use rayon::prelude::*;
    let fold = |(lo, hi): (f32, f32), v: &f32| (lo.min(*v), hi.max(*v));
    values
        .par_chunks(crate::params::PARALLEL_CHUNK)
        .map(|chunk| chunk.iter().fold((f32::INFINITY, f32::NEG_INFINITY), fold))
        .reduce(
            || (f32::INFINITY, f32::NEG_INFINITY),
            |(a, b), (c, d)| (a.min(c), b.max(d)),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn batch(values: Vec<f32>, device: &Device) -> Tensor<2> {
        let n = values.len();
        Tensor::from_data(TensorData::new(values, [1, n]), device)
    }

    #[test]
    fn ema_updates_in_training_and_freezes_in_eval() {
        let device = Device::flex().autodiff();
        let q = ActQuant::new(
            ActQuantConfig {
                decay: 0.9,
                ..Default::default()
            },
            &device,
        )
        .unwrap();
        assert!(q.range().is_none());
        let _ = q.forward(batch(vec![-1.0, 2.0], &device));
        assert_eq!(q.range(), Some((-1.0, 2.0)));
        let _ = q.forward(batch(vec![-3.0, 4.0], &device));
        let (min, max) = q.range().unwrap();
        assert!(
            (min - (-1.2)).abs() < 1e-6 && (max - 2.2).abs() < 1e-6,
            "{min} {max}"
        );
        // Evaluation: frozen, and the output is fake-quantized with the frozen range.
        let eval = q.valid();
        let y = eval.forward(batch(vec![-10.0, 0.1, 10.0], &Device::flex()));
        assert_eq!(eval.range(), q.range());
        let p = q.params("q").unwrap();
        let want: Vec<f32> = [-10.0, 0.1, 10.0]
            .iter()
            .map(|x| p.fake_quant(*x, 0))
            .collect();
        assert_eq!(collab_core::host::to_vec_f32(y), want);
    }

    /// Two quantizers in the same state (decay 0.5, no range yet), flex with autodiff.
    fn twins() -> (ActQuant, ActQuant, Device) {
        let device = Device::flex().autodiff();
        let config = ActQuantConfig {
            decay: 0.5,
            ..Default::default()
        };
        let q = ActQuant::new(config, &device).unwrap();
        (q.clone(), q, device)
    }

    /// `forward_relu(x)` is `forward(relu(x))`: values, gradients and ranges, in training
    /// (ranges moving), in evaluation and before any range exists.
    #[test]
    fn forward_relu_is_forward_of_relu() {
        use burn::tensor::Distribution;
        let (fused, composed, device) = twins();
        let check = |a: &ActQuant, b: &ActQuant, shift: f64| {
            let x = Tensor::<2>::random([37, 53], Distribution::Normal(shift, 2.0), &device)
                .require_grad();
            let g = Tensor::<2>::random([37, 53], Distribution::Normal(0.0, 1.0), &device);
            let ya = a.forward_relu(x.clone());
            let yb = b.forward(relu(x.clone()));
            assert_eq!(
                collab_core::host::to_vec_f32(ya.clone()),
                collab_core::host::to_vec_f32(yb.clone())
            );
            let ga = x.grad(&(ya * g.clone()).sum().backward()).unwrap();
            let gb = x.grad(&(yb * g).sum().backward()).unwrap();
            assert_eq!(
                collab_core::host::to_vec_f32(ga),
                collab_core::host::to_vec_f32(gb)
            );
            assert_eq!(a.range(), b.range());
        };
        // All-positive batches too: the range's minimum is then above 0.
        for shift in [0.0, -1.0, 1.5, 8.0, 0.3] {
            check(&fused, &composed, shift);
        }
        assert!(fused.range().is_some());
        let (a, b) = (fused.valid(), composed.valid());
        let x = Tensor::<2>::random([5, 40], Distribution::Normal(0.0, 3.0), &Device::flex());
        assert_eq!(
            collab_core::host::to_vec_f32(a.forward_relu(x.clone())),
            collab_core::host::to_vec_f32(b.forward(relu(x)))
        );
        // No range yet: the ReLU alone.
        let fresh = ActQuant::new(ActQuantConfig::default(), &device)
            .unwrap()
            .valid();
        let x = Tensor::<2>::random([3, 9], Distribution::Normal(0.0, 1.0), &Device::flex());
        assert_eq!(
            collab_core::host::to_vec_f32(fresh.forward_relu(x.clone())),
            collab_core::host::to_vec_f32(relu(x))
        );
    }

    /// The fused output `a` and the composed `b` of `y` and `shift`: values, the quantizers'
    /// ranges and the gradient of `y` (for the output gradient `g`) bit for bit, the gradient
    /// of `shift` within rounding.
    fn assert_fused_equals_composed(
        [a, b]: [&Tensor<4>; 2],
        [fused, composed]: [&ActQuant; 2],
        y: &Tensor<4>,
        shift: &Tensor<1>,
        g: Tensor<4>,
    ) {
        assert_eq!(
            collab_core::host::to_vec_f32(a.clone()),
            collab_core::host::to_vec_f32(b.clone())
        );
        assert_eq!(fused.range(), composed.range());
        let ga = (a.clone() * g.clone()).sum().backward();
        let gb = (b.clone() * g).sum().backward();
        assert_eq!(
            collab_core::host::to_vec_f32(y.grad(&ga).unwrap()),
            collab_core::host::to_vec_f32(y.grad(&gb).unwrap())
        );
        let sa = collab_core::host::to_vec_f32(shift.grad(&ga).unwrap());
        let sb = collab_core::host::to_vec_f32(shift.grad(&gb).unwrap());
        for (x, z) in sa.iter().zip(&sb) {
            assert!((x - z).abs() <= 1e-4 * z.abs().max(1.0), "{x} vs {z}");
        }
    }

    /// `forward_shift_relu(y, shift)` is `forward_relu(y + shift)`: values, the gradient of
    /// `y` and ranges bit for bit, the gradient of `shift` within rounding; `y` stored either
    /// way.
    #[test]
    fn forward_shift_relu_is_forward_relu_of_the_sum() {
        use burn::tensor::Distribution;
        let (fused, composed, device) = twins();
        // 39,000 elements of 65-element planes: two kernel tasks.
        let shape = [20, 30, 13, 5];
        // `y` stored channels first and channels last (`collab_core::ops::layout`).
        for (mean, stored_last) in [
            (0.0, false),
            (-1.0, true),
            (2.0, false),
            (0.4, true),
            (0.0, true),
        ] {
            let y =
                Tensor::<4>::random(shape, Distribution::Normal(mean, 2.0), &device).require_grad();
            let shift =
                Tensor::<1>::random([30], Distribution::Normal(0.0, 1.5), &device).require_grad();
            let g = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let input = if stored_last {
                collab_core::ops::layout::channels_last(y.clone())
            } else {
                y.clone()
            };
            let a = fused.forward_shift_relu(input, shift.clone());
            let b = composed
                .forward_relu(y.clone() + collab_core::ops::bias::channel_broadcast(shift.clone()));
            assert_fused_equals_composed([&a, &b], [&fused, &composed], &y, &shift, g);
        }
        let (a, b) = (fused.valid(), composed.valid());
        let y = Tensor::<4>::random(shape, Distribution::Normal(0.0, 2.0), &Device::flex());
        let shift = Tensor::<1>::random([30], Distribution::Normal(0.0, 1.0), &Device::flex());
        assert_eq!(
            collab_core::host::to_vec_f32(a.forward_shift_relu(y.clone(), shift.clone())),
            collab_core::host::to_vec_f32(
                b.forward_relu(y + collab_core::ops::bias::channel_broadcast(shift))
            )
        );
    }

    /// `forward_shift_relu6(y, shift)` is `forward(relu6(y + shift))`: values, the gradient of
    /// `y` and ranges bit for bit (outputs above 6, below 0 and exactly 0 included), the
    /// gradient of `shift` within rounding; `y` stored either way.
    #[test]
    fn forward_shift_relu6_is_forward_of_relu6_of_the_sum() {
        use burn::tensor::Distribution;
        let (fused, composed, device) = twins();
        let shape = [20, 30, 13, 5];
        for (mean, stored_last) in [(3.0, false), (5.0, true), (-1.0, true), (2.0, false)] {
            // Rounded to quarters: some sums are exactly 0 and 6, where ReLU6's clamp keeps
            // the gradient and ReLU would not.
            let y = (Tensor::<4>::random(shape, Distribution::Normal(mean, 4.0), &device) * 4.0)
                .round()
                / 4.0;
            let y = y.detach().require_grad();
            let shift = (Tensor::<1>::random([30], Distribution::Normal(0.0, 1.5), &device) * 4.0)
                .round()
                / 4.0;
            let shift = shift.detach().require_grad();
            let g = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let input = if stored_last {
                collab_core::ops::layout::channels_last(y.clone())
            } else {
                y.clone()
            };
            let a = fused.forward_shift_relu6(input, shift.clone());
            let sum = y.clone() + collab_core::ops::bias::channel_broadcast(shift.clone());
            let b = composed.forward(sum.clamp(0.0, 6.0));
            assert_fused_equals_composed([&a, &b], [&fused, &composed], &y, &shift, g);
        }
    }

    #[test]
    fn settings_are_checked() {
        let device = Device::flex();
        assert!(
            ActQuant::new(
                ActQuantConfig {
                    decay: 1.0,
                    ..Default::default()
                },
                &device
            )
            .is_err()
        );
        let bad = ActQuantConfig {
            calibration: Calibration::Percentile { percentile: 10.0 },
            ..Default::default()
        };
        assert!(
            ActQuant::new(bad, &device)
                .unwrap_err()
                .to_string()
                .contains("percentile")
        );
        let q = ActQuant::new(ActQuantConfig::default(), &device).unwrap();
        assert!(matches!(
            q.params("out"),
            Err(QuantError::Uncalibrated { .. })
        ));
    }
}
