//! The send stream — the one normative description of its format.
//!
//! `strata send` writes a snapshot as a stream of bytes that any transport
//! can carry (a pipe, ssh, a file); `strata receive` recreates the snapshot
//! from it in another repository. A *full* stream holds every block the
//! snapshot holds; an *incremental* one the ranges that differ from a base
//! snapshot the receiver already has, named by its content identity
//! ([`crate::store::identity`]).
//!
//! # Layout
//!
//! A 16-byte preamble, then records:
//!
//! | offset | width | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `STRATSND` |
//! | 8 | 4 | stream format version (`u32` LE): 1 |
//! | 12 | 4 | zero |
//!
//! Each record is a 24-byte header and a payload; integers little-endian:
//!
//! | offset | width | field |
//! | --- | --- | --- |
//! | 0 | 2 | record type (`u16`) |
//! | 2 | 2 | flags (`u16`): bit 0 set = optional; other bits zero |
//! | 4 | 4 | payload length (`u32`), at most [`MAX_PAYLOAD`] |
//! | 8 | 8 | sequence number (`u64`): 0 for the first record, then +1 |
//! | 16 | 4 | CRC-32C of the payload |
//! | 20 | 4 | CRC-32C of bytes 0..20 |
//!
//! A reader refuses a record whose checksums fail, whose sequence number is
//! not the next (a record lost, reordered or repeated), or whose type it
//! does not know unless the record is optional, which it skips. Records,
//! in order:
//!
//! | type | record | payload |
//! | --- | --- | --- |
//! | 1 | `Begin`, first | [`Begin`], postcard-encoded |
//! | 2 | `Data` | offset (`u64`), then the bytes at that offset of the image |
//! | 3 | `Zero` | offset (`u64`), length (`u64`): the range reads as zeros |
//! | 4 | `End`, last | [`End`], postcard-encoded: the record count, the stream's hash, the result's identity |
//!
//! `Data` and `Zero` ranges lie inside the image, start on a block
//! boundary, end on one (or at the image's end), and come in increasing
//! order without overlap. Bytes of the image they do not cover are as the
//! base has them (an empty disk for a full stream: zeros). A `Data` payload
//! carries at most [`MAX_DATA`] bytes.
//!
//! # Checks
//!
//! - Each record: its two CRCs and its sequence number.
//! - The whole stream: `End` carries the BLAKE3 hash of every byte before
//!   it (preamble included) and the number of records; a stream cut short,
//!   spliced or with a record dropped is refused.
//! - The result: `Begin` names the snapshot's content identity, and the
//!   receiver computes the identity of what it built and compares, before
//!   the snapshot becomes visible. An incremental stream names its base's
//!   identity; a receiver without that exact base refuses it before
//!   writing anything.
//!
//! # Resuming
//!
//! A receive cut short keeps what it got; its *resume token* says which
//! snapshot it was receiving (identity, base identity) and up to which
//! offset it has the image. `send --resume TOKEN` checks the token against
//! the snapshot it is asked to send and writes a stream whose `Begin` has
//! `resume_from` set, holding only the ranges at and after that offset.
//!
//! # Versions
//!
//! - 1: this description.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"STRATSND";
pub const VERSION: u32 = 1;
const PREAMBLE: usize = 16;
const HEADER: usize = 24;
/// Largest `Data` payload's data.
pub const MAX_DATA: usize = 1 << 20;
/// Largest payload of any record.
pub const MAX_PAYLOAD: u32 = (MAX_DATA + 64) as u32;

const T_BEGIN: u16 = 1;
const T_DATA: u16 = 2;
const T_ZERO: u16 = 3;
const T_END: u16 = 4;
const F_OPTIONAL: u16 = 1;

/// What a stream holds (payload of `Begin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    pub disk: String,
    pub snapshot: String,
    /// Unix nanoseconds when the snapshot was taken.
    pub taken: u64,
    pub size: u64,
    pub block_size: u32,
    /// The snapshot's content identity.
    pub identity: [u8; 32],
    /// For an incremental stream: the base's identity and size.
    pub base: Option<Base>,
    /// For a resumed stream: the offset from which it carries the ranges.
    pub resume_from: Option<u64>,
    /// Bytes the `Data` records will carry, for progress.
    pub data_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base {
    pub identity: [u8; 32],
    pub size: u64,
    /// Its name at the sender, for messages.
    pub name: String,
}

/// Payload of `End`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Records before this one.
    pub records: u64,
    /// BLAKE3 of every byte of the stream before this record.
    pub stream_hash: [u8; 32],
    /// The content identity of the result: the snapshot's, as in `Begin`.
    pub identity: [u8; 32],
}

/// One record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Begin(Begin),
    Data { offset: u64, data: Vec<u8> },
    Zero { offset: u64, len: u64 },
    End(End),
}

/// What is wrong with a stream, named so a person knows what happened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the stream ends early, {0}: it was cut short (an interrupted send or a truncated file)"
    )]
    Truncated(String),
    #[error("this is not a strata send stream (it does not start with STRATSND)")]
    NotAStream,
    #[error(
        "the stream is in format version {0}; this strata reads version {VERSION}: upgrade strata"
    )]
    Version(u32),
    #[error("record {seq} of the stream is damaged ({what}): the stream was corrupted in transit or storage")]
    Damaged { seq: u64, what: String },
    #[error("record {got} of the stream came where record {want} was expected: records were lost, reordered or repeated")]
    OutOfOrder { want: u64, got: u64 },
    #[error("record {seq} has type {kind}, which this strata does not know and must not skip: upgrade strata")]
    UnknownRequired { seq: u64, kind: u16 },
    #[error("the stream is malformed at record {seq}: {what}")]
    Malformed { seq: u64, what: String },
}

fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

/// Writes a stream: the preamble at once, then records, hashing every
/// byte for `End`.
pub struct Writer<W: Write> {
    out: W,
    seq: u64,
    hash: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut pre = [0u8; PREAMBLE];
        pre[..8].copy_from_slice(&MAGIC);
        pre[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out.write_all(&pre)?;
        let mut hash = blake3::Hasher::new();
        hash.update(&pre);
        Ok(Writer {
            out,
            seq: 0,
            hash,
            bytes: PREAMBLE as u64,
        })
    }

    fn record(&mut self, kind: u16, flags: u16, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut h = [0u8; HEADER];
        h[0..2].copy_from_slice(&kind.to_le_bytes());
        h[2..4].copy_from_slice(&flags.to_le_bytes());
        h[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        let mut c = 0u32;
        for p in parts {
            c = crc32c::crc32c_append(c, p);
        }
        h[16..20].copy_from_slice(&c.to_le_bytes());
        let hc = crc(&h[..20]);
        h[20..24].copy_from_slice(&hc.to_le_bytes());
        self.out.write_all(&h)?;
        self.hash.update(&h);
        for p in parts {
            self.out.write_all(p)?;
            self.hash.update(p);
        }
        self.seq += 1;
        self.bytes += (HEADER + len) as u64;
        Ok(())
    }

    pub fn begin(&mut self, b: &Begin) -> io::Result<()> {
        self.record(T_BEGIN, 0, &[&encode(b)])
    }

    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        debug_assert!(data.len() <= MAX_DATA);
        self.record(T_DATA, 0, &[&offset.to_le_bytes(), data])
    }

    pub fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut p = [0u8; 16];
        p[..8].copy_from_slice(&offset.to_le_bytes());
        p[8..].copy_from_slice(&len.to_le_bytes());
        self.record(T_ZERO, 0, &[&p])
    }

    /// An optional record of a type readers may not know (for tests of
    /// the skipping rule, and for future additions).
    pub fn optional(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        self.record(kind, F_OPTIONAL, &[payload])
    }

    /// Writes `End`, naming the result's `identity`, and flushes; returns
    /// the bytes written in all.
    pub fn end(mut self, identity: [u8; 32]) -> io::Result<u64> {
        let end = End {
            records: self.seq,
            stream_hash: *self.hash.finalize().as_bytes(),
            identity,
        };
        self.record(T_END, 0, &[&encode(&end)])?;
        self.out.flush()?;
        Ok(self.bytes)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

/// Reads a stream record by record, checking each (see the module doc).
pub struct Reader<R: Read> {
    input: R,
    seq: u64,
    hash: blake3::Hasher,
    /// Bytes read so far.
    pub bytes: u64,
    begun: bool,
    ended: bool,
    /// Where the next range may start, and the image size.
    next_offset: u64,
    size: u64,
    block_size: u64,
    /// The result's identity, as `Begin` names it.
    identity: [u8; 32],
}

impl<R: Read> Reader<R> {
    /// Reads and checks the preamble.
    pub fn new(mut input: R) -> Result<Self, StreamError> {
        let mut pre = [0u8; PREAMBLE];
        read_full(&mut input, &mut pre, "in its first 16 bytes")?;
        if pre[..8] != MAGIC {
            return Err(StreamError::NotAStream);
        }
        let version = u32::from_le_bytes(pre[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        let mut hash = blake3::Hasher::new();
        hash.update(&pre);
        Ok(Reader {
            input,
            seq: 0,
            hash,
            bytes: PREAMBLE as u64,
            begun: false,
            ended: false,
            next_offset: 0,
            size: 0,
            block_size: 1,
            identity: [0; 32],
        })
    }

    /// The next record; `None` after `End`.
    pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let seq = self.seq;
            let mut h = [0u8; HEADER];
            read_full(&mut self.input, &mut h, &format!("before record {seq}"))?;
            let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
            let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            if crc(&h[..20]) != u32_at(20) {
                return Err(StreamError::Damaged {
                    seq,
                    what: "its header checksum does not match".into(),
                });
            }
            let got = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            if got != seq {
                return Err(StreamError::OutOfOrder { want: seq, got });
            }
            let (kind, flags, len) = (u16_at(0), u16_at(2), u32_at(4));
            if len > MAX_PAYLOAD {
                return Err(StreamError::Malformed {
                    seq,
                    what: format!("a payload of {len} bytes is larger than any record's"),
                });
            }
            if flags & !F_OPTIONAL != 0 {
                return Err(StreamError::Malformed {
                    seq,
                    what: format!("unknown flags {flags:#x}"),
                });
            }
            // A Data record's offset is read apart from its bytes, so the
            // bytes need no copy to be handed over.
            let split = if kind == T_DATA && len >= 8 { 8 } else { 0 };
            let mut head = [0u8; 8];
            let mut payload = vec![0u8; len as usize - split];
            let inside = format!("inside record {seq}");
            read_full(&mut self.input, &mut head[..split], &inside)?;
            read_full(&mut self.input, &mut payload, &inside)?;
            let c = crc32c::crc32c_append(crc(&head[..split]), &payload);
            if c != u32_at(16) {
                return Err(StreamError::Damaged {
                    seq,
                    what: "its payload checksum does not match".into(),
                });
            }
            let before = *self.hash.clone().finalize().as_bytes();
            self.hash.update(&h);
            self.hash.update(&head[..split]);
            self.hash.update(&payload);
            self.bytes += (HEADER + split + payload.len()) as u64;
            self.seq += 1;
            let bad = |what: String| StreamError::Malformed { seq, what };
            let rec = match kind {
                T_BEGIN => {
                    if self.begun {
                        return Err(bad("a second Begin record".into()));
                    }
                    let b: Begin = postcard::from_bytes(&payload)
                        .map_err(|e| bad(format!("its Begin record does not decode ({e})")))?;
                    crate::store::catalog::check_block_size(b.block_size as u64)
                        .map_err(|e| bad(format!("block size: {e}")))?;
                    crate::store::catalog::check_disk_size(b.size)
                        .map_err(|e| bad(format!("size: {e}")))?;
                    if b.resume_from.is_some_and(|r| r > b.size) {
                        return Err(bad("it resumes past the image's end".into()));
                    }
                    self.begun = true;
                    self.size = b.size;
                    self.block_size = b.block_size as u64;
                    self.next_offset = b.resume_from.unwrap_or(0);
                    self.identity = b.identity;
                    Record::Begin(b)
                }
                _ if !self.begun => return Err(bad("the stream does not start with Begin".into())),
                T_DATA | T_ZERO => {
                    let (offset, len, data) = if kind == T_DATA {
                        if split != 8 || payload.len() > MAX_DATA {
                            return Err(bad("a Data record of impossible length".into()));
                        }
                        (
                            u64::from_le_bytes(head),
                            payload.len() as u64,
                            Some(payload),
                        )
                    } else {
                        if payload.len() != 16 {
                            return Err(bad("a Zero record of the wrong length".into()));
                        }
                        let offset =
                            u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
                        let len = u64::from_le_bytes(payload[8..].try_into().unwrap_or_default());
                        (offset, len, None)
                    };
                    self.check_range(offset, len).map_err(bad)?;
                    match data {
                        Some(data) => Record::Data { offset, data },
                        None => Record::Zero { offset, len },
                    }
                }
                T_END => {
                    let e: End = postcard::from_bytes(&payload)
                        .map_err(|e| bad(format!("its End record does not decode ({e})")))?;
                    if e.records != seq || e.stream_hash != before {
                        return Err(StreamError::Damaged {
                            seq,
                            what:
                                "the whole-stream hash in End does not match the records before it"
                                    .into(),
                        });
                    }
                    if e.identity != self.identity {
                        return Err(bad(
                            "its End names another result than its Begin (identities differ)"
                                .into(),
                        ));
                    }
                    self.ended = true;
                    Record::End(e)
                }
                k if flags & F_OPTIONAL != 0 => {
                    log::debug!("skipping optional stream record of type {k}");
                    continue;
                }
                k => return Err(StreamError::UnknownRequired { seq, kind: k }),
            };
            return Ok(Some(rec));
        }
    }

    fn check_range(&mut self, offset: u64, len: u64) -> Result<(), String> {
        let end = offset
            .checked_add(len)
            .filter(|&e| len > 0 && e <= self.size)
            .ok_or_else(|| format!("a range of {len} bytes at {offset} lies outside the image"))?;
        if offset < self.next_offset {
            return Err(format!(
                "a range at {offset} comes after one that ended at {}",
                self.next_offset
            ));
        }
        if offset % self.block_size != 0 || (end % self.block_size != 0 && end != self.size) {
            return Err(format!(
                "a range at {offset} of {len} bytes does not start and end on {}-byte blocks",
                self.block_size
            ));
        }
        self.next_offset = end;
        Ok(())
    }

    /// Whether `End` was read.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

/// Reads exactly `buf.len()` bytes, or says the stream was cut short.
fn read_full(r: &mut impl Read, buf: &mut [u8], where_: &str) -> Result<(), StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(StreamError::Truncated(where_.to_string())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StreamError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf).unwrap();
            w.begin(&Begin {
                disk: "vm".into(),
                snapshot: "s1".into(),
                taken: 1,
                size: 1 << 20,
                block_size: 65536,
                identity: [7; 32],
                base: None,
                resume_from: None,
                data_bytes: 65536,
            })
            .unwrap();
            w.data(0, &[1u8; 65536]).unwrap();
            w.optional(999, b"a note from the future").unwrap();
            w.zero(131072, 65536).unwrap();
            w.end([7; 32]).unwrap();
        }
        buf
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Record>, StreamError> {
        let mut r = Reader::new(bytes)?;
        let mut out = vec![];
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_skips_optional_records() {
        let recs = read_all(&sample()).unwrap();
        assert_eq!(recs.len(), 4);
        assert!(matches!(recs[1], Record::Data { offset: 0, .. }));
        assert!(matches!(
            recs[2],
            Record::Zero {
                offset: 131072,
                len: 65536
            }
        ));
        assert!(matches!(recs[3], Record::End(_)));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let good = sample();
        for at in 0..good.len() {
            if at > 300 && at < 65000 && at % 97 != 0 {
                continue; // the data bytes: a sample of them
            }
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            assert!(read_all(&bad).is_err(), "flip at {at} was accepted");
        }
        for cut in (0..good.len()).step_by(61) {
            assert!(read_all(&good[..cut]).is_err(), "cut at {cut} was accepted");
        }
    }
}
