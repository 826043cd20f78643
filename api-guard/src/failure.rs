//! Errors the operator sees: one line and a documented exit code. Where a
//! caller must decide (the exit code, a retry, a fallback), the cause is a
//! [`Failure`] variant; where it only reports, a string in an `anyhow` chain.
//! [`Failure::exit_code`] is the one place failures map to exit codes.

use std::path::PathBuf;

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

/// What went wrong, where a caller decides what follows. Raised where the
/// cause is known and carried through `anyhow` to `main`, which prints it and
/// exits with [`Failure::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A bad flag, value or combination.
    #[error("{0}")]
    Usage(String),
    #[error(
        "api-guard needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) to load its kernel programs"
    )]
    Privilege,
    #[error("no network interface named {0:?}")]
    NoInterface(String),
    /// The kernel lacks a feature api-guard needs (tcx, BTF, sock_ops, cgroup v2,
    /// BPF itself), or this build lacks its kernel programs.
    #[error("{0}")]
    KernelLacks(String),
    /// The kernel refused a program (its verifier) or an attachment.
    #[error("{0}")]
    Rejected(String),
    /// The pin dir is off bpffs, unusable, or holds another build's state.
    #[error("{0}")]
    PinDir(String),
    #[error("another api-guard is running with --pin-dir {}", .0.display())]
    PinDirTaken(PathBuf),
    #[error(
        "an api-guard daemon is running with --pin-dir {}: stop it first (it detaches when it stops)",
        .0.display()
    )]
    DaemonRunning(PathBuf),
    #[error("no api-guard daemon is running with --pin-dir {}", .0.display())]
    NotRunning(PathBuf),
    #[error("the daemon on {} stopped", .0.display())]
    DaemonStopped(PathBuf),
    /// Something else the host refuses: a file, a socket, a mount.
    #[error("{0}")]
    Host(String),
}

impl Failure {
    /// The exit code this failure ends the process with.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::Usage,
            Failure::Privilege => ExitCode::Privilege,
            Failure::NotRunning(_) | Failure::DaemonStopped(_) => ExitCode::NotRunning,
            Failure::NoInterface(_)
            | Failure::KernelLacks(_)
            | Failure::Rejected(_)
            | Failure::PinDir(_)
            | Failure::PinDirTaken(_)
            | Failure::DaemonRunning(_)
            | Failure::Host(_) => ExitCode::Environment,
        }
    }
}

/// The exit code of an error chain: the first [`Failure`] in it, else `Runtime`.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(|e| e.downcast_ref::<Failure>())
        .map_or(ExitCode::Runtime, Failure::exit_code)
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
        let err = anyhow::Error::new(Failure::Rejected(log.into())).context("load");
        assert_eq!(exit_code(&err), ExitCode::Environment);
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

    #[test]
    fn each_failure_has_its_code() {
        let dir = PathBuf::from("/sys/fs/bpf/x");
        assert_eq!(Failure::Usage("x".into()).exit_code(), ExitCode::Usage);
        assert_eq!(Failure::Privilege.exit_code(), ExitCode::Privilege);
        assert_eq!(
            Failure::NotRunning(dir.clone()).exit_code(),
            ExitCode::NotRunning
        );
        assert_eq!(Failure::PinDirTaken(dir).exit_code(), ExitCode::Environment);
        assert_eq!(
            exit_code(&anyhow::anyhow!("anything else")),
            ExitCode::Runtime
        );
    }
}
