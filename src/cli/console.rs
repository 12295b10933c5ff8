//! Showing a run's events to a person: lines on stderr, and on a terminal a progress bar that
//! keeps moving while a step works.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::protocol::Event;

pub(crate) struct Console {
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
    quiet: bool,
}

impl Console {
    /// `quiet` (with `--json`) prints nothing.
    pub fn new(quiet: bool) -> Console {
        Console {
            bar: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    fn line(&self, s: &str) {
        if self.quiet {
            return;
        }
        match &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }

    /// Show one event.
    pub(crate) fn event(&self, e: &Event) {
        if matches!(e, Event::StepFinished { .. } | Event::RunFinished { .. }) {
            self.finish();
        }
        if let Some(l) = e.line() {
            self.line(&l);
        }
        match e {
            Event::StepStarted { step, .. } if self.tty && !self.quiet => {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template("      {spinner} {msg} {pos}/{len} [{elapsed}]")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_message(step.clone());
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
            }
            Event::StepProgress {
                done,
                total,
                message,
                ..
            } => {
                if let Some(b) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
                    b.set_length(*total);
                    b.set_position(*done);
                    b.set_message(message.clone());
                }
            }
            _ => {}
        }
    }
}
