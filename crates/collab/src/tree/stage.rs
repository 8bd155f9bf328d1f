//! Running one stage: the parent's stripped model wrapped for the stage's scheme (pruning,
//! clustering, QAT over what the lineage keeps), fine-tuned, and stripped again.

use std::path::{Path, PathBuf};

use collab_cluster::ClusteringConfig;
use collab_core::{BnMode, WeightLayer, host::to_vec_f32};
use collab_models::{GraphSpec, refold};
use collab_prune::{Prunable, PruningConfig, PruningSchedule};
use collab_quant::QatAware;

use super::invariants::Lineage;
use super::{FineTune, Scheme, StageSpec};
use crate::CollabError;
use crate::data::TaskData;
use crate::export::{Plan, Traceable};
use crate::network::{ModelSpec, Network, qat_config};
use crate::train::{self, EvalReport};

/// How a stage fine-tunes: the data, the settings, the seed, and the stage's name and
/// folder (`runs/NAME`).
struct Tuning<'a> {
    data: &'a TaskData,
    ft: &'a FineTune,
    seed: u64,
    name: &'a str,
    dir: PathBuf,
}

impl Tuning<'_> {
    /// Adam (constant rate) over `data.train` for `ft.epochs`, no augmentation, shuffled per
    /// epoch from `seed`, through burn-train ([`crate::learn`]); the stage's per-epoch figures
    /// (`metrics.csv`, `learning_curve.png`) stay in `dir`, its checkpoints are removed.
    /// Returns the trained model in evaluation mode.
    fn fine_tune<M: crate::learn::Classify>(&self, model: M) -> Result<M, CollabError> {
        let _ = std::fs::remove_dir_all(&self.dir);
        let ft = self.ft;
        let plan = crate::learn::Plan {
            dir: self.dir.clone(),
            label: self.name.to_string(),
            epochs: ft.epochs,
            batch_size: ft.batch_size,
            devices: ft.devices,
            optimizer: train::OptimizerConfig::Adam {
                learning_rates: vec![ft.learning_rate],
            },
            seed: self.seed,
            augment: false,
            patience: None,
            resume_from: None,
            dashboard: crate::learn::Dashboard::Log,
            interrupter: None,
        };
        let learned = crate::learn::learn(model, self.data, &plan)?;
        let _ = std::fs::remove_dir_all(self.dir.join("checkpoint"));
        if learned.interrupted {
            return Err(CollabError::Training(format!(
                "stage `{}` was interrupted; run the tree again (finished nodes are reused)",
                self.name
            )));
        }
        Ok(learned.model)
    }

    /// QAT on a model whose layers are wrapped already: the graph's output quantizers added,
    /// one calibration pass from the parent's ranges, fine-tuning. Returns the model without
    /// the output quantizers; its plan for `input` (with QAT's quantization parameters) and
    /// its fake-int8 validation report go to `out`.
    fn qat<M: crate::learn::Classify + Requant + Traceable>(
        &self,
        model: M,
        input: [usize; 3],
        out: &mut Option<(Plan, EvalReport)>,
    ) -> Result<M, CollabError> {
        let w = model.add_requant()?;
        // Start QAT from the parent's ranges: one calibration pass.
        let device = crate::device::compute();
        let train = &self.data.train;
        let calib: Vec<_> = (0..train.len().min(500)).collect();
        let w = collab_quant::calibrate(
            w,
            calib
                .chunks(100)
                .filter_map(|c| train.batch(c, None, &device).ok()),
            |m, (x, _)| {
                m.logits(x);
            },
        )
        .train();
        let w = self.fine_tune(w)?;
        let report = train::evaluate(|x| w.logits(x), self.data.val.as_ref(), 256);
        let plan = w.trace(input)?;
        *out = Some((plan, report?));
        Ok(w.drop_requant())
    }
}

/// Layer `name` wrapped for QAT as the model's graph says (its fused activation, whether it
/// reads the model input).
fn qat_layer<L: WeightLayer>(
    graph: &GraphSpec,
    name: &str,
    layer: L,
) -> Result<QatAware<L>, CollabError> {
    qat_config(graph, name)
        .wrap(layer)
        .map_err(|e| CollabError::quant(format!("layer `{name}`"), e))
}

/// Layer `name` wrapped for pruning on `schedule(dense)`: a depthwise layer stays dense
/// (`dense` true: final sparsity 0) when the stage skips them.
fn prune_layer<L: WeightLayer>(
    name: &str,
    layer: L,
    schedule: impl Fn(bool) -> PruningSchedule,
    skip_depthwise: bool,
) -> Result<Prunable<L>, CollabError> {
    let dense = skip_depthwise && layer.layout().is_depthwise();
    PruningConfig::new(schedule(dense))
        .wrap(layer)
        .map_err(|e| CollabError::prune(name, e))
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
        .map_err(|e| CollabError::prune(name, e))?;
    p.set_mask(mask, sparsity)
        .map_err(|e| CollabError::prune(name, e))?;
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
        .map_err(|e| CollabError::cluster(name, e))
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
            .map_err(|e| CollabError::quant("the graph's output quantizers", e))
    }
    fn drop_requant(self) -> Self {
        self.without_requant()
    }
}

/// The outcome of one stage: the stripped model, and for QAT stages the plan with QAT's
/// quantization parameters (and the fake-int8 validation report).
pub(super) struct StageOutput {
    pub(super) network: Network,
    pub(super) qat: Option<(Plan, EvalReport)>,
}

/// One family's model `$m` (bound by `each_family!`: every family has its own type) with its
/// convolutions wrapped by `$conv` and its linear layers by `$lin` (`(name, layer) →
/// Result<wrapped>`), trained by `$train` (an expression over the wrapped model `$w`, giving
/// `Result<trained>`), then stripped back to plain layers with BatchNorm refolded.
macro_rules! wrap_train_strip {
    ($m:ident, $conv:expr, $lin:expr, |$w:ident| $train:expr) => {{
        let $w = $m.try_map($conv, $lin)?;
        let $w = $train?;
        $w.try_map(
            |_, c| Ok::<_, CollabError>(refold(c.strip())),
            |_, l| Ok(l.strip()),
        )
    }};
}

/// Run one stage on its parent's stripped model (BatchNorm folded): wrap for the scheme, over
/// what `lineage` keeps (a QAT stage below a pruned node keeps the zero set as a fixed mask,
/// below a clustered node re-clusters), fine-tune for `ft` in `runs/NAME`, strip.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_stage(
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
    let tuning = Tuning {
        data,
        ft,
        seed,
        name,
        dir: runs.join(name),
    };
    let mut qat_out = None;
    let network = match &stage.scheme {
        &Scheme::Prune {
            sparsity,
            end_step,
            frequency,
            power,
            skip_depthwise,
        } => {
            let schedule = |dense: bool| PruningSchedule::PolynomialDecay {
                initial_sparsity: 0.0,
                final_sparsity: if dense { 0.0 } else { sparsity },
                begin_step: 0,
                end_step: end_step.unwrap_or((steps * 3 / 5).max(1)),
                power,
                frequency: frequency.max(1),
            };
            each_family!(rewrap net, m => wrap_train_strip!(m,
                |n, c| prune_layer(n, c, schedule, skip_depthwise),
                |n, l| prune_layer(n, l, schedule, skip_depthwise),
                |w| tuning.fine_tune(w)))?
        }
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
            each_family!(rewrap net, m => wrap_train_strip!(m,
                |n, c| cluster_layer(n, c, how, keep, seed),
                |n, l| cluster_layer(n, l, how, keep, seed),
                |w| tuning.fine_tune(w)))?
        }
        Scheme::Qat => {
            // What each layer fuses and which reads the input: from the model's graph.
            let graph = spec.graph_spec()?;
            let how = |(k, per_channel): (usize, bool)| Clusters {
                k,
                per_channel,
                channel_scaled: lineage.channel_scaled,
            };
            match (lineage.pruned, lineage.clusters.map(how)) {
                (false, None) => each_family!(rewrap net, m => wrap_train_strip!(m,
                    |n, c| qat_layer(&graph, n, c),
                    |n, l| qat_layer(&graph, n, l),
                    |w| tuning.qat(w, input, &mut qat_out)))?,
                (true, None) => each_family!(rewrap net, m => wrap_train_strip!(m,
                    |n, c| qat_layer(&graph, n, keep_zeros(n, c)?),
                    |n, l| qat_layer(&graph, n, keep_zeros(n, l)?),
                    |w| tuning.qat(w, input, &mut qat_out)))?,
                (false, Some(how)) => each_family!(rewrap net, m => wrap_train_strip!(m,
                    |n, c| qat_layer(&graph, n, cluster_layer(n, c, how, false, seed)?),
                    |n, l| qat_layer(&graph, n, cluster_layer(n, l, how, false, seed)?),
                    |w| tuning.qat(w, input, &mut qat_out)))?,
                (true, Some(how)) => each_family!(rewrap net, m => wrap_train_strip!(m,
                    |n, c| qat_layer(&graph, n, cluster_layer(n, keep_zeros(n, c)?, how, true, seed)?),
                    |n, l| qat_layer(&graph, n, cluster_layer(n, keep_zeros(n, l)?, how, true, seed)?),
                    |w| tuning.qat(w, input, &mut qat_out)))?,
            }
        }
    };
    Ok(StageOutput {
        network,
        qat: qat_out,
    })
}
