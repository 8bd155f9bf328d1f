//! The float plan run on calibration batches: every value's observed range (PTQ).

use burn::tensor::Tensor;
use collab_core::host::to_vec_f32;
use collab_models::graph::{Op, Value, apply_op, transpose_conv_input};
use collab_quant::Calibration;
use serde::Serialize;

use super::plan::{Plan, Step};
use crate::CollabError;
use crate::data::Batches;

/// Observed `[min, max]` of every value of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranges(pub Vec<Option<(f32, f32)>>);

impl Plan {
    /// Run the float plan on `x` `[n, c, h, w]`; returns every value (input first), as burn
    /// tensors flattened to `[n, …]`.
    fn run(&self, x: Tensor<4>) -> Result<Vec<Tensor<2>>, CollabError> {
        let mut values: Vec<Value> = vec![Value::Map(x)];
        for step in &self.steps {
            let v = match step {
                Step::Conv {
                    src, layer, act, ..
                } => Value::Map(act.apply(layer.forward(values[*src].clone().map()))),
                Step::Linear {
                    src, layer, act, ..
                } => Value::Vec(act.apply(layer.forward(values[*src].clone().flat()))),
                Step::Add { a, b, act, .. } => apply_op(
                    &Op::Add { act: *act },
                    vec![values[*a].clone(), values[*b].clone()],
                ),
                Step::Op { op, inputs, .. } | Step::Binary { op, inputs, .. } => {
                    apply_op(op, inputs.iter().map(|&i| values[i].clone()).collect())
                }
                Step::ConvTranspose {
                    src,
                    layer,
                    stride,
                    pads,
                    output_padding,
                    act,
                    ..
                } => {
                    let [_, _, kh, kw] = layer.weight.dims();
                    let x = transpose_conv_input(
                        values[*src].clone().map(),
                        [kh, kw],
                        *stride,
                        *pads,
                        *output_padding,
                    );
                    Value::Map(act.apply(layer.forward(x)))
                }
                Step::Concat { inputs, .. } => apply_op(
                    &Op::Concat,
                    inputs.iter().map(|&i| values[i].clone()).collect(),
                ),
                Step::Act { src, act, .. } => apply_op(&Op::Act(*act), vec![values[*src].clone()]),
            };
            values.push(v);
        }
        Ok(values.into_iter().map(Value::flat).collect())
    }

    /// The float model's logits for `x` `[n, c, h, w]` (the plan is the model: tests compare).
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, CollabError> {
        self.run(x)?
            .pop()
            .ok_or_else(|| CollabError::export("the plan", "it has no steps"))
    }

    /// The range of every value over `batches` of inputs `[n, c, h, w]` (PTQ calibration):
    /// `MinMax` over all samples (the TFLite converter's rule), or per-batch percentiles
    /// averaged over batches (clips rare outliers), as [`collab_quant::ActQuant`] calibrates.
    pub fn calibrate<I>(&self, batches: I, method: Calibration) -> Result<Ranges, CollabError>
    where
        I: IntoIterator<Item = Result<Tensor<4>, CollabError>>,
    {
        let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); self.steps.len() + 1];
        let mut ranges: Vec<Option<(f32, f32)>> = vec![None; self.steps.len() + 1];
        let mut seen = 0usize;
        for x in batches {
            seen += 1;
            for ((r, sum), v) in ranges.iter_mut().zip(&mut sums).zip(self.run(x?)?) {
                let mut values = to_vec_f32(v.flatten::<1>(0, 1));
                let (lo, hi) = match method {
                    Calibration::MinMax => values
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                            (a.min(*v), b.max(*v))
                        }),
                    Calibration::Percentile { percentile } => {
                        let n = values.len();
                        let k_hi =
                            (((percentile / 100.0) * (n - 1) as f64).round() as usize).min(n - 1);
                        let k_lo = n - 1 - k_hi;
                        let hi = *values.select_nth_unstable_by(k_hi, f32::total_cmp).1;
                        let lo = *values.select_nth_unstable_by(k_lo, f32::total_cmp).1;
                        (lo, hi)
                    }
                };
                sum.0 += lo as f64;
                sum.1 += hi as f64;
                *r = Some(match (method, *r) {
                    (Calibration::MinMax, Some((a, b))) => (a.min(lo), b.max(hi)),
                    (Calibration::MinMax, None) => (lo, hi),
                    (Calibration::Percentile { .. }, _) => {
                        ((sum.0 / seen as f64) as f32, (sum.1 / seen as f64) as f32)
                    }
                });
            }
        }
        if seen == 0 {
            return Err(CollabError::export(
                "calibration",
                "it needs at least one batch; give calibration samples",
            ));
        }
        Ok(Ranges(ranges))
    }

    /// [`calibrate`](Self::calibrate) on the samples `indices` of a data set, `batch_size` at a
    /// time, without augmentation.
    pub fn calibrate_on(
        &self,
        data: &dyn Batches,
        indices: &[usize],
        batch_size: usize,
        method: Calibration,
    ) -> Result<Ranges, CollabError> {
        let device = crate::device::compute();
        self.calibrate(
            indices
                .chunks(batch_size.max(1))
                .map(|chunk| data.batch(chunk, None, &device).map(|(x, _)| x)),
            method,
        )
    }
}
