//! What `collab inspect` reports about a `.tflite` file.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::reader::{Graph, TensorType};

/// Statistics of one constant tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightStats {
    /// Tensor index.
    pub tensor: usize,
    /// Tensor name.
    pub name: String,
    /// The operator that reads it (e.g. `CONV_2D`), if any.
    pub used_by: Option<String>,
    /// Element type.
    pub dtype: TensorType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Number of values.
    pub values: usize,
    /// Values exactly 0.
    pub zeros: usize,
    /// `zeros / values`.
    pub zero_fraction: f64,
    /// Distinct values in the tensor.
    pub unique: usize,
    /// The channel axis used for the per-channel counts (quantized dimension, else 0 for
    /// CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV weights and 3 for DEPTHWISE_CONV_2D).
    pub channel_axis: Option<usize>,
    /// Fewest distinct values in one channel.
    pub unique_per_channel_min: Option<usize>,
    /// Most distinct values in one channel.
    pub unique_per_channel_max: Option<usize>,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// File size in bytes.
    pub bytes: usize,
    /// Size after gzip -9.
    pub gzip_bytes: usize,
    /// `1 − gzip_bytes / bytes`, as the published tables define compression.
    pub compression: f64,
    /// Operator (name, version) → count.
    pub operators: BTreeMap<String, usize>,
    /// Number of operators.
    pub operator_count: usize,
    /// Number of tensors.
    pub tensor_count: usize,
    /// The constant tensors.
    pub weights: Vec<WeightStats>,
    /// Constant values in all.
    pub total_values: usize,
    /// Of which exactly 0.
    pub total_zeros: usize,
    /// The parsed graph (tensors with shapes and quantization, operators).
    pub graph: Graph,
}

/// Size of `bytes` after gzip at level 9.
pub fn gzip_size(bytes: &[u8]) -> usize {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory").len()
}

/// The values of a constant tensor as comparable 64-bit keys (integers as is, floats by bits).
fn values(dtype: TensorType, data: &[u8]) -> Option<Vec<i64>> {
    Some(match dtype {
        TensorType::Int8 => data.iter().map(|b| *b as i8 as i64).collect(),
        TensorType::Uint8 => data.iter().map(|b| *b as i64).collect(),
        TensorType::Int16 => data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        TensorType::Int32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        TensorType::Int64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        TensorType::Float32 => data
            .chunks_exact(4)
            .map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if v == 0.0 { 0 } else { v.to_bits() as i64 }
            })
            .collect(),
        TensorType::Other(_) => return None,
    })
}

fn distinct(v: &mut Vec<i64>) -> usize {
    v.sort_unstable();
    v.dedup();
    v.len()
}

impl Report {
    /// Analyse a file's bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, crate::TfliteError> {
        let graph = Graph::from_bytes(bytes)?;
        let mut operators = BTreeMap::new();
        for op in &graph.operators {
            *operators
                .entry(format!("{} v{}", op.op, op.version))
                .or_insert(0) += 1;
        }
        let mut weights = Vec::new();
        for (index, t) in graph.constants() {
            let used_by = graph
                .operators
                .iter()
                .find(|op| op.inputs.contains(&(index as i32)))
                .map(|op| op.op.clone());
            let Some(all) = values(t.dtype, t.data.as_deref().unwrap_or_default()) else {
                continue;
            };
            let zeros = all.iter().filter(|v| **v == 0).count();
            let axis = match (&t.quantization, used_by.as_deref()) {
                (Some(q), _) if q.scale.len() > 1 => Some(q.axis),
                (_, Some("CONV_2D" | "FULLY_CONNECTED" | "TRANSPOSE_CONV"))
                    if t.shape.len() >= 2 =>
                {
                    Some(0)
                }
                (_, Some("DEPTHWISE_CONV_2D")) if t.shape.len() == 4 => Some(3),
                _ => None,
            };
            let (mut min, mut max) = (None, None);
            if let Some(axis) = axis.filter(|a| *a < t.shape.len()) {
                let channels = t.shape[axis].max(1);
                let inner: usize = t.shape[axis + 1..].iter().product();
                let mut rows = vec![Vec::new(); channels];
                for (i, v) in all.iter().enumerate() {
                    rows[(i / inner.max(1)) % channels].push(*v);
                }
                let counts: Vec<usize> = rows.iter_mut().map(distinct).collect();
                min = counts.iter().min().copied();
                max = counts.iter().max().copied();
            }
            let mut sorted = all.clone();
            weights.push(WeightStats {
                tensor: index,
                name: t.name.clone(),
                used_by,
                dtype: t.dtype,
                shape: t.shape.clone(),
                values: all.len(),
                zeros,
                zero_fraction: zeros as f64 / all.len().max(1) as f64,
                unique: distinct(&mut sorted),
                channel_axis: axis,
                unique_per_channel_min: min,
                unique_per_channel_max: max,
            });
        }
        let gzip_bytes = gzip_size(bytes);
        Ok(Self {
            bytes: bytes.len(),
            gzip_bytes,
            compression: 1.0 - gzip_bytes as f64 / bytes.len().max(1) as f64,
            operator_count: graph.operators.len(),
            tensor_count: graph.tensors.len(),
            total_values: weights.iter().map(|w| w.values).sum(),
            total_zeros: weights.iter().map(|w| w.zeros).sum(),
            operators,
            weights,
            graph,
        })
    }

    /// A human-readable summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} bytes, gzip -9 {} bytes, compression {:.2}%\n{} operators, {} tensors\n",
            self.bytes,
            self.gzip_bytes,
            100.0 * self.compression,
            self.operator_count,
            self.tensor_count
        );
        for (op, n) in &self.operators {
            s += &format!("  {op} ×{n}\n");
        }
        s += &format!(
            "{:<5} {:<40} {:<18} {:<7} {:>18} {:>9} {:>7} {:>7} {:>13}\n",
            "idx",
            "tensor",
            "used by",
            "dtype",
            "shape",
            "values",
            "zeros%",
            "unique",
            "uniq/channel"
        );
        for w in &self.weights {
            let per_channel = match (w.unique_per_channel_min, w.unique_per_channel_max) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "-".into(),
            };
            let mut name = w.name.clone();
            let chars = name.chars().count();
            if chars > 40 {
                // Keep the last 39 characters (never split a multi-byte character).
                name = format!("…{}", name.chars().skip(chars - 39).collect::<String>());
            }
            s += &format!(
                "{:<5} {:<40} {:<18} {:<7} {:>18} {:>9} {:>6.2}% {:>7} {:>13}\n",
                w.tensor,
                name,
                w.used_by.clone().unwrap_or_default(),
                format!("{:?}", w.dtype).to_lowercase(),
                format!("{:?}", w.shape),
                w.values,
                100.0 * w.zero_fraction,
                w.unique,
                per_channel
            );
        }
        s += &format!(
            "constant values: {} ({} zeros, {:.2}%)\n",
            self.total_values,
            self.total_zeros,
            100.0 * self.total_zeros as f64 / self.total_values.max(1) as f64
        );
        s
    }
}
