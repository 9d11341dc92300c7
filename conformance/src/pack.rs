//! Vector packs: the out-of-process path for PyTorch, Triton and CUDA C++ kernels.
//!
//! `export` writes, into a new directory, `manifest.json` (every case with its parameters as
//! fields, its tensors and the SHA-256 of its inputs file), `definitions.json` (every operation's
//! contract) and one `NNNNN.inputs.safetensors` per case, NNNNN being the case's position in the
//! suite. The author's script writes `NNNNN.outputs.safetensors` for the cases its kernel
//! declares, and `kernel.json` (name, version, description, environment and the **profile**) into
//! an outputs directory of its own, so one pack serves many kernels. `judge` certifies them.
//!
//! Everything in a pack and an outputs directory is hostile input. A manifest whose suite
//! version, seed, case ids (unknown, duplicated, not canonical) or file names do not belong to
//! this suite is refused; every inputs file the judge relies on must hash to the digest the judge
//! computes itself from the case id (and, for the published seed, to `mustpass/<version>.txt`);
//! every file is read through [`crate::confined`].

use crate::case::{Case, DType, Fp8, GroupCacheLayout, KvFormat, Poison};
use crate::confined;
use crate::definition::{definition, DtypeRule, TensorKind, TensorName};
use crate::inputs::{CaseInputs, Paging};
use crate::kernel::{KernelIdentity, Outputs};
use crate::lattice::{suite_cases_seeded, SUITE_VERSION};
use crate::profile::Profile;
use crate::report::{Environment, Report, SeedOrigin};
use crate::runner::{CaseResult, Prepared, Twins};
use crate::selection::Selection;
use crate::shape::{CacheLayout, CaseAxes};
use crate::verdict::Status;
use gqla_files::tensors::RawTensor;
use gqla_files::OutputDir;
use safetensors::{Dtype as StDtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The pack format this tool writes and reads.
pub const FORMAT: &str = "gqla-pack/3";
/// The definitions file of a pack.
pub const DEFINITIONS: &str = "definitions.json";
/// The manifest of a pack.
pub const MANIFEST: &str = "manifest.json";
/// The file in which the author's script names its kernel and declares its profile.
pub const KERNEL_INFO: &str = "kernel.json";
/// The must-pass list with the published inputs' digests.
pub const MUSTPASS: &str = include_str!("../mustpass/0.5.txt");

const MANIFEST_LIMIT: u64 = 64 << 20;
const KERNEL_INFO_LIMIT: u64 = 1 << 20;

/// A case's parameters, as fields (the id says the same in its grammar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseParams {
    pub operation: String,
    /// Query heads (0 for cache.expand).
    pub heads: usize,
    /// Groups (GQLA) or kv heads (GQA); 0 for the absorb path.
    pub groups: usize,
    pub d_c: usize,
    pub d_n: usize,
    pub d_r: usize,
    pub d_v: usize,
    pub s_q: usize,
    /// Keys per sequence before the new tokens; null for a padding row.
    pub contexts: Vec<Option<usize>>,
    /// Keys each sequence holds (the `seq_lens` input).
    pub seq_lens: Vec<usize>,
    /// null: contiguous [B, capacity, width].
    pub page_size: Option<usize>,
    pub dtype: DType,
    /// The requested split count (the `num_splits` input), if any.
    pub splits: Option<usize>,
    pub rope_layout: GroupCacheLayout,
    /// The `scale` input as stored: an f32, never rounded to the case dtype.
    pub scale: f32,
    /// The same f32 as its bits, for an adapter that must not compare decimals.
    pub scale_f32_bits: u32,
    pub poison: Poison,
    /// For a `poison=garbage` twin: the case whose outputs it must equal bitwise.
    pub twin_of: Option<String>,
    /// How the cache is stored: `"native"` (the case dtype); `{"tiled": {"tile", "scales", "fp8"}}`
    /// for FP8 records (the `kv` tensor is then u8); or `{"per_tensor": {"fp8", "k_scale",
    /// "v_scale"}}` (every cache tensor u8, the scales also as the `k_scale`/`v_scale` inputs,
    /// exactly). A manifest of a suite before 0.5 has none: native.
    #[serde(default = "native_cache")]
    pub kv_cache: KvFormat,
}

fn native_cache() -> KvFormat {
    KvFormat::Native
}

impl CaseParams {
    pub fn of(case: &Case) -> Self {
        CaseParams {
            operation: case.op().name().into(),
            heads: case.h(),
            groups: case.g(),
            d_c: case.dc(),
            d_n: case.dn(),
            d_r: case.dr(),
            d_v: case.dv(),
            s_q: case.sq(),
            contexts: case.ctx().to_vec(),
            seq_lens: (0..case.batch()).map(|b| case.seq_len(b)).collect(),
            page_size: case.page(),
            dtype: case.dtype(),
            splits: case.splits(),
            rope_layout: case.layout(),
            scale: case.scale(),
            scale_f32_bits: case.scale().to_bits(),
            poison: case.poison(),
            kv_cache: case.kv(),
            twin_of: case.nan_twin().map(|c| c.to_string()),
        }
    }
}

/// One tensor of a case's file, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// One case of a pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackCase {
    pub id: String,
    /// Position in the suite's case list (names the files).
    pub index: usize,
    pub inputs: String,
    pub inputs_sha256: String,
    pub outputs: String,
    pub params: CaseParams,
    pub input_tensors: Vec<StoredTensor>,
    /// What a kernel writes: `out` always, `lse` when its profile declares one (any float dtype;
    /// the declared LSE dtype sets how it is judged).
    pub output_tensors: Vec<StoredTensor>,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub suite_version: String,
    /// The suite seed the cases were drawn from (0: the published suite).
    pub seed: u64,
    /// The filters the pack was exported with (empty: every case).
    pub filters: Vec<String>,
    /// The profile the pack was drawn for (`vectors export --profile`): exactly the cases it
    /// selects, drawn as it declares (a fixed scale set as the `scale` input); only a kernel with
    /// this profile is certified from it. null: the suite's cases as they are.
    pub profile: Option<Profile>,
    pub definitions: String,
    pub cases: Vec<PackCase>,
}

/// `kernel.json`, written by the author's script: who produced the outputs, and what it declares.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub description: String,
    /// Device, driver, library versions: copied into the certificate.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// The declaration (or `--profile FILE`).
    pub profile: Option<Profile>,
}

/// Errors about a pack as a whole: each is a refusal (exit 2), and nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error(transparent)]
    Confined(#[from] confined::ConfinedError),
    #[error(transparent)]
    Output(#[from] gqla_reference::Error),
}

fn invalid(path: &Path, message: impl Into<String>) -> PackError {
    PackError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> PackError {
    PackError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn floats(dtype: DType, shape: Vec<usize>, values: &[f32]) -> RawTensor {
    RawTensor::encode(dtype, shape, values.iter().map(|v| *v as f64))
}

fn ints(shape: Vec<usize>, values: &[i32]) -> RawTensor {
    RawTensor {
        dtype: StDtype::I32,
        shape,
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// The input tensors of a case, as the pack stores them: the tensors its definition lists for it,
/// each with the shape its axes give and the dtype its rule names.
pub fn input_tensors(inp: &CaseInputs) -> Vec<(String, RawTensor)> {
    let c = &inp.case;
    let (layout, table) = match &inp.cache.paging {
        Paging::Contiguous { capacity } => (CacheLayout::Contiguous { capacity: *capacity }, &[][..]),
        Paging::Paged {
            page,
            num_pages,
            max_pages,
            block_table,
        } => (
            CacheLayout::Paged {
                num_pages: *num_pages,
                page: *page,
                max_pages: *max_pages,
            },
            &block_table[..],
        ),
    };
    let axes = CaseAxes { case: c, layout };
    let lens: Vec<i32> = inp.cache.seq_lens.iter().map(|&l| l as i32).collect();
    let splits: Vec<i32> = c.splits().iter().map(|&n| n as i32).collect();
    let (_, k_scale, v_scale) = c.kv().per_tensor().unwrap_or((Fp8::E4m3fn, 0.0, 0.0));
    definition(c.op())
        .inputs_for(c)
        .into_iter()
        .map(|spec| {
            let shape = spec.shape.eval(&axes);
            let floats_of: &[f32] = match (spec.kind, spec.name) {
                (TensorKind::Cache, cache) => inp.cache.component(cache).values().unwrap_or(&[]),
                (_, TensorName::Q) => &inp.q,
                (_, TensorName::Scale) => std::slice::from_ref(&inp.scale),
                (_, TensorName::KScale) => std::slice::from_ref(&k_scale),
                (_, TensorName::VScale) => std::slice::from_ref(&v_scale),
                (_, TensorName::WUkv) => &inp.w_ukv,
                _ => &[],
            };
            let ints_of: &[i32] = match spec.name {
                TensorName::SeqLens => &lens,
                TensorName::BlockTable => table,
                TensorName::NumSplits => &splits,
                _ => &[],
            };
            let n: usize = shape.iter().product();
            let bytes = |shape| RawTensor {
                dtype: StDtype::U8,
                shape,
                bytes: inp.cache.component(spec.name).bytes().map_or(vec![], |b| b.to_vec()),
            };
            let t = match spec.dtype {
                DtypeRule::Case => floats(c.dtype(), shape, floats_of),
                DtypeRule::Cache if inp.cache.component(spec.name).bytes().is_some() => bytes(shape),
                DtypeRule::Cache => floats(c.dtype(), shape, floats_of),
                DtypeRule::F32 => floats(DType::F32, shape, floats_of),
                DtypeRule::I32 => ints(shape, ints_of),
                DtypeRule::U8 => bytes(shape),
            };
            assert_eq!(
                t.bytes.len(),
                n * t.dtype.bitsize() / 8,
                "{c}: input `{}` holds other than its shape `{}` says",
                spec.name,
                spec.shape.formula()
            );
            (spec.name.to_string(), t)
        })
        .collect()
}

fn dtype_name(d: StDtype) -> String {
    format!("{d:?}").to_lowercase()
}

/// A case's inputs file, byte for byte (deterministic: the digests depend on it).
pub fn inputs_file(inp: &CaseInputs) -> Vec<u8> {
    serialize_inputs(&inp.case, &input_tensors(inp))
}

fn serialize_inputs(case: &Case, tensors: &[(String, RawTensor)]) -> Vec<u8> {
    let meta: HashMap<String, String> = [("case".to_string(), case.to_string())].into_iter().collect();
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta)).expect("input tensors serialize")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The file names of the case at suite position `index`.
pub fn file_names(index: usize) -> (String, String) {
    (format!("{index:05}.inputs.safetensors"), format!("{index:05}.outputs.safetensors"))
}

/// The output tensors a kernel writes for `case` under the suite's own profile (`lse` is left out
/// by a kernel whose profile writes none).
fn output_tensors(case: &Case) -> Vec<StoredTensor> {
    Outputs::for_case(case, &Profile::everything())
        .tensors
        .iter()
        .map(|t| StoredTensor {
            name: t.name.to_string(),
            shape: t.shape.clone(),
            dtype: if t.name == TensorName::Lse {
                "f32 or the storage dtype, as declared"
            } else {
                "any float dtype"
            }
            .into(),
        })
        .collect()
}

/// The published digest of each case id (`mustpass/<version>.txt`: `id sha256` per line).
pub fn published_digests() -> HashMap<&'static str, &'static str> {
    MUSTPASS.lines().filter_map(|l| l.split_once(' ')).collect()
}

/// Write the pack of `cases` (with their suite positions) into `dir`, which must not exist or be
/// empty. The pack is built in a fresh temporary directory beside it and renamed into place, so
/// a failure leaves nothing. `on_case` is called as each case starts (a progress bar).
pub fn export(
    cases: &[(usize, Case)],
    seed: u64,
    filters: &[String],
    profile: Option<&Profile>,
    dir: &Path,
    on_case: &mut dyn FnMut(&Case),
) -> Result<Manifest, PackError> {
    let out = OutputDir::create(dir, true)?;
    let tmp = out.path();
    let definitions = serde_json::to_string_pretty(&crate::definition::all()).expect("definitions serialize") + "\n";
    std::fs::write(tmp.join(DEFINITIONS), definitions).map_err(|e| io(dir, e))?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        suite_version: SUITE_VERSION.into(),
        seed,
        filters: filters.to_vec(),
        profile: profile.cloned(),
        definitions: DEFINITIONS.into(),
        cases: Vec::new(),
    };
    for (index, case) in cases {
        on_case(case);
        let inp = CaseInputs::generate(case);
        let tensors = input_tensors(&inp);
        let bytes = serialize_inputs(case, &tensors);
        let (inputs, outputs) = file_names(*index);
        std::fs::write(tmp.join(&inputs), &bytes).map_err(|e| io(&dir.join(&inputs), e))?;
        manifest.cases.push(PackCase {
            id: case.to_string(),
            index: *index,
            inputs,
            inputs_sha256: sha256_hex(&bytes),
            outputs,
            params: CaseParams::of(case),
            input_tensors: tensors
                .into_iter()
                .map(|(name, t)| StoredTensor {
                    name,
                    shape: t.shape,
                    dtype: dtype_name(t.dtype),
                })
                .collect(),
            output_tensors: output_tensors(case),
        });
    }
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes") + "\n";
    std::fs::write(tmp.join(MANIFEST), json).map_err(|e| io(dir, e))?;
    out.commit()?;
    Ok(manifest)
}

/// The directory name of the pack drawn from `seed` in a set of packs.
pub fn set_member(seed: u64) -> String {
    format!("seed-{seed}")
}

/// The packs of a set (`vectors export --seeds N`): the directories `seed-S` of `dir`, by seed.
/// Anything else named `seed-*` (a file, a link, a name that is no seed) refuses the set.
pub fn pack_set(dir: &Path) -> Result<Vec<(u64, PathBuf)>, PackError> {
    gqla_files::write::note_input_dir(dir);
    if dir.join(MANIFEST).exists() {
        return Err(invalid(
            dir,
            "a single pack (it has a manifest.json), not a set of packs: --seeds N takes the directory `vectors export --seeds N` wrote",
        ));
    }
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(seed) = name.to_str().and_then(|n| n.strip_prefix("seed-")) else {
            continue;
        };
        let path = entry.path();
        let seed: u64 = seed
            .parse()
            .map_err(|_| invalid(&path, "a set's packs are named seed-S, S a suite seed"))?;
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        if !meta.is_dir() {
            return Err(invalid(&path, "not a directory (a set's packs are directories, never links)"));
        }
        packs.push((seed, path));
    }
    if packs.is_empty() {
        return Err(invalid(
            dir,
            "no pack: a set holds directories seed-S written by `vectors export --seeds N`",
        ));
    }
    packs.sort();
    Ok(packs)
}

/// Read the author's `kernel.json` from `dir`, if there is one.
pub fn read_kernel_info(dir: &Path) -> Result<Option<KernelInfo>, PackError> {
    let Some(bytes) = confined::read_if_present(dir, KERNEL_INFO, KERNEL_INFO_LIMIT)? else {
        return Ok(None);
    };
    let path = dir.join(KERNEL_INFO);
    let info: KernelInfo = crate::profile::parse_json(&mut serde_json::Deserializer::from_slice(&bytes), "")
        .map_err(|e| invalid(&path, format!("malformed: at `{}`: {}", e.field, e.why)))?;
    if let Some(p) = &info.profile {
        p.validate().map_err(|e| invalid(&path, e.to_string()))?;
    }
    Ok(Some(info))
}

/// A pack's manifest, checked against this suite: format, version, and every case id known (for
/// the manifest's seed), canonical, listed once, at its suite position and with its file names.
pub fn read_manifest(dir: &Path) -> Result<Manifest, PackError> {
    // A pack is an input: no output of this process may land inside it.
    gqla_files::write::note_input_dir(dir);
    let path = dir.join(MANIFEST);
    let bytes = confined::read(dir, MANIFEST, MANIFEST_LIMIT)?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(&path, format!("malformed manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(invalid(
            &path,
            format!("format `{}`, expected `{FORMAT}` (re-export the pack with this tool)", m.format),
        ));
    }
    if m.suite_version != SUITE_VERSION {
        return Err(invalid(
            &path,
            format!("suite version {} (this tool certifies {SUITE_VERSION})", m.suite_version),
        ));
    }
    if let Some(p) = &m.profile {
        p.validate()
            .map_err(|e| invalid(&path, format!("the profile the pack was drawn for: {e}")))?;
    }
    let drawn = |c: &Case| m.profile.as_ref().map_or_else(|| c.clone(), |p| p.draw(c));
    let suite: HashMap<String, usize> = suite_cases_seeded(m.seed)
        .iter()
        .enumerate()
        .map(|(i, c)| (drawn(c).to_string(), i))
        .collect();
    let mut seen = HashSet::new();
    for (i, pc) in m.cases.iter().enumerate() {
        let at = |field: &str| format!("cases[{i}].{field}");
        let index = *suite.get(&pc.id).ok_or_else(|| {
            invalid(
                &path,
                format!(
                    "{}: `{}` is not a case of suite {SUITE_VERSION} with seed {}",
                    at("id"),
                    pc.id,
                    m.seed
                ),
            )
        })?;
        if !seen.insert(pc.id.as_str()) {
            return Err(invalid(&path, format!("{}: `{}` is listed twice", at("id"), pc.id)));
        }
        let (inputs, outputs) = file_names(index);
        if pc.index != index || pc.inputs != inputs || pc.outputs != outputs {
            return Err(invalid(
                &path,
                format!(
                    "{}: case `{}` is suite case {index}: expected index {index}, inputs `{inputs}`, outputs `{outputs}`",
                    at("index"),
                    pc.id
                ),
            ));
        }
    }
    Ok(m)
}

/// How a pack's outputs are judged.
pub struct Judging<'a> {
    pub pack: &'a Path,
    pub outputs: &'a Path,
    pub manifest: &'a Manifest,
    pub profile: &'a Profile,
    /// The cases to certify, in suite order (the suite's cases for the manifest's seed, filtered).
    pub cases: Vec<Case>,
}

/// Check a case's inputs file against the digest the judge computes from the case id (and the
/// published one for seed 0), and the manifest's claim. A mismatch refuses the pack.
fn check_inputs(j: &Judging, pc: &PackCase, inputs: &CaseInputs, published: &HashMap<&str, &str>) -> Result<(), PackError> {
    let path = j.pack.join(&pc.inputs);
    let file = inputs_file(inputs);
    let want = sha256_hex(&file);
    if j.manifest.seed == 0 {
        if let Some(p) = published.get(pc.id.as_str()) {
            if *p != want {
                return Err(invalid(
                    &path,
                    format!("this tool draws inputs with SHA-256 {want}, but mustpass/{SUITE_VERSION}.txt pins {p}"),
                ));
            }
        }
    }
    if pc.inputs_sha256 != want {
        return Err(invalid(
            &j.pack.join(MANIFEST),
            format!("case `{}`: inputs_sha256 {} is not the suite's {want}", pc.id, pc.inputs_sha256),
        ));
    }
    let bytes = confined::read(j.pack, &pc.inputs, file.len() as u64)?;
    let got = sha256_hex(&bytes);
    if got != want {
        return Err(invalid(&path, format!("SHA-256 {got}, expected {want}: the inputs were changed")));
    }
    Ok(())
}

/// Read one case's outputs into canary-guarded outputs. A file that is missing or malformed
/// becomes the case's status; one that escapes the outputs directory, is not a regular file or is
/// too large refuses the whole run.
fn read_outputs(j: &Judging, pc: &PackCase, case: &Case) -> Result<Result<Outputs, Status>, PackError> {
    let mut outputs = Outputs::for_case(case, j.profile);
    let path = j.outputs.join(&pc.outputs);
    let elements: usize = outputs.tensors.iter().map(|t| t.len()).sum();
    let limit = (elements as u64) * 8 + (1 << 20);
    let shown = path.display();
    let Some(bytes) = confined::read_if_present(j.outputs, &pc.outputs, limit)? else {
        return Ok(Err(Status::RuntimeError {
            message: format!("{shown}: no outputs were written"),
        }));
    };
    let st = match SafeTensors::deserialize(&bytes) {
        Ok(st) => st,
        Err(e) => {
            return Ok(Err(Status::RuntimeError {
                message: format!("{shown}: not a valid safetensors file: {e}"),
            }))
        }
    };
    let source = shown.to_string();
    let filled = outputs.fill(&source, |name| {
        let view = st.tensor(name).ok()?;
        Some(crate::kernel::TensorBytes {
            shape: view.shape().to_vec(),
            dtype: view.dtype(),
            data: view.data(),
        })
    });
    if let Err(status) = filled {
        return Ok(Err(status));
    }
    Ok(Ok(outputs))
}

/// Judge the outputs a kernel wrote, one case at a time, in suite order. A case the profile
/// selects but the pack lacks is a RUNTIME_ERROR; a tampered inputs file refuses the pack.
pub fn judge(j: &Judging, mut on_case: impl FnMut(&CaseResult)) -> Result<Vec<CaseResult>, PackError> {
    let listed: HashMap<&str, &PackCase> = j.manifest.cases.iter().map(|c| (c.id.as_str(), c)).collect();
    let published = published_digests();
    let mut twins = Twins::default();
    let mut results = Vec::with_capacity(j.cases.len());
    for case in &j.cases {
        let start = Instant::now();
        let id = case.to_string();
        let done = |status| CaseResult {
            id: id.clone(),
            status,
            seconds: start.elapsed().as_secs_f64(),
        };
        let r = if let Some(why) = j.profile.excludes(case) {
            done(Status::NotSupported { reason: why.to_string() })
        } else if let Some(pc) = listed.get(id.as_str()) {
            let inputs = CaseInputs::generate(case);
            check_inputs(j, pc, &inputs, &published)?;
            match read_outputs(j, pc, case)? {
                Err(status) => done(status),
                Ok(out) => {
                    let p = Prepared::from_inputs(inputs);
                    let status = p.judge(&out, j.profile);
                    twins.pair(case, done(status), Some(out))
                }
            }
        } else {
            done(Status::RuntimeError {
                message: format!(
                    "the pack has no inputs for this case (its manifest does not list it): re-export with `gqla vectors export` (seed {})",
                    j.manifest.seed
                ),
            })
        };
        on_case(&r);
        results.push(r);
    }
    Ok(results)
}

/// A certification of the outputs a kernel wrote for a pack.
pub struct PackRun<'a> {
    pub pack: &'a Path,
    pub outputs: &'a Path,
    /// The declaration to judge by; None: the one in the outputs' kernel.json.
    pub profile: Option<Profile>,
    /// Id prefixes; empty: the filters the pack was exported with.
    pub filters: &'a [String],
    /// The seed the certifier expects the pack to be drawn from.
    pub seed: Option<u64>,
}

/// Judge the outputs of one pack (`gqla certify --kernel external:DIR`, `gqla.certify_pack`):
/// the certificate's report, and the cases judged. `on_count` gets the number of cases before
/// any is judged, `on_case` each result. A pack drawn from another seed or for another profile,
/// a missing declaration or tampered inputs refuse the whole run.
pub fn certify_pack(
    run: &PackRun,
    on_count: impl FnOnce(usize),
    on_case: impl FnMut(&CaseResult),
) -> Result<(Report, Vec<Case>), PackError> {
    let (pack, outputs) = (run.pack, run.outputs);
    let manifest = read_manifest(pack)?;
    let manifest_path = pack.join(MANIFEST);
    if let Some(s) = run.seed.filter(|s| *s != manifest.seed) {
        return Err(invalid(
            &manifest_path,
            format!("the pack was drawn from seed {}, not the seed {s} asked for", manifest.seed),
        ));
    }
    let info = read_kernel_info(outputs)?;
    let profile = match (&run.profile, info.as_ref().and_then(|i| i.profile.clone())) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => {
            return Err(invalid(
                &outputs.join(KERNEL_INFO),
                "no profile: a pack kernel declares what it supports and which conventions it follows, in kernel.json \
                 (\"profile\") or with --profile FILE, before anything is judged (see README, \"Profiles\")",
            ))
        }
    };
    // Without filters, the ones the pack was exported with (the certificate states them).
    let selection = Selection::new(if run.filters.is_empty() {
        manifest.filters.clone()
    } else {
        run.filters.to_vec()
    });
    let suite = selection.cases(manifest.seed).map_err(|e| invalid(&manifest_path, e.to_string()))?;
    let cases: Vec<Case> = suite.iter().map(|c| profile.draw(c)).collect();
    // The pack must hold the cases as this profile draws them.
    match &manifest.profile {
        Some(drawn_for) if *drawn_for != profile => {
            return Err(invalid(
                &manifest_path,
                "the pack was drawn for another profile (its `profile`), not the kernel's: certify with that profile, \
                 or export a pack for this one with `gqla vectors export --profile FILE`",
            ))
        }
        None => {
            if let Some(c) = cases
                .iter()
                .zip(&suite)
                .find_map(|(drawn, as_is)| (drawn != as_is).then_some(drawn))
            {
                return Err(invalid(
                    &manifest_path,
                    format!(
                        "the kernel's profile draws its cases otherwise (`{c}`, at the scale it fixes), and this pack \
                         holds the suite's cases as they are: export a pack for the profile with `gqla vectors export --profile FILE`"
                    ),
                ));
            }
        }
        Some(_) => {}
    }
    on_count(cases.len());
    let judging = Judging {
        pack,
        outputs,
        manifest: &manifest,
        profile: &profile,
        cases: cases.clone(),
    };
    let results = judge(&judging, on_case)?;
    let (identity, kernel_env) = match info {
        Some(k) => (
            KernelIdentity {
                name: k.name,
                version: k.version,
                description: format!(
                    "{} (outputs read from {}, pack {})",
                    k.description,
                    outputs.display(),
                    pack.display()
                ),
            },
            k.environment,
        ),
        None => (
            KernelIdentity {
                name: format!("external:{}", outputs.display()),
                version: "-".into(),
                description: format!("outputs read from {} (no kernel.json)", outputs.display()),
            },
            BTreeMap::new(),
        ),
    };
    let report = Report::new(
        identity,
        Environment::detect(kernel_env),
        &selection.to_string(),
        (manifest.seed, SeedOrigin::of_pack(manifest.seed)),
        profile,
        results,
    );
    Ok((report, cases))
}

/// The default outputs directory: the pack itself.
pub fn outputs_dir(pack: &Path, outputs: Option<&Path>) -> PathBuf {
    outputs.map_or_else(|| pack.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// definitions.json and the packs agree: every case's input tensors are the ones its
    /// operation's definition lists for it, with the declared dtype and rank.
    #[test]
    fn definitions_describe_the_tensors_packs_hold() {
        let short = |c: &Case| (0..c.batch()).all(|b| c.seq_len(b) <= 200);
        let mut checked = 0;
        for case in crate::lattice::suite_cases().into_iter().filter(short) {
            let def = definition(case.op());
            let want: BTreeMap<&str, (String, usize)> = def
                .inputs_for(&case)
                .into_iter()
                .map(|t| {
                    let dtype = match t.dtype {
                        DtypeRule::Case => dtype_name(gqla_files::tensors::safetensors_dtype(case.dtype())),
                        DtypeRule::F32 => "f32".into(),
                        DtypeRule::I32 => "i32".into(),
                        DtypeRule::U8 => "u8".into(),
                        DtypeRule::Cache if case.kv().per_tensor().is_some() => "u8".into(),
                        DtypeRule::Cache => dtype_name(gqla_files::tensors::safetensors_dtype(case.dtype())),
                    };
                    (t.name.as_str(), (dtype, t.rank()))
                })
                .collect();
            let got: BTreeMap<&str, (String, usize)> = input_tensors(&CaseInputs::generate(&case))
                .iter()
                .map(|(n, t)| {
                    let name = want.keys().find(|k| **k == n.as_str()).copied().unwrap_or("?");
                    (name, (dtype_name(t.dtype), t.shape.len()))
                })
                .collect();
            assert_eq!(got, want, "{case}");
            assert!(
                def.inputs_for(&case).iter().any(|t| !t.poison.is_empty()),
                "{case}: no poisoned tensor"
            );
            checked += 1;
        }
        assert!(checked > 100, "{checked}");
    }
}
