//! Showing engine events to a person: a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Event, Observer};
use crate::journal::StepState;

pub struct Console {
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

    /// Print one line (a progress event from the daemon, say).
    pub fn say(&self, s: &str) {
        self.line(s)
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

impl Observer for Console {
    fn event(&self, event: &Event<'_>) {
        match *event {
            Event::RunStarted { run, kind, resumed } => self.line(&format!(
                "{kind} run {run} {}",
                if resumed { "resumes" } else { "starts" }
            )),
            Event::StageStarted { stage, .. } => self.line(&format!("== {stage}")),
            Event::StepStarted {
                step,
                attempt,
                index,
                total,
                ..
            } => {
                let again = if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                self.line(&format!("[{}/{}] {step}{again} ...", index + 1, total));
                if self.tty && !self.quiet {
                    let b = ProgressBar::new(0);
                    b.set_style(
                        ProgressStyle::with_template(
                            "      {spinner} {msg} {pos}/{len} [{elapsed}]",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_message(step.to_string());
                    *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
                }
            }
            Event::StepProgress {
                done,
                total,
                message,
                ..
            } => {
                if let Some(b) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
                    b.set_length(total);
                    b.set_position(done);
                    b.set_message(message.to_string());
                }
            }
            Event::StepFinished {
                step,
                state,
                detail,
                ..
            } => {
                self.finish();
                let mark = match state {
                    StepState::Done => "done",
                    StepState::Skipped => "skipped",
                    StepState::Failed => "FAILED",
                    StepState::AwaitingReboot => "awaiting reboot",
                    StepState::Interrupted => "interrupted",
                    StepState::Started => "started",
                };
                self.line(&format!("      {step}: {mark}: {detail}"));
            }
            Event::RunFinished {
                run,
                kind,
                state,
                message,
            } => {
                self.finish();
                self.line(&format!("{kind} run {run} {state}: {message}"));
            }
        }
    }
}
