//! Printing: tables for people, JSON for programs, progress on stderr.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use serde::Serialize;

use super::Failure;

pub fn json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(value).map_err(|e| Failure::Refused(e.to_string()))?;
    println!("{s}");
    Ok(())
}

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `2026-11-22 14:05:00` UTC, from Unix nanoseconds.
pub fn time(unix_ns: u64) -> String {
    let name = strata::store::default_snapshot_name(unix_ns).to_string();
    // 2026-11-22T14-05-00Z → 2026-11-22 14:05:00
    let (date, clock) = name.split_once('T').unwrap_or((&name, ""));
    format!(
        "{date} {} UTC",
        clock.trim_end_matches('Z').replace('-', ":")
    )
}

/// Set by `--quiet`: no progress bars.
static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A progress bar on stderr (bytes, rate, time left), drawn only when
/// stderr is a terminal and `--quiet` was not given. Work the daemon does
/// reports through the control socket to the same bar.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        let shown = std::io::stderr().is_terminal() && !QUIET.load(Ordering::Relaxed);
        let bar = shown.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {percent:>3}%  {binary_bytes} of {binary_total_bytes}  \
                     {binary_bytes_per_sec}  {eta} left",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        Progress { bar }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Says on stderr that a change is done but giving space back stopped
/// short (`strata gc` finishes it).
pub fn unfinished(why: &Option<String>) {
    if let Some(why) = why {
        eprintln!(
            "strata: warning: done, but not all space could be given back yet ({why}); \
             `strata gc` finishes it"
        );
    }
}
