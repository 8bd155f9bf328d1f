//! SOFTMAX on int8 (output scale 1/256, zero point −128): TFLite's
//! `PreprocessSoftmaxScaling` and `CalculateInputRadius` with 5 integer bits, then gemmlowp's
//! fixed-point exponent and reciprocal per row of the last axis.

use crate::TfliteError;
use crate::fixed::{exp_on_negative_values_q5, quantize_multiplier, rdbpot, reciprocal, srdhm};
use crate::interp::Step;
use crate::interp::prepare::Ctx;
use crate::reader::Options;

/// A prepared SOFTMAX.
#[derive(Clone, Debug)]
pub(crate) struct Softmax {
    pub(crate) input: usize,
    pub(crate) output: usize,
    /// Values per row (the last axis).
    depth: usize,
    multiplier: i32,
    left_shift: i32,
    /// Differences from the row's maximum below this give 0.
    diff_min: i32,
}

impl Softmax {
    /// The output of `x`, row by row.
    pub(crate) fn run(&self, x: &[i8]) -> Vec<i8> {
        let (depth, diff_min) = (self.depth, self.diff_min);
        let mut out = vec![0i8; x.len()];
        let rescale = |d: i32| srdhm(d * (1 << self.left_shift), self.multiplier);
        for (row, o) in x.chunks_exact(depth).zip(out.chunks_exact_mut(depth)) {
            let max = row.iter().copied().max().unwrap_or(i8::MIN) as i32;
            let mut sum = 0i32; // Q12.19
            for v in row {
                let d = *v as i32 - max;
                if d >= diff_min {
                    sum = sum.wrapping_add(rdbpot(exp_on_negative_values_q5(rescale(d)), 12));
                }
            }
            let (scale, bits_over_unit) = reciprocal(sum, 12);
            for (v, o) in row.iter().zip(o.iter_mut()) {
                let d = *v as i32 - max;
                *o = if d >= diff_min {
                    let e = exp_on_negative_values_q5(rescale(d));
                    let unsat = rdbpot(srdhm(scale, e), bits_over_unit + 31 - 8);
                    (unsat - 128).clamp(-128, 127) as i8
                } else {
                    -128
                };
            }
        }
        out
    }
}

/// SOFTMAX of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::Softmax { beta } = &ctx.op.options else {
        return Err(ctx.unsupported());
    };
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    ctx.int8(it)?;
    ctx.int8(ot)?;
    let depth = *it.shape.last().unwrap_or(&0);
    if depth == 0 || ctx.sizes[ii] != ctx.sizes[oi] {
        return Err(ctx.bad("input and output sizes differ"));
    }
    let (in_scale, _) = ctx.per_tensor(it)?;
    let (out_scale, out_zp) = ctx.per_tensor(ot)?;
    if (out_scale - 1.0 / 256.0).abs() > 0.001 / 256.0 || out_zp != -128 {
        return Err(ctx.bad("int8 softmax output must have scale 1/256, zero point −128"));
    }
    // PreprocessSoftmaxScaling with 5 integer bits, and CalculateInputRadius.
    const BITS: i32 = 5;
    let real = (*beta as f64 * in_scale as f64 * (1i64 << (31 - BITS)) as f64)
        .min((1i64 << 31) as f64 - 1.0);
    let (multiplier, left_shift) = quantize_multiplier(real);
    if !(0..=31).contains(&left_shift) {
        return Err(ctx.bad("input scale × beta is out of range"));
    }
    let radius = ((((1i64 << BITS) - 1) as f64 * (1i64 << (31 - BITS)) as f64)
        / (1i64 << left_shift) as f64)
        .floor();
    Ok(Step::Softmax(Softmax {
        input: ii,
        output: oi,
        depth,
        multiplier,
        left_shift,
        diff_min: -(radius as i32),
    }))
}
