//! The project's one random-number generator: [`SeededRng`].
//!
//! Every seeded random choice of the project (data shuffling and augmentation, synthetic sets,
//! k-means++ initialisation, the tree's calibration subsets) draws from it, so that a seed
//! recorded in a results file reproduces the run after a dependency upgrade. That needs every
//! step from the seed to a value to be specified somewhere that does not move:
//!
//! - the stream is ChaCha with 8 rounds (`ChaCha8Rng` of the `chacha20` crate, re-exported by
//!   rand 0.10, the version burn compiles); its output is defined by the cipher, and the crate
//!   pins it with known-answer tests;
//! - the 32-byte key is expanded from the `u64` seed here, with SplitMix64, rather than by
//!   `SeedableRng::seed_from_u64`, whose expansion is the `rand_core` version's choice;
//! - every conversion (unit floats, integer ranges, Gaussians, shuffles) is written out here
//!   rather than taken from rand's distributions, which rand may change in a new version.
//!
//! The unit tests pin the first values of a seed, so a change of any of these steps fails them.

use rand::Rng as _;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;

/// A seeded, portable random-number generator (ChaCha8 stream, conversions defined here).
#[derive(Debug)]
pub struct SeededRng(ChaCha8Rng);

impl SeededRng {
    /// The generator for `seed`: the ChaCha8 key is four SplitMix64 outputs of `seed`,
    /// little-endian.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut key = [0u8; 32];
        for word in key.chunks_exact_mut(8) {
            word.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        Self(ChaCha8Rng::from_seed(key))
    }

    /// The next 32 bits of the stream.
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// The next 64 bits of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniform `f32` in `[0, 1)`: the top 24 bits of [`next_u32`](Self::next_u32) over 2²⁴.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform `f64` in `[0, 1)`: the top 53 bits of [`next_u64`](Self::next_u64) over 2⁵³.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[low, high)` (`low` when the range is empty).
    pub fn f32_in(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit_f32()
    }

    /// A fair coin: the top bit of [`next_u32`](Self::next_u32).
    pub fn coin(&mut self) -> bool {
        self.next_u32() >> 31 == 1
    }

    /// A uniform integer in `0..n`, without bias (Lemire's multiply-and-reject on 64 bits).
    ///
    /// # Panics
    /// If `n == 0` (an empty range is a bug of the caller, not of the data).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SeededRng::below(0): empty range");
        // The low product falls below `threshold` = 2⁶⁴ mod n for the values that would
        // make some outcomes more likely than others; those are drawn again.
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform index in `0..n`. Panics if `n == 0`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// A uniform integer in `low..=high` (`low` when `high < low`).
    pub fn i64_in(&mut self, low: i64, high: i64) -> i64 {
        if high <= low {
            return low;
        }
        let span = high.abs_diff(low);
        match span.checked_add(1) {
            Some(n) => low.wrapping_add(self.below(n) as i64),
            // The whole i64 range.
            None => self.next_u64() as i64,
        }
    }

    /// A standard normal `f32` (Box–Muller, one of the pair; the first uniform is taken in
    /// `(0, 1]` so its logarithm is finite).
    pub fn gaussian(&mut self) -> f32 {
        let u1 = 1.0 - self.unit_f32();
        let u2 = self.unit_f32();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Shuffles `items` in place (Fisher–Yates from the end, each swap partner from
    /// [`index`](Self::index)).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}

/// One step of SplitMix64 (Steele, Lea and Flood, 2014), the usual way to spread a 64-bit seed
/// over a larger key.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream of seeds 0 and 42, as computed by `scripts/rng_reference.py` (an independent
    /// Python SplitMix64 + ChaCha8 block function). If an upgrade of rand / chacha20 or an edit
    /// here changes them, recorded seeds no longer reproduce runs: that is a breaking change, to
    /// be released as one with the results re-measured.
    #[test]
    fn stream_is_pinned() {
        let mut a = SeededRng::new(0);
        let first: Vec<u64> = (0..3).map(|_| a.next_u64()).collect();
        assert_eq!(first, PINNED_SEED_0);
        let mut b = SeededRng::new(42);
        assert_eq!(b.next_u32(), PINNED_SEED_42_U32);
    }

    const PINNED_SEED_0: [u64; 3] = [
        13_804_888_775_535_289_832,
        4_211_859_015_901_796_865,
        4_415_496_932_110_364_166,
    ];
    const PINNED_SEED_42_U32: u32 = 2_278_103_804;

    #[test]
    fn splitmix64_matches_its_reference() {
        // The reference implementation's first outputs for state 1234567 (from the published
        // C code, splitmix64.c by Sebastiano Vigna).
        let mut s = 1_234_567u64;
        let out: Vec<u64> = (0..3).map(|_| splitmix64(&mut s)).collect();
        assert_eq!(
            out,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let draw = |seed| {
            let mut r = SeededRng::new(seed);
            (0..16).map(|_| r.next_u32()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn ranges_stay_in_bounds_and_cover_them() {
        let mut r = SeededRng::new(3);
        let mut seen = [0usize; 7];
        for _ in 0..7000 {
            let v = r.i64_in(-3, 3);
            assert!((-3..=3).contains(&v));
            seen[(v + 3) as usize] += 1;
            let f = r.f32_in(-2.0, 5.0);
            assert!((-2.0..5.0).contains(&f));
            let u = r.unit_f64();
            assert!((0.0..1.0).contains(&u));
        }
        // Each of the 7 values about 1000 times (a loose bound: 6 standard deviations).
        for count in seen {
            assert!((820..=1180).contains(&count), "{seen:?}");
        }
        assert_eq!(r.i64_in(5, 5), 5);
        assert_eq!(r.i64_in(5, 4), 5);
        assert!((0..1).contains(&r.index(1)));
    }

    #[test]
    fn below_is_unbiased_for_a_range_that_does_not_divide_2_64() {
        // n = 3·2⁶² leaves 2⁶⁴ mod n = 2⁶² values to reject; without the rejection the first
        // third of the range would be drawn twice as often as the rest.
        let n = 3u64 << 62;
        let mut r = SeededRng::new(11);
        let low = (0..30_000).filter(|_| r.below(n) < (1u64 << 62)).count();
        assert!((9_400..=10_600).contains(&low), "{low}");
    }

    #[test]
    fn gaussian_has_unit_moments() {
        let mut r = SeededRng::new(5);
        let xs: Vec<f32> = (0..20_000).map(|_| r.gaussian()).collect();
        assert!(xs.iter().all(|x| x.is_finite()));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn shuffle_is_a_permutation_and_depends_on_the_seed() {
        let shuffled = |seed| {
            let mut v: Vec<usize> = (0..50).collect();
            SeededRng::new(seed).shuffle(&mut v);
            v
        };
        let a = shuffled(1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(1));
        assert_ne!(a, shuffled(2));
    }

    #[test]
    fn coin_is_fair() {
        let mut r = SeededRng::new(9);
        let heads = (0..10_000).filter(|_| r.coin()).count();
        assert!((4_700..=5_300).contains(&heads), "{heads}");
    }
}
