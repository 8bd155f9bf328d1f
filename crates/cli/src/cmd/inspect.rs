//! `collab inspect`: a .tflite file's operators, tensors, weights and sizes, and (unless
//! `--no-device`) its latency, arena and NPU figures.

use std::path::PathBuf;

use crate::args::parse;
use crate::error::{self, CliError};
use crate::output;

/// `collab inspect`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .tflite file.
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also compile it with Vela for this Ethos-U configuration: NPU time, cycles, SRAM,
    /// flash, encoded weights.
    #[arg(long, value_parser = parse::npu())]
    npu: Option<String>,
    /// Sizes and weights only: no latency, arena or NPU figures.
    #[arg(long, conflicts_with = "npu")]
    no_device: bool,
}

/// Print the file's report, with its device figures.
pub fn run(args: Args) -> Result<(), CliError> {
    let Args {
        model,
        json,
        npu,
        no_device,
    } = args;
    let bytes = error::read(&model)?;
    let report = collab_tflite::Report::new(&bytes).map_err(|e| error::failed(&model, e))?;
    let device = if no_device {
        None
    } else {
        let options = collab::deploy::DeployOptions::with_npu(npu.as_deref())?;
        let tools = collab_data::shared::shared_dir()
            .and_then(|d| collab_tflite::tools::Validators::find(&d.join("tools")));
        Some(collab::deploy::measure(&model, &options, tools.as_ref())?)
    };
    if json {
        let mut value = serde_json::to_value(&report).unwrap_or_default();
        value["device"] = serde_json::to_value(&device).unwrap_or_default();
        output::json_pretty(&value);
    } else {
        print!("{}", report.text());
        if let Some(d) = &device {
            print!("{}", d.text());
        }
    }
    Ok(())
}
