//! Format version 1, frozen: the payloads as version 1 wrote them, read only
//! to upgrade a repository (see `super::super::upgrade`). Nothing here may
//! change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Payload of a version 1 `strata.repo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoHeader {
    pub created: u64,
}

/// Payload of a version 1 `catalog`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Catalog {
    pub generation: u64,
    pub next_layer: u64,
    pub next_seq: u64,
    pub disks: BTreeMap<String, DiskRecord>,
    pub snapshots: BTreeMap<String, BTreeMap<String, SnapshotRecord>>,
    pub layers: BTreeMap<u64, LayerRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskRecord {
    pub size: u64,
    pub block_size: u32,
    pub live: u64,
    pub created: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub layer: u64,
    pub taken: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub parent: Option<u64>,
    pub block_size: u32,
    pub size: u64,
    pub frozen: Option<FrozenInfo>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FrozenInfo {
    pub blocks: u64,
    pub stored_bytes: u64,
}

/// Payload of a version 1 `layers/<id>.idx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerIndex {
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
    pub extents: Vec<(u64, u64)>,
    pub checksums: Vec<u32>,
}

/// Header payload of a version 1 `layers/<id>.log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogHeader {
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
}

/// The extents of a version 1 journal's records (`u32` length, `u32`
/// CRC-32C, postcard `Vec<(u64, u64)>`). A record that is short or fails its
/// checksum ends them if nothing valid follows it (a torn append, never
/// acknowledged); if a valid record does follow, the journal is damaged and
/// the offset of the bad record (counted from the first record) is the error.
pub fn journal_extents(bytes: &[u8], blocks: u64) -> Result<Vec<(u64, u64)>, usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match record_at(&bytes[pos..], blocks) {
            Some((extents, len)) => {
                out.extend(extents);
                pos += len;
            }
            None => {
                if (pos + 1..bytes.len()).any(|at| record_at(&bytes[at..], blocks).is_some()) {
                    return Err(pos);
                }
                break;
            }
        }
    }
    Ok(out)
}

fn record_at(bytes: &[u8], blocks: u64) -> Option<(Vec<(u64, u64)>, usize)> {
    let head = bytes.get(..8)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    if len == 0 || crc32c::crc32c(payload) != crc {
        return None;
    }
    let extents = postcard::from_bytes::<Vec<(u64, u64)>>(payload).ok()?;
    if extents
        .iter()
        .any(|&(f, n)| f.checked_add(n).is_none_or(|e| e > blocks))
    {
        return None;
    }
    Some((extents, 8 + len))
}
