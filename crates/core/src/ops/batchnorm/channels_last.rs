//! Training BatchNorm kernels for tensors stored channels last
//! ([`crate::ops::layout::is_channels_last`]): the values are `M = N·H·W` rows of `C` channels.
//!
//! Every loop runs down the rows with one accumulator per channel, so it vectorizes across the
//! channels with no reduction inside a vector: the results are the same whatever the vector
//! width (and Rust never fuses a multiply and an add on its own). Rows are cut into fixed
//! chunks of [`ROWS`], one rayon task each; the per-chunk results are combined in chunk order,
//! so nothing depends on the thread count either. The statistics take one pass over memory:
//! each chunk's mean and centred sum of squares (two passes over a chunk that sits in cache),
//! combined with Chan et al.'s pairwise update in `f64`.

use rayon::prelude::*;

use crate::ops::activation::{backward_one, forward_one};
use crate::widest;

/// Rows per task.
pub(super) const ROWS: usize = 64;

widest! {
    /// One chunk's per-channel mean and centred sum of squares (`c` channels per row).
    fn chunk_stats(x: &[f32], c: usize) -> (Vec<f32>, Vec<f32>) {
        let rows = x.len() / c;
        let mut sum = vec![0f32; c];
        for row in x.chunks_exact(c) {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| s / rows as f32).collect();
        let mut m2 = vec![0f32; c];
        for row in x.chunks_exact(c) {
            for ((q, v), m) in m2.iter_mut().zip(row).zip(&mean) {
                let d = v - m;
                *q += d * d;
            }
        }
        (mean, m2)
    }
}

widest! {
    /// `out = act((x − mean)·scale + beta)` for one chunk (`p = [mean, scale, beta]` per channel).
    fn chunk_forward(x: &[f32], out: &mut [f32], p: &[[f32; 3]], act: u8) -> () {
        let c = p.len();
        for (row, dst) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            for ((d, v), &[mean, scale, beta]) in dst.iter_mut().zip(row).zip(p) {
                let pre = (v - mean) * scale + beta;
                *d = match act {
                    0 => pre,
                    1 => forward_one(pre, false),
                    _ => forward_one(pre, true),
                };
            }
        }
    }
}

/// The output gradient where the activation keeps it: the masks of
/// [`backward_one`] at the pre-activation value recomputed as the forward computed it.
#[inline(always)]
fn effective(v: f32, g: f32, [mean, scale, beta]: [f32; 3], act: u8) -> f32 {
    match act {
        0 => g,
        1 => backward_one((v - mean) * scale + beta, g, false),
        _ => backward_one((v - mean) * scale + beta, g, true),
    }
}

widest! {
    /// One chunk's `Σ dy` and `Σ dy·(x − mean)` per channel (`dy` after the activation mask).
    fn chunk_sums(x: &[f32], g: &[f32], p: &[[f32; 3]], act: u8) -> (Vec<f32>, Vec<f32>) {
        let c = p.len();
        let (mut sb, mut sx) = (vec![0f32; c], vec![0f32; c]);
        for (row, grow) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
            for ((((b, s), v), gv), &k) in sb.iter_mut().zip(sx.iter_mut()).zip(row).zip(grow).zip(p) {
                let e = effective(*v, *gv, k, act);
                *b += e;
                *s += e * (v - k[0]);
            }
        }
        (sb, sx)
    }
}

widest! {
    /// `dx = a·dy + b·(x − mean) + d` per channel (`q = [a, b, d]`) for one chunk, `dy` after
    /// the activation mask, written over `g`.
    fn chunk_dx(x: &[f32], g: &mut [f32], p: &[[f32; 3]], q: &[[f32; 3]], act: u8) -> () {
        let c = p.len();
        for (row, grow) in x.chunks_exact(c).zip(g.chunks_exact_mut(c)) {
            for ((v, gv), (&k, &[a, b, d])) in row.iter().zip(grow).zip(p.iter().zip(q)) {
                let e = effective(*v, *gv, k, act);
                *gv = a * e + b * (v - k[0]) + d;
            }
        }
    }
}

/// Forward: `x` `[M, C]` → `act(BN(x))` into `out`, and the per-channel mean and biased
/// variance. `gamma`, `beta` `[C]`.
pub(super) fn forward(
    x: &[f32],
    out: &mut [f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    act: u8,
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let chunks: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(ROWS * c)
        .map(|chunk| chunk_stats(chunk, c))
        .collect();
    // Chan et al.: combine (n_a, mean_a, M2_a) with (n_b, mean_b, M2_b).
    let mut n = 0f64;
    let mut mean = vec![0f64; c];
    let mut m2 = vec![0f64; c];
    for (i, (cm, cq)) in chunks.iter().enumerate() {
        let nb = (x.len() / c - i * ROWS).min(ROWS) as f64;
        let total = n + nb;
        for j in 0..c {
            let delta = cm[j] as f64 - mean[j];
            mean[j] += delta * nb / total;
            m2[j] += cq[j] as f64 + delta * delta * n * nb / total;
        }
        n = total;
    }
    let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
    let var: Vec<f32> = m2.iter().map(|&q| (q / n) as f32).collect();
    let p: Vec<[f32; 3]> = (0..c)
        .map(|j| [mean[j], gamma[j] / (var[j] + epsilon).sqrt(), beta[j]])
        .collect();
    out.par_chunks_mut(ROWS * c)
        .zip(x.par_chunks(ROWS * c))
        .for_each(|(dst, src)| chunk_forward(src, dst, &p, act));
    (mean, var)
}

/// Backward: the input gradient written over the output gradient `g` (`[M, C]`), and the
/// per-channel `(Σ dy·x̂, Σ dy)`, the gradients of γ and β. `ks[j] = [mean, variance, γ, β, ε, M]`.
pub(super) fn backward(x: &[f32], g: &mut [f32], ks: &[[f32; 6]], act: u8) -> Vec<(f32, f32)> {
    let c = ks.len();
    let p: Vec<[f32; 3]> = ks
        .iter()
        .map(|&[mean, var, gamma, beta, eps, _]| [mean, gamma / (var + eps).sqrt(), beta])
        .collect();
    let chunks: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(ROWS * c)
        .zip(g.par_chunks(ROWS * c))
        .map(|(chunk, grad)| chunk_sums(chunk, grad, &p, act))
        .collect();
    let mut sb = vec![0f64; c];
    let mut sx = vec![0f64; c];
    for (b, s) in &chunks {
        for j in 0..c {
            sb[j] += b[j] as f64;
            sx[j] += s[j] as f64;
        }
    }
    let sums: Vec<(f32, f32)> = (0..c)
        .map(|j| {
            let [_, var, _, _, eps, _] = ks[j];
            let inv = 1.0 / (var + eps).sqrt();
            ((sx[j] * inv as f64) as f32, sb[j] as f32)
        })
        .collect();
    // dx = γσ⁻¹/M · (M·dy − Σdy − x̂·Σdy·x̂) = a·dy + b·(x − mean) + d.
    let q: Vec<[f32; 3]> = (0..c)
        .map(|j| {
            let [_, var, gamma, _, eps, m] = ks[j];
            let inv = 1.0 / (var + eps).sqrt();
            let scale = gamma * inv / m;
            let (xsum, bsum) = sums[j];
            [scale * m, -scale * inv * xsum, -scale * bsum]
        })
        .collect();
    x.par_chunks(ROWS * c)
        .zip(g.par_chunks_mut(ROWS * c))
        .for_each(|(chunk, grad)| chunk_dx(chunk, grad, &p, &q, act));
    sums
}
