//! Writing full-integer int8 `.tflite` files.
//!
//! [`Int8Builder`] assembles a graph operator by operator in TFLite's conventions
//! (`../shared/docs/TFLITE.md`): int8 activations with per-tensor scale and zero point, int8
//! symmetric weights (per channel for convolutions), int32 biases with scale
//! `input_scale × weight_scale`, fused ReLU / ReLU6, NHWC layout, the operator versions every
//! runtime (LiteRT, TFLite Micro, Vela) loads. The caller decides the quantization (weights
//! already int8 with their scales, activation scale and zero point per tensor); the builder only
//! checks shapes and writes. Burn models reach it through `collab::export`.

use std::path::Path;

use crate::TfliteError;
use crate::interp::out_and_pad;
use crate::reader::{Activation, Padding};
use crate::tflite::{
    self, ActivationFunctionType, AddOptionsT, BufferT, BuiltinOperator, BuiltinOptionsT,
    ConcatenationOptionsT, Conv2DOptionsT, DepthwiseConv2DOptionsT, FullyConnectedOptionsT,
    LeakyReluOptionsT, MetadataT, ModelT, MulOptionsT, OperatorCodeT, OperatorT, PadOptionsT,
    Pool2DOptionsT, QuantizationParametersT, ReshapeOptionsT, SoftmaxOptionsT, SubGraphT,
    SubOptionsT, TensorT, TransposeConvOptionsT, TransposeOptionsT,
};

/// Check, before any work, that [`write_atomic`] may write `path`: it has a file name, it is
/// not an existing folder, device, fifo or socket, and its folder exists. Returns that folder.
pub fn check_target(path: &Path) -> Result<&Path, TfliteError> {
    let fail = |reason: String| TfliteError::Io {
        path: path.display().to_string(),
        reason,
    };
    if path.file_name().is_none() {
        return Err(fail(
            "the path has no file name; give a file path such as `out/model.tflite`".into(),
        ));
    }
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            let what = if meta.is_dir() {
                "a folder"
            } else {
                "not a regular file (a device, a fifo or a socket)"
            };
            return Err(fail(format!(
                "exists and is {what}: burn-collab only replaces regular files it can rewrite; \
                 choose another path"
            )));
        }
        _ => {}
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(fail(format!(
            "its folder `{}` does not exist (or is not a folder); create it first",
            parent.display()
        )));
    }
    Ok(parent)
}

/// Write `bytes` to `path` through a temporary sibling file (`.NAME.tmpPID`), flushed to disk
/// and then renamed over `path`, so an existing file is never left half-written.
///
/// Refuses (an error naming the path and the reason) when `path` exists and is not a regular
/// file (a folder, a device such as `/dev/full`, a fifo, a socket; a symbolic link is judged by
/// what it points to): renaming over it would replace something that is not ours. On every
/// failure (a full disk, a quota, a missing folder) the temporary file is removed and `path` is
/// left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TfliteError> {
    use std::io::Write;
    let parent = check_target(path)?;
    let fail = |reason: String| TfliteError::Io {
        path: path.display().to_string(),
        reason,
    };
    let name = path.file_name().unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of an earlier attempt by a process with this id: ours to replace.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!(
            "cannot write it: {e}; the previous file (if any) is unchanged"
        )));
    }
    // Make the rename itself durable (best effort: the file is in place either way).
    if let Ok(dir) = std::fs::File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Quantization of an activation tensor: `real = scale · (q − zero_point)`, q in [−128, 127].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActQ {
    /// Scale (> 0).
    pub scale: f32,
    /// Zero point in [−128, 127].
    pub zero_point: i32,
}

/// A tensor of the graph being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorId(usize);

/// Padding of a convolution as the model defines it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPadding {
    /// TF SAME (extra row/column at the end).
    Same,
    /// None.
    Valid,
    /// Explicit `[top, left, bottom, right]`: written as SAME or VALID when it equals one of
    /// them for these shapes, else as a PAD operator followed by a VALID convolution.
    Explicit([usize; 4]),
}

/// An int8 convolution layer (CONV_2D, or DEPTHWISE_CONV_2D when `depthwise`).
#[derive(Clone, Debug)]
pub struct ConvLayer {
    /// int8 weights: `[out, kh, kw, in]` (OHWI) for CONV_2D; `[1, kh, kw, out]` for depthwise.
    pub weight: Vec<i8>,
    /// Shape of `weight`, as above.
    pub shape: [usize; 4],
    /// One scale per output channel (or one for all).
    pub scales: Vec<f32>,
    /// Float bias `[out]` (quantized here with `input_scale × weight_scale`), or none.
    pub bias: Option<Vec<f32>>,
    /// `[h, w]`.
    pub stride: [usize; 2],
    /// `[h, w]`.
    pub dilation: [usize; 2],
    /// Padding.
    pub padding: ConvPadding,
    /// Fused activation (None, Relu or Relu6).
    pub activation: Activation,
    /// Depthwise (groups = input channels).
    pub depthwise: bool,
}

/// An elementwise int8 activation operator (not fused into a layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ActOp {
    /// LOGISTIC (sigmoid); output quantization fixed at scale 1/256, zero point −128.
    Logistic,
    /// TANH; output quantization fixed at scale 1/128, zero point 0.
    Tanh,
    /// HARD_SWISH, `x · relu6(x + 3) / 6`; output quantization of its own.
    HardSwish,
    /// LEAKY_RELU with slope `alpha` (≥ 0) below zero; output quantization of its own.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
    /// RELU; output quantization of its own.
    Relu,
    /// RELU6; output quantization = input quantization (TensorFlow Lite Micro's RELU6 clamps in
    /// the input's quantization and does not requantize).
    Relu6,
}

impl ActOp {
    /// The output quantization TFLite requires of this operator given its input's, if it does
    /// not take one of its own: LOGISTIC and TANH have fixed ones (TFLite's int8 spec; LiteRT's
    /// `SigmoidPrepare` checks it, TensorFlow Lite Micro assumes it), RELU6 keeps its input's.
    pub fn required_output(self, input: ActQ) -> Option<ActQ> {
        match self {
            ActOp::Logistic => Some(ActQ {
                scale: 1.0 / 256.0,
                zero_point: -128,
            }),
            ActOp::Tanh => Some(ActQ {
                scale: 1.0 / 128.0,
                zero_point: 0,
            }),
            ActOp::Relu6 => Some(input),
            _ => None,
        }
    }

    fn code(self) -> (BuiltinOperator, i32) {
        match self {
            ActOp::Logistic => (BuiltinOperator::LOGISTIC, 2),
            ActOp::Tanh => (BuiltinOperator::TANH, 2),
            ActOp::HardSwish => (BuiltinOperator::HARD_SWISH, 1),
            ActOp::LeakyRelu { .. } => (BuiltinOperator::LEAKY_RELU, 2),
            ActOp::Relu => (BuiltinOperator::RELU, 2),
            ActOp::Relu6 => (BuiltinOperator::RELU6, 2),
        }
    }
}

/// Builds an int8 `.tflite` graph; see the module documentation.
#[derive(Debug, Default)]
pub struct Int8Builder {
    tensors: Vec<TensorT>,
    shapes: Vec<Vec<usize>>,
    quant: Vec<Option<ActQ>>,
    buffers: Vec<BufferT>,
    operators: Vec<OperatorT>,
    codes: Vec<(BuiltinOperator, i32)>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
}

fn err(what: impl Into<String>) -> TfliteError {
    TfliteError::Unsupported(what.into())
}

fn activation(a: Activation) -> Result<ActivationFunctionType, TfliteError> {
    Ok(match a {
        Activation::None => ActivationFunctionType::NONE,
        Activation::Relu => ActivationFunctionType::RELU,
        Activation::Relu6 => ActivationFunctionType::RELU6,
        Activation::ReluN1To1 => ActivationFunctionType::RELU_N1_TO_1,
        Activation::Other(a) => {
            return Err(err(format!("fused activation {a} cannot be exported")));
        }
    })
}

fn tfl_padding(p: Padding) -> tflite::Padding {
    match p {
        Padding::Same => tflite::Padding::SAME,
        Padding::Valid => tflite::Padding::VALID,
    }
}

fn check_q(q: ActQ, what: &str) -> Result<(), TfliteError> {
    if !(q.scale.is_finite() && q.scale > 0.0 && (-128..=127).contains(&q.zero_point)) {
        return Err(err(format!(
            "{what}: scale {} / zero point {} is not a valid int8 quantization",
            q.scale, q.zero_point
        )));
    }
    Ok(())
}

impl Int8Builder {
    /// An empty graph (buffer 0 is the empty sentinel TFLite requires).
    pub fn new() -> Self {
        Self {
            buffers: vec![BufferT::default()],
            ..Self::default()
        }
    }

    /// Shape of a tensor.
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.shapes[t.0]
    }

    /// Quantization of an activation tensor.
    pub fn quant(&self, t: TensorId) -> Option<ActQ> {
        self.quant[t.0]
    }

    fn code(&mut self, op: BuiltinOperator, version: i32) -> u32 {
        if let Some(i) = self.codes.iter().position(|c| *c == (op, version)) {
            return i as u32;
        }
        self.codes.push((op, version));
        (self.codes.len() - 1) as u32
    }

    fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        type_: tflite::TensorType,
        quant: Option<QuantizationParametersT>,
        data: Option<Vec<u8>>,
    ) -> TensorId {
        let buffer = match data {
            Some(d) => {
                self.buffers.push(BufferT {
                    data: Some(d),
                    ..BufferT::default()
                });
                (self.buffers.len() - 1) as u32
            }
            None => 0,
        };
        self.tensors.push(TensorT {
            shape: Some(shape.iter().map(|d| *d as i32).collect()),
            type_,
            buffer,
            name: Some(name.to_string()),
            quantization: quant.map(Box::new),
            ..TensorT::default()
        });
        self.shapes.push(shape.to_vec());
        self.quant.push(None);
        TensorId(self.tensors.len() - 1)
    }

    fn activation_tensor(&mut self, name: &str, shape: &[usize], q: ActQ) -> TensorId {
        let t = self.tensor(
            name,
            shape,
            tflite::TensorType::INT8,
            Some(QuantizationParametersT {
                scale: Some(vec![q.scale]),
                zero_point: Some(vec![q.zero_point as i64]),
                ..QuantizationParametersT::default()
            }),
            None,
        );
        self.quant[t.0] = Some(q);
        t
    }

    fn op(
        &mut self,
        op: BuiltinOperator,
        version: i32,
        inputs: Vec<i32>,
        outputs: Vec<i32>,
        options: BuiltinOptionsT,
    ) {
        let opcode_index = self.code(op, version);
        self.operators.push(OperatorT {
            opcode_index,
            inputs: Some(inputs),
            outputs: Some(outputs),
            builtin_options: options,
            ..OperatorT::default()
        });
    }

    fn act_q(&self, t: TensorId) -> Result<ActQ, TfliteError> {
        self.quant[t.0].ok_or_else(|| err("the operator's input is not an int8 activation"))
    }

    /// An int8 graph input of `shape` (NHWC for images, `[n, features]` for vectors).
    pub fn input(&mut self, name: &str, shape: &[usize], q: ActQ) -> Result<TensorId, TfliteError> {
        check_q(q, name)?;
        let t = self.activation_tensor(name, shape, q);
        self.inputs.push(t.0 as i32);
        Ok(t)
    }

    /// A float32 graph input followed by QUANTIZE to int8 with `q`.
    pub fn float_input(
        &mut self,
        name: &str,
        shape: &[usize],
        q: ActQ,
    ) -> Result<TensorId, TfliteError> {
        check_q(q, name)?;
        let f = self.tensor(name, shape, tflite::TensorType::FLOAT32, None, None);
        self.inputs.push(f.0 as i32);
        let t = self.activation_tensor(&format!("{name}_int8"), shape, q);
        self.op(
            BuiltinOperator::QUANTIZE,
            1,
            vec![f.0 as i32],
            vec![t.0 as i32],
            BuiltinOptionsT::NONE,
        );
        Ok(t)
    }

    /// Mark `t` as an int8 graph output.
    pub fn output(&mut self, t: TensorId) {
        self.outputs.push(t.0 as i32);
    }

    /// DEQUANTIZE `t` to float32 and mark that as a graph output.
    pub fn float_output(&mut self, name: &str, t: TensorId) -> Result<(), TfliteError> {
        self.act_q(t)?;
        let shape = self.shapes[t.0].clone();
        let f = self.tensor(name, &shape, tflite::TensorType::FLOAT32, None, None);
        self.op(
            BuiltinOperator::DEQUANTIZE,
            2,
            vec![t.0 as i32],
            vec![f.0 as i32],
            BuiltinOptionsT::NONE,
        );
        self.outputs.push(f.0 as i32);
        Ok(())
    }

    fn int32_bias(
        &mut self,
        name: &str,
        bias: Option<&[f32]>,
        in_scale: f32,
        scales: &[f32],
        units: usize,
    ) -> TensorId {
        let bias_scales: Vec<f32> = (0..units)
            .map(|c| in_scale * scales[if scales.len() == 1 { 0 } else { c }])
            .collect();
        let values: Vec<i32> = (0..units)
            .map(|c| {
                let b = bias.map_or(0.0, |b| b[c]);
                let s = bias_scales[c];
                if s > 0.0 {
                    ((b as f64 / s as f64).round()).clamp(i32::MIN as f64, i32::MAX as f64) as i32
                } else {
                    0
                }
            })
            .collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        // Per-tensor weights get a per-tensor bias scale: LiteRT's FULLY_CONNECTED reads the
        // legacy single scale of the bias (zero when there are several) and refuses the layer
        // when input × weight scale is more than 2% of the output scale away from it.
        let bias_scales = if scales.len() == 1 {
            bias_scales[..1].to_vec()
        } else {
            bias_scales
        };
        self.tensor(
            name,
            &[units],
            tflite::TensorType::INT32,
            Some(QuantizationParametersT {
                zero_point: Some(vec![0; bias_scales.len()]),
                scale: Some(bias_scales),
                quantized_dimension: 0,
                ..QuantizationParametersT::default()
            }),
            Some(bytes),
        )
    }

    /// A convolution (CONV_2D v3 or DEPTHWISE_CONV_2D v3) with output quantization `out`.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: TensorId,
        layer: &ConvLayer,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        check_q(out, name)?;
        let in_q = self.act_q(x)?;
        let fail = |why: String| err(format!("layer `{name}`: {why}"));
        let [n, h, w, c] = <[usize; 4]>::try_from(self.shapes[x.0].as_slice())
            .map_err(|_| fail(format!("input must be NHWC, is {:?}", self.shapes[x.0])))?;
        let s = layer.shape;
        let (units, kernel) = if layer.depthwise {
            if s[0] != 1 || !s[3].is_multiple_of(c.max(1)) {
                return Err(fail(format!(
                    "depthwise weights {s:?} do not fit {c} input channels"
                )));
            }
            (s[3], [s[1], s[2]])
        } else {
            if s[3] != c {
                return Err(fail(format!(
                    "weights {s:?} (OHWI) do not fit {c} input channels"
                )));
            }
            (s[0], [s[1], s[2]])
        };
        if layer.weight.len() != s.iter().product::<usize>()
            || !(layer.scales.len() == 1 || layer.scales.len() == units)
            || layer.bias.as_ref().is_some_and(|b| b.len() != units)
        {
            return Err(fail(
                "weight, scale or bias sizes do not match the shape".into(),
            ));
        }
        let effective = |d: usize| (kernel[d] - 1) * layer.dilation[d] + 1;
        // Decide SAME / VALID / PAD + VALID.
        let (padding, x, [h, w]) = match layer.padding {
            ConvPadding::Same => (Padding::Same, x, [h, w]),
            ConvPadding::Valid => (Padding::Valid, x, [h, w]),
            ConvPadding::Explicit([t, l, b, r]) => {
                let same = [(h, t, b, 0), (w, l, r, 1)]
                    .iter()
                    .all(|(size, lo, hi, d)| {
                        out_and_pad(
                            Padding::Same,
                            *size,
                            kernel[*d],
                            layer.stride[*d],
                            layer.dilation[*d],
                        )
                        .is_some_and(|(o, p)| {
                            let total = (o - 1) * layer.stride[*d] + effective(*d);
                            let total = total.saturating_sub(*size);
                            p == *lo && total - p == *hi
                        })
                    });
                if same {
                    (Padding::Same, x, [h, w])
                } else if [t, l, b, r] == [0; 4] {
                    (Padding::Valid, x, [h, w])
                } else {
                    let padded = self.pad(&format!("{name}/pad"), x, [t, l, b, r])?;
                    (Padding::Valid, padded, [h + t + b, w + l + r])
                }
            }
        };
        let mut out_hw = [0; 2];
        for (d, size) in [h, w].into_iter().enumerate() {
            out_hw[d] = out_and_pad(padding, size, kernel[d], layer.stride[d], layer.dilation[d])
                .filter(|_| kernel[d] > 0 && layer.stride[d] > 0 && layer.dilation[d] > 0)
                .ok_or_else(|| fail(format!("kernel {kernel:?} does not fit input {h}×{w}")))?
                .0;
        }
        let axis = if layer.depthwise { 3 } else { 0 };
        let weights = self.tensor(
            &format!("{name}/weight"),
            &s,
            tflite::TensorType::INT8,
            Some(QuantizationParametersT {
                scale: Some(layer.scales.clone()),
                zero_point: Some(vec![0; layer.scales.len()]),
                quantized_dimension: if layer.scales.len() > 1 { axis } else { 0 },
                ..QuantizationParametersT::default()
            }),
            Some(layer.weight.iter().map(|v| *v as u8).collect()),
        );
        let bias = self.int32_bias(
            &format!("{name}/bias"),
            layer.bias.as_deref(),
            in_q.scale,
            &layer.scales,
            units,
        );
        let y = self.activation_tensor(name, &[n, out_hw[0], out_hw[1], units], out);
        let act = activation(layer.activation)?;
        let (op, options) = if layer.depthwise {
            (
                BuiltinOperator::DEPTHWISE_CONV_2D,
                BuiltinOptionsT::DepthwiseConv2DOptions(Box::new(DepthwiseConv2DOptionsT {
                    padding: tfl_padding(padding),
                    stride_w: layer.stride[1] as i32,
                    stride_h: layer.stride[0] as i32,
                    depth_multiplier: (units / c.max(1)) as i32,
                    fused_activation_function: act,
                    dilation_w_factor: layer.dilation[1] as i32,
                    dilation_h_factor: layer.dilation[0] as i32,
                })),
            )
        } else {
            (
                BuiltinOperator::CONV_2D,
                BuiltinOptionsT::Conv2DOptions(Box::new(Conv2DOptionsT {
                    padding: tfl_padding(padding),
                    stride_w: layer.stride[1] as i32,
                    stride_h: layer.stride[0] as i32,
                    fused_activation_function: act,
                    dilation_w_factor: layer.dilation[1] as i32,
                    dilation_h_factor: layer.dilation[0] as i32,
                    ..Conv2DOptionsT::default()
                })),
            )
        };
        self.op(
            op,
            3,
            vec![x.0 as i32, weights.0 as i32, bias.0 as i32],
            vec![y.0 as i32],
            options,
        );
        Ok(y)
    }

    /// PAD (v2) with the input's zero point (a real 0), `[top, left, bottom, right]`.
    pub fn pad(
        &mut self,
        name: &str,
        x: TensorId,
        pad: [usize; 4],
    ) -> Result<TensorId, TfliteError> {
        let q = self.act_q(x)?;
        let [n, h, w, c] = <[usize; 4]>::try_from(self.shapes[x.0].as_slice())
            .map_err(|_| err(format!("`{name}`: PAD needs an NHWC input")))?;
        let [t, l, b, r] = pad;
        let paddings: Vec<u8> = [0, 0, t, b, l, r, 0, 0]
            .iter()
            .flat_map(|v| (*v as i32).to_le_bytes())
            .collect();
        let p = self.tensor(
            &format!("{name}/paddings"),
            &[4, 2],
            tflite::TensorType::INT32,
            None,
            Some(paddings),
        );
        let y = self.activation_tensor(name, &[n, h + t + b, w + l + r, c], q);
        self.op(
            BuiltinOperator::PAD,
            2,
            vec![x.0 as i32, p.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::PadOptions(Box::new(PadOptionsT {})),
        );
        Ok(y)
    }

    /// FULLY_CONNECTED (v4): `weight` int8 `[units, depth]` with one `scale`, float `bias`.
    #[allow(clippy::too_many_arguments)]
    pub fn fully_connected(
        &mut self,
        name: &str,
        x: TensorId,
        weight: &[i8],
        units: usize,
        scale: f32,
        bias: Option<&[f32]>,
        act: Activation,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        check_q(out, name)?;
        let in_q = self.act_q(x)?;
        let shape = self.shapes[x.0].clone();
        let depth = *shape.last().unwrap_or(&0);
        if units == 0 || weight.len() != units * depth || bias.is_some_and(|b| b.len() != units) {
            return Err(err(format!(
                "layer `{name}`: {} weights and a bias do not fit [{units}, {depth}]",
                weight.len()
            )));
        }
        let weights = self.tensor(
            &format!("{name}/weight"),
            &[units, depth],
            tflite::TensorType::INT8,
            Some(QuantizationParametersT {
                scale: Some(vec![scale]),
                zero_point: Some(vec![0]),
                ..QuantizationParametersT::default()
            }),
            Some(weight.iter().map(|v| *v as u8).collect()),
        );
        let bias = self.int32_bias(&format!("{name}/bias"), bias, in_q.scale, &[scale], units);
        let batch: usize = shape[..shape.len() - 1].iter().product();
        let y = self.activation_tensor(name, &[batch, units], out);
        self.op(
            BuiltinOperator::FULLY_CONNECTED,
            4,
            vec![x.0 as i32, weights.0 as i32, bias.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::FullyConnectedOptions(Box::new(FullyConnectedOptionsT {
                fused_activation_function: activation(act)?,
                ..FullyConnectedOptionsT::default()
            })),
        );
        Ok(y)
    }

    /// AVERAGE_POOL_2D (v2); output quantization = input quantization.
    pub fn avg_pool(
        &mut self,
        name: &str,
        x: TensorId,
        filter: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
    ) -> Result<TensorId, TfliteError> {
        self.pool(
            BuiltinOperator::AVERAGE_POOL_2D,
            name,
            x,
            filter,
            stride,
            padding,
        )
    }

    /// MAX_POOL_2D (v2); output quantization = input quantization.
    pub fn max_pool(
        &mut self,
        name: &str,
        x: TensorId,
        filter: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
    ) -> Result<TensorId, TfliteError> {
        self.pool(
            BuiltinOperator::MAX_POOL_2D,
            name,
            x,
            filter,
            stride,
            padding,
        )
    }

    fn pool(
        &mut self,
        op: BuiltinOperator,
        name: &str,
        x: TensorId,
        filter: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
    ) -> Result<TensorId, TfliteError> {
        let q = self.act_q(x)?;
        let [n, h, w, c] = <[usize; 4]>::try_from(self.shapes[x.0].as_slice())
            .map_err(|_| err(format!("`{name}`: pooling needs an NHWC input")))?;
        let mut out = [0; 2];
        for (d, size) in [h, w].into_iter().enumerate() {
            out[d] = out_and_pad(padding, size, filter[d], stride[d], 1)
                .filter(|_| filter[d] > 0 && stride[d] > 0)
                .ok_or_else(|| err(format!("`{name}`: filter {filter:?} does not fit {h}×{w}")))?
                .0;
        }
        let y = self.activation_tensor(name, &[n, out[0], out[1], c], q);
        self.op(
            op,
            2,
            vec![x.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::Pool2DOptions(Box::new(Pool2DOptionsT {
                padding: tfl_padding(padding),
                stride_w: stride[1] as i32,
                stride_h: stride[0] as i32,
                filter_width: filter[1] as i32,
                filter_height: filter[0] as i32,
                fused_activation_function: ActivationFunctionType::NONE,
            })),
        );
        Ok(y)
    }

    /// RESHAPE (v1) to `shape` (same number of values, same quantization).
    pub fn reshape(
        &mut self,
        name: &str,
        x: TensorId,
        shape: &[usize],
    ) -> Result<TensorId, TfliteError> {
        let q = self.act_q(x)?;
        if shape.iter().product::<usize>() != self.shapes[x.0].iter().product::<usize>() {
            return Err(err(format!(
                "`{name}`: cannot reshape {:?} to {shape:?}",
                self.shapes[x.0]
            )));
        }
        let new_shape: Vec<i32> = shape.iter().map(|d| *d as i32).collect();
        let s = self.tensor(
            &format!("{name}/shape"),
            &[shape.len()],
            tflite::TensorType::INT32,
            None,
            Some(new_shape.iter().flat_map(|v| v.to_le_bytes()).collect()),
        );
        let y = self.activation_tensor(name, shape, q);
        self.op(
            BuiltinOperator::RESHAPE,
            1,
            vec![x.0 as i32, s.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::ReshapeOptions(Box::new(ReshapeOptionsT {
                new_shape: Some(new_shape),
            })),
        );
        Ok(y)
    }

    /// TRANSPOSE_CONV (v3, v4 with a fused activation) of `x` `[n, h, w, in]` into
    /// `[n, out_hw, units]`: `layer.weight` int8 `[units, kh, kw, in]` (`layer.shape`) with
    /// per-channel scales, an int32 bias, `layer.padding` SAME or VALID (TFLite derives the
    /// padding from the output size, [`crate::interp::transpose_conv_pad`]), dilation 1.
    pub fn transpose_conv(
        &mut self,
        name: &str,
        x: TensorId,
        layer: &ConvLayer,
        out_hw: [usize; 2],
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        check_q(out, name)?;
        let in_q = self.act_q(x)?;
        let fail = |why: String| err(format!("layer `{name}`: {why}"));
        let [n, _, _, c] = <[usize; 4]>::try_from(self.shapes[x.0].as_slice())
            .map_err(|_| fail(format!("input must be NHWC, is {:?}", self.shapes[x.0])))?;
        let s = layer.shape;
        let units = s[0];
        let padding = match layer.padding {
            ConvPadding::Same => Padding::Same,
            ConvPadding::Valid => Padding::Valid,
            ConvPadding::Explicit(p) => {
                return Err(fail(format!(
                    "TRANSPOSE_CONV takes SAME or VALID padding, not explicit {p:?}"
                )));
            }
        };
        if layer.depthwise
            || s[3] != c
            || layer.dilation != [1, 1]
            || layer.weight.len() != s.iter().product::<usize>()
            || !(layer.scales.len() == 1 || layer.scales.len() == units)
            || layer.bias.as_ref().is_some_and(|b| b.len() != units)
        {
            return Err(fail(format!(
                "weights {s:?} (OHWI, undilated, not depthwise), scales and bias do not fit {c} \
                 input channels"
            )));
        }
        let shape = [n, out_hw[0], out_hw[1], units];
        let output_shape = self.tensor(
            &format!("{name}/output_shape"),
            &[4],
            tflite::TensorType::INT32,
            None,
            Some(
                shape
                    .iter()
                    .flat_map(|v| (*v as i32).to_le_bytes())
                    .collect(),
            ),
        );
        let weights = self.tensor(
            &format!("{name}/weight"),
            &s,
            tflite::TensorType::INT8,
            Some(QuantizationParametersT {
                scale: Some(layer.scales.clone()),
                zero_point: Some(vec![0; layer.scales.len()]),
                quantized_dimension: 0,
                ..QuantizationParametersT::default()
            }),
            Some(layer.weight.iter().map(|v| *v as u8).collect()),
        );
        let bias = self.int32_bias(
            &format!("{name}/bias"),
            layer.bias.as_deref(),
            in_q.scale,
            &layer.scales,
            units,
        );
        let y = self.activation_tensor(name, &shape, out);
        let act = activation(layer.activation)?;
        self.op(
            BuiltinOperator::TRANSPOSE_CONV,
            if act == ActivationFunctionType::NONE {
                3
            } else {
                4
            },
            vec![
                output_shape.0 as i32,
                weights.0 as i32,
                x.0 as i32,
                bias.0 as i32,
            ],
            vec![y.0 as i32],
            BuiltinOptionsT::TransposeConvOptions(Box::new(TransposeConvOptionsT {
                padding: tfl_padding(padding),
                stride_w: layer.stride[1] as i32,
                stride_h: layer.stride[0] as i32,
                fused_activation_function: act,
                ..TransposeConvOptionsT::default()
            })),
        );
        Ok(y)
    }

    /// TRANSPOSE (v2) of a 4-D tensor: output axis `i` is input axis `perm[i]` (same
    /// quantization: it only moves values).
    pub fn transpose(
        &mut self,
        name: &str,
        x: TensorId,
        perm: [usize; 4],
    ) -> Result<TensorId, TfliteError> {
        let q = self.act_q(x)?;
        let s = self.shapes[x.0].clone();
        let mut sorted = perm;
        sorted.sort_unstable();
        if s.len() != 4 || sorted != [0, 1, 2, 3] {
            return Err(err(format!(
                "`{name}`: TRANSPOSE of {s:?} by {perm:?} (a 4-D tensor and a permutation of \
                 [0, 1, 2, 3] are needed)"
            )));
        }
        let p = self.tensor(
            &format!("{name}/perm"),
            &[4],
            tflite::TensorType::INT32,
            None,
            Some(
                perm.iter()
                    .flat_map(|v| (*v as i32).to_le_bytes())
                    .collect(),
            ),
        );
        let shape: Vec<usize> = perm.iter().map(|&a| s[a]).collect();
        let y = self.activation_tensor(name, &shape, q);
        self.op(
            BuiltinOperator::TRANSPOSE,
            2,
            vec![x.0 as i32, p.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::TransposeOptions(Box::new(TransposeOptionsT {})),
        );
        Ok(y)
    }

    /// ADD (v2) of two int8 tensors of the same shape, or of shapes that broadcast (numpy
    /// rules, at most 4-D; [`crate::elementwise::broadcast_shape`]).
    pub fn add(
        &mut self,
        name: &str,
        a: TensorId,
        b: TensorId,
        act: Activation,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        let options = BuiltinOptionsT::AddOptions(Box::new(AddOptionsT {
            fused_activation_function: activation(act)?,
            pot_scale_int16: false,
        }));
        self.binary(BuiltinOperator::ADD, "ADD", name, a, b, out, options)
    }

    /// MUL (v2) of two int8 tensors (or a tensor and a [`Self::constant`]), broadcasting as
    /// [`Self::add`].
    pub fn mul(
        &mut self,
        name: &str,
        a: TensorId,
        b: TensorId,
        act: Activation,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        let options = BuiltinOptionsT::MulOptions(Box::new(MulOptionsT {
            fused_activation_function: activation(act)?,
        }));
        self.binary(BuiltinOperator::MUL, "MUL", name, a, b, out, options)
    }

    /// SUB (v2), `a − b`, broadcasting as [`Self::add`].
    pub fn sub(
        &mut self,
        name: &str,
        a: TensorId,
        b: TensorId,
        act: Activation,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        let options = BuiltinOptionsT::SubOptions(Box::new(SubOptionsT {
            fused_activation_function: activation(act)?,
            pot_scale_int16: false,
        }));
        self.binary(BuiltinOperator::SUB, "SUB", name, a, b, out, options)
    }

    /// A constant int8 tensor of `shape` with quantization `q` (an operand of ADD, SUB, MUL).
    pub fn constant(
        &mut self,
        name: &str,
        shape: &[usize],
        values: &[i8],
        q: ActQ,
    ) -> Result<TensorId, TfliteError> {
        check_q(q, name)?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(err(format!(
                "constant `{name}`: {} values for shape {shape:?}",
                values.len()
            )));
        }
        let t = self.tensor(
            name,
            shape,
            tflite::TensorType::INT8,
            Some(QuantizationParametersT {
                scale: Some(vec![q.scale]),
                zero_point: Some(vec![q.zero_point as i64]),
                ..QuantizationParametersT::default()
            }),
            Some(values.iter().map(|v| *v as u8).collect()),
        );
        self.quant[t.0] = Some(q);
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn binary(
        &mut self,
        op: BuiltinOperator,
        kind: &str,
        name: &str,
        a: TensorId,
        b: TensorId,
        out: ActQ,
        options: BuiltinOptionsT,
    ) -> Result<TensorId, TfliteError> {
        check_q(out, name)?;
        self.act_q(a)?;
        self.act_q(b)?;
        let (sa, sb) = (&self.shapes[a.0], &self.shapes[b.0]);
        let shape = crate::elementwise::broadcast_shape(sa, sb)
            .filter(|s| s.len() <= 4)
            .ok_or_else(|| {
                err(format!(
                    "`{name}`: {kind} of shapes {sa:?} and {sb:?}, which do not broadcast"
                ))
            })?;
        let y = self.activation_tensor(name, &shape, out);
        self.op(
            op,
            2,
            vec![a.0 as i32, b.0 as i32],
            vec![y.0 as i32],
            options,
        );
        Ok(y)
    }

    /// CONCATENATION (v2) of int8 tensors along `axis` (3, the channels, for NHWC maps; the
    /// last for `[n, features]`): every dimension but `axis` equal, output quantization `out`.
    ///
    /// TFLite Micro's and LiteRT's int8 kernels copy bytes and refuse, when the model is
    /// loaded, any input whose scale or zero point differs from the output's; so does this
    /// builder, before a file exists: give the inputs' producers the output's quantization
    /// (`collab::export` does, for every value that reaches a concatenation). At most
    /// [`crate::concat::MAX_INPUTS`] inputs of at most 4 dimensions (TFLite Micro's limits).
    pub fn concatenation(
        &mut self,
        name: &str,
        inputs: &[TensorId],
        axis: usize,
        out: ActQ,
    ) -> Result<TensorId, TfliteError> {
        use crate::concat::{MAX_INPUTS, MAX_RANK};
        check_q(out, name)?;
        let first = inputs
            .first()
            .ok_or_else(|| err(format!("`{name}`: CONCATENATION of no tensors")))?;
        if inputs.len() > MAX_INPUTS {
            return Err(err(format!(
                "`{name}`: CONCATENATION of {} tensors; TFLite Micro takes at most {MAX_INPUTS} \
                 (concatenate in steps)",
                inputs.len()
            )));
        }
        let mut shape = self.shapes[first.0].clone();
        let rank = shape.len();
        if axis >= rank || rank > MAX_RANK {
            return Err(err(format!(
                "`{name}`: CONCATENATION along axis {axis} of {shape:?}: the axis must be one \
                 of at most {MAX_RANK} dimensions"
            )));
        }
        shape[axis] = 0;
        for (k, t) in inputs.iter().enumerate() {
            let q = self.act_q(*t)?;
            let tensor_name = self.tensors[t.0].name.clone().unwrap_or_default();
            if q.scale.to_bits() != out.scale.to_bits() || q.zero_point != out.zero_point {
                return Err(err(format!(
                    "`{name}`: CONCATENATION input {k} (`{tensor_name}`) has scale {} / zero \
                     point {}, the output {} / {}: TFLite Micro and LiteRT refuse int8 inputs \
                     quantized unlike the output; give the input's producer the output's \
                     quantization",
                    q.scale, q.zero_point, out.scale, out.zero_point
                )));
            }
            let s = &self.shapes[t.0];
            if s.len() != rank || (0..rank).any(|d| d != axis && s[d] != shape[d]) {
                return Err(err(format!(
                    "`{name}`: CONCATENATION input {k} (`{tensor_name}`) has shape {s:?}, \
                     unlike {:?} outside axis {axis}",
                    self.shapes[first.0]
                )));
            }
            shape[axis] += s[axis];
        }
        let y = self.activation_tensor(name, &shape, out);
        self.op(
            BuiltinOperator::CONCATENATION,
            2,
            inputs.iter().map(|t| t.0 as i32).collect(),
            vec![y.0 as i32],
            BuiltinOptionsT::ConcatenationOptions(Box::new(ConcatenationOptionsT {
                axis: axis as i32,
                fused_activation_function: ActivationFunctionType::NONE,
            })),
        );
        Ok(y)
    }

    /// SOFTMAX (v2, β = 1) over the last axis; output scale 1/256, zero point −128.
    pub fn softmax(&mut self, name: &str, x: TensorId) -> Result<TensorId, TfliteError> {
        self.act_q(x)?;
        let shape = self.shapes[x.0].clone();
        let y = self.activation_tensor(
            name,
            &shape,
            ActQ {
                scale: 1.0 / 256.0,
                zero_point: -128,
            },
        );
        self.op(
            BuiltinOperator::SOFTMAX,
            2,
            vec![x.0 as i32],
            vec![y.0 as i32],
            BuiltinOptionsT::SoftmaxOptions(Box::new(SoftmaxOptionsT { beta: 1.0 })),
        );
        Ok(y)
    }

    /// An elementwise activation `op` of `x` (any shape; the output has it). `out`: the
    /// output quantization, required for HARD_SWISH, LEAKY_RELU and RELU; for LOGISTIC, TANH
    /// and RELU6 it is [`ActOp::required_output`] and `out`, if given, must equal it.
    pub fn activation(
        &mut self,
        name: &str,
        x: TensorId,
        op: ActOp,
        out: Option<ActQ>,
    ) -> Result<TensorId, TfliteError> {
        let in_q = self.act_q(x)?;
        let out = match (op.required_output(in_q), out) {
            (Some(required), Some(given)) if given != required => {
                return Err(err(format!(
                    "`{name}`: {op:?} must have output scale {} and zero point {} (given {} /                      {}); TFLite fixes it",
                    required.scale, required.zero_point, given.scale, given.zero_point
                )));
            }
            (Some(required), _) => required,
            (None, Some(given)) => given,
            (None, None) => {
                return Err(err(format!(
                    "`{name}`: {op:?} needs an output quantization (a calibrated or trained range)"
                )));
            }
        };
        check_q(out, name)?;
        let options = match op {
            ActOp::LeakyRelu { alpha } => {
                if !(alpha.is_finite() && alpha >= 0.0) {
                    return Err(err(format!(
                        "`{name}`: LEAKY_RELU alpha {alpha}: only a finite alpha ≥ 0 exports                          (LiteRT versions treat a negative one differently)"
                    )));
                }
                BuiltinOptionsT::LeakyReluOptions(Box::new(LeakyReluOptionsT { alpha }))
            }
            _ => BuiltinOptionsT::NONE,
        };
        let shape = self.shapes[x.0].clone();
        let y = self.activation_tensor(name, &shape, out);
        let (code, version) = op.code();
        self.op(code, version, vec![x.0 as i32], vec![y.0 as i32], options);
        Ok(y)
    }

    /// The finished flatbuffer (identifier "TFL3", schema version 3).
    pub fn finish(mut self) -> Result<Vec<u8>, TfliteError> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(err("the graph needs at least one input and one output"));
        }
        // The oldest runtime that runs these operator versions (TFLite 1.14 / 2.x).
        let mut version = b"1.14.0".to_vec();
        version.resize(16, 0);
        self.buffers.push(BufferT {
            data: Some(version),
            ..BufferT::default()
        });
        let metadata = vec![MetadataT {
            name: Some("min_runtime_version".into()),
            buffer: (self.buffers.len() - 1) as u32,
        }];
        let model = ModelT {
            version: 3,
            operator_codes: Some(
                self.codes
                    .iter()
                    .map(|(op, version)| OperatorCodeT {
                        deprecated_builtin_code: op.0.min(127) as i8,
                        custom_code: None,
                        version: *version,
                        builtin_code: *op,
                    })
                    .collect(),
            ),
            subgraphs: Some(vec![SubGraphT {
                tensors: Some(self.tensors),
                inputs: Some(self.inputs),
                outputs: Some(self.outputs),
                operators: Some(self.operators),
                name: Some("main".into()),
                ..SubGraphT::default()
            }]),
            description: Some("burn-collab int8 export".into()),
            buffers: Some(self.buffers),
            metadata: Some(metadata),
            ..ModelT::default()
        };
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let root = model.pack(&mut fbb);
        fbb.finish(root, Some("TFL3"));
        Ok(fbb.finished_data().to_vec())
    }
}
