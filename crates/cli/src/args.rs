//! Options that several subcommands share, and the value parsers of all of them
//! ([`parse`]).

pub mod parse;

use clap::ValueEnum;
use collab::ModelSpec;

use crate::error::CliError;
use crate::output;

/// `--device`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum DeviceArg {
    /// burn's flex CPU backend.
    #[value(alias = "flex")]
    Cpu,
    /// A GPU through burn's wgpu backend (needs a build with `--features wgpu`).
    #[value(alias = "gpu")]
    Wgpu,
}

impl From<DeviceArg> for collab::device::Backend {
    fn from(d: DeviceArg) -> Self {
        match d {
            DeviceArg::Cpu => Self::Cpu,
            DeviceArg::Wgpu => Self::Wgpu,
        }
    }
}

/// `--model NAME --width W`: the model a command builds (`info`, `train`, `bench train`).
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// Model name, or a model file (.onnx, float .tflite) for its architecture.
    #[arg(long, value_parser = parse::Model)]
    model: ModelSpec,
    /// Width multiplier (MobileNets), in (0, 4].
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = parse::width)]
    width: f64,
}

impl ModelArgs {
    /// The model with `--width` (a usage error for a model without a width multiplier).
    pub fn spec(&self) -> Result<ModelSpec, CliError> {
        let name = self.model.name();
        let width = self.width;
        self.model
            .clone()
            .with_width(width)
            .map_err(|e| CliError::Usage(format!("--width {width} with --model {name}: {e}")))
    }
}

/// `--devices N`: data-parallel training (`train` and the single-stage commands).
#[derive(clap::Args, Debug)]
pub struct DevicesArg {
    /// Devices to train on, data parallel (burn-train's multi-device strategy): each step
    /// takes DEVICES × --batch-size items. CPU: replicas sharing its cores; wgpu: the first
    /// DEVICES discrete GPUs.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = parse::devices)]
    pub devices: usize,
}

/// `--json` of the commands that write something (`import`, `train`, `export`): how to print
/// what they wrote.
#[derive(clap::Args, Debug)]
pub struct WrittenArg {
    /// Print what was written as one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

impl WrittenArg {
    /// Print what the command wrote ([`output::emit`]).
    pub fn emit<T: serde::Serialize + std::fmt::Display>(&self, written: &T) {
        output::emit(written, self.json);
    }
}
