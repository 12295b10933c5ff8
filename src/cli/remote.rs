//! Talking to the daemon: over D-Bus (the default) or over its Unix socket (`--socket`, what
//! the backup Job uses from its pod). Both stream the run's progress and end with its outcome.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zbus::{OwnedObjectPath, Variant};

use super::console::Console;
use super::exit;

#[zbus::proxy(
    interface = "org.recoveryd.Recovery1.Manager",
    default_service = "org.recoveryd.Recovery1",
    default_path = "/org/recoveryd/Recovery1"
)]
pub trait Recovery1 {
    fn start_backup(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn start_recovery(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn resume(&self) -> zbus::Result<OwnedObjectPath>;
    fn resume_at_boot(&self) -> zbus::Result<OwnedObjectPath>;
    fn restart(&self) -> zbus::Result<OwnedObjectPath>;
    fn cancel(&self) -> zbus::Result<()>;
    fn verify(&self, generation: &str) -> zbus::Result<(bool, Vec<String>)>;
    fn get_status(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn step_started(&self, run: OwnedObjectPath, stage: String, step: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn step_finished(
        &self,
        run: OwnedObjectPath,
        step: String,
        state: String,
        detail: String,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn run_finished(
        &self,
        run: OwnedObjectPath,
        success: bool,
        message: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.recoveryd.Recovery1.Run",
    default_service = "org.recoveryd.Recovery1"
)]
pub trait Run {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
}

/// A request to the daemon that starts (or continues) a run.
#[derive(Debug, Clone)]
pub enum Start {
    Backup,
    Recover {
        force: bool,
        allow_foreign: bool,
        step: bool,
        generation: Option<String>,
    },
    Resume {
        boot: bool,
    },
    Restart,
}

/// The prefix of the errors recoveryd itself replies with.
const OUR_ERRORS: &str = "org.recoveryd.Recovery1.Error.";

/// An error recoveryd replied with becomes a message and an exit code. Any other error (no
/// daemon on the bus, a failed activation, no reply) is returned, so that a caller that can
/// do without the daemon (the boot unit) does, and others say how to get on.
fn reply_error(e: zbus::Error) -> Result<u8> {
    let name = crate::host::bus::error_name(&e);
    if name.as_deref().is_some_and(|n| n.starts_with(OUR_ERRORS)) {
        eprintln!("recoveryctl: {}", dbus_message(&e));
        return Ok(exit::for_error_name(name.as_deref()));
    }
    bail!(
        "recoveryd does not answer on the system bus ({}): see `systemctl status recoveryd`, or use --offline",
        dbus_message(&e)
    )
}

fn dbus_message(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(m), _) => {
            format!(
                "{m} ({})",
                name.as_str().rsplit('.').next().unwrap_or(name.as_str())
            )
        }
        other => other.to_string(),
    }
}

pub async fn connect() -> Result<Recovery1Proxy<'static>> {
    let conn = zbus::Connection::system()
        .await
        .context("connecting to the system D-Bus (use --offline to run without the daemon)")?;
    Ok(Recovery1Proxy::new(&conn).await?)
}

/// Start a run through D-Bus; with `wait`, follow it to its end. Returns the exit code.
pub async fn dbus_start(start: Start, wait: bool, json: bool, console: &Console) -> Result<u8> {
    let proxy = connect().await?;
    // Subscribe before the call, so that a fast run's signals are not missed; one stream keeps
    // them in the order they were sent.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.recoveryd.Recovery1")
        .interface("org.recoveryd.Recovery1.Manager")
        .build()?;
    let mut signals =
        zbus::MessageStream::for_match_rule(rule, proxy.inner().connection(), None).await?;
    // The daemon stopping (a crash, a shutdown) ends the wait instead of leaving it forever.
    let mut owner = zbus::fdo::DBusProxy::new(proxy.inner().connection())
        .await?
        .receive_name_owner_changed_with_args(&[(0, "org.recoveryd.Recovery1")])
        .await?;
    let result = match &start {
        Start::Backup => proxy.start_backup(HashMap::new()).await,
        Start::Recover {
            force,
            allow_foreign,
            step,
            generation,
        } => {
            let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
            o.insert("force", Variant::from(*force));
            o.insert("allow_foreign", Variant::from(*allow_foreign));
            o.insert("step", Variant::from(*step));
            if let Some(g) = generation {
                o.insert("generation", Variant::from(g.as_str()));
            }
            proxy.start_recovery(o).await
        }
        Start::Resume { boot: true } => proxy.resume_at_boot().await,
        Start::Resume { boot: false } => proxy.resume().await,
        Start::Restart => proxy.restart().await,
    };
    let path = match result {
        Ok(p) => p,
        Err(e) => return reply_error(e),
    };
    if path.as_str() == "/" {
        if json {
            println!(
                "{}",
                serde_json::json!({"run": null, "message": "nothing to resume"})
            );
        } else {
            println!("nothing to resume");
        }
        return Ok(exit::OK);
    }
    let run_id = path
        .as_str()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if !wait {
        if json {
            println!(
                "{}",
                serde_json::json!({"run": run_id.parse::<i64>().ok(), "path": path.as_str()})
            );
        } else {
            println!("run {run_id} started ({})", path.as_str());
        }
        return Ok(exit::OK);
    }
    let message = loop {
        let msg = tokio::select! {
            msg = signals.next() => msg,
            change = owner.next() => match change {
                Some(c) if c.args().is_ok_and(|a| a.new_owner().is_some()) => continue,
                _ => None,
            },
        };
        let Some(msg) = msg else {
            bail!(
                "recoveryd stopped before run {run_id} ended; it continues the run when it starts again (see `recoveryctl status`)"
            );
        };
        let Ok(msg) = msg else { continue };
        let body = msg.body();
        match msg.header().member().map(|m| m.as_str()) {
            Some("StepStarted") => {
                if let Ok((run, stage, step)) =
                    body.deserialize::<(OwnedObjectPath, String, String)>()
                    && run == path
                {
                    console.say(&format!("  {stage} / {step} ..."));
                }
            }
            Some("StepFinished") => {
                if let Ok((run, step, state, detail)) =
                    body.deserialize::<(OwnedObjectPath, String, String, String)>()
                    && run == path
                {
                    console.say(&format!("      {step}: {state}: {detail}"));
                }
            }
            Some("RunFinished") => {
                if let Ok((run, _ok, message)) =
                    body.deserialize::<(OwnedObjectPath, bool, String)>()
                    && run == path
                {
                    break message;
                }
            }
            _ => {}
        }
    };
    let run = RunProxy::builder(proxy.inner().connection())
        .path(path.clone())
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let state = run.state().await.unwrap_or_default();
    let kind = run.kind().await.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"run": run_id.parse::<i64>().ok(), "kind": kind, "state": state,
                "phase": phase_of(&kind, &state), "message": message})
        );
    } else {
        console.say(&format!("{kind} run {run_id} {state}: {message}"));
    }
    Ok(exit::for_state_name(&state))
}

/// TALM's name for an outcome the daemon reported by name.
fn phase_of(kind: &str, state: &str) -> String {
    match (kind.parse(), state.parse()) {
        (Ok(kind), Ok(state)) => crate::status::phase(kind, state),
        _ => state.to_string(),
    }
}

pub async fn dbus_cancel() -> Result<u8> {
    match connect().await?.cancel().await {
        Ok(()) => {
            println!("cancel requested");
            Ok(exit::OK)
        }
        Err(e) => reply_error(e),
    }
}

pub async fn dbus_status() -> Result<serde_json::Value> {
    let s = connect()
        .await?
        .get_status()
        .await
        .map_err(|e| anyhow::anyhow!(dbus_message(&e)))?;
    Ok(serde_json::from_str(&s)?)
}

/// One request over the socket; prints events as they come; returns the final line.
pub async fn socket_request(
    path: &Path,
    request: serde_json::Value,
    json: bool,
    console: &Console,
) -> Result<serde_json::Value> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| format!("connecting to {}", path.display()))?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{request}\n").as_bytes()).await?;
    w.flush().await?;
    let mut lines = BufReader::new(r).lines();
    let mut last = None;
    while let Some(line) = lines.next_line().await? {
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("bad line from the daemon: {line}"))?;
        if v.get("event").is_some() {
            if json {
                println!("{line}");
            } else {
                console_event(console, &v);
            }
            continue;
        }
        last = Some(v);
    }
    last.context("the daemon closed the connection without a result")
}

fn console_event(console: &Console, v: &serde_json::Value) {
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    match v["event"].as_str() {
        Some("step_started") => console.say(&format!("  {} / {} ...", s("stage"), s("step"))),
        Some("step_finished") => console.say(&format!(
            "      {}: {}: {}",
            s("step"),
            s("state"),
            s("detail")
        )),
        Some("run_started") => console.say(&format!("{} run {} started", s("kind"), v["run"])),
        _ => {}
    }
}

/// Exit code for a socket result line.
pub fn socket_exit(result: &serde_json::Value) -> u8 {
    if let Some(err) = result.get("error") {
        return exit::for_error_name(err["name"].as_str());
    }
    match result.get("state").and_then(|s| s.as_str()) {
        Some(state) => exit::for_state_name(state),
        None => exit::OK,
    }
}
