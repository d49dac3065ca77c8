//! A disk's live image: reads through the owner map, writes into the live
//! layer with copy-up, discard, and flush.
//!
//! Locks: `writer` serializes everything that changes the live layer
//! (writes, discards, flushes, freezing). `state` is held for reading by
//! readers and by the writer while it works, and for writing only for the
//! instant the present set or the layer itself is swapped. Order: `writer`
//! before `state`, and `state` before any repository lock.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::error::{Result, StoreError};
use super::extents::OwnerMap;
use super::image::{self, ImageRead, Layout, Piece};
use super::layer::{is_zero, Geometry, LayerFiles, LiveLayer};
use super::names::{BlockNo, DiskName};
use crate::sys;

pub(crate) struct DiskState {
    pub live: LiveLayer,
    /// Owner map of the frozen chain under the live layer.
    pub base: OwnerMap,
}

/// A disk's live, writable image.
pub struct Disk {
    name: DiskName,
    geo: Geometry,
    files: Arc<LayerFiles>,
    writer: Mutex<()>,
    pub(crate) state: RwLock<DiskState>,
}

/// How one block of a write is carried out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Data,
    Zero,
}

impl Disk {
    pub(crate) fn new(
        name: DiskName,
        files: Arc<LayerFiles>,
        live: LiveLayer,
        base: OwnerMap,
    ) -> Disk {
        Disk {
            name,
            geo: live.geo,
            files,
            writer: Mutex::new(()),
            state: RwLock::new(DiskState { live, base }),
        }
    }

    pub fn name(&self) -> &DiskName {
        &self.name
    }

    pub fn block_size(&self) -> u32 {
        self.geo.block_size
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<u64> {
        offset
            .checked_add(len)
            .filter(|&end| end <= self.geo.size)
            .ok_or_else(|| StoreError::OutOfRange {
                disk: self.name.clone(),
                offset,
                len,
                size: self.geo.size,
            })
    }

    /// Writes `data` at `offset`. The whole write must lie inside the disk.
    /// Durable after the next [`Disk::flush`].
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let _w = self.writer.lock();
        self.write_locked(offset, data)
    }

    /// Turns `len` bytes at `offset` into zeros. Whole blocks become holes
    /// that occupy no space; partial blocks at the edges are zero-filled.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let end = self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let _w = self.writer.lock();
        let bs = self.geo.block_size as u64;
        let first_full = offset.div_ceil(bs);
        let end_full = if end == self.geo.size {
            self.geo.blocks()
        } else {
            end / bs
        };
        if first_full >= end_full {
            return self.write_locked(offset, &vec![0u8; len as usize]);
        }
        let head = self.geo.block_start(first_full);
        if offset < head {
            self.write_locked(offset, &vec![0u8; (head - offset) as usize])?;
        }
        let full = self.geo.byte_range(first_full..end_full);
        let data = self.state.read().live.data.clone();
        sys::punch_hole(&data, full.start, full.end - full.start)
            .map_err(|e| self.io_err(full.start, e))?;
        self.state.write().live.mark_present(first_full..end_full);
        if full.end < end {
            self.write_locked(full.end, &vec![0u8; (end - full.end) as usize])?;
        }
        Ok(())
    }

    /// Makes every write completed before the call durable (guarantee 3).
    pub fn flush(&self) -> Result<()> {
        let _w = self.writer.lock();
        self.flush_locked()
    }

    pub(crate) fn flush_locked(&self) -> Result<()> {
        self.state.read().live.sync()?;
        self.state.write().live.journaled();
        Ok(())
    }

    fn io_err(&self, offset: u64, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: format!("disk '{}' live layer at offset {offset}", self.name).into(),
            source,
        }
    }

    /// The write itself; the caller holds `writer`, so the present set only
    /// changes here.
    fn write_locked(&self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let bs = self.geo.block_size as u64;
        let blocks = offset / bs..end.div_ceil(bs);
        let file = self.state.read().live.data.clone();
        // Contiguous whole blocks of one kind go out in one call.
        let mut run: Option<(Run, Range<u64>)> = None;
        let emit = |run: &mut Option<(Run, Range<u64>)>| -> Result<()> {
            match run.take() {
                Some((Run::Data, r)) => {
                    let src = &data[(r.start - offset) as usize..(r.end - offset) as usize];
                    file.write_all_at(src, r.start)
                        .map_err(|e| self.io_err(r.start, e))
                }
                Some((Run::Zero, r)) => sys::punch_hole(&file, r.start, r.end - r.start)
                    .map_err(|e| self.io_err(r.start, e)),
                None => Ok(()),
            }
        };
        for b in blocks.clone() {
            let br = self.geo.byte_range(b..b + 1);
            let (ws, we) = (br.start.max(offset), br.end.min(end));
            let part = &data[(ws - offset) as usize..(we - offset) as usize];
            if ws == br.start && we == br.end {
                let kind = if is_zero(part) { Run::Zero } else { Run::Data };
                match &mut run {
                    Some((k, r)) if *k == kind => r.end = br.end,
                    _ => {
                        emit(&mut run)?;
                        run = Some((kind, br));
                    }
                }
                continue;
            }
            emit(&mut run)?;
            let present = self.state.read().live.present.contains(b);
            if present {
                file.write_all_at(part, ws)
                    .map_err(|e| self.io_err(ws, e))?;
            } else {
                // Copy-up: the block enters the live layer whole.
                let mut block = vec![0u8; (br.end - br.start) as usize];
                self.read_base(BlockNo(b), &mut block)?;
                block[(ws - br.start) as usize..(we - br.start) as usize].copy_from_slice(part);
                if is_zero(&block) {
                    sys::punch_hole(&file, br.start, block.len() as u64)
                } else {
                    file.write_all_at(&block, br.start)
                }
                .map_err(|e| self.io_err(br.start, e))?;
            }
        }
        emit(&mut run)?;
        self.state.write().live.mark_present(blocks);
        Ok(())
    }

    /// Reads one block as the frozen chain under the live layer has it.
    fn read_base(&self, block: BlockNo, buf: &mut [u8]) -> Result<()> {
        let st = self.state.read();
        let base = BaseLayout {
            geo: self.geo,
            map: &st.base,
            files: &self.files,
        };
        image::read_at(&base, self.geo.block_start(block.0), buf)?;
        Ok(())
    }

    /// Bytes the live layer occupies on disk.
    pub fn live_stored_bytes(&self) -> Result<u64> {
        self.state.read().live.stored_bytes()
    }
}

/// Pieces from an owner map: a frozen chain.
pub(crate) struct BaseLayout<'a> {
    pub geo: Geometry,
    pub map: &'a OwnerMap,
    pub files: &'a LayerFiles,
}

impl Layout for BaseLayout<'_> {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece)>> {
        let mut segs = Vec::new();
        self.map.segments_into(blocks, &mut segs);
        segs.into_iter()
            .map(|(r, owner)| {
                Ok((
                    r,
                    match owner {
                        Some(l) => Piece::Data(self.files.get(l)?),
                        None => Piece::Zero,
                    },
                ))
            })
            .collect()
    }
}

impl Layout for Disk {
    fn geometry(&self) -> Geometry {
        self.geo
    }

    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece)>> {
        let st = self.state.read();
        let base = BaseLayout {
            geo: self.geo,
            map: &st.base,
            files: &self.files,
        };
        let mut out = Vec::new();
        for (r, in_live) in st.live.present.segments(blocks) {
            if in_live {
                out.push((r, Piece::Data(st.live.data.clone())));
            } else {
                out.extend(base.pieces(r)?);
            }
        }
        Ok(out)
    }
}

impl ImageRead for Disk {
    fn size(&self) -> u64 {
        self.geo.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        image::read_at(self, offset, buf)
    }
    fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        image::probe(self, offset, true)
    }
    fn seek_hole(&self, offset: u64) -> Result<u64> {
        Ok(image::probe(self, offset, false)?.unwrap_or(self.geo.size))
    }
}
