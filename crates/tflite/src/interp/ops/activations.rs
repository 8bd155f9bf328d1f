//! int8 elementwise activations: LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU and RELU6.
//!
//! Each maps one int8 value to one int8 value, so [`tables`] runs the runtime's own arithmetic
//! on all 256 inputs once, when the interpreter prepares the graph, and a run looks the outputs
//! up. There are two tables because the runtimes do not compute the same thing everywhere:
//!
//! - LOGISTIC and TANH: TensorFlow Lite Micro evaluates gemmlowp's fixed-point `logistic` /
//!   `tanh` (`reference_integer_ops::Logistic` / `Tanh`, input rescaled to Q4.27, output
//!   rescaled by a rounding shift), while LiteRT's reference kernels fill a table in `Prepare`
//!   from the float function (`LUTPopulate`: `1 / (1 + expf(−x))` and `tanhf(x)` in `f32`,
//!   `roundf`, plus the output zero point). The two disagree by 1 on some inputs; each table
//!   here repeats its runtime's computation, float rounding included (Rust's `f32::exp` and
//!   `f32::tanh` call the C library's `expf` and `tanhf`, the functions LiteRT calls).
//! - RELU6: TensorFlow Lite Micro clamps the input to `[zero point, q(6)]` in the input's own
//!   quantization and ignores the output's; LiteRT requantizes to the output. They agree only
//!   when both tensors share one quantization, which is what the writer produces.
//! - HARD_SWISH, LEAKY_RELU and RELU run the same reference code in both runtimes, but their
//!   `Prepare` divides the scales differently: LiteRT in `f32` (then widened to `f64`), the
//!   TensorFlow Lite Micro wheel the validators install (tflite-micro 0.dev20261023) in `f64`.
//!   The two multipliers differ in the last bits for some scale pairs, which moves outputs that
//!   sit on a rounding tie by 1 (measured: every one of 84 such RELU / LEAKY_RELU and 60 such
//!   HARD_SWISH output quantizations followed this rule in each runtime; the source of TFLM's
//!   August 2026 `activations_common.cc` still shows the `f32` division).

use crate::TfliteError;
use crate::fixed::{
    downscale_multiplier, frexp, logistic, mbqm, quantize_multiplier, rdbpot, rdbpot16, sat_shl16,
    sdhm16, srdhm16, tanh,
};
use crate::interp::prepare::Ctx;
use crate::interp::{Flavor, Step};
use crate::reader::Options;

/// An int8 → int8 function as a table indexed by the input's byte (`x as u8`).
pub(crate) type Table = Box<[i8; 256]>;

/// The outputs of one operator for every int8 input, as each runtime computes them.
pub(crate) struct Tables {
    /// TensorFlow Lite Micro.
    pub micro: Table,
    /// LiteRT's reference kernels (`BUILTIN_REF`).
    pub reference: Table,
}

/// `(scale, zero point)` of an int8 tensor.
type Q = (f32, i32);

fn table(f: impl Fn(i32) -> i32) -> Table {
    let mut t = Box::new([0i8; 256]);
    for x in -128..=127i32 {
        t[x as i8 as u8 as usize] = f(x).clamp(-128, 127) as i8;
    }
    t
}

/// The tables of operator `op` (its TFLite name) with input quantization `input`, output
/// quantization `output` and, for LEAKY_RELU, `alpha`. The error says why the runtimes would
/// refuse the operator or why it cannot be matched.
pub(crate) fn tables(op: &str, alpha: Option<f32>, input: Q, output: Q) -> Result<Tables, String> {
    match op {
        "LOGISTIC" => {
            if output != (1.0 / 256.0, -128) {
                return Err(format!(
                    "int8 LOGISTIC output must have scale 1/256 and zero point −128 (has {} / {})",
                    output.0, output.1
                ));
            }
            let micro = gemmlowp_table(input, |q4| rdbpot(logistic(q4, 4), 23) - 128)?;
            let reference = lut(input, output, |x| 1.0 / (1.0 + (-x).exp()));
            Ok(Tables { micro, reference })
        }
        "TANH" => {
            // TensorFlow Lite Micro does not read the output quantization: it writes 1/128, 0.
            if output != (1.0 / 128.0, 0) {
                return Err(format!(
                    "int8 TANH output must have scale 1/128 and zero point 0 (has {} / {})",
                    output.0, output.1
                ));
            }
            let micro = gemmlowp_table(input, |q4| rdbpot(tanh(q4, 4), 24))?;
            let reference = lut(input, output, f32::tanh);
            Ok(Tables { micro, reference })
        }
        "HARD_SWISH" => Ok(Tables {
            micro: hard_swish(input, output, MICRO_WIDE)?,
            reference: hard_swish(input, output, false)?,
        }),
        "LEAKY_RELU" => {
            let alpha = alpha.ok_or("LEAKY_RELU without its alpha option")?;
            if !(alpha.is_finite() && alpha >= 0.0) {
                return Err(format!(
                    "alpha {alpha}: only a finite alpha ≥ 0 is supported (LiteRT versions treat \
                     a negative one differently)"
                ));
            }
            Ok(Tables {
                micro: leaky_relu(input, output, alpha, MICRO_WIDE),
                reference: leaky_relu(input, output, alpha, false),
            })
        }
        "RELU" => Ok(Tables {
            micro: relu_x(input, output, None, MICRO_WIDE),
            reference: relu_x(input, output, None, false),
        }),
        "RELU6" => {
            // TensorFlow Lite Micro: clamp in the input's quantization (FloatToQuantizedType).
            let six = ((6.0f32 / input.0).round() as f64 + input.1 as f64).clamp(-128.0, 127.0);
            let micro = table(|x| x.clamp(input.1, six as i32));
            Ok(Tables {
                micro,
                reference: relu_x(input, output, Some(6.0), false),
            })
        }
        other => Err(format!("{other} is not an elementwise activation")),
    }
}

/// TFLite Micro's int8 LOGISTIC / TANH: the input rescaled to Q4.27 (`frexp` of
/// `scale · 2^27`, `CalculateInputRadius`), saturating outside the radius, else `f` of it.
fn gemmlowp_table(input: Q, f: impl Fn(i32) -> i32) -> Result<Table, String> {
    const INTEGER_BITS: i32 = 4;
    let (q, shift) = frexp(input.0 as f64 * (1u64 << (31 - INTEGER_BITS)) as f64);
    if !(0..=62).contains(&shift) {
        return Err(format!(
            "input scale {} is outside what the fixed-point kernel handles",
            input.0
        ));
    }
    let multiplier = (q * (1u64 << 31) as f64).round() as i64;
    let multiplier = i32::try_from(multiplier).map_err(|_| "input scale overflows".to_string())?;
    let radius = ((((1i64 << INTEGER_BITS) - 1) as f64 * (1i64 << (31 - INTEGER_BITS)) as f64)
        / (1i64 << shift) as f64)
        .floor() as i64;
    Ok(table(|x| {
        let v = (x - input.1) as i64;
        if v <= -radius {
            -128
        } else if v >= radius {
            127
        } else {
            f(mbqm(v as i32, multiplier, shift))
        }
    }))
}

/// LiteRT's `LUTPopulate<int8_t>`: every input dequantized in `f32`, `f` applied, rounded half
/// away from zero on the output scale, plus the output zero point, saturated.
fn lut(input: Q, output: Q, f: impl Fn(f32) -> f32) -> Table {
    let inverse_scale = 1.0 / output.0;
    table(|x| {
        let dequantized = input.0 * (x - input.1) as f32;
        let rescaled = (f(dequantized) * inverse_scale).round();
        (rescaled + output.1 as f32) as i32
    })
}

/// Whether TensorFlow Lite Micro divides the scales of RELU, LEAKY_RELU and HARD_SWISH in
/// `f64` (LiteRT divides them in `f32`, then widens).
const MICRO_WIDE: bool = true;

/// `a / b` (scales) in `f64` (`wide`) or in `f32` and then widened.
fn ratio(a: f32, b: f32, wide: bool) -> f64 {
    if wide {
        a as f64 / b as f64
    } else {
        (a / b) as f64
    }
}

/// LEAKY_RELU (`reference_ops::QuantizeLeakyRelu`): the identity multiplier above the input
/// zero point, `alpha` times it below.
fn leaky_relu(input: Q, output: Q, alpha: f32, wide: bool) -> Table {
    let alpha_scale = if wide {
        input.0 as f64 * alpha as f64
    } else {
        (input.0 * alpha) as f64
    };
    let (ma, sa) = quantize_multiplier(if wide {
        alpha_scale / output.0 as f64
    } else {
        (alpha_scale as f32 / output.0) as f64
    });
    let (mi, si) = quantize_multiplier(ratio(input.0, output.0, wide));
    table(|x| {
        let v = x - input.1;
        let scaled = if v >= 0 {
            mbqm(v, mi, si)
        } else {
            mbqm(v, ma, sa)
        };
        output.1.wrapping_add(scaled)
    })
}

/// RELU (`max = None`) and LiteRT's RELU6 (`Some(6.0)`): requantized to the output, clamped
/// to `[q(0), q(max)]` on the output scale (`QuantizedReluX`, `ReluQuantized`).
fn relu_x(input: Q, output: Q, max: Option<f32>, wide: bool) -> Table {
    let (m, s) = quantize_multiplier(ratio(input.0, output.0, wide));
    let lo = (output.1 + (0.0f32 / output.0).round() as i32).max(-128);
    let hi = max.map_or(127, |v| (output.1 + (v / output.0).round() as i32).min(127));
    table(|x| {
        output
            .1
            .wrapping_add(mbqm(x - input.1, m, s))
            .max(lo)
            .min(hi)
    })
}

/// HARD_SWISH (`reference_ops::HardSwish`, int16 fixed point), in both runtimes.
fn hard_swish(input: Q, output: Q, wide: bool) -> Result<Table, String> {
    // HardSwishPrepare: the scales in f32, each multiplier to Q31, then rounded to Q15.
    let hires_input_scale = (1.0f32 / 128.0) * input.0;
    let reluish_scale = 3.0f32 / 32768.0;
    let (m, output_exponent) = quantize_multiplier(ratio(hires_input_scale, output.0, wide));
    if output_exponent > 0 {
        return Err(format!(
            "input scale {} is too large for output scale {} (the runtimes require input scale \
             / 128 < output scale)",
            input.0, output.0
        ));
    }
    let output_multiplier = downscale_multiplier(m);
    let (m, reluish_exponent) = quantize_multiplier(ratio(hires_input_scale, reluish_scale, wide));
    let reluish_multiplier = downscale_multiplier(m);
    Ok(table(|x| {
        let value = (x - input.1) as i16;
        let hires = value.wrapping_mul(1 << 7);
        let preshift_output = srdhm16(hires, output_multiplier);
        let mut reluish = hires;
        if reluish_exponent > 0 {
            reluish = sat_shl16(reluish, reluish_exponent - 1);
        }
        reluish = srdhm16(reluish, reluish_multiplier);
        if reluish_exponent > 0 {
            reluish = sat_shl16(reluish, 1);
        }
        if reluish_exponent < 0 {
            reluish = rdbpot16(reluish, -reluish_exponent);
        }
        let reluish = ((reluish as i32 + (1 << 15)) >> 1) as i16;
        let preshift = sdhm16(reluish, preshift_output);
        let out = rdbpot16(preshift, -output_exponent).wrapping_add(output.1 as i16);
        out as i32
    }))
}

/// A prepared elementwise activation: the output for every int8 input, per runtime.
#[derive(Clone, Debug)]
pub(crate) struct Lookup {
    pub(crate) input: usize,
    pub(crate) output: usize,
    micro: Table,
    reference: Table,
}

impl Lookup {
    /// The output of `x` in `flavor`'s arithmetic.
    pub(crate) fn run(&self, x: &[i8], flavor: Flavor) -> Vec<i8> {
        let table = match flavor {
            Flavor::Micro => &self.micro,
            Flavor::LiteRtReference => &self.reference,
        };
        x.iter().map(|v| table[*v as u8 as usize]).collect()
    }
}

/// LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU or RELU6 of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    ctx.int8(it)?;
    ctx.int8(ot)?;
    if ctx.sizes[ii] != ctx.sizes[oi] {
        return Err(ctx.bad("input and output sizes differ"));
    }
    let alpha = match ctx.op.options {
        Options::LeakyRelu { alpha } => Some(alpha),
        _ => None,
    };
    let t = tables(ctx.name, alpha, ctx.per_tensor(it)?, ctx.per_tensor(ot)?)
        .map_err(|e| ctx.bad(e))?;
    Ok(Step::Lookup(Lookup {
        input: ii,
        output: oi,
        micro: t.micro,
        reference: t.reference,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    type RealFn = Box<dyn Fn(f64) -> f64>;

    fn at(t: &Table, x: i8) -> i8 {
        t[x as u8 as usize]
    }

    /// Each table is close to the real function (within 1 LSB of the rounded value, or
    /// saturated), and the two runtimes' tables differ by at most 1.
    #[test]
    fn tables_follow_the_real_functions() {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let hard_swish = |x: f64| x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
        for (in_scale, in_zp) in [(0.02f32, 0), (0.05, -20), (0.1, 30), (0.0039, -128)] {
            let cases: Vec<(&str, Q, RealFn)> = vec![
                ("LOGISTIC", (1.0 / 256.0, -128), Box::new(sigmoid)),
                ("TANH", (1.0 / 128.0, 0), Box::new(f64::tanh)),
                ("HARD_SWISH", (0.04, -100), Box::new(hard_swish)),
                (
                    "LEAKY_RELU",
                    (0.03, -10),
                    Box::new(|x| if x > 0.0 { x } else { 0.2 * x }),
                ),
                ("RELU", (0.03, -128), Box::new(|x: f64| x.max(0.0))),
                (
                    "RELU6",
                    (in_scale, in_zp),
                    Box::new(|x: f64| x.clamp(0.0, 6.0)),
                ),
            ];
            for (op, out, f) in cases {
                let t = tables(op, Some(0.2), (in_scale, in_zp), out).unwrap();
                for x in -128..=127i8 {
                    let real = f(in_scale as f64 * (x as i32 - in_zp) as f64);
                    let want = ((real / out.0 as f64).round() + out.1 as f64).clamp(-128.0, 127.0);
                    for (flavour, table) in [("micro", &t.micro), ("reference", &t.reference)] {
                        let got = at(table, x) as f64;
                        assert!(
                            (got - want).abs() <= 1.0,
                            "{op} {flavour} at {x} (scale {in_scale}, zp {in_zp}): {got} vs {want}"
                        );
                    }
                    assert!((at(&t.micro, x) as i32 - at(&t.reference, x) as i32).abs() <= 1);
                }
            }
        }
    }

    #[test]
    fn refusals_name_the_reason() {
        let e = tables("LOGISTIC", None, (0.1, 0), (0.1, -128))
            .err()
            .unwrap();
        assert!(e.contains("1/256"), "{e}");
        let e = tables("TANH", None, (0.1, 0), (1.0 / 256.0, -128))
            .err()
            .unwrap();
        assert!(e.contains("1/128"), "{e}");
        let e = tables("LEAKY_RELU", Some(-0.5), (0.1, 0), (0.1, 0))
            .err()
            .unwrap();
        assert!(e.contains("alpha"), "{e}");
        let e = tables("HARD_SWISH", None, (100.0, 0), (0.1, 0))
            .err()
            .unwrap();
        assert!(e.contains("too large"), "{e}");
    }
}
