//! DS-CNN (Zhang et al. 2017, "Hello Edge"), as Arm's ML-KWS-for-MCU defines it.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use collab_core::LayerForward;
use collab_data::{Features, InputSpec, Layout, MfccKind};
use serde::{Deserialize, Serialize};

use crate::graph::{self, FusedActivation, GraphBuilder, GraphNet, GraphSpec, IntoGraph};
use crate::info::ModelInfo;
use crate::{ConvBlock, ModelError, classifier, conv_block, family_info, graph_conv};

/// The three published sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsCnnSize {
    /// 64 channels, first conv stride 2×2, 4 blocks (≈ 23 k parameters).
    S,
    /// 172 channels, 4 blocks (≈ 135 k).
    M,
    /// 276 channels, 5 blocks (≈ 411 k).
    L,
}

impl std::str::FromStr for DsCnnSize {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s
            .to_ascii_lowercase()
            .trim_start_matches("ds-cnn-")
            .trim_start_matches("ds_cnn_")
        {
            "s" => Ok(Self::S),
            "m" => Ok(Self::M),
            "l" => Ok(Self::L),
            _ => Err(ModelError::Setting {
                field: "model",
                reason: format!("`{s}` is not a DS-CNN size; use ds-cnn-s, ds-cnn-m or ds-cnn-l"),
            }),
        }
    }
}

/// DS-CNN settings (`model_size_info` of ML-KWS-for-MCU's `train_commands.txt`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DsCnnConfig {
    /// Which published model.
    pub size: DsCnnSize,
    /// Output classes (12).
    pub classes: usize,
}

impl DsCnnConfig {
    /// The published model with 12 classes.
    pub fn new(size: DsCnnSize) -> Self {
        Self { size, classes: 12 }
    }

    /// `(channels, first-conv stride, per-block depthwise strides)`.
    fn layout(&self) -> (usize, [usize; 2], Vec<[usize; 2]>) {
        match self.size {
            DsCnnSize::S => (64, [2, 2], vec![[1, 1]; 4]),
            DsCnnSize::M => (172, [2, 1], vec![[2, 2], [1, 1], [1, 1], [1, 1]]),
            DsCnnSize::L => (276, [2, 1], vec![[2, 2], [1, 1], [1, 1], [1, 1], [1, 1]]),
        }
    }

    /// The model name, e.g. `ds-cnn-l`.
    pub fn name(&self) -> String {
        format!("ds-cnn-{}", format!("{:?}", self.size).to_lowercase())
    }

    /// A freshly initialised model (convolutions with biases, BatchNorm ε = 1e-3, as published).
    pub fn init(&self, device: &Device) -> Result<DsCnn<ConvBlock, Linear>, ModelError> {
        if self.classes < 2 {
            return Err(ModelError::Setting {
                field: "classes",
                reason: format!("{} given; at least 2", self.classes),
            });
        }
        let (c, stride, blocks) = self.layout();
        Ok(DsCnn {
            graph: Arc::new(self.graph_spec()?),
            conv1: conv_block([1, c], [10, 4], stride, 1, true, 1e-3, device),
            blocks: blocks
                .iter()
                .map(|s| DsBlock {
                    dw: conv_block([c, c], [3, 3], *s, c, true, 1e-3, device),
                    pw: conv_block([c, c], [1, 1], [1, 1], 1, true, 1e-3, device),
                })
                .collect(),
            fc: LinearConfig::new(c, self.classes).init(device),
            config: self.clone(),
        })
    }

    /// The model as a graph ([`DsCnn::into_graph`]): MFCC input `[1, 49, 10]` (ML-KWS-for-MCU's
    /// features, NHWC in the original), every convolution followed by ReLU, global average
    /// pooling, the classifier. The one description of the model the exporter and QAT read.
    pub fn graph_spec(&self) -> Result<GraphSpec, ModelError> {
        let (c, stride, blocks) = self.layout();
        let labels = if self.classes == collab_data::KWS_LABELS.len() {
            collab_data::KWS_LABELS
                .iter()
                .map(|l| l.to_string())
                .collect()
        } else {
            Vec::new()
        };
        let input = InputSpec {
            shape: [1, 49, 10],
            layout: Layout::Nhwc,
            features: Features::Mfcc {
                mfcc: MfccKind::MlKws,
            },
            labels,
        };
        let mut g = GraphBuilder::new(&self.name(), input);
        let relu = FusedActivation::Relu;
        let mut x = graph_conv(&mut g, "conv1", 0, c, [10, 4], stride, 1, true, relu);
        for (i, s) in blocks.iter().enumerate() {
            x = graph_conv(
                &mut g,
                &format!("blocks.{i}.dw"),
                x,
                c,
                [3, 3],
                *s,
                c,
                true,
                relu,
            );
            x = graph_conv(
                &mut g,
                &format!("blocks.{i}.pw"),
                x,
                c,
                [1, 1],
                [1, 1],
                1,
                true,
                relu,
            );
        }
        classifier(g, x, self.classes)
    }

    /// Parameters and MACs per layer for one `[1, 49, 10]` input.
    pub fn info(&self) -> Result<ModelInfo, ModelError> {
        family_info(self.graph_spec()?)
    }
}

/// A depthwise-separable block: depthwise 3×3 (+BN, ReLU), pointwise 1×1 (+BN, ReLU).
#[derive(Module, Debug)]
pub struct DsBlock<C> {
    /// Depthwise 3×3.
    pub dw: C,
    /// Pointwise 1×1.
    pub pw: C,
}

/// DS-CNN: conv 10×4 → depthwise-separable blocks → global average pool → linear.
#[derive(Module, Debug)]
pub struct DsCnn<C, L> {
    /// First convolution (10×4).
    pub conv1: C,
    /// Depthwise-separable blocks.
    pub blocks: Vec<DsBlock<C>>,
    /// Classifier.
    pub fc: L,
    #[module(skip)]
    config: DsCnnConfig,
    /// What the model computes ([`DsCnnConfig::graph_spec`]), read by `forward`.
    #[module(skip)]
    graph: Arc<GraphSpec>,
}

impl<C: LayerForward<4>, L: LayerForward<2>> DsCnn<C, L> {
    /// MFCCs `[batch, 1, 49, 10]` (time × coefficient) → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut convs = vec![&self.conv1];
        for b in &self.blocks {
            convs.push(&b.dw);
            convs.push(&b.pw);
        }
        graph::run(&self.graph, &convs, &[&self.fc], &[], x, |_, _| {})
    }
}

impl<C, L> DsCnn<C, L> {
    /// Rebuild with every convolution passed through `conv(path, layer)` and the classifier
    /// through `linear(path, layer)`: how a model is wrapped and stripped.
    pub fn try_map<C2, L2, E>(
        self,
        mut conv: impl FnMut(&str, C) -> Result<C2, E>,
        linear: impl FnOnce(&str, L) -> Result<L2, E>,
    ) -> Result<DsCnn<C2, L2>, E> {
        let conv1 = conv("conv1", self.conv1)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.into_iter().enumerate() {
            blocks.push(DsBlock {
                dw: conv(&format!("blocks.{i}.dw"), b.dw)?,
                pw: conv(&format!("blocks.{i}.pw"), b.pw)?,
            });
        }
        Ok(DsCnn {
            conv1,
            blocks,
            fc: linear("fc", self.fc)?,
            config: self.config,
            graph: self.graph,
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &DsCnnConfig {
        &self.config
    }
}

/// The same layers as a [`GraphNet`] of [`DsCnnConfig::graph_spec`] (convolutions in the order
/// `conv1`, `blocks.0.dw`, `blocks.0.pw`, …; the classifier `fc`).
impl<C, L> IntoGraph for DsCnn<C, L> {
    type Conv = C;
    type Linear = L;
    fn into_graph(self) -> Result<GraphNet<C, L>, ModelError> {
        let mut convs = vec![self.conv1];
        for b in self.blocks {
            convs.push(b.dw);
            convs.push(b.pw);
        }
        GraphNet::from_parts(Arc::unwrap_or_clone(self.graph), convs, vec![self.fc])
    }
}
