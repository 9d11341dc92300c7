//! The benchmark's geometries and the minimal traffic and arithmetic of one decode step.

use gqla_conformance::case::DType;
use gqla_reference::config::{LatentDims, LatentShape};
use gqla_reference::decode::DecodePath;

/// A model's attention geometry, by name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelGeometry {
    pub name: &'static str,
    pub dims: LatentDims,
}

impl ModelGeometry {
    /// LLaMA-3-8B converted to GQLA.
    pub fn llama3_8b() -> Self {
        Self::of("llama3-8b-gqla", 32)
    }
    /// DeepSeek-V3 with 8 groups.
    pub fn deepseek_v3() -> Self {
        Self::of("deepseek-v3-gqla", 128)
    }
    /// `h` query heads over 8 groups, d_c 512, d_n = d_v = 128, d_r 64.
    fn of(name: &'static str, h: usize) -> Self {
        let dims = LatentDims::new(LatentShape {
            h,
            ..LatentShape::DEEPSEEK_V3_G8
        })
        .expect("a valid built-in geometry");
        Self { name, dims }
    }
    /// The geometries the benchmark knows.
    pub fn all() -> Vec<ModelGeometry> {
        vec![Self::llama3_8b(), Self::deepseek_v3()]
    }
    /// One of [`ModelGeometry::all`] by its name.
    pub fn by_name(name: &str) -> Option<ModelGeometry> {
        Self::all().into_iter().find(|g| g.name == name)
    }
}

/// One decode step's minimal traffic and arithmetic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// Each cache byte read once, queries read, outputs and LSEs written.
    pub bytes: f64,
    /// 2 multiply-adds per (query row, key, key or value element).
    pub flops: f64,
}

impl ModelGeometry {
    /// Cache elements per token on `path`, measured on a reference cache allocated with this
    /// geometry (the layout the kernels read: the rope key stored once on the GQA path).
    pub fn cache_elems(&self, path: DecodePath) -> usize {
        let sizes = gqla_reference::cache::CacheSizes::measure::<half::bf16>(&self.dims);
        match path {
            DecodePath::Absorb => sizes.absorb,
            DecodePath::Gqa => sizes.gqa_rope_once,
        }
        .elements_per_token
    }
    /// Query and output width per head on `path`.
    pub fn widths(&self, path: DecodePath) -> (usize, usize) {
        match path {
            DecodePath::Absorb => (self.dims.d_c() + self.dims.d_r(), self.dims.d_c()),
            DecodePath::Gqa => (self.dims.d_n() + self.dims.d_r(), self.dims.d_v()),
        }
    }
    pub fn work(&self, path: DecodePath, dtype: DType, sq: usize, batch: usize, context: usize) -> Work {
        let eb = dtype.size_in_bytes() as f64;
        let (dk, dv) = self.widths(path);
        let rows = (batch * sq * self.dims.h()) as f64;
        let bytes = (batch * context * self.cache_elems(path)) as f64 * eb + rows * (dk + dv) as f64 * eb + rows * 4.0;
        let flops = 2.0 * rows * context as f64 * (dk + dv) as f64;
        Work { bytes, flops }
    }
}
