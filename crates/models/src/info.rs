//! Parameter and multiply-accumulate counts, computed from a model's configuration.

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

/// Accumulates layers while walking a configuration.
pub(crate) struct Counter {
    pub info: ModelInfo,
    pub shape: [usize; 3],
}

impl Counter {
    pub fn new(model: &str, input: [usize; 3]) -> Self {
        Self {
            info: ModelInfo {
                model: model.to_string(),
                input: input.to_vec(),
                layers: Vec::new(),
                params: 0,
                batch_norm_params: 0,
                macs: 0,
            },
            shape: input,
        }
    }

    /// A convolution with TF SAME padding (output `ceil(in / stride)`), followed by BatchNorm.
    pub fn conv(
        &mut self,
        name: String,
        out: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        groups: usize,
        bias: bool,
    ) {
        let [cin, h, w] = self.shape;
        let (oh, ow) = (h.div_ceil(stride[0]), w.div_ceil(stride[1]));
        let per_out = kernel[0] * kernel[1] * cin / groups;
        let params = per_out * out + if bias { out } else { 0 };
        let macs = oh * ow * out * per_out;
        self.info.layers.push(LayerInfo {
            name,
            kind: if groups > 1 && groups == cin {
                "depthwise"
            } else {
                "conv"
            },
            input: vec![cin, h, w],
            output: vec![out, oh, ow],
            params,
            macs,
        });
        self.info.params += params;
        self.info.batch_norm_params += 4 * out;
        self.info.macs += macs;
        self.shape = [out, oh, ow];
    }

    pub fn linear(&mut self, name: String, out: usize) {
        let cin = self.shape[0];
        let params = cin * out + out;
        self.info.layers.push(LayerInfo {
            name,
            kind: "linear",
            input: vec![cin],
            output: vec![out],
            params,
            macs: cin * out,
        });
        self.info.params += params;
        self.info.macs += cin * out;
        self.shape = [out, 1, 1];
    }

    pub fn finish(self) -> ModelInfo {
        self.info
    }
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
