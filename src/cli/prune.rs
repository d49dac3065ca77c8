//! `strata prune DISK --keep-…`

use std::path::Path;

use clap::Args;
use strata::control::{Request, Response};
use strata::store::{DiskName, PruneReport, Retention};
use strata::units::format_size;

use super::output;
use super::target::{unexpected, Target};
use super::{parse_disk_name, CmdResult, Failure};

#[derive(Args)]
#[command(
    after_help = "A snapshot is kept when any rule keeps it; give at least one rule (prune \
never deletes every snapshot). Periods are UTC; weeks run Monday to Sunday.\n\n\
Examples:\n  \
strata prune vm1 --keep-last 3 --keep-daily 7 --keep-weekly 4 --dry-run\n  \
strata prune vm1 --keep-hourly 24 --keep-monthly 12\n  \
strata prune --all --keep-daily 7 --keep-weekly 4   # every disk"
)]
pub struct PruneArgs {
    /// The disk whose snapshots to prune
    #[arg(value_parser = parse_disk_name, required_unless_present = "all")]
    disk: Option<DiskName>,
    /// Prune every disk with the same rules
    #[arg(long, conflicts_with = "disk")]
    all: bool,
    /// Keep the newest N snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// Keep the newest snapshot of each of the last N weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Only show what would be deleted, and what that would give back
    #[arg(long)]
    dry_run: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, a: PruneArgs) -> CmdResult {
    let keep = Retention {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    if keep.is_empty() {
        return Err(Failure::Usage(
            "give at least one --keep-… rule with N above 0 (prune never deletes every snapshot)"
                .into(),
        ));
    }
    let mut target = Target::open(repo)?;
    let disks = match a.disk.clone() {
        Some(d) => vec![d],
        None => target.disk_names()?,
    };
    let mut reports = vec![];
    for disk in disks {
        let req = Request::Prune {
            disk: disk.clone(),
            keep,
            dry_run: a.dry_run,
        };
        match target.call(req, &mut |_, _| {})? {
            Response::Pruned(r) => reports.push((disk, r)),
            r => return Err(unexpected(r)),
        }
    }
    if a.json {
        if a.all {
            let all: Vec<_> = reports
                .iter()
                .map(|(disk, report)| DiskPruned {
                    disk: disk.to_string(),
                    report,
                })
                .collect();
            return output::json(&all);
        }
        return output::json(&reports[0].1);
    }
    if reports.is_empty() {
        println!("there are no disks to prune");
    }
    for (disk, report) in &reports {
        print(disk, report);
    }
    Ok(())
}

/// One disk's prune, in `--all --json`.
#[derive(serde::Serialize)]
struct DiskPruned<'a> {
    disk: String,
    #[serde(flatten)]
    report: &'a PruneReport,
}

fn print(disk: &DiskName, report: &PruneReport) {
    let (verb, gives) = if report.dry_run {
        ("would delete", "would give back about")
    } else {
        ("deleted", "gave back")
    };
    if report.delete.is_empty() && report.keep.is_empty() {
        println!("{disk} has no snapshots");
        return;
    }
    for name in &report.delete {
        println!("{verb} {disk}@{name}");
    }
    println!(
        "{verb} {} of {} snapshots of {disk}, kept {}; {gives} {}",
        report.delete.len(),
        report.delete.len() + report.keep.len(),
        report.keep.len(),
        format_size(report.freed_bytes)
    );
    output::unfinished(&report.unfinished);
}
