//! Properties of the reference over random geometries (SPEC.md §§2–8).
//!
//! PROPTEST_CASES sets the depth (CI runs at least 256 per property).

use gqla_reference::absorb_decode::absorb_decode;
use gqla_reference::gqa_decode::gqa_decode;
use gqla_reference::latent::QueryProjection;
use gqla_reference::linear::Linear;
use gqla_reference::random::{hidden_states, latent_layer, LatentOptions};
use gqla_reference::real::{rel_err, widen};
use gqla_reference::switch::expand;
use gqla_reference::tp::TpLayer;
use gqla_reference::{
    mla_forward, prefill, DecodeOutput, GroupCache, GroupCacheLayout, LatentCache, LatentDims, LatentProjections, LatentShape,
    LatentWeights, Real, RopeStyle,
};
use ndarray::{s, Array2, Axis};
use proptest::prelude::*;

const LAYOUTS: [GroupCacheLayout; 2] = [GroupCacheLayout::RopeOnce, GroupCacheLayout::RopePerGroup];

/// One random case: geometry, layer options, context length P, block size s_q, TP degree, seed.
#[derive(Clone, Debug)]
struct Case {
    dims: LatentDims,
    opt: LatentOptions,
    context: usize,
    s_q: usize,
    tp: usize,
    /// Sliding attention window (Mistral-style), if any.
    window: Option<usize>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (1usize..=4, 1usize..=4, 2usize..=12, 1usize..=4, 2usize..=12),
        (
            1usize..=24,
            8usize..=40,
            prop::option::of(4usize..=16),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            0usize..=12,
            1usize..=4,
            0usize..=2,
            prop::option::weighted(0.25, 1usize..=6),
            any::<u64>(),
        ),
    )
        .prop_map(
            |((g, hpg, d_n, r2, d_v), (d_c, hidden, q_lora, kv_norm, bias, interleaved), (context, s_q, tp_pow, window, seed))| {
                let dims = LatentDims::new(LatentShape {
                    h: g * hpg,
                    g,
                    d_c,
                    d_n,
                    d_r: 2 * r2,
                    d_v,
                })
                .unwrap();
                // The largest power of two dividing G, capped by 2^tp_pow.
                let tp = (0..=tp_pow).map(|p| 1usize << p).filter(|t| g % t == 0).max().unwrap();
                let rope_style = if interleaved {
                    RopeStyle::Interleaved
                } else {
                    RopeStyle::RotateHalf
                };
                let opt = LatentOptions {
                    hidden,
                    q_lora_rank: q_lora,
                    kv_norm,
                    bias,
                    rope_style,
                    logit_std: 8.0,
                };
                Case {
                    dims,
                    opt,
                    context,
                    s_q,
                    tp,
                    window,
                    seed,
                }
            },
        )
}

impl Case {
    fn weights(&self) -> LatentWeights<f64> {
        latent_layer(self.dims, self.opt, self.seed)
            .unwrap()
            .with_sliding_window(self.window)
            .unwrap()
    }
    /// Hidden states of the context followed by the s_q new tokens.
    fn tokens(&self) -> Array2<f64> {
        hidden_states(self.context + self.s_q, self.opt.hidden, self.seed)
    }
}

/// Fill a latent cache with `x`'s rows on the absorb path, returning the cache.
fn latent_cache<T: Real>(w: &LatentWeights<T>, x: &Array2<T>) -> LatentCache<T> {
    let mut c = LatentCache::new(&w.dims());
    if x.nrows() > 0 {
        absorb_decode(w, x.view(), &mut c).unwrap();
    }
    c
}

fn decode_both<T: Real>(
    w: &LatentWeights<T>,
    x: &Array2<T>,
    context: usize,
    layout: GroupCacheLayout,
) -> (DecodeOutput<T>, DecodeOutput<T>) {
    let ctx = x.slice(s![..context, ..]).to_owned();
    let new = x.slice(s![context.., ..]);
    let mut latent = latent_cache(w, &ctx);
    let mut group = expand(w, &latent, layout);
    let a = absorb_decode(w, new, &mut latent).unwrap();
    let g = gqa_decode(w, new, &mut group).unwrap();
    (a, g)
}

fn err<T: Real>(a: &DecodeOutput<T>, b: &DecodeOutput<T>) -> f64 {
    rel_err(&widen(&a.y), &widen(&b.y))
        .max(lse_err(&widen(&a.lse), &widen(&b.lse)))
        .max(rel_err(&widen(&a.heads), &widen(&b.heads)))
}

/// LSE error: relative in the norm, but against at least 1 per element. LSE is a log-domain value
/// whose rounding error is absolute (about ε·max|logit|), so an LSE near 0 must not turn that into
/// a large relative error (seen: |Δ| 1e-16 on an LSE of 3e-7 read as 4e-10 relative).
fn lse_err(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape(), "lse_err: shapes differ");
    if a.iter().chain(b.iter()).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max((b.len() as f64).sqrt())
}

/// The largest |scaled logit| the last token sees, to confirm logits reach tens.
fn max_logit(w: &LatentWeights<f64>, x: &Array2<f64>) -> f64 {
    let d = w.dims();
    let n = x.nrows();
    let c = w.latent(x.view());
    let kr = w.rope_key(x.view(), 0);
    let q = w.queries(x.view(), 0);
    let mut m: f64 = 0.0;
    for i in 0..d.h() {
        let k = c.dot(&w.w_uk(d.group_of(i)).t());
        for u in 0..n {
            let sc = (q.nope.slice(s![n - 1, i, ..]).dot(&k.row(u)) + q.rope.slice(s![n - 1, i, ..]).dot(&kr.row(u))) * w.scale();
            m = m.max(sc.abs());
        }
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct("tests/properties.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// (1) The absorb path equals the GQA path, both layouts, in f64 and f32.
    #[test]
    fn absorb_equals_gqa(c in case()) {
        let w = c.weights();
        let x = c.tokens();
        for layout in LAYOUTS {
            let (a, g) = decode_both(&w, &x, c.context, layout);
            let e = err(&a, &g);
            prop_assert!(e <= 1e-10, "f64 absorb vs gqa ({layout:?}): rel err {e:e}");
            let (w32, x32) = (w.cast::<f32>(), x.mapv(|v| v as f32));
            let (a, g) = decode_both(&w32, &x32, c.context, layout);
            let e = err(&a, &g);
            prop_assert!(e <= 1e-4, "f32 absorb vs gqa ({layout:?}): rel err {e:e}");
        }
    }

    /// (2) GQLA with G = H equals MLA in HF DeepSeek-V3's non-absorbed form; for G < H it equals MLA
    /// whose kv_b_proj repeats each group per head.
    #[test]
    fn gqla_equals_mla(c in case()) {
        let w = c.weights();
        let x = c.tokens();
        let mla = if w.dims().is_mla() { mla_forward(&w, x.view()).unwrap() } else { mla_forward(&w.expand_groups_to_heads(), x.view()).unwrap() };
        let (a, g) = decode_both(&w, &x, 0, GroupCacheLayout::RopeOnce);
        prop_assert!(err(&a, &mla) <= 1e-10, "absorb vs MLA: {:e}", err(&a, &mla));
        prop_assert!(err(&g, &mla) <= 1e-10, "gqa vs MLA: {:e}", err(&g, &mla));
        let (h, g_) = (w.dims().h(), w.dims().g());
        prop_assert!(mla_forward(&w, x.view()).is_ok() == (h == g_));
    }

    /// (3) One block of s_q tokens = s_q single-token steps = prefill, on both paths.
    #[test]
    fn block_equals_steps_equals_prefill(c in case()) {
        let w = c.weights();
        let x = c.tokens();
        let n = x.nrows();
        let full = prefill(&w, x.view()).unwrap();
        let tail = |o: &DecodeOutput<f64>| DecodeOutput { y: o.y.slice(s![c.context.., ..]).to_owned(), heads: o.heads.slice(s![c.context.., .., ..]).to_owned(), lse: o.lse.slice(s![c.context.., ..]).to_owned() };
        let want = tail(&full);
        for layout in LAYOUTS {
            let (a, g) = decode_both(&w, &x, c.context, layout);
            prop_assert!(err(&a, &want) <= 1e-10, "absorb block vs prefill: {:e}", err(&a, &want));
            prop_assert!(err(&g, &want) <= 1e-10, "gqa block vs prefill: {:e}", err(&g, &want));
            let mut latent = latent_cache(&w, &x.slice(s![..c.context, ..]).to_owned());
            let mut group = expand(&w, &latent, layout);
            for t in c.context..n {
                let one = x.slice(s![t..t + 1, ..]);
                let a1 = absorb_decode(&w, one, &mut latent).unwrap();
                let g1 = gqa_decode(&w, one, &mut group).unwrap();
                let row = |o: &DecodeOutput<f64>| DecodeOutput { y: o.y.slice(s![t..t + 1, ..]).to_owned(), heads: o.heads.slice(s![t..t + 1, .., ..]).to_owned(), lse: o.lse.slice(s![t..t + 1, ..]).to_owned() };
                prop_assert!(err(&a1, &row(&full)) <= 1e-10);
                prop_assert!(err(&g1, &row(&full)) <= 1e-10);
            }
        }
    }

    /// (4) TP-sharded GQA decode sums to the unsharded output; rank caches hold disjoint groups.
    #[test]
    fn tp_sharded_equals_unsharded(c in case()) {
        let w = c.weights();
        let x = c.tokens();
        let tp = TpLayer::shard(&w, c.tp).unwrap();
        let d = w.dims();
        for r in &tp.ranks {
            // Only its groups' up-projections, its heads' W^O columns; the latent projection replicated.
            prop_assert_eq!(r.weights.kv_b().nrows(), (d.g() / c.tp) * (d.d_n() + d.d_v()));
            let per = d.d_n() + d.d_v();
            let full = w.kv_b();
            prop_assert_eq!(r.weights.kv_b(), full.slice(s![r.groups.start * per..r.groups.end * per, ..]));
            prop_assert_eq!(r.weights.o_proj().weight.ncols(), (d.h() / c.tp) * d.d_v());
            prop_assert_eq!(r.weights.dims().h(), d.h() / c.tp);
            prop_assert_eq!(r.weights.o_proj().bias.is_some(), r.rank == 0 && w.o_proj().bias.is_some());
        }
        for layout in LAYOUTS {
            let (_, whole) = decode_both(&w, &x, c.context, layout);
            let mut caches = tp.new_caches(layout).unwrap();
            if c.context > 0 {
                tp.gqa_decode(x.slice(s![..c.context, ..]), &mut caches).unwrap();
            }
            let out = tp.gqa_decode(x.slice(s![c.context.., ..]), &mut caches).unwrap();
            prop_assert!(err(&out.output, &whole) <= 1e-10, "TP={} vs unsharded: {:e}", c.tp, err(&out.output, &whole));
            let mut seen = vec![0usize; w.dims().g()];
            for cache in &caches {
                prop_assert_eq!(cache.num_groups(), w.dims().g() / c.tp);
                for g in cache.groups() { seen[g] += 1; }
            }
            prop_assert!(seen.iter().all(|&n| n == 1), "groups not partitioned: {seen:?}");
        }
    }

    /// (6a) Batch rows are independent: each sequence of a mixed-length batch (lengths may be 0)
    /// decodes the same alone as beside others whose inputs change.
    #[test]
    fn batch_rows_independent(c in case(), lens in prop::collection::vec(0usize..6, 1..4)) {
        let w = c.weights();
        let run = |salt: u64| -> Vec<DecodeOutput<f64>> {
            lens.iter().enumerate().map(|(b, &len)| {
                let seed = if b == 0 { c.seed } else { c.seed.wrapping_add(salt + b as u64) };
                let x = hidden_states(len + c.s_q, c.opt.hidden, seed);
                let (a, _) = decode_both(&w, &x, len, GroupCacheLayout::RopeOnce);
                a
            }).collect()
        };
        let (one, two) = (run(1), run(1000));
        prop_assert_eq!(&one[0], &two[0]);
        let x0 = hidden_states(lens[0] + c.s_q, c.opt.hidden, c.seed);
        let (_, g) = decode_both(&w, &x0, lens[0], GroupCacheLayout::RopeOnce);
        prop_assert!(err(&one[0], &g) <= 1e-10);
    }

    /// (6b) Permuting groups (with their heads' query rows, W^O columns and kv_b blocks) and heads
    /// within a group leaves y unchanged and permutes the per-head outputs the same way.
    #[test]
    fn heads_permute_consistently(c in case(), perm_seed in any::<u64>()) {
        let w = c.weights();
        let d = w.dims();
        let x = c.tokens();
        // A head permutation that maps groups to groups: a group rotation and a within-group rotation.
        let (gr, hr) = ((perm_seed as usize) % d.g(), (perm_seed as usize / 7) % d.heads_per_group());
        let hpg = d.heads_per_group();
        let head_of = |i: usize| ((i / hpg + gr) % d.g()) * hpg + (i % hpg + hr) % hpg; // new head i takes old head head_of(i)
        let group_of = |g: usize| (g + gr) % d.g();
        let pw = permute(&w, &head_of, &group_of);
        for layout in LAYOUTS {
            let (a, g) = decode_both(&w, &x, c.context, layout);
            let (pa, pg) = decode_both(&pw, &x, c.context, layout);
            for (orig, perm) in [(&a, &pa), (&g, &pg)] {
                prop_assert!(rel_err(&perm.y, &orig.y) <= 1e-10);
                let back = orig.heads.select(Axis(1), &(0..d.h()).map(head_of).collect::<Vec<_>>());
                prop_assert!(rel_err(&perm.heads, &back) <= 1e-10);
            }
        }
    }
}

fn permute(w: &LatentWeights<f64>, head_of: &dyn Fn(usize) -> usize, group_of: &dyn Fn(usize) -> usize) -> LatentWeights<f64> {
    let d = w.dims();
    let qk = d.qk_dim();
    let rows_of = |block: usize, idx: Vec<usize>| idx.into_iter().flat_map(|i| i * block..(i + 1) * block).collect::<Vec<_>>();
    let heads: Vec<usize> = (0..d.h()).map(head_of).collect();
    let groups: Vec<usize> = (0..d.g()).map(group_of).collect();
    let q_rows = rows_of(qk, heads.clone());
    let perm_rows = |l: &Linear<f64>| {
        Linear::new(
            l.weight.select(Axis(0), &q_rows),
            l.bias.as_ref().map(|b| b.select(Axis(0), &q_rows)),
        )
    };
    let query = match w.query_projection() {
        QueryProjection::Direct(l) => QueryProjection::Direct(perm_rows(l)),
        QueryProjection::LowRank { down, norm, up } => QueryProjection::LowRank {
            down: down.clone(),
            norm: norm.clone(),
            up: perm_rows(up),
        },
    };
    let kv_b = w.kv_b().select(Axis(0), &rows_of(d.d_n() + d.d_v(), groups));
    let o = w.o_proj();
    let o_proj = Linear::new(o.weight.select(Axis(1), &rows_of(d.d_v(), heads)), o.bias.clone());
    let projections = LatentProjections {
        query,
        kv_a: w.kv_a().clone(),
        kv_norm: w.kv_norm().cloned(),
        kv_b,
        o_proj,
    };
    LatentWeights::new(d, projections, w.rope().clone(), Some(w.scale()))
        .unwrap()
        .with_sliding_window(w.sliding_window())
        .unwrap()
}

/// The random layers the properties draw put the softmax in its realistic regime: scaled logits of
/// magnitude tens, where a missing max-subtraction or a scale error shows.
#[test]
fn random_layers_reach_logits_of_tens() {
    let dims = LatentDims::new(crate::SMALL).unwrap();
    let mut maxima: Vec<f64> = (0..16u64)
        .map(|seed| {
            let w = latent_layer(dims, LatentOptions::default(), seed).unwrap();
            max_logit(&w, &hidden_states(16, LatentOptions::default().hidden, seed))
        })
        .collect();
    maxima.sort_by(f64::total_cmp);
    let median = maxima[maxima.len() / 2];
    assert!(
        (10.0..200.0).contains(&median),
        "median max |logit| {median} is not of magnitude tens: {maxima:?}"
    );
}

#[test]
fn group_cache_sizes_are_measured_not_assumed() {
    // LLaMA-3-8B GQLA geometry: 576 (absorb), 2112 (canonical GQA path), 2560 (per-group rope).
    let dims = LatentDims::new(LatentShape {
        h: 32,
        ..LatentShape::DEEPSEEK_V3_G8
    })
    .unwrap();
    let latent = LatentCache::<half::bf16>::filled(&dims, 3);
    assert_eq!(latent.footprint().unwrap().elements_per_token, 576);
    assert_eq!(latent.footprint().unwrap().bytes_per_token, 1152);
    let once = GroupCache::<half::bf16>::new(&dims, GroupCacheLayout::RopeOnce).filled(3);
    assert_eq!(once.footprint().unwrap().elements_per_token, 2112);
    let per = GroupCache::<half::bf16>::new(&dims, GroupCacheLayout::RopePerGroup).filled(3);
    assert_eq!(per.footprint().unwrap().elements_per_token, 2560);
    // The shared measurement is the same allocation.
    let sizes = gqla_reference::cache::CacheSizes::measure::<half::bf16>(&dims);
    assert_eq!(
        (sizes.absorb, sizes.gqa_rope_once, sizes.gqa_rope_per_group),
        (latent.footprint().unwrap(), once.footprint().unwrap(), per.footprint().unwrap())
    );
    // A TP rank's cache holds a non-empty range of the groups the geometry has.
    for bad in [6..9, 3..3] {
        assert!(matches!(
            GroupCache::<f32>::for_groups(&dims, GroupCacheLayout::RopeOnce, bad.clone()),
            Err(gqla_reference::error::Error::Geometry(gqla_reference::error::GeometryError::GroupRange { start, end, groups: 8 }))
                if (start, end) == (bad.start, bad.end)
        ));
    }
    let rank = GroupCache::<f32>::for_groups(&dims, GroupCacheLayout::RopeOnce, 6..8)
        .unwrap()
        .filled(1);
    assert_eq!(rank.footprint().unwrap().elements_per_token, 2 * 256 + 64);
}
