//! Keeps the kernel's caches true to the repository while it changes under
//! the mount: a command deletes, renames or rolls back through the control
//! socket, and the store tells of it ([`Event`]); the keeper invalidates
//! what the kernel cached for what changed (entries, attributes, pages)
//! with fuser's notifier. It also gives back a deleted snapshot's layer
//! once the last handle on it is closed.
//!
//! It runs on a thread of its own: a notification is a write to the FUSE
//! device, which may wait for the kernel to take a directory's lock held
//! by a request the workers are serving; the thread that made the change
//! (and may hold the store's locks) never waits for that.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Weak};

use fuser::{INodeNo, Notifier};
use parking_lot::Mutex;

use super::inodes::{Inodes, Node, ROOT_INO};
use super::{IMG_SUFFIX, LIVE_NAME};
use crate::store::{Event, Repository};

enum Job {
    Invalidate(Event),
    Tidy,
    /// Answered once every job sent before it is done.
    Settle(Sender<()>),
}

/// How long a command waits for the mount to show its change before it
/// answers anyway (the kernel may be slow to take an invalidation while it
/// waits on a busy directory).
const SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the file system asks for a tidy (and the control server for a
/// settle); a no-op until the keeper runs.
#[derive(Clone, Default)]
pub(crate) struct TidyHandle(Arc<Mutex<Option<Sender<Job>>>>);

impl TidyHandle {
    pub(crate) fn request(&self) {
        if let Some(tx) = self.0.lock().as_ref() {
            let _ = tx.send(Job::Tidy);
        }
    }
}

/// See the module doc.
pub struct Keeper {
    repo: Arc<Repository>,
    inodes: Arc<Inodes>,
    tidy: TidyHandle,
}

impl Keeper {
    pub(crate) fn new(repo: Arc<Repository>, inodes: Arc<Inodes>, tidy: TidyHandle) -> Keeper {
        Keeper { repo, inodes, tidy }
    }

    /// What the control server calls before answering a request: waits
    /// until the keeper has handled every change made so far.
    pub fn settler(&self) -> impl Fn() + Send + Sync + 'static {
        let jobs = self.tidy.clone();
        move || {
            let Some(tx) = jobs.0.lock().clone() else {
                return;
            };
            let (done, wait) = channel();
            if tx.send(Job::Settle(done)).is_ok() {
                let _ = wait.recv_timeout(SETTLE_TIMEOUT);
            }
        }
    }

    /// Starts the keeper's thread; it stops when the repository is dropped.
    pub fn start(self, notifier: Notifier) {
        let (tx, rx) = channel();
        {
            let tx = Mutex::new(tx.clone());
            self.repo.subscribe(move |e| {
                let _ = tx.lock().send(Job::Invalidate(e.clone()));
            });
        }
        *self.tidy.0.lock() = Some(tx);
        // Weak: the repository's listener holds the sending side, so a
        // strong reference here would keep both alive for ever.
        let repo = Arc::downgrade(&self.repo);
        let inodes = self.inodes;
        let spawned = std::thread::Builder::new()
            .name("strata-keeper".into())
            .spawn(move || run(rx, repo, &inodes, &notifier));
        if let Err(e) = spawned {
            log::error!("cannot start the cache keeper: {e}");
        }
    }
}

fn run(rx: Receiver<Job>, repo: Weak<Repository>, inodes: &Inodes, n: &Notifier) {
    let mut queue: VecDeque<Job> = VecDeque::new();
    loop {
        let job = match queue.pop_front() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        let Some(repo) = repo.upgrade() else { return };
        match job {
            Job::Invalidate(e) => invalidate(&repo, inodes, n, &e),
            Job::Settle(done) => {
                let _ = done.send(());
            }
            Job::Tidy => {
                // Several handles closing at once need one gc; the other
                // jobs waiting keep their order, after it.
                queue.extend(rx.try_iter().filter(|j| !matches!(j, Job::Tidy)));
                // Tidy only: the sweep of every layer file is `strata gc`'s.
                match repo.tidy() {
                    Ok(r) if r.freed_bytes > 0 => {
                        log::info!("gave back {} bytes of closed images", r.freed_bytes)
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("giving back the space of closed images: {e}"),
                }
            }
        }
    }
}

/// Tells the kernel to forget what it cached for what `e` changed. A node
/// the kernel never saw has no inode yet, and nothing to forget.
fn invalidate(repo: &Repository, inodes: &Inodes, n: &Notifier, e: &Event) {
    let entry = |parent: Option<u64>, name: &str| {
        if let Some(p) = parent {
            if let Err(err) = n.inval_entry(INodeNo(p), OsStr::new(name)) {
                log::debug!("invalidating entry {name}: {err}");
            }
        }
    };
    // offset -1: attributes only; 0: attributes and every cached page.
    let inode = |node: Node, offset: i64| {
        if let Some(ino) = inodes.get(&node) {
            if let Err(err) = n.inval_inode(INodeNo(ino), offset, 0) {
                log::debug!("invalidating inode {ino}: {err}");
            }
        }
    };
    let img = |snap: &dyn std::fmt::Display| format!("{snap}{IMG_SUFFIX}");
    // What a live image stores (its `du`) changes with snapshots taken and
    // deleted: the attributes of every live image the kernel knows go.
    if matches!(
        e,
        Event::SnapshotTaken { .. } | Event::SnapshotGone { .. } | Event::SnapshotChanged { .. }
    ) {
        for ino in inodes.lives() {
            if let Err(err) = n.inval_inode(INodeNo(ino), -1, 0) {
                log::debug!("invalidating inode {ino}: {err}");
            }
        }
    }
    match e {
        Event::SnapshotGone { disk, snap, layer } => {
            entry(inodes.get(&Node::SnapDir(disk.clone())), &img(snap));
            inode(Node::SnapImg(*layer), 0);
            if !repo.disk_names().contains(disk) {
                entry(Some(ROOT_INO), disk.as_str());
            }
        }
        Event::SnapshotRenamed { disk, from, to, .. } => {
            let dir = inodes.get(&Node::SnapDir(disk.clone()));
            entry(dir, &img(from));
            entry(dir, &img(to));
        }
        Event::SnapshotChanged { layer } => inode(Node::SnapImg(*layer), -1),
        Event::DiskGone { disk } => {
            entry(inodes.get(&Node::DiskDir(disk.clone())), LIVE_NAME);
            if !repo.disk_names().contains(disk) {
                entry(Some(ROOT_INO), disk.as_str());
            }
        }
        Event::DiskRenamed { from, to } => {
            entry(Some(ROOT_INO), from.as_str());
            entry(Some(ROOT_INO), to.as_str());
        }
        Event::LiveChanged { id, .. } => inode(Node::Live(*id), 0),
        Event::SnapshotTaken { .. } => {}
    }
}
