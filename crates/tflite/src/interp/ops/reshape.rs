//! RESHAPE: a copy (NHWC data keeps its order); input and output share type, size and
//! quantization.

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::Ctx;
use crate::reader::TensorType;

/// A prepared RESHAPE.
#[derive(Clone, Debug)]
pub(crate) struct Reshape {
    pub(crate) input: usize,
    pub(crate) output: usize,
}

impl Reshape {
    /// Copy the input tensor (float when `float`, else int8) to the output.
    pub(crate) fn run(&self, float: bool, i8s: &mut [Vec<i8>], f32s: &mut [Vec<f32>]) {
        if float {
            f32s[self.output] = f32s[self.input].clone();
        } else {
            i8s[self.output] = i8s[self.input].clone();
        }
    }
}

/// RESHAPE of `ctx` (int8 or float).
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (oi, ot) = ctx.out;
    if it.dtype != ot.dtype || it.data.is_some() || ctx.sizes[ii] != ctx.sizes[oi] {
        return Err(ctx.bad("input and output must have the same type and size"));
    }
    if it.dtype == TensorType::Int8 {
        ctx.same_quantization(it, ot)?;
    }
    Ok(Step::Reshape(Reshape {
        input: ii,
        output: oi,
    }))
}
