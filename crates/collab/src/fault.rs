//! Fault injection for the crash-safety tests.
//!
//! Every durable step of a run (a checkpoint renamed into place, a `.tflite` or JSON file
//! written, a tree node finished) calls [`point`] with what it just did. With the environment
//! variable `COLLAB_FAULT_AT=N` the process aborts right after the N-th point (no destructors,
//! no cleanup: as a SIGKILL or a power cut would leave it); with `COLLAB_FAULT_AT=list` every
//! point is logged (`fault point N: what`) so a test can count them. Unset, a point is one
//! relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What `COLLAB_FAULT_AT` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    List,
    AbortAt(usize),
}

fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("COLLAB_FAULT_AT") {
        Ok(v) if v == "list" => Mode::List,
        Ok(v) => v.trim().parse().map_or(Mode::Off, Mode::AbortAt),
        Err(_) => Mode::Off,
    })
}

static COUNT: AtomicUsize = AtomicUsize::new(0);

/// A durable step has just completed: `what` names it (`"checkpoint pruned"`, …).
pub fn point(what: &str) {
    let mode = mode();
    if mode == Mode::Off {
        return;
    }
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    match mode {
        Mode::List => tracing::warn!("fault point {n}: {what}"),
        Mode::AbortAt(at) if at == n => {
            tracing::error!("fault injection: aborting after point {n} ({what})");
            std::process::abort();
        }
        _ => {}
    }
}
