//! `strata gc`

use std::path::Path;

use strata::control::{Request, Response};
use strata::units::format_size;

use super::target::{unexpected, Target};
use super::CmdResult;

pub fn run(repo: &Path) -> CmdResult {
    let mut target = Target::open(repo)?;
    let report = match target.call(Request::Gc, &mut |_, _| {})? {
        Response::Gc(r) => r,
        r => return Err(unexpected(r)),
    };
    println!("gave back {}", format_size(report.freed_bytes));
    if report.waiting > 0 {
        println!(
            "{} deleted snapshot layer(s) are still open; run gc again once they are closed",
            report.waiting
        );
    }
    Ok(())
}
