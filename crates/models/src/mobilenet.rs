//! MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018), as Keras defines them
//! (ReLU6, convolutions without bias followed by BatchNorm ε = 1e-3), with a width multiplier
//! and two variants: ImageNet 224×224 and CIFAR 32×32 (stem stride 1, and in v2 the first
//! stride-2 bottleneck group at stride 1).

use std::sync::Arc;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use collab_core::LayerForward;
use collab_data::{Features, ImageNorm, InputSpec, Layout};
use serde::{Deserialize, Serialize};

use crate::dscnn::DsBlock;
use crate::graph::{self, FusedActivation, GraphBuilder, GraphNet, GraphSpec, IntoGraph};
use crate::info::ModelInfo;
use crate::{ConvBlock, ModelError, classifier, conv_block, family_info, graph_conv};

/// Input resolution variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// 3×224×224 inputs, stem stride 2.
    Imagenet,
    /// 3×32×32 inputs, stem stride 1.
    Cifar,
}

impl Variant {
    fn side(&self) -> usize {
        match self {
            Self::Imagenet => 224,
            Self::Cifar => 32,
        }
    }

    /// What the model takes: RGB images `[3, side, side]` (NHWC in a TensorFlow file),
    /// normalised as the data loaders normalise them (CIFAR-10's mean and deviation for the
    /// CIFAR variant, ImageNet's for 224).
    pub fn input(&self) -> InputSpec {
        let norm = match self {
            Self::Cifar => collab_data::cifar::Cifar10::default_norm(),
            Self::Imagenet => ImageNorm {
                scale: 1.0 / 255.0,
                mean: collab_data::folder::IMAGENET_MEAN,
                std: collab_data::folder::IMAGENET_STD,
                bgr: false,
            },
        };
        let side = self.side();
        InputSpec {
            shape: [3, side, side],
            layout: Layout::Nhwc,
            features: Features::Image(norm),
            labels: Vec::new(),
        }
    }

    fn stem_stride(&self) -> usize {
        match self {
            Self::Imagenet => 2,
            Self::Cifar => 1,
        }
    }
}

fn check(width: f64, classes: usize) -> Result<(), ModelError> {
    if !(width.is_finite() && width > 0.0 && width <= 4.0) {
        return Err(ModelError::Setting {
            field: "width",
            reason: format!(
                "width multiplier {width} is not in (0, 4]; 1.0, 0.75, 0.5, 0.25 are usual"
            ),
        });
    }
    if classes < 2 {
        return Err(ModelError::Setting {
            field: "classes",
            reason: format!("{classes} given; at least 2"),
        });
    }
    Ok(())
}

/// MobileNet v1 settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MobileNetV1Config {
    /// Width multiplier α.
    pub width: f64,
    /// ImageNet-224 or CIFAR.
    pub variant: Variant,
    /// Output classes.
    pub classes: usize,
}

const V1_BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];

impl MobileNetV1Config {
    /// α = 1.0 for `variant` with `classes` outputs.
    pub fn new(variant: Variant, classes: usize) -> Self {
        Self {
            width: 1.0,
            variant,
            classes,
        }
    }

    fn channels(&self, c: usize) -> usize {
        ((c as f64 * self.width) as usize).max(1)
    }

    /// The model name.
    pub fn name(&self) -> String {
        format!("mobilenet-v1-{}-{:?}", self.width, self.variant).to_lowercase()
    }

    /// A freshly initialised model.
    pub fn init(&self, device: &Device) -> Result<MobileNetV1<ConvBlock, Linear>, ModelError> {
        check(self.width, self.classes)?;
        let s = self.variant.stem_stride();
        let mut c = self.channels(32);
        let stem = conv_block([3, c], [3, 3], [s, s], 1, false, 1e-3, device);
        let mut blocks = Vec::new();
        for (out, stride) in V1_BLOCKS {
            let out = self.channels(out);
            blocks.push(DsBlock {
                dw: conv_block([c, c], [3, 3], [stride, stride], c, false, 1e-3, device),
                pw: conv_block([c, out], [1, 1], [1, 1], 1, false, 1e-3, device),
            });
            c = out;
        }
        Ok(MobileNetV1 {
            stem,
            blocks,
            fc: LinearConfig::new(c, self.classes).init(device),
            config: self.clone(),
            graph: Arc::new(self.graph_spec()?),
        })
    }

    /// The model as a graph ([`MobileNetV1::into_graph`]): every convolution followed by
    /// ReLU6, global average pooling, the classifier.
    pub fn graph_spec(&self) -> Result<GraphSpec, ModelError> {
        check(self.width, self.classes)?;
        let s = self.variant.stem_stride();
        let mut g = GraphBuilder::new(&self.name(), self.variant.input());
        let relu6 = FusedActivation::Relu6;
        let mut c = self.channels(32);
        let mut x = graph_conv(&mut g, "stem", 0, c, [3, 3], [s, s], 1, false, relu6);
        for (i, (out, stride)) in V1_BLOCKS.into_iter().enumerate() {
            let (out, st) = (self.channels(out), [stride, stride]);
            x = graph_conv(
                &mut g,
                &format!("blocks.{i}.dw"),
                x,
                c,
                [3, 3],
                st,
                c,
                false,
                relu6,
            );
            x = graph_conv(
                &mut g,
                &format!("blocks.{i}.pw"),
                x,
                out,
                [1, 1],
                [1, 1],
                1,
                false,
                relu6,
            );
            c = out;
        }
        classifier(g, x, self.classes)
    }

    /// Parameters and MACs for one input.
    pub fn info(&self) -> Result<ModelInfo, ModelError> {
        family_info(self.graph_spec()?)
    }
}

/// MobileNet v1: conv 3×3 → 13 depthwise-separable blocks → global average pool → linear.
#[derive(Module, Debug)]
pub struct MobileNetV1<C, L> {
    /// Stem convolution 3×3.
    pub stem: C,
    /// Depthwise-separable blocks.
    pub blocks: Vec<DsBlock<C>>,
    /// Classifier.
    pub fc: L,
    #[module(skip)]
    config: MobileNetV1Config,
    /// What the model computes ([`MobileNetV1Config::graph_spec`]), read by `forward`.
    #[module(skip)]
    graph: Arc<GraphSpec>,
}

impl<C: LayerForward<4>, L: LayerForward<2>> MobileNetV1<C, L> {
    /// Images `[batch, 3, h, w]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut convs = vec![&self.stem];
        for b in &self.blocks {
            convs.push(&b.dw);
            convs.push(&b.pw);
        }
        graph::run(&self.graph, &convs, &[&self.fc], &[], x, |_, _| {})
    }
}

impl<C, L> MobileNetV1<C, L> {
    /// Rebuild with every convolution and the classifier mapped (wrap / strip).
    pub fn try_map<C2, L2, E>(
        self,
        mut conv: impl FnMut(&str, C) -> Result<C2, E>,
        linear: impl FnOnce(&str, L) -> Result<L2, E>,
    ) -> Result<MobileNetV1<C2, L2>, E> {
        let stem = conv("stem", self.stem)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.into_iter().enumerate() {
            blocks.push(DsBlock {
                dw: conv(&format!("blocks.{i}.dw"), b.dw)?,
                pw: conv(&format!("blocks.{i}.pw"), b.pw)?,
            });
        }
        Ok(MobileNetV1 {
            stem,
            blocks,
            fc: linear("fc", self.fc)?,
            config: self.config,
            graph: self.graph,
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &MobileNetV1Config {
        &self.config
    }
}

/// The same layers as a [`GraphNet`] of [`MobileNetV1Config::graph_spec`] (convolutions in the
/// order `stem`, `blocks.0.dw`, `blocks.0.pw`, …; the classifier `fc`).
impl<C, L> IntoGraph for MobileNetV1<C, L> {
    type Conv = C;
    type Linear = L;
    fn into_graph(self) -> Result<GraphNet<C, L>, ModelError> {
        let mut convs = vec![self.stem];
        for b in self.blocks {
            convs.push(b.dw);
            convs.push(b.pw);
        }
        GraphNet::from_parts(Arc::unwrap_or_clone(self.graph), convs, vec![self.fc])
    }
}

/// MobileNet v2 settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MobileNetV2Config {
    /// Width multiplier α.
    pub width: f64,
    /// ImageNet-224 or CIFAR.
    pub variant: Variant,
    /// Output classes.
    pub classes: usize,
}

/// (expansion t, channels c, repeats n, stride s) from the paper's Table 2.
const V2_BLOCKS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

fn make_divisible(v: f64) -> usize {
    let d = 8.0;
    let mut new = ((v + d / 2.0) / d).floor().max(1.0) * d;
    if new < 0.9 * v {
        new += d;
    }
    new as usize
}

impl MobileNetV2Config {
    /// α = 1.0 for `variant` with `classes` outputs.
    pub fn new(variant: Variant, classes: usize) -> Self {
        Self {
            width: 1.0,
            variant,
            classes,
        }
    }

    /// The model name.
    pub fn name(&self) -> String {
        format!("mobilenet-v2-{}-{:?}", self.width, self.variant).to_lowercase()
    }

    fn head(&self) -> usize {
        if self.width > 1.0 {
            make_divisible(1280.0 * self.width)
        } else {
            1280
        }
    }

    /// `(expansion, in, out, stride)` of every inverted residual block.
    fn blocks(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut c = make_divisible(32.0 * self.width);
        let mut out = Vec::new();
        for (g, (t, ch, n, s)) in V2_BLOCKS.iter().enumerate() {
            let ch = make_divisible(*ch as f64 * self.width);
            let s = if self.variant == Variant::Cifar && g == 1 {
                1
            } else {
                *s
            };
            for i in 0..*n {
                out.push((*t, c, ch, if i == 0 { s } else { 1 }));
                c = ch;
            }
        }
        out
    }

    /// A freshly initialised model.
    pub fn init(&self, device: &Device) -> Result<MobileNetV2<ConvBlock, Linear>, ModelError> {
        check(self.width, self.classes)?;
        let s = self.variant.stem_stride();
        let stem_c = make_divisible(32.0 * self.width);
        let blocks: Vec<InvertedResidual<ConvBlock>> = self
            .blocks()
            .into_iter()
            .map(|(t, cin, cout, stride)| {
                let hidden = cin * t;
                InvertedResidual {
                    expand: (t != 1)
                        .then(|| conv_block([cin, hidden], [1, 1], [1, 1], 1, false, 1e-3, device)),
                    dw: conv_block(
                        [hidden, hidden],
                        [3, 3],
                        [stride, stride],
                        hidden,
                        false,
                        1e-3,
                        device,
                    ),
                    project: conv_block([hidden, cout], [1, 1], [1, 1], 1, false, 1e-3, device),
                    residual: residual(stride, cin, cout),
                }
            })
            .collect();
        let last = blocks
            .last()
            .map_or(stem_c, |b| b.project.bn.gamma.dims()[0]);
        Ok(MobileNetV2 {
            stem: conv_block([3, stem_c], [3, 3], [s, s], 1, false, 1e-3, device),
            blocks,
            head: conv_block([last, self.head()], [1, 1], [1, 1], 1, false, 1e-3, device),
            fc: LinearConfig::new(self.head(), self.classes).init(device),
            config: self.clone(),
            graph: Arc::new(self.graph_spec()?),
        })
    }

    /// The model as a graph ([`MobileNetV2::into_graph`]): stem, inverted residual blocks
    /// (expand and depthwise followed by ReLU6, the projection linear, `blocks.{i}.add` adding
    /// the block's input when stride 1 keeps the channels), the head with ReLU6, global average
    /// pooling, the classifier.
    pub fn graph_spec(&self) -> Result<GraphSpec, ModelError> {
        check(self.width, self.classes)?;
        let s = self.variant.stem_stride();
        let mut g = GraphBuilder::new(&self.name(), self.variant.input());
        let (relu6, none) = (FusedActivation::Relu6, FusedActivation::None);
        let stem_c = make_divisible(32.0 * self.width);
        let mut x = graph_conv(&mut g, "stem", 0, stem_c, [3, 3], [s, s], 1, false, relu6);
        for (i, (t, cin, cout, stride)) in self.blocks().into_iter().enumerate() {
            let hidden = cin * t;
            let block_in = x;
            let mut y = x;
            if t != 1 {
                let name = format!("blocks.{i}.expand");
                y = graph_conv(&mut g, &name, y, hidden, [1, 1], [1, 1], 1, false, relu6);
            }
            let (dw, st) = (format!("blocks.{i}.dw"), [stride, stride]);
            y = graph_conv(&mut g, &dw, y, hidden, [3, 3], st, hidden, false, relu6);
            let project = format!("blocks.{i}.project");
            y = graph_conv(&mut g, &project, y, cout, [1, 1], [1, 1], 1, false, none);
            x = if residual(stride, cin, cout) {
                let sum = g.add(y, block_in, none);
                g.rename(sum, &format!("blocks.{i}.add"))
            } else {
                y
            };
        }
        let x = graph_conv(
            &mut g,
            "head",
            x,
            self.head(),
            [1, 1],
            [1, 1],
            1,
            false,
            relu6,
        );
        classifier(g, x, self.classes)
    }

    /// Parameters and MACs for one input.
    pub fn info(&self) -> Result<ModelInfo, ModelError> {
        family_info(self.graph_spec()?)
    }
}

/// An inverted residual block: expand 1×1 (+ReLU6) → depthwise 3×3 (+ReLU6) → project 1×1
/// (linear), plus the input when the shapes match.
#[derive(Module, Debug)]
pub struct InvertedResidual<C> {
    /// Expansion 1×1 (absent when the expansion factor is 1).
    pub expand: Option<C>,
    /// Depthwise 3×3.
    pub dw: C,
    /// Linear projection 1×1.
    pub project: C,
    #[module(skip)]
    residual: bool,
}

/// MobileNet v2: stem → inverted residual blocks → 1×1 head → pool → linear.
#[derive(Module, Debug)]
pub struct MobileNetV2<C, L> {
    /// Stem convolution 3×3.
    pub stem: C,
    /// Inverted residual blocks.
    pub blocks: Vec<InvertedResidual<C>>,
    /// Final 1×1 convolution (1280 channels).
    pub head: C,
    /// Classifier.
    pub fc: L,
    #[module(skip)]
    config: MobileNetV2Config,
    /// What the model computes ([`MobileNetV2Config::graph_spec`]), read by `forward`.
    #[module(skip)]
    graph: Arc<GraphSpec>,
}

/// Whether an inverted residual block adds its input to its output.
fn residual(stride: usize, cin: usize, cout: usize) -> bool {
    stride == 1 && cin == cout
}

impl<C> InvertedResidual<C> {
    /// Whether the block adds its input to its output (stride 1, same channels).
    pub fn residual(&self) -> bool {
        self.residual
    }
}

impl<C: LayerForward<4>, L: LayerForward<2>> MobileNetV2<C, L> {
    /// Images `[batch, 3, h, w]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut convs = vec![&self.stem];
        for b in &self.blocks {
            convs.extend(&b.expand);
            convs.push(&b.dw);
            convs.push(&b.project);
        }
        convs.push(&self.head);
        graph::run(&self.graph, &convs, &[&self.fc], &[], x, |_, _| {})
    }
}

impl<C, L> MobileNetV2<C, L> {
    /// Rebuild with every convolution and the classifier mapped (wrap / strip).
    pub fn try_map<C2, L2, E>(
        self,
        mut conv: impl FnMut(&str, C) -> Result<C2, E>,
        linear: impl FnOnce(&str, L) -> Result<L2, E>,
    ) -> Result<MobileNetV2<C2, L2>, E> {
        let stem = conv("stem", self.stem)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.into_iter().enumerate() {
            blocks.push(InvertedResidual {
                expand: match b.expand {
                    Some(e) => Some(conv(&format!("blocks.{i}.expand"), e)?),
                    None => None,
                },
                dw: conv(&format!("blocks.{i}.dw"), b.dw)?,
                project: conv(&format!("blocks.{i}.project"), b.project)?,
                residual: b.residual,
            });
        }
        Ok(MobileNetV2 {
            stem,
            blocks,
            head: conv("head", self.head)?,
            fc: linear("fc", self.fc)?,
            config: self.config,
            graph: self.graph,
        })
    }

    /// The settings it was built with.
    pub fn config(&self) -> &MobileNetV2Config {
        &self.config
    }
}

/// The same layers as a [`GraphNet`] of [`MobileNetV2Config::graph_spec`] (convolutions in the
/// order `stem`, then per block `expand` (when present), `dw`, `project`, then `head`; the
/// classifier `fc`).
impl<C, L> IntoGraph for MobileNetV2<C, L> {
    type Conv = C;
    type Linear = L;
    fn into_graph(self) -> Result<GraphNet<C, L>, ModelError> {
        let mut convs = vec![self.stem];
        for b in self.blocks {
            convs.extend(b.expand);
            convs.push(b.dw);
            convs.push(b.project);
        }
        convs.push(self.head);
        GraphNet::from_parts(Arc::unwrap_or_clone(self.graph), convs, vec![self.fc])
    }
}
