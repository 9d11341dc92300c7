//! Scoring a model on text: perplexity, and against a source model the KL divergence and top-1
//! agreement of the next-token distributions. `gqla eval` and the converter's held-out figures
//! use these functions.

use crate::hf::Checkpoint;
use gqla_reference::error::Result;
use ndarray::{Array1, Array2, ArrayView1};

/// log softmax of one row of logits.
fn log_softmax(row: ArrayView1<f64>) -> Array1<f64> {
    let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let z = row.mapv(|v| (v - m).exp()).sum().ln() + m;
    row.mapv(|v| v - z)
}

/// Mean over rows of KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)) between softmax(logits_p) and
/// softmax(logits_q), in nats.
pub fn mean_kl(logits_p: &Array2<f64>, logits_q: &Array2<f64>) -> f64 {
    let n = logits_p.nrows();
    let total: f64 = (0..n)
        .map(|r| {
            let (lp, lq) = (log_softmax(logits_p.row(r)), log_softmax(logits_q.row(r)));
            lp.iter().zip(lq.iter()).map(|(a, b)| a.exp() * (a - b)).sum::<f64>()
        })
        .sum();
    total / n.max(1) as f64
}

/// Σ_t −log softmax(logits_t)[ids_{t+1}]: the negative log-likelihood of each next token, over
/// the T − 1 positions that have one. Returns (sum, count).
pub fn next_token_nll(logits: &Array2<f64>, ids: &[u32]) -> (f64, usize) {
    let n = ids.len().saturating_sub(1).min(logits.nrows());
    let sum = (0..n).map(|t| -log_softmax(logits.row(t))[ids[t + 1] as usize]).sum();
    (sum, n)
}

/// How many rows have the same arg-max in both.
pub fn top1_matches(logits_p: &Array2<f64>, logits_q: &Array2<f64>) -> usize {
    let argmax = |row: ArrayView1<f64>| {
        row.iter()
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    (0..logits_p.nrows())
        .filter(|&r| argmax(logits_p.row(r)) == argmax(logits_q.row(r)))
        .count()
}

/// A model's scores on a text.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TextScore {
    pub tokens: usize,
    /// Windows the text was cut into (each starts at position 0).
    pub windows: usize,
    /// Next tokens predicted (tokens − windows).
    pub predicted: usize,
    /// exp(mean next-token NLL).
    pub perplexity: f64,
    /// The source model's perplexity on the same windows, when compared.
    pub source_perplexity: Option<f64>,
    /// Mean KL(source ‖ model) over every position, nats.
    pub kl_from_source: Option<f64>,
    /// Fraction of positions whose most likely next token is the source's.
    pub top1_agreement: Option<f64>,
}

/// Tokens run through a model at once: windows are batched up to this many tokens, so that each
/// layer is read once per batch, not once per window.
pub const BATCH_TOKENS: usize = 8192;

/// Score `model` on `ids`, cut into windows of at most `window` tokens (each scored from position
/// 0), in precision `T`; with `source`, also compare the two models' next-token distributions at
/// every position. Windows run in batches of up to [`BATCH_TOKENS`] tokens, layer by layer.
/// `on_step` is called after each (batch, model, layer).
pub fn evaluate<T: gqla_reference::Real>(
    model: &Checkpoint,
    source: Option<&Checkpoint>,
    ids: &[u32],
    window: usize,
    on_step: &mut dyn FnMut(),
) -> Result<TextScore> {
    let window = window.max(2);
    let (mut nll, mut predicted, mut src_nll, mut kl_sum, mut top1, mut positions) = (0.0, 0, 0.0, 0.0, 0, 0);
    let chunks: Vec<&[u32]> = ids.chunks(window).filter(|c| c.len() >= 2).collect();
    let head = model.head()?.cast::<T>();
    let src_head = source.map(|s| s.head().map(|h| h.cast::<T>())).transpose()?;
    for batch in chunks.chunks(batches_of(window)) {
        let hs = model.final_hidden_in::<T>(batch, &mut |_| on_step())?;
        let src_hs = source.map(|s| s.final_hidden_in::<T>(batch, &mut |_| on_step())).transpose()?;
        for (k, chunk) in batch.iter().enumerate() {
            let logits = head.logits(hs[k].view()).mapv(|v| v.f64());
            let (s, n) = next_token_nll(&logits, chunk);
            nll += s;
            predicted += n;
            if let (Some(src_hs), Some(src_head)) = (&src_hs, &src_head) {
                let src_logits = src_head.logits(src_hs[k].view()).mapv(|v| v.f64());
                src_nll += next_token_nll(&src_logits, chunk).0;
                kl_sum += mean_kl(&src_logits, &logits) * chunk.len() as f64;
                top1 += top1_matches(&src_logits, &logits);
                positions += chunk.len();
            }
        }
    }
    let ppl = |s: f64| (s / predicted.max(1) as f64).exp();
    Ok(TextScore {
        tokens: ids.len(),
        windows: chunks.len(),
        predicted,
        perplexity: ppl(nll),
        source_perplexity: source.map(|_| ppl(src_nll)),
        kl_from_source: source.map(|_| kl_sum / positions.max(1) as f64),
        top1_agreement: source.map(|_| top1 as f64 / positions.max(1) as f64),
    })
}

/// Windows per batch for windows of `window` tokens.
pub fn batches_of(window: usize) -> usize {
    (BATCH_TOKENS / window.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_of_known_distributions() {
        // Uniform over 4: NLL ln 4 each; KL(uniform ‖ uniform) = 0; KL to a peaked row > 0.
        let uniform = Array2::zeros((3, 4));
        let (s, n) = next_token_nll(&uniform, &[0, 1, 2]);
        assert_eq!(n, 2);
        assert!((s - 2.0 * 4f64.ln()).abs() < 1e-12);
        assert_eq!(mean_kl(&uniform, &uniform), 0.0);
        let mut peaked = uniform.clone();
        peaked[[0, 1]] = 5.0;
        let p1 = 5f64.exp() / (3.0 + 5f64.exp());
        let want = (0.25 * (0.25f64.ln() - ((1.0 - p1) / 3.0).ln()) * 3.0 + 0.25 * (0.25f64.ln() - p1.ln())) / 3.0;
        assert!((mean_kl(&uniform, &peaked) - want).abs() < 1e-12);
        assert_eq!(top1_matches(&peaked, &peaked), 3);
    }
}
