//! `collab info`: a model's layers, parameters and MACs.

use collab::CollabError;

use crate::args::ModelArgs;
use crate::error::CliError;
use crate::output;

/// `collab info`'s options.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Print the model's table, or its JSON.
pub fn run(args: Args) -> Result<(), CliError> {
    let info = args.model.spec()?.info().map_err(CollabError::from)?;
    if args.json {
        output::json_pretty(&info);
    } else {
        print!("{}", info.table());
    }
    Ok(())
}
