//! Same seed, same masks and accuracy (its own test binary: burn's RNG is process-global, so
//! no other test may draw from it concurrently).

mod common;

use collab_core::WeightLayer;
use collab_core::host::to_vec_f32;
use collab_prune::{PruningConfig, PruningSchedule};
use common::{TinyNet, accuracy, data, device, train};

fn run(seed: u64) -> (Vec<Vec<bool>>, Vec<f32>, f64) {
    let device = device();
    device.seed(seed);
    let config =
        PruningConfig::new(PruningSchedule::polynomial(0.0, 0.5, 0, 40).with_frequency(10));
    let model = TinyNet::new(&config, 8, &device).unwrap();
    let set = data(128, seed);
    let model = train(model, &set, 60, seed, |_, _| {});
    let masks = vec![
        model.conv.mask_values(),
        model.dw.mask_values(),
        model.pw.mask_values(),
        model.fc.mask_values(),
    ];
    let fc = to_vec_f32(model.fc.effective_weight());
    (masks, fc, accuracy(&model, &data(128, seed + 1)))
}

#[test]
fn same_seed_gives_same_masks_weights_and_accuracy() {
    let a = run(5);
    let b = run(5);
    assert_eq!(a.0, b.0, "masks differ between two runs with the same seed");
    assert_eq!(
        a.1, b.1,
        "weights differ between two runs with the same seed"
    );
    assert_eq!(a.2, b.2);
    let c = run(6);
    assert_ne!(a.1, c.1, "another seed should give other weights");
}
