//! The store's one seam to the file system.
//!
//! Every byte the store reads or writes in a repository, every sync, rename
//! and removal goes through a [`Storage`] and the [`StorageFile`]s it opens.
//! [`LocalStorage`] is the real file system. The other backends exist to
//! prove the store right without arguing: [`sim::SimStorage`] keeps files in
//! memory and can rebuild what a disk would hold after a power cut at any
//! point, and [`faults::FaultyStorage`] makes the Nth operation of a kind
//! fail. A remote backend for frozen layers would plug in here too.
//!
//! The seam is deliberately narrow: positional reads and writes, hole
//! punching, length, syncs, and the few namespace operations the store
//! needs. Paths are the same absolute paths whatever the backend.

pub mod faults;
pub mod sim;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sys;

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Other,
}

/// The result of trying to take a repository's lock.
pub enum LockOutcome {
    /// Taken; dropping the guard releases it.
    Taken(Box<dyn Send + Sync>),
    /// Held by someone else: the holder's PID where it can be told.
    Held(Option<u32>),
}

/// A file system the store keeps a repository in.
pub trait Storage: Send + Sync {
    /// Opens an existing file for reading, or for reading and writing.
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>>;
    /// Creates a file that must not exist yet, open for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The names in a directory, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// What `path` names, or `None` if nothing.
    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>>;
    /// Takes the exclusive lock of the lock file at `path`, creating it,
    /// and records this process's PID in it.
    fn lock(&self, path: &Path) -> io::Result<LockOutcome>;
    /// The path a local process can open to read this file directly (FUSE
    /// passthrough), if the backend keeps files on the local file system.
    fn local_path(&self, path: &Path) -> Option<PathBuf> {
        let _ = path;
        None
    }

    /// Whether the repository should keep a reserve file on this storage
    /// (space for deleting on a full file system; see `store::ops::reserve`).
    fn wants_reserve(&self) -> bool {
        true
    }

    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.open(path, false)?;
        let len = f.len()?;
        let mut buf = vec![0u8; usize::try_from(len).map_err(|_| io::Error::other("too large"))?];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
}

/// An open file of a [`Storage`]. All I/O is positional.
// A file's length is an I/O call; nothing asks whether a file is empty.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    /// Reads at `offset`; fewer bytes only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Turns `len` bytes at `offset` into zeros that occupy no space; the
    /// length of the file does not change.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Makes the file's data (and the length needed to read it) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file's data and metadata durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Bytes the file occupies on the device.
    fn allocated_bytes(&self) -> io::Result<u64>;
    /// The first offset at or after `offset` that may hold data, or `None`
    /// when only holes follow. A backend without holes answers `offset`.
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>>;
    /// The first offset at or after `offset` in a hole (the end counts).
    fn seek_hole(&self, offset: u64) -> io::Result<u64>;

    /// Reads at `offset` only what is cached, never waiting for a device;
    /// `Ok(0)` when nothing is. Backends without a cache read nothing here,
    /// and the caller then reads with [`StorageFile::read_at`].
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let _ = (buf, offset);
        Ok(0)
    }
    /// Starts fetching a range so that a later read finds it ready.
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }

    /// Fills `buf` from `offset`; a short file is an `UnexpectedEof` error.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends before offset {}", offset + buf.len() as u64),
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The local file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalStorage;

struct LocalFile {
    file: File,
}

impl Storage for LocalStorage {
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Arc::new(LocalFile { file }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        // The repository's files are its owner's alone.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(LocalFile { file }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }

    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_file() => Ok(Some(EntryKind::File)),
            Ok(md) if md.is_dir() => Ok(Some(EntryKind::Dir)),
            Ok(_) => Ok(Some(EntryKind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lock(&self, path: &Path) -> io::Result<LockOutcome> {
        Ok(match sys::RepoLock::take(path)? {
            Ok(lock) => LockOutcome::Taken(Box::new(lock)),
            Err(holder) => LockOutcome::Held(holder),
        })
    }

    fn local_path(&self, path: &Path) -> Option<PathBuf> {
        Some(path.to_owned())
    }
}

impl StorageFile for LocalFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::punch_hole(&self.file, offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        sys::seek_data(&self.file, offset)
    }
    fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        sys::seek_hole(&self.file, offset)
    }
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        sys::pread_cached(&self.file, buf, offset)
    }
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::prefetch(&self.file, offset, len)
    }
}
