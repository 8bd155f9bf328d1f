//! The int8 quantization of every value (trained, calibrated, or shared with a
//! concatenation's class) and of the weights.

use collab_models::graph::Op;
use collab_quant::QuantParams;
use collab_tflite::ActQ;

use super::calibrate::Ranges;
use super::plan::{Plan, Step};
use crate::CollabError;

/// `s` rounded up to a 12-bit significand (a relative change below 2⁻¹²).
///
/// Why: TFLite Micro computes the fully-connected multiplier from the `f32` product
/// `input_scale × weight_scale`, LiteRT's reference kernel from the `f64` product; the two give
/// different fixed-point multipliers (and outputs 1 LSB apart) unless the product is exact in
/// `f32`. With 12-bit significands on both factors it always is, so every runtime computes the
/// same multiplier. All activation scales and the classifier's weight scale are rounded so.
pub fn round_scale(s: f32) -> f32 {
    if !(s.is_finite() && s > 0.0) {
        return s;
    }
    let e = s.log2().floor() as i32;
    let unit = 2f32.powi(e - 11);
    let r = (s / unit).ceil() * unit;
    if r < s { r + unit } else { r }
}

pub(super) fn act_q(p: &QuantParams) -> ActQ {
    ActQ {
        scale: round_scale(p.scale[0]),
        zero_point: p.zero_point[0],
    }
}

pub(super) fn range_q(
    ranges: Option<&Ranges>,
    value: usize,
    what: &str,
) -> Result<ActQ, CollabError> {
    let (lo, hi) = ranges
        .and_then(|r| r.0.get(value).copied().flatten())
        .ok_or_else(|| {
            CollabError::export(
                what,
                "no quantization range: the model was not trained with QAT there; give \
                 calibration data (PTQ)",
            )
        })?;
    QuantParams::asymmetric(lo, hi)
        .map(|p| act_q(&p))
        .map_err(|e| CollabError::quant(what, e))
}

/// Which values of `plan` must share one int8 quantization: `class[v]` is the smallest value
/// of `v`'s class. A concatenation's inputs and output form one class (TFLite's int8
/// CONCATENATION copies bytes, and every runtime refuses inputs quantized unlike the output);
/// pooling, flattening, reshapes and transposes keep their input's quantization
/// ([`Op::keeps_quantization`]), so their output joins their input's class. The rules compose: a concatenation of concatenations, or of a pooled branch,
/// is one class. A value outside any concatenation's class is its own producer's alone.
pub fn quant_classes(plan: &Plan) -> Vec<usize> {
    fn root(parent: &mut [usize], mut v: usize) -> usize {
        while parent[v] != v {
            parent[v] = parent[parent[v]];
            v = parent[v];
        }
        v
    }
    let mut parent: Vec<usize> = (0..=plan.steps.len()).collect();
    let mut join = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    };
    for (k, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Concat { inputs, .. } => inputs.iter().for_each(|&i| join(i, k + 1)),
            Step::Op { op, inputs, .. } if op.keeps_quantization() => join(inputs[0], k + 1),
            Step::Act { act, src, .. } if Op::Act(*act).keeps_quantization() => join(*src, k + 1),
            _ => {}
        }
    }
    (0..parent.len()).map(|v| root(&mut parent, v)).collect()
}

/// The `[min, max]` an activation quantization represents.
pub(super) fn params_range(p: &QuantParams) -> (f32, f32) {
    (p.dequantize(p.qmin, 0), p.dequantize(p.qmax, 0))
}

fn widen(a: Option<(f32, f32)>, b: (f32, f32)) -> Option<(f32, f32)> {
    Some(a.map_or(b, |a| (a.0.min(b.0), a.1.max(b.1))))
}

/// The int8 quantization of every value whose class ([`quant_classes`]) holds a
/// concatenation; `None` for the others (one producer, whose own range decides).
///
/// - QAT trained a concatenation's output range (`GraphNet::with_requant`): the class takes
///   it (the union of them for concatenations of concatenations). That is TFMOT's rule for
///   `Concatenate`: the layers feeding it are not quantized on their own, the joined output is,
///   once, so the fake-int8 model applied exactly this quantization; every producer in the
///   class (a layer, a sum, the model input, whatever its own QAT range) is written with it.
/// - Otherwise (PTQ): the union of the calibrated ranges of the class's values, so no member is
///   clipped (a value that also feeds other operators gets the wider range too). A producer
///   with no calibrated range contributes its trained one (`input_trained` for the model
///   input: its QAT input quantizer or fixed pixel range); one with neither is an error.
pub(super) fn shared_quant(
    plan: &Plan,
    ranges: Option<&Ranges>,
    input_trained: Option<(f32, f32)>,
) -> Result<Vec<Option<ActQ>>, CollabError> {
    let class = quant_classes(plan);
    let mut concat_of: Vec<Option<&str>> = vec![None; class.len()];
    let mut trained: Vec<Option<(f32, f32)>> = vec![None; class.len()];
    for (k, step) in plan.steps.iter().enumerate() {
        if let Step::Concat { name, range, .. } = step {
            let r = class[k + 1];
            concat_of[r] = Some(name.as_str());
            if let Some(range) = range {
                trained[r] = widen(trained[r], *range);
            }
        }
    }
    let mut union = trained.clone();
    for (v, &r) in class.iter().enumerate() {
        let Some(concat) = concat_of[r] else {
            continue;
        };
        if trained[r].is_some() {
            continue;
        }
        let (what, own, producer) = match v.checked_sub(1).map(|k| &plan.steps[k]) {
            None => ("the model input", input_trained, true),
            Some(
                Step::Conv { name, quant, .. }
                | Step::Linear { name, quant, .. }
                | Step::ConvTranspose { name, quant, .. },
            ) => (
                name.as_str(),
                quant.as_ref().map(|q| params_range(&q.output)),
                true,
            ),
            Some(Step::Add { name, quant, .. } | Step::Binary { name, quant, .. }) => {
                (name.as_str(), quant.as_ref().map(params_range), true)
            }
            Some(Step::Op { name, op, .. }) => (name.as_str(), None, !op.keeps_quantization()),
            Some(Step::Concat { name, .. }) => (name.as_str(), None, false),
            Some(Step::Act {
                name, act, quant, ..
            }) => (
                name.as_str(),
                quant.as_ref().map(params_range),
                !Op::Act(*act).keeps_quantization(),
            ),
        };
        let calibrated = ranges.and_then(|r| r.0.get(v).copied().flatten());
        match calibrated.or(own) {
            Some(range) => union[r] = widen(union[r], range),
            None if producer => {
                return Err(CollabError::export(
                    format!("`{what}`"),
                    format!(
                        "it feeds the concatenation `{concat}` (they share one int8 \
                     quantization) but has no quantization range: train the model with QAT \
                     (GraphNet::with_requant gives the concatenation a trained range) or give \
                     calibration data (PTQ)"
                    ),
                ));
            }
            None => {}
        }
    }
    let mut q: Vec<Option<ActQ>> = vec![None; class.len()];
    for (v, &r) in class.iter().enumerate() {
        let (Some(concat), Some((lo, hi))) = (concat_of[r], union[r]) else {
            continue;
        };
        q[v] = Some(match q[r] {
            Some(shared) => shared,
            None => act_q(&QuantParams::asymmetric(lo, hi).map_err(|e| {
                CollabError::quant(format!("the concatenation `{concat}` and its inputs"), e)
            })?),
        });
    }
    Ok(q)
}

/// Quantize a float weight `values` in burn's layout: returns int8 values (same order) and the
/// scales, per output channel (`rows` = channels) or per tensor; `round`: scales rounded with
/// [`round_scale`].
pub(super) fn quantize_weight(
    values: &[f32],
    channel_of: impl Fn(usize) -> usize,
    channels: usize,
    per_channel: bool,
    trained: Option<&QuantParams>,
    round: bool,
) -> (Vec<i8>, Vec<f32>) {
    let mut params = match trained {
        Some(p) => p.clone(),
        None => {
            let mut max_abs = vec![0f32; if per_channel { channels } else { 1 }];
            for (i, v) in values.iter().enumerate() {
                let r = if per_channel { channel_of(i) } else { 0 };
                max_abs[r] = max_abs[r].max(v.abs());
            }
            QuantParams::symmetric(&max_abs, per_channel)
        }
    };
    if round {
        params.scale = params.scale.iter().map(|s| round_scale(*s)).collect();
    }
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| params.quantize(*v, if params.per_channel { channel_of(i) } else { 0 }) as i8)
        .collect();
    (q, params.scale.clone())
}

#[cfg(test)]
mod tests {
    use super::round_scale;

    #[test]
    fn rounded_scales_multiply_exactly_in_f32() {
        let mut state = 12345u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = f32::from_bits(0x3000_0000 + ((state >> 33) as u32 % 0x0E00_0000));
            let b = f32::from_bits(0x3000_0000 + ((state >> 3) as u32 % 0x0E00_0000));
            let (ra, rb) = (round_scale(a), round_scale(b));
            assert!(ra >= a && (ra - a) / a < 1.0 / 2048.0, "{a} → {ra}");
            assert_eq!((ra * rb) as f64, ra as f64 * rb as f64, "{ra} × {rb}");
        }
    }
}
