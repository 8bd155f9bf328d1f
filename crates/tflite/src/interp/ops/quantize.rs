//! QUANTIZE (float32 → int8) and DEQUANTIZE (int8 → float32) with one scale and zero point.

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::Ctx;
use crate::reader::TensorType;

/// A prepared QUANTIZE or DEQUANTIZE: the int8 side's `(scale, zero point)`.
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    pub(crate) input: usize,
    pub(crate) output: usize,
    scale: f32,
    zero_point: i32,
}

impl Affine {
    /// QUANTIZE: `clamp(round(v / scale) + zero_point)`.
    pub(crate) fn quantize(&self, x: &[f32]) -> Vec<i8> {
        x.iter()
            .map(|v| {
                let q = (v / self.scale).round().clamp(-1e9, 1e9) as i32 + self.zero_point;
                q.clamp(-128, 127) as i8
            })
            .collect()
    }

    /// DEQUANTIZE: `scale · (v − zero_point)`, in double as TFLite.
    pub(crate) fn dequantize(&self, x: &[i8]) -> Vec<f32> {
        x.iter()
            .map(|v| (self.scale as f64 * (*v as i32 - self.zero_point) as f64) as f32)
            .collect()
    }
}

/// QUANTIZE of `ctx` (float32 → int8 of the same size).
pub(crate) fn prepare_quantize(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    ctx.int8(ot)?;
    if it.dtype != TensorType::Float32 || ctx.sizes[ii] != ctx.sizes[oi] {
        return Err(ctx.bad("only float32 → int8 of the same size is supported"));
    }
    let (scale, zero_point) = ctx.per_tensor(ot)?;
    Ok(Step::Quantize(Affine {
        input: ii,
        output: oi,
        scale,
        zero_point,
    }))
}

/// DEQUANTIZE of `ctx` (int8 → float32 of the same size).
pub(crate) fn prepare_dequantize(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    ctx.int8(it)?;
    if ot.dtype != TensorType::Float32 || ctx.sizes[ii] != ctx.sizes[oi] {
        return Err(ctx.bad("only int8 → float32 of the same size is supported"));
    }
    let (scale, zero_point) = ctx.per_tensor(it)?;
    Ok(Step::Dequantize(Affine {
        input: ii,
        output: oi,
        scale,
        zero_point,
    }))
}
