//! The int8 interpreter against the MLPerf Tiny KWS model and its golden output.

use collab_data::shared::require_shared;
use collab_tflite::{Data, Flavor, Graph, Interpreter, npy};

#[test]
fn mlperf_tiny_kws_model_matches_its_golden_output() {
    let tools = require_shared().join("tools/testdata");
    let graph = Graph::open(&tools.join("kws_ref_model.tflite")).unwrap();
    let interp = Interpreter::new(&graph).unwrap();
    let (shape, input) = npy::read(&tools.join("kws_input0.npy")).unwrap();
    assert_eq!(shape.iter().product::<usize>(), 490);
    let (_, expect) = npy::read(&tools.join("kws_expect0.npy")).unwrap();
    let out = interp.run(std::slice::from_ref(&input)).unwrap();
    assert_eq!(out, vec![expect]);
    let Data::I8(v) = &out[0] else { panic!() };
    assert_eq!(v.iter().position(|x| *x == 127), Some(5));
}

mod common;

/// 8 pseudo-random inputs around the input zero point, LiteRT's reference kernels as the truth:
/// our interpreter must agree exactly with them and with TFLite Micro.
#[test]
fn mlperf_tiny_kws_model_matches_litert_reference_on_random_inputs() {
    let Some(tools) = common::tools() else {
        return;
    };
    let model = tools.dir.join("testdata/kws_ref_model.tflite");
    let graph = Graph::open(&model).unwrap();
    let interp = Interpreter::new(&graph).unwrap();
    let reference = Interpreter::with_flavor(&graph, Flavor::LiteRtReference).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut lsb = 0f64;
    let mut informative = 0;
    for seed in 0..8u64 {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let input: Vec<i8> = (0..490)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Mostly mid-range values, so the softmax does not saturate.
                ((state % 97) as i32 - 48 + 83).clamp(-128, 127) as i8
            })
            .collect();
        let ours = interp.run_i8(&input).unwrap();
        if ours.iter().any(|v| *v > -128 && *v < 127) {
            informative += 1;
        }
        let (inp, exp) = (dir.path().join("in.npy"), dir.path().join("ours.npy"));
        let input_copy = input.clone();
        npy::write(&inp, &[1, 49, 10, 1], &Data::I8(input)).unwrap();
        npy::write(&exp, &[1, 12], &Data::I8(ours.clone())).unwrap();
        let diffs = tools
            .max_diffs(&model, &inp, &exp, &["tflm", "litert_xnnpack"])
            .unwrap();
        let reference = reference.run_i8(&input_copy).unwrap();
        npy::write(&exp, &[1, 12], &Data::I8(reference)).unwrap();
        let litert = tools
            .max_diffs(&model, &inp, &exp, &["litert_ref"])
            .unwrap();
        assert_eq!(litert["litert_ref"], 0.0, "seed {seed}: {ours:?}");
        assert_eq!(diffs["tflm"], 0.0, "seed {seed}: {ours:?}");
        lsb = lsb.max(diffs["litert_xnnpack"]);
    }
    assert!(lsb <= 8.0, "XNNPACK differs by {lsb} LSB");
    assert!(
        informative >= 4,
        "only {informative} of 8 outputs are not saturated"
    );
}
