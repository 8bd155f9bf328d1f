//! Shared driver of the scheme examples: build a tree config, run it, print the table.
// Each example uses a subset of the helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// mimalloc: with a data set resident, glibc malloc slows burn's CPU training step by ~25%.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep freed memory mapped (mimalloc's `mi_option_purge_delay`, index 15 in mimalloc 2 and 3,
/// set to -1): a training step frees and reallocates activation-sized buffers every op, and
/// purging them made each step page-fault them back (see `crates/cli/src/main.rs`).
pub fn keep_freed_memory() {
    // SAFETY: sets an allocator option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(15, -1) };
}

use burn_collab::workflow::tree::{self, FineTune, Scheme, StageSpec, TreeConfig};

/// Command-line flags every scheme example takes.
#[derive(clap::Parser, Debug)]
pub struct Args {
    /// Data folder (Speech Commands for DS-CNN, CIFAR-10 binaries for MobileNet); the built-in
    /// synthetic set when absent.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// CI-sized run (small model, few samples, one epoch per stage).
    #[arg(long)]
    pub quick: bool,
    /// Output folder (finished stages in it are reused).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fine-tuning epochs per stage (default: the recipe's).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Device for training and float evaluation: cpu (flex) or wgpu (GPU; run the example with
    /// `--features wgpu`). int8 evaluation runs on our interpreter on the CPU either way.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// A stage.
pub fn stage(name: &str, parent: &str, scheme: Scheme) -> StageSpec {
    StageSpec {
        name: name.into(),
        parent: parent.into(),
        scheme,
    }
}

/// Pruning to `sparsity` (PolynomialDecay, the recipe's schedule).
pub fn prune(sparsity: f64) -> Scheme {
    Scheme::Prune {
        sparsity,
        end_step: None,
        frequency: 10,
        power: 3.0,
        skip_depthwise: true,
    }
}

/// Clustering.
pub fn cluster(clusters: usize, per_channel: bool, preserve_sparsity: bool) -> Scheme {
    Scheme::Cluster {
        clusters,
        per_channel,
        preserve_sparsity,
        channel_scaled: false,
    }
}

/// The DS-CNN base config: DS-CNN-L from the published weights on real data, DS-CNN-S trained
/// on the synthetic set otherwise (or with `--quick`).
pub fn dscnn(args: &Args, stages: Vec<StageSpec>) -> TreeConfig {
    let shared = std::env::var("COLLAB_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared"));
    let weights = shared.join("pretrained/ml-kws-for-mcu/ds_cnn_l.safetensors");
    let real = args.data.is_some() && !args.quick && weights.is_file();
    TreeConfig {
        model: if real { "ds-cnn-l" } else { "ds-cnn-s" }.into(),
        width: 1.0,
        weights: real.then_some(weights),
        checkpoint: None,
        baseline_epochs: if real { 0 } else { 10 },
        seed: args.seed,
        finetune: FineTune {
            epochs: args.epochs.unwrap_or(if args.quick { 1 } else { 5 }),
            devices: 1,
            batch_size: if real { 100 } else { 50 },
            learning_rate: if real { 1e-4 } else { 5e-4 },
        },
        calibration_samples: 200,
        synthetic_train: Some(if args.quick { 600 } else { 1200 }),
        synthetic_val: Some(300),
        stages,
        targets: Default::default(),
        plot_layer: None,
        npu: None,
        latency_seconds: None,
        input: None,
        augment: real,
    }
}

/// Run and print.
pub fn run(args: &Args, config: &TreeConfig, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    keep_freed_memory();
    burn_collab::workflow::device::select(args.device.parse()?)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,burn_train=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or CI stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/{name}")));
    let start = std::time::Instant::now();
    let leaves = tree::run(config, args.data.as_deref(), &out)?.leaves;
    println!(
        "{} on {}, {:.0} s:",
        config.model,
        args.data
            .as_ref()
            .map_or("the synthetic set".to_string(), |d| d.display().to_string()),
        start.elapsed().as_secs_f64()
    );
    print!("{}", tree::table(&leaves));
    println!("results: {}", out.join("results.json").display());
    Ok(())
}
