//! The N:M sparse kernel (CONV_2D and FULLY_CONNECTED on weights with at most 4 non-zeros in
//! every run of 8 input values, e.g. 2:4 along input channels): chosen at prepare time from the
//! weights alone when [`Kernels::Sparse`] is asked for, and the same integers as the dense and
//! portable kernels.

use collab_tflite::{
    ActQ, Activation, ConvLayer, ConvPadding, Graph, Int8Builder, Interpreter, Kernels,
};
use proptest::prelude::*;

/// Whether this CPU runs the sparse kernel (AVX-512 F/BW/VL, VNNI and VBMI).
fn sparse_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        [
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512vbmi",
        ]
        .iter()
        .all(|f| match *f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            "avx512vnni" => std::arch::is_x86_feature_detected!("avx512vnni"),
            _ => std::arch::is_x86_feature_detected!("avx512vbmi"),
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo + 1) as u64) as i32
    }
}

/// `rows × k` weights (`k` innermost, as TFLite's `[oc, kh, kw, ic]` and `[units, depth]`),
/// non-zero, then 2:4 along `k`: in every group of 4 (and the last partial one) at most 2 stay.
/// With `dense_run`, one group of one row keeps 3, which breaks the pattern.
fn two_four(rows: usize, k: usize, dense_run: bool, rng: &mut Rng) -> Vec<i8> {
    let mut w: Vec<i8> = (0..rows * k)
        .map(|_| {
            let v = rng.range(-127, 126);
            (if v >= 0 { v + 1 } else { v }) as i8
        })
        .collect();
    for r in 0..rows {
        for g in (0..k).step_by(4) {
            let len = (k - g).min(4);
            // Keep 2 (sometimes fewer) of the group, at random places.
            let keep = [rng.next() as usize % 4, rng.next() as usize % 4];
            let keep_fewer = rng.next().is_multiple_of(5);
            for j in 0..len {
                let kept = j == keep[0] || (!keep_fewer && j == keep[1]);
                if !kept {
                    w[r * k + g + j] = 0;
                }
            }
        }
    }
    if dense_run && k >= 8 {
        // Row `rows / 2`, first group: 3 non-zeros, and the next group of 4 its 2, so the run
        // of 8 holds at least 5.
        let r = rows / 2;
        for j in 0..3 {
            w[r * k + j] = 1 + j as i8;
        }
        w[r * k + 4] = 5;
        w[r * k + 5] = -5;
    }
    w
}

/// Run `graph` with every kernel set on `input`: all must agree. Returns the sparse kernel
/// set's sparse layer count and the default (`Best`) one's.
fn agree(bytes: &[u8], input: &[i8]) -> Result<(usize, usize), TestCaseError> {
    let graph = Graph::from_bytes(bytes).unwrap();
    let best = Interpreter::new(&graph).unwrap();
    let want = best.run_i8(input).unwrap();
    let mut sparse = 0;
    for kernels in [Kernels::Sparse, Kernels::Avx2, Kernels::Portable] {
        let mut other = best.clone();
        other.set_kernels(kernels);
        if kernels == Kernels::Sparse {
            sparse = other.sparse_layers();
        }
        prop_assert_eq!(&other.run_i8(input).unwrap(), &want, "{:?}", kernels);
    }
    Ok((sparse, best.sparse_layers()))
}

#[derive(Debug, Clone)]
struct ConvCase {
    shape: [usize; 4],
    kernel: [usize; 2],
    stride: usize,
    same: bool,
    units: usize,
    relu6: bool,
    out_scale: f32,
    dense_run: bool,
    seed: u64,
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..3, 1usize..7, 1usize..7, 1usize..80),
        prop::sample::select(vec![[1usize, 1], [1, 1], [3, 3], [1, 3], [2, 1]]),
        (1usize..3, any::<bool>()),
        (1usize..80, any::<bool>()),
        prop::sample::select(vec![0.1f32, 0.004, 0.0003]),
        (prop::bool::weighted(0.2), any::<u64>()),
    )
        .prop_filter("kernel fits", |(s, k, (_, same), ..)| {
            *same || (k[0] <= s.1 && k[1] <= s.2)
        })
        .prop_map(
            |(s, kernel, (stride, same), (units, relu6), out_scale, (dense_run, seed))| ConvCase {
                shape: [s.0, s.1, s.2, s.3],
                kernel,
                stride,
                same,
                units,
                relu6,
                out_scale,
                dense_run,
                seed,
            },
        )
}

fn check_conv(c: &ConvCase) -> Result<(), TestCaseError> {
    let mut rng = Rng(c.seed | 1);
    let [_, _, _, ic] = c.shape;
    let k = c.kernel[0] * c.kernel[1] * ic;
    let weight = two_four(c.units, k, c.dense_run, &mut rng);
    let scales: Vec<f32> = (0..c.units)
        .map(|_| rng.range(1, 100) as f32 * 1e-3)
        .collect();
    let bias: Vec<f32> = (0..c.units)
        .map(|_| rng.range(-1000, 1000) as f32 * 1e-3)
        .collect();
    let in_q = ActQ {
        scale: 0.05,
        zero_point: rng.range(-20, 20),
    };
    let out_q = ActQ {
        scale: c.out_scale,
        zero_point: rng.range(-128, 0),
    };
    let mut b = Int8Builder::new();
    let x = b.input("x", &c.shape, in_q).unwrap();
    let layer = ConvLayer {
        weight,
        shape: [c.units, c.kernel[0], c.kernel[1], ic],
        scales,
        bias: Some(bias),
        stride: [c.stride; 2],
        dilation: [1; 2],
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
        depthwise: false,
    };
    let y = b.conv2d("y", x, &layer, out_q).unwrap();
    b.output(y);
    let bytes = b.finish().unwrap();
    let input: Vec<i8> = (0..c.shape.iter().product::<usize>())
        .map(|_| rng.range(-128, 127) as i8)
        .collect();
    let (sparse, dense) = agree(&bytes, &input)?;
    prop_assert_eq!(dense, 0);
    let broken = c.dense_run && k >= 8;
    prop_assert_eq!(sparse, usize::from(sparse_cpu() && !broken));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// CONV_2D with 2:4 weights (1×1 and larger kernels, odd channel counts, SAME padding,
    /// strides, several blocks of 32 output channels with ragged tails, multipliers above 1)
    /// runs the sparse kernel (`Kernels::Sparse`) where the CPU has it and computes exactly what the dense AVX-512,
    /// AVX2 and portable kernels compute; a weight that breaks the pattern falls back to dense.
    #[test]
    fn sparse_conv_equals_dense_and_portable(c in conv_case()) {
        check_conv(&c)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(80))]

    /// FULLY_CONNECTED with 2:4 weights, batches above 1, any zero points: the same.
    #[test]
    fn sparse_fully_connected_equals_dense_and_portable(
        (batch, depth, units) in (1usize..4, 1usize..300, 1usize..200),
        (in_zp, out_zp) in (-128i32..128, -128i32..128),
        out_scale in prop::sample::select(vec![0.5f32, 0.05, 0.002]),
        (relu, dense_run) in (any::<bool>(), prop::bool::weighted(0.2)),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let mut b = Int8Builder::new();
        let x = b.input("x", &[batch, depth], ActQ { scale: 0.03, zero_point: in_zp }).unwrap();
        let w = two_four(units, depth, dense_run, &mut rng);
        let bias: Vec<f32> = (0..units).map(|_| rng.range(-128, 127) as f32 * 0.01).collect();
        let act = if relu { Activation::Relu } else { Activation::None };
        let out_q = ActQ { scale: out_scale, zero_point: out_zp };
        let y = b.fully_connected("fc", x, &w, units, 0.004, Some(&bias), act, out_q).unwrap();
        b.output(y);
        let bytes = b.finish().unwrap();
        let input: Vec<i8> = (0..batch * depth).map(|_| rng.range(-128, 127) as i8).collect();
        let (sparse, dense) = agree(&bytes, &input)?;
        prop_assert_eq!(dense, 0);
        let broken = dense_run && depth >= 8;
        prop_assert_eq!(sparse, usize::from(sparse_cpu() && !broken));
    }
}

/// Dense random weights never take the sparse kernel.
#[test]
fn dense_weights_keep_the_dense_kernel() {
    let mut rng = Rng(7);
    let mut b = Int8Builder::new();
    let q = ActQ {
        scale: 0.05,
        zero_point: 3,
    };
    let x = b.input("x", &[1, 4, 4, 16], q).unwrap();
    let layer = ConvLayer {
        weight: (0..32 * 16).map(|_| rng.range(1, 100) as i8).collect(),
        shape: [32, 1, 1, 16],
        scales: vec![0.01; 32],
        bias: None,
        stride: [1; 2],
        dilation: [1; 2],
        padding: ConvPadding::Same,
        activation: Activation::None,
        depthwise: false,
    };
    let y = b.conv2d("y", x, &layer, q).unwrap();
    b.output(y);
    let graph = Graph::from_bytes(&b.finish().unwrap()).unwrap();
    let mut interp = Interpreter::new(&graph).unwrap();
    interp.set_kernels(Kernels::Sparse);
    assert_eq!(interp.sparse_layers(), 0);
}
