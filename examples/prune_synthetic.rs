//! Train a small CNN on the built-in synthetic images, prune every layer (depthwise included)
//! to 50% with TFMOT's polynomial schedule while fine-tuning, strip, and print the figures.
//!
//! ```text
//! cargo run --release --example prune_synthetic [-- --json out.json --sparsity 0.5 --seed 0]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use burn::tensor::Device;
use burn_collab::core::host::to_vec_f32;
use burn_collab::data::SyntheticImages;
use burn_collab::prune::{PruningConfig, PruningSchedule, model_report};
use clap::Parser;
use common::{PlainCnn, accuracy, train};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Prune a small CNN on synthetic images and report accuracy and sparsity")]
struct Args {
    /// Final sparsity of every layer.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Seed for data, initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of dense training before pruning.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs of fine-tuning while pruning (the schedule ends after the first 60% of them).
    #[arg(long, default_value_t = 5)]
    finetune_epochs: usize,
    /// Training images.
    #[arg(long, default_value_t = 3000)]
    train_size: usize,
    /// Test images.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Number of classes of the synthetic set.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Pixel noise of the synthetic set (higher is harder).
    #[arg(long, default_value_t = 2.0)]
    noise: f32,
    /// Channels after the stem convolution.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct LayerRow {
    name: String,
    layer: String,
    sparsity: f64,
    weights: usize,
    zeros: usize,
}

#[derive(Serialize)]
struct Summary {
    accuracy_before: f64,
    accuracy_after: f64,
    target_sparsity: f64,
    parameters: usize,
    layers: Vec<LayerRow>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let args = Args::parse();
    let schedule_check = PruningSchedule::polynomial(0.0, args.sparsity, 0, 1);
    schedule_check.validate()?;

    let generator = SyntheticImages {
        num_classes: args.classes,
        noise: args.noise,
        ..SyntheticImages::default()
    };
    let train_set = generator.generate(args.train_size, args.seed)?;
    let test_set = generator.generate(args.test_size, args.seed + 1_000_003)?;
    let batch = 32;
    let device = Device::flex().autodiff();
    device.seed(args.seed);

    let dense = PlainCnn::new(args.width, generator.num_classes, &device);
    let dense = train(
        dense,
        &train_set,
        args.epochs,
        batch,
        3e-3,
        args.seed,
        "dense",
    );
    let accuracy_before = accuracy(&dense, &test_set);
    tracing::info!(accuracy_before, "dense model trained");

    // Prune from 0 to the target over the first 60% of fine-tuning, a mask update every 10 steps.
    let steps_per_epoch = train_set.len().div_ceil(batch) as u64;
    let end_step = (steps_per_epoch * args.finetune_epochs as u64 * 3 / 5).max(1);
    let schedule = PruningSchedule::polynomial(0.0, args.sparsity, 0, end_step).with_frequency(10);
    let config = PruningConfig::new(schedule);
    let pruned = dense.prunable(&config)?;
    let pruned = train(
        pruned,
        &train_set,
        args.finetune_epochs,
        batch,
        1e-3,
        args.seed + 17,
        "prune",
    );
    let report = model_report(&pruned)?;
    let stripped = pruned.strip();
    let accuracy_after = accuracy(&stripped, &test_set);

    // Figures from the stripped plain model (what a user ships), checked against the masks.
    let mut layers = Vec::new();
    for (name, layout, weight) in stripped.weights() {
        let values = to_vec_f32(weight);
        let zeros = values.iter().filter(|w| **w == 0.0).count();
        let masked = report
            .iter()
            .find(|r| r.name == name)
            .map_or(0, |r| r.pruned);
        if zeros < masked {
            return Err(
                format!("{name}: {zeros} zeros after strip but {masked} pruned weights").into(),
            );
        }
        layers.push(LayerRow {
            name: name.to_string(),
            layer: layout.describe(),
            sparsity: zeros as f64 / values.len() as f64,
            weights: values.len(),
            zeros,
        });
    }
    let parameters = burn::module::Module::num_params(&stripped);
    let summary = Summary {
        accuracy_before,
        accuracy_after,
        target_sparsity: args.sparsity,
        parameters,
        layers,
    };

    println!();
    println!(
        "synthetic images: {} train / {} test, {} classes, seed {}",
        train_set.len(),
        test_set.len(),
        generator.num_classes,
        args.seed
    );
    println!(
        "accuracy  dense {:.2}%  ->  pruned {:.0}% + fine-tuned {:.2}%  ({:+.2} pt)",
        100.0 * accuracy_before,
        100.0 * args.sparsity,
        100.0 * accuracy_after,
        100.0 * (accuracy_after - accuracy_before)
    );
    println!();
    println!(
        "{:<6} {:<34} {:>8} {:>8} {:>9}",
        "layer", "kind", "weights", "zeros", "sparsity"
    );
    let (mut weights, mut zeros) = (0, 0);
    for l in &summary.layers {
        println!(
            "{:<6} {:<34} {:>8} {:>8} {:>8.1}%",
            l.name,
            l.layer,
            l.weights,
            l.zeros,
            100.0 * l.sparsity
        );
        weights += l.weights;
        zeros += l.zeros;
    }
    println!(
        "{:<6} {:<34} {:>8} {:>8} {:>8.1}%",
        "total",
        "",
        weights,
        zeros,
        100.0 * zeros as f64 / weights as f64
    );
    println!(
        "parameters: {parameters} ({weights} weights, {} biases)",
        parameters - weights
    );

    if let Some(path) = &args.json {
        common::write_json(path, &summary)?;
    }
    Ok(())
}
