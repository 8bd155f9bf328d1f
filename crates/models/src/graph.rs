//! Any feed-forward model as data: a [`GraphSpec`] (operators, their settings, how values flow)
//! plus the weight layers, as one burn module, [`GraphNet`].
//!
//! Why a graph and not generated Rust: an imported ONNX or TFLite file, a model a user builds
//! with [`GraphBuilder`], and the int8 exporter all need the same three things: a forward pass
//! burn can train, the weight layers by name so the wrappers (`Prunable`, `Clustered`,
//! `QatAware`) can replace them, and the operator sequence the exporter writes. A `GraphNet` is
//! generic over its convolution type `C` and linear type `L` like the built-in families, so
//! `try_map` wraps and strips it exactly as it does them, and the same spec serves training and
//! export: a model is described once.
//!
//! Values are numbered: 0 is the input, node `i` makes value `i + 1`. Feature maps are
//! `[n, c, h, w]` (burn's layout; the original file's layout is in [`InputSpec`]), vectors
//! `[n, features]`. Convolutions carry their BatchNorm folded (an identity BatchNorm, ε
//! [`REFOLD_EPSILON`], so the block computes exactly the imported weights); an activation that
//! follows a convolution, linear layer or sum is fused into it, as TFLite fuses it.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData};
use collab_core::{Activation, ConvBn, LayerForward};
use collab_data::InputSpec;
use collab_quant::{ActQuant, ActQuantConfig};
use serde::{Deserialize, Serialize};

use crate::info::{LayerInfo, ModelInfo};
use crate::{ConvBlock, ModelError};

/// The BatchNorm ε of a block whose BatchNorm is already folded into its weights: with γ 1,
/// β 0, mean 0 and variance 1 it vanishes next to 1 in `f32`, so the block computes exactly
/// its convolution. A record does not hold ε (it is a setting), so manifests record it.
pub const REFOLD_EPSILON: f64 = 1e-30;

/// A plain convolution as a [`ConvBlock`] with an identity BatchNorm (see [`REFOLD_EPSILON`]).
pub fn refold(conv: Conv2d) -> ConvBlock {
    let out = conv.weight.dims()[0];
    let device = conv.weight.val().device();
    let bn = BatchNormConfig::new(out)
        .with_epsilon(REFOLD_EPSILON)
        .init(&device);
    ConvBn::new(conv, bn)
}

/// An element-wise activation that is not fused into a layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pointwise {
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` for `x ≥ 0`, `alpha · x` below.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
    /// `1 / (1 + e^−x)`.
    Sigmoid,
    /// `tanh x`.
    Tanh,
    /// `x · relu6(x + 3) / 6`.
    HardSwish,
}

impl Pointwise {
    /// Apply it (any shape).
    pub fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        use burn::tensor::activation as a;
        match self {
            Self::Relu => Activation::Relu.apply(x),
            Self::Relu6 => Activation::Relu6.apply(x),
            Self::LeakyRelu { alpha } => a::leaky_relu(x, alpha as f64),
            Self::Sigmoid => a::sigmoid(x),
            Self::Tanh => x.tanh(),
            Self::HardSwish => x.clone() * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// The fusable form (ReLU, ReLU6), if it has one.
    pub fn fused(self) -> Option<Activation> {
        match self {
            Self::Relu => Some(Activation::Relu),
            Self::Relu6 => Some(Activation::Relu6),
            _ => None,
        }
    }

    /// The int8 output quantization `(scale, zero point)` TFLite fixes for this activation on
    /// its own: LOGISTIC 1/256, −128 and TANH 1/128, 0 (TFLite's int8 operator spec; LiteRT
    /// checks it, TensorFlow Lite Micro assumes it). `None` for the others.
    pub fn fixed_int8_output(self) -> Option<(f32, i32)> {
        match self {
            Self::Sigmoid => Some((1.0 / 256.0, -128)),
            Self::Tanh => Some((1.0 / 128.0, 0)),
            _ => None,
        }
    }

    /// Whether its int8 form on its own requantizes (an output quantization other than its
    /// input's): all but ReLU6, which TensorFlow Lite Micro computes as a clamp in the input's
    /// quantization, so the int8 file gives it its input's.
    pub fn requantizes(self) -> bool {
        !matches!(self, Self::Relu6)
    }
}

/// A fused activation in the serialised spec (`"none"`, `"relu"`, `"relu6"`): the workspace's
/// one fused-activation type, re-exported from [`collab_core::FusedActivation`].
pub use collab_core::FusedActivation;

/// A convolution's settings (a 1-D convolution is a 2-D one of height 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    /// `[in, out]` channels.
    pub channels: [usize; 2],
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// `[dh, dw]`.
    pub dilation: [usize; 2],
    /// Groups (`in` for depthwise).
    pub groups: usize,
    /// Zero padding `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// Whether the layer has a bias.
    pub bias: bool,
}

/// A pooling window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]` (padded cells are not counted in an average).
    pub pads: [usize; 4],
}

/// One operator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Convolution `layer` of [`GraphSpec::convs`], map → map.
    Conv {
        /// Index into `convs`.
        layer: usize,
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// Fully-connected `layer` of [`GraphSpec::linears`], vector → vector.
    Linear {
        /// Index into `linears`.
        layer: usize,
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// Element-wise sum of two values of one shape, or of shapes that [`broadcast`].
    Add {
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// Channel concatenation of maps of one spatial size.
    Concat,
    /// An activation on its own.
    Act(Pointwise),
    /// Average pooling, map → map.
    AvgPool(PoolSpec),
    /// Max pooling, map → map.
    MaxPool(PoolSpec),
    /// Mean over the spatial axes, `[n, c, h, w]` → `[n, c, 1, 1]`.
    GlobalAvgPool,
    /// Map → vector. `channels_last`: flattened in `[h, w, c]` order (TensorFlow's), else in
    /// `[c, h, w]` order (PyTorch's); the same for 1×1 maps.
    Flatten {
        /// The flattening order.
        #[serde(default)]
        channels_last: bool,
    },
    /// Map → map with its three axes permuted: output axis `i` of `[c, h, w]` is input axis
    /// `perm[i]` (a mid-graph ONNX `Transpose` or TFLite `TRANSPOSE` that keeps the batch first).
    Transpose {
        /// A permutation of `[0, 1, 2]` (0 = channels, 1 = height, 2 = width).
        perm: [usize; 3],
    },
    /// The same values in another shape: `shape` is `[f]` (a vector) or `[c, h, w]` (a map),
    /// with as many values as the input. The values are read from the input and written into
    /// the output in `[c, h, w]` order (`channels_last: false`: ONNX / PyTorch) or `[h, w, c]`
    /// order (`true`: TFLite); a reshape to a vector is a flatten.
    Reshape {
        /// `[f]` or `[c, h, w]`.
        shape: Vec<usize>,
        /// The element order the reshape is defined in.
        #[serde(default)]
        channels_last: bool,
    },
    /// Transposed convolution (ONNX `ConvTranspose`, TFLite `TRANSPOSE_CONV`), map → map:
    /// output size `(in − 1)·stride + kernel − pad_begin − pad_end + output_padding`.
    ///
    /// Why through [`GraphSpec::convs`]: a transposed convolution is an ordinary stride-1
    /// VALID convolution, with the kernel flipped and its in/out channels swapped, of the
    /// input upsampled with `stride − 1` zeros between values and padded by
    /// `kernel − 1 − pad` ([`transpose_conv_input`]). Held as that convolution, layer `layer`
    /// is the same type `C` as every other convolution, so every wrapper (`Prunable`,
    /// `Clustered`, `QatAware` with per-output-channel weights, as TFLite quantizes
    /// TRANSPOSE_CONV) and the whole-model `Param` wrappers take it unchanged; the exporter flips
    /// the kernel back. The cost is `stride²` more multiplications in float training.
    ConvTranspose {
        /// Index into `convs`: the equivalent stride-1 VALID convolution (weight
        /// `[out, in, kh, kw]`, spatially flipped).
        layer: usize,
        /// `[sh, sw]`.
        stride: [usize; 2],
        /// Cropped from the full output `[top, left, bottom, right]` (ONNX `pads`).
        pads: [usize; 4],
        /// Extra rows / columns at the end `[h, w]` (ONNX `output_padding`).
        #[serde(default)]
        output_padding: [usize; 2],
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// Element-wise product `a · b` of two computed values, broadcasting as [`broadcast`] says
    /// (swish's `x · sigmoid(x)`, squeeze-excite's `x · gate` with a gate `[c, 1, 1]`).
    Mul {
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// Element-wise difference `a − b` (first input minus second), broadcasting as [`broadcast`].
    Sub {
        /// Fused activation.
        #[serde(default)]
        act: FusedActivation,
    },
    /// `x · values`: one constant per channel (map `[c, h, w]`) or feature (vector), or one for
    /// all. The constants are fixed numbers in the spec, not trained parameters: they stand for
    /// what a file states outside its layers (an input normalisation, `x / 6` of a hard-swish
    /// written out), which no training objective asks to move; a constant next to a layer is
    /// folded into that layer by the importers instead. Kept in the spec (the manifest), they
    /// need no change to the record format.
    MulConst {
        /// `[c]` or `[1]`.
        values: Vec<f32>,
    },
    /// `x + values`, constants as in [`Op::MulConst`] (a subtraction is the negated constant).
    AddConst {
        /// `[c]` or `[1]`.
        values: Vec<f32>,
    },
}

/// The shape of an element-wise operation on values of shapes `a` and `b` (either order), or
/// `None`: equal shapes; a map `[c, h, w]` with a per-channel map `[c, 1, 1]`, a vector `[c]`
/// or a scalar (`[1, 1, 1]` / `[1]`); a vector with a scalar. This is numpy broadcasting
/// restricted to what maps and vectors need (a vector stands for a map `[c, 1, 1]`).
pub fn broadcast(a: Shape, b: Shape) -> Option<Shape> {
    use Shape::{Map, Vec};
    match (a, b) {
        _ if a == b => Some(a),
        (Map(m), Map([c, 1, 1])) | (Map([c, 1, 1]), Map(m)) if c == m[0] || c == 1 => Some(Map(m)),
        (Map(m), Vec(f)) | (Vec(f), Map(m)) if f == m[0] || f == 1 => Some(Map(m)),
        (Vec(f), Vec(1)) | (Vec(1), Vec(f)) => Some(Vec(f)),
        _ => None,
    }
}

impl Op {
    /// Whether the int8 operator keeps its input's quantization (TFLite requires its output
    /// scale and zero point to equal the input's, or TFLite Micro assumes it): pooling,
    /// flattening, reshapes, transposes, a lone ReLU6.
    /// The one list the exporter's shared-quantization classes and QAT read.
    pub fn keeps_quantization(&self) -> bool {
        matches!(
            self,
            Op::MaxPool(_)
                | Op::AvgPool(_)
                | Op::GlobalAvgPool
                | Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Transpose { .. }
                | Op::Act(Pointwise::Relu6)
        )
    }

    /// The operator's name in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "Conv",
            Op::Linear { .. } => "Linear",
            Op::Add { .. } => "Add",
            Op::Concat => "Concat",
            Op::Act(_) => "Activation",
            Op::AvgPool(_) => "AveragePool",
            Op::MaxPool(_) => "MaxPool",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::Flatten { .. } => "Flatten",
            Op::Transpose { .. } => "Transpose",
            Op::Reshape { .. } => "Reshape",
            Op::ConvTranspose { .. } => "ConvTranspose",
            Op::Mul { .. } => "Mul",
            Op::Sub { .. } => "Sub",
            Op::MulConst { .. } => "MulConstant",
            Op::AddConst { .. } => "AddConstant",
        }
    }
}

/// A node: an operator on earlier values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Its name: the layer path for convolutions and linear layers (what `--layer`, plots and
    /// reports use), the source file's node name otherwise.
    pub name: String,
    /// The operator.
    #[serde(flatten)]
    pub op: Op,
    /// Input values (0 is the model input, node `i` made value `i + 1`).
    pub inputs: Vec<usize>,
}

/// The shape of a value, without the batch dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// `[c, h, w]`.
    Map([usize; 3]),
    /// `[features]`.
    Vec(usize),
}

/// A whole model as data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// The model's name (file stem for imports).
    pub name: String,
    /// What the model takes.
    pub input: InputSpec,
    /// Convolution layers.
    pub convs: Vec<ConvSpec>,
    /// `[in, out]` and bias of each linear layer.
    pub linears: Vec<([usize; 2], bool)>,
    /// Operators in execution order; the last one's value is the output.
    pub nodes: Vec<Node>,
    /// The source model ends with a softmax (removed here: training takes logits; the int8
    /// export writes it back).
    pub softmax: bool,
}

impl GraphSpec {
    /// The layer path of convolution `i` / linear layer `i` (its node's name).
    pub fn layer_names(&self) -> (Vec<String>, Vec<String>) {
        let mut convs = vec![String::new(); self.convs.len()];
        let mut linears = vec![String::new(); self.linears.len()];
        for n in &self.nodes {
            match n.op {
                Op::Conv { layer, .. } | Op::ConvTranspose { layer, .. } => {
                    convs[layer] = n.name.clone()
                }
                Op::Linear { layer, .. } => linears[layer] = n.name.clone(),
                _ => {}
            }
        }
        (convs, linears)
    }

    /// The nodes whose int8 output has a quantization of its own besides the layers': the sums,
    /// The nodes whose int8 output has a quantization of its own besides the layers': the sums,
    /// products and differences, constant scales and shifts, the concatenations, and the lone
    /// activations that requantize ([`Pointwise::requantizes`]). (Pooling, reshapes and ReLU6
    /// keep their input's.) A concatenation's trained range becomes the quantization of its
    /// inputs too, in the int8 file (they must share it; `collab::export::quant_classes`).
    pub fn requant_nodes(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| match n.op {
                Op::Add { .. }
                | Op::Mul { .. }
                | Op::Sub { .. }
                | Op::MulConst { .. }
                | Op::AddConst { .. }
                | Op::Concat => true,
                Op::Act(p) => p.requantizes(),
                _ => false,
            })
            .map(|(k, _)| k)
            .collect()
    }

    /// Whether value `v` reaches only concatenations: every user is a `Concat`, or an operator
    /// that keeps its input's int8 quantization ([`Op::keeps_quantization`]) whose value
    /// reaches only concatenations. The int8 file quantizes such a value at the concatenation's scale, so
    /// QAT quantizes it there, once, and not at its producer (TFMOT's rule for `Concatenate`).
    /// False for the model's output and for values nothing uses.
    pub fn only_concatenated(&self, v: usize) -> bool {
        let mut users = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.contains(&v))
            .peekable();
        users.peek().is_some()
            && users.all(|(k, n)| match n.op {
                Op::Concat => true,
                ref op if op.keeps_quantization() => self.only_concatenated(k + 1),
                _ => false,
            })
    }

    /// Whether the layer (or node) `name`'s output reaches only concatenations
    /// ([`Self::only_concatenated`]): under QAT it tracks its output range without quantizing
    /// it (`QatConfig::with_output_quantizer(false)`).
    pub fn quantized_by_concat(&self, name: &str) -> bool {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .is_some_and(|k| self.only_concatenated(k + 1))
    }

    /// The activation fused after layer `name` (`None` for a name that is not a layer).
    pub fn activation_of(&self, name: &str) -> FusedActivation {
        self.nodes
            .iter()
            .find_map(|n| match n.op {
                Op::Conv { act, .. } | Op::Linear { act, .. } | Op::ConvTranspose { act, .. }
                    if n.name == name =>
                {
                    Some(act)
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Whether the layer (or node) `name` reads the model input, directly or through flattening:
    /// the layer whose input quantizer is the int8 file's input quantization.
    pub fn reads_model_input(&self, name: &str) -> bool {
        let Some(node) = self.nodes.iter().find(|n| n.name == name) else {
            return false;
        };
        node.inputs.iter().any(|&v| {
            let mut v = v;
            while v > 0 {
                match &self.nodes[v - 1] {
                    Node {
                        op: Op::Flatten { .. },
                        inputs,
                        ..
                    } => v = inputs[0],
                    _ => return false,
                }
            }
            true
        })
    }

    /// Every value's shape (input first), checking each operator against its inputs: the
    /// error names the node, its operator and the shapes it was given.
    pub fn shapes(&self) -> Result<Vec<Shape>, ModelError> {
        let mut shapes = vec![Shape::Map(self.input.shape)];
        let mut used_conv = vec![false; self.convs.len()];
        let mut used_lin = vec![false; self.linears.len()];
        for (k, node) in self.nodes.iter().enumerate() {
            let bad = |why: String| ModelError::Setting {
                field: "graph",
                reason: format!("node {k} `{}` ({}): {why}", node.name, node.op.kind()),
            };
            let arity = match node.op {
                Op::Add { .. } | Op::Mul { .. } | Op::Sub { .. } => 2,
                Op::Concat => node.inputs.len().max(2),
                _ => 1,
            };
            if node.inputs.len() != arity {
                return Err(bad(format!("{} inputs, needs {arity}", node.inputs.len())));
            }
            let ins: Vec<Shape> = node
                .inputs
                .iter()
                .map(|&i| {
                    shapes.get(i).copied().ok_or_else(|| {
                        bad(format!("input value {i} is not computed before this node"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let map = |s: Shape| match s {
                Shape::Map(m) => Ok(m),
                Shape::Vec(_) => Err(bad(format!("takes a feature map, given a vector {s:?}"))),
            };
            let out = match &node.op {
                Op::Conv { layer, .. } => {
                    let c = self
                        .convs
                        .get(*layer)
                        .ok_or_else(|| bad(format!("no convolution {layer}")))?;
                    used_conv[*layer] = true;
                    let [ci, h, w] = map(ins[0])?;
                    if ci != c.channels[0] {
                        return Err(bad(format!(
                            "input has {ci} channels, the layer takes {}",
                            c.channels[0]
                        )));
                    }
                    let (oh, ow) = (
                        window_out(
                            h,
                            c.kernel[0],
                            c.stride[0],
                            c.dilation[0],
                            c.pads[0] + c.pads[2],
                        ),
                        window_out(
                            w,
                            c.kernel[1],
                            c.stride[1],
                            c.dilation[1],
                            c.pads[1] + c.pads[3],
                        ),
                    );
                    match (oh, ow) {
                        (Some(oh), Some(ow)) => Shape::Map([c.channels[1], oh, ow]),
                        _ => {
                            return Err(bad(format!(
                                "kernel {:?} does not fit a {h}×{w} input",
                                c.kernel
                            )));
                        }
                    }
                }
                Op::Linear { layer, .. } => {
                    let ([din, dout], _) = *self
                        .linears
                        .get(*layer)
                        .ok_or_else(|| bad(format!("no linear layer {layer}")))?;
                    used_lin[*layer] = true;
                    match ins[0] {
                        Shape::Vec(f) if f == din => Shape::Vec(dout),
                        s => {
                            return Err(bad(format!(
                                "input {s:?}, the layer takes a vector of {din}"
                            )));
                        }
                    }
                }
                Op::Add { .. } | Op::Mul { .. } | Op::Sub { .. } => broadcast(ins[0], ins[1])
                    .ok_or_else(|| {
                        bad(format!(
                            "combines {:?} and {:?}: the shapes neither match nor broadcast (a map \
                             [c, h, w] takes [c, h, w], [c, 1, 1], a vector [c] or a scalar)",
                            ins[0], ins[1]
                        ))
                    })?,
                Op::MulConst { values } | Op::AddConst { values } => {
                    let width = match ins[0] {
                        Shape::Map([c, ..]) => c,
                        Shape::Vec(f) => f,
                    };
                    if values.len() != 1 && values.len() != width {
                        return Err(bad(format!(
                            "{} constants for {:?}: give one, or one per channel ({width})",
                            values.len(),
                            ins[0]
                        )));
                    }
                    ins[0]
                }
                Op::Concat => {
                    let first = map(ins[0])?;
                    let mut c = 0;
                    for s in &ins {
                        let m = map(*s)?;
                        if m[1..] != first[1..] {
                            return Err(bad(format!(
                                "concatenates {first:?} and {m:?}: spatial sizes differ"
                            )));
                        }
                        c += m[0];
                    }
                    Shape::Map([c, first[1], first[2]])
                }
                Op::Act(_) => ins[0],
                Op::AvgPool(p) | Op::MaxPool(p) => {
                    let [c, h, w] = map(ins[0])?;
                    match (
                        window_out(h, p.kernel[0], p.stride[0], 1, p.pads[0] + p.pads[2]),
                        window_out(w, p.kernel[1], p.stride[1], 1, p.pads[1] + p.pads[3]),
                    ) {
                        (Some(oh), Some(ow)) => Shape::Map([c, oh, ow]),
                        _ => {
                            return Err(bad(format!(
                                "window {:?} does not fit a {h}×{w} input",
                                p.kernel
                            )));
                        }
                    }
                }
                Op::GlobalAvgPool => Shape::Map([map(ins[0])?[0], 1, 1]),
                Op::Flatten { .. } => match ins[0] {
                    Shape::Map([c, h, w]) => Shape::Vec(c * h * w),
                    v => v,
                },
                Op::Transpose { perm } => {
                    let m = map(ins[0])?;
                    let mut sorted = *perm;
                    sorted.sort_unstable();
                    if sorted != [0, 1, 2] {
                        return Err(bad(format!(
                            "perm {perm:?} is not a permutation of [0, 1, 2]"
                        )));
                    }
                    Shape::Map([m[perm[0]], m[perm[1]], m[perm[2]]])
                }
                Op::Reshape { shape, .. } => {
                    let count = match ins[0] {
                        Shape::Map([c, h, w]) => c * h * w,
                        Shape::Vec(f) => f,
                    };
                    let out = match shape.as_slice() {
                        [f] => Shape::Vec(*f),
                        [c, h, w] => Shape::Map([*c, *h, *w]),
                        _ => {
                            return Err(bad(format!(
                                "target {shape:?}: a reshape makes a vector [f] or a map [c, h, w]"
                            )));
                        }
                    };
                    if shape.iter().product::<usize>() != count || count == 0 {
                        return Err(bad(format!(
                            "reshapes {:?} ({count} values) into {shape:?}",
                            ins[0]
                        )));
                    }
                    out
                }
                Op::ConvTranspose {
                    layer,
                    stride,
                    pads,
                    output_padding,
                    ..
                } => {
                    let c = self
                        .convs
                        .get(*layer)
                        .ok_or_else(|| bad(format!("no convolution {layer}")))?;
                    used_conv[*layer] = true;
                    let [ci, h, w] = map(ins[0])?;
                    if ci != c.channels[0]
                        || c.stride != [1, 1]
                        || c.dilation != [1, 1]
                        || c.pads != [0; 4]
                        || c.groups != 1
                    {
                        return Err(bad(format!(
                            "input has {ci} channels; its layer must be a stride-1, undilated, \
                             unpadded, ungrouped convolution of {ci} channels, is {c:?}"
                        )));
                    }
                    let size = |d: usize, n: usize| {
                        ((n.max(1) - 1) * stride[d].max(1) + c.kernel[d] + output_padding[d])
                            .checked_sub(pads[d] + pads[d + 2])
                            .filter(|o| *o > 0 && n > 0 && stride[d] > 0)
                    };
                    match (size(0, h), size(1, w)) {
                        (Some(oh), Some(ow)) => Shape::Map([c.channels[1], oh, ow]),
                        _ => {
                            return Err(bad(format!(
                                "stride {stride:?}, pads {pads:?} and kernel {:?} leave no \
                                 output of a {h}×{w} input",
                                c.kernel
                            )));
                        }
                    }
                }
            };
            shapes.push(out);
        }
        if let Some(i) = used_conv.iter().position(|u| !u) {
            return Err(ModelError::Setting {
                field: "graph",
                reason: format!("convolution {i} is used by no node"),
            });
        }
        if let Some(i) = used_lin.iter().position(|u| !u) {
            return Err(ModelError::Setting {
                field: "graph",
                reason: format!("linear layer {i} is used by no node"),
            });
        }
        if self.nodes.is_empty() {
            return Err(ModelError::Setting {
                field: "graph",
                reason: "the graph has no operators".into(),
            });
        }
        Ok(shapes)
    }

    /// The same graph with every ReLU / ReLU6 node that is the only user of a convolution,
    /// linear layer, sum, product or difference fused into it (as TFLite fuses them), values renumbered. Importers
    /// emit activations as separate nodes and call this once.
    pub fn fused(mut self) -> Self {
        loop {
            let mut users = vec![0usize; self.nodes.len() + 1];
            for n in &self.nodes {
                for &i in &n.inputs {
                    users[i] += 1;
                }
            }
            let found = self.nodes.iter().enumerate().find_map(|(k, n)| {
                let Op::Act(p) = n.op else { return None };
                let a = p.fused()?;
                let src = *n.inputs.first()?;
                if src == 0 || users[src] != 1 {
                    return None;
                }
                match self.nodes[src - 1].op {
                    Op::Conv {
                        act: FusedActivation::None,
                        ..
                    }
                    | Op::Linear {
                        act: FusedActivation::None,
                        ..
                    }
                    | Op::Add {
                        act: FusedActivation::None,
                    }
                    | Op::ConvTranspose {
                        act: FusedActivation::None,
                        ..
                    }
                    | Op::Mul {
                        act: FusedActivation::None,
                    }
                    | Op::Sub {
                        act: FusedActivation::None,
                    } => Some((k, src, a)),
                    _ => None,
                }
            });
            let Some((k, src, a)) = found else {
                return self;
            };
            match &mut self.nodes[src - 1].op {
                Op::Conv { act, .. }
                | Op::Linear { act, .. }
                | Op::Add { act }
                | Op::ConvTranspose { act, .. }
                | Op::Mul { act }
                | Op::Sub { act } => *act = FusedActivation::from_activation(Some(a)),
                _ => unreachable!("matched above"),
            }
            // Value k + 1 (the activation's) becomes `src`; later values shift down by one.
            let removed = k + 1;
            self.nodes.remove(k);
            for n in &mut self.nodes {
                for i in &mut n.inputs {
                    if *i == removed {
                        *i = src;
                    } else if *i > removed {
                        *i -= 1;
                    }
                }
            }
        }
    }

    /// The output's width (classes for a classifier).
    pub fn outputs(&self) -> Result<usize, ModelError> {
        Ok(match self.shapes()?.last() {
            Some(Shape::Vec(f)) => *f,
            Some(Shape::Map([c, h, w])) => c * h * w,
            None => 0,
        })
    }

    /// Parameters and MACs per weight layer, from the spec alone.
    pub fn info(&self) -> Result<ModelInfo, ModelError> {
        let shapes = self.shapes()?;
        let mut layers = Vec::new();
        for (k, node) in self.nodes.iter().enumerate() {
            let (input, output) = (shapes[node.inputs[0]], shapes[k + 1]);
            let dims = |s: Shape| match s {
                Shape::Map(m) => m.to_vec(),
                Shape::Vec(f) => vec![f],
            };
            match node.op {
                Op::Conv { layer, .. } => {
                    let c = &self.convs[layer];
                    let per_out = c.channels[0] / c.groups * c.kernel[0] * c.kernel[1];
                    let params = c.channels[1] * per_out + if c.bias { c.channels[1] } else { 0 };
                    let out = dims(output);
                    let depthwise = c.groups > 1 && c.groups == c.channels[0];
                    layers.push(LayerInfo {
                        name: node.name.clone(),
                        kind: if depthwise { "depthwise" } else { "conv" },
                        input: dims(input),
                        macs: out.iter().product::<usize>() * per_out,
                        output: out,
                        params,
                    });
                }
                Op::ConvTranspose { layer, .. } => {
                    let c = &self.convs[layer];
                    let [ci, co] = c.channels;
                    let taps = c.kernel[0] * c.kernel[1];
                    layers.push(LayerInfo {
                        name: node.name.clone(),
                        kind: "conv_transpose",
                        input: dims(input),
                        output: dims(output),
                        // Every input value meets every tap once (the zeros inserted to train
                        // it as a convolution are not counted).
                        macs: dims(input).iter().product::<usize>() * co * taps,
                        params: ci * co * taps + if c.bias { co } else { 0 },
                    });
                }
                Op::Linear { layer, .. } => {
                    let ([din, dout], bias) = self.linears[layer];
                    layers.push(LayerInfo {
                        name: node.name.clone(),
                        kind: "linear",
                        input: vec![din],
                        output: vec![dout],
                        params: din * dout + if bias { dout } else { 0 },
                        macs: din * dout,
                    });
                }
                _ => {}
            }
        }
        Ok(ModelInfo {
            model: self.name.clone(),
            input: self.input.shape.to_vec(),
            params: layers.iter().map(|l| l.params).sum(),
            macs: layers.iter().map(|l| l.macs).sum(),
            batch_norm_params: 0,
            layers,
        })
    }
}

/// `floor((size + pads − dilation·(kernel − 1) − 1) / stride) + 1`, or `None` when it does not fit.
fn window_out(
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pads: usize,
) -> Option<usize> {
    let span = dilation * (kernel.max(1) - 1) + 1;
    (size + pads)
        .checked_sub(span)
        .map(|d| d / stride.max(1) + 1)
}

/// A value during the forward pass.
#[derive(Clone, Debug)]
pub enum Value {
    /// `[n, c, h, w]`.
    Map(Tensor<4>),
    /// `[n, features]`.
    Vec(Tensor<2>),
}

impl Value {
    /// As a matrix `[n, …]` (maps flattened in `[c, h, w]` order).
    pub fn flat(self) -> Tensor<2> {
        match self {
            Value::Map(t) => t.flatten(1, 3),
            Value::Vec(t) => t,
        }
    }

    /// As a map `[n, c, h, w]` (vectors as `[n, f, 1, 1]`).
    pub fn map(self) -> Tensor<4> {
        match self {
            Value::Map(t) => t,
            // `shapes()` refuses this before any forward pass.
            Value::Vec(t) => {
                let [n, f] = t.dims();
                t.reshape([n, f, 1, 1])
            }
        }
    }
}

/// A model built from a [`GraphSpec`]: the weight layers, and the spec (not a tensor, so not
/// in the record: checkpoints store it in their manifest).
#[derive(Module, Debug)]
pub struct GraphNet<C, L> {
    /// Convolutions, in [`GraphSpec::convs`] order.
    pub convs: Vec<C>,
    /// Linear layers, in [`GraphSpec::linears`] order.
    pub linears: Vec<L>,
    /// Under QAT, one output quantizer per node of [`GraphSpec::requant_nodes`] (sums,
    /// products, differences, constant operands, concatenations, requantizing lone
    /// activations): their int8 operators requantize to a scale of their own (LOGISTIC / TANH
    /// to a fixed one), and a CONCATENATION's scale is its inputs' too, so training simulates
    /// them. A node whose value reaches only concatenations ([`GraphSpec::only_concatenated`])
    /// tracks its range without quantizing: the concatenation quantizes once. Empty otherwise.
    pub requant: Vec<ActQuant>,
    #[module(skip)]
    spec: Arc<GraphSpec>,
}

/// Weights of a graph's layers as plain arrays (what an importer produces).
#[derive(Clone, Debug, Default)]
pub struct GraphWeights {
    /// Per convolution: weight `[out, in / groups, kh, kw]` row-major, and the bias.
    pub convs: Vec<(Vec<f32>, Option<Vec<f32>>)>,
    /// Per linear layer: weight `[in, out]` row-major (burn's layout), and the bias.
    pub linears: Vec<(Vec<f32>, Option<Vec<f32>>)>,
}

impl GraphNet<ConvBlock, Linear> {
    /// A freshly initialised model of `spec` (checked first).
    pub fn init(spec: GraphSpec, device: &Device) -> Result<Self, ModelError> {
        spec.shapes()?;
        let convs = spec
            .convs
            .iter()
            .map(|c| {
                let [t, l, b, r] = c.pads;
                refold(
                    Conv2dConfig::new(c.channels, c.kernel)
                        .with_stride(c.stride)
                        .with_dilation(c.dilation)
                        .with_groups(c.groups)
                        .with_padding(if c.pads == [0; 4] {
                            PaddingConfig2d::Valid
                        } else {
                            PaddingConfig2d::Explicit(t, l, b, r)
                        })
                        .with_bias(c.bias)
                        .init(device),
                )
            })
            .collect();
        let linears = spec
            .linears
            .iter()
            .map(|([i, o], bias)| LinearConfig::new(*i, *o).with_bias(*bias).init(device))
            .collect();
        Ok(Self {
            convs,
            linears,
            requant: Vec::new(),
            spec: Arc::new(spec),
        })
    }

    /// The model of `spec` with `weights` (shapes checked against the spec).
    pub fn from_weights(
        spec: GraphSpec,
        weights: GraphWeights,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let mut net = Self::init(spec, device)?;
        let file = net.spec.name.clone();
        let bad = |what: String| ModelError::Weights {
            file: file.clone(),
            reason: what,
        };
        if weights.convs.len() != net.convs.len() || weights.linears.len() != net.linears.len() {
            return Err(bad(format!(
                "{} convolution and {} linear weights for a graph of {} and {}",
                weights.convs.len(),
                weights.linears.len(),
                net.convs.len(),
                net.linears.len()
            )));
        }
        let (conv_names, lin_names) = net.spec.layer_names();
        for (i, (w, b)) in weights.convs.into_iter().enumerate() {
            let conv = &mut net.convs[i].conv;
            let dims = conv.weight.dims();
            conv.weight = set_param(&conv.weight, w, dims, &conv_names[i]).map_err(&bad)?;
            set_bias(&mut conv.bias, b, dims[0], &conv_names[i]).map_err(&bad)?;
        }
        for (i, (w, b)) in weights.linears.into_iter().enumerate() {
            let lin = &mut net.linears[i];
            let dims = lin.weight.dims();
            lin.weight = set_param(&lin.weight, w, dims, &lin_names[i]).map_err(&bad)?;
            set_bias(&mut lin.bias, b, dims[1], &lin_names[i]).map_err(&bad)?;
        }
        Ok(net)
    }
}

fn set_param<const D: usize>(
    p: &burn::module::Param<Tensor<D>>,
    values: Vec<f32>,
    dims: [usize; D],
    name: &str,
) -> Result<burn::module::Param<Tensor<D>>, String> {
    if values.len() != dims.iter().product::<usize>() {
        return Err(format!(
            "layer `{name}`: {} weight values for shape {dims:?}",
            values.len()
        ));
    }
    // A new trainable parameter, as burn's initialisers make one (`Param::map` would keep the
    // old id but needs an autodiff device to mark the tensor trainable).
    let device = p.val().device();
    Ok(burn::module::Param::from_tensor(Tensor::<D>::from_data(
        TensorData::new(values, dims),
        &device,
    )))
}

fn set_bias(
    bias: &mut Option<burn::module::Param<Tensor<1>>>,
    values: Option<Vec<f32>>,
    n: usize,
    name: &str,
) -> Result<(), String> {
    match (bias.as_ref(), values) {
        (Some(p), Some(v)) => {
            *bias = Some(set_param(p, v, [n], name)?);
            Ok(())
        }
        (None, None) => Ok(()),
        (Some(_), None) => Err(format!(
            "layer `{name}`: the spec has a bias, the weights none"
        )),
        (None, Some(_)) => Err(format!(
            "layer `{name}`: the weights have a bias, the spec none"
        )),
    }
}

impl<C, L> GraphNet<C, L> {
    /// A graph model from layers already built: `convs[i]` computes `spec.convs[i]` and
    /// `linears[i]` computes `spec.linears[i]` (how a built-in family becomes a graph without
    /// copying a tensor, [`IntoGraph`]). The spec is checked and the counts must match; the
    /// layers' own settings (padding, strides) are what the forward pass and the exporter use.
    pub fn from_parts(spec: GraphSpec, convs: Vec<C>, linears: Vec<L>) -> Result<Self, ModelError> {
        spec.shapes()?;
        if convs.len() != spec.convs.len() || linears.len() != spec.linears.len() {
            return Err(ModelError::Setting {
                field: "graph",
                reason: format!(
                    "model `{}`: {} convolution and {} linear layers given for a graph of {} and {}",
                    spec.name,
                    convs.len(),
                    linears.len(),
                    spec.convs.len(),
                    spec.linears.len()
                ),
            });
        }
        Ok(Self {
            convs,
            linears,
            requant: Vec::new(),
            spec: Arc::new(spec),
        })
    }

    /// The spec.
    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// Rebuild with every convolution passed through `conv(path, layer)` and every linear
    /// layer through `linear(path, layer)`: how a model is wrapped and stripped.
    pub fn try_map<C2, L2, E>(
        self,
        mut conv: impl FnMut(&str, C) -> Result<C2, E>,
        mut linear: impl FnMut(&str, L) -> Result<L2, E>,
    ) -> Result<GraphNet<C2, L2>, E> {
        let (conv_names, lin_names) = self.spec.layer_names();
        let convs = self
            .convs
            .into_iter()
            .zip(&conv_names)
            .map(|(c, n)| conv(n, c))
            .collect::<Result<_, _>>()?;
        let linears = self
            .linears
            .into_iter()
            .zip(&lin_names)
            .map(|(l, n)| linear(n, l))
            .collect::<Result<_, _>>()?;
        Ok(GraphNet {
            convs,
            linears,
            requant: self.requant,
            spec: self.spec,
        })
    }

    /// The same model with an output quantizer on every node of [`GraphSpec::requant_nodes`]
    /// (for QAT; ranges start empty and follow the batches in training, or come from
    /// [`collab_quant::calibrate`]; LOGISTIC / TANH use their fixed quantization).
    pub fn with_requant(
        mut self,
        config: &ActQuantConfig,
        device: &Device,
    ) -> Result<Self, collab_quant::QuantError> {
        self.requant = self
            .spec
            .requant_nodes()
            .iter()
            .map(|_| ActQuant::new(config.clone(), device))
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// The same model without output quantizers (after QAT, once the layers are stripped).
    pub fn without_requant(mut self) -> Self {
        self.requant.clear();
        self
    }

    /// The trained output quantization of node `node` (a sum or a concatenation), if the model
    /// has one.
    pub fn requant_of(&self, node: usize) -> Option<&ActQuant> {
        let i = self.spec.requant_nodes().iter().position(|n| *n == node)?;
        self.requant.get(i)
    }
}

impl<C: LayerForward<4>, L: LayerForward<2>> GraphNet<C, L> {
    /// Inputs `[n, c, h, w]` → outputs `[n, classes]` (the last value, flattened).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_values(x, |_, _| {})
    }

    /// [`Self::forward`], showing every value (index, value) to `visit` as it is made.
    pub fn forward_values(&self, x: Tensor<4>, visit: impl FnMut(usize, &Value)) -> Tensor<2> {
        let convs: Vec<&C> = self.convs.iter().collect();
        let linears: Vec<&L> = self.linears.iter().collect();
        run(&self.spec, &convs, &linears, &self.requant, x, visit)
    }
}

/// The forward pass of `spec` with its layers: `convs[i]` computes `spec.convs[i]`,
/// `linears[i]` computes `spec.linears[i]`, and `requant[j]` (empty outside QAT) fake-quantizes
/// the output of node `spec.requant_nodes()[j]`. Inputs `[n, c, h, w]` → the last value
/// flattened to `[n, …]`; `visit` sees every value (index, value) as it is made.
///
/// The one forward definition: [`GraphNet`] runs its own layers through it, and the built-in
/// families run theirs (borrowed, in their graph's order), so what a model computes is written
/// once, in its spec, for training and export alike.
///
/// # Panics
/// When the layer counts do not match the spec (the callers build them from the spec), or on a
/// spec [`GraphSpec::shapes`] refuses.
pub fn run<C: LayerForward<4>, L: LayerForward<2>>(
    spec: &GraphSpec,
    convs: &[&C],
    linears: &[&L],
    requant: &[ActQuant],
    x: Tensor<4>,
    mut visit: impl FnMut(usize, &Value),
) -> Tensor<2> {
    assert!(
        convs.len() == spec.convs.len() && linears.len() == spec.linears.len(),
        "graph::run: {} convolutions and {} linear layers for a spec of {} and {}",
        convs.len(),
        linears.len(),
        spec.convs.len(),
        spec.linears.len()
    );
    // Which output quantizer (if any) each node has; one whose value reaches only
    // concatenations observes its range and leaves the quantization to them (once).
    let mut quant_of: Vec<Option<(&ActQuant, bool)>> = vec![None; spec.nodes.len()];
    for (q, k) in requant.iter().zip(spec.requant_nodes()) {
        quant_of[k] = Some((q, spec.only_concatenated(k + 1)));
    }
    // Free each value after its last use.
    let mut last_use = vec![0usize; spec.nodes.len() + 1];
    for (k, n) in spec.nodes.iter().enumerate() {
        for &i in &n.inputs {
            last_use[i] = k + 1;
        }
    }
    let mut values: Vec<Option<Value>> = Vec::with_capacity(spec.nodes.len() + 1);
    let input = Value::Map(x);
    visit(0, &input);
    values.push(Some(input));
    for (k, node) in spec.nodes.iter().enumerate() {
        let get = |i: usize, values: &mut Vec<Option<Value>>| {
            if last_use[i] == k + 1 {
                values[i].take()
            } else {
                values[i].clone()
            }
            .expect("spec checked: every input is computed before use")
        };
        let v = match &node.op {
            Op::Conv { layer, act } => {
                let x = get(node.inputs[0], &mut values).map();
                Value::Map(match act.activation() {
                    Some(a) => convs[*layer].forward_activated(x, a),
                    None => convs[*layer].forward(x),
                })
            }
            Op::ConvTranspose {
                layer,
                stride,
                pads,
                output_padding,
                act,
            } => {
                let x = get(node.inputs[0], &mut values).map();
                let kernel = spec.convs[*layer].kernel;
                let x = transpose_conv_input(x, kernel, *stride, *pads, *output_padding);
                Value::Map(match act.activation() {
                    Some(a) => convs[*layer].forward_activated(x, a),
                    None => convs[*layer].forward(x),
                })
            }
            Op::Linear { layer, act } => {
                let x = get(node.inputs[0], &mut values).flat();
                Value::Vec(match act.activation() {
                    Some(a) => linears[*layer].forward_activated(x, a),
                    None => linears[*layer].forward(x),
                })
            }
            op => {
                let ins = node
                    .inputs
                    .iter()
                    .map(|&i| get(i, &mut values))
                    .collect::<Vec<_>>();
                apply_op(op, ins)
            }
        };
        let v = match quant_of[k] {
            Some((q, true)) => match v {
                Value::Map(t) => Value::Map(q.observe_only(t)),
                Value::Vec(t) => Value::Vec(q.observe_only(t)),
            },
            Some((q, false)) => {
                let fixed = match node.op {
                    Op::Act(p) => p.fixed_int8_output(),
                    _ => None,
                };
                match v {
                    Value::Map(t) => Value::Map(quantize_output(q, fixed, t)),
                    Value::Vec(t) => Value::Vec(quantize_output(q, fixed, t)),
                }
            }
            None => v,
        };
        visit(k + 1, &v);
        values.push(Some(v));
    }
    values
        .pop()
        .flatten()
        .expect("spec checked: at least one node")
        .flat()
}

/// A node's output under QAT: fake-quantized with its trained range (`q`), or with the fixed
/// quantization TFLite gives its operator (`fixed`, LOGISTIC and TANH: `q` then only marks the
/// model as quantization-aware and learns nothing).
fn quantize_output<const D: usize>(
    q: &ActQuant,
    fixed: Option<(f32, i32)>,
    t: Tensor<D>,
) -> Tensor<D> {
    match fixed {
        Some((scale, zero_point)) => collab_quant::fake_quant_per_tensor(
            t,
            &collab_quant::QuantParams {
                scale: vec![scale],
                zero_point: vec![zero_point],
                per_channel: false,
                qmin: -128,
                qmax: 127,
            },
        ),
        None => q.forward(t),
    }
}

/// A model that describes itself as a graph: the built-in families ([`crate::DsCnn`],
/// [`crate::MobileNetV1`], [`crate::MobileNetV2`]) hand their layers, unchanged, to a
/// [`GraphNet`] whose spec says what their forward pass does, so the exporter and QAT read one
/// description of every model. A graph is its own graph.
pub trait IntoGraph {
    /// The convolution type.
    type Conv;
    /// The linear layer type.
    type Linear;
    /// The same model as a graph (same layers, same forward pass).
    fn into_graph(self) -> Result<GraphNet<Self::Conv, Self::Linear>, ModelError>;
}

impl<C, L> IntoGraph for GraphNet<C, L> {
    type Conv = C;
    type Linear = L;
    fn into_graph(self) -> Result<Self, ModelError> {
        Ok(self)
    }
}

/// A parameter-free operator (everything but `Conv` and `Linear`, which need their layer) on
/// its input values: the one definition of what each computes, for the burn model and for the
/// exporter's float plan alike.
///
/// # Panics
/// On a `Conv` or `Linear` op, or on too few inputs ([`GraphSpec::shapes`] rules both out).
pub fn apply_op(op: &Op, inputs: Vec<Value>) -> Value {
    let mut it = inputs.into_iter();
    let mut next = || it.next().expect("spec checked: operator arity");
    match op {
        Op::Add { act } => elementwise(next(), next(), *act, |a, b| a + b, |a, b| a + b),
        Op::Mul { act } => elementwise(next(), next(), *act, |a, b| a * b, |a, b| a * b),
        Op::Sub { act } => elementwise(next(), next(), *act, |a, b| a - b, |a, b| a - b),
        Op::MulConst { values } => with_constant(next(), values, |x, c| x * c, |x, c| x * c),
        Op::AddConst { values } => with_constant(next(), values, |x, c| x + c, |x, c| x + c),
        Op::Concat => {
            let mut parts = vec![next().map()];
            parts.extend(it.map(Value::map));
            Value::Map(Tensor::cat(parts, 1))
        }
        Op::Act(p) => match next() {
            Value::Map(t) => Value::Map(p.apply(t)),
            Value::Vec(t) => Value::Vec(p.apply(t)),
        },
        Op::AvgPool(p) => Value::Map(avg_pool(next().map(), p)),
        Op::MaxPool(p) => Value::Map(max_pool(next().map(), p)),
        Op::GlobalAvgPool => {
            let t = next().map();
            let [n, c, h, w] = t.dims();
            Value::Map(t.reshape([n, c, h * w]).mean_dim(2).reshape([n, c, 1, 1]))
        }
        Op::Flatten { channels_last } => Value::Vec(match next() {
            Value::Map(m) if *channels_last => m.permute([0, 2, 3, 1]).flatten(1, 3),
            other => other.flat(),
        }),
        Op::Transpose { perm } => {
            let t = next().map();
            Value::Map(t.permute([0, 1 + perm[0], 1 + perm[1], 1 + perm[2]]))
        }
        Op::Reshape {
            shape,
            channels_last,
        } => {
            let flat = match next() {
                Value::Map(m) if *channels_last => m.permute([0, 2, 3, 1]).flatten(1, 3),
                other => other.flat(),
            };
            let n = flat.dims()[0];
            match *shape.as_slice() {
                [c, h, w] if *channels_last => {
                    Value::Map(flat.reshape([n, h, w, c]).permute([0, 3, 1, 2]))
                }
                [c, h, w] => Value::Map(flat.reshape([n, c, h, w])),
                _ => Value::Vec(flat),
            }
        }
        Op::Conv { .. } | Op::Linear { .. } | Op::ConvTranspose { .. } => {
            panic!("apply_op: {} needs its layer", op.kind())
        }
    }
}

/// The input of the stride-1 VALID convolution that computes a transposed convolution
/// ([`Op::ConvTranspose`]): `x` `[n, c, h, w]` with `stride − 1` zeros between neighbouring
/// values, then `kernel − 1 − pad_begin` zero rows / columns before and
/// `kernel − 1 − pad_end + output_padding` after (cropped where negative), so the convolution
/// gives `[n, out, (h − 1)·s + k − pads + output_padding, …]`. Gradients flow to `x`.
///
/// # Panics
/// When the result would be smaller than the kernel ([`GraphSpec::shapes`] rules it out).
pub fn transpose_conv_input(
    x: Tensor<4>,
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    output_padding: [usize; 2],
) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let [sh, sw] = [stride[0].max(1), stride[1].max(1)];
    // Zero insertion: each value followed by s − 1 zeros, [n, c, h·sh, w·sw].
    let x = if sh > 1 || sw > 1 {
        x.reshape([n, c, h, 1, w, 1])
            .pad([(0, sh - 1), (0, 0), (0, sw - 1)], 0.0f32)
            .reshape([n, c, h * sh, w * sw])
    } else {
        x
    };
    // Signed padding per side, relative to the h·s upsampled size (whose last s − 1 are zeros).
    let side = |k: usize, begin: usize, end: usize, out_pad: usize, s: usize| {
        let k = k as isize - 1;
        (
            k - begin as isize,
            k - end as isize + out_pad as isize - (s as isize - 1),
        )
    };
    let (t, b) = side(kernel[0], pads[0], pads[2], output_padding[0], sh);
    let (l, r) = side(kernel[1], pads[1], pads[3], output_padding[1], sw);
    let [_, _, hh, ww] = x.dims();
    let crop = |lo: isize, hi: isize, size: usize| {
        let start = (-lo).max(0) as usize;
        let end = (size as isize + hi.min(0)) as usize;
        start..end
    };
    let x = x.slice([0..n, 0..c, crop(t, b, hh), crop(l, r, ww)]);
    let grow = |v: isize| v.max(0) as usize;
    x.pad([(grow(t), grow(b)), (grow(l), grow(r))], 0.0f32)
}

/// `f(a, b)` on two values of [`broadcast`]ing shapes (burn broadcasts axes of size 1; a
/// vector against a map stands for `[n, c, 1, 1]`), then `act`.
fn elementwise(
    a: Value,
    b: Value,
    act: FusedActivation,
    map: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    vec: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Value {
    match (a, b) {
        (Value::Vec(a), Value::Vec(b)) => Value::Vec(act.apply(vec(a, b))),
        (a, b) => Value::Map(act.apply(map(a.map(), b.map()))),
    }
}

/// `f(x, constants)`, the constants laid out `[1, c, 1, 1]` (maps) or `[1, f]` (vectors).
fn with_constant(
    x: Value,
    values: &[f32],
    map: impl Fn(Tensor<4>, Tensor<4>) -> Tensor<4>,
    vec: impl Fn(Tensor<2>, Tensor<2>) -> Tensor<2>,
) -> Value {
    let n = values.len();
    match x {
        Value::Map(x) => {
            let c =
                Tensor::<4>::from_data(TensorData::new(values.to_vec(), [1, n, 1, 1]), &x.device());
            Value::Map(map(x, c))
        }
        Value::Vec(x) => {
            let c = Tensor::<2>::from_data(TensorData::new(values.to_vec(), [1, n]), &x.device());
            Value::Vec(vec(x, c))
        }
    }
}

/// Average pooling that does not count padded cells (ONNX `count_include_pad = 0`, TFLite).
pub fn avg_pool(x: Tensor<4>, p: &PoolSpec) -> Tensor<4> {
    let [t, l, b, r] = p.pads;
    let options = AvgPoolOptions::new(p.kernel)
        .with_stride(p.stride)
        .with_padding_pairs([(t, b), (l, r)])
        .with_count_include_pad(false);
    burn::tensor::module::avg_pool2d(x, options)
}

/// Max pooling (padded cells never win).
pub fn max_pool(x: Tensor<4>, p: &PoolSpec) -> Tensor<4> {
    let [t, l, b, r] = p.pads;
    let mut options = MaxPoolOptions::new(p.kernel).with_stride(p.stride);
    options.padding = [(t, b), (l, r)];
    burn::tensor::module::max_pool2d(x, options)
}

/// Builds a [`GraphSpec`] node by node: how a model written in Rust becomes a graph that
/// trains with every wrapper and exports to int8 `.tflite`, described once.
///
/// ```
/// # use collab_models::graph::{GraphBuilder, FusedActivation};
/// # use collab_data::{InputSpec, Layout, Features};
/// let input = InputSpec { shape: [1, 49, 10], layout: Layout::Nhwc, features: Features::Array, labels: vec![] };
/// let mut g = GraphBuilder::new("tiny", input);
/// let x = g.conv(0, 8, [3, 3], [1, 1], 1, FusedActivation::Relu);
/// let x = g.global_avg_pool(x);
/// let x = g.flatten(x);
/// g.linear(x, 12, FusedActivation::None);
/// let spec = g.finish(true).unwrap();
/// assert_eq!(spec.outputs().unwrap(), 12);
/// ```
pub struct GraphBuilder {
    spec: GraphSpec,
    shapes: Vec<Shape>,
}

impl GraphBuilder {
    /// An empty graph taking `input`.
    pub fn new(name: &str, input: InputSpec) -> Self {
        Self {
            shapes: vec![Shape::Map(input.shape)],
            spec: GraphSpec {
                name: name.to_string(),
                input,
                convs: Vec::new(),
                linears: Vec::new(),
                nodes: Vec::new(),
                softmax: false,
            },
        }
    }

    /// The shape of value `v` (maps `[c, h, w]`).
    pub fn shape(&self, v: usize) -> Shape {
        self.shapes[v]
    }

    /// Append any node; returns its value. Shapes are checked by [`Self::finish`].
    pub fn node(&mut self, name: &str, op: Op, inputs: &[usize]) -> usize {
        let name = if name.is_empty() {
            format!("{}_{}", op.kind().to_lowercase(), self.spec.nodes.len())
        } else {
            name.to_string()
        };
        self.spec.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
        });
        // Keep shapes for the helpers below; a bad node is reported by `finish`.
        let shapes = GraphSpec {
            nodes: self.spec.nodes.clone(),
            ..self.spec.clone()
        }
        .shapes();
        if let Ok(s) = shapes {
            self.shapes = s;
        } else {
            self.shapes.push(Shape::Vec(0));
        }
        self.spec.nodes.len()
    }

    /// A convolution with TF SAME padding (`groups` = input channels for depthwise).
    pub fn conv(
        &mut self,
        x: usize,
        out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        groups: usize,
        act: FusedActivation,
    ) -> usize {
        let conv = self.same_conv(x, out, kernel, stride, groups);
        self.conv_with(x, conv, act)
    }

    /// The settings of a convolution of value `x` with TF SAME padding and a bias (what
    /// [`Self::conv`] appends; change a field, then [`Self::conv_with`]).
    pub fn same_conv(
        &self,
        x: usize,
        out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        groups: usize,
    ) -> ConvSpec {
        let (c, h, w) = match self.shapes[x] {
            Shape::Map([c, h, w]) => (c, h, w),
            Shape::Vec(f) => (f, 1, 1),
        };
        let same = |size: usize, k: usize, s: usize| {
            let out = size.div_ceil(s.max(1));
            let total = ((out.max(1) - 1) * s + k).saturating_sub(size);
            (total / 2, total - total / 2)
        };
        let (t, b) = same(h, kernel[0], stride[0]);
        let (l, r) = same(w, kernel[1], stride[1]);
        ConvSpec {
            channels: [c, out],
            kernel,
            stride,
            dilation: [1, 1],
            groups,
            pads: [t, l, b, r],
            bias: true,
        }
    }

    /// Name the node that makes value `v` (a layer's path, e.g. `blocks.0.dw`); returns `v`.
    pub fn rename(&mut self, v: usize, name: &str) -> usize {
        if let Some(node) = v.checked_sub(1).and_then(|k| self.spec.nodes.get_mut(k)) {
            node.name = name.to_string();
        }
        v
    }

    /// A convolution with explicit settings.
    pub fn conv_with(&mut self, x: usize, conv: ConvSpec, act: FusedActivation) -> usize {
        let layer = self.spec.convs.len();
        self.spec.convs.push(conv);
        self.node(&format!("conv{layer}"), Op::Conv { layer, act }, &[x])
    }

    /// A fully-connected layer of `out` features with a bias.
    pub fn linear(&mut self, x: usize, out: usize, act: FusedActivation) -> usize {
        let din = match self.shapes[x] {
            Shape::Vec(f) => f,
            Shape::Map([c, h, w]) => c * h * w,
        };
        let layer = self.spec.linears.len();
        self.spec.linears.push(([din, out], true));
        self.node(&format!("fc{layer}"), Op::Linear { layer, act }, &[x])
    }

    /// `a + b`, then `act`.
    pub fn add(&mut self, a: usize, b: usize, act: FusedActivation) -> usize {
        self.node("", Op::Add { act }, &[a, b])
    }

    /// `a · b` (broadcasting: a map by a per-channel gate `[c, 1, 1]` or a vector `[c]`), then
    /// `act`.
    pub fn mul(&mut self, a: usize, b: usize, act: FusedActivation) -> usize {
        self.node("", Op::Mul { act }, &[a, b])
    }

    /// `a − b` (broadcasting as [`Self::mul`]), then `act`.
    pub fn sub(&mut self, a: usize, b: usize, act: FusedActivation) -> usize {
        self.node("", Op::Sub { act }, &[a, b])
    }

    /// `x · values` (one constant, or one per channel), fixed.
    pub fn mul_const(&mut self, x: usize, values: &[f32]) -> usize {
        self.node(
            "",
            Op::MulConst {
                values: values.to_vec(),
            },
            &[x],
        )
    }

    /// `x + values` (one constant, or one per channel), fixed.
    pub fn add_const(&mut self, x: usize, values: &[f32]) -> usize {
        self.node(
            "",
            Op::AddConst {
                values: values.to_vec(),
            },
            &[x],
        )
    }

    /// Channel concatenation.
    pub fn concat(&mut self, parts: &[usize]) -> usize {
        self.node("", Op::Concat, parts)
    }

    /// Max pooling, no padding.
    pub fn max_pool(&mut self, x: usize, kernel: [usize; 2], stride: [usize; 2]) -> usize {
        self.node(
            "",
            Op::MaxPool(PoolSpec {
                kernel,
                stride,
                pads: [0; 4],
            }),
            &[x],
        )
    }

    /// Mean over space.
    pub fn global_avg_pool(&mut self, x: usize) -> usize {
        self.node("", Op::GlobalAvgPool, &[x])
    }

    /// Map → vector.
    pub fn flatten(&mut self, x: usize) -> usize {
        self.node(
            "",
            Op::Flatten {
                channels_last: true,
            },
            &[x],
        )
    }

    /// A transposed convolution of `out` channels with a bias: stride `stride`, `pads`
    /// `[top, left, bottom, right]` cropped from the full output (see [`Op::ConvTranspose`]).
    pub fn conv_transpose(
        &mut self,
        x: usize,
        out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        pads: [usize; 4],
        act: FusedActivation,
    ) -> usize {
        let c = match self.shapes[x] {
            Shape::Map([c, _, _]) => c,
            Shape::Vec(f) => f,
        };
        let layer = self.spec.convs.len();
        self.spec.convs.push(ConvSpec {
            channels: [c, out],
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            groups: 1,
            pads: [0; 4],
            bias: true,
        });
        self.node(
            &format!("deconv{layer}"),
            Op::ConvTranspose {
                layer,
                stride,
                pads,
                output_padding: [0, 0],
                act,
            },
            &[x],
        )
    }

    /// Permute a map's axes: output axis `i` of `[c, h, w]` is input axis `perm[i]`.
    pub fn transpose(&mut self, x: usize, perm: [usize; 3]) -> usize {
        self.node("", Op::Transpose { perm }, &[x])
    }

    /// The same values as `shape` (`[f]` or `[c, h, w]`), in `[h, w, c]` order when
    /// `channels_last`, else `[c, h, w]` order.
    pub fn reshape(&mut self, x: usize, shape: &[usize], channels_last: bool) -> usize {
        self.node(
            "",
            Op::Reshape {
                shape: shape.to_vec(),
                channels_last,
            },
            &[x],
        )
    }

    /// An activation on its own (not fused into a layer).
    pub fn act(&mut self, x: usize, p: Pointwise) -> usize {
        self.node("", Op::Act(p), &[x])
    }

    /// The checked spec; `softmax`: the model's output is meant as probabilities.
    pub fn finish(mut self, softmax: bool) -> Result<GraphSpec, ModelError> {
        self.spec.softmax = softmax;
        self.spec.shapes()?;
        Ok(self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv_transpose2d;
    use burn::tensor::ops::ConvTransposeOptions;
    use collab_data::{Features, Layout};

    fn input(shape: [usize; 3]) -> InputSpec {
        InputSpec {
            shape,
            layout: Layout::Nchw,
            features: Features::Array,
            labels: vec![],
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 16) as f32)
            .map(|v| v / 65_536.0 * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn conv_transpose_equals_burns_transposed_convolution() {
        let device = Device::flex();
        let (ci, co, k) = (3, 4, [3, 2]);
        for (stride, pad, out_pad) in [
            ([2, 3], [1, 0], [1, 2]),
            ([1, 1], [0, 1], [0, 0]),
            ([2, 2], [2, 1], [0, 1]),
        ] {
            let mut g = GraphBuilder::new("deconv", input([ci, 5, 4]));
            g.conv_transpose(
                0,
                co,
                k,
                stride,
                [pad[0], pad[1], pad[0], pad[1]],
                FusedActivation::None,
            );
            let mut spec = g.finish(false).unwrap();
            if let Op::ConvTranspose { output_padding, .. } = &mut spec.nodes[0].op {
                *output_padding = out_pad;
            }
            // ONNX / burn layout [in, out, kh, kw]; the graph holds [out, in, kh, kw] flipped.
            let w = values(ci * co * k[0] * k[1], 7);
            let b = values(co, 3);
            let mut flipped = vec![0f32; w.len()];
            for i in 0..ci {
                for o in 0..co {
                    for y in 0..k[0] {
                        for x in 0..k[1] {
                            flipped[((o * ci + i) * k[0] + k[0] - 1 - y) * k[1] + k[1] - 1 - x] =
                                w[((i * co + o) * k[0] + y) * k[1] + x];
                        }
                    }
                }
            }
            let weights = GraphWeights {
                convs: vec![(flipped, Some(b.clone()))],
                linears: vec![],
            };
            let shape = spec.shapes().unwrap()[1];
            let net = GraphNet::from_weights(spec, weights, &device).unwrap();
            let x = Tensor::<4>::from_data(
                TensorData::new(values(2 * ci * 20, 1), [2, ci, 5, 4]),
                &device,
            );
            let ours = net.forward(x.clone());
            let theirs = conv_transpose2d(
                x,
                Tensor::from_data(TensorData::new(w, [ci, co, k[0], k[1]]), &device),
                Some(Tensor::from_data(TensorData::new(b, [co]), &device)),
                ConvTransposeOptions::new(stride, pad, out_pad, [1, 1], 1),
            );
            let [_, c, h, w] = theirs.dims();
            assert_eq!(shape, Shape::Map([c, h, w]), "stride {stride:?}");
            let diff = (ours - theirs.flatten::<2>(1, 3))
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(
                diff < 1e-5,
                "stride {stride:?}, pads {pad:?}: differ by {diff}"
            );
        }
    }

    #[test]
    fn element_wise_shapes_broadcast_per_channel_and_scalar_only() {
        use Shape::{Map, Vec};
        let m = Map([4, 3, 5]);
        assert_eq!(broadcast(m, m), Some(m));
        assert_eq!(broadcast(m, Map([4, 1, 1])), Some(m));
        assert_eq!(broadcast(Map([4, 1, 1]), m), Some(m));
        assert_eq!(broadcast(Vec(4), m), Some(m));
        assert_eq!(broadcast(m, Map([1, 1, 1])), Some(m));
        assert_eq!(broadcast(Vec(7), Vec(1)), Some(Vec(7)));
        assert_eq!(broadcast(m, Map([3, 1, 1])), None);
        assert_eq!(broadcast(m, Map([4, 3, 1])), None);
        assert_eq!(broadcast(Vec(5), m), None);
        assert_eq!(broadcast(Vec(4), Vec(5)), None);
    }

    #[test]
    fn a_bad_element_wise_node_is_named_with_both_shapes() {
        let mut g = GraphBuilder::new("bad", input([4, 6, 6]));
        let x = g.conv(0, 8, [3, 3], [1, 1], 1, FusedActivation::None);
        g.node(
            "gate_mul",
            Op::Mul {
                act: FusedActivation::None,
            },
            &[0, x],
        );
        let err = g.finish(false).unwrap_err().to_string();
        assert!(
            err.contains("gate_mul") && err.contains("[4, 6, 6]") && err.contains("[8, 6, 6]"),
            "{err}"
        );
        let mut g = GraphBuilder::new("bad", input([4, 6, 6]));
        g.mul_const(0, &[1.0, 2.0]);
        let err = g.finish(false).unwrap_err().to_string();
        assert!(err.contains("2 constants"), "{err}");
    }

    #[test]
    fn products_differences_and_constants_compute_as_written() {
        let device = Device::flex();
        let mut g = GraphBuilder::new("se", input([2, 3, 3]));
        let gap = g.global_avg_pool(0);
        let gate = g.flatten(gap);
        let se = g.mul(0, gate, FusedActivation::None);
        let d = g.sub(se, gap, FusedActivation::Relu);
        let s = g.mul_const(d, &[2.0, -1.0]);
        let y = g.add_const(s, &[0.5]);
        g.add(y, gap, FusedActivation::None);
        let spec = g.finish(false).unwrap();
        assert_eq!(spec.requant_nodes(), vec![2, 3, 4, 5, 6]);
        let net = GraphNet::init(spec, &device).unwrap();
        let xs: std::vec::Vec<f32> = (0..18).map(|i| i as f32 / 4.0 - 2.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(xs.clone(), [1, 2, 3, 3]), &device);
        let got = net.forward(x).into_data().try_to_vec::<f32>().unwrap();
        for c in 0..2 {
            let plane = &xs[c * 9..(c + 1) * 9];
            let mean = plane.iter().sum::<f32>() / 9.0;
            for (i, v) in plane.iter().enumerate() {
                let want = ((v * mean - mean).max(0.0) * [2.0, -1.0][c] + 0.5) + mean;
                assert!((got[c * 9 + i] - want).abs() < 1e-5, "{c} {i}");
            }
        }
    }

    #[test]
    fn sums_keep_their_serialised_form_and_new_ops_read_back() {
        let old = r#"{"name":"s","op":"add","act":"relu","inputs":[0,1]}"#;
        let node: Node = serde_json::from_str(old).unwrap();
        assert_eq!(
            node.op,
            Op::Add {
                act: FusedActivation::Relu
            }
        );
        assert_eq!(serde_json::to_string(&node).unwrap(), old);
        for op in [
            Op::Mul {
                act: FusedActivation::None,
            },
            Op::Sub {
                act: FusedActivation::Relu6,
            },
            Op::MulConst {
                values: vec![0.5, 2.0],
            },
            Op::AddConst { values: vec![-1.0] },
        ] {
            let node = Node {
                name: "n".into(),
                op,
                inputs: vec![0],
            };
            let back: Node = serde_json::from_str(&serde_json::to_string(&node).unwrap()).unwrap();
            assert_eq!(back, node);
        }
    }

    #[test]
    fn transpose_and_reshape_move_values_in_their_order() {
        let device = Device::flex();
        let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let t = Tensor::<4>::from_data(TensorData::new(x.clone(), [1, 2, 3, 4]), &device);
        let run = |op: Op| -> Vec<f32> {
            let v = apply_op(&op, vec![Value::Map(t.clone())]);
            v.flat().into_data().try_to_vec::<f32>().unwrap()
        };
        // [c, h, w] = [2, 3, 4] → [w, c, h]: out[i][j][k] = x[j][k][i].
        let moved = run(Op::Transpose { perm: [2, 0, 1] });
        for i in 0..4 {
            for j in 0..2 {
                for k in 0..3 {
                    assert_eq!(moved[(i * 2 + j) * 3 + k], x[(j * 3 + k) * 4 + i]);
                }
            }
        }
        // [c, h, w] order: the flat values stay as they are.
        let chw = run(Op::Reshape {
            shape: vec![4, 3, 2],
            channels_last: false,
        });
        assert_eq!(chw, x);
        // [h, w, c] order: read as NHWC, written as NHWC, shown here in NCHW.
        let hwc = run(Op::Reshape {
            shape: vec![6, 2, 2],
            channels_last: true,
        });
        let nhwc_in: Vec<f32> = (0..12)
            .flat_map(|p| (0..2).map(move |c| (c * 12 + p) as f32))
            .collect();
        for c in 0..6 {
            for p in 0..4 {
                assert_eq!(hwc[c * 4 + p], nhwc_in[p * 6 + c]);
            }
        }
        // Shape rules: counts must match, perms must be permutations.
        let mut g = GraphBuilder::new("r", input([2, 3, 4]));
        g.reshape(0, &[5, 5], false);
        assert!(g.finish(false).is_err());
        let mut g = GraphBuilder::new("t", input([2, 3, 4]));
        g.transpose(0, [0, 0, 1]);
        assert!(g.finish(false).is_err());
    }

    #[test]
    fn relu_after_a_product_fuses_into_it() {
        let mut g = GraphBuilder::new("f", input([2, 3, 3]));
        let m = g.mul(0, 0, FusedActivation::None);
        g.node("", Op::Act(Pointwise::Relu6), &[m]);
        let spec = g.finish(false).unwrap().fused();
        assert_eq!(spec.nodes.len(), 1);
        assert_eq!(
            spec.nodes[0].op,
            Op::Mul {
                act: FusedActivation::Relu6
            }
        );
    }
}
