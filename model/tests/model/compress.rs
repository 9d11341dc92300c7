//! SPEC §7 (C): compressing a group cache back to the latent, the inverse of the exact expansion.

use gqla_model::compress::compress;
use gqla_reference::absorb_decode::absorb_decode;
use gqla_reference::error::Error;
use gqla_reference::random::{hidden_states, latent_layer, LatentOptions};
use gqla_reference::real::rel_err;
use gqla_reference::switch::expand;
use gqla_reference::{GroupCacheLayout, LatentCache, LatentDims, LatentShape, LatentWeights, RopeStyle};
use proptest::prelude::*;

fn layer(shape: LatentShape, kv_norm: bool, seed: u64) -> LatentWeights<f64> {
    let opt = LatentOptions {
        hidden: 24,
        q_lora_rank: None,
        kv_norm,
        bias: false,
        rope_style: RopeStyle::RotateHalf,
        logit_std: 8.0,
    };
    latent_layer(LatentDims::new(shape).unwrap(), opt, seed).unwrap()
}

fn latent_cache(w: &LatentWeights<f64>, tokens: usize, seed: u64) -> LatentCache<f64> {
    let mut c = LatentCache::new(&w.dims());
    absorb_decode(w, hidden_states(tokens, 24, seed).view(), &mut c).unwrap();
    c
}

proptest! {
    /// Expand then compress returns the latent cache, up to rounding scaled by the condition
    /// number of kv_b_proj.
    #[test]
    fn expand_then_compress_roundtrip(
        (g, hpg, d_n, d_v, d_c) in (1usize..=4, 1usize..=3, 2usize..=10, 2usize..=10, 1usize..=24),
        r2 in 1usize..=3, tokens in 1usize..=9, kv_norm in any::<bool>(), seed in any::<u64>(),
    ) {
        prop_assume!(g * (d_n + d_v) >= d_c);
        let w = layer(LatentShape { h: g * hpg, g, d_c, d_n, d_r: 2 * r2, d_v }, kv_norm, seed);
        let latent = latent_cache(&w, tokens, seed);
        for layout in [GroupCacheLayout::RopeOnce, GroupCacheLayout::RopePerGroup] {
            let (back, info) = compress(&w, &expand(&w, &latent, layout)).unwrap();
            let e = rel_err(&back.keys().to_owned(), &latent.keys().to_owned());
            let cond = info.condition_number.max(1.0);
            prop_assert!(info.relative_residual <= 1e-12 * cond, "residual {:e}", info.relative_residual);
            prop_assert!(e <= 1e-13 * cond * d_c as f64, "latent round trip {e:e} (cond {cond:e})");
        }
    }
}

/// Fewer stacked key and value rows than latent coordinates: the latent is not determined, and
/// the refusal says so by variant, with the shape.
#[test]
fn an_undetermined_latent_is_refused() {
    let w = layer(
        LatentShape {
            h: 2,
            g: 1,
            d_c: 12,
            d_n: 3,
            d_r: 2,
            d_v: 4,
        },
        false,
        7,
    );
    let group = expand(&w, &latent_cache(&w, 3, 7), GroupCacheLayout::RopeOnce);
    match compress(&w, &group) {
        Err(Error::RankDeficient {
            rows: 7,
            cols: 12,
            sigma_ratio,
            ..
        }) => assert_eq!(sigma_ratio, 0.0),
        r => panic!("expected RankDeficient 7×12, got {:?}", r.err()),
    }
}
