//! Clustering speed: (1) k-means (init + Lloyd) on a MobileNet v1-224-sized layer set
//! (4.2 M weights, 28 layers), per tensor and per channel; (2) train-step time of a CNN wrapped
//! in `Clustered` vs plain, in alternating rounds in one process, as a ratio.
//!
//! ```text
//! cargo run --release --example bench_cluster [-- --clusters 16 --rounds 5]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::Device;
use burn_collab::cluster::ClusteringConfig;
use burn_collab::core::WeightLayer;
use clap::Parser;
use common::{PlainCnn, median, random_batch, time_steps};

#[derive(Parser, Debug)]
struct Args {
    /// Clusters per tensor / channel (capped per channel at the channel's weight count).
    #[arg(long, default_value_t = 16)]
    clusters: usize,
    /// Alternating timing rounds for the train-step comparison.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Timed steps per round.
    #[arg(long, default_value_t = 10)]
    steps: usize,
}

/// MobileNet v1 (224, width 1) convolution shapes: (in, out, kernel, groups).
fn mobilenet_v1_convs() -> Vec<(usize, usize, usize, usize)> {
    let mut convs = vec![(3, 32, 3, 1)];
    let widths = [
        64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024,
    ];
    let mut c = 32;
    for w in widths {
        convs.push((c, c, 3, c)); // depthwise
        convs.push((c, w, 1, 1)); // pointwise
        c = w;
    }
    convs
}

fn time_kmeans(
    per_channel: bool,
    k: usize,
) -> Result<(f64, f64, usize), Box<dyn std::error::Error>> {
    let device = Device::flex();
    let (mut total, mut worst, mut weights) = (0.0f64, 0.0f64, 0usize);
    for (cin, cout, kernel, groups) in mobilenet_v1_convs() {
        let conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
            .with_groups(groups)
            .init(&device);
        let _ = conv.weight.val(); // initialise outside the timing
        let per_unit = (cin / groups) * kernel * kernel;
        let config = ClusteringConfig::new(if per_channel { k.min(per_unit) } else { k })
            .with_per_channel(per_channel);
        weights += conv.layout().numel();
        let start = Instant::now();
        let _clustered = config.wrap(conv)?;
        let s = start.elapsed().as_secs_f64();
        total += s;
        worst = worst.max(s);
    }
    let fc = LinearConfig::new(1024, 1000).init(&device);
    let _ = fc.weight.val();
    weights += fc.layout().numel();
    let start = Instant::now();
    let _clustered = ClusteringConfig::new(k)
        .with_per_channel(per_channel)
        .wrap(fc)?;
    let s = start.elapsed().as_secs_f64();
    Ok((total + s, worst.max(s), weights))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    for per_channel in [false, true] {
        let (total, worst, weights) = time_kmeans(per_channel, args.clusters)?;
        println!(
            "k-means {} k={}: MobileNet v1-224 layer set ({weights} weights, 28 layers) in {:.3} s, slowest layer {:.3} s",
            if per_channel {
                "per channel"
            } else {
                "per tensor "
            },
            args.clusters,
            total,
            worst
        );
    }

    let device = Device::flex().autodiff();
    device.seed(0);
    let (batch, size, width) = (64, 32, 64);
    let (x, y) = random_batch(batch, size, &device);
    let mut plain = PlainCnn::new(width, 10, &device);
    let config = ClusteringConfig::new(8).with_per_channel(true);
    let mut clustered = PlainCnn::new(width, 10, &device).clustered(&config)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (p, t_plain) = time_steps(plain, &x, &y, args.steps);
        plain = p;
        let (c, t_clustered) = time_steps(clustered, &x, &y, args.steps);
        clustered = c;
        println!(
            "round {round}: plain {t_plain:.2} ms/step, clustered {t_clustered:.2} ms/step, ratio {:.3}",
            t_clustered / t_plain
        );
        a.push(t_plain);
        b.push(t_clustered);
    }
    let (a, b) = (median(a), median(b));
    println!("SmallCnn width {width}, batch {batch}, {size}x{size}, flex CPU, k=8 per channel");
    println!(
        "median train step: plain {a:.2} ms, Clustered {b:.2} ms, ratio {:.3} (goal <= 1.15)",
        b / a
    );
    Ok(())
}
