//! Stopping and resuming mid-schedule gives the same masks as an uninterrupted run.

mod common;

use burn::module::Module;
use collab_core::WeightLayer;
use collab_core::host::to_vec_f32;
use collab_prune::{PruningConfig, PruningSchedule};
use common::{TinyNet, data, device, train};

fn config() -> PruningConfig {
    PruningConfig::new(PruningSchedule::polynomial(0.0, 0.6, 0, 60).with_frequency(10))
}

#[test]
fn save_load_continue_matches_an_uninterrupted_run() {
    let device = device();
    let set = data(96, 5);
    device.seed(11);
    let start = TinyNet::new(&config(), 8, &device).unwrap();

    // Uninterrupted: 80 steps (6 epochs of 6 batches; reshuffled per epoch from the seed).
    let full = train(start.clone(), &set, 36, 1, |_, _| {});
    let full = train(full, &set, 44, 2, |_, _| {});

    // Interrupted after 36 steps (between mask updates at 30 and 40): save, rebuild from scratch
    // with another init, load, continue. Adam restarts in both runs at step 36, so the only
    // state that crosses the boundary is the module's.
    let first = train(start, &set, 36, 1, |_, _| {});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pruned.bpk");
    first.clone().save_file(&path).unwrap();
    device.seed(999);
    let fresh = TinyNet::new(&config(), 8, &device).unwrap();
    assert_eq!(fresh.conv.steps(), 0);
    let loaded = fresh.load_file(&path);
    assert_eq!(loaded.conv.steps(), 36);
    assert_eq!(loaded.pw.mask_values(), first.pw.mask_values());
    let resumed = train(loaded, &set, 44, 2, |_, _| {});

    assert_eq!(resumed.conv.steps(), 80);
    for (a, b, name) in [
        (&full.conv, &resumed.conv, "conv"),
        (&full.dw, &resumed.dw, "dw"),
        (&full.pw, &resumed.pw, "pw"),
    ] {
        assert_eq!(
            a.mask_values(),
            b.mask_values(),
            "{name} masks differ after resume"
        );
        assert_eq!(
            to_vec_f32(a.effective_weight()),
            to_vec_f32(b.effective_weight()),
            "{name}"
        );
    }
    assert_eq!(full.fc.mask_values(), resumed.fc.mask_values());
    assert!((full.fc.report("fc").target_sparsity - 0.6).abs() < 1e-6);
}
