//! TransGQLA (SPEC.md §10): exact before truncation, each exact step exact on its own, and
//! truncation that behaves.

use gqla_reference::random::{gqa_layer, hidden_states};
use gqla_reference::real::rel_err;
use gqla_reference::transgqla::pipeline::{convert_stages, ConvertOptions};
use gqla_reference::{absorb_decode, gqa_decode, prefill, GqaDims, GqaWeights, GroupCache, GroupCacheLayout, LatentCache, LatentWeights};
use ndarray::{s, Array2};
use proptest::prelude::*;

#[derive(Clone, Debug)]
struct Source {
    dims: GqaDims,
    hidden: usize,
    bias: bool,
    seed: u64,
}

fn source() -> impl Strategy<Value = Source> {
    (1usize..=3, 1usize..=3, 1usize..=4, 6usize..=24, any::<bool>(), any::<u64>()).prop_map(|(kv, per, half, hidden, bias, seed)| Source {
        dims: GqaDims::new(kv * per, kv, 2 * half).unwrap(),
        hidden,
        bias,
        seed,
    })
}

impl Source {
    fn layer(&self) -> GqaWeights<f64> {
        gqa_layer(self.dims, self.hidden, self.bias, 4.0, self.seed).unwrap()
    }
    fn calibration(&self) -> Array2<f64> {
        hidden_states(32, self.hidden, self.seed ^ 1)
    }
    fn held_out(&self) -> Array2<f64> {
        hidden_states(9, self.hidden, self.seed ^ 2)
    }
}

/// The converted layer's output on both decode paths (context of 5 tokens, then a block of 4).
fn both_paths(w: &LatentWeights<f64>, x: &Array2<f64>) -> [Array2<f64>; 3] {
    let d = w.dims();
    let (ctx, new) = (x.slice(s![..5, ..]), x.slice(s![5.., ..]));
    let mut latent = LatentCache::new(d.d_c(), d.d_r());
    let mut group = GroupCache::new(GroupCacheLayout::RopeOnce, 0..d.g(), d.d_n(), d.d_r(), d.d_v());
    let a0 = absorb_decode(w, ctx, &mut latent).unwrap().y;
    let a1 = absorb_decode(w, new, &mut latent).unwrap().y;
    let g0 = gqa_decode(w, ctx, &mut group).unwrap().y;
    let g1 = gqa_decode(w, new, &mut group).unwrap().y;
    let cat = |a: Array2<f64>, b: Array2<f64>| ndarray::concatenate(ndarray::Axis(0), &[a.view(), b.view()]).unwrap();
    [cat(a0, a1), cat(g0, g1), prefill(w, x.view()).unwrap().y]
}

fn err_vs(w: &LatentWeights<f64>, want: &Array2<f64>, x: &Array2<f64>) -> f64 {
    both_paths(w, x).iter().map(|y| rel_err(y, want)).fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct("tests/transgqla.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// With no truncation and freqfold 1 the converted layer equals the GQA layer on held-out
    /// tokens, on both decode paths and in prefill.
    #[test]
    fn exact_before_truncation(src in source()) {
        let gqa = src.layer();
        let x = src.held_out();
        let want = gqa.prefill(x.view()).unwrap().y;
        let (stages, report) = convert_stages(&gqa, &[src.calibration().view()], ConvertOptions::exact()).unwrap();
        let e = err_vs(&stages.output, &want, &x);
        prop_assert!(e <= 1e-9, "converted vs GQA: {e:e}");
        prop_assert_eq!(stages.output.dims().g(), gqa.dims().kv());
        prop_assert!((report.rope_energy_kept - 1.0).abs() < 1e-12 && (report.kv_energy_kept - 1.0).abs() < 1e-12);
    }

    /// Each exact step preserves the output of the stage before it, also when RoPE is truncated.
    #[test]
    fn each_exact_step_is_exact(src in source(), fold_pow in 0u32..3, keep in 1usize..=4) {
        let gqa = src.layer();
        let (kv, d) = (gqa.dims().kv(), gqa.dims().d());
        let f = 1usize << fold_pow;
        prop_assume!((d / 2) % f == 0);
        let runs = d / 2 / f;
        let k = keep.min(kv * f);
        let opt = ConvertOptions { rope_dim: Some(2 * runs * k), kv_rank: None, freqfold: f };
        let x = src.held_out();
        let want = gqa.prefill(x.view()).unwrap().y;
        let (st, _) = convert_stages(&gqa, &[src.calibration().view()], opt).unwrap();
        prop_assert!(err_vs(&st.latent_form, &want, &x) <= 1e-9, "T1 latent form");
        if f == 1 {
            prop_assert!(err_vs(&st.rorope, &want, &x) <= 1e-9, "T2 RoRoPE (f = 1)");
        }
        let partial = prefill(&st.partial_rope, x.view()).unwrap().y;
        prop_assert!(err_vs(&st.balanced, &partial, &x) <= 1e-9, "T4 balance");
        prop_assert!(err_vs(&st.pca, &partial, &x) <= 1e-9, "T5 full-rank PCA");
        prop_assert!(err_vs(&st.output, &partial, &x) <= 1e-9, "T6 query rescale");
        prop_assert_eq!(st.output.scale(), st.output.dims().default_scale());
    }

    /// Truncation behaves: the latent energy kept grows with the kv rank (so the calibration
    /// reconstruction error shrinks), and the full rank has zero error.
    #[test]
    fn truncation_behaves(src in source()) {
        let gqa = src.layer();
        let (kv, d) = (gqa.dims().kv(), gqa.dims().d());
        let cal = src.calibration();
        let opt = |kv_rank| ConvertOptions { rope_dim: Some(d), kv_rank, freqfold: 1 };
        let (st, _) = convert_stages(&gqa, &[cal.view()], opt(None)).unwrap();
        let full = st.balanced.dims().d_c();
        let c_full = st.balanced.latent(cal.view());
        let total: f64 = c_full.iter().map(|v| v * v).sum();
        let mut last_kept = 0.0;
        for rank in 1..=full {
            let (trunc, report) = convert_stages(&gqa, &[cal.view()], opt(Some(rank))).unwrap();
            let kept: f64 = trunc.pca.latent(cal.view()).iter().map(|v| v * v).sum::<f64>() / total;
            prop_assert!((kept - report.kv_energy_kept).abs() <= 1e-9, "reported energy {} vs measured {kept}", report.kv_energy_kept);
            // The calibration reconstruction error is 1 − kept: it must not grow with the rank.
            prop_assert!(kept >= last_kept - 1e-12, "rank {rank}: energy kept {kept} < {last_kept} at rank {}", rank - 1);
            last_kept = kept;
        }
        prop_assert!(last_kept >= 1.0 - 1e-12, "full rank leaves error {}", 1.0 - last_kept);
        let partial = prefill(&st.partial_rope, cal.view()).unwrap().y;
        prop_assert!(rel_err(&prefill(&st.output, cal.view()).unwrap().y, &partial) <= 1e-9);
        prop_assert!(kv * d > 0);
    }
}

/// RoPE energy kept grows with d_r, and keeping every pair keeps all of it.
#[test]
fn rope_energy_grows_with_rope_dim() {
    let gqa = gqa_layer(GqaDims::new(8, 4, 8).unwrap(), 32, false, 4.0, 3).unwrap();
    let cal = hidden_states(64, 32, 4);
    let mut last = 0.0;
    for pairs_per_freq in 1..=4 {
        let opt = ConvertOptions {
            rope_dim: Some(2 * 4 * pairs_per_freq),
            kv_rank: None,
            freqfold: 1,
        };
        let (_, r) = convert_stages(&gqa, &[cal.view()], opt).unwrap();
        assert!(r.rope_energy_kept >= last - 1e-12, "{} < {last}", r.rope_energy_kept);
        last = r.rope_energy_kept;
    }
    assert!((last - 1.0).abs() < 1e-12);
}

#[test]
fn invalid_options_are_errors() {
    let gqa = gqa_layer(GqaDims::new(4, 2, 8).unwrap(), 16, false, 4.0, 1).unwrap();
    let cal = hidden_states(16, 16, 2);
    for (opt, needle) in [
        (
            ConvertOptions {
                rope_dim: Some(6),
                kv_rank: None,
                freqfold: 1,
            },
            "multiple",
        ),
        (
            ConvertOptions {
                rope_dim: Some(4),
                kv_rank: None,
                freqfold: 3,
            },
            "freqfold 3",
        ),
        (
            ConvertOptions {
                rope_dim: Some(34),
                kv_rank: None,
                freqfold: 1,
            },
            "at most",
        ),
        (
            ConvertOptions {
                rope_dim: Some(8),
                kv_rank: Some(10_000),
                freqfold: 1,
            },
            "kv rank",
        ),
    ] {
        let e = convert_stages(&gqa, &[cal.view()], opt).unwrap_err().to_string();
        assert!(e.contains(needle), "{opt:?}: {e}");
    }
}
