//! Hostile input, as a careless user or an attacker would give it: symlinks, FIFOs, devices,
//! huge headers and sparse files, overflowing configs and flags, outputs pointed at inputs,
//! signals and a source truncated mid-run. Every probe asserts exit 2 (130/143 for a signal), a
//! message naming what was wrong, no panic, no hang, nothing left behind, and no file changed
//! outside the output. Identical inputs give byte-identical outputs.

use crate::common::root;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough for any probe here; a hang fails the test instead of stalling CI.
const LIMIT: Duration = Duration::from_secs(60);

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    stdout: String,
}

fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gqla"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gqla")
}

fn finish(mut child: Child, args: &[&str]) -> Outcome {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > LIMIT {
            child.kill().unwrap();
            panic!("gqla {args:?} hung for {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    Outcome {
        code: out.status.code(),
        signal: out.status.signal(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

fn run(dir: &Path, args: &[&str]) -> Outcome {
    finish(spawn(dir, args), args)
}

/// Every file under `dir` (symlinks as their targets' names), with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir, |p, _| std::fs::read(p).unwrap())
}

/// The state of `dir` before and after a run, as `snapshot` gives it except that a regular file
/// over 64 MiB (the sparse gigabytes below) is its length, inode, and modification and change
/// times, which any write to it or replacement of it changes. (Reading those gigabytes before
/// and after every probe took most of a test's time.)
fn state(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    walk(dir, |p, m| {
        if m.len() <= 64 << 20 {
            return std::fs::read(p).unwrap();
        }
        let stamp = [m.len() as i64, m.ino() as i64, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()];
        stamp.iter().flat_map(|x| x.to_le_bytes()).collect()
    })
}

/// Every entry under `dir`, each regular file as `file` gives it.
fn walk(dir: &Path, file: impl Fn(&Path, &std::fs::Metadata) -> Vec<u8>) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_path_buf();
            if t.is_symlink() {
                all.insert(rel, std::fs::read_link(&p).unwrap().into_os_string().into_encoded_bytes());
            } else if t.is_dir() {
                all.insert(rel, b"<dir>".to_vec());
                stack.push(p);
            } else if t.is_file() {
                all.insert(rel, file(&p, &e.metadata().unwrap()));
            } else {
                all.insert(rel, b"<special>".to_vec());
            }
        }
    }
    all
}

/// A scratch directory with a copy of the sharded LLaMA fixture (`ck/`) and a layer input.
struct Scratch {
    tmp: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        // A prefix without dots: messages are checked for temporary names (`.NAME.*.tmp`).
        let tmp = tempfile::Builder::new().prefix("hostile").tempdir().unwrap();
        let src = root().join("fixtures/hf/llama");
        copy_dir(&src.join("checkpoint"), &tmp.path().join("ck"));
        std::fs::copy(src.join("layer1.safetensors"), tmp.path().join("x.safetensors")).unwrap();
        Scratch { tmp }
    }
    fn path(&self) -> &Path {
        self.tmp.path()
    }
    fn edit_config(&self, dir: &str, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.path().join(dir).join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    }
    /// Run a probe that must be refused: exit 2, the needles in stderr, no panic, and every
    /// file in the scratch directory as it was.
    fn refused(&self, args: &[&str], needles: &[&str]) {
        let before = state(self.path());
        let o = run(self.path(), args);
        assert_eq!(
            o.code,
            Some(2),
            "gqla {args:?}: expected exit 2, got {:?}/{:?}: {}",
            o.code,
            o.signal,
            o.stderr
        );
        assert!(!o.stderr.contains("panicked"), "gqla {args:?} panicked: {}", o.stderr);
        for n in needles {
            assert!(o.stderr.contains(n), "gqla {args:?}: stderr lacks {n:?}: {}", o.stderr);
        }
        assert!(
            !o.stderr.contains(".tmp") && !o.stderr.contains(".partial"),
            "a temp name in: {}",
            o.stderr
        );
        let after = state(self.path());
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "gqla {args:?} left or removed files"
        );
        assert!(before == after, "gqla {args:?} changed a file");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn mkfifo(p: &Path) {
    assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
}

const FORWARD: [&str; 5] = ["forward", "--checkpoint", "ck", "--layer", "1"];

fn forward<'a>(input: &'a str, output: &'a str) -> Vec<&'a str> {
    [&FORWARD[..], &["--input", input, "--output", output]].concat()
}

/// `forward` of layer 0 on `checkpoint` (a directory or GGUF file) with the scratch input.
fn forward_from(checkpoint: &str) -> Vec<&str> {
    vec![
        "forward",
        "--checkpoint",
        checkpoint,
        "--layer",
        "0",
        "--input",
        "x.safetensors",
        "--output",
        "y.safetensors",
    ]
}

fn convert<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    [
        &[
            "convert",
            "--input",
            input,
            "--output",
            output,
            "--kv-lora-rank",
            "8",
            "--rope-dim",
            "4",
        ][..],
        extra,
    ]
    .concat()
}

#[test]
fn outputs_pointed_at_inputs_are_refused() {
    let s = Scratch::new();
    s.refused(&forward("x.safetensors", "x.safetensors"), &["x.safetensors", "is an input"]);
    s.refused(&forward("x.safetensors", "ck/config.json"), &["ck/config.json", "inside the input"]);
    s.refused(&forward("x.safetensors", "ck/new.safetensors"), &["inside the input"]);
    std::os::unix::fs::symlink("x.safetensors", s.path().join("alias")).unwrap();
    s.refused(&forward("x.safetensors", "alias"), &["is an input"]);
    s.refused(&convert("ck", "ck/model.safetensors.index.json", &[]), &["inside the input"]);
    s.refused(&convert("ck", "ck", &[]), &["inside the input"]);
    s.refused(
        &forward("x.safetensors", "missing/dir/y.safetensors"),
        &["missing/dir/y.safetensors", "does not exist"],
    );
}

#[test]
fn planted_symlinks_are_never_written_through() {
    let s = Scratch::new();
    let victim = s.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    // Names the old writer used, and the output path itself.
    for name in [".y.safetensors.tmp", ".y.safetensors.tmp-1", ".c.partial-1", "z.safetensors"] {
        std::os::unix::fs::symlink(&victim, s.path().join(name)).unwrap();
    }
    for out in ["y.safetensors", "z.safetensors"] {
        let o = run(s.path(), &forward("x.safetensors", out));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let meta = std::fs::symlink_metadata(s.path().join(out)).unwrap();
        assert!(meta.file_type().is_file(), "{out} is not a regular file");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    let dot: Vec<String> = std::fs::read_dir(s.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert_eq!(dot.len(), 3, "temp files left: {dot:?}");
}

#[test]
fn shard_names_and_symlinks_stay_inside_the_checkpoint() {
    let s = Scratch::new();
    let index = s.path().join("ck/model.safetensors.index.json");
    let original = std::fs::read_to_string(&index).unwrap();
    let secret = s.path().join("secret.safetensors");
    std::fs::copy(s.path().join("ck/model-00001-of-00002.safetensors"), &secret).unwrap();
    for (to, why) in [
        ("../secret.safetensors".to_string(), "plain relative"),
        (secret.display().to_string(), "plain relative"),
    ] {
        std::fs::write(&index, original.replace("model-00001-of-00002.safetensors", &to)).unwrap();
        s.refused(&forward("x.safetensors", "y.safetensors"), &["model.safetensors.index.json", why]);
    }
    std::fs::write(&index, &original).unwrap();
    let shard = s.path().join("ck/model-00001-of-00002.safetensors");
    std::fs::remove_file(&shard).unwrap();
    std::os::unix::fs::symlink(&secret, &shard).unwrap();
    s.refused(&forward("x.safetensors", "y.safetensors"), &["leads outside"]);
}

#[test]
fn fifos_devices_and_sparse_files_are_refused_without_reading() {
    let s = Scratch::new();
    let p = s.path();
    std::fs::create_dir(p.join("f")).unwrap();
    mkfifo(&p.join("f/config.json"));
    s.refused(
        &["cache-size", "--config", "f/config.json"],
        &["f/config.json", "not a regular file"],
    );
    mkfifo(&p.join("fifo.json"));
    s.refused(&["plan", "--validate", "fifo.json"], &["fifo.json", "not a regular file"]);
    mkfifo(&p.join("fifo.safetensors"));
    s.refused(
        &forward("fifo.safetensors", "y.safetensors"),
        &["fifo.safetensors", "not a regular file"],
    );
    std::fs::create_dir(p.join("z")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", p.join("z/config.json")).unwrap();
    s.refused(&["cache-size", "--config", "z/config.json"], &["not a regular file"]);
    // Sparse: a gigabyte on paper, nothing on disk; refused from the metadata.
    std::fs::create_dir(p.join("s")).unwrap();
    let f = std::fs::File::create(p.join("s/config.json")).unwrap();
    f.set_len(1 << 30).unwrap();
    let t = Instant::now();
    s.refused(&["cache-size", "--config", "s/config.json"], &["s/config.json", "more than the"]);
    assert!(t.elapsed() < Duration::from_secs(20), "a sparse file was read");
    // A weights file longer than its header declares, and a header length past the file.
    let shard = p.join("ck/model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&shard)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    s.refused(
        &forward("x.safetensors", "y.safetensors"),
        &["model-00002-of-00002.safetensors", "declares"],
    );
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, &huge).unwrap();
    s.refused(
        &forward("x.safetensors", "y.safetensors"),
        &["model-00002-of-00002.safetensors", "header length"],
    );
}

#[test]
fn overflowing_configs_name_the_file_and_key() {
    let s = Scratch::new();
    for (key, value, needle) in [
        ("num_hidden_layers", serde_json::json!(1u64 << 40), "num_hidden_layers"),
        ("num_hidden_layers", serde_json::json!(u64::MAX), "num_hidden_layers"),
        ("vocab_size", serde_json::json!(0), "vocab_size"),
        ("vocab_size", serde_json::json!(1u64 << 32), "vocab_size"),
        ("head_dim", serde_json::json!(1u64 << 40), "head_dim"),
        ("hidden_size", serde_json::json!(1u64 << 40), "hidden_size"),
        ("rms_norm_eps", serde_json::json!(-1000), "rms_norm_eps"),
        ("rms_norm_eps", serde_json::json!(0), "rms_norm_eps"),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 10000.0, "rope_type": "linear", "factor": 0}),
            "rope_parameters.factor",
        ),
        (
            "rope_parameters",
            serde_json::json!({"rope_theta": 10000.0, "rope_type": "yarn", "factor": -4, "original_max_position_embeddings": 16}),
            "rope_parameters.factor",
        ),
    ] {
        let before = std::fs::read(s.path().join("ck/config.json")).unwrap();
        s.edit_config("ck", |v| v[key] = value.clone());
        s.refused(&forward("x.safetensors", "y.safetensors"), &["ck/config.json", needle]);
        s.refused(&convert("ck", "out", &[]), &["ck/config.json", needle]);
        s.refused(&["cache-size", "--config", "ck"], &["ck/config.json", needle]);
        std::fs::write(s.path().join("ck/config.json"), before).unwrap();
    }
}

#[test]
fn overflowing_flags_and_budgets_exit_2_before_allocating() {
    let s = Scratch::new();
    let llama = root().join("fixtures/configs/llama-3-8b.json");
    let llama = llama.to_str().unwrap();
    let deepseek = root().join("fixtures/configs/deepseek-v3.json");
    let deepseek = deepseek.to_str().unwrap();
    let plan = |extra: &[&'static str]| [&["plan", "--config", llama, "--gpu", "h100"][..], extra].concat();
    for flag in [
        "--peak-tflops=NaN",
        "--peak-tflops=0",
        "--peak-tflops=-5",
        "--peak-tflops=inf",
        "--bandwidth-gbps=0",
        "--bandwidth-gbps=-1",
    ] {
        s.refused(&plan(&[flag]), &[flag.split('=').next().unwrap(), "finite number above zero"]);
    }
    for rank in ["18446744073709551615", "4294967296", "9223372036854775807"] {
        s.refused(&[&plan(&[])[..], &["--kv-lora-rank", rank]].concat(), &["d_c", "largest supported"]);
        s.refused(
            &["cache-size", "--config", llama, "--kv-lora-rank", rank],
            &["--kv-lora-rank", rank],
        );
        s.refused(
            &["cache-size", "--config", deepseek, "--kv-lora-rank", rank],
            &["d_c", "largest supported"],
        );
    }
    s.refused(
        &convert("ck", "out", &["--calib-sequences", "1", "--calib-tokens", "100000000"]),
        &["not enough memory", "tokens"],
    );
    s.refused(
        &convert("ck", "out", &["--calib-sequences", "18446744073709551615", "--calib-tokens", "2"]),
        &["not enough memory", "18446744073709551615 sequences"],
    );
    s.refused(
        &[&convert("ck", "out", &[])[..], &["--max-memory", "1K"]].concat(),
        &["not enough memory", "--max-memory"],
    );
    s.refused(&["bench", "convert", "--vocab", "0"], &["--vocab"]);
    s.refused(
        &["certify", "--kernel", "reference-f32", "--max-memory", "1M", "--out", "cert"],
        &["not enough memory", "selected cases"],
    );
    s.refused(
        &["vectors", "export", "--max-memory", "1K", "--out", "pack"],
        &["not enough memory", "largest selected case"],
    );
    let id = "gqla.decode.absorb:h=4294967296;dc=512;dn=128;dr=64;sq=1;ctx=99999999999;page=0;dtype=f32;seed=0";
    s.refused(&["vectors", "export", "--filter", id, "--out", "pack"], &[]);
    s.refused(
        &["certify", "--kernel", "reference-f32", "--timeout", "0", "--out", "cert"],
        &["--timeout"],
    );
    s.refused(
        &[
            "certify",
            "--kernel",
            "reference-f32",
            "--seed",
            "1",
            "--filter",
            id,
            "--out",
            "cert",
        ],
        &[],
    );
}

/// Wait until the conversion's temporary directory appears (the run is under way).
fn wait_for_temp(dir: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".partial"));
        if found {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the conversion ended before it was interrupted"
        );
        assert!(start.elapsed() < LIMIT, "no temporary directory appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn signals_and_a_source_truncated_mid_run_leave_nothing_behind() {
    // Enough calibration to keep the conversion busy for a while after its temp dir appears.
    let busy = ["--calib-sequences", "64", "--calib-tokens", "512"];
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let s = Scratch::new();
        let before = snapshot(s.path());
        let args = convert("ck", "out", &busy);
        let mut child = spawn(s.path(), &args);
        wait_for_temp(s.path(), &mut child);
        // SAFETY: signalling a child process we own and have not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let o = finish(child, &args);
        assert_eq!(o.code, Some(code), "signal {sig}: {:?}/{:?} {}", o.code, o.signal, o.stderr);
        assert!(snapshot(s.path()) == before, "signal {sig}: files left or changed");
    }
    let s = Scratch::new();
    let args = convert("ck", "out", &busy);
    let mut child = spawn(s.path(), &args);
    wait_for_temp(s.path(), &mut child);
    let shard = s.path().join("ck/model-00002-of-00002.safetensors");
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(100).unwrap();
    let o = finish(child, &args);
    assert_eq!(o.code, Some(2), "{:?}/{:?}: {}", o.code, o.signal, o.stderr);
    assert!(
        o.stderr.contains("model-00002-of-00002.safetensors") && o.stderr.contains("changed while it was read"),
        "{}",
        o.stderr
    );
    assert!(!s.path().join("out").exists());
    let left: Vec<_> = std::fs::read_dir(s.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn identical_inputs_give_byte_identical_outputs() {
    let s = Scratch::new();
    let p = s.path();
    for out in ["a", "b"] {
        let o = run(p, &convert("ck", out, &[]));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let o = run(p, &forward("x.safetensors", &format!("{out}.safetensors")));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let filter = "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=1;ctx=65,31;page=64;dtype=f32";
        let o = run(
            p,
            &[
                "vectors",
                "export",
                "--filter",
                filter,
                "--seed",
                "7",
                "--out",
                &format!("{out}-pack"),
            ],
        );
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let o = run(
            p,
            &[
                "certify",
                "--kernel",
                "reference-f32",
                "--seed",
                "7",
                "--filter",
                filter,
                "--out",
                &format!("{out}-cert"),
            ],
        );
        // One case: every case passes, the coverage core is not met (PARTIAL, exit 1).
        assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
        assert!(o.stdout.contains("PARTIAL — reference-f32"), "{}", o.stdout);
    }
    let (a, b) = (snapshot(&p.join("a")), snapshot(&p.join("b")));
    assert!(!a.is_empty() && a == b, "convert differs between runs");
    assert_eq!(
        std::fs::read(p.join("a.safetensors")).unwrap(),
        std::fs::read(p.join("b.safetensors")).unwrap(),
        "forward differs"
    );
    assert!(snapshot(&p.join("a-pack")) == snapshot(&p.join("b-pack")), "vectors export differs");
    // Certificates: only the documented timing fields (`seconds`, per case) vary.
    let report = |d: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p.join(d).join("report.json")).unwrap()).unwrap();
        strip(&mut v, "seconds");
        v
    };
    assert_eq!(report("a-cert"), report("b-cert"), "report.json differs beyond timing");
    fn strip(v: &mut serde_json::Value, key: &str) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove(key);
                m.values_mut().for_each(|x| strip(x, key));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| strip(x, key)),
            _ => {}
        }
    }
}

/// A GGUF metadata value.
enum Meta {
    U32(u32),
    U64(u64),
    Str(&'static str),
}

/// A GGUF file (version 3) as llama.cpp lays one out: the metadata, then F32 tensors of the given
/// HF shapes ([rows, cols]; stored innermost first), their data aligned to 32 bytes and filled
/// with small seeded values.
fn gguf_file(meta: &[(&str, Meta)], tensors: &[(&str, &[usize])]) -> Vec<u8> {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes()); // version
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        string(&mut b, key);
        match value {
            Meta::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::U64(v) => {
                b.extend(10u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::Str(v) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, v);
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape) in tensors {
        string(&mut b, name);
        b.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            b.extend((*d as u64).to_le_bytes());
        }
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(offset.to_le_bytes());
        offset += (shape.iter().product::<usize>() * 4).next_multiple_of(32) as u64;
    }
    b.resize(b.len().next_multiple_of(32), 0);
    let mut x = 0x2545_f491u32;
    for (_, shape) in tensors {
        let n = shape.iter().product::<usize>();
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b.extend((((x % 2001) as f32 / 1000.0 - 1.0) * 0.1).to_le_bytes());
        }
        b.resize(b.len().next_multiple_of(32), 0);
    }
    b
}

/// A GGUF header with one metadata entry, `general.architecture` = `arch`, and no tensors.
fn gguf_header(arch: &'static str) -> Vec<u8> {
    gguf_file(&[("general.architecture", Meta::Str(arch))], &[])
}

/// The LLaMA fixture's geometry (hidden 32, 4 heads, 2 KV heads, 2 layers, vocab 64) as llama.cpp
/// metadata, with `block_count` given.
fn llama_meta(block_count: u64) -> Vec<(&'static str, Meta)> {
    vec![
        ("general.architecture", Meta::Str("llama")),
        ("llama.embedding_length", Meta::U32(32)),
        ("llama.block_count", Meta::U64(block_count)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.feed_forward_length", Meta::U32(48)),
        ("llama.vocab_size", Meta::U32(64)),
    ]
}

/// The LLaMA fixture's tensors under llama.cpp's names, layer by layer (layer 0 first).
fn llama_tensors() -> Vec<(String, Vec<usize>)> {
    let mut t = Vec::new();
    for i in 0..2 {
        for (name, shape) in [
            ("attn_norm.weight", vec![32]),
            ("attn_q.weight", vec![32, 32]),
            ("attn_k.weight", vec![16, 32]),
            ("attn_v.weight", vec![16, 32]),
            ("attn_output.weight", vec![32, 32]),
            ("ffn_norm.weight", vec![32]),
            ("ffn_gate.weight", vec![48, 32]),
            ("ffn_up.weight", vec![48, 32]),
            ("ffn_down.weight", vec![32, 48]),
        ] {
            t.push((format!("blk.{i}.{name}"), shape));
        }
    }
    t.push(("output_norm.weight".into(), vec![32]));
    t.push(("token_embd.weight".into(), vec![64, 32]));
    t.push(("output.weight".into(), vec![64, 32]));
    t
}

#[test]
fn gguf_metadata_has_the_ceilings_of_hf_config_keys_and_truncation_is_refused_at_open() {
    let s = Scratch::new();
    let tensors = llama_tensors();
    let refs: Vec<(&str, &[usize])> = tensors.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
    let fwd = forward_from;
    // The whole file is a working model: forward runs on it.
    let whole = gguf_file(&llama_meta(2), &refs);
    std::fs::write(s.path().join("whole.gguf"), &whole).unwrap();
    let o = run(s.path(), &fwd("whole.gguf"));
    assert_eq!(o.code, Some(0), "a whole GGUF file: {}", o.stderr);
    std::fs::remove_file(s.path().join("y.safetensors")).unwrap();
    // 2^40 layers (HF's config refuses the same value) once made convert and forward loop.
    std::fs::write(s.path().join("layers.gguf"), gguf_file(&llama_meta(1 << 40), &refs)).unwrap();
    for args in [fwd("layers.gguf"), convert("layers.gguf", "out", &[])] {
        s.refused(&args, &["layers.gguf", "llama.block_count", "num_hidden_layers", "1099511627776"]);
    }
    let mut heads = llama_meta(2);
    heads[3].1 = Meta::U64(u64::MAX);
    std::fs::write(s.path().join("heads.gguf"), gguf_file(&heads, &refs)).unwrap();
    s.refused(&fwd("heads.gguf"), &["heads.gguf", "llama.attention.head_count"]);
    let mut vocab = llama_meta(2);
    vocab[6].1 = Meta::U64(1 << 32);
    std::fs::write(s.path().join("vocab.gguf"), gguf_file(&vocab, &refs)).unwrap();
    s.refused(&fwd("vocab.gguf"), &["vocab.gguf", "llama.vocab_size"]);
    // Cut inside layer 1's data: layer 0 is whole, and forward on it was once accepted.
    let cut = whole.len() - (64 * 32 * 4) * 2 - 32 * 4 - 100;
    std::fs::write(s.path().join("cut.gguf"), &whole[..cut]).unwrap();
    s.refused(&fwd("cut.gguf"), &["cut.gguf", "past the end of the file", "truncated"]);
    s.refused(&convert("cut.gguf", "out", &[]), &["cut.gguf", "past the end of the file"]);
}

#[test]
fn bad_gguf_files_exit_2_naming_the_file() {
    let s = Scratch::new();
    std::fs::write(s.path().join("gpt2.gguf"), gguf_header("gpt2")).unwrap();
    std::fs::write(s.path().join("cut.gguf"), &gguf_header("llama")[..30]).unwrap();
    std::fs::write(s.path().join("empty.gguf"), gguf_header("llama")).unwrap();
    let fwd = forward_from;
    s.refused(&fwd("gpt2.gguf"), &["gpt2.gguf", "architecture `gpt2` is not supported"]);
    s.refused(&fwd("cut.gguf"), &["cut.gguf", "not a GGUF file we can read"]);
    s.refused(&fwd("empty.gguf"), &["empty.gguf", "llama.embedding_length"]);
    s.refused(&convert("gpt2.gguf", "out", &[]), &["gpt2.gguf", "architecture"]);
    s.refused(&["eval", "--checkpoint", "cut.gguf", "--text", "x.safetensors"], &["cut.gguf"]);
}

/// The smallest case of the suite, for probes that only need certify to get going.
const ONE_CASE: &str = "gqla.cache.expand";

#[test]
fn certify_refuses_contradictory_flags_and_unusable_outputs_before_running() {
    let s = Scratch::new();
    let certify = |extra: &[&'static str]| -> Vec<&'static str> {
        [&["certify", "--kernel", "reference-f32", "--filter", ONE_CASE][..], extra].concat()
    };
    s.refused(
        &certify(&["--seed", "3", "--seeds", "2", "--out", "cert"]),
        &["--seed", "--seeds", "cannot be used with"],
    );
    std::fs::write(s.path().join("afile"), b"x").unwrap();
    // Each is refused at once (exit 2, nothing run), not after the suite (exit 3).
    for (out, needle) in [("afile", "not a directory"), ("afile/cert", "afile is a file")] {
        let start = Instant::now();
        s.refused(&certify(&["--out", out]), &[out, needle]);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{out}: refused only after {:?}",
            start.elapsed()
        );
    }
    // A pack and the kernel's outputs are inputs: no certificate inside them.
    let o = run(
        s.path(),
        &["vectors", "export", "--filter", ONE_CASE, "--seed", "5", "--out", "pack"],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    std::fs::create_dir(s.path().join("outs")).unwrap();
    for (out, input) in [("pack/cert", "pack"), ("outs/cert", "outs")] {
        s.refused(
            &["certify", "--kernel", "external:pack", "--outputs", "outs", "--out", out],
            &[out, "lies inside the input", input],
        );
    }
    // A read-only directory (root writes anywhere: the probe only means something for others).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = s.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        s.refused(&certify(&["--out", "ro/cert"]), &["ro/cert", "cannot write output here"]);
    }
}

#[test]
fn profile_errors_name_the_field_and_the_allowed_values() {
    let s = Scratch::new();
    let o = run(
        s.path(),
        &["vectors", "export", "--filter", ONE_CASE, "--seed", "5", "--out", "pack"],
    );
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let good: serde_json::Value = serde_json::from_str(
        r#"{"operations": ["gqla.cache.expand"], "dtypes": ["f32"], "contiguous": true, "page_sizes": "any",
            "s_q": {"min": 1, "max": 1}, "split_counts": "ignored", "rope_layouts": ["once"], "scale": "input",
            "out_empty_row": "zero", "lse": "none"}"#,
    )
    .unwrap();
    for (field, value, needles) in [
        ("lse", serde_json::json!("nonee"), &["`lse`", "\"none\" or {"][..]),
        (
            "lse",
            serde_json::json!({"dtype": "f32", "base": "10", "empty_row": "neg_inf"}),
            &["`lse.base`", "`e` or `2`"],
        ),
        (
            "page_sizes",
            serde_json::json!("all"),
            &["`page_sizes`", "\"any\", \"none\" or a list"],
        ),
        (
            "operations",
            serde_json::json!(["gqla.decode"]),
            &["`operations[0]`", "gqla.decode.absorb"],
        ),
    ] {
        let mut v = good.clone();
        v[field] = value;
        std::fs::write(s.path().join("profile.json"), v.to_string()).unwrap();
        let mut want = vec!["profile.json"];
        want.extend_from_slice(needles);
        s.refused(
            &["certify", "--kernel", "external:pack", "--profile", "profile.json", "--out", "cert"],
            &want,
        );
        // The same profile inside kernel.json names the same field, under `profile`.
        std::fs::create_dir_all(s.path().join("outs")).unwrap();
        let info = serde_json::json!({"name": "k", "version": "1", "description": "d", "environment": {}, "profile": v});
        std::fs::write(s.path().join("outs/kernel.json"), info.to_string()).unwrap();
        let mut want = vec!["kernel.json".to_string()];
        want.push(needles[0].replacen('`', "`profile.", 1));
        want.extend(needles[1..].iter().map(|n| n.to_string()));
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        s.refused(
            &["certify", "--kernel", "external:pack", "--outputs", "outs", "--out", "cert"],
            &want,
        );
    }
}

/// Run `gqla args` in `dir` under `ulimit -v kib`.
fn run_limited(dir: &Path, kib: u64, args: &[&str]) -> Outcome {
    let mut cmd = vec![
        format!("ulimit -v {kib} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_gqla").to_string(),
    ];
    cmd.extend(args.iter().map(|a| a.to_string()));
    let child = Command::new("sh")
        .arg("-c")
        .args(&cmd)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    finish(child, args)
}

#[test]
fn an_address_space_limit_is_part_of_the_budget_and_a_refused_allocation_exits_2() {
    let s = Scratch::new();
    // The whole suite's inputs and references (certify keeps them for the mutation catalogue) do
    // not fit in 1 GiB of address space: refused before anything is allocated, naming the limit.
    let o = run_limited(
        s.path(),
        1 << 20,
        &["certify", "--kernel", "flash-cpu", "--seed", "1", "--out", "cert"],
    );
    assert_eq!(o.code, Some(2), "{:?}/{:?}: {}", o.code, o.signal, o.stderr);
    assert!(
        o.stderr.contains("RLIMIT_AS") && o.stderr.contains("selected cases"),
        "{}",
        o.stderr
    );
    assert!(!s.path().join("cert").exists());
    // With the plan overridden (--max-memory), the allocation the plan would have refused fails:
    // exit 2 and a message, not SIGABRT.
    let o = run_limited(
        s.path(),
        1 << 20,
        &[
            "certify",
            "--kernel",
            "flash-cpu",
            "--seed",
            "1",
            "--max-memory",
            "1T",
            "--out",
            "cert",
        ],
    );
    assert_eq!(o.code, Some(2), "{:?}/{:?}: {}", o.code, o.signal, o.stderr);
    assert!(o.stderr.contains("out of memory") && o.stderr.contains("RLIMIT_AS"), "{}", o.stderr);
    assert!(!o.stderr.contains("panicked") && !s.path().join("cert").exists(), "{}", o.stderr);
}
