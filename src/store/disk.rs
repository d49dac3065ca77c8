//! A disk's live image: reads through the owner map, writes into the live
//! layer with copy-up, discard, flush, and the failure latch.
//!
//! # Locks
//!
//! `snapshots` serializes the snapshots of the disk, whole, so two of them
//! never race for one live layer. `journal` serializes flushes, data syncs
//! and freezes, so journal records are appended in the order their changes
//! happened, and an fsync error is seen by the one sync that latches on it
//! (the kernel reports a write-back error once per open file). `writer` serializes
//! everything that changes the live layer (writes, discards, taking the
//! changes a flush will journal, freezing). `state` is held for reading by
//! readers and by the writer while it works, and for writing only for the
//! instant the present map or the layer itself changes. Order: `snapshots`,
//! `journal`, `writer`, `state`, then any repository lock.
//!
//! A flush holds `writer` only to take the changes it will journal; the
//! fdatasync that makes their data durable runs without it, so writers do
//! not wait for the device.
//!
//! # The latch
//!
//! Once a write, discard, sync or journal append of the live layer fails,
//! the disk is latched: every later write, flush and snapshot of it fails
//! with `EIO` until the repository is opened again, which recovers the
//! layer as of its last successful flush. After a failed fsync the kernel
//! may already have dropped the data it could not write, so a later fsync
//! that succeeds proves nothing (the PostgreSQL fsync lesson); and bytes of
//! a write that failed half-way must not be frozen into a snapshot.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::error::{Result, StoreError};
use super::extents::{BlockKind, ExtentSet, OwnerMap};
use super::image::{self, ImageRead, Layout, Piece};
use super::journal::Journal;
use super::layer::{is_zero, FrozenIndex, Geometry, LayerFiles, LiveLayer};
use super::names::{BlockNo, DiskName, LayerId};

pub(crate) struct DiskState {
    pub live: LiveLayer,
    /// Owner map of the frozen chain under the live layer.
    pub base: OwnerMap,
}

/// A disk's live, writable image.
pub struct Disk {
    name: Mutex<DiskName>,
    id: LayerId,
    block_size: u32,
    /// The disk's size in bytes; grows with [`Disk::grow`].
    size: AtomicU64,
    files: Arc<LayerFiles>,
    snapshots: Mutex<()>,
    journal: Mutex<Journal>,
    writer: Mutex<()>,
    pub(crate) state: RwLock<DiskState>,
    /// Why the disk stopped accepting writes, once it has.
    latch: Mutex<Option<String>>,
    /// Open handles that may write (registered by the mount).
    writers: AtomicUsize,
    /// Held (shared) by each read for as long as it reads: a read finds its
    /// pieces, lets go of the state lock, then reads the files. Tidy waits
    /// for the reads in flight ([`Disk::wait_for_reads`]) before it punches
    /// a block below the live layer that a read may have been sent to.
    reads: RwLock<()>,
}

/// What [`FreezeLock::prepare`] found: the layer being frozen, its index
/// and the bytes it stores.
pub(crate) struct Prepared {
    pub layer: LayerId,
    pub index: FrozenIndex,
    pub stored_bytes: u64,
}

/// A disk held still for a freeze: its journal and writer locks.
pub(crate) struct FreezeLock<'a> {
    disk: &'a Disk,
    journal: MutexGuard<'a, Journal>,
    _writer: MutexGuard<'a, ()>,
}

/// Counts an open handle that may write to the disk, while it lives.
pub struct WriterGuard {
    disk: Arc<Disk>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.disk.writers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Disk {
    pub(crate) fn new(
        name: DiskName,
        id: LayerId,
        files: Arc<LayerFiles>,
        live: LiveLayer,
        journal: Journal,
        base: OwnerMap,
    ) -> Disk {
        Disk {
            name: Mutex::new(name),
            id,
            block_size: live.geo.block_size,
            size: AtomicU64::new(live.geo.size),
            files,
            snapshots: Mutex::new(()),
            journal: Mutex::new(journal),
            writer: Mutex::new(()),
            state: RwLock::new(DiskState { live, base }),
            latch: Mutex::new(None),
            writers: AtomicUsize::new(0),
            reads: RwLock::new(()),
        }
    }

    pub fn name(&self) -> DiskName {
        self.name.lock().clone()
    }

    pub(crate) fn set_name(&self, name: DiskName) {
        *self.name.lock() = name;
    }

    /// Stable for the disk's life, whatever its name.
    pub fn id(&self) -> LayerId {
        self.id
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    fn geo(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            block_size: self.block_size,
        }
    }

    /// Registers a handle that may write (a mount's open `live.img`): while
    /// one is registered, rollback and delete refuse unless forced.
    pub fn register_writer(self: &Arc<Self>) -> WriterGuard {
        self.writers.fetch_add(1, Ordering::Relaxed);
        WriterGuard { disk: self.clone() }
    }

    /// Handles registered with [`Disk::register_writer`] and still open.
    pub fn writers(&self) -> usize {
        self.writers.load(Ordering::Relaxed)
    }

    /// Refuses `what` (rollback, delete) while a handle may write, unless
    /// `force`.
    pub(crate) fn refuse_if_written(&self, what: &str, force: bool) -> Result<()> {
        let n = self.writers();
        if n == 0 || force {
            return Ok(());
        }
        Err(StoreError::Refused(format!(
            "disk '{}' is open for writing ({n} handle{} in the mount, a loop device or a VM, \
             say); close {} first (unmount what is mounted from it), or add --force to {what} it \
             anyway: the writer then sees its disk change under it, as if swapped while running",
            self.name(),
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" },
        )))
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        let size = self.geo().size;
        offset
            .checked_add(len)
            .filter(|&end| end <= size)
            .ok_or_else(|| StoreError::OutOfRange {
                disk: self.name(),
                offset,
                len,
                size,
            })
    }

    /// Held for the whole of a snapshot of this disk.
    pub(crate) fn lock_snapshots(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.snapshots.lock()
    }

    /// Fails if the disk is latched (see the module doc).
    pub fn check_latch(&self) -> Result<()> {
        match self.latch.lock().as_ref() {
            Some(cause) => Err(StoreError::Latched {
                disk: self.name(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Why the disk stopped taking writes, if it has.
    pub fn latch_cause(&self) -> Option<String> {
        self.latch.lock().clone()
    }

    /// Whether the disk is latched.
    pub fn is_latched(&self) -> bool {
        self.latch.lock().is_some()
    }

    /// Latches the disk because of a failure outside it: a freeze whose
    /// commit may or may not have reached the catalog, after which nobody
    /// can say which layer writes belong to.
    pub(crate) fn latch_for(&self, e: &StoreError) {
        let mut latch = self.latch.lock();
        if latch.is_none() {
            log::error!(
                "disk '{}': {e}; it accepts no more writes until the repository is opened again",
                self.name()
            );
            *latch = Some(e.to_string());
        }
    }

    /// Stops the disk for good: it was deleted. Handles still open on it get
    /// `EIO` for every write.
    pub(crate) fn retire(&self) {
        let mut latch = self.latch.lock();
        *latch = Some(format!("disk '{}' was deleted", self.name()));
    }

    /// Latches the disk on `e`, keeping the first cause, and returns `e`.
    fn latch(&self, e: StoreError) -> StoreError {
        let mut latch = self.latch.lock();
        if latch.is_none() {
            log::error!(
                "disk '{}': {e}; it accepts no more writes until the repository is opened again",
                self.name()
            );
            *latch = Some(e.to_string());
        }
        e
    }

    /// Writes `data` at `offset`. The whole write must lie inside the disk.
    /// Durable after the next [`Disk::flush`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let _w = self.writer.lock();
        self.check_latch()?;
        self.write_locked(offset, data).map_err(|e| self.latch(e))
    }

    /// Turns `len` bytes at `offset` into zeros. Whole blocks become zero
    /// blocks that occupy no space and are recorded without being read;
    /// partial blocks at the edges are written with zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let end = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _w = self.writer.lock();
        self.check_latch()?;
        self.discard_locked(offset, end).map_err(|e| self.latch(e))
    }

    fn discard_locked(&self, offset: u64, end: u64) -> Result<()> {
        let bs = self.block_size as u64;
        let first_full = offset.div_ceil(bs);
        let end_full = if end == self.geo().size {
            self.geo().blocks()
        } else {
            end / bs
        };
        if first_full >= end_full {
            return self.write_locked(offset, &vec![0u8; (end - offset) as usize]);
        }
        let head = self.geo().block_start(first_full);
        if offset < head {
            self.write_locked(offset, &vec![0u8; (head - offset) as usize])?;
        }
        let full = self.geo().byte_range(first_full..end_full);
        let data = self.state.read().live.data.clone();
        data.punch_hole(full.start, full.end - full.start)
            .map_err(|e| self.io_err(full.start, e))?;
        self.state
            .write()
            .live
            .mark(first_full..end_full, BlockKind::Zero);
        if full.end < end {
            self.write_locked(full.end, &vec![0u8; (end - full.end) as usize])?;
        }
        Ok(())
    }

    /// Before the disk grows past a partial last block: the live layer takes
    /// that block whole (a copy-up, as a write into it would do), so that
    /// the block's new tail is read from a file as large as the grown disk
    /// and reads as zeros. Older layers' files end with the old size. The
    /// caller flushes before committing the new size.
    pub(crate) fn own_partial_tail(&self) -> Result<()> {
        let geo = self.geo();
        let bs = self.block_size as u64;
        if geo.size % bs == 0 {
            return Ok(());
        }
        let _w = self.writer.lock();
        self.check_latch()?;
        let last = geo.size - 1;
        if self.state.read().live.present.get(last / bs).is_some() {
            return Ok(());
        }
        // Rewriting its last byte with itself copies the block up; the
        // writer lock keeps any other write out meanwhile.
        let mut byte = [0u8];
        image::read_at(self, last, &mut byte)?;
        self.write_locked(last, &byte).map_err(|e| self.latch(e))
    }

    /// Makes every write completed before the call durable (guarantee 3).
    pub fn flush(&self) -> Result<()> {
        self.flush_with(false).map(|_| ())
    }

    /// Flushes, and returns the blocks the live layer holds durably now:
    /// what a crash from here on cannot take from it. Tidy frees a block
    /// below the live layer only if it is in there.
    pub(crate) fn flush_present(&self) -> Result<ExtentSet> {
        Ok(self.flush_with(true)?.unwrap_or_default())
    }

    fn flush_with(&self, want_present: bool) -> Result<Option<ExtentSet>> {
        let mut journal = self.journal.lock();
        self.check_latch()?;
        let (changes, full, data, present) = {
            let _w = self.writer.lock();
            let mut st = self.state.write();
            let full = journal
                .wants_rewrite(&st.live.present)
                .then(|| st.live.present.clone());
            let present = want_present.then(|| {
                let mut set = ExtentSet::new();
                for (r, _) in st.live.present.runs() {
                    set.insert(r);
                }
                set
            });
            (st.live.take_unlogged(), full, st.live.data.clone(), present)
        };
        let path = self.state.read().live.data_path.clone();
        data.sync_data()
            .map_err(|e| self.latch(StoreError::io(&path)(e)))?;
        let journaled = match full {
            Some(present) => journal.rewrite(&present),
            None if changes.is_empty() => Ok(()),
            None => journal.append(&changes),
        };
        journaled.map_err(|e| self.latch(e))?;
        Ok(present)
    }

    /// Runs `f` with the journal held still: nothing is appended to it or
    /// rewritten meanwhile (how `verify` reads and mends it while the disk
    /// is written).
    pub(crate) fn with_journal_held<T>(&self, f: impl FnOnce() -> T) -> T {
        let _j = self.journal.lock();
        f()
    }

    /// Syncs the live layer's data without holding up writers: the bulk of
    /// what a snapshot must make durable, done before it takes the locks.
    pub(crate) fn sync_data(&self) -> Result<()> {
        let _j = self.journal.lock();
        self.check_latch()?;
        let (data, path) = {
            let st = self.state.read();
            (st.live.data.clone(), st.live.data_path.clone())
        };
        data.sync_data()
            .map_err(|e| self.latch(StoreError::io(&path)(e)))
    }

    /// Holds the disk still for a freeze: takes its journal and writer
    /// locks. Writers wait from here until the lock is dropped.
    pub(crate) fn lock_freeze(&self) -> FreezeLock<'_> {
        let journal = self.journal.lock();
        let writer = self.writer.lock();
        FreezeLock {
            disk: self,
            journal,
            _writer: writer,
        }
    }

    /// Appends the journal's "committed" record (see [`Journal::mark_committed`]).
    pub(crate) fn mark_committed(&self) -> Result<()> {
        let mut journal = self.journal.lock();
        journal.mark_committed().map_err(|e| self.latch(e))
    }

    /// Replaces the live layer with `fresh`, over `base` (a rollback), with
    /// the disk held still by `lock`.
    /// Returns once every read that started before the call is done. Reads
    /// that start after find the blocks where they are now (in the live
    /// layer, once flushed there; through a new base map, once set).
    pub(crate) fn wait_for_reads(&self) {
        drop(self.reads.write());
    }

    /// Gives the disk a new owner map of the frozen chain below its live
    /// layer: the same image, read from where its blocks are now.
    pub(crate) fn set_base(&self, base: OwnerMap) {
        self.state.write().base = base;
    }

    pub(crate) fn replace_live(
        &self,
        lock: FreezeLock<'_>,
        fresh: LiveLayer,
        fresh_journal: Journal,
        base: OwnerMap,
    ) {
        let FreezeLock { mut journal, .. } = lock;
        let mut st = self.state.write();
        self.size.store(fresh.geo.size, Ordering::Release);
        st.live = fresh;
        st.base = base;
        *journal = fresh_journal;
    }

    /// Grows the disk to `size` bytes, with the disk held still by `lock`:
    /// the live layer's file and journal follow (a journal that has not yet
    /// when a crash comes is set right on open).
    pub(crate) fn grow(&self, lock: &mut FreezeLock<'_>, size: u64) -> Result<()> {
        let mut st = self.state.write();
        let geo = Geometry {
            size,
            block_size: self.block_size,
        };
        st.live
            .data
            .set_len(size)
            .map_err(|e| self.latch(StoreError::io(&st.live.data_path)(e)))?;
        st.live.geo = geo;
        self.size.store(size, Ordering::Release);
        let present = st.live.present.clone();
        lock.journal.set_geometry(geo);
        lock.journal.rewrite(&present).map_err(|e| self.latch(e))
    }

    fn io_err(&self, offset: u64, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: format!("disk '{}' live layer at offset {offset}", self.name()).into(),
            source,
        }
    }

    /// The write itself; the caller holds `writer`, so the present map only
    /// changes here.
    fn write_locked(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let bs = self.block_size as u64;
        let blocks = offset / bs..end.div_ceil(bs);
        let file = self.state.read().live.data.clone();
        let mut marks: Vec<(Range<u64>, BlockKind)> = Vec::new();
        // Contiguous whole blocks of one kind go out in one call.
        let mut run: Option<(BlockKind, Range<u64>)> = None;
        let emit = |run: &mut Option<(BlockKind, Range<u64>)>,
                    marks: &mut Vec<(Range<u64>, BlockKind)>|
         -> Result<()> {
            let Some((kind, r)) = run.take() else {
                return Ok(());
            };
            match kind {
                BlockKind::Data => {
                    let src = &data[(r.start - offset) as usize..(r.end - offset) as usize];
                    file.write_all_at(src, r.start)
                }
                BlockKind::Zero => file.punch_hole(r.start, r.end - r.start),
            }
            .map_err(|e| self.io_err(r.start, e))?;
            marks.push((r.start / bs..r.end.div_ceil(bs), kind));
            Ok(())
        };
        for b in blocks {
            let br = self.geo().byte_range(b..b + 1);
            let (ws, we) = (br.start.max(offset), br.end.min(end));
            let part = &data[(ws - offset) as usize..(we - offset) as usize];
            if ws == br.start && we == br.end {
                let kind = if is_zero(part) {
                    BlockKind::Zero
                } else {
                    BlockKind::Data
                };
                match &mut run {
                    Some((k, r)) if *k == kind => r.end = br.end,
                    _ => {
                        emit(&mut run, &mut marks)?;
                        run = Some((kind, br));
                    }
                }
                continue;
            }
            emit(&mut run, &mut marks)?;
            let held = self.state.read().live.present.get(b);
            match held {
                Some(BlockKind::Data) => {
                    file.write_all_at(part, ws)
                        .map_err(|e| self.io_err(ws, e))?;
                }
                // The block is a hole that reads as zeros: only the new
                // bytes need writing.
                Some(BlockKind::Zero) if is_zero(part) => {}
                Some(BlockKind::Zero) => {
                    file.write_all_at(part, ws)
                        .map_err(|e| self.io_err(ws, e))?;
                    marks.push((b..b + 1, BlockKind::Data));
                }
                None => {
                    // Copy-up: the block enters the live layer whole.
                    let mut block = vec![0u8; (br.end - br.start) as usize];
                    self.read_base(BlockNo(b), &mut block)?;
                    block[(ws - br.start) as usize..(we - br.start) as usize].copy_from_slice(part);
                    let kind = if is_zero(&block) {
                        file.punch_hole(br.start, block.len() as u64)
                            .map_err(|e| self.io_err(br.start, e))?;
                        BlockKind::Zero
                    } else {
                        file.write_all_at(&block, br.start)
                            .map_err(|e| self.io_err(br.start, e))?;
                        BlockKind::Data
                    };
                    marks.push((b..b + 1, kind));
                }
            }
        }
        emit(&mut run, &mut marks)?;
        let mut st = self.state.write();
        for (r, kind) in marks {
            st.live.mark(r, kind);
        }
        Ok(())
    }

    /// Reads one block as the frozen chain under the live layer has it.
    fn read_base(&self, block: BlockNo, buf: &mut [u8]) -> Result<()> {
        let st = self.state.read();
        let base = BaseLayout {
            geo: self.geo(),
            map: &st.base,
            files: &self.files,
        };
        image::read_at(&base, self.geo().block_start(block.0), buf)?;
        Ok(())
    }

    /// The live layer's id.
    pub(crate) fn live_id(&self) -> LayerId {
        self.state.read().live.id
    }

    /// Every block the live layer holds now, as data or zeros. It only
    /// grows until the layer is frozen or dropped.
    pub(crate) fn live_present(&self) -> ExtentSet {
        let st = self.state.read();
        let mut set = ExtentSet::new();
        for (r, _) in st.live.present.runs() {
            set.insert(r);
        }
        set
    }

    /// The blocks the live layer holds as zeros now.
    pub(crate) fn live_zero(&self) -> ExtentSet {
        let st = self.state.read();
        ExtentSet::from_extents(st.live.present.extents_of(BlockKind::Zero))
    }

    /// Bytes the live layer occupies on disk.
    pub fn live_stored_bytes(&self) -> Result<u64> {
        self.state.read().live.stored_bytes()
    }
}

impl FreezeLock<'_> {
    /// Syncs what was written since the unlocked syncs and describes the
    /// live layer, which must be `expect`, as it will be frozen. Latches the
    /// disk if the sync fails.
    pub fn prepare(&self, expect: LayerId) -> Result<Prepared> {
        let disk = self.disk;
        disk.check_latch()?;
        let (id, data, path, index) = {
            let st = disk.state.read();
            (
                st.live.id,
                st.live.data.clone(),
                st.live.data_path.clone(),
                FrozenIndex::from_present(st.live.id, &st.live.present),
            )
        };
        if id != expect {
            return Err(StoreError::invalid(
                "snapshot",
                format!(
                    "disk '{}' changed its live layer under the snapshot",
                    disk.name()
                ),
            ));
        }
        data.sync_data()
            .map_err(|e| disk.latch(StoreError::io(&path)(e)))?;
        let stored_bytes = data.allocated_bytes().map_err(StoreError::io(&path))?;
        Ok(Prepared {
            layer: id,
            index,
            stored_bytes,
        })
    }

    /// Makes `fresh` the live layer over the frozen `prepared` (once the
    /// catalog says so).
    pub fn install(self, prepared: &Prepared, fresh: LiveLayer, fresh_journal: Journal) {
        let FreezeLock {
            disk, mut journal, ..
        } = self;
        let mut st = disk.state.write();
        prepared.index.cover(prepared.layer, &mut st.base);
        st.live = fresh;
        *journal = fresh_journal;
    }

    /// The commit's outcome is unknown: writes can go to neither layer
    /// until a reopen settles it.
    pub fn latch(&self, e: &StoreError) {
        self.disk.latch_for(e);
    }
}

/// Pieces from an owner map: a frozen chain. The pieces borrow only the
/// files (`'f`), not the map, so a caller may let go of the map's lock.
pub(crate) struct BaseLayout<'m, 'f> {
    pub geo: Geometry,
    pub map: &'m OwnerMap,
    pub files: &'f LayerFiles,
}

impl<'f> BaseLayout<'_, 'f> {
    pub(crate) fn pieces_of(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece<'f>)>> {
        let mut segs = Vec::new();
        self.map.segments_into(blocks, &mut segs);
        segs.into_iter()
            .map(|(r, owner)| {
                Ok((
                    r,
                    match owner {
                        Some(o) if !o.zero => {
                            Piece::Data(self.files.get(o.layer)?, Some((o.layer, self.files)))
                        }
                        _ => Piece::Zero,
                    },
                ))
            })
            .collect()
    }
}

impl Layout for BaseLayout<'_, '_> {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece<'_>)>> {
        self.pieces_of(blocks)
    }
}

impl Layout for Disk {
    fn geometry(&self) -> Geometry {
        self.geo()
    }

    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece<'_>)>> {
        let st = self.state.read();
        let base = BaseLayout {
            geo: self.geo(),
            map: &st.base,
            files: &self.files,
        };
        let mut out = Vec::new();
        for (r, held) in st.live.present.segments(blocks) {
            match held {
                Some(BlockKind::Data) => out.push((r, Piece::Data(st.live.data.clone(), None))),
                Some(BlockKind::Zero) => out.push((r, Piece::Zero)),
                None => out.extend(base.pieces_of(r)?),
            }
        }
        Ok(out)
    }
}

impl ImageRead for Disk {
    fn size(&self) -> u64 {
        self.geo().size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let _reading = self.reads.read();
        Ok(image::read_at(self, offset, buf)?.len)
    }
    fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        image::probe(self, offset, true)
    }
    fn seek_hole(&self, offset: u64) -> Result<u64> {
        Ok(image::probe(self, offset, false)?.unwrap_or(self.geo().size))
    }
}
