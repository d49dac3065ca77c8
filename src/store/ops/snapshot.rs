//! Taking snapshots: of one disk, or of several at one instant (one
//! commit), incremental or full; and making an incremental snapshot full.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::store::catalog::{CommitError, FrozenInfo, LayerRecord, SnapshotRecord};
use crate::store::disk::{Disk, FreezeLock, Prepared};
use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::format::{self, LayerFileKind};
use crate::store::image::ImageRead;
use crate::store::journal::Journal;
use crate::store::layer::{self, is_zero, FrozenIndex, Geometry, LiveLayer};
use crate::store::names::{DiskName, LayerId, SnapName, SnapshotRef};
use crate::store::{
    default_snapshot_name, now_ns, Event, Repository, SnapshotInfo, PRESYNC_SETTLED,
};

use super::tidy::geometry;

/// The unit a full copy leaves as a hole when it is all zeros.
const PAGE: usize = 4096;

/// Called around a snapshot's critical section: how `--freeze` freezes a
/// file system for exactly as long as the disks are held still.
pub trait Critical {
    /// Right before the disks are held still (after their data is synced).
    fn enter(&self) -> Result<()>;
    /// Right after the commit, whether it succeeded or not.
    fn leave(&self);
}

/// How to take a snapshot.
#[derive(Default)]
pub struct SnapshotOptions<'a> {
    /// Make it self-contained: it then needs no other layer.
    pub full: bool,
    pub critical: Option<&'a dyn Critical>,
    /// Hears how far making a full snapshot got (bytes of each disk).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// One disk's part of a snapshot.
struct Part {
    name: DiskName,
    disk: Arc<Disk>,
    old: LayerId,
    new: LayerId,
    geo: Geometry,
}

impl Repository {
    /// Freezes the disk's live layer as snapshot `name` (default: the UTC
    /// time) and starts an empty live layer. Holds every write that completed
    /// before the call; no data is copied.
    pub fn snapshot(&self, disk: &DiskName, name: Option<SnapName>) -> Result<SnapshotInfo> {
        let mut infos = self.snapshot_many(
            std::slice::from_ref(disk),
            name,
            &SnapshotOptions::default(),
        )?;
        infos
            .pop()
            .ok_or_else(|| StoreError::NoSuchDisk(disk.clone()))
    }

    /// Snapshots every disk of `disks` at one instant, under one name, in
    /// one commit: all of them or none. Writers wait only while the indexes
    /// are written and the catalog commits: the data is synced before, and
    /// the checksums are computed after.
    pub fn snapshot_many(
        &self,
        disks: &[DiskName],
        name: Option<SnapName>,
        opts: &SnapshotOptions,
    ) -> Result<Vec<SnapshotInfo>> {
        let names: BTreeSet<DiskName> = disks.iter().cloned().collect();
        let mut opened = Vec::new();
        for n in &names {
            opened.push((n.clone(), self.disk(n)?));
        }
        // One at a time per disk, in the order of their names.
        let held: Vec<Arc<Disk>> = opened.iter().map(|(_, d)| d.clone()).collect();
        let _held: Vec<_> = held.iter().map(|d| d.lock_snapshots()).collect();
        let taken = now_ns();
        let name = match name {
            Some(n) => {
                for d in &names {
                    let r = SnapshotRef {
                        disk: d.clone(),
                        snap: n.clone(),
                    };
                    if self.snapshot_record(&r).is_some() {
                        return Err(StoreError::SnapshotExists(r));
                    }
                }
                n
            }
            None => self.free_common_name(&names, taken),
        };
        // Make the data durable before writers are held off: sync again
        // while a sync still finds much to write (what was written during
        // the one before), so the sync under the lock has little left.
        for (_, d) in &opened {
            for _ in 0..4 {
                let t = std::time::Instant::now();
                d.sync_data()?;
                if t.elapsed() < PRESYNC_SETTLED {
                    break;
                }
            }
        }
        let what = format!(
            "snapshot {}@{name}",
            names
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let (ids, olds, made, intent) = self.intend(what, names.len(), |cat, ids| {
            let mut olds = Vec::new();
            let mut made = Vec::new();
            for (d, &new) in names.iter().zip(ids) {
                let old = cat
                    .disks
                    .get(d)
                    .ok_or_else(|| StoreError::NoSuchDisk(d.clone()))?
                    .live;
                olds.push(old);
                made.extend([
                    (new, LayerFileKind::Data),
                    (new, LayerFileKind::Log),
                    (old, LayerFileKind::Index),
                ]);
            }
            Ok((olds, made))
        })?;
        let parts: Vec<Part> = opened
            .into_iter()
            .zip(ids.iter().zip(&olds))
            .map(|((name, disk), (&new, &old))| {
                let geo = Geometry {
                    size: disk.size(),
                    block_size: disk.block_size(),
                };
                Part {
                    name,
                    disk,
                    old,
                    new,
                    geo,
                }
            })
            .collect();
        let files = &self.inner.files;
        let mut fresh = Vec::new();
        for p in &parts {
            let made_one = LiveLayer::create(files, p.new, p.geo)
                .and_then(|live| Ok((live, Journal::create(files.clone(), p.new, p.geo)?)));
            match made_one {
                Ok(f) => fresh.push(f),
                Err(e) => {
                    self.abandon(intent, &made);
                    return Err(e);
                }
            }
        }
        if let Err(e) = format::sync_dir(files.storage(), &files.paths().dir) {
            self.abandon(intent, &made);
            return Err(e);
        }
        if let Some(c) = opts.critical {
            if let Err(e) = c.enter() {
                self.abandon(intent, &made);
                return Err(e);
            }
        }
        let frozen = self.freeze_all(&parts, fresh, &name, taken, intent);
        if let Some(c) = opts.critical {
            c.leave();
        }
        let frozen = match frozen {
            Ok(f) => f,
            Err(CommitError::NotWritten(e)) => {
                self.abandon(intent, &made);
                return Err(e);
            }
            Err(CommitError::Unknown(e)) => return Err(e),
        };
        // Committed. What follows tells the new layers' journals so, tidies
        // up and adds checksums; a failure latches a disk (its journal) or
        // is logged, and the next open, gc or `verify` finishes the rest.
        for (p, index) in parts.iter().zip(frozen) {
            if let Err(e) = p.disk.mark_committed() {
                log::error!(
                    "snapshot {}@{name} is taken, but its new layer's journal failed: {e}",
                    p.name
                );
            }
            let _ = self.inner.storage.remove_file(&self.inner.paths.log(p.old));
            self.add_checksums(p.old, p.geo, index);
        }
        // A deleted snapshot's layer under the new one collapses into it.
        self.tidy_after();
        let mut infos = Vec::new();
        for p in &parts {
            let r = SnapshotRef {
                disk: p.name.clone(),
                snap: name.clone(),
            };
            if opts.full {
                let mut heard = |done, total| {
                    if let Some(p) = opts.progress {
                        p(done, total)
                    }
                };
                self.make_full(&r, &mut heard).map_err(|e| {
                    StoreError::Refused(format!(
                        "snapshot {r} was taken, but could not be made full: {e} \
                         (it stays incremental; try `strata snapshot full {r}`)"
                    ))
                })?;
            }
            let info = self.snapshot_info(&r)?;
            self.emit(Event::SnapshotTaken {
                disk: r.disk,
                layer: info.layer,
            });
            infos.push(info);
        }
        Ok(infos)
    }

    /// The critical section: every disk held still, synced, its index
    /// written, one commit, every new live layer in place. Returns each
    /// frozen layer's index.
    fn freeze_all(
        &self,
        parts: &[Part],
        fresh: Vec<(LiveLayer, Journal)>,
        name: &SnapName,
        taken: u64,
        intent: u64,
    ) -> Result<Vec<FrozenIndex>, CommitError> {
        let _s = self.inner.structure.lock();
        let locks: Vec<FreezeLock<'_>> = parts.iter().map(|p| p.disk.lock_freeze()).collect();
        let files = &self.inner.files;
        let mut prepared: Vec<Prepared> = Vec::new();
        for (p, lock) in parts.iter().zip(&locks) {
            let pr = lock.prepare(p.old).map_err(CommitError::NotWritten)?;
            layer::write_new_index(files, pr.layer, p.geo, &pr.index)
                .map_err(CommitError::NotWritten)?;
            prepared.push(pr);
        }
        format::sync_dir(files.storage(), &files.paths().dir).map_err(CommitError::NotWritten)?;
        let committed = self.commit(|cat| {
            for (p, pr) in parts.iter().zip(&prepared) {
                if cat.disks.get(&p.name).map(|d| d.live) != Some(p.old) {
                    return Err(StoreError::NoSuchDisk(p.name.clone()));
                }
                let r = SnapshotRef {
                    disk: p.name.clone(),
                    snap: name.clone(),
                };
                if cat
                    .snapshots
                    .get(&p.name)
                    .is_some_and(|m| m.contains_key(name))
                {
                    return Err(StoreError::SnapshotExists(r));
                }
                let seq = cat.next_seq;
                cat.next_seq += 1;
                if let Some(l) = cat.layers.get_mut(&p.old) {
                    l.frozen = Some(FrozenInfo {
                        blocks: pr.index.present().blocks(),
                        stored_bytes: pr.stored_bytes,
                    });
                }
                cat.layers.insert(
                    p.new,
                    LayerRecord {
                        parent: Some(p.old),
                        block_size: p.geo.block_size,
                        size: p.geo.size,
                        frozen: None,
                        files: vec![p.new],
                    },
                );
                if let Some(d) = cat.disks.get_mut(&p.name) {
                    d.live = p.new;
                }
                cat.snapshots.insert2(
                    p.name.clone(),
                    name.clone(),
                    SnapshotRecord {
                        layer: p.old,
                        taken,
                        seq,
                    },
                );
            }
            cat.intents.remove(&intent);
            Ok(())
        });
        if let Err(e) = committed {
            if let CommitError::Unknown(inner) = &e {
                for lock in &locks {
                    lock.latch(inner);
                }
            }
            return Err(e);
        }
        let mut out = Vec::new();
        for ((lock, pr), (live, journal)) in locks.into_iter().zip(prepared).zip(fresh) {
            lock.install(&pr, live, journal);
            out.push(pr.index);
        }
        Ok(out)
    }

    /// A default name free for every disk of `names`.
    fn free_common_name(&self, names: &BTreeSet<DiskName>, taken: u64) -> SnapName {
        let base = default_snapshot_name(taken);
        let state = self.inner.catalog.lock();
        let free = |n: &SnapName| {
            names.iter().all(|d| {
                state
                    .cat
                    .snapshots
                    .get(d)
                    .is_none_or(|m| !m.contains_key(n))
            })
        };
        if free(&base) {
            return base;
        }
        (2u32..)
            .filter_map(|i| SnapName::parse(&format!("{base}.{i}")).ok())
            .find(|n| free(n))
            .unwrap_or(base)
    }

    /// Computes the sums (checksums and identity hashes) of a frozen
    /// layer's data and adds them to its index; a failure is logged.
    pub(crate) fn add_checksums(&self, id: LayerId, geo: Geometry, index: FrozenIndex) {
        if let Err(e) = self.add_sums(id, geo, &index) {
            log::warn!(
                "checksums of layer {id}: {e}; its blocks are not checked until they are added"
            );
        }
    }

    /// Computes the sums of the pieces of `index` that have none and
    /// writes them into the layer's index (if it still has those pieces as
    /// they were). Returns the index as written.
    pub(crate) fn add_sums(
        &self,
        id: LayerId,
        geo: Geometry,
        index: &FrozenIndex,
    ) -> Result<FrozenIndex> {
        let files = &self.inner.files;
        let mut sums = Vec::new();
        for p in index.pieces.iter().filter(|p| p.sums.is_none()) {
            sums.push((p.file, p.data.clone(), layer::compute_sums(files, geo, p)?));
        }
        let _s = self.inner.structure.lock();
        if !self.inner.catalog.lock().cat.layers.contains_key(&id) {
            return Err(StoreError::Refused(format!(
                "layer {id} went away while its checksums were computed"
            )));
        }
        let mut now = layer::read_index(files, id, geo)?;
        for (file, data, s) in sums {
            if let Some(p) = now
                .pieces
                .iter_mut()
                .find(|p| p.file == file && p.data == data && p.sums.is_none())
            {
                p.sums = Some(s);
            }
        }
        layer::replace_index(files, id, geo, &now)?;
        Ok(now)
    }

    /// Makes snapshot `r` self-contained: copies into a new data file of
    /// its layer every block its image reads from older layers, so that it
    /// needs no other layer. Its bytes do not change; what it stores
    /// becomes its whole image's used size.
    ///
    /// No block is written into a file an index names. In order: the new
    /// file is made under an intent (a crash removes it); it joins the
    /// layer's files (a crash leaves it unnamed by the index: `gc` punches
    /// it); the index names it (the image reads the same, from it); the
    /// layer lets go of its parent. Each step is durable before the next.
    pub fn make_full(
        &self,
        r: &SnapshotRef,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SnapshotInfo> {
        let _s = self.inner.structure.lock();
        let info = self.snapshot_info(r)?;
        let id = info.layer;
        let cat = self.catalog();
        let Some(parent) = cat.layers.get(&id).and_then(|l| l.parent) else {
            return Ok(info);
        };
        let geo = geometry(&cat, id);
        let files = &self.inner.files;
        let mut idx = layer::read_index(files, id, geo)?;
        let below = self.frozen_map(parent)?;
        let held = idx.present();
        let (ids, (), made, intent) = self.intend(format!("make {r} full"), 1, |_, ids| {
            Ok(((), vec![(ids[0], LayerFileKind::Data)]))
        })?;
        let fid = ids[0];
        let copied = self.copy_below(&below, &held, fid, geo, progress);
        let (copied, zero) = match copied {
            Ok(c) => c,
            Err(e) => {
                self.abandon(intent, &made);
                return Err(e);
            }
        };
        self.commit(|c| {
            c.intents.remove(&intent);
            let l = c
                .layers
                .get_mut(&id)
                .ok_or_else(|| StoreError::NoSuchSnapshot(r.clone()))?;
            l.files.push(fid);
            Ok(())
        })
        .map_err(|e| {
            if let CommitError::NotWritten(_) = &e {
                self.abandon(intent, &made);
            }
            e.into_inner()
        })?;
        idx.pieces.push(layer::Piece {
            file: fid,
            data: copied,
            sums: None,
        });
        idx.zero.union_with(&zero);
        layer::replace_index(files, id, geo, &idx)?;
        let info_blocks = idx.present().blocks();
        let named = idx.files();
        let mut owned: Vec<LayerId> = self
            .catalog()
            .layers
            .get(&id)
            .map(|l| l.files.clone())
            .unwrap_or_default();
        owned.extend(
            named
                .iter()
                .filter(|f| !owned.contains(f))
                .copied()
                .collect::<Vec<_>>(),
        );
        let stored = self.allocated_files(&owned);
        self.commit(|c| {
            // Files its index names that another layer still owns (a merge
            // into it that a crash cut short) become its own: the layer it
            // no longer reads through may go, and must not take them along.
            for f in &named {
                if c.layers.get(&id).is_some_and(|l| !l.files.contains(f)) {
                    let holders: Vec<LayerId> = c
                        .layers
                        .iter()
                        .filter(|(_, l)| l.files.contains(f))
                        .map(|(h, _)| *h)
                        .collect();
                    for h in holders {
                        if let Some(l) = c.layers.get_mut(&h) {
                            l.files.retain(|x| x != f);
                        }
                    }
                    if let Some(l) = c.layers.get_mut(&id) {
                        l.files.push(*f);
                    }
                }
            }
            if let Some(l) = c.layers.get_mut(&id) {
                l.parent = None;
                l.frozen = Some(FrozenInfo {
                    blocks: info_blocks,
                    stored_bytes: stored,
                });
            }
            // Maps built before read the copies below, which tidy may now
            // free: none is served from here on.
            self.mark_relaid();
            Ok(())
        })
        .map_err(|e| e.into_inner())?;
        // Open disks get new maps; if that fails, the snapshot is full all
        // the same, and tidy frees nothing until it is done.
        if let Err(e) = self.relay() {
            log::warn!("{r} is full; new owner maps for open disks failed: {e}");
        }
        self.emit(Event::SnapshotChanged { layer: id });
        drop(_s);
        self.add_checksums(id, geo, idx);
        self.tidy_after();
        self.snapshot_info(r)
    }

    /// Copies into new data file `fid` every block `below` holds outside
    /// `held`; returns the data blocks copied and the zero blocks seen.
    fn copy_below(
        &self,
        below: &super::super::ImageMap,
        held: &ExtentSet,
        fid: LayerId,
        geo: Geometry,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(ExtentSet, ExtentSet)> {
        let files = &self.inner.files;
        let own_path = self.inner.paths.data(fid);
        let io = |e| StoreError::io(&own_path)(e);
        let own = self.inner.storage.create_new(&own_path).map_err(io)?;
        own.set_len(geo.size)
            .map_err(StoreError::io_len(&own_path, geo.size))?;
        let bs = geo.block_size as u64;
        let mut copied = ExtentSet::new();
        let mut zero = ExtentSet::new();
        let runs: Vec<_> = below.map.runs().collect();
        let total: u64 = runs.iter().map(|(r, _)| r.end - r.start).sum();
        let mut done = 0;
        let mut buf = vec![0u8; (((4u64 << 20) / bs).max(1) * bs) as usize];
        for (run, owner) in runs {
            for (part, inside) in held.segments(run.clone()) {
                if inside {
                    continue;
                }
                if owner.zero {
                    zero.insert(part);
                    continue;
                }
                let file = files.get(owner.layer)?;
                let path = self.inner.paths.data(owner.layer);
                let mut b = part.start;
                while b < part.end {
                    let n = (part.end - b).min(buf.len() as u64 / bs);
                    let bytes = geo.byte_range(b..b + n);
                    let len = (bytes.end - bytes.start) as usize;
                    file.read_exact_at(&mut buf[..len], bytes.start)
                        .map_err(StoreError::io(&path))?;
                    // Pages of zeros stay holes: the copy stores what the
                    // image uses, as a sparse copy of it would.
                    let mut page = 0;
                    while page < len {
                        let nonzero = |p: usize| !is_zero(&buf[p..(p + PAGE).min(len)]);
                        if !nonzero(page) {
                            page += PAGE;
                            continue;
                        }
                        let mut end = page;
                        while end < len && nonzero(end) {
                            end += PAGE;
                        }
                        let end = end.min(len);
                        own.write_all_at(&buf[page..end], bytes.start + page as u64)
                            .map_err(io)?;
                        page = end;
                    }
                    b += n;
                }
                copied.insert(part);
            }
            done += run.end - run.start;
            progress(done * bs, total * bs);
        }
        own.sync_all().map_err(io)?;
        format::sync_dir(files.storage(), &files.paths().dir)?;
        Ok((copied, zero))
    }
}
