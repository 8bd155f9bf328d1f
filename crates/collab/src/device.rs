//! Where tensors live: the CPU (`flex`) by default, a GPU through burn's `wgpu` backend in a
//! build with the `wgpu` feature.
//!
//! One process computes on one backend: `collab --device wgpu …` and the examples'
//! `--device` call [`select`] once at start, and every model, batch, training step and
//! evaluation of this crate is then created on [`compute`] (training on
//! `compute().autodiff()`); a data-parallel run adds the [`replicas`] of that device. The int8 interpreter always runs on the CPU: it is ours, not burn's.

use std::str::FromStr;
use std::sync::Mutex;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::CollabError;

/// The backends a run can ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's pure-Rust `flex` CPU backend (gemm + rayon).
    #[default]
    Cpu,
    /// burn's `wgpu` backend on the best GPU wgpu finds (Vulkan, Metal or DX12); needs a
    /// build with `--features wgpu`.
    Wgpu,
}

impl FromStr for Backend {
    type Err = CollabError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            _ => Err(CollabError::Usage(format!(
                "--device {s}: unknown device; use cpu (flex) or wgpu"
            ))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
        })
    }
}

impl Backend {
    /// Whether this build can compute on this backend.
    pub fn available(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The burn device, or a usage error that says how to get a build that has it.
    pub fn device(self) -> Result<Device, CollabError> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Wgpu => wgpu_device(),
        }
    }

    /// The name burn-collab reports in benchmarks and manifests (`flex`, `wgpu`).
    pub fn backend_name(self) -> &'static str {
        match self {
            Self::Cpu => "flex",
            Self::Wgpu => "wgpu",
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device, CollabError> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_device() -> Result<Device, CollabError> {
    Err(CollabError::Usage(
        "--device wgpu: this binary was built without GPU support; rebuild it with the `wgpu` \
         feature: `cargo build --release -p collab-cli --features wgpu` for the `collab` \
         binary, `cargo run --release --features wgpu --example NAME -- --device wgpu` for an \
         example"
            .into(),
    ))
}

static SELECTED: Mutex<Backend> = Mutex::new(Backend::Cpu);

/// Compute on `backend` from now on in this process. Fails (and changes nothing) when this
/// build does not have it.
pub fn select(backend: Backend) -> Result<(), CollabError> {
    backend.device()?;
    *SELECTED.lock().unwrap_or_else(|e| e.into_inner()) = backend;
    tracing::debug!(device = %backend, "compute device selected");
    Ok(())
}

/// The backend chosen with [`select`] (the CPU unless something selected another).
pub fn selected() -> Backend {
    *SELECTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The device models, batches and evaluations are created on (without autodiff).
pub fn compute() -> Device {
    // `select` only stores backends whose device builds.
    selected().device().unwrap_or_else(|_| Device::flex())
}

/// The devices of a data-parallel run on `n` replicas (without autodiff), the first being
/// [`compute`]: `n` handles of the one CPU device (the replicas share its cores), or the first
/// `n` discrete GPUs wgpu finds.
pub fn replicas(n: usize) -> Vec<Device> {
    let n = n.max(1);
    match selected() {
        Backend::Cpu => vec![compute(); n],
        Backend::Wgpu => (0..n).map(wgpu_replica).collect(),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_replica(i: usize) -> Device {
    if i == 0 {
        compute()
    } else {
        Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i))
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_replica(_: usize) -> Device {
    compute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_unknown_ones_say_what_exists() {
        assert_eq!("cpu".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("FLEX".parse::<Backend>().unwrap(), Backend::Cpu);
        assert_eq!("wgpu".parse::<Backend>().unwrap(), Backend::Wgpu);
        let err = "cuda".parse::<Backend>().unwrap_err().to_string();
        assert!(
            err.contains("cuda") && err.contains("cpu") && err.contains("wgpu"),
            "{err}"
        );
        assert_eq!(Backend::default(), Backend::Cpu);
        assert_eq!(
            Backend::Cpu.to_string().parse::<Backend>().unwrap(),
            Backend::Cpu
        );
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_is_a_usage_error_that_keeps_the_cpu() {
        assert!(!Backend::Wgpu.available());
        let err = select(Backend::Wgpu).unwrap_err();
        assert!(matches!(err, CollabError::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("--features wgpu"), "{err}");
        assert_eq!(selected(), Backend::Cpu);
        select(Backend::Cpu).unwrap();
        assert_eq!(compute(), Device::flex());
    }
}
