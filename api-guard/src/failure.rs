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

/// One line for the operator: the whole cause chain, outermost first. A cause
/// that spans lines (a verifier log runs to thousands) keeps its first line and
/// its last two, where the verifier states what it refused.
pub fn one_line(err: &anyhow::Error) -> String {
    let parts: Vec<String> = err.chain().map(|e| squeeze(&e.to_string())).collect();
    parts.join(": ")
}

fn squeeze(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., a, b] if lines.len() > 3 => format!("{first} … {a} | {b}"),
        all => all.join(" | "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_log_becomes_one_line() {
        let log = "the kernel rejected the ingress program: Verifier output:\n0: (bf) r6 = r1\n\n1: ...\n500: R1 pointer arithmetic prohibited\nprocessed 500 insns\n";
        let err = anyhow::Error::new(Failure::new(ExitCode::Environment, log)).context("load");
        let line = one_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("load: the kernel rejected"), "{line}");
        assert!(
            line.ends_with("R1 pointer arithmetic prohibited | processed 500 insns"),
            "{line}"
        );
        assert_eq!(squeeze("a\nb"), "a | b");
        assert_eq!(squeeze("plain"), "plain");
    }
}
