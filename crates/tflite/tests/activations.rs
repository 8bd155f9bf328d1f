//! The elementwise int8 activations (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6) on
//! every int8 input at several input quantizations: our interpreter in TensorFlow Lite Micro's
//! arithmetic equals TensorFlow Lite Micro, in LiteRT's reference arithmetic equals LiteRT's
//! reference kernels, bit for bit.

mod common;

use collab_tflite::{ActOp, ActQ, Data, Flavor, Graph, Int8Builder, Interpreter, npy};

/// TFLite's asymmetric int8 quantization of `[lo, hi]` (widened to hold 0).
fn range_q(lo: f32, hi: f32) -> ActQ {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo) / 255.0;
    ActQ {
        scale,
        zero_point: (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32,
    }
}

/// One model per input quantization: the int8 input `[1, 256]` through each operator on its
/// own (six outputs), fed all 256 int8 values.
#[test]
fn activations_match_the_runtimes_on_every_int8_input() {
    let Some(tools) = common::tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<i8> = (-128..=127).map(|v| v as i8).collect();
    let ops = [
        ActOp::Logistic,
        ActOp::Tanh,
        ActOp::HardSwish,
        ActOp::LeakyRelu { alpha: 0.1 },
        ActOp::Relu,
        ActOp::Relu6,
        // The same three with output scales where TensorFlow Lite Micro's f64 division of the
        // scales and LiteRT's f32 one give different multipliers (see `tie_prone`).
        ActOp::HardSwish,
        ActOp::LeakyRelu { alpha: 0.5 },
        ActOp::Relu,
    ];
    let mut flavours_differ = [0usize; 9];
    let mut failures = Vec::new();
    for (k, (scale, zero_point)) in [
        (0.004f32, -3),
        (0.02, 0),
        (0.0625, 17),
        (0.1, -128),
        (0.37, 60),
    ]
    .into_iter()
    .enumerate()
    {
        let in_q = ActQ { scale, zero_point };
        let real = |q: i8| scale * (q as i32 - zero_point) as f32;
        let (lo, hi) = (real(-128), real(127));
        let mut b = Int8Builder::new();
        let x = b.input("x", &[1, 256], in_q).unwrap();
        for (i, op) in ops.into_iter().enumerate() {
            let out = match (op, i >= 6) {
                (_, true) => Some(tie_prone(op, scale)),
                (ActOp::HardSwish, _) => {
                    Some(range_q(-0.375, hi * (hi + 3.0).clamp(0.0, 6.0) / 6.0))
                }
                (ActOp::LeakyRelu { alpha }, _) => Some(range_q(alpha * lo, hi)),
                (ActOp::Relu, _) => Some(range_q(0.0, hi)),
                _ => None,
            };
            let y = b.activation(&format!("{op:?}"), x, op, out).unwrap();
            b.output(y);
        }
        let bytes = b.finish().unwrap();
        let model = dir.path().join(format!("acts{k}.tflite"));
        std::fs::write(&model, &bytes).unwrap();
        let graph = Graph::from_bytes(&bytes).unwrap();
        let inp = dir.path().join(format!("in{k}.npy"));
        npy::write(&inp, &[1, 256], &Data::I8(input.clone())).unwrap();
        let mut outputs = Vec::new();
        for (flavor, runtime) in [
            (Flavor::Micro, "tflm"),
            (Flavor::LiteRtReference, "litert_ref"),
        ] {
            let interp = Interpreter::with_flavor(&graph, flavor).unwrap();
            let ours = interp.run(&[Data::I8(input.clone())]).unwrap();
            let files: Vec<String> = ours
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let f = dir.path().join(format!("{runtime}{k}_{i}.npy"));
                    npy::write(&f, &[1, 256], o).unwrap();
                    f.to_string_lossy().into_owned()
                })
                .collect();
            let (code, report) = tools
                .tflite_check(
                    &model,
                    &[
                        "--inputs",
                        &inp.to_string_lossy(),
                        "--expect",
                        &files.join(","),
                        "--interpreters",
                        runtime,
                        "--no-cross",
                        "--int-tol",
                        "255",
                        "--atol",
                        "1e9",
                    ],
                )
                .unwrap();
            assert_eq!(code, 0, "{runtime}: {report}");
            for (i, op) in ops.iter().enumerate() {
                let c = &report["interpreters"][runtime]["vs_expect"][i];
                if c["max_abs_diff"].as_f64() != Some(0.0) {
                    failures.push(format!(
                        "{op:?} at input scale {scale}, zero point {zero_point}: {runtime} \
                         differs from ours: {c}"
                    ));
                }
            }
            outputs.push(ours);
        }
        for (i, op) in ops.iter().enumerate() {
            let (Data::I8(micro), Data::I8(reference)) = (&outputs[0][i], &outputs[1][i]) else {
                panic!("int8 outputs");
            };
            let mut distinct = micro.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() >= 10,
                "{op:?} at scale {scale}: only {} distinct outputs",
                distinct.len()
            );
            flavours_differ[i] += micro.iter().zip(reference).filter(|(a, b)| a != b).count();
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "inputs where TFLite Micro and LiteRT reference differ (of 5 × 256), per operator {:?}: \
         {flavours_differ:?}",
        ops
    );
    // RELU6 with the input's quantization is the same clamp in both runtimes; the tie-prone
    // cases show that each flavour follows its own runtime where they differ.
    assert_eq!(flavours_differ[5], 0);
    assert!(
        flavours_differ[6..].iter().all(|n| *n > 0),
        "{flavours_differ:?}"
    );
}

/// An output quantization for `op` after an input of scale `s` where the runtimes' multipliers
/// differ: RELU and LEAKY_RELU with `s / out = 255 / 2d` (an odd `d`, so some inputs land
/// exactly on a rounding tie), HARD_SWISH with the first output scale (searched) whose Q15
/// multiplier `s / 128 / out` differs between an f32 and an f64 division.
fn tie_prone(op: ActOp, s: f32) -> ActQ {
    use collab_tflite::fixed::{downscale_multiplier, quantize_multiplier};
    match op {
        ActOp::HardSwish => {
            let h = s / 128.0;
            let q15 = |m: f64| downscale_multiplier(quantize_multiplier(m).0);
            let scale = (0..100_000)
                .map(|k| s * (0.05 + k as f32 * 1e-5))
                .find(|o| q15(h as f64 / *o as f64) != q15((h / o) as f64))
                .expect("a scale whose multipliers differ");
            ActQ {
                scale,
                zero_point: -100,
            }
        }
        _ => ActQ {
            scale: s * 2.0 * 43.0 / 255.0,
            zero_point: -20,
        },
    }
}
