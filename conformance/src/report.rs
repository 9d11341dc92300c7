//! Certificates: report.json (machine-readable), report.md (for people) and JUnit XML (for CI
//! systems), each written atomically.

use crate::case::{Case, Op};
use crate::coverage;
use crate::definition::{definition, Definition};
use crate::kernel::KernelIdentity;
use crate::lattice::SUITE_VERSION;
use crate::profile::Profile;
use crate::runner::CaseResult;
use crate::verdict::Status;
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

/// What a certificate covers of one operation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpCoverage {
    pub operation: String,
    /// Must-pass cases of this operation that the filter selects.
    pub cases: usize,
    /// Of those, the cases the profile selects: each must PASS.
    pub must_pass: usize,
    pub passed: usize,
    /// Axes the profile leaves out, with how many cases each removes.
    pub left_out: Vec<(String, usize)>,
    /// Axes of the operation's coverage core ([`crate::coverage`]) that no selected case
    /// exercises (empty: the core is met, or the profile does not declare the operation).
    pub missing: Vec<String>,
}

/// Who chose the suite seed, which decides what a certificate may claim: only a seed this certify
/// run drew itself is a fresh draw that no outputs could have been prepared for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedOrigin {
    /// Seed 0: the published suite, whose outputs could have been learned from a published pack.
    Published,
    /// Drawn by this certify run from the operating system's randomness.
    DrawnByThisRun,
    /// Given to this certify run (`--seed S`): whoever ran it chose it.
    GivenToThisRun,
    /// A vector pack's seed, chosen by whoever exported the pack: the kernel's author may have
    /// held its outputs before.
    ChosenByExporter,
}

impl SeedOrigin {
    /// An in-process run's seed: `given` when the command line named it.
    pub fn of_run(seed: u64, given: bool) -> Self {
        match (seed, given) {
            (0, _) => SeedOrigin::Published,
            (_, true) => SeedOrigin::GivenToThisRun,
            (_, false) => SeedOrigin::DrawnByThisRun,
        }
    }
    /// A pack's seed.
    pub fn of_pack(seed: u64) -> Self {
        if seed == 0 {
            SeedOrigin::Published
        } else {
            SeedOrigin::ChosenByExporter
        }
    }
    /// The certificate's words.
    pub fn text(self) -> &'static str {
        match self {
            SeedOrigin::Published => "the published suite: outputs could have been learned from a published pack",
            SeedOrigin::DrawnByThisRun => "fresh draw by this certify run: no outputs could have been prepared for it",
            SeedOrigin::GivenToThisRun => "given to this certify run with --seed: whoever ran it chose it",
            SeedOrigin::ChosenByExporter => "chosen by whoever exported the pack: outputs could have been prepared for it before this run",
        }
    }
}

/// The certificate's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Every case the profile selects passed, and they meet the coverage core of every declared
    /// operation.
    Conformant,
    /// Every selected case passed, but they leave part of an operation's coverage core
    /// unexercised: what passed is certified, the missing axes are named.
    Partial,
    /// Some selected case did not pass, or a precision family is IMPRECISE.
    NotConformant,
    /// The profile selects no case: nothing is certified.
    NothingCertified,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Conformant => "CONFORMANT",
            Verdict::Partial => "PARTIAL",
            Verdict::NotConformant => "NOT CONFORMANT",
            Verdict::NothingCertified => "NOTHING CERTIFIED",
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
    /// The suite seed the cases were drawn from (0: the published suite, whose outputs a kernel
    /// could have learned from a published pack).
    pub seed: u64,
    /// Who chose it.
    pub seed_origin: SeedOrigin,
    /// What the kernel declared; every case was judged by it.
    pub profile: Profile,
    pub coverage: Vec<OpCoverage>,
    /// Per (operation, output, dtype): the kernel's RMS error over its bound, pooled over
    /// `results` and `precision_draws`, and the family's judgement ([`crate::precision`]).
    pub precision: Vec<crate::precision::Family>,
    pub results: Vec<CaseResult>,
    /// The cases of BORDERLINE families run again on further draws (in-process kernels only),
    /// each also judged per case.
    pub precision_draws: Vec<CaseResult>,
    /// Count per status name.
    pub summary: BTreeMap<String, usize>,
    pub verdict: Verdict,
    /// verdict == CONFORMANT.
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

/// The characters that carry Markdown (and HTML) meaning inside a line.
const MD_SPECIAL: &str = "\\`*_[]<>|!~&#$";

/// Text from outside (kernel.json, paths, kernel messages) made safe for Markdown, where it always
/// sits inside a line (after a list marker or in a table cell): control characters (newlines,
/// ANSI escapes) dropped, so it can start no line of its own, and every character with meaning
/// inside a line backslash-escaped, so it can open no table cell, link, HTML tag, code span or
/// emphasis.
pub fn md_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_control()) {
        if MD_SPECIAL.contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// Text made safe for an XML attribute: control characters dropped (XML 1.0 forbids most of
/// them; tabs and newlines would be normalised away), markup characters as entities.
pub fn xml_escape(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_control() && !matches!(c, '\u{fffe}' | '\u{ffff}')) {
        match c {
            '&' => s.push_str("&amp;"),
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            c => s.push(c),
        }
    }
    s
}

/// Text made safe for one terminal line: control characters (ANSI escapes included) dropped.
pub fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

impl Report {
    pub fn new(
        kernel: KernelIdentity,
        environment: Environment,
        filter: &str,
        (seed, seed_origin): (u64, SeedOrigin),
        profile: Profile,
        results: Vec<CaseResult>,
    ) -> Self {
        let mut summary = BTreeMap::new();
        for r in &results {
            *summary.entry(r.status.name().to_string()).or_insert(0) += 1;
        }
        // Each result's case, parsed once (an id is the suite's own spelling; None only for a
        // result that is not a suite case).
        let judged: Vec<(&CaseResult, Option<Case>)> = results.iter().map(|r| (r, r.id.parse::<Case>().ok())).collect();
        let coverage: Vec<OpCoverage> = Op::ALL
            .into_iter()
            .filter_map(|op| {
                let of_op: Vec<&(&CaseResult, Option<Case>)> =
                    judged.iter().filter(|(r, _)| r.id.split(':').next() == Some(op.name())).collect();
                if of_op.is_empty() {
                    return None;
                }
                let mut left_out: BTreeMap<String, usize> = BTreeMap::new();
                for (_, c) in &of_op {
                    if let Some(why) = c.as_ref().and_then(|c| profile.excludes(c)) {
                        *left_out.entry(why.axis()).or_insert(0) += 1;
                    }
                }
                let selected: Vec<&Case> = of_op
                    .iter()
                    .filter(|(r, _)| r.status.selected())
                    .filter_map(|(_, c)| c.as_ref())
                    .collect();
                let missing = if profile.operations.contains(&op) {
                    coverage::missing(op, &profile, selected.iter().copied())
                        .iter()
                        .map(|a| a.to_string())
                        .collect()
                } else {
                    Vec::new()
                };
                Some(OpCoverage {
                    operation: op.name().into(),
                    cases: of_op.len(),
                    must_pass: of_op.iter().filter(|(r, _)| r.status.selected()).count(),
                    passed: of_op.iter().filter(|(r, _)| r.status.passed()).count(),
                    left_out: left_out.into_iter().collect(),
                    missing,
                })
            })
            .collect();
        let definitions = coverage
            .iter()
            .filter_map(|c| Op::ALL.into_iter().find(|op| op.name() == c.operation))
            .map(definition)
            .collect();
        let precision = crate::precision::families(judged.iter().filter_map(|(r, c)| Some((*r, c.as_ref()?))));
        let mut report = Self {
            suite_version: SUITE_VERSION.into(),
            kernel,
            environment,
            filter: filter.into(),
            seed,
            seed_origin,
            profile,
            coverage,
            precision,
            results,
            precision_draws: Vec::new(),
            summary,
            verdict: Verdict::NothingCertified,
            conformant: false,
            mutation: None,
            definitions,
        };
        report.decide();
        report
    }

    /// The report with the further draws [`crate::precision::settle`] ran: the families pooled
    /// over every draw, and the verdict decided again.
    pub fn with_precision_draws(mut self, draws: Vec<CaseResult>) -> Self {
        let pooled: Vec<CaseResult> = self.results.iter().chain(&draws).cloned().collect();
        self.precision = crate::precision::families_of(&pooled);
        self.precision_draws = draws;
        self.decide();
        self
    }

    /// The verdict from the results, the precision families and the coverage.
    fn decide(&mut self) {
        let selected = self.results.iter().filter(|r| r.status.selected()).count();
        let failed = self.results.iter().chain(&self.precision_draws).any(|r| r.status.failed());
        self.verdict = if selected == 0 {
            Verdict::NothingCertified
        } else if failed || self.precision.iter().any(|f| f.imprecise()) {
            Verdict::NotConformant
        } else if self.coverage.iter().any(|c| !c.missing.is_empty()) {
            Verdict::Partial
        } else {
            Verdict::Conformant
        };
        self.conformant = self.verdict == Verdict::Conformant;
    }

    /// The one-line verdict: what is certified, on how many must-pass cases of each operation,
    /// and for PARTIAL the core axes no selected case exercises.
    pub fn verdict_line(&self) -> String {
        let per_op: Vec<String> = self
            .coverage
            .iter()
            .map(|c| format!("{} {}/{}", c.operation, c.passed, c.must_pass))
            .collect();
        let missing: Vec<String> = self
            .coverage
            .iter()
            .filter(|c| !c.missing.is_empty())
            .map(|c| format!("{}: {}", c.operation, c.missing.join(", ")))
            .collect();
        let family = |f: &crate::precision::Family| format!("{} {} {} {:.2}x", f.operation, f.tensor, f.dtype_label(), f.ratio);
        let imprecise: Vec<String> = self.precision.iter().filter(|f| f.imprecise()).map(family).collect();
        let borderline: Vec<String> = self.precision.iter().filter(|f| f.borderline).map(family).collect();
        let draws_failed = self.precision_draws.iter().filter(|r| r.status.failed()).count();
        let mut line = format!(
            "{} — {} (suite {}, seed {}; passed/must-pass: {})",
            self.verdict.text(),
            plain(&self.kernel.name),
            self.suite_version,
            self.seed,
            per_op.join(", "),
        );
        if draws_failed > 0 {
            line += &format!("; {draws_failed} case(s) failed on further precision draws");
        }
        if !imprecise.is_empty() {
            line += &format!("; imprecise (RMS error over its bound): {}", imprecise.join(", "));
        }
        if !borderline.is_empty() {
            line += &format!("; BORDERLINE, decided by the point estimate: {}", borderline.join(", "));
        }
        if !missing.is_empty() {
            line += &format!("; core not covered: {}", missing.join("; "));
        }
        line
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let e = md_escape;
        let _ = writeln!(s, "# GQLA conformance certificate\n");
        let _ = writeln!(s, "- verdict: **{}**", self.verdict.text());
        let _ = writeln!(s, "- suite version: {}", self.suite_version);
        let _ = writeln!(s, "- seed: {} ({})", self.seed, self.seed_origin.text());
        let _ = writeln!(
            s,
            "- kernel: {} {} ({})",
            e(&self.kernel.name),
            e(&self.kernel.version),
            e(&self.kernel.description)
        );
        let _ = writeln!(
            s,
            "- environment: {} ({}) on {}/{}, {} cores; {}",
            e(&self.environment.tool),
            e(&self.environment.rustc),
            e(&self.environment.os),
            e(&self.environment.arch),
            self.environment.cores,
            e(&self.environment.cpu)
        );
        for (k, v) in &self.environment.kernel_environment {
            let _ = writeln!(s, "- {}: {}", e(k), e(v));
        }
        let _ = writeln!(
            s,
            "- filter: {}",
            if self.filter.is_empty() {
                "\\*".to_string()
            } else {
                e(&self.filter)
            }
        );
        let _ = writeln!(s, "\n## Declared profile\n\n| entry | declared |\n|---|---|");
        for (k, v) in self.profile.describe() {
            let _ = writeln!(s, "| {} | {} |", e(&k), e(&v));
        }
        let _ = writeln!(
            s,
            "\n## Coverage\n\n| operation | cases | must pass | passed | left out by the profile | core not covered |\n|---|---|---|---|---|---|"
        );
        for c in &self.coverage {
            let left: Vec<String> = c.left_out.iter().map(|(a, n)| format!("{} ({n})", e(a))).collect();
            let note = if c.must_pass == 0 { " (nothing certified)" } else { "" };
            let _ = writeln!(
                s,
                "| {}{note} | {} | {} | {} | {} | {} |",
                e(&c.operation),
                c.cases,
                c.must_pass,
                c.passed,
                if left.is_empty() { "-".to_string() } else { left.join(", ") },
                if c.missing.is_empty() {
                    "-".to_string()
                } else {
                    e(&c.missing.join(", "))
                }
            );
        }
        if !self.precision.is_empty() {
            let _ = writeln!(
                s,
                "\n## Precision against the naive reference\n\nPer family, the geometric mean over its cases of the RMS error over the case's RMS bound (twins left out), with its interval (99.9% below {} cases, 95% from there). PRECISE when the interval lies below 1, IMPRECISE above; while it holds 1 an in-process kernel's family is drawn again, up to {} cases, and a family still BORDERLINE is decided by its ratio (conformance/src/precision.rs states the rule and its error rates).\n\n| operation | output | dtype | cases | draws | ratio | interval | judgement |\n|---|---|---|---|---|---|---|---|",
                crate::precision::MIN_CASES,
                crate::precision::MAX_CASES
            );
            for f in &self.precision {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {:.3} | {:.3}–{:.3} ({}%) | {}{} |",
                    f.operation,
                    f.tensor,
                    f.dtype_label(),
                    f.cases,
                    f.draws,
                    f.ratio,
                    f.low,
                    f.high,
                    f.confidence * 100.0,
                    f.judgement.text(),
                    if f.borderline { " (BORDERLINE)" } else { "" }
                );
            }
            if !self.precision_draws.is_empty() {
                let _ = writeln!(
                    s,
                    "\n{} further case(s) ran on new draws for BORDERLINE families; {} of them failed a per-case check.",
                    self.precision_draws.len(),
                    self.precision_draws.iter().filter(|r| r.status.failed()).count()
                );
            }
        }
        let _ = writeln!(s, "\n| status | cases |\n|---|---|");
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
        let not_passed: Vec<&CaseResult> = self
            .results
            .iter()
            .chain(self.precision_draws.iter().filter(|r| r.status.failed()))
            .filter(|r| !r.status.passed())
            .collect();
        if !not_passed.is_empty() {
            let _ = writeln!(s, "\n## Cases that did not pass\n\n| case | status | cause |\n|---|---|---|");
            for r in not_passed {
                let _ = writeln!(s, "| `{}` | {} | {} |", r.id, r.status.name(), e(&r.status.cause()));
            }
        }
        s
    }

    pub fn junit(&self) -> String {
        let x = xml_escape;
        let cases: Vec<&CaseResult> = self.results.iter().chain(&self.precision_draws).collect();
        let failures = cases.iter().filter(|r| r.status.failed()).count() + self.precision.iter().filter(|f| f.imprecise()).count();
        let skipped = cases.iter().filter(|r| !r.status.selected()).count();
        let time: f64 = cases.iter().map(|r| r.seconds).sum();
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            s,
            "<testsuite name=\"gqla-conformance {}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{time:.3}\">",
            x(&self.kernel.name),
            cases.len() + self.precision.len()
        );
        s.push_str("  <properties>\n");
        let mut props = vec![
            ("verdict".to_string(), self.verdict.text().to_string()),
            ("verdict_line".to_string(), self.verdict_line()),
            ("suite_version".to_string(), self.suite_version.clone()),
            ("seed".to_string(), self.seed.to_string()),
            ("seed_origin".to_string(), self.seed_origin.text().to_string()),
        ];
        props.extend(self.profile.describe().into_iter().map(|(k, v)| (format!("profile.{k}"), v)));
        for c in &self.coverage {
            props.push((
                format!("coverage.{}", c.operation),
                format!("{} of {} must pass, {} passed", c.must_pass, c.cases, c.passed),
            ));
            if !c.missing.is_empty() {
                props.push((format!("core_not_covered.{}", c.operation), c.missing.join(", ")));
            }
        }
        for f in &self.precision {
            props.push((f.junit_name(), f.to_string()));
        }
        for (k, v) in props {
            let _ = writeln!(s, "    <property name=\"{}\" value=\"{}\"/>", x(&k), x(&v));
        }
        s.push_str("  </properties>\n");
        // Each family is a test of its own: IMPRECISE fails it.
        for f in &self.precision {
            let _ = write!(s, "  <testcase classname=\"precision\" name=\"{}\"", x(&f.junit_name()));
            if f.imprecise() {
                let _ = writeln!(s, "><failure type=\"IMPRECISE\" message=\"{}\"/></testcase>", x(&f.to_string()));
            } else {
                s.push_str("/>\n");
            }
        }
        for r in cases {
            let _ = write!(
                s,
                "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                x(r.id.split(':').next().unwrap_or("")),
                x(&r.id),
                r.seconds
            );
            match &r.status {
                Status::Pass { .. } => s.push_str("/>\n"),
                Status::NotSupported { reason } => {
                    let _ = writeln!(s, "><skipped message=\"{}\"/></testcase>", x(reason));
                }
                other => {
                    let _ = writeln!(
                        s,
                        "><failure type=\"{}\" message=\"{}\"/></testcase>",
                        other.name(),
                        x(&other.cause())
                    );
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
            gqla_files::write_file(&dir.join(name), text.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lattice::suite_cases;

    /// A report of `cases` judged by `profile`, each selected case passing.
    fn passing(cases: &[Case], profile: Profile) -> Report {
        let results = cases
            .iter()
            .map(|c| CaseResult {
                id: c.to_string(),
                status: match profile.excludes(c) {
                    Some(why) => Status::NotSupported { reason: why.to_string() },
                    None => Status::Pass { checks: vec![] },
                },
                seconds: 0.0,
            })
            .collect();
        let kernel = KernelIdentity {
            name: "k".into(),
            version: "1".into(),
            description: String::new(),
        };
        Report::new(
            kernel,
            Environment::detect(BTreeMap::new()),
            "",
            (9, SeedOrigin::of_run(9, false)),
            profile,
            results,
        )
    }

    /// The report judged again from its (edited) results.
    fn rejudged(r: Report) -> Report {
        Report::new(r.kernel, r.environment, "", (r.seed, r.seed_origin), r.profile, r.results)
    }

    /// Graded verdicts: the whole suite passing is CONFORMANT; a profile narrowed to a fixed
    /// scale passes its two cases but is PARTIAL, naming what it leaves unexercised; one failure
    /// is NOT CONFORMANT whatever the coverage; selecting nothing certifies nothing.
    #[test]
    fn verdicts_are_graded_by_the_coverage_core() {
        let cases = suite_cases();
        let full = passing(&cases, Profile::everything());
        assert_eq!(full.verdict, Verdict::Conformant, "{}", full.verdict_line());
        assert!(full.coverage.iter().all(|c| c.missing.is_empty()));
        assert!(!full.verdict_line().contains("core not covered"));

        // Narrowed to one-token pages in bf16: a few cases, all passing, none with a padding row.
        let one_token_pages = Profile {
            dtypes: [crate::case::DType::Bf16].into_iter().collect(),
            contiguous: false,
            page_sizes: crate::profile::PageSizes::List([1].into_iter().collect()),
            ..Profile::everything()
        };
        let narrow = passing(&cases, one_token_pages);
        assert_eq!(narrow.verdict, Verdict::Partial, "{}", narrow.verdict_line());
        let gqa = narrow.coverage.iter().find(|c| c.operation == "gqa.decode").unwrap();
        assert!(gqa.passed >= 1 && gqa.missing.contains(&"a padding row".to_string()), "{gqa:?}");
        assert!(
            !gqa.missing.iter().any(|m| m.starts_with("dtype") || m.contains("caches")),
            "declared axes are met: {gqa:?}"
        );
        assert!(narrow.verdict_line().starts_with("PARTIAL — k (suite"), "{}", narrow.verdict_line());
        assert!(
            narrow.verdict_line().contains("core not covered: gqla.decode.absorb: "),
            "{}",
            narrow.verdict_line()
        );
        assert!(narrow.markdown().contains("- verdict: **PARTIAL**"));
        assert!(narrow.junit().contains("name=\"core_not_covered.gqa.decode\""));
        // An operation the profile does not declare demands nothing.
        let absorb_only = Profile {
            operations: [Op::DecodeAbsorb].into_iter().collect(),
            ..Profile::everything()
        };
        assert_eq!(passing(&cases, absorb_only).verdict, Verdict::Conformant);

        let mut failed = passing(&cases, Profile::everything());
        failed.results[0].status = Status::RuntimeError { message: "x".into() };
        let failed = rejudged(failed);
        assert_eq!(failed.verdict, Verdict::NotConformant);
        let nothing = Profile {
            operations: Default::default(),
            ..Profile::everything()
        };
        assert_eq!(passing(&cases, nothing).verdict, Verdict::NothingCertified);
    }

    /// Precision decides with the cases: a family over its bound makes the certificate NOT
    /// CONFORMANT though every case passed, junit.xml fails that family's test, and a case that
    /// fails on a further draw fails the certificate too.
    #[test]
    fn an_imprecise_family_or_a_failed_further_draw_is_not_conformant() {
        use crate::definition::TensorName;
        use crate::tolerance::TensorCheck;
        let cases: Vec<Case> = suite_cases().into_iter().filter(|c| c.op() == Op::GqaDecode).collect();
        let profile = Profile {
            operations: [Op::GqaDecode].into_iter().collect(),
            ..Profile::everything()
        };
        let check = |tensor, rms_err: f64| TensorCheck::with_rms(tensor, rms_err, 1.0);
        // Every case passes its per-case checks; lse sits at 1.5x its RMS bound, out at 0.5x.
        let mut report = passing(&cases, profile);
        for r in &mut report.results {
            r.status = Status::Pass {
                checks: vec![check(TensorName::Out, 0.5), check(TensorName::Lse, 1.5)],
            };
        }
        let report = rejudged(report);
        assert_eq!(report.verdict, Verdict::NotConformant, "{}", report.verdict_line());
        assert!(
            report
                .verdict_line()
                .contains("; imprecise (RMS error over its bound): gqa.decode lse f32 1.50x, gqa.decode lse bf16 1.50x"),
            "{}",
            report.verdict_line()
        );
        assert!(report.precision.iter().all(|f| f.imprecise() == (f.tensor == TensorName::Lse)));
        let junit = report.junit();
        assert!(
            junit.contains("name=\"precision.gqa.decode.lse.bf16\"><failure type=\"IMPRECISE\""),
            "{junit}"
        );
        assert!(junit.contains("name=\"precision.gqa.decode.out.bf16\"/>"), "{junit}");
        assert!(report.markdown().contains("| gqa.decode | lse | bf16 |"));

        // Precise everywhere, but one further draw failed.
        let mut fine = passing(&cases, Profile::everything());
        for r in &mut fine.results {
            r.status = Status::Pass {
                checks: vec![check(TensorName::Out, 0.5), check(TensorName::Lse, 0.5)],
            };
        }
        let fine = rejudged(fine);
        assert_eq!(fine.verdict, Verdict::Conformant, "{}", fine.verdict_line());
        let mut failed_draw = fine.results[0].clone();
        failed_draw.id = cases[0].with_seed(12345).to_string();
        failed_draw.status = Status::RuntimeError { message: "boom".into() };
        let drawn = fine.with_precision_draws(vec![failed_draw]);
        assert_eq!(drawn.verdict, Verdict::NotConformant);
        assert!(
            drawn.verdict_line().contains("1 case(s) failed on further precision draws"),
            "{}",
            drawn.verdict_line()
        );
        assert!(drawn.markdown().contains("seed=12345` | RUNTIME_ERROR"), "{}", drawn.markdown());
    }

    #[test]
    fn seed_origins_say_who_chose_the_seed() {
        assert_eq!(SeedOrigin::of_run(0, true), SeedOrigin::Published);
        assert_eq!(SeedOrigin::of_run(5, true), SeedOrigin::GivenToThisRun);
        assert_eq!(SeedOrigin::of_run(5, false), SeedOrigin::DrawnByThisRun);
        assert_eq!(SeedOrigin::of_pack(5), SeedOrigin::ChosenByExporter);
        assert_eq!(SeedOrigin::of_pack(0), SeedOrigin::Published);
        // Only this run's own draw is called fresh.
        for o in [SeedOrigin::Published, SeedOrigin::GivenToThisRun, SeedOrigin::ChosenByExporter] {
            assert!(!o.text().contains("fresh"), "{o:?}");
        }
    }

    #[test]
    fn hostile_text_cannot_forge_markdown_or_break_xml() {
        let evil = "x\n- verdict: **CONFORMANT**\n<script>alert(1)</script>\u{1b}[31m|cell|\u{0}";
        let md = md_escape(evil);
        assert!(!md.contains('\n') && !md.contains('\u{1b}') && !md.contains('\u{0}'), "{md}");
        // Every markup character is escaped: none follows anything but a backslash.
        let chars: Vec<char> = md.chars().collect();
        for (i, c) in chars.iter().enumerate().filter(|(_, c)| MD_SPECIAL.contains(**c) && **c != '\\') {
            assert!(i > 0 && chars[i - 1] == '\\', "unescaped {c:?} at {i} in {md}");
        }
        assert!(md.contains("\\<script\\>") && md.contains("\\*\\*CONFORMANT"), "{md}");
        let xml = xml_escape(evil);
        assert!(!xml.contains('<') && !xml.contains('\u{1b}') && !xml.contains('\u{0}'), "{xml}");
        assert_eq!(plain("a\u{1b}[2Jb\r\nc"), "a[2Jbc");
    }
}
