//! The int8 interpreter, single thread, batch 1: DS-CNN-L (random weights, calibrated on random
//! features) dense and pruned 50% in 32×4 blocks, with the best kernels (AVX-512 VNNI where the
//! CPU has them), the AVX2 ones and the portable ones. LiteRT comparisons are in
//! `examples/bench_int8`.
//!
//! ```text
//! cargo bench --bench int8
//! ```

use burn::tensor::{Device, Distribution, Tensor};
use burn_collab::models::{DsCnnConfig, DsCnnSize};
use burn_collab::prune::{Granularity, PruningConfig, PruningSchedule};
use burn_collab::quant::Calibration;
use burn_collab::tflite::{Graph, Interpreter, Kernels};
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
        for kernels in [Kernels::Best, Kernels::Avx2, Kernels::Portable] {
            let mut interp = Interpreter::new(&graph).expect("interpreter");
            interp.set_kernels(kernels);
            out.push((format!("{name}, {}", interp.kernel_name()), interp));
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
