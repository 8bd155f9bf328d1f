//! Data-parallel training through burn-train's multi-device strategy (`Plan::devices`): the
//! wrappers' state stays one state across replicas. Pruned on two devices with a batch of `b`
//! each, a model ends where it does on one device with a batch of `2b` (step counts, masks,
//! weights up to float summation order); under QAT the counters agree and the ranges are the
//! global batch's; and replicas that disagree on state they must share stop the run with an
//! error that names it.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use collab::data::{self, SyntheticSize, TaskData};
use collab::learn::{self, Classify, Dashboard, Plan};
use collab::train::OptimizerConfig;
use collab::{ModelSpec, Network};
use collab_core::host::to_vec_f32;
use collab_core::{BnMode, StateTensor, WeightLayer};
use collab_models::{ConvBlock, DsCnn};
use collab_prune::{Prunable, PruningConfig, PruningSchedule};
use collab_quant::{QatAware, QatConfig};

type Pqat<L> = QatAware<Prunable<L>>;
type PqatNet = DsCnn<Pqat<ConvBlock>, Pqat<Linear>>;
type PrunedNet = DsCnn<Prunable<ConvBlock>, Prunable<Linear>>;

fn data() -> TaskData {
    let size = SyntheticSize {
        train: 240,
        val: 80,
    };
    let spec = ModelSpec::DsCnn {
        size: collab_models::DsCnnSize::S,
    };
    data::load(spec.task(), None, true, 5, size).unwrap()
}

fn plain() -> DsCnn<ConvBlock, Linear> {
    let spec: ModelSpec = "ds-cnn-s".parse().unwrap();
    let device = Device::flex();
    device.seed(11);
    let Network::DsCnn(net) = spec.init(&device).unwrap().with_bn_mode(BnMode::Folded) else {
        unreachable!()
    };
    net
}

/// Pruning 0 → 50% over the first 8 steps, masks every 2 steps.
fn prune<L: WeightLayer>(layer: L) -> Prunable<L> {
    PruningConfig::new(PruningSchedule::PolynomialDecay {
        initial_sparsity: 0.0,
        final_sparsity: 0.5,
        begin_step: 0,
        end_step: 8,
        power: 3.0,
        frequency: 2,
    })
    .wrap(layer)
    .unwrap()
}

fn pruned() -> PrunedNet {
    plain()
        .try_map(|_, c| Ok::<_, ()>(prune(c)), |_, l| Ok(prune(l)))
        .unwrap()
}

/// Pruned under QAT: every kind of state a replica advances (step counters, masks, targets,
/// ranges and their counts).
fn pqat() -> PqatNet {
    fn wrap<L: WeightLayer>(layer: L) -> Pqat<L> {
        QatConfig::new().wrap(prune(layer)).unwrap()
    }
    plain()
        .try_map(|_, c| Ok::<_, ()>(wrap(c)), |_, l| Ok(wrap(l)))
        .unwrap()
}

/// One run of `model` on one device with batches of 40, and one on two with 20 each.
fn both<M: Classify + Clone>(
    model: M,
    dir: &std::path::Path,
) -> (learn::Learned<M>, learn::Learned<M>) {
    let data = data();
    let bytes = model.clone().into_record().into_bytes().unwrap();
    let fresh = || {
        model
            .clone()
            .load_record(burn::store::ModuleRecord::from_bytes(bytes.clone()).unwrap())
    };
    let one = learn::learn(fresh(), &data, &plan(&dir.join("one"), 40, 1)).unwrap();
    let two = learn::learn(fresh(), &data, &plan(&dir.join("two"), 20, 2)).unwrap();
    (one, two)
}

fn plan(dir: &std::path::Path, batch_size: usize, devices: usize) -> Plan {
    let mut plan = Plan::new(
        dir,
        2,
        batch_size,
        // SGD: a step proportional to the gradient, so a gradient of the wrong scale (the
        // replicas' sum instead of the global batch's mean) shows in the weights. (Adam would
        // hide it, and it turns rounding-sized gradient differences into whole steps.)
        OptimizerConfig::SgdCosine {
            learning_rate: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
        },
    );
    plan.devices = devices;
    plan.seed = 4;
    plan.augment = false;
    plan.dashboard = Dashboard::Log;
    plan
}

struct Snapshot {
    steps: Vec<u64>,
    masks: Vec<Vec<bool>>,
    ranges: Vec<(f32, f32)>,
    observed: Vec<u64>,
}

fn snapshot(m: &PqatNet) -> Snapshot {
    let mut layers: Vec<&Pqat<ConvBlock>> = vec![&m.conv1];
    for b in &m.blocks {
        layers.push(&b.dw);
        layers.push(&b.pw);
    }
    let mut s = Snapshot {
        steps: layers.iter().map(|l| l.inner.steps()).collect(),
        masks: layers.iter().map(|l| l.inner.mask_values()).collect(),
        ranges: layers.iter().filter_map(|l| l.output.range()).collect(),
        observed: layers.iter().map(|l| l.output.observed.get()).collect(),
    };
    s.steps.push(m.fc.inner.steps());
    s.masks.push(m.fc.inner.mask_values());
    s.ranges.extend(m.fc.output.range());
    s.observed.push(m.fc.output.observed.get());
    s
}

#[test]
fn pruning_on_two_devices_ends_where_one_device_with_the_doubled_batch_does() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = both(pruned(), dir.path());
    let layers = |m: &PrunedNet| {
        let mut l: Vec<&Prunable<ConvBlock>> = vec![&m.conv1];
        for b in &m.blocks {
            l.push(&b.dw);
            l.push(&b.pw);
        }
        let mut out: Vec<(u64, Vec<bool>, Vec<f32>)> = l
            .iter()
            .map(|l| (l.steps(), l.mask_values(), to_vec_f32(l.effective_weight())))
            .collect();
        out.push((
            m.fc.steps(),
            m.fc.mask_values(),
            to_vec_f32(m.fc.effective_weight()),
        ));
        out
    };
    let (a, b) = (layers(&one.model), layers(&two.model));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // 240 items in global batches of 40, 2 epochs: 12 optimizer steps, counted once each.
        assert_eq!((x.0, y.0), (12, 12), "layer {i}: step counters");
        assert!(
            x.1 == y.1,
            "layer {i}: masks differ from the one-device run's"
        );
        let pruned = y.1.iter().filter(|k| !**k).count() as f64 / y.1.len() as f64;
        assert!(
            (0.45..0.55).contains(&pruned),
            "layer {i}: sparsity {pruned}"
        );
        // The summed replica gradients are the global batch's mean gradient: the weights
        // differ by the order of float sums only (a sum instead of a mean moves them ~1e-5).
        let worst =
            x.2.iter()
                .zip(&y.2)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
        assert!(worst <= 1e-6, "layer {i}: weights differ by up to {worst}");
    }
    assert_eq!(one.history.len(), two.history.len());
    for (x, y) in one.history.iter().zip(&two.history) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-4,
            "loss {} vs {}",
            y.loss,
            x.loss
        );
        assert_eq!(x.val_accuracy, y.val_accuracy);
    }
}

#[test]
fn qat_ranges_on_two_devices_are_the_global_batch_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = both(pqat(), dir.path());
    let (a, b) = (snapshot(&one.model), snapshot(&two.model));
    assert!(a.steps.iter().all(|s| *s == 12), "{:?}", a.steps);
    assert_eq!(b.steps, a.steps, "step counters advanced once per replica");
    assert!(a.observed.iter().all(|s| *s == 12), "{:?}", a.observed);
    assert_eq!(
        b.observed, a.observed,
        "range updates counted once per replica"
    );
    for (i, (x, y)) in a.masks.iter().zip(&b.masks).enumerate() {
        let count = |m: &Vec<bool>| m.iter().filter(|k| !**k).count();
        assert_eq!(count(x), count(y), "layer {i}: pruned weights");
    }
    // Each replica fake-quantizes its share with the range it has just updated from that
    // share, so activations (and the ranges after them) differ from the one-device run's
    // slightly; the stored ranges are still the whole batch's.
    assert_eq!(a.ranges.len(), b.ranges.len());
    for (i, (x, y)) in a.ranges.iter().zip(&b.ranges).enumerate() {
        let tol = 0.01 * (x.1 - x.0);
        assert!(
            (x.0 - y.0).abs() <= tol && (x.1 - y.1).abs() <= tol,
            "layer {i}: range {y:?} on two devices, {x:?} on one"
        );
    }
}

/// A model that writes state which must agree across replicas from its own share of the batch:
/// the replicas disagree as soon as their shares differ.
#[derive(Module, Debug)]
struct Careless {
    fc: Linear,
    seen: StateTensor<1>,
}

impl Classify for Careless {
    fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        let [n, c, h, w] = x.dims();
        let x = x.reshape([n, c * h * w]);
        if x.device().is_autodiff() {
            self.seen.set(x.clone().mean().reshape([1]));
        }
        self.fc.forward(x)
    }
}

#[test]
fn replicas_that_disagree_on_shared_state_stop_the_run_and_say_which() {
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let device = Device::flex();
    let (x, _) = data.train.batch(&[0], None, &device).unwrap();
    let [_, c, h, w] = x.dims();
    let model = || Careless {
        // The keyword task: 12 classes.
        fc: LinearConfig::new(c * h * w, 12).init(&device),
        seen: StateTensor::new(Tensor::zeros([1], &device)),
    };

    // One device: nothing to disagree with.
    learn::learn(model(), &data, &plan(&dir.path().join("one"), 40, 1)).unwrap();

    let err = match learn::learn(model(), &data, &plan(&dir.path().join("two"), 20, 2)) {
        Ok(_) => panic!("replicas that wrote different values trained on"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("diverged") && err.contains("seen") && err.contains("epoch 1, step 1"),
        "{err}"
    );
}
