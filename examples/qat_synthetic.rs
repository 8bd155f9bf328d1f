//! Int8 quantization of a small CNN on the built-in synthetic images: float baseline, PTQ
//! (min/max and percentile calibration on 200 images), and QAT fine-tuning from the PTQ ranges.
//! Accuracies are fake-int8 (the int8 arithmetic simulated in float, TFLite's rounding).
//!
//! ```text
//! cargo run --release --example qat_synthetic [-- --json out.json]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use burn_collab::data::SyntheticImages;
use burn_collab::quant::{ActQuantConfig, Calibration, QatConfig, calibrate, end_calibration};
use clap::Parser;
use common::{PlainCnn, accuracy, train};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "PTQ and QAT of a small CNN on synthetic images")]
struct Args {
    /// Seed for data, initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Epochs of float training.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Epochs of QAT fine-tuning.
    #[arg(long, default_value_t = 2)]
    qat_epochs: usize,
    /// Calibration images.
    #[arg(long, default_value_t = 200)]
    calibration_size: usize,
    /// Channels after the stem convolution.
    #[arg(long, default_value_t = 32)]
    width: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    accuracy_float: f64,
    accuracy_ptq_minmax: f64,
    accuracy_ptq_percentile: f64,
    accuracy_qat: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging();
    let args = Args::parse();
    let generator = SyntheticImages {
        num_classes: 10,
        noise: 2.0,
        ..SyntheticImages::default()
    };
    let train_set = generator.generate(3000, args.seed)?;
    let test_set = generator.generate(1000, args.seed + 1_000_003)?;
    let calib_set = generator.generate(args.calibration_size, args.seed + 7)?;
    let device = Device::flex().autodiff();
    device.seed(args.seed);
    let float = PlainCnn::new(args.width, 10, &device);
    let float = train(float, &train_set, args.epochs, 32, 3e-3, args.seed, "float");
    let accuracy_float = accuracy(&float, &test_set);

    let indices: Vec<usize> = (0..calib_set.len()).collect();
    let batches: Vec<Vec<usize>> = indices.chunks(50).map(|c| c.to_vec()).collect();
    let ptq = |calibration: Calibration| -> Result<_, Box<dyn std::error::Error>> {
        let config = QatConfig::new().with_act(ActQuantConfig {
            calibration,
            ..Default::default()
        });
        let model = float.clone().qat(&config)?;
        Ok(calibrate(model, batches.clone(), |m, idx| {
            let (x, _) = calib_set.batch(&idx, &Device::flex());
            let _ = m.forward(x);
        }))
    };
    let minmax = ptq(Calibration::MinMax)?;
    let accuracy_ptq_minmax = accuracy(&minmax, &test_set);
    let percentile = ptq(Calibration::Percentile { percentile: 99.99 })?;
    let accuracy_ptq_percentile = accuracy(&percentile, &test_set);

    let qat = end_calibration(minmax.train());
    let qat = train(
        qat,
        &train_set,
        args.qat_epochs,
        32,
        5e-4,
        args.seed + 3,
        "qat",
    );
    let accuracy_qat = accuracy(&qat, &test_set);
    let quant = qat.fc.layer_quant("fc")?;

    println!();
    println!(
        "synthetic images: 3000 train / 1000 test, 10 classes, seed {}",
        args.seed
    );
    println!("{:<34} {:>9}", "model", "top-1");
    println!("{:<34} {:>8.2}%", "float", 100.0 * accuracy_float);
    println!(
        "{:<34} {:>8.2}%",
        "PTQ int8, min/max calibration",
        100.0 * accuracy_ptq_minmax
    );
    println!(
        "{:<34} {:>8.2}%",
        "PTQ int8, 99.99th percentile",
        100.0 * accuracy_ptq_percentile
    );
    println!(
        "{:<34} {:>8.2}%",
        format!("QAT int8, {} epochs from PTQ", args.qat_epochs),
        100.0 * accuracy_qat
    );
    println!(
        "logits: scale {:.5}, zero point {}; fc weight scale {:.6} (per tensor)",
        quant.output.scale[0], quant.output.zero_point[0], quant.weight.scale[0]
    );
    let summary = Summary {
        accuracy_float,
        accuracy_ptq_minmax,
        accuracy_ptq_percentile,
        accuracy_qat,
    };
    if let Some(path) = &args.json {
        common::write_json(path, &summary)?;
    }
    Ok(())
}
