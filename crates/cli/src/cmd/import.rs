//! `collab import`: a model file (ONNX, float TFLite) as a trainable checkpoint, or published
//! DS-CNN weights (safetensors, TF layouts).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use clap::ValueEnum;
use collab::checkpoint::{self, Existing, Manifest};
use collab::{CollabError, ModelSpec, Network};
use collab_models::{DsCnnConfig, DsCnnSize};

use crate::args::{WrittenArg, parse};
use crate::error::{self, CliError};
use crate::output::Imported;

/// `import --pixels`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Pixels {
    /// 0..255 as they are.
    Raw,
    /// Divided by 255.
    Unit,
}

impl From<Pixels> for collab::network::Pixels {
    fn from(p: Pixels) -> Self {
        match p {
            Pixels::Raw => Self::Raw,
            Pixels::Unit => Self::Unit,
        }
    }
}

/// `import --mfcc`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum MfccArg {
    /// ML-KWS-for-MCU's `audio_ops.mfcc`.
    MlKws,
    /// MLPerf Tiny's `tf.signal` pipeline.
    TfSignal,
}

impl From<MfccArg> for collab_data::MfccKind {
    fn from(m: MfccArg) -> Self {
        match m {
            MfccArg::MlKws => Self::MlKws,
            MfccArg::TfSignal => Self::TfSignal,
        }
    }
}

/// `collab import`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A model file to import as a trainable model: `.onnx` or a float `.tflite`.
    #[arg(conflicts_with_all = ["model", "weights"], required_unless_present = "model")]
    file: Option<PathBuf>,
    /// A DS-CNN model, with its published `--weights` (instead of a FILE).
    #[arg(long, value_parser = parse::Model, requires = "weights")]
    model: Option<ModelSpec>,
    /// The `ds_cnn_*.safetensors` file for `--model`.
    #[arg(long, requires = "model")]
    weights: Option<PathBuf>,
    /// What the imported model's input values are, for images: raw pixels 0..255 (MLPerf
    /// Tiny's ResNet-8 and VWW), or scaled to 0..1.
    #[arg(long, value_enum, conflicts_with = "mfcc", requires = "file")]
    pixels: Option<Pixels>,
    /// What the imported model's input values are, for keyword spotting: ML-KWS's MFCCs
    /// (the published DS-CNN weights) or MLPerf Tiny's `tf.signal` MFCCs.
    #[arg(long, value_enum, requires = "file")]
    mfcc: Option<MfccArg>,
    /// Class names in the model's output order, comma-separated (MLPerf KWS:
    /// down,go,left,no,off,on,right,stop,up,yes,_silence_,_unknown_).
    #[arg(long, value_delimiter = ',', requires = "file")]
    labels: Vec<String>,
    /// Checkpoint folder to write (new or empty; a checkpoint there needs --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace a checkpoint already at --out.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    json: WrittenArg,
}

/// Import the FILE or the `--model`'s `--weights`; print what was written.
pub fn run(args: Args) -> Result<(), CliError> {
    let Args {
        file,
        model,
        weights,
        pixels,
        mfcc,
        labels,
        out,
        force,
        json,
    } = args;
    let written = match (file, model, weights) {
        (Some(file), _, _) => import_file(&file, pixels, mfcc, labels, &out, force)?,
        (None, Some(model), Some(weights)) => import_weights(model, &weights, &out, force)?,
        _ => {
            return Err(CliError::Usage(
                "give a model FILE (.onnx, .tflite), or --model with --weights".into(),
            ));
        }
    };
    json.emit(&written);
    Ok(())
}

/// A DS-CNN with the published weights in the safetensors file `weights`.
pub fn published_ds_cnn(
    weights: &Path,
    size: DsCnnSize,
    device: &Device,
) -> Result<Network, CliError> {
    let bytes = error::read(weights)?;
    let net = collab_models::import::ds_cnn(
        &DsCnnConfig::new(size),
        &bytes,
        &weights.display().to_string(),
        device,
    )?;
    Ok(Network::DsCnn(net))
}

/// `collab import --model M --weights W`: a DS-CNN with its published weights, as a checkpoint.
fn import_weights(
    model: ModelSpec,
    weights: &Path,
    out: &Path,
    force: bool,
) -> Result<Imported, CliError> {
    let ModelSpec::DsCnn { size } = model else {
        return Err(CliError::Usage(format!(
            "--model {}: published weights exist for the DS-CNN models only",
            model.name()
        )));
    };
    refuse_checkpoint_unless_forced(out, force)?;
    let network = published_ds_cnn(weights, size, &collab::device::compute())?;
    let config = serde_json::json!({ "weights": weights.display().to_string() });
    save(out, weights, &network, model, config)
}

/// Before an import writes `out`: a checkpoint already there is replaced only with `--force`
/// (files, devices and foreign folders are always refused by `inspect_target`).
fn refuse_checkpoint_unless_forced(out: &Path, force: bool) -> Result<(), CliError> {
    if let Existing::Checkpoint(old) = checkpoint::inspect_target(out)?
        && !force
    {
        return Err(error::failed(
            out,
            format!(
                "already holds a checkpoint ({}, {}); pass --force to replace it, or choose \
                 another --out",
                old.model.name(),
                old.stage
            ),
        ));
    }
    Ok(())
}

/// `collab import FILE`: the file as a trainable graph model, written as a checkpoint. The
/// input record is the file's, with the features given on the command line.
fn import_file(
    file: &Path,
    pixels: Option<Pixels>,
    mfcc: Option<MfccArg>,
    labels: Vec<String>,
    out: &Path,
    force: bool,
) -> Result<Imported, CliError> {
    refuse_checkpoint_unless_forced(out, force)?;
    let device = collab::device::compute();
    let record = collab::network::InputRecord {
        pixels: pixels.map(Into::into),
        mfcc: mfcc.map(Into::into),
        labels,
    };
    let (spec, net) = collab::network::import_with_record(file, &record, &device).map_err(|e| {
        match e {
            // What the flags say contradicts the file: a usage error (exit 2).
            CollabError::Model(e @ collab_models::ModelError::Setting { .. }) => {
                CliError::Usage(e.to_string())
            }
            e => e.into(),
        }
    })?;
    let ModelSpec::Graph(graph) = &spec else {
        unreachable!("an import is a graph")
    };
    let input = graph.input.clone();
    let config = serde_json::json!({ "source": file.display().to_string() });
    let imported = save(out, file, &net, spec, config)?;
    tracing::info!(layout = ?input.layout, "input as the file has it: {:?}", input.file_shape());
    Ok(imported)
}

/// Write `network` as the checkpoint `out` of stage `imported` (`config`: where it came
/// from), and say what was written.
fn save(
    out: &Path,
    source: &Path,
    network: &Network,
    spec: ModelSpec,
    config: serde_json::Value,
) -> Result<Imported, CliError> {
    let mut manifest = Manifest::new(spec, "imported", 0);
    manifest.config = config;
    checkpoint::save(out, network, &manifest, None)?;
    let spec = &manifest.model;
    let info = spec.info().map_err(CollabError::from)?;
    Ok(Imported {
        checkpoint: out.to_path_buf(),
        source: source.to_path_buf(),
        model: spec.name(),
        weight_layers: info.layers.len(),
        params: info.params,
        input: spec.input_shape().to_vec(),
    })
}
