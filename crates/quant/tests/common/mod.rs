//! A small CNN generic over plain and wrapped layers, and a training loop, for the quant tests.
#![allow(dead_code)]

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use collab_core::{Activation, LayerForward};
use collab_data::{ImageSet, SyntheticImages};

/// conv 3×3/2 → depthwise 3×3 → pointwise 1×1 → mean → linear; ReLU after each conv.
#[derive(Module, Debug)]
pub struct Net<C, L> {
    pub conv: C,
    pub dw: C,
    pub pw: C,
    pub fc: L,
}

pub fn plain(classes: usize, device: &Device) -> Net<Conv2d, Linear> {
    let same = || PaddingConfig2d::Same;
    Net {
        conv: Conv2dConfig::new([1, 16], [3, 3])
            .with_stride([2, 2])
            .with_padding(same())
            .init(device),
        dw: Conv2dConfig::new([16, 16], [3, 3])
            .with_groups(16)
            .with_padding(same())
            .init(device),
        pw: Conv2dConfig::new([16, 32], [1, 1]).init(device),
        fc: LinearConfig::new(32, classes).init(device),
    }
}

impl<C, L> Net<C, L> {
    pub fn try_map<C2, L2, E>(
        self,
        conv: impl Fn(&str, C) -> Result<C2, E>,
        linear: impl Fn(L) -> Result<L2, E>,
    ) -> Result<Net<C2, L2>, E> {
        Ok(Net {
            conv: conv("conv", self.conv)?,
            dw: conv("dw", self.dw)?,
            pw: conv("pw", self.pw)?,
            fc: linear(self.fc)?,
        })
    }
}

impl<C: LayerForward<4>, L: LayerForward<2>> Net<C, L> {
    /// ReLU after each conv, unless a QAT layer has it fused (as the models do).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.conv.forward_activated(x, Activation::Relu);
        let x = self.dw.forward_activated(x, Activation::Relu);
        let x = self.pw.forward_activated(x, Activation::Relu);
        let x: Tensor<2> = x.mean_dim(3).mean_dim(2).flatten(1, 3);
        self.fc.forward(x)
    }
}

pub fn data(len: usize, seed: u64) -> ImageSet {
    SyntheticImages::default().generate(len, seed).unwrap()
}

pub fn train<C: LayerForward<4>, L: LayerForward<2>>(
    mut model: Net<C, L>,
    data: &ImageSet,
    steps: usize,
    lr: f64,
    seed: u64,
) -> Net<C, L> {
    let device = Device::flex().autodiff();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let (mut step, mut epoch) = (0, 0);
    while step < steps {
        for batch in data.shuffled_batches(16, seed + epoch) {
            if step == steps {
                break;
            }
            let (x, y) = data.batch(&batch, &device);
            let loss = loss_fn.forward(model.forward(x), y);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            step += 1;
        }
        epoch += 1;
    }
    model
}

pub fn accuracy<C: LayerForward<4>, L: LayerForward<2>>(model: &Net<C, L>, data: &ImageSet) -> f64 {
    let model = model.valid();
    let device = Device::flex();
    let indices: Vec<usize> = (0..data.len()).collect();
    let (x, y) = data.batch(&indices, &device);
    let pred = model.forward(x).argmax(1).flatten::<1>(0, 1);
    let correct: i64 = pred.equal(y).int().sum().into_scalar();
    correct as f64 / data.len() as f64
}
