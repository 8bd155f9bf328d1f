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

//!
//! Layout: this module holds the public API and the run loop; `prepare` the checks every
//! operator's preparation shares; `ops` one module per operator (or family) with its
//! `prepare`, listed in one table (`ops::OPERATORS`); the inner loops are in
//! `crate::kernels`.

use serde::Serialize;

use crate::TfliteError;
use crate::reader::{Graph, TensorType};

pub(crate) mod ops;
pub(crate) mod prepare;

pub use ops::transpose_conv::transpose_conv_pad;
pub use prepare::out_and_pad;
use prepare::{Ctx, bad, elements, per_tensor};

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

/// One prepared operator, run by [`Interpreter::run`]; each variant's type lives in the
/// operator's module (`ops`).
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// CONV_2D and DEPTHWISE_CONV_2D.
    Conv(Box<crate::kernels::conv::ConvKernel>),
    FullyConnected(Box<ops::fully_connected::FcKernel>),
    /// AVERAGE_POOL_2D and MAX_POOL_2D.
    Pool(ops::pool::Pool),
    Reshape(ops::reshape::Reshape),
    Softmax(ops::softmax::Softmax),
    /// ADD of two tensors of one shape.
    Add(ops::add::Add),
    Pad(ops::pad::Pad),
    Quantize(ops::quantize::Affine),
    Dequantize(ops::quantize::Affine),
    /// TRANSPOSE_CONV: the filter `[out, kh, kw, in]` as in the file, `pad` the padding before.
    TransposeConv(Box<crate::kernels::conv::ConvKernel>),
    Transpose(ops::transpose::Transpose),
    Concat(ops::concat::Concat),
    /// An elementwise activation (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6) as the
    /// output for every int8 input, per runtime ([`crate::activations`]).
    Lookup(ops::activations::Lookup),
    /// ADD with broadcasting or a constant input, SUB and MUL ([`crate::elementwise`]).
    Elementwise(Box<ops::elementwise::Elementwise>),
}

impl Step {
    /// The kernel set it runs on (see [`OpTime::kernel`]).
    fn kernel_name(&self) -> &'static str {
        match self {
            Step::Conv(c) => c.kernel_name(),
            Step::FullyConnected(fc) => fc.kernel_name(),
            Step::Add(a) => a.kernel.kernel_name(),
            _ => "portable",
        }
    }
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
    kernels: Vec<Step>,
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
            let kernel = ops::prepare(&Ctx::new(graph, n, op, &sizes)?)?;
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

    /// Choose the convolution kernels (repacks the weights); results are identical for all.
    pub fn set_kernels(&mut self, kernels: Kernels) {
        // `Portable` builds no fast form: every convolution then runs `conv`.
        for k in &mut self.kernels {
            match k {
                Step::Conv(c) => c.fast = crate::kernels::conv::build_fast(c, kernels),
                Step::FullyConnected(fc) => fc.set_kernels(kernels),
                Step::Add(a) => a.kernel.set_kernels(kernels),
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
            let this = k.kernel_name();
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
            .filter(|k| k.kernel_name() == "avx512-vnni-sparse")
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
                Step::Conv(c) => {
                    let per = if c.depthwise { 1 } else { c.in_shape[3] };
                    (c.out_shape.iter().product::<usize>() * c.kernel[0] * c.kernel[1] * per) as u64
                }
                Step::FullyConnected(fc) => (fc.batches * fc.depth * fc.units) as u64,
                Step::Pool(p) => p.macs(),
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
            op.kernel = k.kernel_name();
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

    fn step(&self, k: &Step, i8s: &mut [Vec<i8>], f32s: &mut [Vec<f32>]) {
        match k {
            Step::Conv(c) => i8s[c.output] = c.run(&i8s[c.input]),
            Step::FullyConnected(fc) => i8s[fc.output] = fc.run(&i8s[fc.input], self.flavor),
            Step::Pool(p) => i8s[p.output] = p.run(&i8s[p.input]),
            Step::Reshape(r) => r.run(self.float[r.input], i8s, f32s),
            Step::Softmax(s) => i8s[s.output] = s.run(&i8s[s.input]),
            Step::Add(a) => i8s[a.output] = a.kernel.run(&i8s[a.inputs[0]], &i8s[a.inputs[1]]),
            Step::Pad(p) => i8s[p.output] = p.run(&i8s[p.input]),
            Step::Quantize(q) => i8s[q.output] = q.quantize(&f32s[q.input]),
            Step::Dequantize(q) => f32s[q.output] = q.dequantize(&i8s[q.input]),
            Step::TransposeConv(c) => {
                i8s[c.output] = crate::kernels::conv::transpose_conv(c, &i8s[c.input]);
            }
            Step::Transpose(t) => i8s[t.output] = t.run(&i8s[t.input]),
            Step::Concat(c) => i8s[c.output] = c.run(i8s),
            Step::Lookup(l) => i8s[l.output] = l.run(&i8s[l.input], self.flavor),
            Step::Elementwise(e) => i8s[e.output] = e.run(self.flavor, i8s),
        }
    }
}
