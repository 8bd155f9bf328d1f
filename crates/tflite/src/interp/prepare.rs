//! What every operator's preparation shares: the [`Ctx`] of one operator (its tensors, named
//! errors) and the checks and conversions of TFLite's `Prepare` functions (per-tensor
//! quantization, fused activation ranges, output sizes and padding, constant weights and
//! biases, per-channel weight scales).

use crate::TfliteError;
use crate::reader::{Activation, Graph, Operator, Padding, TensorInfo, TensorType};

/// "operator `n` (`op`): `what`", the error of a model the interpreter cannot run.
pub(crate) fn bad(n: usize, op: &str, what: impl std::fmt::Display) -> TfliteError {
    TfliteError::Unsupported(format!("operator {n} ({op}): {what}"))
}

/// `(scale, zero point)` of a per-tensor quantized tensor.
pub(crate) fn per_tensor(t: &TensorInfo, n: usize, op: &str) -> Result<(f32, i32), TfliteError> {
    let q = t.quantization.as_ref().ok_or_else(|| {
        bad(
            n,
            op,
            format!("tensor `{}` has no quantization parameters", t.name),
        )
    })?;
    let scale = q.scale[0];
    let zp = q.zero_point.first().copied().unwrap_or(0);
    if q.scale.len() != 1 || !(scale.is_finite() && scale > 0.0) || !(-128..=127).contains(&zp) {
        return Err(bad(
            n,
            op,
            format!(
                "tensor `{}` needs one positive scale and an int8 zero point (has {:?} / {:?})",
                t.name, q.scale, q.zero_point
            ),
        ));
    }
    Ok((scale, zp as i32))
}

/// TFLite's `CalculateActivationRangeQuantized` for int8.
pub(crate) fn activation_range(act: Activation, scale: f32, zp: i32) -> Result<[i32; 2], String> {
    // As TFLite: the bound must quantize into int32, else the model is refused.
    let q = |f: f32| -> Result<i32, String> {
        let t = (f / scale).round();
        if !(t >= i32::MIN as f32 && t <= i32::MAX as f32) {
            return Err(format!(
                "the fused activation bound {f} overflows int32 at output scale {scale}"
            ));
        }
        Ok(zp.wrapping_add(t as i32))
    };
    Ok(match act {
        Activation::None => [-128, 127],
        Activation::Relu => [q(0.0)?.max(-128), 127],
        Activation::Relu6 => [q(0.0)?.max(-128), q(6.0)?.min(127)],
        Activation::ReluN1To1 => [q(-1.0)?.max(-128), q(1.0)?.min(127)],
        Activation::Other(a) => return Err(format!("fused activation {a} is not supported")),
    })
}

/// TFLite's output size and leading padding for one spatial dimension (`None` when the window
/// does not fit). The trailing padding of SAME is the rest:
/// `(out − 1) · stride + (filter − 1) · dilation + 1 − input − leading`, at least 0.
pub fn out_and_pad(
    padding: Padding,
    input: usize,
    filter: usize,
    stride: usize,
    dilation: usize,
) -> Option<(usize, usize)> {
    let effective = (filter - 1).checked_mul(dilation)?.checked_add(1)?;
    let out = match padding {
        Padding::Same => input.div_ceil(stride),
        Padding::Valid => (input + stride).checked_sub(effective)? / stride,
    };
    let total = ((out.checked_sub(1)?) * stride + effective).saturating_sub(input);
    Some((out, total / 2))
}

/// The number of values of `shape`, if it fits in `usize`.
pub(crate) fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d))
}

/// The values of a constant int32 tensor of `len` values (a shape, a permutation), if it is one.
pub(crate) fn const_i32(t: &TensorInfo, len: usize) -> Option<Vec<i32>> {
    match (t.dtype, t.data.as_deref()) {
        (TensorType::Int32, Some(d)) if d.len() == 4 * len => Some(le_i32(d)),
        _ => None,
    }
}

/// Little-endian int32 values.
fn le_i32(d: &[u8]) -> Vec<i32> {
    d.chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// One operator being prepared: the graph, its position and name, the element count of every
/// computed tensor, and its first output.
pub(crate) struct Ctx<'a> {
    pub(crate) graph: &'a Graph,
    /// Position in the graph's operator list.
    pub(crate) n: usize,
    pub(crate) op: &'a Operator,
    /// Builtin name, e.g. `CONV_2D`.
    pub(crate) name: &'a str,
    /// Element count of every computed tensor (0 for constants).
    pub(crate) sizes: &'a [usize],
    /// The first output: tensor index and tensor.
    pub(crate) out: (usize, &'a TensorInfo),
}

impl<'a> Ctx<'a> {
    /// Operator `n` of `graph`; an error when it has no output.
    pub(crate) fn new(
        graph: &'a Graph,
        n: usize,
        op: &'a Operator,
        sizes: &'a [usize],
    ) -> Result<Self, TfliteError> {
        let name = op.op.as_str();
        let o = *op
            .outputs
            .first()
            .ok_or_else(|| bad(n, name, "has no output"))?;
        Ok(Self {
            graph,
            n,
            op,
            name,
            sizes,
            out: (o as usize, &graph.tensors[o as usize]),
        })
    }

    /// An error about this operator.
    pub(crate) fn bad(&self, what: impl std::fmt::Display) -> TfliteError {
        bad(self.n, self.name, what)
    }

    /// The error for an operator, or options, the interpreter does not run.
    pub(crate) fn unsupported(&self) -> TfliteError {
        self.bad(format!(
            "this operator (options {:?}) is not supported by the int8 interpreter",
            self.op.options
        ))
    }

    /// Input `k`: tensor index and tensor (an error when absent).
    pub(crate) fn input(&self, k: usize) -> Result<(usize, &'a TensorInfo), TfliteError> {
        let i = *self
            .op
            .inputs
            .get(k)
            .filter(|i| **i >= 0)
            .ok_or_else(|| self.bad(format!("input {k} is missing")))?;
        Ok((i as usize, &self.graph.tensors[i as usize]))
    }

    /// An error unless `t` is a computed int8 tensor.
    pub(crate) fn int8(&self, t: &TensorInfo) -> Result<(), TfliteError> {
        if t.dtype != TensorType::Int8 || t.data.is_some() {
            return Err(self.bad(format!(
                "tensor `{}` must be a computed int8 tensor",
                t.name
            )));
        }
        Ok(())
    }

    /// `(scale, zero point)` of per-tensor quantized `t`.
    pub(crate) fn per_tensor(&self, t: &TensorInfo) -> Result<(f32, i32), TfliteError> {
        per_tensor(t, self.n, self.name)
    }

    /// An error unless `a` and `b` have the same per-tensor quantization.
    pub(crate) fn same_quantization(
        &self,
        a: &TensorInfo,
        b: &TensorInfo,
    ) -> Result<(), TfliteError> {
        if self.per_tensor(a)? != self.per_tensor(b)? {
            return Err(self.bad("input and output must share quantization"));
        }
        Ok(())
    }

    /// The fused activation's range in output integers ([`activation_range`]).
    pub(crate) fn activation(
        &self,
        act: Activation,
        scale: f32,
        zp: i32,
    ) -> Result<[i32; 2], TfliteError> {
        activation_range(act, scale, zp).map_err(|e| self.bad(e))
    }

    /// The shape of 4-D `t`.
    pub(crate) fn shape4(&self, t: &TensorInfo) -> Result<[usize; 4], TfliteError> {
        <[usize; 4]>::try_from(t.shape.as_slice())
            .map_err(|_| self.bad(format!("tensor `{}` must be 4-D, is {:?}", t.name, t.shape)))
    }

    /// The `[in, out]` shapes of an NHWC operator: an error unless input `it` and output `ot`
    /// are computed int8 tensors (checked first, input then output) and both 4-D.
    pub(crate) fn int8_nhwc(
        &self,
        it: &TensorInfo,
        ot: &TensorInfo,
    ) -> Result<[[usize; 4]; 2], TfliteError> {
        self.int8(it)?;
        self.int8(ot)?;
        Ok([self.shape4(it)?, self.shape4(ot)?])
    }

    /// The bytes of constant int8 weights `t`.
    pub(crate) fn const_i8(&self, t: &'a TensorInfo) -> Result<&'a [u8], TfliteError> {
        if t.dtype != TensorType::Int8 {
            return Err(self.bad(format!(
                "weights `{}` must be int8, are {:?}",
                t.name, t.dtype
            )));
        }
        t.data
            .as_deref()
            .ok_or_else(|| self.bad(format!("weights `{}` are not constant", t.name)))
    }

    /// The int32 bias of `units` values at input `k` (zeros when the input is absent).
    pub(crate) fn bias(&self, k: usize, units: usize) -> Result<Vec<i32>, TfliteError> {
        let Some(&i) = self.op.inputs.get(k).filter(|i| **i >= 0) else {
            return Ok(vec![0; units]);
        };
        let t = &self.graph.tensors[i as usize];
        let data = t.data.as_deref().filter(|_| t.dtype == TensorType::Int32);
        let Some(data) = data.filter(|d| d.len() == units * 4) else {
            return Err(self.bad(format!(
                "bias `{}` must be {units} constant int32 values",
                t.name
            )));
        };
        Ok(le_i32(data))
    }

    /// Per-output-channel weight scales of `t` (zero points must be 0).
    pub(crate) fn filter_scales(
        &self,
        t: &TensorInfo,
        units: usize,
    ) -> Result<Vec<f32>, TfliteError> {
        let q = t
            .quantization
            .as_ref()
            .ok_or_else(|| self.bad(format!("weights `{}` are not quantized", t.name)))?;
        if q.zero_point.iter().any(|z| *z != 0) {
            return Err(self.bad(format!("weights `{}` must have zero point 0", t.name)));
        }
        let scales = match q.scale.len() {
            1 => vec![q.scale[0]; units],
            l if l == units => q.scale.clone(),
            l => {
                return Err(self.bad(format!(
                    "weights `{}` have {l} scales for {units} output channels",
                    t.name
                )));
            }
        };
        if scales.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(self.bad(format!("weights `{}` have an invalid scale", t.name)));
        }
        Ok(scales)
    }
}
