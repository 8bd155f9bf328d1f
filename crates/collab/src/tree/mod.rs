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

//!
//! The parts: `spec` (what a config says), `stage` (running one stage), `invariants` (what a
//! node must keep, checked on its int8 file), `reuse` (when a finished node on disk is reused),
//! `results` (what a run produced: leaves, tables, figures); this module walks the tree.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use collab_core::BnMode;
use collab_quant::Calibration;

use crate::CollabError;
use crate::checkpoint::{self, Manifest};
use crate::data::{self, SyntheticSize};
use crate::export::{self, ExportOptions};
use crate::network::{ModelSpec, Network};
use crate::train;

mod invariants;
mod results;
mod reuse;
mod spec;
mod stage;

use invariants::{Lineage, check_file, float_zeros};
use results::plots;
pub use results::{LayerFigures, Leaf, Outcome, WalkStep, table};
pub use reuse::NODE_FORMAT;
use reuse::{
    data_fingerprint, measure_and_finish, reusable, root_identity, sha256_hex, stage_identity,
};
pub use spec::{FineTune, Scheme, StageSpec, Targets, TreeConfig};
use stage::run_stage;

pub use collab_models::REFOLD_EPSILON;

/// Validation samples each node's file is run on in the runtimes.
const VERIFY_SAMPLES: usize = 8;

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
    let names: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            export::Step::Conv { name, .. } | export::Step::Linear { name, .. } => {
                Some(name.as_str())
            }
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
                            return Err(CollabError::Usage(
                                "`weights`: published weights exist for DS-CNN only".into(),
                            ));
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
        let int8_file = |e| CollabError::tflite(format!("stage `{name}`: the int8 file"), e);
        let report = collab_tflite::Report::new(&bytes).map_err(int8_file)?;
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
        let graph = collab_tflite::Graph::from_bytes(&bytes).map_err(int8_file)?;
        let interp = collab_tflite::Interpreter::new(&graph).map_err(int8_file)?;
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
                    return Err(CollabError::Mismatch {
                        stage: name.to_string(),
                        max_lsb: v.max_lsb,
                    });
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
