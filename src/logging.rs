//! Logging: to journald when running under systemd, to stderr otherwise.
//!
//! Step events carry the fields `RECOVERY_RUN`, `RECOVERY_STAGE` and `RECOVERY_STEP`, and run
//! starts and ends a fixed `MESSAGE_ID` (see [`crate::engine::RunMessage`]). In journald the
//! field names are upper-cased by the journald layer; on stderr they read `recovery_run=7`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// True when stderr is connected to the journal (systemd sets `JOURNAL_STREAM`) and journald's
/// socket exists.
pub(crate) fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
        && std::path::Path::new("/run/systemd/journal/socket").exists()
}

/// Install the global subscriber. `default_level` applies unless `RECOVERYD_LOG` says otherwise.
pub(crate) fn init(identifier: &str, default_level: &str) {
    let filter = EnvFilter::try_from_env("RECOVERYD_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},zbus=warn")));
    if under_journald()
        && let Ok(layer) = tracing_journald::layer()
    {
        let layer = layer
            .with_syslog_identifier(identifier.to_string())
            .with_field_prefix(None);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .without_time(),
        )
        .try_init();
}
