//! PAD of a 4-D int8 tensor with its zero point (constant paddings `[4, 2]`, int32 or int64).

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::Ctx;
use crate::reader::TensorType;

/// A prepared PAD.
#[derive(Clone, Debug)]
pub(crate) struct Pad {
    pub(crate) input: usize,
    pub(crate) output: usize,
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    /// Padding before, per axis.
    before: [usize; 4],
    /// The padding value (the zero point).
    value: i8,
}

impl Pad {
    /// The output of `x`: `x` placed at `before` in a tensor filled with `value`.
    pub(crate) fn run(&self, x: &[i8]) -> Vec<i8> {
        let (out_shape, before) = (self.out_shape, self.before);
        let mut out = vec![self.value; out_shape.iter().product()];
        let [n, h, w, c] = self.in_shape;
        for b in 0..n {
            for y in 0..h {
                for xx in 0..w {
                    let src = ((b * h + y) * w + xx) * c;
                    let dst = (((b + before[0]) * out_shape[1] + y + before[1]) * out_shape[2]
                        + xx
                        + before[2])
                        * out_shape[3]
                        + before[3];
                    out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                }
            }
        }
        out
    }
}

/// PAD of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (_, pt) = ctx.input(1)?;
    let (oi, ot) = ctx.out;
    let [in_shape, out_shape] = ctx.int8_nhwc(it, ot)?;
    let pads: Vec<i64> = match (pt.dtype, pt.data.as_deref()) {
        (TensorType::Int32, Some(d)) if d.len() == 32 => d
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
            .collect(),
        (TensorType::Int64, Some(d)) if d.len() == 64 => d
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect(),
        _ => return Err(ctx.bad("paddings must be a constant [4, 2] tensor")),
    };
    let mut before = [0; 4];
    for d in 0..4 {
        let (b, a) = (pads[2 * d], pads[2 * d + 1]);
        if b < 0 || a < 0 || in_shape[d] as i64 + b + a != out_shape[d] as i64 {
            return Err(ctx.bad("paddings do not fit the shapes"));
        }
        before[d] = b as usize;
    }
    ctx.same_quantization(it, ot)?;
    Ok(Step::Pad(Pad {
        input: ii,
        output: oi,
        in_shape,
        out_shape,
        before,
        value: ctx.per_tensor(ot)?.1 as i8,
    }))
}
