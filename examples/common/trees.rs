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
    /// Data folder (Speech Commands for DS-CNN, CIFAR-10 binaries for MobileNet). When absent:
    /// the shipped Speech Commands sample for DS-CNN (the synthetic set with `--quick`), the
    /// built-in synthetic set otherwise.
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

/// The Speech Commands sample shipped with the project: real MFCCs of 3,964 clips
/// (`datasets/speech_commands_sample/README.md`). Relative when run from the repository root
/// (so results name it the same on every machine), else beside this source.
pub fn speech_sample() -> PathBuf {
    let relative = PathBuf::from("datasets/speech_commands_sample");
    if relative.join("features.bin").is_file() {
        relative
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

/// The published DS-CNN-L weights in the shared folder (`$COLLAB_SHARED`, else `../shared`).
fn published_weights() -> PathBuf {
    std::env::var("COLLAB_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("../shared"))
        .join("pretrained/ml-kws-for-mcu/ds_cnn_l.safetensors")
}

/// What a DS-CNN example trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DscnnData {
    /// `--data` with the published DS-CNN-L weights at hand: fine-tune those.
    Published,
    /// The shipped sample (no `--data`): DS-CNN-S trained from scratch on real clips.
    Sample,
    /// `--quick`, or `--data` without the published weights, or no sample: DS-CNN-S from
    /// scratch on the folder given or the synthetic set.
    Scratch,
}

/// Which of [`DscnnData`] `args` select, and the data folder (`None`: the synthetic set).
pub fn dscnn_data(args: &Args) -> (DscnnData, Option<PathBuf>) {
    let weights = published_weights();
    let sample = speech_sample();
    match &args.data {
        Some(d) if !args.quick && weights.is_file() => (DscnnData::Published, Some(d.clone())),
        Some(d) => (DscnnData::Scratch, Some(d.clone())),
        None if !args.quick && sample.join("features.bin").is_file() => {
            (DscnnData::Sample, Some(sample))
        }
        None => (DscnnData::Scratch, None),
    }
}

/// The DS-CNN base config: DS-CNN-L from the published weights on real data given with
/// `--data`; DS-CNN-S trained from scratch on the shipped sample by default, and on the
/// synthetic set with `--quick`.
pub fn dscnn(args: &Args, stages: Vec<StageSpec>) -> TreeConfig {
    let weights = published_weights();
    let (kind, _) = dscnn_data(args);
    let real = kind == DscnnData::Published;
    TreeConfig {
        model: if real { "ds-cnn-l" } else { "ds-cnn-s" }.into(),
        width: 1.0,
        weights: real.then_some(weights),
        checkpoint: None,
        baseline_epochs: match kind {
            DscnnData::Published => 0,
            DscnnData::Sample => 20,
            DscnnData::Scratch => 10,
        },
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
    // DS-CNNs default to the shipped sample (see `dscnn`); other models to the synthetic set.
    let data = if config.model.starts_with("ds-cnn") {
        dscnn_data(args).1
    } else {
        args.data.clone()
    };
    let leaves = tree::run(config, data.as_deref(), &out)?.leaves;
    let sample = speech_sample();
    println!(
        "{} on {}, {:.0} s:",
        config.model,
        data.as_ref().map_or("the synthetic set".to_string(), |d| {
            if *d == sample {
                "the shipped Speech Commands sample (datasets/speech_commands_sample)".to_string()
            } else {
                d.display().to_string()
            }
        }),
        start.elapsed().as_secs_f64()
    );
    print!("{}", tree::table(&leaves));
    println!("results: {}", out.join("results.json").display());
    Ok(())
}
