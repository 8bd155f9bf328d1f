//! `collab`: train, evaluate, import and describe the models of burn-collab.
//!
//! Exit codes: 0 success, 1 a failure (the message says what and how to fix it), 2 bad usage.

use std::path::{Path, PathBuf};

/// mimalloc instead of glibc malloc: burn's CPU backend allocates and frees large buffers every
/// op, and once a data set is resident (e.g. Speech Commands audio for augmentation) glibc's
/// heap makes the DS-CNN-L training step ~25% slower; mimalloc does not (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory mapped instead of returning it to the OS 10 ms after a free (mimalloc's
/// default). A training step frees and reallocates activation-sized buffers (megabytes) every
/// op; with purging, each reallocation page-faults and the kernel zeroes the pages again:
/// 32,000 page faults and 25% more CPU time over 10 MobileNet v1 QAT steps on the 2-core VM of
/// BENCHMARKS.md (800 faults without). The process keeps its peak heap instead.
/// (`MIMALLOC_PURGE_DELAY` in the environment is read before `main` and is overridden here.)
fn keep_freed_memory() {
    // SAFETY: sets an allocator option (the index is checked against mimalloc.h of the bundled
    // libmimalloc-sys 0.1.49, v2 and v3); no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
use std::process::ExitCode;

use burn::module::Module;
use clap::{Parser, Subcommand, ValueEnum};
use collab::checkpoint::{self, Manifest};
use collab::data::{self, SyntheticSize};
use collab::export::{self, ExportOptions};
use collab::train::{self, OptimizerConfig, TrainConfig};
use collab::{CollabError, ModelSpec, Network};
use collab_core::BnMode;
use collab_models::DsCnnConfig;

#[derive(Parser, Debug)]
#[command(
    name = "collab",
    version,
    about = "Collaborative optimization of burn models: train, evaluate, import, export to int8 TFLite, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Compute device for models, training and evaluation: cpu (burn's flex backend) or wgpu
    /// (GPU; needs a build with `--features wgpu`). The int8 interpreter always runs on the CPU.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Init {
    /// Start from published weights (`--weights`).
    Pretrained,
    /// Start from a random initialisation.
    Scratch,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model's layers, parameters and MACs.
    Info {
        /// ds-cnn-s, ds-cnn-m, ds-cnn-l, mobilenet-v1, mobilenet-v1-cifar, mobilenet-v2, mobilenet-v2-cifar.
        #[arg(long)]
        model: String,
        /// Width multiplier (MobileNets).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn published DS-CNN weights (safetensors, TF layouts) into a checkpoint.
    Import {
        /// ds-cnn-s, ds-cnn-m or ds-cnn-l.
        #[arg(long)]
        model: String,
        /// The `ds_cnn_*.safetensors` file.
        #[arg(long)]
        weights: PathBuf,
        /// Checkpoint folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train a model (from scratch or published weights); checkpoints every epoch.
    Train {
        /// Model name (see `info`).
        #[arg(long)]
        model: String,
        /// Width multiplier (MobileNets).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Data folder (Speech Commands or CIFAR-10); the synthetic set when absent.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Start point.
        #[arg(long, value_enum, default_value = "scratch")]
        init: Init,
        /// Weights for `--init pretrained`.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Epochs.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Learning rate (Adam: constant; SGD: initial cosine value). Default: the paper's schedule.
        #[arg(long)]
        lr: Option<f64>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// No augmentation.
        #[arg(long)]
        no_augment: bool,
        /// Checkpoint folder (best model; `last/` for resuming).
        #[arg(long)]
        out: PathBuf,
        /// Continue from `OUT/last`.
        #[arg(long)]
        resume: bool,
    },
    /// Run a deployment tree (baseline → pruned / clustered / QAT → PQAT / CQAT / PCQAT), every
    /// node a checkpoint exported to int8, evaluated and sized; writes results.json and table.md.
    Tree {
        /// The tree (configs/*.toml).
        #[arg(long)]
        config: PathBuf,
        /// Data folder (Speech Commands / CIFAR-10); the synthetic set when absent.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output folder (finished nodes in it are reused).
        #[arg(long)]
        out: PathBuf,
        /// Print results.json instead of the table.
        #[arg(long)]
        json: bool,
        /// Stop at the first node (level by level) whose .tflite is at most this many bytes…
        #[arg(long)]
        target_size: Option<usize>,
        /// … whose gzip -9 size is at most this …
        #[arg(long)]
        target_gzip: Option<usize>,
        /// … and whose int8 accuracy is at most this many points below the baseline's.
        #[arg(long)]
        max_accuracy_drop: Option<f64>,
    },
    /// Prune a checkpoint while fine-tuning (PolynomialDecay to --sparsity); writes OUT/pruned.
    Prune {
        #[command(flatten)]
        stage: StageArgs,
        /// Final sparsity.
        #[arg(long, default_value_t = 0.5)]
        sparsity: f64,
        /// Leave depthwise convolutions dense.
        #[arg(long)]
        skip_depthwise: bool,
    },
    /// Cluster a checkpoint's weights while fine-tuning; writes OUT/clustered. From a pruned
    /// checkpoint with --preserve-sparsity: sparsity-preserving clustering.
    Cluster {
        #[command(flatten)]
        stage: StageArgs,
        /// Clusters per tensor (or per channel).
        #[arg(long, default_value_t = 16)]
        clusters: usize,
        /// One set of centroids per output channel.
        #[arg(long)]
        per_channel: bool,
        /// Keep the checkpoint's zeros exactly.
        #[arg(long)]
        preserve_sparsity: bool,
    },
    /// Quantization-aware training of a checkpoint, keeping its zeros (PQAT) and clusters (CQAT,
    /// PCQAT) as its lineage says; writes OUT/qat with its int8 file.
    Qat {
        #[command(flatten)]
        stage: StageArgs,
    },
    /// Time training steps or int8 inference.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Report a .tflite file: operators, tensors, weight zeros and unique values, size and gzip size.
    Inspect {
        /// The .tflite file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a checkpoint as a full-integer int8 .tflite (PTQ calibration where it has no QAT
    /// ranges); `ptq` is the same command.
    #[command(alias = "ptq")]
    Export {
        /// Checkpoint folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Calibration data folder (training split of Speech Commands / CIFAR-10); synthetic when absent.
        #[arg(long, alias = "data")]
        calibration: Option<PathBuf>,
        /// Training samples used for calibration.
        #[arg(long, default_value_t = 500)]
        calibration_samples: usize,
        /// Calibrate with per-batch percentiles (e.g. 99.99, averaged over batches) instead of min/max.
        #[arg(long)]
        percentile: Option<f64>,
        /// The .tflite file to write (written to a temporary file, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Float32 input and output (QUANTIZE / DEQUANTIZE at the edges; these run on the CPU of an NPU system).
        #[arg(long)]
        float_io: bool,
        /// End with the logits instead of SOFTMAX.
        #[arg(long)]
        no_softmax: bool,
        /// Seed for choosing the calibration samples.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Evaluate a checkpoint or an int8 .tflite file (our interpreter) on a data set.
    Eval {
        /// Checkpoint folder.
        #[arg(long, conflicts_with = "model", required_unless_present = "model")]
        checkpoint: Option<PathBuf>,
        /// An int8 .tflite file, run by burn-collab's reference int8 interpreter (TFLite Micro arithmetic).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Data folder (validation split of Speech Commands / CIFAR-10 test batch); synthetic when absent.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Evaluate every clip of a Speech Commands folder, not only the validation speakers.
        #[arg(long)]
        all: bool,
        /// Print `{"accuracy", "samples", "per_class"}` as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What every single-stage command takes.
#[derive(clap::Args, Debug)]
struct StageArgs {
    /// The checkpoint to start from (`collab import` / `train` output, or a tree node).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data folder; the synthetic set when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder: OUT/baseline (the input, evaluated) and OUT/<stage> (the new checkpoint
    /// with its model.tflite and leaf.json).
    #[arg(long)]
    out: PathBuf,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Adam learning rate (constant).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn single_stage(
    args: StageArgs,
    name: &str,
    scheme: collab::tree::Scheme,
) -> Result<(), CollabError> {
    let config = collab::tree::TreeConfig {
        model: String::new(),
        width: 1.0,
        weights: None,
        checkpoint: Some(args.checkpoint.clone()),
        baseline_epochs: 0,
        seed: args.seed,
        finetune: collab::tree::FineTune {
            epochs: args.epochs,
            batch_size: args.batch_size.max(1),
            learning_rate: args.lr,
        },
        calibration_samples: 200,
        synthetic_train: None,
        synthetic_val: None,
        stages: vec![collab::tree::StageSpec {
            name: name.into(),
            parent: "baseline".into(),
            scheme,
        }],
        targets: Default::default(),
        plot_layer: None,
        augment: true,
    };
    let leaves = collab::tree::run(&config, args.data.as_deref(), &args.out)?.leaves;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&leaves).unwrap_or_default()
        );
    } else {
        print!("{}", collab::tree::table(&leaves));
        println!("checkpoint: {}", args.out.join(name).display());
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Median ms per training step (forward + backward + Adam) on random input, after warm-up.
    Train {
        /// Model name (see `info`).
        #[arg(long)]
        model: String,
        /// Width multiplier (MobileNets).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// Batch size.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Timed steps (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Layer wrappers: none, prune, cluster, qat, pcqat.
        #[arg(long, default_value = "none")]
        wrap: String,
        /// BatchNorm: folded (compression stages) or batch (training from scratch).
        #[arg(long, default_value = "folded")]
        bn: String,
        /// Read (and augment) real batches from this data folder inside each timed step.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print `{"median_ms", "min_ms", "steps", "backend", "what"}`.
        #[arg(long)]
        json: bool,
    },
    /// Median latency of our int8 interpreter on a .tflite file (single thread).
    Infer {
        /// The .tflite file.
        #[arg(long)]
        model: PathBuf,
        /// Threads (the interpreter is single-threaded; only 1 is accepted).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Timed runs (after 10 warm-up runs).
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Convolution kernels: best (AVX-512 VNNI, else AVX2, else portable), avx2 (what a CPU
        /// without VNNI runs) or portable.
        #[arg(long, default_value = "best")]
        kernels: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn bench(what: BenchCommand) -> Result<(), CollabError> {
    let (timing, json) = match what {
        BenchCommand::Train {
            model,
            width,
            batch_size,
            steps,
            wrap,
            bn,
            data,
            seed,
            json,
        } => {
            let bn = match bn.as_str() {
                "folded" => BnMode::Folded,
                "batch" => BnMode::Batch,
                other => {
                    return Err(CollabError::Usage(format!(
                        "--bn {other}: use folded or batch"
                    )));
                }
            };
            let spec = spec(&model, width)?;
            let sets = match &data {
                Some(dir) => Some(data::load(
                    spec.task(),
                    Some(dir),
                    true,
                    seed,
                    SyntheticSize::default(),
                )?),
                None => None,
            };
            let t = collab::bench::train_step(
                &spec,
                wrap.parse()?,
                bn,
                batch_size.max(1),
                steps.max(1),
                seed,
                sets.as_ref().map(|s| s.train.as_ref()),
            )?;
            (t, json)
        }
        BenchCommand::Infer {
            model,
            threads,
            runs,
            kernels,
            json,
        } => {
            if threads != 1 {
                return Err(CollabError::Usage(
                    "--threads: the int8 interpreter runs on one thread".into(),
                ));
            }
            let kernels = match kernels.as_str() {
                "best" => collab_tflite::Kernels::Best,
                "avx2" => collab_tflite::Kernels::Avx2,
                "portable" => collab_tflite::Kernels::Portable,
                other => {
                    return Err(CollabError::Usage(format!(
                        "--kernels {other}: use best, avx2 or portable"
                    )));
                }
            };
            (collab::bench::infer(&model, runs, kernels)?, json)
        }
    };
    if json {
        println!("{}", serde_json::to_string(&timing).unwrap_or_default());
    } else {
        println!(
            "{}: median {:.3} ms, min {:.3} ms over {} steps ({})",
            timing.what, timing.median_ms, timing.min_ms, timing.steps, timing.backend
        );
    }
    Ok(())
}

fn spec(model: &str, width: f64) -> Result<ModelSpec, CollabError> {
    Ok(model.parse::<ModelSpec>()?.with_width(width)?)
}

fn import(model: &str, weights: &Path, out: &Path) -> Result<(), CollabError> {
    let spec = spec(model, 1.0)?;
    let ModelSpec::DsCnn { size } = spec else {
        return Err(CollabError::Usage(format!(
            "published weights exist for DS-CNN only, not {model}"
        )));
    };
    let bytes = std::fs::read(weights).map_err(|e| CollabError::checkpoint(weights, e))?;
    let device = collab::device::compute();
    let net = collab_models::import::ds_cnn(
        &DsCnnConfig::new(size),
        &bytes,
        &weights.display().to_string(),
        &device,
    )?;
    let mut manifest = Manifest::new(spec, "imported", 0);
    manifest.config = serde_json::json!({ "weights": weights.display().to_string() });
    checkpoint::save(out, &Network::DsCnn(net), &manifest, None)?;
    println!("wrote {}", out.display());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn train_command(
    model: &str,
    width: f64,
    data_dir: Option<&Path>,
    init: Init,
    weights: Option<&Path>,
    epochs: usize,
    batch_size: usize,
    lr: Option<f64>,
    seed: u64,
    augment: bool,
    out: &Path,
    resume: bool,
) -> Result<(), CollabError> {
    let spec = spec(model, width)?;
    let device = collab::device::compute();
    device.seed(seed);
    let network = match (init, weights) {
        (Init::Pretrained, Some(w)) => {
            let ModelSpec::DsCnn { size } = spec else {
                return Err(CollabError::Usage(
                    "--init pretrained exists for DS-CNN only".into(),
                ));
            };
            let bytes = std::fs::read(w).map_err(|e| CollabError::checkpoint(w, e))?;
            Network::DsCnn(collab_models::import::ds_cnn(
                &DsCnnConfig::new(size),
                &bytes,
                &w.display().to_string(),
                &device,
            )?)
        }
        (Init::Pretrained, None) => {
            return Err(CollabError::Usage(
                "--init pretrained needs --weights FILE.safetensors".into(),
            ));
        }
        (Init::Scratch, _) => spec.init(&device)?,
    };
    let network = network.with_bn_mode(BnMode::Batch);
    tracing::info!(model = %spec.name(), "loading data");
    let data = data::load(
        spec.task(),
        data_dir,
        augment,
        seed,
        SyntheticSize::default(),
    )?;
    let mut optimizer = OptimizerConfig::for_model(&spec);
    if let Some(lr) = lr {
        optimizer = match optimizer {
            OptimizerConfig::Adam { .. } => OptimizerConfig::Adam {
                learning_rates: vec![lr],
            },
            OptimizerConfig::SgdCosine {
                momentum,
                weight_decay,
                ..
            } => OptimizerConfig::SgdCosine {
                learning_rate: lr,
                momentum,
                weight_decay,
            },
        };
    }
    let config = TrainConfig {
        epochs,
        batch_size,
        optimizer,
        seed,
    };
    let stage = if init == Init::Pretrained {
        "finetuned"
    } else {
        "baseline"
    };
    let manifest = Manifest::new(spec, stage, seed);
    let (_, history) = train::fit(network, &data, &config, manifest, Some(out), resume)?;
    if let Some(last) = history.last() {
        let best = history.iter().map(|h| h.val_accuracy).fold(0.0, f64::max);
        println!(
            "trained {} epochs: last val accuracy {:.2}%, best {:.2}%; checkpoint {}",
            history.len(),
            100.0 * last.val_accuracy,
            100.0 * best,
            out.display()
        );
    }
    Ok(())
}

fn export_command(
    checkpoint_dir: &Path,
    calibration: Option<&Path>,
    samples: usize,
    method: collab_quant::Calibration,
    out: &Path,
    options: &ExportOptions,
    seed: u64,
) -> Result<(), CollabError> {
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(checkpoint_dir, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let input = match manifest.model.task() {
        collab::network::Task::Keywords => [1, 49, 10],
        collab::network::Task::Images { side, .. } => [3, side, side],
    };
    let plan = network.plan(input)?;
    if calibration.is_none() {
        tracing::warn!("no --calibration folder: calibrating on the synthetic set");
    }
    let data = data::load(
        manifest.model.task(),
        calibration,
        false,
        seed,
        SyntheticSize::default(),
    )?;
    let mut indices: Vec<usize> = (0..data.train.len()).collect();
    {
        use rand::seq::SliceRandom;
        indices.shuffle(&mut data::epoch_rng(seed, 0));
    }
    indices.truncate(samples.max(1));
    tracing::info!(samples = indices.len(), "calibrating activation ranges");
    let ranges = plan.calibrate_on(data.train.as_ref(), &indices, 100, method)?;
    let bytes = export::to_tflite(&plan, Some(&ranges), options)?;
    export::write(out, &bytes)?;
    let report = collab_tflite::Report::new(&bytes).map_err(|e| CollabError::checkpoint(out, e))?;
    println!(
        "wrote {}: {} ({}), {} bytes, gzip -9 {} bytes ({:.1}% compression); calibrated on {} samples",
        out.display(),
        manifest.model.name(),
        manifest.stage,
        report.bytes,
        report.gzip_bytes,
        100.0 * report.compression,
        indices.len()
    );
    Ok(())
}

/// Evaluate an int8 .tflite with our interpreter: the task follows from its input shape.
fn eval_tflite(
    path: &Path,
    data_dir: Option<&Path>,
    all: bool,
    json: bool,
) -> Result<(), CollabError> {
    let graph = collab_tflite::Graph::open(path).map_err(|e| CollabError::checkpoint(path, e))?;
    let interp =
        collab_tflite::Interpreter::new(&graph).map_err(|e| CollabError::checkpoint(path, e))?;
    let shape = interp.inputs()[0].shape.clone();
    let classes = interp.outputs()[0].shape.last().copied().unwrap_or(0);
    let (task, input) = match shape.as_slice() {
        [_, 49, 10, 1] => (collab::network::Task::Keywords, [1, 49, 10]),
        [_, h, w, 3] if h == w => (
            collab::network::Task::Images { side: *h, classes },
            [3, *h, *w],
        ),
        other => {
            return Err(CollabError::checkpoint(
                path,
                format!(
                    "input shape {other:?} is neither MFCC [n, 49, 10, 1] nor an image [n, s, s, 3]"
                ),
            ));
        }
    };
    let report = if all {
        export::evaluate_int8(&interp, input, &all_clips(data_dir)?)?
    } else {
        let data = data::load(task, data_dir, false, 0, SyntheticSize::default())?;
        export::evaluate_int8(&interp, input, data.val.as_ref())?
    };
    print_report(&report, &format!("{} (int8)", path.display()), json);
    Ok(())
}

/// Every clip of a Speech Commands folder (`--all`), without augmentation.
fn all_clips(data_dir: Option<&Path>) -> Result<collab::data::KwsData, CollabError> {
    let dir = data_dir.ok_or_else(|| CollabError::Usage("--all needs --data".into()))?;
    let set = collab_data::SpeechCommands::open(dir)?;
    let clips = set.split(collab_data::Split::All);
    let audio = collab_data::speech::load_audio(&clips)?;
    let labels = clips.iter().map(|c| c.label).collect();
    Ok(collab::data::KwsData::new(
        audio,
        labels,
        Vec::new(),
        false,
        dir.display().to_string(),
    ))
}

fn print_report(report: &train::EvalReport, what: &str, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
    } else {
        println!(
            "{what}: accuracy {:.2}% on {} samples",
            100.0 * report.accuracy,
            report.samples
        );
        for (class, c) in &report.per_class {
            println!(
                "  {class:<12} {:>7.2}%  ({} samples)",
                100.0 * c.accuracy,
                c.samples
            );
        }
    }
}

fn eval(
    checkpoint_dir: &Path,
    data_dir: Option<&Path>,
    all: bool,
    json: bool,
) -> Result<(), CollabError> {
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(checkpoint_dir, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let task = manifest.model.task();
    let report = if all {
        train::evaluate(|x| network.forward(x), &all_clips(data_dir)?, 256)?
    } else {
        let data = data::load(
            task,
            data_dir,
            false,
            manifest.seed,
            SyntheticSize::default(),
        )?;
        train::evaluate(|x| network.forward(x), data.val.as_ref(), 256)?
    };
    print_report(
        &report,
        &format!("{} ({})", manifest.model.name(), manifest.stage),
        json,
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), CollabError> {
    collab::device::select(cli.device.parse()?)?;
    match cli.command {
        Command::Info { model, width, json } => {
            let info = spec(&model, width)?.info();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&info).unwrap_or_default()
                );
            } else {
                print!("{}", info.table());
            }
            Ok(())
        }
        Command::Import {
            model,
            weights,
            out,
        } => import(&model, &weights, &out),
        Command::Train {
            model,
            width,
            data,
            init,
            weights,
            epochs,
            batch_size,
            lr,
            seed,
            no_augment,
            out,
            resume,
        } => train_command(
            &model,
            width,
            data.as_deref(),
            init,
            weights.as_deref(),
            epochs,
            batch_size,
            lr,
            seed,
            !no_augment,
            &out,
            resume,
        ),
        Command::Export {
            checkpoint,
            calibration,
            calibration_samples,
            percentile,
            out,
            float_io,
            no_softmax,
            seed,
        } => export_command(
            &checkpoint,
            calibration.as_deref(),
            calibration_samples,
            match percentile {
                Some(p) if p > 50.0 && p <= 100.0 => {
                    collab_quant::Calibration::Percentile { percentile: p }
                }
                Some(p) => {
                    return Err(CollabError::Usage(format!(
                        "--percentile {p}: give a value in (50, 100], e.g. 99.99"
                    )));
                }
                None => collab_quant::Calibration::MinMax,
            },
            &out,
            &ExportOptions {
                batch: 1,
                float_io,
                softmax: !no_softmax,
            },
            seed,
        ),
        Command::Eval {
            checkpoint,
            model,
            data,
            all,
            json,
        } => match (checkpoint, model) {
            (_, Some(model)) => eval_tflite(&model, data.as_deref(), all, json),
            (Some(checkpoint), None) => eval(&checkpoint, data.as_deref(), all, json),
            (None, None) => Err(CollabError::Usage(
                "give --checkpoint DIR or --model FILE.tflite".into(),
            )),
        },
        Command::Bench { what } => bench(what),
        Command::Prune {
            stage,
            sparsity,
            skip_depthwise,
        } => single_stage(
            stage,
            "pruned",
            collab::tree::Scheme::Prune {
                sparsity,
                end_step: None,
                frequency: 10,
                power: 3.0,
                skip_depthwise,
            },
        ),
        Command::Cluster {
            stage,
            clusters,
            per_channel,
            preserve_sparsity,
        } => single_stage(
            stage,
            "clustered",
            collab::tree::Scheme::Cluster {
                clusters,
                per_channel,
                preserve_sparsity,
            },
        ),
        Command::Qat { stage } => single_stage(stage, "qat", collab::tree::Scheme::Qat),
        Command::Tree {
            config,
            data,
            out,
            json,
            target_size,
            target_gzip,
            max_accuracy_drop,
        } => {
            let mut tree = collab::tree::TreeConfig::open(&config)?;
            if target_size.is_some() || target_gzip.is_some() || max_accuracy_drop.is_some() {
                tree.targets = collab::tree::Targets {
                    max_bytes: target_size,
                    max_gzip: target_gzip,
                    max_accuracy_drop,
                };
            }
            let outcome = collab::tree::run(&tree, data.as_deref(), &out)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&outcome.leaves).unwrap_or_default()
                );
            } else {
                print!("{}", collab::tree::table(&outcome.leaves));
                if tree.targets.any() {
                    match &outcome.targets_met_by {
                        Some(path) => println!("targets met by: {}", path.join(" → ")),
                        None => println!("no node meets the targets"),
                    }
                }
                println!("results: {}", out.join("results.json").display());
            }
            Ok(())
        }
        Command::Inspect { model, json } => {
            let bytes = std::fs::read(&model).map_err(|e| CollabError::checkpoint(&model, e))?;
            let report = collab_tflite::Report::new(&bytes)
                .map_err(|e| CollabError::checkpoint(&model, e))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
