//! Post-training quantization: calibrate the activation ranges of every `ActQuant` in a model
//! over representative batches, without training. The parameters come out of the same
//! quantizers (and the same [`QuantParams`](crate::QuantParams) rules) that QAT and export use.

use burn::module::{Flag, Module, ModuleMapper, Param};
use burn::tensor::{Int, Tensor};

const ACT_QUANT: &str = "Struct:ActQuant";

struct CalibrationSwitch {
    stack: Vec<(String, String)>,
    on: bool,
    reset: bool,
}

impl CalibrationSwitch {
    fn field(&self) -> Option<&str> {
        let (field, container) = self.stack.last()?;
        (container == ACT_QUANT).then_some(field.as_str())
    }
}

impl ModuleMapper for CalibrationSwitch {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }

    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        if self.field() == Some("calibrating") {
            return flag.with_value(self.on);
        }
        flag
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        if self.reset && self.field() == Some("observed") {
            let id = param.id;
            let zero = param.val().zeros_like();
            return Param::initialized(id, zero);
        }
        param
    }
}

/// Put every activation quantizer of `model` in calibration mode, forgetting earlier ranges.
/// The model is switched to evaluation (`valid()`): calibration needs no gradients.
pub fn begin_calibration<M: Module>(model: M) -> M {
    model.valid().map(&mut CalibrationSwitch {
        stack: Vec::new(),
        on: true,
        reset: true,
    })
}

/// End calibration: the quantizers keep their ranges and fake-quantize from now on.
pub fn end_calibration<M: Module>(model: M) -> M {
    model.map(&mut CalibrationSwitch {
        stack: Vec::new(),
        on: false,
        reset: false,
    })
}

/// Calibrate `model` on `batches`: `forward(&model, batch)` runs one representative batch.
/// Returns the model in evaluation mode with every range set; `model.train()` continues with QAT.
pub fn calibrate<M: Module, B>(
    model: M,
    batches: impl IntoIterator<Item = B>,
    mut forward: impl FnMut(&M, B),
) -> M {
    let model = begin_calibration(model);
    let mut count = 0usize;
    for batch in batches {
        forward(&model, batch);
        count += 1;
    }
    tracing::info!(batches = count, "calibration done");
    end_calibration(model)
}
