//! Errors the operator sees: one line and a documented exit code.

use std::fmt;

/// Exit codes, as documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Any other runtime failure.
    Runtime = 1,
    /// A bad flag or value (clap uses 2 as well).
    Usage = 2,
    /// Not root / missing capabilities.
    Privilege = 3,
    /// The host lacks something: an interface, BPF support, a kernel feature.
    Environment = 4,
    /// An operator command found no running daemon.
    NotRunning = 5,
}

/// An error with the exit code it maps to. Raised where the cause is known and
/// carried through `anyhow` to `main`, which prints it and exits with the code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code of an error chain: the first [`Failure`] in it, else `Runtime`.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(ExitCode::Runtime, |f| f.code)
}

/// One line for the operator: the whole cause chain, outermost first.
pub fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    parts.join(": ")
}
