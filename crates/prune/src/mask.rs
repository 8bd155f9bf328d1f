//! Magnitude masks, computed on the host from a flattened weight.
//!
//! Masks are `true` where a weight is kept. Ranking is exact and deterministic: magnitudes are
//! compared with `f32::total_cmp` and ties go to the lower flat index (the lower index is
//! pruned first), so the same weights always give the same mask.

use collab_core::WeightLayout;
use serde::{Deserialize, Serialize};

use crate::PruneError;

/// The sparsity pattern.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Granularity {
    /// Individual weights, smallest magnitude first.
    #[default]
    Unstructured,
    /// Blocks of `rows × cols` in the `[out_channels, fan_in]` view of the weight, ranked by the
    /// mean magnitude of the block (TFMOT's block sparsity with average pooling; blocks at the
    /// edges may be partial and are averaged over their real elements).
    Block {
        /// Block height along output channels.
        rows: usize,
        /// Block width along the fan-in (input channel × kernel position).
        cols: usize,
    },
    /// N:M structured sparsity: in every run of `m` consecutive input channels (for each output
    /// channel and kernel position) keep the `n` largest. The sparsity is `1 - n/m`, fixed; the
    /// mask is computed once, at the schedule's first update step.
    NOfM {
        /// Weights kept per group.
        n: usize,
        /// Group length along input channels.
        m: usize,
    },
}

impl Granularity {
    /// 2:4 sparsity, the pattern sparse tensor cores accelerate.
    pub fn two_four() -> Self {
        Self::NOfM { n: 2, m: 4 }
    }

    /// A short name such as `unstructured`, `block 1x4` or `2:4`.
    pub fn describe(&self) -> String {
        match self {
            Self::Unstructured => "unstructured".into(),
            Self::Block { rows, cols } => format!("block {rows}x{cols}"),
            Self::NOfM { n, m } => format!("{n}:{m}"),
        }
    }

    /// Check the pattern itself (independent of any layer).
    pub fn validate(&self) -> Result<(), PruneError> {
        let err = |reason: String| PruneError::Granularity {
            layer: "configuration".into(),
            granularity: self.describe(),
            reason,
        };
        match *self {
            Self::Unstructured => Ok(()),
            Self::Block { rows, cols } if rows == 0 || cols == 0 => {
                Err(err("block sides must be at least 1".into()))
            }
            Self::Block { .. } => Ok(()),
            Self::NOfM { n, m } if n == 0 || n >= m => Err(err(format!(
                "need 0 < N < M (N = {n} kept out of every M = {m}); 2:4 is the usual choice"
            ))),
            Self::NOfM { .. } => Ok(()),
        }
    }

    /// Check that the pattern fits a layer with `layout`.
    pub fn check_layout(&self, layout: &WeightLayout) -> Result<(), PruneError> {
        self.validate()?;
        if let Self::NOfM { n, m } = *self {
            let inputs = layout.in_per_group();
            if !inputs.is_multiple_of(m) {
                let hint = if layout.is_depthwise() {
                    "a depthwise convolution has one input channel per output channel; \
                     use unstructured or block sparsity for it"
                        .to_string()
                } else {
                    format!("use an M that divides {inputs}, or unstructured / block sparsity")
                };
                return Err(PruneError::Granularity {
                    layer: layout.describe(),
                    granularity: format!("{n}:{m}"),
                    reason: format!(
                        "{inputs} input channel(s) per group is not a multiple of {m}; {hint}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The sparsity this pattern imposes by itself, if any (N:M), else `None`.
    pub fn fixed_sparsity(&self) -> Option<f64> {
        match *self {
            Self::NOfM { n, m } => Some(1.0 - n as f64 / m as f64),
            _ => None,
        }
    }
}

/// How many of `len` items a sparsity prunes: `round(sparsity · len)`.
pub fn prune_count(len: usize, sparsity: f64) -> usize {
    ((sparsity.clamp(0.0, 1.0) * len as f64).round() as usize).min(len)
}

/// Indices of the `k` smallest `scores`, ties to the lower index. O(len).
pub fn smallest(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let cmp = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    order.truncate(k);
    order
}

/// The mask that prunes `sparsity` of `weights` (flattened in burn's layout of `layout`) with
/// the given pattern. For N:M the sparsity argument is ignored (it is `1 - n/m`).
pub fn magnitude_mask(
    weights: &[f32],
    layout: &WeightLayout,
    granularity: &Granularity,
    sparsity: f64,
) -> Result<Vec<bool>, PruneError> {
    if weights.len() != layout.numel() {
        return Err(collab_core::CoreError::Shape {
            what: layout.describe(),
            expected: vec![layout.numel()],
            got: vec![weights.len()],
        }
        .into());
    }
    granularity.check_layout(layout)?;
    let magnitudes: Vec<f32> = weights.iter().map(|w| w.abs()).collect();
    if let Granularity::NOfM { n, m } = *granularity {
        return Ok(n_of_m_mask(&magnitudes, layout, n, m));
    }
    let units = Units::new(magnitudes, layout, granularity);
    let mut pruned = vec![false; units.scores.len()];
    for u in smallest(&units.scores, prune_count(units.scores.len(), sparsity)) {
        pruned[u] = true;
    }
    Ok(units.mask(&pruned))
}

/// The units a mask update ranks: single weights, or blocks of the `[out, fan_in]` view.
pub(crate) struct Units {
    /// One score per unit: the magnitude, or the mean magnitude of the block.
    pub scores: Vec<f32>,
    /// Unit of each weight (flat index), or `None` when every weight is its own unit.
    pub unit_of: Option<Vec<u32>>,
}

impl Units {
    /// Weights' scores for `granularity` (unstructured or block; N:M has no ranking units).
    pub fn new(magnitudes: Vec<f32>, layout: &WeightLayout, granularity: &Granularity) -> Self {
        match *granularity {
            Granularity::Block { rows, cols } => block_units(&magnitudes, layout, rows, cols),
            _ => Self {
                scores: magnitudes,
                unit_of: None,
            },
        }
    }

    /// The mask that removes the units flagged in `pruned`.
    pub fn mask(&self, pruned: &[bool]) -> Vec<bool> {
        match &self.unit_of {
            None => pruned.iter().map(|p| !p).collect(),
            Some(unit_of) => unit_of.iter().map(|&u| !pruned[u as usize]).collect(),
        }
    }
}

fn block_units(magnitudes: &[f32], layout: &WeightLayout, rows: usize, cols: usize) -> Units {
    let (out, fan_in) = (layout.out_channels(), layout.fan_in());
    let block_cols = fan_in.div_ceil(cols);
    let blocks = out.div_ceil(rows) * block_cols;
    let mut sums = vec![0f64; blocks];
    let mut counts = vec![0u32; blocks];
    let mut unit_of = vec![0u32; magnitudes.len()];
    for r in 0..out {
        for c in 0..fan_in {
            let b = (r / rows) * block_cols + c / cols;
            let i = layout.index_2d(r, c);
            sums[b] += magnitudes[i] as f64;
            counts[b] += 1;
            unit_of[i] = b as u32;
        }
    }
    Units {
        scores: sums
            .iter()
            .zip(&counts)
            .map(|(s, &n)| (s / n as f64) as f32)
            .collect(),
        unit_of: Some(unit_of),
    }
}

fn n_of_m_mask(magnitudes: &[f32], layout: &WeightLayout, n: usize, m: usize) -> Vec<bool> {
    let mut mask = vec![true; magnitudes.len()];
    let mut group = Vec::with_capacity(m);
    let mut scores = Vec::with_capacity(m);
    for out in 0..layout.out_channels() {
        for k in 0..layout.kernel_size() {
            for start in (0..layout.in_per_group()).step_by(m) {
                group.clear();
                scores.clear();
                for input in start..start + m {
                    let i = layout.index(out, input, k);
                    group.push(i);
                    scores.push(magnitudes[i]);
                }
                for j in smallest(&scores, m - n) {
                    mask[group[j]] = false;
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use collab_core::LayerKind;

    fn linear(inputs: usize, outputs: usize) -> WeightLayout {
        WeightLayout {
            kind: LayerKind::Linear,
            shape: vec![inputs, outputs],
            groups: 1,
        }
    }

    #[test]
    fn unstructured_prunes_smallest_magnitudes_with_index_tie_break() {
        let w = [0.5, -0.1, 0.3, 0.1, -0.9, 0.0];
        let layout = linear(3, 2);
        let mask = magnitude_mask(&w, &layout, &Granularity::Unstructured, 0.5).unwrap();
        // |w| ascending: 0.0 (5), 0.1 (1), 0.1 (3) -> prune 5, 1, 3.
        assert_eq!(mask, vec![true, false, true, false, true, false]);
        // 2 of 6 (0.33 · 6 = 2): the tie between indices 1 and 3 goes to index 1.
        let mask = magnitude_mask(&w, &layout, &Granularity::Unstructured, 0.34).unwrap();
        assert_eq!(mask, vec![true, false, true, true, true, false]);
    }

    #[test]
    fn block_pruning_removes_whole_blocks_of_the_out_fanin_view() {
        // Linear in=4, out=2; view [out=2, in=4]; 1x2 blocks -> 4 blocks.
        // Row 0 (out 0): w[i*2+0]; row 1 (out 1): w[i*2+1].
        let w = [0.9, 0.1, 0.8, 0.2, 0.05, 0.7, 0.05, 0.6];
        let layout = linear(4, 2);
        let mask =
            magnitude_mask(&w, &layout, &Granularity::Block { rows: 1, cols: 2 }, 0.5).unwrap();
        // Block means: r0c0 (0.9, 0.8) = 0.85, r0c1 (0.05, 0.05) = 0.05,
        //              r1c0 (0.1, 0.2) = 0.15, r1c1 (0.7, 0.6) = 0.65 -> prune r0c1 and r1c0.
        let pruned: Vec<usize> = (0..8).filter(|&i| !mask[i]).collect();
        assert_eq!(pruned, vec![1, 3, 4, 6]);
    }

    #[test]
    fn n_of_m_keeps_n_largest_per_group_of_input_channels() {
        // Conv2d [out=1, in=4, 1, 2]: for kernel position k, inputs 0..4 at flat (i*2 + k).
        let layout = WeightLayout {
            kind: LayerKind::Conv2d,
            shape: vec![1, 4, 1, 2],
            groups: 1,
        };
        let w = [0.1, 4.0, 0.4, 3.0, -0.3, 2.0, 0.2, 1.0];
        let mask = magnitude_mask(&w, &layout, &Granularity::two_four(), 0.0).unwrap();
        // k = 0: |0.1, 0.4, -0.3, 0.2| keep 0.4 and -0.3; k = 1: keep 4.0 and 3.0.
        assert_eq!(
            mask,
            vec![false, true, true, true, true, false, false, false]
        );
    }

    #[test]
    fn n_of_m_rejects_layers_it_cannot_fit() {
        let dw = WeightLayout {
            kind: LayerKind::Conv2d,
            shape: vec![8, 1, 3, 3],
            groups: 8,
        };
        let err = magnitude_mask(&[0.0; 72], &dw, &Granularity::two_four(), 0.0).unwrap_err();
        assert!(err.to_string().contains("depthwise"), "{err}");
        let err = Granularity::NOfM { n: 4, m: 2 }.validate().unwrap_err();
        assert!(err.to_string().contains("0 < N < M"), "{err}");
        assert!(Granularity::Block { rows: 0, cols: 4 }.validate().is_err());
        let err =
            magnitude_mask(&[0.0; 5], &linear(3, 2), &Granularity::Unstructured, 0.5).unwrap_err();
        assert!(matches!(err, PruneError::Core(_)));
    }

    #[test]
    fn smallest_handles_edges() {
        assert!(smallest(&[1.0, 2.0], 0).is_empty());
        let mut all = smallest(&[3.0, 1.0, 2.0], 5);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2]);
        assert_eq!(prune_count(7, 0.5), 4);
        assert_eq!(prune_count(10, 0.0), 0);
    }
}
