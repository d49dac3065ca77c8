//! The control protocol: how `strata` commands reach a repository, whether a
//! mount's daemon owns it or the command opens it itself.
//!
//! Every command becomes a [`Request`]; [`execute`] carries it out against a
//! [`Repository`] and yields a [`Response`]. Without a daemon the CLI calls
//! [`execute`] itself; with one, it sends the request over the daemon's Unix
//! socket (`REPO/control.sock`, mode 0600) and the daemon calls [`execute`].
//! One code path either way.
//!
//! Wire format: each message is a `u32` little-endian length followed by a
//! postcard-encoded [`Envelope`]. A peer speaking another protocol version
//! is refused by name.

mod client;
mod server;

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use client::Client;
pub use server::{remove_socket, serve, ServerHooks};

use crate::store::{
    export, DiskInfo, DiskName, ExportStats, ImageRef, Repository, SnapName, SnapshotInfo,
    StoreError,
};

/// Bumped whenever [`Request`] or [`Response`] change shape.
pub const PROTOCOL_VERSION: u32 = 1;
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
    DiskImport {
        name: DiskName,
        /// Absolute path, opened by whoever executes the request.
        file: PathBuf,
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
    Export {
        image: String,
        /// Absolute path, written by whoever executes the request.
        file: PathBuf,
    },
    /// Only a daemon answers this: flush everything and unmount.
    Unmount,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Done,
    Disk(DiskInfo),
    Disks(Vec<DiskInfo>),
    Snapshot(SnapshotInfo),
    Snapshots(Vec<SnapshotInfo>),
    Exported {
        size: u64,
        stats: ExportStats,
    },
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

/// Carries out `req` against `repo`. `progress` hears about long work.
pub fn execute(repo: &Repository, req: Request, progress: &mut dyn FnMut(u64, u64)) -> Response {
    let result = (|| -> Result<Response, StoreError> {
        Ok(match req {
            Request::DiskCreate {
                name,
                size,
                block_size,
            } => Response::Disk(repo.create_disk(&name, size, block_size)?),
            Request::DiskImport {
                name,
                file,
                block_size,
            } => {
                let src = std::fs::File::open(&file).map_err(StoreError::io(&file))?;
                let source = crate::store::ImportSource {
                    file: &src,
                    name: &file,
                    size: None,
                };
                Response::Disk(repo.import_disk(&name, &source, block_size, progress)?)
            }
            Request::DiskList => Response::Disks(repo.disks()?),
            Request::SnapshotCreate { disk, name } => {
                Response::Snapshot(repo.snapshot(&disk, name)?)
            }
            Request::SnapshotList { disk } => Response::Snapshots(repo.snapshots(&disk)?),
            Request::Export { image, file } => {
                let r = ImageRef::parse(&image)?;
                let img = repo.open_image(&r)?;
                let stats = export(img.as_ref(), &file, progress)?;
                Response::Exported {
                    size: img.size(),
                    stats,
                }
            }
            Request::Unmount => Response::Refused {
                message: "the repository is not mounted".into(),
                usage: false,
            },
        })
    })();
    result.unwrap_or_else(Response::refused)
}

pub(crate) fn send<T: Serialize>(w: &mut impl Write, body: T) -> io::Result<()> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: PROTOCOL_VERSION,
        body,
    })
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len =
        u32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    w.flush()
}

pub(crate) fn receive<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message of {len} bytes is too large"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
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
    postcard::from_bytes::<Envelope<T>>(&buf)
        .map(|e| e.body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
