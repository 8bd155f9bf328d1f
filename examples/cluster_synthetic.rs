//! Per-tensor vs per-channel weight clustering on the same small CNN, data and steps: train a
//! dense model on the built-in synthetic images, cluster every layer (depthwise included) to k
//! values per tensor or per output channel, fine-tune centroids and weights, strip, compare.
//!
//! ```text
//! cargo run --release --example cluster_synthetic [-- --clusters 4 --json out.json]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use burn::tensor::Device;
use burn_collab::cluster::{CentroidInit, ClusteringConfig, distinct_count};
use burn_collab::core::host::to_vec_f32;
use burn_collab::data::SyntheticImages;
use clap::Parser;
use common::{PlainCnn, accuracy, train};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Compare per-tensor and per-channel clustering on synthetic images")]
struct Args {
    /// Clusters per tensor / per output channel.
    #[arg(long, default_value_t = 4)]
    clusters: usize,
    /// Seed for data, initialisation, k-means++ and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of dense training.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs of fine-tuning after clustering.
    #[arg(long, default_value_t = 3)]
    finetune_epochs: usize,
    /// Training images.
    #[arg(long, default_value_t = 3000)]
    train_size: usize,
    /// Test images.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Channels after the stem convolution.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    mode: &'static str,
    accuracy_clustered: f64,
    accuracy_finetuned: f64,
    max_unique_per_tensor: usize,
    max_unique_per_channel: usize,
}

#[derive(Serialize)]
struct Summary {
    clusters: usize,
    accuracy_dense: f64,
    rows: Vec<Row>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let args = Args::parse();
    let generator = SyntheticImages {
        num_classes: 10,
        noise: 2.0,
        ..SyntheticImages::default()
    };
    let train_set = generator.generate(args.train_size, args.seed)?;
    let test_set = generator.generate(args.test_size, args.seed + 1_000_003)?;
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let dense = PlainCnn::new(args.width, generator.num_classes, &device);
    let dense = train(dense, &train_set, args.epochs, 32, 3e-3, args.seed, "dense");
    let accuracy_dense = accuracy(&dense, &test_set);

    let mut rows = Vec::new();
    for (mode, per_channel) in [("per-tensor", false), ("per-channel", true)] {
        let config = ClusteringConfig::new(args.clusters)
            .with_per_channel(per_channel)
            .with_init(CentroidInit::KMeansPlusPlus)
            .with_seed(args.seed);
        let clustered = dense.clone().clustered(&config)?;
        let accuracy_clustered = accuracy(&clustered, &test_set);
        let tuned = train(
            clustered,
            &train_set,
            args.finetune_epochs,
            32,
            5e-4,
            args.seed + 7,
            mode,
        );
        let stripped = tuned.strip();
        let accuracy_finetuned = accuracy(&stripped, &test_set);
        let (mut max_tensor, mut max_channel) = (0, 0);
        for (_, layout, weight) in stripped.weights() {
            let values = to_vec_f32(weight);
            max_tensor = max_tensor.max(distinct_count(&values));
            let mut per = vec![Vec::new(); layout.out_channels()];
            for (i, v) in values.iter().enumerate() {
                per[layout.out_channel_of(i)].push(*v);
            }
            max_channel = max_channel.max(per.iter().map(|c| distinct_count(c)).max().unwrap_or(0));
        }
        rows.push(Row {
            mode,
            accuracy_clustered,
            accuracy_finetuned,
            max_unique_per_tensor: max_tensor,
            max_unique_per_channel: max_channel,
        });
    }

    println!();
    println!(
        "synthetic images: {} train / {} test, 10 classes, seed {}; dense accuracy {:.2}%",
        train_set.len(),
        test_set.len(),
        args.seed,
        100.0 * accuracy_dense
    );
    println!(
        "{} clusters, k-means++ then Lloyd, {} fine-tuning epochs (weights and centroids train)",
        args.clusters, args.finetune_epochs
    );
    println!();
    println!(
        "{:<12} {:>17} {:>16} {:>16} {:>17}",
        "clustering", "after clustering", "after fine-tune", "max uniq/tensor", "max uniq/channel"
    );
    for r in &rows {
        println!(
            "{:<12} {:>16.2}% {:>15.2}% {:>16} {:>17}",
            r.mode,
            100.0 * r.accuracy_clustered,
            100.0 * r.accuracy_finetuned,
            r.max_unique_per_tensor,
            r.max_unique_per_channel
        );
    }
    let summary = Summary {
        clusters: args.clusters,
        accuracy_dense,
        rows,
    };
    if let Some(path) = &args.json {
        common::write_json(path, &summary)?;
    }
    Ok(())
}
