//! The catalog: every disk, snapshot, layer and open intent of a repository,
//! and the repository's single commit point (format: [`super::format`]).
//!
//! In memory it is one [`Catalog`]. On disk it is a log: a checkpoint of the
//! whole catalog, then one record per commit holding only what the commit
//! changed ([`Change`]), so a commit costs what it changes, not the size of
//! the catalog. [`CatalogFile`] owns that file.
//!
//! A decoded catalog is not trusted until [`Catalog::validate`] has checked
//! that every reference points at a layer of the right kind and size, so the
//! rest of the store can index it without further checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::format::{self, AppendError, CatalogHeader, LayerFileKind, MAGIC_CATALOG};
use super::names::{DiskName, LayerId, SnapName, SnapshotRef};
use super::storage::{Storage, StorageFile};
use super::tracked::{Tracked, Tracked2};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Bumped by every commit.
    pub generation: u64,
    /// The next layer id to hand out; larger than every id in `layers`.
    pub next_layer: u64,
    /// The next snapshot sequence number; orders snapshots as taken.
    pub next_seq: u64,
    /// The next intent number.
    pub next_intent: u64,
    pub disks: Tracked<DiskName, DiskRecord>,
    /// Snapshots by disk name. A disk's snapshots outlive the disk.
    pub snapshots: Tracked2<DiskName, SnapName, SnapshotRecord>,
    pub layers: Tracked<LayerId, LayerRecord>,
    /// Operations under way: the files each may have made, or is removing.
    pub intents: Tracked<u64, Intent>,
    /// What each snapshot (by layer) stored, day by day: an entry for each
    /// day a snapshot was taken, changed size, was renamed or went away.
    /// Days without an entry carry the day before forward.
    pub usage: Tracked<(LayerId, u32), UsageEntry>,
}

/// A snapshot's name: its disk's and its own.
pub type NameOf = (DiskName, SnapName);

/// Which snapshot names each layer (the store keeps it beside the catalog).
pub type LayerNames = std::collections::HashMap<LayerId, NameOf>;

/// A catalog's counters, as they were before a commit began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub generation: u64,
    pub next_layer: u64,
    pub next_seq: u64,
    pub next_intent: u64,
}

/// One snapshot's stored size on one day (days since 1970-01-01, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub disk: DiskName,
    pub snap: SnapName,
    /// What it stored at the end of the day (or now, for today).
    pub bytes: u64,
    /// It still existed at the end of the day (or now, for today).
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    /// Stable for the disk's life, whatever its name or live layer: the id
    /// of its first live layer.
    pub id: LayerId,
    pub size: u64,
    pub block_size: u32,
    /// The writable top layer; its parent chain is the disk's history.
    pub live: LayerId,
    /// Unix nanoseconds.
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The frozen layer this snapshot ends with.
    pub layer: LayerId,
    /// Unix nanoseconds when the snapshot was taken.
    pub taken: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer below this one; `None` for the bottom of a chain.
    pub parent: Option<LayerId>,
    pub block_size: u32,
    pub size: u64,
    /// Set once the layer is frozen; `None` while it is a live layer.
    pub frozen: Option<FrozenInfo>,
    /// The data files it owns (each file has one owner): its own, and those
    /// of deleted snapshots' layers merged into it.
    pub files: Vec<LayerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenInfo {
    /// Present blocks (data and zero).
    pub blocks: u64,
    /// Bytes the layer's data file occupies on disk.
    pub stored_bytes: u64,
}

/// A durable note, committed before an operation creates files, of the
/// files it may create. Recovery removes those of them the catalog does not
/// name: they belong to an operation that never committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// What the operation was, for people reading logs.
    pub what: String,
    pub kind: IntentKind,
    pub files: Vec<(LayerId, LayerFileKind)>,
}

/// Whether an intent's files are being made or being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentKind {
    /// Files an operation may create; if it never committed, they go.
    Create,
    /// Files the catalog no longer names, to be removed.
    Remove,
}

/// One change a commit makes, as written in a catalog record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Counters {
        generation: u64,
        next_layer: u64,
        next_seq: u64,
        next_intent: u64,
    },
    PutDisk(DiskName, DiskRecord),
    DelDisk(DiskName),
    PutSnapshot(DiskName, SnapName, SnapshotRecord),
    DelSnapshot(DiskName, SnapName),
    PutLayer(LayerId, LayerRecord),
    DelLayer(LayerId),
    PutIntent(u64, Intent),
    DelIntent(u64),
    PutUsage((LayerId, u32), UsageEntry),
    DelUsage((LayerId, u32)),
}

/// A record of the catalog file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogRecord {
    Checkpoint(Box<Catalog>),
    Changes(Vec<Change>),
}

/// Smallest and largest block size, and the sector every size is a multiple of.
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
pub const SECTOR: u64 = 512;

/// Checks a block size: a power of two from 4 KiB to 1 MiB.
pub fn check_block_size(bs: u64) -> Result<u32> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&bs) {
        return Err(StoreError::invalid(
            "block size",
            format!("{bs} bytes; it must be a power of two from 4K to 1M (default 64K)"),
        ));
    }
    Ok(bs as u32)
}

/// Checks a disk size: more than zero, a multiple of 512 bytes, and small
/// enough that every byte offset fits in an `i64` (what `lseek` can address).
pub fn check_disk_size(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(StoreError::invalid("size", "a disk cannot be 0 bytes"));
    }
    if size % SECTOR != 0 {
        return Err(StoreError::invalid(
            "size",
            format!("{size} bytes is not a multiple of 512 bytes"),
        ));
    }
    if size > i64::MAX as u64 / 2 {
        return Err(StoreError::invalid(
            "size",
            format!("{size} bytes is larger than strata supports (4 EiB)"),
        ));
    }
    Ok(size)
}

/// The puts and deletes that turn map `a` into map `b`: one walk of both
/// in key order, cloning only what changed.
#[cfg(test)]
fn diff_map<K: Ord + Clone, V: PartialEq + Clone>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    put: impl Fn(K, V) -> Change,
    del: impl Fn(K) -> Change,
    out: &mut Vec<Change>,
) {
    use std::cmp::Ordering;
    let (mut ia, mut ib) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let order = match (ia.peek(), ib.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Ordering::Less => {
                let (k, _) = ia.next().expect("peeked");
                out.push(del(k.clone()));
            }
            Ordering::Greater => {
                let (k, v) = ib.next().expect("peeked");
                out.push(put(k.clone(), v.clone()));
            }
            Ordering::Equal => {
                let ((_, va), (k, vb)) = (ia.next().expect("peeked"), ib.next().expect("peeked"));
                if va != vb {
                    out.push(put(k.clone(), vb.clone()));
                }
            }
        }
    }
}

impl Catalog {
    /// What a commit from `self` to `next` writes, found by comparing the
    /// two whole catalogs: the oracle [`Catalog::changes`] is tested by.
    #[cfg(test)]
    pub fn changes_to(&self, next: &Catalog) -> Vec<Change> {
        let mut out = vec![Change::Counters {
            generation: next.generation,
            next_layer: next.next_layer,
            next_seq: next.next_seq,
            next_intent: next.next_intent,
        }];
        diff_map(
            &self.disks,
            &next.disks,
            Change::PutDisk,
            Change::DelDisk,
            &mut out,
        );
        let empty = BTreeMap::new();
        for (disk, snaps) in &next.snapshots {
            let old = self.snapshots.get(disk).unwrap_or(&empty);
            diff_map(
                old,
                snaps,
                |s, r| Change::PutSnapshot(disk.clone(), s, r),
                |s| Change::DelSnapshot(disk.clone(), s),
                &mut out,
            );
        }
        for (disk, snaps) in &self.snapshots {
            if !next.snapshots.contains_key(disk) {
                for s in snaps.keys() {
                    out.push(Change::DelSnapshot(disk.clone(), s.clone()));
                }
            }
        }
        diff_map(
            &self.layers,
            &next.layers,
            Change::PutLayer,
            Change::DelLayer,
            &mut out,
        );
        diff_map(
            &self.intents,
            &next.intents,
            Change::PutIntent,
            Change::DelIntent,
            &mut out,
        );
        diff_map(
            &self.usage,
            &next.usage,
            Change::PutUsage,
            Change::DelUsage,
            &mut out,
        );
        out
    }

    /// Applies a commit's changes (replaying the catalog file); the result
    /// is settled.
    pub fn apply(&mut self, changes: Vec<Change>) {
        for c in changes {
            match c {
                Change::Counters {
                    generation,
                    next_layer,
                    next_seq,
                    next_intent,
                } => {
                    self.generation = generation;
                    self.next_layer = next_layer;
                    self.next_seq = next_seq;
                    self.next_intent = next_intent;
                }
                Change::PutDisk(n, r) => {
                    self.disks.insert(n, r);
                }
                Change::DelDisk(n) => {
                    self.disks.remove(&n);
                }
                Change::PutSnapshot(d, s, r) => {
                    self.snapshots.insert2(d, s, r);
                }
                Change::DelSnapshot(d, s) => {
                    self.snapshots.remove2(&d, &s);
                }
                Change::PutLayer(id, r) => {
                    self.layers.insert(id, r);
                }
                Change::DelLayer(id) => {
                    self.layers.remove(&id);
                }
                Change::PutIntent(n, i) => {
                    self.intents.insert(n, i);
                }
                Change::DelIntent(n) => {
                    self.intents.remove(&n);
                }
                Change::PutUsage(k, e) => {
                    self.usage.insert(k, e);
                }
                Change::DelUsage(k) => {
                    self.usage.remove(&k);
                }
            }
        }
        self.settle();
    }

    /// The counters as they are, to put back with [`Catalog::rollback`].
    pub fn counters(&self) -> Counters {
        Counters {
            generation: self.generation,
            next_layer: self.next_layer,
            next_seq: self.next_seq,
            next_intent: self.next_intent,
        }
    }

    /// What the commit under way writes: the counters, and every entry
    /// changed since the catalog was last settled. Its cost is the
    /// change's, whatever the catalog's size.
    pub fn changes(&self) -> Vec<Change> {
        let mut out = vec![Change::Counters {
            generation: self.generation,
            next_layer: self.next_layer,
            next_seq: self.next_seq,
            next_intent: self.next_intent,
        }];
        for (k, _, now) in self.disks.touched() {
            out.push(match now {
                Some(r) => Change::PutDisk(k.clone(), r.clone()),
                None => Change::DelDisk(k.clone()),
            });
        }
        for ((d, s), _, now) in self.snapshots.touched() {
            out.push(match now {
                Some(r) => Change::PutSnapshot(d.clone(), s.clone(), r.clone()),
                None => Change::DelSnapshot(d.clone(), s.clone()),
            });
        }
        for (k, _, now) in self.layers.touched() {
            out.push(match now {
                Some(r) => Change::PutLayer(*k, r.clone()),
                None => Change::DelLayer(*k),
            });
        }
        for (k, _, now) in self.intents.touched() {
            out.push(match now {
                Some(r) => Change::PutIntent(*k, r.clone()),
                None => Change::DelIntent(*k),
            });
        }
        for (k, _, now) in self.usage.touched() {
            out.push(match now {
                Some(r) => Change::PutUsage(*k, r.clone()),
                None => Change::DelUsage(*k),
            });
        }
        out
    }

    /// Undoes the commit under way: every entry and counter as it was.
    pub fn rollback(&mut self, counters: Counters) {
        self.generation = counters.generation;
        self.next_layer = counters.next_layer;
        self.next_seq = counters.next_seq;
        self.next_intent = counters.next_intent;
        self.disks.rollback();
        self.snapshots.rollback();
        self.layers.rollback();
        self.intents.rollback();
        self.usage.rollback();
    }

    /// Accepts the commit under way (it is durable).
    pub fn settle(&mut self) {
        self.disks.settle();
        self.snapshots.settle();
        self.layers.settle();
        self.intents.settle();
        self.usage.settle();
    }

    /// Whether no change is under way.
    pub fn is_settled(&self) -> bool {
        self.disks.is_settled()
            && self.snapshots.is_settled()
            && self.layers.is_settled()
            && self.intents.is_settled()
            && self.usage.is_settled()
    }

    /// How the commit under way changes which snapshot names each layer,
    /// given the index `by_layer` from before it: each layer whose name
    /// changes, and its name after (`None`: no snapshot names it).
    pub fn renamed_layers(&self, by_layer: &LayerNames) -> BTreeMap<LayerId, Option<NameOf>> {
        let mut out = BTreeMap::new();
        for ((d, s), before, _) in self.snapshots.touched() {
            if let Some(b) = before {
                if by_layer
                    .get(&b.layer)
                    .is_some_and(|(bd, bs)| bd == d && bs == s)
                {
                    out.entry(b.layer).or_insert(None);
                }
            }
        }
        for ((d, s), _, now) in self.snapshots.touched() {
            if let Some(n) = now {
                out.insert(n.layer, Some((d.clone(), s.clone())));
            }
        }
        out
    }

    /// Checks every cross-reference; on success the catalog is trusted.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(StoreError::corrupt(path, what));
        for (id, layer) in &self.layers {
            if id.0 >= self.next_layer {
                return bad(format!(
                    "layer {id} is not below next_layer {}",
                    self.next_layer
                ));
            }
            if check_block_size(layer.block_size as u64).is_err()
                || check_disk_size(layer.size).is_err()
            {
                return bad(format!("layer {id} has an invalid size or block size"));
            }
            if let Some(p) = layer.parent {
                // Parents are always older, so chains cannot loop.
                let Some(parent) = self.layers.get(&p).filter(|_| p < *id) else {
                    return bad(format!("layer {id} has a missing or newer parent {p}"));
                };
                // A disk that grew keeps its smaller snapshots below it.
                if parent.frozen.is_none()
                    || parent.block_size != layer.block_size
                    || parent.size > layer.size
                {
                    return bad(format!("layer {id} does not fit its parent {p}"));
                }
            }
            if layer.frozen.is_none() && !layer.files.contains(id) {
                return bad(format!("live layer {id} does not own its data file"));
            }
        }
        let mut owner = BTreeMap::new();
        for (id, layer) in &self.layers {
            for f in &layer.files {
                if f.0 >= self.next_layer || owner.insert(*f, *id).is_some() {
                    return bad(format!("data file {f} has no single owner"));
                }
            }
        }
        let mut live_owner = BTreeMap::new();
        for (name, disk) in &self.disks {
            let Some(live) = self.layers.get(&disk.live) else {
                return bad(format!("disk {name} has no live layer {}", disk.live));
            };
            if live.frozen.is_some() || live.size != disk.size || live.block_size != disk.block_size
            {
                return bad(format!(
                    "disk {name}'s live layer {} does not fit it",
                    disk.live
                ));
            }
            if live_owner.insert(disk.live, name).is_some() {
                return bad(format!("layer {} is live in two disks", disk.live));
            }
        }
        for (id, layer) in &self.layers {
            if layer.frozen.is_none() && !live_owner.contains_key(id) {
                return bad(format!("live layer {id} belongs to no disk"));
            }
        }
        for (disk, snaps) in &self.snapshots {
            for (snap, rec) in snaps {
                let frozen = self.layers.get(&rec.layer).and_then(|l| l.frozen);
                if frozen.is_none() || rec.seq >= self.next_seq {
                    return bad(format!("snapshot {disk}@{snap} points at no frozen layer"));
                }
            }
        }
        for (n, intent) in &self.intents {
            if *n >= self.next_intent {
                return bad(format!("intent {n} is not below next_intent"));
            }
            if intent.files.iter().any(|(id, _)| id.0 >= self.next_layer) {
                return bad(format!("intent {n} names a layer not yet handed out"));
            }
        }
        Ok(())
    }

    /// The chain under and including `top`, newest first.
    pub fn chain(&self, top: LayerId) -> Vec<LayerId> {
        let mut out = vec![top];
        let mut cur = top;
        while let Some(p) = self.layers.get(&cur).and_then(|l| l.parent) {
            out.push(p);
            cur = p;
        }
        out
    }

    pub fn allocate_layer(&mut self) -> LayerId {
        let id = LayerId(self.next_layer);
        self.next_layer += 1;
        id
    }

    /// Records an intent and returns its number.
    pub fn add_intent(&mut self, intent: Intent) -> u64 {
        let n = self.next_intent;
        self.next_intent += 1;
        self.intents.insert(n, intent);
        n
    }

    /// The files the catalog says exist: each layer's index or journal, and
    /// the data files the layers own.
    pub fn expected_files(&self) -> Vec<(LayerId, LayerFileKind)> {
        let mut out = Vec::new();
        for (id, l) in &self.layers {
            out.extend(l.files.iter().map(|f| (*f, LayerFileKind::Data)));
            out.push((
                *id,
                if l.frozen.is_some() {
                    LayerFileKind::Index
                } else {
                    LayerFileKind::Log
                },
            ));
        }
        out
    }

    /// Each layer's children (the layers whose parent it is).
    pub fn children(&self) -> BTreeMap<LayerId, Vec<LayerId>> {
        let mut out: BTreeMap<LayerId, Vec<LayerId>> = BTreeMap::new();
        for (id, l) in &self.layers {
            if let Some(p) = l.parent {
                out.entry(p).or_default().push(*id);
            }
        }
        out
    }

    /// Every layer some snapshot names, or some disk has as its live layer.
    pub fn named_layers(&self) -> std::collections::BTreeSet<LayerId> {
        let mut out: std::collections::BTreeSet<LayerId> =
            self.disks.values().map(|d| d.live).collect();
        for m in self.snapshots.values() {
            out.extend(m.values().map(|r| r.layer));
        }
        out
    }

    /// Records today's usage entries for every snapshot whose stored size
    /// or name the commit under way changes, or that it deletes: only the
    /// layers it touches are looked at. `by_layer` is the index from before
    /// the commit, `renamed` what [`Catalog::renamed_layers`] says of it.
    pub fn note_usage(
        &mut self,
        day: u32,
        by_layer: &LayerNames,
        renamed: &BTreeMap<LayerId, Option<NameOf>>,
    ) {
        let mut layers: std::collections::BTreeSet<LayerId> = renamed.keys().copied().collect();
        layers.extend(self.layers.touched().map(|(id, _, _)| *id));
        let mut record: Vec<((LayerId, u32), UsageEntry)> = Vec::new();
        for layer in layers {
            let now = match renamed.get(&layer) {
                Some(n) => n.as_ref(),
                None => by_layer.get(&layer),
            };
            if let Some((disk, snap)) = now {
                record.extend(self.usage_if_changed(layer, day, disk, snap));
            } else if let Some((disk, snap)) = by_layer.get(&layer) {
                // Gone: what it stored before the commit.
                let before = self
                    .layers
                    .before(&layer)
                    .unwrap_or_else(|| self.layers.get(&layer));
                let bytes = before.and_then(|l| l.frozen).map_or(0, |f| f.stored_bytes);
                let entry = UsageEntry {
                    disk: disk.clone(),
                    snap: snap.clone(),
                    bytes,
                    alive: false,
                };
                record.push(((layer, day), entry));
            }
        }
        self.usage.extend(record);
    }

    /// The usage entries every snapshot should have and has not: none, for
    /// a catalog whose every commit noted its usage. Opening a repository
    /// records what this finds (one whose catalog predates usage).
    pub fn missing_usage(&self, day: u32) -> Vec<((LayerId, u32), UsageEntry)> {
        let mut out = Vec::new();
        for (disk, m) in self.snapshots.iter() {
            for (snap, r) in m {
                out.extend(self.usage_if_changed(r.layer, day, disk, snap));
            }
        }
        out
    }

    /// Today's entry for the snapshot `disk@snap` of `layer`, unless its
    /// last entry already says what it stores now under that name.
    fn usage_if_changed(
        &self,
        layer: LayerId,
        day: u32,
        disk: &DiskName,
        snap: &SnapName,
    ) -> Option<((LayerId, u32), UsageEntry)> {
        let bytes = self.stored(layer);
        let key = (layer, day);
        let last = self.usage.range((layer, 0)..=key).next_back();
        let current = last.is_some_and(|(_, e)| {
            e.alive && e.bytes == bytes && e.disk == *disk && e.snap == *snap
        });
        let entry = UsageEntry {
            disk: disk.clone(),
            snap: snap.clone(),
            bytes,
            alive: true,
        };
        (!current).then_some((key, entry))
    }

    /// Bytes the frozen layer `layer` stores (0 for any other).
    fn stored(&self, layer: LayerId) -> u64 {
        self.layers
            .get(&layer)
            .and_then(|l| l.frozen)
            .map_or(0, |f| f.stored_bytes)
    }

    /// The error for a snapshot `r` that is not there: no such snapshot of
    /// a disk that has snapshots or exists, else no such disk.
    pub fn no_such_snapshot(&self, r: &SnapshotRef) -> StoreError {
        if self.disks.contains_key(&r.disk) || self.snapshots.contains_key(&r.disk) {
            StoreError::NoSuchSnapshot(r.clone())
        } else {
            StoreError::NoSuchDisk(r.disk.clone())
        }
    }

    /// The disk's snapshots in the order they were taken.
    pub fn snapshots_of(&self, disk: &DiskName) -> Vec<(&SnapName, &SnapshotRecord)> {
        let mut v: Vec<_> = self
            .snapshots
            .get(disk)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        v.sort_by_key(|(_, r)| r.seq);
        v
    }
}

/// How a commit failed: whether the catalog on disk is known to be as it
/// was (the caller may undo what it prepared) or may hold the new state.
#[derive(Debug)]
pub enum CommitError {
    /// Nothing was written; the catalog is as before.
    NotWritten(StoreError),
    /// The new state may or may not be durable.
    Unknown(StoreError),
}

impl CommitError {
    pub fn into_inner(self) -> StoreError {
        match self {
            CommitError::NotWritten(e) | CommitError::Unknown(e) => e,
        }
    }
}

/// The catalog file: appends one record per commit, and rewrites itself as
/// a single checkpoint when the records outweigh it.
pub struct CatalogFile {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    tmp: PathBuf,
    repo_id: u64,
    file: Arc<dyn StorageFile>,
    /// Where the next record goes.
    end: u64,
    next_seq: u64,
    /// Bytes of the checkpoint record, and of all records after it.
    checkpoint_bytes: u64,
    changes_bytes: u64,
    /// Repairs and a torn tail found on open, not yet put right.
    pending: Option<(Vec<format::Repair>, u64)>,
}

/// A catalog file is rewritten once its change records take more than this
/// many times the checkpoint's size (and at least [`MIN_COMPACT_BYTES`]).
const COMPACT_RATIO: u64 = 2;
const MIN_COMPACT_BYTES: u64 = 1 << 20;

impl CatalogFile {
    /// Writes a new catalog file holding `cat` as its checkpoint, replacing
    /// any that exists atomically.
    pub fn write_new(
        storage: &Arc<dyn Storage>,
        tmp: &Path,
        path: &Path,
        repo_id: u64,
        cat: &Catalog,
    ) -> Result<()> {
        let bytes = Self::image(repo_id, cat);
        format::write_atomic(storage.as_ref(), tmp, path, &bytes)
    }

    fn image(repo_id: u64, cat: &Catalog) -> Vec<u8> {
        let header = format::encode(&CatalogHeader { repo: repo_id });
        let checkpoint = format::encode(&CatalogRecord::Checkpoint(Box::new(cat.clone())));
        format::log_bytes(MAGIC_CATALOG, &header, &[checkpoint])
    }

    /// Reads the catalog and replays its records, past damaged copies and a
    /// torn (never acknowledged) last record, without changing the file
    /// (see [`CatalogFile::settle`]). Returns the catalog, still to be
    /// validated, and the repository id its header names.
    pub fn open(
        storage: Arc<dyn Storage>,
        tmp: &Path,
        path: &Path,
    ) -> Result<(CatalogFile, Catalog, u64)> {
        let bytes = storage.read(path).map_err(StoreError::io(path))?;
        let log = format::parse_log(path, MAGIC_CATALOG, &bytes)?;
        if log.header.version == 1 {
            return Err(StoreError::corrupt(
                path,
                "it is in format version 1 while strata.repo says version 2",
            ));
        }
        let header: CatalogHeader = format::decode(path, &log.header.payload)?;
        let mut records = log.records.iter();
        let Some(first) = records.next() else {
            return Err(StoreError::corrupt(path, "it holds no checkpoint record"));
        };
        let CatalogRecord::Checkpoint(cat) = format::decode(path, first)? else {
            return Err(StoreError::corrupt(
                path,
                "its first record is not a checkpoint",
            ));
        };
        let mut cat = *cat;
        let checkpoint_bytes = format::record_bytes(1, first).len() as u64;
        let mut changes_bytes = 0;
        for (i, r) in records.enumerate() {
            match format::decode(path, r)? {
                CatalogRecord::Changes(c) => cat.apply(c),
                CatalogRecord::Checkpoint(_) => {
                    return Err(StoreError::corrupt(
                        path,
                        format!("record {} is a second checkpoint", i + 2),
                    ))
                }
            }
            changes_bytes += format::record_bytes(1, r).len() as u64;
        }
        let file = storage.open(path, true).map_err(StoreError::io(path))?;
        let cf = CatalogFile {
            storage,
            path: path.to_owned(),
            tmp: tmp.to_owned(),
            repo_id: header.repo,
            file,
            end: log.end,
            next_seq: log.records.len() as u64 + 1,
            checkpoint_bytes,
            changes_bytes,
            pending: Some((log.repairs, log.torn)),
        };
        Ok((cf, cat, header.repo))
    }

    /// Puts right what [`CatalogFile::open`] found: mends damaged copies and
    /// cuts off a torn, never acknowledged last record. Kept apart from
    /// reading, so that an open that is refused changes nothing. Says
    /// whether it mended a damaged copy.
    pub fn settle(&mut self) -> Result<bool> {
        let Some((repairs, torn)) = self.pending.take() else {
            return Ok(false);
        };
        format::apply_repairs(self.storage.as_ref(), &self.path, &repairs)?;
        if torn > 0 {
            log::warn!(
                "{}: cutting off a torn, never acknowledged commit ({torn} bytes at offset {})",
                self.path.display(),
                self.end
            );
            self.file
                .set_len(self.end)
                .and_then(|_| self.file.sync_data())
                .map_err(StoreError::io(&self.path))?;
        }
        Ok(!repairs.is_empty())
    }

    /// Makes `changes` durable: one appended record.
    pub fn commit(&mut self, changes: Vec<Change>) -> Result<(), CommitError> {
        let payload = format::encode(&CatalogRecord::Changes(changes));
        let bytes = format::record_bytes(self.next_seq, &payload);
        let io = |e| StoreError::io(&self.path)(e);
        format::append_synced(self.file.as_ref(), self.end, &bytes).map_err(|e| match e {
            AppendError::TakenBack(e) => CommitError::NotWritten(io(e)),
            AppendError::Unknown(e) => CommitError::Unknown(io(e)),
        })?;
        self.end += bytes.len() as u64;
        self.next_seq += 1;
        self.changes_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes what `cat` changed since it was last settled durable, in one
    /// record; if that fails, puts `cat` back as it was (`counters` are its
    /// counters from before the changes). The caller settles `cat` after.
    pub fn commit_touched(
        &mut self,
        cat: &mut Catalog,
        counters: Counters,
    ) -> Result<(), CommitError> {
        self.commit(cat.changes())
            .inspect_err(|_| cat.rollback(counters))
    }

    /// Whether the change records outweigh the checkpoint enough to rewrite.
    pub fn wants_compaction(&self) -> bool {
        self.changes_bytes > MIN_COMPACT_BYTES.max(COMPACT_RATIO * self.checkpoint_bytes)
    }

    /// Rewrites the file as one checkpoint of `cat` (which must be the state
    /// the file holds). A failure before the new file is in place changes
    /// nothing; a failure after is [`CommitError::Unknown`].
    pub fn compact(&mut self, cat: &Catalog) -> Result<(), CommitError> {
        let bytes = Self::image(self.repo_id, cat);
        match format::write_atomic(self.storage.as_ref(), &self.tmp, &self.path, &bytes) {
            Ok(()) => {}
            Err(e @ StoreError::Uncertain { .. }) => return Err(CommitError::Unknown(e)),
            Err(e) => return Err(CommitError::NotWritten(e)),
        }
        let file = self
            .storage
            .open(&self.path, true)
            .map_err(|e| CommitError::Unknown(StoreError::io(&self.path)(e)))?;
        self.file = file;
        self.end = bytes.len() as u64;
        self.next_seq = 2;
        self.checkpoint_bytes =
            bytes.len() as u64 - format::doc_bytes(MAGIC_CATALOG, b"").len() as u64;
        self.changes_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DiskName {
        DiskName::parse(s).unwrap()
    }

    #[test]
    fn changes_replay_to_the_same_catalog() {
        let mut a = Catalog {
            next_layer: 5,
            next_seq: 3,
            ..Catalog::default()
        };
        a.disks.insert(
            name("d"),
            DiskRecord {
                id: LayerId(2),
                size: 1 << 20,
                block_size: 4096,
                live: LayerId(2),
                created: 1,
            },
        );
        a.snapshots.insert2(
            name("d"),
            SnapName::parse("s").unwrap(),
            SnapshotRecord {
                layer: LayerId(1),
                taken: 2,
                seq: 1,
            },
        );
        a.snapshots.insert2(
            name("d"),
            SnapName::parse("u").unwrap(),
            SnapshotRecord {
                layer: LayerId(0),
                taken: 1,
                seq: 0,
            },
        );
        a.settle();
        let mut b = a.clone();
        let counters = b.counters();
        b.generation += 1;
        b.disks.remove(&name("d"));
        b.snapshots
            .remove2(&name("d"), &SnapName::parse("s").unwrap());
        b.snapshots.move_outer(&name("d"), &name("f"));
        b.snapshots.insert2(
            name("e"),
            SnapName::parse("t").unwrap(),
            SnapshotRecord {
                layer: LayerId(3),
                taken: 4,
                seq: 2,
            },
        );
        b.add_intent(Intent {
            what: "x".into(),
            kind: IntentKind::Create,
            files: vec![(LayerId(4), LayerFileKind::Data)],
        });
        // What the commit writes, tracked as it was made, replays to the
        // same catalog as the difference of the two whole catalogs.
        let mut replay = a.clone();
        replay.apply(b.changes());
        assert_eq!(replay, b);
        let mut oracle = a.clone();
        oracle.apply(a.changes_to(&b));
        assert_eq!(oracle, b);
        assert_eq!(b.changes().len(), a.changes_to(&b).len());
        let mut back = b.clone();
        back.settle();
        back.apply(b.changes_to(&a));
        assert_eq!(back, a);
        // And a commit that fails is undone, counters and all.
        b.rollback(counters);
        assert_eq!(b, a);
        assert!(b.is_settled());
    }
}
