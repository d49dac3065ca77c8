//! The on-disk format of a strata repository — the one normative description.
//!
//! Code elsewhere points here rather than restating it. Format version 1.
//!
//! # Files
//!
//! ```text
//! REPO/
//!   strata.repo        repository header            (frame, kind "STRATREP")
//!   lock               PID of the process holding the repository, as text;
//!                      the holder keeps an exclusive flock(2) on it
//!   catalog            disks, snapshots and layers  (frame, kind "STRATCAT")
//!   layers/<id>.data   a layer's blocks             (raw, sparse)
//!   layers/<id>.idx    a frozen layer's index       (frame, kind "STRATIDX")
//!   layers/<id>.log    a live layer's block journal (frame, kind "STRATLOG", then records)
//!   tmp/               scratch for atomic replacement; emptied on open
//! ```
//!
//! `<id>` is a layer id as 16 lower-case hex digits. Layer ids are handed out
//! from `Catalog::next_layer` and never reused.
//!
//! # Frame
//!
//! Every metadata file starts with a 32-byte header; all integers are
//! little-endian and fixed-width:
//!
//! | offset | width | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic: `STRATREP`, `STRATCAT`, `STRATIDX` or `STRATLOG` (ASCII) |
//! | 8 | 4 | format version (`u32`); a reader refuses versions above its own |
//! | 12 | 4 | incompatible feature bits (`u32`); a reader refuses any bit it does not know (none are defined in version 1) |
//! | 16 | 8 | payload length in bytes (`u64`) |
//! | 24 | 4 | CRC-32C of the payload (`u32`) |
//! | 28 | 4 | CRC-32C of bytes 0..28 (`u32`) |
//!
//! The payload follows at offset 32 and is the struct named below encoded
//! with postcard 1.x (integers as LEB128 varints, strings as length + UTF-8,
//! sequences and maps as length + items, `Option` as a 0/1 tag). Payload
//! structs never contain `usize`.
//!
//! # Payloads
//!
//! - `strata.repo`: [`RepoHeader`].
//! - `catalog`: [`Catalog`](super::catalog::Catalog): every disk (size, block
//!   size, live layer), every snapshot (disk, name, layer, time taken, a
//!   sequence number giving the order taken) and every layer (parent layer,
//!   block size, size, and for a frozen layer its stored bytes and block
//!   count). A layer's chain is itself followed by `parent` links, oldest last.
//! - `layers/<id>.idx`: [`LayerIndex`]: the layer's present blocks as sorted,
//!   disjoint, non-adjacent extents `(first block, block count)`, and one
//!   CRC-32C per present block, in block order, over the block's bytes (the
//!   last block of a disk whose size is not a multiple of the block size
//!   covers only the bytes inside the disk).
//! - `layers/<id>.log`: header payload [`LogHeader`]; then, from byte
//!   `32 + payload length`, records: `u32` length, `u32` CRC-32C of the
//!   record payload, and a payload that is a postcard `Vec<(u64, u64)>` of
//!   extents made present. The live layer's present blocks are the union of
//!   all records. A record that is short or fails its CRC ends the journal
//!   (it was never acknowledged) and is cut off on open.
//!
//! # Layer data
//!
//! `layers/<id>.data` is exactly the disk's size long. Block `b` lives at byte
//! `b × block_size`. Bytes of blocks that are not present are not part of
//! the layer (they read as a hole and are punched when found). A present
//! block that is all zeros is normally a hole.
//!
//! # Durability
//!
//! Every metadata file except the journal is replaced by [`write_atomic`]:
//! write a temp file in `tmp/`, fsync it, rename it over the target, fsync
//! the directory. The catalog is the single commit point: a layer file the
//! catalog does not name is garbage and is removed on open.
//!
//! # Versions
//!
//! - 1: first format.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::{Result, StoreError};

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Incompatible feature bits this build understands.
pub const KNOWN_FEATURES: u32 = 0;
pub const HEADER_LEN: usize = 32;

pub const MAGIC_REPO: [u8; 8] = *b"STRATREP";
pub const MAGIC_CATALOG: [u8; 8] = *b"STRATCAT";
pub const MAGIC_INDEX: [u8; 8] = *b"STRATIDX";
pub const MAGIC_LOG: [u8; 8] = *b"STRATLOG";

/// Payload of `strata.repo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoHeader {
    /// Unix seconds when the repository was created.
    pub created: u64,
}

/// Payload of `layers/<id>.idx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
    pub extents: Vec<(u64, u64)>,
    pub checksums: Vec<u32>,
}

/// Header payload of `layers/<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
}

/// The crate's one serialization config.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::corrupt(path, format!("cannot decode its contents ({e})")))
}

/// A frame header plus payload, ready to be written.
pub fn frame(magic: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&KNOWN_FEATURES.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame header as read, before any field is trusted.
struct RawHeader {
    magic: [u8; 8],
    version: u32,
    features: u32,
    payload_len: u64,
    payload_crc: u32,
    header_crc: u32,
}

impl RawHeader {
    fn parse(b: &[u8; HEADER_LEN]) -> RawHeader {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[16..24]);
        RawHeader {
            magic,
            version: u32_at(8),
            features: u32_at(12),
            payload_len: u64::from_le_bytes(len),
            payload_crc: u32_at(24),
            header_crc: u32_at(28),
        }
    }
}

/// Checks a frame's header against `magic` and returns its payload length.
/// Order matters: a file of another kind is named as such before its
/// checksum is blamed, and a newer version is named before its features.
fn check_header(path: &Path, magic: [u8; 8], bytes: &[u8]) -> Result<u64> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(StoreError::corrupt(
            path,
            format!("it is {} bytes long, shorter than a header", bytes.len()),
        ));
    };
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(head);
    let raw = RawHeader::parse(&h);
    if raw.magic != magic {
        return Err(StoreError::corrupt(
            path,
            format!(
                "it does not start with {:?}",
                String::from_utf8_lossy(&magic)
            ),
        ));
    }
    if crc32c::crc32c(&h[..28]) != raw.header_crc {
        return Err(StoreError::corrupt(path, "header checksum mismatch"));
    }
    if raw.version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            path: path.to_owned(),
            found: raw.version,
            supported: FORMAT_VERSION,
        });
    }
    if raw.version == 0 {
        return Err(StoreError::corrupt(path, "format version 0 does not exist"));
    }
    if raw.features & !KNOWN_FEATURES != 0 {
        return Err(StoreError::UnknownFeatures {
            path: path.to_owned(),
            bits: raw.features & !KNOWN_FEATURES,
        });
    }
    let end = (HEADER_LEN as u64).checked_add(raw.payload_len);
    if end.is_none_or(|end| end > bytes.len() as u64) {
        return Err(StoreError::corrupt(
            path,
            format!(
                "payload of {} bytes runs past the end of the file",
                raw.payload_len
            ),
        ));
    }
    let payload = &bytes[HEADER_LEN..HEADER_LEN + raw.payload_len as usize];
    if crc32c::crc32c(payload) != raw.payload_crc {
        return Err(StoreError::corrupt(path, "payload checksum mismatch"));
    }
    Ok(raw.payload_len)
}

/// Decodes a whole frame; returns the payload and the bytes after it.
pub fn unframe<'a>(path: &Path, magic: [u8; 8], bytes: &'a [u8]) -> Result<(&'a [u8], &'a [u8])> {
    let len = check_header(path, magic, bytes)? as usize;
    Ok(bytes[HEADER_LEN..].split_at(len))
}

/// Reads a metadata file and decodes its payload.
pub fn read_frame<T: DeserializeOwned>(path: &Path, magic: [u8; 8]) -> Result<T> {
    let bytes = fs::read(path).map_err(StoreError::io(path))?;
    let (payload, rest) = unframe(path, magic, &bytes)?;
    if !rest.is_empty() {
        return Err(StoreError::corrupt(
            path,
            format!("{} unexpected bytes after the payload", rest.len()),
        ));
    }
    decode(path, payload)
}

/// Replaces `path` with `contents` so that after a crash it holds either the
/// old or the new contents, never a mix: write a temp file in `tmp`, fsync,
/// rename over `path`, fsync the directory.
pub fn write_atomic(tmp: &Path, path: &Path, contents: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp_path = tmp.join(format!("{name}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp_path).map_err(StoreError::io(&tmp_path))?;
    f.write_all(contents).map_err(StoreError::io(&tmp_path))?;
    f.sync_all().map_err(StoreError::io(&tmp_path))?;
    drop(f);
    fs::rename(&tmp_path, path).map_err(StoreError::io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// Reads a small file whole (used for the lock file's PID).
pub fn read_to_string_lossy(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_damage() {
        let p = Path::new("x");
        let bytes = frame(MAGIC_CATALOG, b"hello");
        let (payload, rest) = unframe(p, MAGIC_CATALOG, &bytes).unwrap();
        assert_eq!(payload, b"hello");
        assert!(rest.is_empty());

        let e = unframe(p, MAGIC_INDEX, &bytes).unwrap_err().to_string();
        assert!(e.contains("does not start with \"STRATIDX\""), "{e}");

        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(unframe(p, MAGIC_CATALOG, &bad).is_err(), "flip at {i}");
        }
        assert!(unframe(p, MAGIC_CATALOG, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn newer_version_is_named() {
        let mut bytes = frame(MAGIC_REPO, b"");
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        let e = unframe(Path::new("r"), MAGIC_REPO, &bytes).unwrap_err();
        assert!(matches!(e, StoreError::NewerFormat { found: 7, .. }), "{e}");
    }
}
