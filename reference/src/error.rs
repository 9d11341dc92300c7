//! The reference crate's one error type. Every variant names what was expected and what was found.

use std::path::PathBuf;

/// Errors from building configs, loading checkpoints and running the reference.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Numbers that do not make a valid layer geometry.
    #[error("invalid config: {0}")]
    Geometry(#[from] GeometryError),
    /// A parameter outside the range its use allows (a TransGQLA rank, a FreqFold, a RoPE width).
    #[error("{name}={value} is out of range: expected {expected}")]
    OutOfRange {
        name: &'static str,
        value: usize,
        expected: String,
    },
    /// A number that is NaN, infinite or of the wrong sign where the equations need otherwise.
    #[error("{what} is {value}, expected {expected}")]
    Value { what: String, value: f64, expected: &'static str },
    /// A matrix that does not determine a least-squares solution: fewer rows than columns, or
    /// columns that are (numerically) dependent.
    #[error("{what} [{rows}×{cols}] is rank deficient (σ_min/σ_max = {sigma_ratio:e}); a least-squares fit needs rows ≥ cols and full column rank")]
    RankDeficient {
        what: &'static str,
        rows: usize,
        cols: usize,
        sigma_ratio: f64,
    },
    /// A linear transform of the latent after its RMSNorm was fitted (the norm is not linear).
    #[error("{what}: the latent RMSNorm is not linear; transform before it is fitted")]
    NonLinearLatent { what: String },
    /// TransGQLA's RoRoPE needs HF LLaMA/Qwen2/Mistral RoPE.
    #[error("TransGQLA expects rotate-half RoPE without an attention factor (HF LLaMA/Qwen2/Mistral), got {style:?} with attention factor {attention_factor}")]
    UnsupportedRope {
        style: crate::rope::RopeStyle,
        attention_factor: f64,
    },
    /// A cache element type the operation does not store.
    #[error("{what} hold {expected}, not {dtype}")]
    UnsupportedDtype {
        what: &'static str,
        dtype: crate::dtype::DType,
        expected: &'static str,
    },
    /// A measured run (a benchmark's output) lacks what a comparison needs.
    #[error("the measured run has no {missing}")]
    IncompleteRun { missing: &'static str },
    /// A file could not be read or parsed.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A tensor named by the layout is absent.
    #[error("{path}: tensor `{tensor}` is missing (expected {expected})")]
    MissingTensor { path: PathBuf, tensor: String, expected: String },
    /// A tensor has the wrong shape.
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor has a dtype the reference cannot read.
    #[error("{path}: tensor `{tensor}` has dtype {got}, expected one of {expected}")]
    Dtype {
        path: PathBuf,
        tensor: String,
        expected: String,
        got: String,
    },
    /// A tensor holds NaN or infinity where finite values are required.
    #[error("{path}: tensor `{tensor}` holds {count} non-finite value(s), first at flat index {first}; expected all finite")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        count: usize,
        first: usize,
    },
    /// A softmax scale that is not a positive finite number.
    #[error("softmax scale must be positive and finite, got {scale}")]
    SoftmaxScale { scale: f64 },
    /// A fit (TransGQLA's rotations and PCA, a latent norm) was given no calibration data.
    #[error("no calibration data: {what}")]
    NoCalibration { what: String },
    /// A matrix decomposition did not converge.
    #[error("{what} failed: {why}")]
    Decomposition { what: &'static str, why: String },
    /// A command would allocate more than its memory budget allows.
    #[error("not enough memory: {0}")]
    Budget(String),
    /// Arrays passed to a reference function disagree in shape.
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
}

/// Why numbers do not make a valid geometry: a caller (a converter choosing G, a planner
/// sweeping d_c) can match on the kind and the value named.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error("{name} must be positive, got 0")]
    NotPositive { name: &'static str },
    /// No size computed from a geometry may overflow.
    #[error("{name}={value} is above the largest supported, {max}")]
    AboveCeiling { name: &'static str, value: usize, max: usize },
    /// Query heads split evenly over groups (GQLA) or kv heads (GQA).
    #[error("the number of query heads H={h} must be divisible by the number of {per} {name}={by}")]
    HeadsNotDivisible {
        h: usize,
        /// "groups" or "kv heads".
        per: &'static str,
        /// "G" or "KV".
        name: &'static str,
        by: usize,
    },
    /// MLA's HF form needs one group per query head (G = H).
    #[error("MLA needs one group per head, got H={heads} G={groups}")]
    NotMla { heads: usize, groups: usize },
    /// Tensor parallelism splits the groups evenly over the ranks (no group data duplicated).
    #[error("TP degree {degree} must divide the number of groups G={groups}")]
    TpDegree { degree: usize, groups: usize },
    /// A cache of one TP rank's groups: a non-empty range inside 0..G.
    #[error("a group cache holds a non-empty range of the {groups} groups, not {start}..{end}")]
    GroupRange { start: usize, end: usize, groups: usize },
    /// RoPE rotates pairs of dimensions.
    #[error("{name}={value} must be even (RoPE rotates pairs)")]
    Odd { name: &'static str, value: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            message: message.into(),
        }
    }
}
