//! Where the commands print. Results go to stdout through [`outln!`]; warnings, progress and
//! timing tables go to stderr through [`note!`].
//!
//! stdout is often a pipe that its reader closes early (`idpatch schedule --steps 1000 | head -n
//! 1`). Writing to it then fails with EPIPE (Rust ignores SIGPIPE, and the process-wide default
//! is left alone so that a server sharing this code is not killed by one closed connection):
//! [`line`] returns [`StdoutClosed`], the command stops there, and `main` exits with status 0
//! and nothing on stderr. stderr, when it fails, has nowhere left to report: its lines are
//! dropped instead of panicking as `eprintln!` does.

use std::fmt;
use std::io::{ErrorKind, Write};

/// The reader of stdout went away: the command stops, quietly and successfully.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line to stdout. A closed pipe is [`StdoutClosed`]; any other failure (a full
/// disk behind a redirection) is an I/O error naming stdout.
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|_| out.write_all(b"\n"));
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(idpatch::Error::io("stdout", e).into()),
    }
}

/// Writes to stderr without a newline; a failure is ignored (see the module documentation).
pub fn note_raw(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|_| err.flush());
}

/// `println!` for command results: `outln!(...)?` stops the command when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics.
macro_rules! note {
    () => {
        $crate::output::note_raw(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::note_raw(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics.
macro_rules! note_inline {
    ($($arg:tt)*) => {
        $crate::output::note_raw(format_args!($($arg)*))
    };
}

pub(crate) use {note, note_inline, outln};

/// A graph name padded to the longest graph name, so that table columns line up.
pub fn graph_cell(name: &str) -> String {
    format!(
        "{name:<width$}",
        width = idpatch::manifest::Role::name_width()
    )
}
