//! What a tree run produced: each node's figures ([`Leaf`]), the walk to the targets, and the
//! Markdown tables of `table.md`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::TreeConfig;
use crate::CollabError;

use crate::export::{self};

/// Per-layer figures of a node's weights (from the int8 file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerFigures {
    /// Weight tensor name in the file (`blocks.0.pw/weight`).
    pub name: String,
    /// Fraction of exact zeros.
    pub zero_fraction: f64,
    /// Distinct values in the tensor.
    pub unique: usize,
    /// Most distinct values in one output channel.
    pub unique_per_channel_max: Option<usize>,
}

/// One node's results (an entry of `results.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leaf {
    /// Stage name.
    pub stage: String,
    /// Parent stage (none for the baseline).
    pub parent: Option<String>,
    /// Path of the int8 file, relative to the output folder.
    pub tflite: String,
    /// Validation accuracy of the float model (fake-int8 for QAT nodes).
    pub float_accuracy: f64,
    /// Validation accuracy of the int8 file (our interpreter).
    pub int8_accuracy: f64,
    /// Validation samples.
    pub samples: usize,
    /// int8 file size.
    pub bytes: usize,
    /// gzip -9 size.
    pub gzip_bytes: usize,
    /// 1 − gzip / bytes.
    pub compression: f64,
    /// Weight figures per layer, read back from the file.
    pub layers: Vec<LayerFigures>,
    /// The file in LiteRT's reference kernels, TFLite Micro and XNNPACK against our
    /// interpreter, when the validators are installed (`None` otherwise).
    #[serde(default)]
    pub verified: Option<export::Verification>,
    /// Latency, NPU and memory figures of the int8 file ([`crate::deploy::measure`]).
    #[serde(default)]
    pub device: Option<crate::deploy::DeviceFigures>,
    /// Seconds the stage took (training, export, evaluation).
    pub seconds: f64,
}

/// One node of the walk: the targets it missed (none: the walk stopped there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalkStep {
    /// Stage name.
    pub stage: String,
    /// Each target missed, with the node's figure and the target (`latency 3.1 ms > 2 ms`).
    pub misses: Vec<String>,
}

/// What [`run`](super::run) produced: every node run (in the config's order) and, when targets were
/// given, the path from the baseline to the first node that meets them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The nodes.
    pub leaves: Vec<Leaf>,
    /// `baseline → … → node`, or `None` (no targets, or none met).
    pub targets_met_by: Option<Vec<String>>,
    /// Every node judged against the targets, in walk order, with why it was rejected
    /// (empty for none set).
    pub walk: Vec<WalkStep>,
}

/// The results as a markdown table in the published layout.
pub fn table(leaves: &[Leaf]) -> String {
    let mut s = String::from(
        "| stage | from | fp32 / fake-int8 % | int8 file % | int8 bytes → gzip -9 (compression) |\n|---|---|---|---|---|\n",
    );
    for l in leaves {
        s += &format!(
            "| {} | {} | {:.2} | {:.2} | {} → {} ({:.1}%) |\n",
            l.stage,
            l.parent.as_deref().unwrap_or("-"),
            100.0 * l.float_accuracy,
            100.0 * l.int8_accuracy,
            l.bytes,
            l.gzip_bytes,
            100.0 * l.compression
        );
    }
    // One line on what checked the files (a column per runtime would say the same per row).
    let checked: Vec<&export::Verification> =
        leaves.iter().filter_map(|l| l.verified.as_ref()).collect();
    if !checked.is_empty() {
        let xnnpack = checked
            .iter()
            .filter_map(|v| v.max_lsb.get("litert_xnnpack"))
            .fold(0f64, |a, b| a.max(*b));
        s += &format!(
            "\n{} of {} int8 files run in LiteRT's reference kernels and TFLite Micro exactly as \
             in our interpreter ({} validation inputs each; XNNPACK within {xnnpack} LSB).\n",
            checked.iter().filter(|v| v.exact()).count(),
            leaves.len(),
            checked[0].inputs
        );
    }
    s += &device_table(leaves);
    s
}

/// The deployment figures of every measured leaf ([`crate::deploy::DeviceFigures`]): CPU
/// latencies, TFLite Micro memory and, with an NPU, Vela's estimates. Empty when none was
/// measured.
pub(super) fn device_table(leaves: &[Leaf]) -> String {
    let measured: Vec<(&Leaf, &crate::deploy::DeviceFigures)> = leaves
        .iter()
        .filter_map(|l| l.device.as_ref().map(|d| (l, d)))
        .collect();
    let Some((_, first)) = measured.first() else {
        return String::new();
    };
    let npu = measured
        .iter()
        .find_map(|(_, d)| d.npu.as_ref().map(|n| n.accelerator.clone()));
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let mut s = format!(
        "\nOn this machine (batch 1, one thread; ours with {} kernels){}:\n\n\
         | stage | ours ms | XNNPACK ms | ours / XNNPACK | TFLM arena bytes | flash bytes |",
        first.latency.kernels,
        npu.as_ref()
            .map(|n| format!("; Vela's estimates for {n}"))
            .unwrap_or_default()
    );
    if npu.is_some() {
        s += " NPU ms | NPU cycles | NPU SRAM bytes | NPU flash bytes | weights → Vela-encoded bytes | on NPU |";
        s += "\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    } else {
        s += "\n|---|---|---|---|---|---|\n";
    }
    for (l, d) in &measured {
        s += &format!(
            "| {} | {:.3} | {} | {} | {} | {} |",
            l.stage,
            d.latency.median_ms,
            opt(d.xnnpack_ms.map(|x| format!("{x:.3}"))),
            opt(d
                .xnnpack_ms
                .map(|x| format!("{:.2}", d.latency.median_ms / x))),
            opt(d.arena_bytes.map(|b| b.to_string())),
            d.flash_bytes,
        );
        if npu.is_some() {
            s += &match &d.npu {
                Some(n) => format!(
                    " {:.3} | {} | {} | {} | {} → {} | {:.0}% |",
                    n.inference_ms,
                    n.cycles,
                    n.sram_bytes,
                    n.flash_bytes,
                    n.weight_bytes,
                    n.encoded_weight_bytes,
                    n.npu_ops_percent
                ),
                None => " - | - | - | - | - | - |".into(),
            };
        }
        s.push('\n');
    }
    let missing: std::collections::BTreeSet<&String> =
        measured.iter().flat_map(|(_, d)| &d.missing).collect();
    for m in missing {
        s += &format!("\nMissing: {m}\n");
    }
    s
}

/// `density.png` (one kernel's weights at every node, from the int8 files),
/// `accuracy_vs_size.png`, `accuracy_vs_latency.png` and, with an NPU, `accuracy_vs_npu.png`.
pub(super) fn plots(config: &TreeConfig, leaves: &[Leaf], out: &Path) -> Result<(), CollabError> {
    let layer = match &config.plot_layer {
        Some(l) => format!("{l}/weight"),
        None => {
            let Some(first) = leaves.first() else {
                return Ok(());
            };
            let path = out.join(&first.tflite);
            let graph =
                collab_tflite::Graph::open(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
            match graph
                .constants()
                .filter(|(_, t)| t.dtype == collab_tflite::TensorType::Int8 && t.shape.len() == 4)
                .max_by_key(|(_, t)| t.shape.iter().product::<usize>())
            {
                Some((_, t)) => t.name.clone(),
                None => return Ok(()),
            }
        }
    };
    let mut nodes = Vec::new();
    for leaf in leaves {
        let path = out.join(&leaf.tflite);
        let graph =
            collab_tflite::Graph::open(&path).map_err(|e| CollabError::checkpoint(&path, e))?;
        if let Some(values) = graph.tensor(&layer).and_then(|t| t.to_f32()) {
            nodes.push((leaf.stage.clone(), values));
        }
    }
    let name = layer.trim_end_matches("/weight");
    crate::plot::density(&out.join("density.png"), name, &nodes)?;
    crate::plot::accuracy_vs_size(&out.join("accuracy_vs_size.png"), leaves)?;
    crate::plot::accuracy_vs_latency(&out.join("accuracy_vs_latency.png"), leaves, false)?;
    if config.npu.is_some() {
        crate::plot::accuracy_vs_latency(&out.join("accuracy_vs_npu.png"), leaves, true)?;
    }
    Ok(())
}
