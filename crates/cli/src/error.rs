//! Why `collab` stops, and the exit code that says it: 0 success, 1 a failure (the message
//! says what and how to fix it), 2 bad usage.
//!
//! The library's [`CollabError::Usage`] also reports failures found while working (data that
//! does not fit a model, …), so only this binary decides what is a usage error. clap reports
//! single bad values itself (an unknown choice, a number out of range), also with exit 2.

use std::path::Path;
use std::process::ExitCode;

use collab::CollabError;

/// Why `collab` stops: bad usage (exit 2) or a failure (exit 1).
#[derive(Debug)]
pub enum CliError {
    /// Options that do not fit together.
    Usage(String),
    /// Anything that went wrong while working.
    Failed(CollabError),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(msg) => f.write_str(msg),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl From<CollabError> for CliError {
    fn from(e: CollabError) -> Self {
        Self::Failed(e)
    }
}

impl From<collab_models::ModelError> for CliError {
    fn from(e: collab_models::ModelError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<collab_data::DataError> for CliError {
    fn from(e: collab_data::DataError) -> Self {
        Self::Failed(e.into())
    }
}

impl CliError {
    /// The process exit code: 2 for usage, 1 for failures.
    pub fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Failed(_) => 1,
        }
    }

    /// Print the message on stderr (with clap's pointer to `--help` for a usage error) and
    /// give the exit code.
    pub fn report(self) -> ExitCode {
        eprintln!("error: {self}");
        if matches!(self, Self::Usage(_)) {
            eprintln!("\nFor more information, try '--help'.");
        }
        ExitCode::from(self.code())
    }
}

/// A failure about `path`.
pub fn failed(path: &Path, reason: impl std::fmt::Display) -> CliError {
    CliError::Failed(CollabError::checkpoint(path, reason))
}

/// The bytes of the file at `path`; a failure names the file.
pub fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| failed(path, e))
}
