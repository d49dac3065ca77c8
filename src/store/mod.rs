//! The repository engine: disks, layers, snapshots and their metadata. No
//! FUSE here; the file system and the CLI are built on this API.
//!
//! # Model
//!
//! A disk is a chain of layers: a writable live layer on top of frozen
//! layers, each a sparse file of blocks (see [`format`] for every file and
//! field). A snapshot names a frozen layer; its image is that layer's chain.
//! Reads go through an owner map (block → layer), so their cost does not
//! depend on chain depth. Taking a snapshot freezes the live layer in place
//! and starts an empty one: no data is copied.
//!
//! # Durability
//!
//! - [`Disk::flush`] makes every write completed before it durable: the live
//!   layer's data is fdatasync'ed, then a journal record naming its newly
//!   present blocks is appended and fdatasync'ed.
//! - The catalog is the one commit point, replaced with write/fsync/rename/
//!   fsync-dir. A snapshot exists once the catalog naming it is durable, and
//!   by then its data and index are durable too.
//! - After a crash, opening the repository keeps every committed snapshot,
//!   recovers each live layer as of its last flush or later, and removes
//!   files no catalog names.
//!
//! # Locks
//!
//! One process holds a repository: an exclusive `flock` on `REPO/lock`. In
//! the process, lock order is: a disk's writer lock, then its state lock
//! (see [`disk`]), then `Inner::disks`, then `Inner::catalog`, then the
//! owner-map and layer-file caches. No lock is held across a call into
//! another disk.

pub mod catalog;
pub mod disk;
pub mod error;
pub mod extents;
pub mod format;
pub mod image;
pub mod layer;
pub mod names;
pub mod snapshot;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use catalog::{Catalog, DiskRecord, FrozenInfo, LayerRecord, SnapshotRecord};
pub use disk::Disk;
pub use error::{Result, StoreError};
use extents::OwnerMap;
use format::{RepoHeader, MAGIC_CATALOG, MAGIC_REPO};
pub use image::{export, ExportStats, ImageRead};
use layer::{Geometry, LayerFiles, LayerPaths, LiveLayer};
pub use names::{DiskName, ImageRef, LayerId, SnapName, SnapshotRef};
pub use snapshot::Snapshot;

use crate::sys;

const REPO_FILE: &str = "strata.repo";
const CATALOG_FILE: &str = "catalog";
const LOCK_FILE: &str = "lock";
/// Owner maps of snapshot images kept built.
const MAP_CACHE: usize = 64;

/// A disk as `disk list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    pub name: String,
    pub size: u64,
    pub block_size: u32,
    pub snapshots: u64,
    /// Bytes the live layer and the disk's snapshots occupy.
    pub used_bytes: u64,
    /// Bytes the live layer alone occupies (what `du live.img` shows).
    pub live_bytes: u64,
    /// Unix nanoseconds.
    pub created: u64,
}

/// A snapshot as `snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub disk: String,
    pub name: String,
    /// Unix nanoseconds when taken.
    pub taken: u64,
    /// Bytes this snapshot itself stores (its delta).
    pub stored_bytes: u64,
    /// Blocks this snapshot itself holds.
    pub blocks: u64,
    pub size: u64,
    pub block_size: u32,
    #[serde(skip)]
    pub layer: LayerId,
}

/// An open repository. Dropping it flushes every open disk.
pub struct Repository {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    paths: LayerPaths,
    _lock: File,
    catalog: Mutex<Catalog>,
    files: Arc<LayerFiles>,
    disks: Mutex<HashMap<DiskName, Arc<Disk>>>,
    maps: Mutex<LruCache<LayerId, Arc<OwnerMap>>>,
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `2026-11-22T14-05-00Z`: a UTC time as a portable file name.
pub fn default_snapshot_name(unix_ns: u64) -> SnapName {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    let name = format!("{y:04}-{mo:02}-{d:02}T{h:02}-{m:02}-{s:02}Z");
    SnapName::parse(&name).unwrap_or_else(|_| unreachable_name())
}

fn unreachable_name() -> SnapName {
    // The format above only produces digits, '-', 'T' and 'Z'.
    SnapName::parse("snapshot").unwrap_or_else(|e| panic!("{e}"))
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
        if root.join(REPO_FILE).exists() {
            return Err(StoreError::AlreadyARepository(root.to_owned()));
        }
        if let Ok(mut entries) = fs::read_dir(root) {
            if entries.next().is_some() {
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
            fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
        }
        let catalog = Catalog {
            next_layer: 1,
            next_seq: 1,
            ..Catalog::default()
        };
        write_catalog(&paths.tmp, root, &catalog)?;
        let header = RepoHeader {
            created: now_ns() / 1_000_000_000,
        };
        // strata.repo last: until it exists, this is not a repository.
        format::write_atomic(
            &paths.tmp,
            &root.join(REPO_FILE),
            &format::frame(MAGIC_REPO, &format::encode(&header)),
        )?;
        if let Some(parent) = root.parent() {
            let _ = format::sync_dir(parent);
        }
        Repository::open(root)
    }

    /// Opens the repository in `root` for this process alone.
    pub fn open(root: &Path) -> Result<Repository> {
        let repo_file = root.join(REPO_FILE);
        if !repo_file.is_file() {
            return Err(StoreError::NotARepository(root.to_owned()));
        }
        let _header: RepoHeader = format::read_frame(&repo_file, MAGIC_REPO)?;
        let lock = take_lock(root)?;
        let catalog_path = root.join(CATALOG_FILE);
        let catalog: Catalog = format::read_frame(&catalog_path, MAGIC_CATALOG)?;
        catalog.validate(&catalog_path)?;
        let paths = layer_paths(root);
        remove_strays(&paths, &catalog)?;
        let fd_limit = sys::raise_open_file_limit().unwrap_or(1024);
        let files = LayerFiles::new(paths.clone(), (fd_limit / 2).min(16_384) as usize);
        Ok(Repository {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                paths,
                _lock: lock,
                catalog: Mutex::new(catalog),
                files: Arc::new(files),
                disks: Mutex::new(HashMap::new()),
                maps: Mutex::new(LruCache::new(
                    NonZeroUsize::new(MAP_CACHE).unwrap_or(NonZeroUsize::MIN),
                )),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// Replaces the catalog with `f` applied to a copy of it; the in-memory
    /// catalog changes only once the new one is durable.
    fn commit<T>(&self, f: impl FnOnce(&mut Catalog) -> Result<T>) -> Result<T> {
        let mut cat = self.inner.catalog.lock();
        let mut next = cat.clone();
        let out = f(&mut next)?;
        next.generation += 1;
        write_catalog(&self.inner.paths.tmp, &self.inner.root, &next)?;
        *cat = next;
        Ok(out)
    }

    /// Creates an empty disk.
    pub fn create_disk(&self, name: &DiskName, size: u64, block_size: u32) -> Result<DiskInfo> {
        self.create_disk_with(name, size, block_size, |_| Ok(()))
    }

    /// Creates a disk whose live layer `fill` writes before the disk is
    /// committed: if `fill` fails, no disk appears and no file is left.
    fn create_disk_with(
        &self,
        name: &DiskName,
        size: u64,
        block_size: u32,
        fill: impl FnOnce(&mut LiveLayer) -> Result<()>,
    ) -> Result<DiskInfo> {
        let size = catalog::check_disk_size(size)?;
        let block_size = catalog::check_block_size(block_size as u64)?;
        let geo = Geometry { size, block_size };
        let id = {
            let mut cat = self.inner.catalog.lock();
            if cat.disks.contains_key(name) {
                return Err(StoreError::DiskExists(name.clone()));
            }
            // Ids are only ever handed out once, even if this attempt fails.
            cat.allocate_layer()
        };
        let result = LiveLayer::create(&self.inner.paths, id, geo).and_then(|mut live| {
            fill(&mut live)?;
            live.sync()?;
            self.commit(|cat| {
                if cat.disks.contains_key(name) {
                    return Err(StoreError::DiskExists(name.clone()));
                }
                cat.next_layer = cat.next_layer.max(id.0 + 1);
                cat.layers.insert(
                    id,
                    LayerRecord {
                        parent: None,
                        block_size,
                        size,
                        frozen: None,
                    },
                );
                cat.disks.insert(
                    name.clone(),
                    DiskRecord {
                        size,
                        block_size,
                        live: id,
                        created: now_ns(),
                    },
                );
                Ok(())
            })
        });
        if let Err(e) = result {
            remove_layer_files(&self.inner.paths, id);
            return Err(e);
        }
        self.disk_info(name)
    }

    /// Creates a disk from a raw image file. Only the file's data regions are
    /// read (`SEEK_DATA`), and all-zero blocks are not stored.
    pub fn import_disk(
        &self,
        name: &DiskName,
        source: &Path,
        block_size: u32,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DiskInfo> {
        let src = File::open(source).map_err(StoreError::io(source))?;
        let size = {
            use std::io::{Seek, SeekFrom};
            let mut f = &src;
            f.seek(SeekFrom::End(0)).map_err(StoreError::io(source))?
        };
        if size == 0 || size % catalog::SECTOR != 0 {
            return Err(StoreError::invalid(
                "image",
                format!(
                    "{} is {size} bytes; a disk image must be a non-zero multiple of 512 bytes",
                    source.display()
                ),
            ));
        }
        self.create_disk_with(name, size, block_size, |live| {
            import_into(live, &src, source, progress)
        })
    }

    pub fn disks(&self) -> Result<Vec<DiskInfo>> {
        let names: Vec<DiskName> = self.inner.catalog.lock().disks.keys().cloned().collect();
        names.iter().map(|n| self.disk_info(n)).collect()
    }

    pub fn disk_info(&self, name: &DiskName) -> Result<DiskInfo> {
        let (rec, snaps_bytes, count) = {
            let cat = self.inner.catalog.lock();
            let rec = cat
                .disks
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            let snaps = cat.snapshots_of(name);
            let bytes: u64 = snaps
                .iter()
                .filter_map(|(_, s)| cat.layers.get(&s.layer)?.frozen)
                .map(|f| f.stored_bytes)
                .sum();
            (rec, bytes, snaps.len() as u64)
        };
        let live = match self.inner.disks.lock().get(name) {
            Some(d) => d.live_stored_bytes()?,
            None => {
                let p = self.inner.paths.data(rec.live);
                let f = File::open(&p).map_err(StoreError::io(&p))?;
                layer::allocated_bytes(&f, &p)?
            }
        };
        Ok(DiskInfo {
            name: name.to_string(),
            size: rec.size,
            block_size: rec.block_size,
            snapshots: count,
            used_bytes: live + snaps_bytes,
            live_bytes: live,
            created: rec.created,
        })
    }

    /// The live image of a disk, opened (and recovered) on first use.
    pub fn disk(&self, name: &DiskName) -> Result<Arc<Disk>> {
        let mut disks = self.inner.disks.lock();
        if let Some(d) = disks.get(name) {
            return Ok(d.clone());
        }
        let (rec, chain) = {
            let cat = self.inner.catalog.lock();
            let rec = cat
                .disks
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            let chain = cat.chain(rec.live);
            (rec, chain)
        };
        let geo = Geometry {
            size: rec.size,
            block_size: rec.block_size,
        };
        let live = LiveLayer::open(&self.inner.paths, rec.live, geo)?;
        let base = match chain.get(1) {
            Some(&below) => OwnerMap::clone(self.frozen_map(below, geo)?.as_ref()),
            None => OwnerMap::new(),
        };
        let disk = Arc::new(Disk::new(
            name.clone(),
            self.inner.files.clone(),
            live,
            base,
        ));
        disks.insert(name.clone(), disk.clone());
        Ok(disk)
    }

    /// The owner map of the frozen chain that ends with `top`. Starts from
    /// the nearest ancestor whose map is cached (usually the snapshot just
    /// before), so walking a history oldest-first costs each layer once.
    fn frozen_map(&self, top: LayerId, geo: Geometry) -> Result<Arc<OwnerMap>> {
        if let Some(m) = self.inner.maps.lock().get(&top) {
            return Ok(m.clone());
        }
        let chain = self.inner.catalog.lock().chain(top);
        let mut start = chain.len();
        let mut map = OwnerMap::new();
        {
            let mut maps = self.inner.maps.lock();
            for (i, id) in chain.iter().enumerate().skip(1) {
                if let Some(m) = maps.get(id) {
                    map = OwnerMap::clone(m);
                    start = i;
                    break;
                }
            }
        }
        for &id in chain[..start].iter().rev() {
            let (present, _) = layer::read_index(&self.inner.paths, id, geo)?;
            for r in present.runs() {
                map.paint(r, id);
            }
        }
        let map = Arc::new(map);
        self.inner.maps.lock().put(top, map.clone());
        Ok(map)
    }

    /// Freezes the disk's live layer as snapshot `name` (default: the UTC
    /// time) and starts an empty live layer. Holds every write that completed
    /// before the call; no data is copied.
    pub fn snapshot(&self, disk_name: &DiskName, name: Option<SnapName>) -> Result<SnapshotInfo> {
        let disk = self.disk(disk_name)?;
        let _w = disk.lock_writer();
        let taken = now_ns();
        let name = match name {
            Some(n) => {
                let r = SnapshotRef {
                    disk: disk_name.clone(),
                    snap: n.clone(),
                };
                if self.snapshot_record(&r).is_some() {
                    return Err(StoreError::SnapshotExists(r));
                }
                n
            }
            None => self.free_default_name(disk_name, taken),
        };
        // Seal: data durable, checksums taken, index durable. The writer
        // lock keeps the live layer still while the state is read.
        let (old, geo, present, stored_bytes) = {
            let st = disk.state.read();
            let sums = st.live.seal()?;
            layer::write_index(
                &self.inner.paths,
                st.live.id,
                st.live.geo,
                &st.live.present,
                sums,
            )?;
            (
                st.live.id,
                st.live.geo,
                st.live.present.clone(),
                st.live.stored_bytes()?,
            )
        };
        let new_id = self.inner.catalog.lock().allocate_layer();
        let fresh = match LiveLayer::create(&self.inner.paths, new_id, geo) {
            Ok(l) => l,
            Err(e) => {
                remove_layer_files(&self.inner.paths, new_id);
                return Err(e);
            }
        };
        let snap_ref = SnapshotRef {
            disk: disk_name.clone(),
            snap: name.clone(),
        };
        let committed = self.commit(|cat| {
            let seq = cat.next_seq;
            cat.next_seq += 1;
            let frozen = FrozenInfo {
                blocks: present.blocks(),
                stored_bytes,
            };
            if let Some(l) = cat.layers.get_mut(&old) {
                l.frozen = Some(frozen);
            }
            cat.layers.insert(
                new_id,
                LayerRecord {
                    parent: Some(old),
                    block_size: geo.block_size,
                    size: geo.size,
                    frozen: None,
                },
            );
            if let Some(d) = cat.disks.get_mut(disk_name) {
                d.live = new_id;
            }
            cat.snapshots.entry(disk_name.clone()).or_default().insert(
                name.clone(),
                SnapshotRecord {
                    layer: old,
                    taken,
                    seq,
                },
            );
            Ok(())
        });
        if let Err(e) = committed {
            drop(fresh);
            remove_layer_files(&self.inner.paths, new_id);
            let _ = fs::remove_file(self.inner.paths.index(old));
            return Err(e);
        }
        {
            let mut st = disk.state.write();
            for r in present.runs() {
                st.base.paint(r, old);
            }
            let frozen = std::mem::replace(&mut st.live, fresh);
            let _ = fs::remove_file(frozen.log_path());
        }
        self.snapshot_info(&snap_ref)
    }

    fn free_default_name(&self, disk: &DiskName, taken: u64) -> SnapName {
        let base = default_snapshot_name(taken);
        let cat = self.inner.catalog.lock();
        let taken_names = cat.snapshots.get(disk);
        let free = |n: &SnapName| taken_names.is_none_or(|m| !m.contains_key(n));
        if free(&base) {
            return base;
        }
        (2u32..)
            .filter_map(|i| SnapName::parse(&format!("{base}.{i}")).ok())
            .find(|n| free(n))
            .unwrap_or(base)
    }

    fn snapshot_record(&self, r: &SnapshotRef) -> Option<SnapshotRecord> {
        let cat = self.inner.catalog.lock();
        cat.snapshots.get(&r.disk)?.get(&r.snap).cloned()
    }

    pub fn snapshot_info(&self, r: &SnapshotRef) -> Result<SnapshotInfo> {
        let cat = self.inner.catalog.lock();
        let rec = cat
            .snapshots
            .get(&r.disk)
            .and_then(|m| m.get(&r.snap))
            .ok_or_else(|| StoreError::NoSuchSnapshot(r.clone()))?;
        Ok(snapshot_info(&cat, &r.disk, &r.snap, rec))
    }

    /// A disk's snapshots in the order they were taken.
    pub fn snapshots(&self, disk: &DiskName) -> Result<Vec<SnapshotInfo>> {
        let cat = self.inner.catalog.lock();
        if !cat.disks.contains_key(disk) && !cat.snapshots.contains_key(disk) {
            return Err(StoreError::NoSuchDisk(disk.clone()));
        }
        Ok(cat
            .snapshots_of(disk)
            .into_iter()
            .map(|(name, rec)| snapshot_info(&cat, disk, name, rec))
            .collect())
    }

    /// A snapshot's read-only image. Its owner map is built on first use and
    /// kept in a bounded cache.
    pub fn open_snapshot(&self, r: &SnapshotRef) -> Result<Snapshot> {
        let info = self.snapshot_info(r)?;
        let geo = Geometry {
            size: info.size,
            block_size: info.block_size,
        };
        let map = self.frozen_map(info.layer, geo)?;
        Ok(Snapshot::new(info, geo, map, self.inner.files.clone()))
    }

    /// Any image by reference: `DISK` (live) or `DISK@SNAP`.
    pub fn open_image(&self, r: &ImageRef) -> Result<Arc<dyn ImageRead>> {
        Ok(match r {
            ImageRef::Live(d) => self.disk(d)?,
            ImageRef::Snapshot(s) => Arc::new(self.open_snapshot(s)?),
        })
    }

    /// Flushes every open disk.
    pub fn flush_all(&self) -> Result<()> {
        let disks: Vec<_> = self.inner.disks.lock().values().cloned().collect();
        for d in disks {
            d.flush()?;
        }
        Ok(())
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
        layer: rec.layer,
    }
}

fn layer_paths(root: &Path) -> LayerPaths {
    LayerPaths {
        dir: root.join("layers"),
        tmp: root.join("tmp"),
    }
}

fn write_catalog(tmp: &Path, root: &Path, cat: &Catalog) -> Result<()> {
    let bytes = format::frame(MAGIC_CATALOG, &format::encode(cat));
    format::write_atomic(tmp, &root.join(CATALOG_FILE), &bytes)
}

/// Takes the repository's exclusive lock and records our PID in it.
fn take_lock(root: &Path) -> Result<File> {
    let path = root.join(LOCK_FILE);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    if !sys::try_lock_exclusive(&f).map_err(StoreError::io(&path))? {
        let pid = format::read_to_string_lossy(&path);
        return Err(StoreError::Locked {
            path: root.to_owned(),
            pid: if pid.is_empty() {
                "unknown".into()
            } else {
                pid
            },
        });
    }
    f.set_len(0)
        .and_then(|_| f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
        .and_then(|_| f.flush())
        .map_err(StoreError::io(&path))?;
    Ok(f)
}

/// Removes what a crash can leave behind: temp files and layer files that
/// the catalog does not name (or names in another state).
fn remove_strays(paths: &LayerPaths, cat: &Catalog) -> Result<()> {
    if let Ok(entries) = fs::read_dir(&paths.tmp) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    } else {
        fs::create_dir_all(&paths.tmp).map_err(StoreError::io(&paths.tmp))?;
    }
    let entries = fs::read_dir(&paths.dir).map_err(StoreError::io(&paths.dir))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = name.split_once('.').and_then(|(id, ext)| {
            let id = LayerId(u64::from_str_radix(id, 16).ok()?);
            let layer = cat.layers.get(&id)?;
            Some(match ext {
                "data" => true,
                "idx" => layer.frozen.is_some(),
                "log" => layer.frozen.is_none(),
                _ => false,
            })
        });
        if keep != Some(true) {
            log::info!("removing stray file {}", e.path().display());
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(())
}

fn remove_layer_files(paths: &LayerPaths, id: LayerId) {
    for p in [paths.data(id), paths.index(id), paths.log(id)] {
        let _ = fs::remove_file(p);
    }
}

/// Copies the data regions of `src` into a fresh live layer, whole blocks at
/// a time, leaving zero blocks out.
fn import_into(
    live: &mut LiveLayer,
    src: &File,
    src_path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let geo = live.geo;
    let bs = geo.block_size as u64;
    let chunk = ((4u64 << 20) / bs).max(1) * bs;
    let mut buf = vec![0u8; chunk as usize];
    let data = live.data.clone();
    let io_src = |e| StoreError::Io {
        path: src_path.to_owned(),
        source: e,
    };
    let mut pos = 0;
    while pos < geo.size {
        let Some(start) = sys::seek_data(src, pos).map_err(io_src)? else {
            break;
        };
        let end = sys::seek_hole(src, start).map_err(io_src)?.min(geo.size);
        // Whole blocks around the region: bytes outside it are zeros anyway.
        let mut at = start / bs * bs;
        let region_end = end.div_ceil(bs) * bs;
        while at < region_end.min(geo.size) {
            let n = (region_end.min(geo.size) - at).min(chunk) as usize;
            src.read_exact_at(&mut buf[..n], at).map_err(io_src)?;
            for (i, block) in buf[..n].chunks(bs as usize).enumerate() {
                if layer::is_zero(block) {
                    continue;
                }
                let off = at + i as u64 * bs;
                data.write_all_at(block, off)
                    .map_err(StoreError::io(src_path))?;
                live.mark_present(off / bs..off / bs + 1);
            }
            at += n as u64;
            progress(at, geo.size);
        }
        pos = region_end;
    }
    progress(geo.size, geo.size);
    Ok(())
}
