//! Quantization-aware training of the weights of a whole model without changing its types:
//! symmetric int8 weight fake quantization attached to every selected weight through burn's
//! parameter reparameterization.
//!
//! Each weight gets a [`WeightQat`] module whose `apply` is [`WeightFakeQuant`], the weight
//! transform `QatAware` uses: scales from the current weight's largest magnitudes (per output
//! channel or per tensor), values rounded to `[-127, 127]` steps, straight-through gradients.
//! It holds no tensors, so the record is the model's own.
//!
//! Activations are not covered: a reparameterization changes parameters, not layer outputs.
//! Activation fake-quant (and int8 export) of an arbitrary model goes through
//! `collab_models::graph::GraphBuilder`; see `docs/DESIGN.md` ("Whole models").
//!
//! ```no_run
//! use burn::module::Module;
//! use burn::nn::{Linear, LinearConfig};
//! use burn::tensor::Device;
//! use collab_quant::{QatConfig, WholeQat};
//!
//! #[derive(Module, Debug)]
//! struct Net {
//!     fc: Linear,
//! }
//!
//! let device = Device::flex().autodiff();
//! let net = Net { fc: LinearConfig::new(16, 8).init(&device) };
//! let qat = WholeQat::new(QatConfig::new().with_weight_per_channel(true))?;
//! let (net, _wrapped) = qat.wrap(net)?;
//! // train as usual: `fc` computes with int8-representable weights
//! let plain = collab_core::whole::strip(net); // the fake-quantized weights
//! # Ok::<(), collab_quant::QuantError>(())
//! ```

use std::collections::BTreeMap;

use crate::{FusedActivation, QatConfig, QuantError, WeightFakeQuant, WeightQatReport};
use burn::module::{Module, Reparameterization};
use burn::tensor::Tensor;
use collab_core::WeightTransform;
use collab_core::host::to_finite_vec_f32;
use collab_core::whole::{self, Selection, Wrapped};

/// The reparameterization's name (it saves no tensors).
pub const NAME: &str = "qat";

/// The weight fake quantization attached to one weight.
#[derive(Module, Debug)]
pub struct WeightQat {
    #[module(skip)]
    quant: WeightFakeQuant,
    /// Whether the weight's first two axes are swapped to put output channels first.
    #[module(skip)]
    swapped: bool,
    #[module(skip)]
    per_channel: bool,
}

impl WeightQat {
    /// Whether the scales are per output channel.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }
}

impl Reparameterization for WeightQat {
    const NAME: &'static str = NAME;

    /// Symmetric int8 fake quantization, same shape.
    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        let swap = |t: Tensor<D>| if self.swapped { t.swap_dims(0, 1) } else { t };
        swap(self.quant.apply(swap(base)))
    }
}

/// Weight fake quantization of every selected weight of a model whose types stay unchanged.
#[derive(Clone, Debug)]
pub struct WholeQat {
    config: QatConfig,
    selection: Selection,
}

impl WholeQat {
    /// Fake-quantize every rank-2+ weight ([`Selection::all`]); scales per channel or per
    /// tensor as `config.weight_per_channel` says (default: TFLite's, per channel except for
    /// `Linear` / `Embedding` weights). Fails if `config` asks for what a reparameterization
    /// cannot do: a fused activation or input quantization (activations are the graph path's).
    pub fn new(config: QatConfig) -> Result<Self, QuantError> {
        let graph = "activations are not parameters, so a reparameterization cannot quantize \
                     them; for activation fake-quant of a whole model build it as a \
                     collab_models::graph::GraphSpec and train it through GraphBuilder";
        if config.activation != FusedActivation::None {
            return Err(QuantError::Setting {
                field: "activation",
                reason: format!("a fused activation needs the layer's output: {graph}"),
            });
        }
        if config.quantize_input {
            return Err(QuantError::Setting {
                field: "quantize_input",
                reason: format!("input quantization needs the layer's input: {graph}"),
            });
        }
        Ok(Self {
            config,
            selection: Selection::all(),
        })
    }

    /// Fake-quantize the weights `selection` picks instead.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Attach weight fake quantization to every selected weight. Returns the model and what was
    /// wrapped and left as is. Fails on per-channel scales for a weight whose output-channel axis
    /// is unknown, or on a weight that already carries a reparameterization.
    pub fn wrap<M: Module>(&self, model: M) -> Result<(M, Wrapped), QuantError> {
        let (selected, summary) = whole::plan(&model, &self.selection)?;
        let mut states = BTreeMap::new();
        for weight in &selected {
            let site = &weight.site;
            let layout = site.layout();
            let per_channel = self.config.per_channel_for(&layout);
            site.channel_view(per_channel)?;
            states.insert(
                site.path.clone(),
                WeightQat {
                    quant: WeightFakeQuant::new(&layout, per_channel),
                    swapped: site.swapped(),
                    per_channel,
                },
            );
        }
        tracing::info!(
            wrapped = summary.wrapped.len(),
            left_as_is = summary.left_as_is.len(),
            "whole-model weight QAT attached"
        );
        Ok((whole::attach(model, states), summary))
    }

    /// Per-weight figures of every weight of `model` wrapped by this QAT, in traversal order
    /// (`name` is the weight's path): the weight scales from the current stored weights, as
    /// the forward pass computes them. The whole-model form of `QatAware::report`, shaped as
    /// `WholePruning::report` and `WholeClustering::report`. Fails on non-finite weights
    /// (naming the path).
    pub fn report<M: Module>(&self, model: &M) -> Result<Vec<WeightQatReport>, QuantError> {
        whole::scan(model, Some(NAME))
            .into_iter()
            .map(|w| {
                let site = self.selection.refine(w.site);
                let layout = site.layout();
                let per_channel = self.config.per_channel_for(&layout);
                let values = site.view_order(&to_finite_vec_f32(w.base, &site.path)?);
                Ok(WeightQatReport::of(
                    &site.path,
                    site.describe(),
                    &values,
                    &layout,
                    per_channel,
                ))
            })
            .collect()
    }
}
