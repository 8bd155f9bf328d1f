//! A `.tflite` file as a typed graph.

use std::path::Path;

use serde::Serialize;

use crate::TfliteError;
use crate::tflite;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorType {
    /// 32-bit float.
    Float32,
    /// 8-bit signed integer.
    Int8,
    /// 8-bit unsigned integer.
    Uint8,
    /// 16-bit signed integer.
    Int16,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// Anything else (named by TFLite's enum).
    Other(i8),
}

impl TensorType {
    fn from_tflite(t: tflite::TensorType) -> Self {
        match t {
            tflite::TensorType::FLOAT32 => Self::Float32,
            tflite::TensorType::INT8 => Self::Int8,
            tflite::TensorType::UINT8 => Self::Uint8,
            tflite::TensorType::INT16 => Self::Int16,
            tflite::TensorType::INT32 => Self::Int32,
            tflite::TensorType::INT64 => Self::Int64,
            other => Self::Other(other.0),
        }
    }

    /// Bytes per element, where fixed.
    pub fn size(&self) -> Option<usize> {
        match self {
            Self::Int8 | Self::Uint8 => Some(1),
            Self::Int16 => Some(2),
            Self::Float32 | Self::Int32 => Some(4),
            Self::Int64 => Some(8),
            Self::Other(_) => None,
        }
    }
}

/// Quantization of a tensor: `real = scale · (q − zero_point)`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantization {
    /// One scale, or one per channel along `axis`.
    pub scale: Vec<f32>,
    /// Zero points (same length).
    pub zero_point: Vec<i64>,
    /// The quantized dimension (per-channel tensors).
    pub axis: usize,
}

/// One tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its element type.
    pub dtype: TensorType,
    /// Quantization parameters, if quantized.
    pub quantization: Option<Quantization>,
    /// Index of its buffer (0 = none).
    pub buffer: usize,
    /// Its constant data, if it has any (weights, biases).
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

/// A fused activation (`fused_activation_function`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// None.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `min(max(x, −1), 1)`.
    ReluN1To1,
    /// Anything else (TFLite's enum value), e.g. TANH.
    Other(i8),
}

impl Activation {
    fn from_tflite(a: tflite::ActivationFunctionType) -> Self {
        match a {
            tflite::ActivationFunctionType::NONE => Self::None,
            tflite::ActivationFunctionType::RELU => Self::Relu,
            tflite::ActivationFunctionType::RELU6 => Self::Relu6,
            tflite::ActivationFunctionType::RELU_N1_TO_1 => Self::ReluN1To1,
            other => Self::Other(other.0),
        }
    }
}

/// TFLite padding mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Output `ceil(in / stride)`, padding split with the extra row/column at the end.
    Same,
    /// No padding.
    Valid,
}

/// The builtin options the interpreter and the reports need, per operator kind.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Options {
    /// CONV_2D and DEPTHWISE_CONV_2D.
    Conv {
        /// Padding mode.
        padding: Padding,
        /// `[stride_h, stride_w]`.
        stride: [usize; 2],
        /// `[dilation_h, dilation_w]`.
        dilation: [usize; 2],
        /// Fused activation.
        activation: Activation,
        /// Depthwise channel multiplier (1 for CONV_2D).
        depth_multiplier: usize,
    },
    /// AVERAGE_POOL_2D and MAX_POOL_2D.
    Pool {
        /// Padding mode.
        padding: Padding,
        /// `[stride_h, stride_w]`.
        stride: [usize; 2],
        /// `[filter_h, filter_w]`.
        filter: [usize; 2],
        /// Fused activation.
        activation: Activation,
    },
    /// FULLY_CONNECTED.
    FullyConnected {
        /// Fused activation.
        activation: Activation,
        /// Keep the input's leading dimensions.
        keep_num_dims: bool,
    },
    /// ADD.
    Add {
        /// Fused activation.
        activation: Activation,
    },
    /// SOFTMAX.
    Softmax {
        /// β of `exp(β·x)`.
        beta: f32,
    },
    /// MEAN / SUM and the other reducers (the axes are the operator's second input).
    Reducer {
        /// Keep reduced dimensions as 1.
        keep_dims: bool,
    },
    /// CONCATENATION.
    Concatenation {
        /// The axis joined along (negative: counted from the last).
        axis: i32,
        /// Fused activation.
        activation: Activation,
    },
    /// LEAKY_RELU.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
    /// No options, or options this crate does not read.
    None,
    /// TRANSPOSE_CONV.
    TransposeConv {
        /// Padding mode (the padding follows from the output size, see
        /// [`crate::interp::transpose_conv_pad`]).
        padding: Padding,
        /// `[stride_h, stride_w]`.
        stride: [usize; 2],
        /// Fused activation.
        activation: Activation,
    },
    /// MUL.
    Mul {
        /// Fused activation.
        activation: Activation,
    },
    /// SUB.
    Sub {
        /// Fused activation.
        activation: Activation,
    },
}

fn dim(v: i32, what: &str, n: usize, name: &str) -> Result<usize, TfliteError> {
    if v < 1 {
        return Err(TfliteError::Malformed(format!(
            "operator {n} ({name}) has {what} {v}; it must be at least 1"
        )));
    }
    Ok(v as usize)
}

fn read_options(op: &tflite::Operator<'_>, n: usize, name: &str) -> Result<Options, TfliteError> {
    let padding = |p: tflite::Padding| {
        if p == tflite::Padding::VALID {
            Padding::Valid
        } else {
            Padding::Same
        }
    };
    // CONV_2D and DEPTHWISE_CONV_2D share everything but the multiplier.
    let conv = |p: tflite::Padding,
                s: [i32; 2],
                d: [i32; 2],
                a: tflite::ActivationFunctionType,
                depth_multiplier: usize|
     -> Result<Options, TfliteError> {
        Ok(Options::Conv {
            padding: padding(p),
            stride: [
                dim(s[0], "stride_h", n, name)?,
                dim(s[1], "stride_w", n, name)?,
            ],
            dilation: [
                dim(d[0], "dilation_h", n, name)?,
                dim(d[1], "dilation_w", n, name)?,
            ],
            activation: Activation::from_tflite(a),
            depth_multiplier,
        })
    };
    Ok(if let Some(o) = op.builtin_options_as_conv_2_doptions() {
        conv(
            o.padding(),
            [o.stride_h(), o.stride_w()],
            [o.dilation_h_factor(), o.dilation_w_factor()],
            o.fused_activation_function(),
            1,
        )?
    } else if let Some(o) = op.builtin_options_as_depthwise_conv_2_doptions() {
        // Version-1 files may leave the multiplier 0; the tensors' shapes decide then.
        conv(
            o.padding(),
            [o.stride_h(), o.stride_w()],
            [o.dilation_h_factor(), o.dilation_w_factor()],
            o.fused_activation_function(),
            o.depth_multiplier().max(0) as usize,
        )?
    } else if let Some(o) = op.builtin_options_as_pool_2_doptions() {
        Options::Pool {
            padding: padding(o.padding()),
            stride: [
                dim(o.stride_h(), "stride_h", n, name)?,
                dim(o.stride_w(), "stride_w", n, name)?,
            ],
            filter: [
                dim(o.filter_height(), "filter_height", n, name)?,
                dim(o.filter_width(), "filter_width", n, name)?,
            ],
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else if let Some(o) = op.builtin_options_as_fully_connected_options() {
        Options::FullyConnected {
            activation: Activation::from_tflite(o.fused_activation_function()),
            keep_num_dims: o.keep_num_dims(),
        }
    } else if let Some(o) = op.builtin_options_as_add_options() {
        Options::Add {
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else if let Some(o) = op.builtin_options_as_softmax_options() {
        Options::Softmax { beta: o.beta() }
    } else if let Some(o) = op.builtin_options_as_reducer_options() {
        Options::Reducer {
            keep_dims: o.keep_dims(),
        }
    } else if let Some(o) = op.builtin_options_as_concatenation_options() {
        Options::Concatenation {
            axis: o.axis(),
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else if let Some(o) = op.builtin_options_as_leaky_relu_options() {
        Options::LeakyRelu { alpha: o.alpha() }
    } else if let Some(o) = op.builtin_options_as_transpose_conv_options() {
        Options::TransposeConv {
            padding: padding(o.padding()),
            stride: [
                dim(o.stride_h(), "stride_h", n, name)?,
                dim(o.stride_w(), "stride_w", n, name)?,
            ],
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else if let Some(o) = op.builtin_options_as_mul_options() {
        Options::Mul {
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else if let Some(o) = op.builtin_options_as_sub_options() {
        Options::Sub {
            activation: Activation::from_tflite(o.fused_activation_function()),
        }
    } else {
        Options::None
    })
}

impl TensorInfo {
    /// Constant data as `f32` in the tensor's layout: float32 values as stored; int8 / int32
    /// values dequantized with their (per-tensor or per-channel) scale and zero point. How float
    /// or quantized weights of a `.tflite` file are imported into a burn model. `None` for
    /// tensors without data or of other types.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let data = self.data.as_deref()?;
        let raw: Vec<f32> = match self.dtype {
            TensorType::Float32 => {
                return Some(
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                );
            }
            TensorType::Int8 => data.iter().map(|b| *b as i8 as f32).collect(),
            TensorType::Int32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                .collect(),
            _ => return None,
        };
        let q = self.quantization.as_ref()?;
        let channels = q.scale.len();
        // Elements per step of the quantized axis, and the axis length.
        let inner: usize = self.shape.iter().skip(q.axis + 1).product();
        let axis_len = self.shape.get(q.axis).copied().unwrap_or(1).max(1);
        Some(
            raw.iter()
                .enumerate()
                .map(|(i, v)| {
                    let c = if channels > 1 {
                        (i / inner.max(1)) % axis_len
                    } else {
                        0
                    };
                    let scale = q.scale.get(c).copied().unwrap_or(1.0);
                    let zp = q.zero_point.get(c).copied().unwrap_or(0) as f32;
                    scale * (v - zp)
                })
                .collect(),
        )
    }

    /// Constant int32 / int64 data as integers (axes, shapes, sizes: the operands that are
    /// not numbers to compute with). `None` for tensors without data or of other types.
    pub fn to_i64(&self) -> Option<Vec<i64>> {
        let data = self.data.as_deref()?;
        Some(match self.dtype {
            TensorType::Int32 => data
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            TensorType::Int64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            _ => return None,
        })
    }
}

/// One operator.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Operator {
    /// Builtin operator name, e.g. `CONV_2D` (or the custom code).
    pub op: String,
    /// Operator version.
    pub version: i32,
    /// Its builtin options (strides, padding, fused activation, …).
    pub options: Options,
    /// Input tensor indices (−1 = optional input absent).
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
}

/// The first subgraph of a `.tflite` file, with its operator codes resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Graph {
    /// Schema version (3).
    pub version: u32,
    /// Tensors.
    pub tensors: Vec<TensorInfo>,
    /// Operators in execution order.
    pub operators: Vec<Operator>,
    /// Graph input tensor indices.
    pub inputs: Vec<i32>,
    /// Graph output tensor indices.
    pub outputs: Vec<i32>,
    /// Number of subgraphs in the file.
    pub subgraphs: usize,
}

/// Limits that keep hostile files from exhausting memory or stack.
fn verifier_options(len: usize) -> flatbuffers::VerifierOptions {
    flatbuffers::VerifierOptions {
        max_depth: 64,
        max_tables: 1_000_000,
        max_apparent_size: len.saturating_mul(2).max(1 << 20),
        ignore_missing_null_terminator: false,
    }
}

impl Graph {
    /// Read and verify a `.tflite` file.
    pub fn open(path: &Path) -> Result<Self, TfliteError> {
        let bytes = std::fs::read(path).map_err(|e| TfliteError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes)
    }

    /// Parse and verify `.tflite` bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TfliteError> {
        if bytes.len() < 8 {
            return Err(TfliteError::Malformed(format!(
                "{} bytes is too short for a flatbuffer",
                bytes.len()
            )));
        }
        if !tflite::model_buffer_has_identifier(bytes) {
            let id = String::from_utf8_lossy(&bytes[4..8]).into_owned();
            return Err(TfliteError::Malformed(format!(
                "file identifier is {id:?}, expected \"TFL3\" (is this a TFLite model?)"
            )));
        }
        let model = tflite::root_as_model_with_opts(&verifier_options(bytes.len()), bytes)
            .map_err(|e| TfliteError::Malformed(e.to_string()))?;
        let codes: Vec<(String, i32)> = model
            .operator_codes()
            .map(|v| {
                v.iter()
                    .map(|c| {
                        // Newer files use `builtin_code`; older ones only the deprecated byte.
                        let code = c.builtin_code().0.max(c.deprecated_builtin_code() as i32);
                        let name = match c.custom_code() {
                            Some(custom) => custom.to_string(),
                            None => tflite::BuiltinOperator(code)
                                .variant_name()
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("BUILTIN_{code}")),
                        };
                        (name, c.version())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let buffers = model.buffers();
        let buffer_count = buffers.map_or(0, |b| b.len());
        let subgraphs = model
            .subgraphs()
            .ok_or_else(|| TfliteError::Malformed("the model has no subgraphs".into()))?;
        if subgraphs.is_empty() {
            return Err(TfliteError::Malformed("the model has no subgraphs".into()));
        }
        let graph = subgraphs.get(0);
        let raw_tensors = graph
            .tensors()
            .ok_or_else(|| TfliteError::Malformed("subgraph 0 has no tensors".into()))?;
        let mut tensors = Vec::with_capacity(raw_tensors.len());
        for (i, t) in raw_tensors.iter().enumerate() {
            let shape: Vec<usize> = t
                .shape()
                .map(|s| s.iter().map(|d| d.max(0) as usize).collect())
                .unwrap_or_default();
            let buffer = t.buffer() as usize;
            if buffer >= buffer_count.max(1) {
                return Err(TfliteError::BadReference(format!(
                    "tensor {i} ({}) refers to buffer {buffer}, but the file has {buffer_count} buffers",
                    t.name().unwrap_or("")
                )));
            }
            // Buffer 0 of a file with no buffers (absent or an empty vector) means no data.
            let data = buffers
                .filter(|b| buffer < b.len())
                .and_then(|b| b.get(buffer).data())
                .filter(|d| !d.is_empty())
                .map(|d| d.bytes().to_vec());
            let dtype = TensorType::from_tflite(t.type_());
            if let (Some(d), Some(size)) = (&data, dtype.size()) {
                let want = shape.iter().try_fold(size, |acc, s| acc.checked_mul(*s));
                if want != Some(d.len()) {
                    return Err(TfliteError::BadReference(format!(
                        "tensor {i} ({}) has shape {shape:?} of {dtype:?} but its buffer holds {} bytes",
                        t.name().unwrap_or(""),
                        d.len()
                    )));
                }
            }
            let quantization = t.quantization().and_then(|q| {
                let scale: Vec<f32> = q.scale()?.iter().collect();
                if scale.is_empty() {
                    return None;
                }
                Some(Quantization {
                    zero_point: q
                        .zero_point()
                        .map(|z| z.iter().collect())
                        .unwrap_or_default(),
                    scale,
                    axis: q.quantized_dimension().max(0) as usize,
                })
            });
            tensors.push(TensorInfo {
                name: t.name().unwrap_or("").to_string(),
                shape,
                dtype,
                quantization,
                buffer,
                data,
            });
        }
        let check_index = |what: &str, i: i32| -> Result<i32, TfliteError> {
            if i >= tensors.len() as i32 || i < -1 {
                return Err(TfliteError::BadReference(format!(
                    "{what} refers to tensor {i}, but the subgraph has {} tensors",
                    tensors.len()
                )));
            }
            Ok(i)
        };
        let indices = |v: Option<flatbuffers::Vector<'_, i32>>,
                       what: &str|
         -> Result<Vec<i32>, TfliteError> {
            v.map(|v| v.iter().map(|i| check_index(what, i)).collect())
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let mut operators = Vec::new();
        for (n, op) in graph.operators().iter().flatten().enumerate() {
            let index = op.opcode_index() as usize;
            let (name, version) = codes.get(index).cloned().ok_or_else(|| {
                TfliteError::BadReference(format!(
                    "operator {n} uses operator code {index}, but the file has {} codes",
                    codes.len()
                ))
            })?;
            let what = format!("operator {n} ({name})");
            let inputs = indices(op.inputs(), &what)?;
            let outputs = indices(op.outputs(), &what)?;
            let options = read_options(&op, n, &name)?;
            operators.push(Operator {
                op: name,
                version,
                options,
                inputs,
                outputs,
            });
        }
        Ok(Self {
            version: model.version(),
            inputs: indices(graph.inputs(), "graph input")?,
            outputs: indices(graph.outputs(), "graph output")?,
            tensors,
            operators,
            subgraphs: subgraphs.len(),
        })
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensors that hold constant data (weights and biases), with their indices.
    pub fn constants(&self) -> impl Iterator<Item = (usize, &TensorInfo)> {
        self.tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.data.is_some())
    }
}
