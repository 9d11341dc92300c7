//! One module per subcommand; each parses nothing itself and returns the reference's errors.

pub mod bench;
pub mod cache_size;
pub mod certify;
pub mod convert;
pub mod eval;
pub mod forward;
pub mod plan;
pub mod snapshot;
pub mod vectors;

/// Errors the commands report (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Reference(#[from] gqla_reference::Error),
    #[error("{0}")]
    Usage(String),
}
