//! What the commands print on stdout: a line of text, or with `--json` JSON, and the summaries
//! of what `import`, `train` and `export` wrote. Their JSON fields are part of the command
//! line's interface (scripts and tests read them): rename none.

use std::path::PathBuf;

use serde::Serialize;

/// Print `value` as one line of JSON.
pub fn json_line<T: Serialize + ?Sized>(value: &T) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

/// Print `value` as indented JSON (tables of nodes, a model's layers, a file's report).
pub fn json_pretty<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Print what a command wrote: its line of text, or with `--json` one JSON object.
pub fn emit<T: Serialize + std::fmt::Display>(written: &T, json: bool) {
    if json {
        json_line(written);
    } else {
        println!("{written}");
    }
}

/// Print a tree's nodes: the table, or with `--json` their JSON array.
pub fn leaves(leaves: &[collab::tree::Leaf], json: bool) {
    if json {
        json_pretty(leaves);
    } else {
        print!("{}", collab::tree::table(leaves));
    }
}

/// What `collab import` wrote.
#[derive(Serialize)]
pub struct Imported {
    pub checkpoint: PathBuf,
    pub source: PathBuf,
    pub model: String,
    pub weight_layers: usize,
    pub params: usize,
    /// The model's input, `[channels, h, w]`.
    pub input: Vec<usize>,
}

impl std::fmt::Display for Imported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} ({}: {} weight layers, {} parameters, input {:?}) into {}",
            self.source.display(),
            self.model,
            self.weight_layers,
            self.params,
            self.input,
            self.checkpoint.display()
        )
    }
}

/// What `collab train` wrote.
#[derive(Serialize)]
pub struct Trained {
    pub checkpoint: PathBuf,
    /// Every epoch's figures (a resumed run's include the earlier ones).
    pub history: Vec<collab::learn::EpochMetrics>,
}

impl std::fmt::Display for Trained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let best = self
            .history
            .iter()
            .map(|h| h.val_accuracy)
            .fold(0.0, f64::max);
        match self.history.last() {
            Some(last) => write!(
                f,
                "trained {} epochs: last val accuracy {:.2}%, best {:.2}%; checkpoint {}",
                self.history.len(),
                100.0 * last.val_accuracy,
                100.0 * best,
                self.checkpoint.display()
            ),
            None => write!(
                f,
                "no epoch completed; checkpoint {}",
                self.checkpoint.display()
            ),
        }
    }
}

/// What `collab export` wrote.
#[derive(Serialize)]
pub struct Exported {
    pub file: PathBuf,
    pub model: String,
    pub stage: String,
    pub bytes: usize,
    pub gzip_bytes: usize,
    /// `1 - gzip_bytes / bytes`.
    pub compression: f64,
    pub calibration_samples: usize,
}

impl std::fmt::Display for Exported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {}: {} ({}), {} bytes, gzip -9 {} bytes ({:.1}% compression); calibrated on {} samples",
            self.file.display(),
            self.model,
            self.stage,
            self.bytes,
            self.gzip_bytes,
            100.0 * self.compression,
            self.calibration_samples
        )
    }
}
