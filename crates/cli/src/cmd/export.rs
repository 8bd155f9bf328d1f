//! `collab export` (alias `ptq`): a checkpoint as a full-integer int8 .tflite, calibrated (PTQ)
//! where it has no QAT ranges. `--out` is checked before calibrating.

use std::path::{Path, PathBuf};

use burn::module::Module;
use collab::checkpoint;
use collab::data::{self, SyntheticSize};
use collab::export::{self, ExportOptions};
use collab_core::BnMode;

use crate::args::{WrittenArg, parse};
use crate::error::{self, CliError};
use crate::output::Exported;

/// `collab export`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Calibration data folder (training split of Speech Commands / CIFAR-10); synthetic when absent.
    #[arg(long, alias = "data")]
    calibration: Option<PathBuf>,
    /// Training samples used for calibration (at least 1).
    #[arg(long, default_value_t = 500, allow_negative_numbers = true, value_parser = parse::positive)]
    calibration_samples: usize,
    /// Calibrate with per-batch percentiles in (50, 100] (e.g. 99.99, averaged over
    /// batches) instead of min/max.
    #[arg(long, allow_hyphen_values = true, value_parser = parse::percentile)]
    percentile: Option<f64>,
    /// The .tflite file to write (written to a temporary file, then renamed); its folder
    /// must exist.
    #[arg(long)]
    out: PathBuf,
    /// Write over an existing --out that is not a .tflite file.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    json: WrittenArg,
    /// Float32 input and output (QUANTIZE / DEQUANTIZE at the edges; these run on the CPU of an NPU system).
    #[arg(long)]
    float_io: bool,
    /// End with the logits instead of SOFTMAX.
    #[arg(long)]
    no_softmax: bool,
    /// Seed for choosing the calibration samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Check `--out`, calibrate, write the file and print what was written.
pub fn run(args: Args) -> Result<(), CliError> {
    check_out(&args.out, args.force)?;
    let written = export(&args)?;
    args.json.emit(&written);
    Ok(())
}

/// Whether `path` starts like a `.tflite` file (the FlatBuffer identifier `TFL3` at bytes 4..8).
fn looks_like_tflite(path: &Path) -> Result<bool, CliError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| error::failed(path, e))?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(error::failed(path, e)),
        }
    }
    Ok(read == head.len() && &head[4..8] == b"TFL3")
}

/// Check `export --out` before any work: what [`export::write`] refuses (no file name, a
/// folder or device, a missing folder) is refused now, before calibrating; a file already there
/// must be a `.tflite` (any other file needs `--force`); the folder must take files.
fn check_out(out: &Path, force: bool) -> Result<(), CliError> {
    export::check_out(out)?;
    if out.is_file() && !force && !looks_like_tflite(out)? {
        return Err(error::failed(
            out,
            "exists and is not a .tflite file (no `TFL3` identifier); pass --force to \
             replace it, or choose another --out",
        ));
    }
    checkpoint::writable_parent(out)?;
    Ok(())
}

/// Calibrate the checkpoint on `--calibration-samples` training samples (chosen with `--seed`)
/// and write it to `--out`.
fn export(args: &Args) -> Result<Exported, CliError> {
    let method = match args.percentile {
        Some(percentile) => collab_quant::Calibration::Percentile { percentile },
        None => collab_quant::Calibration::MinMax,
    };
    let options = ExportOptions {
        batch: 1,
        float_io: args.float_io,
        softmax: !args.no_softmax,
    };
    let device = collab::device::compute();
    let (network, manifest) = checkpoint::load(&args.checkpoint, &device)?;
    let network = network.with_bn_mode(BnMode::Folded).valid();
    let plan = network.plan(manifest.model.input_shape())?;
    if args.calibration.is_none() {
        tracing::warn!("no --calibration folder: calibrating on the synthetic set");
    }
    let data = data::load(
        manifest.model.task(),
        args.calibration.as_deref(),
        false,
        args.seed,
        SyntheticSize::default(),
    )?;
    let indices = data::calibration_indices(data.train.len(), args.calibration_samples, args.seed);
    tracing::info!(samples = indices.len(), "calibrating activation ranges");
    let ranges = plan.calibrate_on(data.train.as_ref(), &indices, 100, method)?;
    let bytes = export::to_tflite(&plan, Some(&ranges), &options)?;
    export::write(&args.out, &bytes)?;
    let report = collab_tflite::Report::new(&bytes).map_err(|e| error::failed(&args.out, e))?;
    Ok(Exported {
        file: args.out.clone(),
        model: manifest.model.name(),
        stage: manifest.stage.clone(),
        bytes: report.bytes,
        gzip_bytes: report.gzip_bytes,
        compression: report.compression,
        calibration_samples: indices.len(),
    })
}
