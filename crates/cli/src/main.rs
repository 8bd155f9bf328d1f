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
/// op; with purging, each reallocation page-faults and the kernel zeroes the pages again
/// (`docs/DESIGN.md`, "Allocator purging"). The process keeps its peak heap instead.
/// (`MIMALLOC_PURGE_DELAY` in the environment is read before `main` and is overridden here.)
fn keep_freed_memory() {
    // SAFETY: sets an allocator option (the index is checked against mimalloc.h of the bundled
    // libmimalloc-sys 0.1.49, v2 and v3); no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
use std::process::ExitCode;

use burn::module::Module;
use clap::{Parser, Subcommand, ValueEnum};
use collab::checkpoint::{self, Existing, Manifest};
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
    /// Compute device for models, training and evaluation. The int8 interpreter always runs on
    /// the CPU.
    #[arg(long, global = true, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// More log lines: -v adds debug, -vv trace (RUST_LOG, when set, decides instead).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Warnings and errors only (results still print on stdout).
    #[arg(short, long, global = true)]
    quiet: bool,
}

impl Cli {
    /// The log filter: `RUST_LOG` when set, else the level `-v` / `-q` ask for. onnx-ir
    /// narrates every parse and burn-train every iteration at `info`: they stay at `warn`
    /// unless -vv.
    fn log_filter(&self) -> tracing_subscriber::EnvFilter {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            return filter;
        }
        match (self.quiet, self.verbose) {
            (true, _) => "warn".into(),
            (false, 0) => "info,onnx_ir=warn,burn_train=warn".into(),
            (false, 1) => "debug,onnx_ir=warn,burn_train=warn".into(),
            (false, _) => "trace".into(),
        }
    }
}

/// `--device`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum DeviceArg {
    /// burn's flex CPU backend.
    #[value(alias = "flex")]
    Cpu,
    /// A GPU through burn's wgpu backend (needs a build with `--features wgpu`).
    #[value(alias = "gpu")]
    Wgpu,
}

impl From<DeviceArg> for collab::device::Backend {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Self::Cpu,
            DeviceArg::Wgpu => Self::Wgpu,
        }
    }
}

/// `import --pixels`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Pixels {
    /// 0..255 as they are.
    Raw,
    /// Divided by 255.
    Unit,
}

/// `import --mfcc`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum MfccArg {
    /// ML-KWS-for-MCU's `audio_ops.mfcc`.
    MlKws,
    /// MLPerf Tiny's `tf.signal` pipeline.
    TfSignal,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Init {
    /// Start from published weights (`--weights`).
    Pretrained,
    /// Start from a random initialisation.
    Scratch,
}

/// `bench infer --kernels`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum KernelsArg {
    /// AVX-512 VNNI, else AVX2, else portable.
    Best,
    /// What a CPU without VNNI runs.
    Avx2,
    /// Plain Rust loops, on every CPU.
    Portable,
    /// `best`, plus the N:M kernel for 2:4-sparse CONV_2D / FULLY_CONNECTED weights
    /// (AVX-512 VBMI).
    Sparse,
}

impl From<KernelsArg> for collab_tflite::Kernels {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Best => Self::Best,
            KernelsArg::Avx2 => Self::Avx2,
            KernelsArg::Portable => Self::Portable,
            KernelsArg::Sparse => Self::Sparse,
        }
    }
}

/// `bench train --bn`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum BnArg {
    /// Folded into the convolution (compression stages).
    Folded,
    /// Batch statistics (training from scratch).
    Batch,
}

impl From<BnArg> for BnMode {
    fn from(b: BnArg) -> Self {
        match b {
            BnArg::Folded => Self::Folded,
            BnArg::Batch => Self::Batch,
        }
    }
}

/// `bench train --wrap`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum WrapArg {
    /// Plain layers.
    None,
    /// Prunable layers.
    Prune,
    /// Clustered layers.
    Cluster,
    /// Quantization-aware layers.
    Qat,
    /// Pruned, clustered and quantization-aware layers.
    Pcqat,
}

impl From<WrapArg> for collab::bench::Wrap {
    fn from(w: WrapArg) -> Self {
        match w {
            WrapArg::None => Self::None,
            WrapArg::Prune => Self::Prune,
            WrapArg::Cluster => Self::Cluster,
            WrapArg::Qat => Self::Qat,
            WrapArg::Pcqat => Self::Pcqat,
        }
    }
}

/// The value parsers of the numeric options: an out-of-range value is a usage error (exit 2)
/// that names the option (clap adds it) and the valid range.
mod parse {
    use std::ffi::OsStr;
    use std::str::FromStr;

    use clap::builder::{PossibleValue, TypedValueParser};
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use collab::ModelSpec;
    use collab::network::MODEL_NAMES;

    fn number<T: FromStr>(s: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        s.trim()
            .parse()
            .map_err(|e| format!("`{s}` is not a number ({e})"))
    }

    fn within<T: FromStr + Copy>(s: &str, ok: impl Fn(T) -> bool, range: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = number(s)?;
        if ok(v) {
            Ok(v)
        } else {
            Err(format!("{s} is out of range; give {range}"))
        }
    }

    /// The range of a setting that a tree config also has ([`collab::config::RANGES`]: one
    /// home for what a setting accepts, whether it comes from a config or the command line).
    fn bound(table: &str, key: &str) -> Result<collab::config::Bound, String> {
        collab::config::bound(table, key)
            .ok_or_else(|| format!("internal: no range for `{table}.{key}`"))
    }

    /// A number setting of a tree config, in its range there.
    fn real(s: &str, table: &str, key: &str) -> Result<f64, String> {
        let bound = bound(table, key)?;
        within(s, |v: f64| bound.contains(v), &bound.to_string())
    }

    /// A count setting of a tree config, in its range there (a negative count is out of that
    /// range, not "not a number").
    fn count(s: &str, table: &str, key: &str) -> Result<usize, String> {
        let bound = bound(table, key)?;
        let v = within(s, |v: i128| bound.contains(v as f64), &bound.to_string())?;
        usize::try_from(v).map_err(|_| format!("{s} is out of range; give {bound}"))
    }

    /// `--width`: the config's `width`, (0, 4].
    pub fn width(s: &str) -> Result<f64, String> {
        real(s, "", "width")
    }

    /// `--percentile`: in (50, 100].
    pub fn percentile(s: &str) -> Result<f64, String> {
        within(
            s,
            |v: f64| v > 50.0 && v <= 100.0,
            "a value in (50, 100], e.g. 99.99",
        )
    }

    /// `--sparsity`: a prune stage's `sparsity`, [0, 1).
    pub fn sparsity(s: &str) -> Result<f64, String> {
        real(s, "stage", "sparsity")
    }

    /// `--clusters`: a cluster stage's `clusters`, 2..=256 (an int8 weight has 256 values).
    pub fn clusters(s: &str) -> Result<usize, String> {
        count(s, "stage", "clusters")
    }

    /// `--epochs`: the config's `finetune.epochs`, 1..=10000.
    pub fn epochs(s: &str) -> Result<usize, String> {
        count(s, "finetune", "epochs")
    }

    /// `--devices`: the config's `finetune.devices`, 1..=1024.
    pub fn devices(s: &str) -> Result<usize, String> {
        count(s, "finetune", "devices")
    }

    /// A count of at least 1 (`--batch-size`, `--calibration-samples`, `--runs`, `--steps`).
    pub fn positive(s: &str) -> Result<usize, String> {
        let v = within(s, |v: i128| v >= 1, "a count of at least 1")?;
        usize::try_from(v).map_err(|_| format!("{s} is out of range; give a smaller count"))
    }

    /// `--lr`: the config's `finetune.learning_rate`, finite and > 0.
    pub fn learning_rate(s: &str) -> Result<f64, String> {
        real(s, "finetune", "learning_rate")
    }

    /// `--max-accuracy-drop`: the config's `targets.max_accuracy_drop`, finite and >= 0
    /// (percentage points).
    pub fn non_negative(s: &str) -> Result<f64, String> {
        real(s, "targets", "max_accuracy_drop")
    }

    /// `--target-latency-ms`: the config's `targets.max_latency_ms`, finite and > 0.
    pub fn latency(s: &str) -> Result<f64, String> {
        real(s, "targets", "max_latency_ms")
    }

    /// `--target-npu-ms`: the config's `targets.max_npu_ms`, finite and > 0.
    pub fn npu_ms(s: &str) -> Result<f64, String> {
        real(s, "targets", "max_npu_ms")
    }

    /// `--threads`: 1 (the int8 interpreter is single-threaded).
    pub fn threads(s: &str) -> Result<usize, String> {
        match number(s)? {
            1 => Ok(1),
            _ => Err(format!(
                "{s} threads: the int8 interpreter runs on one thread; give 1 or leave it out"
            )),
        }
    }

    /// `--model`: a name [`ModelSpec`] parses; the error and `--help` list
    /// [`MODEL_NAMES`].
    #[derive(Clone, Copy, Debug)]
    pub struct Model;

    impl TypedValueParser for Model {
        type Value = ModelSpec;

        fn parse_ref(
            &self,
            cmd: &clap::Command,
            arg: Option<&clap::Arg>,
            value: &OsStr,
        ) -> Result<ModelSpec, clap::Error> {
            let text = value.to_string_lossy();
            // A model file: its architecture, as `collab import` reads it (weights are taken
            // only by `collab import`, which writes them into a checkpoint).
            if collab::network::is_model_file(&text) {
                return collab_import::import(std::path::Path::new(text.as_ref()), None)
                    .map(|m| ModelSpec::Graph(Box::new(m.spec)))
                    .map_err(|e| {
                        clap::Error::raw(ErrorKind::InvalidValue, format!("--model: {e}\n"))
                            .with_cmd(cmd)
                    });
            }
            text.parse::<ModelSpec>().map_err(|_| {
                let mut err = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
                if let Some(arg) = arg {
                    err.insert(
                        ContextKind::InvalidArg,
                        ContextValue::String(arg.to_string()),
                    );
                }
                err.insert(
                    ContextKind::InvalidValue,
                    ContextValue::String(text.into_owned()),
                );
                err.insert(
                    ContextKind::ValidValue,
                    ContextValue::Strings(MODEL_NAMES.iter().map(|n| n.to_string()).collect()),
                );
                err
            })
        }

        fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
            Some(Box::new(MODEL_NAMES.iter().map(PossibleValue::new)))
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a model's layers, parameters and MACs.
    Info {
        /// Model name, or a model file (.onnx, float .tflite) for its architecture.
        #[arg(long, value_parser = parse::Model)]
        model: ModelSpec,
        /// Width multiplier (MobileNets), in (0, 4].
        #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse::width)]
        width: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Import a model file (ONNX, float TFLite) as a trainable checkpoint, or published DS-CNN
    /// weights (safetensors, TF layouts).
    Import {
        /// A model file to import as a trainable model: `.onnx` or a float `.tflite`.
        #[arg(conflicts_with_all = ["model", "weights"], required_unless_present = "model")]
        file: Option<PathBuf>,
        /// A DS-CNN model, with its published `--weights` (instead of a FILE).
        #[arg(long, value_parser = parse::Model, requires = "weights")]
        model: Option<ModelSpec>,
        /// The `ds_cnn_*.safetensors` file for `--model`.
        #[arg(long, requires = "model")]
        weights: Option<PathBuf>,
        /// What the imported model's input values are, for images: raw pixels 0..255 (MLPerf
        /// Tiny's ResNet-8 and VWW), or scaled to 0..1.
        #[arg(long, value_enum, conflicts_with = "mfcc", requires = "file")]
        pixels: Option<Pixels>,
        /// What the imported model's input values are, for keyword spotting: ML-KWS's MFCCs
        /// (the published DS-CNN weights) or MLPerf Tiny's `tf.signal` MFCCs.
        #[arg(long, value_enum, requires = "file")]
        mfcc: Option<MfccArg>,
        /// Class names in the model's output order, comma-separated (MLPerf KWS:
        /// down,go,left,no,off,on,right,stop,up,yes,_silence_,_unknown_).
        #[arg(long, value_delimiter = ',', requires = "file")]
        labels: Vec<String>,
        /// Checkpoint folder to write (new or empty; a checkpoint there needs --force).
        #[arg(long)]
        out: PathBuf,
        /// Replace a checkpoint already at --out.
        #[arg(long)]
        force: bool,
        /// Print what was written as one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Train a model (from scratch or published weights); checkpoints every epoch.
    Train {
        /// Model name, or a model file (.onnx, float .tflite) for its architecture.
        #[arg(long, value_parser = parse::Model)]
        model: ModelSpec,
        /// Width multiplier (MobileNets), in (0, 4].
        #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse::width)]
        width: f64,
        /// Data folder (Speech Commands or CIFAR-10); the synthetic set when absent.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Start point.
        #[arg(long, value_enum, default_value = "scratch")]
        init: Init,
        /// Weights for `--init pretrained` (DS-CNN).
        #[arg(long, required_if_eq("init", "pretrained"))]
        weights: Option<PathBuf>,
        /// Epochs, 1..=10000.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = parse::epochs)]
        epochs: usize,
        /// Batch size (at least 1).
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
        batch_size: usize,
        /// Learning rate, > 0 (Adam: constant; SGD: initial cosine value). Default: the paper's
        /// schedule.
        #[arg(long, allow_hyphen_values = true, value_parser = parse::learning_rate)]
        lr: Option<f64>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// No augmentation.
        #[arg(long)]
        no_augment: bool,
        /// Run folder: the best model, `last/` (the last completed epoch), burn-train's
        /// `checkpoint/` (for --resume), `metrics.csv`, `learning_curve.png`. New or empty; a
        /// checkpoint there needs --resume or --force.
        #[arg(long)]
        out: PathBuf,
        /// Continue from the last completed epoch's checkpoint in OUT (after Ctrl-C or a killed
        /// run, or to train a finished run for more --epochs).
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Replace the checkpoint already at --out with a new run.
        #[arg(long)]
        force: bool,
        /// Early stopping: stop when validation accuracy has not improved for this many
        /// epochs (at least 1).
        #[arg(long, allow_negative_numbers = true, value_parser = parse::positive)]
        patience: Option<usize>,
        /// Devices to train on, data parallel (burn-train's multi-device strategy): each step
        /// takes DEVICES × --batch-size items. CPU: replicas sharing its cores; wgpu: the first
        /// DEVICES discrete GPUs.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = parse::devices)]
        devices: usize,
        /// Print what was written as one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
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
        /// Devices every stage trains on, data parallel (replaces the config's
        /// `finetune.devices`; see `collab train --devices`).
        #[arg(long, allow_negative_numbers = true, value_parser = parse::devices)]
        devices: Option<usize>,
        /// Stop at the first node (level by level) whose .tflite is at most this many bytes…
        #[arg(long, allow_negative_numbers = true)]
        target_size: Option<usize>,
        /// … whose gzip -9 size is at most this …
        #[arg(long, allow_negative_numbers = true)]
        target_gzip: Option<usize>,
        /// … whose int8 accuracy is at most this many points (>= 0) below the baseline's …
        #[arg(long, allow_hyphen_values = true, value_parser = parse::non_negative)]
        max_accuracy_drop: Option<f64>,
        /// … whose median latency in our interpreter (batch 1, one thread, this machine) is at
        /// most this many milliseconds …
        #[arg(long, allow_hyphen_values = true, value_parser = parse::latency)]
        target_latency_ms: Option<f64>,
        /// … whose inference time on --npu, as Vela estimates it, is at most this many ms …
        #[arg(long, allow_hyphen_values = true, value_parser = parse::npu_ms, requires = "npu")]
        target_npu_ms: Option<f64>,
        /// … whose flash use is at most this many bytes (Vela's flash with --npu, else the
        /// .tflite file) …
        #[arg(long, allow_negative_numbers = true)]
        target_flash_bytes: Option<usize>,
        /// … and whose TFLite Micro tensor arena is at most this many bytes.
        #[arg(long, allow_negative_numbers = true)]
        target_arena_bytes: Option<usize>,
        /// Compile every node with Vela for this Ethos-U (ethos-u55-32/64/128/256,
        /// ethos-u65-256/512, ethos-u85-…): NPU time, cycles, SRAM, flash and encoded weights.
        #[arg(long)]
        npu: Option<String>,
    },
    /// Prune a checkpoint while fine-tuning (PolynomialDecay to --sparsity); writes OUT/pruned.
    Prune {
        #[command(flatten)]
        stage: StageArgs,
        /// Final sparsity, in [0, 1).
        #[arg(long, default_value_t = 0.5, allow_hyphen_values = true, value_parser = parse::sparsity)]
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
        /// Clusters per tensor (or per channel), 2..=256.
        #[arg(long, default_value_t = 16, allow_negative_numbers = true, value_parser = parse::clusters)]
        clusters: usize,
        /// One set of centroids per output channel.
        #[arg(long)]
        per_channel: bool,
        /// Keep the checkpoint's zeros exactly.
        #[arg(long)]
        preserve_sparsity: bool,
        /// One int8-grid codebook shared by all output channels, each scaled by its largest
        /// |w|: per-channel ranges, the same ≤ k int8 codes in every channel.
        #[arg(long, conflicts_with = "per_channel")]
        channel_scaled: bool,
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
        /// Also compile it with Vela for this Ethos-U (ethos-u55-128, …): NPU time, cycles,
        /// SRAM, flash, encoded weights.
        #[arg(long)]
        npu: Option<String>,
        /// Sizes and weights only: no latency, arena or NPU figures.
        #[arg(long, conflicts_with = "npu")]
        no_device: bool,
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
        /// Training samples used for calibration (at least 1).
        #[arg(long, default_value_t = 500, allow_negative_numbers = true, value_parser = parse::positive)]
        calibration_samples: usize,
        /// Calibrate with per-batch percentiles in (50, 100] (e.g. 99.99, averaged over
        /// batches) instead of min/max.
        #[arg(long, allow_hyphen_values = true, value_parser = parse::percentile)]
        percentile: Option<f64>,
        /// The .tflite file to write (written to a temporary file, then renamed); its folder
        /// must exist.
        #[arg(long)]
        out: PathBuf,
        /// Write over an existing --out that is not a .tflite file.
        #[arg(long)]
        force: bool,
        /// Print what was written as one JSON object instead of a line of text.
        #[arg(long)]
        json: bool,
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
        /// Evaluate every clip of a Speech Commands folder (--data), not only the validation
        /// speakers.
        #[arg(long, requires = "data")]
        all: bool,
        /// With --model: prepare the data as this checkpoint's model takes it (an imported
        /// model's input record: pixel scaling, MFCC pipeline, label order), e.g. to score
        /// MLPerf's own int8 file on the images its imported float model is scored on.
        #[arg(long, requires = "model")]
        like: Option<PathBuf>,
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
    /// Fine-tuning epochs, 1..=10000.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = parse::epochs)]
    epochs: usize,
    /// Batch size (at least 1).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
    batch_size: usize,
    /// Adam learning rate (constant), > 0.
    #[arg(long, default_value_t = 1e-4, allow_hyphen_values = true, value_parser = parse::learning_rate)]
    lr: f64,
    /// Devices to train on, data parallel (burn-train's multi-device strategy): each step
    /// takes DEVICES × --batch-size items. CPU: replicas sharing its cores; wgpu: the first
    /// DEVICES discrete GPUs.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = parse::devices)]
    devices: usize,

    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Why `collab` stops: bad usage (exit 2) or a failure (exit 1). The library's
/// [`CollabError::Usage`] also reports failures found while working (data that does not fit a
/// model, …), so only this binary decides what is a usage error.
#[derive(Debug)]
enum CliError {
    /// Options that do not fit together (clap reports single bad values itself, also with 2).
    Usage(String),
    /// Anything that went wrong while working.
    Failed(CollabError),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(msg) => f.write_str(msg),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl From<CollabError> for CliError {
    fn from(e: CollabError) -> Self {
        Self::Failed(e)
    }
}

impl From<collab_models::ModelError> for CliError {
    fn from(e: collab_models::ModelError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<collab_data::DataError> for CliError {
    fn from(e: collab_data::DataError) -> Self {
        Self::Failed(e.into())
    }
}

impl CliError {
    /// The process exit code: 2 for usage, 1 for failures.
    fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }
}

fn single_stage(args: StageArgs, name: &str, scheme: collab::tree::Scheme) -> Result<(), CliError> {
    let config = collab::tree::TreeConfig {
        model: String::new(),
        width: 1.0,
        weights: None,
        checkpoint: Some(args.checkpoint.clone()),
        baseline_epochs: 0,
        seed: args.seed,
        finetune: collab::tree::FineTune {
            epochs: args.epochs,
            devices: args.devices,
            batch_size: args.batch_size,
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
        npu: None,
        latency_seconds: None,
        input: None,
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
        /// Model name, or a model file (.onnx, float .tflite) for its architecture.
        #[arg(long, value_parser = parse::Model)]
        model: ModelSpec,
        /// Width multiplier (MobileNets), in (0, 4].
        #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse::width)]
        width: f64,
        /// Batch size (at least 1).
        #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = parse::positive)]
        batch_size: usize,
        /// Timed steps (after 2 warm-up steps), at least 1.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true, value_parser = parse::positive)]
        steps: usize,
        /// Layer wrappers.
        #[arg(long, value_enum, default_value = "none")]
        wrap: WrapArg,
        /// BatchNorm.
        #[arg(long, value_enum, default_value = "folded")]
        bn: BnArg,
        /// Read (and augment) real batches from this data folder inside each timed step.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print `{"median_ms", "min_ms", "steps", "backend", "what"}`.
        #[arg(long)]
        json: bool,
        /// Time the steps through burn-train's Learner (the training path of `collab train`
        /// and the tree) instead of a plain loop.
        #[arg(long, conflicts_with = "data")]
        learner: bool,
    },
    /// Median latency of our int8 interpreter on a .tflite file (single thread).
    Infer {
        /// The .tflite file.
        #[arg(long)]
        model: PathBuf,
        /// Threads (the interpreter is single-threaded; only 1 is accepted).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = parse::threads)]
        threads: usize,
        /// Timed runs (after 10 warm-up runs), at least 1.
        #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = parse::positive)]
        runs: usize,
        /// Convolution kernels.
        #[arg(long, value_enum, default_value = "best")]
        kernels: KernelsArg,
        /// Print each operator's median time (name, shapes, kernel, share of the total)
        /// instead of the whole run's.
        #[arg(long)]
        profile: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn bench(what: BenchCommand) -> Result<(), CliError> {
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
            learner,
        } => {
            let spec = spec(model, width)?;
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
                wrap.into(),
                bn.into(),
                batch_size,
                steps,
                seed,
                sets.as_ref().map(|s| s.train.as_ref()),
                learner,
            )?;
            (t, json)
        }
        BenchCommand::Infer {
            model,
            threads: _,
            runs,
            kernels,
            profile: true,
            json,
        } => {
            let ops = collab::bench::profile(&model, runs, kernels.into())?;
            if json {
                println!("{}", serde_json::to_string(&ops).unwrap_or_default());
            } else {
                let total: f64 = ops.iter().map(|o| o.seconds).sum();
                println!(
                    "{}: operators' medians sum to {:.4} ms over {runs} runs",
                    model.display(),
                    total * 1e3
                );
                for o in &ops {
                    println!(
                        "{:>3} {:<18} {:>8.4} ms {:>5.1}%  {:<11} {:?} -> {:?}",
                        o.index,
                        o.op,
                        o.seconds * 1e3,
                        100.0 * o.seconds / total.max(f64::MIN_POSITIVE),
                        o.kernel,
                        o.inputs,
                        o.output
                    );
                }
            }
            return Ok(());
        }
        BenchCommand::Infer {
            model,
            threads: _,
            runs,
            kernels,
            profile: false,
            json,
        } => (collab::bench::infer(&model, runs, kernels.into())?, json),
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

/// The model with `--width` (a usage error for a model without a width multiplier).
fn spec(model: ModelSpec, width: f64) -> Result<ModelSpec, CliError> {
    let name = model.name();
    model
        .with_width(width)
        .map_err(|e| CliError::Usage(format!("--width {width} with --model {name}: {e}")))
}

/// A failure about `path`.
fn failed(path: &Path, reason: impl std::fmt::Display) -> CliError {
    CliError::Failed(CollabError::checkpoint(path, reason))
}

fn import(model: ModelSpec, weights: &Path, out: &Path, force: bool) -> Result<Imported, CliError> {
    let ModelSpec::DsCnn { size } = model else {
        return Err(CliError::Usage(format!(
            "--model {}: published weights exist for the DS-CNN models only",
            model.name()
        )));
    };
    refuse_checkpoint_unless_forced(out, force)?;
    let bytes = std::fs::read(weights).map_err(|e| CollabError::checkpoint(weights, e))?;
    let device = collab::device::compute();
    let net = collab_models::import::ds_cnn(
        &DsCnnConfig::new(size),
        &bytes,
        &weights.display().to_string(),
        &device,
    )?;
    let mut manifest = Manifest::new(model, "imported", 0);
    manifest.config = serde_json::json!({ "weights": weights.display().to_string() });
    let network = Network::DsCnn(net);
    checkpoint::save(out, &network, &manifest, None)?;
    let info = manifest.model.info().map_err(CollabError::from)?;
    Ok(Imported {
        checkpoint: out.to_path_buf(),
        source: weights.to_path_buf(),
        model: manifest.model.name(),
        weight_layers: info.layers.len(),
        params: info.params,
        input: manifest.model.input_shape().to_vec(),
    })
}

/// Before an import writes `out`: a checkpoint already there is replaced only with `--force`
/// (files, devices and foreign folders are always refused by `inspect_target`).
fn refuse_checkpoint_unless_forced(out: &Path, force: bool) -> Result<(), CliError> {
    if let Existing::Checkpoint(old) = checkpoint::inspect_target(out)?
        && !force
    {
        return Err(failed(
            out,
            format!(
                "already holds a checkpoint ({}, {}); pass --force to replace it, or choose \
                 another --out",
                old.model.name(),
                old.stage
            ),
        ));
    }
    Ok(())
}

/// `collab import FILE`: the file as a trainable graph model, written as a checkpoint. The
/// input record is the file's, with the features given on the command line.
fn import_file(
    file: &Path,
    pixels: Option<Pixels>,
    mfcc: Option<MfccArg>,
    labels: Vec<String>,
    out: &Path,
    force: bool,
) -> Result<Imported, CliError> {
    refuse_checkpoint_unless_forced(out, force)?;
    let device = collab::device::compute();
    let record = collab::network::InputRecord {
        pixels: pixels.map(|p| match p {
            Pixels::Raw => collab::network::Pixels::Raw,
            Pixels::Unit => collab::network::Pixels::Unit,
        }),
        mfcc: mfcc.map(|m| match m {
            MfccArg::MlKws => collab_data::MfccKind::MlKws,
            MfccArg::TfSignal => collab_data::MfccKind::TfSignal,
        }),
        labels,
    };
    let (spec, net) = collab::network::import_with_record(file, &record, &device).map_err(|e| {
        match e {
            // What the flags say contradicts the file: a usage error (exit 2).
            CollabError::Model(e @ collab_models::ModelError::Setting { .. }) => {
                CliError::Usage(e.to_string())
            }
            e => e.into(),
        }
    })?;
    let ModelSpec::Graph(graph) = &spec else {
        unreachable!("an import is a graph")
    };
    let input = graph.input.clone();
    let mut manifest = Manifest::new(spec.clone(), "imported", 0);
    manifest.config = serde_json::json!({ "source": file.display().to_string() });
    checkpoint::save(out, &net, &manifest, None)?;
    let info = spec.info().map_err(CollabError::from)?;
    tracing::info!(layout = ?input.layout, "input as the file has it: {:?}", input.file_shape());
    Ok(Imported {
        checkpoint: out.to_path_buf(),
        source: file.to_path_buf(),
        model: spec.name(),
        weight_layers: info.layers.len(),
        params: info.params,
        input: spec.input_shape().to_vec(),
    })
}

/// Entries a `collab train` run leaves in its `--out` before its first best model is saved:
/// the lock, `last/`, burn-train's checkpoints and metric logs, and the temporary names of an
/// interrupted save.
fn train_leftover(name: &str) -> bool {
    name == collab::lock::LOCK_FILE
        || name == "last"
        || collab::learn::is_run_file(name)
        || name == ".best-tmp"
        || name.starts_with("..best-tmp.")
        || name.starts_with(".last.")
        || name.starts_with(".collab-probe-")
}

/// What `train --out` holds: [`checkpoint::inspect_target`], except that a folder holding only
/// what an interrupted `collab train` leaves (see [`train_leftover`]) counts as that run's
/// output (its `last/` checkpoint, or empty) instead of a foreign folder.
fn inspect_train_out(out: &Path) -> Result<Existing, CliError> {
    match checkpoint::inspect_target(out) {
        Ok(existing) => Ok(existing),
        Err(err) => {
            let ours = out.is_dir()
                && std::fs::read_dir(out).is_ok_and(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .all(|e| train_leftover(&e.file_name().to_string_lossy()))
                });
            if !ours {
                return Err(err.into());
            }
            checkpoint::writable_parent(out)?;
            let last = out.join("last");
            Ok(if last.join(checkpoint::MANIFEST).is_file() {
                Existing::Checkpoint(Box::new(checkpoint::manifest(&last)?))
            } else {
                Existing::EmptyFolder
            })
        }
    }
}

/// Check `train --out` before any work: refuse a file, device or foreign folder, and a
/// checkpoint of an earlier run unless `--resume` (then `OUT/last` must be a resumable
/// checkpoint of the same model) or `--force`.
fn check_train_out(
    out: &Path,
    spec: &ModelSpec,
    resume: bool,
    force: bool,
) -> Result<Existing, CliError> {
    let existing = inspect_train_out(out)?;
    match &existing {
        Existing::Checkpoint(_) if resume => {
            train::resume_point(out, spec)?;
        }
        Existing::Checkpoint(old) if force => {
            tracing::warn!(
                out = %out.display(),
                old = %old.model.name(),
                "--force: this run replaces the checkpoint there"
            );
        }
        Existing::Checkpoint(old) => {
            return Err(failed(
                out,
                format!(
                    "already holds a checkpoint ({}, {}, epoch {}) from an earlier run; pass \
                     --resume to continue it, --force to replace it, or choose another --out",
                    old.model.name(),
                    old.stage,
                    old.epoch
                ),
            ));
        }
        Existing::Nothing | Existing::EmptyFolder if resume => {
            return Err(failed(
                out,
                "--resume: there is no checkpoint here to continue; drop --resume to start a \
                 new run",
            ));
        }
        Existing::Nothing | Existing::EmptyFolder => {}
    }
    Ok(existing)
}

/// The settings of `collab train`.
struct TrainArgs<'a> {
    spec: ModelSpec,
    data_dir: Option<&'a Path>,
    weights: Option<&'a Path>,
    epochs: usize,
    batch_size: usize,
    lr: Option<f64>,
    seed: u64,
    augment: bool,
    out: &'a Path,
    resume: bool,
    force: bool,
    patience: Option<usize>,
    devices: usize,
}

fn train_command(args: TrainArgs) -> Result<Trained, CliError> {
    let TrainArgs {
        spec,
        data_dir,
        weights,
        epochs,
        batch_size,
        lr,
        seed,
        augment,
        out,
        resume,
        force,
        patience,
        devices,
    } = args;
    let pretrained = match (weights, &spec) {
        (Some(w), ModelSpec::DsCnn { size }) => Some((w, *size)),
        (Some(_), _) => {
            return Err(CliError::Usage(format!(
                "--init pretrained: published weights exist for the DS-CNN models only, not \
                 {}; use --init scratch",
                spec.name()
            )));
        }
        (None, _) => None,
    };
    let existing = check_train_out(out, &spec, resume, force)?;
    // Held for the run; a folder this user cannot write is found here, before any work.
    let lock = collab::lock::OutLock::acquire(out)?;
    // Ctrl-C stops after the current step; the last full epoch's checkpoint stays for --resume.
    collab::learn::interrupt_on_ctrl_c();
    let result = train_into(
        &spec, pretrained, data_dir, epochs, batch_size, lr, seed, augment, out, resume, patience,
        devices,
    );
    if result.is_err() && existing == Existing::Nothing {
        // burn-train's logs and checkpoints of a run that failed, and its start in OUT/last.
        collab::learn::clear_run(out);
        let _ = std::fs::remove_dir_all(out.join("last"));
        // This run made the folder and wrote nothing but its lock: leave nothing behind.
        let only_lock = std::fs::read_dir(out).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .all(|e| e.file_name() == collab::lock::LOCK_FILE)
        });
        if only_lock {
            let _ = std::fs::remove_file(lock.path());
            let _ = std::fs::remove_dir(out);
        }
    }
    drop(lock);
    result
}

#[allow(clippy::too_many_arguments)]
fn train_into(
    spec: &ModelSpec,
    pretrained: Option<(&Path, collab_models::DsCnnSize)>,
    data_dir: Option<&Path>,
    epochs: usize,
    batch_size: usize,
    lr: Option<f64>,
    seed: u64,
    augment: bool,
    out: &Path,
    resume: bool,
    patience: Option<usize>,
    devices: usize,
) -> Result<Trained, CliError> {
    let device = collab::device::compute();
    device.seed(seed);
    let network = match pretrained {
        Some((w, size)) => {
            let bytes = std::fs::read(w).map_err(|e| CollabError::checkpoint(w, e))?;
            Network::DsCnn(collab_models::import::ds_cnn(
                &DsCnnConfig::new(size),
                &bytes,
                &w.display().to_string(),
                &device,
            )?)
        }
        None => spec.init(&device)?,
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
    let mut optimizer = OptimizerConfig::for_model(spec);
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
        devices,
        optimizer,
        seed,
        patience,
        dashboard: collab::learn::Dashboard::Auto,
    };
    let stage = if pretrained.is_some() {
        "finetuned"
    } else {
        "baseline"
    };
    let manifest = Manifest::new(spec.clone(), stage, seed);
    let (_, history) = train::fit(network, &data, &config, manifest, Some(out), resume)?;
    Ok(Trained {
        checkpoint: out.to_path_buf(),
        history,
    })
}

/// Whether `path` starts like a `.tflite` file (the FlatBuffer identifier `TFL3` at bytes 4..8).
fn looks_like_tflite(path: &Path) -> Result<bool, CliError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| CollabError::checkpoint(path, e))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(failed(path, e)),
        }
    }
    Ok(read == head.len() && &head[4..8] == b"TFL3")
}

/// Check `export --out` before any work: what [`export::write`] refuses (no file name, a
/// folder or device, a missing folder) is refused now, before calibrating; a file already there
/// must be a `.tflite` (any other file needs `--force`); the folder must take files.
fn check_export_out(out: &Path, force: bool) -> Result<(), CliError> {
    export::check_out(out)?;
    if out.is_file() && !force && !looks_like_tflite(out)? {
        return Err(failed(
            out,
            "exists and is not a .tflite file (no `TFL3` identifier); pass --force to \
             replace it, or choose another --out",
        ));
    }
    checkpoint::writable_parent(out)?;
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
) -> Result<Exported, CliError> {
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(checkpoint_dir, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let plan = network.plan(manifest.model.input_shape())?;
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
    let indices = data::calibration_indices(data.train.len(), samples, seed);
    tracing::info!(samples = indices.len(), "calibrating activation ranges");
    let ranges = plan.calibrate_on(data.train.as_ref(), &indices, 100, method)?;
    let bytes = export::to_tflite(&plan, Some(&ranges), options)?;
    export::write(out, &bytes)?;
    let report = collab_tflite::Report::new(&bytes).map_err(|e| CollabError::checkpoint(out, e))?;
    Ok(Exported {
        file: out.to_path_buf(),
        model: manifest.model.name(),
        stage: manifest.stage.clone(),
        bytes: report.bytes,
        gzip_bytes: report.gzip_bytes,
        compression: report.compression,
        calibration_samples: indices.len(),
    })
}

/// Whether `graph` computes in float: an operator other than QUANTIZE / DEQUANTIZE writes a
/// float32 tensor (a float model, or a hybrid one with float activations).
fn computes_in_float(graph: &collab_tflite::Graph) -> bool {
    graph
        .operators
        .iter()
        .filter(|op| op.op != "QUANTIZE" && op.op != "DEQUANTIZE")
        .flat_map(|op| op.outputs.iter())
        .filter_map(|&t| usize::try_from(t).ok())
        .filter_map(|t| graph.tensors.get(t))
        .any(|t| t.dtype == collab_tflite::TensorType::Float32)
}

/// Evaluate an int8 .tflite with our interpreter: the task follows from its input shape.
fn eval_tflite(
    path: &Path,
    data_dir: Option<&Path>,
    all: bool,
    like: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let graph = collab_tflite::Graph::open(path).map_err(|e| CollabError::checkpoint(path, e))?;
    let interp = match collab_tflite::Interpreter::new(&graph) {
        Ok(interp) => interp,
        Err(e) if computes_in_float(&graph) => {
            return Err(failed(
                path,
                format!(
                    "is a float model: `collab eval --model` runs full-integer int8 .tflite \
                     files only, float ones are not supported there ({e}). Evaluate the \
                     checkpoint with `collab eval --checkpoint DIR`, or make an int8 file with \
                     `collab export --checkpoint DIR --out FILE.tflite`"
                ),
            ));
        }
        Err(e) => return Err(failed(path, e)),
    };
    let shape = interp.inputs()[0].shape.clone();
    let classes = interp.outputs()[0].shape.last().copied().unwrap_or(0);
    let like = like.map(checkpoint::manifest).transpose()?;
    let (task, input) = match (shape.as_slice(), like) {
        (_, Some(m)) => {
            let input = m.model.input_shape();
            let [c, h, w] = input;
            if shape.iter().skip(1).product::<usize>() != c * h * w {
                return Err(failed(
                    path,
                    format!(
                        "takes {shape:?}; the --like model takes {:?}: not the same input",
                        input
                    ),
                ));
            }
            (m.model.task(), input)
        }
        ([_, 49, 10, 1], None) => (collab::network::Task::Keywords, [1, 49, 10]),
        ([_, h, w, 3], None) if h == w => (
            collab::network::Task::Images { side: *h, classes },
            [3, *h, *w],
        ),
        (other, None) => {
            return Err(failed(
                path,
                format!(
                    "input shape {other:?} is neither MFCC [n, 49, 10, 1] nor an image [n, s, s, 3]"
                ),
            ));
        }
    };
    let report = match (all, data_dir) {
        (true, Some(dir)) => export::evaluate_int8(&interp, input, &all_clips(dir)?)?,
        _ => {
            let data = data::load(task, data_dir, false, 0, SyntheticSize::default())?;
            export::evaluate_int8(&interp, input, data.val.as_ref())?
        }
    };
    print_report(&report, &format!("{} (int8)", path.display()), json);
    Ok(())
}

/// Every clip of a Speech Commands folder (`--all`), without augmentation.
fn all_clips(dir: &Path) -> Result<collab::data::KwsData, CliError> {
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
) -> Result<(), CliError> {
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(checkpoint_dir, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let task = manifest.model.task();
    let report = match (all, data_dir) {
        (true, Some(dir)) => train::evaluate(|x| network.forward(x), &all_clips(dir)?, 256)?,
        _ => {
            let data = data::load(
                task,
                data_dir,
                false,
                manifest.seed,
                SyntheticSize::default(),
            )?;
            train::evaluate(|x| network.forward(x), data.val.as_ref(), 256)?
        }
    };
    print_report(
        &report,
        &format!("{} ({})", manifest.model.name(), manifest.stage),
        json,
    );
    Ok(())
}

fn run(cli: Cli) -> Result<(), CliError> {
    collab::device::select(cli.device.into())?;
    match cli.command {
        Command::Info { model, width, json } => {
            let info = spec(model, width)?.info().map_err(CollabError::from)?;
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
            file,
            model,
            weights,
            pixels,
            mfcc,
            labels,
            out,
            force,
            json,
        } => {
            let written = match (file, model, weights) {
                (Some(file), _, _) => import_file(&file, pixels, mfcc, labels, &out, force)?,
                (None, Some(model), Some(weights)) => import(model, &weights, &out, force)?,
                _ => {
                    return Err(CliError::Usage(
                        "give a model FILE (.onnx, .tflite), or --model with --weights".into(),
                    ));
                }
            };
            emit(&written, json);
            Ok(())
        }
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
            force,
            patience,
            devices,
            json,
        } => {
            if init == Init::Scratch && weights.is_some() {
                return Err(CliError::Usage(
                    "--weights is read with --init pretrained only; add --init pretrained or \
                     drop --weights"
                        .into(),
                ));
            }
            train_command(TrainArgs {
                spec: spec(model, width)?,
                data_dir: data.as_deref(),
                weights: weights.as_deref(),
                epochs,
                batch_size,
                lr,
                seed,
                augment: !no_augment,
                out: &out,
                resume,
                force,
                patience,
                devices,
            })
            .map(|trained| emit(&trained, json))
        }
        Command::Export {
            checkpoint,
            calibration,
            calibration_samples,
            percentile,
            out,
            force,
            float_io,
            no_softmax,
            seed,
            json,
        } => {
            check_export_out(&out, force)?;
            let written = export_command(
                &checkpoint,
                calibration.as_deref(),
                calibration_samples,
                match percentile {
                    Some(percentile) => collab_quant::Calibration::Percentile { percentile },
                    None => collab_quant::Calibration::MinMax,
                },
                &out,
                &ExportOptions {
                    batch: 1,
                    float_io,
                    softmax: !no_softmax,
                },
                seed,
            )?;
            emit(&written, json);
            Ok(())
        }
        Command::Eval {
            checkpoint,
            model,
            data,
            all,
            like,
            json,
        } => match (checkpoint, model) {
            (_, Some(model)) => eval_tflite(&model, data.as_deref(), all, like.as_deref(), json),
            (Some(checkpoint), None) => eval(&checkpoint, data.as_deref(), all, json),
            (None, None) => Err(CliError::Usage(
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
            channel_scaled,
        } => single_stage(
            stage,
            "clustered",
            collab::tree::Scheme::Cluster {
                clusters,
                per_channel,
                preserve_sparsity,
                channel_scaled,
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
            target_latency_ms,
            target_npu_ms,
            target_flash_bytes,
            target_arena_bytes,
            npu,
            devices,
        } => {
            let mut tree = collab::tree::TreeConfig::open(&config)?;
            if let Some(n) = devices {
                tree.finetune.devices = n;
            }
            let given = collab::tree::Targets {
                max_bytes: target_size,
                max_gzip: target_gzip,
                max_accuracy_drop,
                max_latency_ms: target_latency_ms,
                max_npu_ms: target_npu_ms,
                max_flash_bytes: target_flash_bytes,
                max_arena_bytes: target_arena_bytes,
            };
            // Targets on the command line replace the config's.
            if given.any() {
                tree.targets = given;
            }
            if npu.is_some() {
                tree.npu = npu;
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
                    for step in &outcome.walk {
                        match step.misses.is_empty() {
                            true => println!("{}: meets every target", step.stage),
                            false => {
                                println!("{}: rejected ({})", step.stage, step.misses.join("; "))
                            }
                        }
                    }
                    match &outcome.targets_met_by {
                        Some(path) => println!("targets met by: {}", path.join(" → ")),
                        None => println!("no node meets the targets"),
                    }
                }
                println!("results: {}", out.join("results.json").display());
            }
            Ok(())
        }
        Command::Inspect {
            model,
            json,
            npu,
            no_device,
        } => {
            let bytes = std::fs::read(&model).map_err(|e| CollabError::checkpoint(&model, e))?;
            let report = collab_tflite::Report::new(&bytes)
                .map_err(|e| CollabError::checkpoint(&model, e))?;
            let device = if no_device {
                None
            } else {
                let options = collab::deploy::DeployOptions::with_npu(npu.as_deref())?;
                let tools = collab_data::shared::shared_dir()
                    .and_then(|d| collab_tflite::tools::Validators::find(&d.join("tools")));
                Some(collab::deploy::measure(&model, &options, tools.as_ref())?)
            };
            if json {
                let mut value = serde_json::to_value(&report).unwrap_or_default();
                value["device"] = serde_json::to_value(&device).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", report.text());
                if let Some(d) = &device {
                    print!("{}", d.text());
                }
            }
            Ok(())
        }
    }
}

/// Print what a command wrote: its line of text, or with `--json` one JSON object.
fn emit<T: serde::Serialize + std::fmt::Display>(written: &T, json: bool) {
    if json {
        println!("{}", serde_json::to_string(written).unwrap_or_default());
    } else {
        println!("{written}");
    }
}

/// What `collab import` wrote.
#[derive(serde::Serialize)]
struct Imported {
    checkpoint: PathBuf,
    source: PathBuf,
    model: String,
    weight_layers: usize,
    params: usize,
    /// The model's input, `[channels, h, w]`.
    input: Vec<usize>,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} ({}: {} weight layers, {} parameters, input {:?}) into {}",
            self.source.display(),
            self.model,
            self.weight_layers,
            self.params,
            self.input,
            self.checkpoint.display()
        )
    }
}

/// What `collab train` wrote.
#[derive(serde::Serialize)]
struct Trained {
    checkpoint: PathBuf,
    /// Every epoch's figures (a resumed run's include the earlier ones).
    history: Vec<collab::learn::EpochMetrics>,
}

impl std::fmt::Display for Trained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let best = self
            .history
            .iter()
            .map(|h| h.val_accuracy)
            .fold(0.0, f64::max);
        match self.history.last() {
            Some(last) => write!(
                f,
                "trained {} epochs: last val accuracy {:.2}%, best {:.2}%; checkpoint {}",
                self.history.len(),
                100.0 * last.val_accuracy,
                100.0 * best,
                self.checkpoint.display()
            ),
            None => write!(
                f,
                "no epoch completed; checkpoint {}",
                self.checkpoint.display()
            ),
        }
    }
}

/// What `collab export` wrote.
#[derive(serde::Serialize)]
struct Exported {
    file: PathBuf,
    model: String,
    stage: String,
    bytes: usize,
    gzip_bytes: usize,
    /// `1 - gzip_bytes / bytes`.
    compression: f64,
    calibration_samples: usize,
}

impl std::fmt::Display for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {}: {} ({}), {} bytes, gzip -9 {} bytes ({:.1}% compression); calibrated on {} samples",
            self.file.display(),
            self.model,
            self.stage,
            self.bytes,
            self.gzip_bytes,
            100.0 * self.compression,
            self.calibration_samples
        )
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(cli.log_filter())
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or CI stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            if matches!(err, CliError::Usage(_)) {
                eprintln!("\nFor more information, try '--help'.");
            }
            ExitCode::from(err.code())
        }
    }
}
