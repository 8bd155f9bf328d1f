//! TRANSPOSE_CONV: TFLite's `Prepare` (the declared output shape, the padding derived as a
//! forward convolution's, per-channel multipliers as CONV_2D's); the loop is
//! [`crate::kernels::conv::transpose_conv`].

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::{Ctx, const_i32};
use crate::kernels::conv::ConvKernel;
use crate::reader::{Options, Padding};

/// TRANSPOSE_CONV of `ctx`. Inputs: output shape, weights `[out, kh, kw, in]`, input,
/// optional bias.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::TransposeConv {
        padding,
        stride,
        activation,
    } = &ctx.op.options
    else {
        return Err(ctx.unsupported());
    };
    let (_, st) = ctx.input(0)?;
    let (_, ft) = ctx.input(1)?;
    let (ii, it) = ctx.input(2)?;
    let (oi, ot) = ctx.out;
    let [in_shape, out_shape] = ctx.int8_nhwc(it, ot)?;
    let fshape = ctx.shape4(ft)?;
    let filter = ctx.const_i8(ft)?;
    let declared: Vec<usize> = match const_i32(st, 4) {
        Some(v) => v.into_iter().map(|d| d.max(0) as usize).collect(),
        None => {
            return Err(ctx.bad("the output shape must be a constant int32 [4] tensor"));
        }
    };
    let units = out_shape[3];
    if declared != out_shape
        || fshape[0] != units
        || fshape[3] != in_shape[3]
        || in_shape[0] != out_shape[0]
    {
        return Err(ctx.bad(format!(
            "filter {fshape:?}, input {in_shape:?}, output {out_shape:?} and \
             output shape {declared:?} do not fit"
        )));
    }
    let kernel = [fshape[1], fshape[2]];
    let pad = [
        transpose_conv_pad(*padding, out_shape[1], kernel[0], stride[0]),
        transpose_conv_pad(*padding, out_shape[2], kernel[1], stride[1]),
    ];
    let (in_scale, in_zp) = ctx.per_tensor(it)?;
    let (out_scale, out_zp) = ctx.per_tensor(ot)?;
    let scales = ctx.filter_scales(ft, units)?;
    Ok(Step::TransposeConv(Box::new(ConvKernel {
        input: ii,
        output: oi,
        in_shape,
        out_shape,
        filter: filter.iter().map(|b| *b as i8 as i32).collect(),
        kernel,
        stride: *stride,
        dilation: [1, 1],
        pad,
        bias: ctx.bias(3, units)?,
        input_offset: -in_zp,
        output_offset: out_zp,
        // PopulateConvolutionQuantizationParams, as for CONV_2D: in double.
        requant: super::conv::per_channel(in_scale, &scales, out_scale),
        act: ctx.activation(*activation, out_scale, out_zp)?,
        depthwise: false,
        multiplier: 1,
        fast: None,
    })))
}

/// TRANSPOSE_CONV's padding before the output (top or left) for an output of `out` values:
/// TFLite derives it as a forward convolution's from the output back to the input
/// (`ComputePaddingHeightWidth` with the output size as the input size, dilation 1).
pub fn transpose_conv_pad(padding: Padding, out: usize, kernel: usize, stride: usize) -> usize {
    let (out, kernel, stride) = (out as i64, kernel as i64, stride.max(1) as i64);
    let forward = match padding {
        Padding::Same => (out + stride - 1) / stride,
        // C++ integer division truncates toward zero, as Rust's does.
        Padding::Valid => (out + stride - kernel) / stride,
    };
    let total = (forward - 1) * stride + kernel - out;
    if total > 0 { (total / 2) as usize } else { 0 }
}
