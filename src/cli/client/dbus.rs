//! The daemon on the system bus: the typed methods of `org.recoveryd.Recovery1.Manager`, and
//! the run followed through its `Event` signals (the protocol's events).

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use futures_util::StreamExt;
use zbus::{OwnedObjectPath, Variant};

use super::{Client, OnEvent};
use crate::journal::RunKind;
use crate::protocol::{self, ApiError, Doc, Reply, Request, Status};

#[zbus::proxy(
    interface = "org.recoveryd.Recovery1.Manager",
    default_service = "org.recoveryd.Recovery1",
    default_path = "/org/recoveryd/Recovery1"
)]
trait Recovery1 {
    fn start_backup(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn start_recovery(&self, options: HashMap<&str, Variant<'_>>) -> zbus::Result<OwnedObjectPath>;
    fn resume(&self) -> zbus::Result<OwnedObjectPath>;
    fn resume_at_boot(&self) -> zbus::Result<OwnedObjectPath>;
    fn restart(&self) -> zbus::Result<OwnedObjectPath>;
    fn cancel(&self) -> zbus::Result<String>;
    fn get_status(&self) -> zbus::Result<String>;
}

/// The prefix of the errors recoveryd itself replies with.
const OUR_ERRORS: &str = "org.recoveryd.Recovery1.Error.";

/// An error recoveryd replied with is its answer; any other (no daemon on the bus, a failed
/// activation, no reply) is a failure to reach it, so that a caller that can do without the
/// daemon (the boot unit) does, and others say how to get on.
fn answer(e: zbus::Error) -> Result<Reply> {
    if let zbus::Error::MethodError(name, message, _) = &e
        && name.as_str().starts_with(OUR_ERRORS)
    {
        return Ok(Reply::Error(ApiError::from_name(
            name.as_str(),
            message.clone().unwrap_or_default(),
        )));
    }
    bail!(
        "recoveryd does not answer on the system bus ({e}): see `systemctl status recoveryd`, or use --offline"
    )
}

pub(crate) struct Dbus;

#[async_trait(?Send)]
impl Client for Dbus {
    async fn request(&self, request: Request, events: &OnEvent<'_>) -> Result<Reply> {
        let conn = zbus::Connection::system()
            .await
            .context("connecting to the system D-Bus (use --offline to run without the daemon)")?;
        let proxy = Recovery1Proxy::new(&conn).await?;
        match &request {
            Request::Status {} => {
                return match proxy.get_status().await {
                    Ok(s) => {
                        let doc: Doc<Status> =
                            serde_json::from_str(&s).context("reading the daemon's status")?;
                        Ok(Reply::Status(Box::new(doc.body)))
                    }
                    Err(e) => answer(e),
                };
            }
            Request::Cancel {} => {
                return match proxy.cancel().await {
                    Ok(s) => Ok(serde_json::from_str::<Doc<Reply>>(&s)
                        .context("reading the daemon's reply")?
                        .body),
                    Err(e) => answer(e),
                };
            }
            _ => {}
        }
        // Subscribe before the call, so that a fast run's events are not missed; the daemon
        // stopping (a crash, a shutdown) ends the wait instead of leaving it forever.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.recoveryd.Recovery1")
            .interface("org.recoveryd.Recovery1.Manager")
            .member("Event")
            .build()?;
        let mut signals = zbus::MessageStream::for_match_rule(rule, &conn, None).await?;
        let mut owner = zbus::fdo::DBusProxy::new(&conn)
            .await?
            .receive_name_owner_changed_with_args(&[(0, "org.recoveryd.Recovery1")])
            .await?;
        let (result, kind) = match &request {
            Request::Backup { .. } => (proxy.start_backup(HashMap::new()).await, RunKind::Backup),
            Request::Recover { .. } => {
                let r = request.recover_options().unwrap_or_default();
                let mut o: HashMap<&str, Variant<'_>> = HashMap::new();
                o.insert("force", Variant::from(r.force));
                o.insert("allow_foreign", Variant::from(r.allow_foreign));
                o.insert("step", Variant::from(r.step));
                if let Some(g) = &r.generation {
                    o.insert("generation", Variant::from(g.clone()));
                }
                (proxy.start_recovery(o).await, RunKind::Recovery)
            }
            Request::Resume { boot: true, .. } => (proxy.resume_at_boot().await, RunKind::Recovery),
            Request::Resume { .. } => (proxy.resume().await, RunKind::Recovery),
            Request::Restart { .. } => (proxy.restart().await, RunKind::Recovery),
            Request::Status {} | Request::Cancel {} => unreachable!("answered above"),
        };
        let path = match result {
            Ok(p) => p,
            Err(e) => return answer(e),
        };
        if path.as_str() == "/" {
            return Ok(Reply::NothingToResume {
                message: "nothing to resume".into(),
            });
        }
        let run: i64 = path
            .as_str()
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the daemon answered a strange run path {path}"))?;
        if !request.waits() {
            return Ok(Reply::Started { run, kind });
        }
        loop {
            let msg = tokio::select! {
                msg = signals.next() => msg,
                change = owner.next() => match change {
                    Some(c) if c.args().is_ok_and(|a| a.new_owner().is_some()) => continue,
                    _ => None,
                },
            };
            let Some(msg) = msg else {
                bail!(
                    "recoveryd stopped before run {run} ended; it continues the run when it starts again (see `recoveryctl status`)"
                );
            };
            let Ok(msg) = msg else { continue };
            let Ok(text) = msg.body().deserialize::<String>() else {
                continue;
            };
            let Ok(protocol::Line::Event(ev)) = protocol::read_line(&text) else {
                continue;
            };
            if ev.run() != Some(run) {
                continue;
            }
            events(&ev);
            if let Some(outcome) = ev.outcome() {
                return Ok(Reply::Finished(outcome));
            }
        }
    }
}
