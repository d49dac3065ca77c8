//! The control protocol: how `strata` commands reach a repository, whether a
//! mount's daemon owns it or the command opens it itself.
//!
//! Every command becomes a [`Request`]; [`execute`] carries it out against a
//! [`Repository`] and yields a [`Response`]. Without a daemon the CLI calls
//! [`execute`] itself; with one, it sends the request over the daemon's Unix
//! socket (`REPO/control.sock`, mode 0600) and the daemon calls [`execute`].
//! One code path either way.
//!
//! Files a request reads or writes (an import's source, an export's target)
//! are opened by the command, with its own permissions, and handed over as
//! a descriptor: in process as a [`File`], to the daemon with `SCM_RIGHTS`.
//! So a FIFO or standard input can be imported while mounted, and the
//! daemon never opens a path a command names.
//!
//! Wire format: each message is a `u32` little-endian length followed by a
//! postcard-encoded [`Envelope`]; descriptors travel with the length. A
//! request is answered by one [`Response`], after any number of
//! [`Response::Progress`] while it works. A peer speaking another protocol
//! version is refused by name.

mod client;
pub mod freeze;
mod server;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use client::Client;
pub use server::{remove_socket, serve, ServerHooks};

use crate::store::ops::verify::{VerifyOptions, VerifyReport};

use crate::store::{
    export, BookmarkInfo, DailyUsage, DeleteReport, DiskInfo, DiskName, ExportStats, ExportTarget,
    GcReport, ImageRef, ImportSource, PartialReceive, PruneReport, QuarantinedFile, ReceiveReport,
    Repository, ResumeToken, Retention, SendBase, SendReport, SnapName, SnapshotInfo,
    SnapshotOptions, SnapshotRef, StoreError, UsageReport,
};

/// Bumped whenever [`Request`] or [`Response`] change shape.
pub const PROTOCOL_VERSION: u32 = 5;
/// Largest message accepted, so a confused peer cannot make us allocate GiBs.
const MAX_MESSAGE: u32 = 64 << 20;

/// The socket's file name inside the repository.
pub const SOCKET_FILE: &str = "control.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// [`PROTOCOL_VERSION`]; it leads, so any version of strata reads it.
    pub version: u32,
    /// The sender's strata version, for the message when they differ.
    pub strata: String,
    pub body: T,
}

/// The other end of the control socket speaks another protocol: a daemon
/// started by another strata binary, most likely.
#[derive(Debug, thiserror::Error)]
#[error(
    "the other end runs strata {} (control protocol {theirs}); this is strata {} (protocol {PROTOCOL_VERSION})",
    strata.as_deref().unwrap_or("of an unknown version"),
    env!("CARGO_PKG_VERSION")
)]
pub struct VersionMismatch {
    pub theirs: u32,
    pub strata: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    DiskCreate {
        name: DiskName,
        size: u64,
        block_size: u32,
    },
    /// The source comes as a descriptor.
    DiskImport {
        name: DiskName,
        /// How the source is named in messages.
        source: String,
        /// Its size, for a stream; checked against a file's own.
        size: Option<u64>,
        block_size: u32,
    },
    DiskCreateFrom {
        name: DiskName,
        from: SnapshotRef,
    },
    DiskList,
    DiskDelete {
        name: DiskName,
        force: bool,
    },
    DiskRollback {
        to: SnapshotRef,
        force: bool,
    },
    DiskResize {
        name: DiskName,
        size: u64,
    },
    DiskRename {
        from: DiskName,
        to: DiskName,
    },
    /// With `freeze`, a descriptor of each directory to freeze comes along.
    SnapshotCreate {
        disks: Vec<DiskName>,
        name: Option<SnapName>,
        full: bool,
        /// How the directories to freeze are named, in the order of the
        /// descriptors.
        freeze: Vec<String>,
    },
    SnapshotList {
        disk: DiskName,
        /// Fill in each snapshot's content identity.
        identities: bool,
    },
    SnapshotId {
        snapshot: SnapshotRef,
    },
    SnapshotDelete {
        snapshots: Vec<SnapshotRef>,
    },
    SnapshotFull {
        snapshot: SnapshotRef,
    },
    SnapshotRename {
        snapshot: SnapshotRef,
        to: SnapName,
    },
    Prune {
        disk: DiskName,
        keep: Retention,
        dry_run: bool,
    },
    Usage {
        disk: Option<DiskName>,
    },
    UsageDaily {
        /// Days since 1970-01-01.
        from: Option<u32>,
        to: Option<u32>,
    },
    Gc,
    /// The target comes as a descriptor.
    Export {
        image: String,
        /// How the target is named in messages.
        target: String,
    },
    QuarantineList,
    QuarantinePurge,
    /// The byte ranges that may differ between two images (`from` absent:
    /// an empty disk).
    Diff {
        from: Option<String>,
        to: String,
    },
    /// The stream goes to the descriptor that comes along.
    Send {
        snapshot: SnapshotRef,
        /// `DISK@SNAP` or a bookmark, `DISK#SNAP`.
        from: Option<String>,
        /// A resume token from `receive --status`.
        resume: Option<String>,
    },
    /// The stream comes from the descriptor that comes along.
    Receive {
        as_disk: Option<DiskName>,
    },
    ReceiveStatus,
    ReceiveAbort {
        snapshot: Option<SnapshotRef>,
    },
    BookmarkList {
        disk: DiskName,
    },
    Verify {
        /// `DISK` or `DISK@SNAP`; none: everything.
        images: Vec<String>,
        /// Seconds: skip layers verified more recently.
        older_than: Option<u64>,
        /// Bytes a second to read at most.
        rate: Option<u64>,
        /// A replica's path to heal damaged blocks from.
        repair_from: Option<String>,
    },
    /// Only a daemon answers this: flush everything and unmount.
    Unmount,
    /// Who serves the repository, and what needs attention.
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Done,
    /// Sent, any number of times, before the answer to long work: how far
    /// it got (bytes done of a total).
    Progress {
        done: u64,
        total: u64,
    },
    /// Unmounted; the final flush's failure, if it failed.
    Unmounted {
        flush_failed: Option<String>,
    },
    Disk(DiskInfo),
    Disks(Vec<DiskInfo>),
    Snapshot(SnapshotInfo),
    Snapshots(Vec<SnapshotInfo>),
    Exported {
        size: u64,
        stats: ExportStats,
    },
    Quarantine(Vec<QuarantinedFile>),
    Deleted(DeleteReport),
    Pruned(PruneReport),
    Usage(UsageReport),
    Daily(DailyUsage),
    Gc(GcReport),
    /// A content identity, as 64 hex digits.
    Identity {
        identity: String,
    },
    Diff {
        /// Size of the `to` image, and of the `from` image (0: empty).
        size: u64,
        from_size: u64,
        /// `(offset, length)` byte ranges, merged, clipped to `size`.
        ranges: Vec<(u64, u64)>,
    },
    Sent(SendReport),
    Bookmarks(Vec<BookmarkInfo>),
    Verified(VerifyReport),
    Received(ReceiveReport),
    PartialReceives(Vec<PartialReceive>),
    /// Receives discarded, by snapshot.
    Aborted(Vec<String>),
    Status(Status),
    /// The request was refused; `usage` marks bad arguments (exit status 2).
    Refused {
        message: String,
        usage: bool,
    },
}

/// What `strata status` shows of a repository and the process serving it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The strata version of the process that answered.
    pub strata: String,
    pub pid: u32,
    pub repository: String,
    /// Files set aside in the quarantine, and their bytes.
    pub quarantined_files: u64,
    pub quarantined_bytes: u64,
    /// Disks that stopped taking writes after an I/O error.
    pub latched: Vec<Latched>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latched {
    pub disk: String,
    pub cause: String,
}

impl Status {
    pub fn of(repo: &Repository) -> Result<Status, StoreError> {
        let q = repo.quarantine()?;
        Ok(Status {
            strata: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            repository: repo.path().display().to_string(),
            quarantined_files: q.len() as u64,
            quarantined_bytes: q.iter().map(|f| f.bytes).sum(),
            latched: repo
                .latched()
                .into_iter()
                .map(|(disk, cause)| Latched { disk, cause })
                .collect(),
        })
    }
}

impl Request {
    /// Whether carrying it out changes a disk, a snapshot or an image
    /// (bookkeeping no image depends on, like a bookmark or a checksum,
    /// does not count).
    pub fn changes_repository(&self) -> bool {
        match self {
            Request::DiskList
            | Request::SnapshotList { .. }
            | Request::SnapshotId { .. }
            | Request::Usage { .. }
            | Request::UsageDaily { .. }
            | Request::Export { .. }
            | Request::Diff { .. }
            | Request::Send { .. }
            | Request::ReceiveStatus
            | Request::BookmarkList { .. }
            | Request::QuarantineList
            | Request::Status
            | Request::Unmount => false,
            Request::Prune { dry_run, .. } => !dry_run,
            // Mending a damaged copy from its twin puts back what was
            // stored; healing blocks from a replica writes layer data.
            Request::Verify { repair_from, .. } => repair_from.is_some(),
            _ => true,
        }
    }

    /// The command it comes from, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::DiskCreate { .. } => "disk create",
            Request::DiskImport { .. } => "disk import",
            Request::DiskCreateFrom { .. } => "disk create --from",
            Request::DiskList => "disk list",
            Request::DiskDelete { .. } => "disk delete",
            Request::DiskRollback { .. } => "disk rollback",
            Request::DiskResize { .. } => "disk resize",
            Request::DiskRename { .. } => "disk rename",
            Request::SnapshotCreate { .. } => "snapshot create",
            Request::SnapshotList { .. } => "snapshot list",
            Request::SnapshotId { .. } => "snapshot id",
            Request::SnapshotDelete { .. } => "snapshot delete",
            Request::SnapshotFull { .. } => "snapshot full",
            Request::SnapshotRename { .. } => "snapshot rename",
            Request::Prune { .. } => "prune",
            Request::Usage { .. } | Request::UsageDaily { .. } => "usage",
            Request::Gc => "gc",
            Request::Export { .. } => "export",
            Request::Diff { .. } => "diff",
            Request::Send { .. } => "send",
            Request::Receive { .. } => "receive",
            Request::ReceiveStatus => "receive --status",
            Request::ReceiveAbort { .. } => "receive --abort",
            Request::BookmarkList { .. } => "snapshot list",
            Request::Verify { .. } => "verify",
            Request::QuarantineList => "quarantine list",
            Request::Status => "status",
            Request::QuarantinePurge => "quarantine purge",
            Request::Unmount => "umount",
        }
    }
}

impl Response {
    pub fn refused(e: StoreError) -> Response {
        Response::Refused {
            usage: matches!(e, StoreError::Name(_) | StoreError::Size(_)),
            message: e.to_string(),
        }
    }
}

/// Carries out `req` against `repo`. `files` are the descriptors the
/// request works on, if it takes any. `progress` hears about long work.
pub fn execute(
    repo: &Repository,
    req: Request,
    files: Vec<File>,
    progress: &mut dyn FnMut(u64, u64),
) -> Response {
    let mut files = files.into_iter();
    let mut file = files.next();
    let result = (|| -> Result<Response, StoreError> {
        let needs_file = |what: &str| {
            StoreError::invalid(
                "request",
                format!("{what} needs the file it works on, and none came with it"),
            )
        };
        Ok(match req {
            Request::DiskCreate {
                name,
                size,
                block_size,
            } => Response::Disk(repo.create_disk(&name, size, block_size)?),
            Request::DiskImport {
                name,
                source,
                size,
                block_size,
            } => {
                let file = file.ok_or_else(|| needs_file("an import"))?;
                let src = ImportSource {
                    file: &file,
                    name: Path::new(&source),
                    size,
                };
                Response::Disk(repo.import_disk(&name, &src, block_size, progress)?)
            }
            Request::DiskCreateFrom { name, from } => {
                Response::Disk(repo.create_disk_from(&name, &from)?)
            }
            Request::DiskList => Response::Disks(repo.disks()?),
            Request::DiskDelete { name, force } => {
                Response::Deleted(repo.delete_disk(&name, force)?)
            }
            Request::DiskRollback { to, force } => Response::Disk(repo.rollback(&to, force)?),
            Request::DiskResize { name, size } => Response::Disk(repo.resize_disk(&name, size)?),
            Request::DiskRename { from, to } => {
                repo.rename_disk(&from, &to)?;
                Response::Done
            }
            Request::SnapshotCreate {
                disks,
                name,
                full,
                freeze,
            } => {
                let dirs: Vec<(File, String)> =
                    file.take().into_iter().chain(files).zip(freeze).collect();
                let freezer = if dirs.is_empty() {
                    None
                } else {
                    Some(freeze::Freezer::new(repo.path(), dirs)?)
                };
                let heard = std::cell::RefCell::new(&mut *progress);
                let progress = |done, total| (heard.borrow_mut())(done, total);
                let opts = SnapshotOptions {
                    full,
                    critical: freezer.as_ref().map(|f| f as &dyn crate::store::Critical),
                    progress: Some(&progress),
                };
                Response::Snapshots(repo.snapshot_many(&disks, name, &opts)?)
            }
            Request::SnapshotList { disk, identities } => {
                let mut snaps = repo.snapshots(&disk)?;
                if identities {
                    for s in &mut snaps {
                        let r = SnapshotRef {
                            disk: disk.clone(),
                            snap: SnapName::parse(&s.name)?,
                        };
                        s.identity = Some(repo.identity(&r)?.to_string());
                    }
                }
                Response::Snapshots(snaps)
            }
            Request::SnapshotId { snapshot } => Response::Identity {
                identity: repo.identity(&snapshot)?.to_string(),
            },
            Request::SnapshotDelete { snapshots } => {
                Response::Deleted(repo.delete_snapshots(&snapshots)?)
            }
            Request::SnapshotFull { snapshot } => {
                Response::Snapshot(repo.make_full(&snapshot, progress)?)
            }
            Request::SnapshotRename { snapshot, to } => {
                repo.rename_snapshot(&snapshot, &to)?;
                Response::Done
            }
            Request::Prune {
                disk,
                keep,
                dry_run,
            } => Response::Pruned(repo.prune(&disk, &keep, dry_run)?),
            Request::Usage { disk } => Response::Usage(repo.usage(disk.as_ref())?),
            Request::UsageDaily { from, to } => Response::Daily(repo.daily_usage(from, to)?),
            Request::Gc => Response::Gc(repo.gc()?),
            Request::Export { image, target } => {
                let file = file.ok_or_else(|| needs_file("an export"))?;
                let r = ImageRef::parse(&image)?;
                let img = repo.open_image(&r)?;
                let target = ExportTarget {
                    file: &file,
                    name: Path::new(&target),
                };
                let stats = export(img.as_ref(), &target, progress)?;
                Response::Exported {
                    size: img.size(),
                    stats,
                }
            }
            Request::Diff { from, to } => {
                let from = from.as_deref().map(ImageRef::parse).transpose()?;
                let d = repo.diff(from.as_ref(), &ImageRef::parse(&to)?)?;
                Response::Diff {
                    size: d.size,
                    from_size: d.from_size,
                    ranges: d.ranges(),
                }
            }
            Request::Send {
                snapshot,
                from,
                resume,
            } => {
                let file = file.ok_or_else(|| needs_file("a send"))?;
                let token = resume.as_deref().map(ResumeToken::parse).transpose()?;
                let from = from.as_deref().map(SendBase::parse).transpose()?;
                let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                let report =
                    repo.send(&snapshot, from.as_ref(), token.as_ref(), &mut out, progress)?;
                Response::Sent(report)
            }
            Request::Receive { as_disk } => {
                let file = file.ok_or_else(|| needs_file("a receive"))?;
                let mut input = std::io::BufReader::with_capacity(1 << 20, file);
                Response::Received(repo.receive(&mut input, as_disk.as_ref(), progress)?)
            }
            Request::Verify {
                images,
                older_than,
                rate,
                repair_from,
            } => {
                let opts = VerifyOptions {
                    images: images
                        .iter()
                        .map(|i| ImageRef::parse(i))
                        .collect::<Result<_, _>>()?,
                    older_than: older_than.map(std::time::Duration::from_secs),
                    rate,
                    repair_from: repair_from.map(std::path::PathBuf::from),
                };
                Response::Verified(repo.verify(&opts, progress)?)
            }
            Request::BookmarkList { disk } => Response::Bookmarks(repo.bookmarks(Some(&disk))?),
            Request::ReceiveStatus => Response::PartialReceives(repo.partial_receives()?),
            Request::ReceiveAbort { snapshot } => {
                Response::Aborted(repo.abort_receives(snapshot.as_ref())?)
            }
            Request::QuarantineList => Response::Quarantine(repo.quarantine()?),
            Request::Status => Response::Status(Status::of(repo)?),
            Request::QuarantinePurge => Response::Quarantine(repo.purge_quarantine()?),
            Request::Unmount => Response::Refused {
                message: "the repository is not mounted".into(),
                usage: false,
            },
        })
    })();
    result.unwrap_or_else(Response::refused)
}

/// Sends one message, with `files` attached.
pub(crate) fn send<T: Serialize>(stream: &UnixStream, body: T, files: &[File]) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: PROTOCOL_VERSION,
        strata: env!("CARGO_PKG_VERSION").to_string(),
        body,
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut msg = len.to_le_bytes().to_vec();
    msg.extend_from_slice(&bytes);
    let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
    crate::sys::send_with_fds(stream, &msg, &fds)
}

/// Receives one message, and the descriptors that came with it.
pub(crate) fn receive<T: DeserializeOwned>(stream: &UnixStream) -> io::Result<(T, Vec<OwnedFd>)> {
    use std::io::Read;
    let mut len = [0u8; 4];
    let fds = crate::sys::recv_with_fds(stream, &mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message of {len} bytes is too large"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    let mut r = stream;
    r.read_exact(&mut buf)?;
    Ok((decode_message(&buf)?, fds))
}

/// Decodes one message's bytes (what follows its length): a message of
/// another protocol version is named as such, never decoded as this one.
pub fn decode_message<T: DeserializeOwned>(buf: &[u8]) -> io::Result<T> {
    // The version leads the envelope, so it decodes whatever follows.
    let version = postcard::take_from_bytes::<u32>(buf)
        .map(|(v, _)| v)
        .unwrap_or(0);
    if version != PROTOCOL_VERSION {
        // Since protocol 5 the sender's strata version comes next.
        let strata = postcard::take_from_bytes::<(u32, String)>(buf)
            .ok()
            .filter(|_| version >= 5)
            .map(|((_, s), _)| s);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            VersionMismatch {
                theirs: version,
                strata,
            },
        ));
    }
    postcard::from_bytes::<Envelope<T>>(buf)
        .map(|e| e.body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control fuzz target's seeds (fuzz/make-seeds writes them by
    /// hand, byte by byte) are messages of the current protocol: a change
    /// to a message that moves them shows here.
    #[test]
    fn the_fuzz_seeds_are_real_messages() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/control");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let version = if name.starts_with("response-") {
                postcard::from_bytes::<Envelope<Response>>(&bytes).map(|e| e.version)
            } else {
                postcard::from_bytes::<Envelope<Request>>(&bytes).map(|e| e.version)
            };
            assert_eq!(version.ok(), Some(PROTOCOL_VERSION), "{name}");
            seen += 1;
        }
        assert!(seen >= 8, "{seen} seeds in {}", dir.display());
    }
}
