//! Import of float `.tflite` files: the first subgraph's operators, read with
//! [`collab_tflite::reader::Graph`], mapped one by one onto a [`GraphSpec`], their constant
//! tensors reordered into burn's weight layouts ([`GraphWeights`]).
//!
//! TFLite lays maps out `[n, h, w, c]` and weights OHWI (`[1, kh, kw, c·m]` depthwise,
//! `[out, in]` fully connected); burn takes `[n, c, h, w]`, `[out, in/groups, kh, kw]` and
//! `[in, out]`. SAME padding becomes the explicit pads TensorFlow computes for the file's input
//! size, flattening stays in TensorFlow's `[h, w, c]` order (`Flatten { channels_last }`), fused
//! activations become activation nodes that [`GraphSpec::fused`] folds back into their layer.
//! RESHAPE between maps (or from a vector to a map) and TRANSPOSE keep TFLite's `[h, w, c]`
//! element order (`Op::Reshape { channels_last: true }`, `Op::Transpose`); TRANSPOSE_CONV is an
//! `Op::ConvTranspose` whose pads follow from its output size as TFLite computes them.
//!
//! Float means float activations: constant int8 weights (behind `DEQUANTIZE`, or read directly
//! by a layer in a dynamic-range "hybrid" file such as MLPerf Tiny's
//! `kws_ref_model_float32.tflite`) are dequantized into float weights, so the imported model
//! computes the float model those weights stand for. (LiteRT runs a hybrid layer by quantizing
//! its input on the fly; its outputs differ from the float model's by that rounding.) A
//! full-integer file (int8 activations) is refused: its float model is not in it.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use collab_data::{Features, InputSpec, Layout};
use collab_models::ModelError;
use collab_models::graph::{
    ConvSpec, GraphSpec, GraphWeights, Node, Op, Pointwise, PoolSpec, Shape,
};
use collab_tflite::interp::{out_and_pad, transpose_conv_pad};
use collab_tflite::reader::{Activation, Graph, Operator, Options, Padding, TensorType};

use crate::{ImportError, Imported};

/// The TFLite operators the importer maps; any other is refused before any work starts.
pub const SUPPORTED: &[&str] = &[
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "CONCATENATION",
    "SUB",
    "MUL",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "MEAN",
    "RESHAPE",
    "RELU",
    "RELU6",
    "LEAKY_RELU",
    "LOGISTIC",
    "TANH",
    "HARD_SWISH",
    "SOFTMAX",
    "DEQUANTIZE",
    "TRANSPOSE",
    "TRANSPOSE_CONV",
];

/// Import the float `.tflite` file `path` (see the module docs). `input`, when given, replaces
/// the [`InputSpec`] read from the file (features, labels); its shape and layout must be the
/// file's.
pub fn import(path: &Path, input: Option<&InputSpec>) -> Result<Imported, ImportError> {
    let bytes = crate::read(path)?;
    let graph = Graph::from_bytes(&bytes).map_err(|e| ImportError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let imported = Importer::new(path, &graph).run(&name, input)?;
    tracing::debug!(
        file = %path.display(),
        nodes = imported.spec.nodes.len(),
        convs = imported.spec.convs.len(),
        linears = imported.spec.linears.len(),
        "imported float tflite"
    );
    Ok(imported)
}

/// A tensor's meaning during the import.
#[derive(Clone, Copy)]
enum Val {
    /// Value `v` of the graph (0 = input, node `i` makes `i + 1`).
    Value(usize),
    /// The output of `DEQUANTIZE` of a constant: an entry of `Importer::dequantized`.
    Constant,
}

struct Importer<'a> {
    path: &'a Path,
    g: &'a Graph,
    /// What each tensor (by index) is, once produced.
    vals: HashMap<usize, Val>,
    /// Dequantized constants by tensor index.
    dequantized: HashMap<usize, Vec<f32>>,
    /// The spec being built, and each value's shape as the file states it.
    convs: Vec<ConvSpec>,
    linears: Vec<([usize; 2], bool)>,
    nodes: Vec<Node>,
    shapes: Vec<Shape>,
    weights: GraphWeights,
    names: HashSet<String>,
    softmax: bool,
}

/// Where an operator fails: everything [`ImportError::Unsupported`] names.
struct At<'a> {
    path: &'a Path,
    node: String,
    op: String,
    inputs: Vec<String>,
}

impl At<'_> {
    fn err(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            path: self.path.to_path_buf(),
            node: self.node.clone(),
            op: self.op.clone(),
            inputs: self.inputs.clone(),
            reason: reason.into(),
        }
    }
}

impl<'a> Importer<'a> {
    fn new(path: &'a Path, g: &'a Graph) -> Self {
        Self {
            path,
            g,
            vals: HashMap::new(),
            dequantized: HashMap::new(),
            convs: Vec::new(),
            linears: Vec::new(),
            nodes: Vec::new(),
            shapes: Vec::new(),
            weights: GraphWeights::default(),
            names: HashSet::new(),
            softmax: false,
        }
    }

    fn format(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Format {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn tensor_name(&self, t: i32) -> String {
        match usize::try_from(t).ok().and_then(|t| self.g.tensors.get(t)) {
            Some(t) => t.name.clone(),
            None => "(none)".into(),
        }
    }

    fn at(&self, k: usize, op: &Operator) -> At<'a> {
        let out = op
            .outputs
            .first()
            .map_or("(none)".into(), |&t| self.tensor_name(t));
        At {
            path: self.path,
            node: format!("operator {k}, output {out}"),
            op: op.op.clone(),
            inputs: op.inputs.iter().map(|&t| self.tensor_name(t)).collect(),
        }
    }

    fn run(mut self, name: &str, given: Option<&InputSpec>) -> Result<Imported, ImportError> {
        let input = self.input()?;
        self.refuse_full_integer()?;
        let input = match given {
            Some(g) if g.shape != input.shape || g.layout != input.layout => {
                return Err(ImportError::Graph {
                    path: self.path.to_path_buf(),
                    source: ModelError::Setting {
                        field: "input",
                        reason: format!(
                            "the given input is {:?} in {:?} layout (one sample {:?}), the file \
                             takes {:?} in {:?} layout (one sample {:?}); give the input the \
                             file takes",
                            g.shape,
                            g.layout,
                            g.file_shape(),
                            input.shape,
                            input.layout,
                            input.file_shape()
                        ),
                    },
                });
            }
            Some(g) => g.clone(),
            None => input,
        };
        // Every operator is known before any weight is touched.
        for (k, op) in self.g.operators.iter().enumerate() {
            if !SUPPORTED.contains(&op.op.as_str()) {
                return Err(self.at(k, op).err(format!(
                    "no equivalent in the graph; the float TFLite importer maps {}",
                    SUPPORTED.join(", ")
                )));
            }
        }
        self.shapes.push(Shape::Map(input.shape));
        self.vals.insert(self.g.inputs[0] as usize, Val::Value(0));
        let count = self.g.operators.len();
        for (k, op) in self.g.operators.iter().enumerate() {
            self.operator(k, op, k + 1 == count)?;
        }
        self.output()?;
        let spec = GraphSpec {
            name: name.to_string(),
            input,
            convs: self.convs,
            linears: self.linears,
            nodes: self.nodes,
            softmax: self.softmax,
        };
        let graph_err = |source| ImportError::Graph {
            path: self.path.to_path_buf(),
            source,
        };
        // The graph's own shape rules must give the shapes the file states.
        let computed = spec.shapes().map_err(graph_err)?;
        if let Some(v) = (0..computed.len()).find(|&v| computed[v] != self.shapes[v]) {
            let node = &spec.nodes[v - 1];
            return Err(graph_err(ModelError::Setting {
                field: "graph",
                reason: format!(
                    "node {} `{}` ({}) computes {:?}, the file states {:?}",
                    v - 1,
                    node.name,
                    node.op.kind(),
                    computed[v],
                    self.shapes[v]
                ),
            }));
        }
        Ok(Imported {
            spec: spec.fused(),
            weights: self.weights,
        })
    }

    /// The model input: NHWC `[1, h, w, c]` or a vector `[1, f]`.
    fn input(&self) -> Result<InputSpec, ImportError> {
        let (&[t], &[_]) = (self.g.inputs.as_slice(), self.g.outputs.as_slice()) else {
            return Err(self.format(format!(
                "the model has {} inputs and {} outputs; the importer takes one of each",
                self.g.inputs.len(),
                self.g.outputs.len()
            )));
        };
        let t = usize::try_from(t)
            .ok()
            .and_then(|t| self.g.tensors.get(t))
            .ok_or_else(|| self.format("the model's input is not a tensor"))?;
        let (shape, layout) = match t.shape.as_slice() {
            [1, h, w, c] => ([*c, *h, *w], Layout::Nhwc),
            [1, f] => ([*f, 1, 1], Layout::Flat),
            other => {
                return Err(self.format(format!(
                    "input `{}` has shape {other:?}; the importer takes one image [1, h, w, c] \
                     or one vector [1, features]",
                    t.name
                )));
            }
        };
        if shape.contains(&0) {
            return Err(self.format(format!(
                "input `{}` has shape {:?} with an empty dimension",
                t.name, t.shape
            )));
        }
        Ok(InputSpec {
            shape,
            layout,
            features: Features::Array,
            labels: Vec::new(),
        })
    }

    /// A file whose activations are integers has no float model to import.
    fn refuse_full_integer(&self) -> Result<(), ImportError> {
        let input = &self.g.tensors[self.g.inputs[0] as usize];
        let int =
            |d: TensorType| matches!(d, TensorType::Int8 | TensorType::Uint8 | TensorType::Int16);
        let mut activations = std::iter::once(input).chain(
            self.g
                .operators
                .iter()
                .flat_map(|op| &op.outputs)
                .filter_map(|&t| self.g.tensors.get(t as usize)),
        );
        if let Some(t) = activations.find(|t| int(t.dtype)) {
            return Err(self.format(format!(
                "a full-integer (quantized) model: tensor `{}` is {:?}. Import takes float \
                 .tflite files (float32 activations; int8 weights are fine); import the float \
                 model this file was made from, and use `collab inspect` to read this one",
                t.name, t.dtype
            )));
        }
        if input.dtype != TensorType::Float32 {
            return Err(self.format(format!(
                "input `{}` is {:?}; the importer takes float32 inputs",
                input.name, input.dtype
            )));
        }
        Ok(())
    }

    /// The graph output must be the last value; a map is flattened in the file's `[h, w, c]`
    /// order so that the model's `[n, features]` output lists values as the file does.
    fn output(&mut self) -> Result<(), ImportError> {
        let t = self.g.outputs[0];
        let last = self.nodes.len();
        match self.vals.get(&(t as usize)) {
            Some(Val::Value(v)) if *v == last && last > 0 => {}
            _ => {
                return Err(self.format(format!(
                    "the output `{}` is not the value of the last operator; the importer takes \
                     models whose operators end in their output",
                    self.tensor_name(t)
                )));
            }
        }
        if let Shape::Map([c, h, w]) = self.shapes[last]
            && h * w > 1
        {
            let name = self.unique("output_flatten");
            self.push(
                name,
                Op::Flatten {
                    channels_last: true,
                },
                vec![last],
                Shape::Vec(c * h * w),
            );
        }
        Ok(())
    }

    fn unique(&mut self, base: &str) -> String {
        let base = sanitize(base);
        let mut name = base.clone();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        name
    }

    /// Append a node; returns its value.
    fn push(&mut self, name: String, op: Op, inputs: Vec<usize>, shape: Shape) -> usize {
        self.nodes.push(Node { name, op, inputs });
        self.shapes.push(shape);
        self.nodes.len()
    }

    /// The graph value of tensor `t` (an input of operator `at`).
    fn value(&self, t: i32, at: &At<'_>) -> Result<usize, ImportError> {
        match usize::try_from(t).ok().and_then(|t| self.vals.get(&t)) {
            Some(Val::Value(v)) => Ok(*v),
            _ => Err(at.err(format!(
                "input `{}` is not computed by an earlier operator (a constant operand where \
                 the graph takes a computed value)",
                self.tensor_name(t)
            ))),
        }
    }

    /// Constant tensor `t` as floats (float32 data, dequantized int8 data, or a `DEQUANTIZE`d
    /// constant), with its shape.
    fn constant(&self, t: i32, at: &At<'_>) -> Result<(Vec<f32>, Vec<usize>), ImportError> {
        let info = usize::try_from(t)
            .ok()
            .and_then(|t| self.g.tensors.get(t))
            .ok_or_else(|| at.err("a weight operand is missing"))?;
        if let Some(v) = self.dequantized.get(&(t as usize)) {
            if v.len() != info.shape.iter().product::<usize>() {
                return Err(at.err(format!(
                    "`{}` has shape {:?}, but the constant it dequantizes holds {} values",
                    info.name,
                    info.shape,
                    v.len()
                )));
            }
            return Ok((v.clone(), info.shape.clone()));
        }
        if info.data.is_none() {
            return Err(at.err(format!(
                "weights `{}` are not constant (computed at run time); the graph takes \
                 constant weights",
                info.name
            )));
        }
        let values = info.to_f32().ok_or_else(|| {
            at.err(format!(
                "weights `{}` are {:?}{}; the importer reads float32 and quantized int8 weights",
                info.name,
                info.dtype,
                if info.quantization.is_none() {
                    " without quantization"
                } else {
                    ""
                }
            ))
        })?;
        Ok((values, info.shape.clone()))
    }

    /// The optional bias operand `i` of a layer with `n` outputs.
    fn bias(
        &self,
        op: &Operator,
        i: usize,
        n: usize,
        at: &At<'_>,
    ) -> Result<Option<Vec<f32>>, ImportError> {
        match op.inputs.get(i) {
            Some(&t) if t >= 0 => {
                let (b, _) = self.constant(t, at)?;
                if b.len() != n {
                    return Err(at.err(format!(
                        "bias `{}` has {} values for {n} outputs",
                        self.tensor_name(t),
                        b.len()
                    )));
                }
                Ok(Some(b))
            }
            _ => Ok(None),
        }
    }

    /// The operator's (first) output tensor.
    fn output_tensor(&self, op: &Operator, at: &At<'_>) -> Result<usize, ImportError> {
        op.outputs
            .first()
            .and_then(|&t| usize::try_from(t).ok())
            .filter(|&t| t < self.g.tensors.len())
            .ok_or_else(|| at.err("no output tensor"))
    }

    /// The operator's output tensor and its shape in the file, as a graph shape.
    fn out_shape(&self, op: &Operator, at: &At<'_>) -> Result<(usize, Shape), ImportError> {
        let t = self.output_tensor(op, at)?;
        let info = &self.g.tensors[t];
        let shape = match info.shape.as_slice() {
            [1, h, w, c] => Shape::Map([*c, *h, *w]),
            [1, f] => Shape::Vec(*f),
            other => {
                return Err(at.err(format!(
                    "output shape {other:?}: the graph holds maps [1, h, w, c] and vectors \
                     [1, features]"
                )));
            }
        };
        Ok((t, shape))
    }

    fn map(&self, v: usize, at: &At<'_>) -> Result<[usize; 3], ImportError> {
        match self.shapes[v] {
            Shape::Map(m) => Ok(m),
            s => Err(at.err(format!("takes a feature map [1, h, w, c], given {s:?}"))),
        }
    }

    /// Make output `t` value `v` of shape `shape`, then the fused activation `act`.
    fn finish(
        &mut self,
        t: usize,
        v: usize,
        act: Activation,
        at: &At<'_>,
    ) -> Result<(), ImportError> {
        let p = match act {
            Activation::None => None,
            Activation::Relu => Some(Pointwise::Relu),
            Activation::Relu6 => Some(Pointwise::Relu6),
            // TensorFlow's converter fuses only ReLU-like clamps; whether every LiteRT float
            // kernel applies another fused function is not checked, so none is mapped.
            other => {
                return Err(at.err(format!(
                    "fused activation {other:?} has no equivalent (ReLU and ReLU6 do)"
                )));
            }
        };
        let v = match p {
            Some(p) => {
                let name = self.unique(&format!("{}_act", self.nodes[v - 1].name));
                let shape = self.shapes[v];
                self.push(name, Op::Act(p), vec![v], shape)
            }
            None => v,
        };
        self.vals.insert(t, Val::Value(v));
        Ok(())
    }

    fn operator(&mut self, k: usize, op: &Operator, last: bool) -> Result<(), ImportError> {
        let at = self.at(k, op);
        let input = |i: usize| op.inputs.get(i).copied().unwrap_or(-1);
        match op.op.as_str() {
            "DEQUANTIZE" => {
                let t = input(0);
                let info = usize::try_from(t).ok().and_then(|t| self.g.tensors.get(t));
                match info {
                    Some(i) if i.data.is_some() => {}
                    _ => {
                        return Err(at.err(
                            "dequantizes a computed value (a quantized model); the importer \
                             takes float models, with int8 only in constant weights",
                        ));
                    }
                }
                let (values, _) = self.constant(t, &at)?;
                let out = self.output_tensor(op, &at)?;
                self.dequantized.insert(out, values);
                self.vals.insert(out, Val::Constant);
                Ok(())
            }
            "CONV_2D" | "DEPTHWISE_CONV_2D" => self.conv(op, &at),
            "FULLY_CONNECTED" => self.fully_connected(op, &at),
            "ADD" | "SUB" | "MUL" => self.elementwise(op, &at),
            "CONCATENATION" => {
                let Options::Concatenation { axis, activation } = op.options else {
                    return Err(at.err("CONCATENATION without its options"));
                };
                let (t, shape) = self.out_shape(op, &at)?;
                if !matches!(shape, Shape::Map(_)) || !(axis == 3 || axis == -1) {
                    return Err(at.err(format!(
                        "joins along axis {axis} into {shape:?}: the graph joins feature maps \
                         [1, h, w, c] along channels (axis 3)"
                    )));
                }
                let parts = op
                    .inputs
                    .iter()
                    .map(|&i| {
                        let v = self.value(i, &at)?;
                        self.map(v, &at).map(|_| v)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let name = self.unique(&layer_name(self.g, op));
                let v = if parts.len() == 1 {
                    parts[0]
                } else {
                    self.push(name, Op::Concat, parts, shape)
                };
                self.finish(t, v, activation, &at)
            }
            "AVERAGE_POOL_2D" | "MAX_POOL_2D" => {
                let Options::Pool {
                    padding,
                    stride,
                    filter,
                    activation,
                } = op.options
                else {
                    return Err(at.err("pooling without its options"));
                };
                let x = self.value(input(0), &at)?;
                let [_, h, w] = self.map(x, &at)?;
                let pads = pads(padding, [h, w], filter, stride, [1, 1])
                    .ok_or_else(|| at.err(format!("window {filter:?} does not fit {h}×{w}")))?;
                let pool = PoolSpec {
                    kernel: filter,
                    stride,
                    pads,
                };
                let (t, shape) = self.out_shape(op, &at)?;
                let name = self.unique(&layer_name(self.g, op));
                let pool = if op.op == "MAX_POOL_2D" {
                    Op::MaxPool(pool)
                } else {
                    Op::AvgPool(pool)
                };
                let v = self.push(name, pool, vec![x], shape);
                self.finish(t, v, activation, &at)
            }
            "MEAN" => {
                let Options::Reducer { .. } = op.options else {
                    return Err(at.err("MEAN without its options"));
                };
                let x = self.value(input(0), &at)?;
                let [c, _, _] = self.map(x, &at)?;
                let axes = usize::try_from(input(1))
                    .ok()
                    .and_then(|t| self.g.tensors.get(t))
                    .and_then(|t| t.to_i64())
                    .ok_or_else(|| at.err("the axes are not a constant int32 tensor"))?;
                let mut axes: Vec<i64> = axes.iter().map(|a| a.rem_euclid(4)).collect();
                axes.sort_unstable();
                axes.dedup();
                if axes != [1, 2] {
                    return Err(at.err(format!(
                        "averages over axes {axes:?}: the graph averages over space (axes 1 \
                         and 2 of [1, h, w, c])"
                    )));
                }
                let (t, shape) = self.out_shape(op, &at)?;
                let name = self.unique(&layer_name(self.g, op));
                let mut v = self.push(
                    name.clone(),
                    Op::GlobalAvgPool,
                    vec![x],
                    Shape::Map([c, 1, 1]),
                );
                if let Shape::Vec(_) = shape {
                    let name = self.unique(&format!("{name}_flatten"));
                    v = self.push(
                        name,
                        Op::Flatten {
                            channels_last: true,
                        },
                        vec![v],
                        shape,
                    );
                }
                self.vals.insert(t, Val::Value(v));
                Ok(())
            }
            "RESHAPE" => {
                let x = self.value(input(0), &at)?;
                let (t, shape) = self.out_shape(op, &at)?;
                let from = self.shapes[x];
                let count = |s: Shape| match s {
                    Shape::Map([c, h, w]) => c * h * w,
                    Shape::Vec(f) => f,
                };
                let v = match (from, shape) {
                    _ if from == shape => x,
                    // A vector as [1, 1, 1, c] (a squeeze-excite gate): element-wise operators
                    // broadcast the vector over a map as they would the map; layers refuse it.
                    (Shape::Vec(f), Shape::Map([c, 1, 1])) if f == c => x,
                    (Shape::Map(_), Shape::Vec(f)) if count(from) == f => {
                        let name = self.unique(&layer_name(self.g, op));
                        self.push(
                            name,
                            Op::Flatten {
                                channels_last: true,
                            },
                            vec![x],
                            shape,
                        )
                    }
                    // Any other reshape of as many values moves them, in TFLite's NHWC order.
                    (_, Shape::Map([c, h, w])) if count(from) == c * h * w => {
                        let name = self.unique(&layer_name(self.g, op));
                        self.push(
                            name,
                            Op::Reshape {
                                shape: vec![c, h, w],
                                channels_last: true,
                            },
                            vec![x],
                            shape,
                        )
                    }
                    _ => {
                        return Err(at.err(format!(
                            "reshapes {from:?} into {shape:?}: the numbers of values differ"
                        )));
                    }
                };
                self.vals.insert(t, Val::Value(v));
                Ok(())
            }
            "TRANSPOSE" => {
                let x = self.value(input(0), &at)?;
                let perm = usize::try_from(input(1))
                    .ok()
                    .and_then(|t| self.g.tensors.get(t))
                    .and_then(|t| t.to_i64())
                    .ok_or_else(|| at.err("the permutation is not a constant int32 tensor"))?;
                self.map(x, &at)?;
                let (t, shape) = self.out_shape(op, &at)?;
                // NHWC axis a ≥ 1 is map axis MAP[a] of [c, h, w].
                const MAP: [usize; 4] = [usize::MAX, 1, 2, 0];
                let p: Vec<usize> = perm.iter().map(|&a| a.rem_euclid(4) as usize).collect();
                if p.len() != 4 || p[0] != 0 {
                    return Err(at.err(format!(
                        "permutation {perm:?}: the graph transposes maps [1, h, w, c] with the \
                         batch kept first"
                    )));
                }
                let map_perm = [MAP[p[3]], MAP[p[1]], MAP[p[2]]];
                let name = self.unique(&layer_name(self.g, op));
                let v = self.push(name, Op::Transpose { perm: map_perm }, vec![x], shape);
                self.vals.insert(t, Val::Value(v));
                Ok(())
            }
            "TRANSPOSE_CONV" => self.transpose_conv(op, &at),
            "RELU" | "RELU6" | "LEAKY_RELU" | "LOGISTIC" | "TANH" | "HARD_SWISH" => {
                let p = match (op.op.as_str(), &op.options) {
                    ("RELU", _) => Pointwise::Relu,
                    ("RELU6", _) => Pointwise::Relu6,
                    ("LEAKY_RELU", Options::LeakyRelu { alpha }) => {
                        Pointwise::LeakyRelu { alpha: *alpha }
                    }
                    ("LEAKY_RELU", _) => return Err(at.err("LEAKY_RELU without its alpha")),
                    ("LOGISTIC", _) => Pointwise::Sigmoid,
                    ("TANH", _) => Pointwise::Tanh,
                    _ => Pointwise::HardSwish,
                };
                let x = self.value(input(0), &at)?;
                let (t, shape) = self.out_shape(op, &at)?;
                let name = self.unique(&layer_name(self.g, op));
                let v = self.push(name, Op::Act(p), vec![x], shape);
                self.vals.insert(t, Val::Value(v));
                Ok(())
            }
            "SOFTMAX" => {
                let beta = match op.options {
                    Options::Softmax { beta } => beta,
                    _ => 1.0,
                };
                let x = self.value(input(0), &at)?;
                let (t, _) = self.out_shape(op, &at)?;
                if !last || beta != 1.0 || !matches!(self.shapes[x], Shape::Vec(_)) {
                    return Err(at.err(format!(
                        "a softmax (β {beta}) on {:?}: the graph records one trailing softmax \
                         with β 1 over a vector, as the last operator",
                        self.shapes[x]
                    )));
                }
                self.softmax = true;
                self.vals.insert(t, Val::Value(x));
                Ok(())
            }
            other => Err(at.err(format!("{other} is not mapped"))),
        }
    }

    /// ADD, SUB or MUL: of two computed values (equal shapes, or broadcast as
    /// [`collab_models::graph::broadcast`] allows), or of a computed value and a constant of
    /// one value or one per channel (a fixed `MulConst` / `AddConst` node).
    fn elementwise(&mut self, op: &Operator, at: &At<'_>) -> Result<(), ImportError> {
        let activation = match (op.op.as_str(), &op.options) {
            ("ADD", Options::Add { activation })
            | ("SUB", Options::Sub { activation })
            | ("MUL", Options::Mul { activation }) => *activation,
            _ => return Err(at.err(format!("{} without its options", op.op))),
        };
        if op.inputs.len() != 2 {
            return Err(at.err(format!("{} takes two inputs", op.op)));
        }
        let (t, shape) = self.out_shape(op, at)?;
        let name = self.unique(&layer_name(self.g, op));
        let is_constant = |t: i32| {
            usize::try_from(t).ok().is_some_and(|t| {
                self.dequantized.contains_key(&t)
                    || self.g.tensors.get(t).is_some_and(|i| i.data.is_some())
            })
        };
        let v = match (is_constant(op.inputs[0]), is_constant(op.inputs[1])) {
            (false, false) => {
                let (a, b) = (self.value(op.inputs[0], at)?, self.value(op.inputs[1], at)?);
                if collab_models::graph::broadcast(self.shapes[a], self.shapes[b]) != Some(shape) {
                    return Err(at.err(format!(
                        "combines {:?} and {:?} into {shape:?}: the graph broadcasts only a \
                         per-channel [1, 1, 1, c], a vector [1, c] or a scalar over a map",
                        self.shapes[a], self.shapes[b]
                    )));
                }
                let op = match op.op.as_str() {
                    "ADD" => Op::Add {
                        act: Default::default(),
                    },
                    "SUB" => Op::Sub {
                        act: Default::default(),
                    },
                    _ => Op::Mul {
                        act: Default::default(),
                    },
                };
                self.push(name, op, vec![a, b], shape)
            }
            (true, true) => return Err(at.err("both operands are constants")),
            (first_constant, _) => {
                let (xt, ct) = if first_constant {
                    (op.inputs[1], op.inputs[0])
                } else {
                    (op.inputs[0], op.inputs[1])
                };
                let x = self.value(xt, at)?;
                let (values, cshape) = self.constant(ct, at)?;
                let width = match self.shapes[x] {
                    Shape::Map([c, ..]) => c,
                    Shape::Vec(f) => f,
                };
                let per_channel = cshape.last() == Some(&width)
                    && cshape[..cshape.len() - 1].iter().all(|d| *d == 1);
                if !(values.len() == 1 || per_channel) || self.shapes[x] != shape {
                    return Err(at.err(format!(
                        "its constant `{}` of shape {cshape:?} is not one value or one per \
                         channel of {:?}",
                        self.tensor_name(ct),
                        self.shapes[x]
                    )));
                }
                let mut values = values;
                if values.iter().all(|v| *v == values[0]) {
                    values.truncate(1);
                }
                let negated: Vec<f32> = values.iter().map(|v| -v).collect();
                match (op.op.as_str(), first_constant) {
                    ("MUL", _) => self.push(name, Op::MulConst { values }, vec![x], shape),
                    ("ADD", _) => self.push(name, Op::AddConst { values }, vec![x], shape),
                    ("SUB", false) => {
                        self.push(name, Op::AddConst { values: negated }, vec![x], shape)
                    }
                    _ => {
                        let neg = self.unique(&format!("{name}_neg"));
                        let m = self.push(neg, Op::MulConst { values: vec![-1.0] }, vec![x], shape);
                        self.push(name, Op::AddConst { values }, vec![m], shape)
                    }
                }
            }
        };
        self.finish(t, v, activation, at)
    }

    fn conv(&mut self, op: &Operator, at: &At<'_>) -> Result<(), ImportError> {
        let Options::Conv {
            padding,
            stride,
            dilation,
            activation,
            depth_multiplier,
        } = op.options
        else {
            return Err(at.err("a convolution without its options"));
        };
        let depthwise = op.op == "DEPTHWISE_CONV_2D";
        let x = self.value(op.inputs.first().copied().unwrap_or(-1), at)?;
        let [c, h, w] = self.map(x, at)?;
        let wt = *op.inputs.get(1).ok_or_else(|| at.err("no weights"))?;
        let (values, shape) = self.constant(wt, at)?;
        let &[a, kh, kw, b] = shape.as_slice() else {
            return Err(at.err(format!("weights of shape {shape:?}; expected 4-D")));
        };
        if kh == 0 || kw == 0 {
            return Err(at.err(format!("an empty kernel {shape:?}")));
        }
        // TFLite: CONV_2D OHWI [out, kh, kw, in / groups]; depthwise [1, kh, kw, c · m].
        let (out, groups, weight) = if depthwise {
            if a != 1 || c == 0 || !b.is_multiple_of(c) {
                return Err(at.err(format!(
                    "depthwise weights of shape {shape:?} for {c} input channels"
                )));
            }
            if depth_multiplier != 0 && depth_multiplier * c != b {
                return Err(at.err(format!(
                    "depth multiplier {depth_multiplier} with {c} input channels, weights for {b}"
                )));
            }
            (b, c, depthwise_to_burn(&values, [kh, kw, b]))
        } else {
            if b == 0 || !c.is_multiple_of(b) {
                return Err(at.err(format!(
                    "weights of shape {shape:?} take {b} input channels per group, the input \
                     has {c}"
                )));
            }
            (a, c / b, ohwi_to_burn(&values, [a, kh, kw, b]))
        };
        let bias = self.bias(op, 2, out, at)?;
        let pads = pads(padding, [h, w], [kh, kw], stride, dilation)
            .ok_or_else(|| at.err(format!("kernel {kh}×{kw} does not fit {h}×{w}")))?;
        let (t, shape) = self.out_shape(op, at)?;
        let layer = self.convs.len();
        self.convs.push(ConvSpec {
            channels: [c, out],
            kernel: [kh, kw],
            stride,
            dilation,
            groups,
            pads,
            bias: bias.is_some(),
        });
        self.weights.convs.push((weight, bias));
        let name = self.unique(&layer_name(self.g, op));
        let v = self.push(
            name,
            Op::Conv {
                layer,
                act: Default::default(),
            },
            vec![x],
            shape,
        );
        self.finish(t, v, activation, at)
    }

    /// TRANSPOSE_CONV (inputs: output shape, weights `[out, kh, kw, in]`, input, optional bias)
    /// as [`Op::ConvTranspose`]: its equivalent convolution's weight `[out, in, kh, kw]` is the
    /// file's, flipped in space; the pads follow from the output size as TFLite computes them.
    fn transpose_conv(&mut self, op: &Operator, at: &At<'_>) -> Result<(), ImportError> {
        let Options::TransposeConv {
            padding,
            stride,
            activation,
        } = op.options
        else {
            return Err(at.err("TRANSPOSE_CONV without its options"));
        };
        let x = self.value(op.inputs.get(2).copied().unwrap_or(-1), at)?;
        let [c, h, w] = self.map(x, at)?;
        let wt = *op.inputs.get(1).ok_or_else(|| at.err("no weights"))?;
        let (values, shape) = self.constant(wt, at)?;
        let &[out, kh, kw, i] = shape.as_slice() else {
            return Err(at.err(format!("weights of shape {shape:?}; expected 4-D")));
        };
        if i != c || kh == 0 || kw == 0 {
            return Err(at.err(format!(
                "weights of shape {shape:?} for an input of {c} channels"
            )));
        }
        let bias = self.bias(op, 3, out, at)?;
        let (t, oshape) = self.out_shape(op, at)?;
        let Shape::Map([oc, oh, ow]) = oshape else {
            return Err(at.err(format!("output {oshape:?}: a map is needed")));
        };
        if oc != out {
            return Err(at.err(format!("output {oshape:?} for weights {shape:?}")));
        }
        // TFLite: pad before = transpose_conv_pad; whatever lies past the output is dropped,
        // and an output larger than the full result gets extra (bias-only) rows at the end.
        let mut pads = [0usize; 4];
        let mut output_padding = [0usize; 2];
        for (d, (size, o, k)) in [(h, oh, kh), (w, ow, kw)].into_iter().enumerate() {
            let before = transpose_conv_pad(padding, o, k, stride[d]);
            let full = (size - 1) * stride[d] + k;
            let end = full as isize - before as isize - o as isize;
            pads[d] = before;
            if end >= 0 {
                pads[d + 2] = end as usize;
            } else {
                output_padding[d] = (-end) as usize;
            }
        }
        let mut weight = vec![0f32; values.len()];
        for o in 0..out {
            for y in 0..kh {
                for xx in 0..kw {
                    for ci in 0..c {
                        weight[((o * c + ci) * kh + kh - 1 - y) * kw + kw - 1 - xx] =
                            values[((o * kh + y) * kw + xx) * c + ci];
                    }
                }
            }
        }
        let layer = self.convs.len();
        self.convs.push(ConvSpec {
            channels: [c, out],
            kernel: [kh, kw],
            stride: [1, 1],
            dilation: [1, 1],
            groups: 1,
            pads: [0; 4],
            bias: bias.is_some(),
        });
        self.weights.convs.push((weight, bias));
        let name = self.unique(&layer_name(self.g, op));
        let v = self.push(
            name,
            Op::ConvTranspose {
                layer,
                stride,
                pads,
                output_padding,
                act: Default::default(),
            },
            vec![x],
            oshape,
        );
        self.finish(t, v, activation, at)
    }

    fn fully_connected(&mut self, op: &Operator, at: &At<'_>) -> Result<(), ImportError> {
        let Options::FullyConnected { activation, .. } = op.options else {
            return Err(at.err("FULLY_CONNECTED without its options"));
        };
        let mut x = self.value(op.inputs.first().copied().unwrap_or(-1), at)?;
        let wt = *op.inputs.get(1).ok_or_else(|| at.err("no weights"))?;
        let (values, shape) = self.constant(wt, at)?;
        let &[out, din] = shape.as_slice() else {
            return Err(at.err(format!("weights of shape {shape:?}; expected [out, in]")));
        };
        let features = match self.shapes[x] {
            Shape::Map([c, h, w]) => c * h * w,
            Shape::Vec(f) => f,
        };
        if features != din {
            return Err(at.err(format!(
                "the input has {features} values per sample, the weights take {din}: the graph \
                 applies a fully-connected layer to whole samples"
            )));
        }
        let (t, shape) = self.out_shape(op, at)?;
        if shape != Shape::Vec(out) {
            return Err(at.err(format!(
                "output {shape:?}: the graph's fully-connected layer makes [1, {out}]"
            )));
        }
        let bias = self.bias(op, 2, out, at)?;
        let name = self.unique(&layer_name(self.g, op));
        if let Shape::Map(_) = self.shapes[x] {
            // TFLite flattens in its own [h, w, c] order.
            let flat = self.unique(&format!("{name}_flatten"));
            x = self.push(
                flat,
                Op::Flatten {
                    channels_last: true,
                },
                vec![x],
                Shape::Vec(features),
            );
        }
        let layer = self.linears.len();
        self.linears.push(([din, out], bias.is_some()));
        self.weights
            .linears
            .push((transpose(&values, [out, din]), bias));
        let v = self.push(
            name,
            Op::Linear {
                layer,
                act: Default::default(),
            },
            vec![x],
            shape,
        );
        self.finish(t, v, activation, at)
    }
}

/// Explicit `[top, left, bottom, right]` pads of a window on an `[h, w]` input, as TFLite
/// computes them (SAME: output `ceil(size / stride)`, the odd row or column at the end).
fn pads(
    padding: Padding,
    [h, w]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
) -> Option<[usize; 4]> {
    let axis = |size: usize, d: usize| {
        let (out, before) = out_and_pad(padding, size, kernel[d], stride[d], dilation[d])?;
        let span = (kernel[d] - 1) * dilation[d] + 1;
        let total = ((out - 1) * stride[d] + span).saturating_sub(size);
        Some(match padding {
            Padding::Valid => (0, 0),
            Padding::Same => (before, total - before),
        })
    };
    let ((t, b), (l, r)) = (axis(h, 0)?, axis(w, 1)?);
    Some([t, l, b, r])
}

/// CONV_2D weights OHWI `[o, kh, kw, i]` → burn `[o, i, kh, kw]`.
fn ohwi_to_burn(w: &[f32], [o, kh, kw, i]: [usize; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for oc in 0..o {
        for ic in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out.push(w[((oc * kh + y) * kw + x) * i + ic]);
                }
            }
        }
    }
    out
}

/// DEPTHWISE_CONV_2D weights `[1, kh, kw, c·m]` → burn `[c·m, 1, kh, kw]` (output channel
/// `ic · m + k` reads input channel `ic` in both).
fn depthwise_to_burn(w: &[f32], [kh, kw, cm]: [usize; 3]) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for oc in 0..cm {
        for y in 0..kh {
            for x in 0..kw {
                out.push(w[(y * kw + x) * cm + oc]);
            }
        }
    }
    out
}

/// FULLY_CONNECTED weights `[out, in]` → burn `[in, out]`.
fn transpose(w: &[f32], [o, i]: [usize; 2]) -> Vec<f32> {
    let mut out = Vec::with_capacity(w.len());
    for a in 0..i {
        for b in 0..o {
            out.push(w[b * i + a]);
        }
    }
    out
}

/// A readable node name from the file's tensor names. TensorFlow's converter joins the names
/// of the ops it fused with `;` (`model/activation/Relu;model/conv2d/BiasAdd;…`): the part
/// that names the operator's own TensorFlow op (`…/Conv2D`, `…/depthwise`, `…/MatMul`, …),
/// looked for in the weights' name first (the outputs' lists can name a neighbouring layer
/// first), gives its scope (`model/conv2d`); else the output's first part without its last
/// component.
fn layer_name(g: &Graph, op: &Operator) -> String {
    let ops: &[&str] = match op.op.as_str() {
        "CONV_2D" => &["Conv2D"],
        "DEPTHWISE_CONV_2D" => &["depthwise"],
        "FULLY_CONNECTED" => &["MatMul"],
        "ADD" => &["add", "Add", "AddV2"],
        "CONCATENATION" => &["concat", "ConcatV2"],
        "AVERAGE_POOL_2D" => &["AvgPool"],
        "MAX_POOL_2D" => &["MaxPool"],
        "MEAN" => &["Mean"],
        "RESHAPE" => &["Reshape"],
        "TRANSPOSE" => &["transpose", "Transpose"],
        "TRANSPOSE_CONV" => &["conv2d_transpose", "Conv2DBackpropInput"],
        _ => &[],
    };
    let name = |t: Option<&i32>| {
        t.and_then(|&t| usize::try_from(t).ok())
            .and_then(|t| g.tensors.get(t))
            .map_or("", |t| t.name.as_str())
    };
    let weights = match op.op.as_str() {
        "CONV_2D" | "DEPTHWISE_CONV_2D" | "FULLY_CONNECTED" | "TRANSPOSE_CONV" => {
            name(op.inputs.get(1))
        }
        _ => "",
    };
    let output = name(op.outputs.first());
    for candidate in [weights, output] {
        for part in candidate.split(';') {
            if let Some((scope, last)) = part.rsplit_once('/')
                && ops.contains(&last)
                && !scope.is_empty()
            {
                return scope.to_string();
            }
        }
    }
    let first = output.split(';').next().unwrap_or("");
    match first.rsplit_once('/') {
        Some((scope, _)) if !scope.is_empty() => scope.to_string(),
        _ if !first.is_empty() => first.to_string(),
        _ => op.op.to_lowercase(),
    }
}

/// `name` with every character outside `[A-Za-z0-9_]` replaced by `_` (never empty).
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "node".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_pads_put_the_odd_row_at_the_end() {
        // 32 → 16 with a 3×3 window, stride 2: 1 row of padding, at the bottom / right.
        assert_eq!(
            pads(Padding::Same, [32, 32], [3, 3], [2, 2], [1, 1]),
            Some([0, 0, 1, 1])
        );
        // Stride 1: symmetric.
        assert_eq!(
            pads(Padding::Same, [49, 10], [3, 3], [1, 1], [1, 1]),
            Some([1, 1, 1, 1])
        );
        // 49×10, kernel 10×4, stride 2: out 25×5; 24·2 + 10 − 49 = 9 rows, 4·2 + 4 − 10 = 2
        // columns of padding.
        assert_eq!(
            pads(Padding::Same, [49, 10], [10, 4], [2, 2], [1, 1]),
            Some([4, 1, 5, 1])
        );
        // Dilation widens the window: 3×3 dilated 2 spans 5.
        assert_eq!(
            pads(Padding::Same, [8, 8], [3, 3], [1, 1], [2, 2]),
            Some([2, 2, 2, 2])
        );
        assert_eq!(
            pads(Padding::Valid, [8, 8], [3, 3], [2, 2], [1, 1]),
            Some([0; 4])
        );
        assert_eq!(pads(Padding::Valid, [2, 2], [3, 3], [1, 1], [1, 1]), None);
    }

    #[test]
    fn weight_layouts_reorder_to_burn() {
        // OHWI [2, 1, 2, 3]: value = 100 o + 10 x + i.
        let mut w = Vec::new();
        for o in 0..2 {
            for x in 0..2 {
                for i in 0..3 {
                    w.push((100 * o + 10 * x + i) as f32);
                }
            }
        }
        let b = ohwi_to_burn(&w, [2, 1, 2, 3]);
        // burn [o][i][0][x]
        assert_eq!(b[..4], [0.0, 10.0, 1.0, 11.0]);
        assert_eq!(b[6..8], [100.0, 110.0]);
        // Depthwise [1, 1, 2, 3]: value = 10 x + oc → burn [oc][0][0][x].
        let d: Vec<f32> = (0..2)
            .flat_map(|x| (0..3).map(move |oc| (10 * x + oc) as f32))
            .collect();
        assert_eq!(
            depthwise_to_burn(&d, [1, 2, 3]),
            [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
        );
        // [out 2, in 3] → [in 3, out 2].
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    #[test]
    fn names_come_from_the_op_that_made_the_tensor() {
        let g = Graph {
            version: 3,
            tensors: [
                "input_1",
                "model/batch_normalization_1/FusedBatchNormV3;model/depthwise_conv2d/depthwise;model/conv2d_4/Conv2D",
                "model/activation/Relu;model/conv2d_2/Conv2D;model/conv2d/Conv2D1",
                "model/activation_2/Relu;model/add/add",
                "Identity",
                "",
            ]
            .iter()
            .map(|n| collab_tflite::TensorInfo {
                name: n.to_string(),
                shape: vec![1],
                dtype: TensorType::Float32,
                quantization: None,
                buffer: 0,
                data: None,
            })
            .collect(),
            operators: vec![],
            inputs: vec![0],
            outputs: vec![4],
            subgraphs: 1,
        };
        let op = |op: &str, inputs: Vec<i32>, out: i32| Operator {
            op: op.into(),
            version: 1,
            options: Options::None,
            inputs,
            outputs: vec![out],
        };
        assert_eq!(
            layer_name(&g, &op("DEPTHWISE_CONV_2D", vec![0, 1], 2)),
            "model/depthwise_conv2d"
        );
        assert_eq!(layer_name(&g, &op("ADD", vec![0, 0], 3)), "model/add");
        assert_eq!(
            layer_name(&g, &op("RELU", vec![0], 3)),
            "model/activation_2"
        );
        assert_eq!(layer_name(&g, &op("RELU", vec![0], 4)), "Identity");
        assert_eq!(layer_name(&g, &op("TANH", vec![0], 5)), "tanh");
        assert_eq!(sanitize("model/conv2d-1:0"), "model_conv2d_1_0");
        assert_eq!(sanitize(""), "node");
        let mut imp = Importer::new(Path::new("x.tflite"), &g);
        assert_eq!(imp.unique("a/b"), "a_b");
        assert_eq!(imp.unique("a/b"), "a_b_2");
        assert_eq!(imp.unique("a_b"), "a_b_3");
    }
}
