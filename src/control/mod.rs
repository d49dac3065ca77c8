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
//! postcard-encoded [`Envelope`]; a descriptor travels with the length. A
//! peer speaking another protocol version is refused by name.

mod client;
mod server;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use client::Client;
pub use server::{remove_socket, serve, ServerHooks};

use crate::store::{
    export, DiskInfo, DiskName, ExportStats, ExportTarget, ImageRef, ImportSource, QuarantinedFile,
    Repository, SnapName, SnapshotInfo, StoreError,
};

/// Bumped whenever [`Request`] or [`Response`] change shape.
pub const PROTOCOL_VERSION: u32 = 2;
/// Largest message accepted, so a confused peer cannot make us allocate GiBs.
const MAX_MESSAGE: u32 = 64 << 20;

/// The socket's file name inside the repository.
pub const SOCKET_FILE: &str = "control.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u32,
    pub body: T,
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
    DiskList,
    SnapshotCreate {
        disk: DiskName,
        name: Option<SnapName>,
    },
    SnapshotList {
        disk: DiskName,
    },
    /// The target comes as a descriptor.
    Export {
        image: String,
        /// How the target is named in messages.
        target: String,
    },
    QuarantineList,
    QuarantinePurge,
    /// Only a daemon answers this: flush everything and unmount.
    Unmount,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Done,
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
    /// The request was refused; `usage` marks bad arguments (exit status 2).
    Refused {
        message: String,
        usage: bool,
    },
}

impl Response {
    pub fn refused(e: StoreError) -> Response {
        Response::Refused {
            usage: matches!(e, StoreError::Name(_) | StoreError::Size(_)),
            message: e.to_string(),
        }
    }
}

/// Carries out `req` against `repo`. `file` is the descriptor the request
/// works on, if it takes one. `progress` hears about long work.
pub fn execute(
    repo: &Repository,
    req: Request,
    file: Option<File>,
    progress: &mut dyn FnMut(u64, u64),
) -> Response {
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
            Request::DiskList => Response::Disks(repo.disks()?),
            Request::SnapshotCreate { disk, name } => {
                Response::Snapshot(repo.snapshot(&disk, name)?)
            }
            Request::SnapshotList { disk } => Response::Snapshots(repo.snapshots(&disk)?),
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
            Request::QuarantineList => Response::Quarantine(repo.quarantine()?),
            Request::QuarantinePurge => Response::Quarantine(repo.purge_quarantine()?),
            Request::Unmount => Response::Refused {
                message: "the repository is not mounted".into(),
                usage: false,
            },
        })
    })();
    result.unwrap_or_else(Response::refused)
}

/// Sends one message, with `fd` attached if given.
pub(crate) fn send<T: Serialize>(
    stream: &UnixStream,
    body: T,
    fd: Option<&File>,
) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    let mut msg = len.to_le_bytes().to_vec();
    msg.extend_from_slice(&bytes);
    crate::sys::send_with_fd(stream, &msg, fd.map(|f| f.as_raw_fd()))
}

/// Receives one message, and the descriptor that came with it, if any.
pub(crate) fn receive<T: DeserializeOwned>(
    stream: &UnixStream,
) -> io::Result<(T, Option<OwnedFd>)> {
    use std::io::Read;
    let mut len = [0u8; 4];
    let fd = crate::sys::recv_with_fd(stream, &mut len)?;
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
    // The version leads the envelope, so it decodes whatever follows.
    let version = postcard::take_from_bytes::<u32>(&buf)
        .map(|(v, _)| v)
        .unwrap_or(0);
    if version != PROTOCOL_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the other side speaks control protocol {version}, this strata speaks {PROTOCOL_VERSION}; \
                 use the same strata binary for the mount and the command"
            ),
        ));
    }
    let body = postcard::from_bytes::<Envelope<T>>(&buf)
        .map(|e| e.body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((body, fd))
}
