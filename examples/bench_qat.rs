//! Training-step overhead of `QatAware` (weight, input and output fake-quant, fused ReLU) vs
//! the plain CNN, in alternating rounds in one process. Prints the ratio.
//!
//! ```text
//! cargo run --release --example bench_qat [-- --rounds 5]
//! ```

#[path = "common/mod.rs"]
mod common;

use burn::tensor::Device;
use burn_collab::quant::QatConfig;
use clap::Parser;
use common::{PlainCnn, median, random_batch, time_steps};

#[derive(Parser, Debug)]
struct Args {
    /// Alternating rounds (plain, then QAT).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Timed steps per round.
    #[arg(long, default_value_t = 10)]
    steps: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex().autodiff();
    device.seed(0);
    let (batch, size, width) = (64, 32, 64);
    let (x, y) = random_batch(batch, size, &device);
    let mut plain = PlainCnn::new(width, 10, &device);
    let mut qat = PlainCnn::new(width, 10, &device).qat(&QatConfig::new())?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (p, t_plain) = time_steps(plain, &x, &y, args.steps);
        plain = p;
        let (q, t_qat) = time_steps(qat, &x, &y, args.steps);
        qat = q;
        println!(
            "round {round}: plain {t_plain:.2} ms/step, QAT {t_qat:.2} ms/step, ratio {:.3}",
            t_qat / t_plain
        );
        a.push(t_plain);
        b.push(t_qat);
    }
    let (a, b) = (median(a), median(b));
    println!("SmallCnn width {width}, batch {batch}, {size}x{size}, flex CPU");
    println!(
        "median train step: plain {a:.2} ms, QatAware {b:.2} ms, ratio {:.3} (goal <= 1.3)",
        b / a
    );
    Ok(())
}
