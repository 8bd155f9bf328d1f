//! What a deployment asks of an int8 file besides its size: how fast it runs on this CPU (our
//! interpreter, and LiteRT with XNNPACK), how fast on an Ethos-U NPU (Vela's estimate), and
//! how much memory TensorFlow Lite Micro needs (its tensor arena, measured; the file itself is
//! what a microcontroller keeps in flash).
//!
//! Why these: the collaborative-optimization guide walks the deployment tree asking at each
//! node whether the model meets the device's latency and memory budget, and the answer differs
//! by target: zeros and clusters shrink Vela's encoded weights and the NPU's flash traffic, N:M
//! sparsity can speed up a CPU kernel, and a microcontroller is bound by its arena. Our
//! interpreter needs nothing outside this crate; the other figures come from the Python tools
//! of `../shared/tools` where they are installed, and a missing tool leaves its figure empty
//! with the install command in [`DeviceFigures::missing`], never an error.

use std::path::Path;
use std::time::Instant;

use collab_tflite::tools::{NPUS, Validators, VelaFigures};
use collab_tflite::{Data, Graph, Interpreter, Kernels, TensorType};
use serde::{Deserialize, Serialize};

use crate::CollabError;

/// How many timed runs a latency takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Runs {
    /// Exactly this many (after 10 warm-up runs).
    Exactly(usize),
    /// At least `min_runs` and at least `min_seconds` of runs (after 10 warm-up runs, at
    /// most 100 000): enough that the median is stable on a small model as on a large one.
    Stable {
        /// Fewest timed runs.
        min_runs: usize,
        /// Least time spent in timed runs, seconds.
        min_seconds: f64,
    },
}

impl Default for Runs {
    fn default() -> Self {
        Self::Stable {
            min_runs: 30,
            min_seconds: 1.0,
        }
    }
}

/// A latency: batch as in the file, one thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median milliseconds per run.
    pub median_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// Timed runs.
    pub runs: usize,
    /// The kernel set that ran (`avx512-vnni`, `avx2`, `portable`).
    pub kernels: String,
}

/// The fixed pseudo-random inputs the latency benchmarks feed `interp` (one per graph input;
/// not zeros, which would flatter the interpreter).
pub fn bench_inputs(interp: &Interpreter) -> Vec<Data> {
    interp
        .inputs()
        .iter()
        .map(|p| {
            let n: usize = p.shape.iter().product();
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 256) as i32 - 128
            };
            match p.dtype {
                TensorType::Float32 => Data::F32((0..n).map(|_| next() as f32 / 64.0).collect()),
                _ => Data::I8((0..n).map(|_| next() as i8).collect()),
            }
        })
        .collect()
}

/// Per-run times (milliseconds) of `path` in our int8 interpreter with `kernels`, one thread,
/// and the kernel set's name. The input is fixed pseudo-random values, not zeros: the
/// interpreter skips zero inputs, which would flatter it.
pub fn time_interpreter(
    path: &Path,
    kernels: Kernels,
    runs: Runs,
) -> Result<(Vec<f64>, &'static str), CollabError> {
    let graph = Graph::open(path).map_err(|e| CollabError::checkpoint(path, e))?;
    let mut interp = Interpreter::new(&graph).map_err(|e| CollabError::checkpoint(path, e))?;
    interp.set_kernels(kernels);
    let inputs = bench_inputs(&interp);
    let run = |interp: &Interpreter| -> Result<f64, CollabError> {
        let start = Instant::now();
        let out = interp
            .run(&inputs)
            .map_err(|e| CollabError::checkpoint(path, e))?;
        std::hint::black_box(out);
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    for _ in 0..10 {
        run(&interp)?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    loop {
        times.push(run(&interp)?);
        let done = match runs {
            Runs::Exactly(n) => times.len() >= n.max(1),
            Runs::Stable {
                min_runs,
                min_seconds,
            } => {
                times.len() >= 100_000
                    || (times.len() >= min_runs.max(1)
                        && started.elapsed().as_secs_f64() >= min_seconds)
            }
        };
        if done {
            break;
        }
    }
    Ok((times, interp.kernel_name()))
}

/// [`time_interpreter`] summarised.
pub fn latency(path: &Path, kernels: Kernels, runs: Runs) -> Result<Latency, CollabError> {
    let (mut times, kernels) = time_interpreter(path, kernels, runs)?;
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Latency {
        median_ms: at(0.5),
        p90_ms: at(0.9),
        runs: times.len(),
        kernels: kernels.to_string(),
    })
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DeployOptions {
    /// The Ethos-U configuration to compile for with Vela (one of
    /// [`collab_tflite::tools::NPUS`]), if any.
    pub npu: Option<String>,
    /// Timed runs of each CPU latency.
    pub runs: Runs,
}

impl DeployOptions {
    /// Options for `npu` (checked against Vela's configurations: a usage error names them).
    pub fn with_npu(npu: Option<&str>) -> Result<Self, CollabError> {
        if let Some(n) = npu.filter(|n| !NPUS.contains(n)) {
            return Err(CollabError::Usage(format!(
                "--npu {n}: not an Ethos-U configuration Vela knows; use one of {}",
                NPUS.join(", ")
            )));
        }
        Ok(Self {
            npu: npu.map(str::to_string),
            runs: Runs::default(),
        })
    }
}

/// A file's figures on the devices a deployment targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceFigures {
    /// The file's size: what a microcontroller running TFLite Micro keeps in flash.
    pub flash_bytes: usize,
    /// Our interpreter on this machine.
    pub latency: Latency,
    /// LiteRT with XNNPACK on this machine, one thread, median ms (validators installed).
    pub xnnpack_ms: Option<f64>,
    /// The tensor arena TFLite Micro needs, bytes (validators installed).
    pub arena_bytes: Option<usize>,
    /// Vela's estimates for the chosen NPU (Vela installed, an NPU chosen).
    pub npu: Option<VelaFigures>,
    /// Why a figure above is missing, with what would supply it.
    #[serde(default)]
    pub missing: Vec<String>,
}

impl DeviceFigures {
    /// A few lines for a terminal.
    pub fn text(&self) -> String {
        let mut s = format!(
            "latency: {:.3} ms median in our interpreter ({} kernels, one thread, {} runs; p90 \
             {:.3} ms)",
            self.latency.median_ms, self.latency.kernels, self.latency.runs, self.latency.p90_ms
        );
        if let Some(x) = self.xnnpack_ms {
            s += &format!(
                ", {x:.3} ms in LiteRT XNNPACK ({:.2}×)",
                self.latency.median_ms / x
            );
        }
        s += &format!("\nflash: {} bytes", self.flash_bytes);
        if let Some(a) = self.arena_bytes {
            s += &format!("; TFLite Micro arena: {a} bytes");
        }
        s.push('\n');
        if let Some(n) = &self.npu {
            s += &format!(
                "{} (Vela, {}): {:.3} ms, {} cycles, SRAM {} bytes, flash {} bytes, weights {} → \
                 {} bytes encoded, {:.0}% of operators on the NPU{}\n",
                n.accelerator,
                n.system_config,
                n.inference_ms,
                n.cycles,
                n.sram_bytes,
                n.flash_bytes,
                n.weight_bytes,
                n.encoded_weight_bytes,
                n.npu_ops_percent,
                if n.cpu_ops.is_empty() {
                    String::new()
                } else {
                    format!(" (CPU: {})", n.cpu_ops.join(", "))
                }
            );
        }
        for m in &self.missing {
            s += &format!("missing: {m}\n");
        }
        s
    }
}

/// Measure the int8 file at `path` for `options`; `tools`: the Python validators, where
/// installed. A tool that is missing or fails leaves its figure `None` and says why in
/// [`DeviceFigures::missing`] (and a warning); only our own interpreter's failure is an error.
pub fn measure(
    path: &Path,
    options: &DeployOptions,
    tools: Option<&Validators>,
) -> Result<DeviceFigures, CollabError> {
    let flash_bytes = std::fs::metadata(path)
        .map_err(|e| CollabError::checkpoint(path, e))?
        .len() as usize;
    let latency = latency(path, Kernels::Best, options.runs)?;
    let mut missing = Vec::new();
    let mut note = |what: String| {
        tracing::warn!(file = %path.display(), "{what}");
        missing.push(what);
    };
    const INSTALL: &str = "pip install -r ../shared/tools/requirements.txt";
    let (mut xnnpack_ms, mut arena_bytes, mut npu) = (None, None, None);
    match tools {
        None => note(format!(
            "XNNPACK latency and TFLite Micro arena: the Python validators are not installed \
             ({INSTALL})"
        )),
        Some(t) => {
            let runs = match options.runs {
                Runs::Exactly(n) => n,
                Runs::Stable { min_runs, .. } => min_runs.max(100),
            };
            match t.cpu_figures(path, runs) {
                Ok(f) => {
                    xnnpack_ms = Some(f.xnnpack_ms);
                    arena_bytes = Some(f.arena_bytes);
                }
                Err(e) => note(format!("XNNPACK latency and TFLite Micro arena: {e}")),
            }
        }
    }
    if let Some(accel) = &options.npu {
        match tools {
            Some(t) if t.has_vela() => match t.vela(path, accel) {
                Ok(v) => npu = Some(v),
                Err(e) => note(format!("NPU figures: {e}")),
            },
            _ => note(format!(
                "NPU figures for {accel}: Vela is not installed (pip install ethos-u-vela, or \
                 {INSTALL})"
            )),
        }
    }
    Ok(DeviceFigures {
        flash_bytes,
        latency,
        xnnpack_ms,
        arena_bytes,
        npu,
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_npu_is_a_usage_error_naming_the_known_ones() {
        let e = DeployOptions::with_npu(Some("ethos-u55-100")).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, CollabError::Usage(_)), "{e:?}");
        assert!(
            text.contains("ethos-u55-128") && text.contains("ethos-u65-256"),
            "{text}"
        );
        assert!(DeployOptions::with_npu(Some("ethos-u65-256")).is_ok());
    }
}
