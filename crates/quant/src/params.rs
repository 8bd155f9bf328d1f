//! The one description of int8 quantization parameters, shared by QAT, PTQ and export.
//!
//! `real = scale · (q − zero_point)`, `q = clamp(round(real / scale) + zero_point, qmin, qmax)`
//! with `round` = half away from zero (`TfLiteRound`, i.e. `std::round`), as TFLite's reference
//! Quantize kernel does. Weights: symmetric int8 in [−127, 127], zero point 0, per tensor or
//! per output channel. Activations: asymmetric int8 in [−128, 127], per tensor, the range
//! extended to include 0 and the zero point rounded (so 0.0 is exactly representable).

use serde::{Deserialize, Serialize};

use crate::QuantError;

/// Quantization parameters of one tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// One scale per tensor, or one per output channel.
    pub scale: Vec<f32>,
    /// Zero points, same length as `scale`.
    pub zero_point: Vec<i32>,
    /// Whether `scale[c]` belongs to output channel `c` (per-axis quantization).
    pub per_channel: bool,
    /// Smallest integer value (−127 for weights, −128 for activations).
    pub qmin: i32,
    /// Largest integer value (127).
    pub qmax: i32,
}

/// `f32::round`: ties away from zero, as `TfLiteRound`.
pub fn round_half_away(x: f32) -> f32 {
    x.round()
}

impl QuantParams {
    /// Symmetric int8 weights `[−127, 127]`, zero point 0, from the largest magnitude of the
    /// tensor (one value) or of each output channel. An all-zero tensor or channel gets scale 1.
    pub fn symmetric(max_abs: &[f32], per_channel: bool) -> Self {
        let scale: Vec<f32> = max_abs.iter().map(|m| symmetric_scale(*m)).collect();
        Self {
            zero_point: vec![0; scale.len()],
            scale,
            per_channel,
            qmin: -127,
            qmax: 127,
        }
    }

    /// Bits of the integer values: 8 for `[−127, 127]` and `[−128, 127]`.
    pub fn bits(&self) -> u32 {
        (self.qmax - self.qmin).unsigned_abs().ilog2() + 1
    }

    /// Asymmetric int8 activations `[−128, 127]` from an observed range. The range is extended
    /// to include 0; `scale = (max − min) / 255`, `zero_point = clamp(round(−128 − min/scale))`.
    pub fn asymmetric(min: f32, max: f32) -> Result<Self, QuantError> {
        if !(min.is_finite() && max.is_finite()) || min > max {
            return Err(QuantError::Range {
                what: "activation".into(),
                min,
                max,
                reason: "the range must be finite with min <= max".into(),
            });
        }
        let (scale, zero_point) = asymmetric_scale_zero_point(min, max);
        Ok(Self {
            scale: vec![scale],
            zero_point: vec![zero_point],
            per_channel: false,
            qmin: -128,
            qmax: 127,
        })
    }

    fn index(&self, channel: usize) -> usize {
        if self.per_channel { channel } else { 0 }
    }

    /// `clamp(round(x / scale) + zero_point, qmin, qmax)`.
    pub fn quantize(&self, x: f32, channel: usize) -> i32 {
        let i = self.index(channel);
        // Clamp before the integer conversion: values this far out saturate anyway.
        let q =
            round_half_away(x / self.scale[i]).clamp(-1e9, 1e9) as i64 + self.zero_point[i] as i64;
        q.clamp(self.qmin as i64, self.qmax as i64) as i32
    }

    /// `scale · (q − zero_point)`.
    pub fn dequantize(&self, q: i32, channel: usize) -> f32 {
        let i = self.index(channel);
        (q - self.zero_point[i]) as f32 * self.scale[i]
    }

    /// `dequantize(quantize(x))`: what fake quantization computes.
    pub fn fake_quant(&self, x: f32, channel: usize) -> f32 {
        self.dequantize(self.quantize(x, channel), channel)
    }

    /// [`fake_quant`](Self::fake_quant) of every value in place, with the parameters of
    /// channel `channel` (0 for per-tensor parameters). Written so the compiler vectorises it:
    /// rounding is `trunc(|v| + HALF_DOWN)` through an integer conversion, which equals
    /// `round(v)` (ties away from zero) for every finite `f32` (see `fake::round_half_away`).
    pub fn fake_quant_slice(&self, values: &mut [f32], channel: usize) {
        use rayon::prelude::*;
        let i = self.index(channel);
        let (scale, zp) = (self.scale[i], self.zero_point[i]);
        let (qmin, qmax) = (self.qmin, self.qmax);
        let run = |chunk: &mut [f32]| {
            for v in chunk.iter_mut() {
                *v = fake_quant_one(*v, scale, zp, qmin, qmax);
            }
        };
        // Element-wise, so splitting cannot change a value; small slices stay on one thread.
        if values.len() >= PARALLEL_CHUNK * 2 {
            values.par_chunks_mut(PARALLEL_CHUNK).for_each(run);
        } else {
            run(values);
        }
    }
}

/// The largest `f32` below 0.5. `floor(|x| + HALF_DOWN)` is `floor(|x| + 0.5)` in exact
/// arithmetic for every finite `f32` (a tie `n + 0.5` still reaches `n + 1` after rounding the
/// sum), while `|x| + 0.5` itself would round `0.49999997` up to 1.
pub(crate) const HALF_DOWN: f32 = 0.499_999_97;

/// One value quantized to `[qmin, qmax]` (ties away from zero, saturating) and dequantized.
#[inline(always)]
pub(crate) fn fake_quant_one(v: f32, scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> f32 {
    // Anything beyond this saturates anyway; keeps the integer conversion in range.
    let limit = (qmax - qmin + 256) as f32;
    let x = (v / scale).clamp(-limit, limit);
    // NaN quantizes as 0 (what the saturating `as i32` made of it); every other `x` is within
    // ±limit, so the unchecked conversion is exact and vectorizes (the saturating one does not:
    // a scalar conversion per lane).
    let x = if x.is_nan() { 0.0 } else { x };
    // SAFETY: |x| + HALF_DOWN is finite and below 2^31 (x is within ±limit, limit < 2^17).
    let magnitude: i32 = unsafe { (x.abs() + HALF_DOWN).to_int_unchecked() };
    let rounded = if x < 0.0 { -magnitude } else { magnitude };
    let q = (rounded + zero_point).clamp(qmin, qmax);
    (q - zero_point) as f32 * scale
}

/// The dequantized ends of `[qmin, qmax]`: where [`fake_quant_one`] saturates, and outside
/// which the straight-through gradient is 0.
pub(crate) fn clamp_bounds(scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> (f32, f32) {
    (
        (qmin - zero_point) as f32 * scale,
        (qmax - zero_point) as f32 * scale,
    )
}

/// Elements per rayon task in the host-side loops over activations.
pub(crate) const PARALLEL_CHUNK: usize = 1 << 15;

/// `max_abs / 127`, or 1 for an all-zero tensor.
pub(crate) fn symmetric_scale(max_abs: f32) -> f32 {
    if max_abs > 0.0 { max_abs / 127.0 } else { 1.0 }
}

/// Scale and zero point of the asymmetric int8 range covering `[min, max] ∪ {0}`.
pub(crate) fn asymmetric_scale_zero_point(min: f32, max: f32) -> (f32, i32) {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let range = max - min;
    let scale = if range > 0.0 { range / 255.0 } else { 1.0 };
    let zero_point = round_half_away(-128.0 - min / scale).clamp(-128.0, 127.0) as i32;
    (scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_ties_go_away_from_zero() {
        assert_eq!(round_half_away(2.5), 3.0);
        assert_eq!(round_half_away(-2.5), -3.0);
        assert_eq!(round_half_away(0.49999997), 0.0);
        assert_eq!(round_half_away(-0.5), -1.0);
    }

    #[test]
    fn symmetric_weights_hand_cases() {
        let p = QuantParams::symmetric(&[2.54, 0.0], true);
        assert!((p.scale[0] - 0.02).abs() < 1e-8);
        assert_eq!(p.scale[1], 1.0);
        // 0.03 / 0.02 = 1.5 -> 2 (tie away from zero); -0.03 -> -2.
        assert_eq!(p.quantize(0.03, 0), 2);
        assert_eq!(p.quantize(-0.03, 0), -2);
        // Saturation at ±127 (never -128 for weights).
        assert_eq!(p.quantize(9.0, 0), 127);
        assert_eq!(p.quantize(-9.0, 0), -127);
        assert_eq!(p.dequantize(-127, 0), -127.0 * p.scale[0]);
    }

    #[test]
    fn slice_kernel_equals_the_scalar_definition() {
        let p = QuantParams::asymmetric(-1.3, 4.1).unwrap();
        let s = p.scale[0];
        let mut xs: Vec<f32> = (0..2000).map(|i| (i as f32 - 700.0) * 0.00731).collect();
        for k in -130..130 {
            let tie = (k as f32 + 0.5) * s;
            xs.extend([
                tie,
                f32::from_bits(tie.to_bits() + 1),
                f32::from_bits(tie.to_bits().saturating_sub(1)),
            ]);
        }
        xs.extend([1e30, -1e30, 0.0, -0.0, f32::MIN_POSITIVE]);
        let want: Vec<f32> = xs.iter().map(|x| p.fake_quant(*x, 0)).collect();
        let mut got = xs.clone();
        p.fake_quant_slice(&mut got, 0);
        assert_eq!(got, want);
        let w = QuantParams::symmetric(&[0.9], false);
        let want: Vec<f32> = xs.iter().map(|x| w.fake_quant(*x, 0)).collect();
        let mut got = xs;
        w.fake_quant_slice(&mut got, 0);
        assert_eq!(got, want);
    }

    #[test]
    fn asymmetric_activation_hand_cases() {
        // [-1, 3]: scale 4/255, zero point round(-128 + 1/(4/255)) = round(-64.25) = -64.
        let p = QuantParams::asymmetric(-1.0, 3.0).unwrap();
        assert_eq!(p.scale[0], 4.0 / 255.0);
        assert_eq!(p.zero_point[0], -64);
        assert_eq!(p.quantize(0.0, 0), -64, "0.0 is exactly representable");
        assert_eq!(p.fake_quant(0.0, 0), 0.0);
        assert_eq!(p.quantize(100.0, 0), 127);
        assert_eq!(p.quantize(-100.0, 0), -128);
        // A range not containing 0 is extended: [0.5, 2] -> [0, 2], zero point -128.
        let p = QuantParams::asymmetric(0.5, 2.0).unwrap();
        assert_eq!(p.zero_point[0], -128);
        assert_eq!(p.scale[0], 2.0 / 255.0);
        // Negative-only range: [-2, -1] -> [-2, 0], zero point 127.
        let p = QuantParams::asymmetric(-2.0, -1.0).unwrap();
        assert_eq!(p.zero_point[0], 127);
        assert!(QuantParams::asymmetric(1.0, 0.0).is_err());
        assert!(QuantParams::asymmetric(f32::NAN, 0.0).is_err());
        // Degenerate [0, 0] still quantizes 0 exactly.
        let p = QuantParams::asymmetric(0.0, 0.0).unwrap();
        assert_eq!(p.fake_quant(0.0, 0), 0.0);
    }
}
