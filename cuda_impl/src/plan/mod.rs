//! The hardware-adaptive path planner: a roofline model of one decode step's attention (one layer)
//! on each GQLA path, and the choice between them (SPEC.md §11).
//!
//! Per tensor-parallel rank, for batch B, s_q new tokens per sequence, context L (keys per
//! sequence) and cache element size e:
//! - cache bytes: B·L·(per-rank cache bytes per token), taken from allocated caches
//!   ([`gqla_reference::tp::tp_footprint`]): the latent [c; k^R] on every rank (absorb), or the rank's
//!   groups plus k^R (GQA);
//! - cache writes: the B·s_q new tokens' rows;
//! - query/output: B·s_q·(H/T)·(d_k + d_v)·e, plus an f32 LSE per row;
//! - weights: W^UK and W^UV of the rank's groups, read once per step (absorb: to absorb the
//!   queries and up-project the outputs; GQA: to expand the new tokens into the group cache);
//! - FLOPs: 2·B·s_q·(H/T)·L·(d_k + d_v) for attention, d_k = d_c + d_r and d_v = d_c on the
//!   absorb path, d_k = d_n + d_r and d_v = d_v on the GQA path; plus the projections;
//! - all-reduce (T > 1): a ring all-reduce of the B·s_q·hidden output, 2(T−1)/T of it per rank.
//!
//! Predicted time = max(bytes / bandwidth, FLOPs / bf16 peak) + all-reduce / link bandwidth +
//! launches × [`LAUNCH_OVERHEAD_S`]. The causal mask of s_q > 1 is ignored (it hides at most
//! s_q − 1 keys of L).

mod gpus;
mod validate;

pub use gpus::{gpu, GpuSpec, GPUS};
pub use validate::{validate, Comparison, MeasuredPoint, MeasuredRun, Validation};

use gqla_reference::cache::GroupCacheLayout;
use gqla_reference::config::LatentDims;
use gqla_reference::error::{Error, Result};
use gqla_reference::tp::tp_footprint;
pub use gqla_reference::DType;
use serde::Serialize;

/// A fixed cost per kernel launch, seconds (launch latency plus a tail of idle SMs).
pub const LAUNCH_OVERHEAD_S: f64 = 4e-6;

pub use gqla_reference::decode::DecodePath;

/// Which roof binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Bound {
    Memory,
    Compute,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Compute => "compute",
        }
    }
}

/// One decode step: `sq` new tokens for each of `batch` sequences of `context` cached tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Step {
    pub sq: usize,
    pub batch: usize,
    pub context: usize,
}

/// How the cache is deployed: TP degree, element type and the GQA-path cache's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub tp: usize,
    pub dtype: DType,
    pub layout: GroupCacheLayout,
}

impl Deployment {
    /// One rank, bf16, the rope key stored once.
    pub fn single_bf16() -> Self {
        Self {
            tp: 1,
            dtype: DType::Bf16,
            layout: GroupCacheLayout::RopeOnce,
        }
    }
}

/// What is decoded: validated once, at construction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scenario {
    dims: LatentDims,
    /// Model hidden size (the all-reduced output width).
    hidden: usize,
    sq: usize,
    batch: usize,
    context: usize,
    tp: usize,
    dtype: DType,
    /// Layout of the GQA-path cache.
    #[serde(skip)]
    layout: GroupCacheLayout,
}

impl Scenario {
    pub fn dims(&self) -> &LatentDims {
        &self.dims
    }
    /// Model hidden size (the all-reduced output width).
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    pub fn sq(&self) -> usize {
        self.sq
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn context(&self) -> usize {
        self.context
    }
    pub fn tp(&self) -> usize {
        self.tp
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Layout of the GQA-path cache.
    pub fn layout(&self) -> GroupCacheLayout {
        self.layout
    }

    /// A scenario of `dims` with model width `hidden`, decoding `step` as `deployment` says.
    pub fn new(dims: &LatentDims, hidden: usize, step: Step, deployment: Deployment) -> Result<Self> {
        let Step { sq, batch, context } = step;
        let Deployment { tp, dtype, layout } = deployment;
        for (name, v) in [("s_q", sq), ("batch", batch), ("context", context), ("hidden", hidden)] {
            if v == 0 {
                return Err(gqla_reference::error::GeometryError::NotPositive { name }.into());
            }
        }
        if !dtype.is_kernel_storage() {
            return Err(Error::UnsupportedDtype {
                what: "GPU caches",
                dtype,
                expected: "f32, bf16 or f16",
            });
        }
        if tp == 0 || !dims.g().is_multiple_of(tp) {
            return Err(gqla_reference::error::GeometryError::TpDegree {
                degree: tp,
                groups: dims.g(),
            }
            .into());
        }
        Ok(Self {
            dims: *dims,
            hidden,
            sq,
            batch,
            context,
            tp,
            dtype,
            layout,
        })
    }

    /// The decode step.
    pub fn step(&self) -> Step {
        Step {
            sq: self.sq,
            batch: self.batch,
            context: self.context,
        }
    }
    /// How the cache is deployed.
    pub fn deployment(&self) -> Deployment {
        Deployment {
            tp: self.tp,
            dtype: self.dtype,
            layout: self.layout,
        }
    }

    /// The same scenario decoding another step.
    pub fn with_step(&self, step: Step) -> Result<Self> {
        Self::new(&self.dims, self.hidden, step, self.deployment())
    }

    /// Per-rank cache bytes per token on each path (absorb, GQA), from allocated caches.
    pub fn cache_bytes_per_token(&self) -> Result<(usize, usize)> {
        const TOKENS: usize = 4;
        let f = match self.dtype {
            DType::Bf16 => tp_footprint::<half::bf16>(self.dims, self.tp, self.layout, TOKENS)?,
            DType::F16 => tp_footprint::<half::f16>(self.dims, self.tp, self.layout, TOKENS)?,
            DType::F32 => tp_footprint::<f32>(self.dims, self.tp, self.layout, TOKENS)?,
            DType::F64 => tp_footprint::<f64>(self.dims, self.tp, self.layout, TOKENS)?,
        };
        Ok((f.absorb_per_rank.bytes_per_token, f.gqa_per_rank.bytes_per_token))
    }
}

/// One step's traffic and arithmetic on one rank.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Cost {
    /// Cache bytes per token on this rank (measured from an allocated cache).
    pub cache_bytes_per_token: usize,
    pub cache_bytes: f64,
    pub cache_write_bytes: f64,
    pub query_output_bytes: f64,
    pub weight_bytes: f64,
    pub attention_flops: f64,
    pub projection_flops: f64,
    pub allreduce_bytes: f64,
    pub launches: usize,
}

impl Cost {
    pub fn bytes(&self) -> f64 {
        self.cache_bytes + self.cache_write_bytes + self.query_output_bytes + self.weight_bytes
    }
    pub fn flops(&self) -> f64 {
        self.attention_flops + self.projection_flops
    }
}

/// The cost of one decode step on `path` (see the module docs for each term).
pub fn cost(s: &Scenario, path: DecodePath) -> Result<Cost> {
    let d = &s.dims;
    let e = s.dtype.size_in_bytes() as f64;
    let (absorb_bpt, gqa_bpt) = s.cache_bytes_per_token()?;
    let (b, sq, l) = (s.batch as f64, s.sq as f64, s.context as f64);
    let heads = (d.h() / s.tp) as f64;
    let groups = (d.g() / s.tp) as f64;
    let (dc, dn, dr, dv) = (d.d_c() as f64, d.d_n() as f64, d.d_r() as f64, d.d_v() as f64);
    let rows = b * sq * heads;
    let (bpt, dk, dout, projection_flops, launches) = match path {
        // Absorb W^UK into the queries and up-project the latent outputs through W^UV.
        DecodePath::Absorb => (absorb_bpt, dc + dr, dc, 2.0 * rows * dc * (dn + dv), 3),
        // Expand the new tokens' latents into the group cache.
        DecodePath::Gqa => (gqa_bpt, dn + dr, dv, 2.0 * b * sq * groups * dc * (dn + dv), 2),
    };
    let allreduce = if s.tp > 1 {
        2.0 * (s.tp - 1) as f64 / s.tp as f64 * b * sq * s.hidden as f64 * e
    } else {
        0.0
    };
    Ok(Cost {
        cache_bytes_per_token: bpt,
        cache_bytes: b * l * bpt as f64,
        cache_write_bytes: b * sq * bpt as f64,
        query_output_bytes: rows * (dk + dout) * e + rows * 4.0,
        weight_bytes: groups * dc * (dn + dv) * e,
        attention_flops: 2.0 * rows * l * (dk + dout),
        projection_flops,
        allreduce_bytes: allreduce,
        launches,
    })
}

/// A path's predicted time on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub path: DecodePath,
    pub cost: Cost,
    /// FLOP per byte.
    pub intensity: f64,
    pub memory_s: f64,
    pub compute_s: f64,
    pub comm_s: f64,
    pub overhead_s: f64,
    /// One decode step.
    pub time_s: f64,
    /// Per generated token (a step emits s_q tokens per sequence when MTP drafts are accepted).
    pub time_per_token_s: f64,
    pub bound: Bound,
}

/// Predict `path` on `gpu`.
pub fn predict(s: &Scenario, gpu: &GpuSpec, path: DecodePath) -> Result<Prediction> {
    let c = cost(s, path)?;
    let memory_s = c.bytes() / (gpu.bandwidth_gbps * 1e9);
    let compute_s = c.flops() / (gpu.bf16_tflops * 1e12);
    let comm_s = c.allreduce_bytes / (gpu.link_gbps * 1e9);
    let overhead_s = c.launches as f64 * LAUNCH_OVERHEAD_S;
    let time_s = memory_s.max(compute_s) + comm_s + overhead_s;
    Ok(Prediction {
        path,
        cost: c,
        intensity: c.flops() / c.bytes(),
        memory_s,
        compute_s,
        comm_s,
        overhead_s,
        time_s,
        time_per_token_s: time_s / s.sq as f64,
        bound: if memory_s >= compute_s { Bound::Memory } else { Bound::Compute },
    })
}

/// Both paths' predictions and the choice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub gpu: GpuSpec,
    pub scenario: Scenario,
    pub ridge: f64,
    pub absorb: Prediction,
    pub gqa: Prediction,
    /// The path with the smaller predicted step time (absorb on ties: the smaller cache).
    pub chosen: DecodePath,
}

impl Plan {
    pub fn chosen_prediction(&self) -> &Prediction {
        match self.chosen {
            DecodePath::Absorb => &self.absorb,
            DecodePath::Gqa => &self.gqa,
        }
    }
    /// Absorb's step time over the GQA path's, at this s_q.
    pub fn gqa_speedup(&self) -> f64 {
        self.absorb.time_s / self.gqa.time_s
    }
}

/// Plan one scenario.
pub fn plan(s: &Scenario, gpu: &GpuSpec) -> Result<Plan> {
    let absorb = predict(s, gpu, DecodePath::Absorb)?;
    let gqa = predict(s, gpu, DecodePath::Gqa)?;
    Ok(Plan {
        gpu: *gpu,
        scenario: *s,
        ridge: gpu.ridge(),
        chosen: if gqa.time_s < absorb.time_s {
            DecodePath::Gqa
        } else {
            DecodePath::Absorb
        },
        absorb,
        gqa,
    })
}

/// The GQA+MTP gain: absorb decoding one token per step (s_q = 1) against the GQA path decoding
/// `sq` tokens per step, per generated token.
pub fn mtp_gain(s: &Scenario, gpu: &GpuSpec) -> Result<f64> {
    let absorb_one = predict(&s.with_step(Step { sq: 1, ..s.step() })?, gpu, DecodePath::Absorb)?;
    let gqa = predict(s, gpu, DecodePath::Gqa)?;
    Ok(absorb_one.time_per_token_s / gqa.time_per_token_s)
}
