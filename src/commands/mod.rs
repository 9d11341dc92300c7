//! One module per subcommand; each parses nothing itself and returns the reference's errors.

pub mod bench;
pub mod cache_size;
pub mod certify;
pub mod convert;
pub mod eval;
pub mod forward;
pub mod plan;
pub mod probe;
pub mod snapshot;
pub mod vectors;

use gqla_reference::DType;

/// A clap parser for a value of `T` written by `name`, taking only `allowed` (so `--help` lists
/// them): the reference's own enums, with no mirror enum per command.
pub fn named<T: Copy + Send + Sync + 'static>(
    allowed: &'static [T],
    name: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(allowed.iter().map(|&v| name(v))).try_map(move |s| {
        allowed
            .iter()
            .copied()
            .find(|&v| name(v) == s)
            .ok_or_else(|| format!("`{s}` is none of the possible values"))
    })
}

/// A clap parser for a `--dtype` that takes only `allowed`.
pub fn dtype_parser(allowed: &'static [DType]) -> impl clap::builder::TypedValueParser<Value = DType> {
    named(allowed, DType::name)
}

/// Errors the commands report, each with its exit code ([`CliError::exit_code`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input: a file, a configuration or a value the reference refused.
    #[error(transparent)]
    Reference(#[from] gqla_reference::Error),
    /// A command line that cannot run as given.
    #[error("{0}")]
    Usage(String),
    /// A vector pack or a kernel author's outputs that cannot be read or written.
    #[error(transparent)]
    Pack(#[from] gqla_conformance::pack::PackError),
    /// The CUDA kernels could not run, or stopped.
    #[error("{context}: {source}")]
    Cuda {
        context: String,
        #[source]
        source: gqla_cuda::CudaError,
    },
    /// A file or directory this machine would not let us create or write.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The run finished but what it measured is wrong (e.g. a benchmark's spot check).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn cuda(context: impl Into<String>) -> impl FnOnce(gqla_cuda::CudaError) -> CliError {
        let context = context.into();
        move |source| CliError::Cuda { context, source }
    }
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |source| CliError::Io { what, source }
    }

    /// 2: bad input, or a request this machine cannot serve (no GPU, no NVRTC); 3: the run
    /// failed (I/O, a CUDA driver error, wrong measured outputs); 124: a GPU kernel hung.
    pub fn exit_code(&self) -> u8 {
        use gqla_cuda::CudaError as C;
        match self {
            CliError::Reference(_) | CliError::Usage(_) | CliError::Pack(_) => 2,
            CliError::Cuda { source, .. } => match source {
                C::Hung { .. } => gqla_cuda::device::HUNG_EXIT_CODE as u8,
                C::NoDriver | C::NoNvrtc | C::NoDevice(_) | C::Unsupported(_) => 2,
                C::Driver { .. } | C::Blas { .. } | C::Timing { .. } | C::Compile { .. } | C::Emulator(_) | C::MissingOutput(_) => 3,
            },
            CliError::Io { .. } | CliError::Failed(_) => 3,
        }
    }
}

/// A profile file: JSON, validated, errors naming the file and the field.
pub fn read_profile(path: &std::path::Path) -> Result<gqla_conformance::Profile, CliError> {
    let bytes = gqla_conformance::confined::read_regular(path, 1 << 20).map_err(|e| CliError::Usage(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| CliError::Usage(format!("{}: not UTF-8 text", path.display())))?;
    gqla_conformance::Profile::from_json(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::CliError;
    use gqla_cuda::CudaError;

    #[test]
    fn exit_codes_follow_the_kind_of_error() {
        let cuda = |source| CliError::Cuda {
            context: "c".into(),
            source,
        };
        let io = CliError::Io {
            what: "w".into(),
            source: std::io::Error::other("disk full"),
        };
        for (e, code) in [
            (CliError::Usage("u".into()), 2),
            (cuda(CudaError::NoDriver), 2),
            (cuda(CudaError::NoDevice("none".into())), 2),
            (cuda(CudaError::Emulator("e".into())), 3),
            (
                cuda(CudaError::Timing {
                    what: "w".into(),
                    why: "y".into(),
                }),
                3,
            ),
            (io, 3),
            (CliError::Failed("f".into()), 3),
            (
                cuda(CudaError::Hung {
                    what: "w".into(),
                    seconds: 30.0,
                }),
                124,
            ),
        ] {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
