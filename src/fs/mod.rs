//! The FUSE driver: every disk and snapshot of a repository as an image file.
//!
//! ```text
//! MOUNTPOINT/<disk>/live.img               read-write, the disk's live image
//! MOUNTPOINT/<disk>/snapshots/<snap>.img   read-only, the disk as it was
//! MOUNTPOINT/<disk>/changes/<snap>.img     read-only: what <snap> changed since
//!                                          the snapshot before it, holes elsewhere
//! MOUNTPOINT/<disk>/changes/<a>~<b>.img    the same between any two (looked up,
//!                                          not listed)
//! ```
//!
//! Handlers decode the request, call the store, and reply; they never panic
//! on a failure. Writes go through to the store before they are
//! acknowledged (no write-back cache), so a snapshot holds every write that
//! returned to its writer. Snapshot images never change: they get long
//! attribute lifetimes, a flat one is read by the kernel from its layer
//! file (passthrough), and the others are streamed on their first open
//! ([`stream`], `FOPEN_DIRECT_IO`) and kept in the kernel's page cache on
//! later opens (`FOPEN_KEEP_CACHE`).
//!
//! The tree changes under the kernel when a command deletes, renames or
//! rolls back (see [`keeper`]): images are inodes by identity (their layer,
//! their disk's id), never by name, and the keeper invalidates what the
//! kernel cached for what changed.

pub mod daemon;
mod inodes;
mod keeper;
mod stream;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use crate::store::ops::diff::Changes;
use crate::store::{
    Disk, DiskName, ImageRead, LayerId, Repository, SnapName, Snapshot, SnapshotRef, StoreError,
    WriterGuard,
};
use crate::sys;
use inodes::{Inodes, Node};
pub use keeper::Keeper;
use stream::{Stream, Streams};

/// How long the kernel may trust what it is told about directories and the
/// live image, which change; and about snapshots, which do not.
const TTL_CHANGING: Duration = Duration::from_secs(1);
const TTL_IMMUTABLE: Duration = Duration::from_secs(3600);
const LIVE_NAME: &str = "live.img";
const SNAP_DIR: &str = "snapshots";
const CHANGES_DIR: &str = "changes";
const IMG_SUFFIX: &str = ".img";
/// Largest read or write the kernel will send (its request cap is 1 MiB).
const MAX_IO: u32 = 1 << 20;

/// Images remembered as opened once; past this the memory starts over.
const STREAMED_MAX: usize = 1 << 16;
/// Threads that prepare streamed reads ahead (see [`stream`]).
const STREAM_WORKERS: usize = 2;

thread_local! {
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

enum Open {
    Live {
        disk: Arc<Disk>,
        /// Held while the handle may write: rollback and delete refuse
        /// meanwhile unless forced.
        _writer: Option<WriterGuard>,
    },
    Snapshot {
        snap: Arc<Snapshot>,
        /// Reads prepared ahead, for a first open (streamed).
        stream: Option<Arc<Stream>>,
    },
    Changes(Arc<Changes>),
    /// A snapshot the kernel reads from its one layer file itself; the
    /// backing id must live as long as the open file.
    Passthrough {
        snap: Arc<Snapshot>,
        _backing: Arc<fuser::BackingId>,
    },
}

impl Open {
    /// Which image, for the log.
    fn describe(&self) -> String {
        match self {
            Open::Live { disk, .. } => format!("disk {}", disk.name()),
            Open::Snapshot { snap: s, .. } | Open::Passthrough { snap: s, .. } => {
                format!("snapshot {}@{}", s.info().disk, s.info().name)
            }
            Open::Changes(c) => {
                let i = c.snapshot().info();
                format!("changes of {}@{}", i.disk, i.name)
            }
        }
    }

    fn image(&self) -> &dyn ImageRead {
        match self {
            Open::Live { disk, .. } => disk.as_ref(),
            Open::Snapshot { snap: s, .. } | Open::Passthrough { snap: s, .. } => s.as_ref(),
            Open::Changes(c) => c.as_ref(),
        }
    }
}

pub struct StrataFs {
    repo: Arc<Repository>,
    read_only: bool,
    /// The kernel agreed to FUSE passthrough (it needs root).
    passthrough: bool,
    /// `-o checked`: no passthrough, so every read is checked.
    checked: bool,
    /// Permission bits taken away (`-o umask=`, default 077).
    umask: u16,
    uid: u32,
    gid: u32,
    mounted: SystemTime,
    inodes: Arc<Inodes>,
    handles: RwLock<HashMap<u64, Arc<Open>>>,
    next_fh: AtomicU64,
    /// When each live image (by disk id) was last written through this mount.
    written: Mutex<HashMap<LayerId, SystemTime>>,
    /// The backing file of each passthrough inode while it is open: the
    /// kernel allows one backing file per inode, shared by all its opens.
    backings: Mutex<HashMap<u64, std::sync::Weak<fuser::BackingId>>>,
    /// Asks the keeper to give back a deleted snapshot's layer once its
    /// last handle is closed.
    tidy: keeper::TidyHandle,
    /// Bytes of each changes image seen, by (from, to) layers.
    changed: Mutex<HashMap<(Option<LayerId>, LayerId), u64>>,
    /// The snapshot images (by layer) opened once already: see
    /// [`StrataFs::cache_policy`].
    streamed: Mutex<std::collections::HashSet<LayerId>>,
    /// What prepares streamed reads ahead of their readers.
    streams: Streams,
    /// Each open directory's listing, made once at opendir: the kernel
    /// reads a directory in many small replies, and 10,000 snapshots
    /// listed again for each would cost the square of the count.
    listings: Mutex<HashMap<u64, Arc<Listing>>>,
}

type Listing = Vec<(Node, FileType, String)>;

fn errno(e: &StoreError) -> Errno {
    Errno::from_i32(e.errno())
}

fn from_ns(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl StrataFs {
    pub fn new(repo: Arc<Repository>, read_only: bool) -> StrataFs {
        StrataFs {
            repo,
            read_only,
            passthrough: false,
            checked: false,
            umask: 0o077,
            uid: sys::effective_uid(),
            gid: sys::effective_gid(),
            mounted: SystemTime::now(),
            inodes: Arc::new(Inodes::default()),
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            written: Mutex::new(HashMap::new()),
            backings: Mutex::new(HashMap::new()),
            tidy: keeper::TidyHandle::default(),
            changed: Mutex::new(HashMap::new()),
            streamed: Mutex::new(Default::default()),
            streams: Streams::start(STREAM_WORKERS),
            listings: Mutex::new(HashMap::new()),
        }
    }

    /// Who owns the tree and which permission bits it withholds
    /// (`-o uid=,gid=,umask=`); `None` keeps the default.
    pub fn set_owner(&mut self, uid: Option<u32>, gid: Option<u32>, umask: Option<u32>) {
        if let Some(u) = uid {
            self.uid = u;
        }
        if let Some(g) = gid {
            self.gid = g;
        }
        if let Some(m) = umask {
            self.umask = (m & 0o777) as u16;
        }
    }

    /// Serves every read itself, checking each block (`-o checked`).
    pub fn set_checked(&mut self, checked: bool) {
        self.checked = checked;
    }

    /// What keeps the kernel's caches true to the repository; started with
    /// the session's notifier once mounted.
    pub fn keeper(&self) -> Keeper {
        Keeper::new(self.repo.clone(), self.inodes.clone(), self.tidy.clone())
    }

    /// When the directories of disk `d` were made: the disk's creation, or
    /// for a deleted disk whose snapshots remain, its first snapshot.
    fn dir_time(&self, d: &DiskName) -> Result<SystemTime, Errno> {
        if let Ok(info) = self.repo.live_info(d) {
            return Ok(from_ns(info.created));
        }
        let snaps = self.repo.snapshots(d).map_err(|e| errno(&e))?;
        Ok(snaps.first().map_or(self.mounted, |s| from_ns(s.taken)))
    }

    /// An open handle on the image `node`, if there is one: the kernel
    /// asks `fstat` of an open file without saying which handle.
    fn open_of(&self, node: &Node) -> Option<Arc<Open>> {
        let handles = self.handles.read();
        handles
            .values()
            .find(|o| match (o.as_ref(), node) {
                (Open::Live { disk, .. }, Node::Live(id)) => disk.id() == *id,
                (
                    Open::Snapshot { snap: s, .. } | Open::Passthrough { snap: s, .. },
                    Node::SnapImg(l),
                ) => s.info().layer == *l,
                _ => false,
            })
            .cloned()
    }

    /// `open`: the handle the kernel asks through, if any (an image whose
    /// name went away while open still answers for itself).
    fn attr(
        &self,
        ino: u64,
        node: &Node,
        open: Option<&Arc<Open>>,
    ) -> Result<(FileAttr, Duration), Errno> {
        let base = |kind, perm, size, blocks, time, ttl| {
            (
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks,
                    atime: time,
                    mtime: time,
                    ctime: time,
                    crtime: time,
                    kind,
                    perm,
                    nlink: if kind == FileType::Directory { 2 } else { 1 },
                    uid: self.uid,
                    gid: self.gid,
                    rdev: 0,
                    // What cp and the like size their reads by: the
                    // largest request the kernel sends.
                    blksize: MAX_IO,
                    flags: 0,
                },
                ttl,
            )
        };
        let mask = |perm: u16| perm & !self.umask;
        let dir = |time| base(FileType::Directory, mask(0o777), 0, 0, time, TTL_CHANGING);
        Ok(match node {
            Node::Root => dir(self.mounted),
            Node::DiskDir(d) | Node::SnapDir(d) | Node::ChangesDir(d) => dir(self.dir_time(d)?),
            Node::ChangesImg { from, to } => {
                let info = self.repo.snapshot_info_by_layer(*to).ok_or(Errno::ENOENT)?;
                let changed = self.changed_bytes(*from, *to)?;
                // The name's meaning moves when the snapshot before goes.
                base(
                    FileType::RegularFile,
                    mask(0o444),
                    info.size,
                    changed.div_ceil(512),
                    from_ns(info.taken),
                    TTL_CHANGING,
                )
            }
            Node::Live(id) => {
                let info = match self.repo.disk_name_of(*id) {
                    Some(name) => self.repo.live_info(&name).map_err(|e| errno(&e))?,
                    // Deleted (forced) while open: it answers for itself.
                    None => {
                        let open = open.cloned().or_else(|| self.open_of(node));
                        let Some(Open::Live { disk, .. }) = open.as_deref() else {
                            return Err(Errno::ENOENT);
                        };
                        crate::store::LiveInfo {
                            size: disk.size(),
                            live_bytes: disk.live_stored_bytes().map_err(|e| errno(&e))?,
                            ..Default::default()
                        }
                    }
                };
                let time = self
                    .written
                    .lock()
                    .get(id)
                    .copied()
                    .unwrap_or(from_ns(info.created));
                let perm = mask(if self.read_only { 0o444 } else { 0o666 });
                base(
                    FileType::RegularFile,
                    perm,
                    info.size,
                    info.live_bytes.div_ceil(512),
                    time,
                    TTL_CHANGING,
                )
            }
            Node::SnapImg(layer) => {
                let info = match self.repo.snapshot_info_by_layer(*layer) {
                    Some(info) => info,
                    // Deleted while open: it answers for itself.
                    None => {
                        let open = open.cloned().or_else(|| self.open_of(node));
                        let Some(
                            Open::Snapshot { snap: s, .. } | Open::Passthrough { snap: s, .. },
                        ) = open.as_deref()
                        else {
                            return Err(Errno::ENOENT);
                        };
                        s.info().clone()
                    }
                };
                let blocks = info.stored_bytes.div_ceil(512);
                base(
                    FileType::RegularFile,
                    mask(0o444),
                    info.size,
                    blocks,
                    from_ns(info.taken),
                    TTL_IMMUTABLE,
                )
            }
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        self.inodes.node(ino.0).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: &Node, name: &OsStr) -> Result<Node, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let node = match parent {
            Node::Root => Node::DiskDir(DiskName::parse(name).map_err(|_| Errno::ENOENT)?),
            Node::DiskDir(d) if name == LIVE_NAME => {
                let info = self.repo.live_info(d).map_err(|e| errno(&e))?;
                Node::Live(info.id)
            }
            Node::DiskDir(d) if name == SNAP_DIR => Node::SnapDir(d.clone()),
            Node::DiskDir(d) if name == CHANGES_DIR => Node::ChangesDir(d.clone()),
            Node::ChangesDir(d) => {
                let stem = name.strip_suffix(IMG_SUFFIX).ok_or(Errno::ENOENT)?;
                let layer = |s: &str| -> Result<LayerId, Errno> {
                    let r = SnapshotRef {
                        disk: d.clone(),
                        snap: SnapName::parse(s).map_err(|_| Errno::ENOENT)?,
                    };
                    Ok(self.repo.snapshot_info(&r).map_err(|e| errno(&e))?.layer)
                };
                match stem.split_once('~') {
                    Some((a, b)) => Node::ChangesImg {
                        from: Some(layer(a)?),
                        to: layer(b)?,
                    },
                    None => {
                        let to = layer(stem)?;
                        let snaps = self.repo.snapshots(d).map_err(|e| errno(&e))?;
                        let at = snaps.iter().position(|s| s.layer == to);
                        let from = at.and_then(|i| i.checked_sub(1)).map(|i| snaps[i].layer);
                        Node::ChangesImg { from, to }
                    }
                }
            }
            Node::SnapDir(d) => {
                let snap = name.strip_suffix(IMG_SUFFIX).ok_or(Errno::ENOENT)?;
                let r = SnapshotRef {
                    disk: d.clone(),
                    snap: SnapName::parse(snap).map_err(|_| Errno::ENOENT)?,
                };
                let info = self.repo.snapshot_info(&r).map_err(|e| errno(&e))?;
                Node::SnapImg(info.layer)
            }
            _ => return Err(Errno::ENOENT),
        };
        Ok(node)
    }

    /// The entries of a directory, `.` and `..` first.
    /// The listing of the directory open as `fh`, or a new one.
    fn listing(&self, ino: INodeNo, fh: FileHandle) -> Result<Arc<Listing>, Errno> {
        if let Some(l) = self.listings.lock().get(&fh.0) {
            return Ok(l.clone());
        }
        self.node(ino).and_then(|n| self.entries(&n)).map(Arc::new)
    }

    fn entries(&self, node: &Node) -> Result<Listing, Errno> {
        let dot = |n: &Node| (n.clone(), FileType::Directory, ".".to_string());
        let dotdot = |n: Node| (n, FileType::Directory, "..".to_string());
        Ok(match node {
            Node::Root => {
                let mut v = vec![dot(node), dotdot(Node::Root)];
                for d in self.repo.disk_names() {
                    let name = d.to_string();
                    v.push((Node::DiskDir(d), FileType::Directory, name));
                }
                v
            }
            Node::DiskDir(d) => {
                let mut v = vec![dot(node), dotdot(Node::Root)];
                // A deleted disk's directory keeps only its snapshots.
                if let Ok(info) = self.repo.live_info(d) {
                    v.push((Node::Live(info.id), FileType::RegularFile, LIVE_NAME.into()));
                }
                v.push((
                    Node::SnapDir(d.clone()),
                    FileType::Directory,
                    SNAP_DIR.into(),
                ));
                v.push((
                    Node::ChangesDir(d.clone()),
                    FileType::Directory,
                    CHANGES_DIR.into(),
                ));
                v
            }
            Node::ChangesDir(d) => {
                let mut v = vec![dot(node), dotdot(Node::DiskDir(d.clone()))];
                let mut from = None;
                for s in self.repo.snapshots(d).map_err(|e| errno(&e))? {
                    v.push((
                        Node::ChangesImg { from, to: s.layer },
                        FileType::RegularFile,
                        format!("{}{IMG_SUFFIX}", s.name),
                    ));
                    from = Some(s.layer);
                }
                v
            }
            Node::SnapDir(d) => {
                let mut v = vec![dot(node), dotdot(Node::DiskDir(d.clone()))];
                for s in self.repo.snapshots(d).map_err(|e| errno(&e))? {
                    v.push((
                        Node::SnapImg(s.layer),
                        FileType::RegularFile,
                        format!("{}{IMG_SUFFIX}", s.name),
                    ));
                }
                v
            }
            Node::Live(_) | Node::SnapImg(_) | Node::ChangesImg { .. } => {
                return Err(Errno::ENOTDIR)
            }
        })
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Open>, Errno> {
        self.handles.read().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// The errno for changing something under `parent`: snapshots are
    /// read-only, the rest of the tree is shaped by the repository.
    fn refuse_change(&self, parent: INodeNo) -> Errno {
        match self.inodes.node(parent.0) {
            Some(
                Node::SnapDir(_) | Node::SnapImg(_) | Node::ChangesDir(_) | Node::ChangesImg { .. },
            ) => Errno::EROFS,
            _ if self.read_only => Errno::EROFS,
            _ => Errno::EPERM,
        }
    }

    /// The backing file of a flat snapshot, if passthrough is on: the one
    /// already registered for this inode, or a new one. Any failure just
    /// means the daemon serves the reads itself.
    fn backing(
        &self,
        ino: u64,
        snap: &Snapshot,
        reply: &ReplyOpen,
    ) -> Option<Arc<fuser::BackingId>> {
        if !self.passthrough {
            return None;
        }
        let path = snap.flat_file()?;
        let mut backings = self.backings.lock();
        if let Some(id) = backings.get(&ino).and_then(|w| w.upgrade()) {
            return Some(id);
        }
        let file = std::fs::File::open(&path)
            .map_err(|e| log::debug!("{}: {e}", path.display()))
            .ok()?;
        let id = reply
            .open_backing(&file)
            .map_err(|e| log::debug!("passthrough for {}: {e}", path.display()))
            .ok()?;
        let id = Arc::new(id);
        backings.retain(|_, w| w.strong_count() > 0);
        backings.insert(ino, Arc::downgrade(&id));
        Some(id)
    }

    /// How the kernel keeps a daemon-served snapshot image it reads. The
    /// first open of an image streams it (`FOPEN_DIRECT_IO`): reads go
    /// straight to the reader's buffer, served from the layers' own pages,
    /// so a one-pass copy (`cp`, `dd`, `qemu-img convert`) does not hold
    /// the image a second time in the page cache, and the daemon reads
    /// ahead for it. Every later open is cached (`FOPEN_KEEP_CACHE`: the
    /// image never changes), so an image read again is served from the
    /// kernel's page cache.
    fn cache_policy(&self, layer: LayerId) -> FopenFlags {
        let mut streamed = self.streamed.lock();
        if streamed.len() >= STREAMED_MAX {
            streamed.clear();
        }
        if streamed.insert(layer) {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        }
    }

    /// The snapshot whose layer is `layer`, by name.
    fn snapshot_ref(&self, layer: LayerId) -> Result<SnapshotRef, Errno> {
        let info = self
            .repo
            .snapshot_info_by_layer(layer)
            .ok_or(Errno::ENOENT)?;
        Ok(SnapshotRef {
            disk: DiskName::parse(&info.disk).map_err(|_| Errno::ENOENT)?,
            snap: SnapName::parse(&info.name).map_err(|_| Errno::ENOENT)?,
        })
    }

    /// Bytes of the ranges the changes image of `to` since `from` holds
    /// (its `du`); the pair's changes never change, so they are kept.
    fn changed_bytes(&self, from: Option<LayerId>, to: LayerId) -> Result<u64, Errno> {
        if let Some(&n) = self.changed.lock().get(&(from, to)) {
            return Ok(n);
        }
        let to_ref = self.snapshot_ref(to)?;
        let from_ref = from.map(|f| self.snapshot_ref(f)).transpose()?;
        let d = self
            .repo
            .diff(
                from_ref.map(crate::store::ImageRef::Snapshot).as_ref(),
                &crate::store::ImageRef::Snapshot(to_ref),
            )
            .map_err(|e| errno(&e))?;
        let n = d.bytes();
        let mut cache = self.changed.lock();
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert((from, to), n);
        Ok(n)
    }

    fn open_node(&self, node: &Node, flags: OpenFlags) -> Result<(Open, FopenFlags), Errno> {
        let writing = flags.acc_mode() != OpenAccMode::O_RDONLY;
        match node {
            Node::Live(id) => {
                if writing && self.read_only {
                    return Err(Errno::EROFS);
                }
                // O_TRUNC is ignored, as a block device ignores it: the
                // image keeps its size (FUSE_ATOMIC_O_TRUNC delivers it here).
                let name = self.repo.disk_name_of(*id).ok_or(Errno::ENOENT)?;
                let disk = self.repo.disk(&name).map_err(|e| errno(&e))?;
                if disk.id() != *id {
                    return Err(Errno::ENOENT);
                }
                let writer = writing.then(|| disk.register_writer());
                let open = Open::Live {
                    disk,
                    _writer: writer,
                };
                Ok((open, FopenFlags::empty()))
            }
            Node::SnapImg(layer) => {
                if writing || flags.0 & libc::O_TRUNC != 0 {
                    return Err(Errno::EROFS);
                }
                let info = self
                    .repo
                    .snapshot_info_by_layer(*layer)
                    .ok_or(Errno::ENOENT)?;
                let r = SnapshotRef {
                    disk: DiskName::parse(&info.disk).map_err(|_| Errno::ENOENT)?,
                    snap: SnapName::parse(&info.name).map_err(|_| Errno::ENOENT)?,
                };
                let snap = self.repo.open_snapshot(&r).map_err(|e| errno(&e))?;
                // Deleted and its name reused in between: not this inode's.
                if snap.info().layer != *layer {
                    return Err(Errno::ENOENT);
                }
                let snap = Arc::new(snap);
                let policy = self.cache_policy(*layer);
                let stream = (policy == FopenFlags::FOPEN_DIRECT_IO)
                    .then(|| self.streams.open(snap.clone()));
                Ok((Open::Snapshot { snap, stream }, policy))
            }
            Node::ChangesImg { from, to } => {
                if writing || flags.0 & libc::O_TRUNC != 0 {
                    return Err(Errno::EROFS);
                }
                let to_ref = self.snapshot_ref(*to)?;
                let from_ref = from.map(|f| self.snapshot_ref(f)).transpose()?;
                let c = self
                    .repo
                    .open_changes(from_ref.as_ref(), &to_ref)
                    .map_err(|e| errno(&e))?;
                if c.snapshot().info().layer != *to {
                    return Err(Errno::ENOENT);
                }
                Ok((Open::Changes(Arc::new(c)), FopenFlags::FOPEN_KEEP_CACHE))
            }
            _ => Err(Errno::EISDIR),
        }
    }
}

/// What strata asks of the kernel at mount time; public so a benchmark's
/// baseline file system can ask exactly the same.
pub fn kernel_settings(config: &mut KernelConfig) {
    // Each is best effort: an older kernel offers less, and that is fine.
    for cap in [
        InitFlags::FUSE_ATOMIC_O_TRUNC,
        InitFlags::FUSE_ASYNC_DIO,
        InitFlags::FUSE_PARALLEL_DIROPS,
        // mmap of an image streamed with FOPEN_DIRECT_IO (shared, read-only).
        InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
    ] {
        let _ = config.add_capabilities(cap);
    }
    let _ = config
        .set_max_write(MAX_IO)
        .or_else(|max| config.set_max_write(max));
    let _ = config
        .set_max_readahead(MAX_IO)
        .or_else(|max| config.set_max_readahead(max));
    let _ = config.set_max_background(64);
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        kernel_settings(config);
        // Listings with attributes; the kernel picks plain readdir when
        // attributes would not be used (READDIRPLUS_AUTO).
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Passthrough lets the kernel read a flat snapshot's layer file
        // itself, at the host file system's own speed. Opening a backing
        // file needs CAP_SYS_ADMIN, so only root asks for it.
        self.passthrough = !self.checked
            && sys::effective_uid() == 0
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.repo.flush_all() {
            log::error!("flushing on unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .node(parent)
            .and_then(|p| self.child(&p, name))
            .and_then(|node| {
                let ino = self.inodes.ino(&node);
                self.attr(ino, &node, None)
            });
        match result {
            Ok((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let open = fh.and_then(|fh| self.handle(fh).ok());
        match self
            .node(ino)
            .and_then(|n| self.attr(ino.0, &n, open.as_ref()))
        {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let open = fh.and_then(|fh| self.handle(fh).ok());
        let result = self.node(ino).and_then(|node| {
            let (attr, ttl) = self.attr(ino.0, &node, open.as_ref())?;
            let resize = size.is_some_and(|s| s != attr.size);
            let owner = mode.is_some() || uid.is_some() || gid.is_some();
            let times = atime.is_some() || mtime.is_some();
            match node {
                Node::SnapImg(_) if resize || owner || times => Err(Errno::EROFS),
                Node::Live(_) if resize && self.read_only => Err(Errno::EROFS),
                // An image has the disk's size; a disk is not resized by truncate.
                Node::Live(_) if resize || owner => Err(Errno::EPERM),
                _ if node.is_dir() && (owner || resize) => Err(Errno::EPERM),
                // Timestamps follow writes and snapshots; touching them is a no-op.
                _ => Ok((attr, ttl)),
            }
        });
        match result {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_change(parent));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_change(parent));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_change(parent));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_change(parent));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_change(parent));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_change(parent));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        _name: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(self.refuse_change(newparent));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(self.refuse_change(parent));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (open, fopen) = match self.node(ino).and_then(|n| self.open_node(&n, flags)) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Open::Snapshot { snap, .. } = &open {
            if let Some(backing) = self.backing(ino.0, snap, &reply) {
                // Recorded before the reply: the next request may use it at once.
                let open = Open::Passthrough {
                    snap: snap.clone(),
                    _backing: backing.clone(),
                };
                self.handles.write().insert(fh, Arc::new(open));
                // The kernel refuses KEEP_CACHE with passthrough: the
                // backing file's own page cache serves the reads.
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                return;
            }
        }
        self.handles.write().insert(fh, Arc::new(open));
        reply.opened(FileHandle(fh), fopen);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let open = match self.handle(fh) {
            Ok(o) => o,
            Err(e) => return reply.error(e),
        };
        let img = open.image();
        let len = (size.min(MAX_IO) as u64).min(img.size().saturating_sub(offset)) as usize;
        let stream = match open.as_ref() {
            Open::Snapshot { stream, .. } => stream.as_ref(),
            _ => None,
        };
        if let Some(s) = stream {
            match s.take(offset, len) {
                Some(Ok(data)) => {
                    reply.data(&data);
                    s.give_back(data);
                    return;
                }
                Some(Err(f)) => {
                    log::error!(
                        "reading {} at offset {offset}: {}",
                        open.describe(),
                        f.error
                    );
                    reply.error(Errno::from_i32(f.errno));
                    return;
                }
                // Not prepared: read below, as any read.
                None => {}
            }
        }
        // One buffer per worker thread, reused: a fresh 1 MiB buffer per
        // request would cost 256 page faults each time.
        let read = READ_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0);
            }
            match img.read_at_traced(offset, &mut buf[..len]) {
                Ok(r) => {
                    reply.data(&buf[..r.len]);
                    Some(r)
                }
                Err(e) => {
                    log::error!("reading {} at offset {offset}: {e}", open.describe());
                    reply.error(errno(&e));
                    None
                }
            }
        });
        if let (Some(r), Some(s)) = (read, stream) {
            s.served(offset, r.len);
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.handle(fh).and_then(|open| {
            let Open::Live { disk, .. } = open.as_ref() else {
                return Err(Errno::EROFS);
            };
            if self.read_only {
                return Err(Errno::EROFS);
            }
            // Like a block device: nothing past the end, a short write at it.
            let room = disk.size().saturating_sub(offset);
            if room == 0 {
                return Err(Errno::EFBIG);
            }
            let len = (data.len() as u64).min(room) as usize;
            disk.write_at(offset, &data[..len]).map_err(|e| errno(&e))?;
            self.written.lock().insert(disk.id(), SystemTime::now());
            Ok(len as u32)
        });
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are already in the store; durability is fsync's job.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let result = self.handle(fh).and_then(|open| match open.as_ref() {
            Open::Live { disk, .. } => disk.flush().map_err(|e| errno(&e)),
            Open::Snapshot { .. } | Open::Passthrough { .. } | Open::Changes(_) => Ok(()),
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let open = self.handles.write().remove(&fh.0);
        reply.ok();
        if let Some(Open::Snapshot {
            stream: Some(s), ..
        }) = open.as_deref()
        {
            s.close();
        }
        let layer = match open.as_deref() {
            Some(Open::Snapshot { snap: s, .. } | Open::Passthrough { snap: s, .. }) => {
                Some(s.info().layer)
            }
            Some(Open::Changes(c)) => Some(c.snapshot().info().layer),
            _ => None,
        };
        drop(open);
        // An image that kept deleted snapshots' layers was closed: they
        // may go now.
        if layer.is_some_and(|l| self.repo.reads_hidden(l)) {
            self.tidy.request();
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = match self.node(ino) {
            Ok(n) if n.is_dir() => self.entries(&n),
            Ok(_) => Err(Errno::ENOTDIR),
            Err(e) => Err(e),
        };
        match listing {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.listings.lock().insert(fh, Arc::new(l));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings.lock().remove(&fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino, fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (node, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            let child = self.inodes.ino(node);
            if reply.add(INodeNo(child), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    // Entries with their attributes, so `ls -l` of 10,000 snapshots costs a
    // few replies rather than 10,000 lookups.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino, fh) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (node, _, name)) in entries.iter().enumerate().skip(offset as usize) {
            let child = self.inodes.ino(node);
            // Gone since the listing was made: left out.
            let Ok((attr, ttl)) = self.attr(child, node, None) else {
                continue;
            };
            if reply.add(
                INodeNo(child),
                i as u64 + 1,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match sys::statvfs(self.repo.path()) {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.bsize,
            ),
            Err(e) => reply.error(Errno::from(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = self.handle(fh).and_then(|open| {
            let Open::Live { disk, .. } = open.as_ref() else {
                return Err(Errno::EROFS);
            };
            if self.read_only {
                return Err(Errno::EROFS);
            }
            let size = disk.size();
            let end = offset.checked_add(length).ok_or(Errno::EINVAL)?;
            let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
            if mode
                & !(libc::FALLOC_FL_KEEP_SIZE
                    | libc::FALLOC_FL_PUNCH_HOLE
                    | libc::FALLOC_FL_ZERO_RANGE)
                != 0
            {
                return Err(Errno::from_i32(libc::EOPNOTSUPP));
            }
            if end > size && !keep {
                return Err(Errno::EFBIG);
            }
            if zeroing && offset < size {
                // Discard: the range reads as zeros and whole blocks cost nothing.
                disk.discard(offset, end.min(size) - offset)
                    .map_err(|e| errno(&e))?;
                self.written.lock().insert(disk.id(), SystemTime::now());
            }
            // Plain allocation: a thin disk reserves nothing, so it is done.
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // Images take no ioctls (a loop device asks some); ENOTTY says so,
    // without fuser's warning for each.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    // Images carry no extended attributes. ENOSYS tells the kernel once, and
    // it stops asking (fuser's default would log each probe).
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.refuse_change(ino));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.refuse_change(ino));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let result = self.handle(fh).and_then(|open| {
            let img = open.image();
            let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
            if offset >= img.size() {
                return Err(Errno::ENXIO);
            }
            let pos = match whence {
                libc::SEEK_DATA => img
                    .seek_data(offset)
                    .map_err(|e| errno(&e))?
                    .ok_or(Errno::ENXIO)?,
                libc::SEEK_HOLE => img.seek_hole(offset).map_err(|e| errno(&e))?,
                _ => return Err(Errno::EINVAL),
            };
            i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)
        });
        match result {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}
