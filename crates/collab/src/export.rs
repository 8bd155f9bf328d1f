//! int8 `.tflite` export of the models, with PTQ calibration or QAT ranges.
//!
//! A model is first traced into a [`Plan`]: its layers in execution order, each stripped to the
//! plain burn layer whose weight is the effective weight (BatchNorm folded, pruning zeros,
//! cluster centroids, fake-quantized values) plus, for `QatAware` layers, the quantization
//! parameters QAT trained ([`collab_quant::LayerQuant`]). Activation ranges that QAT did not
//! provide (all of them after plain training; residual additions always) come from running the
//! float plan on calibration batches (min / max over all samples, as the TFLite converter's
//! default calibration). Weights are quantized with [`QuantParams::symmetric`] from their own
//! largest magnitude (per output channel for convolutions, per tensor for the classifier), the
//! same rule QAT trains with, so QAT-trained weights land on exactly the trained integers.
//!
//! Why pruning and clustering survive: the zero point of int8 weights is 0, so a zero stays 0;
//! rounding is a function, so k distinct values per channel become at most k integers. The
//! finest symmetric scale that does not clip is `max|w| / 127`, which is what is used: two
//! centroids can only merge if they are closer than one step of that scale.

use std::path::Path;

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use collab_cluster::Clustered;
use collab_core::host::to_vec_f32;
use collab_core::{ConvBn, WeightLayer};
use collab_data::{Features, Layout};
use collab_models::graph::{Fused, Op, Value, apply_op};
use collab_models::{GraphNet, IntoGraph};
use collab_prune::Prunable;
use collab_quant::{Calibration, FusedActivation, LayerQuant, QatAware, QuantParams};
use collab_tflite::{ActQ, Activation, ConvLayer, ConvPadding, Int8Builder, Padding, TensorId};
use serde::Serialize;

use crate::CollabError;
use crate::data::Batches;
use crate::network::Network;

/// A layer stack the exporter can read: its plain layer (via `strip`) and, for `QatAware`, the
/// quantization parameters QAT trained.
pub trait ExportLayer: WeightLayer + Clone {
    /// The QAT parameters, if this stack is quantization-aware.
    fn layer_quant(&self, _name: &str) -> Result<Option<LayerQuant>, CollabError> {
        Ok(None)
    }
}

impl ExportLayer for Conv2d {}
impl ExportLayer for Linear {}
impl<C: ExportLayer<Plain = Conv2d>> ExportLayer for ConvBn<C> {}
impl<L: ExportLayer> ExportLayer for Prunable<L> {}
impl<L: ExportLayer> ExportLayer for Clustered<L> {}
impl<L: ExportLayer> ExportLayer for QatAware<L> {
    fn layer_quant(&self, name: &str) -> Result<Option<LayerQuant>, CollabError> {
        QatAware::layer_quant(self, name)
            .map(Some)
            .map_err(|e| CollabError::Usage(format!("layer `{name}`: {e}")))
    }
}

/// An activation fused into a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Act {
    /// None.
    None,
    /// ReLU.
    Relu,
    /// ReLU6.
    Relu6,
}

impl Act {
    fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::None => x,
            Act::Relu => burn::tensor::activation::relu(x),
            Act::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    fn tflite(self) -> Activation {
        match self {
            Act::None => Activation::None,
            Act::Relu => Activation::Relu,
            Act::Relu6 => Activation::Relu6,
        }
    }
}

/// One step of a traced model. Values are numbered: 0 is the input, step `i` makes value `i + 1`.
#[derive(Debug)]
pub enum Step {
    /// A convolution (depthwise when `groups` = input channels) with its fused activation.
    Conv {
        /// Layer path, e.g. `blocks.0.dw`.
        name: String,
        /// Input value.
        src: usize,
        /// The plain layer (effective weight, folded BatchNorm).
        layer: Conv2d,
        /// Fused activation.
        act: Act,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// The classifier.
    Linear {
        /// Layer path.
        name: String,
        /// Input value.
        src: usize,
        /// The plain layer.
        layer: Linear,
        /// Fused activation.
        act: Act,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// Element-wise sum of two values (residual connection).
    Add {
        /// Name of the sum.
        name: String,
        /// Inputs.
        a: usize,
        /// Inputs.
        b: usize,
        /// Fused activation.
        act: Act,
        /// The output quantization QAT trained, if it did.
        quant: Option<QuantParams>,
    },
    /// Any other parameter-free operator of a graph ([`collab_models::graph::apply_op`]
    /// computes it): pooling, flattening, concatenation, a lone activation.
    Op {
        /// The node's name.
        name: String,
        /// The operator.
        op: Op,
        /// Input values.
        inputs: Vec<usize>,
    },
    /// An element-wise product or difference of two values, or a constant scale or shift
    /// ([`Op::Mul`], [`Op::Sub`], [`Op::MulConst`], [`Op::AddConst`]): MUL, SUB or ADD with
    /// an output quantization of its own.
    Binary {
        /// The node's name.
        name: String,
        /// The operator.
        op: Op,
        /// Input values (one for the constant forms).
        inputs: Vec<usize>,
        /// The output quantization QAT trained, if it did.
        quant: Option<QuantParams>,
    },
}

/// A model as the int8 graph will compute it.
#[derive(Debug)]
pub struct Plan {
    /// Input `[channels, h, w]`.
    pub input: [usize; 3],
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The model's output is a probability distribution: the int8 file ends with SOFTMAX
    /// (when [`ExportOptions::softmax`] asks for it). False for regression models
    /// (an autoencoder's reconstruction).
    pub softmax: bool,
    /// The input's range when the model's input record fixes it (raw pixels 0..255): the int8
    /// input quantization then follows from it instead of from calibration.
    pub input_range: Option<(f32, f32)>,
    /// The input is a vector per sample (`[features, 1, 1]` in burn): the int8 file takes
    /// `[batch, features]`, as the original did.
    pub flat_input: bool,
}

/// Models that can be traced into a [`Plan`]: every model that describes itself as a graph
/// ([`IntoGraph`]: the built-in families and [`GraphNet`]) traces through the graph's own
/// operators, so there is one trace for all of them.
pub trait Traceable {
    /// The plan, with the model's input `[channels, h, w]`.
    fn trace(&self, input: [usize; 3]) -> Result<Plan, CollabError>;
}

impl<M> Traceable for M
where
    M: IntoGraph + Clone,
    M::Conv: ExportLayer<Plain = Conv2d>,
    M::Linear: ExportLayer<Plain = Linear>,
{
    fn trace(&self, input: [usize; 3]) -> Result<Plan, CollabError> {
        trace_graph(&self.clone().into_graph()?, input)
    }
}

struct Tracer {
    steps: Vec<Step>,
}

impl Tracer {
    fn conv<C: ExportLayer<Plain = Conv2d>>(
        &mut self,
        name: &str,
        src: usize,
        c: &C,
        act: Act,
    ) -> Result<usize, CollabError> {
        let quant = c.layer_quant(name)?;
        if let Some(q) = &quant {
            check_act(name, q.activation, act)?;
        }
        self.steps.push(Step::Conv {
            name: name.into(),
            src,
            layer: c.clone().strip(),
            act,
            quant,
        });
        Ok(self.steps.len())
    }

    fn push(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.steps.len()
    }
}

/// A QAT layer must have been trained with the activation the model applies after it (the
/// int8 op fuses exactly one).
fn check_act(name: &str, trained: FusedActivation, model: Act) -> Result<(), CollabError> {
    let ok = matches!(
        (trained, model),
        (FusedActivation::None, Act::None)
            | (FusedActivation::Relu, Act::Relu)
            | (FusedActivation::Relu6, Act::Relu6)
    );
    if ok {
        Ok(())
    } else {
        Err(CollabError::Usage(format!(
            "layer `{name}` was trained with fused activation {trained:?}, but the model applies \
             {model:?} after it; wrap it with QatConfig::with_activation matching the model"
        )))
    }
}

impl Act {
    fn from_fused(f: Fused) -> Self {
        match f {
            Fused::None => Act::None,
            Fused::Relu => Act::Relu,
            Fused::Relu6 => Act::Relu6,
        }
    }
}

/// A graph traces to its own operators: the spec is the plan, with each layer stripped to its
/// effective weight (the input shape is the spec's; `input` must match it).
fn trace_graph<C: ExportLayer<Plain = Conv2d>, L: ExportLayer<Plain = Linear>>(
    net: &GraphNet<C, L>,
    input: [usize; 3],
) -> Result<Plan, CollabError> {
    let spec = net.spec();
    if input != spec.input.shape {
        return Err(CollabError::Usage(format!(
            "model `{}` takes inputs {:?}, not {input:?}",
            spec.name, spec.input.shape
        )));
    }
    let mut t = Tracer { steps: Vec::new() };
    for (k, node) in spec.nodes.iter().enumerate() {
        let name = node.name.as_str();
        match &node.op {
            Op::Conv { layer, act } => {
                t.conv(
                    name,
                    node.inputs[0],
                    &net.convs[*layer],
                    Act::from_fused(*act),
                )?;
            }
            Op::Linear { layer, act } => {
                let l = &net.linears[*layer];
                let quant = l.layer_quant(name)?;
                if let Some(q) = &quant {
                    check_act(name, q.activation, Act::from_fused(*act))?;
                }
                t.push(Step::Linear {
                    name: name.into(),
                    src: node.inputs[0],
                    layer: l.clone().strip(),
                    act: Act::from_fused(*act),
                    quant,
                });
            }
            Op::Add { act } => {
                let quant = net
                    .requant_of(k)
                    .map(|q| q.params(name))
                    .transpose()
                    .map_err(|e| CollabError::Usage(format!("node `{name}`: {e}")))?;
                t.push(Step::Add {
                    name: name.into(),
                    a: node.inputs[0],
                    b: node.inputs[1],
                    act: Act::from_fused(*act),
                    quant,
                });
            }
            op @ (Op::Mul { .. } | Op::Sub { .. } | Op::MulConst { .. } | Op::AddConst { .. }) => {
                let quant = net
                    .requant_of(k)
                    .map(|q| q.params(name))
                    .transpose()
                    .map_err(|e| CollabError::Usage(format!("node `{name}`: {e}")))?;
                t.push(Step::Binary {
                    name: name.into(),
                    op: op.clone(),
                    inputs: node.inputs.clone(),
                    quant,
                });
            }
            op => {
                t.push(Step::Op {
                    name: name.into(),
                    op: op.clone(),
                    inputs: node.inputs.clone(),
                });
            }
        }
    }
    let input_range = match &spec.input.features {
        Features::Image(norm) => Some(norm.range()),
        _ => None,
    };
    Ok(Plan {
        input,
        steps: t.steps,
        softmax: spec.softmax,
        input_range,
        flat_input: spec.input.layout == Layout::Flat,
    })
}

impl Network {
    /// The model as an int8 plan, for the input of its task.
    pub fn plan(&self, input: [usize; 3]) -> Result<Plan, CollabError> {
        match self {
            Network::DsCnn(m) => m.trace(input),
            Network::MobileNetV1(m) => m.trace(input),
            Network::MobileNetV2(m) => m.trace(input),
            Network::Graph(m) => m.trace(input),
        }
    }
}

/// Observed `[min, max]` of every value of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranges(pub Vec<Option<(f32, f32)>>);

impl Plan {
    /// Run the float plan on `x` `[n, c, h, w]`; returns every value (input first), as burn
    /// tensors flattened to `[n, …]`.
    fn run(&self, x: Tensor<4>) -> Result<Vec<Tensor<2>>, CollabError> {
        let mut values: Vec<Value> = vec![Value::Map(x)];
        for step in &self.steps {
            let v = match step {
                Step::Conv {
                    src, layer, act, ..
                } => Value::Map(act.apply(layer.forward(values[*src].clone().map()))),
                Step::Linear {
                    src, layer, act, ..
                } => Value::Vec(act.apply(layer.forward(values[*src].clone().flat()))),
                Step::Add { a, b, act, .. } => {
                    let fused = match act {
                        Act::None => Fused::None,
                        Act::Relu => Fused::Relu,
                        Act::Relu6 => Fused::Relu6,
                    };
                    apply_op(
                        &Op::Add { act: fused },
                        vec![values[*a].clone(), values[*b].clone()],
                    )
                }
                Step::Op { op, inputs, .. } | Step::Binary { op, inputs, .. } => {
                    apply_op(op, inputs.iter().map(|&i| values[i].clone()).collect())
                }
            };
            values.push(v);
        }
        Ok(values.into_iter().map(Value::flat).collect())
    }

    /// The float model's logits for `x` `[n, c, h, w]` (the plan is the model: tests compare).
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, CollabError> {
        self.run(x)?
            .pop()
            .ok_or_else(|| CollabError::Usage("empty plan".into()))
    }

    /// The range of every value over `batches` of inputs `[n, c, h, w]` (PTQ calibration):
    /// `MinMax` over all samples (the TFLite converter's rule), or per-batch percentiles
    /// averaged over batches (clips rare outliers), as [`collab_quant::ActQuant`] calibrates.
    pub fn calibrate<I>(&self, batches: I, method: Calibration) -> Result<Ranges, CollabError>
    where
        I: IntoIterator<Item = Result<Tensor<4>, CollabError>>,
    {
        let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); self.steps.len() + 1];
        let mut ranges: Vec<Option<(f32, f32)>> = vec![None; self.steps.len() + 1];
        let mut seen = 0usize;
        for x in batches {
            seen += 1;
            for ((r, sum), v) in ranges.iter_mut().zip(&mut sums).zip(self.run(x?)?) {
                let mut values = to_vec_f32(v.flatten::<1>(0, 1));
                let (lo, hi) = match method {
                    Calibration::MinMax => values
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                            (a.min(*v), b.max(*v))
                        }),
                    Calibration::Percentile { percentile } => {
                        let n = values.len();
                        let k_hi =
                            (((percentile / 100.0) * (n - 1) as f64).round() as usize).min(n - 1);
                        let k_lo = n - 1 - k_hi;
                        let hi = *values.select_nth_unstable_by(k_hi, f32::total_cmp).1;
                        let lo = *values.select_nth_unstable_by(k_lo, f32::total_cmp).1;
                        (lo, hi)
                    }
                };
                sum.0 += lo as f64;
                sum.1 += hi as f64;
                *r = Some(match (method, *r) {
                    (Calibration::MinMax, Some((a, b))) => (a.min(lo), b.max(hi)),
                    (Calibration::MinMax, None) => (lo, hi),
                    (Calibration::Percentile { .. }, _) => {
                        ((sum.0 / seen as f64) as f32, (sum.1 / seen as f64) as f32)
                    }
                });
            }
        }
        if seen == 0 {
            return Err(CollabError::Usage(
                "calibration needs at least one batch".into(),
            ));
        }
        Ok(Ranges(ranges))
    }

    /// [`calibrate`](Self::calibrate) on the samples `indices` of a data set, `batch_size` at a
    /// time, without augmentation.
    pub fn calibrate_on(
        &self,
        data: &dyn Batches,
        indices: &[usize],
        batch_size: usize,
        method: Calibration,
    ) -> Result<Ranges, CollabError> {
        let device = crate::device::compute();
        self.calibrate(
            indices
                .chunks(batch_size.max(1))
                .map(|chunk| data.batch(chunk, None, &device).map(|(x, _)| x)),
            method,
        )
    }
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Batch size of the graph (1 for deployment).
    pub batch: usize,
    /// Float32 input and output with QUANTIZE / DEQUANTIZE at the edges (CPU only on NPUs).
    pub float_io: bool,
    /// End with SOFTMAX (probabilities) instead of the logits.
    pub softmax: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            float_io: false,
            softmax: true,
        }
    }
}

/// `s` rounded up to a 12-bit significand (a relative change below 2⁻¹²).
///
/// Why: TFLite Micro computes the fully-connected multiplier from the `f32` product
/// `input_scale × weight_scale`, LiteRT's reference kernel from the `f64` product; the two give
/// different fixed-point multipliers (and outputs 1 LSB apart) unless the product is exact in
/// `f32`. With 12-bit significands on both factors it always is, so every runtime computes the
/// same multiplier. All activation scales and the classifier's weight scale are rounded so.
pub fn round_scale(s: f32) -> f32 {
    if !(s.is_finite() && s > 0.0) {
        return s;
    }
    let e = s.log2().floor() as i32;
    let unit = 2f32.powi(e - 11);
    let r = (s / unit).ceil() * unit;
    if r < s { r + unit } else { r }
}

fn act_q(p: &QuantParams) -> ActQ {
    ActQ {
        scale: round_scale(p.scale[0]),
        zero_point: p.zero_point[0],
    }
}

fn range_q(ranges: Option<&Ranges>, value: usize, what: &str) -> Result<ActQ, CollabError> {
    let (lo, hi) = ranges
        .and_then(|r| r.0.get(value).copied().flatten())
        .ok_or_else(|| {
            CollabError::Usage(format!(
                "{what} has no quantization range: the model was not trained with QAT there; \
                 give calibration data (PTQ)"
            ))
        })?;
    QuantParams::asymmetric(lo, hi)
        .map(|p| act_q(&p))
        .map_err(|e| CollabError::Usage(format!("{what}: {e}")))
}

/// Quantize a float weight `values` in burn's layout: returns int8 values (same order) and the
/// scales, per output channel (`rows` = channels) or per tensor; `round`: scales rounded with
/// [`round_scale`].
fn quantize_weight(
    values: &[f32],
    channel_of: impl Fn(usize) -> usize,
    channels: usize,
    per_channel: bool,
    trained: Option<&QuantParams>,
    round: bool,
) -> (Vec<i8>, Vec<f32>) {
    let mut params = match trained {
        Some(p) => p.clone(),
        None => {
            let mut max_abs = vec![0f32; if per_channel { channels } else { 1 }];
            for (i, v) in values.iter().enumerate() {
                let r = if per_channel { channel_of(i) } else { 0 };
                max_abs[r] = max_abs[r].max(v.abs());
            }
            QuantParams::symmetric(&max_abs, per_channel)
        }
    };
    if round {
        params.scale = params.scale.iter().map(|s| round_scale(*s)).collect();
    }
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| params.quantize(*v, if params.per_channel { channel_of(i) } else { 0 }) as i8)
        .collect();
    (q, params.scale.clone())
}

/// Write the plan as int8 `.tflite` bytes. `ranges` (from [`Plan::calibrate`]) supply every
/// activation range QAT did not.
pub fn to_tflite(
    plan: &Plan,
    ranges: Option<&Ranges>,
    options: &ExportOptions,
) -> Result<Vec<u8>, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let mut b = Int8Builder::new();
    let [c, h, w] = plan.input;
    let shape = [options.batch.max(1), h, w, c];
    // The input's range: the first layer's QAT input quantizer, else calibration.
    let first_input_quant = plan.steps.iter().find_map(|s| match s {
        Step::Conv { src: 0, quant, .. } | Step::Linear { src: 0, quant, .. } => {
            quant.as_ref().and_then(|q| q.input.clone())
        }
        _ => None,
    });
    let in_q = match (&first_input_quant, plan.input_range) {
        (Some(p), _) => act_q(p),
        (None, Some((lo, hi))) => act_q(
            &QuantParams::asymmetric(lo, hi)
                .map_err(|e| CollabError::Usage(format!("the model input: {e}")))?,
        ),
        (None, None) => range_q(ranges, 0, "the model input")?,
    };
    let shape: Vec<usize> = if plan.flat_input {
        vec![options.batch.max(1), c * h * w]
    } else {
        shape.to_vec()
    };
    let input = if options.float_io {
        b.float_input("input", &shape, in_q).map_err(tfl)?
    } else {
        b.input("input", &shape, in_q).map_err(tfl)?
    };
    // Raw-pixel inputs fix the input quantization exactly (q = pixel − 128 for 0..255), as the
    // reference files do; anything else is calibrated or trained.
    let mut ids: Vec<TensorId> = vec![input];
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
                let out_q = match quant {
                    Some(q) => act_q(&q.output),
                    None => range_q(ranges, value, &format!("layer `{name}`"))?,
                };
                let conv = conv_layer(name, layer, *act, quant.as_ref())?;
                b.conv2d(name, ids[*src], &conv, out_q).map_err(tfl)?
            }
            Step::Linear {
                name,
                src,
                layer,
                act,
                quant,
            } => {
                let out_q = match quant {
                    Some(q) => act_q(&q.output),
                    None => range_q(ranges, value, &format!("layer `{name}`"))?,
                };
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
                    return Err(CollabError::Usage(format!(
                        "layer `{name}`: per-channel fully-connected weights are not exported; \
                         train the classifier with per-tensor weights (the default)"
                    )));
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
                    act.tflite(),
                    out_q,
                )
                .map_err(tfl)?
            }
            Step::Add {
                name,
                a,
                b: bb,
                act,
                quant,
            } => {
                let out_q = match quant {
                    Some(q) => act_q(q),
                    None => range_q(ranges, value, &format!("the sum `{name}`"))?,
                };
                let (x, y) = broadcast_operands(&mut b, name, ids[*a], ids[*bb])?;
                b.add(name, x, y, act.tflite(), out_q).map_err(tfl)?
            }
            Step::Op { name, op, inputs } => op_tflite(&mut b, name, op, inputs, &ids)?,
            Step::Binary {
                name,
                op,
                inputs,
                quant,
            } => {
                let out_q = match quant {
                    Some(q) => act_q(q),
                    None => range_q(ranges, value, &format!("node `{name}`"))?,
                };
                binary_tflite(&mut b, name, op, inputs, &ids, out_q)?
            }
        };
        ids.push(id);
    }
    let mut last = *ids
        .last()
        .ok_or_else(|| CollabError::Usage("empty plan".into()))?;
    if options.softmax && plan.softmax {
        last = b.softmax("probabilities", last).map_err(tfl)?;
    }
    if options.float_io {
        b.float_output("output", last).map_err(tfl)?;
    } else {
        b.output(last);
    }
    b.finish().map_err(tfl)
}

/// A parameter-free graph operator as int8 TFLite: pooling and flattening keep their input's
/// quantization (as the TFLite spec requires); operators the int8 interpreter and the runtimes
/// we check against do not share are refused with the node's name.
fn op_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
) -> Result<TensorId, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let x = ids[inputs[0]];
    let s = b.shape(x).to_vec();
    let window_padding = |pads: [usize; 4], kernel: [usize; 2], stride: [usize; 2]| {
        if pads == [0; 4] {
            return Some(Padding::Valid);
        }
        // TFLite's SAME: total padding max((out − 1)·stride + k − in, 0), the extra at the end.
        let same = (0..2).all(|d| {
            let size = s[1 + d];
            let out = size.div_ceil(stride[d]);
            let total = ((out - 1) * stride[d] + kernel[d]).saturating_sub(size);
            pads[d] == total / 2 && pads[d + 2] == total - total / 2
        });
        same.then_some(Padding::Same)
    };
    match op {
        Op::GlobalAvgPool => b
            .avg_pool(name, x, [s[1], s[2]], [1, 1], Padding::Valid)
            .map_err(tfl),
        Op::AvgPool(p) | Op::MaxPool(p) => {
            let padding = window_padding(p.pads, p.kernel, p.stride).ok_or_else(|| {
                CollabError::Usage(format!(
                    "node `{name}`: {} with padding {:?} is neither VALID nor SAME and has no \
                     int8 TFLite form",
                    op.kind(),
                    p.pads
                ))
            })?;
            match op {
                Op::MaxPool(_) => b.max_pool(name, x, p.kernel, p.stride, padding),
                _ => b.avg_pool(name, x, p.kernel, p.stride, padding),
            }
            .map_err(tfl)
        }
        Op::Flatten { channels_last } => {
            if s.len() == 2 {
                return Ok(x);
            }
            let spatial = s[1] * s[2];
            if !channels_last && spatial > 1 {
                return Err(CollabError::Usage(format!(
                    "node `{name}`: flattening a {}×{} map in channels-first order needs a \
                     TRANSPOSE, which the int8 export does not write; pool to 1×1 first or \
                     flatten channels-last",
                    s[1], s[2]
                )));
            }
            b.reshape(name, x, &[s[0], spatial * s[3]]).map_err(tfl)
        }
        other => Err(CollabError::Usage(format!(
            "node `{name}`: {} has no int8 TFLite form in this exporter (the int8 export \
             writes convolutions, fully-connected layers, ADD, SUB, MUL, average and max pooling, \
             reshapes and softmax); the model trains and evaluates in float, but cannot be written as int8",
            other.kind()
        ))),
    }
}

/// The two operands of an element-wise operator, a vector `[n, c]` beside a map
/// `[n, h, w, c]` reshaped to `[n, 1, 1, c]` (TFLite broadcasts right-aligned, so `[n, c]`
/// would meet `[w, c]`).
fn broadcast_operands(
    b: &mut Int8Builder,
    name: &str,
    x: TensorId,
    y: TensorId,
) -> Result<(TensorId, TensorId), CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let (sx, sy) = (b.shape(x).to_vec(), b.shape(y).to_vec());
    let lift = |b: &mut Int8Builder, t: TensorId, s: &[usize], which: &str| match s {
        [n, c] => b
            .reshape(&format!("{name}/{which}_nhwc"), t, &[*n, 1, 1, *c])
            .map_err(tfl),
        _ => Ok(t),
    };
    match (sx.len(), sy.len()) {
        (2, 4) => Ok((lift(b, x, &sx, "a")?, y)),
        (4, 2) => Ok((x, lift(b, y, &sy, "b")?)),
        _ => Ok((x, y)),
    }
}

/// A product, difference, constant scale or constant shift as int8 MUL, SUB or ADD with
/// output quantization `out`. A constant is one int8 tensor `[c]` (or `[1]`), quantized
/// asymmetrically over its values and 0; TFLite broadcasts it over the last (channel) axis.
fn binary_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
    out: ActQ,
) -> Result<TensorId, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let x = ids[inputs[0]];
    match op {
        Op::Mul { act } | Op::Sub { act } => {
            let (x, y) = broadcast_operands(b, name, x, ids[inputs[1]])?;
            let act = Act::from_fused(*act).tflite();
            match op {
                Op::Mul { .. } => b.mul(name, x, y, act, out),
                _ => b.sub(name, x, y, act, out),
            }
            .map_err(tfl)
        }
        Op::MulConst { values } | Op::AddConst { values } => {
            let (lo, hi) = values
                .iter()
                .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            // A constant of zeros still needs a valid scale.
            let q = act_q(
                &QuantParams::asymmetric(lo, if hi > lo { hi } else { lo + 1.0 })
                    .map_err(|e| CollabError::Usage(format!("node `{name}`: {e}")))?,
            );
            let values = quantize_input(values, q.scale, q.zero_point);
            let c = b
                .constant(&format!("{name}/constant"), &[values.len()], &values, q)
                .map_err(tfl)?;
            match op {
                Op::MulConst { .. } => b.mul(name, x, c, Activation::None, out),
                _ => b.add(name, x, c, Activation::None, out),
            }
            .map_err(tfl)
        }
        other => Err(CollabError::Usage(format!(
            "node `{name}`: {} is not an element-wise operator",
            other.kind()
        ))),
    }
}

fn conv_layer(
    name: &str,
    layer: &Conv2d,
    act: Act,
    quant: Option<&LayerQuant>,
) -> Result<ConvLayer, CollabError> {
    let [out, in_per_group, kh, kw] = layer.weight.dims();
    let groups = layer.groups;
    let depthwise = groups > 1 && in_per_group == 1;
    if groups > 1 && !depthwise {
        return Err(CollabError::Usage(format!(
            "layer `{name}`: grouped convolutions ({groups} groups of {in_per_group}) have no \
             TFLite int8 operator; only ordinary and depthwise convolutions export"
        )));
    }
    let values = to_vec_f32(layer.weight.val().flatten::<1>(0, 3));
    let fan_in = in_per_group * kh * kw;
    let (q, scales) = quantize_weight(
        &values,
        |i| i / fan_in,
        out,
        quant.is_none_or(|q| q.weight.per_channel),
        quant.map(|q| &q.weight),
        false,
    );
    // burn [out, in/g, kh, kw] → OHWI, or [1, kh, kw, out] for depthwise.
    let mut weight = vec![0i8; q.len()];
    for o in 0..out {
        for i in 0..in_per_group {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((o * in_per_group + i) * kh + y) * kw + x;
                    let dst = if depthwise {
                        (y * kw + x) * out + o
                    } else {
                        ((o * kh + y) * kw + x) * in_per_group + i
                    };
                    weight[dst] = q[src];
                }
            }
        }
    }
    let padding = match &layer.padding {
        PaddingConfig2d::Same => ConvPadding::Same,
        PaddingConfig2d::Valid => ConvPadding::Valid,
        PaddingConfig2d::Explicit(t, l, b, r) => ConvPadding::Explicit([*t, *l, *b, *r]),
    };
    Ok(ConvLayer {
        weight,
        shape: if depthwise {
            [1, kh, kw, out]
        } else {
            [out, kh, kw, in_per_group]
        },
        scales,
        bias: layer.bias.as_ref().map(|b| to_vec_f32(b.val())),
        stride: layer.stride,
        dilation: layer.dilation,
        padding,
        activation: act.tflite(),
        depthwise,
    })
}

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
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("verification: {e}"));
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

/// Write `bytes` to `path` atomically (temp file flushed to disk, then renamed over `path`):
/// refused when `path` is a folder, a device or anything but a regular file; on failure no
/// temporary file is left and the previous file is unchanged ([`collab_tflite::write_atomic`]).
/// A fault-injection point ([`crate::fault::point`]) follows each successful write.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CollabError> {
    collab_tflite::write_atomic(path, bytes).map_err(|e| file_error(path, e))?;
    crate::fault::point(&format!("file {}", path.display()));
    Ok(())
}

/// Check, before any work, that [`write`] may write `path` ([`collab_tflite::check_target`]:
/// a file name, not a folder or device, in an existing folder).
pub fn check_out(path: &Path) -> Result<(), CollabError> {
    collab_tflite::check_target(path)
        .map(|_| ())
        .map_err(|e| file_error(path, e))
}

/// A file error naming `path` once (an I/O error already carries it).
fn file_error(path: &Path, e: collab_tflite::TfliteError) -> CollabError {
    match e {
        collab_tflite::TfliteError::Io { reason, .. } => CollabError::checkpoint(path, reason),
        other => CollabError::checkpoint(path, other),
    }
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
    let err = |e: collab_tflite::TfliteError| CollabError::Usage(e.to_string());
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
) -> Result<crate::train::EvalReport, CollabError> {
    let classes = interp.outputs()[0]
        .shape
        .last()
        .copied()
        .unwrap_or(1)
        .max(1);
    // `evaluate` takes an infallible forward pass; the first interpreter error is kept here.
    let failure = std::cell::RefCell::new(None);
    let report = crate::train::evaluate(
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

#[cfg(test)]
mod tests {
    use super::round_scale;

    #[test]
    fn rounded_scales_multiply_exactly_in_f32() {
        let mut state = 12345u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = f32::from_bits(0x3000_0000 + ((state >> 33) as u32 % 0x0E00_0000));
            let b = f32::from_bits(0x3000_0000 + ((state >> 3) as u32 % 0x0E00_0000));
            let (ra, rb) = (round_scale(a), round_scale(b));
            assert!(ra >= a && (ra - a) / a < 1.0 / 2048.0, "{a} → {ra}");
            assert_eq!((ra * rb) as f64, ra as f64 * rb as f64, "{ra} × {rb}");
        }
    }
}
