//! One-dimensional k-means on the host: the four initialisations TFMOT offers, then Lloyd
//! iterations to convergence.
//!
//! Weights are scalars, so Lloyd runs on the sorted values with prefix sums: an assignment is a
//! set of `k - 1` boundaries (midpoints between sorted centroids) found by binary search, and a
//! centroid update is a difference of prefix sums. One iteration costs `O(k log n)` after an
//! `O(n log n)` sort, which clusters a MobileNet-sized layer in milliseconds.

use collab_data::SeededRng;
use serde::{Deserialize, Serialize};

/// How the centroids are initialised before Lloyd's iterations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CentroidInit {
    /// k-means++: the first centroid is a uniformly drawn weight, each next one a weight drawn
    /// with probability proportional to its squared distance to the nearest chosen centroid.
    #[default]
    KMeansPlusPlus,
    /// Evenly spaced between the minimum and the maximum weight: `min + i (max - min) / (k - 1)`.
    Linear,
    /// Uniformly random between the minimum and the maximum weight.
    Random,
    /// Density-based: the weights at evenly spaced levels of their empirical CDF,
    /// `quantile(i / (k - 1))` with linear interpolation between sorted weights, so dense regions
    /// get more centroids.
    Density,
}

/// A finished 1-D clustering.
#[derive(Clone, Debug, PartialEq)]
pub struct KMeans {
    /// Centroids in ascending order.
    pub centroids: Vec<f32>,
    /// Lloyd iterations run.
    pub iterations: usize,
}

/// Lloyd stops after this many iterations even if assignments still change.
pub const MAX_ITERATIONS: usize = 300;

/// The initial centroids of `values` (finite, non-empty, `k <= values.len()`), ascending.
pub fn init_centroids(values: &[f32], k: usize, init: CentroidInit, seed: u64) -> Vec<f32> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    init_sorted(&sorted, k, init, seed)
}

fn init_sorted(sorted: &[f32], k: usize, init: CentroidInit, seed: u64) -> Vec<f32> {
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let mut rng = SeededRng::new(seed);
    let mut centroids = match init {
        CentroidInit::Linear => (0..k)
            .map(|i| {
                if k == 1 {
                    (min + max) / 2.0
                } else {
                    min + (max - min) * i as f32 / (k - 1) as f32
                }
            })
            .collect(),
        CentroidInit::Random => (0..k)
            .map(|_| {
                if min == max {
                    min
                } else {
                    rng.f32_in(min, max)
                }
            })
            .collect(),
        CentroidInit::Density => (0..k)
            .map(|i| {
                let q = if k == 1 {
                    0.5
                } else {
                    i as f64 / (k - 1) as f64
                };
                quantile(sorted, q)
            })
            .collect(),
        CentroidInit::KMeansPlusPlus => kmeans_plus_plus(sorted, k, &mut rng),
    };
    centroids.sort_by(f32::total_cmp);
    centroids
}

/// Linear-interpolated quantile of sorted values (`q` in [0, 1]).
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = (lo + 1).min(sorted.len() - 1);
    (sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac) as f32
}

fn kmeans_plus_plus(values: &[f32], k: usize, rng: &mut SeededRng) -> Vec<f32> {
    let mut centroids = vec![values[rng.index(values.len())]];
    let mut d2: Vec<f64> = values
        .iter()
        .map(|v| ((v - centroids[0]) as f64).powi(2))
        .collect();
    while centroids.len() < k {
        let total: f64 = d2.iter().sum();
        let next = if total <= 0.0 {
            // Every weight already sits on a centroid: duplicates are all that is left.
            centroids[0]
        } else {
            let mut target = rng.unit_f64() * total;
            let mut chosen = values.len() - 1;
            for (i, d) in d2.iter().enumerate() {
                if target < *d {
                    chosen = i;
                    break;
                }
                target -= d;
            }
            values[chosen]
        };
        centroids.push(next);
        for (d, v) in d2.iter_mut().zip(values) {
            *d = d.min(((v - next) as f64).powi(2));
        }
    }
    centroids
}

/// Index of the nearest centroid (ascending `centroids`), ties to the lower index.
pub fn nearest(centroids: &[f32], value: f32) -> usize {
    let mut best = 0;
    let mut best_d = f32::INFINITY;
    for (i, c) in centroids.iter().enumerate() {
        let d = (value - c).abs();
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best
}

/// Cluster `values` into `k` centroids: `init`, then Lloyd to convergence.
///
/// Values must be finite; `k >= 1`. Empty input gives `k` zeros. Centroids repeat when there
/// are fewer distinct values than `k`.
pub fn kmeans(values: &[f32], k: usize, init: CentroidInit, seed: u64) -> KMeans {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    if k == 0 || sorted.is_empty() {
        return KMeans {
            centroids: vec![0.0; k],
            iterations: 0,
        };
    }
    let mut centroids = init_sorted(&sorted, k, init, seed);
    let mut prefix = Vec::with_capacity(sorted.len() + 1);
    prefix.push(0f64);
    for v in &sorted {
        prefix.push(prefix.last().unwrap() + *v as f64);
    }
    let mut bounds = Vec::new();
    let mut iterations = 0;
    while iterations < MAX_ITERATIONS {
        iterations += 1;
        // Values in [bounds[j-1], bounds[j]) go to centroid j. Between two ascending centroids,
        // "at least as close to the lower one" holds for a prefix of the sorted values (ties go
        // to the lower centroid, as in `nearest`).
        let new_bounds: Vec<usize> = centroids
            .windows(2)
            .map(|w| sorted.partition_point(|v| (v - w[0]).abs() <= (v - w[1]).abs()))
            .collect();
        if new_bounds == bounds {
            break;
        }
        bounds = new_bounds;
        let mut start = 0;
        for j in 0..centroids.len() {
            let end = if j + 1 < centroids.len() {
                bounds[j]
            } else {
                sorted.len()
            };
            if end > start {
                centroids[j] = ((prefix[end] - prefix[start]) / (end - start) as f64) as f32;
            }
            start = end.max(start);
        }
        // Means of consecutive ranges stay ascending; keep the invariant explicit anyway.
        if centroids.windows(2).any(|w| w[0] > w[1]) {
            centroids.sort_by(f32::total_cmp);
        }
    }
    KMeans {
        centroids,
        iterations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_init_is_evenly_spaced_between_min_and_max() {
        let c = init_centroids(&[3.0, -1.0, 0.5, 2.0], 3, CentroidInit::Linear, 0);
        assert_eq!(c, vec![-1.0, 1.0, 3.0]);
    }

    #[test]
    fn density_init_takes_cdf_quantiles() {
        // Sorted: 0, 0, 0, 1, 10. Quantiles 0, 0.5, 1 -> positions 0, 2, 4.
        let c = init_centroids(&[10.0, 0.0, 1.0, 0.0, 0.0], 3, CentroidInit::Density, 0);
        assert_eq!(c, vec![0.0, 0.0, 10.0]);
        // Interpolation: 4 values, q = 1/3 -> position 1.0; q = 2/3 -> position 2.0.
        let c = init_centroids(&[1.0, 2.0, 3.0, 4.0], 4, CentroidInit::Density, 0);
        assert_eq!(c, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn random_init_stays_in_range_and_is_seeded() {
        let v: Vec<f32> = (0..50).map(|i| i as f32 * 0.1 - 2.0).collect();
        let a = init_centroids(&v, 8, CentroidInit::Random, 1);
        assert!(a.iter().all(|c| (-2.0..=2.9).contains(c)));
        assert_eq!(a, init_centroids(&v, 8, CentroidInit::Random, 1));
        assert_ne!(a, init_centroids(&v, 8, CentroidInit::Random, 2));
    }

    #[test]
    fn kmeans_plus_plus_picks_weights_and_is_deterministic_by_seed() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37) % 101) as f32 / 7.0).collect();
        let a = init_centroids(&v, 6, CentroidInit::KMeansPlusPlus, 9);
        assert!(
            a.iter().all(|c| v.contains(c)),
            "k-means++ centroids are data points"
        );
        assert_eq!(a, init_centroids(&v, 6, CentroidInit::KMeansPlusPlus, 9));
        assert_ne!(a, init_centroids(&v, 6, CentroidInit::KMeansPlusPlus, 10));
        // Far-apart groups: D² sampling picks one centroid in each of the three.
        let groups: Vec<f32> = [0.0f32, 100.0, 200.0]
            .iter()
            .flat_map(|g| (0..5).map(move |i| g + i as f32 * 0.01))
            .collect();
        for seed in 0..20 {
            let c = init_centroids(&groups, 3, CentroidInit::KMeansPlusPlus, seed);
            assert!(
                c[0] < 1.0 && (99.0..101.0).contains(&c[1]) && c[2] > 199.0,
                "seed {seed}: {c:?}"
            );
        }
    }

    #[test]
    fn lloyd_converges_to_group_means() {
        let v = [1.0, 1.2, 0.8, 5.0, 5.2, 4.8, 9.0, 9.1, 8.9];
        let r = kmeans(&v, 3, CentroidInit::Linear, 0);
        let want = [1.0f32, 5.0, 9.0];
        for (c, w) in r.centroids.iter().zip(want) {
            assert!((c - w).abs() < 1e-5, "{:?}", r.centroids);
        }
        assert!(r.iterations < MAX_ITERATIONS);
        // Assignments agree with brute-force nearest.
        for x in v {
            let j = nearest(&r.centroids, x);
            assert!((r.centroids[j] - x).abs() <= 0.2 + 1e-6);
        }
    }

    #[test]
    fn lloyd_result_is_a_fixed_point() {
        // Brute-force check: each centroid is the mean of the values nearest to it.
        let v: Vec<f32> = (0..500)
            .map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5)
            .collect();
        for init in [
            CentroidInit::KMeansPlusPlus,
            CentroidInit::Linear,
            CentroidInit::Density,
            CentroidInit::Random,
        ] {
            let r = kmeans(&v, 7, init, 3);
            for (j, c) in r.centroids.iter().enumerate() {
                let members: Vec<f32> = v
                    .iter()
                    .copied()
                    .filter(|x| nearest(&r.centroids, *x) == j)
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let mean = members.iter().map(|x| *x as f64).sum::<f64>() / members.len() as f64;
                assert!(
                    (mean as f32 - c).abs() < 1e-4,
                    "{init:?}: centroid {j} = {c}, mean {mean}"
                );
            }
        }
    }

    #[test]
    fn fewer_distinct_values_than_k_gives_repeated_centroids() {
        let r = kmeans(&[1.0, 1.0, 2.0], 4, CentroidInit::KMeansPlusPlus, 0);
        let mut distinct = r.centroids.clone();
        distinct.dedup();
        assert!(distinct.len() <= 2, "{:?}", r.centroids);
    }
}
