//! An int8 file checked in the runtimes (LiteRT's reference kernels, TensorFlow Lite Micro,
//! XNNPACK) against our interpreter.

use std::path::Path;

use burn::tensor::Tensor;
use collab_core::host::to_vec_f32;
use serde::Serialize;

use super::calibrate::Ranges;
use super::plan::Plan;
use super::runtime::{nchw_to_nhwc, quantize_input};
use super::{ExportOptions, to_tflite};
use crate::CollabError;

/// What the runtimes say of an int8 file: on the same int8 inputs, the largest difference (in
/// output LSB) between our interpreter and LiteRT's reference kernels, and TensorFlow Lite
/// Micro (both must be 0), and XNNPACK (a few LSB: it rounds differently).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Verification {
    /// Inputs compared (validation samples).
    pub inputs: usize,
    /// Runtime → largest |ours − runtime| in LSB.
    pub max_lsb: std::collections::BTreeMap<String, f64>,
}

impl Verification {
    /// Whether the reference runtimes agree with ours bit for bit.
    pub fn exact(&self) -> bool {
        ["litert_ref", "tflm"]
            .iter()
            .all(|k| self.max_lsb.get(*k) == Some(&0.0))
    }
}

/// Check `plan` as an int8 file in the runtimes (`tools`: the Python validators of
/// `../shared/tools`): a twin of the deployed file with the batch of `x` (`[n, c, h, w]`, the
/// deployed one has batch 1, otherwise identical), run on `x` quantized as the file says, by
/// our interpreter in both arithmetic flavours and by each runtime. Scratch files go to `dir`
/// and are removed.
pub fn verify(
    tools: &collab_tflite::tools::Validators,
    plan: &Plan,
    ranges: Option<&Ranges>,
    x: Tensor<4>,
    dir: &Path,
) -> Result<Verification, CollabError> {
    use collab_tflite::{Data, Flavor, Graph, Interpreter, npy};
    let tfl = |e| CollabError::tflite("verification", e);
    let [n, c, h, w] = x.dims();
    let options = ExportOptions {
        batch: n,
        ..ExportOptions::default()
    };
    let bytes = to_tflite(plan, ranges, &options)?;
    std::fs::create_dir_all(dir).map_err(|e| CollabError::checkpoint(dir, e))?;
    let path = dir.join("verify.tflite");
    std::fs::write(&path, &bytes).map_err(|e| CollabError::checkpoint(&path, e))?;
    let graph = Graph::from_bytes(&bytes).map_err(tfl)?;
    let micro = Interpreter::new(&graph).map_err(tfl)?;
    let reference = Interpreter::with_flavor(&graph, Flavor::LiteRtReference).map_err(tfl)?;
    let port = micro.inputs()[0].clone();
    let out = micro.outputs()[0].clone();
    let values = to_vec_f32(x.flatten::<1>(0, 3));
    let input = quantize_input(
        &nchw_to_nhwc(&values, n, [c, h, w]),
        port.scale,
        port.zero_point,
    );
    let files = [
        dir.join("in.npy"),
        dir.join("micro.npy"),
        dir.join("reference.npy"),
    ];
    npy::write(&files[0], &port.shape, &Data::I8(input.clone())).map_err(tfl)?;
    let ours = micro.run_i8(&input).map_err(tfl)?;
    npy::write(&files[1], &out.shape, &Data::I8(ours)).map_err(tfl)?;
    let ours_ref = reference.run_i8(&input).map_err(tfl)?;
    npy::write(&files[2], &out.shape, &Data::I8(ours_ref)).map_err(tfl)?;
    let result = tools
        .max_diffs(&path, &files[0], &files[1], &["tflm", "litert_xnnpack"])
        .and_then(|mut m| {
            m.extend(tools.max_diffs(&path, &files[0], &files[2], &["litert_ref"])?);
            Ok(m)
        });
    let _ = std::fs::remove_dir_all(dir);
    Ok(Verification {
        inputs: n,
        max_lsb: result.map_err(tfl)?,
    })
}
