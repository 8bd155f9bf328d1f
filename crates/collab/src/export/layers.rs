//! Convolution weights as int8 TFLite layers: quantized per output channel (or as QAT
//! trained them) and laid out as TFLite wants them (OHWI, depthwise `[1, kh, kw, out]`, the
//! transposed convolution's filter flipped back).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use collab_core::host::to_vec_f32;
use collab_quant::LayerQuant;
use collab_tflite::{ConvLayer, ConvPadding, Padding};

use super::plan::tflite_activation;
use super::quant::quantize_weight;
use crate::CollabError;
use collab_models::graph::FusedActivation;

/// A transposed convolution's int8 TRANSPOSE_CONV layer and output `[h, w]`, from its
/// equivalent convolution `layer` (weight `[out, in, kh, kw]`, flipped) on an `[h, w]` input.
/// TFLite places the output by SAME or VALID padding alone, so other pads are refused.
#[allow(clippy::too_many_arguments)]
pub(super) fn transpose_conv_layer(
    name: &str,
    layer: &Conv2d,
    [h, w]: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    output_padding: [usize; 2],
    act: FusedActivation,
    quant: Option<&LayerQuant>,
) -> Result<(ConvLayer, [usize; 2]), CollabError> {
    let mut conv = conv_layer(name, layer, act, quant)?;
    let [out, kh, kw, inp] = conv.shape;
    // Flip back: TRANSPOSE_CONV's filter [o, fy, fx, i] is the convolution's [o, i, kh-1-fy, kw-1-fx].
    let mut flipped = vec![0i8; conv.weight.len()];
    for o in 0..out {
        for y in 0..kh {
            for x in 0..kw {
                let src = ((o * kh + kh - 1 - y) * kw + kw - 1 - x) * inp;
                let dst = ((o * kh + y) * kw + x) * inp;
                flipped[dst..dst + inp].copy_from_slice(&conv.weight[src..src + inp]);
            }
        }
    }
    conv.weight = flipped;
    let out_hw = [
        ((h - 1) * stride[0] + kh + output_padding[0]).saturating_sub(pads[0] + pads[2]),
        ((w - 1) * stride[1] + kw + output_padding[1]).saturating_sub(pads[1] + pads[3]),
    ];
    let fits = |p: Padding| {
        collab_tflite::interp::transpose_conv_pad(p, out_hw[0], kh, stride[0]) == pads[0]
            && collab_tflite::interp::transpose_conv_pad(p, out_hw[1], kw, stride[1]) == pads[1]
    };
    conv.padding = if fits(Padding::Same) {
        ConvPadding::Same
    } else if fits(Padding::Valid) {
        ConvPadding::Valid
    } else {
        return Err(CollabError::export(
            format!("layer `{name}`"),
            format!(
                "a transposed convolution cropping {pads:?} from a {h}×{w} input \
             (stride {stride:?}, kernel {kh}×{kw}) is neither TFLite's SAME nor VALID placement; \
             TRANSPOSE_CONV cannot write it. Use pads (k − s)/2 on each side (SAME) or none"
            ),
        ));
    };
    conv.stride = stride;
    conv.dilation = [1, 1];
    Ok((conv, out_hw))
}

pub(super) fn conv_layer(
    name: &str,
    layer: &Conv2d,
    act: FusedActivation,
    quant: Option<&LayerQuant>,
) -> Result<ConvLayer, CollabError> {
    let [out, in_per_group, kh, kw] = layer.weight.dims();
    let groups = layer.groups;
    let depthwise = groups > 1 && in_per_group == 1;
    if groups > 1 && !depthwise {
        return Err(CollabError::export(
            format!("layer `{name}`"),
            format!(
                "grouped convolutions ({groups} groups of {in_per_group}) have no \
             TFLite int8 operator; only ordinary and depthwise convolutions export"
            ),
        ));
    }
    let values = to_vec_f32(layer.weight.val().flatten::<1>(0, 3));
    let fan_in = in_per_group * kh * kw;
    let (q, scales) = quantize_weight(
        &values,
        |i| i / fan_in,
        out,
        quant.is_none_or(|q| q.weight.per_channel),
        quant.map(|q| &q.weight),
        false,
    );
    // burn [out, in/g, kh, kw] → OHWI, or [1, kh, kw, out] for depthwise.
    let mut weight = vec![0i8; q.len()];
    for o in 0..out {
        for i in 0..in_per_group {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((o * in_per_group + i) * kh + y) * kw + x;
                    let dst = if depthwise {
                        (y * kw + x) * out + o
                    } else {
                        ((o * kh + y) * kw + x) * in_per_group + i
                    };
                    weight[dst] = q[src];
                }
            }
        }
    }
    let padding = match &layer.padding {
        PaddingConfig2d::Same => ConvPadding::Same,
        PaddingConfig2d::Valid => ConvPadding::Valid,
        PaddingConfig2d::Explicit(t, l, b, r) => ConvPadding::Explicit([*t, *l, *b, *r]),
    };
    Ok(ConvLayer {
        weight,
        shape: if depthwise {
            [1, kh, kw, out]
        } else {
            [out, kh, kw, in_per_group]
        },
        scales,
        bias: layer.bias.as_ref().map(|b| to_vec_f32(b.val())),
        stride: layer.stride,
        dilation: layer.dilation,
        padding,
        activation: tflite_activation(act),
        depthwise,
    })
}
