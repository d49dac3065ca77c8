//! `strata snapshot create|list|delete|full|id|rename`

use std::fs::File;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use strata::control::{Request, Response};
use strata::store::{DiskName, SnapName, SnapshotRef};
use strata::units::format_size;

use super::output::{self, Progress};
use super::target::{unexpected, Target};
use super::{absolute, parse_disk_name, parse_snap_name, parse_snapshot_ref, CmdResult, Failure};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Freeze disks' current contents as a snapshot (instant, no copy)
    ///
    /// With several disks, one snapshot of all of them at the same instant,
    /// in one commit (a VM's disks stay consistent with each other): all of
    /// them are taken, or none.
    #[command(after_help = "Examples:\n  \
strata snapshot create vm1 --name before-upgrade\n  \
strata snapshot create vm1-root vm1-data --name nightly\n  \
strata snapshot create vm1 --freeze /mnt/vm1     # the file system inside frozen meanwhile\n  \
strata snapshot create --all                     # every disk, together")]
    Create(CreateArgs),
    /// List a disk's snapshots, oldest first
    #[command(
        after_help = "Examples:\n  strata snapshot list vm1\n  strata snapshot list vm1 --json   # with each snapshot's content identity"
    )]
    List(ListArgs),
    /// List a disk's bookmarks: what `send` left of each snapshot it sent
    ///
    /// A bookmark keeps a sent snapshot's block hashes (no data), so it
    /// stays a base for `strata send --from DISK#NAME` after the snapshot
    /// itself is deleted.
    #[command(
        after_help = "Examples:\n  strata snapshot bookmarks vm1\n  strata snapshot bookmarks vm1 --json"
    )]
    Bookmarks(ListArgs),
    /// Delete snapshots; every other snapshot and disk reads the same
    ///
    /// What no remaining image reads is given back at once; what a later
    /// snapshot still needs is kept (and stored by it from then on). A
    /// snapshot still open (being read) keeps its space until it is
    /// closed; the mount, or `strata gc`, gives it back then.
    #[command(after_help = "Examples:\n  \
strata snapshot delete vm1@nightly-3\n  \
strata snapshot delete vm1@a vm1@b vm2@a     # all of them, or none if one does not exist")]
    Delete(DeleteArgs),
    /// Make a snapshot self-contained: it then needs no other snapshot
    ///
    /// Copies into it every block its image reads from older snapshots;
    /// what it stores becomes its whole image's used size.
    #[command(after_help = "Example:\n  strata snapshot full vm1@2026-11-01T00-00-00Z")]
    Full(FullArgs),
    /// Print a snapshot's content identity
    ///
    /// A hash tree (BLAKE3) over the image's bytes in 4 KiB leaves, and its
    /// size: two snapshots have the same identity exactly when they have
    /// the same bytes, whatever their history, disk or block size. It is
    /// computed from the hashes the snapshot's layers keep for each block,
    /// without reading the image, so it proves a copy (a received
    /// snapshot, an export taken in) identical without reading both.
    #[command(after_help = "Examples:\n  \
strata snapshot id vm1@nightly\n  \
[ \"$(strata snapshot id vm1@nightly)\" = \"$(strata --repo /backup snapshot id vm1@nightly)\" ] && echo same")]
    Id(IdArgs),
    /// Rename a snapshot (its image stays the same file in the mount)
    #[command(
        after_help = "Example:\n  strata snapshot rename vm1@2026-11-22T14-05-00Z before-upgrade"
    )]
    Rename(RenameArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The disks to snapshot (together, when there are several)
    #[arg(value_parser = parse_disk_name, required_unless_present = "all", value_name = "DISK")]
    disks: Vec<DiskName>,
    /// Snapshot every disk, together (what a nightly timer runs)
    #[arg(long, conflicts_with = "disks")]
    all: bool,
    /// Snapshot name (default: the UTC time, like 2026-11-22T14-05-00Z)
    #[arg(long, value_parser = parse_snap_name)]
    name: Option<SnapName>,
    /// Make it self-contained (see `strata snapshot full`)
    #[arg(long)]
    full: bool,
    /// Freeze the file system mounted at PATH for the snapshot's critical
    /// section only (it is thawed, also on failure, and by a guard after
    /// 30 s if this command is killed). Repeat for several. Needs root
    #[arg(long, value_name = "PATH")]
    freeze: Vec<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// A disk, or a deleted disk whose snapshots remain
    #[arg(value_parser = parse_disk_name)]
    disk: DiskName,
    /// Print JSON instead of a table (with each snapshot's content identity)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Snapshots to delete, as DISK@SNAP
    #[arg(value_parser = parse_snapshot_ref, required = true, value_name = "DISK@SNAP")]
    snapshots: Vec<SnapshotRef>,
}

#[derive(Args)]
pub struct FullArgs {
    /// The snapshot, as DISK@SNAP
    #[arg(value_parser = parse_snapshot_ref, value_name = "DISK@SNAP")]
    snapshot: SnapshotRef,
}

#[derive(Args)]
pub struct IdArgs {
    /// The snapshot, as DISK@SNAP
    #[arg(value_parser = parse_snapshot_ref, value_name = "DISK@SNAP")]
    snapshot: SnapshotRef,
}

#[derive(Args)]
pub struct RenameArgs {
    /// The snapshot, as DISK@OLD
    #[arg(value_parser = parse_snapshot_ref, value_name = "DISK@OLD")]
    snapshot: SnapshotRef,
    /// Its new name
    #[arg(value_parser = parse_snap_name)]
    new: SnapName,
}

/// Opens each directory to freeze, as this command's user.
fn open_dirs(paths: &[PathBuf]) -> Result<(Vec<File>, Vec<String>), Failure> {
    let mut files = vec![];
    let mut names = vec![];
    for p in paths {
        let abs = absolute(p)?;
        let f = File::open(&abs)
            .map_err(|e| Failure::Refused(format!("cannot freeze {}: {e}", p.display())))?;
        files.push(f);
        names.push(abs.display().to_string());
    }
    Ok((files, names))
}

pub fn run(repo: &Path, cmd: SnapshotCommand) -> CmdResult {
    let freeze = match &cmd {
        SnapshotCommand::Create(a) => open_dirs(&a.freeze)?,
        _ => (vec![], vec![]),
    };
    let mut target = Target::open(repo)?;
    match cmd {
        SnapshotCommand::Create(a) => {
            let (files, names) = freeze;
            let disks = if a.all { target.disk_names()? } else { a.disks };
            if disks.is_empty() {
                println!("there are no disks to snapshot");
                return Ok(());
            }
            let req = Request::SnapshotCreate {
                disks,
                name: a.name,
                full: a.full,
                freeze: names,
            };
            let mut progress = Progress::new("copying into the full snapshot");
            let resp = target.call_with(req, files, &mut |d, t| progress.update(d, t));
            progress.finish();
            let infos = match resp? {
                Response::Snapshots(s) => s,
                r => return Err(unexpected(r)),
            };
            for info in infos {
                println!(
                    "created snapshot {}@{} ({} {})",
                    info.disk,
                    info.name,
                    format_size(info.stored_bytes),
                    if info.full { "stored, full" } else { "changed" }
                );
            }
        }
        SnapshotCommand::List(a) => {
            let disk = a.disk.clone();
            let req = Request::SnapshotList {
                disk: a.disk,
                identities: a.json,
            };
            let snaps = match target.call(req, &mut |_, _| {})? {
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
                        if s.full { "full" } else { "incremental" }.into(),
                    ]
                })
                .collect();
            output::table(&["NAME", "TAKEN", "STORED", "KIND"], &rows);
            let req = Request::BookmarkList { disk: disk.clone() };
            let marks = match target.call(req, &mut |_, _| {})? {
                Response::Bookmarks(b) => b,
                r => return Err(unexpected(r)),
            };
            let gone: Vec<Vec<String>> = marks
                .iter()
                .filter(|b| !b.snapshot_exists)
                .map(|b| vec![format!("{disk}#{}", b.name), output::time(b.taken)])
                .collect();
            if !gone.is_empty() {
                println!();
                println!(
                    "Bookmarks of deleted snapshots (bases for `strata send --from DISK#NAME`):"
                );
                output::table(&["BOOKMARK", "TAKEN"], &gone);
            }
        }
        SnapshotCommand::Bookmarks(a) => {
            let req = Request::BookmarkList {
                disk: a.disk.clone(),
            };
            let marks = match target.call(req, &mut |_, _| {})? {
                Response::Bookmarks(b) => b,
                r => return Err(unexpected(r)),
            };
            if a.json {
                return output::json(&marks);
            }
            let rows: Vec<Vec<String>> = marks
                .iter()
                .map(|b| {
                    vec![
                        format!("{}#{}", a.disk, b.name),
                        output::time(b.taken),
                        format_size(b.size),
                        if b.snapshot_exists { "yes" } else { "deleted" }.into(),
                    ]
                })
                .collect();
            output::table(&["BOOKMARK", "TAKEN", "SIZE", "SNAPSHOT"], &rows);
        }
        SnapshotCommand::Delete(a) => {
            let req = Request::SnapshotDelete {
                snapshots: a.snapshots,
            };
            let report = match target.call(req, &mut |_, _| {})? {
                Response::Deleted(r) => r,
                r => return Err(unexpected(r)),
            };
            let n = report.deleted;
            println!(
                "deleted {} ({} given back{})",
                if n == 1 {
                    "1 snapshot".to_string()
                } else {
                    format!("{n} snapshots")
                },
                format_size(report.freed_bytes),
                if report.waiting > 0 {
                    "; what images still open read is given back once they are closed"
                } else {
                    ""
                }
            );
            output::unfinished(&report.unfinished);
        }
        SnapshotCommand::Full(a) => {
            let mut progress = Progress::new("copying");
            let req = Request::SnapshotFull {
                snapshot: a.snapshot.clone(),
            };
            let resp = target.call(req, &mut |d, t| progress.update(d, t));
            progress.finish();
            let info = match resp? {
                Response::Snapshot(i) => i,
                r => return Err(unexpected(r)),
            };
            println!(
                "snapshot {} is full ({} stored)",
                a.snapshot,
                format_size(info.stored_bytes)
            );
        }
        SnapshotCommand::Id(a) => {
            let req = Request::SnapshotId {
                snapshot: a.snapshot,
            };
            match target.call(req, &mut |_, _| {})? {
                Response::Identity { identity } => println!("{identity}"),
                r => return Err(unexpected(r)),
            }
        }
        SnapshotCommand::Rename(a) => {
            let req = Request::SnapshotRename {
                snapshot: a.snapshot.clone(),
                to: a.new.clone(),
            };
            match target.call(req, &mut |_, _| {})? {
                Response::Done => {}
                r => return Err(unexpected(r)),
            }
            println!("renamed {} to {}@{}", a.snapshot, a.snapshot.disk, a.new);
        }
    }
    Ok(())
}
