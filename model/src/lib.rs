//! Real checkpoints for the GQLA ground truth ([`gqla_reference`]): what a converter uses, and
//! what a kernel author who only wants the equations does not need (candle, tokenizers, YAML).
//!
//! # Crate map
//! - [`hf`]: HF checkpoints (config.json + safetensors) and llama.cpp GGUF files, read as the
//!   reference's layers; converted checkpoints written (tensor names, config, modeling code).
//! - [`transgqla`]: TransGQLA (GQA sources: RoRoPE, FreqFold, partial RoPE, balanced joint PCA,
//!   per-group up-projections) and per-group PCA (MLA sources), with its [`eigen`] solver.
//! - [`compress`]: the way back from the GQA path, a group cache to the latent by least squares.
//! - [`transformer`]: the whole model (embedding, layers, norm, LM head) on either decode path.
//! - [`eval`]: perplexity, KL and top-1 agreement on a text.
//! - [`snapshot`]: regression digests of checkpoints ([`snapshot::Snapshot`]).
//! - [`budget`]: memory plans checked before allocating ([`budget::Budget`]).

pub mod budget;
pub mod compress;
pub mod eigen;
pub mod eval;
pub mod hf;
pub mod snapshot;
pub mod transformer;
pub mod transgqla;
