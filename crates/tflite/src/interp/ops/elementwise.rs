//! int8 ADD, SUB and MUL with broadcasting and constant operands, as LiteRT's reference kernels
//! (`reference_integer_ops::{Add, BroadcastAdd4DSlow, Mul, BroadcastMul4DSlow}`) and TensorFlow
//! Lite Micro (`add.cc`, `sub.cc`, `mul.cc`) compute them.
//!
//! Shapes broadcast as numpy's, up to 4-D: each input is right-aligned against the output and
//! repeated along its axes of size 1 (TFLite's `NdArrayDesc`). Per element:
//! - ADD / SUB: both inputs offset by their zero points, shifted left by 20, scaled by
//!   `scale_i / (2 · max scale)` (`MultiplyByQuantizedMultiplierSmallerThanOneExp`), summed or
//!   subtracted, scaled by `2 · max scale / (2²⁰ · output scale)`, offset, clamped.
//! - MUL: `(a − za)(b − zb)` scaled by `sa · sb / so` (`MultiplyByQuantizedMultiplier`), offset,
//!   clamped.
//!
//! Where the runtimes differ, each [`Flavor`]'s arithmetic is kept: TensorFlow Lite Micro's SUB
//! computes its real multipliers in `float` and subtracts the scaled second input, LiteRT's in
//! `double` and adds it with the multiplier negated (`sub.cc`: "using the add kernels"); the
//! rounding of the doubling high multiply is not symmetric, so the two can differ by 1.

use crate::TfliteError;
use crate::fixed::{mbqm, quantize_multiplier};
use crate::interp::prepare::{Ctx, activation_range, bad, per_tensor};
use crate::interp::{Flavor, Step};
use crate::reader::{Activation, Graph, Operator, Options, TensorInfo, TensorType};

/// An input of an element-wise kernel.
#[derive(Clone, Debug)]
pub(crate) enum Operand {
    /// A computed tensor, by index.
    Tensor(usize),
    /// Constant int8 values.
    Const(Vec<i8>),
}

/// ADD / SUB parameters (`ArithmeticParams` of the general 8-bit path).
#[derive(Clone, Copy, Debug)]
struct AddParams {
    /// `(multiplier, shift)` of each input.
    inputs: [(i32, i32); 2],
    output: (i32, i32),
}

#[derive(Clone, Debug)]
enum Arith {
    Add(AddParams),
    /// SUB: TensorFlow Lite Micro's and LiteRT's parameters (the second multiplier negated).
    Sub {
        micro: AddParams,
        reference: AddParams,
    },
    Mul {
        multiplier: i32,
        shift: i32,
    },
}

/// A prepared ADD, SUB or MUL.
#[derive(Clone, Debug)]
pub(crate) struct Elementwise {
    inputs: [Operand; 2],
    pub(crate) output: usize,
    /// Output shape, padded to 4-D.
    out_shape: [usize; 4],
    /// Per input, the step of each output axis in that input (0 where it is repeated).
    strides: [[usize; 4]; 2],
    offsets: [i32; 2],
    output_offset: i32,
    act: [i32; 2],
    arith: Arith,
}

/// `shape` right-aligned in 4-D (leading 1s), or `None` above 4-D.
fn pad4(shape: &[usize]) -> Option<[usize; 4]> {
    if shape.len() > 4 {
        return None;
    }
    let mut out = [1; 4];
    out[4 - shape.len()..].copy_from_slice(shape);
    Some(out)
}

/// The numpy broadcast of two shapes (right-aligned), or `None` when an axis differs and
/// neither is 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        let lead = rank - s.len();
        if i < lead { 1 } else { s[i - lead] }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Whether an ADD needs this module (its inputs' shapes differ or one is a constant) rather
/// than the same-shape kernel of the interpreter.
pub(crate) fn is_general(graph: &Graph, op: &Operator) -> bool {
    let t = |k: usize| {
        op.inputs
            .get(k)
            .and_then(|&i| usize::try_from(i).ok())
            .and_then(|i| graph.tensors.get(i))
    };
    match (t(0), t(1)) {
        (Some(a), Some(b)) => a.shape != b.shape || a.data.is_some() || b.data.is_some(),
        _ => false,
    }
}

/// SUB or MUL of `ctx` (ADD comes through [`super::add::prepare`]).
pub(crate) fn prepare_sub_mul(ctx: &Ctx) -> Result<Step, TfliteError> {
    match (ctx.name, &ctx.op.options) {
        ("MUL", Options::Mul { activation }) | ("SUB", Options::Sub { activation }) => {
            prepare_step(ctx, *activation)
        }
        _ => Err(ctx.unsupported()),
    }
}

/// ADD, SUB or MUL of `ctx` as a step.
pub(crate) fn prepare_step(ctx: &Ctx, activation: Activation) -> Result<Step, TfliteError> {
    prepare(ctx.graph, ctx.n, ctx.op, activation).map(|k| Step::Elementwise(Box::new(k)))
}

/// Prepare ADD, SUB or MUL operator `n`: shapes, quantization, multipliers.
pub(crate) fn prepare(
    graph: &Graph,
    n: usize,
    op: &Operator,
    activation: Activation,
) -> Result<Elementwise, TfliteError> {
    let name = op.op.as_str();
    let per_tensor = |t: &TensorInfo| per_tensor(t, n, name);
    let tensor = |k: usize| -> Result<(usize, &TensorInfo), TfliteError> {
        let i = op
            .inputs
            .get(k)
            .and_then(|&i| usize::try_from(i).ok())
            .filter(|&i| i < graph.tensors.len())
            .ok_or_else(|| bad(n, name, format!("input {k} is missing")))?;
        Ok((i, &graph.tensors[i]))
    };
    if op.inputs.len() != 2 {
        return Err(bad(n, name, "takes exactly two inputs"));
    }
    let (ai, at) = tensor(0)?;
    let (bi, bt) = tensor(1)?;
    let oi = op
        .outputs
        .first()
        .and_then(|&o| usize::try_from(o).ok())
        .filter(|&o| o < graph.tensors.len())
        .ok_or_else(|| bad(n, name, "has no output"))?;
    let ot = &graph.tensors[oi];
    for t in [at, bt, ot] {
        if t.dtype != TensorType::Int8 {
            return Err(bad(
                n,
                name,
                format!("tensor `{}` must be int8, is {:?}", t.name, t.dtype),
            ));
        }
    }
    if ot.data.is_some() {
        return Err(bad(n, name, "writes to a constant"));
    }
    let operand = |i: usize, t: &TensorInfo| -> Result<Operand, TfliteError> {
        Ok(match &t.data {
            None => Operand::Tensor(i),
            Some(d) if d.len() == t.shape.iter().product::<usize>() => {
                Operand::Const(d.iter().map(|b| *b as i8).collect())
            }
            Some(_) => {
                return Err(bad(
                    n,
                    name,
                    format!("constant `{}` does not hold {:?} values", t.name, t.shape),
                ));
            }
        })
    };
    let shapes = broadcast_shape(&at.shape, &bt.shape)
        .filter(|s| *s == ot.shape)
        .and_then(|_| Some((pad4(&at.shape)?, pad4(&bt.shape)?, pad4(&ot.shape)?)));
    let Some((sa, sb, so)) = shapes else {
        return Err(bad(
            n,
            name,
            format!(
                "inputs {:?} and {:?} do not broadcast to the output {:?} (numpy rules, at most 4-D)",
                at.shape, bt.shape, ot.shape
            ),
        ));
    };
    let strides = |s: [usize; 4]| {
        let mut st = [0; 4];
        let mut step = 1;
        for d in (0..4).rev() {
            st[d] = if s[d] == 1 { 0 } else { step };
            step *= s[d];
        }
        st
    };
    let (qa, qb, qo) = (per_tensor(at)?, per_tensor(bt)?, per_tensor(ot)?);
    let act = activation_range(activation, qo.0, qo.1).map_err(|e| bad(n, name, e))?;
    let arith = match name {
        "MUL" => {
            // mul.cc Prepare: the product and quotient in double.
            let (multiplier, shift) = quantize_multiplier(qa.0 as f64 * qb.0 as f64 / qo.0 as f64);
            Arith::Mul { multiplier, shift }
        }
        "ADD" => Arith::Add(add_params_f64(qa.0, qb.0, qo.0, 1)),
        _ => Arith::Sub {
            micro: add_params_f32(qa.0, qb.0, qo.0),
            reference: add_params_f64(qa.0, qb.0, qo.0, -1),
        },
    };
    Ok(Elementwise {
        inputs: [operand(ai, at)?, operand(bi, bt)?],
        output: oi,
        out_shape: so,
        strides: [strides(sa), strides(sb)],
        offsets: [-qa.1, -qb.1],
        output_offset: qo.1,
        act,
        arith,
    })
}

/// LiteRT's `add.cc` / `sub.cc` (and TensorFlow Lite Micro's `add_common.cc`): the multipliers
/// in double; `sign` −1 negates the second (LiteRT's SUB).
fn add_params_f64(sa: f32, sb: f32, so: f32, sign: i32) -> AddParams {
    let twice_max = 2.0 * sa.max(sb) as f64;
    let a = quantize_multiplier(sa as f64 / twice_max);
    let b = quantize_multiplier(sb as f64 / twice_max);
    let out = quantize_multiplier(twice_max / ((1 << 20) as f64 * so as f64));
    AddParams {
        inputs: [a, (b.0 * sign, b.1)],
        output: out,
    }
}

/// TensorFlow Lite Micro's `sub_common.cc`: the multipliers in float, then widened.
fn add_params_f32(sa: f32, sb: f32, so: f32) -> AddParams {
    let twice_max = 2.0 * sa.max(sb);
    AddParams {
        inputs: [
            quantize_multiplier((sa / twice_max) as f64),
            quantize_multiplier((sb / twice_max) as f64),
        ],
        output: quantize_multiplier((twice_max / ((1 << 20) as f32 * so)) as f64),
    }
}

impl Elementwise {
    /// Run on the computed tensors `i8s`; returns the output values.
    pub(crate) fn run(&self, flavor: Flavor, i8s: &[Vec<i8>]) -> Vec<i8> {
        let data = |o: &Operand| -> Vec<i8> {
            match o {
                Operand::Tensor(i) => i8s[*i].clone(),
                Operand::Const(v) => v.clone(),
            }
        };
        let (a, b) = (data(&self.inputs[0]), data(&self.inputs[1]));
        let [o0, o1] = self.offsets;
        let finish = |v: i32| (v + self.output_offset).clamp(self.act[0], self.act[1]) as i8;
        let f = |x: i8, y: i8| -> i8 {
            let (x, y) = (o0 + x as i32, o1 + y as i32);
            match (&self.arith, flavor) {
                (Arith::Mul { multiplier, shift }, _) => finish(mbqm(x * y, *multiplier, *shift)),
                (Arith::Add(p), _) | (Arith::Sub { reference: p, .. }, Flavor::LiteRtReference) => {
                    let sx = mbqm(x << 20, p.inputs[0].0, p.inputs[0].1);
                    let sy = mbqm(y << 20, p.inputs[1].0, p.inputs[1].1);
                    finish(mbqm(sx + sy, p.output.0, p.output.1))
                }
                (Arith::Sub { micro: p, .. }, Flavor::Micro) => {
                    let sx = mbqm(x << 20, p.inputs[0].0, p.inputs[0].1);
                    let sy = mbqm(y << 20, p.inputs[1].0, p.inputs[1].1);
                    finish(mbqm(sx - sy, p.output.0, p.output.1))
                }
            }
        };
        let s = self.out_shape;
        let [sa, sb] = self.strides;
        let mut out = Vec::with_capacity(s.iter().product());
        for i0 in 0..s[0] {
            for i1 in 0..s[1] {
                for i2 in 0..s[2] {
                    for i3 in 0..s[3] {
                        let at = |st: [usize; 4]| i0 * st[0] + i1 * st[1] + i2 * st[2] + i3 * st[3];
                        out.push(f(a[at(sa)], b[at(sb)]));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_broadcast_as_numpy() {
        assert_eq!(
            broadcast_shape(&[1, 4, 4, 8], &[1, 1, 1, 8]),
            Some(vec![1, 4, 4, 8])
        );
        assert_eq!(broadcast_shape(&[8], &[2, 3, 8]), Some(vec![2, 3, 8]));
        assert_eq!(broadcast_shape(&[1], &[2, 3]), Some(vec![2, 3]));
        assert_eq!(broadcast_shape(&[2, 8], &[2, 3, 8]), None);
        assert_eq!(pad4(&[3, 8]), Some([1, 1, 3, 8]));
        assert_eq!(pad4(&[1, 2, 3, 4, 5]), None);
    }

    /// Every kernel, broadcast both ways and with a constant, within 1 LSB of the float
    /// operation on the dequantized inputs, in both flavours (which may differ by 1 on SUB).
    #[test]
    fn kernels_compute_the_float_operation_within_one_step() {
        use crate::writer::{ActQ, Int8Builder};
        use crate::{Data, Graph, Interpreter};
        let q = |scale: f32, zero_point: i32| ActQ { scale, zero_point };
        let (qx, qg, qc) = (q(0.0173, 7), q(0.0291, -20), q(0.011, 3));
        let outs = [
            q(0.031, -5),
            q(0.047, 11),
            q(0.029, 0),
            q(0.013, -90),
            q(0.05, 2),
        ];
        let mut b = Int8Builder::new();
        let x = b.input("x", &[2, 3, 4, 5], qx).unwrap();
        let g = b.input("g", &[2, 1, 1, 5], qg).unwrap();
        let cv: Vec<i8> = vec![-100, -3, 0, 50, 127];
        let c = b.constant("c", &[5], &cv, qc).unwrap();
        let y = [
            b.mul("mul", x, g, Activation::None, outs[0]).unwrap(),
            b.sub("sub", g, x, Activation::None, outs[1]).unwrap(),
            b.add("add", x, g, Activation::Relu, outs[2]).unwrap(),
            b.mul("mulc", x, c, Activation::None, outs[3]).unwrap(),
            b.sub("subc", x, c, Activation::None, outs[4]).unwrap(),
        ];
        for t in y {
            b.output(t);
        }
        let graph = Graph::from_bytes(&b.finish().unwrap()).unwrap();
        let xs: Vec<i8> = (0..120)
            .map(|i| ((i * 53 + 11) % 256 - 128) as i8)
            .collect();
        let gs: Vec<i8> = (0..10).map(|i| ((i * 97 + 5) % 256 - 128) as i8).collect();
        let deq = |v: i8, q: ActQ| q.scale * (v as i32 - q.zero_point) as f32;
        for flavor in [Flavor::Micro, Flavor::LiteRtReference] {
            let interp = Interpreter::with_flavor(&graph, flavor).unwrap();
            let got = interp
                .run(&[Data::I8(xs.clone()), Data::I8(gs.clone())])
                .unwrap();
            for (k, out) in got.iter().enumerate() {
                let Data::I8(out) = out else { panic!() };
                assert_eq!(out.len(), 120);
                for (i, o) in out.iter().enumerate() {
                    let (xv, gv, cv) = (
                        deq(xs[i], qx),
                        deq(gs[i / 60 * 5 + i % 5], qg),
                        deq(cv[i % 5], qc),
                    );
                    let real = [xv * gv, gv - xv, (xv + gv).max(0.0), xv * cv, xv - cv][k];
                    let want = ((real / outs[k].scale).round() as i32 + outs[k].zero_point)
                        .clamp(-128, 127);
                    assert!(
                        (*o as i32 - want).abs() <= 1,
                        "{flavor:?} output {k} element {i}: {o}, float gives {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn litert_sub_negates_where_micro_subtracts_and_both_scale_alike() {
        // Equal scales: 0.5 each, exact in float and double.
        let (m, r) = (
            add_params_f32(0.1, 0.1, 0.2),
            add_params_f64(0.1, 0.1, 0.2, -1),
        );
        assert_eq!(m.inputs[0], r.inputs[0]);
        assert_eq!(m.inputs[1].0, -r.inputs[1].0);
    }
}
