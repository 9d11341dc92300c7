//! The model crate's integration tests, as one test binary: real and fixture checkpoints (HF and
//! GGUF), TransGQLA, the cache compression, and SmolLM2-135M.
mod compress;
mod gguf;
mod hf_model;
mod moe_routing;
mod smollm2;
mod transgqla;
