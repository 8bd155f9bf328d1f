//! Data and clustering kernels: the MFCC frontend on 1 s clips and k-means (k = 16, per tensor
//! and per channel) on a 276×276 pointwise kernel and a MobileNet-sized 1024×1024 one.
//!
//! ```text
//! cargo bench --bench frontend
//! ```

use burn::nn::conv::Conv2dConfig;
use burn::tensor::Device;
use burn_collab::cluster::ClusteringConfig;
use burn_collab::data::{Frontend, KwsSet, SyntheticKws};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn mfcc(c: &mut Criterion) {
    let frontend = Frontend::new();
    let (audio, labels) = SyntheticKws::default()
        .generate_audio(200, 0)
        .expect("synthetic audio");
    let mut group = c.benchmark_group("MFCC frontend");
    group.throughput(Throughput::Elements(audio.len() as u64));
    group.sample_size(20);
    group.bench_function("200 clips of 1 s, 16 kHz", |b| {
        b.iter(|| KwsSet::from_audio(&audio, labels.clone(), &frontend).len())
    });
    group.finish();
}

fn kmeans(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let mut group = c.benchmark_group("k-means k=16");
    group.sample_size(10);
    for channels in [276, 1024] {
        let conv = Conv2dConfig::new([channels, channels], [1, 1]).init(&device);
        for per_channel in [false, true] {
            let config = ClusteringConfig::new(16).with_per_channel(per_channel);
            let name = format!(
                "{channels}x{channels} pointwise, {}",
                if per_channel {
                    "per channel"
                } else {
                    "per tensor"
                }
            );
            group.bench_function(name, |b| {
                b.iter(|| config.wrap(conv.clone()).expect("cluster"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, mfcc, kmeans);
criterion_main!(benches);
