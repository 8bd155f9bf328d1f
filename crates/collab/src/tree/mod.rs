//! The deployment tree: baseline → pruned / clustered / QAT → sparsity-preserving clustered /
//! PQAT / CQAT → PCQAT, every node a checkpoint, every node exported to int8 and measured.
//!
//! Each stage starts from its parent's **stripped** model (plain layers: pruning zeros and
//! cluster values are in the weights) with a fresh optimizer, wraps the layers for its scheme,
//! fine-tunes and strips again. What earlier stages established is re-imposed from the weights:
//! a QAT stage below a pruned node keeps the zero set as a fixed mask (PQAT), below a clustered
//! node re-clusters the ≤ k values exactly (k-means on k distinct values returns them) and
//! trains them as centroids (CQAT), below a sparsity-preserving clustered node does both
//! (PCQAT). After every stage the invariants are checked on the weights and again on the
//! written `.tflite` (zero fraction, unique values per tensor / channel); a violation is an
//! error naming the layer.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use collab_cluster::ClusteringConfig;
use collab_core::{BnMode, WeightLayer, host::to_vec_f32};
use collab_prune::{Prunable, PruningConfig, PruningSchedule};
use collab_quant::Calibration;
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::checkpoint::{self, Manifest};
use crate::data::{self, SyntheticSize, TaskData};
use crate::export::{self, ExportOptions, Plan, Traceable};
use crate::network::{ModelSpec, Network, qat_config};
use crate::train::{self, EvalReport};
use crate::usage as err;

mod results;
mod spec;

pub use results::{LayerFigures, Leaf, Outcome, WalkStep, table};
pub use spec::{FineTune, Scheme, StageSpec, Targets, TreeConfig};

/// Validation samples each node's file is run on in the runtimes.
const VERIFY_SAMPLES: usize = 8;

/// Fraction of exact zeros in every weight of `network`, keyed like the int8 file's weight
/// tensors (`blocks.0.pw/weight`): the zeros a child stage must keep (they stay 0 in int8).
fn float_zeros(plan: &Plan) -> BTreeMap<String, f64> {
    let fraction = |values: Vec<f32>| {
        values.iter().filter(|v| **v == 0.0).count() as f64 / values.len().max(1) as f64
    };
    plan.steps
        .iter()
        .filter_map(|step| match step {
            crate::export::Step::Conv { name, layer, .. } => Some((
                format!("{name}/weight"),
                fraction(to_vec_f32(layer.weight.val().flatten::<1>(0, 3))),
            )),
            crate::export::Step::Linear { name, layer, .. } => Some((
                format!("{name}/weight"),
                fraction(to_vec_f32(layer.weight.val().flatten::<1>(0, 1))),
            )),
            _ => None,
        })
        .collect()
}

pub use collab_models::REFOLD_EPSILON;
use collab_models::refold;

/// Adam (constant rate) over `data.train` for `ft.epochs`, no augmentation, shuffled per
/// epoch from `seed`, through burn-train ([`crate::learn`]); the stage's per-epoch figures
/// (`metrics.csv`, `learning_curve.png`) stay in `dir`, its checkpoints are removed. Returns
/// the trained model in evaluation mode.
fn fine_tune<M: crate::learn::Classify>(
    model: M,
    data: &TaskData,
    ft: &FineTune,
    seed: u64,
    what: &str,
    dir: &Path,
) -> Result<M, CollabError> {
    let _ = std::fs::remove_dir_all(dir);
    let plan = crate::learn::Plan {
        dir: dir.to_path_buf(),
        label: what.to_string(),
        epochs: ft.epochs,
        batch_size: ft.batch_size,
        devices: ft.devices,
        optimizer: train::OptimizerConfig::Adam {
            learning_rates: vec![ft.learning_rate],
        },
        seed,
        augment: false,
        patience: None,
        resume_from: None,
        dashboard: crate::learn::Dashboard::Log,
        interrupter: None,
    };
    let learned = crate::learn::learn(model, data, &plan)?;
    let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
    if learned.interrupted {
        return Err(CollabError::Training(format!(
            "stage `{what}` was interrupted; run the tree again (finished nodes are reused)"
        )));
    }
    Ok(learned.model)
}

fn prune_layer<L: WeightLayer>(
    name: &str,
    layer: L,
    scheme: &Scheme,
    total_steps: u64,
) -> Result<Prunable<L>, CollabError> {
    let Scheme::Prune {
        sparsity,
        end_step,
        frequency,
        power,
        skip_depthwise,
    } = scheme
    else {
        return Err(err("internal: prune_layer on a non-prune scheme"));
    };
    let dense = *skip_depthwise && layer.layout().is_depthwise();
    let schedule = PruningSchedule::PolynomialDecay {
        initial_sparsity: 0.0,
        final_sparsity: if dense { 0.0 } else { *sparsity },
        begin_step: 0,
        end_step: end_step.unwrap_or((total_steps * 3 / 5).max(1)),
        power: *power,
        frequency: (*frequency).max(1),
    };
    PruningConfig::new(schedule)
        .wrap(layer)
        .map_err(|e| err(format!("layer `{name}`: {e}")))
}

/// A mask that keeps exactly the non-zero weights, never updated: what PQAT / PCQAT train under.
fn keep_zeros<L: WeightLayer>(name: &str, layer: L) -> Result<Prunable<L>, CollabError> {
    let weights = to_vec_f32(layer.effective_weight());
    let mask: Vec<bool> = weights.iter().map(|w| *w != 0.0).collect();
    let sparsity = mask.iter().filter(|k| !**k).count() as f64 / mask.len().max(1) as f64;
    let schedule = PruningSchedule::Constant {
        sparsity: sparsity.min(0.999),
        begin_step: u64::MAX / 2,
        end_step: None,
        frequency: 1,
    };
    let p = PruningConfig::new(schedule)
        .wrap(layer)
        .map_err(|e| err(format!("layer `{name}`: {e}")))?;
    p.set_mask(mask, sparsity)
        .map_err(|e| err(format!("layer `{name}`: {e}")))?;
    Ok(p)
}

/// How a stage clusters: k, and per tensor, per channel or channel-scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Clusters {
    k: usize,
    per_channel: bool,
    channel_scaled: bool,
}

/// The clustering config for one layer: `k` capped at the weights per channel / tensor.
fn cluster_config<L: WeightLayer>(
    name: &str,
    layer: &L,
    clusters: Clusters,
    preserve: bool,
    seed: u64,
) -> ClusteringConfig {
    let layout = layer.layout();
    let cols = if clusters.per_channel {
        layout.numel() / layout.out_channels().max(1)
    } else {
        layout.numel()
    };
    let Clusters {
        k: clusters,
        per_channel,
        channel_scaled,
    } = clusters;
    // A channel scale only pays where the int8 weight scale is per channel (convolutions);
    // a weight with one int8 scale (fully connected) shares its codebook as it is.
    let channel_scaled =
        channel_scaled && collab_quant::QatConfig::default().per_channel_for(&layout);
    ClusteringConfig::new(clusters)
        .with_per_channel(per_channel)
        .with_channel_scaled(channel_scaled)
        .with_preserve_sparsity(preserve)
        .with_seed(seed)
        .with_override(name, clusters.min(cols).max(1))
}

fn cluster_layer<L: WeightLayer>(
    name: &str,
    layer: L,
    clusters: Clusters,
    preserve: bool,
    seed: u64,
) -> Result<collab_cluster::Clustered<L>, CollabError> {
    cluster_config(name, &layer, clusters, preserve, seed)
        .wrap_named(name, layer)
        .map_err(|e| err(format!("layer `{name}`: {e}")))
}

/// What the stages above a node established, which later stages must keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Lineage {
    pruned: bool,
    /// k and per channel.
    clusters: Option<(usize, bool)>,
    /// The clusters are channel-scaled (one codebook for every channel).
    #[serde(default)]
    channel_scaled: bool,
}

impl Lineage {
    fn after(self, scheme: &Scheme) -> Self {
        match scheme {
            Scheme::Prune { .. } => Self {
                pruned: true,
                clusters: None,
                channel_scaled: false,
            },
            Scheme::Cluster {
                clusters,
                per_channel,
                preserve_sparsity,
                channel_scaled,
            } => Self {
                pruned: self.pruned && *preserve_sparsity,
                clusters: Some((*clusters, *per_channel)),
                channel_scaled: *channel_scaled,
            },
            Scheme::Qat => self,
        }
    }
}

/// Output quantizers on the operators with an int8 scale of their own besides the layers
/// (a graph's sums), added for QAT and dropped with the wrappers; the families' plans
/// calibrate their sums.
trait Requant: Sized {
    fn add_requant(self) -> Result<Self, CollabError> {
        Ok(self)
    }
    fn drop_requant(self) -> Self {
        self
    }
}

impl<C, L> Requant for collab_models::DsCnn<C, L> {}
impl<C, L> Requant for collab_models::MobileNetV1<C, L> {}
impl<C, L> Requant for collab_models::MobileNetV2<C, L> {}
impl<C, L> Requant for collab_models::GraphNet<C, L> {
    fn add_requant(self) -> Result<Self, CollabError> {
        let device = crate::device::compute();
        self.with_requant(&collab_quant::ActQuantConfig::default(), &device)
            .map_err(|e| CollabError::Usage(e.to_string()))
    }
    fn drop_requant(self) -> Self {
        self.without_requant()
    }
}

/// The outcome of one stage: the stripped model, and for QAT stages the plan with QAT's
/// quantization parameters (and the fake-int8 validation report).
struct StageOutput {
    network: Network,
    qat: Option<(Plan, EvalReport)>,
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    spec: &ModelSpec,
    parent: Network,
    lineage: Lineage,
    stage: &StageSpec,
    data: &TaskData,
    ft: &FineTune,
    seed: u64,
    input: [usize; 3],
    runs: &Path,
) -> Result<StageOutput, CollabError> {
    let steps = (crate::learn::steps_per_epoch(data.train.len(), ft.batch_size, ft.devices)
        * ft.epochs) as u64;
    let net = parent.with_bn_mode(BnMode::Folded);
    let name = stage.name.as_str();
    let mut qat_out = None;
    let network = match &stage.scheme {
        Scheme::Prune { .. } => each_family!(rewrap net, m => {
            let s = &stage.scheme;
            let w = m.try_map(|n, c| prune_layer(n, c, s, steps), |n, l| prune_layer(n, l, s, steps))?;
            let w = fine_tune(w, data, ft, seed, name, &runs.join(name))?;
            w.try_map(|_, c| Ok::<_, CollabError>(refold(c.strip())), |_, l| Ok(l.strip()))
        })?,
        Scheme::Cluster {
            clusters,
            per_channel,
            preserve_sparsity,
            channel_scaled,
        } => {
            let how = Clusters {
                k: *clusters,
                per_channel: *per_channel,
                channel_scaled: *channel_scaled,
            };
            let keep = *preserve_sparsity && lineage.pruned;
            each_family!(rewrap net, m => {
                let w = m.try_map(
                    |n, c| cluster_layer(n, c, how, keep, seed),
                    |n, l| cluster_layer(n, l, how, keep, seed),
                )?;
                let w = fine_tune(w, data, ft, seed, name, &runs.join(name))?;
                w.try_map(|_, c| Ok::<_, CollabError>(refold(c.strip())), |_, l| Ok(l.strip()))
            })?
        }
        Scheme::Qat => {
            // What each layer fuses and which reads the input: from the model's graph.
            let graph = spec.graph_spec()?;
            let qat = |n: &str| qat_config(&graph, n);
            let finish = |plan: Result<Plan, CollabError>,
                          report: Result<EvalReport, CollabError>| {
                Ok::<_, CollabError>((plan?, report?))
            };
            macro_rules! qat_stage {
                ($m:ident, $conv:expr, $lin:expr) => {{
                    let w = $m.try_map(
                        |n, c| qat(n).wrap($conv(n, c)?).map_err(err),
                        |n, l| qat(n).wrap($lin(n, l)?).map_err(err),
                    )?;
                    let w = w.add_requant()?;
                    // Start QAT from the parent's ranges: one calibration pass.
                    let device = crate::device::compute();
                    let calib: Vec<_> = (0..data.train.len().min(500)).collect();
                    let w = collab_quant::calibrate(
                        w,
                        calib
                            .chunks(100)
                            .filter_map(|c| data.train.batch(c, None, &device).ok()),
                        |m, (x, _)| {
                            m.forward(x);
                        },
                    )
                    .train();
                    let w = fine_tune(w, data, ft, seed, name, &runs.join(name))?;
                    let report = train::evaluate(|x| w.forward(x), data.val.as_ref(), 256);
                    qat_out = Some(finish(w.trace(input), report)?);
                    w.drop_requant().try_map(
                        |_, c| Ok::<_, CollabError>(refold(c.strip())),
                        |_, l| Ok(l.strip()),
                    )
                }};
            }
            let how = |(k, per_channel): (usize, bool)| Clusters {
                k,
                per_channel,
                channel_scaled: lineage.channel_scaled,
            };
            match (lineage.pruned, lineage.clusters.map(how)) {
                (false, None) => each_family!(rewrap net, m => qat_stage!(m,
                    |_: &str, c| Ok::<_, CollabError>(c),
                    |_: &str, l| Ok::<_, CollabError>(l)))?,
                (true, None) => each_family!(rewrap net, m => qat_stage!(m,
                    |n: &str, c| keep_zeros(n, c),
                    |n: &str, l| keep_zeros(n, l)))?,
                (false, Some(how)) => each_family!(rewrap net, m => qat_stage!(m,
                    |n: &str, c| cluster_layer(n, c, how, false, seed),
                    |n: &str, l| cluster_layer(n, l, how, false, seed)))?,
                (true, Some(how)) => each_family!(rewrap net, m => qat_stage!(m,
                    |n: &str, c| cluster_layer(n, keep_zeros(n, c)?, how, true, seed),
                    |n: &str, l| cluster_layer(n, keep_zeros(n, l)?, how, true, seed)))?,
            }
        }
    };
    Ok(StageOutput {
        network,
        qat: qat_out,
    })
}

/// Zero sets and unique counts a node must have, checked on its int8 file.
fn check_file(
    stage: &str,
    lineage: Lineage,
    parent_pruned: bool,
    parent_zeros: &BTreeMap<String, f64>,
    report: &collab_tflite::Report,
    scheme: Option<&Scheme>,
) -> Result<(), CollabError> {
    for w in &report.weights {
        if w.dtype != collab_tflite::TensorType::Int8 {
            continue;
        }
        if parent_pruned && lineage.pruned {
            // The parent's exact zeros are kept (fixed mask / pinned centroid) and stay 0 in
            // int8, so the file has at least as many.
            if let Some(before) = parent_zeros.get(&w.name)
                && w.zero_fraction + 1e-9 < *before
            {
                return Err(err(format!(
                    "stage `{stage}`, layer `{}`: the parent's weights were {before:.4} zeros, the \
                     int8 file has {:.4}",
                    w.name, w.zero_fraction
                )));
            }
        }
        if let Some((k, _)) = lineage.clusters {
            // Convolution weights are quantized per output channel, so even per-tensor
            // clusters become up to k integers per channel (not per tensor).
            let got = w.unique_per_channel_max.unwrap_or(w.unique);
            // Sparsity-preserving clustering pins 0 as one of the k values.
            if got > k {
                return Err(err(format!(
                    "stage `{stage}`, layer `{}`: {got} distinct int8 values, more than the {k} \
                     clusters",
                    w.name
                )));
            }
            // Channel-scaled: one codebook, so the whole tensor holds ≤ k int8 codes.
            if lineage.channel_scaled && w.unique > k {
                return Err(err(format!(
                    "stage `{stage}`, layer `{}`: {} distinct int8 codes in the tensor, more \
                     than the {k} channel-scaled clusters",
                    w.name, w.unique
                )));
            }
        }
    }
    if let Some(Scheme::Prune {
        sparsity,
        skip_depthwise,
        ..
    }) = scheme
    {
        for w in &report.weights {
            let depthwise = w.used_by.as_deref() == Some("DEPTHWISE_CONV_2D");
            if w.dtype == collab_tflite::TensorType::Int8
                && !(depthwise && *skip_depthwise)
                && w.zero_fraction + 0.005 < *sparsity
            {
                return Err(err(format!(
                    "stage `{stage}`, layer `{}`: {:.4} zeros, target {sparsity}",
                    w.name, w.zero_fraction
                )));
            }
        }
    }
    Ok(())
}

/// Bumped whenever a node made from the same inputs would come out differently: nodes written
/// under another format are rebuilt, never reused.
pub const NODE_FORMAT: u32 = 2;

/// sha256 of `bytes` in hex (the digest checkpoints record, [`checkpoint::FileDigest`]).
fn sha256_hex(bytes: &[u8]) -> String {
    checkpoint::FileDigest::of(bytes).sha256
}

fn file_digest(path: &Path) -> Result<String, CollabError> {
    let bytes = std::fs::read(path).map_err(|e| CollabError::checkpoint(path, e))?;
    Ok(sha256_hex(&bytes))
}

/// A content fingerprint of a data set: its size, every label, and the values of up to 256
/// evenly spaced samples as the model sees them (no augmentation). Moving the folder keeps it;
/// other clips, another split or the synthetic set instead of real data change it.
fn data_fingerprint(set: &dyn data::Batches) -> Result<String, CollabError> {
    let n = set.len();
    let take = n.min(256);
    let mut bytes: Vec<u8> = Vec::new();
    bytes.extend_from_slice(&(n as u64).to_le_bytes());
    for label in set.labels() {
        bytes.extend_from_slice(&(label as u64).to_le_bytes());
    }
    let device = crate::device::compute();
    let indices: Vec<usize> = (0..take).map(|i| i * n / take.max(1)).collect();
    for chunk in indices.chunks(64) {
        let (x, _) = set.batch(chunk, None, &device)?;
        for v in to_vec_f32(x.flatten::<1>(0, 3)) {
            bytes.extend_from_slice(&v.to_bits().to_le_bytes());
        }
    }
    Ok(sha256_hex(&bytes))
}

/// Everything that made the root node (the baseline): the model and where its weights came
/// from, how it was trained, the data, the seed and the node format.
fn root_identity(
    config: &TreeConfig,
    spec: &ModelSpec,
    data: &serde_json::Value,
) -> Result<serde_json::Value, CollabError> {
    let start = match &config.checkpoint {
        Some(dir) => serde_json::json!({
            "checkpoint": file_digest(&dir.join(checkpoint::RECORD))?,
        }),
        None => serde_json::json!({
            "weights": config.weights.as_deref().map(file_digest).transpose()?,
            "model_file": crate::network::is_model_file(&config.model)
                .then(|| file_digest(Path::new(&config.model)))
                .transpose()?,
            "baseline_epochs": config.baseline_epochs,
            "augment": config.augment && config.baseline_epochs > 0,
            "batch_size": (config.baseline_epochs > 0).then_some(config.finetune.batch_size),
        }),
    };
    Ok(serde_json::json!({
        "format": NODE_FORMAT,
        "model": spec,
        "start": start,
        "seed": config.seed,
        "calibration_samples": config.calibration_samples,
        "data": data,
    }))
}

/// Everything that made a stage node: its spec, the fine-tuning, its parent's identity, the
/// data, the seed and the node format.
fn stage_identity(
    config: &TreeConfig,
    stage: &StageSpec,
    parent: &serde_json::Value,
    data: &serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "format": NODE_FORMAT,
        "stage": stage,
        "finetune": config.finetune,
        "parent": sha256_hex(parent.to_string().as_bytes()),
        "seed": config.seed,
        "calibration_samples": config.calibration_samples,
        "data": data,
    })
}

/// What differs between two identities, key by key (`finetune: {…} → {…}`).
fn identity_diff(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let empty = serde_json::Map::new();
    let (a, b) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&serde_json::Value>| v.map_or("(none)".to_string(), |v| v.to_string());
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            if k == "parent" {
                "its parent node changed".to_string()
            } else {
                format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A finished node in `dir` made from exactly `identity`, with its files intact: its leaf and
/// model. `None` (logging why) when the node must be built: missing, unfinished, made from
/// something else, or with a file that no longer has the digest written at the time.
fn reusable(
    dir: &Path,
    name: &str,
    identity: &serde_json::Value,
    device: &burn::tensor::Device,
) -> Result<Option<(Leaf, Network)>, CollabError> {
    let leaf_file = dir.join(LEAF);
    if !leaf_file.is_file() {
        if dir.exists() {
            tracing::info!(
                stage = name,
                "unfinished node from an earlier run: rebuilding it"
            );
        }
        return Ok(None);
    }
    let manifest = checkpoint::manifest(dir)?;
    let recorded = manifest.config.get("identity").cloned().unwrap_or_default();
    if &recorded != identity {
        tracing::warn!(
            stage = name,
            "rebuilding: the node on disk was made from other settings ({})",
            identity_diff(&recorded, identity)
        );
        return Ok(None);
    }
    let tflite = dir.join("model.tflite");
    let written = manifest
        .config
        .get("tflite_sha256")
        .and_then(|v| v.as_str());
    let actual = file_digest(&tflite).ok();
    if written.is_none() || actual.as_deref() != written {
        tracing::warn!(
            stage = name,
            "rebuilding: {} is missing or changed since the node was written",
            tflite.display()
        );
        return Ok(None);
    }
    let leaf: Option<Leaf> = std::fs::read_to_string(&leaf_file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let Some(leaf) = leaf else {
        tracing::warn!(
            stage = name,
            "rebuilding: {} cannot be read",
            leaf_file.display()
        );
        return Ok(None);
    };
    let (net, _) = checkpoint::load(dir, device)?;
    Ok(Some((leaf, net)))
}

/// File name of a finished node's figures; written last, so its presence marks the node done.
const LEAF: &str = "leaf.json";

/// The node's file in `dir` measured for deployment into `leaf`, then `dir/leaf.json` written
/// (its presence marks the node finished).
fn measure_and_finish(
    leaf: &mut Leaf,
    dir: &Path,
    deploy: &crate::deploy::DeployOptions,
    tools: Option<&collab_tflite::tools::Validators>,
) -> Result<(), CollabError> {
    leaf.device = Some(crate::deploy::measure(
        &dir.join("model.tflite"),
        deploy,
        tools,
    )?);
    crate::export::write(
        &dir.join(LEAF),
        serde_json::to_string_pretty(leaf)
            .unwrap_or_default()
            .as_bytes(),
    )
}

/// Check `plot_layer` against the model's weight layers before any work.
fn check_plot_layer(
    config: &TreeConfig,
    spec: &ModelSpec,
    input: [usize; 3],
) -> Result<(), CollabError> {
    let Some(layer) = &config.plot_layer else {
        return Ok(());
    };
    let device = crate::device::compute();
    let plan = spec.init(&device)?.plan(input)?;
    let names: Vec<&str> =
        plan.steps
            .iter()
            .filter_map(|step| match step {
                crate::export::Step::Conv { name, .. }
                | crate::export::Step::Linear { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
    if names.contains(&layer.as_str()) {
        return Ok(());
    }
    Err(CollabError::Usage(format!(
        "plot_layer = \"{layer}\": {} has no such weight layer; its layers are {}",
        spec.name(),
        names.join(", ")
    )))
}

/// The device seed of one node: the tree's seed for the baseline (its random initialisation),
/// mixed with the stage's name below it, so a node draws the same numbers whether its
/// siblings ran in this process or in an earlier one.
fn node_seed(seed: u64, name: &str) -> u64 {
    if name == "baseline" {
        return seed;
    }
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Run the tree of `config` on `data_dir` (synthetic when `None`) into `out`.
///
/// One run per output folder (an OS lock on `OUT/.collab.lock`; a second run is refused). A
/// finished node on disk is reused only when everything that made it is the same (its
/// settings, its parent, the data's content, the seed, [`NODE_FORMAT`]) and its files still
/// have the digests recorded when it was written; otherwise it is rebuilt, with a log line
/// that says what differs. A node rebuilt from reused parents is the same, bit for bit, as in
/// an uninterrupted run.
pub fn run(
    config: &TreeConfig,
    data_dir: Option<&Path>,
    out: &Path,
) -> Result<Outcome, CollabError> {
    config.validate().map_err(CollabError::Usage)?;
    // The model and the lineage the tree starts from (a pruned / clustered checkpoint keeps its
    // invariants).
    let mut imported: Option<Network> = None;
    let (spec, root_lineage): (ModelSpec, Lineage) = match &config.checkpoint {
        Some(dir) => {
            let manifest = checkpoint::manifest(dir)?;
            let lineage =
                serde_json::from_value(manifest.config["lineage"].clone()).unwrap_or_default();
            (manifest.model, lineage)
        }
        None if crate::network::is_model_file(&config.model) => {
            let (spec, net) = crate::network::import_with_record(
                Path::new(&config.model),
                &config.input.clone().unwrap_or_default(),
                &crate::device::compute(),
            )?;
            imported = Some(net);
            (spec, Lineage::default())
        }
        None => (
            config
                .model
                .parse::<ModelSpec>()?
                .with_width(config.width)?,
            Lineage::default(),
        ),
    };
    let input = spec.input_shape();
    check_plot_layer(config, &spec, input)?;
    let defaults = SyntheticSize::default();
    let synthetic = SyntheticSize {
        train: config.synthetic_train.unwrap_or(defaults.train),
        val: config.synthetic_val.unwrap_or(defaults.val),
    };
    std::fs::create_dir_all(out).map_err(|e| CollabError::checkpoint(out, e))?;
    let _lock = crate::lock::OutLock::acquire(out)?;
    let tools = collab_data::shared::shared_dir()
        .and_then(|d| collab_tflite::tools::Validators::find(&d.join("tools")));
    if tools.is_none() {
        tracing::warn!(
            "the Python validators (../shared/tools) are not installed: the int8 files are \
             checked by our interpreter only (pip install -r ../shared/tools/requirements.txt)"
        );
    }
    let deploy = crate::deploy::DeployOptions {
        runs: crate::deploy::Runs::Stable {
            min_runs: 30,
            min_seconds: config.latency_seconds.unwrap_or(1.0),
        },
        ..crate::deploy::DeployOptions::with_npu(config.npu.as_deref())?
    };
    if config.targets.needs_tools() && tools.is_none() {
        tracing::warn!(
            "targets on NPU time or TFLite Micro arena need the Python tools (pip install -r \
             ../shared/tools/requirements.txt): no node can meet them without"
        );
    }
    // Augmentation (where the data has it) applies to training the baseline only: the stages'
    // fine-tuning and every evaluation read batches without it.
    let augment = config.augment && config.baseline_epochs > 0;
    let data = data::load(spec.task(), data_dir, augment, config.seed, synthetic)?;
    let data_identity = serde_json::json!({
        "train": data_fingerprint(data.train.as_ref())?,
        "val": data_fingerprint(data.val.as_ref())?,
    });
    let device = crate::device::compute();
    let calib =
        data::calibration_indices(data.train.len(), config.calibration_samples, config.seed);

    let mut leaves: Vec<Leaf> = Vec::new();
    let mut nets: BTreeMap<String, (Network, Lineage, BTreeMap<String, f64>)> = BTreeMap::new();
    let mut identities: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    // Level by level (the baseline, its children, theirs …), config order within a level.
    let mut depth: BTreeMap<&str, usize> = BTreeMap::from([("baseline", 0)]);
    for s in &config.stages {
        let d = depth[s.parent.as_str()] + 1;
        depth.insert(&s.name, d);
    }
    let mut nodes: Vec<Option<&StageSpec>> = std::iter::once(None)
        .chain(config.stages.iter().map(Some))
        .collect();
    nodes.sort_by_key(|n| n.map_or(0, |s| depth[s.name.as_str()]));
    let mut walk: Option<Vec<String>> = None;
    let mut walked: Vec<WalkStep> = Vec::new();
    for node in nodes {
        if walk.is_some() {
            break;
        }
        // Judge a finished node against the targets: the path to it when it meets them all,
        // else why not (logged and kept for results.json).
        let judge = |leaf: &Leaf, leaves: &[Leaf], walked: &mut Vec<WalkStep>| {
            if !config.targets.any() {
                return None;
            }
            let baseline = leaves
                .first()
                .map_or(leaf.int8_accuracy, |b| b.int8_accuracy);
            let misses = config.targets.misses(leaf, baseline);
            walked.push(WalkStep {
                stage: leaf.stage.clone(),
                misses: misses.clone(),
            });
            if !misses.is_empty() {
                tracing::info!(stage = leaf.stage, why = misses.join("; "), "rejected");
                return None;
            }
            let mut path = vec![leaf.stage.clone()];
            let mut at = leaf.parent.clone();
            while let Some(p) = at {
                at = leaves
                    .iter()
                    .find(|l| l.stage == p)
                    .and_then(|l| l.parent.clone());
                path.push(p);
            }
            path.reverse();
            Some(path)
        };
        let name = node.map_or("baseline", |s| s.name.as_str());
        let dir = out.join(name);
        let start = std::time::Instant::now();
        let parent = node.map(|s| s.parent.clone());
        let lineage = match node {
            None => root_lineage,
            Some(s) => nets[&s.parent].1.after(&s.scheme),
        };
        let identity = match node {
            None => root_identity(config, &spec, &data_identity)?,
            Some(s) => stage_identity(config, s, &identities[&s.parent], &data_identity),
        };
        identities.insert(name.to_string(), identity.clone());
        if let Some((mut leaf, net)) = reusable(&dir, name, &identity, &device)? {
            tracing::info!(stage = name, "reusing finished stage");
            let npu_of = |l: &Leaf| {
                l.device
                    .as_ref()
                    .and_then(|d| d.npu.as_ref().map(|n| n.accelerator.clone()))
            };
            if leaf.device.is_none() || npu_of(&leaf) != config.npu {
                measure_and_finish(&mut leaf, &dir, &deploy, tools.as_ref())?;
            }
            let zeros = float_zeros(&net.plan(input)?);
            nets.insert(name.to_string(), (net, lineage, zeros));
            walk = judge(&leaf, &leaves, &mut walked);
            leaves.push(leaf);
            continue;
        }
        tracing::info!(stage = name, "running stage");
        device.seed(node_seed(config.seed, name));
        let (network, qat, bn_epsilon) = match node {
            None if config.checkpoint.is_some() => {
                let dir = config.checkpoint.as_deref().unwrap_or(out);
                let (net, manifest) = checkpoint::load(dir, &device)?;
                let eps = manifest
                    .config
                    .get(checkpoint::BN_EPSILON)
                    .and_then(|v| v.as_f64());
                (net.with_bn_mode(BnMode::Folded).valid(), None, eps)
            }
            None => {
                let net = match &config.weights {
                    Some(w) => {
                        let ModelSpec::DsCnn { size } = spec else {
                            return Err(err("published weights exist for DS-CNN only"));
                        };
                        let bytes = std::fs::read(w).map_err(|e| CollabError::checkpoint(w, e))?;
                        Network::DsCnn(collab_models::import::ds_cnn(
                            &collab_models::DsCnnConfig::new(size),
                            &bytes,
                            &w.display().to_string(),
                            &device,
                        )?)
                    }
                    None => match imported.take() {
                        Some(net) => net,
                        None => spec.init(&device)?,
                    },
                };
                let net = if config.baseline_epochs > 0 {
                    let tc = train::TrainConfig {
                        epochs: config.baseline_epochs,
                        batch_size: config.finetune.batch_size,
                        devices: config.finetune.devices,
                        optimizer: train::OptimizerConfig::for_model(&spec),
                        seed: config.seed,
                        patience: None,
                        dashboard: crate::learn::Dashboard::Log,
                    };
                    let m = Manifest::new(spec.clone(), "baseline", config.seed);
                    train::fit(net.with_bn_mode(BnMode::Batch), &data, &tc, m, None, false)?.0
                } else {
                    net
                };
                (net.with_bn_mode(BnMode::Folded).valid(), None, None)
            }
            Some(stage) => {
                let parent_net = nets[&stage.parent].0.clone();
                let parent_lineage = nets[&stage.parent].1;
                let out = run_stage(
                    &spec,
                    parent_net,
                    parent_lineage,
                    stage,
                    &data,
                    &config.finetune,
                    config.seed,
                    input,
                    &out.join("training"),
                )?;
                (
                    out.network.with_bn_mode(BnMode::Folded).valid(),
                    out.qat,
                    Some(REFOLD_EPSILON),
                )
            }
        };
        // Float (or fake-int8) accuracy, export, int8 accuracy, sizes.
        let plain_plan = network.plan(input)?;
        let zeros = float_zeros(&plain_plan);
        let ranges =
            plain_plan.calibrate_on(data.train.as_ref(), &calib, 100, Calibration::MinMax)?;
        let (plan, float_report) = match qat {
            Some((plan, report)) => (plan, report),
            None => {
                let report = train::evaluate(|x| network.forward(x), data.val.as_ref(), 256)?;
                (plain_plan, report)
            }
        };
        let bytes = export::to_tflite(&plan, Some(&ranges), &ExportOptions::default())?;
        let report = collab_tflite::Report::new(&bytes).map_err(err)?;
        let empty = BTreeMap::new();
        let parent_zeros = node.map_or(&empty, |s| &nets[&s.parent].2);
        let parent_pruned = node.is_some_and(|s| nets[&s.parent].1.pruned);
        check_file(
            name,
            lineage,
            parent_pruned,
            parent_zeros,
            &report,
            node.map(|s| &s.scheme),
        )?;
        let graph = collab_tflite::Graph::from_bytes(&bytes).map_err(err)?;
        let interp = collab_tflite::Interpreter::new(&graph).map_err(err)?;
        let int8 = export::evaluate_int8(&interp, input, data.val.as_ref())?;
        // The file in the runtimes, where the validators are installed.
        let verified = match &tools {
            Some(tools) => {
                let take: Vec<usize> = (0..data.val.len().min(VERIFY_SAMPLES)).collect();
                let (x, _) = data.val.batch(&take, None, &device)?;
                let v = export::verify(
                    tools,
                    &plan,
                    Some(&ranges),
                    x,
                    &out.join(format!(".verify-{name}")),
                )?;
                if !v.exact() {
                    return Err(CollabError::Usage(format!(
                        "stage `{name}`: the int8 file runs differently in the reference \
                         runtimes than in ours ({:?} LSB): a bug, please report it",
                        v.max_lsb
                    )));
                }
                Some(v)
            }
            None => None,
        };
        let layers: Vec<LayerFigures> = report
            .weights
            .iter()
            .filter(|w| w.dtype == collab_tflite::TensorType::Int8)
            .map(|w| LayerFigures {
                name: w.name.clone(),
                zero_fraction: w.zero_fraction,
                unique: w.unique,
                unique_per_channel_max: w.unique_per_channel_max,
            })
            .collect();
        let mut leaf = Leaf {
            stage: name.to_string(),
            parent,
            tflite: format!("{name}/model.tflite"),
            float_accuracy: float_report.accuracy,
            int8_accuracy: int8.accuracy,
            samples: int8.samples,
            bytes: report.bytes,
            gzip_bytes: report.gzip_bytes,
            compression: report.compression,
            layers,
            verified,
            device: None,
            seconds: start.elapsed().as_secs_f64(),
        };
        let mut manifest = Manifest::new(spec.clone(), name, config.seed);
        manifest.config = serde_json::json!({
            "stage": node,
            "finetune": config.finetune,
            "lineage": lineage,
            "identity": identity,
            (checkpoint::BN_EPSILON): bn_epsilon,
            "tflite_sha256": sha256_hex(&bytes),
        });
        manifest.metrics = serde_json::json!({
            "val_accuracy": leaf.float_accuracy,
            "int8_val_accuracy": leaf.int8_accuracy,
        });
        manifest.data = Some(format!(
            "{}; {}",
            data.train.describe(),
            data.train.fingerprint()
        ));
        // The checkpoint folder is replaced as a whole: write the file into it afterwards, and
        // the leaf last (its presence marks the node finished).
        checkpoint::save(&dir, &network, &manifest, None)?;
        export::write(&dir.join("model.tflite"), &bytes)?;
        measure_and_finish(&mut leaf, &dir, &deploy, tools.as_ref())?;
        crate::fault::point(&format!("node {name} finished"));
        tracing::info!(
            stage = name,
            float = format!("{:.4}", leaf.float_accuracy),
            int8 = format!("{:.4}", leaf.int8_accuracy),
            gzip = leaf.gzip_bytes,
            "stage done"
        );
        nets.insert(name.to_string(), (network, lineage, zeros));
        walk = judge(&leaf, &leaves, &mut walked);
        leaves.push(leaf);
    }
    // Report in the config's order (the published tables' order).
    let order = |stage: &str| {
        config
            .stages
            .iter()
            .position(|s| s.name == stage)
            .map_or(0, |i| i + 1)
    };
    leaves.sort_by_key(|l| order(&l.stage));
    if config.targets.any() {
        match &walk {
            Some(path) => tracing::info!(path = path.join(" → "), "targets met"),
            None => tracing::warn!("no node of the tree meets the targets"),
        }
    }
    let results = serde_json::json!({
        "model": spec.name(),
        "data": format!("{}; {}", data.val.describe(), data.val.fingerprint()),
        "leaves": leaves,
        "targets": config.targets,
        "npu": config.npu,
        "walk": walked,
        "targets_met_by": walk,
    });
    export::write(
        &out.join("results.json"),
        serde_json::to_string_pretty(&results)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    export::write(&out.join("table.md"), table(&leaves).as_bytes())?;
    plots(config, &leaves, out)?;
    Ok(Outcome {
        leaves,
        walk: walked,
        targets_met_by: walk,
    })
}

/// `density.png` (one kernel's weights at every node, from the int8 files),
/// `accuracy_vs_size.png`, `accuracy_vs_latency.png` and, with an NPU, `accuracy_vs_npu.png`.
fn plots(config: &TreeConfig, leaves: &[Leaf], out: &Path) -> Result<(), CollabError> {
    let layer = match &config.plot_layer {
        Some(l) => format!("{l}/weight"),
        None => {
            let Some(first) = leaves.first() else {
                return Ok(());
            };
            let path = out.join(&first.tflite);
            let graph =
                collab_tflite::Graph::open(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
            match graph
                .constants()
                .filter(|(_, t)| t.dtype == collab_tflite::TensorType::Int8 && t.shape.len() == 4)
                .max_by_key(|(_, t)| t.shape.iter().product::<usize>())
            {
                Some((_, t)) => t.name.clone(),
                None => return Ok(()),
            }
        }
    };
    let mut nodes = Vec::new();
    for leaf in leaves {
        let path = out.join(&leaf.tflite);
        let graph =
            collab_tflite::Graph::open(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
        if let Some(values) = graph.tensor(&layer).and_then(|t| t.to_f32()) {
            nodes.push((leaf.stage.clone(), values));
        }
    }
    let name = layer.trim_end_matches("/weight");
    crate::plot::density(&out.join("density.png"), name, &nodes)?;
    crate::plot::accuracy_vs_size(&out.join("accuracy_vs_size.png"), leaves)?;
    crate::plot::accuracy_vs_latency(&out.join("accuracy_vs_latency.png"), leaves, false)?;
    if config.npu.is_some() {
        crate::plot::accuracy_vs_latency(&out.join("accuracy_vs_npu.png"), leaves, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn lineage_decides_what_qat_keeps() {
        let prune = Scheme::Prune {
            sparsity: 0.5,
            end_step: None,
            frequency: 10,
            power: 3.0,
            skip_depthwise: false,
        };
        let keep = Scheme::Cluster {
            clusters: 16,
            per_channel: false,
            preserve_sparsity: true,
            channel_scaled: false,
        };
        let plain = Scheme::Cluster {
            clusters: 8,
            per_channel: true,
            preserve_sparsity: false,
            channel_scaled: false,
        };
        let scaled = Scheme::Cluster {
            clusters: 8,
            per_channel: false,
            preserve_sparsity: false,
            channel_scaled: true,
        };
        let root = Lineage::default();
        assert_eq!(root.after(&Scheme::Qat), root);
        let pruned = root.after(&prune);
        assert!(pruned.pruned && pruned.clusters.is_none());
        let pcq = pruned.after(&keep).after(&Scheme::Qat);
        assert!(pcq.pruned);
        assert_eq!(pcq.clusters, Some((16, false)));
        // Clustering without preserving sparsity ends the pruned lineage.
        let lost = pruned.after(&plain);
        assert!(!lost.pruned);
        assert_eq!(lost.clusters, Some((8, true)));
        assert!(!lost.channel_scaled);
        // Channel-scaled clusters carry to QAT; a later clustering replaces them.
        let cs = root.after(&scaled).after(&Scheme::Qat);
        assert!(cs.channel_scaled && cs.clusters == Some((8, false)));
        assert!(!cs.after(&plain).channel_scaled);
    }
}
