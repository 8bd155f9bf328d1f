//! The models by name, as one burn module.

use std::borrow::Cow;

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};
use collab_core::BnMode;
use collab_models::{
    ConvBlock, DsCnn, DsCnnConfig, DsCnnSize, GraphNet, GraphSpec, MobileNetV1, MobileNetV1Config,
    MobileNetV2, MobileNetV2Config, ModelError, ModelInfo, Variant,
};
use collab_quant::QatConfig;
use serde::{Deserialize, Serialize};

/// Which model, with its settings. Parsed from names such as `ds-cnn-l`, `mobilenet-v1`
/// (ImageNet 224, 1000 classes), `mobilenet-v1-cifar`, `mobilenet-v2-cifar` (10 classes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelSpec {
    /// DS-CNN S / M / L, 12 keyword classes.
    DsCnn {
        /// Published size.
        size: DsCnnSize,
    },
    /// MobileNet v1.
    MobileNetV1(MobileNetV1Config),
    /// MobileNet v2.
    MobileNetV2(MobileNetV2Config),
    /// Any model as a graph: imported from ONNX or float TFLite, or built with
    /// [`collab_models::GraphBuilder`]. The spec (operators, layer settings, input record) is
    /// all a checkpoint needs besides the weights, so it is stored in the manifest.
    Graph(Box<GraphSpec>),
}

/// What a model consumes.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// MFCC `[1, 49, 10]`, 12 keyword classes.
    Keywords,
    /// Images `[3, side, side]`.
    Images {
        /// Side in pixels (32 or 224).
        side: usize,
        /// Classes.
        classes: usize,
    },
    /// What a graph's input record says ([`ModelSpec::Graph`]; the record is in the spec).
    Graph {
        /// The graph's input record.
        input: Box<collab_data::InputSpec>,
        /// Outputs (classes).
        classes: usize,
    },
}

/// The model names [`ModelSpec`]'s `FromStr` accepts (it also takes `ds_cnn_s`-style and
/// `-224` spellings of these), in the order the help and error messages list them.
pub const MODEL_NAMES: [&str; 7] = [
    "ds-cnn-s",
    "ds-cnn-m",
    "ds-cnn-l",
    "mobilenet-v1",
    "mobilenet-v1-cifar",
    "mobilenet-v2",
    "mobilenet-v2-cifar",
];

impl std::str::FromStr for ModelSpec {
    type Err = ModelError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let lower = name.to_ascii_lowercase();
        Ok(match lower.as_str() {
            n if n.starts_with("ds-cnn") || n.starts_with("ds_cnn") => {
                Self::DsCnn { size: n.parse()? }
            }
            "mobilenet-v1" | "mobilenet-v1-224" => {
                Self::MobileNetV1(MobileNetV1Config::new(Variant::Imagenet, 1000))
            }
            "mobilenet-v1-cifar" => Self::MobileNetV1(MobileNetV1Config::new(Variant::Cifar, 10)),
            "mobilenet-v2" | "mobilenet-v2-224" => {
                Self::MobileNetV2(MobileNetV2Config::new(Variant::Imagenet, 1000))
            }
            "mobilenet-v2-cifar" => Self::MobileNetV2(MobileNetV2Config::new(Variant::Cifar, 10)),
            _ => {
                return Err(ModelError::Setting {
                    field: "model",
                    reason: format!(
                        "unknown model `{name}`; use one of {}",
                        MODEL_NAMES.join(", ")
                    ),
                });
            }
        })
    }
}

impl ModelSpec {
    /// The same model with width multiplier `width` (MobileNets only).
    pub fn with_width(self, width: f64) -> Result<Self, ModelError> {
        Ok(match self {
            Self::MobileNetV1(c) => Self::MobileNetV1(MobileNetV1Config { width, ..c }),
            Self::MobileNetV2(c) => Self::MobileNetV2(MobileNetV2Config { width, ..c }),
            Self::DsCnn { .. } if width != 1.0 => {
                return Err(ModelError::Setting {
                    field: "width",
                    reason: "DS-CNN has no width multiplier; choose ds-cnn-s, -m or -l".into(),
                });
            }
            other => other,
        })
    }

    /// Its name, e.g. `ds-cnn-l` or `mobilenet-v1-1-cifar`.
    pub fn name(&self) -> String {
        match self {
            Self::DsCnn { size } => DsCnnConfig::new(*size).name(),
            Self::MobileNetV1(c) => c.name(),
            Self::MobileNetV2(c) => c.name(),
            Self::Graph(g) => g.name.clone(),
        }
    }

    /// One input sample `[channels, height, width]` as burn takes it.
    pub fn input_shape(&self) -> [usize; 3] {
        match self.task() {
            Task::Keywords => [1, 49, 10],
            Task::Images { side, .. } => [3, side, side],
            Task::Graph { input, .. } => input.shape,
        }
    }

    /// What the model consumes.
    pub fn task(&self) -> Task {
        let side = |v: Variant| if v == Variant::Cifar { 32 } else { 224 };
        match self {
            Self::DsCnn { .. } => Task::Keywords,
            Self::MobileNetV1(c) => Task::Images {
                side: side(c.variant),
                classes: c.classes,
            },
            Self::MobileNetV2(c) => Task::Images {
                side: side(c.variant),
                classes: c.classes,
            },
            Self::Graph(g) => Task::Graph {
                input: Box::new(g.input.clone()),
                classes: g.outputs().unwrap_or(0),
            },
        }
    }

    /// Parameters and MACs.
    pub fn info(&self) -> Result<ModelInfo, ModelError> {
        match self {
            Self::DsCnn { size } => DsCnnConfig::new(*size).info(),
            Self::MobileNetV1(c) => c.info(),
            Self::MobileNetV2(c) => c.info(),
            Self::Graph(g) => g.info(),
        }
    }

    /// The model as a graph: the one description of its operators, activations and input
    /// that the exporter traces and QAT reads ([`qat_config`]); a built-in family's comes from
    /// its configuration (`graph_spec`), an imported or built graph's is its own.
    pub fn graph_spec(&self) -> Result<Cow<'_, GraphSpec>, ModelError> {
        Ok(match self {
            Self::DsCnn { size } => Cow::Owned(DsCnnConfig::new(*size).graph_spec()?),
            Self::MobileNetV1(c) => Cow::Owned(c.graph_spec()?),
            Self::MobileNetV2(c) => Cow::Owned(c.graph_spec()?),
            Self::Graph(g) => Cow::Borrowed(&**g),
        })
    }

    /// A freshly initialised model.
    pub fn init(&self, device: &Device) -> Result<Network, ModelError> {
        Ok(match self {
            Self::DsCnn { size } => Network::DsCnn(DsCnnConfig::new(*size).init(device)?),
            Self::MobileNetV1(c) => Network::MobileNetV1(c.init(device)?),
            Self::MobileNetV2(c) => Network::MobileNetV2(c.init(device)?),
            Self::Graph(g) => Network::Graph(GraphNet::init((**g).clone(), device)?),
        })
    }
}

/// Any of the models, plain layers. One burn module, so one record format and one loop.
// A handful of these exist per process; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// DS-CNN.
    DsCnn(DsCnn<ConvBlock, Linear>),
    /// MobileNet v1.
    MobileNetV1(MobileNetV1<ConvBlock, Linear>),
    /// MobileNet v2.
    MobileNetV2(MobileNetV2<ConvBlock, Linear>),
    /// A graph (imported or built).
    Graph(GraphNet<ConvBlock, Linear>),
}

impl Network {
    /// Inputs `[batch, channels, h, w]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        match self {
            Self::DsCnn(m) => m.forward(x),
            Self::MobileNetV1(m) => m.forward(x),
            Self::MobileNetV2(m) => m.forward(x),
            Self::Graph(m) => m.forward(x),
        }
    }

    /// Set how every conv + BatchNorm block computes: `Batch` statistics (training from
    /// scratch, ML-KWS fine-tuning) or `Folded` (compression stages).
    pub fn with_bn_mode(self, mode: BnMode) -> Self {
        self.map_blocks(|b| b.with_mode(mode))
    }

    /// The same network with every convolution block's BatchNorm ε set to `epsilon`. ε is a
    /// setting of burn's `BatchNorm`, not a tensor, so a record does not carry it: a model
    /// saved with another ε than its family's (a refolded tree node, ε 1e-30) gets it back here
    /// after loading.
    pub fn with_bn_epsilon(self, epsilon: f64) -> Self {
        self.map_blocks(|mut b| {
            b.bn.epsilon = epsilon;
            b
        })
    }

    /// Every convolution block passed through `f` (the classifier kept).
    fn map_blocks(self, f: impl Fn(ConvBlock) -> ConvBlock) -> Self {
        let set = |_: &str, b: ConvBlock| Ok::<_, std::convert::Infallible>(f(b));
        let keep = |_: &str, l: Linear| Ok::<_, std::convert::Infallible>(l);
        let result = match self {
            Self::DsCnn(m) => m.try_map(set, keep).map(Self::DsCnn),
            Self::MobileNetV1(m) => m.try_map(set, keep).map(Self::MobileNetV1),
            Self::MobileNetV2(m) => m.try_map(set, keep).map(Self::MobileNetV2),
            // A graph's blocks hold an identity BatchNorm (folded at import): batch statistics
            // would normalise what the file does not, so they stay as they are.
            Self::Graph(m) => Ok(Self::Graph(m)),
        };
        result.unwrap_or_else(|never| match never {})
    }
}

/// How layer `name` (a convolution or linear layer) of the model `graph` describes is
/// quantization-aware: its output quantizer clamps to the activation the graph fuses after it,
/// and it quantizes its input when it reads the model input (the int8 file's input
/// quantization). A layer whose output reaches only concatenations does not quantize it (the
/// concatenation's quantizer does, once, at the scale the file gives both:
/// [`GraphSpec::quantized_by_concat`]). Read from the graph alone, for every model
/// ([`ModelSpec::graph_spec`]).
pub fn qat_config(graph: &GraphSpec, name: &str) -> QatConfig {
    QatConfig::new()
        .with_activation(graph.activation_of(name))
        .with_input(graph.reads_model_input(name))
        .with_output_quantizer(!graph.quantized_by_concat(name))
}

/// Whether `model` names a model file (`.onnx`, `.tflite`) rather than a built-in model.
pub fn is_model_file(model: &str) -> bool {
    let lower = model.to_ascii_lowercase();
    lower.ends_with(".onnx") || lower.ends_with(".tflite")
}

/// Import a model file (ONNX or float TFLite) as a trainable graph model; `input`, when given,
/// is what the model takes (pixel scaling, MFCC kind, labels) and must have the file's shape.
/// Checks the graph before building any weight.
pub fn import_file(
    path: &std::path::Path,
    input: Option<&collab_data::InputSpec>,
    device: &Device,
) -> Result<(ModelSpec, Network), crate::CollabError> {
    let imported = collab_import::import(path, input)?;
    let spec = imported.spec.clone();
    let net = GraphNet::from_weights(imported.spec, imported.weights, device)?;
    Ok((ModelSpec::Graph(Box::new(spec)), Network::Graph(net)))
}

/// What the user says an imported model's input holds, over what the file says (its shape and
/// layout): `collab import --pixels / --mfcc / --labels`, a tree config's `[input]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    /// Images: `raw` pixels 0..255 or `unit` (divided by 255).
    #[serde(default)]
    pub pixels: Option<Pixels>,
    /// Keyword spotting: `ml-kws` or `tf-signal` MFCCs.
    #[serde(default)]
    pub mfcc: Option<collab_data::MfccKind>,
    /// Class names in output order.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// How image pixels reach a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pixels {
    /// 0..255 as they are.
    Raw,
    /// Divided by 255.
    Unit,
}

impl InputRecord {
    /// `file` (an importer's record) with what this record says; `outputs`: the model's output
    /// count, which `labels` must match.
    pub fn apply(
        &self,
        mut file: collab_data::InputSpec,
        outputs: usize,
    ) -> Result<collab_data::InputSpec, ModelError> {
        use collab_data::{Features, ImageNorm};
        file.features = match (self.pixels, self.mfcc) {
            (Some(_), Some(_)) => {
                return Err(ModelError::Setting {
                    field: "input",
                    reason: "give pixels (images) or mfcc (keyword spotting), not both".into(),
                });
            }
            (Some(Pixels::Raw), None) => Features::Image(ImageNorm::raw()),
            (Some(Pixels::Unit), None) => Features::Image(ImageNorm::unit()),
            (None, Some(mfcc)) => Features::Mfcc { mfcc },
            (None, None) => file.features,
        };
        if !self.labels.is_empty() {
            if self.labels.len() != outputs {
                return Err(ModelError::Setting {
                    field: "labels",
                    reason: format!(
                        "{} names given; the model has {outputs} outputs",
                        self.labels.len()
                    ),
                });
            }
            file.labels = self.labels.clone();
        }
        Ok(file)
    }
}

/// Import a model file with the user's [`InputRecord`] applied to the file's input record.
pub fn import_with_record(
    path: &std::path::Path,
    record: &InputRecord,
    device: &Device,
) -> Result<(ModelSpec, Network), crate::CollabError> {
    let imported = collab_import::import(path, None)?;
    let outputs = imported.spec.outputs()?;
    let input = record.apply(imported.spec.input.clone(), outputs)?;
    import_file(path, Some(&input), device)
}
