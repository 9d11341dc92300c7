//! Checking the planner against measured kernels: for every (geometry, s_q, batch, context) where
//! both paths were timed, did the planner (with the ceilings measured in the same run) pick the
//! path that was actually faster, and how far off were its predicted times?

use super::{plan, CacheDtype, DecodePath, Gpu, Scenario};
use crate::cache::GroupCacheLayout;
use crate::config::LatentDims;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One timed decode step (the decode benchmark writes these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredPoint {
    pub h: usize,
    pub g: usize,
    pub d_c: usize,
    pub d_r: usize,
    pub d_n: usize,
    pub d_v: usize,
    pub path: DecodePath,
    pub sq: usize,
    pub batch: usize,
    pub context: usize,
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
    pub measured_s: [f64; 2],
    pub predicted_s: [f64; 2],
    pub predicted: DecodePath,
    pub faster: DecodePath,
    /// Slower over faster measured time: how clear the measured winner was.
    pub measured_margin: f64,
}

impl Comparison {
    pub fn hit(&self) -> bool {
        self.predicted == self.faster
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
    let tflops = run
        .bf16_tflops
        .ok_or_else(|| Error::Config("the measured run has no bf16 matrix ceiling (cuBLAS was not available)".into()))?;
    let gpu = Gpu {
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
        let Some(b) = run.points.iter().find(|p| {
            p.path == DecodePath::Gqa
                && (p.h, p.g, p.d_c, p.d_r, p.d_n, p.d_v, p.sq, p.batch, p.context)
                    == (a.h, a.g, a.d_c, a.d_r, a.d_n, a.d_v, a.sq, a.batch, a.context)
        }) else {
            continue;
        };
        let dims = LatentDims::new(a.h, a.g, a.d_c, a.d_n, a.d_r, a.d_v)?;
        let s = Scenario::new(
            dims,
            a.h * a.d_v,
            a.sq,
            a.batch,
            a.context,
            1,
            CacheDtype::Bf16,
            GroupCacheLayout::RopeOnce,
        )?;
        let p = plan(&s, &gpu)?;
        let measured = [a.seconds, b.seconds];
        let predicted = [p.absorb.time_s, p.gqa.time_s];
        for (m, q) in measured.iter().zip(&predicted) {
            errors.push((q - m).abs() / m);
        }
        let faster = if b.seconds < a.seconds {
            DecodePath::Gqa
        } else {
            DecodePath::Absorb
        };
        comparisons.push(Comparison {
            h: a.h,
            g: a.g,
            sq: a.sq,
            batch: a.batch,
            context: a.context,
            measured_s: measured,
            predicted_s: predicted,
            predicted: p.chosen,
            faster,
            measured_margin: a.seconds.max(b.seconds) / a.seconds.min(b.seconds),
        });
    }
    if comparisons.is_empty() {
        return Err(Error::Config("the measured run has no grid point with both paths timed".into()));
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
