//! Data-pipeline throughput: WAV decoding + MFCC (clips/s, all cores) on the shared Speech
//! Commands clips when present (`--data DIR`), else on synthetic clips.
//!
//! ```text
//! cargo run --release --example bench_data [-- --data ../shared/data/speech_commands_12]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use burn_collab::data::speech::load_audio;
use burn_collab::data::{Frontend, KwsSet, SpeechCommands, Split, SyntheticKws};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// A Speech Commands folder; synthetic clips when absent.
    #[arg(long)]
    data: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let frontend = Frontend::new();
    let start = Instant::now();
    let (audio, labels) = match &args.data {
        Some(dir) => {
            let clips = SpeechCommands::open(dir)?.split(Split::All);
            let labels = clips.iter().map(|c| c.label).collect();
            (load_audio(&clips)?, labels)
        }
        None => SyntheticKws::default().generate_audio(4000, 0)?,
    };
    let decode = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let set = KwsSet::from_audio(&audio, labels, &frontend);
    let mfcc = start.elapsed().as_secs_f64();
    let n = set.len() as f64;
    println!(
        "{} clips: decode {:.3} s ({:.0} clips/s), MFCC {:.3} s ({:.0} clips/s), {} threads",
        set.len(),
        decode,
        n / decode,
        mfcc,
        n / mfcc,
        std::thread::available_parallelism().map_or(1, |t| t.get())
    );
    Ok(())
}
