//! The store's error type: one variant per thing that can fail, carrying the
//! path, disk, snapshot or offset involved, worded so a person knows what to do.

use std::io;
use std::path::PathBuf;

use super::names::{DiskName, NameError, SnapshotRef};
use crate::units::SizeError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is not a strata repository (it has no strata.repo); create one with `strata init`"
    )]
    NotARepository(PathBuf),
    #[error("{0} already holds a strata repository")]
    AlreadyARepository(PathBuf),
    #[error("{path} was written by a newer strata (format version {found}; this build reads up to {supported}); upgrade strata to open it")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} needs features this build does not have (incompatible feature bits {bits:#x}); upgrade strata to open it")]
    UnknownFeatures { path: PathBuf, bits: u32 },
    #[error("{path} is damaged: {what}; nothing was changed (restore the file from a backup, or from a replica of the repository)")]
    Corrupt { path: PathBuf, what: String },
    #[error("repository {root} does not match its catalog: {what}; nothing was changed. {hint}", root = .root.display())]
    Inconsistent {
        root: PathBuf,
        what: String,
        hint: String,
    },
    #[error("repository {path} is in use by PID {pid}; stop that process or run the command against its mount")]
    Locked { path: PathBuf, pid: String },
    #[error("disk '{disk}' stopped accepting writes after an I/O error ({cause}); nothing written since is acknowledged. Open the repository again (remount) to recover every write acknowledged before the error")]
    Latched { disk: DiskName, cause: String },
    #[error("the repository stopped accepting changes after its catalog could not be written ({cause}). Open it again (remount) to go on")]
    CatalogLatched { cause: String },
    #[error("{path}: {source}; the change may or may not have been made durable (open the repository again to find out)")]
    Uncertain {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk '{0}' does not exist (see `strata disk list`)")]
    NoSuchDisk(DiskName),
    #[error("disk '{0}' already exists")]
    DiskExists(DiskName),
    #[error("snapshot '{0}' does not exist (see `strata snapshot list {disk}`)", disk = .0.disk)]
    NoSuchSnapshot(SnapshotRef),
    #[error("snapshot '{0}' already exists")]
    SnapshotExists(SnapshotRef),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    /// A request refused for a reason the message says in full.
    #[error("{0}")]
    Refused(String),
    #[error("I/O of {len} bytes at offset {offset} is outside disk '{disk}' ({size} bytes)")]
    OutOfRange {
        disk: DiskName,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{0} is read-only")]
    ReadOnly(String),
    /// A data block that does not match its checksum: it is never served.
    #[error("{path}: block {block} (image offset {offset}) does not match its checksum; `strata verify` lists every damaged block and the images that read it")]
    Damaged {
        path: PathBuf,
        block: u64,
        offset: u64,
    },
}

impl StoreError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    /// Like [`StoreError::io`], for making the file at `path` `size` bytes
    /// long: a size past the host file system's largest file (`EFBIG`) is
    /// explained rather than passed on as "File too large".
    pub fn io_len(path: impl Into<PathBuf>, size: u64) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| {
            if source.raw_os_error() != Some(libc::EFBIG) {
                return StoreError::Io { path, source };
            }
            let dir = path.parent().unwrap_or(&path);
            StoreError::Refused(format!(
                "the file system holding {} cannot hold a file of {} (ext4, for one, stops at 16 TiB); \
                 make the disk smaller, or keep the repository on XFS or btrfs",
                dir.display(),
                crate::units::format_size(size)
            ))
        }
    }

    pub fn corrupt(path: impl Into<PathBuf>, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            what: what.into(),
        }
    }

    pub fn invalid(what: &'static str, why: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            what,
            why: why.into(),
        }
    }

    /// The errno a file system should answer with for this error.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::Io { source, .. } | StoreError::Uncertain { source, .. } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            StoreError::Latched { .. } | StoreError::CatalogLatched { .. } => libc::EIO,
            StoreError::NoSuchDisk(_) | StoreError::NoSuchSnapshot(_) => libc::ENOENT,
            StoreError::DiskExists(_) | StoreError::SnapshotExists(_) => libc::EEXIST,
            StoreError::OutOfRange { .. } => libc::EFBIG,
            StoreError::ReadOnly(_) => libc::EROFS,
            StoreError::Locked { .. } => libc::EBUSY,
            StoreError::Name(_)
            | StoreError::Size(_)
            | StoreError::Invalid { .. }
            | StoreError::Refused(_) => libc::EINVAL,
            StoreError::NotARepository(_)
            | StoreError::AlreadyARepository(_)
            | StoreError::NewerFormat { .. }
            | StoreError::UnknownFeatures { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Damaged { .. }
            | StoreError::Inconsistent { .. } => libc::EIO,
        }
    }
}
