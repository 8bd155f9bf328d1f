//! AVERAGE_POOL_2D and MAX_POOL_2D: TFLite's `Prepare` (input and output quantized alike,
//! output size and padding); the loops are in [`crate::kernels::pool`].

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::{Ctx, out_and_pad};
use crate::kernels::pool::{PoolShape, avg_pool, max_pool};
use crate::reader::Options;

/// A prepared pooling operator over NHWC int8.
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    pub(crate) input: usize,
    pub(crate) output: usize,
    shape: PoolShape,
    /// MAX_POOL_2D: the window's largest value instead of its rounded mean.
    max: bool,
}

impl Pool {
    /// The output `out_shape` of input `x` (`in_shape`).
    pub(crate) fn run(&self, x: &[i8]) -> Vec<i8> {
        let f = if self.max { max_pool } else { avg_pool };
        f(x, &self.shape)
    }

    /// Additions (or comparisons) of one run.
    pub(crate) fn macs(&self) -> u64 {
        let s = &self.shape;
        (s.out_shape.iter().product::<usize>() * s.filter[0] * s.filter[1]) as u64
    }
}

/// AVERAGE_POOL_2D or MAX_POOL_2D of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::Pool {
        padding,
        stride,
        filter,
        activation,
    } = &ctx.op.options
    else {
        return Err(ctx.unsupported());
    };
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    let [in_shape, out_shape] = ctx.int8_nhwc(it, ot)?;
    let (in_q, out_q) = (ctx.per_tensor(it)?, ctx.per_tensor(ot)?);
    if in_q != out_q || in_shape[3] != out_shape[3] || in_shape[0] != out_shape[0] {
        return Err(ctx.bad("input and output must share quantization and channels"));
    }
    let mut pad = [0; 2];
    for d in 0..2 {
        let (o, p) = out_and_pad(*padding, in_shape[1 + d], filter[d], stride[d], 1)
            .ok_or_else(|| ctx.bad("the filter is larger than the input"))?;
        if o != out_shape[1 + d] {
            return Err(ctx.bad("output shape does not follow from the input"));
        }
        pad[d] = p;
    }
    Ok(Step::Pool(Pool {
        input: ii,
        output: oi,
        shape: PoolShape {
            in_shape,
            out_shape,
            filter: *filter,
            stride: *stride,
            pad,
            act: ctx.activation(*activation, out_q.0, out_q.1)?,
        },
        max: ctx.name == "MAX_POOL_2D",
    }))
}
