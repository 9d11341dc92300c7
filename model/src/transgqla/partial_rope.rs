//! (T3) Partial RoPE: keep RoPE on d_r dims only.
//!
//! After RoRoPE, the top k = (d_r/2)/runs pairs of each run of f frequencies keep RoPE and form the
//! shared key k^R; kept pair m of run r turns at θ_{f r + ⌊m f / k⌋} (with k = f/c this is
//! TransMLA's collapse c = D/d_r). The dropped pairs K_N lose RoPE and join the latent:
//! $$ q_i\cdot k \;\approx\; q^R_i\cdot \mathrm{RoPE}(P_R M K) + q^N_i\cdot (W^{UK}_g [P_N M K; V]). $$
//! Lossy unless every pair is kept.

use super::latent_form::latent_form;
use super::rorope::RoRope;
use gqla_reference::error::Result;
use gqla_reference::gqa::GqaWeights;
use gqla_reference::latent::LatentWeights;

/// The layer with RoPE kept on `rope_dim` dims of the rotated key, and the fraction of calibration
/// key energy those dims hold.
pub fn partial_rope(gqa: &GqaWeights<f64>, rotation: &RoRope, rope_dim: usize) -> Result<(LatentWeights<f64>, f64)> {
    let (map, energy) = rotation.key_map(rope_dim / 2)?;
    Ok((latent_form(gqa, &map)?, energy))
}
