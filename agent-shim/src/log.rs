//! Minimal stderr logging for the shim.
//!
//! The shim is a tiny entrypoint: it logs a handful of lines prefixed with
//! `palisade-shim:` so they stand out in the container log next to the agent's own
//! output. It must never log a secret value: callers pass variable *names* only.

use std::sync::atomic::{AtomicBool, Ordering};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Suppress informational lines (warnings and errors are always printed).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether informational lines are suppressed.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Informational line on stderr.
macro_rules! info {
    ($($t:tt)*) => {
        if !$crate::log::quiet() {
            eprintln!("palisade-shim: {}", format_args!($($t)*));
        }
    };
}

/// Warning line on stderr.
macro_rules! warning {
    ($($t:tt)*) => {
        eprintln!("palisade-shim: warning: {}", format_args!($($t)*))
    };
}

pub(crate) use {info, warning};
