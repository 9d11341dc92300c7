//! (T2) RoRoPE with FreqFold: rotate the kv heads' RoPE pairs to concentrate key energy.
//!
//! For run r of f adjacent frequencies, the n = KV·f pairs (j, l) give the covariance
//! $$ \Sigma_r = \sum_t \big(x^{re}_t x^{re\top}_t + x^{im}_t x^{im\top}_t\big) $$
//! over calibration keys before RoPE, k = W_K x (uncentred; damping by a multiple of the identity
//! would not change the eigenvectors). Within a run of one frequency (f = 1) RoPE turns every pair
//! by the same angle, so pre- and post-RoPE keys give the same Σ_r. Across the f frequencies of a
//! folded run, RoPE turns the pairs by different angles, and post-RoPE keys average their
//! correlations away as positions advance: on SmolLM2-135M that made the rotation blind to the
//! shared structure and cost 2x in held-out perplexity at freqfold 2 (TransMLA's converter uses
//! pre-RoPE keys; fed post-RoPE keys it reproduced our numbers to every digit). Its eigenvectors U_r (descending) define new pairs m:
//! re'_m = Σ_p `U_r[p,m]` re_p, im'_m = Σ_p `U_r[p,m]` im_p. The top k = (d_r/2)/runs pairs of each run
//! keep RoPE; kept pair m of run r gets frequency θ_{f r + ⌊m f / k⌋} (TransMLA's choice for f > 1,
//! and θ_r when f = 1, where the rotation commutes with RoPE and is exact).

use super::latent_form::{pair_index, KeyMap};
use crate::eigen::symmetric_eigen_desc;
use gqla_reference::error::{Error, Result};
use gqla_reference::gqa::GqaWeights;
use ndarray::{Array2, ArrayView2, Axis};

/// The RoRoPE rotation of a layer's key latent, before choosing which pairs keep RoPE.
#[derive(Clone, Debug)]
pub struct RoRope {
    /// Rows 2m, 2m+1 are new pair m; run r owns new pairs r·n..(r+1)·n, n = KV·f, by descending energy.
    rotation: Array2<f64>,
    /// Calibration energy of each new pair.
    energy: Vec<f64>,
    freqfold: usize,
    kv: usize,
    /// The source's θ_l, l = 0..D/2.
    theta: Vec<f64>,
}

/// Calibration keys before RoPE, k = W_K x, [T, KV·D] head-major.
pub fn unroped_keys(gqa: &GqaWeights<f64>, x: ArrayView2<f64>) -> Array2<f64> {
    gqa.k_proj().forward(x)
}

/// Compute the RoRoPE rotation with FreqFold `freqfold` from calibration sequences (hidden states
/// [L, hidden] each, at positions 0..L).
pub fn rorope(gqa: &GqaWeights<f64>, sequences: &[ArrayView2<f64>], freqfold: usize) -> Result<RoRope> {
    let (kv, d) = (gqa.dims().kv(), gqa.dims().d());
    let n_freq = d / 2;
    if freqfold == 0 || !n_freq.is_multiple_of(freqfold) {
        return Err(Error::OutOfRange {
            name: "freqfold",
            value: freqfold,
            expected: format!("a divisor of the number of RoPE frequencies D/2 = {n_freq}"),
        });
    }
    let n = kv * freqfold;
    let per_sequence: Vec<Array2<f64>> = sequences.iter().map(|x| unroped_keys(gqa, *x)).collect();
    let keys =
        ndarray::concatenate(Axis(0), &per_sequence.iter().map(|k| k.view()).collect::<Vec<_>>()).map_err(|_| Error::NoCalibration {
            what: "no sequences for RoRoPE's key PCA".into(),
        })?;
    let mut rotation = Array2::zeros((kv * d, kv * d));
    let mut energy = vec![0.0; kv * d / 2];
    for r in 0..n_freq / freqfold {
        // The run's pairs: (j, l) for l in the run, j over kv heads; p indexes them 0..n.
        let pairs: Vec<(usize, usize)> = (r * freqfold..(r + 1) * freqfold)
            .flat_map(|l| (0..kv).map(move |j| (j, l)))
            .collect();
        let re = keys.select(Axis(1), &pairs.iter().map(|&(j, l)| j * d + l).collect::<Vec<_>>());
        let im = keys.select(Axis(1), &pairs.iter().map(|&(j, l)| j * d + l + n_freq).collect::<Vec<_>>());
        let (values, vectors) = symmetric_eigen_desc(&(re.t().dot(&re) + im.t().dot(&im)))?;
        for m in 0..n {
            let new_pair = r * n + m;
            energy[new_pair] = values[m].max(0.0);
            for (p, &(j, l)) in pairs.iter().enumerate() {
                let src = pair_index(j, l, d) / 2;
                rotation[[2 * new_pair, 2 * src]] = vectors[[p, m]];
                rotation[[2 * new_pair + 1, 2 * src + 1]] = vectors[[p, m]];
            }
        }
    }
    Ok(RoRope {
        rotation,
        energy,
        freqfold,
        kv,
        theta: gqa.rope().freqs().to_vec(),
    })
}

/// Whether FreqFold `f` can keep `rope_pairs` = d_r/2 pairs: f divides the D/2 frequencies and
/// every run keeps the same number of pairs, at most its KV·f.
pub fn fold_fits(half_dim: usize, kv: usize, f: usize, rope_pairs: usize) -> bool {
    f > 0
        && half_dim.is_multiple_of(f)
        && rope_pairs > 0
        && rope_pairs.is_multiple_of(half_dim / f)
        && rope_pairs / (half_dim / f) <= kv * f
}

/// The smallest valid FreqFold for d_r = 2·rope_pairs (the least approximation), if any.
pub fn smallest_freqfold(half_dim: usize, kv: usize, rope_pairs: usize) -> Option<usize> {
    (1..=half_dim).find(|&f| fold_fits(half_dim, kv, f, rope_pairs))
}

impl RoRope {
    /// Keep `rope_pairs` = d_r/2 pairs with RoPE, the same number from every run. Returns the key
    /// map and the fraction of calibration key energy the kept pairs hold.
    pub fn key_map(&self, rope_pairs: usize) -> Result<(KeyMap, f64)> {
        let (f, kv) = (self.freqfold, self.kv);
        let (runs, n) = (self.theta.len() / f, kv * f);
        if !fold_fits(self.theta.len(), kv, f, rope_pairs) {
            return Err(Error::OutOfRange {
                name: "d_r",
                value: 2 * rope_pairs,
                expected: format!(
                    "a positive multiple of 2·(D/2)/freqfold = {} and at most KV·D = {} (KV = {kv}, freqfold = {f})",
                    2 * runs,
                    kv * self.theta.len() * 2
                ),
            });
        }
        let k = rope_pairs / runs;
        let mut freqs = vec![0.0; self.energy.len()];
        let mut kept = Vec::with_capacity(rope_pairs);
        for r in 0..runs {
            for m in 0..n {
                let offset = if m < k { m * f / k } else { (m / kv).min(f - 1) };
                freqs[r * n + m] = self.theta[r * f + offset];
                if m < k {
                    kept.push(r * n + m);
                }
            }
        }
        let total: f64 = self.energy.iter().sum();
        let held: f64 = kept.iter().map(|&m| self.energy[m]).sum();
        Ok((
            KeyMap {
                rotation: self.rotation.clone(),
                freqs,
                kept,
            },
            if total > 0.0 { held / total } else { 1.0 },
        ))
    }
}
