//! `strata disk create|import|list|delete|rollback|resize|rename`

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use strata::control::{Request, Response};
use strata::store::catalog::DEFAULT_BLOCK_SIZE;
use strata::store::{DiskInfo, DiskName, Repository, SnapshotRef};
use strata::units::format_size;

use super::output::{self, Progress};
use super::target::{unexpected, Target};
use super::{
    absolute, parse_block_size, parse_disk_name, parse_disk_size, parse_size, parse_snapshot_ref,
    CmdResult, Failure,
};

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Create an empty disk, or one from a snapshot (instant, whatever its size)
    #[command(after_help = "Examples:\n  \
strata disk create vm1 --size 64G\n  \
strata disk create vm1-test --from vm1@before-upgrade   # shares the snapshot's blocks")]
    Create(CreateArgs),
    /// Create a disk from a raw image: a file, a block device or standard
    /// input; zero blocks are not stored
    #[command(after_help = "Examples:\n  \
strata disk import vm2 disk.img\n  \
strata disk import vm3 /dev/sdb\n  \
xz -dc vm.img.xz | strata disk import vm4 - --size 20G   # a pipe needs its exact size\n  \
strata disk import vm5 azure.vhd                          # a fixed VHD: its footer is left out")]
    Import(ImportArgs),
    /// List disks: size, block size, snapshots, space used
    #[command(
        after_help = "Examples:\n  strata disk list\n  strata disk list --json | jq '.[].name'"
    )]
    List(ListArgs),
    /// Delete a disk's live disk; its snapshots stay until deleted too
    ///
    /// The snapshots stay listed, readable in the mount under the disk's
    /// name, and usable with `disk create --from`. Refused while live.img
    /// is open for writing in the mount, unless --force.
    Delete(DeleteArgs),
    /// Make a disk's content a snapshot's again; later snapshots stay
    ///
    /// What the disk held since its last snapshot is lost. Refused while
    /// live.img is open for writing in the mount, unless --force.
    Rollback(RollbackArgs),
    /// Grow a disk (its snapshots keep their own size)
    Resize(ResizeArgs),
    /// Rename a disk, with its snapshots
    Rename(RenameArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Disk name: letters, digits, '.', '_', ':', '-'
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// Virtual size, like 64G, 512M or 1T (a multiple of 512 bytes)
    #[arg(long, value_parser = parse_disk_size, required_unless_present = "from")]
    size: Option<u64>,
    /// Block size: a power of two from 4K to 1M; the unit of copy-on-write [default: 64K]
    #[arg(long, value_parser = parse_block_size, conflicts_with = "from")]
    block_size: Option<u32>,
    /// Make it from a snapshot, as DISK@SNAP: its content, sharing its blocks
    /// (size and block size are the snapshot's)
    #[arg(long, value_parser = parse_snapshot_ref, value_name = "DISK@SNAP", conflicts_with = "size")]
    from: Option<SnapshotRef>,
}

#[derive(Args)]
#[command(after_help = "Example:\n  strata disk delete vm1-test")]
pub struct DeleteArgs {
    /// The disk to delete
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// Delete even while live.img is open for writing (its writes then
    /// fail)
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
#[command(
    after_help = "The disk also takes the snapshot's size. Unmount what is mounted from \
live.img first (a file system, a loop device, a VM): it would see its disk change under it.\n\n\
Example:\n  strata disk rollback vm1@before-upgrade"
)]
pub struct RollbackArgs {
    /// The snapshot to go back to, as DISK@SNAP
    #[arg(value_parser = parse_snapshot_ref, value_name = "DISK@SNAP")]
    to: SnapshotRef,
    /// Roll back even while live.img is open for writing (the writer then
    /// sees its disk change under it, as if swapped while running)
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
#[command(
    after_help = "The new space reads as zeros; grow the partition and file system \
inside afterwards (growpart, resize2fs).\n\nExample:\n  strata disk resize vm1 --size 128G"
)]
pub struct ResizeArgs {
    /// The disk to grow
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// The new size, not smaller than the current one, like 128G
    #[arg(long, value_parser = parse_disk_size)]
    size: u64,
}

#[derive(Args)]
#[command(after_help = "Example:\n  strata disk rename vm1 web1")]
pub struct RenameArgs {
    /// The disk's name now
    #[arg(value_parser = parse_disk_name)]
    old: DiskName,
    /// Its new name
    #[arg(value_parser = parse_disk_name)]
    new: DiskName,
}

/// The disk a request answered with.
fn disk_of(r: Response) -> Result<DiskInfo, Failure> {
    match r {
        Response::Disk(info) => Ok(info),
        r => Err(unexpected(r)),
    }
}

#[derive(Args)]
pub struct ImportArgs {
    /// Disk name for the new disk
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// Raw image: a file, a block device, or - for standard input. Its size
    /// becomes the disk's size
    file: PathBuf,
    /// Block size: a power of two from 4K to 1M
    #[arg(long, value_parser = parse_block_size, default_value = "64K")]
    block_size: u32,
    /// The image's exact size, needed when it comes down a pipe (standard
    /// input, a FIFO): the pipe must deliver exactly that many bytes. For a
    /// file or a device it is checked against their own size
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
}

/// Opens an import's source as this command's user, refusing early what
/// cannot be imported: a missing path, a directory, a FIFO without --size
/// (opening it would wait for a writer), a file of the repository.
fn open_source(repo: &Path, a: &ImportArgs) -> Result<(File, String), Failure> {
    if a.file.as_os_str() == "-" {
        let fd = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Failure::Refused(format!("standard input: {e}")))?;
        return Ok((File::from(fd), "standard input".into()));
    }
    let path = absolute(&a.file)?;
    let shown = a.file.display().to_string();
    let refuse = |why: String| Failure::Refused(format!("cannot import {shown}: {why}"));
    let md = std::fs::metadata(&path).map_err(|e| refuse(e.to_string()))?;
    if md.is_dir() {
        return Err(refuse(
            "it is a directory; give a raw image file, a block device or -".into(),
        ));
    }
    if md.file_type().is_fifo() && a.size.is_none() {
        return Err(refuse(
            "it is a FIFO, whose size cannot be known in advance; give the disk's size with --size"
                .into(),
        ));
    }
    if Repository::holds(repo, &md) {
        return Err(refuse(format!(
            "it is a file of the repository {}",
            repo.display()
        )));
    }
    let file = File::open(&path).map_err(|e| refuse(e.to_string()))?;
    Ok((file, shown))
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, cmd: DiskCommand) -> CmdResult {
    // The source is opened (and checked) before the repository.
    let source = match &cmd {
        DiskCommand::Import(a) => Some(open_source(repo, a)?),
        _ => None,
    };
    let mut target = Target::open(repo)?;
    match cmd {
        DiskCommand::Create(a) => {
            let req = match (a.from.clone(), a.size) {
                (Some(from), _) => Request::DiskCreateFrom { name: a.name, from },
                (None, Some(size)) => Request::DiskCreate {
                    name: a.name,
                    size,
                    block_size: a.block_size.unwrap_or(DEFAULT_BLOCK_SIZE),
                },
                (None, None) => return Err(Failure::Usage("give --size or --from".into())),
            };
            let info = disk_of(target.call(req, &mut |_, _| {})?)?;
            let from = a.from.map(|f| format!(" from {f}")).unwrap_or_default();
            println!(
                "created disk {}{from} ({}, block size {})",
                info.name,
                format_size(info.size),
                format_size(info.block_size as u64)
            );
        }
        DiskCommand::Delete(a) => {
            let req = Request::DiskDelete {
                name: a.name.clone(),
                force: a.force,
            };
            let report = match target.call(req, &mut |_, _| {})? {
                Response::Deleted(r) => r,
                r => return Err(unexpected(r)),
            };
            let kept = match report.kept_snapshots {
                0 => String::new(),
                1 => "; its snapshot stays (in the mount and `snapshot list`) until deleted"
                    .to_string(),
                n => format!(
                    "; its {n} snapshots stay (in the mount and `snapshot list`) until deleted"
                ),
            };
            println!(
                "deleted disk {} ({} given back{kept})",
                a.name,
                format_size(report.freed_bytes)
            );
            output::unfinished(&report.unfinished);
        }
        DiskCommand::Rollback(a) => {
            let req = Request::DiskRollback {
                to: a.to.clone(),
                force: a.force,
            };
            disk_of(target.call(req, &mut |_, _| {})?)?;
            println!("disk {} now reads as {}", a.to.disk, a.to);
        }
        DiskCommand::Resize(a) => {
            let req = Request::DiskResize {
                name: a.name,
                size: a.size,
            };
            let info = disk_of(target.call(req, &mut |_, _| {})?)?;
            println!("disk {} is now {}", info.name, format_size(info.size));
        }
        DiskCommand::Rename(a) => {
            let req = Request::DiskRename {
                from: a.old.clone(),
                to: a.new.clone(),
            };
            match target.call(req, &mut |_, _| {})? {
                Response::Done => {}
                r => return Err(unexpected(r)),
            }
            println!("renamed disk {} to {}", a.old, a.new);
        }
        DiskCommand::Import(a) => {
            let (file, shown) = source.ok_or_else(|| unexpected(Response::Done))?;
            let mut progress = Progress::new("importing");
            let req = Request::DiskImport {
                name: a.name,
                source: shown.clone(),
                size: a.size,
                block_size: a.block_size,
            };
            let resp = target.call_with(req, vec![file], &mut |d, t| progress.update(d, t));
            progress.finish();
            let info = match resp? {
                Response::Disk(info) => info,
                r => return Err(unexpected(r)),
            };
            println!(
                "imported {shown} as disk {} ({}, {} stored)",
                info.name,
                format_size(info.size),
                format_size(info.used_bytes)
            );
        }
        DiskCommand::List(a) => {
            let disks = match target.call(Request::DiskList, &mut |_, _| {})? {
                Response::Disks(d) => d,
                r => return Err(unexpected(r)),
            };
            if a.json {
                return output::json(&disks);
            }
            let rows: Vec<Vec<String>> = disks
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        format_size(d.size),
                        format_size(d.block_size as u64),
                        d.snapshots.to_string(),
                        format_size(d.used_bytes),
                    ]
                })
                .collect();
            output::table(&["NAME", "SIZE", "BLOCK", "SNAPSHOTS", "USED"], &rows);
        }
    }
    Ok(())
}
