//! Reading images: the byte-level read and `SEEK_DATA`/`SEEK_HOLE`, shared
//! by the live disk and by snapshots.
//!
//! An image is described by its [`Layout`]: for any block range, which file
//! holds each piece (or that it is zeros). Everything here works on that
//! description, so the live disk and a snapshot differ only in how they
//! produce it.

use std::ops::Range;
use std::sync::Arc;

use super::error::{Result, StoreError};
use super::layer::{Geometry, LayerFiles};
use super::names::LayerId;
use super::storage::StorageFile;

/// Where a run of blocks comes from: zeros, or a layer's data file. A
/// frozen data file comes with its id and the repository's files, whose
/// CRCs its blocks are checked against when read.
pub enum Piece<'a> {
    Zero,
    Data(Arc<dyn StorageFile>, Option<(LayerId, &'a LayerFiles)>),
}

/// How far one layout query reaches, in blocks; bounds the memory of a scan
/// over a huge sparse disk.
const WINDOW_BLOCKS: u64 = 1 << 16;

pub(crate) trait Layout {
    fn geometry(&self) -> Geometry;
    /// The pieces of `blocks`, in order, covering the range exactly.
    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece<'_>)>>;
}

/// What every image offers its readers.
pub trait ImageRead: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Reads at `offset`; returns fewer bytes only at the end of the image.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// [`read_at`](Self::read_at), also saying whether any of it had to
    /// come from the device rather than the host's page cache.
    fn read_at_traced(&self, offset: u64, buf: &mut [u8]) -> Result<Traced> {
        Ok(Traced {
            len: self.read_at(offset, buf)?,
            missed: false,
        })
    }
    /// Asks the device for `len` bytes of the image from `offset` without
    /// waiting for them, so that a later read finds them in the host cache.
    fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// The first byte at or after `offset` that may hold data, or `None`.
    fn seek_data(&self, offset: u64) -> Result<Option<u64>>;
    /// The first byte at or after `offset` in a zero region (the size when
    /// there is none).
    fn seek_hole(&self, offset: u64) -> Result<u64>;
}

/// What a read returned: its length, and whether any of it had to be
/// fetched from the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traced {
    pub len: usize,
    pub missed: bool,
}

/// Reads through the layout. Each piece is first read from the page cache
/// without waiting; when several pieces miss, the device is asked for all of
/// them at once before any is waited for, so a read spread over many layers
/// costs one round trip to the device rather than one per layer.
pub(crate) fn read_at(layout: &dyn Layout, offset: u64, buf: &mut [u8]) -> Result<Traced> {
    let geo = layout.geometry();
    if offset >= geo.size || buf.is_empty() {
        return Ok(Traced {
            len: 0,
            missed: false,
        });
    }
    let end = (offset + buf.len() as u64).min(geo.size);
    let bs = geo.block_size as u64;
    let pieces = layout.pieces(offset / bs..end.div_ceil(bs))?;
    // Pieces (file, disk offset, buffer range) still to be read from the device.
    let mut missed: Vec<(&dyn StorageFile, u64, std::ops::Range<usize>)> = Vec::new();
    for (blocks, piece) in &pieces {
        let r = geo.byte_range(blocks.clone());
        let (s, e) = (r.start.max(offset), r.end.min(end));
        let dst = (s - offset) as usize..(e - offset) as usize;
        let file = match piece {
            Piece::Zero => {
                buf[dst].fill(0);
                continue;
            }
            Piece::Data(f, _) => f.as_ref(),
        };
        let got = file
            .read_cached(&mut buf[dst.clone()], s)
            .map_err(layer_io(s))?;
        if got < dst.len() {
            missed.push((file, s + got as u64, dst.start + got..dst.end));
        }
    }
    if missed.len() > 1 {
        for (file, at, dst) in &missed {
            file.prefetch(*at, dst.len() as u64)
                .map_err(layer_io(*at))?;
        }
    }
    let any_missed = !missed.is_empty();
    for (file, at, dst) in missed {
        file.read_exact_at(&mut buf[dst], at)
            .map_err(layer_io(at))?;
    }
    for (blocks, piece) in &pieces {
        if let Piece::Data(f, Some((id, files))) = piece {
            check(
                geo,
                f.as_ref(),
                *id,
                files,
                blocks.clone(),
                offset,
                &buf[..(end - offset) as usize],
            )?;
        }
    }
    Ok(Traced {
        len: (end - offset) as usize,
        missed: any_missed,
    })
}

/// The error of a read or prefetch of layer data at image offset `at`.
fn layer_io(at: u64) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Io {
        path: format!("layer data at offset {at}").into(),
        source: e,
    }
}

/// Asks the device for the data pieces of `offset..offset + len` without
/// waiting (`posix_fadvise(WILLNEED)` of each): what a reader going
/// through the image in order will want next.
pub(crate) fn prefetch(layout: &dyn Layout, offset: u64, len: u64) -> Result<()> {
    let geo = layout.geometry();
    let end = offset.saturating_add(len).min(geo.size);
    if offset >= end {
        return Ok(());
    }
    let bs = geo.block_size as u64;
    for (blocks, piece) in layout.pieces(offset / bs..end.div_ceil(bs))? {
        if let Piece::Data(file, _) = piece {
            let r = geo.byte_range(blocks);
            let (s, e) = (r.start.max(offset), r.end.min(end));
            file.prefetch(s, e - s).map_err(layer_io(s))?;
        }
    }
    Ok(())
}

/// Checks the blocks `blocks` of data file `id` (as read into `buf`, the
/// image from `offset`) against their CRCs: a block the read covers only
/// in part is read whole for it. A block whose CRC is not known yet (its
/// layer was just frozen) is not checked.
fn check(
    geo: Geometry,
    file: &dyn StorageFile,
    id: LayerId,
    files: &LayerFiles,
    blocks: Range<u64>,
    offset: u64,
    buf: &[u8],
) -> Result<()> {
    let end = offset + buf.len() as u64;
    let Some(known) = files.crcs(id) else {
        return Ok(());
    };
    let mut whole = Vec::new();
    for b in blocks {
        let Some(want) = known.get(b) else {
            continue;
        };
        let r = geo.byte_range(b..b + 1);
        let got = if r.start >= offset && r.end <= end {
            crc32c::crc32c(&buf[(r.start - offset) as usize..(r.end - offset) as usize])
        } else {
            whole.resize((r.end - r.start) as usize, 0);
            file.read_exact_at(&mut whole, r.start)
                .map_err(|e| StoreError::Io {
                    path: files.paths().data(id),
                    source: e,
                })?;
            crc32c::crc32c(&whole)
        };
        if got != want {
            let path = files.paths().data(id);
            log::error!(
                "{}: block {b} (image bytes {}..{}) does not match its checksum",
                path.display(),
                r.start,
                r.end
            );
            return Err(StoreError::Damaged {
                path,
                block: b,
                offset: r.start,
            });
        }
    }
    Ok(())
}

/// The first offset at or after `offset` that is data (`want_data`) or a
/// hole. The layout alone answers: blocks a layer holds as data are data,
/// zero blocks and blocks no layer holds are holes. No file is asked, so
/// the answer does not depend on how the host file system keeps holes.
pub(crate) fn probe(layout: &dyn Layout, offset: u64, want_data: bool) -> Result<Option<u64>> {
    let geo = layout.geometry();
    let bs = geo.block_size as u64;
    let mut block = offset / bs;
    while block < geo.blocks() {
        let window = block..(block + WINDOW_BLOCKS).min(geo.blocks());
        for (blocks, piece) in layout.pieces(window.clone())? {
            let r = geo.byte_range(blocks);
            let s = r.start.max(offset);
            if s >= r.end {
                continue;
            }
            let is_data = matches!(piece, Piece::Data(..));
            if is_data == want_data {
                return Ok(Some(s));
            }
        }
        block = window.end;
    }
    Ok(if want_data { None } else { Some(geo.size) })
}
