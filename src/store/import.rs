//! Reading a raw image into a new disk: from a regular file (only its data
//! regions), a block device, or a stream such as standard input or a FIFO.
//!
//! What is refused, with the path and the reason: a directory, a stream
//! without a size, a size that is not a whole number of sectors, a regular
//! file or device whose size disagrees with `--size`. What fails the import
//! and leaves no disk behind: a source shorter than it said, a regular file
//! that changes size while it is read, a stream longer than `--size`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::catalog;
use super::error::{Result, StoreError};
use super::extents::BlockKind;
use super::layer::{is_zero, LiveLayer};
use super::vhd;

/// Where an imported disk's bytes come from.
pub struct ImportSource<'a> {
    pub file: &'a File,
    /// How the source is named in messages.
    pub name: &'a Path,
    /// The size to import. Needed for a stream, whose size cannot be known
    /// in advance; checked against a file's or device's own size.
    pub size: Option<u64>,
}

/// How a source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceKind {
    /// Only the data regions (`SEEK_DATA`), and its size must not change.
    Regular,
    /// Every byte, by position.
    Device,
    /// Every byte, in order, exactly `size` of them.
    Stream,
}

/// A source checked before anything is created.
pub(crate) struct Checked {
    pub kind: SourceKind,
    pub size: u64,
    /// A regular file's length (the image, and a VHD footer if any).
    pub file_len: u64,
}

fn refused(name: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Refused(format!("cannot import {}: {}", name.display(), why.into()))
}

/// The image's length in a regular file of `len` bytes: all of it, or
/// what comes before a fixed VHD's footer.
fn image_len(src: &ImportSource, len: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let named_vhd = src
        .name
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhd"));
    if len < 2 * vhd::FOOTER {
        return Ok(len);
    }
    let mut f = [0u8; 512];
    src.file
        .read_exact_at(&mut f, len - vhd::FOOTER)
        .map_err(StoreError::io(src.name))?;
    match vhd::parse(&f, len) {
        vhd::Footer::Fixed(size) => Ok(size),
        vhd::Footer::Refused(why) => Err(refused(src.name, why)),
        vhd::Footer::None if named_vhd => Err(refused(
            src.name,
            "it is named .vhd but has no VHD footer at its end; rename it if it is a raw image",
        )),
        vhd::Footer::None => Ok(len),
    }
}

/// Checks what the source is and how large, before a disk is made.
pub(crate) fn check(src: &ImportSource) -> Result<Checked> {
    let md = src.file.metadata().map_err(StoreError::io(src.name))?;
    let ft = md.file_type();
    let file_len = md.len();
    let (kind, own) = if ft.is_file() {
        (SourceKind::Regular, Some(image_len(src, md.len())?))
    } else if ft.is_block_device() {
        let mut f = src.file;
        let len = f.seek(SeekFrom::End(0)).map_err(StoreError::io(src.name))?;
        (SourceKind::Device, Some(len))
    } else if ft.is_dir() {
        return Err(refused(
            src.name,
            "it is a directory; give a raw image file, a block device or -",
        ));
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_socket() {
        (SourceKind::Stream, None)
    } else {
        return Err(refused(
            src.name,
            "it is not a file, a block device or a stream",
        ));
    };
    let size = match (own, src.size) {
        (Some(own), Some(given)) if own != given => {
            return Err(refused(
                src.name,
                format!(
                "it is {own} bytes, but --size says {given}; leave --size out to import it whole"
            ),
            ))
        }
        (Some(own), _) => own,
        (None, Some(given)) => given,
        (None, None) => return Err(refused(
            src.name,
            "it is a stream whose size cannot be known in advance; give its exact size with --size",
        )),
    };
    if size == 0 || size % catalog::SECTOR != 0 {
        return Err(refused(
            src.name,
            format!("it is {size} bytes; a disk image must be a non-zero multiple of 512 bytes"),
        ));
    }
    catalog::check_disk_size(size)?;
    Ok(Checked {
        kind,
        size,
        file_len,
    })
}

/// Copies the source into a fresh live layer, whole blocks at a time,
/// leaving zero blocks out.
pub(crate) fn copy_into(
    live: &mut LiveLayer,
    src: &ImportSource,
    checked: &Checked,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut w = Writer::new(live);
    match checked.kind {
        SourceKind::Regular => copy_regular(&mut w, src, checked.size, checked.file_len, progress)?,
        SourceKind::Device => {
            copy_positional(&mut w, src, 0..checked.size, checked.size, progress)?
        }
        SourceKind::Stream => copy_stream(&mut w, src, checked.size, progress)?,
    }
    progress(checked.size, checked.size);
    Ok(())
}

/// Writes whole blocks into the live layer, skipping zero ones.
struct Writer<'a> {
    live: &'a mut LiveLayer,
    bs: u64,
    path: PathBuf,
}

impl<'a> Writer<'a> {
    fn new(live: &'a mut LiveLayer) -> Self {
        let bs = live.geo.block_size as u64;
        let path = live.data_path.clone();
        Writer { live, bs, path }
    }

    /// `buf` holds the bytes at `at`, a block boundary; the last block may
    /// be short only at the end of the disk.
    fn put(&mut self, at: u64, buf: &[u8]) -> Result<()> {
        for (i, block) in buf.chunks(self.bs as usize).enumerate() {
            if is_zero(block) {
                continue;
            }
            let off = at + i as u64 * self.bs;
            self.live
                .data
                .write_all_at(block, off)
                .map_err(StoreError::io(&self.path))?;
            self.live
                .mark(off / self.bs..off / self.bs + 1, BlockKind::Data);
        }
        Ok(())
    }
}

fn chunk_len(bs: u64) -> usize {
    (((4u64 << 20) / bs).max(1) * bs) as usize
}

fn short(name: &Path, got: u64, size: u64) -> StoreError {
    refused(
        name,
        format!(
            "it ended after {got} bytes, short of the {size} it was to hold; nothing was imported"
        ),
    )
}

fn read_full_at(src: &ImportSource, buf: &mut [u8], at: u64, size: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match src.file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => return Err(short(src.name, at + done as u64, size)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io(src.name)(e)),
        }
    }
    Ok(())
}

fn copy_positional(
    w: &mut Writer,
    src: &ImportSource,
    range: std::ops::Range<u64>,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; chunk_len(w.bs)];
    let mut at = range.start;
    while at < range.end {
        let n = ((range.end - at) as usize).min(buf.len());
        read_full_at(src, &mut buf[..n], at, size)?;
        w.put(at, &buf[..n])?;
        at += n as u64;
        progress(at, size);
    }
    Ok(())
}

fn copy_regular(
    w: &mut Writer,
    src: &ImportSource,
    size: u64,
    file_len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let bs = w.bs;
    let mut pos = 0;
    while pos < size {
        let start = match crate::sys::seek_data(src.file, pos) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // A file system without SEEK_DATA: read everything.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => pos,
            Err(e) => return Err(StoreError::io(src.name)(e)),
        };
        if start >= size {
            break;
        }
        let end = match crate::sys::seek_hole(src.file, start) {
            Ok(e) => e.min(size),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => size,
            Err(e) => return Err(StoreError::io(src.name)(e)),
        };
        // Whole blocks around the region: bytes outside it are zeros anyway.
        let region = start / bs * bs..(end.div_ceil(bs) * bs).min(size);
        copy_positional(w, src, region.clone(), size, progress)?;
        pos = region.end.max(pos + 1);
    }
    let now = src.file.metadata().map_err(StoreError::io(src.name))?.len();
    if now != file_len {
        return Err(refused(
            src.name,
            format!(
                "it changed size while it was read ({file_len} bytes, then {now}); nothing was imported"
            ),
        ));
    }
    Ok(())
}

fn copy_stream(
    w: &mut Writer,
    src: &ImportSource,
    size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let mut buf = vec![0u8; chunk_len(w.bs)];
    let mut reader = src.file;
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        let mut done = 0;
        while done < n {
            match reader.read(&mut buf[done..n]) {
                Ok(0) => return Err(short(src.name, at + done as u64, size)),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io(src.name)(e)),
            }
        }
        w.put(at, &buf[..n])?;
        at += n as u64;
        progress(at, size);
    }
    // Nothing may be left over: a longer stream is not this disk.
    let mut extra = [0u8; 1];
    loop {
        match reader.read(&mut extra) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(refused(
                    src.name,
                    format!(
                        "it holds more than the {size} bytes --size gives; nothing was imported"
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StoreError::io(src.name)(e)),
        }
    }
}
