//! Rendering journal records for people (`--json` prints the records themselves).

use std::fmt::Write;

use crate::journal::{GenerationRecord, RunRecord, StepRecord};

pub fn run_line(r: &RunRecord) -> String {
    let mut s = format!(
        "run {:>4}  {:<8}  {:<15}  started {}",
        r.id, r.kind, r.state, r.started
    );
    if let Some(f) = &r.finished {
        let _ = write!(s, "  finished {f}");
    }
    if let Some(stage) = &r.stage {
        let _ = write!(s, "  stage {stage}");
    }
    s
}

pub fn run_detail(r: &RunRecord, steps: &[StepRecord]) -> String {
    let mut s = run_line(r);
    s.push('\n');
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  error: {e}");
    }
    if r.no_progress_boots > 0 {
        let _ = writeln!(s, "  boots without progress: {}", r.no_progress_boots);
    }
    let _ = writeln!(
        s,
        "  {:<22} {:<20} {:<15} {:>3}  {:<24} {:<24} {:<12} detail",
        "stage", "step", "state", "try", "started", "finished", "boot"
    );
    for st in steps {
        let boot: String = st.boot_id.chars().take(12).collect();
        let detail = st.detail.as_deref().unwrap_or("").replace('\n', " ");
        let detail: String = detail.chars().take(160).collect();
        let _ = writeln!(
            s,
            "  {:<22} {:<20} {:<15} {:>3}  {:<24} {:<24} {:<12} {}",
            st.stage,
            st.name,
            st.state.as_str(),
            st.attempt,
            st.started,
            st.finished.as_deref().unwrap_or("-"),
            boot,
            detail
        );
    }
    s
}

pub fn generation_line(g: &GenerationRecord) -> String {
    format!(
        "{}  committed {}  {} entries  {}  manifest {}",
        g.id,
        g.committed,
        g.entries,
        human_bytes(g.bytes as u64),
        &g.manifest_hash[..g.manifest_hash.len().min(16)]
    )
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
