//! What a traced model is: its steps in execution order, each a plain layer with the
//! quantization QAT trained for it, or a parameter-free operator.

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use collab_cluster::Clustered;
use collab_core::{ConvBn, WeightLayer};
use collab_models::graph::{FusedActivation, Op, Pointwise};
use collab_prune::Prunable;
use collab_quant::{LayerQuant, QatAware, QuantParams};
use collab_tflite::Activation;

use crate::CollabError;

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
            .map_err(|e| CollabError::export(format!("layer `{name}`"), format!("{e}")))
    }
}

/// The int8 file's form of a fused activation (TFLite's `fused_activation_function`).
pub(super) fn tflite_activation(act: FusedActivation) -> Activation {
    match act {
        FusedActivation::None => Activation::None,
        FusedActivation::Relu => Activation::Relu,
        FusedActivation::Relu6 => Activation::Relu6,
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
        act: FusedActivation,
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
        act: FusedActivation,
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
        act: FusedActivation,
        /// The output quantization QAT trained, if it did.
        quant: Option<QuantParams>,
    },
    /// Any other parameter-free operator of a graph ([`collab_models::graph::apply_op`]
    /// computes it): pooling, flattening, reshapes, transposes.
    Op {
        /// The node's name.
        name: String,
        /// The operator.
        op: Op,
        /// Input values.
        inputs: Vec<usize>,
    },
    /// A transposed convolution ([`Op::ConvTranspose`]): `layer` is its equivalent stride-1
    /// VALID convolution on the zero-upsampled input
    /// ([`collab_models::graph::transpose_conv_input`]).
    ConvTranspose {
        /// Layer path.
        name: String,
        /// Input value.
        src: usize,
        /// The plain equivalent convolution (effective weight `[out, in, kh, kw]`, flipped).
        layer: Conv2d,
        /// `[sh, sw]`.
        stride: [usize; 2],
        /// Cropped from the full output, `[top, left, bottom, right]`.
        pads: [usize; 4],
        /// Extra rows / columns at the end.
        output_padding: [usize; 2],
        /// Fused activation.
        act: FusedActivation,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// Channel concatenation of maps (one spatial size). Its inputs and output share one int8
    /// quantization ([`quant_classes`]).
    Concat {
        /// The node's name.
        name: String,
        /// Input values.
        inputs: Vec<usize>,
        /// The output range `[min, max]` QAT trained, if it did.
        range: Option<(f32, f32)>,
    },
    /// An activation on its own (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6).
    Act {
        /// The node's name.
        name: String,
        /// Input value.
        src: usize,
        /// The activation.
        act: Pointwise,
        /// The output quantization QAT trained, if it did (HARD_SWISH, LEAKY_RELU, RELU;
        /// LOGISTIC and TANH have fixed ones, RELU6 keeps its input's).
        quant: Option<QuantParams>,
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

impl Step {
    /// The step's name (a layer path or a node name).
    pub fn name(&self) -> &str {
        match self {
            Step::Conv { name, .. }
            | Step::Linear { name, .. }
            | Step::Add { name, .. }
            | Step::Op { name, .. }
            | Step::ConvTranspose { name, .. }
            | Step::Concat { name, .. }
            | Step::Act { name, .. }
            | Step::Binary { name, .. } => name,
        }
    }
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
