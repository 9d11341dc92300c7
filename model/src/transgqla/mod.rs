//! TransGQLA: convert a GQA layer into a GQLA layer with G = KV groups (SPEC.md §10).
//!
//! Every stage is a [`LatentWeights`](gqla_reference::LatentWeights) the reference can evaluate, so each
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
//! [`stock_mla`] rewrites a converted layer in the stock DeepSeek-V3 layout (`--emit mla`).

pub mod balance;
pub mod checkpoint;
pub mod fold_search;
pub mod group_pca;
pub mod latent_form;
pub mod method;
pub mod partial_rope;
pub mod pca;
pub mod pipeline;
pub mod query;
pub mod rorope;
pub mod stock_mla;

pub use method::{Fold, FoldRequest, Method, MethodError, Request, Truncation};
pub use pipeline::{convert_layer, ConvertOptions, LayerReport};

/// The paper's cache budget for a GQA source of `kv` heads of dim `d`: (d_r, d_c) with
/// d_r = min(64, d/2) and d_c + d_r = 28.125% of the source's 2·kv·d cache elements, rounded
/// (LLaMA-3-8B: 64 and 512; SmolLM2-135M: 32 and 76).
pub fn paper_budget(kv: usize, d: usize) -> (usize, usize) {
    let rope = (d / 2).clamp(2, 64) & !1;
    let total = (2 * kv * d * 9).div_ceil(32).max(rope + 1); // 28.125% = 9/32
    (rope, total - rope)
}

#[cfg(test)]
mod tests {
    #[test]
    fn paper_budget_is_28_125_percent() {
        assert_eq!(super::paper_budget(8, 128), (64, 512)); // LLaMA-3-8B: 576 / 2048
        assert_eq!(super::paper_budget(3, 64), (32, 76)); // SmolLM2-135M: 108 / 384
        assert_eq!(super::paper_budget(2, 8), (4, 5)); // ceil(9 / 32 · 32) = 9
    }
}
