//! Training-step overhead of `Prunable`: the same CNN wrapped and unwrapped, timed in
//! alternating rounds in one process so machine noise hits both alike. Prints the ratio.
//!
//! ```text
//! cargo run --release --example bench_prune [-- --width 64 --batch 64 --size 32 --rounds 5]
//! ```

#[path = "common/mod.rs"]
mod common;

use burn::tensor::Device;
use burn_collab::prune::{PruningConfig, PruningSchedule};
use clap::Parser;
use common::{PlainCnn, median, random_batch, time_steps};

#[derive(Parser, Debug)]
struct Args {
    /// Channels after the stem convolution.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Alternating rounds (plain, then pruned).
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
    let (x, y) = random_batch(args.batch, args.size, &device);
    let mut plain = PlainCnn::new(args.width, 10, &device);
    // 50% from the first step, a mask update every 100 steps (TFMOT's default frequency).
    let config = PruningConfig::new(PruningSchedule::constant(0.5).with_frequency(100));
    let mut pruned = PlainCnn::new(args.width, 10, &device).prunable(&config)?;
    let (mut plain_ms, mut pruned_ms) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (p, t_plain) = time_steps(plain, &x, &y, args.steps);
        plain = p;
        let (p, t_pruned) = time_steps(pruned, &x, &y, args.steps);
        pruned = p;
        println!(
            "round {round}: plain {t_plain:.2} ms/step, prunable {t_pruned:.2} ms/step, ratio {:.3}",
            t_pruned / t_plain
        );
        plain_ms.push(t_plain);
        pruned_ms.push(t_pruned);
    }
    let (a, b) = (median(plain_ms), median(pruned_ms));
    println!(
        "backend flex (CPU), {} threads available; SmallCnn width {}, batch {}, {}x{} input",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.width,
        args.batch,
        args.size,
        args.size
    );
    println!(
        "median train step: plain {a:.2} ms, Prunable {b:.2} ms, ratio {:.3} (goal <= 1.15)",
        b / a
    );
    Ok(())
}
