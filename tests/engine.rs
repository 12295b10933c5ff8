//! The step engine: crash matrix, reboot barrier, boot-loop breaker, busy lock, journal errors.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use common::{Node, example, run, tree_contents};
use recoveryd::config::{Config, ConfigSource};
use recoveryd::engine::{
    Engine, EngineError, Event, Observer, Outcome, Plan, RunOptions, Step, StepContext,
    observer::Silent,
};
use recoveryd::journal::{Journal, JournalError, RunKind, RunState, StepState};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const PROBE_STEPS: [&str; 7] = [
    "make-dir",
    "write-seed",
    "derive",
    "rename",
    "many",
    "remove-seed",
    "summary",
];

fn probe(node: &Node, cmd: &str, failpoints: Option<&str>, barrier: bool) -> (i32, String, String) {
    let mut c = Command::new(example("engine-probe", true));
    c.arg(&node.config)
        .arg(cmd)
        .env_remove("RECOVERYD_FAILPOINTS");
    if let Some(fp) = failpoints {
        c.env("RECOVERYD_FAILPOINTS", fp);
    }
    if barrier {
        c.env("PROBE_BARRIER", "1");
    }
    run(&mut c)
}

/// The journal as the tests compare it: the run's state and each step's final state.
fn journal_summary(node: &Node) -> (RunState, Vec<(String, StepState)>) {
    let j = Journal::open_existing(&node.journal_path()).unwrap();
    let r = j.latest_run(RunKind::Recovery).unwrap().unwrap();
    let mut last = Vec::new();
    for name in PROBE_STEPS {
        let a = j.last_attempt(r.id, name).unwrap().unwrap();
        last.push((name.to_string(), a.state));
    }
    (r.state, last)
}

#[test]
fn crash_matrix_resumes_to_the_same_end_state() {
    let reference = Node::new("");
    let (code, out, err) = probe(&reference, "start", None, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
    let want_files = tree_contents(&reference.path("/srv/probe"));
    let want_journal = journal_summary(&reference);
    assert_eq!(want_journal.0, RunState::Succeeded);

    let mut points: Vec<String> = Vec::new();
    for step in PROBE_STEPS {
        points.push(format!("{step}:before"));
        points.push(format!("{step}:after"));
    }
    points.push("many:during@3".into());

    for fp in &points {
        let node = Node::new("");
        let (code, out, err) = probe(&node, "start", Some(fp), false);
        assert_eq!(code, -9, "{fp}: expected SIGKILL, got {code}: {out}{err}");
        let (code, out, err) = probe(&node, "resume", None, false);
        assert_eq!(code, 0, "{fp}: resume failed: {out}{err}");
        assert_eq!(
            tree_contents(&node.path("/srv/probe")),
            want_files,
            "{fp}: files differ"
        );
        assert_eq!(
            journal_summary(&node),
            want_journal,
            "{fp}: journal differs"
        );
        // The crash is on record: the killed attempt is marked interrupted, the next one done.
        let j = Journal::open_existing(&node.journal_path()).unwrap();
        let steps = j.steps(1).unwrap();
        let step = fp.split(':').next().unwrap();
        let attempts: Vec<_> = steps.iter().filter(|s| s.name == step).collect();
        assert_eq!(attempts.len(), 2, "{fp}: {attempts:?}");
        assert_eq!(attempts[0].state, StepState::Interrupted, "{fp}");
        assert_eq!(attempts[1].state, StepState::Done, "{fp}");
    }
    println!(
        "crash matrix: {} crash points covered, each resumed to the reference end state",
        points.len()
    );
}

#[test]
fn reboot_barrier_is_done_only_after_the_boot_id_changes() {
    let node = Node::new("");
    let (code, out, err) = probe(&node, "start", None, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("awaiting_reboot"), "{out}");
    assert_eq!(
        std::fs::read_to_string(node.path("/srv/probe/reboots")).unwrap(),
        "r"
    );
    assert!(
        !node.path("/srv/probe/summary").exists(),
        "nothing after the barrier ran"
    );

    // Resumed in the same boot: the reboot is requested again, nothing after it runs.
    let (code, out, _) = probe(&node, "resume", None, true);
    assert_eq!(code, 0);
    assert!(out.contains("awaiting_reboot"), "{out}");
    assert_eq!(
        std::fs::read_to_string(node.path("/srv/probe/reboots")).unwrap(),
        "rr"
    );
    assert!(!node.path("/srv/probe/summary").exists());

    node.set_boot_id("boot-2");
    let (code, out, err) = probe(&node, "boot-resume", None, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
    assert_eq!(
        std::fs::read_to_string(node.path("/srv/probe/reboots")).unwrap(),
        "rr",
        "no third reboot"
    );
    let j = Journal::open_existing(&node.journal_path()).unwrap();
    let steps = j.steps(1).unwrap();
    let reboot = steps.iter().rev().find(|s| s.name == "reboot").unwrap();
    assert_eq!(reboot.state, StepState::Done);
    assert_eq!(
        reboot.detail.as_deref(),
        Some("rebooted: boot boot-1 -> boot-2")
    );
    let boots: std::collections::BTreeSet<_> = steps.iter().map(|s| s.boot_id.as_str()).collect();
    assert_eq!(boots.len(), 2, "steps ran in two boots: {boots:?}");
}

#[test]
fn a_crash_right_after_the_reboot_request_still_counts_the_reboot() {
    let node = Node::new("");
    let (code, ..) = probe(&node, "start", Some("reboot:after"), true);
    assert_eq!(code, -9);
    node.set_boot_id("boot-2");
    let (code, out, err) = probe(&node, "boot-resume", None, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
    assert_eq!(
        std::fs::read_to_string(node.path("/srv/probe/reboots")).unwrap(),
        "r"
    );
}

#[test]
fn boot_loop_breaker_stops_after_n_resumes_without_progress() {
    let node = Node::new("[recovery]\nboot_attempts = 3\n");
    let (code, ..) = probe(&node, "start", Some("many:before"), false);
    assert_eq!(code, -9);
    for boot in 2..=4 {
        node.set_boot_id(&format!("boot-{boot}"));
        let (code, out, err) = probe(&node, "boot-resume", Some("many:before"), false);
        assert_eq!(code, -9, "boot {boot}: {out}{err}");
    }
    node.set_boot_id("boot-5");
    let (code, out, err) = probe(&node, "boot-resume", Some("many:before"), false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"failed\"") && out.contains("boot-loop breaker"),
        "{out}"
    );
    assert!(
        out.contains("recoveryctl resume"),
        "the message tells the operator what to do: {out}"
    );
    let j = Journal::open_existing(&node.journal_path()).unwrap();
    let r = j.run(1).unwrap().unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.unwrap().contains("3 automatic resumes"));

    // An operator's resume resets the breaker and finishes the run.
    let (code, out, err) = probe(&node, "resume", None, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"succeeded\""), "{out}");
}

#[test]
fn the_breaker_counts_boots_not_resume_attempts() {
    let node = Node::new("[recovery]\nboot_attempts = 2\n");
    let (code, ..) = probe(&node, "start", Some("many:before"), false);
    assert_eq!(code, -9);
    node.set_boot_id("boot-2");
    // The daemon and the boot unit may both resume in one boot: that is one boot.
    for _ in 0..3 {
        let (code, out, err) = probe(&node, "boot-resume", Some("many:before"), false);
        assert_eq!(code, -9, "{out}{err}");
    }
    let j = Journal::open_existing(&node.journal_path()).unwrap();
    assert_eq!(j.run(1).unwrap().unwrap().no_progress_boots, 1);
    drop(j);
    node.set_boot_id("boot-3");
    let (code, ..) = probe(&node, "boot-resume", Some("many:before"), false);
    assert_eq!(code, -9);
    node.set_boot_id("boot-4");
    let (code, out, _) = probe(&node, "boot-resume", Some("many:before"), false);
    assert_eq!(code, 0);
    assert!(out.contains("boot-loop breaker"), "{out}");
}

#[test]
fn progress_resets_the_breaker() {
    let node = Node::new("[recovery]\nboot_attempts = 2\n");
    // Each boot gets one step further before crashing: never stopped by the breaker.
    let (code, ..) = probe(&node, "start", Some("write-seed:before"), false);
    assert_eq!(code, -9);
    for (boot, fp) in [
        "derive:before",
        "rename:before",
        "many:before",
        "remove-seed:before",
    ]
    .iter()
    .enumerate()
    {
        node.set_boot_id(&format!("boot-{}", boot + 2));
        let (code, ..) = probe(&node, "boot-resume", Some(fp), false);
        assert_eq!(code, -9, "{fp}");
    }
    node.set_boot_id("boot-9");
    let (code, out, _) = probe(&node, "boot-resume", None, false);
    assert_eq!(code, 0);
    assert!(out.contains("\"succeeded\""), "{out}");
}

#[test]
fn step_mode_stops_between_stages() {
    let node = Node::new("");
    let (code, out, _) = probe(&node, "start-step", None, false);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"paused\"") && out.contains("stage one"),
        "{out}"
    );
    assert!(
        node.path("/srv/probe/out/seed").exists() && !node.path("/srv/probe/out/derived").exists()
    );
    let (code, out, _) = probe(&node, "resume", None, false);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"paused\"") && out.contains("stage two"),
        "{out}"
    );
    assert!(
        node.path("/srv/probe/out/derived").exists() && !node.path("/srv/probe/out/n0").exists()
    );
}

// ---- in-process tests -------------------------------------------------------------------

struct Fn_<F>(&'static str, F);

#[async_trait]
impl<F> Step for Fn_<F>
where
    F: Fn() -> Result<Outcome> + Send + Sync,
{
    fn name(&self) -> &'static str {
        self.0
    }
    fn stage(&self) -> &'static str {
        "test"
    }
    fn describe(&self) -> String {
        self.0.into()
    }
    async fn run(&self, _: &StepContext) -> Result<Outcome> {
        (self.1)()
    }
}

/// A step that works until it is cancelled (or timed out), and says when it has started: the
/// test's gate, instead of a guess at how long to wait.
struct UntilCancelled(&'static str, Arc<Notify>);

#[async_trait]
impl Step for UntilCancelled {
    fn name(&self) -> &'static str {
        self.0
    }
    fn stage(&self) -> &'static str {
        "test"
    }
    fn describe(&self) -> String {
        "works until cancelled".into()
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        self.1.notify_one();
        cx.cancel.cancelled().await;
        anyhow::bail!("noticed cancellation")
    }
}

/// Tells the test when an attempt of a step has failed (and is on record).
struct OnFailure(Arc<Notify>);

impl Observer for OnFailure {
    fn event(&self, e: &Event<'_>) {
        if let Event::StepFinished {
            state: StepState::Failed,
            ..
        } = e
        {
            self.0.notify_one();
        }
    }
}

fn engine(node: &Node) -> Engine {
    engine_with(node, Arc::new(Silent))
}

fn engine_with(node: &Node, observer: Arc<dyn Observer>) -> Engine {
    let cfg = Arc::new(Config::load(&ConfigSource::File(node.config.clone())).unwrap());
    let journal = Arc::new(Journal::open(&node.journal_path()).unwrap());
    Engine::new(cfg, journal, observer).unwrap()
}

#[tokio::test]
async fn a_second_run_while_one_holds_the_lock_is_busy_and_named() {
    let node = Node::new("");
    let e = engine(&node);
    let plan = Plan::new(RunKind::Recovery).step(Fn_("a", || Ok(Outcome::Done(String::new()))));
    let first = e.prepare_new(plan.clone(), RunOptions::default()).unwrap();
    let err = e
        .prepare_new(plan.clone(), RunOptions::default())
        .err()
        .unwrap();
    let busy = err.downcast_ref::<EngineError>().expect("typed error");
    assert!(matches!(busy, EngineError::Busy(_)));
    assert!(
        err.to_string().contains("recovery run 1 is in progress"),
        "{err}"
    );
    // Another process is refused too.
    let (code, _, stderr) = probe(&node, "start", None, false);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("busy") && stderr.contains("run 1"),
        "{stderr}"
    );
    let report = e.execute(first, CancellationToken::new()).await.unwrap();
    assert_eq!(report.state, RunState::Succeeded);
    // The lock is released with the run.
    let second = e.prepare_new(plan, RunOptions::default()).unwrap();
    assert_eq!(second.run, 2);
}

#[tokio::test]
async fn timeouts_and_retries_come_from_the_config() {
    let node = Node::new(
        "[engine]\nretry_delay = 0\n[steps.flaky]\nretries = 2\n[steps.slow]\ntimeout = 1\n",
    );
    let e = engine(&node);
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let plan = Plan::new(RunKind::Recovery).step(Fn_("flaky", move || {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            anyhow::bail!("not yet")
        }
        Ok(Outcome::Done("third time".into()))
    }));
    let r = e
        .execute(
            e.prepare_new(plan, RunOptions::default()).unwrap(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Succeeded, "{}", r.message);
    let attempts = e.journal.steps(r.run).unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.state).collect::<Vec<_>>(),
        [StepState::Failed, StepState::Failed, StepState::Done]
    );
    assert_eq!(attempts[0].detail.as_deref(), Some("not yet"));

    let plan = Plan::new(RunKind::Recovery).step(UntilCancelled("slow", Arc::new(Notify::new())));
    let started = std::time::Instant::now();
    let r = e
        .execute(
            e.prepare_new(plan, RunOptions::default()).unwrap(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(
        r.message.contains("step slow failed: timed out after 1s"),
        "{}",
        r.message
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn a_shutdown_during_a_retry_delay_stops_without_another_attempt() {
    let node = Node::new("[engine]\nretry_delay = \"10m\"\n[steps.flaky]\nretries = 3\n");
    let shutdown = CancellationToken::new();
    let failed = Arc::new(Notify::new());
    let e = engine_with(&node, Arc::new(OnFailure(failed.clone()))).with_shutdown(shutdown.clone());
    let plan = Plan::new(RunKind::Recovery).step(Fn_("flaky", || anyhow::bail!("not yet")));
    let prepared = e.prepare_new(plan, RunOptions::default()).unwrap();
    let stop = shutdown.clone();
    // The shutdown comes once the first attempt failed: during the ten-minute delay.
    tokio::spawn(async move {
        failed.notified().await;
        stop.cancel();
    });
    let started = std::time::Instant::now();
    let r = e.execute(prepared, CancellationToken::new()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited out the delay"
    );
    assert_eq!(
        r.state,
        RunState::Running,
        "left open for the next start: {}",
        r.message
    );
    let attempts = e.journal.steps(r.run).unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "no attempt after the shutdown: {attempts:?}"
    );
}

#[tokio::test]
async fn a_panicking_step_fails_the_run_with_the_message() {
    let node = Node::new("");
    let e = engine(&node);
    let plan = Plan::new(RunKind::Recovery).step(Fn_("boom", || panic!("kaboom")));
    let r = e
        .execute(
            e.prepare_new(plan, RunOptions::default()).unwrap(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Failed);
    assert!(r.message.contains("panicked: kaboom"), "{}", r.message);
}

#[tokio::test]
async fn cancelling_a_run_stops_the_running_step() {
    let node = Node::new("");
    let e = engine(&node);
    let started = Arc::new(Notify::new());
    let plan = Plan::new(RunKind::Recovery).step(UntilCancelled("slow", started.clone()));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        started.notified().await;
        c2.cancel();
    });
    let r = e
        .execute(e.prepare_new(plan, RunOptions::default()).unwrap(), cancel)
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Cancelled);
}

#[test]
fn a_corrupted_journal_is_a_clear_error_and_is_left_alone() {
    let node = Node::new("");
    let p = node.journal_path();
    let garbage = b"this is not an SQLite database, it is a shopping list\n".repeat(100);
    std::fs::write(&p, &garbage).unwrap();
    let err = Journal::open(&p).unwrap_err();
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
    assert!(
        err.to_string().contains("corrupted") && err.to_string().contains("journal.db"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&p).unwrap(),
        garbage,
        "the file was not modified"
    );

    // A real journal with a damaged page.
    let node = Node::new("");
    let p = node.journal_path();
    {
        let j = Journal::open(&p).unwrap();
        for _ in 0..200 {
            j.create_run(
                RunKind::Backup,
                &[("s".into(), "x".repeat(200))],
                &serde_json::json!({}),
                "b",
            )
            .unwrap();
        }
    }
    let mut bytes = std::fs::read(&p).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 4096] {
        *b = 0x5a;
    }
    std::fs::write(&p, &bytes).unwrap();
    let _ = std::fs::remove_file(p.with_extension("db-wal"));
    let err = Journal::open(&p).unwrap_err();
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
}

#[test]
fn a_journal_from_a_newer_recoveryd_is_refused() {
    let node = Node::new("");
    let p = node.journal_path();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
        .unwrap();
    drop(c);
    let err = Journal::open(&p).unwrap_err();
    assert!(
        matches!(err, JournalError::TooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn a_version_1_journal_is_migrated_and_keeps_its_runs() {
    let node = Node::new("");
    let p = node.journal_path();
    let c = rusqlite::Connection::open(&p).unwrap();
    c.execute_batch(include_str!("fixtures/journal-v1.sql"))
        .unwrap();
    drop(c);
    let j = Journal::open(&p).unwrap();
    assert_eq!(
        j.schema_version().unwrap(),
        recoveryd::journal::schema::CURRENT
    );
    let r = j.run(2).unwrap().unwrap();
    assert_eq!(r.state, RunState::AwaitingReboot);
    assert_eq!(r.plan.len(), 3);
    assert_eq!(
        j.var(2, "generation").unwrap().as_deref(),
        Some("g-20261001T100000Z")
    );
    assert_eq!(j.steps(2).unwrap().len(), 2);
    assert!(
        j.generations().unwrap().is_empty(),
        "the v2 table exists and is empty"
    );
}

#[test]
fn a_failpoint_typo_is_reported() {
    let node = Node::new("");
    let (code, _, err) = probe(&node, "start", Some("make-dir:sometimes"), false);
    // The probe does not validate; the engine ignores a bad spec with a message.
    assert_eq!(code, 0);
    assert!(err.contains("ignoring RECOVERYD_FAILPOINTS"), "{err}");
}
