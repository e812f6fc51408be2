//! The human form of a [`Report`]: one line per check, then the verdict.

use std::fmt::Write;

use super::Report;

pub fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|check| check.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for check in &report.checks {
        let _ = writeln!(
            out,
            "{:<width$}  {:<4}  {}",
            check.name,
            check.status.as_str(),
            check.detail
        );
    }
    let verdict = &report.verdict;
    out.push('\n');
    match (verdict.can_run, verdict.backend, verdict.accel) {
        (true, Some(backend), Some(accel)) => {
            let _ = writeln!(
                out,
                "verdict: Hull can run here with backend {backend} (accel {accel}): {}",
                verdict.reason
            );
        }
        (_, Some(backend), Some(accel)) => {
            let _ = writeln!(
                out,
                "verdict: Hull cannot run here; backend {backend} (accel {accel}) would be used: {}",
                verdict.reason
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "verdict: Hull cannot run here; no backend for {:?}",
                verdict.requested
            );
        }
    }
    for problem in &verdict.problems {
        let _ = writeln!(out, "  - {problem}");
    }
    out
}
