//! Printing: tables for people, JSON for programs, progress on stderr.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

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

/// A progress line on stderr, redrawn at most a few times a second, and only
/// when stderr is a terminal.
pub struct Progress {
    what: &'static str,
    enabled: bool,
    started: Instant,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str) -> Self {
        Progress {
            what,
            enabled: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// Redraws: percent, bytes, rate and time left.
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last = Instant::now();
        self.shown = true;
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let left = if rate > 0.0 {
            let s = (total.saturating_sub(done) as f64 / rate).round() as u64;
            format!("  {}:{:02} left", s / 60, s % 60)
        } else {
            String::new()
        };
        eprint!(
            "\r{} {pct:3}%  {} of {}  {}/s{left}   ",
            self.what,
            strata::units::format_size(done),
            strata::units::format_size(total),
            strata::units::format_size(rate as u64),
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprintln!();
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
