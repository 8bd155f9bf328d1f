//! Wrapped models trained under burn-train's Learner (`collab::learn`): the wrappers' state
//! advances and is checkpointed as in a loop of one's own, a run resumed from burn-train's
//! checkpoint mid-schedule ends exactly where an uninterrupted one does, early stopping stops,
//! and the per-epoch figures reach `metrics.csv` and the learning-curve PNG.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Device;
use collab::data::{self, SyntheticSize, TaskData};
use collab::learn::{self, Dashboard, Plan};
use collab::train::OptimizerConfig;
use collab::{ModelSpec, Network};
use collab_cluster::{Clustered, ClusteringConfig, distinct_count};
use collab_core::host::to_vec_f32;
use collab_core::{BnMode, WeightLayer};
use collab_models::{ConvBlock, DsCnn};
use collab_prune::{Prunable, PruningConfig, PruningSchedule};
use collab_quant::{QatAware, QatConfig};

type Pcqat<L> = QatAware<Clustered<Prunable<L>>>;
type PcqatNet = DsCnn<Pcqat<ConvBlock>, Pcqat<Linear>>;
type PrunedNet = DsCnn<Prunable<ConvBlock>, Prunable<Linear>>;

const CLUSTERS: usize = 6;

fn data() -> TaskData {
    let size = SyntheticSize {
        train: 240,
        val: 80,
    };
    data::load(
        ModelSpec::DsCnn {
            size: collab_models::DsCnnSize::S,
        }
        .task(),
        None,
        true,
        5,
        size,
    )
    .unwrap()
}

/// A DS-CNN-S whose weights come from `seed` (burn's initialisation RNG is process-global and
/// other tests draw from it, so the plain model is made once and its record reused).
fn plain() -> Network {
    let spec: ModelSpec = "ds-cnn-s".parse().unwrap();
    let device = Device::flex();
    device.seed(11);
    spec.init(&device).unwrap().with_bn_mode(BnMode::Folded)
}

fn dscnn(net: Network) -> DsCnn<ConvBlock, Linear> {
    match net {
        Network::DsCnn(m) => m,
        _ => unreachable!(),
    }
}

/// PCQAT as the tree stacks it: pruned to 50% (zeros kept), clustered per channel with the
/// zeros preserved, then QAT.
fn pcqat(net: Network) -> PcqatNet {
    fn wrap<L: WeightLayer>(layer: L) -> Pcqat<L> {
        let pruned = PruningConfig::new(PruningSchedule::constant(0.5))
            .wrap(layer)
            .unwrap();
        pruned.prune_to(0.5).unwrap();
        let clustered = ClusteringConfig::new(CLUSTERS)
            .with_per_channel(true)
            .with_preserve_sparsity(true)
            .with_seed(3)
            .wrap(pruned)
            .unwrap();
        QatConfig::new().wrap(clustered).unwrap()
    }
    dscnn(net)
        .try_map(|_, c| Ok::<_, ()>(wrap(c)), |_, l| Ok(wrap(l)))
        .unwrap()
}

/// Pruning 0 → 60% over the first 20 steps, masks updated every 3 steps.
fn pruned(net: Network) -> PrunedNet {
    fn wrap<L: WeightLayer>(layer: L) -> Prunable<L> {
        PruningConfig::new(PruningSchedule::PolynomialDecay {
            initial_sparsity: 0.0,
            final_sparsity: 0.6,
            begin_step: 0,
            end_step: 20,
            power: 3.0,
            frequency: 3,
        })
        .wrap(layer)
        .unwrap()
    }
    dscnn(net)
        .try_map(|_, c| Ok::<_, ()>(wrap(c)), |_, l| Ok(wrap(l)))
        .unwrap()
}

fn plan(dir: &std::path::Path, epochs: usize, resume_from: Option<usize>) -> Plan {
    Plan {
        dir: dir.to_path_buf(),
        label: "test".into(),
        epochs,
        batch_size: 40,
        devices: 1,
        optimizer: OptimizerConfig::Adam {
            learning_rates: vec![2e-3, 5e-4],
        },
        seed: 4,
        augment: false,
        patience: None,
        resume_from,
        dashboard: Dashboard::Log,
        interrupter: None,
    }
}

/// Every layer's weights as the model computes with them, and each layer's layout.
fn layers<C: WeightLayer, L: WeightLayer>(
    m: &DsCnn<C, L>,
) -> Vec<(Vec<f32>, collab_core::WeightLayout)> {
    let mut out = vec![(to_vec_f32(m.conv1.effective_weight()), m.conv1.layout())];
    for b in &m.blocks {
        out.push((to_vec_f32(b.dw.effective_weight()), b.dw.layout()));
        out.push((to_vec_f32(b.pw.effective_weight()), b.pw.layout()));
    }
    out.push((to_vec_f32(m.fc.effective_weight()), m.fc.layout()));
    out
}

fn masks(m: &PrunedNet) -> Vec<Vec<bool>> {
    let mut out = vec![m.conv1.mask_values()];
    for b in &m.blocks {
        out.push(b.dw.mask_values());
        out.push(b.pw.mask_values());
    }
    out.push(m.fc.mask_values());
    out
}

fn steps(m: &PrunedNet) -> u64 {
    m.conv1.steps()
}

fn restore<M: Module>(fresh: M, bytes: &burn::tensor::Bytes) -> M {
    fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes.clone()).unwrap())
}

#[test]
fn pcqat_trains_under_burn_train_with_its_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let base = plain();
    let model = pcqat(base.clone());
    let zeros: Vec<Vec<bool>> = layers(&model)
        .iter()
        .map(|(w, _)| w.iter().map(|v| *v == 0.0).collect())
        .collect();
    let before = layers(&model);
    let learned = learn::learn(model, &data, &plan(dir.path(), 2, None)).unwrap();
    let model = learned.model;
    assert_eq!(learned.history.len(), 2);
    assert!(!learned.interrupted && !learned.stopped_early);

    let after = layers(&model);
    assert_ne!(
        before.iter().map(|l| &l.0).collect::<Vec<_>>(),
        after.iter().map(|l| &l.0).collect::<Vec<_>>(),
        "burn-train did not update the wrapped weights"
    );
    for (((w, layout), zero), i) in after.iter().zip(&zeros).zip(0..) {
        assert!(
            zero.iter().zip(w).all(|(z, v)| !z || *v == 0.0),
            "layer {i}: a pruned weight is non-zero after training"
        );
        let mut rows = vec![Vec::new(); layout.out_channels()];
        for (j, v) in w.iter().enumerate() {
            rows[layout.out_channel_of(j)].push(*v);
        }
        let most = rows.iter().map(|r| distinct_count(r)).max().unwrap();
        assert!(
            most <= CLUSTERS,
            "layer {i}: {most} values in a channel, more than {CLUSTERS}"
        );
    }

    // Ranges were learnt in training and are frozen in evaluation.
    let ranges = |m: &PcqatNet| {
        let mut r = vec![m.conv1.output.range()];
        r.extend(m.blocks.iter().map(|b| b.pw.output.range()));
        r.push(m.fc.output.range());
        r
    };
    let trained = ranges(&model);
    assert!(trained.iter().all(Option::is_some), "{trained:?}");
    let indices: Vec<usize> = (0..data.val.len()).collect();
    let (x, _) = data.val.batch(&indices, None, &Device::flex()).unwrap();
    let _ = model.forward(x.clone() * 10.0);
    assert_eq!(
        ranges(&model),
        trained,
        "an evaluation pass moved the ranges"
    );

    // burn-train's checkpoint carries the wrappers' state: reloaded, it computes the same.
    let reloaded = learn::load_checkpoint(pcqat(base), dir.path(), 2).unwrap();
    assert_eq!(ranges(&reloaded), trained);
    let (a, b) = (reloaded.forward(x.clone()), model.forward(x));
    assert_eq!(
        to_vec_f32(a),
        to_vec_f32(b),
        "checkpoint computes differently"
    );

    // The figures of both epochs, as a file and a picture.
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("epoch,train_loss,train_accuracy,val_loss,val_accuracy"));
    for (row, h) in rows[1..].iter().zip(&learned.history) {
        let cells: Vec<f64> = row.split(',').map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells[0] as usize, h.epoch);
        assert!(cells[1..].iter().all(|v| v.is_finite()), "{row}");
        assert!((0.0..=1.0).contains(&cells[4]), "{row}");
        assert!(cells[6] > 0.0, "step time {row}");
    }
    // Adam at 2e-3 for the first half of the steps, 5e-4 for the second.
    assert!((learned.history[0].learning_rate - 2e-3).abs() < 1e-9);
    assert!((learned.history[1].learning_rate - 5e-4).abs() < 1e-9);
    // Drawn with the built-in font: on every machine, system fonts or not.
    let png = dir.path().join("learning_curve.png");
    let bytes = std::fs::read(&png).expect("learning_curve.png is always drawn");
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 10_000, "a {}-byte figure", bytes.len());
}

#[test]
fn a_run_resumed_from_burn_train_checkpoint_mid_schedule_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let initial = pruned(plain());
    let bytes = initial.clone().into_record().into_bytes().unwrap();

    // 4 epochs of 6 steps; the pruning schedule ends at step 20, in epoch 4.
    let full = learn::learn(
        restore(pruned(plain()), &bytes),
        &data,
        &plan(&dir.path().join("full"), 4, None),
    )
    .unwrap();
    assert_eq!(steps(&full.model), 24);

    // The same 4-epoch run, stopped (as Ctrl-C stops it) once epoch 2 is checkpointed.
    let part_dir = dir.path().join("part");
    let stop = burn::train::Interrupter::new();
    let mut interrupted = plan(&part_dir, 4, None);
    interrupted.interrupter = Some(stop.clone());
    let watched = part_dir.join("checkpoint").join("model-2.bpk");
    let watcher = std::thread::spawn(move || {
        while !watched.exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.stop(Some("test"));
    });
    let part = learn::learn(restore(pruned(plain()), &bytes), &data, &interrupted).unwrap();
    watcher.join().unwrap();
    assert!(part.interrupted);
    let done = learn::last_checkpoint(&part_dir).unwrap();
    assert!((2..4).contains(&done), "stopped after epoch {done}");
    assert!(steps(&part.model) < 24, "mid-schedule");
    // The second half runs on a freshly built model: everything comes from the checkpoint.
    let resumed = learn::learn(
        restore(pruned(plain()), &bytes),
        &data,
        &plan(&part_dir, 4, Some(done)),
    )
    .unwrap();
    assert_eq!(steps(&resumed.model), 24);
    assert!(
        masks(&resumed.model) == masks(&full.model),
        "masks differ from the uninterrupted run's"
    );
    let (a, b) = (layers(&resumed.model), layers(&full.model));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.0 == y.0),
        "weights differ from the uninterrupted run"
    );
    let sparsity = |m: &PrunedNet| {
        let all: Vec<bool> = masks(m).concat();
        all.iter().filter(|k| !**k).count() as f64 / all.len() as f64
    };
    assert!(sparsity(&full.model) > 0.55, "{}", sparsity(&full.model));
    let figures = |h: &[learn::EpochMetrics]| {
        h.iter()
            .map(|m| (m.epoch, m.loss, m.train_accuracy, m.val_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(figures(&resumed.history), figures(&full.history));
}

#[test]
fn early_stopping_stops_when_validation_accuracy_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let mut p = plan(dir.path(), 30, None);
    // A learning rate this small moves nothing: accuracy cannot improve for long.
    p.optimizer = OptimizerConfig::Adam {
        learning_rates: vec![1e-9],
    };
    p.patience = Some(2);
    let learned = learn::learn(pruned(plain()), &data, &p).unwrap();
    assert!(learned.stopped_early);
    assert!(
        learned.history.len() < 30,
        "ran all {} epochs",
        learned.history.len()
    );
    let best = learned
        .history
        .iter()
        .map(|h| h.val_accuracy)
        .fold(f64::NEG_INFINITY, f64::max);
    let first_best = learned
        .history
        .iter()
        .position(|h| h.val_accuracy == best)
        .unwrap();
    assert_eq!(
        learned.history.len(),
        first_best + 1 + 2,
        "stopped {} epochs after the best",
        learned.history.len() - first_best - 1
    );
}

/// A model of one's own, wrapped whole (`WholePruning`: every weight's `Param`), trained by the
/// Learner: its schedule advances in `Classify::after_step`, the one line it needs.
#[derive(burn::module::Module, Debug)]
struct Own {
    conv: burn::nn::conv::Conv2d,
    fc: Linear,
    #[module(skip)]
    pruning: collab_prune::WholePruning,
}

impl learn::Classify for Own {
    fn logits(&self, x: burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2> {
        let y = burn::tensor::activation::relu(self.conv.forward(x));
        self.fc.forward(y.mean_dim(3).mean_dim(2).flatten(1, 3))
    }

    fn after_step(self) -> Self {
        let pruning = self.pruning.clone();
        pruning.advance(self).expect("advance the pruning schedule")
    }
}

#[test]
fn a_model_wrapped_whole_prunes_on_schedule_under_the_learner() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let device = Device::flex();
    device.seed(5);
    // 20% → 50% over steps 1..8 (of 12), a mask update every step.
    let pruning = collab_prune::WholePruning::new(PruningConfig::new(
        PruningSchedule::polynomial(0.2, 0.5, 1, 8).with_frequency(1),
    ));
    let own = Own {
        conv: burn::nn::conv::Conv2dConfig::new([1, 8], [3, 3]).init(&device),
        fc: burn::nn::LinearConfig::new(8, 12).init(&device),
        pruning: pruning.clone(),
    };
    let (own, _) = pruning.wrap(own).unwrap();
    let own = pruning.advance(own).unwrap(); // step 1 begins
    let learned = learn::learn(own, &data, &plan(dir.path(), 2, None)).unwrap();
    let zeros = |m: &Own| {
        let w = [
            to_vec_f32(m.conv.weight.val().reshape([-1])),
            to_vec_f32(m.fc.weight.val().reshape([-1])),
        ]
        .concat();
        w.iter().filter(|v| **v == 0.0).count() as f64 / w.len() as f64
    };
    let sparsity = zeros(&learned.model);
    assert!(
        (sparsity - 0.5).abs() < 0.01,
        "{sparsity} of the weights are zero after the schedule, not 50%"
    );
    let report = collab_prune::whole::report(&learned.model).unwrap();
    assert_eq!(report.len(), 2);
    assert!(report.iter().all(|r| r.step >= 12), "{report:?}");
}
