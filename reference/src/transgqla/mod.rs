//! TransGQLA: convert a GQA layer into a GQLA layer with G = KV groups (SPEC.md §10).
//!
//! Every stage is a [`LatentWeights`](crate::LatentWeights) the reference can evaluate, so each
//! exact step is checked against the stage before it:
//! - (T1) [`latent_form`]: key latent K = W_K x + b_K over all KV heads in *pair layout* (RoPE pair
//!   (j, l) of kv head j at coordinates 2p, 2p+1, p = j·D/2 + l), all of it the shared rope key,
//!   and the query absorbed: q^R_i = E_{g(i)}ᵀ q_i. Value latent V = W_V x + b_V, W^UV_g = E_g.
//!   Exact.
//! - (T2) [`rorope`]: per run of f adjacent frequencies, an orthogonal U_r mixing the kv heads' pairs
//!   (the same U_r on both coordinates of a pair), from PCA of calibration keys. Commutes with RoPE
//!   when f = 1 (exact); FreqFold f > 1 assigns one frequency per component (approximate).
//! - (T3) partial RoPE: the top d_r/2 pairs keep RoPE and form k^R; the rest become no-rope key
//!   dims K_N in the latent, reached through W^UK_g. Lossy unless every pair is kept.
//! - (T4) [`balance`]: K_N ← K_N/α, W^UK_g ← α W^UK_g with α = mean column norm of K_N over that of
//!   V on calibration data. Exact.
//! - (T5) [`pca`]: joint PCA of [K_N/α; V]; keep d_c directions R: c = Rᵀ[K_N/α; V],
//!   W^UK_g ← W^UK_g R, W^UV_g ← W^UV_g R. Exact at full rank.
//! - (T6) [`query`]: multiply the query weights (and bias) by sqrt((D + d_r)/D) and use the default
//!   scale 1/sqrt(d_n + d_r) with d_n = D. Exact.
//!
//! [`pipeline::convert_layer`] runs T1–T6 and reports the energy each truncation keeps.
//! [`group_pca`] converts MLA layers (G = H) to G < H by per-group PCA.

pub mod balance;
pub mod checkpoint;
pub mod group_pca;
pub mod latent_form;
pub mod partial_rope;
pub mod pca;
pub mod pipeline;
pub mod query;
pub mod rorope;

pub use pipeline::{convert_layer, ConvertOptions, LayerReport};
