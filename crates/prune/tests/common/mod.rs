//! Shared pieces of the pruning integration tests: a tiny CNN with every supported layer kind
//! wrapped, and a plain Adam training loop on the built-in synthetic images.
#![allow(dead_code)]

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use collab_data::{ImageSet, SyntheticImages};
use collab_prune::{Prunable, PruneError, PruningConfig};

pub fn device() -> Device {
    Device::flex().autodiff()
}

/// conv 3×3 stride 2 → depthwise 3×3 → pointwise 1×1 → global mean → linear.
#[derive(Module, Debug)]
pub struct TinyNet {
    pub conv: Prunable<Conv2d>,
    pub dw: Prunable<Conv2d>,
    pub pw: Prunable<Conv2d>,
    pub fc: Prunable<Linear>,
}

impl TinyNet {
    pub fn new(
        config: &PruningConfig,
        classes: usize,
        device: &Device,
    ) -> Result<Self, PruneError> {
        let same = PaddingConfig2d::Same;
        Ok(Self {
            conv: config.wrap(
                Conv2dConfig::new([1, 8], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(same.clone())
                    .init(device),
            )?,
            dw: config.wrap(
                Conv2dConfig::new([8, 8], [3, 3])
                    .with_groups(8)
                    .with_padding(same)
                    .init(device),
            )?,
            pw: config.wrap(Conv2dConfig::new([8, 16], [1, 1]).init(device))?,
            fc: config.wrap(LinearConfig::new(16, classes).init(device))?,
        })
    }

    /// `[batch, 1, h, w]` → logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv.forward(x));
        let x = relu(self.dw.forward(x));
        let x = relu(self.pw.forward(x));
        let x: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        self.fc.forward(x)
    }
}

pub fn data(len: usize, seed: u64) -> ImageSet {
    SyntheticImages::default().generate(len, seed).unwrap()
}

/// Train `steps` Adam steps (lr 1e-2, batch 16) over `data`, reshuffled per epoch with `seed`;
/// `after_step(step, &model)` runs after each optimizer step.
pub fn train(
    mut model: TinyNet,
    data: &ImageSet,
    steps: usize,
    seed: u64,
    mut after_step: impl FnMut(usize, &TinyNet),
) -> TinyNet {
    let device = device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut step = 0;
    let mut epoch = 0;
    while step < steps {
        for batch in data.shuffled_batches(16, seed + epoch) {
            if step == steps {
                break;
            }
            let (x, y) = data.batch(&batch, &device);
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
            step += 1;
            after_step(step, &model);
        }
        epoch += 1;
    }
    model
}

/// Top-1 accuracy in eval mode.
pub fn accuracy(model: &TinyNet, data: &ImageSet) -> f64 {
    let model = model.valid();
    let device = Device::flex();
    let indices: Vec<usize> = (0..data.len()).collect();
    let (x, y) = data.batch(&indices, &device);
    let pred = model.forward(x).argmax(1).flatten::<1>(0, 1);
    let correct: i64 = pred.equal(y).int().sum().into_scalar();
    correct as f64 / data.len() as f64
}
