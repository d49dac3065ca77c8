//! A fault injector: a [`Storage`] over another that makes the Nth
//! operation of chosen kinds fail with a chosen errno (`EIO`, `ENOSPC`…),
//! once or from then on. A failed write may have written part of its bytes
//! first, as a real one may.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{EntryKind, LockOutcome, Storage, StorageFile};

/// The kinds of operation a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
    Punch,
    SetLen,
    Sync,
    Create,
    Rename,
    Remove,
    SyncDir,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Read,
        Op::Write,
        Op::Punch,
        Op::SetLen,
        Op::Sync,
        Op::Create,
        Op::Rename,
        Op::Remove,
        Op::SyncDir,
    ];
}

#[derive(Debug, Default)]
struct Plan {
    kinds: Vec<Op>,
    /// The matching operation that fails (1-based); 0 means none.
    nth: u64,
    errno: i32,
    /// Every matching operation from the Nth on fails, not just the Nth.
    persistent: bool,
    /// Matching operations seen so far.
    seen: u64,
    /// Faults delivered.
    fired: u64,
}

/// The fault injector. Cloning shares the plan.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    plan: Arc<Mutex<Plan>>,
}

struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    plan: Arc<Mutex<Plan>>,
}

fn check(plan: &Mutex<Plan>, op: Op) -> io::Result<()> {
    let mut p = plan.lock();
    if !p.kinds.contains(&op) {
        return Ok(());
    }
    p.seen += 1;
    let hit = p.nth != 0 && (p.seen == p.nth || (p.persistent && p.seen > p.nth));
    if hit {
        p.fired += 1;
        // For whoever looks into a test failure: where the fault landed.
        if std::env::var_os("FAULTS_DEBUG").is_some() {
            eprintln!(
                "fault {} on {op:?} at\n{}",
                p.seen,
                std::backtrace::Backtrace::force_capture()
            );
        }
        return Err(io::Error::from_raw_os_error(p.errno));
    }
    Ok(())
}

impl FaultyStorage {
    /// Passes everything through until [`FaultyStorage::fail`] arms it.
    pub fn new(inner: Arc<dyn Storage>) -> FaultyStorage {
        FaultyStorage {
            inner,
            plan: Arc::new(Mutex::new(Plan::default())),
        }
    }

    /// From now on, counts operations of `kinds`; the `nth` of them fails
    /// with `errno` (and every later one too if `persistent`). `nth` 0
    /// only counts.
    pub fn fail(&self, kinds: &[Op], nth: u64, errno: i32, persistent: bool) {
        *self.plan.lock() = Plan {
            kinds: kinds.to_vec(),
            nth,
            errno,
            persistent,
            seen: 0,
            fired: 0,
        };
    }

    /// Stops failing (and counting).
    pub fn disarm(&self) {
        *self.plan.lock() = Plan::default();
    }

    /// Matching operations seen since the plan was set.
    pub fn seen(&self) -> u64 {
        self.plan.lock().seen
    }

    /// Faults delivered since the plan was set.
    pub fn fired(&self) -> u64 {
        self.plan.lock().fired
    }

    fn wrap(&self, f: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(FaultyFile {
            inner: f,
            plan: self.plan.clone(),
        })
    }
}

impl Storage for FaultyStorage {
    fn open(&self, path: &Path, write: bool) -> io::Result<Arc<dyn StorageFile>> {
        Ok(self.wrap(self.inner.open(path, write)?))
    }
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        check(&self.plan, Op::Create)?;
        Ok(self.wrap(self.inner.create_new(path)?))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check(&self.plan, Op::Rename)?;
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        check(&self.plan, Op::Remove)?;
        self.inner.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        check(&self.plan, Op::Remove)?;
        self.inner.remove_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        check(&self.plan, Op::SyncDir)?;
        self.inner.sync_dir(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(path)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        self.inner.kind(path)
    }
    fn lock(&self, path: &Path) -> io::Result<LockOutcome> {
        self.inner.lock(path)
    }
    fn local_path(&self, path: &Path) -> Option<PathBuf> {
        self.inner.local_path(path)
    }
    fn wants_reserve(&self) -> bool {
        self.inner.wants_reserve()
    }
}

impl StorageFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        check(&self.plan, Op::Read)?;
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Err(e) = check(&self.plan, Op::Write) {
            // A failing write may have written its first part.
            let part = buf.len() / 2 / 512 * 512;
            if part > 0 {
                let _ = self.inner.write_all_at(&buf[..part], offset);
            }
            return Err(e);
        }
        self.inner.write_all_at(buf, offset)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        check(&self.plan, Op::Punch)?;
        self.inner.punch_hole(offset, len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        check(&self.plan, Op::SetLen)?;
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn sync_data(&self) -> io::Result<()> {
        check(&self.plan, Op::Sync)?;
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        check(&self.plan, Op::Sync)?;
        self.inner.sync_all()
    }
    fn allocated_bytes(&self) -> io::Result<u64> {
        self.inner.allocated_bytes()
    }
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.inner.seek_data(offset)
    }
    fn seek_hole(&self, offset: u64) -> io::Result<u64> {
        self.inner.seek_hole(offset)
    }
    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        check(&self.plan, Op::Read)?;
        self.inner.read_cached(buf, offset)
    }
    fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.prefetch(offset, len)
    }
}
