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

/// MLPerf Tiny's four int8 files (narrow stems, 8- and 16-channel layers, 3×3 convolutions on
/// 16 channels, the autoencoder's fully-connected stack) on 4 pseudo-random inputs each: every
/// kernel set gives the same bytes, and TFLite Micro gives them too.
#[test]
fn mlperf_tiny_int8_files_run_alike_on_every_kernel_set_and_in_tflite_micro() {
    use collab_tflite::Kernels;
    let models = require_shared().join("models/mlperf_tiny");
    let tools = common::tools();
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "pretrainedResnet_quant.tflite",
        "vww_96_int8.tflite",
        "kws_ref_model.tflite",
        "ad01_int8.tflite",
    ] {
        let model = models.join(file);
        let interp = Interpreter::new(&Graph::open(&model).unwrap()).unwrap();
        let port = interp.inputs()[0].clone();
        let out_shape = interp.outputs()[0].shape.clone();
        let n: usize = port.shape.iter().product();
        for seed in 0..4u64 {
            let mut state = (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let input: Vec<i8> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as i8
                })
                .collect();
            let ours = interp.run_i8(&input).unwrap();
            for kernels in [Kernels::Avx2, Kernels::Portable] {
                let mut other = interp.clone();
                other.set_kernels(kernels);
                assert_eq!(other.run_i8(&input).unwrap(), ours, "{file} {kernels:?}");
            }
            if let Some(tools) = &tools {
                let (inp, exp) = (dir.path().join("in.npy"), dir.path().join("ours.npy"));
                npy::write(&inp, &port.shape, &Data::I8(input)).unwrap();
                npy::write(&exp, &out_shape, &Data::I8(ours)).unwrap();
                let diffs = tools.max_diffs(&model, &inp, &exp, &["tflm"]).unwrap();
                assert_eq!(diffs["tflm"], 0.0, "{file} seed {seed}");
            }
        }
    }
}

mod random_graphs {
    use collab_tflite::fixed::mbqm;
    use collab_tflite::{
        ActQ, Activation, ConvLayer, ConvPadding, Graph, Int8Builder, Interpreter, Kernels,
    };
    use proptest::prelude::*;

    #[derive(Debug)]
    struct Case {
        shape: [usize; 4],
        kernel: [usize; 2],
        stride: usize,
        same: bool,
        depthwise: bool,
        multiplier: usize,
        units: usize,
        relu6: bool,
        /// Dilation of both spatial axes.
        dilation: usize,
        /// Output scale: small ones give requantization multipliers above 1 (left shifts).
        out_scale: f32,
        seed: u64,
    }

    fn values(seed: u64, n: usize, lo: i32, hi: i32) -> Vec<i32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                lo + (s % (hi - lo + 1) as u64) as i32
            })
            .collect()
    }

    /// TFLite's conv formula, written as plainly as possible (the oracle).
    fn oracle(
        c: &Case,
        x: &[i8],
        w: &[i8],
        bias: &[i32],
        m: &[(i32, i32)],
        q: [i32; 4],
    ) -> Vec<i8> {
        let [n, h, wd, ic] = c.shape;
        let [kh, kw] = c.kernel;
        let d = c.dilation;
        let out = |size: usize, k: usize| {
            if c.same {
                size.div_ceil(c.stride)
            } else {
                (size - (k - 1) * d - 1) / c.stride + 1
            }
        };
        let (oh, ow) = (out(h, kh), out(wd, kw));
        let pad = |size: usize, k: usize, o: usize| {
            ((o - 1) * c.stride + (k - 1) * d + 1).saturating_sub(size) / 2
        };
        let (ph, pw) = if c.same {
            (pad(h, kh, oh), pad(wd, kw, ow))
        } else {
            (0, 0)
        };
        let oc = if c.depthwise {
            ic * c.multiplier
        } else {
            c.units
        };
        let [in_zp, out_zp, lo, hi] = q;
        let mut y = Vec::new();
        for b in 0..n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for o in 0..oc {
                        let mut acc = bias[o];
                        for fy in 0..kh {
                            for fx in 0..kw {
                                let iy = (oy * c.stride + fy * d) as isize - ph as isize;
                                let ix = (ox * c.stride + fx * d) as isize - pw as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let at = |i: usize| {
                                    x[((b * h + iy as usize) * wd + ix as usize) * ic + i] as i32
                                        - in_zp
                                };
                                if c.depthwise {
                                    acc += w[(fy * kw + fx) * oc + o] as i32 * at(o / c.multiplier);
                                } else {
                                    for i in 0..ic {
                                        acc += w[((o * kh + fy) * kw + fx) * ic + i] as i32 * at(i);
                                    }
                                }
                            }
                        }
                        y.push((mbqm(acc, m[o].0, m[o].1) + out_zp).clamp(lo, hi) as i8);
                    }
                }
            }
        }
        y
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..8, 1usize..8, 1usize..6),
            (1usize..4, 1usize..4),
            1usize..3,
            any::<bool>(),
            any::<bool>(),
            1usize..3,
            1usize..7,
            any::<bool>(),
            any::<u64>(),
        )
            .prop_filter("kernel fits", |(s, k, _, same, ..)| {
                *same || (k.0 <= s.1 && k.1 <= s.2)
            })
            .prop_map(
                |(s, k, stride, same, depthwise, multiplier, units, relu6, seed)| Case {
                    shape: [s.0, s.1, s.2, s.3],
                    kernel: [k.0, k.1],
                    stride,
                    same,
                    depthwise,
                    multiplier,
                    units,
                    relu6,
                    dilation: 1,
                    out_scale: 0.1,
                    seed,
                },
            )
    }

    /// Channel counts across several blocks of 32 with ragged tails (the AVX-512 kernels'
    /// blocking), dilation, and output scales that make some multipliers exceed 1.
    fn wide_case() -> impl Strategy<Value = Case> {
        (
            (1usize..3, 1usize..7, 1usize..7, 1usize..80),
            (1usize..4, 1usize..4),
            (1usize..3, 1usize..3),
            (any::<bool>(), any::<bool>(), any::<bool>()),
            (1usize..3, 1usize..80),
            prop::sample::select(vec![0.1f32, 0.004, 0.0003]),
            any::<u64>(),
        )
            .prop_filter("kernel fits", |(s, k, (_, d), (same, ..), ..)| {
                *same || ((k.0 - 1) * d < s.1 && (k.1 - 1) * d < s.2)
            })
            .prop_map(
                |(
                    s,
                    k,
                    (stride, dilation),
                    (same, depthwise, relu6),
                    (multiplier, units),
                    out_scale,
                    seed,
                )| Case {
                    shape: [s.0, s.1, s.2, s.3],
                    kernel: [k.0, k.1],
                    stride,
                    same,
                    depthwise,
                    multiplier,
                    units,
                    relu6,
                    dilation,
                    out_scale,
                    seed,
                },
            )
    }

    /// Build the one-convolution graph of `c`, run it with the fast and the portable kernels,
    /// and compare both with the oracle.
    fn check(c: &Case) -> Result<(), TestCaseError> {
        let [_, _, _, ic] = c.shape;
        let oc = if c.depthwise {
            ic * c.multiplier
        } else {
            c.units
        };
        let wshape = if c.depthwise {
            [1, c.kernel[0], c.kernel[1], oc]
        } else {
            [oc, c.kernel[0], c.kernel[1], ic]
        };
        let wn: usize = wshape.iter().product();
        let w: Vec<i8> = values(c.seed, wn, -127, 127)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let scales: Vec<f32> = values(c.seed ^ 7, oc, 1, 100)
            .into_iter()
            .map(|v| v as f32 * 1e-3)
            .collect();
        let bias: Vec<f32> = values(c.seed ^ 9, oc, -1000, 1000)
            .into_iter()
            .map(|v| v as f32 * 1e-3)
            .collect();
        let in_q = ActQ {
            scale: 0.05,
            zero_point: values(c.seed ^ 3, 1, -20, 20)[0],
        };
        let out_q = ActQ {
            scale: c.out_scale,
            zero_point: values(c.seed ^ 5, 1, -128, 0)[0],
        };
        let mut b = Int8Builder::new();
        let x = b.input("x", &c.shape, in_q).unwrap();
        let layer = ConvLayer {
            weight: w.clone(),
            shape: wshape,
            scales: scales.clone(),
            bias: Some(bias.clone()),
            stride: [c.stride; 2],
            dilation: [c.dilation; 2],
            padding: if c.same {
                ConvPadding::Same
            } else {
                ConvPadding::Valid
            },
            activation: if c.relu6 {
                Activation::Relu6
            } else {
                Activation::None
            },
            depthwise: c.depthwise,
        };
        let y = b.conv2d("y", x, &layer, out_q).unwrap();
        b.output(y);
        let bytes = b.finish().unwrap();
        let interp = Interpreter::new(&Graph::from_bytes(&bytes).unwrap()).unwrap();
        let input: Vec<i8> = values(c.seed ^ 11, c.shape.iter().product(), -128, 127)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let got = interp.run_i8(&input).unwrap();
        // The AVX2 kernels (CPUs without VNNI) and the portable ones compute the same.
        for kernels in [Kernels::Avx2, Kernels::Portable] {
            let mut other = interp.clone();
            other.set_kernels(kernels);
            prop_assert!(!other.uses_vnni());
            #[cfg(target_arch = "x86_64")]
            if kernels == Kernels::Avx2
                && std::arch::is_x86_feature_detected!("avx2")
                && !(c.depthwise && c.multiplier > 1)
            {
                prop_assert_eq!(other.kernel_name(), "avx2");
            }
            prop_assert_eq!(&other.run_i8(&input).unwrap(), &got, "{:?}", kernels);
        }
        // The writer's int32 bias and TFLite's multipliers, recomputed here.
        let qb: Vec<i32> = bias
            .iter()
            .zip(&scales)
            .map(|(b, s)| (*b as f64 / (in_q.scale * s) as f64).round() as i32)
            .collect();
        let m: Vec<(i32, i32)> = scales
            .iter()
            .map(|s| {
                collab_tflite::fixed::quantize_multiplier(
                    in_q.scale as f64 * *s as f64 / out_q.scale as f64,
                )
            })
            .collect();
        let (lo, hi) = if c.relu6 {
            (
                out_q.zero_point.max(-128),
                (out_q.zero_point + (6.0f32 / out_q.scale).round() as i32).min(127),
            )
        } else {
            (-128, 127)
        };
        let want = oracle(
            c,
            &input,
            &w,
            &qb,
            &m,
            [in_q.zero_point, out_q.zero_point, lo, hi],
        );
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The interpreter's fast convolutions (AVX-512 VNNI GEMM and depthwise kernels where the
        /// CPU has them; HWIO weights, zero skipping, AVX2 otherwise) compute exactly TFLite's
        /// formula, for convolutions and depthwise ones with any multiplier.
        #[test]
        fn conv_equals_the_plain_formula(c in case()) {
            check(&c)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(120))]

        /// The same over many channels (several blocks of 32 with ragged tails), dilation and
        /// requantization multipliers above 1.
        #[test]
        fn wide_conv_equals_the_plain_formula(c in wide_case()) {
            check(&c)?;
        }
    }
}

/// Operators and options the model exports do not reach (PAD, depthwise multiplier 2, strided
/// and padded average pooling, ADD with a fused ReLU, float input / output): a hand-built graph
/// run by TFLite Micro and LiteRT's reference kernels on random inputs.
#[test]
fn less_common_operators_match_the_runtimes() {
    use collab_tflite::{ActQ, Activation, ConvLayer, ConvPadding, Int8Builder, Padding};
    let Some(tools) = common::tools() else {
        return;
    };
    let q = |scale: f32, zero_point: i32| ActQ { scale, zero_point };
    let mut b = Int8Builder::new();
    let x = b.float_input("x", &[4, 9, 7, 3], q(0.02, 5)).unwrap();
    let weights = |n: usize, seed: i32| -> Vec<i8> {
        (0..n as i32)
            .map(|i| ((i * 37 + seed * 11) % 255 - 127) as i8)
            .collect()
    };
    // Explicit asymmetric padding that is not SAME → PAD + VALID conv.
    let conv = ConvLayer {
        weight: weights(4 * 3 * 2 * 3, 1),
        shape: [4, 3, 2, 3],
        scales: vec![0.01, 0.02, 0.015, 0.03],
        bias: Some(vec![0.1, -0.2, 0.05, 0.0]),
        stride: [2, 1],
        dilation: [1, 1],
        padding: ConvPadding::Explicit([2, 0, 1, 1]),
        activation: Activation::Relu,
        depthwise: false,
    };
    let y = b.conv2d("conv", x, &conv, q(0.05, -128)).unwrap();
    let dw = ConvLayer {
        weight: weights(3 * 3 * 8, 2),
        shape: [1, 3, 3, 8],
        scales: (0..8).map(|i| 0.01 + 0.002 * i as f32).collect(),
        bias: None,
        stride: [1, 1],
        dilation: [1, 1],
        padding: ConvPadding::Same,
        activation: Activation::Relu6,
        depthwise: true,
    };
    let z = b.conv2d("dw", y, &dw, q(0.03, -128)).unwrap();
    let pooled = b
        .avg_pool("pool", z, [2, 2], [2, 2], Padding::Same)
        .unwrap();
    let pw = ConvLayer {
        weight: weights(8 * 8, 3),
        shape: [8, 1, 1, 8],
        scales: vec![0.02],
        bias: Some(vec![0.3; 8]),
        stride: [1, 1],
        dilation: [1, 1],
        padding: ConvPadding::Valid,
        activation: Activation::None,
        depthwise: false,
    };
    let p = b.conv2d("pw", pooled, &pw, q(0.07, 3)).unwrap();
    let sum = b
        .add("add", p, pooled, Activation::Relu, q(0.06, -100))
        .unwrap();
    b.float_output("y", sum).unwrap();
    let bytes = b.finish().unwrap();
    let graph = Graph::from_bytes(&bytes).unwrap();
    let ops: Vec<&str> = graph.operators.iter().map(|o| o.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "QUANTIZE",
            "PAD",
            "CONV_2D",
            "DEPTHWISE_CONV_2D",
            "AVERAGE_POOL_2D",
            "CONV_2D",
            "ADD",
            "DEQUANTIZE"
        ]
    );
    let interp = Interpreter::new(&graph).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("ops.tflite");
    std::fs::write(&model, &bytes).unwrap();
    for seed in 0..3u32 {
        let input: Vec<f32> = (0..4 * 9 * 7 * 3)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977)) % 1000) as f32
                    / 250.0
                    - 2.0
            })
            .collect();
        let ours = interp.run(&[Data::F32(input.clone())]).unwrap().remove(0);
        let Data::F32(v) = &ours else {
            panic!("float output")
        };
        let mut distinct: Vec<u32> = v.iter().map(|f| f.to_bits()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() >= 10,
            "only {} distinct outputs",
            distinct.len()
        );
        let (inp, exp) = (dir.path().join("in.npy"), dir.path().join("ours.npy"));
        npy::write(&inp, &[4, 9, 7, 3], &Data::F32(input)).unwrap();
        npy::write(&exp, &interp.outputs()[0].shape, &ours).unwrap();
        let diffs = tools
            .max_diffs(&model, &inp, &exp, &["tflm", "litert_ref"])
            .unwrap();
        assert_eq!(diffs["tflm"], 0.0, "seed {seed}");
        assert_eq!(diffs["litert_ref"], 0.0, "seed {seed}");
    }
}

/// CONCATENATION of two convolutions and a pooled branch (an Inception block): LiteRT's
/// reference kernels and TFLite Micro compute what ours does. The same file with one input's
/// scale changed is refused by both runtimes when loaded, which is why the writer refuses it.
#[test]
fn concatenation_matches_the_runtimes_which_refuse_inputs_quantized_unlike_the_output() {
    use collab_tflite::{ActQ, Activation, ConvLayer, ConvPadding, Int8Builder, Padding};
    let Some(tools) = common::tools() else {
        return;
    };
    let q = |scale: f32, zero_point: i32| ActQ { scale, zero_point };
    let shared = q(0.07, 4);
    let mut b = Int8Builder::new();
    let x = b.input("x", &[3, 5, 4, 2], q(0.05, -10)).unwrap();
    let conv = |out: usize, k: usize, seed: i32| ConvLayer {
        weight: (0..(out * k * k * 2) as i32)
            .map(|i| ((i * 37 + seed * 11) % 255 - 127) as i8)
            .collect(),
        shape: [out, k, k, 2],
        scales: (0..out).map(|i| 0.004 + 0.001 * i as f32).collect(),
        bias: Some((0..out).map(|i| 0.05 * i as f32 - 0.1).collect()),
        stride: [1, 1],
        dilation: [1, 1],
        padding: ConvPadding::Same,
        activation: if seed == 2 {
            Activation::Relu
        } else {
            Activation::None
        },
        depthwise: false,
    };
    let a = b.conv2d("a", x, &conv(3, 1, 1), shared).unwrap();
    let c = b.conv2d("c", x, &conv(2, 3, 2), shared).unwrap();
    let p = b.max_pool("p", a, [3, 3], [1, 1], Padding::Same).unwrap();
    let cat = b.concatenation("cat", &[a, c, p], 3, shared).unwrap();
    b.output(cat);
    let bytes = b.finish().unwrap();
    let graph = Graph::from_bytes(&bytes).unwrap();
    let interp = Interpreter::new(&graph).unwrap();
    assert_eq!(interp.outputs()[0].shape, [3, 5, 4, 8]);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("concat.tflite");
    std::fs::write(&model, &bytes).unwrap();
    let input: Vec<i8> = (0..3 * 5 * 4 * 2)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8 as i8)
        .collect();
    let ours = interp.run_i8(&input).unwrap();
    let reference = Interpreter::with_flavor(&graph, Flavor::LiteRtReference)
        .unwrap()
        .run_i8(&input)
        .unwrap();
    assert_eq!(ours, reference);
    let (inp, exp) = (dir.path().join("in.npy"), dir.path().join("ours.npy"));
    npy::write(&inp, &[3, 5, 4, 2], &Data::I8(input)).unwrap();
    npy::write(&exp, &[3, 5, 4, 8], &Data::I8(ours)).unwrap();
    let diffs = tools
        .max_diffs(&model, &inp, &exp, &["tflm", "litert_ref"])
        .unwrap();
    assert_eq!(diffs["tflm"], 0.0);
    assert_eq!(diffs["litert_ref"], 0.0);

    // Input `c` at another scale: a file the writer would not write.
    let mut m = collab_tflite::tflite::root_as_model(&bytes)
        .unwrap()
        .unpack();
    let tensors = m.subgraphs.as_mut().unwrap()[0].tensors.as_mut().unwrap();
    let c_tensor = tensors
        .iter_mut()
        .find(|t| t.name.as_deref() == Some("c"))
        .unwrap();
    c_tensor.quantization.as_mut().unwrap().scale = Some(vec![0.09]);
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = m.pack(&mut fbb);
    fbb.finish(root, Some("TFL3"));
    let bad = dir.path().join("mismatched.tflite");
    std::fs::write(&bad, fbb.finished_data()).unwrap();
    assert!(Interpreter::new(&Graph::open(&bad).unwrap()).is_err());
    let inputs = inp.to_string_lossy();
    for runtime in ["tflm", "litert_ref"] {
        let (code, report) = tools
            .tflite_check(&bad, &["--interpreters", runtime, "--inputs", &inputs])
            .unwrap();
        assert_eq!(
            code, 3,
            "{runtime} loads a CONCATENATION with mismatched scales: {report}"
        );
    }
}

/// MUL, SUB and ADD broadcasting a per-channel map `[n, 1, 1, c]` over a map both ways, by a
/// constant, and with a fused ReLU, at scales whose multipliers differ in float and double:
/// TFLite Micro equals our Micro flavour, LiteRT's reference kernels our reference flavour.
#[test]
fn broadcasting_mul_sub_add_match_the_runtimes() {
    use collab_tflite::{ActQ, Activation, Int8Builder, Padding};
    let Some(tools) = common::tools() else {
        return;
    };
    let q = |scale: f32, zero_point: i32| ActQ { scale, zero_point };
    let mut b = Int8Builder::new();
    let x = b.float_input("x", &[4, 5, 6, 3], q(0.0173, 7)).unwrap();
    let gate = b
        .avg_pool("gap", x, [5, 6], [1, 1], Padding::Valid)
        .unwrap();
    let scaled = b
        .mul("se", x, gate, Activation::None, q(0.0091, -3))
        .unwrap();
    let centred = b
        .sub("centre", gate, x, Activation::None, q(0.0291, 4))
        .unwrap();
    let c = b.constant("c", &[3], &[-90, 17, 127], q(0.011, 3)).unwrap();
    let shifted = b
        .sub("shift", centred, c, Activation::Relu, q(0.0213, -128))
        .unwrap();
    let times = b
        .mul("times", scaled, c, Activation::None, q(0.0057, 9))
        .unwrap();
    let sum = b
        .add("sum", times, shifted, Activation::None, q(0.0337, -11))
        .unwrap();
    let y = b
        .add("bias", sum, gate, Activation::Relu6, q(0.0251, -128))
        .unwrap();
    b.float_output("y", y).unwrap();
    let bytes = b.finish().unwrap();
    let graph = Graph::from_bytes(&bytes).unwrap();
    let ops: Vec<&str> = graph.operators.iter().map(|o| o.op.as_str()).collect();
    assert_eq!(
        ops,
        [
            "QUANTIZE",
            "AVERAGE_POOL_2D",
            "MUL",
            "SUB",
            "SUB",
            "MUL",
            "ADD",
            "ADD",
            "DEQUANTIZE"
        ]
    );
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("elementwise.tflite");
    std::fs::write(&model, &bytes).unwrap();
    for seed in 0..3u32 {
        let input: Vec<f32> = (0..4 * 5 * 6 * 3)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed * 977)) % 1000) as f32
                    / 250.0
                    - 2.0
            })
            .collect();
        let inp = dir.path().join("in.npy");
        npy::write(&inp, &[4, 5, 6, 3], &Data::F32(input.clone())).unwrap();
        for (flavor, runtime) in [
            (Flavor::Micro, "tflm"),
            (Flavor::LiteRtReference, "litert_ref"),
        ] {
            let interp = Interpreter::with_flavor(&graph, flavor).unwrap();
            let ours = interp.run(&[Data::F32(input.clone())]).unwrap().remove(0);
            let Data::F32(v) = &ours else {
                panic!("float output")
            };
            let mut distinct: Vec<u32> = v.iter().map(|f| f.to_bits()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert!(
                distinct.len() >= 10,
                "only {} distinct outputs",
                distinct.len()
            );
            let exp = dir.path().join("ours.npy");
            npy::write(&exp, &interp.outputs()[0].shape, &ours).unwrap();
            let diffs = tools.max_diffs(&model, &inp, &exp, &[runtime]).unwrap();
            assert_eq!(diffs[runtime], 0.0, "seed {seed}, {runtime}");
        }
    }
}

/// FULLY_CONNECTED written by the builder: the SIMD kernels (AVX-512 VNNI, AVX2) give the
/// portable kernel's output for both flavors, and a profiled run gives the plain run's output
/// with one entry per operator.
mod fully_connected {
    use collab_tflite::{ActQ, Activation, Data, Flavor, Graph, Int8Builder, Interpreter, Kernels};
    use proptest::prelude::*;

    fn values(seed: u64, n: usize) -> Vec<i8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 256) as i32 as u8 as i8
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]

        #[test]
        fn fully_connected_kernels_agree(
            (batch, depth, units) in (1usize..4, 1usize..300, 1usize..200),
            (in_zp, out_zp) in (-128i32..128, -128i32..128),
            out_scale in prop::sample::select(vec![0.5f32, 0.05, 0.002]),
            relu in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut b = Int8Builder::new();
            let x = b.input("x", &[batch, depth], ActQ { scale: 0.03, zero_point: in_zp }).unwrap();
            let w = values(seed, units * depth);
            let bias: Vec<f32> = values(seed ^ 1, units).iter().map(|v| *v as f32 * 0.01).collect();
            let act = if relu { Activation::Relu } else { Activation::None };
            let out_q = ActQ { scale: out_scale, zero_point: out_zp };
            let y = b.fully_connected("fc", x, &w, units, 0.004, Some(&bias), act, out_q).unwrap();
            b.output(y);
            let graph = Graph::from_bytes(&b.finish().unwrap()).unwrap();
            let input = values(seed ^ 2, batch * depth);
            for flavor in [Flavor::Micro, Flavor::LiteRtReference] {
                let mut interp = Interpreter::with_flavor(&graph, flavor).unwrap();
                let got = interp.run_i8(&input).unwrap();
                let (outs, ops) = interp.run_profiled(&[Data::I8(input.clone())]).unwrap();
                prop_assert_eq!(&outs, &vec![Data::I8(got.clone())]);
                prop_assert_eq!(ops.len(), 1);
                prop_assert_eq!(&ops[0].op, "FULLY_CONNECTED");
                prop_assert_eq!(ops[0].kernel, interp.kernel_name());
                for kernels in [Kernels::Avx2, Kernels::Portable] {
                    interp.set_kernels(kernels);
                    prop_assert_eq!(&interp.run_i8(&input).unwrap(), &got, "{:?} {:?}", kernels, flavor);
                }
                prop_assert_eq!(interp.kernel_name(), "portable");
            }
        }
    }
}
