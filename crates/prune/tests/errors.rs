//! Bad input gives a typed error that says what and how to fix it; never a panic.

use burn::nn::LinearConfig;
use burn::nn::conv::Conv2dConfig;
use burn::tensor::Device;
use collab_prune::{Granularity, PruneError, PruningConfig, PruningSchedule, Scope};

#[test]
fn bad_configurations_are_typed_errors() {
    let device = Device::flex();
    let fc = || LinearConfig::new(8, 4).init(&device);
    let cases: Vec<(PruningConfig, &str)> = vec![
        (PruningConfig::new(PruningSchedule::constant(1.0)), "[0, 1)"),
        (
            PruningConfig::new(PruningSchedule::constant(-0.2)),
            "[0, 1)",
        ),
        (
            PruningConfig::new(PruningSchedule::polynomial(0.0, 0.5, 100, 10)),
            "begin_step < end_step",
        ),
        (
            PruningConfig::new(PruningSchedule::constant(0.5).with_frequency(0)),
            "frequency is 0",
        ),
        (
            PruningConfig::new(PruningSchedule::constant(0.5))
                .with_granularity(Granularity::NOfM { n: 4, m: 2 }),
            "0 < N < M",
        ),
        (
            PruningConfig::new(PruningSchedule::constant(0.5))
                .with_granularity(Granularity::two_four())
                .with_scope(Scope::Global),
            "Scope::Layer",
        ),
    ];
    for (config, needle) in cases {
        let err = config.wrap(fc()).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{err} should contain {needle}"
        );
    }
}

#[test]
fn patterns_that_do_not_fit_the_layer_are_rejected() {
    let device = Device::flex();
    let config = PruningConfig::new(PruningSchedule::constant(0.5))
        .with_granularity(Granularity::two_four());
    let depthwise = Conv2dConfig::new([8, 8], [3, 3])
        .with_groups(8)
        .init(&device);
    let err = config.wrap(depthwise.clone()).unwrap_err();
    assert!(matches!(err, PruneError::Granularity { .. }));
    assert!(err.to_string().contains("depthwise"), "{err}");
    // Wrapped by name, the error leads with the name.
    let err = config.wrap_named("blocks.2.dw", depthwise).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("blocks.2.dw (conv2d [8, 1, 3, 3] depthwise)"),
        "{err}"
    );
    let odd_inputs = LinearConfig::new(6, 4).init(&device);
    assert!(
        config
            .wrap(odd_inputs)
            .unwrap_err()
            .to_string()
            .contains("not a multiple of 4")
    );
    assert!(config.wrap(LinearConfig::new(8, 3).init(&device)).is_ok());
}

#[test]
fn bad_one_shot_calls_are_typed_errors() {
    let device = Device::flex();
    let layer = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(LinearConfig::new(4, 2).init(&device))
        .unwrap();
    assert!(matches!(
        layer.prune_to(1.5),
        Err(PruneError::Sparsity { .. })
    ));
    assert!(matches!(
        layer.set_mask(vec![true; 3], 0.0),
        Err(PruneError::Core(_))
    ));
    // NaN weights cannot be ranked.
    let nan = PruningConfig::new(PruningSchedule::constant(0.5))
        .wrap(collab_core::PlainLayer::map_weight(
            LinearConfig::new(4, 2).init(&device),
            |w| w / 0.0 * 0.0,
        ))
        .unwrap();
    let err = nan.prune_to(0.5).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}
