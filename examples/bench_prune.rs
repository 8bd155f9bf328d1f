//! Training-step overhead of `Prunable`: the same CNN wrapped and unwrapped, timed in
//! alternating rounds in one process so machine noise hits both alike. Prints the ratio.
//!
//! ```text
//! cargo run --release --example bench_prune [-- --width 64 --batch 64 --size 32 --rounds 5]
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Int, Tensor};
use burn_collab::core::LayerForward;
use burn_collab::prune::{PruningConfig, PruningSchedule};
use clap::Parser;
use common::{PlainCnn, SmallCnn};

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

/// Median milliseconds of `steps` training steps (forward + backward + Adam) after 2 warm-up steps.
fn time_steps<C: LayerForward<4>, L: LayerForward<2>>(
    mut model: SmallCnn<C, L>,
    x: &Tensor<4>,
    y: &Tensor<1, Int>,
    steps: usize,
) -> (SmallCnn<C, L>, f64) {
    let device = x.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut times = Vec::new();
    for i in 0..steps + 2 {
        let start = Instant::now();
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
        // Wait for the step to finish (flex is eager; this also covers lazy backends).
        let _ = model.fc.effective_weight().into_data();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    (model, times[times.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex().autodiff();
    device.seed(0);
    let x = Tensor::<4>::random(
        [args.batch, 1, args.size, args.size],
        Distribution::Normal(0.0, 1.0),
        &device,
    );
    let y = Tensor::<1, Int>::from_data(
        burn::tensor::TensorData::new(
            (0..args.batch as i64).map(|i| i % 10).collect::<Vec<_>>(),
            [args.batch],
        ),
        &device,
    );
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
    plain_ms.sort_by(f64::total_cmp);
    pruned_ms.sort_by(f64::total_cmp);
    let (a, b) = (plain_ms[plain_ms.len() / 2], pruned_ms[pruned_ms.len() / 2]);
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
