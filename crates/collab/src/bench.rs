//! Benchmarks behind `collab bench`: training-step time of a model, plain or wrapped, and
//! int8 inference latency of a `.tflite` file with our interpreter.

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use collab_cluster::ClusteringConfig;
use collab_core::BnMode;
use collab_prune::{PruningConfig, PruningSchedule};
use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::network::{ModelSpec, Task, qat_config};

/// How the model's layers are wrapped for a training-step benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wrap {
    /// Plain layers.
    None,
    /// `Prunable` (50% constant sparsity, masks in place).
    Prune,
    /// `Clustered` (16 centroids per tensor).
    Cluster,
    /// `QatAware` (weights and outputs fake-quantized, input of the first layer too).
    Qat,
    /// `QatAware<Clustered<Prunable<…>>>` (PCQAT: 50% sparsity, 16 clusters keeping zeros).
    Pcqat,
}

impl std::str::FromStr for Wrap {
    type Err = CollabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "none" => Self::None,
            "prune" => Self::Prune,
            "cluster" => Self::Cluster,
            "qat" => Self::Qat,
            "pcqat" => Self::Pcqat,
            other => {
                return Err(CollabError::Usage(format!(
                    "--wrap {other}: use none, prune, cluster, qat or pcqat"
                )));
            }
        })
    }
}

/// Timings of a benchmark: `{"median_ms", "min_ms", "steps", "backend"}` plus what ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Median milliseconds per step / run.
    pub median_ms: f64,
    /// Fastest step / run.
    pub min_ms: f64,
    /// Timed steps / runs (after warm-up).
    pub steps: usize,
    /// Backend, e.g. `flex` or `int8-interpreter`.
    pub backend: String,
    /// What was measured.
    pub what: String,
}

fn summarize(mut times: Vec<f64>, backend: &str, what: String) -> Timing {
    times.sort_by(f64::total_cmp);
    Timing {
        median_ms: times[times.len() / 2],
        min_ms: times[0],
        steps: times.len(),
        backend: backend.into(),
        what,
    }
}

/// Times of `steps` training steps (the batch from `batch(step)`, forward, cross-entropy,
/// backward, Adam) after two warm-up steps. Fetching the batch is part of the step.
type Fetch<'a> = dyn FnMut(usize) -> Result<(Tensor<4>, Tensor<1, Int>), CollabError> + 'a;

fn time_steps<M: crate::learn::Classify>(
    model: M,
    batch: &mut Fetch<'_>,
    steps: usize,
    learner: Option<&crate::data::Batch>,
) -> Result<Vec<f64>, CollabError> {
    match learner {
        Some(batch) => time_learner(model, batch, steps),
        None => time_loop(model, |m, x| m.logits(x), batch, steps),
    }
}

/// One fixed batch, whatever the indices (for timing burn-train's steps on the same data as the
/// plain loop's).
struct Fixed {
    x: Tensor<4>,
    y: Tensor<1, Int>,
    len: usize,
    /// When each batch was asked for: one training step apart.
    asked: std::sync::Mutex<Vec<Instant>>,
}

impl crate::data::Batches for Fixed {
    fn len(&self) -> usize {
        self.len
    }
    fn batch(
        &self,
        indices: &[usize],
        _rng: Option<&mut collab_data::SeededRng>,
        device: &burn::tensor::Device,
    ) -> Result<crate::data::Batch, CollabError> {
        let n = indices.len().min(self.x.dims()[0]);
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        Ok((
            self.x.clone().narrow(0, 0, n).to_device(device),
            self.y.clone().narrow(0, 0, n).to_device(device),
        ))
    }
    fn class_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn labels(&self) -> Vec<usize> {
        Vec::new()
    }
    fn describe(&self) -> String {
        "one random batch".into()
    }
}

/// Steps through burn-train ([`crate::learn::learn`], one epoch of `steps + 3` copies of
/// `(x, y)` (not tracked by autodiff), Adam 1e-4): the times between the Learner's requests for
/// consecutive batches (one step each: batch, forward, backward, optimizer, metrics handed
/// over), after two warm-up steps.
fn time_learner<M: crate::learn::Classify>(
    model: M,
    (x, y): &crate::data::Batch,
    steps: usize,
) -> Result<Vec<f64>, CollabError> {
    let batch = x.dims()[0];
    let fixed = |len| Fixed {
        x: x.clone(),
        y: y.clone(),
        len,
        asked: Default::default(),
    };
    let train = std::sync::Arc::new(fixed(batch * (steps + 3)));
    let val = fixed(batch);
    let data = crate::data::TaskData {
        train: train.clone(),
        val: std::sync::Arc::new(val),
    };
    let scratch = crate::checkpoint::Scratch::temp()?;
    let mut plan = crate::learn::Plan::new(
        scratch.path(),
        1,
        batch,
        crate::train::OptimizerConfig::Adam {
            learning_rates: vec![1e-4],
        },
    );
    plan.augment = false;
    plan.label = "bench".into();
    plan.dashboard = crate::learn::Dashboard::Log;
    crate::learn::learn(model, &data, &plan)?;
    let asked = train.asked.lock().unwrap_or_else(|p| p.into_inner());
    Ok(asked
        .windows(2)
        .skip(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect())
}

fn time_loop<M: Module>(
    mut model: M,
    forward: impl Fn(&M, Tensor<4>) -> Tensor<2>,
    batch: &mut Fetch<'_>,
    steps: usize,
) -> Result<Vec<f64>, CollabError> {
    let mut times = Vec::new();
    let mut optim = AdamConfig::new().init();
    for i in 0..steps + 2 {
        let start = Instant::now();
        let (x, y) = batch(i)?;
        let loss_fn = CrossEntropyLossConfig::new().init(&x.device());
        let loss = loss_fn.forward(forward(&model, x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // flex is eager; reading a value also waits for lazy backends.
        let _ = loss.into_data();
        if i >= 2 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

fn pruned<L: collab_core::WeightLayer>(
    config: &PruningConfig,
    name: &str,
    layer: L,
) -> Result<collab_prune::Prunable<L>, CollabError> {
    let err = |e| CollabError::prune(name, e);
    let p = config.wrap(layer).map_err(err)?;
    p.prune_to(0.5).map_err(err)?;
    Ok(p)
}

/// Training-step time of `spec` (batch `batch_size`) with its layers wrapped as `wrap`, in a
/// plain loop or (`through_learner`) through burn-train's Learner;
/// BatchNorm folded (`Folded`, as compression stages train) or batch statistics. The batches
/// are one fixed random batch, or with `data` real batches read (and augmented, where the set
/// augments) inside each timed step: the difference is what data loading costs.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    spec: &ModelSpec,
    wrap: Wrap,
    bn: BnMode,
    batch_size: usize,
    steps: usize,
    seed: u64,
    data: Option<&dyn crate::data::Batches>,
    through_learner: bool,
) -> Result<Timing, CollabError> {
    if through_learner && data.is_some() {
        return Err(CollabError::Usage(
            "--learner times one random batch; drop --data".into(),
        ));
    }
    let device = crate::device::compute().autodiff();
    device.seed(seed);
    let (shape, classes) = match spec.task() {
        Task::Keywords => ([batch_size, 1, 49, 10], 12),
        Task::Images { side, classes } => ([batch_size, 3, side, side], classes),
        Task::Graph { input, classes } => {
            let [c, h, w] = input.shape;
            ([batch_size, c, h, w], classes.max(1))
        }
    };
    let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    let labels: Vec<i64> = (0..batch_size as i64).map(|i| i % classes as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch_size]), &device);
    let learner =
        through_learner.then(|| (x.clone().without_autodiff(), y.clone().without_autodiff()));
    let mut rng = crate::data::epoch_rng(seed, 0);
    let mut fetch = |step: usize| -> Result<(Tensor<4>, Tensor<1, Int>), CollabError> {
        match data {
            Some(d) => {
                let n = d.len().max(1);
                let indices: Vec<usize> = (0..batch_size)
                    .map(|i| (step * batch_size + i) % n)
                    .collect();
                d.batch(&indices, Some(&mut rng), &device)
            }
            None => Ok((x.clone(), y.clone())),
        }
    };
    let graph = spec.graph_spec()?;
    let net = spec.init(&device)?.with_bn_mode(bn);
    let prune = PruningConfig::new(PruningSchedule::constant(0.5));
    let cluster = ClusteringConfig::new(16).with_seed(seed);
    let keep = ClusteringConfig::new(16)
        .with_seed(seed)
        .with_preserve_sparsity(true);
    let qat = |name: &str| qat_config(&graph, name);
    let quant_err = |n: &str, e| CollabError::quant(format!("layer `{n}`"), e);
    let times = each_family!(net, m => match wrap {
        Wrap::None => time_steps(m, &mut fetch, steps, learner.as_ref())?,
        Wrap::Prune => {
            let m = m.try_map(|n, c| pruned(&prune, n, c), |n, l| pruned(&prune, n, l))?;
            time_steps(m, &mut fetch, steps, learner.as_ref())?
        }
        Wrap::Cluster => {
            let m = m.try_map(
                |n, c| cluster.wrap_named(n, c).map_err(|e| CollabError::cluster(n, e)),
                |n, l| cluster.wrap_named(n, l).map_err(|e| CollabError::cluster(n, e)),
            )?;
            time_steps(m, &mut fetch, steps, learner.as_ref())?
        }
        Wrap::Qat => {
            let m = m.try_map(
                |n, c| qat(n).wrap(c).map_err(|e| quant_err(n, e)),
                |n, l| qat(n).wrap(l).map_err(|e| quant_err(n, e)),
            )?;
            time_steps(m, &mut fetch, steps, learner.as_ref())?
        }
        Wrap::Pcqat => {
            let m = m.try_map(
                |n, c| {
                    let c = keep.wrap_named(n, pruned(&prune, n, c)?);
                    qat(n).wrap(c.map_err(|e| CollabError::cluster(n, e))?).map_err(|e| quant_err(n, e))
                },
                |n, l| {
                    let l = keep.wrap_named(n, pruned(&prune, n, l)?);
                    qat(n).wrap(l.map_err(|e| CollabError::cluster(n, e))?).map_err(|e| quant_err(n, e))
                },
            )?;
            time_steps(m, &mut fetch, steps, learner.as_ref())?
        }
    });
    Ok(summarize(
        times,
        crate::device::selected().backend_name(),
        format!(
            "{} train step{}, batch {batch_size}, wrap {wrap:?}, BatchNorm {bn:?}, {}",
            spec.name(),
            if through_learner {
                " through burn-train"
            } else {
                ""
            },
            match data {
                Some(d) => format!("batches read from {}", d.describe()),
                None => "one random batch".into(),
            }
        ),
    ))
}

/// Per-operator time of `path` in our int8 interpreter with `kernels`, one thread: the median
/// over `runs` profiled runs (after 10 warm-up runs) of each operator, in graph order, with
/// its name, shapes and kernel.
pub fn profile(
    path: &Path,
    runs: usize,
    kernels: collab_tflite::Kernels,
) -> Result<Vec<collab_tflite::OpTime>, CollabError> {
    use collab_tflite::{Graph, Interpreter};
    let graph = Graph::open(path).map_err(|e| CollabError::checkpoint(path, e))?;
    let mut interp = Interpreter::new(&graph).map_err(|e| CollabError::checkpoint(path, e))?;
    interp.set_kernels(kernels);
    let inputs = crate::deploy::bench_inputs(&interp);
    let mut samples: Vec<Vec<f64>> = Vec::new();
    let mut ops = Vec::new();
    for i in 0..runs.max(1) + 10 {
        let (out, times) = interp
            .run_profiled(&inputs)
            .map_err(|e| CollabError::checkpoint(path, e))?;
        std::hint::black_box(out);
        if i >= 10 {
            samples.resize(times.len(), Vec::new());
            for (s, t) in samples.iter_mut().zip(&times) {
                s.push(t.seconds);
            }
            ops = times;
        }
    }
    for (op, mut s) in ops.iter_mut().zip(samples) {
        s.sort_by(f64::total_cmp);
        op.seconds = s[s.len() / 2];
    }
    Ok(ops)
}

/// Latency of one batch of `path` in our int8 interpreter, `runs` timed runs after 10 warm-up
/// runs, single thread ([`crate::deploy::time_interpreter`]).
pub fn infer(
    path: &Path,
    runs: usize,
    kernels: collab_tflite::Kernels,
) -> Result<Timing, CollabError> {
    let (times, kernel) =
        crate::deploy::time_interpreter(path, kernels, crate::deploy::Runs::Exactly(runs))?;
    Ok(summarize(
        times,
        "int8-interpreter",
        format!(
            "{} int8 inference, 1 thread, {kernel} kernels",
            path.display()
        ),
    ))
}
