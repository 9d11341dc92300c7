//! The reference crate's integration tests, as one test binary (one link instead of six: the CI
//! build is most of CI's time).
mod building_blocks;
mod gguf;
mod hf_model;
mod properties;
mod smollm2;
mod transgqla;
