//! What a run reports: one row per timed kernel, the table, and the measured-run file that
//! `plan --validate` reads.

use super::*;
use crate::launch::Variant;
use crate::timing::Timing;
use std::fmt::Write;

/// One measured point.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub geometry: &'static str,
    pub path: DecodePath,
    pub sq: usize,
    pub batch: usize,
    pub context: usize,
    /// Tokens per cache page (None: contiguous).
    pub page: Option<usize>,
    pub splits: usize,
    /// The attention kernel timed.
    pub variant: Variant,
    pub timing: Timing,
    pub work: Work,
    /// Spot check: the largest relative error of the checked output rows (NaN or infinite when
    /// the kernel wrote a non-finite value).
    pub check_err: f64,
}

impl Row {
    /// The measured point in one line: geometry, path, kernel, s_q, batch, context (and page).
    pub fn label(&self) -> String {
        format!(
            "{} {} {} s_q={} batch={} context={}{}",
            self.geometry,
            self.path.name(),
            self.variant.name(),
            self.sq,
            self.batch,
            self.context,
            self.page.map_or(String::new(), |p| format!(" page={p}"))
        )
    }
    /// The median time, ms.
    pub fn ms(&self) -> f64 {
        self.timing.median_ms
    }
    /// Whether the spot check passed.
    pub fn checked(&self) -> bool {
        self.check_err <= CHECK_TOLERANCE
    }
    pub fn gbps(&self) -> f64 {
        self.work.bytes / (self.ms() * 1e-3) / 1e9
    }
    pub fn tflops(&self) -> f64 {
        self.work.flops / (self.ms() * 1e-3) / 1e12
    }
}

/// The run in the planner's format, for `gqla plan --validate`: each (geometry, path, s_q, batch,
/// context) once, at the time of its fastest tensor-core kernel (of any kernel when none ran),
/// since a runtime serves each path with its best kernel.
pub fn measured_run(device: &str, grid: &Grid, rows: &[Row], ceilings: &Ceilings) -> crate::plan::MeasuredRun {
    use crate::plan::{MeasuredPoint, MeasuredRun, Step};
    let any_tc = rows.iter().any(|r| r.variant.tensor_cores());
    let mut best: Vec<&Row> = Vec::new();
    for r in rows.iter().filter(|r| r.variant.tensor_cores() || !any_tc) {
        let key = |x: &Row| (x.geometry, x.path, x.sq, x.batch, x.context);
        match best.iter_mut().find(|b| key(b) == key(r)) {
            Some(b) if r.ms() < b.ms() => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    let points = best
        .into_iter()
        .filter_map(|r| {
            let geo = grid.geometries.iter().find(|g| g.name == r.geometry)?;
            Some(MeasuredPoint {
                dims: geo.dims,
                path: r.path,
                step: Step {
                    sq: r.sq,
                    batch: r.batch,
                    context: r.context,
                },
                seconds: r.ms() * 1e-3,
            })
        })
        .collect();
    MeasuredRun {
        device: device.into(),
        copy_gbps: ceilings.copy_gbps,
        bf16_tflops: ceilings.bf16_tflops,
        points,
    }
}

/// The results as a markdown table, with the percentage of each measured ceiling.
pub fn table(rows: &[Row], ceilings: &Ceilings) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Ceilings measured in this run: copy {:.0} GB/s (read + write), bf16 matrix product {}.\n",
        ceilings.copy_gbps,
        ceilings
            .bf16_tflops
            .map_or("not measured (no cuBLAS)".to_string(), |t| format!("{t:.0} TFLOP/s"))
    );
    let _ = writeln!(
        s,
        "| geometry | path | kernel | s_q | batch | context | page | splits | time (µs) | p10–p90 (µs) | GB/s | % copy | TFLOP/s | % bf16 mma | FLOP/byte | check (rel. err) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1}–{:.1} | {:.0} | {:.1} | {:.2} | {} | {:.1} | {} {:.1e} |",
            r.geometry,
            r.path.name(),
            r.variant.name(),
            r.sq,
            r.batch,
            r.context,
            r.page.map_or("-".to_string(), |p| p.to_string()),
            r.splits,
            r.ms() * 1e3,
            r.timing.p10_ms * 1e3,
            r.timing.p90_ms * 1e3,
            r.gbps(),
            100.0 * r.gbps() / ceilings.copy_gbps,
            r.tflops(),
            ceilings
                .bf16_tflops
                .map_or("-".into(), |t| format!("{:.1}", 100.0 * r.tflops() / t)),
            r.work.flops / r.work.bytes,
            if r.checked() { "ok" } else { "FAILED" },
            r.check_err,
        );
    }
    s
}
