//! A few-second training run on the synthetic keywords: it learns, checkpoints, and resumes
//! exactly where an uninterrupted run would be.

use burn::module::Module;
use burn::tensor::Device;
use collab::checkpoint::{self, Manifest};
use collab::data::{self, SyntheticSize};
use collab::train::{self, OptimizerConfig, TrainConfig};
use collab::{ModelSpec, Network};
use collab_core::BnMode;
use collab_core::host::to_vec_f32;

fn setup(epochs: usize) -> (ModelSpec, Network, data::TaskData, TrainConfig) {
    let spec: ModelSpec = "ds-cnn-s".parse().unwrap();
    let device = Device::flex();
    device.seed(3);
    let network = spec.init(&device).unwrap().with_bn_mode(BnMode::Batch);
    let size = SyntheticSize {
        train: 360,
        val: 120,
    };
    let data = data::load(spec.task(), None, true, 5, size).unwrap();
    let config = TrainConfig {
        epochs,
        batch_size: 40,
        devices: 1,
        optimizer: OptimizerConfig::Adam {
            learning_rates: vec![3e-3],
        },
        seed: 9,
        patience: None,
        dashboard: collab::learn::Dashboard::Log,
    };
    (spec, network, data, config)
}

fn weights(network: &Network) -> Vec<f32> {
    let Network::DsCnn(m) = network else {
        unreachable!()
    };
    let mut all = to_vec_f32(m.fc.weight.val().reshape([-1]));
    all.extend(to_vec_f32(m.conv1.conv.weight.val().reshape([-1])));
    all.extend(to_vec_f32(m.blocks[3].pw.bn.running_mean.value()));
    all
}

#[test]
fn learns_checkpoints_and_resumes_identically() {
    let dir = tempfile::tempdir().unwrap();

    // Uninterrupted: 4 epochs. Both runs start from one saved initial model: burn's
    // initialisation RNG is process-global (other tests draw from it concurrently), and a clone
    // is no snapshot (BatchNorm running statistics are shared between clones).
    let (spec, network, data, config) = setup(4);
    let initial = network.clone().into_record().into_bytes().unwrap();
    let restore = |bytes: &burn::tensor::Bytes| {
        let (_, fresh, _, _) = setup(1);
        fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes.clone()).unwrap())
    };
    let full_dir = dir.path().join("full");
    let (full, history) = train::fit(
        network,
        &data,
        &config,
        Manifest::new(spec.clone(), "baseline", 9),
        Some(&full_dir),
        false,
    )
    .unwrap();
    let chance = 1.0 / 12.0;
    let best = history.iter().map(|h| h.val_accuracy).fold(0.0, f64::max);
    assert!(
        best > 3.0 * chance,
        "synthetic keywords should be learnt well above chance: {history:?}"
    );

    // Interrupted after 2 epochs, then resumed to 4 from the checkpoint alone.
    let (spec, _, data, config2) = setup(2);
    let part_dir = dir.path().join("part");
    let _ = train::fit(
        restore(&initial),
        &data,
        &config2,
        Manifest::new(spec.clone(), "baseline", 9),
        Some(&part_dir),
        false,
    )
    .unwrap();
    let (_, fresh, data, _) = setup(4);
    let (resumed, resumed_history) = train::fit(
        fresh,
        &data,
        &config,
        Manifest::new(spec.clone(), "baseline", 9),
        Some(&part_dir),
        true,
    )
    .unwrap();
    assert_eq!(resumed_history.len(), 4);
    let (a, b) = (weights(&resumed), weights(&full));
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max == 0.0,
        "resumed weights differ from the uninterrupted run by up to {max}"
    );
    let figures = |h: &[train::EpochMetrics]| {
        h.iter()
            .map(|m| (m.epoch, m.loss, m.train_accuracy, m.val_accuracy))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        figures(&resumed_history),
        figures(&history),
        "resumed metrics differ"
    );

    // The best checkpoint reloads with its manifest, and evaluates to its recorded accuracy.
    let (loaded, manifest) = checkpoint::load(&full_dir, &Device::flex()).unwrap();
    assert_eq!(manifest.model, spec);
    let recorded = manifest.metrics["val_accuracy"].as_f64().unwrap();
    let eval_net = loaded.with_bn_mode(BnMode::Batch).valid();
    let report = train::evaluate(|x| eval_net.forward(x), data.val.as_ref(), 64).unwrap();
    assert!(
        (report.accuracy - recorded).abs() < 1e-9,
        "{} vs {recorded}",
        report.accuracy
    );
    assert_eq!(report.samples, 120);
    assert_eq!(report.per_class.len(), 12);
    assert!(manifest.data.as_deref().unwrap().contains("360 samples"));
    let _ = full;
}

#[test]
fn broken_checkpoints_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = checkpoint::load(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("manifest.json") && err.contains("checkpoint folder"),
        "{err}"
    );
    std::fs::write(dir.path().join("manifest.json"), "{not json").unwrap();
    assert!(
        checkpoint::load(dir.path(), &Device::flex())
            .unwrap_err()
            .to_string()
            .contains("not a valid manifest")
    );
    let spec: ModelSpec = "ds-cnn-s".parse().unwrap();
    let net = spec.init(&Device::flex()).unwrap();
    checkpoint::save(dir.path(), &net, &Manifest::new(spec, "baseline", 0), None).unwrap();
    std::fs::write(dir.path().join("model.bpk"), b"truncated").unwrap();
    let err = checkpoint::load(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.bpk"), "{err}");
    assert!("mobilenet-v9".parse::<ModelSpec>().is_err());
}
