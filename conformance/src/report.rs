//! Certificates: report.json (machine-readable), report.md (for people) and JUnit XML (for CI
//! systems), each written atomically.

use crate::case::Op;
use crate::definition::{definition, Definition};
use crate::kernel::KernelIdentity;
use crate::runner::CaseResult;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Where the certification ran.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Environment {
    pub tool: String,
    pub os: String,
    pub arch: String,
    pub cpu: String,
    pub cores: usize,
    /// The compiler that built this tool.
    pub rustc: String,
    /// Anything the kernel adds (device, driver, compile options).
    pub kernel_environment: BTreeMap<String, String>,
}

impl Environment {
    pub fn detect(kernel_environment: BTreeMap<String, String>) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            tool: format!("gqla {}", env!("CARGO_PKG_VERSION")),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rustc: env!("GQLA_RUSTC_VERSION").into(),
            kernel_environment,
        }
    }
}

/// A certification run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub suite_version: String,
    pub kernel: KernelIdentity,
    pub environment: Environment,
    pub filter: String,
    pub results: Vec<CaseResult>,
    /// Count per status name.
    pub summary: BTreeMap<String, usize>,
    /// Every selected case PASS or NOT_SUPPORTED.
    pub conformant: bool,
    /// For built-in kernels: how many seeded bugs the suite rejected.
    pub mutation: Option<MutationSummary>,
    /// The definitions of the operations the selected cases exercise.
    pub definitions: Vec<Definition>,
}

/// The mutation catalogue's result: each mutant and the first case that rejected it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MutationSummary {
    pub mutants: usize,
    pub killed: usize,
    pub kill_rate: f64,
    /// Mutant name → (first rejecting case, status), or None if it survived.
    pub results: BTreeMap<String, Option<(String, String)>>,
}

impl Report {
    pub fn new(suite_version: &str, kernel: KernelIdentity, environment: Environment, filter: &str, results: Vec<CaseResult>) -> Self {
        let mut summary = BTreeMap::new();
        for r in &results {
            *summary.entry(r.status.name().to_string()).or_insert(0) += 1;
        }
        let conformant = results.iter().all(|r| r.status.is_conformant());
        let definitions = Op::ALL
            .into_iter()
            .filter(|op| results.iter().any(|r| r.id.split(':').next() == Some(op.name())))
            .map(definition)
            .collect();
        Self {
            suite_version: suite_version.into(),
            kernel,
            environment,
            filter: filter.into(),
            results,
            summary,
            conformant,
            mutation: None,
            definitions,
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# GQLA conformance certificate\n");
        let _ = writeln!(s, "- suite version: {}", self.suite_version);
        let _ = writeln!(
            s,
            "- kernel: {} {} ({})",
            self.kernel.name, self.kernel.version, self.kernel.description
        );
        let _ = writeln!(
            s,
            "- environment: {} ({}) on {}/{}, {} cores; {}",
            self.environment.tool,
            self.environment.rustc,
            self.environment.os,
            self.environment.arch,
            self.environment.cores,
            self.environment.cpu
        );
        for (k, v) in &self.environment.kernel_environment {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let _ = writeln!(s, "- filter: `{}`", if self.filter.is_empty() { "*" } else { &self.filter });
        let _ = writeln!(
            s,
            "- verdict: **{}**\n",
            if self.conformant { "CONFORMANT" } else { "NOT CONFORMANT" }
        );
        let _ = writeln!(s, "| status | cases |\n|---|---|");
        for (k, v) in &self.summary {
            let _ = writeln!(s, "| {k} | {v} |");
        }
        if let Some(m) = &self.mutation {
            let _ = writeln!(s, "\n## Mutation catalogue\n\nThe suite rejected {} of {} seeded bugs (kill rate {:.1}%).\n\n| mutant | first rejecting case | status |\n|---|---|---|", m.killed, m.mutants, 100.0 * m.kill_rate);
            for (name, r) in &m.results {
                match r {
                    Some((case, status)) => {
                        let _ = writeln!(s, "| {name} | `{case}` | {status} |");
                    }
                    None => {
                        let _ = writeln!(s, "| {name} | survived | - |");
                    }
                }
            }
        }
        let failing: Vec<&CaseResult> = self.results.iter().filter(|r| !r.status.is_conformant()).collect();
        if !failing.is_empty() {
            let _ = writeln!(s, "\n## Failing cases\n\n| case | status |\n|---|---|");
            for r in failing {
                let _ = writeln!(s, "| `{}` | {} |", r.id, r.status.name());
            }
        }
        s
    }

    pub fn junit(&self) -> String {
        let esc = |x: &str| {
            x.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
        };
        let failures = self.results.iter().filter(|r| !r.status.is_conformant()).count();
        let skipped = self.results.iter().filter(|r| r.status.name() == "NOT_SUPPORTED").count();
        let time: f64 = self.results.iter().map(|r| r.seconds).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuite name=\"gqla-conformance {}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
            esc(&self.kernel.name),
            self.results.len()
        );
        for r in &self.results {
            let _ = write!(
                s,
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                esc(r.id.split(':').next().unwrap_or("")),
                esc(&r.id),
                r.seconds
            );
            match &r.status {
                crate::verdict::Status::Pass { .. } => s.push_str("/>\n"),
                crate::verdict::Status::NotSupported { reason } => {
                    let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", esc(reason));
                }
                other => {
                    let detail = serde_json::to_string(other).unwrap_or_default();
                    let _ = writeln!(s, "><failure type=\"{}\" message=\"{}\"/></testcase>", other.name(), esc(&detail));
                }
            }
        }
        s.push_str("</testsuite>\n");
        s
    }

    /// Write report.json, report.md and junit.xml into `dir` (each via a temp file and a rename).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).expect("report serializes") + "\n";
        for (name, text) in [("report.json", json), ("report.md", self.markdown()), ("junit.xml", self.junit())] {
            gqla_reference::hf::tensors::write_atomic(&dir.join(name), text.as_bytes())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}
