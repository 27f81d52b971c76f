//! The daemon's one error type, shared by the parts that set up the host
//! and run the loop.

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot run here (e.g. eBPF forced but unavailable).
    #[error("{0}")]
    Config(String),
    /// The LAN interface went away under the running daemon.
    #[error("{0}")]
    LinkGone(String),
    /// A system call failed; `what` says what duet was doing.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Wraps an I/O error with what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}
