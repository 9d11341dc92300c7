//! Integration tests of the `gqla` program.
//!
//! - `parity`: `gqla forward` against HF transformers' own layer outputs (fixtures/hf).
//! - `cache_size`: measured cache sizes of known models, snapshotted.
//! - `bad_input`: every malformed input gets exit code 2 and a message naming file, tensor, expectation.

mod common;

mod bad_input;
mod cache_size;
mod parity;
