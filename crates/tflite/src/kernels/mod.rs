//! The compute kernels of the interpreter, apart from operator preparation (`crate::interp`):
//! the portable convolution and pooling loops ([`conv`], [`pool`]) and the hand-written
//! AVX2 / AVX-512 VNNI kernels ([`vnni`]). All compute the same integers; only speed differs.
//!
//! # One SIMD dispatch idiom
//!
//! The crate asks the CPU what it has in one place and in one way:
//!
//! 1. **One probe.** [`cpu()`] runs `is_x86_feature_detected!` once per process and caches the
//!    answer in a [`Cpu`] (a `OnceLock`). No other code calls `is_x86_feature_detected!`; every
//!    choice reads a field of [`Cpu`], and every `# Safety` section of a `#[target_feature]`
//!    function names the field that makes the call sound.
//! 2. **Auto-vectorised kernels** (plain Rust loops the compiler vectorises): the loop is
//!    written once as an `#[inline(always)] fn x_impl`, and [`multiversion!`] makes `fn x`
//!    with two thin `#[target_feature]` copies of it (AVX-512 F/BW/DQ/VL, AVX2), chosen per
//!    call through [`cpu()`]. The copies run the same safe code, so the result cannot depend
//!    on the CPU.
//! 3. **Intrinsics kernels** ([`vnni`]): `#[target_feature(enable = …)] unsafe fn` entry points
//!    (inside a `#[cfg(target_arch = "x86_64")] mod x86`) whose `# Safety` names the [`Cpu`]
//!    field they need. Which one runs is decided once, when an operator is prepared: the
//!    chosen form is stored in an enum variant (`kernels::conv::Fast`, the fully-connected
//!    and ADD forms) built only where [`Tier::of`] (the user's [`Kernels`] choice met with
//!    [`cpu()`]) allows it, so the `unsafe` call at run time rests on how the variant was built
//!    (its SAFETY comment says so).
//!
//! Another crate copies the idiom by keeping one such probe module and writing its kernels as
//! `x_impl` plus wrappers (or prepared enum variants) that consult only that probe.

use std::sync::OnceLock;

use crate::interp::Kernels;

pub(crate) mod conv;
pub(crate) mod pool;
pub(crate) mod vnni;

/// What this CPU runs, probed once ([`cpu()`]). All `false` off x86-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// AVX2: the AVX2 kernels, and the auto-vectorised loops' middle copy.
    pub(crate) avx2: bool,
    /// AVX-512 F/BW/DQ/VL: the auto-vectorised loops' widest copy.
    pub(crate) avx512: bool,
    /// AVX-512 F/BW/VL and VNNI: the VNNI kernels (the fastest tier).
    pub(crate) avx512_vnni: bool,
    /// `avx512_vnni` and AVX-512 VBMI: the N:M sparse and palette kernels (`vpermb`).
    pub(crate) avx512_vbmi: bool,
}

/// The features of this CPU, detected on the first call and cached.
pub(crate) fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(probe)
}

#[cfg(target_arch = "x86_64")]
fn probe() -> Cpu {
    use std::arch::is_x86_feature_detected as has;
    let avx512_vnni = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni");
    Cpu {
        avx2: has!("avx2"),
        avx512: has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl"),
        avx512_vnni,
        avx512_vbmi: avx512_vnni && has!("avx512vbmi"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> Cpu {
    Cpu::default()
}

/// The SIMD tier a prepared operator packs its weights for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// AVX-512 VNNI ([`Cpu::avx512_vnni`]).
    Vnni,
    /// AVX2 ([`Cpu::avx2`]).
    Avx2,
    /// The portable loops.
    Portable,
}

impl Tier {
    /// The fastest tier `kernels` allows on this CPU: VNNI for [`Kernels::Best`] and
    /// [`Kernels::Sparse`] where the CPU has it, else AVX2 unless `kernels` is
    /// [`Kernels::Portable`], else portable.
    pub(crate) fn of(kernels: Kernels) -> Self {
        let cpu = cpu();
        if matches!(kernels, Kernels::Best | Kernels::Sparse) && cpu.avx512_vnni {
            Tier::Vnni
        } else if kernels != Kernels::Portable && cpu.avx2 {
            Tier::Avx2
        } else {
            Tier::Portable
        }
    }

    /// The name of the tier's kernel set, as the operators' `kernel_name` says it:
    /// `"avx512-vnni"`, `"avx2"` or `"portable"`.
    #[cfg(test)]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tier::Vnni => "avx512-vnni",
            Tier::Avx2 => "avx2",
            Tier::Portable => "portable",
        }
    }

    /// Whether `kernels` asks for the N:M sparse kernels and this CPU runs them.
    pub(crate) fn sparse(kernels: Kernels) -> bool {
        kernels == Kernels::Sparse && cpu().avx512_vbmi
    }
}

/// `fn $name(args) -> R` running `$imp(args)` (an `#[inline(always)]` portable loop) compiled
/// for the widest vectors [`cpu()`] reports: AVX-512 F/BW/DQ/VL, else AVX2, else baseline.
/// Every copy runs the same safe code (the idiom of the module doc, point 2).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty = $imp:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
                fn avx512($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) -> $ret {
                    $imp($($arg),*)
                }
                let cpu = $crate::kernels::cpu();
                if cpu.avx512 {
                    // SAFETY: the probe found AVX-512 F/BW/DQ/VL; the copy runs safe code.
                    return unsafe { avx512($($arg),*) };
                }
                if cpu.avx2 {
                    // SAFETY: the probe found AVX2; the copy runs safe code.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiers follow the probe and the user's choice.
    #[test]
    fn tier_follows_the_cpu_and_the_choice() {
        let cpu = cpu();
        assert_eq!(Tier::of(Kernels::Portable), Tier::Portable);
        let best = if cpu.avx512_vnni {
            Tier::Vnni
        } else if cpu.avx2 {
            Tier::Avx2
        } else {
            Tier::Portable
        };
        assert_eq!(Tier::of(Kernels::Best), best);
        assert_eq!(Tier::of(Kernels::Sparse), best);
        let avx2 = if cpu.avx2 { Tier::Avx2 } else { Tier::Portable };
        assert_eq!(Tier::of(Kernels::Avx2), avx2);
        assert!(!Tier::sparse(Kernels::Best));
        assert_eq!(Tier::sparse(Kernels::Sparse), cpu.avx512_vbmi);
        assert!(!cpu.avx512_vbmi || cpu.avx512_vnni);
    }
}
