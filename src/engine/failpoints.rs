//! Failpoints: crash the process at a named point, to prove that resuming is correct.
//!
//! `RECOVERYD_FAILPOINTS=<step>:<point>[,<step>:<point>...]` where `<point>` is
//! - `before`: after the journal records the step as started, before its side effect;
//! - `after`: after the side effect, before the journal records the step as done;
//! - `during@N`: at the N-th progress checkpoint inside the step (e.g. the N-th file restored).
//!
//! Hitting a failpoint sends SIGKILL to this process: no destructor, no flush, no unwinding,
//! exactly as a power cut or an OOM kill would end it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub const ENV: &str = "RECOVERYD_FAILPOINTS";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    Before,
    After,
    During(u64),
}

#[derive(Debug, Default)]
pub struct Failpoints {
    points: Vec<(String, Point)>,
    counters: Mutex<HashMap<String, u64>>,
}

impl Failpoints {
    pub fn parse(spec: &str) -> Result<Failpoints, String> {
        let mut points = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (step, point) = item.rsplit_once(':').ok_or_else(|| {
                format!("failpoint `{item}`: expected <step>:<before|after|during@N>")
            })?;
            let point = match point {
                "before" => Point::Before,
                "after" => Point::After,
                p => match p.strip_prefix("during@").map(str::parse::<u64>) {
                    Some(Ok(n)) if n > 0 => Point::During(n),
                    _ => return Err(format!("failpoint `{item}`: unknown point `{p}`")),
                },
            };
            points.push((step.to_string(), point));
        }
        Ok(Failpoints {
            points,
            counters: Mutex::default(),
        })
    }

    fn armed(&self, step: &str, point: &Point) -> bool {
        self.points.iter().any(|(s, p)| s == step && p == point)
    }

    fn has_during(&self, step: &str) -> bool {
        self.points
            .iter()
            .any(|(s, p)| s == step && matches!(p, Point::During(_)))
    }
}

fn global() -> &'static Failpoints {
    static FP: OnceLock<Failpoints> = OnceLock::new();
    FP.get_or_init(|| match std::env::var(ENV) {
        Ok(spec) => Failpoints::parse(&spec).unwrap_or_else(|e| {
            eprintln!("recoveryd: ignoring {ENV}: {e}");
            Failpoints::default()
        }),
        Err(_) => Failpoints::default(),
    })
}

/// Validate the environment's failpoints early, so a typo is not silently ignored.
pub fn check_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(spec) => Failpoints::parse(&spec).map(|_| ()),
        Err(_) => Ok(()),
    }
}

fn crash(step: &str, point: &str) -> ! {
    eprintln!("recoveryd: failpoint {step}:{point} hit, killing the process");
    tracing::error!(
        RECOVERY_STEP = step,
        "failpoint {step}:{point} hit, killing the process"
    );
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort()
}

/// Crash here if `<step>:before` or `<step>:after` is armed.
pub fn hit(step: &str, point: Point) {
    let fp = global();
    if fp.armed(step, &point) {
        crash(
            step,
            if point == Point::Before {
                "before"
            } else {
                "after"
            },
        );
    }
}

/// Count one progress checkpoint of a step; crash at `<step>:during@N`.
pub fn tick(step: &str) {
    let fp = global();
    if !fp.has_during(step) {
        return;
    }
    let n = {
        let mut c = fp.counters.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.entry(step.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if fp.armed(step, &Point::During(n)) {
        crash(step, &format!("during@{n}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let fp = Failpoints::parse("a:before, b-c:after,d:during@3").unwrap();
        assert!(fp.armed("a", &Point::Before));
        assert!(fp.armed("b-c", &Point::After));
        assert!(fp.armed("d", &Point::During(3)));
        assert!(!fp.armed("a", &Point::After));
        assert!(Failpoints::parse("a").is_err());
        assert!(Failpoints::parse("a:sometime").is_err());
        assert!(Failpoints::parse("a:during@0").is_err());
    }
}
