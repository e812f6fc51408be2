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
    let chosen = match (verdict.backend, verdict.accel) {
        (Some(backend), Some(accel)) => format!("backend {backend} (accel {accel})"),
        _ => "no backend".to_owned(),
    };
    out.push('\n');
    if verdict.can_run {
        let _ = writeln!(
            out,
            "verdict: Hull can run here with {chosen}: {}",
            verdict.reason
        );
    } else {
        let _ = writeln!(
            out,
            "verdict: Hull cannot run here ({chosen}, requested {}): {}",
            verdict.requested, verdict.reason
        );
        for problem in &verdict.problems {
            let _ = writeln!(out, "  - {problem}");
        }
    }
    out
}
