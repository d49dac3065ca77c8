//! `strata diff`

use std::path::Path;

use serde::Serialize;
use strata::control::{Request, Response};
use strata::store::ImageRef;
use strata::units::format_size;

use super::output;
use super::target::{unexpected, Target};
use super::{CmdResult, Failure};

/// Arguments of `strata diff` (its help is on the command).
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
strata diff vm1@monday vm1@tuesday\n  \
strata diff vm1@monday vm1 --json            # what changed since monday, live\n  \
strata diff vm1@base                         # every range the snapshot holds")]
pub struct DiffArgs {
    /// FROM and TO: DISK@SNAP or DISK (the live disk); one image diffs against an empty disk
    #[arg(value_name = "IMAGE", num_args = 1..=2, required = true, value_parser = super::parse_image_ref)]
    images: Vec<ImageRef>,
    /// Print `[{"offset":…,"length":…}]` instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Range {
    offset: u64,
    length: u64,
}

pub fn run(repo: &Path, a: DiffArgs) -> CmdResult {
    let (from, to) = match a.images.as_slice() {
        [to] => (None, to),
        [from, to] => (Some(from), to),
        _ => return Err(Failure::Usage("give one or two images".into())),
    };
    let mut target = Target::open(repo)?;
    let req = Request::Diff {
        from: from.map(ToString::to_string),
        to: to.to_string(),
    };
    let (size, ranges) = match target.call(req, &mut |_, _| {})? {
        Response::Diff { size, ranges, .. } => (size, ranges),
        r => return Err(unexpected(r)),
    };
    if a.json {
        let out: Vec<Range> = ranges
            .iter()
            .map(|&(offset, length)| Range { offset, length })
            .collect();
        return output::json(&out);
    }
    let rows: Vec<Vec<String>> = ranges
        .iter()
        .map(|(o, l)| vec![o.to_string(), l.to_string()])
        .collect();
    output::table(&["OFFSET", "LENGTH"], &rows);
    let bytes: u64 = ranges.iter().map(|r| r.1).sum();
    eprintln!(
        "{} range(s), {} of {} {}",
        ranges.len(),
        format_size(bytes),
        format_size(size),
        if from.is_some() { "may differ" } else { "held" }
    );
    Ok(())
}
