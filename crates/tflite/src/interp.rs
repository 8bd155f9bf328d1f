//! A reference int8 interpreter for the operators burn-collab exports.
//!
//! Bit-exact with LiteRT's reference kernels (`BUILTIN_REF`) and TensorFlow Lite Micro: the
//! same output sizes and padding, the same multipliers (computed in `f64` exactly where TFLite
//! does, in `f32` where it does), the same fixed-point requantization
//! (`MultiplyByQuantizedMultiplier`) and gemmlowp's fixed-point softmax. Layout NHWC.
//!
//! Operators: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE,
//! SOFTMAX, ADD, SUB and MUL (broadcasting, constant operands: [`crate::elementwise`]), PAD,
//! QUANTIZE (float → int8), DEQUANTIZE (int8 → float), CONCATENATION (inputs quantized as the
//! output, [`crate::concat`]), TRANSPOSE and TRANSPOSE_CONV. Tensors are
//! int8 activations, int8 weights (zero point 0, per tensor or per channel), int32 biases.
//! Elementwise activations (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6) are in
//! [`crate::activations`].
//!
//! [`Interpreter::new`] checks everything once (types, shapes, quantization, memory) and
//! precomputes the multipliers, as TFLite's `Prepare`; [`Interpreter::run`] cannot fail
//! afterwards except on input of the wrong size.

use serde::Serialize;

use crate::TfliteError;
use crate::fixed::{exp_on_negative_values_q5, quantize_multiplier, rdbpot, reciprocal};
use crate::reader::{Activation, Graph, Options, Padding, TensorInfo, TensorType};

/// The most activation memory a model may ask for (all intermediate tensors together).
const MAX_ACTIVATION_BYTES: usize = 1 << 30;

/// Values of an input or output tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Data {
    /// int8 values.
    I8(Vec<i8>),
    /// float values.
    F32(Vec<f32>),
}

impl Data {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Data::I8(v) => v.len(),
            Data::F32(v) => v.len(),
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shape, type and quantization of a graph input or output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Port {
    /// Tensor name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// `Int8` or `Float32`.
    pub dtype: TensorType,
    /// Scale (1 for float tensors).
    pub scale: f32,
    /// Zero point (0 for float tensors).
    pub zero_point: i32,
}

#[derive(Clone, Debug)]
struct Requant {
    multiplier: Vec<i32>,
    shift: Vec<i32>,
}

#[derive(Clone, Debug)]
struct ConvKernel {
    input: usize,
    output: usize,
    /// `[n, h, w, c]` of the input and output.
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    /// Filter values as `i32`, laid out `[kh, kw, in_c, out_c]` (CONV_2D) or `[kh, kw, out_c]`
    /// (depthwise), so the innermost loop runs over contiguous output channels.
    filter: Vec<i32>,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Padding before (top, left).
    pad: [usize; 2],
    bias: Vec<i32>,
    input_offset: i32,
    output_offset: i32,
    requant: Requant,
    act: [i32; 2],
    depthwise: bool,
    multiplier: usize,
    /// Weights and requantization constants for the AVX-512 VNNI kernels (CPUs that have them).
    fast: Option<Fast>,
}

/// A convolution prepared for the SIMD kernels.
#[derive(Clone, Debug)]
enum Fast {
    /// CONV_2D as an AVX-512 VNNI GEMM.
    Gemm(crate::vnni::Packed, crate::vnni::Requant),
    /// DEPTHWISE_CONV_2D with channel multiplier 1, AVX-512 VNNI.
    Depthwise(crate::vnni::DwPacked, crate::vnni::Requant),
    /// CONV_2D as an AVX2 GEMM.
    Avx2Gemm(crate::vnni::avx2::Packed16, crate::vnni::Requant),
    /// DEPTHWISE_CONV_2D with channel multiplier 1, AVX2.
    Avx2Depthwise(crate::vnni::DwPacked, crate::vnni::Requant),
    /// CONV_2D on N:M-sparse weights (at most 4 non-zeros in every run of 8 `k`), AVX-512
    /// VNNI + VBMI.
    Sparse(crate::vnni::sparse::SparsePacked, crate::vnni::Requant),
    /// CONV_2D with dense weights, AVX-512 VNNI, direct (16-channel blocks, no unfolding).
    Narrow(crate::vnni::narrow::Narrow),
    /// DEPTHWISE_CONV_2D with at most 16 channels and multiplier 1, AVX-512 VNNI.
    NarrowDw(crate::vnni::narrow_dw::NarrowDw),
}

/// Which convolution kernels an [`Interpreter`] runs. All compute the same integers (tests
/// compare them); only their speed differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// The fastest this CPU supports: AVX-512 VNNI, else AVX2, else portable.
    #[default]
    Best,
    /// AVX2 (`vpmaddwd`) where the CPU has it, else portable: what a CPU without AVX-512 VNNI
    /// runs.
    Avx2,
    /// Plain Rust loops (auto-vectorised), on every CPU.
    Portable,
    /// `Best`, plus the N:M sparse kernel for CONV_2D and FULLY_CONNECTED layers whose weights
    /// hold at most 4 non-zeros in every run of 8 input values (2:4 pruning along input
    /// channels) on CPUs with AVX-512 VBMI. Opt-in: it computes the same integers as `Best`
    /// but does not run faster than its dense kernel on the CPUs measured so far (the
    /// `vpermb` that selects each channel's inputs takes the vector port a second `vpdpbusd`
    /// would use; docs/DESIGN.md).
    Sparse,
}

impl Kernels {
    /// Whether this choice allows the AVX-512 VNNI tier.
    pub(crate) fn avx512(self) -> bool {
        matches!(self, Kernels::Best | Kernels::Sparse)
    }
}

/// The SIMD form of convolution `c` for `kernels` on this CPU, if any.
fn build_fast(c: &ConvKernel, kernels: Kernels) -> Option<Fast> {
    let vnni = kernels.avx512() && crate::vnni::available();
    let avx2 = kernels != Kernels::Portable && crate::vnni::avx2_available();
    if !(vnni || avx2) || (c.depthwise && c.multiplier != 1) {
        return None;
    }
    let requant = crate::vnni::Requant::new(
        &c.requant.multiplier,
        &c.requant.shift,
        c.output_offset,
        c.act,
    );
    let taps = c.kernel[0] * c.kernel[1];
    let units = c.out_shape[3];
    let zp = -c.input_offset;
    if kernels == Kernels::Sparse && !c.depthwise && crate::vnni::sparse::available() {
        let k = taps * c.in_shape[3];
        if let Some(p) = crate::vnni::sparse::SparsePacked::new(&c.filter, k, units, &c.bias, zp) {
            return Some(Fast::Sparse(p, requant));
        }
    }
    // The direct kernel (no unfolding, 16-channel blocks) unless the weights have zero blocks
    // of 32 channels × 4 `k` for the GEMM to skip (block-pruned files).
    let ic = c.in_shape[3];
    let gemm = || crate::vnni::Packed::new(&c.filter, taps * ic, units, &c.bias, zp);
    if vnni && !c.depthwise && gemm().is_dense() {
        let narrow = crate::vnni::narrow::Narrow::new(
            &geometry(c),
            &c.filter,
            &c.bias,
            &c.requant.multiplier,
            &c.requant.shift,
            c.output_offset,
            c.act,
        );
        if let Some(n) = narrow {
            return Some(Fast::Narrow(n));
        }
    }
    if vnni && c.depthwise {
        let narrow = crate::vnni::narrow_dw::NarrowDw::new(
            &geometry(c),
            &c.filter,
            &c.bias,
            &c.requant.multiplier,
            &c.requant.shift,
            c.output_offset,
            c.act,
        );
        if let Some(n) = narrow {
            return Some(Fast::NarrowDw(n));
        }
    }
    Some(match (c.depthwise, vnni) {
        (false, true) => Fast::Gemm(
            crate::vnni::Packed::new(&c.filter, taps * c.in_shape[3], units, &c.bias, zp),
            requant,
        ),
        (true, true) => Fast::Depthwise(
            crate::vnni::DwPacked::new(&c.filter, taps, units, &c.bias, zp, 32),
            requant,
        ),
        (false, false) => Fast::Avx2Gemm(
            crate::vnni::avx2::Packed16::new(&c.filter, taps * c.in_shape[3], units, &c.bias, zp),
            requant,
        ),
        (true, false) => Fast::Avx2Depthwise(
            crate::vnni::DwPacked::new(&c.filter, taps, units, &c.bias, zp, 16),
            requant,
        ),
    })
}

#[derive(Clone, Debug)]
enum Kernel {
    Conv(Box<ConvKernel>),
    FullyConnected(Box<crate::fully_connected::FcKernel>),
    AvgPool {
        input: usize,
        output: usize,
        in_shape: [usize; 4],
        out_shape: [usize; 4],
        filter: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        act: [i32; 2],
        /// MAX_POOL_2D: the window's largest value instead of its rounded mean.
        max: bool,
    },
    Copy {
        input: usize,
        output: usize,
    },
    Softmax {
        input: usize,
        output: usize,
        depth: usize,
        multiplier: i32,
        left_shift: i32,
        diff_min: i32,
    },
    Add {
        inputs: [usize; 2],
        output: usize,
        add: crate::add::AddKernel,
    },
    Pad {
        input: usize,
        output: usize,
        in_shape: [usize; 4],
        out_shape: [usize; 4],
        before: [usize; 4],
        value: i8,
    },
    Quantize {
        input: usize,
        output: usize,
        scale: f32,
        zero_point: i32,
    },
    Dequantize {
        input: usize,
        output: usize,
        scale: f32,
        zero_point: i32,
    },
    /// TRANSPOSE_CONV: the filter `[out, kh, kw, in]` as in the file, `pad` the padding before.
    TransposeConv(Box<ConvKernel>),
    /// TRANSPOSE of a 4-D int8 tensor: output axis `i` is input axis `perm[i]`.
    Transpose {
        input: usize,
        output: usize,
        in_shape: [usize; 4],
        perm: [usize; 4],
    },
    Concat(crate::concat::Concat),
    /// An elementwise activation (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6) as the
    /// output for every int8 input, per runtime ([`crate::activations`]).
    Lookup {
        input: usize,
        output: usize,
        micro: crate::activations::Table,
        reference: crate::activations::Table,
    },
    /// ADD with broadcasting or a constant input, SUB and MUL ([`crate::elementwise`]).
    Elementwise(Box<crate::elementwise::Elementwise>),
}

/// Which runtime's arithmetic to reproduce where they differ.
///
/// Int8 FULLY_CONNECTED requantizes with two roundings in TensorFlow Lite Micro (and LiteRT's
/// optimised kernels) but with one in LiteRT's reference kernel; outputs then differ by 1 LSB on
/// some inputs. Files written by `collab::export` give every runtime the same multiplier, but
/// not the same rounding. Int8 LOGISTIC and TANH are fixed-point functions in TensorFlow Lite
/// Micro and float tables in LiteRT (also 1 LSB apart on some inputs; see
/// [`crate::activations`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// TensorFlow Lite Micro (the microcontroller runtime): the default.
    #[default]
    Micro,
    /// LiteRT's reference kernels (`BUILTIN_REF`).
    LiteRtReference,
}

/// A prepared int8 graph.
#[derive(Clone, Debug)]
pub struct Interpreter {
    flavor: Flavor,
    kernels: Vec<Kernel>,
    /// Element count of every tensor that is computed (0 for constants).
    sizes: Vec<usize>,
    float: Vec<bool>,
    inputs: Vec<(usize, Port)>,
    outputs: Vec<(usize, Port)>,
    /// Name and tensor shapes of every operator, for [`Interpreter::run_profiled`].
    ops: Vec<OpTime>,
}

/// One operator of a profiled run ([`Interpreter::run_profiled`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpTime {
    /// Position in the graph's operator list.
    pub index: usize,
    /// Builtin name, e.g. `CONV_2D`.
    pub op: String,
    /// Shapes of its inputs (activations and constants, in the file's order; absent optional
    /// inputs left out).
    pub inputs: Vec<Vec<usize>>,
    /// Shape of its first output.
    pub output: Vec<usize>,
    /// The kernel it ran on: `"avx512-vnni"`, `"avx512-vnni-sparse"` (the N:M kernel,
    /// [`Kernels::Sparse`]), `"avx2"` or `"portable"`.
    pub kernel: &'static str,
    /// Seconds it took (0 until run).
    pub seconds: f64,
}

pub(crate) fn bad(n: usize, op: &str, what: impl std::fmt::Display) -> TfliteError {
    TfliteError::Unsupported(format!("operator {n} ({op}): {what}"))
}

/// `(scale, zero point)` of a per-tensor quantized tensor.
pub(crate) fn per_tensor(t: &TensorInfo, n: usize, op: &str) -> Result<(f32, i32), TfliteError> {
    let q = t.quantization.as_ref().ok_or_else(|| {
        bad(
            n,
            op,
            format!("tensor `{}` has no quantization parameters", t.name),
        )
    })?;
    let scale = q.scale[0];
    let zp = q.zero_point.first().copied().unwrap_or(0);
    if q.scale.len() != 1 || !(scale.is_finite() && scale > 0.0) || !(-128..=127).contains(&zp) {
        return Err(bad(
            n,
            op,
            format!(
                "tensor `{}` needs one positive scale and an int8 zero point (has {:?} / {:?})",
                t.name, q.scale, q.zero_point
            ),
        ));
    }
    Ok((scale, zp as i32))
}

/// TFLite's `CalculateActivationRangeQuantized` for int8.
pub(crate) fn activation_range(act: Activation, scale: f32, zp: i32) -> Result<[i32; 2], String> {
    // As TFLite: the bound must quantize into int32, else the model is refused.
    let q = |f: f32| -> Result<i32, String> {
        let t = (f / scale).round();
        if !(t >= i32::MIN as f32 && t <= i32::MAX as f32) {
            return Err(format!(
                "the fused activation bound {f} overflows int32 at output scale {scale}"
            ));
        }
        Ok(zp.wrapping_add(t as i32))
    };
    Ok(match act {
        Activation::None => [-128, 127],
        Activation::Relu => [q(0.0)?.max(-128), 127],
        Activation::Relu6 => [q(0.0)?.max(-128), q(6.0)?.min(127)],
        Activation::ReluN1To1 => [q(-1.0)?.max(-128), q(1.0)?.min(127)],
        Activation::Other(a) => return Err(format!("fused activation {a} is not supported")),
    })
}

/// TFLite's output size and leading padding for one spatial dimension (`None` when the window
/// does not fit). The trailing padding of SAME is the rest:
/// `(out − 1) · stride + (filter − 1) · dilation + 1 − input − leading`, at least 0.
pub fn out_and_pad(
    padding: Padding,
    input: usize,
    filter: usize,
    stride: usize,
    dilation: usize,
) -> Option<(usize, usize)> {
    let effective = (filter - 1).checked_mul(dilation)?.checked_add(1)?;
    let out = match padding {
        Padding::Same => input.div_ceil(stride),
        Padding::Valid => (input + stride).checked_sub(effective)? / stride,
    };
    let total = ((out.checked_sub(1)?) * stride + effective).saturating_sub(input);
    Some((out, total / 2))
}

fn shape4(t: &TensorInfo, n: usize, op: &str) -> Result<[usize; 4], TfliteError> {
    <[usize; 4]>::try_from(t.shape.as_slice()).map_err(|_| {
        bad(
            n,
            op,
            format!("tensor `{}` must be 4-D, is {:?}", t.name, t.shape),
        )
    })
}

/// The values of a constant int32 tensor of `len` values (a shape, a permutation), if it is one.
fn const_i32(t: &TensorInfo, len: usize) -> Option<Vec<i32>> {
    match (t.dtype, t.data.as_deref()) {
        (TensorType::Int32, Some(d)) if d.len() == 4 * len => Some(
            d.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        _ => None,
    }
}

fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

fn const_i8<'a>(t: &'a TensorInfo, n: usize, op: &str) -> Result<&'a [u8], TfliteError> {
    if t.dtype != TensorType::Int8 {
        return Err(bad(
            n,
            op,
            format!("weights `{}` must be int8, are {:?}", t.name, t.dtype),
        ));
    }
    t.data
        .as_deref()
        .ok_or_else(|| bad(n, op, format!("weights `{}` are not constant", t.name)))
}

fn bias_i32(
    graph: &Graph,
    index: Option<&i32>,
    units: usize,
    n: usize,
    op: &str,
) -> Result<Vec<i32>, TfliteError> {
    let Some(&i) = index.filter(|i| **i >= 0) else {
        return Ok(vec![0; units]);
    };
    let t = &graph.tensors[i as usize];
    let data = t.data.as_deref().filter(|_| t.dtype == TensorType::Int32);
    let Some(data) = data.filter(|d| d.len() == units * 4) else {
        return Err(bad(
            n,
            op,
            format!("bias `{}` must be {units} constant int32 values", t.name),
        ));
    };
    Ok(data
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Per-output-channel weight scales (zero points must be 0).
fn filter_scales(
    t: &TensorInfo,
    units: usize,
    n: usize,
    op: &str,
) -> Result<Vec<f32>, TfliteError> {
    let q = t
        .quantization
        .as_ref()
        .ok_or_else(|| bad(n, op, format!("weights `{}` are not quantized", t.name)))?;
    if q.zero_point.iter().any(|z| *z != 0) {
        return Err(bad(
            n,
            op,
            format!("weights `{}` must have zero point 0", t.name),
        ));
    }
    let scales = match q.scale.len() {
        1 => vec![q.scale[0]; units],
        l if l == units => q.scale.clone(),
        l => {
            return Err(bad(
                n,
                op,
                format!(
                    "weights `{}` have {l} scales for {units} output channels",
                    t.name
                ),
            ));
        }
    };
    if scales.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(bad(
            n,
            op,
            format!("weights `{}` have an invalid scale", t.name),
        ));
    }
    Ok(scales)
}

impl Interpreter {
    /// Check the graph and precompute every kernel's constants; TFLite Micro's arithmetic.
    pub fn new(graph: &Graph) -> Result<Self, TfliteError> {
        Self::with_flavor(graph, Flavor::Micro)
    }

    /// As [`new`](Self::new), reproducing `flavor`'s arithmetic.
    pub fn with_flavor(graph: &Graph, flavor: Flavor) -> Result<Self, TfliteError> {
        let count = graph.tensors.len();
        let mut sizes = vec![0usize; count];
        let mut float = vec![false; count];
        let mut total = 0usize;
        for (i, t) in graph.tensors.iter().enumerate() {
            if t.data.is_some() {
                continue;
            }
            let size = elements(&t.shape)
                .filter(|s| *s <= MAX_ACTIVATION_BYTES / 4)
                .ok_or_else(|| {
                    TfliteError::Unsupported(format!(
                        "tensor {i} (`{}`) has shape {:?}: too large",
                        t.name, t.shape
                    ))
                })?;
            total = total.saturating_add(size * t.dtype.size().unwrap_or(1));
            sizes[i] = size;
            float[i] = t.dtype == TensorType::Float32;
        }
        if total > MAX_ACTIVATION_BYTES {
            return Err(TfliteError::Unsupported(format!(
                "the activations need {total} bytes, more than the {MAX_ACTIVATION_BYTES} allowed"
            )));
        }
        let port = |i: i32, what: &str| -> Result<(usize, Port), TfliteError> {
            if i < 0 {
                return Err(TfliteError::BadReference(format!("{what} is tensor {i}")));
            }
            let t = &graph.tensors[i as usize];
            let (scale, zero_point) = match t.dtype {
                TensorType::Float32 => (1.0, 0),
                TensorType::Int8 => per_tensor(t, 0, what)?,
                other => {
                    return Err(TfliteError::Unsupported(format!(
                        "{what} `{}` is {other:?}; only int8 and float32 are supported",
                        t.name
                    )));
                }
            };
            Ok((
                i as usize,
                Port {
                    name: t.name.clone(),
                    shape: t.shape.clone(),
                    dtype: t.dtype,
                    scale,
                    zero_point,
                },
            ))
        };
        let inputs = graph
            .inputs
            .iter()
            .map(|i| port(*i, "graph input"))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = graph
            .outputs
            .iter()
            .map(|i| port(*i, "graph output"))
            .collect::<Result<Vec<_>, _>>()?;
        // Every tensor an operator reads must be a graph input, a constant or computed before.
        let mut ready: Vec<bool> = graph.tensors.iter().map(|t| t.data.is_some()).collect();
        for (i, _) in &inputs {
            ready[*i] = true;
        }
        let mut kernels = Vec::with_capacity(graph.operators.len());
        for (n, op) in graph.operators.iter().enumerate() {
            let name = op.op.as_str();
            for &i in &op.inputs {
                if i >= 0 && !ready[i as usize] {
                    return Err(bad(
                        n,
                        name,
                        format!("reads tensor {i} before it is computed"),
                    ));
                }
            }
            let kernel = Self::prepare(graph, n, op, &sizes)?;
            for &o in &op.outputs {
                if o < 0 || graph.tensors[o as usize].data.is_some() {
                    return Err(bad(
                        n,
                        name,
                        format!("writes to tensor {o}, a constant or none"),
                    ));
                }
                ready[o as usize] = true;
            }
            kernels.push(kernel);
        }
        for (i, p) in &outputs {
            if !ready[*i] {
                return Err(TfliteError::BadReference(format!(
                    "graph output `{}` is never computed",
                    p.name
                )));
            }
        }
        let shape = |i: &i32| graph.tensors[*i as usize].shape.clone();
        let ops = graph
            .operators
            .iter()
            .enumerate()
            .map(|(index, op)| OpTime {
                index,
                op: op.op.clone(),
                inputs: op.inputs.iter().filter(|i| **i >= 0).map(shape).collect(),
                output: op.outputs.first().map(shape).unwrap_or_default(),
                kernel: "portable",
                seconds: 0.0,
            })
            .collect();
        Ok(Self {
            flavor,
            kernels,
            sizes,
            float,
            inputs: inputs.into_iter().collect(),
            outputs,
            ops,
        })
    }

    fn prepare(
        graph: &Graph,
        n: usize,
        op: &crate::reader::Operator,
        sizes: &[usize],
    ) -> Result<Kernel, TfliteError> {
        let name = op.op.as_str();
        let tensor = |k: usize| -> Result<(usize, &TensorInfo), TfliteError> {
            let i = *op
                .inputs
                .get(k)
                .filter(|i| **i >= 0)
                .ok_or_else(|| bad(n, name, format!("input {k} is missing")))?;
            Ok((i as usize, &graph.tensors[i as usize]))
        };
        let out = || -> Result<(usize, &TensorInfo), TfliteError> {
            let o = *op
                .outputs
                .first()
                .ok_or_else(|| bad(n, name, "has no output"))?;
            Ok((o as usize, &graph.tensors[o as usize]))
        };
        let int8 = |t: &TensorInfo| -> Result<(), TfliteError> {
            if t.dtype != TensorType::Int8 || t.data.is_some() {
                return Err(bad(
                    n,
                    name,
                    format!("tensor `{}` must be a computed int8 tensor", t.name),
                ));
            }
            Ok(())
        };
        let (oi, ot) = out()?;
        Ok(match (name, &op.options) {
            (
                "CONV_2D" | "DEPTHWISE_CONV_2D",
                Options::Conv {
                    padding,
                    stride,
                    dilation,
                    activation,
                    depth_multiplier,
                },
            ) => {
                let depthwise = name == "DEPTHWISE_CONV_2D";
                let (ii, it) = tensor(0)?;
                let (_, ft) = tensor(1)?;
                int8(it)?;
                int8(ot)?;
                let in_shape = shape4(it, n, name)?;
                let out_shape = shape4(ot, n, name)?;
                let fshape = shape4(ft, n, name)?;
                let filter = const_i8(ft, n, name)?;
                let units = out_shape[3];
                let (kernel, multiplier) = if depthwise {
                    if fshape[0] != 1 || fshape[3] != units || in_shape[3] == 0 {
                        return Err(bad(
                            n,
                            name,
                            format!("filter shape {fshape:?} does not fit"),
                        ));
                    }
                    let m = units / in_shape[3];
                    if m * in_shape[3] != units
                        || (*depth_multiplier != 0 && *depth_multiplier != m)
                    {
                        return Err(bad(
                            n,
                            name,
                            "output channels ≠ input channels × multiplier",
                        ));
                    }
                    ([fshape[1], fshape[2]], m)
                } else {
                    if fshape[0] != units || fshape[3] != in_shape[3] {
                        return Err(bad(
                            n,
                            name,
                            format!(
                                "filter {fshape:?} does not fit input {in_shape:?} → {out_shape:?}"
                            ),
                        ));
                    }
                    ([fshape[1], fshape[2]], 1)
                };
                let (in_scale, in_zp) = per_tensor(it, n, name)?;
                let (out_scale, out_zp) = per_tensor(ot, n, name)?;
                let mut pad = [0; 2];
                for d in 0..2 {
                    let (o, p) =
                        out_and_pad(*padding, in_shape[1 + d], kernel[d], stride[d], dilation[d])
                            .filter(|_| kernel[d] > 0)
                            .ok_or_else(|| bad(n, name, "the filter is larger than the input"))?;
                    if o != out_shape[1 + d] {
                        return Err(bad(
                            n,
                            name,
                            format!(
                                "output shape {out_shape:?} does not follow from the input {in_shape:?}"
                            ),
                        ));
                    }
                    pad[d] = p;
                }
                if in_shape[0] != out_shape[0] {
                    return Err(bad(n, name, "batch sizes differ"));
                }
                let scales = filter_scales(ft, units, n, name)?;
                let (mut mult, mut shift) = (Vec::new(), Vec::new());
                for s in &scales {
                    // PopulateConvolutionQuantizationParams: in double.
                    let (m, sh) =
                        quantize_multiplier(in_scale as f64 * *s as f64 / out_scale as f64);
                    mult.push(m);
                    shift.push(sh);
                }
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
                let bias = bias_i32(graph, op.inputs.get(2), units, n, name)?;
                let act = activation_range(*activation, out_scale, out_zp)
                    .map_err(|e| bad(n, name, e))?;
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
                    requant: Requant {
                        multiplier: mult,
                        shift,
                    },
                    act,
                    depthwise,
                    multiplier,
                    fast: None,
                });
                k.fast = build_fast(&k, Kernels::Best);
                Kernel::Conv(k)
            }
            ("FULLY_CONNECTED", Options::FullyConnected { activation, .. }) => {
                let (ii, it) = tensor(0)?;
                let (_, ft) = tensor(1)?;
                int8(it)?;
                int8(ot)?;
                if ft.shape.len() != 2 {
                    return Err(bad(
                        n,
                        name,
                        format!("weights must be [units, depth], are {:?}", ft.shape),
                    ));
                }
                let (units, depth) = (ft.shape[0], ft.shape[1]);
                let size = sizes[ii];
                if depth == 0 || !size.is_multiple_of(depth) || sizes[oi] != size / depth * units {
                    return Err(bad(n, name, "input, weight and output sizes do not fit"));
                }
                let (in_scale, in_zp) = per_tensor(it, n, name)?;
                let (out_scale, out_zp) = per_tensor(ot, n, name)?;
                let scales = filter_scales(ft, units, n, name)?;
                if scales.iter().any(|s| *s != scales[0]) {
                    return Err(bad(
                        n,
                        name,
                        "per-channel fully-connected weights are not supported",
                    ));
                }
                // GetQuantizedConvolutionMultipler: the product in float, the division in double.
                let (multiplier, shift) =
                    quantize_multiplier((in_scale * scales[0]) as f64 / out_scale as f64);
                let multiplier = vec![multiplier; units];
                let shift = vec![shift; units];
                Kernel::FullyConnected(Box::new(crate::fully_connected::FcKernel::new(
                    [ii, oi],
                    [size / depth, depth, units],
                    const_i8(ft, n, name)?.iter().map(|b| *b as i8).collect(),
                    bias_i32(graph, op.inputs.get(2), units, n, name)?,
                    [-in_zp, out_zp],
                    multiplier,
                    shift,
                    activation_range(*activation, out_scale, out_zp)
                        .map_err(|e| bad(n, name, e))?,
                )))
            }
            (
                "AVERAGE_POOL_2D" | "MAX_POOL_2D",
                Options::Pool {
                    padding,
                    stride,
                    filter,
                    activation,
                },
            ) => {
                let (ii, it) = tensor(0)?;
                int8(it)?;
                int8(ot)?;
                let in_shape = shape4(it, n, name)?;
                let out_shape = shape4(ot, n, name)?;
                let (in_q, out_q) = (per_tensor(it, n, name)?, per_tensor(ot, n, name)?);
                if in_q != out_q || in_shape[3] != out_shape[3] || in_shape[0] != out_shape[0] {
                    return Err(bad(
                        n,
                        name,
                        "input and output must share quantization and channels",
                    ));
                }
                let mut pad = [0; 2];
                for d in 0..2 {
                    let (o, p) = out_and_pad(*padding, in_shape[1 + d], filter[d], stride[d], 1)
                        .ok_or_else(|| bad(n, name, "the filter is larger than the input"))?;
                    if o != out_shape[1 + d] {
                        return Err(bad(n, name, "output shape does not follow from the input"));
                    }
                    pad[d] = p;
                }
                Kernel::AvgPool {
                    input: ii,
                    output: oi,
                    in_shape,
                    out_shape,
                    filter: *filter,
                    stride: *stride,
                    pad,
                    act: activation_range(*activation, out_q.0, out_q.1)
                        .map_err(|e| bad(n, name, e))?,
                    max: name == "MAX_POOL_2D",
                }
            }
            ("RESHAPE", _) => {
                let (ii, it) = tensor(0)?;
                if it.dtype != ot.dtype || it.data.is_some() || sizes[ii] != sizes[oi] {
                    return Err(bad(
                        n,
                        name,
                        "input and output must have the same type and size",
                    ));
                }
                if it.dtype == TensorType::Int8
                    && per_tensor(it, n, name)? != per_tensor(ot, n, name)?
                {
                    return Err(bad(n, name, "input and output must share quantization"));
                }
                Kernel::Copy {
                    input: ii,
                    output: oi,
                }
            }
            ("SOFTMAX", Options::Softmax { beta }) => {
                let (ii, it) = tensor(0)?;
                int8(it)?;
                int8(ot)?;
                let depth = *it.shape.last().unwrap_or(&0);
                if depth == 0 || sizes[ii] != sizes[oi] {
                    return Err(bad(n, name, "input and output sizes differ"));
                }
                let (in_scale, _) = per_tensor(it, n, name)?;
                let (out_scale, out_zp) = per_tensor(ot, n, name)?;
                if (out_scale - 1.0 / 256.0).abs() > 0.001 / 256.0 || out_zp != -128 {
                    return Err(bad(
                        n,
                        name,
                        "int8 softmax output must have scale 1/256, zero point −128",
                    ));
                }
                // PreprocessSoftmaxScaling with 5 integer bits, and CalculateInputRadius.
                const BITS: i32 = 5;
                let real = (*beta as f64 * in_scale as f64 * (1i64 << (31 - BITS)) as f64)
                    .min((1i64 << 31) as f64 - 1.0);
                let (multiplier, left_shift) = quantize_multiplier(real);
                if !(0..=31).contains(&left_shift) {
                    return Err(bad(n, name, "input scale × beta is out of range"));
                }
                let radius = ((((1i64 << BITS) - 1) as f64 * (1i64 << (31 - BITS)) as f64)
                    / (1i64 << left_shift) as f64)
                    .floor();
                Kernel::Softmax {
                    input: ii,
                    output: oi,
                    depth,
                    multiplier,
                    left_shift,
                    diff_min: -(radius as i32),
                }
            }
            ("ADD", Options::Add { activation }) if crate::elementwise::is_general(graph, op) => {
                Self::elementwise(graph, n, op, *activation)?
            }
            ("MUL", Options::Mul { activation }) | ("SUB", Options::Sub { activation }) => {
                Self::elementwise(graph, n, op, *activation)?
            }
            ("ADD", Options::Add { activation }) => {
                let (ai, at) = tensor(0)?;
                let (bi, bt) = tensor(1)?;
                int8(at)?;
                int8(bt)?;
                int8(ot)?;
                if at.shape != bt.shape || at.shape != ot.shape {
                    return Err(bad(
                        n,
                        name,
                        "broadcasting is not supported: shapes must be equal",
                    ));
                }
                let (sa, za) = per_tensor(at, n, name)?;
                let (sb, zb) = per_tensor(bt, n, name)?;
                let (so, zo) = per_tensor(ot, n, name)?;
                let act = activation_range(*activation, so, zo).map_err(|e| bad(n, name, e))?;
                Kernel::Add {
                    inputs: [ai, bi],
                    output: oi,
                    add: crate::add::AddKernel::new(crate::add::AddParams::new(
                        (sa, za),
                        (sb, zb),
                        (so, zo),
                        act,
                    )),
                }
            }
            ("PAD", _) => {
                let (ii, it) = tensor(0)?;
                let (_, pt) = tensor(1)?;
                int8(it)?;
                int8(ot)?;
                let in_shape = shape4(it, n, name)?;
                let out_shape = shape4(ot, n, name)?;
                let pads: Vec<i64> = match (pt.dtype, pt.data.as_deref()) {
                    (TensorType::Int32, Some(d)) if d.len() == 32 => d
                        .chunks_exact(4)
                        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                        .collect(),
                    (TensorType::Int64, Some(d)) if d.len() == 64 => d
                        .chunks_exact(8)
                        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                        .collect(),
                    _ => return Err(bad(n, name, "paddings must be a constant [4, 2] tensor")),
                };
                let mut before = [0; 4];
                for d in 0..4 {
                    let (b, a) = (pads[2 * d], pads[2 * d + 1]);
                    if b < 0 || a < 0 || in_shape[d] as i64 + b + a != out_shape[d] as i64 {
                        return Err(bad(n, name, "paddings do not fit the shapes"));
                    }
                    before[d] = b as usize;
                }
                if per_tensor(it, n, name)? != per_tensor(ot, n, name)? {
                    return Err(bad(n, name, "input and output must share quantization"));
                }
                Kernel::Pad {
                    input: ii,
                    output: oi,
                    in_shape,
                    out_shape,
                    before,
                    value: per_tensor(ot, n, name)?.1 as i8,
                }
            }
            ("QUANTIZE", _) => {
                let (ii, it) = tensor(0)?;
                int8(ot)?;
                if it.dtype != TensorType::Float32 || sizes[ii] != sizes[oi] {
                    return Err(bad(
                        n,
                        name,
                        "only float32 → int8 of the same size is supported",
                    ));
                }
                let (scale, zero_point) = per_tensor(ot, n, name)?;
                Kernel::Quantize {
                    input: ii,
                    output: oi,
                    scale,
                    zero_point,
                }
            }
            ("DEQUANTIZE", _) => {
                let (ii, it) = tensor(0)?;
                int8(it)?;
                if ot.dtype != TensorType::Float32 || sizes[ii] != sizes[oi] {
                    return Err(bad(
                        n,
                        name,
                        "only int8 → float32 of the same size is supported",
                    ));
                }
                let (scale, zero_point) = per_tensor(it, n, name)?;
                Kernel::Dequantize {
                    input: ii,
                    output: oi,
                    scale,
                    zero_point,
                }
            }
            (
                "TRANSPOSE_CONV",
                Options::TransposeConv {
                    padding,
                    stride,
                    activation,
                },
            ) => {
                // Inputs: output shape, weights [out, kh, kw, in], input, optional bias.
                let (_, st) = tensor(0)?;
                let (_, ft) = tensor(1)?;
                let (ii, it) = tensor(2)?;
                int8(it)?;
                int8(ot)?;
                let in_shape = shape4(it, n, name)?;
                let out_shape = shape4(ot, n, name)?;
                let fshape = shape4(ft, n, name)?;
                let filter = const_i8(ft, n, name)?;
                let declared: Vec<usize> = match const_i32(st, 4) {
                    Some(v) => v.into_iter().map(|d| d.max(0) as usize).collect(),
                    None => {
                        return Err(bad(
                            n,
                            name,
                            "the output shape must be a constant int32 [4] tensor",
                        ));
                    }
                };
                let units = out_shape[3];
                if declared != out_shape
                    || fshape[0] != units
                    || fshape[3] != in_shape[3]
                    || in_shape[0] != out_shape[0]
                {
                    return Err(bad(
                        n,
                        name,
                        format!(
                            "filter {fshape:?}, input {in_shape:?}, output {out_shape:?} and \
                             output shape {declared:?} do not fit"
                        ),
                    ));
                }
                let kernel = [fshape[1], fshape[2]];
                let pad = [
                    transpose_conv_pad(*padding, out_shape[1], kernel[0], stride[0]),
                    transpose_conv_pad(*padding, out_shape[2], kernel[1], stride[1]),
                ];
                let (in_scale, in_zp) = per_tensor(it, n, name)?;
                let (out_scale, out_zp) = per_tensor(ot, n, name)?;
                let scales = filter_scales(ft, units, n, name)?;
                let (mut mult, mut shift) = (Vec::new(), Vec::new());
                for s in &scales {
                    // PopulateConvolutionQuantizationParams, as for CONV_2D: in double.
                    let (m, sh) =
                        quantize_multiplier(in_scale as f64 * *s as f64 / out_scale as f64);
                    mult.push(m);
                    shift.push(sh);
                }
                Kernel::TransposeConv(Box::new(ConvKernel {
                    input: ii,
                    output: oi,
                    in_shape,
                    out_shape,
                    filter: filter.iter().map(|b| *b as i8 as i32).collect(),
                    kernel,
                    stride: *stride,
                    dilation: [1, 1],
                    pad,
                    bias: bias_i32(graph, op.inputs.get(3), units, n, name)?,
                    input_offset: -in_zp,
                    output_offset: out_zp,
                    requant: Requant {
                        multiplier: mult,
                        shift,
                    },
                    act: activation_range(*activation, out_scale, out_zp)
                        .map_err(|e| bad(n, name, e))?,
                    depthwise: false,
                    multiplier: 1,
                    fast: None,
                }))
            }
            ("TRANSPOSE", _) => {
                let (ii, it) = tensor(0)?;
                let (_, pt) = tensor(1)?;
                int8(it)?;
                int8(ot)?;
                let in_shape = shape4(it, n, name)?;
                let perm: Vec<usize> = match const_i32(pt, 4) {
                    Some(v) => v.into_iter().map(|p| p.max(0) as usize).collect(),
                    None => return Err(bad(n, name, "perm must be a constant int32 [4] tensor")),
                };
                let perm: [usize; 4] = [perm[0], perm[1], perm[2], perm[3]];
                let mut sorted = perm;
                sorted.sort_unstable();
                if sorted != [0, 1, 2, 3] {
                    return Err(bad(n, name, format!("perm {perm:?} is not a permutation")));
                }
                if perm.map(|a| in_shape[a]) != shape4(ot, n, name)? {
                    return Err(bad(n, name, "the output shape does not follow from perm"));
                }
                if per_tensor(it, n, name)? != per_tensor(ot, n, name)? {
                    return Err(bad(n, name, "input and output must share quantization"));
                }
                Kernel::Transpose {
                    input: ii,
                    output: oi,
                    in_shape,
                    perm,
                }
            }
            ("CONCATENATION", Options::Concatenation { axis, activation }) => Kernel::Concat(
                crate::concat::Concat::prepare(graph, n, op, *axis, *activation)?,
            ),
            ("LOGISTIC" | "TANH" | "HARD_SWISH" | "LEAKY_RELU" | "RELU" | "RELU6", options) => {
                let (ii, it) = tensor(0)?;
                int8(it)?;
                int8(ot)?;
                if sizes[ii] != sizes[oi] {
                    return Err(bad(n, name, "input and output sizes differ"));
                }
                let alpha = match options {
                    Options::LeakyRelu { alpha } => Some(*alpha),
                    _ => None,
                };
                let t = crate::activations::tables(
                    name,
                    alpha,
                    per_tensor(it, n, name)?,
                    per_tensor(ot, n, name)?,
                )
                .map_err(|e| bad(n, name, e))?;
                Kernel::Lookup {
                    input: ii,
                    output: oi,
                    micro: t.micro,
                    reference: t.reference,
                }
            }
            (other, options) => {
                return Err(bad(
                    n,
                    other,
                    format!(
                        "this operator (options {options:?}) is not supported by the int8 interpreter"
                    ),
                ));
            }
        })
    }

    /// ADD (broadcasting or with a constant), SUB or MUL of operator `n`.
    fn elementwise(
        graph: &Graph,
        n: usize,
        op: &crate::reader::Operator,
        activation: Activation,
    ) -> Result<Kernel, TfliteError> {
        crate::elementwise::prepare(graph, n, op, activation)
            .map(|k| Kernel::Elementwise(Box::new(k)))
    }

    /// Choose the convolution kernels (repacks the weights); results are identical for all.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        // `Portable` builds no fast form: every convolution then runs `conv`.
        for k in &mut self.kernels {
            match k {
                Kernel::Conv(c) => c.fast = build_fast(c, kernels),
                Kernel::FullyConnected(fc) => fc.set_kernels(kernels),
                Kernel::Add { add, .. } => add.set_kernels(kernels),
                _ => {}
            }
        }
    }

    /// The kernels the convolutions, fully-connected layers and same-shape ADDs run on:
    /// `"avx512-vnni"` (the AVX-512 tier),
    /// `"avx2"` or `"portable"` (the first that any of them uses, in that order).
    pub fn kernel_name(&self) -> &'static str {
        let mut name = "portable";
        for k in &self.kernels {
            let this = kernel_of(k);
            match this {
                "avx512-vnni" => return this,
                "avx512-vnni-sparse" => return "avx512-vnni",
                "avx2" => name = this,
                _ => {}
            }
        }
        name
    }

    /// How many CONV_2D and FULLY_CONNECTED layers run the N:M sparse kernel (weights with at
    /// most 4 non-zeros in every run of 8 input values, e.g. 2:4 pruned along input channels, on
    /// a CPU with AVX-512 VNNI and VBMI, [`Kernels::Sparse`]).
    pub fn sparse_layers(&self) -> usize {
        self.kernels
            .iter()
            .filter(|k| kernel_of(k) == "avx512-vnni-sparse")
            .count()
    }

    /// Whether the AVX-512 VNNI kernels run the convolutions (ordinary ones and depthwise ones
    /// with multiplier 1) or the fully-connected layers (the first that any of them uses; the
    /// CPU has AVX-512 F/BW/VL/VNNI and [`set_kernels`](Self::set_kernels) did not choose the
    /// portable ones).
    pub fn uses_vnni(&self) -> bool {
        self.kernel_name() == "avx512-vnni"
    }

    /// Bytes of all computed tensors together.
    pub fn activation_bytes(&self) -> usize {
        self.sizes
            .iter()
            .zip(&self.float)
            .map(|(n, f)| n * if *f { 4 } else { 1 })
            .sum()
    }

    /// Multiply-accumulates of one run (convolutions and fully-connected layers), an estimate
    /// of the work a run takes.
    pub fn macs(&self) -> u64 {
        self.kernels
            .iter()
            .map(|k| match k {
                Kernel::Conv(c) => {
                    let per = if c.depthwise { 1 } else { c.in_shape[3] };
                    (c.out_shape.iter().product::<usize>() * c.kernel[0] * c.kernel[1] * per) as u64
                }
                Kernel::FullyConnected(fc) => (fc.batches * fc.depth * fc.units) as u64,
                Kernel::AvgPool {
                    out_shape, filter, ..
                } => (out_shape.iter().product::<usize>() * filter[0] * filter[1]) as u64,
                _ => 0,
            })
            .sum()
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> Vec<&Port> {
        self.inputs.iter().map(|(_, p)| p).collect()
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> Vec<&Port> {
        self.outputs.iter().map(|(_, p)| p).collect()
    }

    /// Run the graph on one value per graph input (int8 or float as the input tensor is).
    pub fn run(&self, inputs: &[Data]) -> Result<Vec<Data>, TfliteError> {
        let (i8s, f32s) = self.run_all(inputs)?;
        Ok(self.collect_outputs(&i8s, &f32s))
    }

    /// Run the graph and return every computed tensor by index (`None` for constants): for
    /// debugging a layer against another runtime's intermediate tensors.
    pub fn run_traced(&self, inputs: &[Data]) -> Result<Vec<Option<Data>>, TfliteError> {
        let (i8s, f32s) = self.run_all(inputs)?;
        Ok((0..self.sizes.len())
            .map(|i| {
                if self.float[i] && !f32s[i].is_empty() {
                    Some(Data::F32(f32s[i].clone()))
                } else if !i8s[i].is_empty() {
                    Some(Data::I8(i8s[i].clone()))
                } else {
                    None
                }
            })
            .collect())
    }

    /// Run the graph as [`run`](Self::run) and time every operator: the outputs and, per
    /// operator in graph order, its name, shapes, kernel and seconds. Timing adds a clock
    /// read per operator; sum over many runs (or take medians) for stable figures.
    pub fn run_profiled(&self, inputs: &[Data]) -> Result<(Vec<Data>, Vec<OpTime>), TfliteError> {
        let mut ops = self.ops.clone();
        let mut timed = |n: usize, seconds: f64| ops[n].seconds = seconds;
        let (i8s, f32s) = self.run_timed(inputs, Some(&mut timed))?;
        for (op, k) in ops.iter_mut().zip(&self.kernels) {
            op.kernel = kernel_of(k);
        }
        Ok((self.collect_outputs(&i8s, &f32s), ops))
    }

    fn collect_outputs(&self, i8s: &[Vec<i8>], f32s: &[Vec<f32>]) -> Vec<Data> {
        self.outputs
            .iter()
            .map(|(i, _)| {
                if self.float[*i] {
                    Data::F32(f32s[*i].clone())
                } else {
                    Data::I8(i8s[*i].clone())
                }
            })
            .collect()
    }

    #[allow(clippy::type_complexity)]
    fn run_all(&self, inputs: &[Data]) -> Result<(Vec<Vec<i8>>, Vec<Vec<f32>>), TfliteError> {
        self.run_timed(inputs, None)
    }

    /// [`run_all`](Self::run_all), calling `timed(operator, seconds)` after each operator if
    /// given (no clock is read otherwise).
    #[allow(clippy::type_complexity)]
    fn run_timed(
        &self,
        inputs: &[Data],
        mut timed: Option<&mut dyn FnMut(usize, f64)>,
    ) -> Result<(Vec<Vec<i8>>, Vec<Vec<f32>>), TfliteError> {
        if inputs.len() != self.inputs.len() {
            return Err(TfliteError::Input(format!(
                "{} inputs given, the model has {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let mut i8s: Vec<Vec<i8>> = vec![Vec::new(); self.sizes.len()];
        let mut f32s: Vec<Vec<f32>> = vec![Vec::new(); self.sizes.len()];
        for ((i, port), data) in self.inputs.iter().zip(inputs) {
            match (data, self.float[*i]) {
                (Data::I8(v), false) if v.len() == self.sizes[*i] => i8s[*i] = v.clone(),
                (Data::F32(v), true) if v.len() == self.sizes[*i] => f32s[*i] = v.clone(),
                _ => {
                    return Err(TfliteError::Input(format!(
                        "input `{}` takes {} {:?} values of shape {:?}; got {} {}",
                        port.name,
                        self.sizes[*i],
                        port.dtype,
                        port.shape,
                        data.len(),
                        if matches!(data, Data::I8(_)) {
                            "int8"
                        } else {
                            "float"
                        }
                    )));
                }
            }
        }
        for (n, k) in self.kernels.iter().enumerate() {
            match timed.as_mut() {
                Some(timed) => {
                    let start = std::time::Instant::now();
                    self.step(k, &mut i8s, &mut f32s);
                    timed(n, start.elapsed().as_secs_f64());
                }
                None => self.step(k, &mut i8s, &mut f32s),
            }
        }
        Ok((i8s, f32s))
    }

    /// Run a model with one int8 input and one int8 output.
    pub fn run_i8(&self, input: &[i8]) -> Result<Vec<i8>, TfliteError> {
        match self.run(&[Data::I8(input.to_vec())])?.pop() {
            Some(Data::I8(v)) if self.outputs.len() == 1 => Ok(v),
            _ => Err(TfliteError::Input(
                "run_i8 needs a model with one int8 output; use run".into(),
            )),
        }
    }

    fn step(&self, k: &Kernel, i8s: &mut [Vec<i8>], f32s: &mut [Vec<f32>]) {
        match k {
            Kernel::Conv(c) => {
                let out = match &c.fast {
                    Some(f) => conv_vnni(c, f, &i8s[c.input]),
                    None => conv(c, &i8s[c.input]),
                };
                i8s[c.output] = out;
            }
            Kernel::FullyConnected(fc) => {
                i8s[fc.output] = fc.run(&i8s[fc.input], self.flavor);
            }
            Kernel::AvgPool {
                input,
                output,
                in_shape,
                out_shape,
                filter,
                stride,
                pad,
                act,
                max: true,
            } => {
                i8s[*output] = max_pool(
                    &i8s[*input],
                    *in_shape,
                    *out_shape,
                    *filter,
                    *stride,
                    *pad,
                    *act,
                );
            }
            Kernel::AvgPool {
                input,
                output,
                in_shape,
                out_shape,
                filter,
                stride,
                pad,
                act,
                max: false,
            } => {
                i8s[*output] = avg_pool(
                    &i8s[*input],
                    *in_shape,
                    *out_shape,
                    *filter,
                    *stride,
                    *pad,
                    *act,
                );
            }
            Kernel::Copy { input, output } => {
                if self.float[*input] {
                    f32s[*output] = f32s[*input].clone();
                } else {
                    i8s[*output] = i8s[*input].clone();
                }
            }
            Kernel::Softmax {
                input,
                output,
                depth,
                multiplier,
                left_shift,
                diff_min,
            } => {
                let x = &i8s[*input];
                let mut out = vec![0i8; x.len()];
                let rescale = |d: i32| crate::fixed::srdhm(d * (1 << left_shift), *multiplier);
                for (row, o) in x.chunks_exact(*depth).zip(out.chunks_exact_mut(*depth)) {
                    let max = row.iter().copied().max().unwrap_or(i8::MIN) as i32;
                    let mut sum = 0i32; // Q12.19
                    for v in row {
                        let d = *v as i32 - max;
                        if d >= *diff_min {
                            sum =
                                sum.wrapping_add(rdbpot(exp_on_negative_values_q5(rescale(d)), 12));
                        }
                    }
                    let (scale, bits_over_unit) = reciprocal(sum, 12);
                    for (v, o) in row.iter().zip(o.iter_mut()) {
                        let d = *v as i32 - max;
                        *o = if d >= *diff_min {
                            let e = exp_on_negative_values_q5(rescale(d));
                            let unsat =
                                rdbpot(crate::fixed::srdhm(scale, e), bits_over_unit + 31 - 8);
                            (unsat - 128).clamp(-128, 127) as i8
                        } else {
                            -128
                        };
                    }
                }
                i8s[*output] = out;
            }
            Kernel::Add {
                inputs,
                output,
                add,
            } => {
                i8s[*output] = add.run(&i8s[inputs[0]], &i8s[inputs[1]]);
            }
            Kernel::Pad {
                input,
                output,
                in_shape,
                out_shape,
                before,
                value,
            } => {
                let x = &i8s[*input];
                let mut out = vec![*value; out_shape.iter().product()];
                let [n, h, w, c] = *in_shape;
                for b in 0..n {
                    for y in 0..h {
                        for xx in 0..w {
                            let src = ((b * h + y) * w + xx) * c;
                            let dst = (((b + before[0]) * out_shape[1] + y + before[1])
                                * out_shape[2]
                                + xx
                                + before[2])
                                * out_shape[3]
                                + before[3];
                            out[dst..dst + c].copy_from_slice(&x[src..src + c]);
                        }
                    }
                }
                i8s[*output] = out;
            }
            Kernel::Quantize {
                input,
                output,
                scale,
                zero_point,
            } => {
                i8s[*output] = f32s[*input]
                    .iter()
                    .map(|v| {
                        let q = (v / scale).round().clamp(-1e9, 1e9) as i32 + zero_point;
                        q.clamp(-128, 127) as i8
                    })
                    .collect();
            }
            Kernel::Dequantize {
                input,
                output,
                scale,
                zero_point,
            } => {
                f32s[*output] = i8s[*input]
                    .iter()
                    .map(|v| (*scale as f64 * (*v as i32 - zero_point) as f64) as f32)
                    .collect();
            }
            Kernel::Transpose {
                input,
                output,
                in_shape,
                perm,
            } => {
                i8s[*output] = transpose4(&i8s[*input], *in_shape, *perm);
            }
            Kernel::TransposeConv(c) => {
                i8s[c.output] = transpose_conv(c, &i8s[c.input]);
            }
            Kernel::Concat(c) => i8s[c.output] = c.run(i8s),
            Kernel::Lookup {
                input,
                output,
                micro,
                reference,
            } => {
                let table = match self.flavor {
                    Flavor::Micro => micro,
                    Flavor::LiteRtReference => reference,
                };
                i8s[*output] = i8s[*input]
                    .iter()
                    .map(|v| table[*v as u8 as usize])
                    .collect();
            }
            Kernel::Elementwise(e) => {
                i8s[e.output] = e.run(self.flavor, i8s);
            }
        }
    }
}

/// TRANSPOSE_CONV as LiteRT's and TFLite Micro's reference kernel computes it: every input
/// value `(x + input_offset)` scattered through the filter `[out, kh, kw, in]` into an int32
/// accumulator (outputs outside `[0, out)` dropped), then bias and the per-channel
/// requantization of CONV_2D.
fn transpose_conv(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    let [nb, ih, iw, ic] = c.in_shape;
    let [_, oh, ow, oc] = c.out_shape;
    let [kh, kw] = c.kernel;
    let mut acc = vec![0i32; nb * oh * ow * oc];
    for b in 0..nb {
        for y in 0..ih {
            for xx in 0..iw {
                let pixel = &x[((b * ih + y) * iw + xx) * ic..][..ic];
                for fy in 0..kh {
                    let oy = (y * c.stride[0] + fy) as isize - c.pad[0] as isize;
                    if oy < 0 || oy >= oh as isize {
                        continue;
                    }
                    for fx in 0..kw {
                        let ox = (xx * c.stride[1] + fx) as isize - c.pad[1] as isize;
                        if ox < 0 || ox >= ow as isize {
                            continue;
                        }
                        let row =
                            &mut acc[((b * oh + oy as usize) * ow + ox as usize) * oc..][..oc];
                        for (o, a) in row.iter_mut().enumerate() {
                            let f = &c.filter[((o * kh + fy) * kw + fx) * ic..][..ic];
                            let dot = f.iter().zip(pixel).fold(0i32, |s, (w, v)| {
                                s.wrapping_add(w.wrapping_mul(*v as i32 + c.input_offset))
                            });
                            *a = a.wrapping_add(dot);
                        }
                    }
                }
            }
        }
    }
    let mut out = vec![0i8; acc.len()];
    for (a, o) in acc.chunks_exact_mut(oc).zip(out.chunks_exact_mut(oc)) {
        for (v, bias) in a.iter_mut().zip(&c.bias) {
            *v = v.wrapping_add(*bias);
        }
        requantize_row_impl(a, c, o);
    }
    out
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

/// One pooling window of an NHWC input: the output pixel it makes and the input pixels it
/// covers, clipped to the input (padded cells are in no window).
struct Window<'a> {
    x: &'a [i8],
    /// First input pixel of the batch, `b · ih · iw`.
    image: usize,
    /// `[iw, ch]`: input width and channels.
    dims: [usize; 2],
    /// The window's top-left corner in input coordinates (negative inside the padding).
    origin: [isize; 2],
    /// Window rows and columns inside the input, relative to `origin`.
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
}

impl<'a> Window<'a> {
    /// Input pixels the window covers.
    fn count(&self) -> i32 {
        (self.rows.len() * self.cols.len()) as i32
    }

    /// Each covered input pixel's channels, `[ch]`, row by row.
    fn pixels(&self) -> impl Iterator<Item = &'a [i8]> + '_ {
        let [iw, ch] = self.dims;
        self.rows.clone().flat_map(move |fy| {
            let y = (self.origin[0] + fy as isize) as usize;
            self.cols.clone().map(move |fx| {
                let xx = (self.origin[1] + fx as isize) as usize;
                &self.x[((self.image + y * iw) + xx) * ch..][..ch]
            })
        })
    }
}

/// A pooling operator over NHWC int8 `x`: `reduce(window, out)` writes each output pixel's
/// `[ch]` values from its window. The one window walk MAX_POOL_2D and AVERAGE_POOL_2D share.
#[inline(always)]
fn pool(
    x: &[i8],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    filter: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    mut reduce: impl FnMut(&Window, &mut [i8]),
) -> Vec<i8> {
    let [nb, ih, iw, ch] = in_shape;
    let [_, oh, ow, _] = out_shape;
    let mut out = vec![0i8; nb * oh * ow * ch];
    let clip = |origin: isize, k: usize, size: usize| {
        (-origin).max(0) as usize..(k as isize).min(size as isize - origin).max(0) as usize
    };
    for b in 0..nb {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * stride[0]) as isize - pad[0] as isize;
                let x0 = (ox * stride[1]) as isize - pad[1] as isize;
                let window = Window {
                    x,
                    image: b * ih * iw,
                    dims: [iw, ch],
                    origin: [y0, x0],
                    rows: clip(y0, filter[0], ih),
                    cols: clip(x0, filter[1], iw),
                };
                reduce(&window, &mut out[((b * oh + oy) * ow + ox) * ch..][..ch]);
            }
        }
    }
    out
}

/// MAX_POOL_2D over NHWC int8 (padded cells are not part of any window), clamped to `act`.
fn max_pool(
    x: &[i8],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    filter: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    act: [i32; 2],
) -> Vec<i8> {
    pool(x, in_shape, out_shape, filter, stride, pad, |window, o| {
        o.fill(i8::MIN);
        for px in window.pixels() {
            for (o, v) in o.iter_mut().zip(px) {
                *o = (*o).max(*v);
            }
        }
        for o in o.iter_mut() {
            *o = (*o as i32).clamp(act[0], act[1]) as i8;
        }
    })
}

/// AVERAGE_POOL_2D: the window's sum per channel (padding excluded from the count), divided
/// rounding half away from zero, clamped. Channels are the inner loop, so it vectorises (AVX2
/// where the CPU has it).
fn avg_pool(
    x: &[i8],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    filter: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    act: [i32; 2],
) -> Vec<i8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; the same safe code runs.
        return unsafe { avg_pool_avx2(x, in_shape, out_shape, filter, stride, pad, act) };
    }
    avg_pool_impl(x, in_shape, out_shape, filter, stride, pad, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avg_pool_avx2(
    x: &[i8],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    filter: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    act: [i32; 2],
) -> Vec<i8> {
    avg_pool_impl(x, in_shape, out_shape, filter, stride, pad, act)
}

#[inline(always)]
fn avg_pool_impl(
    x: &[i8],
    in_shape: [usize; 4],
    out_shape: [usize; 4],
    filter: [usize; 2],
    stride: [usize; 2],
    pad: [usize; 2],
    act: [i32; 2],
) -> Vec<i8> {
    let mut acc = vec![0i32; in_shape[3]];
    pool(x, in_shape, out_shape, filter, stride, pad, |window, o| {
        acc.fill(0);
        for px in window.pixels() {
            for (a, v) in acc.iter_mut().zip(px) {
                *a = a.wrapping_add(*v as i32);
            }
        }
        let count = window.count();
        for (o, a) in o.iter_mut().zip(&acc) {
            let v = if count == 0 {
                0
            } else if *a > 0 {
                (a + count / 2) / count
            } else {
                (a - count / 2) / count
            };
            *o = v.clamp(act[0], act[1]) as i8;
        }
    })
}

/// Whether the CPU has the AVX-512 subsets the vectorised kernels are compiled for.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Branch-free `MultiplyByQuantizedMultiplier` (multipliers are ≥ 0, so the one saturating case
/// of the doubling high multiply, `i32::MIN · i32::MIN`, cannot occur) so the loop vectorises.
#[inline(always)]
fn requantize_row_impl(acc: &[i32], c: &ConvKernel, out: &mut [i8]) {
    let (m, sh) = (&c.requant.multiplier, &c.requant.shift);
    let (zp, lo, hi) = (c.output_offset, c.act[0], c.act[1]);
    for (((o, a), m), s) in out.iter_mut().zip(acc).zip(m).zip(sh) {
        let left = (*s).max(0);
        let right = (-*s).max(0);
        let x = a.wrapping_shl(left as u32) as i64;
        let ab = x * *m as i64;
        let nudge = if ab >= 0 {
            1i64 << 30
        } else {
            1 - (1i64 << 30)
        };
        let q = ab + nudge;
        // Division by 2^31 truncating toward zero.
        let high = ((q + ((q >> 63) & ((1i64 << 31) - 1))) >> 31) as i32;
        let mask = ((1i64 << right) - 1) as i32;
        let remainder = high & mask;
        let threshold = (mask >> 1) + (high >> 31 & 1);
        let v = (high >> right) + i32::from(remainder > threshold);
        *o = v.wrapping_add(zp).clamp(lo, hi) as i8;
    }
}

/// The kernel set operator `k` runs on.
fn kernel_of(k: &Kernel) -> &'static str {
    match k {
        Kernel::Conv(c) => match c.fast {
            Some(Fast::Gemm(..) | Fast::Depthwise(..) | Fast::Narrow(..) | Fast::NarrowDw(..)) => {
                "avx512-vnni"
            }
            Some(Fast::Avx2Gemm(..) | Fast::Avx2Depthwise(..)) => "avx2",
            Some(Fast::Sparse(..)) => "avx512-vnni-sparse",
            None => "portable",
        },
        Kernel::FullyConnected(fc) => fc.kernel_name(),
        Kernel::Add { add, .. } => add.kernel_name(),
        _ => "portable",
    }
}

/// The geometry the SIMD kernels read of convolution `c`.
fn geometry(c: &ConvKernel) -> crate::vnni::Geometry {
    crate::vnni::Geometry {
        in_shape: c.in_shape,
        out_shape: c.out_shape,
        kernel: c.kernel,
        stride: c.stride,
        dilation: c.dilation,
        pad: c.pad,
        input_zp: -c.input_offset,
    }
}

/// CONV_2D / DEPTHWISE_CONV_2D through the AVX-512 VNNI kernels (the same integers as
/// [`conv`]).
fn conv_vnni(c: &ConvKernel, f: &Fast, x: &[i8]) -> Vec<i8> {
    #[cfg(target_arch = "x86_64")]
    {
        let g = geometry(c);
        let mut out = vec![0i8; c.out_shape.iter().product()];
        // SAFETY: `build_fast` builds the VNNI forms only where vnni::available() found AVX-512
        // F/BW/VL/VNNI and the AVX2 forms only where AVX2 is present, for this kernel's
        // geometry; `x` and `out` have its input and output sizes.
        unsafe {
            match f {
                Fast::Gemm(p, rq) => crate::vnni::conv(&g, p, rq, x, &mut out),
                Fast::Depthwise(p, rq) => crate::vnni::depthwise(&g, p, rq, x, &mut out),
                Fast::Avx2Gemm(p, rq) => crate::vnni::avx2::conv(&g, p, rq, x, &mut out),
                Fast::Avx2Depthwise(p, rq) => crate::vnni::avx2::depthwise(&g, p, rq, x, &mut out),
                Fast::Sparse(p, rq) => crate::vnni::sparse::conv(&g, p, rq, x, &mut out),
                Fast::Narrow(p) => crate::vnni::narrow::conv(&g, p, x, &mut out),
                Fast::NarrowDw(p) => crate::vnni::narrow_dw::depthwise(&g, p, x, &mut out),
            }
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = f;
        conv(c, x)
    }
}

/// CONV_2D / DEPTHWISE_CONV_2D: `acc = Σ f·(x + input_offset) + bias`, requantized per channel.
/// Uses AVX2 where the CPU has it (the same integer arithmetic, so the same results).
fn conv(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the features were just detected; the same safe code runs.
        return unsafe { conv_avx512(c, x) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above); conv_avx2 only enables it for
        // the compiler's vectoriser and runs the same safe code.
        return unsafe { conv_avx2(c, x) };
    }
    conv_impl(c, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn conv_avx2(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    conv_impl(c, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn conv_avx512(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    conv_impl(c, x)
}

#[inline(always)]
fn conv_impl(c: &ConvKernel, x: &[i8]) -> Vec<i8> {
    let [nb, ih, iw, ic] = c.in_shape;
    let [_, oh, ow, oc] = c.out_shape;
    let [kh, kw] = c.kernel;
    let mut out = vec![0i8; nb * oh * ow * oc];
    let mut acc = vec![0i32; oc];
    let mut expanded = vec![0i32; oc];
    for b in 0..nb {
        for oy in 0..oh {
            let y0 = (oy * c.stride[0]) as isize - c.pad[0] as isize;
            for ox in 0..ow {
                let x0 = (ox * c.stride[1]) as isize - c.pad[1] as isize;
                acc.copy_from_slice(&c.bias);
                for fy in 0..kh {
                    let y = y0 + (fy * c.dilation[0]) as isize;
                    if y < 0 || y >= ih as isize {
                        continue;
                    }
                    for fx in 0..kw {
                        let xx = x0 + (fx * c.dilation[1]) as isize;
                        if xx < 0 || xx >= iw as isize {
                            continue;
                        }
                        let pixel = &x[((b * ih + y as usize) * iw + xx as usize) * ic..][..ic];
                        let tap = fy * kw + fx;
                        if c.depthwise {
                            let f = &c.filter[tap * oc..][..oc];
                            if c.multiplier == 1 {
                                for ((a, w), v) in acc.iter_mut().zip(f).zip(pixel) {
                                    *a = a.wrapping_add(w.wrapping_mul(*v as i32 + c.input_offset));
                                }
                            } else {
                                for (o, e) in expanded.iter_mut().enumerate() {
                                    *e = pixel[o / c.multiplier] as i32 + c.input_offset;
                                }
                                for ((a, w), v) in acc.iter_mut().zip(f).zip(&expanded) {
                                    *a = a.wrapping_add(w.wrapping_mul(*v));
                                }
                            }
                        } else {
                            let f = &c.filter[tap * ic * oc..][..ic * oc];
                            for (i, v) in pixel.iter().enumerate() {
                                let v = *v as i32 + c.input_offset;
                                if v == 0 {
                                    // A real zero (e.g. after ReLU) adds nothing.
                                    continue;
                                }
                                for (a, w) in acc.iter_mut().zip(&f[i * oc..][..oc]) {
                                    *a = a.wrapping_add(w.wrapping_mul(v));
                                }
                            }
                        }
                    }
                }
                let o = &mut out[((b * oh + oy) * ow + ox) * oc..][..oc];
                requantize_row_impl(&acc, c, o);
            }
        }
    }
    out
}
