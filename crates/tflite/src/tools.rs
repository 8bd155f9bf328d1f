//! The Python validators of `../shared/tools` (LiteRT, TensorFlow Lite Micro, Vela), called as
//! subprocesses: how tests and benchmarks prove a written file right.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::TfliteError;

/// The Ethos-U configurations Vela compiles for (its `--accelerator-config` values).
pub const NPUS: [&str; 11] = [
    "ethos-u55-32",
    "ethos-u55-64",
    "ethos-u55-128",
    "ethos-u55-256",
    "ethos-u65-256",
    "ethos-u65-512",
    "ethos-u85-128",
    "ethos-u85-256",
    "ethos-u85-512",
    "ethos-u85-1024",
    "ethos-u85-2048",
];

/// What Vela says of a file compiled for one Ethos-U configuration (its bundled `vela.ini`
/// system configuration and memory mode; estimates, not measurements on silicon).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VelaFigures {
    /// The accelerator configuration, e.g. `ethos-u55-128`.
    pub accelerator: String,
    /// Vela's system configuration (clocks, memories), e.g. `Ethos_U55_High_End_Embedded`.
    pub system_config: String,
    /// Estimated inference time in milliseconds.
    pub inference_ms: f64,
    /// Estimated cycles, all of them.
    pub cycles: u64,
    /// SRAM the compiled model uses, bytes.
    pub sram_bytes: usize,
    /// Off-chip flash the compiled model uses (weights and command stream), bytes.
    pub flash_bytes: usize,
    /// The weights as the `.tflite` holds them, bytes.
    pub weight_bytes: usize,
    /// The weights after Vela's compression (where zeros and few distinct values pay off).
    pub encoded_weight_bytes: usize,
    /// Share of the file's operators that run on the NPU, percent.
    pub npu_ops_percent: f64,
    /// Operators left to the CPU.
    pub cpu_ops: Vec<String>,
}

/// A file on this machine's CPU in the reference runtimes ([`Validators::cpu_figures`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CpuFigures {
    /// Median latency in LiteRT with XNNPACK, one thread, milliseconds.
    pub xnnpack_ms: f64,
    /// The tensor arena TensorFlow Lite Micro needs, bytes.
    pub arena_bytes: usize,
}

/// `report[key]` as a number, or an error naming the key.
fn number(report: &serde_json::Value, key: &str, script: &str) -> Result<f64, TfliteError> {
    report[key].as_f64().ok_or_else(|| {
        TfliteError::Input(format!(
            "{script} reported no `{key}` (its report: {})",
            truncate(&report.to_string(), 400)
        ))
    })
}

/// The last `n` characters of `s` (where a Python traceback says what went wrong).
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    match count > n {
        true => format!("…{}", s.chars().skip(count - n).collect::<String>()),
        false => s.to_string(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// A Python that imports LiteRT, TFLite Micro and NumPy, and the tools folder.
#[derive(Clone, Debug)]
pub struct Validators {
    /// The Python executable (`$PYTHON`, else `python3`).
    pub python: String,
    /// The folder with `tflite_check.py` and `vela_check.py`.
    pub dir: PathBuf,
}

impl Validators {
    /// The validators in `dir`, if the Python packages are installed
    /// (`pip install -r ../shared/tools/requirements.txt`).
    pub fn find(dir: &Path) -> Option<Self> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let ok = dir.join("tflite_check.py").is_file()
            && Command::new(&python)
                .args(["-c", "import ai_edge_litert, tflite_micro, numpy"])
                .output()
                .is_ok_and(|o| o.status.success());
        ok.then(|| Self {
            python,
            dir: dir.to_path_buf(),
        })
    }

    /// For tests: the validators in `dir`, or `None` with a note on stderr where they are not
    /// installed. With `COLLAB_REQUIRE_TOOLS=1` (CI sets it) their absence panics instead, so a
    /// broken installation cannot pass as a skipped test.
    pub fn for_tests(dir: &Path) -> Option<Self> {
        let found = Self::find(dir);
        if found.is_none() {
            assert!(
                std::env::var("COLLAB_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "COLLAB_REQUIRE_TOOLS=1 but the validators are not installed: \
                 pip install -r ../shared/tools/requirements.txt"
            );
            eprintln!("skipped: pip install -r ../shared/tools/requirements.txt to run this test");
        }
        found
    }

    fn json(
        &self,
        script: &str,
        model: &Path,
        args: &[&str],
    ) -> Result<(i32, serde_json::Value), TfliteError> {
        let out = Command::new(&self.python)
            .arg(self.dir.join(script))
            .arg(model)
            .args(args)
            .arg("--json")
            .output()
            .map_err(|e| TfliteError::Io {
                path: self.python.clone(),
                reason: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(&text).map_err(|e| {
            TfliteError::Input(format!(
                "{script} printed no JSON ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        Ok((out.status.code().unwrap_or(-1), json))
    }

    /// `tflite_check.py MODEL ARGS --json`: its exit code and report.
    pub fn tflite_check(
        &self,
        model: &Path,
        args: &[&str],
    ) -> Result<(i32, serde_json::Value), TfliteError> {
        self.json("tflite_check.py", model, args)
    }

    /// `vela_check.py MODEL ARGS --json`: its exit code and report.
    pub fn vela_check(
        &self,
        model: &Path,
        args: &[&str],
    ) -> Result<(i32, serde_json::Value), TfliteError> {
        self.json("vela_check.py", model, args)
    }

    /// Whether Vela (`ethos-u-vela`) imports in this Python.
    pub fn has_vela(&self) -> bool {
        self.dir.join("vela_check.py").is_file()
            && Command::new(&self.python)
                .args(["-c", "import ethosu.vela"])
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// Compile `model` with Vela for `accelerator` (one of [`NPUS`]) and read its estimates.
    pub fn vela(&self, model: &Path, accelerator: &str) -> Result<VelaFigures, TfliteError> {
        if !NPUS.contains(&accelerator) {
            return Err(TfliteError::Input(format!(
                "`{accelerator}` is not an Ethos-U configuration Vela knows; use one of {}",
                NPUS.join(", ")
            )));
        }
        let (code, r) = self.vela_check(model, &["--accelerator", accelerator])?;
        if code != 0 {
            return Err(TfliteError::Unsupported(format!(
                "Vela could not compile {} for {accelerator} (exit {code}): {}",
                model.display(),
                truncate(&r["error"].to_string(), 400)
            )));
        }
        let n = |key: &str| number(&r, key, "vela_check.py");
        let kib = |key: &str| n(key).map(|k| (k * 1024.0).round() as usize);
        Ok(VelaFigures {
            accelerator: accelerator.to_string(),
            system_config: r["system_config"].as_str().unwrap_or("").to_string(),
            inference_ms: n("csv_inference_time")? * 1e3,
            cycles: n("csv_cycles_total")? as u64,
            sram_bytes: kib("csv_sram_memory_used")?,
            flash_bytes: kib("csv_off_chip_flash_memory_used")?,
            weight_bytes: n("csv_total_original_weights")? as usize,
            encoded_weight_bytes: n("csv_total_npu_encoded_weights")? as usize,
            npu_ops_percent: n("npu_operators_percent")?,
            cpu_ops: r["cpu_ops_listed"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Two figures of `model` in one Python process: its median latency in LiteRT with
    /// XNNPACK (one thread, batch as in the file, `runs` timed runs after 10 warm-up runs,
    /// milliseconds), and the TensorFlow Lite Micro tensor arena it needs (bytes), measured:
    /// the smallest arena, to 16 bytes, in which TFLM allocates and runs the model (its
    /// recording allocator's total leaves out the memory planner's temporary buffers).
    pub fn cpu_figures(&self, model: &Path, runs: usize) -> Result<CpuFigures, TfliteError> {
        const RUN: &str = r#"
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from tflite_micro.python.tflite_micro import runtime
path, runs = sys.argv[1], int(sys.argv[2])
data = open(path, "rb").read()
out = {}
it = Interpreter(model_path=path, num_threads=1, experimental_op_resolver_type=OpResolverType.AUTO)
it.allocate_tensors()
rng = np.random.default_rng(0)
for d in it.get_input_details():
    info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
    x = rng.integers(info.min, info.max + 1, d["shape"]) if info else rng.standard_normal(d["shape"])
    it.set_tensor(d["index"], x.astype(d["dtype"]))
times = []
for k in range(runs + 10):
    t = time.perf_counter()
    it.invoke()
    if k >= 10:
        times.append((time.perf_counter() - t) * 1e3)
out["xnnpack_ms"] = float(np.median(times))
def tflm(size):
    try:
        m = runtime.Interpreter.from_bytes(data, arena_size=size)
        d = m.get_input_details(0)
        m.set_input(np.zeros(d["shape"], dtype=d["dtype"]), 0)
        m.invoke()
        return True
    except RuntimeError:
        return False
# The smallest arena (TFLM aligns to 16 bytes) in which the model allocates and runs: the
# recording allocator's total leaves out the planner's temporary memory, so search.
hi = max(16 * len(data), 1 << 20)
if not tflm(hi):
    sys.exit(f"TFLite Micro cannot run the model even in a {hi}-byte arena")
lo = 0
while hi - lo > 16:
    mid = (lo + hi) // 32 * 16
    if tflm(mid):
        hi = mid
    else:
        lo = mid
out["arena_bytes"] = hi
print(json.dumps(out))
"#;
        let out = Command::new(&self.python)
            .args(["-c", RUN])
            .arg(model)
            .arg(runs.max(1).to_string())
            .output()
            .map_err(|e| TfliteError::Io {
                path: self.python.clone(),
                reason: e.to_string(),
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let json = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<CpuFigures>(l).ok());
        match json {
            Some(f) if out.status.success() => Ok(f),
            _ => Err(TfliteError::Unsupported(format!(
                "LiteRT / TFLite Micro could not run {}: {}",
                model.display(),
                tail(String::from_utf8_lossy(&out.stderr).trim(), 400)
            ))),
        }
    }

    /// A float `model`'s first output on each sample of `inputs` (`.npy`, float32 `[n, …]`,
    /// each sample in the model's own input layout), run one sample per `invoke()` in LiteRT
    /// (`interpreter`: `litert_ref`, `litert_xnnpack` or `litert_builtin`, one thread). Returns
    /// `[n, outputs]` (each output flattened), also written to `outputs` (`.npy`). How tests
    /// compare an imported model with the file it came from, on many samples in one process.
    pub fn litert_outputs(
        &self,
        model: &Path,
        inputs: &Path,
        outputs: &Path,
        interpreter: &str,
    ) -> Result<(Vec<usize>, Vec<f32>), TfliteError> {
        const RUN: &str = r#"
import sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
model, inputs, outputs, kind = sys.argv[1:5]
kinds = {"litert_ref": OpResolverType.BUILTIN_REF, "litert_xnnpack": OpResolverType.AUTO,
         "litert_builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
if kind not in kinds:
    sys.exit(f"unknown interpreter {kind!r}; use one of {sorted(kinds)}")
it = Interpreter(model_path=model, num_threads=1, experimental_op_resolver_type=kinds[kind])
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
if inp["dtype"] != np.float32:
    sys.exit(f"the model's input is {np.dtype(inp['dtype'])}, not float32")
x = np.load(inputs)
if x.ndim == 0 or len(x) == 0 or x[0].size != int(np.prod(inp["shape"])):
    sys.exit(f"samples of shape {list(x.shape[1:])} do not fit the input {list(inp['shape'])}")
ys = []
for sample in x:
    it.set_tensor(inp["index"], sample.reshape(inp["shape"]).astype(np.float32))
    it.invoke()
    ys.append(np.asarray(it.get_tensor(out["index"]), dtype=np.float32).reshape(-1))
np.save(outputs, np.stack(ys))
"#;
        let out = Command::new(&self.python)
            .args(["-c", RUN])
            .arg(model)
            .arg(inputs)
            .arg(outputs)
            .arg(interpreter)
            .output()
            .map_err(|e| TfliteError::Io {
                path: self.python.clone(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(TfliteError::Unsupported(format!(
                "LiteRT could not run {}: {}",
                model.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        match crate::npy::read(outputs)? {
            (shape, crate::Data::F32(v)) => Ok((shape, v)),
            (shape, _) => Err(TfliteError::Input(format!(
                "{}: LiteRT outputs of shape {shape:?} are not float32",
                outputs.display()
            ))),
        }
    }

    /// Run `model` on `inputs` (`.npy`) in each of `interpreters` and return, per interpreter,
    /// the largest absolute difference of its first output from `expect` (`.npy`).
    pub fn max_diffs(
        &self,
        model: &Path,
        inputs: &Path,
        expect: &Path,
        interpreters: &[&str],
    ) -> Result<BTreeMap<String, f64>, TfliteError> {
        let list = interpreters.join(",");
        let (code, report) = self.tflite_check(
            model,
            &[
                "--inputs",
                &inputs.to_string_lossy(),
                "--expect",
                &expect.to_string_lossy(),
                "--interpreters",
                &list,
                "--no-cross",
                "--int-tol",
                "255",
                "--atol",
                "1e9",
            ],
        )?;
        if code != 0 {
            return Err(TfliteError::Unsupported(format!(
                "tflite_check.py exited with {code}: {}",
                report["error"]
            )));
        }
        interpreters
            .iter()
            .map(|name| {
                let d = report["interpreters"][*name]["vs_expect"][0]["max_abs_diff"]
                    .as_f64()
                    .ok_or_else(|| {
                        TfliteError::Input(format!("no comparison for {name}: {report}"))
                    })?;
                Ok((name.to_string(), d))
            })
            .collect()
    }
}
