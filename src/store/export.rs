//! Writing an image out: into a regular file (its data regions only, zeros
//! left as holes), onto a block device (every byte, in place), or down a
//! stream such as a pipe or `/dev/null` (every byte, in order).
//!
//! The file is opened by the caller, who also decides where it may be
//! (never inside the repository, see [`super::Repository::holds`]) and
//! makes a regular file appear under its name only once it is complete.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;

use super::error::{Result, StoreError};
use super::image::ImageRead;
use super::layer::is_zero;

/// Bytes an export reads at a time: large enough that a read spread over a
/// deep chain keeps many device requests in flight.
const EXPORT_CHUNK: usize = 4 << 20;

/// Where an image goes.
pub struct ExportTarget<'a> {
    pub file: &'a File,
    /// How the target is named in messages.
    pub name: &'a Path,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportStats {
    /// Bytes of data regions read from the image.
    pub data_bytes: u64,
    /// Bytes actually written (zero pages of a regular file are left as
    /// holes).
    pub written_bytes: u64,
    /// The target was a block device, written in place.
    pub device: bool,
}

fn refused(name: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Refused(format!(
        "cannot export to {}: {}",
        name.display(),
        why.into()
    ))
}

/// Writes the parts of `buf` (the image at `at`) that are not zeros, a
/// page at a time, so zero pages stay holes.
fn write_data(file: &File, buf: &[u8], at: u64) -> std::io::Result<u64> {
    const PAGE: usize = 4096;
    let mut written = 0;
    let mut run: Option<usize> = None;
    let pages = buf.len().div_ceil(PAGE);
    for p in 0..=pages {
        let page = (p < pages).then(|| &buf[p * PAGE..((p + 1) * PAGE).min(buf.len())]);
        match (page.is_some_and(|pg| !is_zero(pg)), run) {
            (true, None) => run = Some(p * PAGE),
            (false, Some(start)) => {
                let end = (p * PAGE).min(buf.len());
                file.write_all_at(&buf[start..end], at + start as u64)?;
                written += (end - start) as u64;
                run = None;
            }
            _ => {}
        }
    }
    Ok(written)
}

/// Writes the whole image to the target.
pub fn export(
    img: &dyn ImageRead,
    target: &ExportTarget,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportStats> {
    let io = |e| StoreError::io(target.name)(e);
    let ft = target.file.metadata().map_err(io)?.file_type();
    let size = img.size();
    let mut stats = ExportStats::default();
    let mut buf = vec![0u8; EXPORT_CHUNK];
    let file = target.file;
    if ft.is_file() {
        file.set_len(0)
            .and_then(|_| file.set_len(size))
            .map_err(io)?;
        let mut pos = 0;
        while let Some(start) = img.seek_data(pos)? {
            let end = img.seek_hole(start)?.max(start + 1).min(size);
            let mut at = start;
            while at < end {
                let n = (end - at).min(buf.len() as u64) as usize;
                let got = img.read_at(at, &mut buf[..n])?;
                stats.data_bytes += got as u64;
                stats.written_bytes += write_data(file, &buf[..got], at).map_err(io)?;
                at += got as u64;
                progress(at, size);
            }
            pos = end;
        }
        file.sync_all().map_err(io)?;
    } else if ft.is_block_device() {
        let mut f = file;
        let room = f.seek(SeekFrom::End(0)).map_err(io)?;
        if room < size {
            return Err(refused(
                target.name,
                format!("the device holds {room} bytes, the image {size}; nothing was written"),
            ));
        }
        let mut at = 0;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            let got = img.read_at(at, &mut buf[..n])?;
            file.write_all_at(&buf[..got], at).map_err(io)?;
            stats.data_bytes += got as u64;
            stats.written_bytes += got as u64;
            at += got as u64;
            progress(at, size);
        }
        file.sync_all().map_err(io)?;
        stats.device = true;
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_socket() {
        let mut w = file;
        let mut at = 0;
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            let got = img.read_at(at, &mut buf[..n])?;
            w.write_all(&buf[..got]).map_err(io)?;
            stats.data_bytes += got as u64;
            stats.written_bytes += got as u64;
            at += got as u64;
            progress(at, size);
        }
        w.flush().map_err(io)?;
    } else {
        return Err(refused(
            target.name,
            "it is not a file, a block device or a stream",
        ));
    }
    progress(size, size);
    Ok(stats)
}
