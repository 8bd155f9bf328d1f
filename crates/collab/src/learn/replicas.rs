//! What the replicas of a data-parallel run share: the state writes and item counts they post
//! during a global step, and the gradient scaling that makes their sum the global batch's mean.

use std::fmt;
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::Tensor;

/// `grads` times `factor` (unchanged when it is 1).
pub(super) fn scale_gradients<M: Module>(
    model: &M,
    grads: burn::optim::GradientsParams,
    factor: f32,
) -> burn::optim::GradientsParams {
    struct Scale {
        grads: burn::optim::GradientsParams,
        factor: f32,
    }
    impl burn::module::ModuleVisitor for Scale {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    if factor == 1.0 {
        return grads;
    }
    let mut scale = Scale { grads, factor };
    model.visit(&mut scale);
    scale.grads
}

/// The state writes and item counts the replicas of a data-parallel run post during one
/// global step (shared by every copy of the [`Classifier`]: a `#[module(skip)]` handle).
#[derive(Clone, Default)]
pub(super) struct Replicas(pub(super) Option<Arc<ReplicaLog>>);

impl fmt::Debug for Replicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Replicas(data parallel)"
        } else {
            "Replicas(one device)"
        })
    }
}

pub(super) struct ReplicaLog {
    /// Items of one replica's full batch: the unit of the loss weights.
    pub(super) batch_size: usize,
    pub(super) posted: Mutex<Vec<Posted>>,
}

pub(super) struct Posted {
    pub(super) state: collab_core::replica::ReplicaState,
    pub(super) items: usize,
}

impl ReplicaLog {
    pub(super) fn post(&self, posted: Posted) {
        self.posted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(posted);
    }

    pub(super) fn take(&self) -> Vec<Posted> {
        std::mem::take(&mut *self.posted.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
