//! Make the Speech Commands sample that ships with the project
//! (`datasets/speech_commands_sample/features.bin`): the ML-KWS MFCCs (the DS-CNN input) of
//! every clip of a prepared 12-class Speech Commands folder, each with its class and its
//! by-speaker split, in the format of [`burn_collab::data::kws_features`]. Deterministic: the
//! same folder gives the same bytes.
//!
//! ```text
//! cargo run --release --example make_speech_sample [-- --data ../shared/data/speech_commands_12 --out datasets/speech_commands_sample/features.bin]
//! ```

use std::path::PathBuf;

use burn_collab::data::shared::shared_dir;
use burn_collab::data::{
    Frontend, KWS_LABELS, KwsFeatures, MFCC_COEFFICIENTS, MFCC_FRAMES, MfccKind, SpeechCommands,
    Split, val_bucket,
};
use clap::Parser;

/// Flags.
#[derive(Parser, Debug)]
struct Args {
    /// Speech Commands folder (prepared 12-class or standard layout); default
    /// `$COLLAB_SHARED/data/speech_commands_12`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// File to write.
    #[arg(long, default_value = "datasets/speech_commands_sample/features.bin")]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let data = match args.data {
        Some(d) => d,
        None => shared_dir()
            .ok_or("no shared folder: pass --data <Speech Commands folder> or set COLLAB_SHARED")?
            .join("data/speech_commands_12"),
    };
    let set = SpeechCommands::open(&data)?;
    let frontend = Frontend::new();
    let mfcc = SpeechCommands::features(&set.clips, &frontend)?;
    let features = KwsFeatures {
        kind: MfccKind::MlKws,
        classes: KWS_LABELS.iter().map(|s| s.to_string()).collect(),
        frames: MFCC_FRAMES,
        coefficients: MFCC_COEFFICIENTS,
        values: mfcc.features,
        labels: mfcc.labels,
        splits: set
            .clips
            .iter()
            .map(|c| {
                if val_bucket(&c.speaker) == 0 {
                    Split::Validation
                } else {
                    Split::Train
                }
            })
            .collect(),
    };
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    features.write(&args.out)?;
    let back = KwsFeatures::read(&args.out)?;
    let error = features
        .values
        .iter()
        .zip(&back.values)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!(
        "{}: {} clips ({} training, {} validation), {} bytes",
        args.out.display(),
        features.len(),
        features
            .splits
            .iter()
            .filter(|s| **s == Split::Train)
            .count(),
        features
            .splits
            .iter()
            .filter(|s| **s == Split::Validation)
            .count(),
        std::fs::metadata(&args.out)?.len()
    );
    println!("per coefficient (min, step):");
    for (c, (lo, step)) in features.steps().iter().enumerate() {
        println!("  {c}: {lo:.3}, {step:.4}");
    }
    println!("largest quantization error {error:.4}");
    println!(
        "training per class {:?}",
        features.class_counts(Split::Train)
    );
    println!(
        "validation per class {:?}",
        features.class_counts(Split::Validation)
    );
    Ok(())
}
