//! Parameter and multiply-accumulate counts, computed from a model's graph
//! ([`crate::graph::GraphSpec::info`]).

use serde::Serialize;

/// One weight layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerInfo {
    /// Its path in the model, e.g. `blocks.3.pw`.
    pub name: String,
    /// `conv`, `depthwise` or `linear`.
    pub kind: &'static str,
    /// `[channels, height, width]` in (or `[features]` for linear).
    pub input: Vec<usize>,
    /// `[channels, height, width]` out (or `[features]`).
    pub output: Vec<usize>,
    /// Weights and biases (BatchNorm excluded, as the papers count).
    pub params: usize,
    /// Multiply-accumulates for one input.
    pub macs: usize,
}

/// A whole model's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelInfo {
    /// The model's name.
    pub model: String,
    /// Input `[channels, height, width]`.
    pub input: Vec<usize>,
    /// Weight layers in forward order.
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' parameters.
    pub params: usize,
    /// BatchNorm parameters (γ, β, mean, variance) on top of `params`.
    pub batch_norm_params: usize,
    /// Sum of the layers' MACs.
    pub macs: usize,
}

impl ModelInfo {
    /// A table: one line per layer, then the totals.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<18} {:<10} {:>16} {:>16} {:>10} {:>14}\n",
            "layer", "kind", "input", "output", "params", "MACs"
        );
        for l in &self.layers {
            s += &format!(
                "{:<18} {:<10} {:>16} {:>16} {:>10} {:>14}\n",
                l.name,
                l.kind,
                format!("{:?}", l.input),
                format!("{:?}", l.output),
                l.params,
                l.macs
            );
        }
        s += &format!(
            "{}: {} parameters (+{} BatchNorm), {} MACs ({:.1} M)\n",
            self.model,
            self.params,
            self.batch_norm_params,
            self.macs,
            self.macs as f64 / 1e6
        );
        s
    }
}
