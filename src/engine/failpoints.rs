//! Failpoints: crash the process at a named point, to prove that resuming is correct.
//!
//! `RECOVERYD_FAILPOINTS=<step>:<point>[:stop][,...]` where `<point>` is
//! - `before`: after the journal records the step as started, before its side effect;
//! - `after`: after the side effect, before the journal records the step as done;
//! - `during@N`: at the N-th progress checkpoint inside the step (e.g. the N-th file restored).
//!
//! Hitting a failpoint sends SIGKILL to this process: no destructor, no flush, no unwinding,
//! exactly as a power cut or an OOM kill would end it. With `:stop` it sends SIGSTOP instead,
//! so that a test can change the world at that exact point (fill the disk, say) and then let
//! the process go on with SIGCONT.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

pub(crate) const ENV: &str = "RECOVERYD_FAILPOINTS";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Point {
    Before,
    After,
    During(u64),
}

/// What hitting a failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Kill,
    Stop,
}

#[derive(Debug, Default)]
pub(crate) struct Failpoints {
    points: Vec<(String, Point, Action)>,
    counters: Mutex<HashMap<String, u64>>,
}

impl Failpoints {
    pub(crate) fn parse(spec: &str) -> Result<Failpoints, String> {
        let mut points = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let usage =
                || format!("failpoint `{item}`: expected <step>:<before|after|during@N>[:stop]");
            let mut parts = item.split(':');
            let (Some(step), Some(point)) = (parts.next(), parts.next()) else {
                return Err(usage());
            };
            let action = match parts.next() {
                None => Action::Kill,
                Some("stop") => Action::Stop,
                Some(other) => return Err(format!("failpoint `{item}`: unknown action `{other}`")),
            };
            if parts.next().is_some() || step.is_empty() {
                return Err(usage());
            }
            let point = match point {
                "before" => Point::Before,
                "after" => Point::After,
                p => match p.strip_prefix("during@").map(str::parse::<u64>) {
                    Some(Ok(n)) if n > 0 => Point::During(n),
                    _ => return Err(format!("failpoint `{item}`: unknown point `{p}`")),
                },
            };
            points.push((step.to_string(), point, action));
        }
        Ok(Failpoints {
            points,
            counters: Mutex::default(),
        })
    }

    fn armed(&self, step: &str, point: &Point) -> Option<Action> {
        self.points
            .iter()
            .find(|(s, p, _)| s == step && p == point)
            .map(|(_, _, a)| *a)
    }

    fn has_during(&self, step: &str) -> bool {
        self.points
            .iter()
            .any(|(s, p, _)| s == step && matches!(p, Point::During(_)))
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
pub(crate) fn check_env() -> Result<(), String> {
    match std::env::var(ENV) {
        Ok(spec) => Failpoints::parse(&spec).map(|_| ()),
        Err(_) => Ok(()),
    }
}

fn fire(step: &str, point: &str, action: Action) {
    use rustix::process::{Signal, getpid, kill_process};
    match action {
        Action::Kill => {
            eprintln!("recoveryd: failpoint {step}:{point} hit, killing the process");
            tracing::error!(
                RECOVERY_STEP = step,
                "failpoint {step}:{point} hit, killing the process"
            );
            let _ = kill_process(getpid(), Signal::KILL);
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort()
        }
        Action::Stop => {
            eprintln!("recoveryd: failpoint {step}:{point} hit, stopping the process");
            let _ = kill_process(getpid(), Signal::STOP);
            // A SIGSTOP sent to the process is taken by one of its threads (usually the main
            // one), which then stops the others: this thread, back from kill(2), would run on
            // until that reaches it, and on a slow machine it journaled the step done before
            // it stopped (seen under emulation). Sleeping puts it in the kernel at once, where
            // the group stop catches it; after a SIGCONT it goes on a moment later.
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Fire here if `<step>:before` or `<step>:after` is armed.
pub(crate) fn hit(step: &str, point: Point) {
    let fp = global();
    if let Some(action) = fp.armed(step, &point) {
        let name = if point == Point::Before {
            "before"
        } else {
            "after"
        };
        fire(step, name, action);
    }
}

/// Count one progress checkpoint of a step; fire at `<step>:during@N`.
pub(crate) fn tick(step: &str) {
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
    if let Some(action) = fp.armed(step, &Point::During(n)) {
        fire(step, &format!("during@{n}"), action);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let fp = Failpoints::parse("a:before, b-c:after,d:during@3,e:during@1:stop").unwrap();
        assert_eq!(fp.armed("a", &Point::Before), Some(Action::Kill));
        assert_eq!(fp.armed("b-c", &Point::After), Some(Action::Kill));
        assert_eq!(fp.armed("d", &Point::During(3)), Some(Action::Kill));
        assert_eq!(fp.armed("e", &Point::During(1)), Some(Action::Stop));
        assert_eq!(fp.armed("a", &Point::After), None);
        assert!(Failpoints::parse("a:before:pause").is_err());
        assert!(Failpoints::parse("a:before:stop:x").is_err());
        assert!(Failpoints::parse("a").is_err());
        assert!(Failpoints::parse("a:sometime").is_err());
        assert!(Failpoints::parse("a:during@0").is_err());
    }
}
