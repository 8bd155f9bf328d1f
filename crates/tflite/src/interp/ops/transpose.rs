//! TRANSPOSE of a 4-D int8 tensor by a constant permutation.

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::{Ctx, const_i32};

/// A prepared TRANSPOSE: output axis `i` is input axis `perm[i]`.
#[derive(Clone, Debug)]
pub(crate) struct Transpose {
    pub(crate) input: usize,
    pub(crate) output: usize,
    in_shape: [usize; 4],
    perm: [usize; 4],
}

impl Transpose {
    /// The output of `x`.
    pub(crate) fn run(&self, x: &[i8]) -> Vec<i8> {
        transpose4(x, self.in_shape, self.perm)
    }
}

/// TRANSPOSE of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let (ii, it) = ctx.input(0)?;
    let (_, pt) = ctx.input(1)?;
    let (oi, ot) = ctx.out;
    ctx.int8(it)?;
    ctx.int8(ot)?;
    let in_shape = ctx.shape4(it)?;
    let perm: Vec<usize> = match const_i32(pt, 4) {
        Some(v) => v.into_iter().map(|p| p.max(0) as usize).collect(),
        None => return Err(ctx.bad("perm must be a constant int32 [4] tensor")),
    };
    let perm: [usize; 4] = [perm[0], perm[1], perm[2], perm[3]];
    let mut sorted = perm;
    sorted.sort_unstable();
    if sorted != [0, 1, 2, 3] {
        return Err(ctx.bad(format!("perm {perm:?} is not a permutation")));
    }
    if perm.map(|a| in_shape[a]) != ctx.shape4(ot)? {
        return Err(ctx.bad("the output shape does not follow from perm"));
    }
    ctx.same_quantization(it, ot)?;
    Ok(Step::Transpose(Transpose {
        input: ii,
        output: oi,
        in_shape,
        perm,
    }))
}

/// TRANSPOSE: `out[i0, i1, i2, i3] = x[j]` where input axis `perm[k]` takes index `i_k`.
fn transpose4(x: &[i8], in_shape: [usize; 4], perm: [usize; 4]) -> Vec<i8> {
    let out_shape = perm.map(|a| in_shape[a]);
    let mut in_strides = [1usize; 4];
    for d in (0..3).rev() {
        in_strides[d] = in_strides[d + 1] * in_shape[d + 1];
    }
    // The input stride of each output axis.
    let step = perm.map(|a| in_strides[a]);
    let mut out = Vec::with_capacity(x.len());
    for a in 0..out_shape[0] {
        for b in 0..out_shape[1] {
            for c in 0..out_shape[2] {
                let base = a * step[0] + b * step[1] + c * step[2];
                out.extend((0..out_shape[3]).map(|d| x[base + d * step[3]]));
            }
        }
    }
    out
}
