//! `collab eval`: a checkpoint's accuracy, or an int8 .tflite file's in our interpreter, on a
//! data set's validation split (or every clip of a Speech Commands folder with `--all`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Module;
use collab::checkpoint;
use collab::data::{self, Batches, SyntheticSize};
use collab::export;
use collab::network::Task;
use collab::train::{self, EvalReport};
use collab_core::BnMode;

use crate::error::{self, CliError};
use crate::output;

/// `collab eval`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    checkpoint: Option<PathBuf>,
    /// An int8 .tflite file, run by burn-collab's reference int8 interpreter (TFLite Micro arithmetic).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Data folder (validation split of Speech Commands / CIFAR-10 test batch); synthetic when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate every clip of a Speech Commands folder (--data), not only the validation
    /// speakers.
    #[arg(long, requires = "data")]
    all: bool,
    /// With --model: prepare the data as this checkpoint's model takes it (an imported
    /// model's input record: pixel scaling, MFCC pipeline, label order), e.g. to score
    /// MLPerf's own int8 file on the images its imported float model is scored on.
    #[arg(long, requires = "model")]
    like: Option<PathBuf>,
    /// Print `{"accuracy", "samples", "per_class"}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Evaluate the `--model` file or the `--checkpoint` and print the report.
pub fn run(args: Args) -> Result<(), CliError> {
    let Args {
        checkpoint,
        model,
        data,
        all,
        like,
        json,
    } = args;
    let data = data.as_deref();
    match (checkpoint, model) {
        (_, Some(model)) => eval_tflite(&model, data, all, like.as_deref(), json),
        (Some(checkpoint), None) => eval_checkpoint(&checkpoint, data, all, json),
        (None, None) => Err(CliError::Usage(
            "give --checkpoint DIR or --model FILE.tflite".into(),
        )),
    }
}

/// Whether `graph` computes in float: an operator other than QUANTIZE / DEQUANTIZE writes a
/// float32 tensor (a float model, or a hybrid one with float activations).
fn computes_in_float(graph: &collab_tflite::Graph) -> bool {
    graph
        .operators
        .iter()
        .filter(|op| op.op != "QUANTIZE" && op.op != "DEQUANTIZE")
        .flat_map(|op| op.outputs.iter())
        .filter_map(|&t| usize::try_from(t).ok())
        .filter_map(|t| graph.tensors.get(t))
        .any(|t| t.dtype == collab_tflite::TensorType::Float32)
}

/// Evaluate an int8 .tflite with our interpreter: the task follows from its input shape.
fn eval_tflite(
    path: &Path,
    data_dir: Option<&Path>,
    all: bool,
    like: Option<&Path>,
    json: bool,
) -> Result<(), CliError> {
    let graph = collab_tflite::Graph::open(path).map_err(|e| error::failed(path, e))?;
    let interp = match collab_tflite::Interpreter::new(&graph) {
        Ok(interp) => interp,
        Err(e) if computes_in_float(&graph) => {
            return Err(error::failed(
                path,
                format!(
                    "is a float model: `collab eval --model` runs full-integer int8 .tflite \
                     files only, float ones are not supported there ({e}). Evaluate the \
                     checkpoint with `collab eval --checkpoint DIR`, or make an int8 file with \
                     `collab export --checkpoint DIR --out FILE.tflite`"
                ),
            ));
        }
        Err(e) => return Err(error::failed(path, e)),
    };
    let shape = interp.inputs()[0].shape.clone();
    let classes = interp.outputs()[0].shape.last().copied().unwrap_or(0);
    let like = like.map(checkpoint::manifest).transpose()?;
    let (task, input) = match (shape.as_slice(), like) {
        (_, Some(m)) => {
            let input = m.model.input_shape();
            let [c, h, w] = input;
            if shape.iter().skip(1).product::<usize>() != c * h * w {
                return Err(error::failed(
                    path,
                    format!(
                        "takes {shape:?}; the --like model takes {:?}: not the same input",
                        input
                    ),
                ));
            }
            (m.model.task(), input)
        }
        ([_, 49, 10, 1], None) => (Task::Keywords, [1, 49, 10]),
        ([_, h, w, 3], None) if h == w => (Task::Images { side: *h, classes }, [3, *h, *w]),
        (other, None) => {
            return Err(error::failed(
                path,
                format!(
                    "input shape {other:?} is neither MFCC [n, 49, 10, 1] nor an image [n, s, s, 3]"
                ),
            ));
        }
    };
    let data = eval_set(task, data_dir, all, 0)?;
    let report = export::evaluate_int8(&interp, input, data.as_ref())?;
    print_report(&report, &format!("{} (int8)", path.display()), json);
    Ok(())
}

/// Evaluate a checkpoint (BatchNorm folded, as it is exported).
fn eval_checkpoint(
    checkpoint_dir: &Path,
    data_dir: Option<&Path>,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(checkpoint_dir, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let data = eval_set(manifest.model.task(), data_dir, all, manifest.seed)?;
    let report = train::evaluate(|x| network.forward(x), data.as_ref(), 256)?;
    print_report(
        &report,
        &format!("{} ({})", manifest.model.name(), manifest.stage),
        json,
    );
    Ok(())
}

/// What `collab eval` scores on: every clip of the Speech Commands folder `data_dir` with
/// `--all`, else the validation split of `data_dir` (the synthetic set when absent, made with
/// `seed`).
fn eval_set(
    task: Task,
    data_dir: Option<&Path>,
    all: bool,
    seed: u64,
) -> Result<Arc<dyn Batches>, CliError> {
    Ok(match (all, data_dir) {
        (true, Some(dir)) => Arc::new(all_clips(dir)?),
        _ => data::load(task, data_dir, false, seed, SyntheticSize::default())?.val,
    })
}

/// Every clip of a Speech Commands folder (`--all`), without augmentation.
fn all_clips(dir: &Path) -> Result<collab::data::KwsData, CliError> {
    let set = collab_data::SpeechCommands::open(dir)?;
    let clips = set.split(collab_data::Split::All);
    let audio = collab_data::speech::load_audio(&clips)?;
    let labels = clips.iter().map(|c| c.label).collect();
    Ok(collab::data::KwsData::new(
        audio,
        labels,
        Vec::new(),
        false,
        dir.display().to_string(),
    ))
}

/// Print an evaluation: accuracy and per-class lines, or with `--json` the report.
fn print_report(report: &EvalReport, what: &str, json: bool) {
    if json {
        output::json_line(report);
    } else {
        println!(
            "{what}: accuracy {:.2}% on {} samples",
            100.0 * report.accuracy,
            report.samples
        );
        for (class, c) in &report.per_class {
            println!(
                "  {class:<12} {:>7.2}%  ({} samples)",
                100.0 * c.accuracy,
                c.samples
            );
        }
    }
}
