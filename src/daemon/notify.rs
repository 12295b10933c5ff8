//! sd_notify: READY, STATUS, WATCHDOG, STOPPING to the service manager.
//!
//! Written by hand (a few lines) rather than with the `sd-notify` crate because that crate
//! (0.5.0: `UnixDatagram::connect(path)`) cannot send to an abstract-namespace
//! `NOTIFY_SOCKET` (`@name`), which systemd-nspawn and the tests use; the protocol is one
//! datagram of `KEY=VALUE` lines, sent without blocking.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub(crate) struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` (absent: every call does nothing).
    pub(crate) fn from_env() -> Notifier {
        let addr = std::env::var("NOTIFY_SOCKET").ok().and_then(|s| {
            if let Some(name) = s.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes()).ok()
            } else if s.starts_with('/') {
                SocketAddr::from_pathname(&s).ok()
            } else {
                None
            }
        });
        Notifier { addr }
    }

    /// Send one notification; failures are logged, never fatal. The send never blocks: a
    /// manager that does not read its socket must not stall a recovery.
    pub(crate) fn send(&self, state: &str) {
        let Some(addr) = &self.addr else { return };
        let r = UnixDatagram::unbound().and_then(|s| {
            s.set_nonblocking(true)?;
            s.send_to_addr(state.as_bytes(), addr)
        });
        if let Err(e) = r {
            tracing::debug!("sd_notify failed: {e}");
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

fn one_line(s: &str) -> String {
    let l: String = s
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    l
}

/// The watchdog interval systemd expects (`WATCHDOG_USEC`, if meant for this process).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}
