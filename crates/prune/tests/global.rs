//! Global magnitude ranking across a model, and the model-wide report.

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::Device;
use collab_core::PlainLayer;
use collab_prune::{GlobalPruning, Prunable, PruningConfig, PruningSchedule, Scope, model_report};

#[derive(Module, Debug)]
struct TwoLayers {
    big: Prunable<Linear>,
    small: Prunable<Linear>,
    blocks: Vec<Prunable<burn::nn::conv::Conv2d>>,
}

fn model(device: &Device) -> TwoLayers {
    let config = PruningConfig::new(PruningSchedule::constant(0.5)).with_scope(Scope::Global);
    // `big` has weights of magnitude ~1, `small` of ~0.01: a global ranking prunes `small` first.
    let big = LinearConfig::new(10, 10)
        .init(device)
        .map_weight(|w| w.abs() + 1.0);
    let small = LinearConfig::new(10, 10)
        .init(device)
        .map_weight(|w| w.abs() * 0.01);
    TwoLayers {
        big: config.wrap(big).unwrap(),
        small: config.wrap(small).unwrap(),
        blocks: vec![
            config
                .wrap(
                    Conv2dConfig::new([2, 2], [1, 1])
                        .init(device)
                        .map_weight(|w| w.abs() + 2.0),
                )
                .unwrap(),
        ],
    }
}

#[test]
fn global_ranking_prunes_the_small_layer_first() {
    let device = Device::flex();
    let global = GlobalPruning::new(PruningSchedule::constant(0.5)).unwrap();
    // 204 weights; 102 pruned: all 100 of `small`, then the 2 smallest of `big`.
    let (model, report) = global.prune_to(model(&device), 0.5).unwrap();
    let by_name = |n: &str| report.iter().find(|r| r.name == n).unwrap().clone();
    assert_eq!(by_name("small").pruned, 100);
    assert_eq!(by_name("big").pruned, 2);
    assert_eq!(by_name("blocks.0").pruned, 0);
    // The masks were written into the model.
    assert_eq!(
        model.small.mask_values().iter().filter(|k| !**k).count(),
        100
    );
    assert_eq!(model.big.report("big").pruned, 2);
    assert!((model.small.report("small").target_sparsity - 0.5).abs() < 1e-6);
    // And the model-wide report reads them back.
    let again = model_report(&model).unwrap();
    assert_eq!(again, report);
    assert_eq!(again.iter().map(|r| r.pruned).sum::<usize>(), 102);
}

#[test]
fn global_update_follows_the_schedule() {
    let device = Device::flex();
    let global =
        GlobalPruning::new(PruningSchedule::polynomial(0.0, 0.5, 0, 4).with_frequency(2)).unwrap();
    let m = model(&device);
    // Counters at 0: step 1 is not an update step (updates at 0, 2, 4).
    let (m, report) = global.update(m).unwrap();
    assert!(report.is_none());
    m.big.step.set(1);
    m.small.step.set(1);
    m.blocks[0].step.set(1);
    let (m, report) = global.update(m).unwrap();
    let total: usize = report.unwrap().iter().map(|r| r.pruned).sum();
    let want = collab_prune::mask::prune_count(204, global.schedule.sparsity_at(2));
    assert_eq!(total, want);
    assert_eq!(m.small.report("s").pruned, total.min(100));
}

#[test]
fn model_report_rejects_stacks_it_cannot_read() {
    #[derive(Module, Debug)]
    struct Stacked {
        layer: Prunable<Prunable<Linear>>,
    }
    let device = Device::flex();
    let config = PruningConfig::new(PruningSchedule::constant(0.5));
    let inner = config.wrap(LinearConfig::new(4, 4).init(&device)).unwrap();
    let model = Stacked {
        layer: config.wrap(inner).unwrap(),
    };
    let err = model_report(&model).unwrap_err();
    assert!(err.to_string().contains("`layer`"), "{err}");
}
