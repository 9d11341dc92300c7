//! Unit checks of the building blocks: RoPE, attention edge cases, alignment, input rounding.

use approx::assert_relative_eq;
use gqla_reference::attention::{attend, attend_row, causal_ranges, KeyRange};
use gqla_reference::random::{hidden_states, latent_layer, LatentOptions};
use gqla_reference::real::{cast, rel_err, widen};
use gqla_reference::{prefill, DType, LatentDims, LatentShape, Rope, RopeStyle};
use ndarray::{array, Array1, Array2};
use rstest::rstest;

#[rstest]
#[case::rotate_half(RopeStyle::RotateHalf)]
#[case::interleaved(RopeStyle::Interleaved)]
fn rope_rotates_each_pair_by_position_times_frequency(#[case] style: RopeStyle) {
    let rope = Rope::new(style, vec![0.7, 0.05, 1.3]).unwrap();
    let x: Array1<f64> = array![0.3, -1.2, 2.0, 0.9, -0.4, 1.1];
    let mut y = x.clone();
    rope.apply(y.view_mut(), 5);
    for (l, theta) in rope.freqs().iter().enumerate() {
        let (i, j) = rope.pair(l);
        let (c, s) = ((5.0 * theta).cos(), (5.0 * theta).sin());
        assert_relative_eq!(y[i], x[i] * c - x[j] * s, epsilon = 1e-15);
        assert_relative_eq!(y[j], x[j] * c + x[i] * s, epsilon = 1e-15);
    }
    assert_relative_eq!(x.dot(&x), y.dot(&y), epsilon = 1e-12);
}

#[test]
fn rope_pairs_follow_the_layout() {
    let half = Rope::standard(RopeStyle::RotateHalf, 8, 10000.0).unwrap();
    let inter = Rope::standard(RopeStyle::Interleaved, 8, 10000.0).unwrap();
    assert_eq!(
        (0..4).map(|l| half.pair(l)).collect::<Vec<_>>(),
        vec![(0, 4), (1, 5), (2, 6), (3, 7)]
    );
    assert_eq!(
        (0..4).map(|l| inter.pair(l)).collect::<Vec<_>>(),
        vec![(0, 1), (2, 3), (4, 5), (6, 7)]
    );
    assert_relative_eq!(half.freqs()[1], 10000f64.powf(-0.25), epsilon = 1e-15);
    assert!(Rope::standard(RopeStyle::RotateHalf, 7, 10000.0).is_err());
    use gqla_reference::error::{Error, GeometryError};
    assert!(matches!(
        Rope::new(RopeStyle::RotateHalf, vec![]),
        Err(Error::Geometry(GeometryError::NotPositive { .. }))
    ));
    assert!(matches!(
        Rope::new(RopeStyle::RotateHalf, vec![1.0, f64::NAN]),
        Err(Error::Value { value, .. }) if value.is_nan()
    ));
}

/// Scores depend only on relative position: q(t)·k(u) is a function of t − u.
#[test]
fn rope_scores_are_relative() {
    let rope = Rope::standard(RopeStyle::Interleaved, 6, 500.0).unwrap();
    let (q, k): (Array1<f64>, Array1<f64>) = (array![0.1, 0.5, -0.3, 0.8, 0.2, -0.7], array![1.0, -0.2, 0.4, 0.3, -0.9, 0.6]);
    let score = |t, u| {
        let (mut a, mut b) = (q.clone(), k.clone());
        rope.apply(a.view_mut(), t);
        rope.apply(b.view_mut(), u);
        a.dot(&b)
    };
    assert_relative_eq!(score(7, 3), score(104, 100), epsilon = 1e-12);
}

#[test]
fn empty_row_returns_zero_and_negative_infinite_lse() {
    let k = Array2::<f64>::ones((3, 2));
    let (o, lse) = attend_row(array![1.0, 2.0].view(), k.view(), k.view(), 1.0, KeyRange { start: 2, end: 2 });
    assert_eq!(o, array![0.0, 0.0]);
    assert_eq!(lse, f64::NEG_INFINITY);
}

#[test]
fn lse_is_natural_log_and_softmax_survives_large_logits() {
    // Two keys with scores 1000 and 1000 + ln 3: weights 1/4 and 3/4, LSE = 1000 + ln 4.
    let k = array![[1000.0], [1000.0 + 3f64.ln()]];
    let v = array![[1.0, 0.0], [0.0, 1.0]];
    let (o, lse) = attend(array![[1.0]].view(), k.view(), v.view(), 1.0, &[KeyRange { start: 0, end: 2 }]);
    assert_relative_eq!(o[[0, 0]], 0.25, epsilon = 1e-12);
    assert_relative_eq!(o[[0, 1]], 0.75, epsilon = 1e-12);
    assert_relative_eq!(lse[0], 1000.0 + 4f64.ln(), epsilon = 1e-12);
}

#[test]
fn causal_ranges_are_bottom_right_aligned() {
    assert_eq!(
        causal_ranges(2, 5, None),
        vec![KeyRange { start: 0, end: 4 }, KeyRange { start: 0, end: 5 }]
    );
    assert_eq!(causal_ranges(3, 3, None).iter().map(|r| r.end).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        causal_ranges(2, 10, Some(4)),
        vec![KeyRange { start: 5, end: 9 }, KeyRange { start: 6, end: 10 }]
    );
}

/// The naive same-precision references: f32 arithmetic, and f32 on bf16/f16-rounded inputs,
/// differ from f64 by amounts ordered like their precisions.
#[test]
fn precision_variants_are_ordered() {
    let dims = LatentDims::new(LatentShape { h: 4, ..crate::SMALL }).unwrap();
    let w = latent_layer(dims, LatentOptions::default(), 11).unwrap();
    let x = hidden_states(9, LatentOptions::default().hidden, 11);
    let exact = prefill(&w, x.view()).unwrap().y;
    let run = |r: DType| {
        let w32 = w.rounded::<f32>(r);
        widen(&prefill(&w32, cast::<f32, _>(&x, r).view()).unwrap().y)
    };
    let (e32, ebf16, ef16) = (
        rel_err(&run(DType::F64), &exact),
        rel_err(&run(DType::Bf16), &exact),
        rel_err(&run(DType::F16), &exact),
    );
    assert!(e32 > 0.0 && e32 < 1e-5, "f32 error {e32:e}");
    assert!(ef16 > e32 && ef16 < 2e-2, "f16-input error {ef16:e}");
    assert!(ebf16 > ef16 && ebf16 < 1e-1, "bf16-input error {ebf16:e}");
    assert_eq!(DType::Bf16.round(1.0 + 1.0 / 512.0), 1.0);
    assert_eq!(DType::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
}

/// (L1) and (L2) computed alone, from their own rows of `kv_a_proj_with_mqa`, equal the two
/// halves of the one-product form (with a bias and the latent RMSNorm).
#[test]
fn latent_and_rope_key_alone_match_the_joint_product() {
    let dims = LatentDims::new(LatentShape {
        h: 8,
        g: 4,
        d_c: 24,
        d_n: 8,
        d_r: 6,
        d_v: 8,
    })
    .unwrap();
    let opts = LatentOptions {
        kv_norm: true,
        bias: true,
        ..LatentOptions::default()
    };
    let w = latent_layer(dims, opts, 5).unwrap();
    let x = hidden_states(7, opts.hidden, 6);
    let (c, k) = w.latent_and_rope_key(x.view(), 3);
    assert!(rel_err(&w.latent(x.view()), &c) <= 1e-14);
    assert!(rel_err(&w.rope_key(x.view(), 3), &k) <= 1e-14);
    assert!(rel_err(&w.rope_key(x.view(), 0), &k) > 1e-3, "the positions matter");
}
