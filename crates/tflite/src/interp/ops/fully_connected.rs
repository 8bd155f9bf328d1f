//! Int8 FULLY_CONNECTED: `out[b, u] = clamp(requant_u(bias[u] + Σ_d w[u, d]·(x[b, d] − zp)) +
//! out_zp)` for input `[batches, depth]`, weights `[units, depth]`, output `[batches, units]`.
//!
//! Two kernels compute the same integers (tests compare them on random shapes, zero points,
//! per-tensor and per-unit multipliers, both flavors):
//! - the portable loops, on every CPU;
//! - a matrix–vector product on the convolution GEMM's packed weights (AVX-512 VNNI, else AVX2;
//!   `crate::kernels::vnni::fc`), the weights packed once when the interpreter is built.
//!
//! Requantization follows the [`Flavor`]: TFLite Micro rounds twice
//! (`MultiplyByQuantizedMultiplier`, [`mbqm`]), LiteRT's reference kernel once
//! ([`mbqm_single`]).

use crate::TfliteError;
use crate::fixed::quantize_multiplier;
use crate::fixed::{mbqm, mbqm_single};
use crate::interp::prepare::Ctx;
use crate::interp::{Flavor, Kernels, Step};
use crate::kernels::Tier;
use crate::reader::Options;

/// A FULLY_CONNECTED layer, prepared.
#[derive(Clone, Debug)]
pub(crate) struct FcKernel {
    pub(crate) input: usize,
    pub(crate) output: usize,
    pub(crate) batches: usize,
    pub(crate) depth: usize,
    pub(crate) units: usize,
    /// `[units, depth]`.
    filter: Vec<i8>,
    bias: Vec<i32>,
    /// `−` the input zero point.
    input_offset: i32,
    output_offset: i32,
    /// TFLite's `(multiplier, shift)` per unit (all equal for per-tensor weights).
    multiplier: Vec<i32>,
    shift: Vec<i32>,
    act: [i32; 2],
    /// The weights packed for the SIMD kernels (CPUs that have them).
    fast: Option<FastFc>,
}

/// A FULLY_CONNECTED layer prepared for the SIMD kernels.
#[derive(Clone, Debug)]
enum FastFc {
    /// AVX-512 VNNI (`vpdpbusd`).
    Vnni(crate::kernels::vnni::Packed, crate::kernels::vnni::Requant),
    /// AVX2 (`vpmaddwd`).
    Avx2(
        crate::kernels::vnni::avx2::Packed16,
        crate::kernels::vnni::Requant,
    ),
    /// N:M-sparse weights, AVX-512 VNNI + VBMI (`crate::kernels::vnni::sparse`).
    Sparse(
        crate::kernels::vnni::sparse::SparsePacked,
        crate::kernels::vnni::Requant,
    ),
}

impl FcKernel {
    /// A layer reading tensor `input` (`batches · depth` int8) and writing `output`, with
    /// `filter` `[units, depth]`, `bias` `[units]`, per-unit `(multiplier, shift)` and the
    /// activation range `act`; packed for the fastest kernels this CPU has.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        [input, output]: [usize; 2],
        [batches, depth, units]: [usize; 3],
        filter: Vec<i8>,
        bias: Vec<i32>,
        [input_offset, output_offset]: [i32; 2],
        multiplier: Vec<i32>,
        shift: Vec<i32>,
        act: [i32; 2],
    ) -> Self {
        debug_assert_eq!(filter.len(), units * depth);
        debug_assert!(bias.len() == units && multiplier.len() == units && shift.len() == units);
        let mut k = Self {
            input,
            output,
            batches,
            depth,
            units,
            filter,
            bias,
            input_offset,
            output_offset,
            multiplier,
            shift,
            act,
            fast: None,
        };
        k.set_kernels(Kernels::Best);
        k
    }

    /// Repack the weights for `kernels` on this CPU (`Portable`: none).
    pub(crate) fn set_kernels(&mut self, kernels: Kernels) {
        let tier = Tier::of(kernels);
        if tier == Tier::Portable {
            self.fast = None;
            return;
        }
        // The GEMM's weight layout is `[k, oc]` (HWIO of a 1×1 convolution).
        let (depth, units) = (self.depth, self.units);
        let mut kio = vec![0i32; depth * units];
        for u in 0..units {
            for d in 0..depth {
                kio[d * units + u] = self.filter[u * depth + d] as i32;
            }
        }
        let zp = -self.input_offset;
        let rq = crate::kernels::vnni::Requant::new(
            &self.multiplier,
            &self.shift,
            self.output_offset,
            self.act,
        );
        if Tier::sparse(kernels)
            && let Some(p) =
                crate::kernels::vnni::sparse::SparsePacked::new(&kio, depth, units, &self.bias, zp)
        {
            self.fast = Some(FastFc::Sparse(p, rq));
            return;
        }
        self.fast = Some(if tier == Tier::Vnni {
            FastFc::Vnni(
                crate::kernels::vnni::Packed::new(&kio, depth, units, &self.bias, zp),
                rq,
            )
        } else {
            FastFc::Avx2(
                crate::kernels::vnni::avx2::Packed16::new(&kio, depth, units, &self.bias, zp),
                rq,
            )
        });
    }

    /// `"avx512-vnni"`, `"avx512-vnni-sparse"` (N:M weights), `"avx2"` or `"portable"`: the
    /// kernel [`run`](Self::run) uses.
    pub(crate) fn kernel_name(&self) -> &'static str {
        match self.fast {
            Some(FastFc::Vnni(..)) => "avx512-vnni",
            Some(FastFc::Avx2(..)) => "avx2",
            Some(FastFc::Sparse(..)) => "avx512-vnni-sparse",
            None => "portable",
        }
    }

    /// The output `[batches, units]` for input `x` (`[batches, depth]`), with `flavor`'s
    /// rounding.
    pub(crate) fn run(&self, x: &[i8], flavor: Flavor) -> Vec<i8> {
        match &self.fast {
            #[cfg(target_arch = "x86_64")]
            Some(fast) => self.run_fast(fast, x, flavor),
            #[cfg(not(target_arch = "x86_64"))]
            Some(_) => self.portable(x, flavor),
            None => self.portable(x, flavor),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn run_fast(&self, fast: &FastFc, x: &[i8], flavor: Flavor) -> Vec<i8> {
        let (batches, depth, units) = (self.batches, self.depth, self.units);
        let stride = crate::kernels::vnni::fc::acc_stride(units);
        // The sums in this thread's reused buffer (the kernels write every value read).
        let mut scratch = crate::kernels::vnni::Scratch::ints(batches * stride);
        let acc = &mut scratch.0[..batches * stride];
        let mut out = vec![0i8; batches * units];
        // SAFETY: `set_kernels` builds `Vnni` only for `Tier::Vnni` (the probe found AVX-512
        // F/BW/VL/VNNI), `Sparse` only where it also found VBMI and `Avx2` only for
        // `Tier::Avx2` (it found AVX2), packed for `k = depth`, `oc =
        // units`; `x` holds `batches · depth` values (the interpreter checked the sizes), `acc`
        // `batches · stride`, and each requantized row `stride ≥ units` sums.
        unsafe {
            match fast {
                FastFc::Vnni(p, _) => crate::kernels::vnni::fc::gemv(p, x, batches, depth, acc),
                FastFc::Avx2(p, _) => {
                    crate::kernels::vnni::fc::gemv_avx2(p, x, batches, depth, acc)
                }
                FastFc::Sparse(p, _) => {
                    crate::kernels::vnni::sparse::gemv(p, x, batches, depth, acc)
                }
            }
            for (row, dst) in acc.chunks_exact(stride).zip(out.chunks_exact_mut(units)) {
                match (flavor, fast) {
                    (Flavor::Micro, FastFc::Vnni(_, rq) | FastFc::Sparse(_, rq)) => {
                        crate::kernels::vnni::fc::requantize(rq, row, dst)
                    }
                    (Flavor::Micro, FastFc::Avx2(_, rq)) => {
                        crate::kernels::vnni::fc::requantize_avx2(rq, row, dst)
                    }
                    (Flavor::LiteRtReference, _) => self.requantize_single(row, dst),
                }
            }
        }
        out
    }

    /// LiteRT reference's one-rounding requantization of one row of sums.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn requantize_single(&self, acc: &[i32], out: &mut [i8]) {
        for (u, o) in out.iter_mut().enumerate() {
            let v = mbqm_single(acc[u], self.multiplier[u], self.shift[u])
                .wrapping_add(self.output_offset);
            *o = v.clamp(self.act[0], self.act[1]) as i8;
        }
    }

    /// The plain loops (every CPU; the reference the SIMD kernels are tested against).
    fn portable(&self, x: &[i8], flavor: Flavor) -> Vec<i8> {
        let (depth, units) = (self.depth, self.units);
        let mut out = Vec::with_capacity(self.batches * units);
        for b in 0..self.batches {
            let row = &x[b * depth..(b + 1) * depth];
            for u in 0..units {
                let w = &self.filter[u * depth..(u + 1) * depth];
                // int32 accumulation wraps as the C++ kernels do in practice.
                let (dot, w_sum) = w.iter().zip(row).fold((0i32, 0i32), |(d, s), (a, b)| {
                    (
                        d.wrapping_add(*a as i32 * *b as i32),
                        s.wrapping_add(*a as i32),
                    )
                });
                let acc = dot
                    .wrapping_add(self.input_offset.wrapping_mul(w_sum))
                    .wrapping_add(self.bias[u]);
                let (m, s) = (self.multiplier[u], self.shift[u]);
                let v = match flavor {
                    Flavor::Micro => mbqm(acc, m, s),
                    Flavor::LiteRtReference => mbqm_single(acc, m, s),
                }
                .wrapping_add(self.output_offset);
                out.push(v.clamp(self.act[0], self.act[1]) as i8);
            }
        }
        out
    }
}

/// FULLY_CONNECTED of `ctx`: weights `[units, depth]`, per-tensor scales, multiplier as
/// `GetQuantizedConvolutionMultipler` (the product in float, the division in double).
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::FullyConnected { activation, .. } = &ctx.op.options else {
        return Err(ctx.unsupported());
    };
    let (ii, it) = ctx.input(0)?;
    let (_, ft) = ctx.input(1)?;
    let (oi, ot) = ctx.out;
    ctx.int8(it)?;
    ctx.int8(ot)?;
    if ft.shape.len() != 2 {
        return Err(ctx.bad(format!(
            "weights must be [units, depth], are {:?}",
            ft.shape
        )));
    }
    let (units, depth) = (ft.shape[0], ft.shape[1]);
    let size = ctx.sizes[ii];
    if depth == 0 || !size.is_multiple_of(depth) || ctx.sizes[oi] != size / depth * units {
        return Err(ctx.bad("input, weight and output sizes do not fit"));
    }
    let (in_scale, in_zp) = ctx.per_tensor(it)?;
    let (out_scale, out_zp) = ctx.per_tensor(ot)?;
    let scales = ctx.filter_scales(ft, units)?;
    if scales.iter().any(|s| *s != scales[0]) {
        return Err(ctx.bad("per-channel fully-connected weights are not supported"));
    }
    let (multiplier, shift) = quantize_multiplier((in_scale * scales[0]) as f64 / out_scale as f64);
    Ok(Step::FullyConnected(Box::new(FcKernel::new(
        [ii, oi],
        [size / depth, depth, units],
        ctx.const_i8(ft)?.iter().map(|b| *b as i8).collect(),
        ctx.bias(2, units)?,
        [-in_zp, out_zp],
        vec![multiplier; units],
        vec![shift; units],
        ctx.activation(*activation, out_scale, out_zp)?,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[derive(Debug, Clone)]
    struct Case {
        batches: usize,
        depth: usize,
        units: usize,
        in_zp: i32,
        out_zp: i32,
        per_channel: bool,
        /// Real multipliers `2^e` scaled: from far below 1 (right shifts) to above 1.
        exponent: i32,
        relu: bool,
        seed: u64,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            (1usize..5, 1usize..700, 1usize..300),
            (-128i32..128, -128i32..128),
            (any::<bool>(), -14i32..3, any::<bool>()),
            any::<u64>(),
        )
            .prop_map(
                |(
                    (batches, depth, units),
                    (in_zp, out_zp),
                    (per_channel, exponent, relu),
                    seed,
                )| {
                    Case {
                        batches,
                        depth,
                        units,
                        in_zp,
                        out_zp,
                        per_channel,
                        exponent,
                        relu,
                        seed,
                    }
                },
            )
    }

    fn kernel(c: &Case) -> (FcKernel, Vec<i8>) {
        let filter: Vec<i8> = values(c.seed, c.units * c.depth, -128, 127)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let bias = values(c.seed ^ 3, c.units, -40_000, 40_000);
        let scales: Vec<f64> = values(c.seed ^ 5, c.units, 1000, 4000)
            .into_iter()
            .map(|v| {
                let v = if c.per_channel { v } else { 2500 };
                v as f64 / 2048.0 * 2f64.powi(c.exponent)
            })
            .collect();
        let (multiplier, shift) = scales
            .iter()
            .map(|s| crate::fixed::quantize_multiplier(*s))
            .unzip();
        let act = if c.relu {
            [c.out_zp.max(-128), 127]
        } else {
            [-128, 127]
        };
        let x = values(c.seed ^ 7, c.batches * c.depth, -128, 127)
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let k = FcKernel::new(
            [0, 1],
            [c.batches, c.depth, c.units],
            filter,
            bias,
            [-c.in_zp, c.out_zp],
            multiplier,
            shift,
            act,
        );
        (k, x)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]

        /// The SIMD kernels (AVX-512 VNNI and AVX2, where the CPU has them) compute exactly the
        /// portable kernel's integers, for both flavors' roundings, per-tensor and per-unit
        /// multipliers, ragged unit and depth counts and batches above 1.
        #[test]
        fn simd_fully_connected_equals_portable(c in case()) {
            let (mut k, x) = kernel(&c);
            for flavor in [Flavor::Micro, Flavor::LiteRtReference] {
                let want = k.portable(&x, flavor);
                for kernels in [Kernels::Best, Kernels::Avx2] {
                    k.set_kernels(kernels);
                    prop_assert_eq!(&k.run(&x, flavor), &want, "{:?} {:?}", kernels, flavor);
                }
            }
        }
    }

    /// The two flavors' roundings differ on some layer, so the test above can tell a SIMD path
    /// that ignores the flavor.
    #[test]
    fn the_flavors_round_differently() {
        let differs = (0..20u64).any(|seed| {
            let c = Case {
                batches: 2,
                depth: 200,
                units: 100,
                in_zp: -7,
                out_zp: 4,
                per_channel: true,
                exponent: -10,
                relu: false,
                seed,
            };
            let (k, x) = kernel(&c);
            k.run(&x, Flavor::Micro) != k.run(&x, Flavor::LiteRtReference)
        });
        assert!(differs);
    }

    /// The kernel names follow the CPU: a test that the fast path is really taken where it can.
    #[test]
    fn fast_kernels_run_where_the_cpu_has_them() {
        let c = Case {
            batches: 1,
            depth: 640,
            units: 128,
            in_zp: 3,
            out_zp: -5,
            per_channel: false,
            exponent: -8,
            relu: true,
            seed: 9,
        };
        let (mut k, _) = kernel(&c);
        let want = crate::kernels::Tier::of(Kernels::Best).name();
        assert_eq!(k.kernel_name(), want);
        k.set_kernels(Kernels::Portable);
        assert_eq!(k.kernel_name(), "portable");
    }
}
