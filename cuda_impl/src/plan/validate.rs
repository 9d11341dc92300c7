//! Checking the planner against measured kernels: for every (geometry, s_q, batch, context) where
//! both paths were timed, did the planner (with the ceilings measured in the same run) pick the
//! path that was actually faster, and how far off were its predicted times?

use super::{plan, Bound, DecodePath, Deployment, GpuSpec, Scenario, Step};
use gqla_reference::config::LatentDims;
use gqla_reference::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One timed decode step (the decode benchmark writes these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredPoint {
    /// The geometry (`h`, `g`, `d_c`, `d_n`, `d_r`, `d_v` in the JSON), validated when read.
    #[serde(flatten)]
    pub dims: LatentDims,
    pub path: DecodePath,
    /// The decode step (`sq`, `batch`, `context` in the JSON).
    #[serde(flatten)]
    pub step: Step,
    pub seconds: f64,
}

/// A benchmark run: the device, its measured ceilings, and the timed points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredRun {
    pub device: String,
    pub copy_gbps: f64,
    pub bf16_tflops: Option<f64>,
    pub points: Vec<MeasuredPoint>,
}

/// One grid point with both paths timed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub h: usize,
    pub g: usize,
    pub sq: usize,
    pub batch: usize,
    pub context: usize,
    /// Absorb, GQA (as the other pairs).
    pub measured_s: [f64; 2],
    pub predicted_s: [f64; 2],
    /// The roof the model says binds each path.
    pub bounds: [Bound; 2],
    pub predicted: DecodePath,
    pub faster: DecodePath,
    /// Slower over faster measured time: how clear the measured winner was.
    pub measured_margin: f64,
    /// Slower over faster predicted time: how clear the model's winner was.
    pub predicted_margin: f64,
}

/// Margins (slower over faster) under which a winner is a near tie: a kernel a tenth nearer its
/// roof than the other flips the order, which the roofline model does not claim to resolve.
pub const NEAR_TIE: f64 = 1.10;

impl Comparison {
    pub fn hit(&self) -> bool {
        self.predicted == self.faster
    }

    /// Predicted over measured time of each path: the fraction of its roofline time the kernel
    /// reached (1: on the roof).
    pub fn roof_fraction(&self) -> [f64; 2] {
        [0, 1].map(|i| self.predicted_s[i] / self.measured_s[i])
    }

    /// Why a miss happened, in numbers (None for a hit). On a miss the planned path's kernel is
    /// always further from its roof than the other's (its predicted time was the smaller, its
    /// measured time the larger), by the product of the two margins: the explanation says which
    /// kernel, against which roof, and whether either margin was a near tie.
    pub fn explanation(&self) -> Option<String> {
        if self.hit() {
            return None;
        }
        let idx = |p: DecodePath| match p {
            DecodePath::Absorb => 0,
            DecodePath::Gqa => 1,
        };
        let (planned, other) = (idx(self.predicted), idx(self.faster));
        let f = self.roof_fraction();
        let mut text = format!(
            "the {} kernel reached {:.0}% of its {} roof, the {} kernel {:.0}% of its {} roof",
            self.predicted.name(),
            100.0 * f[planned],
            self.bounds[planned].name(),
            self.faster.name(),
            100.0 * f[other],
            self.bounds[other].name(),
        );
        let ties: Vec<String> = [("measured", self.measured_margin), ("predicted", self.predicted_margin)]
            .into_iter()
            .filter(|(_, m)| *m < NEAR_TIE)
            .map(|(what, m)| format!("{what} {m:.2}x"))
            .collect();
        if !ties.is_empty() {
            text = format!("near tie ({}): {text}", ties.join(", "));
        }
        Some(text)
    }
}

/// The whole check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Validation {
    pub device: String,
    pub comparisons: Vec<Comparison>,
    pub hits: usize,
    pub hit_rate: f64,
    /// Median of |predicted − measured| / measured over every timed point.
    pub median_relative_error: f64,
    pub max_relative_error: f64,
}

/// Compare the planner with a measured run (TP = 1, bf16 cache with the rope key stored once).
pub fn validate(run: &MeasuredRun) -> Result<Validation> {
    let tflops = run.bf16_tflops.ok_or(Error::IncompleteRun {
        missing: "bf16 matrix ceiling (cuBLAS was not available)",
    })?;
    let gpu = GpuSpec {
        key: "measured",
        name: "measured device",
        bf16_tflops: tflops,
        bandwidth_gbps: run.copy_gbps,
        link_gbps: 1.0,
        source: "ceilings measured in the benchmark run",
    };
    let mut comparisons = Vec::new();
    let mut errors = Vec::new();
    for a in run.points.iter().filter(|p| p.path == DecodePath::Absorb) {
        let Some(b) = run
            .points
            .iter()
            .find(|p| p.path == DecodePath::Gqa && (p.dims, p.step) == (a.dims, a.step))
        else {
            continue;
        };
        let (dims, step) = (a.dims, a.step);
        let s = Scenario::new(&dims, dims.h() * dims.d_v(), step, Deployment::single_bf16())?;
        let p = plan(&s, &gpu)?;
        let measured = [a.seconds, b.seconds];
        let predicted = [p.absorb.time_s, p.gqa.time_s];
        if let Some(bad) = measured.iter().find(|m| !(m.is_finite() && **m > 0.0)) {
            return Err(Error::Value {
                what: format!(
                    "a measured time (s) of H={} s_q={} batch={} context={}",
                    dims.h(),
                    step.sq,
                    step.batch,
                    step.context
                ),
                value: *bad,
                expected: "positive and finite",
            });
        }
        for (m, q) in measured.iter().zip(&predicted) {
            errors.push((q - m).abs() / m);
        }
        let faster = if b.seconds < a.seconds {
            DecodePath::Gqa
        } else {
            DecodePath::Absorb
        };
        comparisons.push(Comparison {
            h: dims.h(),
            g: dims.g(),
            sq: step.sq,
            batch: step.batch,
            context: step.context,
            measured_s: measured,
            predicted_s: predicted,
            bounds: [p.absorb.bound, p.gqa.bound],
            predicted: p.chosen,
            faster,
            measured_margin: a.seconds.max(b.seconds) / a.seconds.min(b.seconds),
            predicted_margin: predicted[0].max(predicted[1]) / predicted[0].min(predicted[1]),
        });
    }
    if comparisons.is_empty() {
        return Err(Error::IncompleteRun {
            missing: "grid point with both paths timed",
        });
    }
    errors.sort_by(f64::total_cmp);
    let hits = comparisons.iter().filter(|c| c.hit()).count();
    Ok(Validation {
        device: run.device.clone(),
        hit_rate: hits as f64 / comparisons.len() as f64,
        hits,
        median_relative_error: errors[errors.len() / 2],
        max_relative_error: *errors.last().expect("non-empty"),
        comparisons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(measured_s: [f64; 2], predicted_s: [f64; 2]) -> Comparison {
        let by = |t: [f64; 2]| if t[1] < t[0] { DecodePath::Gqa } else { DecodePath::Absorb };
        let margin = |t: [f64; 2]| t[0].max(t[1]) / t[0].min(t[1]);
        Comparison {
            h: 128,
            g: 8,
            sq: 2,
            batch: 64,
            context: 4096,
            measured_s,
            predicted_s,
            bounds: [Bound::Compute, Bound::Memory],
            predicted: by(predicted_s),
            faster: by(measured_s),
            measured_margin: margin(measured_s),
            predicted_margin: margin(predicted_s),
        }
    }

    #[test]
    fn a_hit_needs_no_explanation() {
        assert_eq!(comparison([1.0, 2.0], [0.5, 1.5]).explanation(), None);
    }

    /// Absorb planned (predicted 100 µs against 200), measured 400 against 250: the absorb kernel
    /// reached a quarter of its compute roof, the GQA kernel 80% of its memory roof.
    #[test]
    fn a_miss_names_the_kernel_far_from_its_roof() {
        let c = comparison([400e-6, 250e-6], [100e-6, 200e-6]);
        assert!(!c.hit());
        assert_eq!(c.roof_fraction(), [0.25, 0.8]);
        assert_eq!(
            c.explanation().unwrap(),
            "the absorb kernel reached 25% of its compute roof, the gqa kernel 80% of its memory roof"
        );
    }

    #[test]
    fn a_narrow_miss_is_called_a_near_tie() {
        let c = comparison([105e-6, 100e-6], [100e-6, 104e-6]);
        let e = c.explanation().unwrap();
        assert!(
            e.starts_with("near tie (measured 1.05x, predicted 1.04x): the absorb kernel"),
            "{e}"
        );
    }

    /// A zero, negative or non-finite measured time is an error, not a silent hit or miss.
    #[test]
    fn bad_measured_times_are_errors() {
        let point = |path, seconds| MeasuredPoint {
            dims: LatentDims::new(gqla_reference::LatentShape::DEEPSEEK_V3_G8).unwrap(),
            path,
            step: Step {
                sq: 1,
                batch: 16,
                context: 4096,
            },
            seconds,
        };
        for bad in [0.0, -1e-6, f64::NAN, f64::INFINITY] {
            let run = MeasuredRun {
                device: "test".into(),
                copy_gbps: 3000.0,
                bf16_tflops: Some(790.0),
                points: vec![point(DecodePath::Absorb, 1e-4), point(DecodePath::Gqa, bad)],
            };
            match validate(&run) {
                Err(Error::Value { value, .. }) => assert!(value.to_bits() == bad.to_bits(), "{bad}: {value}"),
                r => panic!("{bad}: expected Error::Value, got {:?}", r.err()),
            }
        }
    }
}
