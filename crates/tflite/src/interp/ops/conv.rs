//! CONV_2D and DEPTHWISE_CONV_2D: TFLite's `Prepare` (shapes, output size and padding,
//! per-channel multipliers computed in `f64` as `PopulateConvolutionQuantizationParams`); the
//! loops are in [`crate::kernels::conv`].

use crate::TfliteError;
use crate::fixed::quantize_multiplier;
use crate::interp::prepare::{Ctx, out_and_pad};
use crate::interp::{Kernels, Step};
use crate::kernels::conv::{ConvKernel, Requant, build_fast};
use crate::reader::Options;

/// CONV_2D or DEPTHWISE_CONV_2D of `ctx`, with the SIMD form of [`Kernels::Best`].
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::Conv {
        padding,
        stride,
        dilation,
        activation,
        depth_multiplier,
    } = &ctx.op.options
    else {
        return Err(ctx.unsupported());
    };
    let depthwise = ctx.name == "DEPTHWISE_CONV_2D";
    let (ii, it) = ctx.input(0)?;
    let (_, ft) = ctx.input(1)?;
    let (oi, ot) = ctx.out;
    let [in_shape, out_shape] = ctx.int8_nhwc(it, ot)?;
    let fshape = ctx.shape4(ft)?;
    let filter = ctx.const_i8(ft)?;
    let units = out_shape[3];
    let (kernel, multiplier) = if depthwise {
        if fshape[0] != 1 || fshape[3] != units || in_shape[3] == 0 {
            return Err(ctx.bad(format!("filter shape {fshape:?} does not fit")));
        }
        let m = units / in_shape[3];
        if m * in_shape[3] != units || (*depth_multiplier != 0 && *depth_multiplier != m) {
            return Err(ctx.bad("output channels ≠ input channels × multiplier"));
        }
        ([fshape[1], fshape[2]], m)
    } else {
        if fshape[0] != units || fshape[3] != in_shape[3] {
            return Err(ctx.bad(format!(
                "filter {fshape:?} does not fit input {in_shape:?} → {out_shape:?}"
            )));
        }
        ([fshape[1], fshape[2]], 1)
    };
    let (in_scale, in_zp) = ctx.per_tensor(it)?;
    let (out_scale, out_zp) = ctx.per_tensor(ot)?;
    let mut pad = [0; 2];
    for d in 0..2 {
        let (o, p) = out_and_pad(*padding, in_shape[1 + d], kernel[d], stride[d], dilation[d])
            .filter(|_| kernel[d] > 0)
            .ok_or_else(|| ctx.bad("the filter is larger than the input"))?;
        if o != out_shape[1 + d] {
            return Err(ctx.bad(format!(
                "output shape {out_shape:?} does not follow from the input {in_shape:?}"
            )));
        }
        pad[d] = p;
    }
    if in_shape[0] != out_shape[0] {
        return Err(ctx.bad("batch sizes differ"));
    }
    let scales = ctx.filter_scales(ft, units)?;
    let requant = per_channel(in_scale, &scales, out_scale);
    let filter: Vec<i32> = if depthwise {
        filter.iter().map(|b| *b as i8 as i32).collect()
    } else {
        // OHWI → HWIO.
        let [kh, kw] = kernel;
        let ic = in_shape[3];
        let mut t = vec![0i32; filter.len()];
        for o in 0..units {
            for y in 0..kh {
                for x in 0..kw {
                    for i in 0..ic {
                        t[((y * kw + x) * ic + i) * units + o] =
                            filter[((o * kh + y) * kw + x) * ic + i] as i8 as i32;
                    }
                }
            }
        }
        t
    };
    let bias = ctx.bias(2, units)?;
    let act = ctx.activation(*activation, out_scale, out_zp)?;
    let mut k = Box::new(ConvKernel {
        input: ii,
        output: oi,
        in_shape,
        out_shape,
        filter,
        kernel,
        stride: *stride,
        dilation: *dilation,
        pad,
        bias,
        input_offset: -in_zp,
        output_offset: out_zp,
        requant,
        act,
        depthwise,
        multiplier,
        fast: None,
    });
    k.fast = build_fast(&k, Kernels::Best);
    Ok(Step::Conv(k))
}

/// `PopulateConvolutionQuantizationParams`: per output channel, `(multiplier, shift)` of
/// `in_scale · filter_scale / out_scale`, in double.
pub(crate) fn per_channel(in_scale: f32, scales: &[f32], out_scale: f32) -> Requant {
    let (multiplier, shift) = scales
        .iter()
        .map(|s| quantize_multiplier(in_scale as f64 * *s as f64 / out_scale as f64))
        .unzip();
    Requant { multiplier, shift }
}
