//! Pieces shared by the examples: a small CNN that is generic over plain and wrapped layers,
//! trained with burn-train exactly as a plain burn model is (its `TrainStep` / `InferenceStep`,
//! a `Dataset` and a `Batcher`): the wrappers need nothing more.
#![allow(dead_code)]

use std::time::Duration;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::{Dataset, DatasetError};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Int;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use burn_collab::cluster::{ClusterError, Clustered, ClusteringConfig};
use burn_collab::core::{LayerForward, WeightLayer, WeightLayout};
use burn_collab::data::ImageSet;
use burn_collab::prune::{Prunable, PruneError, PruningConfig};
use burn_collab::quant::{FusedActivation, QatAware, QatConfig, QuantError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A MobileNet-style CNN: conv 3×3/2 → (depthwise 3×3 → pointwise 1×1) ×2 → mean → linear.
/// `C` is the conv layer type and `L` the linear one: plain burn layers or wrapped ones.
#[derive(Module, Debug)]
pub struct SmallCnn<C, L> {
    pub conv: C,
    pub dw1: C,
    pub pw1: C,
    pub dw2: C,
    pub pw2: C,
    pub fc: L,
}

pub type PlainCnn = SmallCnn<Conv2d, Linear>;
pub type PrunedCnn = SmallCnn<Prunable<Conv2d>, Prunable<Linear>>;
pub type ClusteredCnn = SmallCnn<Clustered<Conv2d>, Clustered<Linear>>;
pub type QatCnn = SmallCnn<QatAware<Conv2d>, QatAware<Linear>>;

impl PlainCnn {
    /// Input `[batch, 1, h, w]`, `width` channels after the stem, `classes` outputs.
    pub fn new(width: usize, classes: usize, device: &Device) -> Self {
        let same = || PaddingConfig2d::Same;
        let conv = |cin: usize, cout: usize, k: usize, groups: usize, stride: usize| {
            Conv2dConfig::new([cin, cout], [k, k])
                .with_groups(groups)
                .with_stride([stride, stride])
                .with_padding(same())
                .init(device)
        };
        Self {
            conv: conv(1, width, 3, 1, 2),
            dw1: conv(width, width, 3, width, 1),
            pw1: conv(width, 2 * width, 1, 1, 1),
            dw2: conv(2 * width, 2 * width, 3, 2 * width, 2),
            pw2: conv(2 * width, 2 * width, 1, 1, 1),
            fc: LinearConfig::new(2 * width, classes).init(device),
        }
    }

    /// Wrap every layer (depthwise included) in `Prunable`.
    pub fn prunable(self, config: &PruningConfig) -> Result<PrunedCnn, PruneError> {
        self.try_map(
            |n, c| config.wrap_named(n, c),
            |n, l| config.wrap_named(n, l),
        )
    }

    /// Wrap every layer for int8 QAT / PTQ: ReLU fused into each convolution, the model input
    /// quantized by the first one, the logits by the linear layer.
    pub fn qat(self, config: &QatConfig) -> Result<QatCnn, QuantError> {
        let conv = config.clone().with_activation(FusedActivation::Relu);
        self.try_map(
            |name, c| conv.clone().with_input(name == "conv").wrap_named(name, c),
            |name, l| {
                config
                    .clone()
                    .with_activation(FusedActivation::None)
                    .wrap_named(name, l)
            },
        )
    }

    /// Cluster every layer (depthwise included); `config.overrides` are looked up by layer name.
    pub fn clustered(self, config: &ClusteringConfig) -> Result<ClusteredCnn, ClusterError> {
        self.try_map(
            |n, c| config.wrap_named(n, c),
            |n, l| config.wrap_named(n, l),
        )
    }
}

impl<C: WeightLayer<Plain = Conv2d>, L: WeightLayer<Plain = Linear>> SmallCnn<C, L> {
    /// Back to plain burn layers holding the effective weights (zeros, centroid values).
    pub fn strip(self) -> PlainCnn {
        self.try_map::<_, _, std::convert::Infallible>(|_, c| Ok(c.strip()), |_, l| Ok(l.strip()))
            .unwrap_or_else(|never| match never {})
    }
}

impl<C, L> SmallCnn<C, L> {
    /// Rebuild with every conv layer passed through `conv(name, layer)` and the linear one
    /// through `linear(name, layer)`.
    pub fn try_map<C2, L2, E>(
        self,
        conv: impl Fn(&str, C) -> Result<C2, E>,
        linear: impl Fn(&str, L) -> Result<L2, E>,
    ) -> Result<SmallCnn<C2, L2>, E> {
        Ok(SmallCnn {
            conv: conv("conv", self.conv)?,
            dw1: conv("dw1", self.dw1)?,
            pw1: conv("pw1", self.pw1)?,
            dw2: conv("dw2", self.dw2)?,
            pw2: conv("pw2", self.pw2)?,
            fc: linear("fc", self.fc)?,
        })
    }
}

impl<C: LayerForward<4>, L: LayerForward<2>> SmallCnn<C, L> {
    /// `[batch, 1, h, w]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv.forward(x));
        let x = relu(self.dw1.forward(x));
        let x = relu(self.pw1.forward(x));
        let x = relu(self.dw2.forward(x));
        let x = relu(self.pw2.forward(x));
        let x: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        self.fc.forward(x)
    }

    /// Each layer's name, weight layout and effective weight (flattened), in forward order.
    pub fn weights(&self) -> Vec<(&'static str, WeightLayout, Tensor<1>)> {
        fn entry<W: WeightLayer>(
            name: &'static str,
            layer: &W,
        ) -> (&'static str, WeightLayout, Tensor<1>) {
            (name, layer.layout(), layer.effective_weight())
        }
        vec![
            entry("conv", &self.conv),
            entry("dw1", &self.dw1),
            entry("pw1", &self.pw1),
            entry("dw2", &self.dw2),
            entry("pw2", &self.pw2),
            entry("fc", &self.fc),
        ]
    }
}

/// Median milliseconds of `steps` training steps (forward + backward + Adam) after 2 warm-up
/// steps on a fixed batch.
pub fn time_steps<C: LayerForward<4>, L: LayerForward<2>>(
    mut model: SmallCnn<C, L>,
    x: &Tensor<4>,
    y: &Tensor<1, burn::tensor::Int>,
    steps: usize,
) -> (SmallCnn<C, L>, f64) {
    let device = x.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let start = std::time::Instant::now();
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        // Wait for the step to finish (flex is eager; this also covers lazy backends).
        let _ = model.fc.effective_weight().into_data();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    (model, median(times))
}

/// Median of `values` (upper median for even counts).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A fixed random batch `[batch, 1, size, size]` with labels cycling through 10 classes.
pub fn random_batch(
    batch: usize,
    size: usize,
    device: &Device,
) -> (Tensor<4>, Tensor<1, burn::tensor::Int>) {
    let x = Tensor::<4>::random(
        [batch, 1, size, size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let y = Tensor::from_data(burn::tensor::TensorData::new(labels, [batch]), device);
    (x, y)
}

/// Logs to stderr, level from `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,burn_train=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or CI stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Write `value` as pretty JSON to `path` through a temporary file and a rename.
pub fn write_json<T: serde::Serialize>(
    path: &std::path::Path,
    value: &T,
) -> Result<(), Box<dyn std::error::Error>> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// A progress bar that draws on a terminal and stays silent otherwise (tracing logs instead).
pub fn progress(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} {per_sec}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

impl<C: LayerForward<4>, L: LayerForward<2>> SmallCnn<C, L> {
    fn classify(&self, (x, y): Batch) -> ClassificationOutput {
        let logits = self.forward(x);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), y.clone());
        ClassificationOutput::new(loss, logits, y)
    }
}

/// Images `[batch, 1, h, w]` and labels `[batch]`.
pub type Batch = (Tensor<4>, Tensor<1, Int>);

impl<C: LayerForward<4>, L: LayerForward<2>> TrainStep for SmallCnn<C, L> {
    type Input = Batch;
    type Output = ClassificationOutput;
    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        let out = self.classify(batch);
        TrainOutput::new(self, out.loss.backward(), out)
    }
}

impl<C: LayerForward<4>, L: LayerForward<2>> InferenceStep for SmallCnn<C, L> {
    type Input = Batch;
    type Output = ClassificationOutput;
    fn step(&self, batch: Batch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// The items of a data set are its indices; the batcher reads them from the images.
struct Indices(usize);

impl Dataset<usize> for Indices {
    fn get(&self, index: usize) -> Result<usize, DatasetError> {
        Ok(index)
    }
    fn len(&self) -> usize {
        self.0
    }
}

#[derive(Clone)]
struct Images(Arc<ImageSet>);

impl Batcher<usize, Batch> for Images {
    fn batch(&self, items: Vec<usize>, device: &Device) -> Batch {
        self.0.batch(&items, device)
    }
}

/// Train `epochs` epochs of Adam (`lr`, batch `batch`, shuffled from `seed`) with burn-train's
/// `Learner`, validating on `data` itself (the examples measure on their test set afterwards).
pub fn train<C, L>(
    model: SmallCnn<C, L>,
    data: &ImageSet,
    epochs: usize,
    batch: usize,
    lr: f64,
    seed: u64,
    label: &str,
) -> SmallCnn<C, L>
where
    C: LayerForward<4> + 'static,
    L: LayerForward<2> + 'static,
{
    let device = Device::flex().autodiff();
    let images = Images(Arc::new(data.clone()));
    let train = DataLoaderBuilder::new(images.clone())
        .batch_size(batch)
        .shuffle(seed)
        .build(Indices(data.len()));
    let valid = DataLoaderBuilder::new(images)
        .batch_size(256)
        .build(Indices(data.len()));
    let dir = tempfile::tempdir().expect("a temporary folder");
    let learner = Learner::new(model.fork(&device).train(), AdamConfig::new().init(), lr);
    let result = SupervisedTraining::new(dir.path(), train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .num_epochs(epochs)
        .with_application_logger(None)
        .renderer(burn_collab::workflow::learn::log_renderer(label))
        .launch(learner);
    result.model
}

/// Top-1 accuracy on `data`, evaluated without autodiff.
pub fn accuracy<C, L>(model: &SmallCnn<C, L>, data: &ImageSet) -> f64
where
    C: LayerForward<4>,
    L: LayerForward<2>,
{
    let model = model.valid();
    let device = Device::flex();
    let mut correct = 0i64;
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(256) {
        let (x, y) = data.batch(chunk, &device);
        let pred = model.forward(x).argmax(1).flatten::<1>(0, 1);
        correct += pred.equal(y).int().sum().into_scalar::<i64>();
    }
    correct as f64 / data.len().max(1) as f64
}
