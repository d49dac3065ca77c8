//! Layer files: a layer's sparse data file, a frozen layer's index, and the
//! live layer's in-memory state (format: [`super::format`]; the live
//! layer's journal is [`super::journal`]).
//!
//! A live layer's present map is known in memory; the journal holds the
//! part of it that was present at the last flush. Recovery replays the
//! journal and punches out every byte of the data file that lies outside
//! the journal's data blocks (writes after the last flush, and zero blocks),
//! so such blocks read as the layer below again and the file alone reads as
//! the layer.

use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::RwLock;

use super::error::{Result, StoreError};
use super::extents::{BlockKind, ExtentSet, PresentMap};
use super::format::{self, IndexPiece, LayerFileKind, LayerIndex, MAGIC_INDEX};
use super::identity::{self, Hash};
use super::names::LayerId;
use super::storage::{Storage, StorageFile};

/// Where a layer's files are.
#[derive(Debug, Clone)]
pub struct LayerPaths {
    pub dir: PathBuf,
    pub tmp: PathBuf,
}

impl LayerPaths {
    pub fn file(&self, id: LayerId, kind: LayerFileKind) -> PathBuf {
        self.dir.join(format!("{id}.{}", kind.extension()))
    }
    pub fn data(&self, id: LayerId) -> PathBuf {
        self.file(id, LayerFileKind::Data)
    }
    pub fn index(&self, id: LayerId) -> PathBuf {
        self.file(id, LayerFileKind::Index)
    }
    pub fn log(&self, id: LayerId) -> PathBuf {
        self.file(id, LayerFileKind::Log)
    }
}

/// The layer file a name in `layers/` stands for, if it is one.
pub fn parse_file_name(name: &str) -> Option<(LayerId, LayerFileKind)> {
    let (id, ext) = name.split_once('.')?;
    if id.len() != 16
        || !id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some((
        LayerId(u64::from_str_radix(id, 16).ok()?),
        LayerFileKind::from_extension(ext)?,
    ))
}

/// Geometry of a layer: how bytes map to blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub size: u64,
    pub block_size: u32,
}

impl Geometry {
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block_size as u64)
    }
    pub fn block_start(&self, block: u64) -> u64 {
        block * self.block_size as u64
    }
    /// Bytes of `block` that lie inside the disk (the last may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        (self.size - self.block_start(block)).min(self.block_size as u64)
    }
    /// The byte range `first..end` of blocks, clipped to the disk.
    pub fn byte_range(&self, blocks: Range<u64>) -> Range<u64> {
        self.block_start(blocks.start)..self.block_start(blocks.end).min(self.size)
    }
}

/// Where a frozen layer's bytes come from: the repository's own layer files
/// today ([`LocalLayers`]); an object store with a local cache could answer
/// instead, since frozen layers never change.
pub trait FrozenSource: Send + Sync {
    fn open_layer(&self, id: LayerId) -> std::io::Result<Arc<dyn StorageFile>>;
    /// A local file the kernel may read the layer from directly, if any.
    fn local_path(&self, id: LayerId) -> Option<PathBuf>;
}

/// Frozen layers read from the repository's `layers/` directory.
pub struct LocalLayers {
    storage: Arc<dyn Storage>,
    paths: LayerPaths,
}

impl FrozenSource for LocalLayers {
    fn open_layer(&self, id: LayerId) -> std::io::Result<Arc<dyn StorageFile>> {
        self.storage.open(&self.paths.data(id), false)
    }
    fn local_path(&self, id: LayerId) -> Option<PathBuf> {
        self.storage.local_path(&self.paths.data(id))
    }
}

/// A repository's layer files: the storage they live in, their paths, the
/// repository id their metadata carries, and the frozen layers' data files
/// opened so far, bounded by an LRU so a chain of 10,000 layers does not
/// need 10,000 descriptors.
pub struct LayerFiles {
    storage: Arc<dyn Storage>,
    paths: LayerPaths,
    repo_id: u64,
    source: Box<dyn FrozenSource>,
    /// Open data files. Reads look up under a shared lock and do not
    /// reorder the cache, so files are dropped in the order they were
    /// opened: a deep image's read takes a descriptor for nearly every
    /// block, and an exclusive lock with a reordering for each cost more
    /// than the few reopens that order causes past the capacity.
    open: RwLock<LruCache<LayerId, Arc<dyn StorageFile>>>,
    /// The CRC-32C of each frozen data block, by data file, from every
    /// index read so far: what reads check blocks against. A frozen
    /// file's blocks never change, so what was learnt stays true.
    crcs: RwLock<std::collections::HashMap<LayerId, FileCrcs>>,
    /// Reads check blocks (on unless a benchmark turns it off).
    checks: std::sync::atomic::AtomicBool,
}

/// The CRCs of one piece's blocks, for lookup by block.
#[derive(Debug)]
pub struct PieceCrcs {
    /// The first block of each run, sorted: searched alone, so that a
    /// lookup touches as few cache lines as it can.
    starts: Vec<u64>,
    /// Each run's end block and the index of its first block's CRC.
    runs: Vec<(u64, usize)>,
    crcs: Vec<u32>,
}

impl PieceCrcs {
    fn of(piece: &Piece) -> Option<PieceCrcs> {
        let sums = piece.sums.as_ref()?;
        let (mut starts, mut runs) = (Vec::new(), Vec::new());
        let mut at = 0;
        for r in piece.data.runs() {
            starts.push(r.start);
            runs.push((r.end, at));
            at += (r.end - r.start) as usize;
        }
        Some(PieceCrcs {
            starts,
            runs,
            crcs: sums.iter().map(|s| s.crc).collect(),
        })
    }

    fn get(&self, block: u64) -> Option<u32> {
        let i = self
            .starts
            .partition_point(|&s| s <= block)
            .checked_sub(1)?;
        let (end, first) = self.runs[i];
        (block < end)
            .then(|| {
                self.crcs
                    .get(first + (block - self.starts[i]) as usize)
                    .copied()
            })
            .flatten()
    }
}

/// What is known of one data file's CRCs: each piece an index named, the
/// newest last. Shared, so a reader looks it up once for all the blocks
/// it reads of the file.
#[derive(Debug, Clone, Default)]
pub struct FileCrcs(Arc<[Arc<PieceCrcs>]>);

impl FileCrcs {
    /// The CRC of `block`, if known.
    pub fn get(&self, block: u64) -> Option<u32> {
        self.0.iter().rev().find_map(|c| c.get(block))
    }
}

impl LayerFiles {
    pub fn new(
        storage: Arc<dyn Storage>,
        paths: LayerPaths,
        repo_id: u64,
        capacity: usize,
    ) -> Self {
        let cap = NonZeroUsize::new(capacity.max(16)).unwrap_or(NonZeroUsize::MIN);
        let source = Box::new(LocalLayers {
            storage: storage.clone(),
            paths: paths.clone(),
        });
        LayerFiles {
            storage,
            paths,
            repo_id,
            source,
            open: RwLock::new(LruCache::new(cap)),
            crcs: Default::default(),
            checks: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Turns read checks off or on: only for measuring what they cost.
    pub fn set_read_checks(&self, on: bool) {
        self.checks.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Learns the CRCs an index holds.
    pub fn note_crcs(&self, idx: &FrozenIndex) {
        for p in &idx.pieces {
            let Some(c) = PieceCrcs::of(p) else { continue };
            let mut all = self.crcs.write();
            let known = all.entry(p.file).or_default();
            // The same piece read again (or what a merge left of it) is
            // replaced; the list is copied, the pieces are shared.
            let mut pieces: Vec<Arc<PieceCrcs>> = known
                .0
                .iter()
                .filter(|k| k.starts.first() != c.starts.first())
                .cloned()
                .collect();
            pieces.push(Arc::new(c));
            *known = FileCrcs(pieces.into());
        }
    }

    /// The CRCs known of data file `file`, or `None` when reads are not
    /// checked (or nothing is known of it).
    pub fn crcs(&self, file: LayerId) -> Option<FileCrcs> {
        if !self.checks.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.crcs.read().get(&file).cloned()
    }

    /// The CRC of `block` of data file `file`, if known.
    pub fn crc(&self, file: LayerId, block: u64) -> Option<u32> {
        self.crcs(file)?.get(block)
    }

    pub fn paths(&self) -> &LayerPaths {
        &self.paths
    }

    pub fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub fn storage_arc(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    pub fn repo_id(&self) -> u64 {
        self.repo_id
    }

    /// A frozen layer's data, for reading.
    pub fn get(&self, id: LayerId) -> Result<Arc<dyn StorageFile>> {
        if let Some(f) = self.open.read().peek(&id) {
            return Ok(f.clone());
        }
        let f = self
            .source
            .open_layer(id)
            .map_err(StoreError::io(self.paths.data(id)))?;
        self.open.write().put(id, f.clone());
        Ok(f)
    }

    /// A data file opened for writing (to punch blocks nothing reads, or
    /// to mend a damaged one), and its path for messages.
    pub fn open_data_writable(&self, id: LayerId) -> Result<(Arc<dyn StorageFile>, PathBuf)> {
        let path = self.paths.data(id);
        let f = self
            .storage
            .open(&path, true)
            .map_err(StoreError::io(&path))?;
        Ok((f, path))
    }

    pub fn local_path(&self, id: LayerId) -> Option<PathBuf> {
        self.source.local_path(id)
    }

    pub fn forget(&self, id: LayerId) {
        self.open.write().pop(&id);
    }
}

/// What a layer keeps about each data block once it is frozen: a CRC-32C
/// to check it, and its node of the content-identity tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSum {
    pub crc: u32,
    pub hash: Hash,
}

impl BlockSum {
    /// The sums of one block's bytes (only those inside the disk).
    pub fn of(bytes: &[u8]) -> BlockSum {
        BlockSum {
            crc: crc32c::crc32c(bytes),
            hash: identity::tree(bytes),
        }
    }
}

/// Data blocks of a frozen layer that live in one data file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The data file (named by the layer that made it).
    pub file: LayerId,
    pub data: ExtentSet,
    /// One per block of `data`, in block order, once computed.
    pub sums: Option<Vec<BlockSum>>,
}

impl Piece {
    /// This piece without the blocks of `drop`, sums kept for the rest.
    fn without(&self, drop: &ExtentSet) -> Piece {
        let data = self.data.difference(drop);
        let sums = self.sums.as_ref().map(|sums| {
            let mut kept = Vec::with_capacity(data.blocks() as usize);
            let mut it = sums.iter();
            for r in self.data.runs() {
                for b in r {
                    let Some(sum) = it.next() else { break };
                    if data.contains(b) {
                        kept.push(*sum);
                    }
                }
            }
            kept
        });
        Piece {
            file: self.file,
            data,
            sums,
        }
    }

    /// Each data block with its sum, in block order (none until computed).
    pub fn block_sums(&self) -> impl Iterator<Item = (u64, &BlockSum)> + '_ {
        self.data.runs().flatten().zip(self.sums.iter().flatten())
    }
}

/// A frozen layer's index, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenIndex {
    pub pieces: Vec<Piece>,
    pub zero: ExtentSet,
}

impl FrozenIndex {
    /// The index of live layer `id` frozen as it is: one piece, its own file.
    pub fn from_present(id: LayerId, present: &PresentMap) -> FrozenIndex {
        FrozenIndex {
            pieces: vec![Piece {
                file: id,
                data: ExtentSet::from_extents(present.extents_of(BlockKind::Data)),
                sums: None,
            }],
            zero: ExtentSet::from_extents(present.extents_of(BlockKind::Zero)),
        }
    }

    /// Every block the layer holds, as data or as zeros.
    pub fn present(&self) -> ExtentSet {
        let mut all = self.zero.clone();
        for p in &self.pieces {
            all.union_with(&p.data);
        }
        all
    }

    /// Data blocks held, in all pieces.
    pub fn data_blocks(&self) -> u64 {
        self.pieces.iter().map(|p| p.data.blocks()).sum()
    }

    /// The data files its pieces name.
    pub fn files(&self) -> Vec<LayerId> {
        let mut f: Vec<LayerId> = self.pieces.iter().map(|p| p.file).collect();
        f.sort();
        f.dedup();
        f
    }

    /// Makes layer `id` own, in `map`, the blocks it holds.
    pub fn cover(&self, id: LayerId, map: &mut super::extents::OwnerMap) {
        let pieces: Vec<(LayerId, &ExtentSet)> =
            self.pieces.iter().map(|p| (p.file, &p.data)).collect();
        map.cover(id, &pieces, &self.zero);
    }

    /// Whether the layer's data all lives in its own file `id`.
    pub fn own_file_only(&self, id: LayerId) -> bool {
        self.pieces
            .iter()
            .all(|p| p.file == id || p.data.is_empty())
    }

    /// The index without the blocks of `drop`, and the data blocks dropped,
    /// by file (what is to be punched).
    pub fn without(&self, drop: &ExtentSet) -> (FrozenIndex, Vec<(LayerId, ExtentSet)>) {
        let mut garbage = Vec::new();
        let mut pieces = Vec::new();
        for p in &self.pieces {
            let gone = p.data.intersection(drop);
            if !gone.is_empty() {
                garbage.push((p.file, gone));
            }
            let kept = p.without(drop);
            if !kept.data.is_empty() {
                pieces.push(kept);
            }
        }
        let idx = FrozenIndex {
            pieces,
            zero: self.zero.difference(drop),
        };
        (idx, garbage)
    }

    /// Takes over `rest`: what [`FrozenIndex::without`] left of a layer
    /// below, given every block this layer holds. How a deleted snapshot's
    /// layer is merged into the layer above it: pieces move; no data does.
    pub fn take(&mut self, rest: FrozenIndex) {
        self.zero.union_with(&rest.zero);
        self.pieces.extend(rest.pieces);
    }

    fn to_payload(&self, files: &LayerFiles, id: LayerId, geo: Geometry) -> LayerIndex {
        LayerIndex {
            repo: files.repo_id(),
            layer: id.0,
            block_size: geo.block_size,
            size: geo.size,
            pieces: self
                .pieces
                .iter()
                .map(|p| IndexPiece {
                    file: p.file.0,
                    data: p.data.to_extents(),
                    checksums: p.sums.as_ref().map(|s| s.iter().map(|x| x.crc).collect()),
                    hashes: p.sums.as_ref().map(|s| s.iter().map(|x| x.hash).collect()),
                })
                .collect(),
            zero: self.zero.to_extents(),
        }
    }
}

/// Checks that `extents` are sorted, apart, non-empty and inside the disk.
fn check_extents(path: &Path, what: &str, extents: &[(u64, u64)], blocks: u64) -> Result<u64> {
    let mut prev_end: Option<u64> = None;
    let mut total = 0u64;
    for &(first, count) in extents {
        let end = first
            .checked_add(count)
            .filter(|&e| count > 0 && e <= blocks);
        let Some(end) = end else {
            return Err(StoreError::corrupt(
                path,
                format!("a {what} extent lies outside the disk"),
            ));
        };
        if prev_end.is_some_and(|p| first <= p) {
            return Err(StoreError::corrupt(
                path,
                format!("{what} extents are not sorted and apart"),
            ));
        }
        prev_end = Some(end);
        total += count;
    }
    Ok(total)
}

/// Reads and checks a frozen layer's index, mending a damaged copy.
pub fn read_index(files: &LayerFiles, id: LayerId, geo: Geometry) -> Result<FrozenIndex> {
    let path = files.paths().index(id);
    let doc = format::read_doc(files.storage(), &path, MAGIC_INDEX)?;
    let idx: LayerIndex = if doc.version == 2 {
        format::decode::<format::v2::LayerIndex>(&path, &doc.payload)?.into()
    } else {
        format::decode(&path, &doc.payload)?
    };
    format::apply_repairs(files.storage(), &path, &doc.repairs)?;
    if idx.repo != files.repo_id() {
        return Err(StoreError::corrupt(
            &path,
            "it belongs to another repository",
        ));
    }
    if idx.layer != id.0 || idx.block_size != geo.block_size || idx.size != geo.size {
        return Err(StoreError::corrupt(&path, "it belongs to another layer"));
    }
    let blocks = geo.blocks();
    check_extents(&path, "zero", &idx.zero, blocks)?;
    let mut seen = ExtentSet::from_extents(idx.zero.iter().copied());
    let mut pieces = Vec::with_capacity(idx.pieces.len());
    for p in idx.pieces {
        let n = check_extents(&path, "data", &p.data, blocks)?;
        let data = ExtentSet::from_extents(p.data);
        if !seen.intersection(&data).is_empty() {
            return Err(StoreError::corrupt(&path, "a block is held twice"));
        }
        let sums = match (p.checksums, p.hashes) {
            (Some(c), Some(h)) if c.len() as u64 == n && h.len() as u64 == n => Some(
                c.into_iter()
                    .zip(h)
                    .map(|(crc, hash)| BlockSum { crc, hash })
                    .collect(),
            ),
            // Version 2: checksums without hashes; both are computed again.
            (_, None) => None,
            _ => {
                return Err(StoreError::corrupt(
                    &path,
                    "checksum count does not match its data blocks",
                ))
            }
        };
        seen.union_with(&data);
        pieces.push(Piece {
            file: LayerId(p.file),
            data,
            sums,
        });
    }
    let idx = FrozenIndex {
        zero: ExtentSet::from_extents(idx.zero),
        pieces,
    };
    files.note_crcs(&idx);
    Ok(idx)
}

/// The bytes of a layer's index file.
fn index_bytes(files: &LayerFiles, id: LayerId, geo: Geometry, idx: &FrozenIndex) -> Vec<u8> {
    format::doc_bytes(
        MAGIC_INDEX,
        &format::encode(&idx.to_payload(files, id, geo)),
    )
}

/// Writes the index of a layer being frozen as a new file and syncs it
/// (the caller syncs the directory before committing).
pub fn write_new_index(
    files: &LayerFiles,
    id: LayerId,
    geo: Geometry,
    idx: &FrozenIndex,
) -> Result<()> {
    let path = files.paths().index(id);
    let bytes = index_bytes(files, id, geo, idx);
    files
        .storage()
        .create_new(&path)
        .and_then(|f| {
            f.write_all_at(&bytes, 0)?;
            f.sync_all()
        })
        .map_err(StoreError::io(&path))
}

/// Replaces a frozen layer's index atomically (to add its checksums).
pub fn replace_index(
    files: &LayerFiles,
    id: LayerId,
    geo: Geometry,
    idx: &FrozenIndex,
) -> Result<()> {
    let path = files.paths().index(id);
    let bytes = index_bytes(files, id, geo, idx);
    format::write_atomic(files.storage(), &files.paths().tmp, &path, &bytes)
}

/// The sums of every data block of a piece, in block order.
pub fn compute_sums(files: &LayerFiles, geo: Geometry, piece: &Piece) -> Result<Vec<BlockSum>> {
    let file = files.get(piece.file)?;
    let path = files.paths().data(piece.file);
    sums_of(file.as_ref(), &path, geo, &piece.data)
}

/// The sums of the blocks `data` of `file` (at their own offsets).
pub fn sums_of(
    file: &dyn StorageFile,
    path: &Path,
    geo: Geometry,
    data: &ExtentSet,
) -> Result<Vec<BlockSum>> {
    let bs = geo.block_size as u64;
    let chunk_blocks = ((1u64 << 20) / bs).max(1);
    let mut buf = vec![0u8; (chunk_blocks * bs) as usize];
    let mut sums = Vec::with_capacity(data.blocks() as usize);
    for run in data.runs() {
        let mut b = run.start;
        while b < run.end {
            let n = chunk_blocks.min(run.end - b);
            let bytes = geo.byte_range(b..b + n);
            let len = (bytes.end - bytes.start) as usize;
            file.read_exact_at(&mut buf[..len], bytes.start)
                .map_err(StoreError::io(path))?;
            sums.extend(buf[..len].chunks(bs as usize).map(BlockSum::of));
            b += n;
        }
    }
    Ok(sums)
}

/// Whether every byte is zero. ORs 4 KiB at a time (which the compiler
/// vectorizes) and stops at the first chunk with data.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A writable layer: its data file and what it holds.
pub struct LiveLayer {
    pub id: LayerId,
    pub geo: Geometry,
    pub data: Arc<dyn StorageFile>,
    pub data_path: PathBuf,
    /// Every present block, journaled or not.
    pub present: PresentMap,
    /// Changes to `present` the journal does not hold yet.
    unlogged: PresentMap,
}

impl LiveLayer {
    /// Creates the data file of a new, empty live layer and syncs it (the
    /// caller creates its journal and syncs the directory).
    pub fn create(files: &LayerFiles, id: LayerId, geo: Geometry) -> Result<LiveLayer> {
        let data_path = files.paths().data(id);
        let data = files
            .storage()
            .create_new(&data_path)
            .map_err(StoreError::io(&data_path))?;
        data.set_len(geo.size)
            .map_err(StoreError::io_len(&data_path, geo.size))?;
        data.sync_all().map_err(StoreError::io(&data_path))?;
        Ok(LiveLayer {
            id,
            geo,
            data,
            data_path,
            present: PresentMap::new(),
            unlogged: PresentMap::new(),
        })
    }

    /// Opens a live layer whose journal recorded `present`, after a clean
    /// stop or a crash: punches out every byte outside its data blocks.
    pub fn open(
        files: &LayerFiles,
        id: LayerId,
        geo: Geometry,
        present: PresentMap,
    ) -> Result<LiveLayer> {
        let data_path = files.paths().data(id);
        let data = files
            .storage()
            .open(&data_path, true)
            .map_err(StoreError::io(&data_path))?;
        let len = data.len().map_err(StoreError::io(&data_path))?;
        if len > geo.size {
            return Err(StoreError::corrupt(
                &data_path,
                format!("it is {len} bytes long, the disk is {}", geo.size),
            ));
        }
        if len < geo.size {
            // The disk grew, and a crash came before its file did.
            data.set_len(geo.size)
                .and_then(|_| data.sync_data())
                .map_err(StoreError::io(&data_path))?;
        }
        let layer = LiveLayer {
            id,
            geo,
            data,
            data_path,
            present,
            unlogged: PresentMap::new(),
        };
        layer.punch_strays()?;
        Ok(layer)
    }

    /// Punches data regions that lie in no data block: writes after the last
    /// flush to blocks the journal never recorded, and zero blocks.
    fn punch_strays(&self) -> Result<()> {
        let io = StoreError::io(&self.data_path);
        let bs = self.geo.block_size as u64;
        let mut pos = 0;
        let mut punched = false;
        while pos < self.geo.size {
            let Some(start) = self
                .data
                .seek_data(pos)
                .map_err(StoreError::io(&self.data_path))?
            else {
                break;
            };
            if start >= self.geo.size {
                break;
            }
            let end = self
                .data
                .seek_hole(start)
                .map_err(StoreError::io(&self.data_path))?
                .min(self.geo.size);
            for (r, kind) in self.present.segments(start / bs..end.div_ceil(bs)) {
                if kind != Some(BlockKind::Data) {
                    let bytes = self.geo.byte_range(r);
                    let from = bytes.start.max(start);
                    let to = bytes.end.min(end);
                    if from < to {
                        self.data
                            .punch_hole(from, to - from)
                            .map_err(StoreError::io(&self.data_path))?;
                        punched = true;
                    }
                }
            }
            pos = end.max(start + 1);
        }
        if punched {
            self.data.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Records blocks as present, as `kind` (their data must already be in
    /// the file, or punched for zeros).
    pub fn mark(&mut self, blocks: Range<u64>, kind: BlockKind) {
        self.present.paint(blocks.clone(), kind);
        self.unlogged.paint(blocks, kind);
    }

    /// The changes the journal does not hold yet, handed to a flush.
    pub fn take_unlogged(&mut self) -> PresentMap {
        std::mem::take(&mut self.unlogged)
    }

    pub fn stored_bytes(&self) -> Result<u64> {
        self.data
            .allocated_bytes()
            .map_err(StoreError::io(&self.data_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block's CRC is found in the newest piece that holds it, at its
    /// place among the piece's blocks; blocks no piece holds have none.
    #[test]
    fn crcs_are_found_by_block_newest_piece_first() {
        let piece = |runs: &[(u64, u64)], tag: u32| {
            let data = ExtentSet::from_extents(runs.iter().copied());
            let sums = (0..data.blocks() as u32)
                .map(|i| BlockSum {
                    crc: tag + i,
                    hash: identity::tree(&[]),
                })
                .collect();
            Arc::new(
                PieceCrcs::of(&Piece {
                    file: LayerId(1),
                    data,
                    sums: Some(sums),
                })
                .unwrap(),
            )
        };
        // Blocks 3-5, 10 and 20-21; then a newer piece over 4-10.
        let old = piece(&[(3, 3), (10, 1), (20, 2)], 100);
        let new = piece(&[(4, 7)], 200);
        let file = FileCrcs(vec![old, new].into());
        let want = |b: u64| match b {
            3 => Some(100),
            4..=10 => Some(200 + (b - 4) as u32),
            20 | 21 => Some(104 + (b - 20) as u32),
            _ => None,
        };
        for b in 0..30 {
            assert_eq!(file.get(b), want(b), "block {b}");
        }
        assert_eq!(FileCrcs::default().get(3), None);
    }

    #[test]
    fn layer_file_names() {
        assert_eq!(
            parse_file_name("000000000000002a.idx"),
            Some((LayerId(42), LayerFileKind::Index))
        );
        assert_eq!(parse_file_name("000000000000002A.idx"), None);
        assert_eq!(parse_file_name("2a.idx"), None);
        assert_eq!(parse_file_name("000000000000002a.tmp"), None);
        assert_eq!(parse_file_name("notes.txt"), None);
    }
}
