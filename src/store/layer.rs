//! Layer files: a layer's sparse data file, a frozen layer's index, and a
//! live layer's journal of present blocks (format: [`super::format`]).
//!
//! A live layer's present set is known in memory; the journal holds the part
//! of it that was present at the last flush. Recovery reads the journal,
//! cuts off a torn tail and punches out any data written after the last
//! flush to blocks the journal does not name, so such blocks fall through to
//! the layer below again.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

use super::error::{Result, StoreError};
use super::extents::ExtentSet;
use super::format::{self, LayerIndex, LogHeader, HEADER_LEN, MAGIC_INDEX, MAGIC_LOG};
use super::names::LayerId;
use crate::sys;

/// Where a layer's files are.
#[derive(Debug, Clone)]
pub struct LayerPaths {
    pub dir: PathBuf,
    pub tmp: PathBuf,
}

impl LayerPaths {
    pub fn data(&self, id: LayerId) -> PathBuf {
        self.dir.join(format!("{id}.data"))
    }
    pub fn index(&self, id: LayerId) -> PathBuf {
        self.dir.join(format!("{id}.idx"))
    }
    pub fn log(&self, id: LayerId) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }
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
    pub fn byte_range(&self, blocks: std::ops::Range<u64>) -> std::ops::Range<u64> {
        self.block_start(blocks.start)..self.block_start(blocks.end).min(self.size)
    }
}

/// Read-only descriptors of layer data files, bounded by an LRU so a chain
/// of 10,000 layers does not need 10,000 descriptors.
pub struct LayerFiles {
    paths: LayerPaths,
    open: Mutex<LruCache<LayerId, Arc<File>>>,
}

impl LayerFiles {
    pub fn new(paths: LayerPaths, capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity.max(16)).unwrap_or(NonZeroUsize::MIN);
        LayerFiles {
            paths,
            open: Mutex::new(LruCache::new(cap)),
        }
    }

    pub fn paths(&self) -> &LayerPaths {
        &self.paths
    }

    pub fn get(&self, id: LayerId) -> Result<Arc<File>> {
        if let Some(f) = self.open.lock().get(&id) {
            return Ok(f.clone());
        }
        let path = self.paths.data(id);
        let f = Arc::new(File::open(&path).map_err(StoreError::io(&path))?);
        self.open.lock().put(id, f.clone());
        Ok(f)
    }

    pub fn forget(&self, id: LayerId) {
        self.open.lock().pop(&id);
    }
}

/// Reads and checks a frozen layer's index.
pub fn read_index(paths: &LayerPaths, id: LayerId, geo: Geometry) -> Result<(ExtentSet, Vec<u32>)> {
    let path = paths.index(id);
    let idx: LayerIndex = format::read_frame(&path, MAGIC_INDEX)?;
    if idx.layer != id.0 || idx.block_size != geo.block_size || idx.size != geo.size {
        return Err(StoreError::corrupt(&path, "it belongs to another layer"));
    }
    let mut prev_end: Option<u64> = None;
    let mut total = 0u64;
    for &(first, count) in &idx.extents {
        let end = first
            .checked_add(count)
            .filter(|&e| count > 0 && e <= geo.blocks());
        let Some(end) = end else {
            return Err(StoreError::corrupt(
                &path,
                "an extent lies outside the disk",
            ));
        };
        if prev_end.is_some_and(|p| first <= p) {
            return Err(StoreError::corrupt(
                &path,
                "extents are not sorted and apart",
            ));
        }
        prev_end = Some(end);
        total += count;
    }
    if total != idx.checksums.len() as u64 {
        return Err(StoreError::corrupt(
            &path,
            "checksum count does not match its blocks",
        ));
    }
    Ok((ExtentSet::from_extents(idx.extents), idx.checksums))
}

pub fn write_index(
    paths: &LayerPaths,
    id: LayerId,
    geo: Geometry,
    present: &ExtentSet,
    checksums: Vec<u32>,
) -> Result<()> {
    let idx = LayerIndex {
        layer: id.0,
        block_size: geo.block_size,
        size: geo.size,
        extents: present.to_extents(),
        checksums,
    };
    let bytes = format::frame(MAGIC_INDEX, &format::encode(&idx));
    format::write_atomic(&paths.tmp, &paths.index(id), &bytes)
}

/// Whether every byte is zero. ORs 4 KiB at a time (which the compiler
/// vectorizes) and stops at the first chunk with data.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Bytes a file occupies on disk (holes excluded).
pub fn allocated_bytes(file: &File, path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let md = file.metadata().map_err(StoreError::io(path))?;
    Ok(md.blocks() * 512)
}

/// A writable layer: data file, journal and present set.
pub struct LiveLayer {
    pub id: LayerId,
    pub geo: Geometry,
    pub data: Arc<File>,
    data_path: PathBuf,
    log: File,
    log_path: PathBuf,
    /// Every present block, journaled or not.
    pub present: ExtentSet,
    /// Present blocks the journal does not hold yet.
    unlogged: ExtentSet,
}

impl LiveLayer {
    /// Creates the files of a new, empty live layer and makes them durable.
    /// The layer belongs to the repository only once the catalog names it.
    pub fn create(paths: &LayerPaths, id: LayerId, geo: Geometry) -> Result<LiveLayer> {
        let data_path = paths.data(id);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data_path)
            .map_err(StoreError::io(&data_path))?;
        data.set_len(geo.size).map_err(StoreError::io(&data_path))?;
        data.sync_all().map_err(StoreError::io(&data_path))?;
        let log_path = paths.log(id);
        let header = LogHeader {
            layer: id.0,
            block_size: geo.block_size,
            size: geo.size,
        };
        let mut log = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&log_path)
            .map_err(StoreError::io(&log_path))?;
        log.write_all(&format::frame(MAGIC_LOG, &format::encode(&header)))
            .and_then(|_| log.sync_all())
            .map_err(StoreError::io(&log_path))?;
        format::sync_dir(&paths.dir)?;
        Ok(LiveLayer {
            id,
            geo,
            data: Arc::new(data),
            data_path,
            log,
            log_path,
            present: ExtentSet::new(),
            unlogged: ExtentSet::new(),
        })
    }

    /// Opens a live layer after a clean stop or a crash (see the module doc).
    pub fn open(paths: &LayerPaths, id: LayerId, geo: Geometry) -> Result<LiveLayer> {
        let data_path = paths.data(id);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&data_path)
            .map_err(StoreError::io(&data_path))?;
        let len = data.metadata().map_err(StoreError::io(&data_path))?.len();
        if len != geo.size {
            return Err(StoreError::corrupt(
                &data_path,
                format!("it is {len} bytes long, the disk is {}", geo.size),
            ));
        }
        let log_path = paths.log(id);
        let log = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(StoreError::io(&log_path))?;
        let bytes = fs::read(&log_path).map_err(StoreError::io(&log_path))?;
        let (payload, records) = format::unframe(&log_path, MAGIC_LOG, &bytes)?;
        let header: LogHeader = format::decode(&log_path, payload)?;
        if header.layer != id.0 || header.block_size != geo.block_size || header.size != geo.size {
            return Err(StoreError::corrupt(
                &log_path,
                "it belongs to another layer",
            ));
        }
        let start = HEADER_LEN + payload.len();
        let (present, valid) = parse_records(records, geo.blocks());
        if valid < records.len() {
            log::warn!(
                "{}: cutting off {} bytes of unacknowledged journal",
                log_path.display(),
                records.len() - valid
            );
            log.set_len((start + valid) as u64)
                .and_then(|_| log.sync_all())
                .map_err(StoreError::io(&log_path))?;
        }
        let layer = LiveLayer {
            id,
            geo,
            data: Arc::new(data),
            data_path,
            log,
            log_path,
            present,
            unlogged: ExtentSet::new(),
        };
        layer.punch_strays()?;
        Ok(layer)
    }

    /// Punches data regions that lie in no present block: writes after the
    /// last flush to blocks the journal never recorded.
    fn punch_strays(&self) -> Result<()> {
        let mut pos = 0;
        while let Some(start) =
            sys::seek_data(&self.data, pos).map_err(StoreError::io(&self.data_path))?
        {
            let end = sys::seek_hole(&self.data, start).map_err(StoreError::io(&self.data_path))?;
            let bs = self.geo.block_size as u64;
            let blocks = start / bs..end.div_ceil(bs);
            for (r, present) in self.present.segments(blocks) {
                if !present {
                    let bytes = self.geo.byte_range(r);
                    let from = bytes.start.max(start);
                    let to = bytes.end.min(end);
                    sys::punch_hole(&self.data, from, to - from)
                        .map_err(StoreError::io(&self.data_path))?;
                }
            }
            pos = end;
            if pos >= self.geo.size {
                break;
            }
        }
        Ok(())
    }

    /// Records blocks as present (their data must already be written).
    pub fn mark_present(&mut self, blocks: std::ops::Range<u64>) {
        let new: Vec<_> = self
            .present
            .segments(blocks.clone())
            .into_iter()
            .filter(|(_, p)| !p)
            .map(|(r, _)| r)
            .collect();
        for r in new {
            self.unlogged.insert(r);
        }
        self.present.insert(blocks);
    }

    /// Makes every completed write durable: data first, then the journal
    /// record that names newly present blocks. Takes `&self` so readers can
    /// go on during the fsyncs; the caller holds the disk's writer lock and
    /// calls [`LiveLayer::journaled`] afterwards.
    pub fn sync(&self) -> Result<()> {
        self.data
            .sync_data()
            .map_err(StoreError::io(&self.data_path))?;
        if self.unlogged.is_empty() {
            return Ok(());
        }
        let payload = format::encode(&self.unlogged.to_extents());
        let mut rec = Vec::with_capacity(8 + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        rec.extend_from_slice(&payload);
        let end = self
            .log
            .metadata()
            .map_err(StoreError::io(&self.log_path))?
            .len();
        self.log
            .write_all_at(&rec, end)
            .and_then(|_| self.log.sync_data())
            .map_err(StoreError::io(&self.log_path))
    }

    /// Forgets the blocks a successful [`LiveLayer::sync`] journaled.
    pub fn journaled(&mut self) {
        self.unlogged = ExtentSet::new();
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Data sync, then per-block checksums over the present blocks, punching
    /// blocks that turned out all zero. Returns what the index needs.
    pub fn seal(&self) -> Result<Vec<u32>> {
        self.data
            .sync_data()
            .map_err(StoreError::io(&self.data_path))?;
        let bs = self.geo.block_size as u64;
        let chunk_blocks = ((1u64 << 20) / bs).max(1);
        let mut buf = vec![0u8; (chunk_blocks * bs) as usize];
        let mut sums = Vec::with_capacity(self.present.blocks() as usize);
        for run in self.present.runs() {
            let mut b = run.start;
            while b < run.end {
                let n = chunk_blocks.min(run.end - b);
                let bytes = self.geo.byte_range(b..b + n);
                let len = (bytes.end - bytes.start) as usize;
                self.data
                    .read_exact_at(&mut buf[..len], bytes.start)
                    .map_err(StoreError::io(&self.data_path))?;
                for (i, block) in buf[..len].chunks(bs as usize).enumerate() {
                    sums.push(crc32c::crc32c(block));
                    if is_zero(block) {
                        let at = bytes.start + i as u64 * bs;
                        sys::punch_hole(&self.data, at, block.len() as u64)
                            .map_err(StoreError::io(&self.data_path))?;
                    }
                }
                b += n;
            }
        }
        Ok(sums)
    }

    pub fn stored_bytes(&self) -> Result<u64> {
        allocated_bytes(&self.data, &self.data_path)
    }
}

/// Parses journal records; returns the present set and how many bytes of
/// records were whole and valid.
fn parse_records(mut bytes: &[u8], blocks: u64) -> (ExtentSet, usize) {
    let mut set = ExtentSet::new();
    let mut valid = 0;
    while bytes.len() >= 8 {
        let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let Some(payload) = bytes.get(8..8 + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(extents) = postcard::from_bytes::<Vec<(u64, u64)>>(payload) else {
            break;
        };
        if extents
            .iter()
            .any(|&(f, n)| f.checked_add(n).is_none_or(|e| e > blocks))
        {
            break;
        }
        for (f, n) in extents {
            set.insert(f..f + n);
        }
        valid += 8 + len;
        bytes = &bytes[8 + len..];
    }
    (set, valid)
}
