//! The on-disk format of a strata repository — the one normative description.
//!
//! Code elsewhere points here rather than restating it. This is format
//! version 3; older versions are described at the end, as far as an
//! upgrade needs them.
//!
//! # Files
//!
//! ```text
//! REPO/
//!   strata.repo        repository header            (document, kind "STRATREP")
//!   lock               PID of the process holding the repository, as text;
//!                      the holder keeps a POSIX record lock (fcntl) on it
//!   catalog            disks, snapshots, layers and intents
//!                                                   (log, kind "STRATCAT")
//!   layers/<id>.data   a layer's blocks             (raw, sparse)
//!   layers/<id>.idx    a frozen layer's index       (document, kind "STRATIDX")
//!   layers/<id>.log    a live layer's journal       (log, kind "STRATLOG")
//!   receiving/<disk>@<snap>/  a receive under way or cut short: `data`
//!                      (the new layer's data file) and `state` (document,
//!                      kind "STRATRCV"); see `ops::receive`
//!   bookmarks/<disk>#<snap>   what a sent snapshot was (document, kind
//!                      "STRATBMK"); see `ops::bookmark`
//!   quarantine/<time>/ files found on open that nothing names, set aside
//!   tmp/               scratch for atomic replacement (NAME.PID.N.tmp), removed
//!                      on open; anything else found there is set aside
//! ```
//!
//! `<id>` is a layer id as 16 lower-case hex digits. Layer ids are handed out
//! from the catalog's `next_layer` and never reused. `<time>` is the UTC
//! time a quarantine was made, as a snapshot's default name.
//!
//! # Frame
//!
//! Every metadata file is made of frames. A frame is a 32-byte header and a
//! payload; all integers are little-endian and fixed-width:
//!
//! | offset | width | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic: the file's kind, `STRATREP`, `STRATCAT`, `STRATIDX` or `STRATLOG` (ASCII) |
//! | 8 | 4 | format version (`u32`); a reader refuses versions above its own |
//! | 12 | 4 | incompatible feature bits (`u32`); a reader refuses any bit it does not know (none are defined in version 3) |
//! | 16 | 8 | payload length in bytes (`u64`) |
//! | 24 | 4 | CRC-32C of the payload (`u32`) |
//! | 28 | 4 | CRC-32C of bytes 0..28 (`u32`) |
//!
//! The payload follows at offset 32 and is the struct named below encoded
//! with postcard 1.x (integers as LEB128 varints, strings as length + UTF-8,
//! sequences and maps as length + items, `Option` as a 0/1 tag, enums as a
//! varint variant index then the variant). Payload structs never contain
//! `usize`.
//!
//! # Copies
//!
//! Metadata survives one damaged copy: everything is written twice, each
//! copy starting on a 512-byte boundary (a sector), so one damaged sector or
//! one flipped bit never reaches both.
//!
//! - A **document** is a frame written twice: copy 0 at offset 0, zero
//!   padding to the next multiple of 512, then copy 1 (the same bytes),
//!   padded the same way. A reader takes the first copy that checks out and
//!   rewrites a damaged copy from the good one.
//! - A **log** is a document (its header) followed, at the next multiple of
//!   512, by records. Each record is written twice in one write, copy 0 then
//!   copy 1, each padded to a multiple of 512, and then synced:
//!
//!   | offset | width | field |
//!   | --- | --- | --- |
//!   | 0 | 8 | magic `STRATREC` |
//!   | 8 | 8 | sequence number (`u64`): 1 for a log's first record, then +1 |
//!   | 16 | 4 | payload length (`u32`) |
//!   | 20 | 4 | CRC-32C of the payload |
//!   | 24 | 1 | copy: 0 or 1 |
//!   | 25 | 3 | zero |
//!   | 28 | 4 | CRC-32C of bytes 0..28 |
//!
//!   then the payload. Reading a log: at each position, copy 0 of the next
//!   sequence number; if it is damaged, its copy 1, looked for at every
//!   512-byte boundary after it. If neither copy of a record checks out and
//!   no valid record with that or a later sequence number follows anywhere
//!   in the file, the bytes from there on are a torn append that was never
//!   acknowledged (its sync had not returned), and are cut off. If a later
//!   record does follow, the log is damaged beyond repair: the file and the
//!   offset are named and nothing is changed. A record is acknowledged only
//!   once both copies are synced, so a single damaged copy of an
//!   acknowledged record is always recovered, and repaired in place.
//! - A failed append is cut off again at once (the file is truncated back
//!   to where the record began); if even that fails, the writer stops (the
//!   disk or repository is latched) so that nothing can follow the garbage.
//!
//! # Payloads
//!
//! - `strata.repo`: [`RepoHeader`], its id chosen at random when the
//!   repository is made. Every other metadata file carries the same id, so
//!   a file of another repository is recognised as such.
//! - `catalog`: header [`CatalogHeader`]; records
//!   [`CatalogRecord`](super::catalog::CatalogRecord). The first record is a
//!   `Checkpoint` (the whole [`Catalog`](super::catalog::Catalog)); each
//!   later one is `Changes`, the puts and deletes of one commit, applied in
//!   order. A commit is one appended record. When the records outweigh the
//!   checkpoint, the file is rewritten (atomically, below) as one new
//!   checkpoint. The catalog holds every disk (size, block size, live
//!   layer), every snapshot (disk, name, layer, time taken, a sequence
//!   number giving the order taken), every layer (parent layer, block size,
//!   size, and for a frozen layer its stored bytes and block count), and
//!   every open intent (below). A layer's chain is followed by `parent`
//!   links, oldest last.
//! - `layers/<id>.idx`: [`LayerIndex`]: the layer's present blocks as sorted,
//!   disjoint extents `(first block, block count)`: `pieces`, each the data
//!   blocks the layer holds in one data file (at their own offsets in it),
//!   and `zero` (zeros, no bytes); no block is in two of them. A piece's
//!   `checksums`, once computed, hold one CRC-32C per data block, in block
//!   order, over the block's bytes (the last block of a disk whose size is
//!   not a multiple of the block size covers only the bytes inside the
//!   disk), and its `hashes` one content-identity hash per data block, in
//!   the same order (the block's node of the hash tree,
//!   [`crate::store::identity`]). Both are present or both absent. A layer
//!   is frozen with one piece, its own data file, and no checksums; the
//!   index is rewritten with them once they are computed.
//!   When a deleted snapshot's layer is merged into the layer above it,
//!   that layer takes over its pieces: no data moves. `snapshot full` adds
//!   a piece in a new data file holding the copies.
//! - `layers/<id>.log`: header [`LogHeader`]; records [`JournalRecord`]. The
//!   live layer's present blocks are the `data` and `zero` extents of all
//!   `Present` records applied in order (a later record's kind wins). A
//!   `Committed` record is appended once the operation that created the
//!   layer has committed. A journal that outgrows its content is rewritten
//!   atomically as one `Present` record and a `Committed` one.
//!
//! # Layer data
//!
//! `layers/<id>.data` is at least as long as the layer that made it. Block
//! `b` lives at byte `b × block_size`. Each data file belongs to exactly one
//! layer at a time (the one whose catalog record lists it in `files`), and
//! only the blocks that layer's index or journal names in it are data;
//! every other byte of the file reads as zero (a hole): writes that were
//! never journaled are punched out on recovery, zero blocks are punched
//! when they are recorded, and blocks a deleted snapshot no longer needs
//! are punched before its index stops naming them. So the data file of a
//! layer with no parent and one piece, read as it is, equals the layer's
//! image, which is what lets the kernel read such an image directly (FUSE
//! passthrough). (The one exception, a file `snapshot full` was filling
//! when a crash came, is never a layer's own file, so never read this way;
//! `gc` punches what it holds outside its layer's index.)
//!
//! # Durability and intents
//!
//! Every metadata file that is replaced is replaced by [`write_atomic`]:
//! write a temp file in `tmp/`, fsync it, rename it over the target, fsync
//! the directory. The catalog is the single commit point.
//!
//! An operation that creates layer files first commits an **intent** to the
//! catalog: the files it may create, as (layer id, kind). Its final commit
//! names the files it made and drops the intent in the same record, and then
//! a `Committed` record goes into the new live layer's journal. On open, a
//! file the catalog does not name is removed only if an open intent lists
//! it (the operation never committed); if such a journal holds `Committed`,
//! the operation did commit and the catalog is older than the layers, and
//! open refuses, changing nothing. The `.log` of a layer the
//! catalog says is frozen is removed too (its index holds its blocks). Any
//! other file nothing names is never deleted: it is moved to
//! `quarantine/<time>/` and reported. A file the catalog names that is
//! missing stops the open, with the file named, and nothing is changed.
//!
//! # Adding to the format
//!
//! - A new kind of record (a catalog change, a journal record) is a new
//!   enum variant at the end. Old files still decode; an older reader cannot
//!   decode the new variant, so a writer that emits one bumps
//!   [`FORMAT_VERSION`] or sets an incompatible feature bit in the headers
//!   of the files it writes, so older readers refuse by name, not by
//!   failing to decode.
//! - A payload struct never changes shape in place. To change one, copy the
//!   current struct into a frozen `v<N>` module (as [`v1`] is), bump
//!   [`FORMAT_VERSION`], and have the reader decode version N through the
//!   frozen struct and convert. Opening a repository of an older version
//!   upgrades it in place: every file is rewritten atomically in the new
//!   version, the catalog first and `strata.repo` last, and every step is
//!   idempotent, so an upgrade cut short by a crash is finished by the next
//!   open.
//! - A new kind of file gets a new extension in `layers/` (or a directory),
//!   a variant in [`LayerFileKind`], and intents that name it before it is
//!   created, so recovery knows what it may remove.
//! - Add the fixture of the new version (`tests/fixtures.rs`).
//!
//! # Versions
//!
//! - 1: first format. Documents are a single frame, unpadded; the journal is
//!   one frame then records of `u32` length, `u32` CRC-32C and a postcard
//!   `Vec<(u64, u64)>` of data extents; the index has one extent list and
//!   checksums for every present block; zero blocks are holes in the data
//!   file; no repository id, no intents; an `flock` on `lock`.
//! - 2: two copies of everything, duplicated journal and catalog records,
//!   the catalog as a log with intents, zero extents in journal and index,
//!   checksums computed after a freeze, repository ids, record locks.
//! - 3: index pieces carry a content-identity hash per data block
//!   (`hashes`). A version 2 index is read as one whose pieces have no
//!   checksums yet ([`v2`]); opening a version 2 repository rewrites only
//!   `strata.repo`, and each index is rewritten in version 3 when its
//!   hashes are first computed.

pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::storage::Storage;

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 3;
/// Incompatible feature bits this build understands.
pub const KNOWN_FEATURES: u32 = 0;
pub const HEADER_LEN: usize = 32;
/// Every copy starts on a multiple of this.
pub const SECTOR: u64 = 512;

pub const MAGIC_REPO: [u8; 8] = *b"STRATREP";
pub const MAGIC_CATALOG: [u8; 8] = *b"STRATCAT";
pub const MAGIC_INDEX: [u8; 8] = *b"STRATIDX";
pub const MAGIC_LOG: [u8; 8] = *b"STRATLOG";
pub const MAGIC_RECORD: [u8; 8] = *b"STRATREC";
const RECORD_HEADER: usize = 32;

/// Payload of `strata.repo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoHeader {
    /// Unix seconds when the repository was created.
    pub created: u64,
    /// Chosen at random at creation; every metadata file carries it.
    pub id: u64,
}

/// Header payload of `catalog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogHeader {
    pub repo: u64,
}

/// Payload of `layers/<id>.idx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    pub repo: u64,
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
    /// Where the layer's data blocks are: each piece names a data file and
    /// the blocks of it the layer holds.
    pub pieces: Vec<IndexPiece>,
    /// Blocks the layer holds as zeros.
    pub zero: Vec<(u64, u64)>,
}

/// Data blocks of a layer that live in one data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPiece {
    /// The data file `layers/<file>.data`.
    pub file: u64,
    pub data: Vec<(u64, u64)>,
    /// One CRC-32C per block of `data`, in block order, once computed.
    pub checksums: Option<Vec<u32>>,
    /// One content-identity hash per block of `data`, in block order,
    /// computed with the checksums.
    pub hashes: Option<Vec<[u8; 32]>>,
}

/// Header payload of `layers/<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHeader {
    pub repo: u64,
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
}

/// A record of `layers/<id>.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalRecord {
    /// Blocks that became present since the record before, as data or as
    /// zeros, as `(first block, count)` extents.
    Present {
        data: Vec<(u64, u64)>,
        zero: Vec<(u64, u64)>,
    },
    /// The operation that created this layer committed (appended once its
    /// catalog record is durable). A journal that has it belongs to a layer
    /// that was committed, whatever an older catalog says.
    Committed,
}

/// The kinds of file a layer may have, as intents name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LayerFileKind {
    Data,
    Index,
    Log,
}

impl LayerFileKind {
    pub fn extension(self) -> &'static str {
        match self {
            LayerFileKind::Data => "data",
            LayerFileKind::Index => "idx",
            LayerFileKind::Log => "log",
        }
    }

    pub fn from_extension(ext: &str) -> Option<LayerFileKind> {
        Some(match ext {
            "data" => LayerFileKind::Data,
            "idx" => LayerFileKind::Index,
            "log" => LayerFileKind::Log,
            _ => return None,
        })
    }
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

fn pad(n: u64) -> u64 {
    n.div_ceil(SECTOR) * SECTOR
}

/// A frame header plus payload of this build's version.
pub fn frame(magic: [u8; 8], payload: &[u8]) -> Vec<u8> {
    frame_of_version(magic, FORMAT_VERSION, payload)
}

pub fn frame_of_version(magic: [u8; 8], version: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&KNOWN_FEATURES.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(v)
}

/// Why a frame did not check out.
enum FrameFault {
    /// Damage: the frame cannot be trusted (another copy may be good).
    Damaged(String),
    /// A sound header that this build must refuse (newer version, unknown
    /// features): not damage, so no other copy is looked for.
    Refused(StoreError),
}

/// A frame that checked out: its version and payload range in `bytes`.
struct GoodFrame {
    version: u32,
    payload: std::ops::Range<usize>,
}

/// Checks the frame at the start of `bytes` against `magic`. Order
/// matters: a file of another kind is named as such before its checksum is
/// blamed, and a newer version is named before its features.
fn check_frame(path: &Path, magic: [u8; 8], bytes: &[u8]) -> Result<GoodFrame, FrameFault> {
    let damaged = |s: String| Err(FrameFault::Damaged(s));
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return damaged(format!(
            "it is {} bytes long, shorter than a header",
            bytes.len()
        ));
    };
    if h[..8] != magic {
        return damaged(format!(
            "it does not start with {:?}",
            String::from_utf8_lossy(&magic)
        ));
    }
    if crc32c::crc32c(&h[..28]) != u32_at(h, 28) {
        return damaged("header checksum mismatch".into());
    }
    let version = u32_at(h, 8);
    if version > FORMAT_VERSION {
        return Err(FrameFault::Refused(StoreError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        }));
    }
    if version == 0 {
        return damaged("format version 0 does not exist".into());
    }
    let features = u32_at(h, 12);
    if features & !KNOWN_FEATURES != 0 {
        return Err(FrameFault::Refused(StoreError::UnknownFeatures {
            path: path.to_owned(),
            bits: features & !KNOWN_FEATURES,
        }));
    }
    let len = u64_at(h, 16);
    let end = (HEADER_LEN as u64).checked_add(len);
    let Some(end) = end.filter(|&e| e <= bytes.len() as u64) else {
        return damaged(format!(
            "payload of {len} bytes runs past the end of the file"
        ));
    };
    let payload = HEADER_LEN..end as usize;
    if crc32c::crc32c(&bytes[payload.clone()]) != u32_at(h, 24) {
        return damaged("payload checksum mismatch".into());
    }
    Ok(GoodFrame { version, payload })
}

/// A rewrite of damaged bytes from their good copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A document as read: which version wrote it, its payload, where its
/// copies end, and what to rewrite to mend a damaged copy.
#[derive(Debug)]
pub struct Doc {
    pub version: u32,
    pub payload: Vec<u8>,
    /// Offset of the first byte after the document (both copies).
    pub end: u64,
    pub repairs: Vec<Repair>,
}

/// The bytes of a document: the frame twice, each copy padded to a sector.
pub fn doc_bytes(magic: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let f = frame(magic, payload);
    let mut out = f.clone();
    out.resize(pad(f.len() as u64) as usize, 0);
    out.extend_from_slice(&f);
    out.resize(2 * pad(f.len() as u64) as usize, 0);
    out
}

/// Reads a document from `bytes` (see the module doc). A version 1 file is
/// a single frame; its `end` is the end of that frame.
pub fn parse_doc(path: &Path, magic: [u8; 8], bytes: &[u8]) -> Result<Doc> {
    let first = match check_frame(path, magic, bytes) {
        Ok(f) => f,
        Err(FrameFault::Refused(e)) => return Err(e),
        Err(FrameFault::Damaged(why0)) => return doc_from_second_copy(path, magic, bytes, why0),
    };
    let payload = bytes[first.payload.clone()].to_vec();
    if first.version == 1 {
        return Ok(Doc {
            version: 1,
            payload,
            end: first.payload.end as u64,
            repairs: vec![],
        });
    }
    let copy_len = pad(first.payload.end as u64);
    let canonical = padded(&bytes[..first.payload.end]);
    let mut repairs = vec![];
    for at in [0, copy_len] {
        mend(bytes, at, &canonical, &mut repairs);
    }
    Ok(Doc {
        version: first.version,
        payload,
        end: 2 * copy_len,
        repairs,
    })
}

/// `bytes` padded with zeros to a whole number of sectors.
fn padded(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.resize(pad(bytes.len() as u64) as usize, 0);
    out
}

/// Adds a repair if the copy at `at` is not exactly `canonical` (padding
/// included, so that every flipped byte is put back).
fn mend(bytes: &[u8], at: u64, canonical: &[u8], repairs: &mut Vec<Repair>) {
    let found = bytes.get(at as usize..at as usize + canonical.len());
    if found != Some(canonical) {
        repairs.push(Repair {
            offset: at,
            bytes: canonical.to_vec(),
        });
    }
}

/// Copy 0 is damaged: find copy 1 at a sector boundary after it.
fn doc_from_second_copy(path: &Path, magic: [u8; 8], bytes: &[u8], why0: String) -> Result<Doc> {
    let mut at = SECTOR;
    while at < bytes.len() as u64 {
        match check_frame(path, magic, &bytes[at as usize..]) {
            Ok(f) if f.version >= 2 => {
                let copy_len = pad(f.payload.end as u64);
                // Copy 1 sits right after copy 0, which had the same length.
                if copy_len == at {
                    let canonical = padded(&bytes[at as usize..at as usize + f.payload.end]);
                    let mut repairs = vec![];
                    for c in [0, copy_len] {
                        mend(bytes, c, &canonical, &mut repairs);
                    }
                    return Ok(Doc {
                        version: f.version,
                        payload: bytes[at as usize + HEADER_LEN..at as usize + f.payload.end]
                            .to_vec(),
                        end: 2 * copy_len,
                        repairs,
                    });
                }
            }
            Err(FrameFault::Refused(e)) => return Err(e),
            _ => {}
        }
        at += SECTOR;
    }
    Err(StoreError::corrupt(
        path,
        format!("{why0} at offset 0, and no good second copy was found"),
    ))
}

/// Reads a document file through `storage`.
pub fn read_doc(storage: &dyn Storage, path: &Path, magic: [u8; 8]) -> Result<Doc> {
    let bytes = storage.read(path).map_err(StoreError::io(path))?;
    parse_doc(path, magic, &bytes)
}

/// Reads a document and decodes its payload, mending a damaged copy.
pub fn read_doc_payload<T: DeserializeOwned>(
    storage: &dyn Storage,
    path: &Path,
    magic: [u8; 8],
) -> Result<T> {
    let doc = read_doc(storage, path, magic)?;
    let value = decode(path, &doc.payload)?;
    apply_repairs(storage, path, &doc.repairs)?;
    Ok(value)
}

/// Rewrites damaged copies from their good twins and syncs.
pub fn apply_repairs(storage: &dyn Storage, path: &Path, repairs: &[Repair]) -> Result<()> {
    if repairs.is_empty() {
        return Ok(());
    }
    let f = storage.open(path, true).map_err(StoreError::io(path))?;
    for r in repairs {
        log::warn!(
            "{}: rewriting a damaged copy at offset {} (the data is intact)",
            path.display(),
            r.offset
        );
        f.write_all_at(&r.bytes, r.offset)
            .map_err(StoreError::io(path))?;
    }
    f.sync_data().map_err(StoreError::io(path))
}

/// One record copy's bytes, padded to a sector.
fn record_copy(seq: u64, copy: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pad((RECORD_HEADER + payload.len()) as u64) as usize);
    out.extend_from_slice(&MAGIC_RECORD);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(&[copy, 0, 0, 0]);
    let hcrc = crc32c::crc32c(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(pad(out.len() as u64) as usize, 0);
    out
}

/// Both copies of a record, as appended.
pub fn record_bytes(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = record_copy(seq, 0, payload);
    out.extend_from_slice(&record_copy(seq, 1, payload));
    out
}

/// How an append to a log failed.
#[derive(Debug)]
pub enum AppendError {
    /// The file is as it was before: the torn record was taken back out.
    TakenBack(std::io::Error),
    /// The record may or may not be in the file (and durable).
    Unknown(std::io::Error),
}

/// Appends `bytes` (whole records) at `end` and syncs. A failed write is
/// taken back out at once (truncated to `end` and synced), so that no later
/// record can follow garbage; if even that fails, or the sync fails, the
/// outcome is unknown and the writer must stop (see the module doc).
pub fn append_synced(
    file: &dyn super::storage::StorageFile,
    end: u64,
    bytes: &[u8],
) -> Result<(), AppendError> {
    if let Err(e) = file.write_all_at(bytes, end) {
        return match file.set_len(end).and_then(|_| file.sync_data()) {
            Ok(()) => Err(AppendError::TakenBack(e)),
            Err(_) => Err(AppendError::Unknown(e)),
        };
    }
    file.sync_data().map_err(AppendError::Unknown)
}

/// A whole log file: its header document, then the records numbered from 1.
pub fn log_bytes(magic: [u8; 8], header: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = doc_bytes(magic, header);
    for (i, r) in records.iter().enumerate() {
        out.extend_from_slice(&record_bytes(i as u64 + 1, r));
    }
    out
}

/// A record copy that checked out.
struct GoodRecord {
    seq: u64,
    copy: u8,
    payload: std::ops::Range<usize>,
    /// Padded length of this copy.
    len: u64,
}

fn record_at(bytes: &[u8], at: u64) -> Option<GoodRecord> {
    let at = usize::try_from(at).ok()?;
    let h = bytes.get(at..at.checked_add(RECORD_HEADER)?)?;
    if h[..8] != MAGIC_RECORD || crc32c::crc32c(&h[..28]) != u32_at(h, 28) || h[24] > 1 {
        return None;
    }
    let len = u32_at(h, 16) as usize;
    let start = at + RECORD_HEADER;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    if crc32c::crc32c(payload) != u32_at(h, 20) {
        return None;
    }
    Some(GoodRecord {
        seq: u64_at(h, 8),
        copy: h[24],
        payload: start..start + len,
        len: pad((RECORD_HEADER + len) as u64),
    })
}

/// A log as read.
#[derive(Debug)]
pub struct ParsedLog {
    /// The header document (version 1 logs stop here: their records are in
    /// another format, see [`v1`]).
    pub header: Doc,
    /// Record payloads, in order.
    pub records: Vec<Vec<u8>>,
    /// Offset just after the last good record: where the next one goes.
    pub end: u64,
    /// Bytes after `end` that are a torn, never acknowledged append.
    pub torn: u64,
    /// Damaged copies to rewrite from their good twins.
    pub repairs: Vec<Repair>,
}

/// Reads a log from `bytes` (see the module doc for the rules).
pub fn parse_log(path: &Path, magic: [u8; 8], bytes: &[u8]) -> Result<ParsedLog> {
    let mut header = parse_doc(path, magic, bytes)?;
    let mut repairs = std::mem::take(&mut header.repairs);
    if header.version == 1 {
        return Ok(ParsedLog {
            end: header.end,
            header,
            records: vec![],
            torn: 0,
            repairs,
        });
    }
    let mut records = Vec::new();
    let mut pos = header.end;
    let len = bytes.len() as u64;
    let mut seq = 1u64;
    while pos < len {
        if let Some(r) = record_at(bytes, pos).filter(|r| r.seq == seq && r.copy == 0) {
            let payload = &bytes[r.payload.clone()];
            let twin = pos + r.len;
            mend(bytes, pos, &record_copy(seq, 0, payload), &mut repairs);
            mend(bytes, twin, &record_copy(seq, 1, payload), &mut repairs);
            records.push(payload.to_vec());
            pos = twin + r.len;
            seq += 1;
            continue;
        }
        // Copy 0 is damaged or torn: look for copy 1 of the same record.
        let mut at = pos + SECTOR;
        let mut found = None;
        while at < len {
            if let Some(r) = record_at(bytes, at).filter(|r| r.seq == seq && r.copy == 1) {
                found = Some((at, r));
                break;
            }
            at += SECTOR;
        }
        if let Some((at, r)) = found {
            let payload = &bytes[r.payload.clone()];
            if at == pos + r.len {
                mend(bytes, pos, &record_copy(seq, 0, payload), &mut repairs);
            }
            mend(bytes, at, &record_copy(seq, 1, payload), &mut repairs);
            records.push(payload.to_vec());
            pos = at + r.len;
            seq += 1;
            continue;
        }
        // Neither copy: a torn tail, unless something valid follows.
        let mut at = pos + SECTOR;
        while at < len {
            if let Some(r) = record_at(bytes, at).filter(|r| r.seq >= seq) {
                return Err(StoreError::corrupt(
                    path,
                    format!(
                        "record {seq} at offset {pos} is damaged in both copies, and record {} \
                         follows at offset {at}",
                        r.seq
                    ),
                ));
            }
            at += SECTOR;
        }
        return Ok(ParsedLog {
            header,
            records,
            end: pos,
            torn: len - pos,
            repairs,
        });
    }
    Ok(ParsedLog {
        header,
        records,
        end: pos,
        torn: 0,
        repairs,
    })
}

/// Replaces `path` with `contents` so that after a crash it holds either the
/// old or the new contents, never a mix: write a temp file in `tmp`, fsync,
/// rename over `path`, fsync the directory.
///
/// A failure before the rename leaves `path` as it was. A failure of the
/// final directory sync is [`StoreError::Uncertain`]: the new contents are
/// in place but may not survive a power cut, so the caller must not undo
/// anything that the new contents name.
pub fn write_atomic(storage: &dyn Storage, tmp: &Path, path: &Path, contents: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp_path = scratch_path(tmp, &name);
    let written = storage.create_new(&tmp_path).and_then(|f| {
        f.write_all_at(contents, 0)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = storage.remove_file(&tmp_path);
        return Err(StoreError::Io {
            path: tmp_path,
            source: e,
        });
    }
    if let Err(e) = storage.rename(&tmp_path, path) {
        let _ = storage.remove_file(&tmp_path);
        return Err(StoreError::Io {
            path: path.to_owned(),
            source: e,
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    storage
        .sync_dir(dir)
        .map_err(|source| StoreError::Uncertain {
            path: path.to_owned(),
            source,
        })
}

/// A new name in `tmp/` for scratch: `NAME.PID.N.tmp`.
fn scratch_path(tmp: &Path, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    tmp.join(format!(
        "{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Refuses, with [`StoreError::io_len`]'s explanation, a file size the
/// host file system cannot hold: a sparse scratch file in `tmp/` is made
/// that long and removed. Nothing else is touched, so a grow can be
/// checked before the catalog records it.
pub fn probe_file_size(storage: &dyn Storage, tmp: &Path, size: u64) -> Result<()> {
    let path = scratch_path(tmp, "size-probe");
    let f = storage.create_new(&path).map_err(StoreError::io(&path))?;
    let grown = f.set_len(size).map_err(StoreError::io_len(&path, size));
    drop(f);
    let _ = storage.remove_file(&path);
    grown
}

/// Whether a name in `tmp/` is one [`write_atomic`] or
/// [`probe_file_size`] makes
/// (`NAME.PID.N.tmp`): scratch that nothing names, which open removes.
pub fn is_scratch_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".tmp") else {
        return false;
    };
    let mut parts = stem.rsplitn(3, '.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_some_and(|n| !n.is_empty())
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).map_err(StoreError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documents_survive_any_one_damaged_byte() {
        let p = Path::new("x");
        let bytes = doc_bytes(MAGIC_CATALOG, b"hello");
        let doc = parse_doc(p, MAGIC_CATALOG, &bytes).unwrap();
        assert_eq!(doc.payload, b"hello");
        assert!(doc.repairs.is_empty());
        assert_eq!(doc.end, bytes.len() as u64);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let doc = parse_doc(p, MAGIC_CATALOG, &bad).unwrap();
            assert_eq!(doc.payload, b"hello", "flip at {i}");
            let mut mended = bad.clone();
            for r in &doc.repairs {
                mended[r.offset as usize..r.offset as usize + r.bytes.len()]
                    .copy_from_slice(&r.bytes);
            }
            assert_eq!(mended, bytes, "flip at {i} not mended");
        }
        let e = parse_doc(p, MAGIC_INDEX, &bytes).unwrap_err().to_string();
        assert!(e.contains("does not start with \"STRATIDX\""), "{e}");
    }

    #[test]
    fn documents_damaged_in_both_copies_are_refused_with_the_offset() {
        let p = Path::new("x");
        let mut bytes = doc_bytes(MAGIC_CATALOG, b"hello");
        bytes[33] ^= 1;
        bytes[512 + 33] ^= 1;
        let e = parse_doc(p, MAGIC_CATALOG, &bytes).unwrap_err().to_string();
        assert!(e.contains("payload checksum mismatch at offset 0"), "{e}");
    }

    #[test]
    fn newer_version_is_named() {
        let bytes = doc_bytes(MAGIC_REPO, b"");
        let mut bad = bytes.clone();
        for copy in [0, 512] {
            bad[copy + 8..copy + 12].copy_from_slice(&7u32.to_le_bytes());
            let crc = crc32c::crc32c(&bad[copy..copy + 28]);
            bad[copy + 28..copy + 32].copy_from_slice(&crc.to_le_bytes());
        }
        let e = parse_doc(Path::new("r"), MAGIC_REPO, &bad).unwrap_err();
        assert!(matches!(e, StoreError::NewerFormat { found: 7, .. }), "{e}");
    }

    fn log_of(records: &[Vec<u8>]) -> Vec<u8> {
        log_bytes(MAGIC_LOG, b"head", records)
    }

    fn records() -> Vec<Vec<u8>> {
        (0..4u8)
            .map(|i| vec![i + 1; 10 + 300 * i as usize])
            .collect()
    }

    #[test]
    fn a_log_reads_back_its_records() {
        let recs = records();
        let bytes = log_of(&recs);
        let log = parse_log(Path::new("l"), MAGIC_LOG, &bytes).unwrap();
        assert_eq!(log.records, recs);
        assert_eq!(log.end, bytes.len() as u64);
        assert_eq!(log.torn, 0);
        assert!(log.repairs.is_empty());
    }

    #[test]
    fn any_one_flipped_byte_of_a_log_costs_nothing() {
        let recs = records();
        let bytes = log_of(&recs);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x08;
            let log = parse_log(Path::new("l"), MAGIC_LOG, &bad)
                .unwrap_or_else(|e| panic!("flip at {i}: {e}"));
            assert_eq!(log.records, recs, "flip at {i}");
            assert_eq!(log.torn, 0, "flip at {i}");
            let mut mended = bad.clone();
            for r in &log.repairs {
                mended[r.offset as usize..r.offset as usize + r.bytes.len()]
                    .copy_from_slice(&r.bytes);
            }
            assert_eq!(mended, bytes, "flip at {i} not mended");
        }
    }

    #[test]
    fn a_record_damaged_twice_before_others_is_refused_by_offset() {
        let recs = records();
        let bytes = log_of(&recs);
        let first = doc_bytes(MAGIC_LOG, b"head").len();
        let mut bad = bytes.clone();
        bad[first + 40] ^= 1; // record 1, copy 0
        bad[first + 512 + 40] ^= 1; // record 1, copy 1
        let e = parse_log(Path::new("l"), MAGIC_LOG, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "record 1 at offset {first} is damaged in both copies"
            )),
            "{e}"
        );
    }

    proptest! {
        /// A torn append (any prefix of the last record's bytes, or its
        /// copies written in either order) loses at most that record, and
        /// keeps every record before it.
        #[test]
        fn torn_appends_cut_only_the_last_record(cut in 0usize..2048, swap in any::<bool>(), junk in any::<u8>()) {
            let recs = records();
            let whole = log_of(&recs);
            let before = log_of(&recs[..3]);
            let last = &whole[before.len()..];
            let cut = cut % last.len();
            let mut torn = before.clone();
            if swap {
                // Copy 1 reached the disk, copy 0 did not.
                let half = last.len() / 2;
                torn.extend(std::iter::repeat_n(junk, half));
                torn.extend_from_slice(&last[half..]);
            } else {
                torn.extend_from_slice(&last[..cut]);
                torn.extend(std::iter::repeat_n(junk, last.len() - cut));
            }
            let log = parse_log(Path::new("l"), MAGIC_LOG, &torn).unwrap();
            prop_assert!(log.records == recs[..3] || log.records == recs);
            if log.records.len() == 3 {
                prop_assert_eq!(log.end, before.len() as u64);
                prop_assert_eq!(log.torn, last.len() as u64);
            }
        }
    }
}
