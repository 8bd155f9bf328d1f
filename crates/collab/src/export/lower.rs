//! The plan written as an int8 `.tflite` file, step by step.

use collab_core::host::to_vec_f32;
use collab_quant::{LayerQuant, QuantParams};
use collab_tflite::{Int8Builder, TensorId};

use super::calibrate::Ranges;
use super::layers::{conv_layer, transpose_conv_layer};
use super::ops::{act_op, binary_tflite, broadcast_operands, concat_tflite, op_tflite};
use super::plan::{Plan, Step, tflite_activation};
use super::quant::{act_q, params_range, quantize_weight, range_q, shared_quant};
use super::{ExportOptions, int8_error};
use crate::CollabError;

/// Write the plan as int8 `.tflite` bytes. `ranges` (from [`Plan::calibrate`]) supply every
/// activation range QAT did not.
pub fn to_tflite(
    plan: &Plan,
    ranges: Option<&Ranges>,
    options: &ExportOptions,
) -> Result<Vec<u8>, CollabError> {
    let mut b = Int8Builder::new();
    let [c, h, w] = plan.input;
    let shape = [options.batch.max(1), h, w, c];
    // The input's range: the first layer's QAT input quantizer, else calibration.
    let first_input_quant = plan.steps.iter().find_map(|s| match s {
        Step::Conv { src: 0, quant, .. }
        | Step::Linear { src: 0, quant, .. }
        | Step::ConvTranspose { src: 0, quant, .. } => quant.as_ref().and_then(|q| q.input.clone()),
        _ => None,
    });
    let input_trained = first_input_quant
        .as_ref()
        .map(params_range)
        .or(plan.input_range);
    let shared = shared_quant(plan, ranges, input_trained)?;
    // The input feeds a concatenation: it is written with the class's quantization.
    let in_q = match shared[0] {
        Some(q) => q,
        None => match (&first_input_quant, plan.input_range) {
            (Some(p), _) => act_q(p),
            (None, Some((lo, hi))) => act_q(
                &QuantParams::asymmetric(lo, hi)
                    .map_err(|e| CollabError::quant("the model input", e))?,
            ),
            (None, None) => range_q(ranges, 0, "the model input")?,
        },
    };
    let shape: Vec<usize> = if plan.flat_input {
        vec![options.batch.max(1), c * h * w]
    } else {
        shape.to_vec()
    };
    let input = if options.float_io {
        b.float_input("input", &shape, in_q)
            .map_err(int8_error("input"))?
    } else {
        b.input("input", &shape, in_q)
            .map_err(int8_error("input"))?
    };
    // Raw-pixel inputs fix the input quantization exactly (q = pixel − 128 for 0..255), as the
    // reference files do; anything else is calibrated or trained.
    let mut ids: Vec<TensorId> = vec![input];
    // A value's output quantization: its class's where it shares one (a concatenation's), else
    // what QAT trained, else the calibrated range.
    let out_quant = |value: usize, trained: Option<&QuantParams>, what: String| match (
        shared[value],
        trained,
    ) {
        (Some(q), _) => Ok(q),
        (None, Some(q)) => Ok(act_q(q)),
        (None, None) => range_q(ranges, value, &what),
    };
    // A layer's: what QAT trained for its output, where it did.
    let layer_out = |value: usize, quant: &Option<LayerQuant>, name: &str| {
        out_quant(
            value,
            quant.as_ref().map(|q| &q.output),
            format!("layer `{name}`"),
        )
    };
    for (k, step) in plan.steps.iter().enumerate() {
        let value = k + 1;
        let id = match step {
            Step::Conv {
                name,
                src,
                layer,
                act,
                quant,
            } => {
                let out_q = layer_out(value, quant, name)?;
                let conv = conv_layer(name, layer, *act, quant.as_ref())?;
                b.conv2d(name, ids[*src], &conv, out_q)
                    .map_err(int8_error(name))?
            }
            Step::Linear {
                name,
                src,
                layer,
                act,
                quant,
            } => {
                let out_q = layer_out(value, quant, name)?;
                let [din, dout] = layer.weight.dims();
                let values = to_vec_f32(layer.weight.val().flatten::<1>(0, 1));
                // burn [in, out] → TFLite [out, in].
                let mut transposed = vec![0f32; values.len()];
                for i in 0..din {
                    for o in 0..dout {
                        transposed[o * din + i] = values[i * dout + o];
                    }
                }
                let per_channel = quant.as_ref().is_some_and(|q| q.weight.per_channel);
                if per_channel {
                    return Err(CollabError::export(
                        format!("layer `{name}`"),
                        "per-channel fully-connected weights are not exported; \
                         train the classifier with per-tensor weights (the default)",
                    ));
                }
                let (q, scales) = quantize_weight(
                    &transposed,
                    |i| i / din,
                    dout,
                    false,
                    quant.as_ref().map(|q| &q.weight),
                    true,
                );
                let bias = layer.bias.as_ref().map(|b| to_vec_f32(b.val()));
                b.fully_connected(
                    name,
                    ids[*src],
                    &q,
                    dout,
                    scales[0],
                    bias.as_deref(),
                    tflite_activation(*act),
                    out_q,
                )
                .map_err(int8_error(name))?
            }
            Step::Add {
                name,
                a,
                b: bb,
                act,
                quant,
            } => {
                let out_q = out_quant(value, quant.as_ref(), format!("the sum `{name}`"))?;
                let (x, y) = broadcast_operands(&mut b, name, ids[*a], ids[*bb])?;
                b.add(name, x, y, tflite_activation(*act), out_q)
                    .map_err(int8_error(name))?
            }
            Step::Op { name, op, inputs } => op_tflite(&mut b, name, op, inputs, &ids)?,
            Step::ConvTranspose {
                name,
                src,
                layer,
                stride,
                pads,
                output_padding,
                act,
                quant,
            } => {
                let out_q = layer_out(value, quant, name)?;
                let s = b.shape(ids[*src]).to_vec();
                let (conv, out_hw) = transpose_conv_layer(
                    name,
                    layer,
                    [s[1], s[2]],
                    *stride,
                    *pads,
                    *output_padding,
                    *act,
                    quant.as_ref(),
                )?;
                b.transpose_conv(name, ids[*src], &conv, out_hw, out_q)
                    .map_err(int8_error(name))?
            }
            Step::Concat { name, inputs, .. } => {
                concat_tflite(&mut b, name, inputs, &ids, shared[value])?
            }
            Step::Act {
                name,
                src,
                act,
                quant,
            } => {
                let op = act_op(name, *act)?;
                // LOGISTIC / TANH / RELU6: the output quantization TFLite requires.
                // In a concatenation's class, the class's quantization (the writer refuses
                // it where the operator's own is fixed and differs).
                let out_q = match (
                    b.quant(ids[*src]).and_then(|q| op.required_output(q)),
                    shared[value],
                    quant,
                ) {
                    (Some(_), _, _) => None,
                    (None, Some(q), _) => Some(q),
                    (None, None, Some(q)) => Some(act_q(q)),
                    (None, None, None) => {
                        Some(range_q(ranges, value, &format!("the activation `{name}`"))?)
                    }
                };
                b.activation(name, ids[*src], op, out_q)
                    .map_err(int8_error(name))?
            }
            Step::Binary {
                name,
                op,
                inputs,
                quant,
            } => {
                let out_q = out_quant(value, quant.as_ref(), format!("node `{name}`"))?;
                binary_tflite(&mut b, name, op, inputs, &ids, out_q)?
            }
        };
        ids.push(id);
    }
    let mut last = *ids
        .last()
        .ok_or_else(|| CollabError::export("the plan", "it has no steps"))?;
    if options.softmax && plan.softmax {
        last = b
            .softmax("probabilities", last)
            .map_err(int8_error("probabilities"))?;
    }
    if options.float_io {
        b.float_output("output", last)
            .map_err(int8_error("output"))?;
    } else {
        b.output(last);
    }
    b.finish()
        .map_err(|e| CollabError::tflite("int8 export", e))
}
