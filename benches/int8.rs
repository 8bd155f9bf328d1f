//! The int8 interpreter, single thread, batch 1: DS-CNN-L (random weights, calibrated on random
//! features) dense and pruned 50% in 32×4 blocks, with the AVX-512 VNNI kernels (where the CPU
//! has them) and the portable ones. LiteRT comparisons are in `examples/bench_int8`.
//!
//! ```text
//! cargo bench --bench int8
//! ```

use burn::tensor::{Device, Distribution, Tensor};
use burn_collab::models::{DsCnnConfig, DsCnnSize};
use burn_collab::prune::{Granularity, PruningConfig, PruningSchedule};
use burn_collab::quant::Calibration;
use burn_collab::tflite::{Graph, Interpreter};
use burn_collab::workflow::export::{self, ExportOptions, Traceable};
use criterion::{Criterion, criterion_group, criterion_main};

fn interpreters() -> Vec<(String, Interpreter)> {
    let device = Device::flex();
    device.seed(0);
    let config = DsCnnConfig::new(DsCnnSize::L);
    let x = Tensor::<4>::random([32, 1, 49, 10], Distribution::Normal(-20.0, 10.0), &device);
    let dense = config
        .init(&device)
        .expect("model")
        .trace([1, 49, 10])
        .expect("trace");
    let prune = PruningConfig::new(PruningSchedule::constant(0.5))
        .with_granularity(Granularity::Block { rows: 32, cols: 4 });
    let sparse = config
        .init(&device)
        .expect("model")
        .try_map(
            |_, c| {
                let p = prune.wrap(c)?;
                p.prune_to(0.5)?;
                Ok::<_, burn_collab::prune::PruneError>(p)
            },
            |_, l| Ok(l),
        )
        .expect("prune")
        .trace([1, 49, 10])
        .expect("trace");
    let mut out = vec![];
    for (name, plan) in [
        ("ds-cnn-l dense", dense),
        ("ds-cnn-l 50% block 32x4", sparse),
    ] {
        let ranges = plan
            .calibrate([Ok(x.clone())], Calibration::MinMax)
            .expect("calibrate");
        let bytes =
            export::to_tflite(&plan, Some(&ranges), &ExportOptions::default()).expect("export");
        let graph = Graph::from_bytes(&bytes).expect("read");
        for portable in [false, true] {
            let mut interp = Interpreter::new(&graph).expect("interpreter");
            interp.set_portable(portable);
            let kernels = if portable {
                "portable"
            } else if interp.uses_vnni() {
                "vnni"
            } else {
                "portable (no VNNI on this CPU)"
            };
            out.push((format!("{name}, {kernels}"), interp));
        }
    }
    out
}

fn int8(c: &mut Criterion) {
    let mut group = c.benchmark_group("int8 interpreter, batch 1");
    for (name, interp) in interpreters() {
        let input: Vec<i8> = (0..490).map(|i| ((i * 37) % 256) as i8).collect();
        group.bench_function(name, |b| b.iter(|| interp.run_i8(&input).expect("run")));
    }
    group.finish();
}

criterion_group!(benches, int8);
criterion_main!(benches);
