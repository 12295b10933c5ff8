//! Engine events, as the daemon passes them on: protocol events for the D-Bus signals and the
//! socket's clients, the live view for `Progress` and `GetStatus`, and sd_notify's STATUS.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::notify::Notifier;
use crate::engine::{Event, Observer, render};
use crate::protocol::{self, Live};

pub(crate) struct Broadcaster {
    pub tx: broadcast::Sender<protocol::Event>,
    pub notifier: Arc<Notifier>,
    pub live: Arc<Mutex<Live>>,
    /// For the metrics textfile, rewritten when a run ends.
    pub ops: crate::ops::Ops,
}

impl Observer for Broadcaster {
    fn event(&self, e: &Event<'_>) {
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            match *e {
                Event::RunStarted { run, kind, .. } => {
                    *live = Live {
                        run: Some(run),
                        kind: Some(kind),
                        ..Live::default()
                    }
                }
                Event::StageStarted { stage, .. } => live.stage = Some(stage.to_string()),
                Event::StepStarted {
                    step, index, total, ..
                } => {
                    live.step = Some(step.to_string());
                    live.steps_done = index;
                    live.steps_total = total;
                    (live.done, live.total, live.bytes_done, live.bytes_total) = (0, 0, 0, 0);
                }
                Event::StepProgress {
                    done,
                    total,
                    bytes_done,
                    bytes_total,
                    ..
                } => {
                    (live.done, live.total) = (done, total);
                    (live.bytes_done, live.bytes_total) = (bytes_done, bytes_total);
                }
                Event::StepFinished { index, total, .. } => {
                    live.steps_done = index + 1;
                    live.steps_total = total;
                }
                Event::RunFinished { .. } => {}
            }
        }
        if matches!(e, Event::RunFinished { .. }) {
            self.ops.write_metrics();
        }
        if let Some(status) = render::status_line(e) {
            self.notifier.status(&status);
        }
        let _ = self.tx.send(protocol::Event::from(e));
    }
}
