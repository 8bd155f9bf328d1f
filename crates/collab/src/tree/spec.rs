//! What a tree config says: the stages, their schemes, the fine-tuning and the targets.
//! (Reading and checking a config is [`crate::config`].)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::results::Leaf;

/// Fine-tuning settings shared by every stage (the recipe: Adam, constant rate, batch 100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FineTune {
    /// Epochs per stage.
    pub epochs: usize,
    /// Batch size (of each device, with `devices` > 1).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Devices each stage trains on, data parallel ([`crate::learn::Plan::devices`]).
    #[serde(default = "crate::learn::one_device")]
    pub devices: usize,
    /// Adam learning rate (constant).
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
}

fn default_batch() -> usize {
    100
}
fn default_lr() -> f64 {
    1e-4
}
fn default_samples() -> usize {
    200
}
fn default_frequency() -> u64 {
    10
}
fn default_power() -> f64 {
    3.0
}
fn default_true() -> bool {
    true
}
fn default_width() -> f64 {
    1.0
}

/// One stage's scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scheme {
    /// Magnitude pruning with TFMOT's PolynomialDecay from 0 to `sparsity`.
    Prune {
        /// Final sparsity.
        sparsity: f64,
        /// Step at which the final sparsity is reached (default: 60% of the stage's steps).
        #[serde(default)]
        end_step: Option<u64>,
        /// Mask update every this many steps.
        #[serde(default = "default_frequency")]
        frequency: u64,
        /// Polynomial power.
        #[serde(default = "default_power")]
        power: f64,
        /// Leave depthwise convolutions dense (as TFMOT's recipe did).
        #[serde(default)]
        skip_depthwise: bool,
    },
    /// Weight clustering (k-means++), per tensor, per output channel or channel-scaled; with
    /// `preserve_sparsity` the zeros of a pruned parent stay exactly zero.
    Cluster {
        /// Clusters per tensor / channel (fewer where a channel has fewer weights).
        clusters: usize,
        /// One set of centroids per output channel.
        #[serde(default)]
        per_channel: bool,
        /// Keep the parent's zeros (sparsity-preserving clustering).
        #[serde(default)]
        preserve_sparsity: bool,
        /// One int8-grid codebook shared by all output channels, each scaled by its largest
        /// `|w|` (`collab_cluster::ClusteringConfig::channel_scaled`): per-channel ranges with
        /// the same ≤ k int8 codes in every channel. Layers whose int8 weight has one scale
        /// (fully connected) are clustered per tensor. Excludes `per_channel`.
        #[serde(default)]
        channel_scaled: bool,
    },
    /// Quantization-aware training, preserving what the parent stages established.
    Qat,
}

/// A node of the tree.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Its name (`pruned`, `pqat`, …): the folder and the `stage` in `results.json`.
    pub name: String,
    /// The node it starts from (`baseline` or an earlier stage).
    pub parent: String,
    /// What it does.
    #[serde(flatten)]
    pub scheme: Scheme,
}

/// A whole tree, as `configs/*.toml` write it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeConfig {
    /// Model name (`ds-cnn-l`, `mobilenet-v1-cifar`, …).
    pub model: String,
    /// Width multiplier (MobileNets).
    #[serde(default = "default_width")]
    pub width: f64,
    /// Published weights for the baseline (DS-CNN safetensors); a fresh model otherwise.
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// Start from this checkpoint instead (its model and lineage: a node of an earlier tree,
    /// or any `collab train` / `import` output). `model` and `weights` are then ignored.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Epochs to train the baseline before the tree (0: use it as imported / initialised).
    #[serde(default)]
    pub baseline_epochs: usize,
    /// Augment the data while training the baseline (where the data set has augmentation).
    #[serde(default = "default_true")]
    pub augment: bool,
    /// Seed of everything.
    #[serde(default)]
    pub seed: u64,
    /// Fine-tuning of every stage.
    pub finetune: FineTune,
    /// Training samples used as PTQ representative data.
    #[serde(default = "default_samples")]
    pub calibration_samples: usize,
    /// Sizes of the synthetic set used when no data folder is given.
    #[serde(default)]
    pub synthetic_train: Option<usize>,
    /// Sizes of the synthetic set used when no data folder is given.
    #[serde(default)]
    pub synthetic_val: Option<usize>,
    /// The nodes below the baseline, parents first.
    #[serde(default, rename = "stage")]
    pub stages: Vec<StageSpec>,
    /// Stop at the first node that meets these (nodes run level by level).
    #[serde(default)]
    pub targets: Targets,
    /// The layer whose weight histogram `density.png` shows (default: the largest kernel).
    #[serde(default)]
    pub plot_layer: Option<String>,
    /// The Ethos-U configuration every node is compiled for with Vela (`ethos-u55-128`, …;
    /// [`collab_tflite::tools::NPUS`]), for the NPU columns and `targets.max_npu_ms`.
    #[serde(default)]
    pub npu: Option<String>,
    /// Least seconds of timed runs per node's interpreter latency (at least 30 runs; default
    /// 1): more gives a steadier median on a noisy machine.
    #[serde(default)]
    pub latency_seconds: Option<f64>,
    /// What an imported model's input holds (`model` a `.onnx` / `.tflite` file).
    #[serde(default)]
    pub input: Option<crate::network::InputRecord>,
}

/// Deployment targets: the tree is walked level by level (baseline, then its children, then
/// theirs) and stops at the first node whose int8 file meets every target given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// Largest `.tflite` size in bytes.
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Largest gzip -9 size in bytes.
    #[serde(default)]
    pub max_gzip: Option<usize>,
    /// Largest int8 accuracy drop from the baseline's int8 accuracy, in percentage points.
    #[serde(default)]
    pub max_accuracy_drop: Option<f64>,
    /// Largest median latency of our int8 interpreter on this machine (batch 1, one thread),
    /// milliseconds.
    #[serde(default)]
    pub max_latency_ms: Option<f64>,
    /// Largest inference time Vela estimates on the tree's `npu`, milliseconds.
    #[serde(default)]
    pub max_npu_ms: Option<f64>,
    /// Largest flash use in bytes: what Vela places in flash for the tree's `npu` when one is
    /// set (weights as Vela encodes them, and the command stream), else the `.tflite` file
    /// (TFLite Micro runs it from flash as it is).
    #[serde(default)]
    pub max_flash_bytes: Option<usize>,
    /// Largest TFLite Micro tensor arena in bytes (measured in TFLite Micro).
    #[serde(default)]
    pub max_arena_bytes: Option<usize>,
}

impl Targets {
    /// Whether any target is set.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }

    /// Whether a target needs the Python tools' figures (XNNPACK is never a target).
    pub fn needs_tools(&self) -> bool {
        self.max_npu_ms.is_some() || self.max_arena_bytes.is_some()
    }

    /// Why `leaf` misses the targets (empty: it meets every one), the baseline's int8 accuracy
    /// being `baseline`. A figure the leaf lacks (a tool not installed) misses its target.
    pub fn misses(&self, leaf: &Leaf, baseline: f64) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(b) = self.max_bytes.filter(|b| leaf.bytes > *b) {
            why.push(format!("{} bytes > {b}", leaf.bytes));
        }
        if let Some(g) = self.max_gzip.filter(|g| leaf.gzip_bytes > *g) {
            why.push(format!("gzip {} bytes > {g}", leaf.gzip_bytes));
        }
        if let Some(d) = self.max_accuracy_drop {
            let drop = 100.0 * (baseline - leaf.int8_accuracy);
            if drop > d + 1e-9 {
                why.push(format!("accuracy drop {drop:.2} points > {d}"));
            }
        }
        let device = leaf.device.as_ref();
        let absent = |what: &str| match device {
            None => format!("no {what} (the node was not measured)"),
            Some(d) => match d.missing.iter().find(|m| m.contains(what)) {
                Some(m) => format!("no {what}: {m}"),
                None => format!("no {what}"),
            },
        };
        if let Some(t) = self.max_latency_ms {
            match device.map(|d| d.latency.median_ms) {
                Some(ms) if ms > t => why.push(format!("latency {ms:.3} ms > {t} ms")),
                Some(_) => {}
                None => why.push(absent("latency")),
            }
        }
        let npu = device.and_then(|d| d.npu.as_ref());
        if let Some(t) = self.max_npu_ms {
            match npu.map(|n| n.inference_ms) {
                Some(ms) if ms > t => why.push(format!("NPU {ms:.3} ms > {t} ms")),
                Some(_) => {}
                None => why.push(absent("NPU figures")),
            }
        }
        if let Some(t) = self.max_flash_bytes {
            let flash = npu
                .map(|n| (n.flash_bytes, "NPU flash"))
                .or(device.map(|d| (d.flash_bytes, "flash")))
                .unwrap_or((leaf.bytes, "flash"));
            if flash.0 > t {
                why.push(format!("{} {} bytes > {t}", flash.1, flash.0));
            }
        }
        if let Some(t) = self.max_arena_bytes {
            match device.and_then(|d| d.arena_bytes) {
                Some(b) if b > t => why.push(format!("arena {b} bytes > {t}")),
                Some(_) => {}
                None => why.push(absent("TFLite Micro arena")),
            }
        }
        why
    }

    /// Whether `leaf` meets every target ([`Targets::misses`] is empty).
    pub fn met_by(&self, leaf: &Leaf, baseline: f64) -> bool {
        self.misses(leaf, baseline).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSpec;
    use std::path::Path;

    fn leaf(device: Option<crate::deploy::DeviceFigures>) -> Leaf {
        Leaf {
            stage: "pruned".into(),
            parent: Some("baseline".into()),
            tflite: "pruned/model.tflite".into(),
            float_accuracy: 0.9,
            int8_accuracy: 0.9,
            samples: 100,
            bytes: 50_000,
            gzip_bytes: 30_000,
            compression: 0.4,
            layers: Vec::new(),
            verified: None,
            device,
            seconds: 1.0,
        }
    }

    fn figures(npu: bool) -> crate::deploy::DeviceFigures {
        crate::deploy::DeviceFigures {
            flash_bytes: 50_000,
            latency: crate::deploy::Latency {
                median_ms: 2.0,
                p90_ms: 2.5,
                runs: 30,
                kernels: "portable".into(),
            },
            xnnpack_ms: Some(1.0),
            arena_bytes: Some(20_000),
            npu: npu.then(|| collab_tflite::tools::VelaFigures {
                accelerator: "ethos-u55-128".into(),
                system_config: "Ethos_U55_High_End_Embedded".into(),
                inference_ms: 0.5,
                cycles: 250_000,
                sram_bytes: 10_000,
                flash_bytes: 40_000,
                weight_bytes: 35_000,
                encoded_weight_bytes: 30_000,
                npu_ops_percent: 100.0,
                cpu_ops: Vec::new(),
            }),
            missing: if npu {
                Vec::new()
            } else {
                vec!["NPU figures for ethos-u55-128: Vela is not installed".into()]
            },
        }
    }

    #[test]
    fn targets_say_why_a_node_misses_them() {
        let t = Targets {
            max_latency_ms: Some(1.5),
            max_npu_ms: Some(1.0),
            max_flash_bytes: Some(45_000),
            max_arena_bytes: Some(25_000),
            ..Targets::default()
        };
        // Latency too high; NPU flash (not the file) fits; NPU time and arena fit.
        assert_eq!(
            t.misses(&leaf(Some(figures(true))), 0.9),
            ["latency 2.000 ms > 1.5 ms"]
        );
        // Without Vela: the NPU target is missed with the reason, flash falls back to the file.
        let why = t.misses(&leaf(Some(figures(false))), 0.9);
        assert_eq!(why.len(), 3, "{why:?}");
        assert!(why[1].contains("no NPU figures: NPU figures for ethos-u55-128: Vela is not"));
        assert_eq!(why[2], "flash 50000 bytes > 45000");
        // A node never measured misses every device target.
        let why = t.misses(&leaf(None), 0.9);
        assert!(
            why.iter()
                .all(|w| w.contains("not measured") || w.contains("flash"))
        );
        // Size and accuracy targets as before.
        let t = Targets {
            max_gzip: Some(29_999),
            max_accuracy_drop: Some(1.0),
            max_latency_ms: Some(3.0),
            ..Targets::default()
        };
        assert_eq!(
            t.misses(&leaf(Some(figures(false))), 0.95),
            ["gzip 30000 bytes > 29999", "accuracy drop 5.00 points > 1"]
        );
        assert!(!t.met_by(&leaf(Some(figures(false))), 0.95));
        assert!(Targets::default().met_by(&leaf(None), 0.95) && !Targets::default().any());
    }

    #[test]
    fn shipped_configs_are_valid_trees() {
        let dir = [Path::new("../../configs").to_path_buf()]
            .into_iter()
            .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")])
            .find(|p| p.is_dir())
            .expect("configs/");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let config = TreeConfig::open(&path).unwrap();
                assert!(!config.stages.is_empty(), "{}", path.display());
                // A model file is read when the tree runs (paths are from the repository root).
                if !crate::network::is_model_file(&config.model) {
                    config.model.parse::<ModelSpec>().unwrap();
                }
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} configs");
    }
}
