//! The parameter-free operators of a plan as int8 TFLite operators: pooling, reshapes,
//! transposes, element-wise operators, concatenation and lone activations.

use collab_models::graph::{Op, Pointwise};
use collab_quant::QuantParams;
use collab_tflite::{ActOp, ActQ, Activation, Int8Builder, Padding, TensorId};

use super::int8_error;
use super::plan::tflite_activation;
use super::quant::act_q;
use super::runtime::quantize_input;
use crate::CollabError;

/// The int8 TFLite operator of a lone activation (a negative LeakyReLU slope is refused: LiteRT
/// versions compute it differently).
pub(super) fn act_op(name: &str, act: Pointwise) -> Result<ActOp, CollabError> {
    Ok(match act {
        Pointwise::Sigmoid => ActOp::Logistic,
        Pointwise::Tanh => ActOp::Tanh,
        Pointwise::HardSwish => ActOp::HardSwish,
        Pointwise::Relu => ActOp::Relu,
        Pointwise::Relu6 => ActOp::Relu6,
        Pointwise::LeakyRelu { alpha } if alpha.is_finite() && alpha >= 0.0 => {
            ActOp::LeakyRelu { alpha }
        }
        Pointwise::LeakyRelu { alpha } => {
            return Err(CollabError::export(
                format!("node `{name}`"),
                format!(
                    "LeakyReLU with slope {alpha} has no int8 form that every runtime \
                 computes alike (LiteRT versions differ below zero); only slopes ≥ 0 export"
                ),
            ));
        }
    })
}

/// A parameter-free graph operator as int8 TFLite: pooling and flattening keep their input's
/// quantization (as the TFLite spec requires; concatenation is [`concat_tflite`]); operators
/// the int8 interpreter and the runtimes we check against do not share are refused with the
/// node's name.
pub(super) fn op_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
) -> Result<TensorId, CollabError> {
    let tfl = int8_error(name);
    let x = ids[inputs[0]];
    let s = b.shape(x).to_vec();
    let window_padding = |pads: [usize; 4], kernel: [usize; 2], stride: [usize; 2]| {
        if pads == [0; 4] {
            return Some(Padding::Valid);
        }
        // TFLite's SAME: total padding max((out − 1)·stride + k − in, 0), the extra at the end.
        let same = (0..2).all(|d| {
            let size = s[1 + d];
            let out = size.div_ceil(stride[d]);
            let total = ((out - 1) * stride[d] + kernel[d]).saturating_sub(size);
            pads[d] == total / 2 && pads[d + 2] == total - total / 2
        });
        same.then_some(Padding::Same)
    };
    match op {
        Op::GlobalAvgPool => b
            .avg_pool(name, x, [s[1], s[2]], [1, 1], Padding::Valid)
            .map_err(tfl),
        Op::AvgPool(p) | Op::MaxPool(p) => {
            let padding = window_padding(p.pads, p.kernel, p.stride).ok_or_else(|| {
                CollabError::export(
                    format!("node `{name}`"),
                    format!(
                        "{} with padding {:?} is neither VALID nor SAME and has no \
                     int8 TFLite form",
                        op.kind(),
                        p.pads
                    ),
                )
            })?;
            match op {
                Op::MaxPool(_) => b.max_pool(name, x, p.kernel, p.stride, padding),
                _ => b.avg_pool(name, x, p.kernel, p.stride, padding),
            }
            .map_err(tfl)
        }
        Op::Flatten { channels_last } => {
            if s.len() == 2 {
                return Ok(x);
            }
            let total = s[1] * s[2] * s[3];
            reshape_tflite(b, name, x, &[total], *channels_last)
        }
        Op::Reshape {
            shape,
            channels_last,
        } => reshape_tflite(b, name, x, shape, *channels_last),
        Op::Transpose { perm } => {
            // Map axis m of [c, h, w] is NHWC axis NHWC[m].
            const NHWC: [usize; 3] = [3, 1, 2];
            let mut p = [0usize; 4];
            for (i, &m) in perm.iter().enumerate() {
                p[NHWC[i]] = NHWC[m];
            }
            b.transpose(name, x, p).map_err(tfl)
        }
        other => Err(CollabError::export(
            format!("node `{name}`"),
            format!(
                "{} has no int8 TFLite form in this exporter (the int8 export \
             writes convolutions, transposed convolutions, fully-connected layers, ADD, SUB, \
             MUL, CONCATENATION, average and max pooling, reshapes, transposes, LOGISTIC, TANH, \
             HARD_SWISH, LEAKY_RELU, RELU, RELU6 and softmax); the model trains and evaluates \
             in float, but cannot be written as int8",
                other.kind()
            ),
        )),
    }
}

/// The two operands of an element-wise operator, a vector `[n, c]` beside a map
/// `[n, h, w, c]` reshaped to `[n, 1, 1, c]` (TFLite broadcasts right-aligned, so `[n, c]`
/// would meet `[w, c]`).
pub(super) fn broadcast_operands(
    b: &mut Int8Builder,
    name: &str,
    x: TensorId,
    y: TensorId,
) -> Result<(TensorId, TensorId), CollabError> {
    let tfl = int8_error(name);
    let (sx, sy) = (b.shape(x).to_vec(), b.shape(y).to_vec());
    let lift = |b: &mut Int8Builder, t: TensorId, s: &[usize], which: &str| match s {
        [n, c] => b
            .reshape(&format!("{name}/{which}_nhwc"), t, &[*n, 1, 1, *c])
            .map_err(tfl),
        _ => Ok(t),
    };
    match (sx.len(), sy.len()) {
        (2, 4) => Ok((lift(b, x, &sx, "a")?, y)),
        (4, 2) => Ok((x, lift(b, y, &sy, "b")?)),
        _ => Ok((x, y)),
    }
}

/// A product, difference, constant scale or constant shift as int8 MUL, SUB or ADD with
/// output quantization `out`. A constant is one int8 tensor `[c]` (or `[1]`), quantized
/// asymmetrically over its values and 0; TFLite broadcasts it over the last (channel) axis.
pub(super) fn binary_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
    out: ActQ,
) -> Result<TensorId, CollabError> {
    let tfl = int8_error(name);
    let x = ids[inputs[0]];
    match op {
        Op::Mul { act } | Op::Sub { act } => {
            let (x, y) = broadcast_operands(b, name, x, ids[inputs[1]])?;
            let act = tflite_activation(*act);
            match op {
                Op::Mul { .. } => b.mul(name, x, y, act, out),
                _ => b.sub(name, x, y, act, out),
            }
            .map_err(tfl)
        }
        Op::MulConst { values } | Op::AddConst { values } => {
            let (lo, hi) = values
                .iter()
                .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            // A constant of zeros still needs a valid scale.
            let q = act_q(
                &QuantParams::asymmetric(lo, if hi > lo { hi } else { lo + 1.0 })
                    .map_err(|e| CollabError::export(format!("node `{name}`"), format!("{e}")))?,
            );
            let values = quantize_input(values, q.scale, q.zero_point);
            let c = b
                .constant(&format!("{name}/constant"), &[values.len()], &values, q)
                .map_err(tfl)?;
            match op {
                Op::MulConst { .. } => b.mul(name, x, c, Activation::None, out),
                _ => b.add(name, x, c, Activation::None, out),
            }
            .map_err(tfl)
        }
        other => Err(CollabError::export(
            format!("node `{name}`"),
            format!("{} is not an element-wise operator", other.kind()),
        )),
    }
}

/// An int8 reshape of `x` (NHWC `[n, h, w, c]` or `[n, f]`) to `shape` (`[f]` or burn's
/// `[c, h, w]`) in the given element order. The file holds maps as NHWC, so a reshape defined
/// in `[c, h, w]` order is TRANSPOSE to NCHW, RESHAPE, TRANSPOSE back, each step skipped where
/// it moves nothing (a vector, or a map with one channel or one pixel). All keep `x`'s
/// quantization, as TFLite requires.
fn reshape_tflite(
    b: &mut Int8Builder,
    name: &str,
    x: TensorId,
    shape: &[usize],
    channels_last: bool,
) -> Result<TensorId, CollabError> {
    let tfl = int8_error(name);
    let s = b.shape(x).to_vec();
    let n = s[0];
    // Whether NHWC and NCHW order of a map [n, h, w, c] coincide.
    let same_order = |h: usize, w: usize, c: usize| c == 1 || h * w == 1;
    let mut x = x;
    if !channels_last && s.len() == 4 && !same_order(s[1], s[2], s[3]) {
        x = b
            .transpose(&format!("{name}/to_nchw"), x, [0, 3, 1, 2])
            .map_err(tfl)?;
    }
    match *shape {
        [c, h, w] if !channels_last && !same_order(h, w, c) => {
            let y = b
                .reshape(&format!("{name}/nchw"), x, &[n, c, h, w])
                .map_err(tfl)?;
            b.transpose(name, y, [0, 2, 3, 1]).map_err(tfl)
        }
        [c, h, w] => b.reshape(name, x, &[n, h, w, c]).map_err(tfl),
        _ => {
            let total: usize = shape.iter().product();
            b.reshape(name, x, &[n, total]).map_err(tfl)
        }
    }
}

/// A channel concatenation as int8 CONCATENATION along the last axis (channels, NHWC), with
/// its class's quantization `q` ([`shared_quant`]), which every input already has.
pub(super) fn concat_tflite(
    b: &mut Int8Builder,
    name: &str,
    inputs: &[usize],
    ids: &[TensorId],
    q: Option<ActQ>,
) -> Result<TensorId, CollabError> {
    let q = q.ok_or_else(|| {
        CollabError::export(
            format!("node `{name}`"),
            "the concatenation has no quantization range; give calibration data",
        )
    })?;
    let parts: Vec<TensorId> = inputs.iter().map(|&i| ids[i]).collect();
    let axis = b.shape(parts[0]).len().saturating_sub(1);
    b.concatenation(name, &parts, axis, q)
        .map_err(int8_error(name))
}
