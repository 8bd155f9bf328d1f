//! Whole-model pruning (`WholePruning`): the same masks as the `Prunable` decorator on the same
//! schedule, global ranking as `GlobalPruning`, patterns through the transposed-convolution
//! view, and errors that name the weight.

use burn::module::{Module, Param, ParamGroup};
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use collab_core::WeightLayer;
use collab_core::host::to_vec_f32;
use collab_core::whole::{self, Selection};
use collab_prune::{
    GlobalPruning, Granularity, Prunable, PruneError, PruningConfig, PruningSchedule, Scope,
    WholePruning,
};

fn device() -> Device {
    Device::flex().autodiff()
}

/// The user's model, unchanged.
#[derive(Module, Debug)]
struct Mlp {
    a: Linear,
    b: Linear,
}

/// The same model written with the decorators.
#[derive(Module, Debug)]
struct Decorated {
    a: Prunable<Linear>,
    b: Prunable<Linear>,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            a: LinearConfig::new(12, 16).init(device),
            b: LinearConfig::new(16, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.b.forward(relu(self.a.forward(x)))
    }
}

impl Decorated {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.b.forward(relu(self.a.forward(x)))
    }
}

fn batch(step: u64, device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    device.seed(step);
    let x = Tensor::<2>::random([8, 12], Distribution::Normal(0.0, 1.0), device);
    let y: Vec<i64> = (0..8).map(|i| (i + step as i64) % 3).collect();
    (x, Tensor::from_data(TensorData::new(y, [8]), device))
}

fn step<M: Module>(
    model: M,
    optim: &mut ModuleOptimizer,
    forward: impl Fn(&M, Tensor<2>) -> Tensor<2>,
    step: u64,
) -> M {
    let device = device();
    let (x, y) = batch(step, &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(forward(&model, x), y);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(1e-2, model, grads)
}

/// `model`'s effective weights of `a` and `b`, flattened in burn's layout.
fn effective(model: &Mlp) -> [Vec<f32>; 2] {
    let plain = whole::strip(model.valid());
    [
        to_vec_f32(plain.a.weight.val()),
        to_vec_f32(plain.b.weight.val()),
    ]
}

#[test]
fn same_masks_and_weights_as_the_decorator() {
    let device = device();
    device.seed(3);
    let mlp = Mlp::new(&device);
    let config = PruningConfig::new(PruningSchedule::polynomial(0.0, 0.6, 0, 9).with_frequency(2));
    let mut deco = Decorated {
        a: config.wrap(mlp.a.clone()).unwrap(),
        b: config.wrap(mlp.b.clone()).unwrap(),
    };
    let pruning = WholePruning::new(config);
    let (mut whole_model, wrapped) = pruning.wrap(mlp).unwrap();
    assert_eq!(wrapped.wrapped.len(), 2);
    assert_eq!(wrapped.left_as_is.len(), 2, "the biases");

    let mut deco_optim = AdamConfig::new().init();
    let mut whole_optim = AdamConfig::new().init();
    for t in 1..=12 {
        deco = step(deco, &mut deco_optim, Decorated::forward, t);
        whole_model = pruning.advance(whole_model).unwrap();
        whole_model = step(whole_model, &mut whole_optim, Mlp::forward, t);
        let [a, b] = effective(&whole_model);
        assert_eq!(a, to_vec_f32(deco.a.effective_weight()), "a at step {t}");
        assert_eq!(b, to_vec_f32(deco.b.effective_weight()), "b at step {t}");
    }
    let report = pruning.report(&whole_model).unwrap();
    assert_eq!(
        collab_prune::whole::report(&whole_model).unwrap(),
        report,
        "the free function reports the same"
    );
    let deco_report = [deco.a.report("a.weight"), deco.b.report("b.weight")];
    for (w, d) in report.iter().zip(&deco_report) {
        assert_eq!(
            (w.pruned, w.zeros, w.step, w.target_sparsity),
            (d.pruned, d.zeros, d.step, d.target_sparsity),
            "{}",
            w.name
        );
    }
    assert!(report[0].pruned > 0);
}

#[test]
fn global_scope_ranks_like_global_pruning() {
    let device = device();
    device.seed(4);
    let mlp = Mlp::new(&device);
    let schedule = PruningSchedule::constant(0.6);
    let config = PruningConfig::new(schedule.clone()).with_scope(Scope::Global);
    let deco = Decorated {
        a: config.wrap(mlp.a.clone()).unwrap(),
        b: config.wrap(mlp.b.clone()).unwrap(),
    };
    let (deco, _) = GlobalPruning::new(schedule)
        .unwrap()
        .prune_to(deco, 0.6)
        .unwrap();
    let pruning = WholePruning::new(config);
    let (model, _) = pruning.wrap(mlp).unwrap();
    let model = pruning.prune_to(model, 0.6).unwrap();
    let [a, b] = effective(&model);
    assert_eq!(a, to_vec_f32(deco.a.effective_weight()));
    assert_eq!(b, to_vec_f32(deco.b.effective_weight()));
    let report = pruning.report(&model).unwrap();
    // One ranking: the layers end at different sparsities, 60% over both together.
    let pruned: usize = report.iter().map(|r| r.pruned).sum();
    let weights: usize = report.iter().map(|r| r.weights).sum();
    assert_eq!(pruned, (0.6 * weights as f64).round() as usize);
    assert_ne!(
        report[0].pruned * report[1].weights,
        report[1].pruned * report[0].weights
    );
}

#[derive(Module, Debug)]
struct Up {
    up: ConvTranspose2d,
}

#[test]
fn n_of_m_on_a_transposed_convolution_runs_along_its_input_channels() {
    let device = device();
    device.seed(5);
    // Weight [in = 8, out = 3, 2, 2]: output channels on axis 1.
    let model = Up {
        up: ConvTranspose2dConfig::new([8, 3], [2, 2]).init(&device),
    };
    let pruning = WholePruning::new(
        PruningConfig::new(PruningSchedule::constant(0.5))
            .with_granularity(Granularity::two_four()),
    );
    let (model, _) = pruning.wrap(model).unwrap();
    let model = pruning.prune_to(model, 0.5).unwrap();
    let w = to_vec_f32(whole::strip(model).up.weight.val());
    // In every run of 4 input channels, for each output channel and kernel position: 2 kept.
    for run in 0..2 {
        for out in 0..3 {
            for k in 0..4 {
                let kept = (0..4)
                    .filter(|i| w[((run * 4 + i) * 3 + out) * 4 + k] != 0.0)
                    .count();
                assert_eq!(kept, 2, "run {run}, out {out}, k {k}");
            }
        }
    }
}

/// A user type whose rank-2 parameter has no known output-channel axis.
#[derive(Module, Debug)]
struct Custom {
    table: Param<Tensor<2>>,
    fc: Linear,
}

#[test]
fn errors_name_the_weight_and_the_fix() {
    let device = device();
    let custom = || Custom {
        table: Param::from_tensor(Tensor::random(
            [8, 8],
            Distribution::Normal(0.0, 1.0),
            &device,
        )),
        fc: LinearConfig::new(6, 4).init(&device),
    };
    let schedule = PruningSchedule::constant(0.5);

    // Block pruning needs the [out, fan_in] view: unknown for `table` until declared.
    let block = PruningConfig::new(schedule.clone())
        .with_granularity(Granularity::Block { rows: 2, cols: 2 });
    let err = WholePruning::new(block.clone())
        .wrap(custom())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`table`") && err.contains("with_channel_axis"),
        "{err}"
    );
    let declared = Selection::all().with_channel_axis("table", 0);
    assert!(
        WholePruning::new(block)
            .with_selection(declared)
            .wrap(custom())
            .is_ok()
    );

    // 2:4 along 6 input channels of `fc`.
    let err = WholePruning::new(
        PruningConfig::new(schedule.clone()).with_granularity(Granularity::two_four()),
    )
    .with_selection(Selection::only(ParamGroup::from_paths(vec!["fc.weight"])))
    .wrap(custom())
    .unwrap_err();
    assert!(matches!(err, PruneError::Granularity { .. }), "{err}");
    assert!(err.to_string().contains("`fc.weight`"), "{err}");

    let pruning = WholePruning::new(PruningConfig::new(schedule));
    // Nothing selected.
    let err = pruning
        .clone()
        .with_selection(Selection::only(ParamGroup::from_paths(vec!["fc.wieght"])))
        .wrap(custom())
        .unwrap_err()
        .to_string();
    assert!(err.contains("matched no"), "{err}");
    // Wrapped twice.
    let (wrapped, _) = pruning.wrap(custom()).unwrap();
    let err = pruning.wrap(wrapped).unwrap_err().to_string();
    assert!(
        err.contains("already carries") && err.contains("strip"),
        "{err}"
    );
    // A step on a model that was never wrapped.
    let err = pruning.advance(custom()).unwrap_err().to_string();
    assert!(err.contains("WholePruning::wrap"), "{err}");
}
