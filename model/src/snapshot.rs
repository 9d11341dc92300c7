//! Regression snapshots of a checkpoint: a stable, reviewable digest that a later build or a
//! re-conversion is checked against.
//!
//! A [`Snapshot`] holds the config, every tensor's stored dtype, shape and SHA-256, the measured
//! per-token cache of each decode path, a fingerprint of every layer's attention output on a
//! seeded probe (both paths of a latent checkpoint), the top-k next-token log-probs on fixed token
//! ids, and the provenance from `gqla_meta.json`. Numbers are rounded to the digits the snapshot
//! declares, so identical checkpoints give identical snapshots, and [`Snapshot::check`] recomputes
//! one with the stored probe and compares it under the stored [`Tolerances`].
//!
//! The probe and tolerances come from the snapshot file, which may be hostile: [`Probe::validate`]
//! and [`Tolerances::validate`] bound them before anything is computed.

use crate::budget::{Budget, Need};
use crate::hf::config::AttentionConfig;
use crate::hf::{Checkpoint, ModelConfig};
use crate::transformer::Attention;
use gqla_reference::cache::{measure_gqa_cache, CacheSizes, GroupCache, GroupCacheLayout, LatentCache};
use gqla_reference::decode::DecodePath;
use gqla_reference::dtype::DType;
use gqla_reference::error::{Error, Result};
use gqla_reference::random::Sampler;
use gqla_reference::{absorb_decode, gqa_decode};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The format tag every snapshot starts with.
pub const FORMAT: &str = "gqla-snapshot/1";

/// Ceilings on a probe read from a (possibly hostile) snapshot file.
const MAX_PROBE_TOKENS: usize = 1024;
const MAX_TOP_K: usize = 64;
const MAX_PROJECTIONS: usize = 64;
const MAX_DIGITS: u32 = 15;

/// What is computed: the seeded attention probe and the token ids whose logits are recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// Seed of the attention probe's hidden states and of the fingerprint's projections.
    pub seed: u64,
    /// Tokens (positions 0..n) of the attention probe: hidden states drawn N(0, 1).
    pub attention_tokens: usize,
    /// Random projections of each attention output kept in its fingerprint.
    pub projections: usize,
    /// Significant digits of fingerprint values.
    pub significant_digits: u32,
    /// Token ids at positions 0..n run through the whole model.
    pub token_ids: Vec<u32>,
    /// Next-token candidates recorded per position, by log-prob.
    pub top_k: usize,
    /// Decimals of the recorded log-probs.
    pub logprob_decimals: u32,
}

impl Probe {
    /// The default probe: 8 attention tokens, 8 projections at 7 significant digits, and 8
    /// token ids drawn from the seed over the vocabulary, top 5 at 4 decimals.
    pub fn new(seed: u64, vocab: usize) -> Self {
        let ids = Sampler::new(seed ^ 0x1d5)
            .uniform1(8, 0.0, vocab as f64)
            .iter()
            .map(|&u| (u as usize).min(vocab.saturating_sub(1)) as u32)
            .collect();
        Self {
            seed,
            attention_tokens: 8,
            projections: 8,
            significant_digits: 7,
            token_ids: ids,
            top_k: 5,
            logprob_decimals: 4,
        }
    }

    /// Bounds on every field, and token ids inside `vocab`; `origin` names the file for errors.
    pub fn validate(&self, origin: &Path, vocab: usize) -> Result<()> {
        let bad = |field: &str, expected: String| Error::file(origin, format!("probe.{field}: expected {expected}"));
        if !(1..=MAX_PROBE_TOKENS).contains(&self.attention_tokens) {
            return Err(bad("attention_tokens", format!("1..={MAX_PROBE_TOKENS}")));
        }
        if !(1..=MAX_PROJECTIONS).contains(&self.projections) {
            return Err(bad("projections", format!("1..={MAX_PROJECTIONS}")));
        }
        if !(1..=MAX_DIGITS).contains(&self.significant_digits) {
            return Err(bad("significant_digits", format!("1..={MAX_DIGITS}")));
        }
        if self.logprob_decimals > MAX_DIGITS {
            return Err(bad("logprob_decimals", format!("0..={MAX_DIGITS}")));
        }
        if !(1..=MAX_PROBE_TOKENS).contains(&self.token_ids.len()) {
            return Err(bad("token_ids", format!("1..={MAX_PROBE_TOKENS} ids")));
        }
        if let Some(id) = self.token_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(bad("token_ids", format!("ids below vocab_size {vocab}, got {id}")));
        }
        if !(1..=MAX_TOP_K.min(vocab)).contains(&self.top_k) {
            return Err(bad("top_k", format!("1..={}", MAX_TOP_K.min(vocab))));
        }
        Ok(())
    }
}

/// Whether tensor bytes must match for `--check` to pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorPolicy {
    /// Any changed, added or removed tensor is a regression.
    MustMatch,
    /// Tensor changes are listed; the attention fingerprints and logits decide.
    Report,
}

/// How far a recomputed snapshot may differ from the stored one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerances {
    pub tensors: TensorPolicy,
    /// Relative norm of the difference of a layer's fingerprint vector [norm, projections].
    pub attention_rel: f64,
    /// Absolute difference of a recorded log-prob.
    pub logprob_abs: f64,
}

impl Default for Tolerances {
    fn default() -> Self {
        Self {
            tensors: TensorPolicy::MustMatch,
            attention_rel: 1e-5,
            logprob_abs: 1e-3,
        }
    }
}

impl Tolerances {
    pub fn validate(&self, origin: &Path) -> Result<()> {
        for (name, v) in [("attention_rel", self.attention_rel), ("logprob_abs", self.logprob_abs)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::file(
                    origin,
                    format!("tolerances.{name}: expected a finite number ≥ 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// One cache's measured per-token size, per layer and over all layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSize {
    pub path: DecodePath,
    pub layout: String,
    pub elements_per_token_per_layer: usize,
    pub bytes_per_token_per_layer: usize,
    pub bytes_per_token: usize,
}

/// A tensor as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorDigest {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub sha256: String,
}

/// An attention output y [T, hidden] reduced to its Frobenius norm and its projections onto
/// seeded Gaussian directions (divided by sqrt(T·hidden)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fingerprint {
    pub norm: f64,
    pub projections: Vec<f64>,
}

impl Fingerprint {
    fn vector(&self) -> Vec<f64> {
        std::iter::once(self.norm).chain(self.projections.iter().copied()).collect()
    }

    /// ‖self − reference‖ / ‖reference‖ over [norm, projections]; infinite if the lengths differ.
    pub fn rel_diff(&self, reference: &Fingerprint) -> f64 {
        let (a, b) = (self.vector(), reference.vector());
        if a.len() != b.len() {
            return f64::INFINITY;
        }
        let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let base: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        if diff == 0.0 {
            0.0
        } else {
            diff / base
        }
    }
}

/// One layer's attention fingerprints, per decode path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerFingerprint {
    pub layer: usize,
    pub absorb: Option<Fingerprint>,
    pub gqa: Fingerprint,
    /// For latent checkpoints: whether the two paths agree to 1e-10 relative in f64.
    pub paths_agree: Option<bool>,
}

/// A next-token candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub id: u32,
    pub logprob: f64,
}

/// The top-k next-token log-probs after the probe's token at `position`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextToken {
    pub position: usize,
    pub top: Vec<Candidate>,
}

/// The digest of a checkpoint; serialize it with any serde format (YAML for the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: String,
    pub probe: Probe,
    pub tolerances: Tolerances,
    /// config.json as stored (for a GGUF file: the config derived from its metadata).
    pub config: serde_json::Value,
    pub cache: Vec<CacheSize>,
    pub tensors: BTreeMap<String, TensorDigest>,
    pub layers: Vec<LayerFingerprint>,
    pub next_tokens: Vec<NextToken>,
    /// gqla_meta.json, for checkpoints this tool converted.
    pub provenance: Option<serde_json::Value>,
}

/// Progress of [`Snapshot::take`]: `done` of `total` steps (tensors hashed, then layers run).
pub type OnStep<'a> = &'a mut dyn FnMut(usize, usize);

/// The logits pass's log-probs [positions, vocab], kept for [`Snapshot::check`].
struct Measured {
    snapshot: Snapshot,
    logprobs: Array2<f64>,
}

impl Snapshot {
    /// Digest the checkpoint at `path` (an HF directory or a GGUF file) with `probe` (None: the
    /// default probe of seed 0).
    pub fn take(path: &Path, probe: Option<Probe>, budget: &Budget, on_step: OnStep) -> Result<Snapshot> {
        let spec = probe.map_or(ProbeSpec::Seeded { seed: 0, token_ids: None }, ProbeSpec::Given);
        Ok(measure(path, spec, path, Tolerances::default(), budget, on_step)?.snapshot)
    }

    /// [`Snapshot::take`] with the default probe of `seed` (its token ids drawn over the
    /// checkpoint's vocabulary), or with `token_ids` in their place. The checkpoint is opened once.
    pub fn take_seeded(path: &Path, seed: u64, token_ids: Option<Vec<u32>>, budget: &Budget, on_step: OnStep) -> Result<Snapshot> {
        Ok(measure(
            path,
            ProbeSpec::Seeded { seed, token_ids },
            path,
            Tolerances::default(),
            budget,
            on_step,
        )?
        .snapshot)
    }

    /// Parse a snapshot from YAML text read from `origin`, with its probe and tolerances checked.
    pub fn from_yaml(text: &str, origin: &Path) -> Result<Snapshot> {
        let s: Snapshot = yaml_serde::from_str(text).map_err(|e| Error::file(origin, format!("not a gqla snapshot: {e}")))?;
        if s.format != FORMAT {
            return Err(Error::file(
                origin,
                format!("format `{}` is not supported (expected {FORMAT})", s.format),
            ));
        }
        s.tolerances.validate(origin)?;
        Ok(s)
    }

    /// The YAML text of this snapshot (stable: identical snapshots give identical bytes).
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).expect("a snapshot serializes")
    }

    /// Recompute this snapshot's probe on the checkpoint at `path` and compare under its
    /// tolerances.
    pub fn check(&self, path: &Path, origin: &Path, budget: &Budget, on_step: OnStep) -> Result<CheckReport> {
        self.tolerances.validate(origin)?;
        let now = measure(
            path,
            ProbeSpec::Given(self.probe.clone()),
            origin,
            self.tolerances.clone(),
            budget,
            on_step,
        )?;
        Ok(compare(self, &now))
    }
}

fn round_sig(v: f64, digits: u32) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    format!("{:.*e}", digits.saturating_sub(1) as usize, v)
        .parse()
        .expect("formatted float")
}

fn round_dec(v: f64, decimals: u32) -> f64 {
    if !v.is_finite() {
        return v;
    }
    let r: f64 = format!("{:.*}", decimals as usize, v).parse().expect("formatted float");
    if r == 0.0 {
        0.0 // no "-0.0" in the digest
    } else {
        r
    }
}

fn fingerprint(y: ArrayView2<f64>, probe: &Probe) -> Fingerprint {
    let n = y.len();
    let flat: Vec<f64> = y.iter().copied().collect();
    let mut dirs = Sampler::new(probe.seed ^ 0xf1a6);
    let scale = 1.0 / (n as f64).sqrt();
    let projections = (0..probe.projections)
        .map(|_| {
            let r = dirs.normal1(n, 1.0);
            round_sig(
                scale * r.iter().zip(&flat).map(|(a, b)| a * b).sum::<f64>(),
                probe.significant_digits,
            )
        })
        .collect();
    let norm = flat.iter().map(|v| v * v).sum::<f64>().sqrt();
    Fingerprint {
        norm: round_sig(norm, probe.significant_digits),
        projections,
    }
}

fn rel(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    let d = (a - b).mapv(|v| v * v).sum().sqrt();
    d / b.mapv(|v| v * v).sum().sqrt().max(f64::MIN_POSITIVE)
}

/// Fingerprints of one layer's attention on the probe hidden states `x`, on each path.
fn layer_fingerprint(layer: usize, attention: &Attention<f64>, x: ArrayView2<f64>, probe: &Probe) -> Result<LayerFingerprint> {
    Ok(match attention {
        Attention::Gqa(w) => LayerFingerprint {
            layer,
            absorb: None,
            gqa: fingerprint(w.prefill(x)?.y.view(), probe),
            paths_agree: None,
        },
        Attention::Latent(w) => {
            let d = w.dims();
            let ya = absorb_decode(w, x, &mut LatentCache::new(&d))?.y;
            let mut cache = GroupCache::new(&d, GroupCacheLayout::RopeOnce);
            let yg = gqa_decode(w, x, &mut cache)?.y;
            LayerFingerprint {
                layer,
                absorb: Some(fingerprint(ya.view(), probe)),
                gqa: fingerprint(yg.view(), probe),
                paths_agree: Some(rel(&yg, &ya) <= 1e-10),
            }
        }
    })
}

/// Per-token caches of every path, measured from caches allocated in the storage dtype.
fn cache_sizes(config: &ModelConfig) -> Vec<CacheSize> {
    fn measure<E: Copy + Default>(config: &ModelConfig) -> Vec<CacheSize> {
        let row = |path, layout: &str, f: gqla_reference::Footprint| CacheSize {
            path,
            layout: layout.into(),
            elements_per_token_per_layer: f.elements_per_token,
            bytes_per_token_per_layer: f.bytes_per_token,
            bytes_per_token: f.bytes_per_token * config.num_layers,
        };
        match &config.attention {
            AttentionConfig::Gqa(c) => vec![row(DecodePath::Gqa, "k, v per kv head", measure_gqa_cache::<E>(&c.dims))],
            AttentionConfig::Latent(c) => {
                let sizes = CacheSizes::measure::<E>(&c.dims);
                vec![
                    row(DecodePath::Absorb, "latent c, rope key", sizes.absorb),
                    row(DecodePath::Gqa, "k, v per group, rope key once", sizes.gqa_rope_once),
                    row(DecodePath::Gqa, "[k; rope key], v per group", sizes.gqa_rope_per_group),
                ]
            }
        }
    }
    match config.dtype {
        DType::Bf16 => measure::<half::bf16>(config),
        DType::F16 => measure::<half::f16>(config),
        DType::F32 => measure::<f32>(config),
        DType::F64 => measure::<f64>(config),
    }
}

/// The config as stored, without fields that name where the file lives.
fn stored_config(ckpt: &Checkpoint) -> Result<serde_json::Value> {
    let mut v = match ckpt.store.gguf() {
        Some(g) => g.config().clone(),
        None => {
            let text = gqla_files::read_to_string(&ckpt.config.path, gqla_files::Limit::CONFIG)?;
            serde_json::from_str(&text).map_err(|e| Error::file(&ckpt.config.path, format!("not JSON: {e}")))?
        }
    };
    if let Some(m) = v.as_object_mut() {
        m.remove("gguf_source");
        m.remove("_name_or_path");
    }
    Ok(v)
}

fn provenance(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let Some(meta) = gqla_files::resolve_in(path, "gqla_meta.json")? else {
        return Ok(None);
    };
    let text = gqla_files::read_to_string(&meta, gqla_files::Limit::CONFIG)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(&meta, format!("not JSON: {e}")))
}

fn log_softmax_rows(logits: &Array2<f64>) -> Array2<f64> {
    let mut out = logits.clone();
    for mut row in out.rows_mut() {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m + row.mapv(|v| (v - m).exp()).sum().ln();
        row.mapv_inplace(|v| v - lse);
    }
    out
}

fn top_k(row: ndarray::ArrayView1<f64>, k: usize, decimals: u32) -> Vec<Candidate> {
    let mut ids: Vec<usize> = (0..row.len()).collect();
    // Highest first; ties by lower id, so the order is total.
    ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    ids.truncate(k);
    ids.into_iter()
        .map(|i| Candidate {
            id: i as u32,
            logprob: round_dec(row[i], decimals),
        })
        .collect()
}

/// Compute the snapshot of `path` with `probe` (checked against the checkpoint; errors name
/// `probe_origin`, the file the probe came from).
/// The probe a measurement runs: one given whole, or the default of a seed, which needs the
/// checkpoint's vocabulary.
enum ProbeSpec {
    Given(Probe),
    Seeded { seed: u64, token_ids: Option<Vec<u32>> },
}

fn measure(
    path: &Path,
    probe: ProbeSpec,
    probe_origin: &Path,
    tolerances: Tolerances,
    budget: &Budget,
    on_step: OnStep,
) -> Result<Measured> {
    let ckpt = Checkpoint::open(path)?;
    let config = &ckpt.config;
    let probe = match probe {
        ProbeSpec::Given(p) => p,
        ProbeSpec::Seeded { seed, token_ids } => {
            let mut p = Probe::new(seed, config.vocab_size);
            if let Some(ids) = token_ids {
                p.token_ids = ids;
            }
            p
        }
    };
    probe.validate(probe_origin, config.vocab_size)?;
    let tokens = probe.attention_tokens.max(probe.token_ids.len());
    let mut needs = crate::transgqla::checkpoint::memory_needs(config, 2, tokens);
    needs.push(Need::f64s(
        format!(
            "the embedding and LM head (vocab_size {} × hidden_size {})",
            config.vocab_size, config.hidden_size
        ),
        &[2, config.vocab_size, config.hidden_size],
    ));
    budget.check(&needs)?;

    let names: Vec<String> = ckpt.store.names().map(str::to_string).collect();
    let total = names.len() + config.num_layers;
    let mut tensors = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let (dtype, shape, sha256) = ckpt.store.stored_digest(name)?.expect("listed");
        tensors.insert(name.clone(), TensorDigest { dtype, shape, sha256 });
        on_step(i + 1, total);
    }

    let x = Sampler::new(probe.seed).normal((probe.attention_tokens, config.hidden_size), 1.0);
    let mut h = ckpt.embed_rows(&probe.token_ids)?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let layer = ckpt.decoder_layer(i)?;
        layers.push(layer_fingerprint(i, &layer.attention, x.view(), &probe)?);
        h = layer.forward(h.view())?.output;
        on_step(names.len() + i + 1, total);
    }
    let logprobs = log_softmax_rows(&ckpt.head()?.logits(h.view()));
    let next_tokens = logprobs
        .rows()
        .into_iter()
        .enumerate()
        .map(|(position, row)| NextToken {
            position,
            top: top_k(row, probe.top_k, probe.logprob_decimals),
        })
        .collect();
    let snapshot = Snapshot {
        format: FORMAT.into(),
        config: stored_config(&ckpt)?,
        cache: cache_sizes(config),
        tensors,
        layers,
        next_tokens,
        provenance: provenance(path)?,
        probe,
        tolerances,
    };
    ckpt.store.unchanged()?;
    Ok(Measured { snapshot, logprobs })
}

/// The outcome of [`Snapshot::check`]: regressions fail the check, notes do not.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub regressions: Vec<String>,
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.regressions.is_empty()
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.regressions {
            writeln!(f, "REGRESSION {r}")?;
        }
        for n in &self.notes {
            writeln!(f, "note       {n}")?;
        }
        if self.passed() {
            write!(f, "PASS: within the snapshot's tolerances")
        } else {
            write!(f, "FAIL: {} regression(s)", self.regressions.len())
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Differences between two JSON values, as `key.path: old → new` lines.
fn json_diff(prefix: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => json_diff(&p, x, y, out),
                    (Some(x), None) => out.push(format!("{p}: {x} → (absent)")),
                    (None, Some(y)) => out.push(format!("{p}: (absent) → {y}")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if !json_equal(a, b) => out.push(format!("{prefix}: {a} → {b}")),
        _ => {}
    }
}

/// Equality that treats 2 and 2.0 alike (a YAML round trip may change the number's kind).
fn json_equal(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w))),
        _ => a == b,
    }
}

fn compare(old: &Snapshot, now: &Measured) -> CheckReport {
    let new = &now.snapshot;
    let tol = &old.tolerances;
    let mut r = CheckReport::default();

    let mut config = Vec::new();
    json_diff("", &old.config, &new.config, &mut config);
    r.regressions.extend(config.into_iter().map(|d| format!("config {d}")));

    if old.cache != new.cache {
        for c in &old.cache {
            if !new.cache.contains(c) {
                r.regressions.push(format!(
                    "cache {} ({}): {} bytes/token no longer measured",
                    c.path.name(),
                    c.layout,
                    c.bytes_per_token
                ));
            }
        }
        for c in &new.cache {
            if !old.cache.contains(c) {
                r.regressions.push(format!(
                    "cache {} ({}): now {} elements, {} bytes/token",
                    c.path.name(),
                    c.layout,
                    c.elements_per_token_per_layer,
                    c.bytes_per_token
                ));
            }
        }
    }

    let mut tensor_changes = Vec::new();
    for (name, a) in &old.tensors {
        match new.tensors.get(name) {
            None => tensor_changes.push(format!("tensor {name}: removed")),
            Some(b) if a != b => {
                let mut what = Vec::new();
                if a.dtype != b.dtype {
                    what.push(format!("dtype {} → {}", a.dtype, b.dtype));
                }
                if a.shape != b.shape {
                    what.push(format!("shape {:?} → {:?}", a.shape, b.shape));
                }
                if a.sha256 != b.sha256 {
                    what.push(format!("sha256 {}… → {}…", short(&a.sha256), short(&b.sha256)));
                }
                tensor_changes.push(format!("tensor {name}: {}", what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for (name, b) in &new.tensors {
        if !old.tensors.contains_key(name) {
            tensor_changes.push(format!("tensor {name}: added ({}, {:?})", b.dtype, b.shape));
        }
    }
    match tol.tensors {
        TensorPolicy::MustMatch => r.regressions.extend(tensor_changes),
        TensorPolicy::Report => r.notes.extend(tensor_changes),
    }

    if old.layers.len() != new.layers.len() {
        r.regressions.push(format!("layers: {} → {}", old.layers.len(), new.layers.len()));
    }
    for (a, b) in old.layers.iter().zip(&new.layers) {
        let paths: [(&str, Option<&Fingerprint>, Option<&Fingerprint>); 2] = [
            ("absorb", a.absorb.as_ref(), b.absorb.as_ref()),
            ("gqa", Some(&a.gqa), Some(&b.gqa)),
        ];
        for (path, x, y) in paths {
            match (x, y) {
                (Some(x), Some(y)) => {
                    let d = y.rel_diff(x);
                    if d > tol.attention_rel || d.is_nan() {
                        r.regressions.push(format!(
                            "layer {} {path}: attention output moved {d:.3e} relative (tolerance {:.1e}); norm {} → {}",
                            a.layer, tol.attention_rel, x.norm, y.norm
                        ));
                    }
                }
                (Some(_), None) => r.regressions.push(format!("layer {} {path}: path no longer present", a.layer)),
                (None, Some(_)) => r.regressions.push(format!("layer {} {path}: path now present", a.layer)),
                (None, None) => {}
            }
        }
        if a.paths_agree != b.paths_agree {
            r.regressions
                .push(format!("layer {}: paths agree {:?} → {:?}", a.layer, a.paths_agree, b.paths_agree));
        }
    }

    let decimals = old.probe.logprob_decimals;
    for (pos, old_next) in old.next_tokens.iter().enumerate() {
        let Some(row) = now.logprobs.rows().into_iter().nth(pos) else {
            r.regressions.push(format!("position {pos}: no longer computed"));
            continue;
        };
        let lp = |id: u32| row.get(id as usize).map(|&v| round_dec(v, decimals));
        // Both sides are rounded to the same decimals: a difference of exactly the tolerance
        // (up to the float noise of the subtraction) is within it.
        let moved: Vec<String> = old_next
            .top
            .iter()
            .filter_map(|c| match lp(c.id) {
                Some(v) if (v - c.logprob).abs() <= tol.logprob_abs + 1e-12 => None,
                Some(v) => Some(format!("token {} {} → {v}", c.id, c.logprob)),
                None => Some(format!("token {} outside the vocabulary now", c.id)),
            })
            .collect();
        if !moved.is_empty() {
            r.regressions.push(format!(
                "position {pos}: log-probs moved beyond {:.1e}: {}",
                tol.logprob_abs,
                moved.join(", ")
            ));
        }
        let floor = old_next.top.iter().map(|c| c.logprob).fold(f64::INFINITY, f64::min);
        if let Some(new_next) = new.next_tokens.get(pos) {
            for c in &new_next.top {
                if !old_next.top.iter().any(|o| o.id == c.id) && c.logprob > floor + tol.logprob_abs {
                    r.regressions.push(format!(
                        "position {pos} token {}: enters the top {} at log-prob {} (the stored top ended at {floor})",
                        c.id,
                        old_next.top.len(),
                        c.logprob
                    ));
                }
            }
            if let (Some(o), Some(n)) = (old_next.top.first(), new_next.top.first()) {
                if o.id != n.id {
                    r.notes
                        .push(format!("position {pos}: top-1 token {} → {} (a tie within tolerance)", o.id, n.id));
                }
            }
        }
    }

    if old.provenance != new.provenance {
        let mut diffs = Vec::new();
        let null = serde_json::Value::Null;
        json_diff(
            "",
            old.provenance.as_ref().unwrap_or(&null),
            new.provenance.as_ref().unwrap_or(&null),
            &mut diffs,
        );
        r.notes.extend(diffs.into_iter().map(|d| format!("provenance {d}")));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_decimal_and_signless_at_zero() {
        assert_eq!(round_sig(123.456789, 4), 123.5);
        assert_eq!(round_sig(-0.000123456, 2), -0.00012);
        assert_eq!(round_dec(-0.00004, 4), 0.0);
        assert!(round_dec(-0.00004, 4).is_sign_positive());
        assert_eq!(round_dec(-1.23456, 3), -1.235);
    }

    #[test]
    fn fingerprint_distance_is_relative() {
        let a = Fingerprint {
            norm: 2.0,
            projections: vec![1.0, -1.0],
        };
        let b = Fingerprint {
            norm: 2.0,
            projections: vec![1.0, -1.0 + 1e-3],
        };
        assert_eq!(a.rel_diff(&a), 0.0);
        let d = b.rel_diff(&a);
        assert!((d - 1e-3 / 6f64.sqrt()).abs() < 1e-12, "{d}");
        let c = Fingerprint {
            norm: 2.0,
            projections: vec![1.0],
        };
        assert!(c.rel_diff(&a).is_infinite());
    }

    #[test]
    fn top_k_breaks_ties_by_id() {
        let row = ndarray::arr1(&[-1.0, -0.5, -0.5, -3.0]);
        let ids: Vec<u32> = top_k(row.view(), 3, 2).iter().map(|c| c.id).collect();
        assert_eq!(ids, [1, 2, 0]);
    }
}
