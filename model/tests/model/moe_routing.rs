//! DeepSeek MoE routing in the whole-model forward: group scores, selection bias, weights.
use gqla_model::transformer::{GroupScore, Mlp, Moe, Routing, Scoring};
use gqla_reference::linear::Linear;
use ndarray::{array, Array1, Array2};

/// A 4-expert MoE in 2 groups whose router is the identity: the logits are the input.
fn moe(scoring: Scoring, group_score: GroupScore, bias: Option<Array1<f64>>, norm: bool) -> Moe<f64> {
    let expert = |k: f64| Mlp {
        gate: Linear::new(Array2::eye(4) * k, None),
        up: Linear::new(Array2::eye(4), None),
        down: Linear::new(Array2::eye(4), None),
    };
    Moe {
        router: Array2::eye(4),
        selection_bias: bias,
        routing: Routing {
            scoring,
            group_score,
            top_k: 1,
            n_group: 2,
            topk_group: 1,
            norm_topk_prob: norm,
            routed_scaling_factor: 2.0,
        },
        experts: (0..4).map(|e| expert(e as f64 + 1.0)).collect(),
        shared: None,
    }
}

/// Group A = experts {0, 1} with sigmoid scores {0.953, 0.007}; group B = {2, 3} with
/// {0.881, 0.870}. Group max picks A, group sum-of-top-2 picks B (1.751 vs 0.959).
#[test]
fn group_score_decides_the_group() {
    let u = array![3.0, -5.0, 2.0, 1.9];
    let pick = |g| moe(Scoring::Sigmoid, g, None, false).route(u.view())[0].0;
    assert_eq!(pick(GroupScore::Max), 0);
    assert_eq!(pick(GroupScore::SumTop2), 2);
    assert_eq!(pick(GroupScore::None), 0);
}

/// The selection bias changes the choice but not the weight, which is the unbiased score,
/// normalised when asked and scaled by routed_scaling_factor.
#[test]
fn selection_bias_selects_but_does_not_weigh() {
    let u = array![0.5, -9.0, 0.4, -9.0];
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let plain = moe(Scoring::Sigmoid, GroupScore::SumTop2, None, false).route(u.view());
    assert_eq!(plain[0].0, 0);
    let biased = moe(Scoring::Sigmoid, GroupScore::SumTop2, Some(array![0.0, 0.0, 0.5, 0.0]), false).route(u.view());
    assert_eq!(biased[0].0, 2);
    assert!((biased[0].1 - 2.0 * sigmoid(0.4)).abs() < 1e-15);
    let normalised = moe(Scoring::Sigmoid, GroupScore::SumTop2, None, true).route(u.view());
    assert!((normalised[0].1 - 2.0 * (1.0 - 1e-20 / sigmoid(0.5))).abs() < 1e-12);
}
