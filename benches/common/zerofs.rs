//! The FUSE ceiling: a minimal file system of one file, `zero.img`, that
//! answers every read from one buffer in memory, mounted with strata's own
//! kernel and session settings. What no FUSE file system on this machine
//! can beat. Its file is opened with `FOPEN_KEEP_CACHE` (read through the
//! kernel's page cache), or with `FOPEN_DIRECT_IO` (straight to the
//! reader), as strata opens a snapshot image the first time. Writes are
//! answered at once and their bytes dropped: the write-through ceiling.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};
use strata::fs::daemon::{session_config, tune_readahead, MountOptions};

pub const NAME: &str = "zero.img";

pub struct ZeroFs {
    size: u64,
    direct: bool,
    /// What every read returns a piece of: 1 MiB of bytes that are not
    /// zeros, in memory (not the kernel's shared zero page, which a
    /// server holding real data never reads from).
    data: Vec<u8>,
}

impl ZeroFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == 1;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir { 0 } else { self.size },
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o644 },
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 1 << 16,
            flags: 0,
        }
    }
}

impl Filesystem for ZeroFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        strata::fs::kernel_settings(config);
        Ok(())
    }
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == NAME {
            reply.entry(&Duration::from_secs(3600), &self.attr(2), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }
    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&Duration::from_secs(3600), &self.attr(ino.0));
    }
    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = if self.direct {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        reply.opened(FileHandle(0), flags);
    }
    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let n = (size as u64)
            .min(self.size.saturating_sub(offset))
            .min(self.data.len() as u64);
        reply.data(&self.data[..n as usize]);
    }
    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // As strata's live.img: nothing past the end, a short write at it.
        match self.size.saturating_sub(offset).min(data.len() as u64) {
            0 => reply.error(Errno::EFBIG),
            n => reply.written(n as u32),
        }
    }
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// Mounts the file of `size` bytes on `mp` (which must exist), with
/// strata's read-ahead, opened for reads through the page cache or
/// (`direct`) straight to the reader; unmounted when the session is
/// dropped.
pub fn mount(mp: &Path, size: u64, direct: bool) -> BackgroundSession {
    let data = (0..1usize << 20).map(|i| (i % 251) as u8 + 1).collect();
    let session = fuser::spawn_mount(
        ZeroFs { size, direct, data },
        mp,
        &session_config("zerofs", &MountOptions::default()),
    )
    .unwrap();
    tune_readahead(mp);
    session
}
