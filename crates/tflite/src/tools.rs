//! The Python validators of `../shared/tools` (LiteRT, TensorFlow Lite Micro, Vela), called as
//! subprocesses: how tests and benchmarks prove a written file right.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TfliteError;

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
