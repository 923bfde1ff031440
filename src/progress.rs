//! Byte progress for long data passes: a bar with MB/s and ETA on a terminal, a plain line at
//! every tenth otherwise (logs, CI). Safe to advance from worker threads.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Show progress from now on (the binary's `prepare` and `train`; replays stay quiet).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    tenth: AtomicU64,
    start: Instant,
    bar: Option<ProgressBar>,
    plain: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Progress {
        let show = ENABLED.load(Ordering::Relaxed);
        let term = std::io::stderr().is_terminal();
        let bar = (show && term).then(|| {
            let pb = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            pb.set_style(style);
            pb.set_message(label.to_string());
            pb
        });
        Progress {
            label: label.to_string(),
            total,
            done: AtomicU64::new(0),
            tenth: AtomicU64::new(0),
            start: Instant::now(),
            bar,
            plain: show && !term,
        }
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if self.plain && self.total > 0 {
            let t = (done.min(self.total) * 10 / self.total).min(10);
            let prev = self.tenth.fetch_max(t, Ordering::Relaxed);
            if t > prev && t < 10 {
                self.line(done);
            }
        }
    }

    fn line(&self, done: u64) {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let mb = done as f64 / 1e6;
        let rate = mb / secs;
        let left = (self.total.saturating_sub(done)) as f64 / 1e6 / rate.max(1e-9);
        eprintln!(
            "{}: {:.0}% ({mb:.1} of {:.1} MB, {rate:.1} MB/s, eta {left:.0} s)",
            self.label,
            100.0 * done as f64 / self.total.max(1) as f64,
            self.total as f64 / 1e6
        );
    }

    /// Close the bar; a plain summary line with the rate.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.bar.is_some() || self.plain {
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            let mb = self.done.load(Ordering::Relaxed) as f64 / 1e6;
            eprintln!("{}: {mb:.1} MB in {secs:.1} s ({:.1} MB/s)", self.label, mb / secs);
        }
    }
}
