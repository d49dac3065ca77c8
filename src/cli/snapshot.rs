//! `strata snapshot create|list`

use std::path::Path;

use clap::{Args, Subcommand};
use strata::control::{Request, Response};
use strata::store::{DiskName, SnapName};
use strata::units::format_size;

use super::output;
use super::target::{unexpected, Target};
use super::{parse_disk_name, parse_snap_name, CmdResult};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Freeze the disk's current contents as a snapshot (instant, no copy)
    Create(CreateArgs),
    /// List a disk's snapshots, oldest first
    List(ListArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The disk to snapshot
    #[arg(value_parser = parse_disk_name)]
    disk: DiskName,
    /// Snapshot name (default: the UTC time, like 2026-11-22T14-05-00Z)
    #[arg(long, value_parser = parse_snap_name)]
    name: Option<SnapName>,
}

#[derive(Args)]
pub struct ListArgs {
    #[arg(value_parser = parse_disk_name)]
    disk: DiskName,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, cmd: SnapshotCommand) -> CmdResult {
    let mut target = Target::open(repo)?;
    match cmd {
        SnapshotCommand::Create(a) => {
            let req = Request::SnapshotCreate {
                disk: a.disk,
                name: a.name,
            };
            let info = match target.call(req, &mut |_, _| {})? {
                Response::Snapshot(info) => info,
                r => return Err(unexpected(r)),
            };
            println!(
                "created snapshot {}@{} ({} changed)",
                info.disk,
                info.name,
                format_size(info.stored_bytes)
            );
        }
        SnapshotCommand::List(a) => {
            let snaps = match target.call(Request::SnapshotList { disk: a.disk }, &mut |_, _| {})? {
                Response::Snapshots(s) => s,
                r => return Err(unexpected(r)),
            };
            if a.json {
                return output::json(&snaps);
            }
            let rows: Vec<Vec<String>> = snaps
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        output::time(s.taken),
                        format_size(s.stored_bytes),
                    ]
                })
                .collect();
            output::table(&["NAME", "TAKEN", "STORED"], &rows);
        }
    }
    Ok(())
}
