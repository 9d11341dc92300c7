#![doc = include_str!("../SPEC.md")]
//!
//! # Crate map
//! - [`dtype`]: [`DType`], the one element type (storage, caches, rounding).
//! - [`config`]: validated geometries ([`LatentDims`], [`GqaDims`]).
//! - [`rope`], [`linear`], [`attention`]: the building blocks.
//! - [`latent`]: MLA/GQLA weights and (L1), (L2), (Q), (O).
//! - [`cache`]: [`LatentCache`], [`GroupCache`], [`GqaCache`].
//! - [`absorb_decode`](fn@absorb_decode) (§3), [`gqa_decode`](fn@gqa_decode) (§4), [`prefill`](fn@prefill) (§2 directly), [`mla`] (§9, HF form).
//! - [`gqa`]: GQA/MHA/MQA layers (§9).
//! - [`switch`] (§7), [`tp`] (§8).
//! - [`hf`]: loading HF checkpoints (config.json + safetensors).
//! - [`random`]: seeded random layers for tests and case generation.
//! - [`snapshot`]: regression digests of checkpoints ([`snapshot::Snapshot`]).

pub mod absorb_decode;
pub mod attention;
pub mod budget;
pub mod cache;
pub mod config;
pub mod decode;
pub mod dtype;
pub mod eigen;
pub mod error;
pub mod eval;
pub mod files;
pub mod gqa;
pub mod gqa_decode;
pub mod hf;
pub mod latent;
pub mod linear;
pub mod mla;
pub mod model;
pub mod prefill;
pub mod random;
pub mod real;
pub mod rope;
pub mod snapshot;
pub mod switch;
pub mod tp;
pub mod transgqla;

pub use absorb_decode::absorb_decode;
pub use cache::{Footprint, GqaCache, GroupCache, GroupCacheLayout, LatentCache};
pub use config::{GqaDims, LatentDims};
pub use decode::DecodeOutput;
pub use dtype::DType;
pub use error::{Error, Result};
pub use gqa::GqaWeights;
pub use gqa_decode::gqa_decode;
pub use latent::{LatentWeights, QueryProjection};
pub use mla::mla_forward;
pub use prefill::prefill;
pub use real::Real;
pub use rope::{Rope, RopeStyle};
