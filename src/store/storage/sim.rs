//! A power-loss simulator: a [`Storage`] in memory that records every write,
//! punch, length change, sync and namespace change, and can rebuild what a
//! device would hold after a power cut at any point of that history.
//!
//! The model is the one POSIX promises and no more:
//!
//! - A file's contents are durable up to its last `fsync`/`fdatasync`.
//!   Writes, punches and length changes after it may each have reached the
//!   device or not, in any combination, and the last one that did may be
//!   torn at a 512-byte boundary.
//! - A name (create, rename, remove, mkdir) is durable once its directory
//!   is synced. Until then, the directory's pending changes reach the
//!   device as a prefix, in order (as a journaling file system commits
//!   them), so a rename is all or nothing.
//!
//! [`Replay`] walks the history once, and [`Replay::crash`] makes a new
//! `SimStorage` holding one possible state of the device at the current
//! point.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{EntryKind, LockOutcome, Storage, StorageFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir,
}

#[derive(Debug, Clone)]
enum Event {
    Write {
        ino: u64,
        off: u64,
        data: Arc<[u8]>,
    },
    Punch {
        ino: u64,
        off: u64,
        len: u64,
    },
    SetLen {
        ino: u64,
        len: u64,
    },
    SyncFile {
        ino: u64,
    },
    /// `path` now names `node`.
    Link {
        path: PathBuf,
        node: Node,
    },
    Unlink {
        path: PathBuf,
    },
    SyncDir {
        dir: PathBuf,
    },
}

#[derive(Default)]
struct State {
    entries: BTreeMap<PathBuf, Node>,
    inodes: HashMap<u64, Arc<Vec<u8>>>,
    next_ino: u64,
    events: Vec<Event>,
}

/// The simulated file system. Cloning shares it.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    write: bool,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl SimStorage {
    /// An empty simulated file system holding the directories `dirs` (and
    /// their parents), already durable.
    pub fn new(dirs: &[&Path]) -> SimStorage {
        let mut st = State {
            next_ino: 1,
            ..State::default()
        };
        st.entries.insert(PathBuf::from("/"), Node::Dir);
        for d in dirs {
            for a in d.ancestors() {
                st.entries.insert(a.to_owned(), Node::Dir);
            }
        }
        SimStorage {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// How many operations the history holds: a point to crash at.
    pub fn position(&self) -> usize {
        self.state.lock().events.len()
    }

    /// Starts a walk through the history from its beginning.
    pub fn replay(&self) -> Replay {
        let st = self.state.lock();
        let mut durable = BTreeMap::new();
        for (p, n) in &st.entries {
            if *n == Node::Dir
                && st
                    .events
                    .iter()
                    .all(|e| !matches!(e, Event::Link { path, .. } if path == p))
            {
                durable.insert(p.clone(), *n);
            }
        }
        Replay {
            events: st.events.clone(),
            at: 0,
            entries: durable,
            inodes: HashMap::new(),
            pending_ns: BTreeMap::new(),
            pending_data: HashMap::new(),
        }
    }

    fn with_parent_dir(st: &State, path: &Path) -> io::Result<()> {
        match st.entries.get(&parent(path)) {
            Some(Node::Dir) => Ok(()),
            _ => Err(not_found(&parent(path))),
        }
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>> {
        let st = self.state.lock();
        match st.entries.get(path) {
            Some(Node::File(ino)) => Ok(Arc::new(SimFile {
                state: self.state.clone(),
                ino: *ino,
                write,
            })),
            Some(Node::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        let mut st = self.state.lock();
        if st.entries.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        Self::with_parent_dir(&st, path)?;
        let ino = st.next_ino;
        st.next_ino += 1;
        st.inodes.insert(ino, Arc::new(Vec::new()));
        st.entries.insert(path.to_owned(), Node::File(ino));
        st.events.push(Event::Link {
            path: path.to_owned(),
            node: Node::File(ino),
        });
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
            write: true,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let Some(Node::File(ino)) = st.entries.get(from).copied() else {
            return Err(not_found(from));
        };
        Self::with_parent_dir(&st, to)?;
        if st.entries.get(to) == Some(&Node::Dir) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "rename over a directory",
            ));
        }
        st.entries.remove(from);
        st.entries.insert(to.to_owned(), Node::File(ino));
        st.events.push(Event::Link {
            path: to.to_owned(),
            node: Node::File(ino),
        });
        st.events.push(Event::Unlink {
            path: from.to_owned(),
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        match st.entries.get(path) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => {
                return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory"))
            }
            None => return Err(not_found(path)),
        }
        st.entries.remove(path);
        st.events.push(Event::Unlink {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.entries.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        if st.entries.keys().any(|p| p.parent() == Some(path)) {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "not empty",
            ));
        }
        st.entries.remove(path);
        st.events.push(Event::Unlink {
            path: path.to_owned(),
        });
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut missing: Vec<PathBuf> = path
            .ancestors()
            .take_while(|a| !st.entries.contains_key(*a))
            .map(Path::to_owned)
            .collect();
        missing.reverse();
        for d in missing {
            if st.entries.get(&parent(&d)) != Some(&Node::Dir) {
                return Err(not_found(&d));
            }
            st.entries.insert(d.clone(), Node::Dir);
            st.events.push(Event::Link {
                path: d,
                node: Node::Dir,
            });
        }
        match st.entries.get(path) {
            Some(Node::Dir) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "not a directory",
            )),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.entries.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        st.events.push(Event::SyncDir {
            dir: path.to_owned(),
        });
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if st.entries.get(path) != Some(&Node::Dir) {
            return Err(not_found(path));
        }
        Ok(st
            .entries
            .keys()
            .filter(|p| p.parent() == Some(path) && p.as_path() != path)
            .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
            .collect())
    }

    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        Ok(self.state.lock().entries.get(path).map(|n| match n {
            Node::File(_) => EntryKind::File,
            Node::Dir => EntryKind::Dir,
        }))
    }

    fn lock(&self, _path: &Path) -> io::Result<LockOutcome> {
        Ok(LockOutcome::Taken(Box::new(())))
    }

    fn wants_reserve(&self) -> bool {
        false
    }
}

impl SimFile {
    fn mutate(&self, event: Event, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        if !self.write {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let mut st = self.state.lock();
        let content = st.inodes.entry(self.ino).or_default();
        f(Arc::make_mut(content));
        st.events.push(event);
        Ok(())
    }
}

fn apply_write(c: &mut Vec<u8>, off: u64, data: &[u8]) {
    let end = off as usize + data.len();
    if c.len() < end {
        c.resize(end, 0);
    }
    c[off as usize..end].copy_from_slice(data);
}

fn apply_punch(c: &mut [u8], off: u64, len: u64) {
    let start = (off as usize).min(c.len());
    let end = (off.saturating_add(len) as usize).min(c.len());
    c[start..end].fill(0);
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.state.lock();
        let c = st
            .inodes
            .get(&self.ino)
            .map(|c| c.as_slice())
            .unwrap_or(&[]);
        let start = (offset as usize).min(c.len());
        let n = buf.len().min(c.len() - start);
        buf[..n].copy_from_slice(&c[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let data: Arc<[u8]> = buf.into();
        self.mutate(
            Event::Write {
                ino: self.ino,
                off: offset,
                data: data.clone(),
            },
            |c| apply_write(c, offset, &data),
        )
    }

    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        self.mutate(
            Event::Punch {
                ino: self.ino,
                off: offset,
                len,
            },
            |c| apply_punch(c, offset, len),
        )
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(Event::SetLen { ino: self.ino, len }, |c| {
            c.resize(len as usize, 0)
        })
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.state.lock();
        Ok(st.inodes.get(&self.ino).map_or(0, |c| c.len() as u64))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.state
            .lock()
            .events
            .push(Event::SyncFile { ino: self.ino });
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn allocated_bytes(&self) -> io::Result<u64> {
        let st = self.state.lock();
        let c = st
            .inodes
            .get(&self.ino)
            .map(|c| c.as_slice())
            .unwrap_or(&[]);
        Ok(c.chunks(4096).filter(|p| p.iter().any(|&b| b != 0)).count() as u64 * 4096)
    }

    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok((offset < self.len()?).then_some(offset))
    }

    fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        Ok(self.len()?.max(offset))
    }
}

/// SplitMix64: a small deterministic generator for choosing crash states.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A walk through a [`SimStorage`]'s history, keeping what is durable and
/// what is pending at the current point.
pub struct Replay {
    events: Vec<Event>,
    at: usize,
    entries: BTreeMap<PathBuf, Node>,
    inodes: HashMap<u64, Arc<Vec<u8>>>,
    /// Namespace changes not yet synced, by directory, in order.
    pending_ns: BTreeMap<PathBuf, Vec<Event>>,
    /// Content changes not yet synced, by inode, in order.
    pending_data: HashMap<u64, Vec<Event>>,
}

fn apply_data(inodes: &mut HashMap<u64, Arc<Vec<u8>>>, e: &Event, torn: Option<u64>) {
    match e {
        Event::Write { ino, off, data } => {
            let c = Arc::make_mut(inodes.entry(*ino).or_default());
            let n = torn.map_or(data.len(), |t| t as usize);
            apply_write(c, *off, &data[..n]);
        }
        Event::Punch { ino, off, len } => {
            let c: &mut Vec<u8> = Arc::make_mut(inodes.entry(*ino).or_default());
            apply_punch(c, *off, *len)
        }
        Event::SetLen { ino, len } => {
            Arc::make_mut(inodes.entry(*ino).or_default()).resize(*len as usize, 0)
        }
        _ => {}
    }
}

fn apply_ns(entries: &mut BTreeMap<PathBuf, Node>, e: &Event) {
    match e {
        Event::Link { path, node } => {
            entries.insert(path.clone(), *node);
        }
        Event::Unlink { path } => {
            entries.remove(path);
        }
        _ => {}
    }
}

impl Replay {
    /// Where the walk is.
    pub fn position(&self) -> usize {
        self.at
    }

    /// Positions just after each sync: the barriers worth crashing at.
    pub fn barriers(&self) -> Vec<usize> {
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| matches!(e, Event::SyncFile { .. } | Event::SyncDir { .. }))
            .map(|(i, _)| i + 1)
            .collect()
    }

    /// Moves forward to just after `to` operations.
    pub fn advance_to(&mut self, to: usize) {
        while self.at < to.min(self.events.len()) {
            let e = self.events[self.at].clone();
            self.at += 1;
            match &e {
                Event::Write { ino, .. } | Event::Punch { ino, .. } | Event::SetLen { ino, .. } => {
                    self.pending_data.entry(*ino).or_default().push(e)
                }
                Event::SyncFile { ino } => {
                    for p in self.pending_data.remove(ino).unwrap_or_default() {
                        apply_data(&mut self.inodes, &p, None);
                    }
                }
                Event::Link { path, .. } | Event::Unlink { path } => {
                    self.pending_ns.entry(parent(path)).or_default().push(e)
                }
                Event::SyncDir { dir } => {
                    for p in self.pending_ns.remove(dir).unwrap_or_default() {
                        apply_ns(&mut self.entries, &p);
                    }
                }
            }
        }
    }

    /// One state the device may hold after a power cut here: what is
    /// durable, plus, chosen by `seed`, each pending content change with
    /// probability `keep_percent` (the last one kept possibly torn), and a
    /// prefix of each directory's pending namespace changes.
    pub fn crash(&self, seed: u64, keep_percent: u64) -> SimStorage {
        let mut rng = Rng(seed ^ (self.at as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let mut entries = self.entries.clone();
        for ops in self.pending_ns.values() {
            let n = if keep_percent >= 100 {
                ops.len()
            } else if keep_percent == 0 {
                0
            } else {
                rng.below(ops.len() as u64 + 1) as usize
            };
            for e in &ops[..n] {
                apply_ns(&mut entries, e);
            }
        }
        let mut inodes = self.inodes.clone();
        let mut inos: Vec<_> = self.pending_data.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let ops = &self.pending_data[&ino];
            let kept: Vec<&Event> = ops
                .iter()
                .filter(|_| rng.below(100) < keep_percent)
                .collect();
            let tear_last = keep_percent < 100 && rng.below(2) == 0;
            for (i, e) in kept.iter().enumerate() {
                let torn = match e {
                    Event::Write { data, .. } if tear_last && i + 1 == kept.len() => {
                        let sectors = (data.len() as u64).div_ceil(512);
                        Some((rng.below(sectors + 1) * 512).min(data.len() as u64))
                    }
                    _ => None,
                };
                apply_data(&mut inodes, e, torn);
            }
        }
        // A name whose inode never got any content durable reads as empty.
        let next_ino = inodes.keys().max().copied().unwrap_or(0) + 1;
        let max_named = entries
            .values()
            .filter_map(|n| match n {
                Node::File(i) => Some(*i),
                Node::Dir => None,
            })
            .max()
            .unwrap_or(0);
        for n in entries.values() {
            if let Node::File(i) = n {
                inodes.entry(*i).or_default();
            }
        }
        SimStorage {
            state: Arc::new(Mutex::new(State {
                entries,
                inodes,
                next_ino: next_ino.max(max_named + 1),
                events: Vec::new(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn only_synced_data_and_names_survive_for_sure() {
        let sim = SimStorage::new(&[Path::new("/r")]);
        let f = sim.create_new(&p("/r/a")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(&p("/r")).unwrap();
        f.write_all_at(b"HELLO", 0).unwrap();
        let mut r = sim.replay();
        r.advance_to(sim.position());
        let none = r.crash(1, 0);
        let got = none.read(&p("/r/a")).unwrap();
        assert_eq!(got, b"hello");
        let all = r.crash(1, 100);
        assert_eq!(all.read(&p("/r/a")).unwrap(), b"HELLO");
    }

    #[test]
    fn an_unsynced_name_may_be_lost_and_a_rename_is_atomic() {
        let sim = SimStorage::new(&[Path::new("/r")]);
        let f = sim.create_new(&p("/r/t")).unwrap();
        f.write_all_at(b"new", 0).unwrap();
        f.sync_all().unwrap();
        sim.rename(&p("/r/t"), &p("/r/x")).unwrap();
        let mut r = sim.replay();
        r.advance_to(sim.position());
        let lost = r.crash(3, 0);
        assert!(lost.kind(&p("/r/x")).unwrap().is_none());
        for seed in 0..20 {
            let s = r.crash(seed, 50);
            if let Some(EntryKind::File) = s.kind(&p("/r/x")).unwrap() {
                assert_eq!(s.read(&p("/r/x")).unwrap(), b"new");
            }
        }
    }
}
