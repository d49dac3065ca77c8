//! Sending a snapshot as a stream ([`crate::store::stream`]): all it holds,
//! or the ranges that differ from a base, read from its image.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::store::error::{Result, StoreError};
use crate::store::image::ImageRead;
use crate::store::layer::is_zero;
use crate::store::names::{ImageRef, SnapshotRef};
use crate::store::ops::bookmark;
use crate::store::ops::diff::Diff;
use crate::store::stream::{Base, Begin, Writer, MAX_DATA};
use crate::store::Repository;

/// Where an interrupted receive stopped: handed from `receive --status` to
/// `send --resume`. The sender checks it against the snapshot it sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeToken {
    pub identity: [u8; 32],
    pub base: Option<[u8; 32]>,
    /// The receiver has every range before this offset.
    pub offset: u64,
}

impl ResumeToken {
    /// `1-` and the hex of the token and its CRC-32C.
    pub fn encode(&self) -> String {
        let mut b = postcard::to_stdvec(self).unwrap_or_default();
        let c = crc32c::crc32c(&b);
        b.extend_from_slice(&c.to_le_bytes());
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("1-{hex}")
    }

    pub fn parse(s: &str) -> Result<ResumeToken> {
        let bad = || {
            StoreError::invalid(
                "resume token",
                "it is damaged or not a token; copy it again from `strata receive --status`",
            )
        };
        let hex = s.trim().strip_prefix("1-").ok_or_else(bad)?;
        if hex.len() % 2 != 0 || hex.len() > 512 {
            return Err(bad());
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let (body, crc) = bytes.split_at(bytes.len().checked_sub(4).ok_or_else(bad)?);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(bad());
        }
        postcard::from_bytes(body).map_err(|_| bad())
    }
}

/// What an incremental send is taken from: a snapshot, or the bookmark a
/// deleted one left (`DISK#SNAP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendBase {
    Snapshot(SnapshotRef),
    Bookmark(SnapshotRef),
}

impl SendBase {
    /// Parses `DISK@SNAP` or `DISK#SNAP`.
    pub fn parse(s: &str) -> Result<SendBase, crate::store::names::NameError> {
        match s.split_once('#') {
            Some((d, b)) => Ok(SendBase::Bookmark(SnapshotRef::parse(&format!("{d}@{b}"))?)),
            None => Ok(SendBase::Snapshot(SnapshotRef::parse(s)?)),
        }
    }
}

impl std::fmt::Display for SendBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendBase::Snapshot(r) => r.fmt(f),
            SendBase::Bookmark(r) => write!(f, "{}#{}", r.disk, r.snap),
        }
    }
}

/// What a send wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReport {
    /// Bytes of the stream.
    pub stream_bytes: u64,
    /// Bytes of data it carries.
    pub data_bytes: u64,
    pub incremental: bool,
    pub resumed_from: Option<u64>,
    pub identity: String,
}

impl Repository {
    /// Writes snapshot `r` to `out` as a stream: full, or with `from` the
    /// ranges that differ from that snapshot (which the receiver must
    /// have); with `resume`, only what an interrupted receive lacks.
    pub fn send(
        &self,
        r: &SnapshotRef,
        from: Option<&SendBase>,
        resume: Option<&ResumeToken>,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<SendReport> {
        let info = self.snapshot_info(r)?;
        let identity = self.identity(r)?;
        let check = |name: &dyn std::fmt::Display, block_size: u32, size: u64| {
            if block_size != info.block_size {
                return Err(StoreError::Refused(format!(
                    "{name} and {r} have different block sizes; send {r} in full"
                )));
            }
            if size > info.size {
                return Err(StoreError::Refused(format!(
                    "{name} is larger than {r} (a later size of the disk): \
                     send from an older snapshot, or in full"
                )));
            }
            Ok(())
        };
        // The base, and the blocks that may differ from it.
        let (base, blocks) = match from {
            Some(SendBase::Snapshot(b)) => {
                let bi = self.snapshot_info(b)?;
                check(b, bi.block_size, bi.size)?;
                let diff = self.diff(
                    Some(&ImageRef::Snapshot(b.clone())),
                    &ImageRef::Snapshot(r.clone()),
                )?;
                let base = Base {
                    identity: self.identity(b)?.0,
                    size: bi.size,
                    name: b.to_string(),
                };
                (Some(base), diff.blocks)
            }
            Some(SendBase::Bookmark(b)) => {
                let bm = self.bookmark(b)?;
                let name = from.map(ToString::to_string).unwrap_or_default();
                check(&name, bm.block_size, bm.size)?;
                let (_, hashes) = self.snapshot_hashes(r)?;
                let base = Base {
                    identity: bm.identity,
                    size: bm.size,
                    name,
                };
                (Some(base), bookmark::differing(&bm.blocks, &hashes))
            }
            None => {
                let diff = self.diff(None, &ImageRef::Snapshot(r.clone()))?;
                (None, diff.blocks)
            }
        };
        let resume_from = match resume {
            Some(t) => {
                if t.identity != identity.0 {
                    return Err(StoreError::Refused(format!(
                        "the resume token is for another snapshot than {r}; \
                         resume with the snapshot the receive was for"
                    )));
                }
                if t.base != base.as_ref().map(|b| b.identity) {
                    return Err(StoreError::Refused(
                        "the resume token is for a stream with another base \
                         (--from); give the same --from as the first send"
                            .into(),
                    ));
                }
                let bs = info.block_size as u64;
                if t.offset > info.size || t.offset % bs != 0 {
                    return Err(StoreError::invalid(
                        "resume token",
                        "its offset does not fit the snapshot",
                    ));
                }
                Some(t.offset)
            }
            None => None,
        };
        let diff = Diff {
            size: info.size,
            from_size: base.as_ref().map_or(0, |b| b.size),
            block_size: info.block_size,
            blocks,
        };
        let start = resume_from.unwrap_or(0);
        let ranges: Vec<(u64, u64)> = diff
            .ranges()
            .into_iter()
            .filter_map(|(o, l)| {
                let end = o + l;
                (end > start).then(|| (o.max(start), end - o.max(start)))
            })
            .collect();
        let total: u64 = ranges.iter().map(|r| r.1).sum();
        let img = self.open_snapshot(r)?;
        let io = |e: std::io::Error| StoreError::Io {
            path: "the send stream".into(),
            source: e,
        };
        let mut w = Writer::new(out).map_err(io)?;
        w.begin(&Begin {
            disk: r.disk.to_string(),
            snapshot: r.snap.to_string(),
            taken: info.taken,
            size: info.size,
            block_size: info.block_size,
            identity: identity.0,
            base,
            resume_from,
            data_bytes: total,
        })
        .map_err(io)?;
        let bs = info.block_size as usize;
        let mut buf = vec![0u8; MAX_DATA];
        let mut done = 0u64;
        let mut data_bytes = 0u64;
        for (offset, len) in ranges {
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                let n = (end - pos).min(MAX_DATA as u64) as usize;
                img.read_at(pos, &mut buf[..n])?;
                // Runs of all-zero blocks go as Zero records, the rest as Data.
                let mut i = 0;
                while i < n {
                    let zero = is_zero(&buf[i..(i + bs).min(n)]);
                    let mut j = i;
                    while j < n && is_zero(&buf[j..(j + bs).min(n)]) == zero {
                        j = (j + bs).min(n);
                    }
                    let at = pos + i as u64;
                    if zero {
                        w.zero(at, (j - i) as u64).map_err(io)?;
                    } else {
                        w.data(at, &buf[i..j]).map_err(io)?;
                        data_bytes += (j - i) as u64;
                    }
                    i = j;
                }
                pos += n as u64;
                done += n as u64;
                progress(done, total);
            }
        }
        let stream_bytes = w.end(identity.0).map_err(io)?;
        // The replica's next base: kept as a bookmark if `r` goes.
        if let Err(e) = self.bookmark_sent(r) {
            log::warn!("sent {r}, but could not leave a bookmark of it: {e}");
        }
        Ok(SendReport {
            stream_bytes,
            data_bytes,
            incremental: from.is_some(),
            resumed_from: resume_from,
            identity: identity.to_string(),
        })
    }
}
