//! The value parsers of the options: an out-of-range number or an unknown name is a usage
//! error (exit 2) that names the option (clap adds it) and what it accepts.

use std::ffi::OsStr;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};
use collab::ModelSpec;
use collab::network::MODEL_NAMES;

fn number<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number ({e})"))
}

fn within<T: FromStr + Copy>(s: &str, ok: impl Fn(T) -> bool, range: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v = number(s)?;
    if ok(v) {
        Ok(v)
    } else {
        Err(format!("{s} is out of range; give {range}"))
    }
}

/// The range of a setting that a tree config also has ([`collab::config::RANGES`]: one
/// home for what a setting accepts, whether it comes from a config or the command line).
fn bound(table: &str, key: &str) -> Result<collab::config::Bound, String> {
    collab::config::bound(table, key)
        .ok_or_else(|| format!("internal: no range for `{table}.{key}`"))
}

/// A number setting of a tree config, in its range there.
fn real(s: &str, table: &str, key: &str) -> Result<f64, String> {
    let bound = bound(table, key)?;
    within(s, |v: f64| bound.contains(v), &bound.to_string())
}

/// A count setting of a tree config, in its range there (a negative count is out of that
/// range, not "not a number").
fn count(s: &str, table: &str, key: &str) -> Result<usize, String> {
    let bound = bound(table, key)?;
    let v = within(s, |v: i128| bound.contains(v as f64), &bound.to_string())?;
    usize::try_from(v).map_err(|_| format!("{s} is out of range; give {bound}"))
}

/// `--width`: the config's `width`, (0, 4].
pub fn width(s: &str) -> Result<f64, String> {
    real(s, "", "width")
}

/// `--percentile`: in (50, 100].
pub fn percentile(s: &str) -> Result<f64, String> {
    within(
        s,
        |v: f64| v > 50.0 && v <= 100.0,
        "a value in (50, 100], e.g. 99.99",
    )
}

/// `--sparsity`: a prune stage's `sparsity`, [0, 1).
pub fn sparsity(s: &str) -> Result<f64, String> {
    real(s, "stage", "sparsity")
}

/// `--clusters`: a cluster stage's `clusters`, 2..=256 (an int8 weight has 256 values).
pub fn clusters(s: &str) -> Result<usize, String> {
    count(s, "stage", "clusters")
}

/// `--epochs`: the config's `finetune.epochs`, 1..=10000.
pub fn epochs(s: &str) -> Result<usize, String> {
    count(s, "finetune", "epochs")
}

/// `--devices`: the config's `finetune.devices`, 1..=1024.
pub fn devices(s: &str) -> Result<usize, String> {
    count(s, "finetune", "devices")
}

/// A count of at least 1 (`--batch-size`, `--calibration-samples`, `--runs`, `--steps`).
pub fn positive(s: &str) -> Result<usize, String> {
    let v = within(s, |v: i128| v >= 1, "a count of at least 1")?;
    usize::try_from(v).map_err(|_| format!("{s} is out of range; give a smaller count"))
}

/// `--lr`: the config's `finetune.learning_rate`, finite and > 0.
pub fn learning_rate(s: &str) -> Result<f64, String> {
    real(s, "finetune", "learning_rate")
}

/// `--max-accuracy-drop`: the config's `targets.max_accuracy_drop`, finite and >= 0
/// (percentage points).
pub fn non_negative(s: &str) -> Result<f64, String> {
    real(s, "targets", "max_accuracy_drop")
}

/// `--target-latency-ms`: the config's `targets.max_latency_ms`, finite and > 0.
pub fn latency(s: &str) -> Result<f64, String> {
    real(s, "targets", "max_latency_ms")
}

/// `--target-npu-ms`: the config's `targets.max_npu_ms`, finite and > 0.
pub fn npu_ms(s: &str) -> Result<f64, String> {
    real(s, "targets", "max_npu_ms")
}

/// `--threads`: 1 (the int8 interpreter is single-threaded).
pub fn threads(s: &str) -> Result<usize, String> {
    match number(s)? {
        1 => Ok(1),
        _ => Err(format!(
            "{s} threads: the int8 interpreter runs on one thread; give 1 or leave it out"
        )),
    }
}

/// `--model`: a name [`ModelSpec`] parses; the error and `--help` list
/// [`MODEL_NAMES`].
#[derive(Clone, Copy, Debug)]
pub struct Model;

impl TypedValueParser for Model {
    type Value = ModelSpec;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<ModelSpec, clap::Error> {
        let text = value.to_string_lossy();
        // A model file: its architecture, as `collab import` reads it (weights are taken
        // only by `collab import`, which writes them into a checkpoint).
        if collab::network::is_model_file(&text) {
            return collab_import::import(std::path::Path::new(text.as_ref()), None)
                .map(|m| ModelSpec::Graph(Box::new(m.spec)))
                .map_err(|e| {
                    clap::Error::raw(ErrorKind::InvalidValue, format!("--model: {e}\n"))
                        .with_cmd(cmd)
                });
        }
        text.parse::<ModelSpec>().map_err(|_| {
            let mut err = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
            if let Some(arg) = arg {
                err.insert(
                    ContextKind::InvalidArg,
                    ContextValue::String(arg.to_string()),
                );
            }
            err.insert(
                ContextKind::InvalidValue,
                ContextValue::String(text.into_owned()),
            );
            err.insert(
                ContextKind::ValidValue,
                ContextValue::Strings(MODEL_NAMES.iter().map(|n| n.to_string()).collect()),
            );
            err
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(MODEL_NAMES.iter().map(PossibleValue::new)))
    }
}

/// `--npu`: an Ethos-U configuration Vela compiles for ([`collab_tflite::tools::NPUS`], one
/// home for the list); the error and `--help` list them.
pub fn npu() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(collab_tflite::tools::NPUS)
}
