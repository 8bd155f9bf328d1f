//! What a node must keep of its lineage, checked on its int8 file: the parent's zeros (they stay
//! 0 in int8), at most k distinct values per channel after clustering, the pruning target.

use std::collections::BTreeMap;

use collab_core::host::to_vec_f32;
use serde::{Deserialize, Serialize};

use super::Scheme;
use crate::CollabError;
use crate::export::{Plan, Step};

/// Fraction of exact zeros in every weight of `network`, keyed like the int8 file's weight
/// tensors (`blocks.0.pw/weight`): the zeros a child stage must keep (they stay 0 in int8).
pub(super) fn float_zeros(plan: &Plan) -> BTreeMap<String, f64> {
    let fraction = |values: Vec<f32>| {
        values.iter().filter(|v| **v == 0.0).count() as f64 / values.len().max(1) as f64
    };
    plan.steps
        .iter()
        .filter_map(|step| match step {
            Step::Conv { name, layer, .. } => Some((
                format!("{name}/weight"),
                fraction(to_vec_f32(layer.weight.val().flatten::<1>(0, 3))),
            )),
            Step::Linear { name, layer, .. } => Some((
                format!("{name}/weight"),
                fraction(to_vec_f32(layer.weight.val().flatten::<1>(0, 1))),
            )),
            _ => None,
        })
        .collect()
}

/// What the stages above a node established, which later stages must keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Lineage {
    pub(super) pruned: bool,
    /// k and per channel.
    pub(super) clusters: Option<(usize, bool)>,
    /// The clusters are channel-scaled (one codebook for every channel).
    #[serde(default)]
    pub(super) channel_scaled: bool,
}

impl Lineage {
    pub(super) fn after(self, scheme: &Scheme) -> Self {
        match scheme {
            Scheme::Prune { .. } => Self {
                pruned: true,
                clusters: None,
                channel_scaled: false,
            },
            Scheme::Cluster {
                clusters,
                per_channel,
                preserve_sparsity,
                channel_scaled,
            } => Self {
                pruned: self.pruned && *preserve_sparsity,
                clusters: Some((*clusters, *per_channel)),
                channel_scaled: *channel_scaled,
            },
            Scheme::Qat => self,
        }
    }
}

/// Zero sets and unique counts a node must have, checked on its int8 file.
pub(super) fn check_file(
    stage: &str,
    lineage: Lineage,
    parent_pruned: bool,
    parent_zeros: &BTreeMap<String, f64>,
    report: &collab_tflite::Report,
    scheme: Option<&Scheme>,
) -> Result<(), CollabError> {
    let broken = |w: &collab_tflite::WeightStats, reason: String| CollabError::Invariant {
        stage: stage.to_string(),
        layer: w.name.clone(),
        reason,
    };
    for w in &report.weights {
        if w.dtype != collab_tflite::TensorType::Int8 {
            continue;
        }
        if parent_pruned && lineage.pruned {
            // The parent's exact zeros are kept (fixed mask / pinned centroid) and stay 0 in
            // int8, so the file has at least as many.
            if let Some(before) = parent_zeros.get(&w.name)
                && w.zero_fraction + 1e-9 < *before
            {
                return Err(broken(
                    w,
                    format!(
                        "the parent's weights were {before:.4} zeros, the int8 file has {:.4}",
                        w.zero_fraction
                    ),
                ));
            }
        }
        if let Some((k, _)) = lineage.clusters {
            // Convolution weights are quantized per output channel, so even per-tensor
            // clusters become up to k integers per channel (not per tensor).
            let got = w.unique_per_channel_max.unwrap_or(w.unique);
            // Sparsity-preserving clustering pins 0 as one of the k values.
            if got > k {
                return Err(broken(
                    w,
                    format!("{got} distinct int8 values, more than the {k} clusters"),
                ));
            }
            // Channel-scaled: one codebook, so the whole tensor holds ≤ k int8 codes.
            if lineage.channel_scaled && w.unique > k {
                return Err(broken(
                    w,
                    format!(
                        "{} distinct int8 codes in the tensor, more than the {k} channel-scaled \
                         clusters",
                        w.unique
                    ),
                ));
            }
        }
    }
    if let Some(Scheme::Prune {
        sparsity,
        skip_depthwise,
        ..
    }) = scheme
    {
        for w in &report.weights {
            let depthwise = w.used_by.as_deref() == Some("DEPTHWISE_CONV_2D");
            if w.dtype == collab_tflite::TensorType::Int8
                && !(depthwise && *skip_depthwise)
                && w.zero_fraction + 0.005 < *sparsity
            {
                return Err(broken(
                    w,
                    format!("{:.4} zeros, target {sparsity}", w.zero_fraction),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_decides_what_qat_keeps() {
        let prune = Scheme::Prune {
            sparsity: 0.5,
            end_step: None,
            frequency: 10,
            power: 3.0,
            skip_depthwise: false,
        };
        let keep = Scheme::Cluster {
            clusters: 16,
            per_channel: false,
            preserve_sparsity: true,
            channel_scaled: false,
        };
        let plain = Scheme::Cluster {
            clusters: 8,
            per_channel: true,
            preserve_sparsity: false,
            channel_scaled: false,
        };
        let scaled = Scheme::Cluster {
            clusters: 8,
            per_channel: false,
            preserve_sparsity: false,
            channel_scaled: true,
        };
        let root = Lineage::default();
        assert_eq!(root.after(&Scheme::Qat), root);
        let pruned = root.after(&prune);
        assert!(pruned.pruned && pruned.clusters.is_none());
        let pcq = pruned.after(&keep).after(&Scheme::Qat);
        assert!(pcq.pruned);
        assert_eq!(pcq.clusters, Some((16, false)));
        // Clustering without preserving sparsity ends the pruned lineage.
        let lost = pruned.after(&plain);
        assert!(!lost.pruned);
        assert_eq!(lost.clusters, Some((8, true)));
        assert!(!lost.channel_scaled);
        // Channel-scaled clusters carry to QAT; a later clustering replaces them.
        let cs = root.after(&scaled).after(&Scheme::Qat);
        assert!(cs.channel_scaled && cs.clusters == Some((8, false)));
        assert!(!cs.after(&plain).channel_scaled);
    }
}
