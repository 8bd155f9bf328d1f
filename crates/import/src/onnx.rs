//! ONNX import: the file is parsed by burn's own `onnx-ir` (typed nodes, static shapes,
//! constant tensors), then each operator is mapped onto a [`GraphSpec`] node and the weights
//! are read out in burn's layouts ([`GraphWeights`]).
//!
//! What a deployment graph adds around the layers is absorbed rather than kept:
//! - layout operators: a `Transpose`, or a `Reshape` / `Squeeze` / `Unsqueeze` that only moves
//!   or drops 1-sized axes, creates no node; each ONNX tensor is tracked as a view of a graph
//!   value (which ONNX axis is which burn axis), so an NHWC input with its transpose to NCHW
//!   (tf2onnx) becomes a [`Layout::Nhwc`] input, and a flatten after a transpose back to NHWC
//!   becomes `Flatten { channels_last: true }`. A view an operator cannot read as it lies (a
//!   Conv after a Transpose that swaps height and width) gets an [`Op::Transpose`] node, and a
//!   Reshape that moves data an [`Op::Reshape`] in the view's element order;
//! - a zero `Pad` before a convolution is merged into its padding; `BatchNormalization`, or a
//!   per-channel constant `Mul` / `Add` / `Sub` / `Div` (Keras BatchNorm as tf2onnx writes it),
//!   after a convolution or linear layer is folded into its weights and bias;
//! - `DequantizeLinear` of constant integer weights gives the float weights; a trailing
//!   `Softmax` sets [`GraphSpec::softmax`].
//!
//! `Add`, `Mul` and `Sub` of two computed values become graph nodes, broadcasting a
//! per-channel `[n, c, 1, 1]`, a vector or a scalar over a map (squeeze-excite, swish); a
//! constant operand that cannot be folded becomes a fixed constant node (`MulConst`,
//! `AddConst`; `Div` by a constant as the reciprocal).
//!
//! Any other operator, or a setting the graph cannot express, is an
//! [`ImportError::Unsupported`] naming the operator, the file's node and its inputs; operator
//! types are checked before any weight is read.
//!
//! Layer names come from the file's node names (onnx-ir renames nodes by type and counter),
//! sanitised to `[A-Za-z0-9_]` and made unique: they are the layer paths of reports and
//! `--layer`.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use collab_data::{Features, InputSpec, Layout};
use collab_models::graph::{ConvSpec, FusedActivation, Node, Op, Pointwise, PoolSpec, Shape};
use collab_models::{GraphSpec, GraphWeights};
use onnx_ir::batch_norm::BatchNormConfig;
use onnx_ir::clip::ClipInput;
use onnx_ir::pad::{ConstantValueInput, PadInput, PadMode, PadNode};
use onnx_ir::padding::{AutoPad, PaddingConfig1d, PaddingConfig2d};
use onnx_ir::reduce::{ReduceAxes, ReduceConfig};
use onnx_ir::reshape::ReshapeInput;
use onnx_ir::squeeze::SqueezeInput;
use onnx_ir::unsqueeze::UnsqueezeConfig;
use onnx_ir::{
    Argument, DType, Message, ModelProto, Node as IrNode, OnnxGraph, OnnxGraphBuilder,
    TensorDataExt,
};

use crate::{ImportError, Imported};

/// Import an ONNX file (see the module docs).
///
/// The input is taken from the file: a rank-4 input read by a transpose to NCHW (tf2onnx) is
/// [`Layout::Nhwc`] with shape `[c, h, w]`, another rank-4 input [`Layout::Nchw`], a rank-3
/// input `[n, c, w]` (1-D models) [`Layout::Nchw`] `[c, 1, w]`, a rank-2 input `[n, f]`
/// [`Layout::Flat`] `[f, 1, 1]`. `input`, when given, supplies the features and labels; its
/// shape and layout must be the file's.
pub fn import(path: &Path, input: Option<&InputSpec>) -> Result<Imported, ImportError> {
    let bytes = crate::read(path)?;
    let model = ModelProto::parse_from_bytes(&bytes).map_err(|e| ImportError::Format {
        path: path.to_path_buf(),
        reason: format!("not an ONNX model ({e}); is the file complete?"),
    })?;
    if model.graph.node.is_empty() {
        return Err(ImportError::Format {
            path: path.to_path_buf(),
            reason: "the file holds no ONNX graph (no operators); is it complete?".into(),
        });
    }
    let graph = parse(path)?;
    let sources = source_nodes(&model, &graph);
    let t = Translator::new(path, &graph, sources);
    t.check_operators()?;
    t.run(input)
}

/// Parse with onnx-ir (from the path, so that weights in external data files are found). It
/// reports most damage as an error, but it has panicking paths on malformed input (`panic!` and
/// `expect` in its proto conversion, type inference and external-data reading): a panic
/// becomes the same [`ImportError::Format`].
fn parse(path: &Path) -> Result<OnnxGraph, ImportError> {
    let format = |reason: String| ImportError::Format {
        path: path.to_path_buf(),
        reason,
    };
    match catch_unwind(AssertUnwindSafe(|| {
        OnnxGraphBuilder::new().parse_file(path)
    })) {
        Ok(Ok(graph)) => Ok(graph),
        Ok(Err(e @ (onnx_ir::Error::InvalidFormat { .. } | onnx_ir::Error::Io { .. }))) => {
            Err(format(format!(
                "not a readable ONNX model ({e}); is the file complete?"
            )))
        }
        Ok(Err(e)) => Err(format(format!(
            "onnx-ir cannot process the graph: {e}; the file is damaged, or re-export it \
             (a recent opset, static shapes)"
        ))),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            Err(format(format!(
                "onnx-ir cannot read this file ({what}); is it complete and an ONNX export?"
            )))
        }
    }
}

/// A node as the file writes it.
#[derive(Clone, Debug)]
struct Source {
    name: String,
    op: String,
    inputs: Vec<String>,
}

/// Where a computed input of a node comes from: the graph input, or a node of the file.
#[derive(Clone, Debug, PartialEq)]
enum Flow {
    Input(String),
    Node(usize),
    /// An onnx-ir node without a counterpart (matches anything).
    Unknown,
}

/// The file's node behind each onnx-ir node. onnx-ir keeps the file's node order but renames
/// nodes (`conv2d3`), turns constants and folded subgraphs into `Constant` nodes, drops
/// identities and no-ops and merges a `MatMul` with the bias `Add` after it; so each onnx-ir
/// node pairs with the next file node of its operator type whose computed inputs come from
/// the paired producers (the next of its type at all, where none does). A node that does not
/// pair keeps onnx-ir's name.
fn source_nodes(model: &ModelProto, graph: &OnnxGraph) -> Vec<Option<Source>> {
    let protos = &model.graph.node;
    let constants: HashSet<&str> = model
        .graph
        .initializer
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let inputs: HashSet<&str> = model
        .graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !constants.contains(n))
        .collect();
    let mut proto_of: HashMap<&str, usize> = HashMap::new();
    for (i, n) in protos.iter().enumerate() {
        if n.op_type != "Constant" {
            for o in &n.output {
                proto_of.insert(o.as_str(), i);
            }
        }
    }
    // A bias Add merged into its MatMul stands for the MatMul.
    let mut merged: HashMap<usize, usize> = HashMap::new();
    let proto_flow = |i: usize, merged: &HashMap<usize, usize>| -> Vec<Flow> {
        protos[i]
            .input
            .iter()
            .filter_map(|name| {
                if inputs.contains(name.as_str()) {
                    Some(Flow::Input(name.clone()))
                } else {
                    let j = *proto_of.get(name.as_str())?;
                    Some(Flow::Node(*merged.get(&j).unwrap_or(&j)))
                }
            })
            .collect()
    };
    let ir_inputs: HashSet<&str> = graph.inputs.iter().map(|a| a.name.as_str()).collect();
    let mut ir_of: HashMap<&str, usize> = HashMap::new();
    let mut paired: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    let mut p = 0;
    for (k, node) in graph.nodes.iter().enumerate() {
        for o in node.outputs() {
            ir_of.insert(o.name.as_str(), k);
        }
        if matches!(node, IrNode::Constant(_)) {
            continue;
        }
        let flow: Vec<Flow> = node
            .inputs()
            .iter()
            .filter(|a| a.is_dynamic())
            .map(|a| match ir_of.get(a.name.as_str()) {
                _ if ir_inputs.contains(a.name.as_str()) => Flow::Input(a.name.clone()),
                Some(&j) => paired[j].map_or(Flow::Unknown, Flow::Node),
                None => Flow::Unknown,
            })
            .collect();
        let op = op_type(node);
        let candidates: Vec<usize> = (p..protos.len())
            .filter(|&i| same_op(&op, &protos[i].op_type))
            .collect();
        let same_flow = |&&i: &&usize| {
            let theirs = proto_flow(i, &merged);
            theirs.len() == flow.len()
                && flow
                    .iter()
                    .zip(&theirs)
                    .all(|(a, b)| *a == Flow::Unknown || a == b)
        };
        let Some(&found) = candidates.iter().find(same_flow).or(candidates.first()) else {
            tracing::debug!(
                "onnx: node {} ({op}) has no counterpart in the file",
                node.name()
            );
            continue;
        };
        paired[k] = Some(found);
        p = found + 1;
        let merged_add = protos[found].op_type == "MatMul"
            && node.inputs().len() == 3
            && protos.get(p).is_some_and(|n| n.op_type == "Add");
        if merged_add {
            merged.insert(p, found);
            p += 1;
        }
    }
    paired
        .iter()
        .map(|q| {
            q.map(|i| Source {
                name: protos[i].name.clone(),
                op: protos[i].op_type.clone(),
                inputs: protos[i].input.clone(),
            })
        })
        .collect()
}

/// The ONNX operator type of an onnx-ir node (`Conv2d` → `Conv`, custom ops by their type).
fn op_type(node: &IrNode) -> String {
    if let IrNode::Custom(c) = node {
        return c.op_type.clone();
    }
    let t = node.node_type().to_string();
    match t.strip_suffix("1d").or_else(|| t.strip_suffix("2d")) {
        Some(base) if !base.is_empty() => base.to_string(),
        _ => t.strip_suffix("3d").unwrap_or(&t).to_string(),
    }
}

fn same_op(ir: &str, file: &str) -> bool {
    ir.eq_ignore_ascii_case(file) || (ir == "Linear" && (file == "Gemm" || file == "MatMul"))
}

/// A file's node name as a layer path: `[A-Za-z0-9_]`, each run of other characters one `_`.
/// TFLite-derived names (tf2onnx copies them) join the names of every tensor fused into the
/// operator with `;`; the most frequent scope among them names the layer
/// (`model/conv2d/BiasAdd;model/conv2d/Conv2D` → `model_conv2d`).
fn layer_name(raw: &str) -> String {
    let base = if raw.contains(';') {
        main_scope(raw)
    } else {
        raw
    };
    let mut out = String::with_capacity(base.len());
    for c in base.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// The most frequent scope (path up to the last `/`) of the `;`-joined names; of equal counts
/// the last.
fn main_scope(raw: &str) -> &str {
    let scopes: Vec<&str> = raw
        .split(';')
        .map(|s| s.rsplit_once('/').map_or(s, |(scope, _)| scope))
        .filter(|s| !s.is_empty())
        .collect();
    let count = |s: &str| scopes.iter().filter(|x| **x == s).count();
    let mut best: Option<(&str, usize)> = None;
    for &s in &scopes {
        let c = count(s);
        if best.is_none_or(|(_, b)| c >= b) {
            best = Some((s, c));
        }
    }
    best.map_or(raw, |(s, _)| s)
}

/// Pads `(begin, end)` of ONNX `SAME_UPPER` (extra at the end) or `SAME_LOWER` (at the start):
/// output `ceil(size / stride)`.
fn same_pads(
    size: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    lower: bool,
) -> (usize, usize) {
    let out = size.div_ceil(stride.max(1));
    let span = dilation * (kernel.max(1) - 1) + 1;
    let total = (out.saturating_sub(1) * stride + span).saturating_sub(size);
    let (small, big) = (total / 2, total - total / 2);
    if lower { (big, small) } else { (small, big) }
}

/// How an ONNX tensor lies over a graph value: ONNX axis `i` is axis `axes[i]` of the burn
/// value (`[n, c, h, w]` for maps, `[n, f]` for vectors); burn axes not listed have size 1.
#[derive(Clone, Debug)]
struct Val {
    v: usize,
    axes: Vec<usize>,
    /// Zero padding `[t, l, b, r]` of a `Pad` waiting to be merged into the convolution after it.
    pad: Option<[usize; 4]>,
}

/// A ConvTranspose's attributes, 1-D ones as 2-D of height 1.
struct ConvTransposeAttrs {
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    /// `[top, left, bottom, right]`.
    pads: [usize; 4],
    output_padding: [usize; 2],
    /// No auto_pad and no output_shape (pads and output_padding say it all).
    explicit: bool,
}

/// The layer that made a value.
#[derive(Clone, Copy, Debug)]
enum Layer {
    Conv(usize),
    Linear(usize),
}

/// A constant: shape and values.
type Const = (Vec<usize>, Vec<f32>);

struct Translator<'a> {
    path: &'a Path,
    graph: &'a OnnxGraph,
    sources: Vec<Option<Source>>,
    spec: GraphSpec,
    weights: GraphWeights,
    shapes: Vec<Shape>,
    made_by: Vec<Option<Layer>>,
    /// Whether a graph node reads the value (it can no longer take a fold).
    consumed: Vec<bool>,
    vals: HashMap<String, Val>,
    /// Constants computed here (dequantized weights), by onnx-ir argument name.
    consts: HashMap<String, Const>,
    /// Readers not yet translated, per onnx-ir argument (graph outputs count as one).
    remaining: HashMap<String, usize>,
    /// The onnx-ir arguments that view each value.
    aliases: HashMap<usize, Vec<String>>,
    /// The flattened form of a map, once made.
    flat_of: HashMap<usize, usize>,
    names: HashSet<String>,
}

const SUPPORTED: &str = "supported: Conv, Gemm/MatMul, BatchNormalization or a per-channel \
    constant Mul/Add/Sub/Div after a layer (folded), Add/Mul/Sub of computed values (broadcast \
    per channel or scalar) or by a constant, Div by a constant, Concat on channels, MaxPool, \
    AveragePool, GlobalAveragePool, ReduceMean over space, Relu, Clip(0, 6), LeakyRelu, \
    Sigmoid, Tanh, HardSwish, Flatten, Transpose/Reshape/Squeeze/Unsqueeze that keep the batch \
    first and map onto [n, c, h, w], [n, c, w] or [n, f], ConvTranspose (1-D and 2-D, one group, \
    no dilation), a zero Pad before a Conv, DequantizeLinear of constant weights, a final Softmax";

impl<'a> Translator<'a> {
    fn new(path: &'a Path, graph: &'a OnnxGraph, sources: Vec<Option<Source>>) -> Self {
        let mut remaining: HashMap<String, usize> = HashMap::new();
        for node in &graph.nodes {
            for a in node.inputs() {
                if !a.name.is_empty() {
                    *remaining.entry(a.name.clone()).or_default() += 1;
                }
            }
        }
        for o in &graph.outputs {
            *remaining.entry(o.name.clone()).or_default() += 1;
        }
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Self {
            path,
            graph,
            sources,
            spec: GraphSpec {
                name,
                input: InputSpec {
                    shape: [0; 3],
                    layout: Layout::Nchw,
                    features: Features::Array,
                    labels: vec![],
                },
                convs: vec![],
                linears: vec![],
                nodes: vec![],
                softmax: false,
            },
            weights: GraphWeights::default(),
            shapes: vec![],
            made_by: vec![],
            consumed: vec![],
            vals: HashMap::new(),
            consts: HashMap::new(),
            remaining,
            aliases: HashMap::new(),
            flat_of: HashMap::new(),
            names: HashSet::new(),
        }
    }

    // ----- errors -----

    /// The file's name, operator and inputs of node `k` (onnx-ir's where it has no counterpart).
    fn describe(&self, k: usize) -> (String, String, Vec<String>) {
        match &self.sources[k] {
            Some(s) => (s.name.clone(), s.op.clone(), s.inputs.clone()),
            None => {
                let n = &self.graph.nodes[k];
                (
                    n.name().to_string(),
                    op_type(n),
                    n.inputs().iter().map(|a| a.name.clone()).collect(),
                )
            }
        }
    }

    fn unsupported(&self, k: usize, reason: impl Into<String>) -> ImportError {
        let (node, op, inputs) = self.describe(k);
        ImportError::Unsupported {
            path: self.path.to_path_buf(),
            node,
            op,
            inputs,
            reason: reason.into(),
        }
    }

    /// An error about the graph's input or output (no node to name).
    fn boundary(&self, what: &str, name: &str, reason: String) -> ImportError {
        ImportError::Unsupported {
            path: self.path.to_path_buf(),
            node: name.to_string(),
            op: format!("graph {what}"),
            inputs: vec![],
            reason,
        }
    }

    // ----- pass 1: operator types -----

    /// Refuse operators the graph cannot express before reading any weight.
    fn check_operators(&self) -> Result<(), ImportError> {
        let dequantized: HashSet<&str> = self
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n, IrNode::DequantizeLinear(_)))
            .filter_map(|n| n.outputs().first().map(|o| o.name.as_str()))
            .collect();
        let constant = |a: &Argument| !a.is_dynamic() || dequantized.contains(a.name.as_str());
        for (k, n) in self.graph.nodes.iter().enumerate() {
            use IrNode as N;
            match n {
                N::Constant(_)
                | N::Identity(_)
                | N::Dropout(_)
                | N::DequantizeLinear(_)
                | N::Conv1d(_)
                | N::Conv2d(_)
                | N::Linear(_)
                | N::Gemm(_)
                | N::BatchNormalization(_)
                | N::Add(_)
                | N::Relu(_)
                | N::Clip(_)
                | N::LeakyRelu(_)
                | N::Sigmoid(_)
                | N::Tanh(_)
                | N::HardSwish(_)
                | N::Concat(_)
                | N::MaxPool1d(_)
                | N::MaxPool2d(_)
                | N::AveragePool1d(_)
                | N::AveragePool2d(_)
                | N::GlobalAveragePool(_)
                | N::ReduceMean(_)
                | N::Flatten(_)
                | N::Reshape(_)
                | N::Squeeze(_)
                | N::Unsqueeze(_)
                | N::Transpose(_)
                | N::Softmax(_)
                | N::Pad(_)
                | N::ConvTranspose1d(_)
                | N::ConvTranspose2d(_) => {}
                N::Mul(_) | N::Sub(_) if n.inputs().len() == 2 => {}
                N::Div(_) => {
                    let ins = n.inputs();
                    if ins.len() != 2 || !ins.iter().any(constant) {
                        return Err(self.unsupported(
                            k,
                            "a quotient of two computed values has no equivalent in the graph; \
                             only division by a constant is supported",
                        ));
                    }
                }
                N::MatMul(_) if n.inputs().len() == 2 && constant(&n.inputs()[1]) => {}
                N::MatMul(_) => {
                    return Err(self.unsupported(
                        k,
                        "a MatMul whose second input is not a constant 2-D weight is not a \
                         linear layer; the graph has no product of two computed values",
                    ));
                }
                _ => {
                    return Err(self.unsupported(
                        k,
                        format!(
                            "`{}` has no equivalent in a burn-collab graph ({SUPPORTED}); \
                             re-export the model without it",
                            op_type(n)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    // ----- pass 2: translation -----

    fn run(mut self, given: Option<&InputSpec>) -> Result<Imported, ImportError> {
        self.input(given)?;
        for k in 0..self.graph.nodes.len() {
            let n = &self.graph.nodes[k];
            for a in n.inputs() {
                if let Some(r) = self.remaining.get_mut(&a.name) {
                    *r = r.saturating_sub(1);
                }
            }
            self.node(k)?;
        }
        self.output()?;
        let spec = self.spec.fused();
        spec.shapes().map_err(|source| ImportError::Graph {
            path: self.path.to_path_buf(),
            source,
        })?;
        Ok(Imported {
            spec,
            weights: self.weights,
        })
    }

    /// The graph's one input: its layout, shape and view.
    fn input(&mut self, given: Option<&InputSpec>) -> Result<(), ImportError> {
        let graph = self.graph;
        let [arg] = graph.inputs.as_slice() else {
            let names: Vec<&str> = graph.inputs.iter().map(|a| a.name.as_str()).collect();
            return Err(self.boundary(
                "input",
                &names.join(", "),
                format!(
                    "the model has {} inputs; a burn-collab graph takes exactly one",
                    names.len()
                ),
            ));
        };
        let bad = |reason: String| self.boundary("input", &arg.name, reason);
        if arg.ty.is_shape() || arg.ty.elem_type() != DType::F32 {
            return Err(bad(format!(
                "type {}; the graph takes a float32 tensor",
                arg.ty
            )));
        }
        let dims = arg.ty.static_shape().cloned().unwrap_or_default();
        let rank = arg.ty.rank();
        let known: Option<Vec<usize>> = dims.iter().skip(1).copied().collect();
        let d = match known {
            Some(d) if dims.len() == rank && rank >= 2 && d.iter().all(|&x| x > 0) => d,
            _ => {
                return Err(bad(format!(
                    "type {}: every axis but the batch must have a known size; re-export with a fixed input shape",
                    arg.ty
                )));
            }
        };
        // The nodes reading the input, directly or through a Pad (tf2onnx may pad in NHWC).
        let mut names = vec![arg.name.as_str()];
        let mut readers: Vec<&IrNode> = vec![];
        for n in &graph.nodes {
            if n.inputs()
                .first()
                .is_some_and(|a| names.contains(&a.name.as_str()))
            {
                readers.push(n);
                if let (IrNode::Pad(_), Some(o)) = (n, n.outputs().first()) {
                    names.push(o.name.as_str());
                }
            }
        }
        let transposed_by = |perm: &[i64]| {
            readers.iter().any(|n| match n {
                IrNode::Transpose(t) => t.config.perm == perm,
                IrNode::Reshape(r) if rank == 4 => match &r.config.shape {
                    // tf2onnx writes the NHWC → NCHW transpose of a 1-channel input as a reshape.
                    ReshapeInput::Static(s) => {
                        d[2] == 1
                            && s.len() == 4
                            && s[1..] == [d[2] as i64, d[0] as i64, d[1] as i64]
                    }
                    ReshapeInput::Runtime(_) => false,
                },
                _ => false,
            })
        };
        let (shape, layout, axes) = match rank {
            4 if transposed_by(&[0, 3, 1, 2]) => {
                ([d[2], d[0], d[1]], Layout::Nhwc, vec![0, 2, 3, 1])
            }
            4 => ([d[0], d[1], d[2]], Layout::Nchw, vec![0, 1, 2, 3]),
            3 if transposed_by(&[0, 2, 1]) => ([d[1], 1, d[0]], Layout::Nhwc, vec![0, 3, 1]),
            3 => ([d[0], 1, d[1]], Layout::Nchw, vec![0, 1, 3]),
            2 => ([d[0], 1, 1], Layout::Flat, vec![0, 1]),
            _ => {
                return Err(bad(format!(
                    "rank {rank}; the graph takes [n, h, w, c] / [n, c, h, w], [n, c, w] or [n, f]"
                )));
            }
        };
        let (features, labels) = match given {
            Some(g) => {
                if g.shape != shape || g.layout != layout {
                    return Err(bad(format!(
                        "the given input spec says shape {:?} ({:?}), the file takes {shape:?} \
                         ({layout:?}, ONNX type {}); give the file's shape and layout",
                        g.shape, g.layout, arg.ty
                    )));
                }
                (g.features.clone(), g.labels.clone())
            }
            None => (Features::Array, vec![]),
        };
        self.spec.input = InputSpec {
            shape,
            layout,
            features,
            labels,
        };
        self.shapes.push(Shape::Map(shape));
        self.made_by.push(None);
        self.consumed.push(false);
        self.bind(
            &arg.name,
            Val {
                v: 0,
                axes,
                pad: None,
            },
        );
        Ok(())
    }

    /// The graph's one output must be the last value; a transposed map is flattened in its
    /// order.
    fn output(&mut self) -> Result<(), ImportError> {
        let graph = self.graph;
        let [arg] = graph.outputs.as_slice() else {
            let names: Vec<&str> = graph.outputs.iter().map(|a| a.name.as_str()).collect();
            return Err(self.boundary(
                "output",
                &names.join(", "),
                format!(
                    "the model has {} outputs; a burn-collab graph gives exactly one",
                    names.len()
                ),
            ));
        };
        let Some(x) = self.vals.get(&arg.name).cloned() else {
            return Err(self.boundary(
                "output",
                &arg.name,
                "it is not computed from the input (a constant output)".into(),
            ));
        };
        if self.spec.nodes.is_empty() {
            return Err(self.boundary(
                "output",
                &arg.name,
                "the model computes nothing (no operator between input and output)".into(),
            ));
        }
        if x.v != self.spec.nodes.len() {
            return Err(self.boundary(
                "output",
                &arg.name,
                "other values are computed after the output and not used by it".into(),
            ));
        }
        if x.pad.is_some() {
            return Err(self.pad_not_merged(self.graph.nodes.len() - 1));
        }
        if let Shape::Map(_) = self.shapes[x.v] {
            let order = self.flat_order(&x);
            if order.windows(2).any(|w| w[0] > w[1]) {
                let k = self.graph.nodes.len() - 1;
                self.flatten(k, &x)?;
            }
        }
        Ok(())
    }

    fn bind(&mut self, name: &str, val: Val) {
        if name.is_empty() {
            return;
        }
        self.aliases
            .entry(val.v)
            .or_default()
            .push(name.to_string());
        self.vals.insert(name.to_string(), val);
    }

    /// The unique layer path for node `k` (with `suffix` for a second graph node it makes).
    fn node_name(&mut self, k: usize, suffix: &str) -> String {
        let raw = self.sources[k]
            .as_ref()
            .map(|s| layer_name(&s.name))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| layer_name(self.graph.nodes[k].name()));
        let base = if suffix.is_empty() {
            raw
        } else {
            format!("{raw}_{suffix}")
        };
        let mut name = base.clone();
        let mut i = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Append a graph node for ONNX node `k`, checked at once so that an error names it.
    fn push(
        &mut self,
        k: usize,
        suffix: &str,
        op: Op,
        inputs: Vec<usize>,
    ) -> Result<usize, ImportError> {
        let name = self.node_name(k, suffix);
        for &i in &inputs {
            self.consumed[i] = true;
        }
        let layer = match op {
            // A transposed convolution is held as its equivalent convolution: a BatchNorm after
            // it folds the same way (per output channel of weight and bias).
            Op::Conv { layer, .. } | Op::ConvTranspose { layer, .. } => Some(Layer::Conv(layer)),
            Op::Linear { layer, .. } => Some(Layer::Linear(layer)),
            _ => None,
        };
        self.spec.nodes.push(Node { name, op, inputs });
        let shapes = self
            .spec
            .shapes()
            .map_err(|e| self.unsupported(k, format!("the translated node does not fit: {e}")))?;
        self.shapes = shapes;
        self.made_by.push(layer);
        self.consumed.push(false);
        Ok(self.spec.nodes.len())
    }

    /// Burn's `[n, c, h, w]` (or `[n, f, 1, 1]`) sizes of a value, the batch as 1.
    fn burn_dims(&self, v: usize) -> [usize; 4] {
        match self.shapes[v] {
            Shape::Map([c, h, w]) => [1, c, h, w],
            Shape::Vec(f) => [1, f, 1, 1],
        }
    }

    /// The ONNX sizes of a view, the batch as 1.
    fn onnx_dims(&self, x: &Val) -> Vec<usize> {
        let d = self.burn_dims(x.v);
        x.axes.iter().map(|&a| d[a]).collect()
    }

    /// The burn axes of the view's non-1 axes in ONNX order (batch excluded).
    fn flat_order(&self, x: &Val) -> Vec<usize> {
        let d = self.burn_dims(x.v);
        x.axes[1..].iter().copied().filter(|&a| d[a] != 1).collect()
    }

    /// The view of argument `a` of node `k`.
    fn val(&self, k: usize, a: &Argument) -> Result<Val, ImportError> {
        let x = match self.vals.get(&a.name) {
            Some(x) => x.clone(),
            None if !a.is_dynamic() || self.consts.contains_key(&a.name) => {
                return Err(self.unsupported(
                    k,
                    "a constant where the graph needs a computed value (input-independent \
                     branches are not supported)",
                ));
            }
            None => {
                return Err(self.unsupported(
                    k,
                    format!("its input `{}` is not computed by a supported node", a.name),
                ));
            }
        };
        if x.axes.first() != Some(&0) {
            return Err(self.unsupported(
                k,
                "its input has the batch axis moved; only layouts that keep the batch first are supported",
            ));
        }
        Ok(x)
    }

    /// [`Self::val`], refusing a pending `Pad` (merged only into a convolution).
    fn plain(&self, k: usize, a: &Argument) -> Result<Val, ImportError> {
        let x = self.val(k, a)?;
        if x.pad.is_some() {
            return Err(self.pad_not_merged(k));
        }
        Ok(x)
    }

    fn pad_not_merged(&self, k: usize) -> ImportError {
        self.unsupported(
            k,
            "it reads the output of a Pad; a Pad is supported only before a Conv, with at most \
             layout operators between (merged into its padding)",
        )
    }

    /// A view that must be a feature map in `[n, c, h, w]` order (`[n, c, w]` when `one_d`).
    fn nchw(&self, k: usize, x: &Val, one_d: bool) -> Result<[usize; 3], ImportError> {
        let want: &[usize] = if one_d { &[0, 1, 3] } else { &[0, 1, 2, 3] };
        match self.shapes[x.v] {
            Shape::Map(m) if x.axes == want && (!one_d || m[1] == 1) => Ok(m),
            _ => Err(self.unsupported(
                k,
                format!(
                    "its input (ONNX shape {:?}) is not a feature map in {} order; the \
                     layout transposes before it are not supported",
                    self.onnx_dims(x),
                    if one_d { "[n, c, w]" } else { "[n, c, h, w]" }
                ),
            )),
        }
    }

    /// A constant input: its shape and values as `f32`.
    fn constant(&self, k: usize, a: &Argument, what: &str) -> Result<Const, ImportError> {
        if let Some(c) = self.consts.get(&a.name) {
            return Ok(c.clone());
        }
        let data = a.value().ok_or_else(|| {
            self.unsupported(
                k,
                format!("its {what} `{}` is computed, not a constant", a.name),
            )
        })?;
        let values = data.to_f32_vec().map_err(|e| {
            self.unsupported(k, format!("its {what} cannot be read as numbers: {e}"))
        })?;
        Ok((data.shape().to_vec(), values))
    }

    /// Input `i` of node `k` unless absent.
    fn optional(&self, k: usize, i: usize) -> Option<&'a Argument> {
        self.graph.nodes[k]
            .inputs()
            .get(i)
            .filter(|a| !a.is_optional())
    }

    fn first_output(&self, k: usize) -> String {
        self.graph.nodes[k]
            .outputs()
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default()
    }

    fn node(&mut self, k: usize) -> Result<(), ImportError> {
        let graph = self.graph;
        let n = &graph.nodes[k];
        let ins = n.inputs();
        let out = self.first_output(k);
        use IrNode as N;
        let result = match n {
            N::Constant(_) => return Ok(()),
            N::DequantizeLinear(d) => {
                self.dequantize(k, d.config.axis, d.config.block_size)?;
                return Ok(());
            }
            N::Identity(_) | N::Dropout(_) => self.val(k, &ins[0])?,
            N::Transpose(t) => self.transpose(k, &t.config.perm)?,
            N::Reshape(r) => {
                let target = match &r.config.shape {
                    ReshapeInput::Static(s) => s.clone(),
                    ReshapeInput::Runtime(_) => {
                        let (_, v) = self.constant(k, &ins[1], "target shape")?;
                        v.iter().map(|x| *x as i64).collect()
                    }
                };
                let x = self.val(k, &ins[0])?;
                self.reshape(k, &x, &target)?
            }
            N::Flatten(f) => {
                let x = self.plain(k, &ins[0])?;
                if f.config.axis != 1 {
                    return Err(self.unsupported(
                        k,
                        format!(
                            "Flatten on axis {}; only axis 1 ([n, -1]) is supported",
                            f.config.axis
                        ),
                    ));
                }
                self.flatten(k, &x)?
            }
            N::Squeeze(s) => {
                let axes = match &s.config.axes {
                    None => None,
                    Some(SqueezeInput::Static(a)) => Some(a.clone()),
                    Some(SqueezeInput::Runtime(r)) => {
                        let (_, v) = self.constant(k, &ins[r.input_index], "axes")?;
                        Some(v.iter().map(|x| *x as i64).collect())
                    }
                };
                let x = self.val(k, &ins[0])?;
                self.squeeze(k, &x, axes)?
            }
            N::Unsqueeze(u) => {
                let axes = match &u.config {
                    UnsqueezeConfig::Static(a) => a.clone(),
                    UnsqueezeConfig::Runtime(r) => {
                        let (_, v) = self.constant(k, &ins[r.input_index], "axes")?;
                        v.iter().map(|x| *x as i64).collect()
                    }
                };
                let x = self.val(k, &ins[0])?;
                self.unsqueeze(k, &x, &axes)?
            }
            N::Pad(p) => self.pad(k, p)?,
            N::Conv2d(c) => {
                let cfg = &c.config;
                let (t, l, b, r) = cfg.padding.as_tuple();
                self.conv(
                    k,
                    false,
                    cfg.kernel_size,
                    cfg.stride,
                    cfg.dilation,
                    cfg.groups,
                    [t, l, b, r],
                    &cfg.auto_pad,
                )?
            }
            N::Conv1d(c) => {
                let cfg = &c.config;
                let (l, r) = cfg.padding.as_tuple();
                self.conv(
                    k,
                    true,
                    [1, cfg.kernel_size],
                    [1, cfg.stride],
                    [1, cfg.dilation],
                    cfg.groups,
                    [0, l, 0, r],
                    &cfg.auto_pad,
                )?
            }
            N::ConvTranspose2d(c) => {
                let cfg = &c.config;
                let [ph, pw] = cfg.padding;
                self.conv_transpose(
                    k,
                    false,
                    ConvTransposeAttrs {
                        kernel: cfg.kernel_size,
                        stride: cfg.stride,
                        dilation: cfg.dilation,
                        groups: cfg.groups,
                        pads: [ph, pw, ph, pw],
                        output_padding: cfg.padding_out,
                        explicit: cfg.auto_pad == AutoPad::NotSet && cfg.output_shape.is_none(),
                    },
                )?
            }
            N::ConvTranspose1d(c) => {
                let cfg = &c.config;
                self.conv_transpose(
                    k,
                    true,
                    ConvTransposeAttrs {
                        kernel: [1, cfg.kernel_size],
                        stride: [1, cfg.stride],
                        dilation: [1, cfg.dilation],
                        groups: cfg.groups,
                        pads: [0, cfg.padding, 0, cfg.padding],
                        output_padding: [0, cfg.padding_out],
                        explicit: cfg.auto_pad == AutoPad::NotSet && cfg.output_shape.is_none(),
                    },
                )?
            }
            N::Linear(l) => self.linear(k, l.config.transpose_weight, 1.0, 1.0)?,
            // onnx-ir makes a Linear of a MatMul by a constant; one by dequantized weights stays.
            N::MatMul(_) => self.linear(k, false, 1.0, 1.0)?,
            N::Gemm(g) => {
                if g.config.trans_a != 0 {
                    return Err(self.unsupported(
                        k,
                        "Gemm with transA = 1 transposes its computed input; not supported",
                    ));
                }
                self.linear(k, g.config.trans_b != 0, g.config.alpha, g.config.beta)?
            }
            N::BatchNormalization(bn) => {
                let eps = match &bn.config {
                    BatchNormConfig::Static(c) => c.epsilon,
                    BatchNormConfig::Runtime(c) => c.epsilon,
                };
                self.batch_norm(k, eps)?
            }
            N::Add(_) => self.add(k)?,
            N::Mul(_) => self.elementwise(
                k,
                Op::Mul {
                    act: FusedActivation::None,
                },
            )?,
            N::Sub(_) => self.elementwise(
                k,
                Op::Sub {
                    act: FusedActivation::None,
                },
            )?,
            N::Div(_) => self.affine_constant(k)?,
            N::Relu(_) => self.act(k, Pointwise::Relu)?,
            N::Sigmoid(_) => self.act(k, Pointwise::Sigmoid)?,
            N::Tanh(_) => self.act(k, Pointwise::Tanh)?,
            N::HardSwish(_) => self.act(k, Pointwise::HardSwish)?,
            N::LeakyRelu(l) => self.act(
                k,
                Pointwise::LeakyRelu {
                    alpha: l.config.alpha as f32,
                },
            )?,
            N::Clip(c) => {
                let bound = |b: &Option<ClipInput>| -> Result<Option<f64>, ImportError> {
                    Ok(match b {
                        None => None,
                        Some(ClipInput::Static(v)) => Some(*v),
                        Some(ClipInput::Runtime(r)) => {
                            let (_, v) = self.constant(k, &ins[r.input_index], "bound")?;
                            v.first().map(|x| *x as f64)
                        }
                    })
                };
                let (lo, hi) = (bound(&c.config.min)?, bound(&c.config.max)?);
                let act = match (lo, hi) {
                    (Some(lo), Some(hi)) if lo == 0.0 && hi == 6.0 => Pointwise::Relu6,
                    (Some(0.0), None) => Pointwise::Relu,
                    _ => {
                        return Err(self.unsupported(
                            k,
                            format!(
                                "Clip({lo:?}, {hi:?}); only Clip(0, 6) (ReLU6) and Clip(0, none) \
                                 (ReLU) are supported"
                            ),
                        ));
                    }
                };
                self.act(k, act)?
            }
            N::Concat(c) => self.concat(k, c.config.axis)?,
            N::MaxPool2d(p) => {
                let c = &p.config;
                self.check_pool_extras(k, c.dilation != [1, 1], false, false)?;
                self.pool(
                    k,
                    false,
                    true,
                    c.kernel_size,
                    c.strides,
                    pads2d(&c.padding),
                    &c.auto_pad,
                    c.ceil_mode,
                )?
            }
            N::MaxPool1d(p) => {
                let c = &p.config;
                self.check_pool_extras(k, c.dilation != 1, false, false)?;
                let (l, r) = c.padding.as_tuple();
                self.pool(
                    k,
                    true,
                    true,
                    [1, c.kernel_size],
                    [1, c.stride],
                    [0, l, 0, r],
                    &c.auto_pad,
                    c.ceil_mode,
                )?
            }
            N::AveragePool2d(p) => {
                let c = &p.config;
                let pads = pads2d(&c.padding);
                self.check_pool_extras(
                    k,
                    c.dilation != [1, 1],
                    c.count_include_pad,
                    pads != [0; 4] || c.auto_pad != AutoPad::NotSet,
                )?;
                self.pool(
                    k,
                    false,
                    false,
                    c.kernel_size,
                    c.strides,
                    pads,
                    &c.auto_pad,
                    c.ceil_mode,
                )?
            }
            N::AveragePool1d(p) => {
                let c = &p.config;
                let (l, r) = pads1d(&c.padding);
                self.check_pool_extras(
                    k,
                    c.dilation != 1,
                    c.count_include_pad,
                    l + r > 0 || c.auto_pad != AutoPad::NotSet,
                )?;
                self.pool(
                    k,
                    true,
                    false,
                    [1, c.kernel_size],
                    [1, c.stride],
                    [0, l, 0, r],
                    &c.auto_pad,
                    c.ceil_mode,
                )?
            }
            N::GlobalAveragePool(_) => {
                let x = self.plain(k, &ins[0])?;
                let one_d = x.axes.len() == 3;
                let (x, _) = self.nchw_val(k, x, one_d)?;
                let v = self.push(k, "", Op::GlobalAvgPool, vec![x.v])?;
                Val {
                    v,
                    axes: x.axes,
                    pad: None,
                }
            }
            N::ReduceMean(r) => self.reduce_mean(k, &r.config)?,
            N::Softmax(s) => self.softmax(k, s.config.axis)?,
            _ => {
                return Err(self.unsupported(k, format!("not supported ({SUPPORTED})")));
            }
        };
        for extra in n.outputs().iter().skip(1) {
            if self.remaining.get(&extra.name).is_some_and(|r| *r > 0) {
                return Err(self.unsupported(
                    k,
                    format!(
                        "its output `{}` is used; only the first output is supported",
                        extra.name
                    ),
                ));
            }
        }
        self.bind(&out, result);
        Ok(())
    }

    // ----- constants -----

    fn dequantize(
        &mut self,
        k: usize,
        axis: Option<i64>,
        block_size: Option<i64>,
    ) -> Result<(), ImportError> {
        let ins = self.graph.nodes[k].inputs();
        if ins[0].is_dynamic() && !self.consts.contains_key(&ins[0].name) {
            return Err(self.unsupported(
                k,
                "DequantizeLinear of a computed value (a quantized activation, QDQ model) is \
                 not supported; import the float model",
            ));
        }
        if block_size.is_some_and(|b| b != 0) {
            return Err(self.unsupported(k, "blocked DequantizeLinear is not supported"));
        }
        let (shape, q) = self.constant(k, &ins[0], "quantized weight")?;
        let (_, scale) = self.constant(k, &ins[1], "scale")?;
        let zero = match self.optional(k, 2) {
            Some(a) => self.constant(k, a, "zero point")?.1,
            None => vec![0.0],
        };
        let rank = shape.len() as i64;
        let axis = axis.unwrap_or(1);
        let axis = if axis < 0 { axis + rank } else { axis };
        let per_axis = scale.len() > 1;
        if per_axis && !(0..rank).contains(&axis) {
            return Err(self.unsupported(k, format!("axis {axis} of a rank-{rank} weight")));
        }
        let (len, stride) = if per_axis {
            let a = axis as usize;
            (shape[a], shape[a + 1..].iter().product::<usize>())
        } else {
            (1, 1)
        };
        if scale.len() != len || (zero.len() != 1 && zero.len() != len) {
            return Err(self.unsupported(
                k,
                format!(
                    "{} scales and {} zero points for a weight of shape {shape:?}",
                    scale.len(),
                    zero.len()
                ),
            ));
        }
        let values = q
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let c = if per_axis { (i / stride) % len } else { 0 };
                let z = if zero.len() == 1 { zero[0] } else { zero[c] };
                (x - z) * scale[c]
            })
            .collect();
        let out = self.first_output(k);
        self.consts.insert(out, (shape, values));
        Ok(())
    }

    // ----- layout -----

    fn transpose(&mut self, k: usize, perm: &[i64]) -> Result<Val, ImportError> {
        let x = self.val(k, &self.graph.nodes[k].inputs()[0])?;
        if perm.len() != x.axes.len() {
            return Err(self.unsupported(
                k,
                format!("perm {perm:?} for a rank-{} input", x.axes.len()),
            ));
        }
        let axes: Vec<usize> = perm.iter().map(|&p| x.axes[p as usize]).collect();
        if axes[0] != 0 {
            return Err(self.unsupported(
                k,
                format!("perm {perm:?} moves the batch axis; not supported"),
            ));
        }
        Ok(Val { axes, ..x })
    }

    /// A map as a vector (`[n, f]`), in the order its view lays it out.
    fn flatten(&mut self, k: usize, x: &Val) -> Result<Val, ImportError> {
        if x.pad.is_some() {
            return Err(self.pad_not_merged(k));
        }
        let vector = Val {
            v: x.v,
            axes: vec![0, 1],
            pad: None,
        };
        if let Shape::Vec(_) = self.shapes[x.v] {
            return Ok(vector);
        }
        let order = self.flat_order(x);
        let channels_last = if order.windows(2).all(|w| w[0] < w[1]) {
            false
        } else {
            let hwc: Vec<usize> = [2, 3, 1]
                .into_iter()
                .filter(|a| order.contains(a))
                .collect();
            if order != hwc {
                // Another order: a Transpose node first, then a [c, h, w] flatten.
                let one_d = x.axes.len() == 3;
                let (x, _) = self.nchw_val(k, x.clone(), one_d)?;
                return self.flatten(k, &x);
            }
            true
        };
        if !channels_last && let Some(&v) = self.flat_of.get(&x.v) {
            return Ok(Val { v, ..vector });
        }
        let v = self.push(k, "flatten", Op::Flatten { channels_last }, vec![x.v])?;
        if !channels_last {
            self.flat_of.insert(x.v, v);
        }
        Ok(Val { v, ..vector })
    }

    /// A view as a vector `[n, f]` for a linear layer or a sum with one.
    fn vector(&mut self, k: usize, x: &Val) -> Result<Val, ImportError> {
        if x.axes.len() != 2 {
            return Err(self.unsupported(
                k,
                format!(
                    "its input has ONNX shape {:?}; a linear layer takes [n, features] (a Flatten \
                     or Reshape to [n, -1] must come first)",
                    self.onnx_dims(x)
                ),
            ));
        }
        self.flatten(k, x)
    }

    /// A view with the non-1 axes of `dims` (batch excluded) in the same order as `x`'s, the
    /// 1-sized ones on burn axes of size 1.
    fn relabel(&self, k: usize, x: &Val, dims: &[usize], what: &str) -> Result<Val, ImportError> {
        let d = self.burn_dims(x.v);
        let from: Vec<(usize, usize)> = x.axes[1..]
            .iter()
            .map(|&a| (d[a], a))
            .filter(|(s, _)| *s != 1)
            .collect();
        let to: Vec<usize> = dims.iter().copied().filter(|&s| s != 1).collect();
        let in_dims = self.onnx_dims(x);
        let refuse = || {
            self.unsupported(
                k,
                format!(
                    "{what} from ONNX shape {in_dims:?} to {dims:?} (batch first) moves data; \
                     only flattening to [n, -1] and adding or removing 1-sized axes are supported"
                ),
            )
        };
        if from.iter().map(|f| f.0).ne(to.iter().copied()) {
            return Err(refuse());
        }
        let vector = matches!(self.shapes[x.v], Shape::Vec(_));
        // A vector may be viewed as [n, c, 1, 1] (a squeeze-excite gate), which element-wise
        // operators broadcast over a map; layers still refuse it.
        if vector && dims.len() != 1 && !(dims.len() == 3 && to.len() <= 1) {
            return Err(self.unsupported(
                k,
                format!(
                    "{what} turns the vector {in_dims:?} into ONNX shape {dims:?}; a vector \
                     cannot become a feature map again"
                ),
            ));
        }
        let taken: Vec<usize> = from.iter().map(|f| f.1).collect();
        let mut spare = (1..4).filter(|a| d[*a] == 1 && !taken.contains(a));
        let mut big = taken.iter().copied();
        let mut axes = vec![0];
        for &s in dims {
            let a = if s == 1 { spare.next() } else { big.next() };
            axes.push(a.ok_or_else(refuse)?);
        }
        Ok(Val {
            v: x.v,
            axes,
            pad: x.pad,
        })
    }

    fn reshape(&mut self, k: usize, x: &Val, target: &[i64]) -> Result<Val, ImportError> {
        let in_dims = self.onnx_dims(x);
        let total: usize = in_dims[1..].iter().product();
        let refuse = |why: String| self.unsupported(k, why);
        let Some((&batch, rest)) = target.split_first() else {
            return Err(refuse("Reshape to a scalar".into()));
        };
        // The batch stays first: 0 (copy), -1 (inferred) or the exported batch size.
        let mut dims = Vec::with_capacity(rest.len());
        let mut infer = None;
        for (i, &t) in rest.iter().enumerate() {
            match t {
                0 => dims.push(*in_dims.get(i + 1).ok_or_else(|| {
                    refuse(format!(
                        "Reshape target {target:?} copies an axis the input lacks"
                    ))
                })?),
                -1 if infer.is_none() && batch != -1 => {
                    infer = Some(i);
                    dims.push(1);
                }
                t if t > 0 => dims.push(t as usize),
                _ => {
                    return Err(refuse(format!(
                        "Reshape target {target:?}: the batch axis must stay first and be the \
                         only inferred one"
                    )));
                }
            }
        }
        let known: usize = dims.iter().product();
        if let Some(i) = infer {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(refuse(format!("Reshape of {in_dims:?} to {target:?}")));
            }
            dims[i] = total / known;
        }
        if dims.iter().product::<usize>() != total || batch < -1 {
            return Err(refuse(format!(
                "Reshape of ONNX shape {in_dims:?} to {target:?} changes the batch; not supported"
            )));
        }
        if dims.len() == 1 {
            return self.flatten(k, x);
        }
        match self.relabel(k, x, &dims, "Reshape") {
            Ok(v) => Ok(v),
            Err(layout_only) => self.reshape_moving(k, x, &dims).map_err(|e| match e {
                // A target the graph cannot hold at all: the layout error says more.
                ImportError::Unsupported { .. } if dims.len() > 3 => layout_only,
                e => e,
            }),
        }
    }

    /// A Reshape that moves data, to ONNX `[n] + dims` with `dims` `[c, h, w]` or `[c, w]`: an
    /// [`Op::Reshape`] in the element order of `x`'s view (`[c, h, w]`, or `[h, w, c]` for a
    /// tf2onnx NHWC view; any other order gets a Transpose node first). The result's view
    /// keeps that order, so the ONNX tensor is exactly the reshaped one.
    fn reshape_moving(&mut self, k: usize, x: &Val, dims: &[usize]) -> Result<Val, ImportError> {
        if x.pad.is_some() {
            return Err(self.pad_not_merged(k));
        }
        let in_dims = self.onnx_dims(x);
        let mut x = x.clone();
        let channels_last = match self.shapes[x.v] {
            Shape::Vec(_) => false,
            Shape::Map(_) => {
                let order = self.flat_order(&x);
                let hwc: Vec<usize> = [2, 3, 1]
                    .into_iter()
                    .filter(|a| order.contains(a))
                    .collect();
                if order.windows(2).all(|w| w[0] < w[1]) {
                    false
                } else if order == hwc {
                    true
                } else {
                    let one_d = x.axes.len() == 3;
                    x = self.nchw_val(k, x, one_d)?.0;
                    false
                }
            }
        };
        let (shape, axes) = match (dims, channels_last) {
            (&[c, h, w], false) => ([c, h, w], vec![0, 1, 2, 3]),
            (&[c, w], false) => ([c, 1, w], vec![0, 1, 3]),
            (&[h, w, c], true) => ([c, h, w], vec![0, 2, 3, 1]),
            (&[w, c], true) => ([c, 1, w], vec![0, 3, 1]),
            _ => {
                return Err(self.unsupported(
                    k,
                    format!(
                        "Reshape of ONNX shape {in_dims:?} to {dims:?} (batch excluded): the \
                         graph holds [n, c, h, w], [n, c, w] and [n, f] values"
                    ),
                ));
            }
        };
        let v = self.push(
            k,
            "",
            Op::Reshape {
                shape: shape.to_vec(),
                channels_last,
            },
            vec![x.v],
        )?;
        Ok(Val { v, axes, pad: None })
    }

    /// A view of a feature map as `[n, c, h, w]` (`[n, c, w]` when `one_d`) and its shape: `x`
    /// itself when its view is in that order, else a [`Op::Transpose`] node that makes it so (a
    /// mid-graph Transpose that moves data; layout transposes cancel before reaching here).
    fn nchw_val(
        &mut self,
        k: usize,
        x: Val,
        one_d: bool,
    ) -> Result<(Val, [usize; 3]), ImportError> {
        let want: Vec<usize> = if one_d {
            vec![0, 1, 3]
        } else {
            vec![0, 1, 2, 3]
        };
        let permutable = x.axes != want
            && x.pad.is_none()
            && x.axes.len() == want.len()
            && x.axes.first() == Some(&0)
            && matches!(self.shapes[x.v], Shape::Map(_));
        if !permutable {
            let m = self.nchw(k, &x, one_d)?;
            return Ok((x, m));
        }
        // Map axis want[i] − 1 of the new value is map axis x.axes[i] − 1 of x; for a 1-D view
        // the axis it does not list (size 1) becomes the height.
        let mut perm = [usize::MAX; 3];
        for i in 1..want.len() {
            perm[want[i] - 1] = x.axes[i] - 1;
        }
        let used: Vec<usize> = perm.iter().copied().filter(|p| *p < 3).collect();
        let mut spare = (0..3).filter(|a| !used.contains(a));
        for p in perm.iter_mut().filter(|p| **p >= 3) {
            *p = spare.next().unwrap_or(0);
        }
        let v = self.push(k, "nchw", Op::Transpose { perm }, vec![x.v])?;
        let x = Val {
            v,
            axes: want,
            pad: None,
        };
        let m = self.nchw(k, &x, one_d)?;
        Ok((x, m))
    }

    fn squeeze(&mut self, k: usize, x: &Val, axes: Option<Vec<i64>>) -> Result<Val, ImportError> {
        let in_dims = self.onnx_dims(x);
        let rank = in_dims.len() as i64;
        let drop: Vec<usize> = match axes {
            None => (1..in_dims.len()).filter(|&i| in_dims[i] == 1).collect(),
            Some(a) => a
                .iter()
                .map(|&i| (if i < 0 { i + rank } else { i }) as usize)
                .collect(),
        };
        if drop
            .iter()
            .any(|&i| i == 0 || i >= in_dims.len() || in_dims[i] != 1)
        {
            return Err(self.unsupported(
                k,
                format!("Squeeze of axes {drop:?} of ONNX shape {in_dims:?}"),
            ));
        }
        let axes: Vec<usize> = (0..in_dims.len())
            .filter(|i| !drop.contains(i))
            .map(|i| x.axes[i])
            .collect();
        Ok(Val {
            v: x.v,
            axes,
            pad: x.pad,
        })
    }

    fn unsqueeze(&mut self, k: usize, x: &Val, axes: &[i64]) -> Result<Val, ImportError> {
        let in_dims = self.onnx_dims(x);
        let rank = (in_dims.len() + axes.len()) as i64;
        let new: Vec<usize> = axes
            .iter()
            .map(|&i| (if i < 0 { i + rank } else { i }) as usize)
            .collect();
        if new.contains(&0) {
            return Err(self.unsupported(k, "Unsqueeze before the batch axis"));
        }
        let mut old = in_dims[1..].iter();
        let dims: Vec<usize> = (1..rank as usize)
            .map(|i| {
                if new.contains(&i) {
                    1
                } else {
                    old.next().copied().unwrap_or(1)
                }
            })
            .collect();
        self.relabel(k, x, &dims, "Unsqueeze")
    }

    fn pad(&mut self, k: usize, p: &PadNode) -> Result<Val, ImportError> {
        let c = &p.config;
        let x = self.val(k, &p.inputs[0])?;
        let zero = matches!(c.constant_value, ConstantValueInput::Static(v) if v == 0.0);
        let pairs = match (&c.mode, &c.pads, zero) {
            (PadMode::Constant, PadInput::Static(p), true) => p.clone(),
            _ => {
                return Err(self.unsupported(
                    k,
                    "only a constant zero Pad with constant pads is supported (before a Conv)",
                ));
            }
        };
        let mut pad = x.pad.unwrap_or([0; 4]);
        for (i, &(b, e)) in pairs.iter().enumerate() {
            match x.axes.get(i) {
                _ if b == 0 && e == 0 => {}
                Some(2) => (pad[0], pad[2]) = (pad[0] + b, pad[2] + e),
                Some(3) => (pad[1], pad[3]) = (pad[1] + b, pad[3] + e),
                _ => {
                    return Err(self.unsupported(
                        k,
                        format!(
                            "pads {pairs:?} pad the batch or channel axis; only spatial padding \
                             before a Conv is supported"
                        ),
                    ));
                }
            }
        }
        Ok(Val {
            pad: Some(pad),
            ..x
        })
    }

    // ----- layers -----

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        k: usize,
        one_d: bool,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        pads: [usize; 4],
        auto_pad: &AutoPad,
    ) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let x = self.val(k, &ins[0])?;
        let (x, [ci, h, w]) = self.nchw_val(k, x, one_d)?;
        let (ws, weight) = self.constant(k, &ins[1], "weight")?;
        let bias = match self.optional(k, 2) {
            Some(a) => Some(self.constant(k, a, "bias")?.1),
            None => None,
        };
        let rank = if one_d { 3 } else { 4 };
        let co = ws.first().copied().unwrap_or(0);
        let bad_shape = ws.len() != rank
            || ws[2..] != kernel[4 - rank..]
            || groups == 0
            || ci % groups != 0
            || co % groups != 0
            || ws[1] != ci / groups
            || bias.as_ref().is_some_and(|b| b.len() != co);
        if bad_shape {
            return Err(self.unsupported(
                k,
                format!(
                    "weight {ws:?}{} for {ci} input channels, kernel {kernel:?}, {groups} groups",
                    bias.as_ref()
                        .map(|b| format!(" and bias [{}]", b.len()))
                        .unwrap_or_default()
                ),
            ));
        }
        // A merged Pad comes first; SAME padding is computed on the padded size.
        let before = x.pad.unwrap_or([0; 4]);
        let (h, w) = (h + before[0] + before[2], w + before[1] + before[3]);
        let mut pads = match auto_pad {
            AutoPad::NotSet => pads,
            AutoPad::Valid => [0; 4],
            AutoPad::SameUpper | AutoPad::SameLower => {
                let lower = *auto_pad == AutoPad::SameLower;
                let (t, b) = same_pads(h, kernel[0], stride[0], dilation[0], lower);
                let (l, r) = same_pads(w, kernel[1], stride[1], dilation[1], lower);
                [t, l, b, r]
            }
        };
        for (a, b) in pads.iter_mut().zip(before) {
            *a += b;
        }
        let layer = self.spec.convs.len();
        self.spec.convs.push(ConvSpec {
            channels: [ci, co],
            kernel,
            stride,
            dilation,
            groups,
            pads,
            bias: bias.is_some(),
        });
        self.weights.convs.push((weight, bias));
        let v = self.push(
            k,
            "",
            Op::Conv {
                layer,
                act: FusedActivation::None,
            },
            vec![x.v],
        )?;
        Ok(Val {
            v,
            axes: x.axes,
            pad: None,
        })
    }

    /// A ConvTranspose as [`Op::ConvTranspose`]: the ONNX weight `[in, out, kh, kw]` becomes
    /// the equivalent convolution's `[out, in, kh, kw]`, flipped in space.
    fn conv_transpose(
        &mut self,
        k: usize,
        one_d: bool,
        a: ConvTransposeAttrs,
    ) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let x = self.plain(k, &ins[0])?;
        let (x, [ci, _, _]) = self.nchw_val(k, x, one_d)?;
        if a.groups != 1 || a.dilation != [1, 1] || !a.explicit {
            return Err(self.unsupported(
                k,
                format!(
                    "ConvTranspose with {} groups, dilation {:?}{}: only one group, no \
                     dilation and explicit pads (no auto_pad, no output_shape) are supported",
                    a.groups,
                    a.dilation,
                    if a.explicit {
                        ""
                    } else {
                        " and auto_pad / output_shape"
                    }
                ),
            ));
        }
        let (ws, weight) = self.constant(k, &ins[1], "weight")?;
        let bias = match self.optional(k, 2) {
            Some(arg) => Some(self.constant(k, arg, "bias")?.1),
            None => None,
        };
        let rank = if one_d { 3 } else { 4 };
        let kernel = a.kernel;
        let co = ws.get(1).copied().unwrap_or(0);
        if ws.len() != rank
            || ws[0] != ci
            || ws[2..] != kernel[4 - rank..]
            || bias.as_ref().is_some_and(|b| b.len() != co)
        {
            return Err(self.unsupported(
                k,
                format!("weight {ws:?} for {ci} input channels and kernel {kernel:?}"),
            ));
        }
        let [kh, kw] = kernel;
        let mut flipped = vec![0f32; weight.len()];
        for i in 0..ci {
            for o in 0..co {
                for y in 0..kh {
                    for xx in 0..kw {
                        flipped[((o * ci + i) * kh + kh - 1 - y) * kw + kw - 1 - xx] =
                            weight[((i * co + o) * kh + y) * kw + xx];
                    }
                }
            }
        }
        let layer = self.spec.convs.len();
        self.spec.convs.push(ConvSpec {
            channels: [ci, co],
            kernel,
            stride: [1, 1],
            dilation: [1, 1],
            groups: 1,
            pads: [0; 4],
            bias: bias.is_some(),
        });
        self.weights.convs.push((flipped, bias));
        let v = self.push(
            k,
            "",
            Op::ConvTranspose {
                layer,
                stride: a.stride,
                pads: a.pads,
                output_padding: a.output_padding,
                act: FusedActivation::None,
            },
            vec![x.v],
        )?;
        Ok(Val {
            v,
            axes: x.axes,
            pad: None,
        })
    }

    /// `y = alpha · x · W + beta · c` (`W` given `[out, in]` when `transposed`).
    fn linear(
        &mut self,
        k: usize,
        transposed: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let x = self.plain(k, &ins[0])?;
        let (ws, w) = self.constant(k, &ins[1], "weight")?;
        let [rows, cols] = ws[..] else {
            return Err(self.unsupported(k, format!("weight of shape {ws:?}; needs 2-D")));
        };
        let (din, dout) = if transposed {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let mut weight = if transposed {
            let mut t = vec![0.0; w.len()];
            for o in 0..rows {
                for i in 0..cols {
                    t[i * rows + o] = w[o * cols + i];
                }
            }
            t
        } else {
            w
        };
        if alpha != 1.0 {
            weight.iter_mut().for_each(|v| *v *= alpha);
        }
        let bias = match self.optional(k, 2) {
            Some(a) => {
                let (bs, b) = self.constant(k, a, "bias")?;
                let per_out =
                    bs.iter().rev().skip(1).all(|&d| d == 1) && (b.len() == dout || b.len() == 1);
                if !per_out {
                    return Err(self.unsupported(
                        k,
                        format!("bias of shape {bs:?} for {dout} outputs; needs one per output"),
                    ));
                }
                Some(if b.len() == 1 {
                    vec![b[0] * beta; dout]
                } else {
                    b.iter().map(|v| v * beta).collect()
                })
            }
            None => None,
        };
        let x = self.vector(k, &x)?;
        let layer = self.spec.linears.len();
        self.spec.linears.push(([din, dout], bias.is_some()));
        self.weights.linears.push((weight, bias));
        let v = self.push(
            k,
            "",
            Op::Linear {
                layer,
                act: FusedActivation::None,
            },
            vec![x.v],
        )?;
        Ok(Val {
            v,
            axes: vec![0, 1],
            pad: None,
        })
    }

    /// The layer whose output `x` is, when a per-channel affine map can be folded into it:
    /// nothing else reads the value, before or after.
    fn foldable(&self, x: &Val) -> Option<(Layer, usize)> {
        let layer = self.made_by[x.v]?;
        let unread = !self.consumed[x.v]
            && x.pad.is_none()
            && self.aliases.get(&x.v).is_none_or(|names| {
                names
                    .iter()
                    .all(|n| self.remaining.get(n).is_none_or(|r| *r == 0))
            });
        let channels = match layer {
            Layer::Conv(i) => self.spec.convs[i].channels[1],
            Layer::Linear(i) => self.spec.linears[i].0[1],
        };
        unread.then_some((layer, channels))
    }

    /// A constant broadcast over `x` as one value per channel (the burn axis 1).
    fn per_channel(
        &self,
        k: usize,
        x: &Val,
        c: &Const,
        channels: usize,
    ) -> Result<Vec<f32>, ImportError> {
        let (shape, values) = c;
        let rank = x.axes.len();
        let fits = shape.len() <= rank
            && shape
                .iter()
                .enumerate()
                .all(|(j, &s)| s == 1 || (s == channels && x.axes[rank - shape.len() + j] == 1));
        if !fits {
            return Err(self.unsupported(
                k,
                format!(
                    "its constant of shape {shape:?} is not one value per channel of ONNX shape \
                     {:?}",
                    self.onnx_dims(x)
                ),
            ));
        }
        Ok(if values.len() == 1 {
            vec![values[0]; channels]
        } else {
            values.clone()
        })
    }

    /// Fold `y = x · scale + shift` (per channel) into the layer that made `x`.
    fn fold(
        &mut self,
        k: usize,
        x: &Val,
        scale: Option<&[f32]>,
        shift: Option<&[f32]>,
    ) -> Result<(), ImportError> {
        let (layer, channels) = self.foldable(x).ok_or_else(|| self.not_foldable(k))?;
        let (weight, bias, has_bias) = match layer {
            Layer::Conv(i) => {
                let (w, b) = &mut self.weights.convs[i];
                (w, b, &mut self.spec.convs[i].bias)
            }
            Layer::Linear(i) => {
                let (w, b) = &mut self.weights.linears[i];
                (w, b, &mut self.spec.linears[i].1)
            }
        };
        if let Some(s) = scale {
            match layer {
                // [out, in / groups, kh, kw]: one block per output channel.
                Layer::Conv(_) => {
                    let per = weight.len() / channels;
                    for (o, block) in weight.chunks_mut(per).enumerate() {
                        block.iter_mut().for_each(|v| *v *= s[o]);
                    }
                }
                // [in, out]: one column per output.
                Layer::Linear(_) => {
                    for row in weight.chunks_mut(channels) {
                        row.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
                    }
                }
            }
            if let Some(b) = bias.as_mut() {
                b.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
            }
        }
        if let Some(t) = shift {
            let b = bias.get_or_insert_with(|| vec![0.0; channels]);
            b.iter_mut().zip(t).for_each(|(v, t)| *v += t);
            *has_bias = true;
        }
        Ok(())
    }

    fn not_foldable(&self, k: usize) -> ImportError {
        self.unsupported(
            k,
            "a per-channel scale or shift is supported only right after a Conv or linear layer \
             whose output nothing else reads (it is folded into the layer)",
        )
    }

    fn batch_norm(&mut self, k: usize, eps: f64) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let x = self.plain(k, &ins[0])?;
        let (_, channels) = self.foldable(&x).ok_or_else(|| self.not_foldable(k))?;
        if x.axes.get(1) != Some(&1) {
            return Err(self.not_foldable(k));
        }
        let mut p = Vec::with_capacity(4);
        for (i, what) in [(1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")] {
            let (_, v) = self.constant(k, &ins[i], what)?;
            if v.len() != channels {
                return Err(self.unsupported(
                    k,
                    format!("{} {what} values for {channels} channels", v.len()),
                ));
            }
            p.push(v);
        }
        let scale: Vec<f32> = (0..channels)
            .map(|c| (p[0][c] as f64 / (p[3][c] as f64 + eps).sqrt()) as f32)
            .collect();
        let shift: Vec<f32> = (0..channels)
            .map(|c| (p[1][c] as f64 - p[2][c] as f64 * scale[c] as f64) as f32)
            .collect();
        self.fold(k, &x, Some(&scale), Some(&shift))?;
        Ok(x)
    }

    /// `Mul`, `Sub`, `Div` (and `Add`) of a computed value and a per-channel constant.
    fn affine_constant(&mut self, k: usize) -> Result<Val, ImportError> {
        let n = &self.graph.nodes[k];
        let ins = n.inputs();
        let constant_at =
            |i: usize| -> bool { !ins[i].is_dynamic() || self.consts.contains_key(&ins[i].name) };
        let (xi, ci) = if constant_at(1) { (0, 1) } else { (1, 0) };
        if constant_at(xi) {
            return Err(self.unsupported(k, "both operands are constants"));
        }
        let x = self.plain(k, &ins[xi])?;
        let c = self.constant(k, &ins[ci], "operand")?;
        // A constant minus (or over) the value does not fold into the layer's weights.
        let commutes = xi == 0 || matches!(n, IrNode::Mul(_) | IrNode::Add(_));
        let Some((_, channels)) = self.foldable(&x).filter(|_| commutes) else {
            return self.constant_operand(k, &x, &c, xi);
        };
        let c = self.per_channel(k, &x, &c, channels)?;
        match (n, xi) {
            (IrNode::Mul(_), _) => self.fold(k, &x, Some(&c), None)?,
            (IrNode::Add(_), _) => self.fold(k, &x, None, Some(&c))?,
            (IrNode::Sub(_), 0) => {
                let neg: Vec<f32> = c.iter().map(|v| -v).collect();
                self.fold(k, &x, None, Some(&neg))?
            }
            (IrNode::Div(_), 0) => {
                let inv: Vec<f32> = c.iter().map(|v| 1.0 / v).collect();
                self.fold(k, &x, Some(&inv), None)?
            }
            _ => {
                return Err(self.unsupported(
                    k,
                    "a constant minus or divided by a computed value is not supported",
                ));
            }
        }
        Ok(x)
    }

    fn add(&mut self, k: usize) -> Result<Val, ImportError> {
        self.elementwise(
            k,
            Op::Add {
                act: FusedActivation::None,
            },
        )
    }

    /// `Add`, `Mul` or `Sub` (`op`): of a computed value and a constant (folded into the layer
    /// before it where it can be, else a constant node), or of two computed values, equal in
    /// shape or broadcast ([`collab_models::graph::broadcast`]).
    fn elementwise(&mut self, k: usize, op: Op) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let constant = |a: &Argument| !a.is_dynamic() || self.consts.contains_key(&a.name);
        if ins.iter().any(constant) {
            return self.affine_constant(k);
        }
        let mut a = self.plain(k, &ins[0])?;
        let mut b = self.plain(k, &ins[1])?;
        let is_vec = |t: &Self, x: &Val| matches!(t.shapes[x.v], Shape::Vec(_));
        // A map [n, c, 1, 1] read as [n, c] beside a vector: both as vectors.
        if is_vec(self, &a) != is_vec(self, &b) && a.axes.len() == 2 && b.axes.len() == 2 {
            a = self.vector(k, &a)?;
            b = self.vector(k, &b)?;
        }
        if a.axes != b.axes && a.axes.len() == 4 && b.axes.len() == 4 {
            // The same ONNX shape laid over differently permuted maps: both as [n, c, h, w].
            a = self.nchw_val(k, a, false)?.0;
            b = self.nchw_val(k, b, false)?.0;
        }
        let axes = self.broadcast_view(k, &a, &b)?;
        let v = self.push(k, "", op, vec![a.v, b.v])?;
        Ok(Val { v, axes, pad: None })
    }

    /// The view of an element-wise result of `a` and `b`: the larger one's, where every non-1
    /// axis of the smaller one (ONNX shapes right-aligned) is the same axis of the same burn
    /// value axis in the larger one.
    fn broadcast_view(&self, k: usize, a: &Val, b: &Val) -> Result<Vec<usize>, ImportError> {
        let (da, db) = (self.onnx_dims(a), self.onnx_dims(b));
        let size = |d: &[usize]| d.iter().product::<usize>();
        let (full, small, df, ds) = if size(&da) >= size(&db) {
            (a, b, &da, &db)
        } else {
            (b, a, &db, &da)
        };
        let off = df.len().checked_sub(ds.len());
        let fits = off.is_some_and(|off| {
            ds.iter()
                .enumerate()
                .all(|(j, &d)| d == 1 || (d == df[j + off] && small.axes[j] == full.axes[j + off]))
        });
        if !fits {
            return Err(self.unsupported(
                k,
                format!(
                    "combines ONNX shapes {da:?} and {db:?}: laid out differently or broadcast \
                     in a way the graph lacks (it broadcasts a per-channel [n, c, 1, 1], a \
                     vector [n, c] or a scalar over a map)"
                ),
            ));
        }
        Ok(full.axes.clone())
    }

    /// A computed value `x` (input `xi` of node `k`) and a constant `c` that cannot be folded
    /// into a layer: a constant scale or shift node ([`Op::MulConst`], [`Op::AddConst`]).
    fn constant_operand(
        &mut self,
        k: usize,
        x: &Val,
        c: &Const,
        xi: usize,
    ) -> Result<Val, ImportError> {
        let width = match self.shapes[x.v] {
            Shape::Map([c, ..]) => c,
            Shape::Vec(f) => f,
        };
        let mut c = self.per_channel(k, x, c, width)?;
        if c.iter().all(|v| *v == c[0]) {
            c.truncate(1);
        }
        let negated = || c.iter().map(|v| -v).collect::<Vec<f32>>();
        let node = &self.graph.nodes[k];
        let ops = match (node, xi) {
            (IrNode::Mul(_), _) => vec![Op::MulConst { values: c }],
            (IrNode::Add(_), _) => vec![Op::AddConst { values: c }],
            (IrNode::Sub(_), 0) => vec![Op::AddConst { values: negated() }],
            (IrNode::Sub(_), _) => vec![
                Op::MulConst { values: vec![-1.0] },
                Op::AddConst { values: c },
            ],
            (IrNode::Div(_), 0) => vec![Op::MulConst {
                values: c.iter().map(|v| 1.0 / v).collect(),
            }],
            _ => {
                return Err(
                    self.unsupported(k, "a constant divided by a computed value is not supported")
                );
            }
        };
        let mut v = x.v;
        let last = ops.len() - 1;
        for (i, op) in ops.into_iter().enumerate() {
            v = self.push(k, if i < last { "neg" } else { "" }, op, vec![v])?;
        }
        Ok(Val {
            v,
            axes: x.axes.clone(),
            pad: None,
        })
    }

    fn act(&mut self, k: usize, p: Pointwise) -> Result<Val, ImportError> {
        let x = self.plain(k, &self.graph.nodes[k].inputs()[0])?;
        let v = self.push(k, "", Op::Act(p), vec![x.v])?;
        Ok(Val { v, ..x })
    }

    fn concat(&mut self, k: usize, axis: usize) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let parts: Vec<Val> = ins
            .iter()
            .map(|a| self.plain(k, a))
            .collect::<Result<_, _>>()?;
        let first = parts[0].clone();
        if parts.len() == 1 {
            return Ok(first);
        }
        let ok = parts
            .iter()
            .all(|p| p.axes == first.axes && matches!(self.shapes[p.v], Shape::Map(_)))
            && first.axes.get(axis) == Some(&1);
        if !ok {
            let shapes: Vec<Vec<usize>> = parts.iter().map(|p| self.onnx_dims(p)).collect();
            return Err(self.unsupported(
                k,
                format!(
                    "concatenates ONNX shapes {shapes:?} on axis {axis}; only feature maps of one \
                     layout joined on the channel axis are supported"
                ),
            ));
        }
        let v = self.push(k, "", Op::Concat, parts.iter().map(|p| p.v).collect())?;
        Ok(Val { v, ..first })
    }

    fn check_pool_extras(
        &self,
        k: usize,
        dilated: bool,
        count_include_pad: bool,
        padded: bool,
    ) -> Result<(), ImportError> {
        if dilated {
            return Err(self.unsupported(k, "dilated pooling is not supported"));
        }
        if count_include_pad && padded {
            return Err(self.unsupported(
                k,
                "average pooling with count_include_pad = 1 over padding is not supported \
                 (the graph does not count padded cells)",
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn pool(
        &mut self,
        k: usize,
        one_d: bool,
        max: bool,
        kernel: [usize; 2],
        stride: [usize; 2],
        pads: [usize; 4],
        auto_pad: &AutoPad,
        ceil_mode: bool,
    ) -> Result<Val, ImportError> {
        let x = self.plain(k, &self.graph.nodes[k].inputs()[0])?;
        let (x, [_, h, w]) = self.nchw_val(k, x, one_d)?;
        let pads = match auto_pad {
            AutoPad::NotSet => pads,
            AutoPad::Valid => [0; 4],
            AutoPad::SameUpper | AutoPad::SameLower => {
                let lower = *auto_pad == AutoPad::SameLower;
                let (t, b) = same_pads(h, kernel[0], stride[0], 1, lower);
                let (l, r) = same_pads(w, kernel[1], stride[1], 1, lower);
                [t, l, b, r]
            }
        };
        if ceil_mode {
            // Only where rounding up gives the same size (the windows divide evenly).
            let even = |size: usize, k: usize, s: usize, b: usize, e: usize| {
                (size + b + e)
                    .checked_sub(k)
                    .is_none_or(|d| d % s.max(1) == 0)
            };
            if !even(h, kernel[0], stride[0], pads[0], pads[2])
                || !even(w, kernel[1], stride[1], pads[1], pads[3])
            {
                return Err(self.unsupported(
                    k,
                    "ceil_mode = 1 where it adds a partial window is not supported",
                ));
            }
        }
        let p = PoolSpec {
            kernel,
            stride,
            pads,
        };
        let op = if max { Op::MaxPool(p) } else { Op::AvgPool(p) };
        let v = self.push(k, "", op, vec![x.v])?;
        Ok(Val { v, ..x })
    }

    fn reduce_mean(&mut self, k: usize, c: &ReduceConfig) -> Result<Val, ImportError> {
        let ins = self.graph.nodes[k].inputs();
        let x = self.plain(k, &ins[0])?;
        let axes = match &c.axes {
            ReduceAxes::Static(a) => a.clone(),
            ReduceAxes::Runtime(r) => {
                let (_, v) = self.constant(k, &ins[r.input_index], "axes")?;
                let rank = x.axes.len() as f32;
                v.iter()
                    .map(|&a| (if a < 0.0 { a + rank } else { a }) as usize)
                    .collect()
            }
        };
        if axes.is_empty() && c.noop_with_empty_axes {
            return Ok(x);
        }
        let d = self.burn_dims(x.v);
        let reduced: Vec<usize> = axes
            .iter()
            .filter_map(|&i| x.axes.get(i).copied())
            .collect();
        let spatial_covered = (2..4).all(|a| d[a] == 1 || reduced.contains(&a));
        let is_map = matches!(self.shapes[x.v], Shape::Map(_));
        if axes.is_empty()
            || reduced.len() != axes.len()
            || reduced.iter().any(|&a| a < 2)
            || !spatial_covered
            || !is_map
        {
            return Err(self.unsupported(
                k,
                format!(
                    "ReduceMean over axes {axes:?} of ONNX shape {:?}; only the mean over all \
                     spatial axes (global average pooling) is supported",
                    self.onnx_dims(&x)
                ),
            ));
        }
        let v = self.push(k, "", Op::GlobalAvgPool, vec![x.v])?;
        let kept: Vec<usize> = if c.keepdims {
            x.axes.clone()
        } else {
            (0..x.axes.len())
                .filter(|i| !axes.contains(i))
                .map(|i| x.axes[i])
                .collect()
        };
        Ok(Val {
            v,
            axes: kept,
            pad: None,
        })
    }

    fn softmax(&mut self, k: usize, axis: usize) -> Result<Val, ImportError> {
        let node = &self.graph.nodes[k];
        let x = self.plain(k, &node.inputs()[0])?;
        let out = self.first_output(k);
        let is_output = self.graph.outputs.iter().any(|o| o.name == out)
            && self.remaining.get(&out).copied() == Some(1);
        let classes = x.axes.len() == 2 && axis == 1;
        if !is_output || !classes || self.spec.softmax {
            return Err(self.unsupported(
                k,
                "a Softmax is supported only as the model's last operator, over the classes of \
                 an [n, classes] output (recorded, not trained)",
            ));
        }
        self.spec.softmax = true;
        Ok(x)
    }
}

fn pads2d(p: &PaddingConfig2d) -> [usize; 4] {
    let (t, l, b, r) = p.as_tuple();
    [t, l, b, r]
}

fn pads1d(p: &PaddingConfig1d) -> (usize, usize) {
    p.as_tuple()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_tflite_names_use_their_main_scope() {
        assert_eq!(
            layer_name("/layer1/layer1.0/conv1/Conv"),
            "layer1_layer1_0_conv1_Conv"
        );
        assert_eq!(layer_name("Relu__5"), "Relu__5");
        assert_eq!(
            layer_name(
                "model/activation/Relu;model/batch_normalization/FusedBatchNormV3;\
                 model/conv2d/BiasAdd/ReadVariableOp/resource;model/conv2d/BiasAdd;\
                 model/conv2d_2/Conv2D;model/conv2d/Conv2D1"
            ),
            "model_conv2d"
        );
        assert_eq!(
            layer_name("model/dense/MatMul;model/dense/BiasAdd"),
            "model_dense"
        );
        // A tie goes to the last scope (the op, not the activation before it).
        assert_eq!(
            layer_name("model/activation_2/Relu;model/add/add"),
            "model_add"
        );
        assert_eq!(layer_name("::"), "");
    }

    #[test]
    fn same_padding_puts_the_odd_pad_at_the_end_or_start() {
        // 5 wide, kernel 3, stride 2: out 3, total pad 2.
        assert_eq!(same_pads(5, 3, 2, 1, false), (1, 1));
        // 6 wide, kernel 3, stride 2: out 3, total 1: SAME_UPPER at the end, LOWER at the start.
        assert_eq!(same_pads(6, 3, 2, 1, false), (0, 1));
        assert_eq!(same_pads(6, 3, 2, 1, true), (1, 0));
        // Dilation 2 makes a 3-tap kernel span 5: total 4 at stride 1.
        assert_eq!(same_pads(7, 3, 1, 2, false), (2, 2));
    }
}
