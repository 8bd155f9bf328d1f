//! Running an int8 file on float inputs: layout, input quantization, batches, accuracy.

use burn::tensor::Tensor;
use collab_core::host::to_vec_f32;

use crate::CollabError;
use crate::data::Batches;

/// `n` samples `[c, h, w]` (burn's layout) laid out as `[h, w, c]` (a `.tflite` input's).
pub fn nchw_to_nhwc(x: &[f32], n: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; n * c * h * w];
    for s in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((s * h + y) * w + xx) * c + ch] = x[((s * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    out
}

/// Float inputs as an int8 input with `scale` and `zero_point` (round half away from zero,
/// saturated), as a float model's QUANTIZE does.
pub fn quantize_input(x: &[f32], scale: f32, zero_point: i32) -> Vec<i8> {
    x.iter()
        .map(|v| ((v / scale).round().clamp(-1e9, 1e9) as i32 + zero_point).clamp(-128, 127) as i8)
        .collect()
}

/// Run an int8 interpreter on NCHW float inputs `[n, c, h, w]` (quantized with the model
/// input's scale and zero point, batch by batch of the graph's own batch size): the outputs
/// dequantized, `[n, classes]`.
pub fn run_int8(
    interp: &collab_tflite::Interpreter,
    x: &[f32],
    n: usize,
    [c, h, w]: [usize; 3],
) -> Result<Vec<f32>, CollabError> {
    use collab_tflite::{Data, TensorType};
    let err = |e| CollabError::tflite("the int8 interpreter", e);
    let port = interp.inputs()[0].clone();
    let out_port = interp.outputs()[0].clone();
    let batch = port.shape.first().copied().unwrap_or(1).max(1);
    if port.shape.iter().product::<usize>() != batch * c * h * w {
        return Err(CollabError::Usage(format!(
            "the model's input is {:?}; the data gives [{c}, {h}, {w}] per sample",
            port.shape
        )));
    }
    let per = c * h * w;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let take = batch.min(n - start);
        // NCHW → NHWC, padding a short last batch with zeros.
        let mut nhwc = nchw_to_nhwc(&x[start * per..(start + take) * per], take, [c, h, w]);
        nhwc.resize(batch * per, 0.0);
        let input = match port.dtype {
            TensorType::Float32 => Data::F32(nhwc),
            _ => Data::I8(quantize_input(&nhwc, port.scale, port.zero_point)),
        };
        let result = interp.run(&[input]).map_err(err)?;
        let classes = out_port.shape.last().copied().unwrap_or(1);
        let values: Vec<f32> = match &result[0] {
            Data::F32(v) => v.clone(),
            Data::I8(v) => v
                .iter()
                .map(|q| out_port.scale * (*q as i32 - out_port.zero_point) as f32)
                .collect(),
        };
        out.extend_from_slice(&values[..take * classes]);
        start += take;
    }
    Ok(out)
}

/// Top-1 accuracy of an int8 interpreter on all of `data` (inputs `[n, c, h, w]` quantized
/// with the model input's parameters by [`run_int8`]): the same report as for float models.
pub fn evaluate_int8(
    interp: &collab_tflite::Interpreter,
    input: [usize; 3],
    data: &dyn Batches,
) -> Result<crate::eval::EvalReport, CollabError> {
    let classes = interp.outputs()[0]
        .shape
        .last()
        .copied()
        .unwrap_or(1)
        .max(1);
    // `evaluate` takes an infallible forward pass; the first interpreter error is kept here.
    let failure = std::cell::RefCell::new(None);
    let report = crate::eval::evaluate(
        |x| {
            let [n, ..] = x.dims();
            let device = x.device();
            let values = to_vec_f32(x.flatten::<1>(0, 3));
            let out = run_int8(interp, &values, n, input).unwrap_or_else(|e| {
                *failure.borrow_mut() = Some(e);
                vec![0.0; n * classes]
            });
            Tensor::<2>::from_data(burn::tensor::TensorData::new(out, [n, classes]), &device)
        },
        data,
        256,
    )?;
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(report),
    }
}
