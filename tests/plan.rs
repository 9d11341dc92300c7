//! The path planner: the paper's qualitative claims for DeepSeek-V3 geometry, monotonicity, and
//! the `gqla plan` command.

use crate::common::{gqla, root};
use gqla_cuda::plan::{gpu, mtp_gain, plan, Bound, DecodePath, Deployment, Scenario, Step, GPUS};
use gqla_reference::{LatentDims, LatentShape};
use proptest::prelude::*;

/// DeepSeek-V3 attention converted to G = 8 groups.
fn deepseek_v3(sq: usize, batch: usize, context: usize) -> Scenario {
    let dims = LatentDims::new(LatentShape::DEEPSEEK_V3_G8).unwrap();
    Scenario::new(&dims, 7168, Step { sq, batch, context }, Deployment::single_bf16()).unwrap()
}

#[derive(serde::Serialize)]
struct Claim {
    gpu: &'static str,
    sq: usize,
    absorb_intensity_over_ridge: String,
    absorb_bound: Bound,
    gqa_intensity_over_ridge: String,
    gqa_bound: Bound,
    absorb_us_per_token: String,
    gqa_us_per_token: String,
    chosen: DecodePath,
}

#[test]
fn paper_claims_for_deepseek_v3_geometry() {
    let (h100, h20) = (gpu("h100").unwrap(), gpu("h20").unwrap());
    let p = |g, sq| plan(&deepseek_v3(sq, 64, 8192), g).unwrap();
    // H100: absorb at s_q = 1 sits near the ridge and is chosen.
    let h100_1 = p(&h100, 1);
    let ratio = h100_1.absorb.intensity / h100_1.ridge;
    assert!((0.5..1.5).contains(&ratio), "absorb intensity / ridge on H100 = {ratio}");
    assert_eq!(h100_1.chosen, DecodePath::Absorb);
    // H20: absorb is compute-bound and gains nothing per token from s_q = 2.
    let (h20_1, h20_2) = (p(&h20, 1), p(&h20, 2));
    assert_eq!((h20_1.absorb.bound, h20_2.absorb.bound), (Bound::Compute, Bound::Compute));
    assert!(h20_2.absorb.time_per_token_s > 0.95 * h20_1.absorb.time_per_token_s);
    // H20: the GQA path is memory-bound at s_q = 1 and chosen at s_q = 2.
    assert_eq!(h20_1.gqa.bound, Bound::Memory);
    assert_eq!(h20_2.chosen, DecodePath::Gqa);
    // The GQA+MTP gain on H20: our back-of-envelope said about 3.4x.
    let gain = mtp_gain(&deepseek_v3(2, 64, 8192), &h20).unwrap();
    assert!((3.2..3.6).contains(&gain), "GQA+MTP gain on H20 = {gain}");
    let claims: Vec<Claim> = [
        ("h100", 1, &h100_1),
        ("h100", 2, &p(&h100, 2)),
        ("h20", 1, &h20_1),
        ("h20", 2, &h20_2),
    ]
    .into_iter()
    .map(|(g, sq, x)| Claim {
        gpu: g,
        sq,
        absorb_intensity_over_ridge: format!("{:.3}", x.absorb.intensity / x.ridge),
        absorb_bound: x.absorb.bound,
        gqa_intensity_over_ridge: format!("{:.3}", x.gqa.intensity / x.ridge),
        gqa_bound: x.gqa.bound,
        absorb_us_per_token: format!("{:.1}", x.absorb.time_per_token_s * 1e6),
        gqa_us_per_token: format!("{:.1}", x.gqa.time_per_token_s * 1e6),
        chosen: x.chosen,
    })
    .collect();
    insta::assert_yaml_snapshot!("deepseek_v3_claims", (claims, format!("h20 GQA+MTP gain {gain:.3}x")));
}

proptest! {
    /// Predicted times grow with context and batch, and the chosen path is never predicted
    /// slower than the other.
    #[test]
    fn predictions_are_monotone_and_the_choice_is_the_faster(
        gpu_index in 0..GPUS.len(),
        llama in any::<bool>(),
        sq in 1usize..5,
        batch in 1usize..256,
        context in 1usize..200_000,
        tp_pow in 0u32..4,
        extra in 1usize..5000,
    ) {
        let dims = if llama {
            LatentDims::new(LatentShape { h: 32, ..LatentShape::DEEPSEEK_V3_G8 }).unwrap()
        } else {
            LatentDims::new(LatentShape::DEEPSEEK_V3_G8).unwrap()
        };
        let g = GPUS[gpu_index];
        let deployment = Deployment { tp: 1 << tp_pow, ..Deployment::single_bf16() };
        let s = Scenario::new(&dims, 4096, Step { sq, batch, context }, deployment).unwrap();
        let p = plan(&s, &g).unwrap();
        let chosen = p.chosen_prediction().time_s;
        prop_assert!(chosen <= p.absorb.time_s && chosen <= p.gqa.time_s);
        for (longer, bigger) in [(
            s.with_step(Step { sq, batch, context: context + extra }).unwrap(),
            s.with_step(Step { sq, batch: batch + extra, context }).unwrap(),
        )] {
            for path in [DecodePath::Absorb, DecodePath::Gqa] {
                let t = |x: &Scenario| gqla_cuda::plan::predict(x, &g, path).unwrap().time_s;
                prop_assert!(t(&longer) >= t(&s), "{path:?}: context {context} -> {}", context + extra);
                prop_assert!(t(&bigger) >= t(&s), "{path:?}: batch {batch} -> {}", batch + extra);
            }
        }
    }
}

/// `gqla plan` on the DeepSeek-V3 config converted to 8 groups, with `args` after it.
fn plan_deepseek_v3_g8(args: &[&str]) -> crate::common::Run {
    let config = root().join("fixtures/configs/deepseek-v3.json");
    let mut a = vec!["plan", "--config", config.to_str().unwrap(), "--groups", "8"];
    a.extend_from_slice(args);
    gqla(&a)
}

#[test]
fn plan_command_prints_both_paths_and_the_choice() {
    let r = plan_deepseek_v3_g8(&["--gpu", "h20", "--sq", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in ["| absorb | 1152 |", "| gqa | 4224 |", "ridge 37.0 FLOP/B", "chosen: gqa", "GQA+MTP"] {
        assert!(r.stdout.contains(needle), "missing `{needle}`:\n{}", r.stdout);
    }
    // Measured ceilings override the datasheet.
    let r = plan_deepseek_v3_g8(&["--gpu", "h100", "--peak-tflops", "798", "--bandwidth-gbps", "3000"]);
    assert!(r.stdout.contains("798 TFLOP/s") && r.stdout.contains("measured"), "{}", r.stdout);
    // The sweep covers s_q 1-4 over five contexts.
    let r = plan_deepseek_v3_g8(&["--gpu", "h20", "--sweep"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| s_q")).count(),
        20,
        "{}",
        r.stdout
    );
}

#[test]
fn plan_command_draws_the_roofline_chart() {
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("roofline.svg");
    let r = plan_deepseek_v3_g8(&["--gpu", "h20", "--chart", svg.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&svg).unwrap();
    for needle in [
        "<svg",
        "H100",
        "H200",
        "H20",
        "h20 gqa s_q=2",
        "h100 absorb s_q=1",
        "attained TFLOP/s",
    ] {
        assert!(text.contains(needle), "chart lacks `{needle}`");
    }
}

#[test]
fn plan_command_rejects_bad_input() {
    let config = root().join("fixtures/configs/deepseek-v3.json");
    for (args, needle) in [
        (vec!["--gpu", "tpu"], "unknown GPU `tpu`"),
        (vec!["--gpu", "h20", "--groups", "8", "--tp", "3"], "TP degree 3 must divide"),
        (vec!["--gpu", "h20", "--groups", "8", "--batch", "0"], "must be positive"),
        (vec!["--gpu", "h20", "--groups", "7"], "divisible by the number of groups G=7"),
    ] {
        let mut a = vec!["plan", "--config", config.to_str().unwrap()];
        a.extend(args);
        let r = gqla(&a);
        assert_eq!(r.code, 2, "{a:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{a:?}: {}", r.stderr);
    }
}

/// `--validate` counts how often the plan matches the measured-faster path. Measurements equal to
/// the model's predictions (from the run's own ceilings) hit everywhere with zero error; swapping
/// one point's two times makes exactly that point a miss.
#[test]
fn validation_counts_hits_and_misses() {
    use gqla_cuda::plan::{predict, MeasuredPoint, MeasuredRun};
    let g = gpu("h100").unwrap().with_measured(Some(790.0), Some(3000.0));
    let mut points = Vec::new();
    for sq in [1, 2] {
        for batch in [1, 64] {
            for context in [1024, 65536] {
                // The validator plans with hidden = H·d_v; so must the expected times.
                let dims = *deepseek_v3(sq, batch, context).dims();
                let s = Scenario::new(&dims, 128 * 128, Step { sq, batch, context }, Deployment::single_bf16()).unwrap();
                for path in [DecodePath::Absorb, DecodePath::Gqa] {
                    points.push(MeasuredPoint {
                        dims,
                        path,
                        step: Step { sq, batch, context },
                        seconds: predict(&s, &g, path).unwrap().time_s,
                    });
                }
            }
        }
    }
    let run = |points: Vec<MeasuredPoint>| MeasuredRun {
        device: "test device".into(),
        copy_gbps: 3000.0,
        bf16_tflops: Some(790.0),
        points,
    };
    let v = gqla_cuda::plan::validate(&run(points.clone())).unwrap();
    assert_eq!((v.hits, v.comparisons.len()), (8, 8));
    assert!(v.max_relative_error < 1e-12, "{}", v.max_relative_error);
    let (a, b) = (points[0].seconds, points[1].seconds);
    points[0].seconds = b;
    points[1].seconds = a;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("run.json");
    std::fs::write(&file, serde_json::to_string(&run(points.clone())).unwrap()).unwrap();
    let r = gqla(&["plan", "--validate", file.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("chosen on 7 of 8 points"), "{}", r.stdout);
    assert_eq!(r.stdout.matches("(MISS)").count(), 1, "{}", r.stdout);
    // The miss is explained: the planned path's kernel against its roof, in numbers.
    let miss = r
        .stdout
        .lines()
        .find(|l| l.starts_with("- H=128 s_q=1 batch=1 context=1024: "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(miss.contains("kernel reached") && miss.contains("% of its"), "{miss}");
    std::fs::write(&file, "{\"device\": 3}").unwrap();
    let r = gqla(&["plan", "--validate", file.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a measured run"), "{}", r.stderr);
    // A point's geometry is validated as it is read: G must divide H.
    let mut bad = serde_json::to_value(run(points)).unwrap();
    assert_eq!(bad["points"][0]["g"], 8, "the geometry is flat in the JSON: {bad}");
    bad["points"][0]["g"] = serde_json::json!(7);
    std::fs::write(&file, bad.to_string()).unwrap();
    let r = gqla(&["plan", "--validate", file.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("H=128 must be divisible by the number of groups G=7"),
        "{}",
        r.stderr
    );
}
