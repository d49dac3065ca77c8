//! `strata usage [DISK] [--daily]`

use std::path::Path;

use clap::Args;
use strata::control::{Request, Response};
use strata::store::DiskName;
use strata::units::format_size;

use super::output;
use super::target::{unexpected, Target};
use super::{parse_date, parse_disk_name, CmdResult, Failure};

#[derive(Args)]
#[command(
    after_help = "Columns: STORED is what a snapshot stores itself (its `du` in the \
mount); FREES is what deleting it now, alone, would give back; IMAGE USED is the used size of \
its whole image (what a full copy stores).\n\n\
With --daily, each day's stored size of each snapshot in GiB-months, as a cloud's daily \
usage report counts it: 10 GiB kept one day of a 31-day month is 10/31 = 0.3226. A \
snapshot counts on each day it existed at the day's end (today: now), at what it stored \
then; --daily covers every disk, up to today.\n\n\
Examples:\n  \
strata usage\n  \
strata usage vm1 --json\n  \
strata usage --daily --from 2026-11-01 --to 2026-11-30"
)]
pub struct UsageArgs {
    /// Only this disk
    #[arg(value_parser = parse_disk_name)]
    disk: Option<DiskName>,
    /// Per day and snapshot, in GiB-months, from the usage history
    #[arg(long)]
    daily: bool,
    /// First day, YYYY-MM-DD (UTC; default: the first day of the history)
    #[arg(long, value_parser = parse_date, requires = "daily", value_name = "DATE")]
    from: Option<u32>,
    /// Last day, YYYY-MM-DD (UTC; default: today)
    #[arg(long, value_parser = parse_date, requires = "daily", value_name = "DATE")]
    to: Option<u32>,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, a: UsageArgs) -> CmdResult {
    if a.daily && a.disk.is_some() {
        return Err(Failure::Usage(
            "--daily reports every disk; leave out the disk name".into(),
        ));
    }
    if let (Some(from), Some(to)) = (a.from, a.to) {
        if from > to {
            return Err(Failure::Usage("--from is after --to".into()));
        }
    }
    let mut target = Target::open(repo)?;
    if a.daily {
        let req = Request::UsageDaily {
            from: a.from,
            to: a.to,
        };
        let daily = match target.call(req, &mut |_, _| {})? {
            Response::Daily(d) => d,
            r => return Err(unexpected(r)),
        };
        if a.json {
            return output::json(&daily);
        }
        let mut rows = vec![];
        for day in &daily.days {
            for s in &day.snapshots {
                rows.push(vec![
                    day.date.clone(),
                    format!("{}@{}", s.disk, s.snapshot),
                    format_size(s.bytes),
                    format!("{:.4}", s.gib_months),
                ]);
            }
        }
        output::table(&["DATE", "SNAPSHOT", "STORED", "GIB-MONTHS"], &rows);
        println!("total: {:.4} GiB-months", daily.gib_months);
        return Ok(());
    }
    let report = match target.call(Request::Usage { disk: a.disk }, &mut |_, _| {})? {
        Response::Usage(r) => r,
        r => return Err(unexpected(r)),
    };
    if a.json {
        return output::json(&report);
    }
    let mut rows = vec![];
    for d in &report.disks {
        let live = if d.live {
            format!("{}/live.img", d.name)
        } else {
            format!("{} (deleted)", d.name)
        };
        rows.push(vec![
            live,
            if d.live {
                format_size(d.size)
            } else {
                "-".into()
            },
            format_size(d.live_bytes),
            "-".into(),
            "-".into(),
        ]);
        for s in &d.snapshots {
            rows.push(vec![
                format!("{}@{}", d.name, s.name),
                String::new(),
                format_size(s.stored_bytes),
                format_size(s.reclaimable_bytes),
                format_size(s.image_bytes),
            ]);
        }
    }
    output::table(&["IMAGE", "SIZE", "STORED", "FREES", "IMAGE USED"], &rows);
    println!(
        "total: {} provisioned, {} stored{}",
        format_size(report.provisioned_bytes),
        format_size(report.used_bytes),
        if report.shared_bytes > 0 {
            format!(
                " ({} of it kept for deleted snapshots that other images still read)",
                format_size(report.shared_bytes)
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
