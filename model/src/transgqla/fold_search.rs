//! Choosing the model's FreqFold by held-out loss, as TransMLA's `--freqfold auto` does.
//!
//! A larger fold lets RoRoPE pool 2·f·KV key dims per run and keep the strongest, at the price
//! of approximating f adjacent frequencies by one. Which wins depends on the model and the
//! budget: on SmolLM2-135M at 28.125% of the cache, fold 4 beat fold 2 by 12% in held-out KL and
//! fold 8 lost by 40% (docs/results/2026-12-04-smollm2-budgets.md). So the folds f₀, 2f₀, 4f₀, …
//! are tried in turn, each by converting the whole model at that fold and scoring it by
//! $$ \mathrm{KL}_f = \frac1T\sum_t \mathrm{KL}\big(p_{\text{src}}(\cdot\mid x_{<t}) \,\|\, p_{f}(\cdot\mid x_{<t})\big) $$
//! on the held-out calibration sequence. The search stops at the first fold that does not
//! improve, as TransMLA's does. The fold is one for the model: one RoPE table serves every layer.
//! Scoring the converted model itself, rather than the model with RoPE cut alone, lets the
//! choice see the kv truncation too. It costs a conversion per fold tried (2 or 3), where a
//! RoPE-cut pass would cost most of one anyway; the winner's conversion is the output. The
//! held-out sequence then both chooses the fold and reports its KL, so that figure is
//! optimistic; with random calibration ids the choice itself is weak.

use gqla_reference::error::Result;

/// One fold the search tried.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FoldTrial {
    pub freqfold: usize,
    /// Held-out KL(source ‖ converted at this fold), nats per token.
    pub held_out_kl: f64,
}

/// Try `start`, 2·`start`, 4·`start`, … while `fits` and while the score falls. `convert` turns a
/// fold into (held-out KL, product); only the best product so far is kept, so at most two exist
/// at once. Returns the best product and every trial, in order.
pub fn search_freqfold<P>(
    start: usize,
    fits: impl Fn(usize) -> bool,
    mut convert: impl FnMut(usize) -> Result<(f64, P)>,
) -> Result<(P, Vec<FoldTrial>)> {
    let mut trials: Vec<FoldTrial> = Vec::new();
    let mut best: Option<(f64, P)> = None;
    let mut fold = start;
    loop {
        let (kl, product) = convert(fold)?;
        trials.push(FoldTrial {
            freqfold: fold,
            held_out_kl: kl,
        });
        // A NaN scores as +∞: it never wins, and any number replaces it.
        let key = if kl.is_nan() { f64::INFINITY } else { kl };
        let improved = best.as_ref().is_none_or(|(b, _)| key < *b);
        if improved {
            best = Some((key, product));
        }
        if !improved || !fits(2 * fold) {
            break;
        }
        fold *= 2;
    }
    Ok((best.expect("one trial at least").1, trials))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: usize, max: usize, kl: &[(usize, f64)]) -> (usize, Vec<usize>) {
        let score = |f: usize| kl.iter().find(|(g, _)| *g == f).expect("scored fold").1;
        let (best, trials) = search_freqfold(start, |f| f <= max, |f| Ok((score(f), f))).unwrap();
        (best, trials.iter().map(|t| t.freqfold).collect())
    }

    #[test]
    fn stops_at_the_first_fold_that_does_not_improve() {
        // SmolLM2-135M at 28.125%, measured: 2 → 0.365, 4 → 0.325, 8 → 0.910.
        assert_eq!(run(2, 32, &[(2, 0.365), (4, 0.325), (8, 0.910), (16, 0.1)]), (4, vec![2, 4, 8]));
        assert_eq!(run(1, 32, &[(1, 0.5), (2, 0.6)]), (1, vec![1, 2]));
    }

    #[test]
    fn stops_at_the_largest_valid_fold() {
        assert_eq!(run(2, 8, &[(2, 0.4), (4, 0.3), (8, 0.2)]), (8, vec![2, 4, 8]));
        assert_eq!(run(4, 4, &[(4, 0.3)]), (4, vec![4]));
    }

    #[test]
    fn a_nan_score_never_wins() {
        assert_eq!(run(2, 32, &[(2, 0.4), (4, f64::NAN)]), (2, vec![2, 4]));
        // A NaN first trial is replaced by any number.
        assert_eq!(run(2, 32, &[(2, f64::NAN), (4, 0.9), (8, 1.0)]).0, 4);
    }

    #[test]
    fn errors_propagate() {
        let r = search_freqfold(
            2,
            |_| true,
            |f| {
                if f == 4 {
                    Err(gqla_reference::error::Error::IncompleteRun { missing: "boom" })
                } else {
                    Ok((1.0 / f as f64, ()))
                }
            },
        );
        assert!(r.is_err());
    }
}
