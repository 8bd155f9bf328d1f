//! CONCATENATION, int8: the inputs' bytes side by side along one axis.
//!
//! Why a plain copy: TensorFlow Lite Micro's and LiteRT's int8 kernels both refuse, in
//! `Prepare`, an input whose scale or zero point differs from the output's (they never
//! requantize int8; only the uint8 kernel rescales), so the output is the inputs' bytes in
//! order. This kernel makes the same checks, so a file it runs is one both runtimes run the same
//! way; the writer ([`crate::Int8Builder::concatenation`]) refuses such files before they exist.

use crate::TfliteError;
use crate::interp::Step;
use crate::interp::prepare::{Ctx, bad, per_tensor};
use crate::reader::{Activation, Graph, Operator, Options, TensorType};

/// The most inputs TensorFlow Lite Micro's kernel takes (`kMaxInputNum`).
pub const MAX_INPUTS: usize = 10;

/// The most dimensions TensorFlow Lite Micro's kernel takes.
pub const MAX_RANK: usize = 4;

/// A prepared CONCATENATION: for each of `outer` blocks, `parts[i]` values of input `i`.
#[derive(Clone, Debug)]
pub(crate) struct Concat {
    /// Input tensors, in order.
    pub inputs: Vec<usize>,
    /// Output tensor.
    pub output: usize,
    /// Product of the dimensions before the axis.
    outer: usize,
    /// Per input: its size along the axis times the dimensions after it.
    parts: Vec<usize>,
}

impl Concat {
    /// Check operator `n` as both runtimes' `Prepare` does (int8 computed inputs of one rank
    /// ≤ 4, at most 10 of them, all dimensions but `axis` equal, the output's sum along it, no
    /// fused activation, every input quantized exactly as the output) and precompute the copy.
    pub fn prepare(
        graph: &Graph,
        n: usize,
        op: &Operator,
        axis: i32,
        activation: Activation,
    ) -> Result<Self, TfliteError> {
        let name = "CONCATENATION";
        if activation != Activation::None {
            return Err(bad(
                n,
                name,
                format!("fused activation {activation:?}: the runtimes take none"),
            ));
        }
        if op.inputs.is_empty() || op.inputs.len() > MAX_INPUTS {
            return Err(bad(
                n,
                name,
                format!(
                    "{} inputs; TFLite Micro takes 1 to {MAX_INPUTS}",
                    op.inputs.len()
                ),
            ));
        }
        let o = *op
            .outputs
            .first()
            .filter(|o| **o >= 0)
            .ok_or_else(|| bad(n, name, "has no output"))? as usize;
        let ot = &graph.tensors[o];
        let out_q = per_tensor(ot, n, name)?;
        let rank = ot.shape.len();
        if ot.dtype != TensorType::Int8 || rank == 0 || rank > MAX_RANK {
            return Err(bad(
                n,
                name,
                format!(
                    "output `{}` must be int8 of 1 to {MAX_RANK} dimensions (is {:?} {:?})",
                    ot.name, ot.dtype, ot.shape
                ),
            ));
        }
        let a = if axis < 0 { axis + rank as i32 } else { axis };
        if !(0..rank as i32).contains(&a) {
            return Err(bad(
                n,
                name,
                format!("axis {axis} is outside a {rank}-D output"),
            ));
        }
        let a = a as usize;
        let mut inputs = Vec::with_capacity(op.inputs.len());
        let mut parts = Vec::with_capacity(op.inputs.len());
        let mut along = 0usize;
        for (k, &i) in op.inputs.iter().enumerate() {
            let t = usize::try_from(i)
                .ok()
                .and_then(|i| graph.tensors.get(i).map(|t| (i, t)));
            let Some((i, t)) = t else {
                return Err(bad(n, name, format!("input {k} is missing")));
            };
            if t.dtype != TensorType::Int8 || t.data.is_some() {
                return Err(bad(
                    n,
                    name,
                    format!("input `{}` must be a computed int8 tensor", t.name),
                ));
            }
            let same_dims =
                t.shape.len() == rank && (0..rank).all(|d| d == a || t.shape[d] == ot.shape[d]);
            if !same_dims {
                return Err(bad(
                    n,
                    name,
                    format!(
                        "input `{}` {:?} does not fit output {:?} along axis {a}",
                        t.name, t.shape, ot.shape
                    ),
                ));
            }
            let q = per_tensor(t, n, name)?;
            if q != out_q {
                return Err(bad(
                    n,
                    name,
                    format!(
                        "input `{}` has scale {} / zero point {}, the output {} / {}: the \
                         int8 kernels of TFLite Micro and LiteRT refuse inputs quantized \
                         unlike the output",
                        t.name, q.0, q.1, out_q.0, out_q.1
                    ),
                ));
            }
            along += t.shape[a];
            parts.push(t.shape[a..].iter().product());
            inputs.push(i);
        }
        if along != ot.shape[a] {
            return Err(bad(
                n,
                name,
                format!(
                    "the inputs give {along} along axis {a}, the output has {}",
                    ot.shape[a]
                ),
            ));
        }
        Ok(Self {
            inputs,
            output: o,
            outer: ot.shape[..a].iter().product(),
            parts,
        })
    }

    /// The output: for each outer block, each input's block in order.
    pub fn run(&self, i8s: &[Vec<i8>]) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.outer * self.parts.iter().sum::<usize>());
        for k in 0..self.outer {
            for (&i, &part) in self.inputs.iter().zip(&self.parts) {
                out.extend_from_slice(&i8s[i][k * part..(k + 1) * part]);
            }
        }
        out
    }
}

/// CONCATENATION of `ctx`.
pub(crate) fn prepare(ctx: &Ctx) -> Result<Step, TfliteError> {
    let Options::Concatenation { axis, activation } = &ctx.op.options else {
        return Err(ctx.unsupported());
    };
    Concat::prepare(ctx.graph, ctx.n, ctx.op, *axis, *activation).map(Step::Concat)
}

#[cfg(test)]
mod tests {
    use crate::{ActQ, Data, Flavor, Graph, Int8Builder, Interpreter, Padding, TfliteError};

    fn q(scale: f32, zero_point: i32) -> ActQ {
        ActQ { scale, zero_point }
    }

    fn ramp(n: usize) -> Vec<i8> {
        (0..n).map(|i| ((i * 53 + 7) % 256) as u8 as i8).collect()
    }

    /// `x` `[2, 3, 2, 4]` and its 2×2 max pooling (SAME: same shape, other values), joined
    /// along `axis`: the output is each input's block in turn, in both arithmetic flavours.
    #[test]
    fn concatenation_lays_each_inputs_block_side_by_side() {
        for axis in [3usize, 1] {
            let mut b = Int8Builder::new();
            let x = b.input("x", &[2, 3, 2, 4], q(0.1, 3)).unwrap();
            let p = b
                .max_pool("pool", x, [2, 2], [1, 1], Padding::Same)
                .unwrap();
            let y = b.concatenation("cat", &[x, p, x], axis, q(0.1, 3)).unwrap();
            let mut want_shape = vec![2, 3, 2, 4];
            want_shape[axis] *= 3;
            assert_eq!(b.shape(y), want_shape.as_slice());
            b.output(y);
            let graph = Graph::from_bytes(&b.finish().unwrap()).unwrap();
            let input = ramp(48);
            for flavor in [Flavor::Micro, Flavor::LiteRtReference] {
                let interp = Interpreter::with_flavor(&graph, flavor).unwrap();
                let traced = interp.run_traced(&[Data::I8(input.clone())]).unwrap();
                let Some(Data::I8(pooled)) = traced[1].clone() else {
                    panic!("pooled tensor")
                };
                assert_ne!(pooled, input, "the pooling changes values");
                let out = interp.run_i8(&input).unwrap();
                // Blocks: per index before the axis, the rest of each input.
                let outer: usize = [2, 3, 2, 4][..axis].iter().product();
                let part = 48 / outer;
                let mut want = Vec::new();
                for k in 0..outer {
                    for t in [&input, &pooled, &input] {
                        want.extend_from_slice(&t[k * part..(k + 1) * part]);
                    }
                }
                assert_eq!(out, want, "axis {axis}, {flavor:?}");
            }
        }
    }

    #[test]
    fn the_writer_refuses_inputs_quantized_unlike_the_output() {
        let mut b = Int8Builder::new();
        let x = b.input("x", &[1, 2, 2, 3], q(0.1, 3)).unwrap();
        let y = b.input("y", &[1, 2, 2, 5], q(0.2, 3)).unwrap();
        let e = b
            .concatenation("cat", &[x, y], 3, q(0.1, 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`cat`") && e.contains("`y`"), "{e}");
        assert!(e.contains("quantized unlike the output"), "{e}");
        let e = b
            .concatenation("cat", &[x, x], 3, q(0.1, 4))
            .unwrap_err()
            .to_string();
        assert!(e.contains("zero point 3"), "{e}");
        // Shapes must agree outside the axis; the axis must exist.
        let z = b.input("z", &[1, 2, 3, 3], q(0.1, 3)).unwrap();
        let e = b.concatenation("cat", &[x, z], 3, q(0.1, 3)).unwrap_err();
        assert!(e.to_string().contains("[1, 2, 3, 3]"), "{e}");
        assert!(b.concatenation("cat", &[x], 4, q(0.1, 3)).is_err());
        assert!(b.concatenation("cat", &[], 3, q(0.1, 3)).is_err());
        assert!(b.concatenation("cat", &[x; 11], 3, q(0.1, 3)).is_err());
    }

    /// A file whose CONCATENATION input is quantized unlike its output (another writer's):
    /// refused when loaded, as TFLite Micro and LiteRT refuse it.
    #[test]
    fn the_interpreter_refuses_inputs_quantized_unlike_the_output() {
        let mut b = Int8Builder::new();
        let x = b.input("x", &[1, 2, 2, 3], q(0.1, 3)).unwrap();
        let y = b.input("y", &[1, 2, 2, 5], q(0.1, 3)).unwrap();
        let cat = b.concatenation("cat", &[x, y], 3, q(0.1, 3)).unwrap();
        b.output(cat);
        let bytes = b.finish().unwrap();
        assert!(Interpreter::new(&Graph::from_bytes(&bytes).unwrap()).is_ok());
        let mut model = crate::tflite::root_as_model(&bytes).unwrap().unpack();
        let subgraphs = model.subgraphs.as_mut().unwrap();
        let tensors = subgraphs[0].tensors.as_mut().unwrap();
        let y_tensor = tensors
            .iter_mut()
            .find(|t| t.name.as_deref() == Some("y"))
            .unwrap();
        y_tensor.quantization.as_mut().unwrap().scale = Some(vec![0.2]);
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let root = model.pack(&mut fbb);
        fbb.finish(root, Some("TFL3"));
        let graph = Graph::from_bytes(fbb.finished_data()).unwrap();
        match Interpreter::new(&graph) {
            Err(TfliteError::Unsupported(e)) => {
                assert!(e.contains("CONCATENATION") && e.contains("`y`"), "{e}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
