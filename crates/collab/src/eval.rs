//! Accuracy of a model on a data set, overall and per class ([`evaluate`]): for a float model
//! (`collab eval --checkpoint`, every training epoch's report) and an int8 file in our
//! interpreter alike (`collab eval --model`, the tree's int8 column).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::CollabError;
use crate::data::Batches;

/// Accuracy on a set, overall and per class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Samples evaluated.
    pub samples: usize,
    /// Per class: accuracy and sample count.
    pub per_class: BTreeMap<String, ClassAccuracy>,
}

/// One class's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Top-1 accuracy within the class.
    pub accuracy: f64,
    /// Samples of the class.
    pub samples: usize,
}

/// Evaluate `forward` (in evaluation mode, no autodiff) on all of `data`.
pub fn evaluate<F>(
    forward: F,
    data: &dyn Batches,
    batch_size: usize,
) -> Result<EvalReport, CollabError>
where
    F: Fn(burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2>,
{
    let device = crate::device::compute();
    let names = data.class_names();
    let mut correct = vec![0usize; names.len()];
    let mut total = vec![0usize; names.len()];
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let (x, y) = data.batch(chunk, None, &device)?;
        let pred = forward(x).argmax(1).flatten::<1>(0, 1);
        let pred = collab_core::host::to_vec_i64(pred);
        let y = collab_core::host::to_vec_i64(y);
        for (p, t) in pred.iter().zip(&y) {
            let t = *t as usize;
            if t < total.len() {
                total[t] += 1;
                correct[t] += usize::from(p == &(t as i64));
            }
        }
    }
    let samples: usize = total.iter().sum();
    let per_class = names
        .into_iter()
        .enumerate()
        .filter(|(c, _)| total[*c] > 0)
        .map(|(c, name)| {
            (
                name,
                ClassAccuracy {
                    accuracy: correct[c] as f64 / total[c] as f64,
                    samples: total[c],
                },
            )
        })
        .collect();
    Ok(EvalReport {
        accuracy: correct.iter().sum::<usize>() as f64 / samples.max(1) as f64,
        samples,
        per_class,
    })
}
