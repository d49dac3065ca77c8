//! Command-line interface: clap definitions, and one module per command.
//!
//! Exit status: 0 on success, 1 when the request is refused (the message
//! says why), 2 on bad usage (clap's own errors, bad names and sizes).

mod apply;
mod diff;
mod disk;
mod docs;
mod export;
mod gc;
mod init;
mod mount;
mod output;
mod prune;
mod quarantine;
mod restore;
mod send;
mod snapshot;
mod status;
mod target;
mod usage;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata::store::{DiskName, ImageRef, Repository, SnapName, SnapshotRef, StoreError};
use strata::units;

/// Virtual disks with incremental snapshots, shown as raw image files.
///
/// strata keeps disks and their point-in-time snapshots in a repository.
/// A snapshot stores only the blocks that changed since the one before it,
/// yet reads back as the whole disk.
#[derive(Parser)]
#[command(name = "strata", version, propagate_version = true)]
#[command(
    after_help = "The repository is $STRATA_REPO, else $XDG_DATA_HOME/strata, \
else ~/.local/share/strata, unless --repo is given.\n\n\
Example:\n  mkdir -p ~/disks && strata mount ~/disks    # creates the default repository if missing\n  \
strata disk create vm1 --size 64G            # ~/disks/vm1/live.img and ~/disks/vm1/snapshots/\n  \
strata snapshot create vm1 --name before-upgrade\n  \
ls -lt ~/disks/vm1/snapshots/\n  \
strata export vm1@before-upgrade vm1.img\n  \
strata umount ~/disks"
)]
pub struct Cli {
    /// Repository directory (default: $STRATA_REPO, $XDG_DATA_HOME/strata or ~/.local/share/strata)
    #[arg(long, global = true, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// Draw no progress bars (they are drawn only on a terminal anyway)
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository
    #[command(after_help = "Examples:\n  strata init\n  strata --repo /var/lib/strata init")]
    Init,
    /// Create, import, list, delete, roll back, resize and rename disks
    ///
    /// A disk is a virtual block device of fixed size: in the mount,
    /// DISK/live.img, a raw image any tool can write (mkfs, a VM, dd). It
    /// takes space only for the blocks written. Its block size (4K to 1M,
    /// default 64K) is the unit snapshots share and copy.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
strata disk create vm1 --size 64G && mkfs.ext4 -q ~/disks/vm1/live.img\n  \
strata disk import vm2 disk.img\n  \
strata disk create vm1-test --from vm1@before-upgrade\n  \
strata disk rollback vm1@before-upgrade\n\n\
`strata disk COMMAND --help` says more about each.")]
    Disk(disk::DiskCommand),
    /// Take, list, delete, fill in, identify and rename snapshots
    ///
    /// A snapshot freezes a disk's contents at one instant, with no copy:
    /// it stores only the blocks that changed since the snapshot before,
    /// yet reads back as the whole disk, in the mount as the read-only
    /// image DISK/snapshots/NAME.img (mtime: when it was taken; du: what it
    /// stores). Deleting one never changes what another image reads; a
    /// full snapshot (--full, or `snapshot full`) needs no other.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  \
strata snapshot create vm1 --name before-upgrade --freeze /mnt/vm1\n  \
strata snapshot list vm1\n  \
cmp ~/disks/vm1/snapshots/before-upgrade.img ~/disks/vm1/live.img\n  \
strata snapshot delete vm1@before-upgrade\n\n\
`strata snapshot COMMAND --help` says more about each; `strata prune` deletes by policy.")]
    Snapshot(snapshot::SnapshotCommand),
    /// Write a full raw image of a disk or snapshot to a file
    Export(export::ExportArgs),
    /// The byte ranges that may differ between two snapshots or disks
    ///
    /// Prints OFFSET and LENGTH in bytes, one maximal run per line: the
    /// ranges that differ between FROM and TO, or may (a block rewritten
    /// with the same bytes is still listed). Reading those ranges from TO
    /// and writing them onto a copy of FROM, made TO's size, gives TO
    /// exactly. With one image, FROM is an empty disk: the ranges are what
    /// TO holds. Either image may be a snapshot (DISK@SNAP) or a live disk
    /// (DISK), older or newer, and on another branch of the same history (a
    /// disk made with `disk create --from`). Only the layers between the
    /// two are read: the time grows with what changed, not with the disk.
    Diff(diff::DiffArgs),
    /// Write a snapshot as a stream for another repository (full or incremental)
    ///
    /// A full stream holds every block the snapshot holds; with --from,
    /// only the ranges that differ from a base the receiving side already
    /// has (named in the stream by its content identity), or from the
    /// bookmark DISK#SNAP a sent and since deleted snapshot left. Every
    /// record is checksummed, the stream as a whole is hashed, and the
    /// receiver checks the snapshot's identity before it appears. Each
    /// send leaves a bookmark of the snapshot it sent.
    Send(send::SendArgs),
    /// Recreate a snapshot from a `strata send` stream
    ///
    /// Reads the stream from standard input (or -i FILE) and adds the
    /// snapshot under the same disk and snapshot names (or --as DISK). An
    /// incremental stream is taken only if this repository has its base
    /// (a snapshot with the same content identity). Nothing appears until
    /// the whole stream has checked out and the result's identity matches;
    /// a receive cut short keeps what it got (--status shows the token to
    /// resume with, --abort discards it).
    Receive(send::ReceiveArgs),
    /// Apply a `strata send` stream onto a raw image file or block device
    ///
    /// Needs no repository: a base image at the second site, then only the
    /// changes copied onto it. An incremental stream is applied only when
    /// the target's content is the stream's base (its content identity is
    /// checked first, before anything is written); only the changed ranges
    /// are written, zero ranges punched. At the end the target's identity
    /// is checked against the snapshot's. An apply cut short leaves a state
    /// file (TARGET.strata-apply, or --state) that says so; applying the
    /// same stream again finishes it.
    Apply(apply::ApplyArgs),
    /// Delete a disk's snapshots that a retention policy does not keep
    Prune(prune::PruneArgs),
    /// What each disk and snapshot stores, and what deleting would give back
    Usage(usage::UsageArgs),
    /// Check every stored block and metadata file against its checksum
    ///
    /// Reads the layers back (all, or those the given images read) and
    /// checks each block against the CRC-32C its snapshot stored, and the
    /// metadata files against theirs; a metadata file with one damaged
    /// copy is mended from the other. Lists each damaged block with the
    /// images that read it. Runs while mounted; --rate keeps it gentle.
    Verify(verify::VerifyArgs),
    /// Give back space nothing refers to any more
    ///
    /// Deleting already gives back what it can; gc finishes what was left:
    /// snapshots deleted while they were open, and what a crash cut short.
    /// Safe while mounted.
    #[command(after_help = "Example:\n  strata gc")]
    Gc,
    /// Files that opening the repository found and nothing names
    ///
    /// Opening a repository never deletes a file it cannot prove belongs to
    /// an operation that never committed: any other file in layers/ that the
    /// catalog does not name is moved to REPO/quarantine/ and reported.
    /// Look at them, put them back by hand if they matter, or purge them.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
strata quarantine list             # what was set aside, and how big\n  \
strata quarantine purge            # delete it, once you are sure nothing there matters"
    )]
    Quarantine(quarantine::QuarantineCommand),
    /// Mount the repository: every disk and snapshot as an image file
    ///
    /// MOUNTPOINT/<disk>/live.img is the writable disk;
    /// MOUNTPOINT/<disk>/snapshots/<snap>.img are read-only points in time.
    /// Returns once the mount answers; the daemon owns the repository until
    /// `strata umount`, and the other commands then talk to it. A
    /// repository whose directory is missing or empty is created first.
    Mount(mount::MountArgs),
    /// Mount a snapshot's file systems read-only to copy single files out
    #[command(
        subcommand,
        after_help = "Examples (as root, the repository mounted):\n  \
strata restore attach vm1@before-upgrade /mnt/restore   # one directory per partition\n  \
cp /mnt/restore/p1/etc/fstab /tmp/\n  \
strata restore detach /mnt/restore"
    )]
    Restore(restore::RestoreCommand),
    /// Flush everything and unmount (also cleans up after a daemon that died)
    Umount(mount::UmountArgs),
    /// This strata's version, the repository, the daemon serving it, and
    /// what needs attention (quarantine, latched disks); every strata mount
    Status(status::StatusArgs),
    /// Print a shell completion script (bash, zsh or fish)
    Completions(docs::CompletionsArgs),
    /// Write man pages for strata and every subcommand
    Manpages(docs::ManpagesArgs),
    /// Thaws file systems after a delay (started by `snapshot create --freeze`)
    #[command(hide = true)]
    ThawGuard(ThawGuardArgs),
}

#[derive(clap::Args)]
struct ThawGuardArgs {
    /// Seconds to wait before thawing
    #[arg(long)]
    after: u64,
    /// Mount points of the frozen file systems
    paths: Vec<PathBuf>,
}

/// What a command failed with, and so which exit status it gets.
pub enum Failure {
    /// The request was refused (exit 1).
    Refused(String),
    /// The arguments were wrong (exit 2).
    Usage(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Name(_) | StoreError::Size(_) => Failure::Usage(e.to_string()),
            e => Failure::Refused(e.to_string()),
        }
    }
}

pub type CmdResult = Result<(), Failure>;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(&cli.command, Command::Mount(a) if a.runs_the_daemon());
    let mut log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if !daemon {
        // A command's warnings read like its other messages; the daemon's
        // log keeps times and sources.
        log.format(|buf, record| {
            use std::io::Write;
            let level = record.level().as_str().to_lowercase();
            writeln!(buf, "strata: {level}: {}", record.args())
        });
        // Like other command-line tools, stop quietly when the reader of
        // standard output goes away (`strata disk list | head -1`).
        strata::sys::default_sigpipe();
    }
    log.init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(msg)) => {
            eprintln!("strata: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("strata: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> CmdResult {
    output::set_quiet(cli.quiet);
    match cli.command {
        Command::Mount(a) => return mount::mount(cli.repo, a),
        Command::Umount(a) => return mount::umount(a),
        Command::Apply(a) => return apply::run(a),
        Command::Completions(a) => return docs::completions(a),
        Command::Manpages(a) => return docs::manpages(a),
        Command::ThawGuard(a) => {
            strata::control::freeze::guard(std::time::Duration::from_secs(a.after), &a.paths);
            return Ok(());
        }
        _ => {}
    }
    let repo_path = match cli.repo {
        Some(p) => p,
        None => Repository::default_path()?,
    };
    match cli.command {
        Command::Init => init::run(&repo_path),
        Command::Disk(c) => disk::run(&repo_path, c),
        Command::Snapshot(c) => snapshot::run(&repo_path, c),
        Command::Export(a) => export::run(&repo_path, a),
        Command::Diff(a) => diff::run(&repo_path, a),
        Command::Send(a) => send::send(&repo_path, a),
        Command::Receive(a) => send::receive(&repo_path, a),
        Command::Quarantine(c) => quarantine::run(&repo_path, c),
        Command::Prune(a) => prune::run(&repo_path, a),
        Command::Usage(a) => usage::run(&repo_path, a),
        Command::Gc => gc::run(&repo_path),
        Command::Verify(a) => verify::run(&repo_path, a),
        Command::Status(a) => status::run(&repo_path, a),
        Command::Restore(c) => restore::run(&repo_path, c),
        Command::Mount(_)
        | Command::Umount(_)
        | Command::ThawGuard(_)
        | Command::Apply(_)
        | Command::Completions(_)
        | Command::Manpages(_) => Ok(()),
    }
}

/// Whether `path` (which need not exist yet) lies inside the repository:
/// its nearest existing ancestor, symlinks resolved, is under the
/// repository's directory, symlinks resolved.
pub fn inside_repository(repo: &std::path::Path, path: &std::path::Path) -> bool {
    let Ok(repo) = std::fs::canonicalize(repo) else {
        return false;
    };
    path.ancestors()
        .find_map(|a| std::fs::canonicalize(a).ok())
        .is_some_and(|p| p.starts_with(&repo))
}

/// A mount point as the kernel's mount table names it: absolute, with
/// every symlink resolved (so a link to a directory in use cannot slip past
/// the check for a file system mounted there). A dead mount (whose `stat`
/// fails) or a missing directory is resolved up to its parent, and a
/// symlink as its last part is followed without touching its target.
pub fn mount_point(path: &std::path::Path) -> Result<std::path::PathBuf, Failure> {
    let abs = absolute(path)?;
    if let Ok(p) = std::fs::canonicalize(&abs) {
        return Ok(p);
    }
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Ok(abs);
    };
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    let p = parent.join(name);
    Ok(match std::fs::read_link(&p) {
        // `join` keeps an absolute target as it is.
        Ok(target) => std::path::absolute(parent.join(target)).unwrap_or(p),
        Err(_) => p,
    })
}

/// `path` made absolute against the current directory (without touching it,
/// so a dead mount point can still be named).
pub fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::Refused(format!("{}: {e}", path.display())))
}

// Argument parsers: bad values are usage errors, reported by clap.

pub fn parse_disk_name(s: &str) -> Result<DiskName, String> {
    DiskName::parse(s).map_err(|e| e.to_string())
}

pub fn parse_snap_name(s: &str) -> Result<SnapName, String> {
    SnapName::parse(s).map_err(|e| e.to_string())
}

pub fn parse_snapshot_ref(s: &str) -> Result<SnapshotRef, String> {
    SnapshotRef::parse(s).map_err(|e| e.to_string())
}

/// A UTC date, `YYYY-MM-DD`, as days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<u32, String> {
    let date: jiff::civil::Date = s
        .parse()
        .map_err(|_| format!("invalid date {s:?}: give it as YYYY-MM-DD"))?;
    strata::store::day_of_date(date).ok_or_else(|| format!("invalid date {s:?}: before 1970"))
}

pub fn parse_image_ref(s: &str) -> Result<ImageRef, String> {
    ImageRef::parse(s).map_err(|e| e.to_string())
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    units::parse_size("size", s).map_err(|e| e.to_string())
}

/// A disk's size: a size, and one a disk can have (not zero, a multiple of
/// 512 bytes), so a bad one is a usage error like a malformed one.
pub fn parse_disk_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    strata::store::catalog::check_disk_size(n).map_err(|e| e.to_string())
}

pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let n = units::parse_size("block size", s).map_err(|e| e.to_string())?;
    strata::store::catalog::check_block_size(n).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a user can ask `--help` of, by its full name: the
    /// groups (`strata snapshot`) as well as what they hold.
    fn commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<(String, clap::Command)>) {
        let name = format!("{prefix} {}", cmd.get_name()).trim().to_string();
        out.push((name.clone(), cmd.clone()));
        for s in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
            commands(s, &name, out);
        }
    }

    #[test]
    fn every_command_has_an_example_and_every_argument_a_description() {
        let mut cmd = super::Cli::command();
        cmd.build();
        let mut all = vec![];
        commands(&cmd, "", &mut all);
        let mut missing = vec![];
        for (name, c) in &all {
            if name.split(" ").any(|w| w == "help") {
                continue;
            }
            let after = c
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let after_long = c
                .get_after_long_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            if !(after + &after_long).contains("Example") {
                missing.push(format!("{name}: no example in its --help"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{name}: argument {id} has no description"));
                }
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
