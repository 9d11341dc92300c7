//! Integration tests of the `gqla` program.
//!
//! - `parity`: `gqla forward` against HF transformers' own layer outputs (fixtures/hf).
//! - `cache_size`: measured cache sizes of known models, snapshotted.
//! - `bad_input`: every malformed input gets exit code 2 and a message naming file, tensor, expectation.
//! - `certify`: certificates of the built-in kernels, exit codes, refusals.
//! - `convert`: TransGQLA conversion, exact before truncation, snapshotted, the 28.125% measured.
//! - `snapshot`: regression digests of checkpoints and `--check`.

mod common;

mod bad_input;
mod cache_size;
mod certify;
mod convert;
mod eval;
mod hostile;
mod parity;
mod plan;
mod python_package;
mod snapshot;
