//! The operators the interpreter runs, one module per operator or family, and the table that
//! maps each builtin name to its preparation ([`OPERATORS`]).
//!
//! Each module holds TFLite's `Prepare` for its operators, `fn prepare(&Ctx) -> Result<Step,
//! TfliteError>`: it checks types, shapes and quantization and precomputes the constants
//! (multipliers, tables, packed weights) into a [`Step`] that runs without failing. The
//! SIMD and portable inner loops they run are in [`crate::kernels`]; the checks they share
//! are in [`super::prepare`]. An operator not in the table is an error, never skipped.

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::Ctx;

pub mod activations;
pub(crate) mod add;
pub mod concat;
pub(crate) mod conv;
pub mod elementwise;
pub(crate) mod fully_connected;
pub(crate) mod pad;
pub(crate) mod pool;
pub(crate) mod quantize;
pub(crate) mod reshape;
pub(crate) mod softmax;
pub(crate) mod transpose;
pub(crate) mod transpose_conv;

/// An operator's preparation.
pub(crate) type Prepare = fn(&Ctx) -> Result<Step, TfliteError>;

/// Every builtin operator the interpreter runs, by its TFLite name, with its preparation.
pub(crate) const OPERATORS: &[(&str, Prepare)] = &[
    ("CONV_2D", conv::prepare),
    ("DEPTHWISE_CONV_2D", conv::prepare),
    ("FULLY_CONNECTED", fully_connected::prepare),
    ("AVERAGE_POOL_2D", pool::prepare),
    ("MAX_POOL_2D", pool::prepare),
    ("RESHAPE", reshape::prepare),
    ("SOFTMAX", softmax::prepare),
    ("ADD", add::prepare),
    ("SUB", elementwise::prepare_sub_mul),
    ("MUL", elementwise::prepare_sub_mul),
    ("PAD", pad::prepare),
    ("QUANTIZE", quantize::prepare_quantize),
    ("DEQUANTIZE", quantize::prepare_dequantize),
    ("TRANSPOSE_CONV", transpose_conv::prepare),
    ("TRANSPOSE", transpose::prepare),
    ("CONCATENATION", concat::prepare),
    ("LOGISTIC", activations::prepare),
    ("TANH", activations::prepare),
    ("HARD_SWISH", activations::prepare),
    ("LEAKY_RELU", activations::prepare),
    ("RELU", activations::prepare),
    ("RELU6", activations::prepare),
];

/// The step of the operator `ctx` describes, or an error when the interpreter does not run it.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    match OPERATORS.iter().find(|(name, _)| *name == ctx.name) {
        Some((_, prepare)) => prepare(ctx),
        None => Err(ctx.unsupported()),
    }
}

#[cfg(test)]
mod tests {
    use super::OPERATORS;

    /// Each operator has one entry.
    #[test]
    fn operators_are_listed_once() {
        let mut names: Vec<&str> = OPERATORS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), OPERATORS.len());
    }
}
