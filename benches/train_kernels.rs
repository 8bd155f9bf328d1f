//! Training kernels, forward + backward on flex: burn-collab's convolution and batch-norm
//! formulations (`collab_core::ops::conv::conv2d`, `collab_core::convbn::batch_norm`) against burn's
//! own ops, on the DS-CNN-L layer shapes at batch 100.
//!
//! ```text
//! cargo bench --bench train_kernels
//! ```

use burn::nn::{BatchNorm, BatchNormConfig};
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use burn_collab::core::ops::batchnorm::batch_norm;
use burn_collab::core::ops::conv::{ConvSpec, conv2d};
use criterion::{Criterion, criterion_group, criterion_main};

const N: usize = 100;
const C: usize = 276;

/// One forward + backward; returns a value that depends on both gradients.
fn step(y: Tensor<4>, x: &Tensor<4>, w: &Tensor<4>, g: &Tensor<4>) -> f32 {
    let grads = (y * g.clone()).sum().backward();
    x.grad(&grads).unwrap().sum().into_scalar::<f32>()
        + w.grad(&grads).unwrap().sum().into_scalar::<f32>()
}

fn convs(c: &mut Criterion) {
    let dev = Device::flex().autodiff();
    dev.seed(0);
    let normal = |shape: [usize; 4], std: f64| {
        Tensor::<4>::random(shape, Distribution::Normal(0.0, std), &dev)
    };
    // (name, input, weight, spec)
    let layers = [
        (
            "stem 1->276 10x4 s[2,1]",
            [N, 1, 49, 10],
            [C, 1, 10, 4],
            ConvSpec {
                stride: [2, 1],
                padding: [(4, 5), (1, 2)],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "depthwise 3x3 s2",
            [N, C, 25, 10],
            [C, 1, 3, 3],
            ConvSpec {
                stride: [2, 2],
                padding: [(1, 1), (0, 1)],
                dilation: [1, 1],
                groups: C,
            },
        ),
        (
            "pointwise 276->276",
            [N, C, 13, 5],
            [C, C, 1, 1],
            ConvSpec {
                stride: [1, 1],
                padding: [(0, 0), (0, 0)],
                dilation: [1, 1],
                groups: 1,
            },
        ),
    ];
    let mut group = c.benchmark_group("conv fwd+bwd, ds-cnn-l, batch 100");
    group.sample_size(10);
    for (name, input, weight, spec) in layers {
        let x = normal(input, 1.0).require_grad();
        let w = normal(weight, 0.1).require_grad();
        let out = conv2d(x.clone(), w.clone(), None, &spec).dims();
        let g = normal(out, 1.0);
        let options = ConvOptions::new_with_padding(spec.stride, spec.padding, [1, 1], spec.groups);
        group.bench_function(format!("{name}: burn conv2d"), |b| {
            b.iter(|| {
                step(
                    burn_conv2d(x.clone(), w.clone(), None, options.clone()),
                    &x,
                    &w,
                    &g,
                )
            })
        });
        group.bench_function(format!("{name}: collab conv2d"), |b| {
            b.iter(|| step(conv2d(x.clone(), w.clone(), None, &spec), &x, &w, &g))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("batch norm (training) fwd+bwd, batch 100");
    group.sample_size(10);
    for shape in [[N, C, 25, 10], [N, C, 13, 5]] {
        let bn: BatchNorm = BatchNormConfig::new(C).init(&dev);
        let x = normal(shape, 1.0).require_grad();
        let g = normal(shape, 1.0);
        let gamma = bn.gamma.val();
        let run = |y: Tensor<4>| {
            let grads = (y * g.clone()).sum().backward();
            x.grad(&grads).unwrap().sum().into_scalar::<f32>()
                + gamma
                    .grad(&grads)
                    .map_or(0.0, |t| t.sum().into_scalar::<f32>())
        };
        group.bench_function(format!("{shape:?}: burn BatchNorm"), |b| {
            b.iter(|| run(bn.forward(x.clone())))
        });
        group.bench_function(format!("{shape:?}: collab batch_norm"), |b| {
            b.iter(|| run(batch_norm(&bn, x.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, convs);
criterion_main!(benches);
