//! Showing a run's events to a person: lines on stderr, and on a terminal a progress bar that
//! keeps moving while a step works.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::protocol::Event;

pub(crate) struct Console {
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
    quiet: bool,
    /// Without a terminal: when the current step started and when progress was last printed.
    plain: Mutex<Option<(Instant, Instant)>>,
}

/// Without a terminal, a progress line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

const COUNT_STYLE: &str = "      {spinner} {msg} {pos}/{len} [{elapsed}]";
const BYTES_STYLE: &str = "      {spinner} {msg} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} [{elapsed}]";

impl Console {
    /// `quiet` (with `--json`) prints nothing.
    pub fn new(quiet: bool) -> Console {
        Console {
            bar: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
            quiet,
            plain: Mutex::new(None),
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
            Event::StepStarted { .. } if !self.tty => {
                let now = Instant::now();
                *self.plain.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, now));
            }
            Event::StepStarted { step, .. } if self.tty && !self.quiet => {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template(COUNT_STYLE)
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b.set_message(step.clone());
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
            }
            Event::StepProgress {
                step,
                done,
                total,
                bytes_done,
                bytes_total,
                message,
                ..
            } => {
                if let Some(b) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
                    // Bytes when the step knows them (a copy), else items.
                    let (pos, len, style) = if *bytes_total > 0 {
                        (*bytes_done, *bytes_total, BYTES_STYLE)
                    } else {
                        (*done, *total, COUNT_STYLE)
                    };
                    if let Ok(s) = ProgressStyle::with_template(style) {
                        b.set_style(s);
                    }
                    b.set_length(len);
                    b.set_position(pos);
                    b.set_message(format!("{step}: {message}"));
                } else if !self.tty && !self.quiet {
                    self.plain_progress(step, *done, *total, *bytes_done, *bytes_total, message);
                }
            }
            _ => {}
        }
    }

    /// A progress line for a log (no terminal): what is done, the rate and what remains.
    fn plain_progress(
        &self,
        step: &str,
        done: u64,
        total: u64,
        bytes_done: u64,
        bytes_total: u64,
        message: &str,
    ) {
        let mut guard = self.plain.lock().unwrap_or_else(|p| p.into_inner());
        let Some((started, last)) = guard.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(*last) < PLAIN_EVERY {
            return;
        }
        *last = now;
        let secs = now.duration_since(*started).as_secs_f64().max(0.001);
        let line = if bytes_total > 0 {
            let rate = bytes_done as f64 / secs;
            let eta = if rate > 0.0 {
                format!(
                    ", about {:.0} s left",
                    (bytes_total.saturating_sub(bytes_done)) as f64 / rate
                )
            } else {
                String::new()
            };
            format!(
                "      {step}: {} of {} ({}/s{eta}), {done}/{total} {message}",
                crate::text::human_bytes(bytes_done),
                crate::text::human_bytes(bytes_total),
                crate::text::human_bytes(rate as u64)
            )
        } else {
            format!("      {step}: {done}/{total} {message}")
        };
        drop(guard);
        eprintln!("{line}");
    }
}
