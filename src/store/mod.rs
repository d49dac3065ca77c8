//! The repository engine: disks, layers, snapshots and their metadata. No
//! FUSE here; the file system and the CLI are built on this API.
//!
//! # Model
//!
//! A disk is a chain of layers: a writable live layer on top of frozen
//! layers, each holding some blocks (see [`format`] for every file and
//! field). A snapshot names a frozen layer; its image is that layer's chain.
//! Layers form a tree: a disk made from a snapshot starts a branch.
//! Reads go through an owner map (block → the data file holding its newest
//! copy), so their cost does not depend on chain depth. Taking a snapshot
//! freezes the live layer in place and starts an empty one: no data is
//! copied. Deleting one drops the blocks the layers above it cover, and
//! merges what is left into the layer above: no data is copied either
//! ([`ops`]).
//!
//! All file I/O goes through one [`storage::Storage`], so the same engine
//! runs on the local file system, on a power-loss simulator and on a fault
//! injector.
//!
//! # Durability
//!
//! - [`Disk::flush`] makes every write completed before it durable: the live
//!   layer's data is fdatasync'ed, then a journal record naming its newly
//!   present blocks is appended (twice, see [`format`]) and fdatasync'ed.
//! - The catalog is the one commit point: a record appended and synced. A
//!   snapshot exists once the record naming it is durable, and by then its
//!   data and index are durable too.
//! - Before an operation creates a file it commits an intent naming it, so
//!   after a crash, opening the repository removes exactly the files of
//!   operations that never committed, and sets aside (never deletes) any
//!   other file nothing names ([`recovery`]). Files an operation removes
//!   are named in an intent too, committed with the change that stops
//!   naming them.
//! - A failed write or sync latches the disk ([`disk`]); a failed catalog
//!   write that cannot be proven undone latches the repository. Nothing is
//!   acknowledged again until the repository is opened again.
//!
//! # Locks
//!
//! One process holds a repository: a POSIX record lock on `REPO/lock`. In
//! the process, lock order is: a disk's snapshot lock, then
//! `Inner::structure`, then the disk's journal, writer and state locks
//! (see [`disk`]), then `Inner::disks`, then `Inner::catalog`, then the
//! owner-map and layer-file caches and `Inner::views`. No lock is held
//! across a call into another disk, except that a snapshot of several disks
//! takes their locks in the order of their names.
//!
//! | operation | takes |
//! | --- | --- |
//! | read | state (read), the caches |
//! | write, discard | writer, state |
//! | flush | journal, writer (only to take the changes), state |
//! | snapshot | snapshot lock (throughout), journal (its syncs), structure + journal + writer (the freeze), catalog |
//! | delete, tidy, gc, full, rename | structure, catalog, state (read, of live layers) |
//! | rollback, resize, disk delete | snapshot lock, structure, journal + writer, catalog |
//! | disk create / import | catalog (each commit) |
//! | open | the repository lock; everything else is not yet shared |

pub mod apply;
pub mod catalog;
pub mod disk;
pub mod error;
pub mod export;
pub mod extents;
pub mod format;
pub mod identity;
pub mod image;
pub mod import;
pub mod journal;
pub mod layer;
pub mod names;
pub mod ops;
pub mod recovery;
pub mod snapshot;
pub mod storage;
pub mod stream;
pub mod tracked;
mod upgrade;
pub mod vhd;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use catalog::{
    Catalog, CatalogFile, CommitError, FrozenInfo, Intent, IntentKind, LayerNames, NameOf,
    SnapshotRecord,
};
pub use disk::{Disk, WriterGuard};
pub use error::{Result, StoreError};
pub use export::{export, ExportStats, ExportTarget};
use extents::OwnerMap;
use format::{LayerFileKind, RepoHeader, MAGIC_REPO};
pub use image::ImageRead;
pub use import::ImportSource;
use journal::Journal;
use layer::{Geometry, LayerFiles, LayerPaths, LiveLayer};
pub use names::{DiskName, ImageRef, LayerId, SnapName, SnapshotRef};
pub use ops::bookmark::{Bookmark, BookmarkInfo};
pub use ops::delete::DeleteReport;
pub use ops::gc::GcReport;
pub use ops::prune::{PruneReport, Retention};
pub use ops::receive::{PartialReceive, ReceiveReport};
pub use ops::send::{ResumeToken, SendBase, SendReport};
pub use ops::snapshot::{Critical, SnapshotOptions};
pub use ops::usage::{DailyUsage, UsageReport};
pub use recovery::QuarantinedFile;
pub use snapshot::Snapshot;
use storage::{EntryKind, LocalStorage, LockOutcome, Storage};

use crate::sys;

pub const REPO_FILE: &str = "strata.repo";
pub(crate) const CATALOG_FILE: &str = "catalog";
const LOCK_FILE: &str = "lock";
/// Layer files, as intents name them.
type FileList = Vec<(LayerId, LayerFileKind)>;
/// Bytes of owner maps kept built for snapshot images not open (an open
/// image holds its own): a budget in bytes, not a count of maps, so a
/// thousand deep images of a terabyte disk keep the daemon small.
const MAP_CACHE_BYTES: usize = 64 << 20;
/// What one run of an owner map costs in memory, B-tree nodes included
/// (a key and a value of 32 bytes, nodes about two thirds full).
const MAP_RUN_BYTES: usize = 48;
/// A snapshot's data sync this quick means little was left to write, and
/// the one under the writer lock will be as quick.
const PRESYNC_SETTLED: std::time::Duration = std::time::Duration::from_millis(5);

/// A disk as `disk list` shows it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub snapshots: u64,
    /// Bytes the live layer and the disk's snapshots occupy.
    pub used_bytes: u64,
    /// Bytes the disk holds that none of its snapshots does: its live layer
    /// and the layers of deleted snapshots only it still reads (what `du
    /// live.img` shows).
    pub live_bytes: u64,
    /// Unix nanoseconds.
    pub created: u64,
    /// Stable for the disk's life, whatever its name.
    #[serde(skip)]
    pub id: LayerId,
}

/// What the mount shows of a disk's live image, found without looking at
/// its snapshots: a `stat` of `live.img` costs the same with 10 or 10,000.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveInfo {
    pub size: u64,
    /// As [`DiskInfo::live_bytes`].
    pub live_bytes: u64,
    /// Unix nanoseconds.
    pub created: u64,
    pub id: LayerId,
}

/// A snapshot as `snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub disk: String,
    pub name: String,
    /// Unix nanoseconds when taken.
    pub taken: u64,
    /// Bytes this snapshot itself stores.
    pub stored_bytes: u64,
    /// Blocks this snapshot itself holds (data and zeros).
    pub blocks: u64,
    pub size: u64,
    pub block_size: u32,
    /// Needs no other snapshot: reads nothing from an older layer.
    pub full: bool,
    /// Its content identity (64 hex digits), when it was asked for.
    pub identity: Option<String>,
    #[serde(skip)]
    pub layer: LayerId,
}

/// What changed in a repository, for those that show it (the mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SnapshotGone {
        disk: DiskName,
        snap: SnapName,
        layer: LayerId,
    },
    SnapshotRenamed {
        disk: DiskName,
        from: SnapName,
        to: SnapName,
        layer: LayerId,
    },
    /// What it stores (its `du`) changed; its bytes never do.
    SnapshotChanged {
        layer: LayerId,
    },
    DiskGone {
        disk: DiskName,
    },
    DiskRenamed {
        from: DiskName,
        to: DiskName,
    },
    /// The live image's content (rollback) or size (resize) changed.
    LiveChanged {
        disk: DiskName,
        id: LayerId,
    },
    /// A snapshot was taken: what the disk's live image stores (its `du`)
    /// changed; its bytes did not.
    SnapshotTaken {
        disk: DiskName,
        layer: LayerId,
    },
}

/// Hears of every change, once it is durable.
type Listener = Box<dyn Fn(&Event) + Send + Sync>;

/// An open repository. Dropping it flushes every open disk.
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    storage: Arc<dyn Storage>,
    paths: LayerPaths,
    _lock: Box<dyn Send + Sync>,
    catalog: Mutex<CatalogState>,
    files: Arc<LayerFiles>,
    disks: Mutex<HashMap<DiskName, Arc<Disk>>>,
    maps: Mutex<MapCache>,
    /// Content identities computed so far, by the frozen layer whose image
    /// they are (that image never changes).
    identities: Mutex<HashMap<LayerId, identity::Identity>>,
    /// Held by everything that changes the shape of the layer tree.
    structure: Mutex<()>,
    views: Arc<Views>,
    /// Bumped after a change that leaves owner maps built before it
    /// pointing at copies that may go (a snapshot made full): see
    /// [`Repository::open_snapshot`].
    relaid: std::sync::atomic::AtomicU64,
    /// Some open disk may still have an owner map from before the last
    /// [`Repository::relay`]: tidy frees nothing until it has a new one.
    stale_bases: std::sync::atomic::AtomicBool,
    listeners: Mutex<Vec<Listener>>,
    notices: Vec<String>,
    /// Metadata files whose damaged copy opening the repository mended,
    /// for the next `verify` to report.
    mended: Mutex<Vec<String>>,
}

struct CatalogState {
    cat: Catalog,
    file: CatalogFile,
    /// Why the catalog stopped accepting commits, once it has.
    latch: Option<String>,
    /// Which snapshot names each layer: how the mount finds an image by its
    /// identity, at any number of snapshots. Follows `cat`.
    by_layer: LayerNames,
    /// How many children each layer has. Follows `cat`.
    kids: HashMap<LayerId, u32>,
    /// The frozen layers no snapshot names (deleted snapshots' layers, not
    /// yet tidied away): while there are none, tidy has nothing to do.
    /// Follows `cat`.
    hidden: BTreeSet<LayerId>,
}

impl CatalogState {
    fn new(cat: Catalog, file: CatalogFile) -> CatalogState {
        let (by_layer, kids, hidden) = indexes(&cat);
        CatalogState {
            by_layer,
            kids,
            hidden,
            cat,
            file,
            latch: None,
        }
    }

    /// Brings the indexes up to date with the commit under way, once it is
    /// durable (`renamed` from [`Catalog::renamed_layers`]), and settles the
    /// catalog: work in the size of the change.
    fn settle(&mut self, renamed: BTreeMap<LayerId, Option<NameOf>>) {
        let mut look: BTreeSet<LayerId> = renamed.keys().copied().collect();
        for (id, before, now) in self.cat.layers.touched() {
            look.insert(*id);
            if let Some(p) = before.and_then(|l| l.parent) {
                if let Some(n) = self.kids.get_mut(&p) {
                    *n -= 1;
                    if *n == 0 {
                        self.kids.remove(&p);
                    }
                }
            }
            if let Some(p) = now.and_then(|l| l.parent) {
                *self.kids.entry(p).or_default() += 1;
            }
        }
        for (layer, name) in renamed {
            match name {
                Some(n) => self.by_layer.insert(layer, n),
                None => self.by_layer.remove(&layer),
            };
        }
        for id in look {
            let frozen = self.cat.layers.get(&id).is_some_and(|l| l.frozen.is_some());
            if frozen && !self.by_layer.contains_key(&id) {
                self.hidden.insert(id);
            } else {
                self.hidden.remove(&id);
            }
        }
        self.cat.settle();
        #[cfg(debug_assertions)]
        self.check_indexes();
    }

    /// In debug builds (every test), each commit checks that the indexes
    /// kept up change by change are what rebuilding them gives, and that
    /// every snapshot's usage is noted; catalogs past a few thousand layers
    /// are left unchecked, or the check would be what tests measure.
    #[cfg(debug_assertions)]
    fn check_indexes(&self) {
        if self.cat.layers.len() > 2_000 {
            return;
        }
        let (by_layer, kids, hidden) = indexes(&self.cat);
        assert_eq!(self.by_layer, by_layer, "layer-to-snapshot index");
        assert_eq!(self.kids, kids, "child counts");
        assert_eq!(self.hidden, hidden, "hidden layers");
        assert_eq!(self.cat.missing_usage(today()), vec![], "usage entries");
    }

    /// The layers of deleted snapshots that only the live layer `live`
    /// reads (what it holds that no remaining snapshot does, besides its
    /// own): its parent while that is hidden with no other child, and so
    /// on down.
    fn held_below(&self, live: LayerId) -> Vec<LayerId> {
        let mut out = vec![];
        let mut cur = live;
        while let Some(p) = self.cat.layers.get(&cur).and_then(|l| l.parent) {
            let frozen = self.cat.layers.get(&p).is_some_and(|l| l.frozen.is_some());
            let hidden = frozen && !self.by_layer.contains_key(&p);
            if !hidden || self.kids.get(&p) != Some(&1) {
                break;
            }
            out.push(p);
            cur = p;
        }
        out
    }

    /// Bytes the frozen layers `layers` store, as the catalog records.
    fn stored(&self, layers: &[LayerId]) -> u64 {
        layers
            .iter()
            .filter_map(|l| self.cat.layers.get(l)?.frozen)
            .map(|f| f.stored_bytes)
            .sum()
    }
}

/// The indexes [`CatalogState`] keeps beside `cat`, built from scratch:
/// which snapshot names each layer, how many children each has, and the
/// hidden layers.
fn indexes(cat: &Catalog) -> (LayerNames, HashMap<LayerId, u32>, BTreeSet<LayerId>) {
    let by_layer = index_by_layer(cat);
    let hidden = cat
        .layers
        .iter()
        .filter(|(id, l)| l.frozen.is_some() && !by_layer.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    (by_layer, count_kids(cat), hidden)
}

/// How many children each layer of `cat` has.
fn count_kids(cat: &Catalog) -> HashMap<LayerId, u32> {
    let mut out = HashMap::new();
    for l in cat.layers.values() {
        if let Some(p) = l.parent {
            *out.entry(p).or_default() += 1;
        }
    }
    out
}

/// Which snapshot names each layer of `cat`.
fn index_by_layer(cat: &Catalog) -> LayerNames {
    cat.snapshots
        .iter()
        .flat_map(|(d, m)| {
            m.iter()
                .map(move |(s, r)| (r.layer, (d.clone(), s.clone())))
        })
        .collect()
}

/// Owner maps by the layer whose image they are, least recently used first
/// out once together they pass a budget in bytes (the newest always stays).
pub(crate) struct MapCache {
    lru: LruCache<LayerId, Arc<ImageMap>>,
    bytes: usize,
    budget: usize,
}

impl MapCache {
    fn new(budget: usize) -> MapCache {
        MapCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    fn weight(m: &ImageMap) -> usize {
        m.map.len() * MAP_RUN_BYTES + std::mem::size_of::<ImageMap>()
    }

    fn get(&mut self, id: &LayerId) -> Option<&Arc<ImageMap>> {
        self.lru.get(id)
    }

    fn put(&mut self, id: LayerId, m: Arc<ImageMap>) {
        self.bytes += Self::weight(&m);
        if let Some(old) = self.lru.put(id, m) {
            self.bytes -= Self::weight(&old);
        }
        while self.bytes > self.budget && self.lru.len() > 1 {
            match self.lru.pop_lru() {
                Some((_, old)) => self.bytes -= Self::weight(&old),
                None => break,
            }
        }
    }

    pub(crate) fn pop(&mut self, id: &LayerId) {
        if let Some(old) = self.lru.pop(id) {
            self.bytes -= Self::weight(&old);
        }
    }

    fn clear(&mut self) {
        self.lru.clear();
        self.bytes = 0;
    }
}

/// A frozen chain's owner map, and whether one data file alone is its image.
pub(crate) struct ImageMap {
    pub map: OwnerMap,
    /// The data file that, read as it is, is the whole image (FUSE
    /// passthrough): set for a layer with no parent whose data all lives in
    /// its own file.
    pub flat: Option<LayerId>,
    /// [`Inner::relaid`] when it was built: a map from before a relayout is
    /// not taken from the cache.
    relaid: u64,
}

/// Open snapshot images, by every layer of the chain they read. A layer an
/// open image reads through (a deleted snapshot's own layer, or one below
/// an open image) is not trimmed, merged or removed until the image is
/// closed, so that it reads the same until then.
#[derive(Default)]
pub(crate) struct Views {
    open: Mutex<HashMap<LayerId, usize>>,
}

/// Keeps the layers an open image reads as they are while it is open.
pub(crate) struct ViewGuard {
    views: Arc<Views>,
    layers: Vec<LayerId>,
}

impl Views {
    fn open(self: &Arc<Self>, layers: Vec<LayerId>) -> ViewGuard {
        let mut open = self.open.lock();
        for l in &layers {
            *open.entry(*l).or_default() += 1;
        }
        ViewGuard {
            views: self.clone(),
            layers,
        }
    }

    fn is_open(&self, layer: LayerId) -> bool {
        self.open.lock().get(&layer).is_some_and(|&n| n > 0)
    }
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        let mut open = self.views.open.lock();
        for l in &self.layers {
            if let Some(n) = open.get_mut(l) {
                *n -= 1;
                if *n == 0 {
                    open.remove(l);
                }
            }
        }
    }
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A UTC time from Unix nanoseconds.
pub fn utc(unix_ns: u64) -> jiff::civil::DateTime {
    let ts = jiff::Timestamp::from_nanosecond(i128::from(unix_ns))
        .ok()
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.to_zoned(jiff::tz::TimeZone::UTC).datetime()
}

/// The UTC date `days` days after 1970-01-01.
pub fn date_of_day(days: u32) -> jiff::civil::Date {
    jiff::civil::date(1970, 1, 1)
        .checked_add(jiff::Span::new().days(i64::from(days)))
        .unwrap_or(jiff::civil::date(1970, 1, 1))
}

/// Days from 1970-01-01 to `date` (UTC), if it is not before it.
pub fn day_of_date(date: jiff::civil::Date) -> Option<u32> {
    let span = jiff::civil::date(1970, 1, 1)
        .until((jiff::Unit::Day, date))
        .ok()?;
    u32::try_from(span.get_days()).ok()
}

/// `2026-11-22T14-05-00Z`: a UTC time as a portable file name.
pub fn default_snapshot_name(unix_ns: u64) -> SnapName {
    let name = utc(unix_ns).strftime("%Y-%m-%dT%H-%M-%SZ").to_string();
    SnapName::parse(&name).unwrap_or_else(|_| unreachable_name())
}

fn unreachable_name() -> SnapName {
    // The format above only produces digits, '-', 'T' and 'Z'.
    SnapName::parse("snapshot").unwrap_or_else(|e| panic!("{e}"))
}

/// A repository id: random, so that files of two repositories never match.
fn random_id() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    // No /dev/urandom: the time and the PID still differ between repositories.
    now_ns() ^ (u64::from(std::process::id()) << 32)
}

/// Today, as days since 1970-01-01 (UTC): the key of usage history.
pub fn today() -> u32 {
    (now_ns() / 86_400_000_000_000) as u32
}

impl Repository {
    /// The default repository: `$STRATA_REPO`, else `$XDG_DATA_HOME/strata`,
    /// else `~/.local/share/strata`.
    pub fn default_path() -> Result<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("STRATA_REPO") {
            return Ok(p);
        }
        if let Some(p) = var("XDG_DATA_HOME") {
            return Ok(p.join("strata"));
        }
        if let Some(home) = var("HOME") {
            return Ok(home.join(".local/share/strata"));
        }
        Err(StoreError::invalid(
            "repository",
            "no default location: set STRATA_REPO or HOME, or pass --repo DIR",
        ))
    }

    /// Creates a repository in `root`, which must be missing or empty.
    pub fn init(root: &Path) -> Result<Repository> {
        Self::init_in(Arc::new(LocalStorage), root)
    }

    /// Creates a repository in `root` of `storage`.
    pub fn init_in(storage: Arc<dyn Storage>, root: &Path) -> Result<Repository> {
        let st = storage.as_ref();
        if st
            .kind(&root.join(REPO_FILE))
            .map_err(StoreError::io(root))?
            .is_some()
        {
            return Err(StoreError::AlreadyARepository(root.to_owned()));
        }
        if let Ok(entries) = st.read_dir(root) {
            if !entries.is_empty() {
                return Err(StoreError::invalid(
                    "repository directory",
                    format!(
                        "{} is not empty; choose a new or empty directory",
                        root.display()
                    ),
                ));
            }
        }
        let paths = layer_paths(root);
        for dir in [root, &paths.dir, &paths.tmp] {
            st.create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        let id = random_id();
        let catalog = Catalog {
            next_layer: 1,
            next_seq: 1,
            next_intent: 1,
            ..Catalog::default()
        };
        CatalogFile::write_new(&storage, &paths.tmp, &root.join(CATALOG_FILE), id, &catalog)?;
        let header = RepoHeader {
            created: now_ns() / 1_000_000_000,
            id,
        };
        // strata.repo last: until it exists, this is not a repository.
        format::write_atomic(
            st,
            &paths.tmp,
            &root.join(REPO_FILE),
            &format::doc_bytes(MAGIC_REPO, &format::encode(&header)),
        )?;
        for dir in [&paths.dir, &paths.tmp] {
            format::sync_dir(st, dir)?;
        }
        if let Some(parent) = root.parent() {
            let _ = st.sync_dir(parent);
        }
        Repository::open_in(storage, root)
    }

    /// Opens the repository in `root` for this process alone.
    pub fn open(root: &Path) -> Result<Repository> {
        Self::open_in(Arc::new(LocalStorage), root)
    }

    /// Opens the repository in `root` of `storage` for this process alone:
    /// upgrades an older format, replays the catalog, and reconciles the
    /// layer files with it ([`recovery`]).
    pub fn open_in(storage: Arc<dyn Storage>, root: &Path) -> Result<Repository> {
        let st = storage.as_ref();
        let repo_file = root.join(REPO_FILE);
        if st.kind(&repo_file).map_err(StoreError::io(&repo_file))? != Some(EntryKind::File) {
            return Err(StoreError::NotARepository(root.to_owned()));
        }
        let lock = match st
            .lock(&root.join(LOCK_FILE))
            .map_err(StoreError::io(root.join(LOCK_FILE)))?
        {
            LockOutcome::Taken(guard) => guard,
            LockOutcome::Held(pid) => {
                return Err(StoreError::Locked {
                    path: root.to_owned(),
                    pid: pid.map_or("unknown".into(), |p| p.to_string()),
                })
            }
        };
        let paths = layer_paths(root);
        let mut doc = format::read_doc(st, &repo_file, MAGIC_REPO)?;
        if doc.version == 1 {
            let old: format::v1::RepoHeader = format::decode(&repo_file, &doc.payload)?;
            check_no_v1_holder(root)?;
            for dir in [&paths.dir, &paths.tmp] {
                st.create_dir_all(dir).map_err(StoreError::io(dir))?;
            }
            upgrade::from_v1(&storage, root, &paths, old.created)?;
            doc = format::read_doc(st, &repo_file, MAGIC_REPO)?;
        }
        let header: RepoHeader = format::decode(&repo_file, &doc.payload)?;
        let catalog_path = root.join(CATALOG_FILE);
        let (mut file, mut cat, cat_repo) =
            CatalogFile::open(storage.clone(), &paths.tmp, &catalog_path)?;
        if cat_repo != header.id {
            return Err(StoreError::corrupt(
                &catalog_path,
                format!(
                    "it belongs to another repository (id {cat_repo:016x}; strata.repo says {:016x})",
                    header.id
                ),
            ));
        }
        cat.validate(&catalog_path)?;
        // Refusals come first: until here nothing was written.
        let reconciled = recovery::reconcile(st, root, &paths, &cat)?;
        format::apply_repairs(st, &repo_file, &doc.repairs)?;
        let mut mended = Vec::new();
        if !doc.repairs.is_empty() {
            mended.push(REPO_FILE.to_string());
        }
        if doc.version < format::FORMAT_VERSION {
            // Version 2 files read as they are (format::v2): only the
            // header says the repository is now newer.
            upgrade::header(st, &paths.tmp, &repo_file, doc.version, &header)?;
        }
        if file.settle()? {
            mended.push(CATALOG_FILE.to_string());
        }
        // Intents left by a crash are done with (recovery has dealt with
        // their files), and a catalog from before usage was kept gets it.
        let missing = cat.missing_usage(today());
        if !cat.intents.is_empty() || !missing.is_empty() {
            let counters = cat.counters();
            cat.intents.clear();
            cat.usage.extend(missing);
            cat.generation += 1;
            file.commit_touched(&mut cat, counters)
                .map_err(CommitError::into_inner)?;
            cat.settle();
        }
        if file.wants_compaction() {
            file.compact(&cat).map_err(CommitError::into_inner)?;
        }
        let fd_limit = sys::raise_open_file_limit().unwrap_or(1024);
        let files = LayerFiles::new(
            storage.clone(),
            paths.clone(),
            header.id,
            (fd_limit / 2).min(16_384) as usize,
        );
        for n in &reconciled.notices {
            log::info!("{}: {n}", root.display());
        }
        let repo = Repository {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                storage,
                paths,
                _lock: lock,
                catalog: Mutex::new(CatalogState::new(cat, file)),
                files: Arc::new(files),
                disks: Mutex::new(HashMap::new()),
                identities: Mutex::new(HashMap::new()),
                maps: Mutex::new(MapCache::new(MAP_CACHE_BYTES)),
                structure: Mutex::new(()),
                views: Arc::new(Views::default()),
                relaid: Default::default(),
                stale_bases: Default::default(),
                listeners: Mutex::new(Vec::new()),
                notices: reconciled.notices,
                mended: Mutex::new(mended),
            }),
        };
        repo.ensure_reserve();
        Ok(repo)
    }

    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// What opening the repository found worth telling (files set aside).
    pub fn notices(&self) -> &[String] {
        &self.inner.notices
    }

    /// Whether the file `md` describes is one of the repository's own (the
    /// same device and inode as a file under `root`): what no command may
    /// write into, and what the holder of the lock may not open and close,
    /// since closing any descriptor of the lock file drops the lock.
    pub fn holds(root: &Path, md: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(m) = e.path().symlink_metadata() else {
                    continue;
                };
                if m.dev() == md.dev() && m.ino() == md.ino() {
                    return true;
                }
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
        false
    }

    /// Who holds the repository at `root`, if anyone (a PID); safe to ask
    /// from any process, including the holder.
    pub fn holder(root: &Path) -> Result<Option<u32>> {
        let p = root.join(LOCK_FILE);
        sys::lock_holder(&p).map_err(StoreError::io(&p))
    }

    /// Calls `f` with every change made from now on, after it is durable.
    pub fn subscribe(&self, f: impl Fn(&Event) + Send + Sync + 'static) {
        self.inner.listeners.lock().push(Box::new(f));
    }

    fn emit(&self, e: Event) {
        for f in self.inner.listeners.lock().iter() {
            f(&e);
        }
    }

    /// Changes the catalog with `f`, durably, in one record. `f` changes
    /// the catalog in place and the record holds what it touched, so a
    /// commit costs what it changes, not the catalog's size. Should `f` or
    /// the write fail, every change is undone: the in-memory catalog holds
    /// only what is durable. On [`CommitError::NotWritten`] the caller may
    /// undo what it prepared; on [`CommitError::Unknown`] it must not, and
    /// the repository is latched.
    fn commit<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T, CommitError> {
        let mut state = self.inner.catalog.lock();
        if let Some(cause) = &state.latch {
            return Err(CommitError::NotWritten(StoreError::CatalogLatched {
                cause: cause.clone(),
            }));
        }
        let state = &mut *state;
        debug_assert!(state.cat.is_settled());
        let counters = state.cat.counters();
        let out = match f(&mut state.cat) {
            Ok(out) => out,
            Err(e) => {
                state.cat.rollback(counters);
                return Err(CommitError::NotWritten(e));
            }
        };
        state.cat.generation += 1;
        let renamed = state.cat.renamed_layers(&state.by_layer);
        state.cat.note_usage(today(), &state.by_layer, &renamed);
        if let Err(e) = state.file.commit_touched(&mut state.cat, counters) {
            if let CommitError::Unknown(inner) = &e {
                log::error!("catalog commit: {inner}; the repository accepts no more changes");
                state.latch = Some(inner.to_string());
            }
            return Err(e);
        }
        state.settle(renamed);
        if state.file.wants_compaction() {
            match state.file.compact(&state.cat) {
                Ok(()) => {}
                Err(CommitError::NotWritten(e)) => log::warn!("rewriting the catalog: {e}"),
                Err(CommitError::Unknown(e)) => {
                    log::error!(
                        "rewriting the catalog: {e}; the repository accepts no more changes"
                    );
                    state.latch = Some(e.to_string());
                }
            }
        }
        Ok(out)
    }

    /// A copy of the catalog as it is now.
    fn catalog(&self) -> Catalog {
        self.inner.catalog.lock().cat.clone()
    }

    /// Commits, in one record, new layer ids (`count` of them) and an intent
    /// naming the files `files` says the operation will make with them.
    /// Returns the ids, what `files` returned, the files and the intent.
    fn intend<T>(
        &self,
        what: String,
        count: usize,
        files: impl FnOnce(&Catalog, &[LayerId]) -> Result<(T, FileList)>,
    ) -> Result<(Vec<LayerId>, T, FileList, u64)> {
        self.commit(|cat| {
            let ids: Vec<LayerId> = (0..count).map(|_| cat.allocate_layer()).collect();
            let (out, made) = files(cat, &ids)?;
            let n = cat.add_intent(Intent {
                what,
                kind: IntentKind::Create,
                files: made.clone(),
            });
            Ok((ids, out, made, n))
        })
        .map_err(CommitError::into_inner)
    }

    /// Undoes a failed operation: removes the files its intent lists that
    /// the catalog does not name, and drops the intent. Best effort: what
    /// fails here is done by the next open.
    fn abandon(&self, intent: u64, files: &[(LayerId, LayerFileKind)]) {
        self.remove_files(files);
        if let Err(e) = self.commit(|cat| {
            cat.intents.remove(&intent);
            Ok(())
        }) {
            log::warn!("dropping intent {intent}: {}", e.into_inner());
        }
    }

    /// Removes layer files the catalog does not name (best effort), and
    /// forgets their open descriptors.
    fn remove_files(&self, files: &[(LayerId, LayerFileKind)]) {
        let named: std::collections::BTreeSet<_> = self
            .inner
            .catalog
            .lock()
            .cat
            .expected_files()
            .into_iter()
            .collect();
        for &(id, kind) in files.iter().filter(|f| !named.contains(f)) {
            if kind == LayerFileKind::Data {
                self.inner.files.forget(id);
            }
            let p = self.inner.paths.file(id, kind);
            match self.inner.storage.remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("removing {}: {e}", p.display()),
            }
        }
    }

    pub fn disks(&self) -> Result<Vec<DiskInfo>> {
        let names: Vec<DiskName> = self
            .inner
            .catalog
            .lock()
            .cat
            .disks
            .keys()
            .cloned()
            .collect();
        names.iter().map(|n| self.disk_info(n)).collect()
    }

    /// Names that have a disk directory: disks, and deleted disks whose
    /// snapshots remain.
    pub fn disk_names(&self) -> Vec<DiskName> {
        let state = self.inner.catalog.lock();
        let mut names: Vec<DiskName> = state.cat.disks.keys().cloned().collect();
        names.extend(state.cat.snapshots.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    pub fn disk_info(&self, name: &DiskName) -> Result<DiskInfo> {
        let (live, (block_size, snaps_bytes, count)) = self.live_info_and(name, |state, rec| {
            let layers: Vec<LayerId> = state
                .cat
                .snapshots
                .get(name)
                .map(|m| m.values().map(|s| s.layer).collect())
                .unwrap_or_default();
            (rec.block_size, state.stored(&layers), layers.len() as u64)
        })?;
        Ok(DiskInfo {
            name: name.to_string(),
            size: live.size,
            block_size,
            snapshots: count,
            used_bytes: live.live_bytes + snaps_bytes,
            live_bytes: live.live_bytes,
            created: live.created,
            id: live.id,
        })
    }

    /// See [`LiveInfo`].
    pub fn live_info(&self, name: &DiskName) -> Result<LiveInfo> {
        self.live_info_and(name, |_, _| ()).map(|(live, ())| live)
    }

    /// The disk's [`LiveInfo`], and what `more` finds in the catalog as it
    /// was then (one look at it for both).
    fn live_info_and<T>(
        &self,
        name: &DiskName,
        more: impl FnOnce(&CatalogState, &catalog::DiskRecord) -> T,
    ) -> Result<(LiveInfo, T)> {
        let (rec, held, extra) = {
            let state = self.inner.catalog.lock();
            let rec = state
                .cat
                .disks
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            let held = state.stored(&state.held_below(rec.live));
            let extra = more(&state, &rec);
            (rec, held, extra)
        };
        let open = self.inner.disks.lock().get(name).cloned();
        let live = match open {
            Some(d) => d.live_stored_bytes()?,
            None => {
                let p = self.inner.paths.data(rec.live);
                self.inner
                    .storage
                    .open(&p, false)
                    .and_then(|f| f.allocated_bytes())
                    .map_err(StoreError::io(&p))?
            }
        };
        // What it holds that no remaining snapshot does: its live layer, and
        // the layers of deleted snapshots only it still reads.
        let info = LiveInfo {
            size: rec.size,
            live_bytes: live + held,
            created: rec.created,
            id: rec.id,
        };
        Ok((info, extra))
    }

    /// The name of the disk whose id is `id`, if it still exists (how the
    /// mount finds a live image by its identity).
    pub fn disk_name_of(&self, id: LayerId) -> Option<DiskName> {
        let state = self.inner.catalog.lock();
        state
            .cat
            .disks
            .iter()
            .find(|(_, d)| d.id == id)
            .map(|(n, _)| n.clone())
    }

    /// The live image of a disk, opened (and recovered) on first use.
    pub fn disk(&self, name: &DiskName) -> Result<Arc<Disk>> {
        let mut disks = self.inner.disks.lock();
        if let Some(d) = disks.get(name) {
            return Ok(d.clone());
        }
        let (rec, parent) = {
            let state = self.inner.catalog.lock();
            let rec = state
                .cat
                .disks
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            let parent = state.cat.layers.get(&rec.live).and_then(|l| l.parent);
            (rec, parent)
        };
        let geo = Geometry {
            size: rec.size,
            block_size: rec.block_size,
        };
        let files = &self.inner.files;
        let (journal, present) = Journal::open(files.clone(), rec.live, geo)?;
        let live = LiveLayer::open(files, rec.live, geo, present)?;
        let base = match parent {
            Some(below) => OwnerMap::clone(&self.frozen_map(below)?.map),
            None => OwnerMap::new(),
        };
        let disk = Arc::new(Disk::new(
            name.clone(),
            rec.id,
            files.clone(),
            live,
            journal,
            base,
        ));
        disks.insert(name.clone(), disk.clone());
        Ok(disk)
    }

    /// The disk if it is open (recovered) already.
    fn open_disk(&self, name: &DiskName) -> Option<Arc<Disk>> {
        self.inner.disks.lock().get(name).cloned()
    }

    /// The owner map of the frozen chain that ends with `top`. Starts from
    /// the nearest ancestor whose map is cached (usually the snapshot just
    /// before), so walking a history oldest-first costs each layer once.
    fn frozen_map(&self, top: LayerId) -> Result<Arc<ImageMap>> {
        // A tidy may change the chain while it is read (a merged layer's
        // index goes once the merge commits): then it is read again.
        let mut tries = 0;
        loop {
            let generation = self.inner.catalog.lock().cat.generation;
            match self.build_frozen_map(top) {
                Err(e) if tries < 3 && self.inner.catalog.lock().cat.generation != generation => {
                    log::debug!("owner map of {top}: {e}; the tree changed meanwhile, again");
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn build_frozen_map(&self, top: LayerId) -> Result<Arc<ImageMap>> {
        use std::sync::atomic::Ordering::SeqCst;
        // Maps cached before the last relayout may read copies that go.
        let relaid = self.inner.relaid.load(SeqCst);
        let current = |m: &&Arc<ImageMap>| m.relaid == relaid;
        if let Some(m) = self.inner.maps.lock().get(&top).filter(current) {
            return Ok(m.clone());
        }
        let (chain, geos) = {
            let state = self.inner.catalog.lock();
            let chain = state.cat.chain(top);
            let geos: Vec<Geometry> = chain
                .iter()
                .map(|id| {
                    let l = state.cat.layers.get(id);
                    Geometry {
                        size: l.map_or(0, |l| l.size),
                        block_size: l.map_or(0, |l| l.block_size),
                    }
                })
                .collect();
            (chain, geos)
        };
        let mut start = chain.len();
        let mut map = OwnerMap::new();
        {
            let mut maps = self.inner.maps.lock();
            for (i, id) in chain.iter().enumerate().skip(1) {
                if let Some(m) = maps.get(id).filter(current) {
                    map = OwnerMap::clone(&m.map);
                    start = i;
                    break;
                }
            }
        }
        let mut flat = None;
        for i in (0..start).rev() {
            let (id, geo) = (chain[i], geos[i]);
            let idx = layer::read_index(&self.inner.files, id, geo)?;
            idx.cover(id, &mut map);
            if i == 0 && chain.len() == 1 && idx.own_file_only(id) {
                flat = Some(id);
            }
        }
        let image = Arc::new(ImageMap { map, flat, relaid });
        self.inner.maps.lock().put(top, image.clone());
        Ok(image)
    }

    /// Forgets every cached owner map: after the layer tree changed shape.
    fn forget_maps(&self) {
        self.inner.maps.lock().clear();
    }

    fn snapshot_record(&self, r: &SnapshotRef) -> Option<SnapshotRecord> {
        let state = self.inner.catalog.lock();
        state.cat.snapshots.get(&r.disk)?.get(&r.snap).cloned()
    }

    pub fn snapshot_info(&self, r: &SnapshotRef) -> Result<SnapshotInfo> {
        let state = self.inner.catalog.lock();
        let rec = state
            .cat
            .snapshots
            .get(&r.disk)
            .and_then(|m| m.get(&r.snap))
            .ok_or_else(|| state.cat.no_such_snapshot(r))?;
        Ok(snapshot_info(&state.cat, &r.disk, &r.snap, rec))
    }

    /// The snapshot that names `layer`, if one does (how the mount finds an
    /// image by its identity).
    pub fn snapshot_info_by_layer(&self, layer: LayerId) -> Option<SnapshotInfo> {
        let state = self.inner.catalog.lock();
        let (d, s) = state.by_layer.get(&layer)?;
        let r = state.cat.snapshots.get(d)?.get(s)?;
        Some(snapshot_info(&state.cat, d, s, r))
    }

    /// See [`CatalogState::held_below`].
    pub(crate) fn held_below(&self, live: LayerId) -> Vec<LayerId> {
        self.inner.catalog.lock().held_below(live)
    }

    /// Whether the image of `layer` reads through a layer no snapshot names
    /// (or is one): once it is closed, tidy may give space back.
    pub fn reads_hidden(&self, layer: LayerId) -> bool {
        let state = self.inner.catalog.lock();
        !state.hidden.is_empty()
            && state
                .cat
                .chain(layer)
                .iter()
                .any(|l| state.hidden.contains(l))
    }

    /// A disk's snapshots in the order they were taken. A deleted disk's
    /// remaining snapshots are listed by its name too.
    pub fn snapshots(&self, disk: &DiskName) -> Result<Vec<SnapshotInfo>> {
        let state = self.inner.catalog.lock();
        let cat = &state.cat;
        if !cat.disks.contains_key(disk) && !cat.snapshots.contains_key(disk) {
            return Err(StoreError::NoSuchDisk(disk.clone()));
        }
        Ok(cat
            .snapshots_of(disk)
            .into_iter()
            .map(|(name, rec)| snapshot_info(cat, disk, name, rec))
            .collect())
    }

    /// A snapshot's read-only image. Its owner map is built on first use and
    /// kept in a bounded cache; its layer stays as it is while it is open,
    /// even if the snapshot is deleted meanwhile.
    pub fn open_snapshot(&self, r: &SnapshotRef) -> Result<Snapshot> {
        use std::sync::atomic::Ordering::SeqCst;
        let info = self.snapshot_info(r)?;
        let geo = Geometry {
            size: info.size,
            block_size: info.block_size,
        };
        // The chain is pinned before its map is taken. A map built before
        // a snapshot was made full may read copies that tidy then frees:
        // if that happened meanwhile, the pin may have come too late, and
        // both are taken again (maps built before it are forgotten first).
        loop {
            let relaid = self.inner.relaid.load(SeqCst);
            let chain = self.inner.catalog.lock().cat.chain(info.layer);
            let guard = self.inner.views.open(chain);
            // Deleted before the pin took: tidy may have changed its layer
            // already. (Deleted after: tidy sees the pin.)
            if self
                .snapshot_record(r)
                .is_none_or(|rec| rec.layer != info.layer)
            {
                return Err(StoreError::NoSuchSnapshot(r.clone()));
            }
            let map = self.frozen_map(info.layer)?;
            if self.inner.relaid.load(SeqCst) == relaid {
                return Ok(Snapshot::new(
                    info,
                    geo,
                    map,
                    self.inner.files.clone(),
                    guard,
                ));
            }
        }
    }

    /// After a layer was made full: owner maps built before may read copies
    /// that tidy may now free. Forgets the cached ones, tells opening
    /// images to look again, and gives every open disk a new map of the
    /// chain under its live layer. The caller holds `structure`. Until it
    /// succeeds, tidy calls it again first, and frees nothing if it fails.
    pub(crate) fn relay(&self) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        self.mark_relaid();
        // A disk being opened holds `disks` throughout: it is in the list.
        let disks: Vec<Arc<Disk>> = self.inner.disks.lock().values().cloned().collect();
        for disk in disks {
            let parent = {
                let cat = self.catalog();
                cat.layers.get(&disk.live_id()).and_then(|l| l.parent)
            };
            let base = match parent {
                Some(p) => OwnerMap::clone(&self.frozen_map(p)?.map),
                None => OwnerMap::new(),
            };
            // The same image, its blocks read from where they are now.
            disk.set_base(base);
        }
        self.inner.stale_bases.store(false, SeqCst);
        Ok(())
    }

    /// The first half of [`Repository::relay`], also called inside the
    /// commit that relays (under the catalog lock): from then on no map
    /// built before is served, and opening images look again.
    pub(crate) fn mark_relaid(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.inner.stale_bases.store(true, SeqCst);
        self.inner.relaid.fetch_add(1, SeqCst);
        self.forget_maps();
    }

    /// The metadata files opening the repository mended (each said once).
    pub(crate) fn take_mended_at_open(&self) -> Vec<String> {
        std::mem::take(&mut *self.inner.mended.lock())
    }

    /// Whether tidy would find nothing to do: no frozen layer that no
    /// snapshot names, and no removal under way.
    pub(crate) fn nothing_to_tidy(&self) -> bool {
        let state = self.inner.catalog.lock();
        state.hidden.is_empty()
            && !state
                .cat
                .intents
                .values()
                .any(|i| i.kind == IntentKind::Remove)
    }

    /// Whether [`Repository::relay`] has yet to succeed.
    pub(crate) fn bases_stale(&self) -> bool {
        self.inner
            .stale_bases
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Turns the checking of blocks on read off (or on again): for
    /// benchmarks that measure what checking costs, nothing else.
    #[doc(hidden)]
    pub fn set_read_checks(&self, on: bool) {
        self.inner.files.set_read_checks(on);
    }

    /// Any image by reference: `DISK` (live) or `DISK@SNAP`.
    pub fn open_image(&self, r: &ImageRef) -> Result<Arc<dyn ImageRead>> {
        Ok(match r {
            ImageRef::Live(d) => self.disk(d)?,
            ImageRef::Snapshot(s) => Arc::new(self.open_snapshot(s)?),
        })
    }

    /// Flushes every open disk; the first failure is returned after all
    /// were tried.
    pub fn flush_all(&self) -> Result<()> {
        let disks: Vec<_> = self.inner.disks.lock().values().cloned().collect();
        let mut first = Ok(());
        for d in disks {
            if let Err(e) = d.flush() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// The open disks that stopped taking writes, and why (see the latch in
    /// [`disk`]), by name.
    pub fn latched(&self) -> Vec<(String, String)> {
        let mut out: Vec<_> = self
            .inner
            .disks
            .lock()
            .values()
            .filter_map(|d| Some((d.name().to_string(), d.latch_cause()?)))
            .collect();
        out.sort();
        out
    }

    /// The files set aside in the quarantine.
    pub fn quarantine(&self) -> Result<Vec<QuarantinedFile>> {
        recovery::list_quarantine(self.inner.storage.as_ref(), &self.inner.root)
    }

    /// Deletes the quarantine; returns what it held.
    pub fn purge_quarantine(&self) -> Result<Vec<QuarantinedFile>> {
        recovery::purge_quarantine(self.inner.storage.as_ref(), &self.inner.root)
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        if let Err(e) = self.flush_all() {
            log::error!("flushing {} on close: {e}", self.inner.root.display());
        }
    }
}

fn snapshot_info(
    cat: &Catalog,
    disk: &DiskName,
    name: &SnapName,
    rec: &SnapshotRecord,
) -> SnapshotInfo {
    let layer = cat.layers.get(&rec.layer);
    let frozen = layer.and_then(|l| l.frozen).unwrap_or(FrozenInfo {
        blocks: 0,
        stored_bytes: 0,
    });
    SnapshotInfo {
        disk: disk.to_string(),
        name: name.to_string(),
        taken: rec.taken,
        stored_bytes: frozen.stored_bytes,
        blocks: frozen.blocks,
        size: layer.map(|l| l.size).unwrap_or(0),
        block_size: layer.map(|l| l.block_size).unwrap_or(0),
        full: layer.is_some_and(|l| l.parent.is_none()),
        identity: None,
        layer: rec.layer,
    }
}

fn layer_paths(root: &Path) -> LayerPaths {
    LayerPaths {
        dir: root.join("layers"),
        tmp: root.join("tmp"),
    }
}

/// Version 1 locked with `flock`: before upgrading, make sure no process of
/// an older strata still holds the repository that way.
fn check_no_v1_holder(root: &Path) -> Result<()> {
    let path = root.join(LOCK_FILE);
    let Ok(f) = std::fs::File::open(&path) else {
        return Ok(());
    };
    // Our own record lock is on another descriptor of this file; closing
    // this one would drop it, so it is kept open for the process's life.
    let free = sys::try_flock_exclusive(&f).unwrap_or(true);
    std::mem::forget(f);
    if free {
        Ok(())
    } else {
        Err(StoreError::Locked {
            path: root.to_owned(),
            pid: "of an older strata (format version 1)".into(),
        })
    }
}
