//! CPU SIMD dispatch: the one idiom every CPU kernel of the workspace follows.
//!
//! The workspace builds for baseline x86-64 (SSE2), so a loop is only compiled for wider vector
//! units inside a function that enables them with `#[target_feature]`, and such a function may
//! only run after the CPU was found to have them. Every kernel does this the same way:
//!
//! 1. **One probe, cached.** [`level`] asks the CPU once (`is_x86_feature_detected!`, cached in
//!    a `OnceLock`) which [`Level`] it has; [`avx2_fma`] and [`avx512`] read it. Kernels never
//!    call `is_x86_feature_detected!` themselves. A kernel that needs another feature set (the
//!    int8 interpreter's AVX-512 BW / VNNI, say) adds one probe function of the same shape next
//!    to these (a `OnceLock<bool>` filled by one detection), in this module or its crate's own
//!    `ops::cpu`.
//! 2. **Portable kernels are written once.** The body is a plain Rust function marked
//!    `#[inline(always)]` (`x_impl`); thin wrappers `#[target_feature(enable = "avx512f")] fn
//!    x_avx512` and `#[target_feature(enable = "avx2,fma")] fn x_avx2` only call it, so the
//!    compiler inlines and vectorizes the body once per level; the public `fn x` matches on
//!    [`level`] and calls the widest wrapper the CPU has, else `x_impl`. [`widest!`] writes all
//!    of that from one `fn` item: use it rather than spelling the wrappers out. (A closure
//!    handed to a `#[target_feature]` function may stay out of line, and so scalar, when it is
//!    large; a named `#[inline(always)]` function does not.)
//! 3. **Intrinsic kernels** (`std::arch` code written for one level, such as BatchNorm's
//!    AVX-512 backward or the 8 × 8 AVX transpose of [`super::layout`]) are
//!    `#[target_feature(enable = …)] unsafe fn`s in a `#[cfg(target_arch = "x86_64")]` module
//!    named after the level, next to a portable fallback that gives the same values; the caller
//!    checks the probe, then calls them.
//! 4. **Every `unsafe`** carries a `// SAFETY:` comment: for a call into a `#[target_feature]`
//!    function, which probe found the features; for raw pointers and intrinsics, why the
//!    memory touched is in bounds and not aliased.
//!
//! Results must not depend on the level: Rust never contracts a multiply and an add into an
//! FMA on its own, and LLVM does not reorder float sums, so a portable body gives the same bits
//! at every level as long as it does not reduce across vector lanes (sums run in fixed lanes
//! written out in the source). Intrinsic kernels that round differently (an explicit FMA) say
//! so and are tested against the portable loops.

use std::sync::OnceLock;

/// The widest vector units the kernels use on this CPU, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The baseline build (SSE2 on x86-64; any other architecture).
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F (with AVX2 and FMA).
    Avx512,
}

/// The [`Level`] of this CPU, detected once per process.
#[inline]
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            return if has!("avx512f") {
                Level::Avx512
            } else {
                Level::Avx2
            };
        }
    }
    Level::Portable
}

/// Whether the CPU has AVX2 and FMA (cached; see [`level`]).
#[inline]
pub fn avx2_fma() -> bool {
    level() >= Level::Avx2
}

/// Whether the CPU has AVX-512F, AVX2 and FMA (cached; see [`level`]).
#[inline]
pub fn avx512() -> bool {
    level() >= Level::Avx512
}

/// Run `f` compiled for AVX2 and FMA where the CPU has them, for the portable build otherwise:
/// the closure spelling of the idiom above, for a short loop inside a rayon task (`f` must be
/// inlined into the feature-enabled frame to be vectorized). New kernels use [`widest!`],
/// which cannot be left out of line.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if avx2_fma() {
            // SAFETY: the probe found AVX2 and FMA on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Define `fn $name(args) -> ret { body }` that runs `body` compiled for AVX-512F, else AVX2 +
/// FMA, else the baseline, as [`level`] finds the CPU: point 2 of the module documentation
/// (the body becomes an `#[inline(always)]` function, each level a `#[target_feature]`
/// wrapper that calls it). The body must not depend on the vector width for its results (no
/// reductions across lanes), so that every CPU gets the same values. No generics; a return
/// type is required (`-> ()` for none).
#[macro_export]
macro_rules! widest {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                match $crate::ops::cpu::level() {
                    // SAFETY: the probe found AVX-512F on this CPU.
                    $crate::ops::cpu::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: the probe found AVX2 and FMA on this CPU.
                    $crate::ops::cpu::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::cpu::Level::Portable => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub use crate::widest;

#[cfg(test)]
mod tests {
    use super::*;

    widest! {
        /// A fixed-lane sum, the kind of body `widest!` takes.
        fn lanes(v: &[f32]) -> f32 {
            let mut acc = [0f32; 8];
            for c in v.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] += c[l] * 1.5;
                }
            }
            acc.iter().sum()
        }
    }

    /// Every level the CPU has gives the bits of the portable build.
    #[test]
    fn levels_agree_and_are_ordered() {
        let v: Vec<f32> = (0..1003).map(|i| (i as f32 * 0.37).sin()).collect();
        let portable = {
            let mut acc = [0f32; 8];
            for c in v.chunks_exact(8) {
                for l in 0..8 {
                    acc[l] += c[l] * 1.5;
                }
            }
            acc.iter().sum::<f32>()
        };
        assert_eq!(lanes(&v).to_bits(), portable.to_bits());
        assert_eq!(wide(|| lanes(&v)).to_bits(), portable.to_bits());
        assert!(!avx512() || avx2_fma(), "the levels nest");
        assert_eq!(level(), level(), "cached");
    }
}
