//! The log lines on stderr: `-v` / `-vv` / `-q`, or `RUST_LOG` when set. Results go to stdout
//! whatever the level, so that `--json` output can be piped.

/// The global `-v` / `-q` options.
#[derive(clap::Args, Debug)]
pub struct Verbosity {
    /// More log lines: -v adds debug, -vv trace (RUST_LOG, when set, decides instead).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Warnings and errors only (results still print on stdout).
    #[arg(short, long, global = true)]
    quiet: bool,
}

impl Verbosity {
    /// The log filter: `RUST_LOG` when set, else the level `-v` / `-q` ask for. onnx-ir
    /// narrates every parse and burn-train every iteration at `info`: they stay at `warn`
    /// unless -vv.
    fn filter(&self) -> tracing_subscriber::EnvFilter {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            return filter;
        }
        match (self.quiet, self.verbose) {
            (true, _) => "warn".into(),
            (false, 0) => "info,onnx_ir=warn,burn_train=warn".into(),
            (false, 1) => "debug,onnx_ir=warn,burn_train=warn".into(),
            (false, _) => "trace".into(),
        }
    }

    /// Install the process's log subscriber: stderr, at this level.
    pub fn init(&self) {
        tracing_subscriber::fmt()
            .with_env_filter(self.filter())
            .with_writer(std::io::stderr)
            // Colour codes only on a terminal: logs piped to a file or CI stay plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
