//! ADD of two int8 tensors of the same shape (add.cc's `Prepare` and `AddElementwise`).
//!
//! Both inputs are rescaled to a common scale (`2 · max(sa, sb)`) with 20 bits of headroom,
//! summed, and requantized to the output:
//! `clamp(MBQM(MBQM((x − za)·2^20, ma) + MBQM((y − zb)·2^20, mb), mo) + zo)`. TFLite Micro and
//! LiteRT's reference kernel compute the same integers here, so there is no flavor.
//! [`AddKernel::run`] uses the AVX-512 or AVX2 form ([`crate::kernels::vnni::add`]) where the CPU has it
//! and the kernel set allows it, else the portable loop; all give the same bytes.

use crate::TfliteError;
use crate::fixed::{mbqm, quantize_multiplier};
use crate::interp::prepare::Ctx;
use crate::interp::{Kernels, Step};
use crate::kernels::Tier;
use crate::kernels::vnni::add::AddConsts;
use crate::reader::Options;

/// add.cc's constants for an int8 ADD.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct AddParams {
    /// Minus the inputs' zero points.
    pub(crate) offsets: [i32; 2],
    /// `(multiplier, shift)` of each input onto the common scale.
    pub(crate) multipliers: [(i32, i32); 2],
    /// `(multiplier, shift)` of the sum onto the output scale.
    pub(crate) output_requant: (i32, i32),
    /// The output zero point.
    pub(crate) output_offset: i32,
    /// The fused activation's range, in output integers.
    pub(crate) act: [i32; 2],
}

impl AddParams {
    /// From the `(scale, zero point)` of both inputs and the output, and the activation range.
    pub(crate) fn new(a: (f32, i32), b: (f32, i32), out: (f32, i32), act: [i32; 2]) -> Self {
        let ((sa, za), (sb, zb), (so, zo)) = (a, b, out);
        // add.cc Prepare: left shift 20, everything in double (the max and 2× in float).
        let twice_max = (2.0 * sa.max(sb)) as f64;
        let m1 = quantize_multiplier(sa as f64 / twice_max);
        let m2 = quantize_multiplier(sb as f64 / twice_max);
        let mo = quantize_multiplier(twice_max / ((1 << 20) as f32 * so) as f64);
        Self {
            offsets: [-za, -zb],
            multipliers: [m1, m2],
            output_requant: mo,
            output_offset: zo,
            act,
        }
    }
}

/// The SIMD form of an ADD.
#[derive(Clone, Debug)]
enum Simd {
    Avx512(Box<AddConsts>),
    Avx2(Box<AddConsts>),
}

/// A same-shape int8 ADD and the kernel it runs on.
#[derive(Clone, Debug)]
pub(crate) struct AddKernel {
    pub(crate) params: AddParams,
    simd: Option<Simd>,
}

impl AddKernel {
    /// The kernel for `params`, on the fastest form this CPU has.
    pub(crate) fn new(params: AddParams) -> Self {
        let mut k = Self { params, simd: None };
        k.set_kernels(Kernels::Best);
        k
    }

    /// Choose the kernel: AVX-512 for [`Kernels::Best`] on CPUs of the AVX-512 VNNI tier, AVX2
    /// for `Best` or `Avx2` where the CPU has it, else (and for `Portable`) the portable loop.
    pub(crate) fn set_kernels(&mut self, kernels: Kernels) {
        let p = &self.params;
        // The register requantization assumes multipliers ≥ 0 and shifts in −31..=30
        // (`quantize_multiplier` of a positive ratio); anything else stays portable.
        let fits = [p.multipliers[0], p.multipliers[1], p.output_requant]
            .iter()
            .all(|(m, s)| *m >= 0 && (-31..=30).contains(s));
        let consts = || {
            Box::new(AddConsts::new(
                p.offsets,
                p.multipliers,
                p.output_requant,
                p.output_offset,
                p.act,
            ))
        };
        self.simd = match (fits, Tier::of(kernels)) {
            (false, _) | (true, Tier::Portable) => None,
            (true, Tier::Vnni) => Some(Simd::Avx512(consts())),
            (true, Tier::Avx2) => Some(Simd::Avx2(consts())),
        };
    }

    /// The kernel set it runs on: `"avx512-vnni"` (the AVX-512 tier; ADD uses its F/BW/VL
    /// subsets), `"avx2"` or `"portable"`.
    pub(crate) fn kernel_name(&self) -> &'static str {
        match self.simd {
            Some(Simd::Avx512(_)) => "avx512-vnni",
            Some(Simd::Avx2(_)) => "avx2",
            None => "portable",
        }
    }

    /// `a + b` elementwise (`a`, `b` of one length `n`), as `n` int8.
    pub(crate) fn run(&self, a: &[i8], b: &[i8]) -> Vec<i8> {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = &self.simd {
            let mut out = vec![0i8; a.len().min(b.len())];
            // SAFETY: `set_kernels` builds `Avx512` only for `Tier::Vnni` (the probe found
            // AVX-512 F/BW/VL) and `Avx2` only for `Tier::Avx2` (it found AVX2); `out` is as
            // long as the shorter input.
            unsafe {
                match simd {
                    Simd::Avx512(c) => crate::kernels::vnni::add::add_avx512(c, a, b, &mut out),
                    Simd::Avx2(c) => crate::kernels::vnni::add::add_avx2(c, a, b, &mut out),
                }
            }
            return out;
        }
        self.portable(a, b)
    }

    /// The portable loop: `fixed::mbqm` per element.
    pub(crate) fn portable(&self, a: &[i8], b: &[i8]) -> Vec<i8> {
        let AddParams {
            offsets,
            multipliers,
            output_requant,
            output_offset,
            act,
        } = self.params;
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                let x = mbqm(
                    (offsets[0] + *x as i32) << 20,
                    multipliers[0].0,
                    multipliers[0].1,
                );
                let y = mbqm(
                    (offsets[1] + *y as i32) << 20,
                    multipliers[1].0,
                    multipliers[1].1,
                );
                let v = mbqm(x.wrapping_add(y), output_requant.0, output_requant.1)
                    .wrapping_add(output_offset);
                v.clamp(act[0], act[1]) as i8
            })
            .collect()
    }
}

/// A prepared same-shape ADD: tensors `inputs[0] + inputs[1]` into `output`.
#[derive(Clone, Debug)]
pub(crate) struct Add {
    pub(crate) inputs: [usize; 2],
    pub(crate) output: usize,
    pub(crate) kernel: AddKernel,
}

/// ADD of `ctx`: the same-shape kernel, or [`super::elementwise`] when the shapes differ or an
/// input is constant.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::Add { activation } = &ctx.op.options else {
        return Err(ctx.unsupported());
    };
    if super::elementwise::is_general(ctx.graph, ctx.op) {
        return super::elementwise::prepare_step(ctx, *activation);
    }
    let (ai, at) = ctx.input(0)?;
    let (bi, bt) = ctx.input(1)?;
    let (oi, ot) = ctx.out;
    ctx.int8(at)?;
    ctx.int8(bt)?;
    ctx.int8(ot)?;
    if at.shape != bt.shape || at.shape != ot.shape {
        return Err(ctx.bad("broadcasting is not supported: shapes must be equal"));
    }
    let (sa, za) = ctx.per_tensor(at)?;
    let (sb, zb) = ctx.per_tensor(bt)?;
    let (so, zo) = ctx.per_tensor(ot)?;
    let act = ctx.activation(*activation, so, zo)?;
    Ok(Step::Add(Add {
        inputs: [ai, bi],
        output: oi,
        kernel: AddKernel::new(AddParams::new((sa, za), (sb, zb), (so, zo), act)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::prepare::activation_range;
    use crate::reader::Activation;
    use proptest::prelude::*;

    /// A random ADD and inputs: scales over a wide range (so the output multiplier's shift
    /// takes both signs), any int8 zero points, ReLU / ReLU6 / none, any length.
    fn case() -> impl Strategy<Value = (AddKernel, Vec<i8>, Vec<i8>)> {
        (
            0usize..300,
            -12.0f32..0.0,
            -6.0f32..6.0,
            -24.0f32..6.0,
            any::<[i8; 3]>(),
            0usize..3,
            any::<u64>(),
        )
            .prop_map(|(n, ea, eb, eo, zp, act, seed)| {
                let (sa, sb) = (ea.exp2(), (ea + eb).exp2());
                let so = sa * eo.exp2();
                let act = [Activation::None, Activation::Relu, Activation::Relu6][act];
                let act = activation_range(act, so, zp[2] as i32).unwrap_or([-128, 127]);
                let p = AddParams::new(
                    (sa, zp[0] as i32),
                    (sb, zp[1] as i32),
                    (so, zp[2] as i32),
                    act,
                );
                // A small generator (splitmix64) keeps the inputs reproducible from the seed.
                let mut s = seed;
                let mut next = move || {
                    s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = s;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    (z ^ (z >> 31)) as i8
                };
                let a = (0..n).map(|_| next()).collect();
                let b = (0..n).map(|_| next()).collect();
                (AddKernel::new(p), a, b)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Every SIMD form gives the portable loop's bytes (the ADD has no flavor: both
        /// runtimes compute these integers).
        #[test]
        fn simd_add_equals_portable((mut k, a, b) in case()) {
            let want = k.portable(&a, &b);
            for kernels in [Kernels::Best, Kernels::Avx2, Kernels::Portable] {
                k.set_kernels(kernels);
                prop_assert_eq!(&k.run(&a, &b), &want, "{:?} {}", kernels, k.kernel_name());
            }
        }
    }

    /// Extreme inputs (all −128 / 127 pairs, zero points at both ends) on every form.
    #[test]
    fn simd_add_equals_portable_at_the_extremes() {
        let a: Vec<i8> = (0..37)
            .map(|i| if i % 2 == 0 { -128 } else { 127 })
            .collect();
        let b: Vec<i8> = (0..37)
            .map(|i| if i % 3 == 0 { 127 } else { -128 })
            .collect();
        for (za, zb, zo) in [(-128, 127, -128), (127, -128, 127), (0, 0, 0)] {
            for (sa, sb, so) in [(1.0, 1.0, 1e-7), (1e-3, 1.0, 2.0), (0.5, 0.25, 0.1)] {
                let p = AddParams::new((sa, za), (sb, zb), (so, zo), [-128, 127]);
                let mut k = AddKernel::new(p);
                let want = k.portable(&a, &b);
                for kernels in [Kernels::Best, Kernels::Avx2] {
                    k.set_kernels(kernels);
                    assert_eq!(k.run(&a, &b), want, "{kernels:?} {sa} {sb} {so}");
                }
            }
        }
    }

    /// The kernel names follow the CPU: the fast path is really taken where it can be.
    #[test]
    fn fast_add_runs_where_the_cpu_has_it() {
        let mut k = AddKernel::new(AddParams::new((0.1, 3), (0.2, -4), (0.3, 1), [-128, 127]));
        let want = crate::kernels::Tier::of(Kernels::Best).name();
        assert_eq!(k.kernel_name(), want);
        k.set_kernels(Kernels::Portable);
        assert_eq!(k.kernel_name(), "portable");
    }
}
