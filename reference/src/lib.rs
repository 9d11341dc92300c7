#![doc = include_str!("../SPEC.md")]
//!
//! # Crate map
//! The ground truth alone: the equations, their caches and seeded random layers (ndarray, half,
//! rayon, rand, serde, thiserror; the optional `faer` feature runs layer GEMMs on faer, about
//! 1.3× faster). Checkpoints, TransGQLA, snapshots and eval live in
//! `gqla-model`; the one reader and writer of files in `gqla-files`.
//!
//! - [`dtype`]: [`DType`], the one element type (storage, caches, rounding).
//! - [`real`]: [`Real`], the scalar the reference runs in (f64, or f32 for the naive reference).
//! - [`config`]: validated geometries ([`LatentDims`], [`GqaDims`]).
//! - [`rope`], [`linear`], [`attention`]: the building blocks.
//! - [`latent`]: MLA/GQLA weights and (L1), (L2), (Q), (O).
//! - [`cache`]: [`LatentCache`], [`GroupCache`], [`GqaCache`], and cache sizes measured from them.
//! - [`decode`]: [`DecodeOutput`] and the two decode paths' names.
//! - [`fp8`]: FP8 element types, scale rules and cache records (tiled, per-tensor), exactly.
//! - [`absorb_decode`](fn@absorb_decode) (§3), [`gqa_decode`](fn@gqa_decode) (§4), [`prefill`](fn@prefill) (§2 directly), [`mla`] (§9, HF form).
//! - [`gqa`]: GQA/MHA/MQA layers (§9).
//! - [`switch`] (§7, expansion; compression needs a QR solver and is `gqla_model::compress`),
//!   [`tp`] (§8).
//! - [`random`]: seeded random layers for tests and case generation.
//! - [`error`]: [`Error`], which names what was expected and what was found.

pub mod absorb_decode;
pub mod attention;
pub mod cache;
pub mod config;
pub mod decode;
pub mod dtype;
pub mod error;
pub mod fp8;
pub mod gqa;
pub mod gqa_decode;
pub mod latent;
pub mod linear;
pub mod mla;
pub mod prefill;
pub mod random;
pub mod real;
pub mod rope;
pub mod switch;
pub mod tp;

pub use absorb_decode::absorb_decode;
pub use cache::{Footprint, GqaCache, GroupCache, GroupCacheLayout, LatentCache};
pub use config::{GqaDims, LatentDims, LatentShape};
pub use decode::DecodeOutput;
pub use dtype::DType;
pub use error::{Error, Result};
pub use gqa::{GqaProjections, GqaWeights};
pub use gqa_decode::gqa_decode;
pub use latent::{LatentProjections, LatentWeights, QueryProjection};
pub use mla::mla_forward;
pub use prefill::prefill;
pub use real::Real;
pub use rope::{Rope, RopeStyle};
