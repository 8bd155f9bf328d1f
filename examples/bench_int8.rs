//! Single-thread int8 latency: burn-collab's interpreter (its best kernels, AVX-512 VNNI where
//! the CPU has it; its AVX2 kernels, what CPUs without VNNI run; its portable kernels) vs LiteRT (XNNPACK, its optimised builtin kernels and its
//! reference kernels) on DS-CNN-S, -M and -L files exported by `collab::export`, on DS-CNN-L
//! pruned 50% (unstructured, in 32×4 blocks, and 2:4 on the pointwise and fully-connected layers,
//! where the opt-in N:M sparse kernel is also timed against the dense one) and clustered (16 per
//! tensor), and on MLPerf
//! Tiny's own int8 files (ResNet-8, KWS, VWW, the anomaly-detection autoencoder), all in one run
//! on one machine. Prints medians and ratios.
//!
//! ```text
//! cargo run --release --example bench_int8 [-- --runs 200]
//! ```
//!
//! Uses the published DS-CNN weights and real clips from `../shared` (or `COLLAB_SHARED`) for
//! the weights, calibration and the input; falls back to random weights and synthetic
//! features when they are absent. LiteRT timings need `pip install -r
//! ../shared/tools/requirements.txt`; without it only our numbers are printed.

use std::time::Instant;

use burn::tensor::Device;
use burn_collab::cluster::ClusteringConfig;
use burn_collab::data::mfcc::Frontend;
use burn_collab::data::speech::{SpeechCommands, Split};
use burn_collab::models::{DsCnnConfig, DsCnnSize, import};
use burn_collab::prune::{Granularity, PruningConfig, PruningSchedule};
use burn_collab::quant::Calibration;
use burn_collab::tflite::tools::Validators;
use burn_collab::tflite::{Data, Graph, Interpreter, Kernels, npy};
use burn_collab::workflow::export::{self, ExportOptions, Traceable};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Timed runs per engine (after 10 warm-up runs).
    #[arg(long, default_value_t = 200)]
    runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex();
    device.seed(0);
    let shared = std::env::var("COLLAB_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from("../shared"));
    let tools = Validators::find(&shared.join("tools"));
    let clips = SpeechCommands::open(&shared.join("data/speech_commands_12"))
        .ok()
        .map(|s| s.split(Split::Validation));
    let features = match &clips {
        Some(c) => {
            let chosen: Vec<_> = c.iter().step_by((c.len() / 100).max(1)).cloned().collect();
            Some(SpeechCommands::features(&chosen, &Frontend::new())?)
        }
        None => None,
    };
    let dir = tempfile::tempdir()?;
    println!(
        "{:<22} {:>9} {:>9} {:>11} {:>11} {:>11} {:>10} {:>9} {:>9}",
        "model",
        "ours ms",
        "avx2 ms",
        "portable ms",
        "xnnpack ms",
        "builtin ms",
        "ref ms",
        "ours/xnn",
        "ours/ref"
    );
    let prune =
        |g: Granularity| PruningConfig::new(PruningSchedule::constant(0.5)).with_granularity(g);
    for (size, name) in [
        (DsCnnSize::S, "s"),
        (DsCnnSize::M, "m"),
        (DsCnnSize::L, "l"),
    ] {
        let config = DsCnnConfig::new(size);
        let weights = shared.join(format!(
            "pretrained/ml-kws-for-mcu/ds_cnn_{name}.safetensors"
        ));
        let load = || -> Result<_, Box<dyn std::error::Error>> {
            Ok(match std::fs::read(&weights) {
                Ok(bytes) => import::ds_cnn(&config, &bytes, name, &device)?,
                Err(_) => config.init(&device)?,
            })
        };
        let x = match &features {
            Some(f) => {
                let idx: Vec<usize> = (0..f.len()).collect();
                f.batch(&idx, &device).0
            }
            None => burn::tensor::Tensor::<4>::random(
                [100, 1, 49, 10],
                burn::tensor::Distribution::Normal(-20.0, 10.0),
                &device,
            ),
        };
        let mut variants = vec![(format!("ds-cnn-{name}"), load()?.trace([1, 49, 10])?)];
        if size == DsCnnSize::L {
            for (label, g) in [
                ("50% unstructured", Granularity::Unstructured),
                ("50% block 32x4", Granularity::Block { rows: 32, cols: 4 }),
            ] {
                let cfg = prune(g);
                let pruned = load()?.try_map(
                    |_, c| {
                        let p = cfg.wrap(c)?;
                        p.prune_to(0.5)?;
                        Ok::<_, burn_collab::prune::PruneError>(p)
                    },
                    |_, l| Ok(l),
                )?;
                variants.push((format!("  {label}"), pruned.trace([1, 49, 10])?));
            }
            let clustered = load()?.try_map(
                |n, c| ClusteringConfig::new(16).wrap_named(n, c),
                |_, l| Ok(l),
            )?;
            variants.push(("  16 clusters".to_string(), clustered.trace([1, 49, 10])?));
            // 2:4 along input channels on the pointwise convolutions and the classifier (the
            // stem has one input channel, depthwise ones one per group: left dense).
            let two_four = prune(Granularity::two_four());
            let keep = prune(Granularity::Unstructured);
            let nm = load()?.try_map(
                |n, c| {
                    let p = if n.ends_with(".pw") {
                        two_four.wrap(c)?
                    } else {
                        keep.wrap(c)?
                    };
                    p.prune_to(if n.ends_with(".pw") { 0.5 } else { 0.0 })?;
                    Ok::<_, burn_collab::prune::PruneError>(p)
                },
                |_, l| {
                    let p = two_four.wrap(l)?;
                    p.prune_to(0.5)?;
                    Ok(p)
                },
            )?;
            variants.push(("  2:4 (pw + fc)".to_string(), nm.trace([1, 49, 10])?));
        }
        for (label, plan) in variants {
            let ranges = plan.calibrate([Ok(x.clone())], Calibration::MinMax)?;
            let bytes = export::to_tflite(&plan, Some(&ranges), &ExportOptions::default())?;
            let path = dir.path().join("model.tflite");
            export::write(&path, &bytes)?;
            let port = Interpreter::new(&Graph::from_bytes(&bytes)?)?.inputs()[0].clone();
            let first: Vec<f32> =
                burn_collab::core::host::to_vec_f32(x.clone().narrow(0, 0, 1).flatten::<1>(0, 3));
            let input: Vec<i8> = first
                .iter()
                .map(|v| ((v / port.scale).round() as i32 + port.zero_point).clamp(-128, 127) as i8)
                .collect();
            row(&label, &path, &input, args.runs, tools.as_ref())?;
        }
    }
    // MLPerf Tiny's own int8 files (their inputs: fixed pseudo-random int8 values).
    let mlperf = shared.join("models/mlperf_tiny");
    for (label, file) in [
        ("mlperf resnet8", "pretrainedResnet_quant.tflite"),
        ("mlperf kws (ds-cnn-s)", "kws_ref_model.tflite"),
        ("mlperf vww", "vww_96_int8.tflite"),
        ("mlperf ad01", "ad01_int8.tflite"),
    ] {
        let path = mlperf.join(file);
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{label:<22} (no {})", path.display());
            continue;
        };
        let port = Interpreter::new(&Graph::from_bytes(&bytes)?)?.inputs()[0].clone();
        let n: usize = port.shape.iter().product();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let input: Vec<i8> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 256) as i32 as i8
            })
            .collect();
        row(label, &path, &input, args.runs, tools.as_ref())?;
    }
    println!(
        "(single thread, batch 1, medians of {} runs; LiteRT timed in Python around invoke())",
        args.runs
    );
    Ok(())
}

/// One line of the table: `path` (an int8 file with one int8 input) on `input`, in our
/// interpreter with each kernel set and in LiteRT's three interpreters.
fn row(
    label: &str,
    path: &std::path::Path,
    input: &[i8],
    runs: usize,
    tools: Option<&Validators>,
) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let interp = Interpreter::new(&Graph::from_bytes(&bytes)?)?;
    let port = interp.inputs()[0].clone();
    let time = |interp: &Interpreter| -> Result<f64, Box<dyn std::error::Error>> {
        for _ in 0..10 {
            interp.run_i8(input)?;
        }
        let times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let _ = std::hint::black_box(interp.run_i8(input));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        Ok(median(times))
    };
    let ours = time(&interp)?;
    let mut avx2 = interp.clone();
    avx2.set_kernels(Kernels::Avx2);
    let ours_avx2 = time(&avx2)?;
    let mut portable = interp.clone();
    portable.set_kernels(Kernels::Portable);
    let ours_portable = time(&portable)?;
    let (mut xnn, mut builtin, mut reference) = (f64::NAN, f64::NAN, f64::NAN);
    if let Some(tools) = tools {
        let dir = tempfile::tempdir()?;
        let inp = dir.path().join("in.npy");
        npy::write(&inp, &port.shape, &Data::I8(input.to_vec()))?;
        let runs = runs.to_string();
        let (_, report) = tools.tflite_check(
            path,
            &[
                "--inputs",
                inp.to_str().unwrap_or_default(),
                "--interpreters",
                "litert_xnnpack,litert_builtin,litert_ref",
                "--no-cross",
                "--bench",
                &runs,
                "--threads",
                "1",
            ],
        )?;
        for b in report["bench"].as_array().into_iter().flatten() {
            let ms = b["median_ms"].as_f64().unwrap_or(f64::NAN);
            match b["interpreter"].as_str() {
                Some("litert_xnnpack") => xnn = ms,
                Some("litert_builtin") => builtin = ms,
                Some("litert_ref") => reference = ms,
                _ => {}
            }
        }
    }
    println!(
        "{:<22} {:>9.4} {:>9.4} {:>11.4} {:>11.4} {:>11.4} {:>10.4} {:>9.2} {:>9.2}",
        label,
        ours,
        ours_avx2,
        ours_portable,
        xnn,
        builtin,
        reference,
        ours / xnn,
        ours / reference
    );
    let mut sparse = interp.clone();
    sparse.set_kernels(Kernels::Sparse);
    if sparse.sparse_layers() > 0 {
        // The N:M kernel (opt-in) against the default dense one on the same file, in
        // alternating rounds (the machine's load drifts between them otherwise).
        let (mut s, mut d) = (vec![], vec![]);
        for _ in 0..5 {
            s.push(time(&sparse)?);
            d.push(time(&interp)?);
        }
        let (s, d) = (median(s), median(d));
        println!(
            "{:<22} {:>9.4} ms n:m kernel ({} layers) vs {:.4} ms dense: dense/n:m {:.2}; \
             n:m/xnn {:.2}",
            "    n:m kernel",
            s,
            sparse.sparse_layers(),
            d,
            d / s,
            s / xnn
        );
    }
    Ok(())
}
