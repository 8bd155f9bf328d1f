//! Tracing a model into a [`Plan`]: every model that describes itself as a graph traces
//! through the graph's own operators, each layer stripped to its effective weight, with the
//! quantization QAT trained checked against the activation the model applies.

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use collab_data::{Features, Layout};
use collab_models::graph::Op;
use collab_models::{GraphNet, IntoGraph};
use collab_quant::{FusedActivation, LayerQuant};

use super::plan::{ExportLayer, Plan, Step};
use crate::CollabError;
use crate::network::Network;

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
        act: FusedActivation,
    ) -> Result<usize, CollabError> {
        let quant = checked_quant(c, name, act)?;
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

/// Layer `name`'s QAT parameters, if it trained them, checked against the activation `act`
/// the model applies after it.
fn checked_quant<E: ExportLayer>(
    layer: &E,
    name: &str,
    act: FusedActivation,
) -> Result<Option<LayerQuant>, CollabError> {
    let quant = layer.layer_quant(name)?;
    if let Some(q) = &quant {
        check_act(name, q.activation, act)?;
    }
    Ok(quant)
}

/// A QAT layer must have been trained with the activation the model applies after it (the
/// int8 op fuses exactly one).
fn check_act(
    name: &str,
    trained: FusedActivation,
    model: FusedActivation,
) -> Result<(), CollabError> {
    if trained == model {
        Ok(())
    } else {
        Err(CollabError::export(
            format!("layer `{name}`"),
            format!(
                "it was trained with fused activation {trained:?}, but the model applies \
             {model:?} after it; wrap it with QatConfig::with_activation matching the model"
            ),
        ))
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
    // The output quantization QAT trained for node `k`, if it did.
    let trained = |k: usize, name: &str| {
        net.requant_of(k)
            .map(|q| q.params(name))
            .transpose()
            .map_err(|e| CollabError::export(format!("node `{name}`"), format!("{e}")))
    };
    for (k, node) in spec.nodes.iter().enumerate() {
        let name = node.name.as_str();
        match &node.op {
            Op::Conv { layer, act } => {
                t.conv(name, node.inputs[0], &net.convs[*layer], *act)?;
            }
            Op::Linear { layer, act } => {
                let l = &net.linears[*layer];
                let quant = checked_quant(l, name, *act)?;
                t.push(Step::Linear {
                    name: name.into(),
                    src: node.inputs[0],
                    layer: l.clone().strip(),
                    act: *act,
                    quant,
                });
            }
            Op::Add { act } => {
                let quant = trained(k, name)?;
                t.push(Step::Add {
                    name: name.into(),
                    a: node.inputs[0],
                    b: node.inputs[1],
                    act: *act,
                    quant,
                });
            }
            Op::ConvTranspose {
                layer,
                stride,
                pads,
                output_padding,
                act,
            } => {
                let c = &net.convs[*layer];
                let quant = checked_quant(c, name, *act)?;
                t.push(Step::ConvTranspose {
                    name: name.into(),
                    src: node.inputs[0],
                    layer: c.clone().strip(),
                    stride: *stride,
                    pads: *pads,
                    output_padding: *output_padding,
                    act: *act,
                    quant,
                });
            }
            Op::Concat => {
                let range = match net.requant_of(k) {
                    Some(q) => Some(q.range().ok_or_else(|| {
                        CollabError::export(
                            format!("node `{name}`"),
                            "the concatenation's output quantizer has seen no \
                             batch; train or calibrate the QAT model before export",
                        )
                    })?),
                    None => None,
                };
                t.push(Step::Concat {
                    name: name.into(),
                    inputs: node.inputs.clone(),
                    range,
                });
            }
            Op::Act(act) => {
                // LOGISTIC and TANH have a fixed int8 output: their quantizer learns nothing.
                let quant = match act.fixed_int8_output() {
                    Some(_) => None,
                    None => trained(k, name)?,
                };
                t.push(Step::Act {
                    name: name.into(),
                    src: node.inputs[0],
                    act: *act,
                    quant,
                });
            }
            op @ (Op::Mul { .. } | Op::Sub { .. } | Op::MulConst { .. } | Op::AddConst { .. }) => {
                let quant = trained(k, name)?;
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
