//! The catalog: every disk, snapshot and layer of a repository, and the
//! repository's single commit point (format: [`super::format`]).
//!
//! A decoded catalog is not trusted until [`Catalog::validate`] has checked
//! that every reference points at a layer of the right kind and size, so the
//! rest of the store can index it without further checks.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::names::{DiskName, LayerId, SnapName};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Catalog {
    /// Bumped by every commit.
    pub generation: u64,
    /// The next layer id to hand out; larger than every id in `layers`.
    pub next_layer: u64,
    /// The next snapshot sequence number; orders snapshots as taken.
    pub next_seq: u64,
    pub disks: BTreeMap<DiskName, DiskRecord>,
    /// Snapshots by disk name. A disk's snapshots outlive the disk.
    pub snapshots: BTreeMap<DiskName, BTreeMap<SnapName, SnapshotRecord>>,
    pub layers: BTreeMap<LayerId, LayerRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub size: u64,
    pub block_size: u32,
    /// The writable top layer; its parent chain is the disk's history.
    pub live: LayerId,
    /// Unix nanoseconds.
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The frozen layer this snapshot ends with.
    pub layer: LayerId,
    /// Unix nanoseconds when the snapshot was taken.
    pub taken: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer below this one; `None` for the bottom of a chain.
    pub parent: Option<LayerId>,
    pub block_size: u32,
    pub size: u64,
    /// Set once the layer is frozen; `None` while it is a live layer.
    pub frozen: Option<FrozenInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrozenInfo {
    /// Present blocks.
    pub blocks: u64,
    /// Bytes the layer's data file occupies on disk.
    pub stored_bytes: u64,
}

/// Smallest and largest block size, and the sector every size is a multiple of.
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;
pub const SECTOR: u64 = 512;

/// Checks a block size: a power of two from 4 KiB to 1 MiB.
pub fn check_block_size(bs: u64) -> Result<u32> {
    if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE as u64..=MAX_BLOCK_SIZE as u64).contains(&bs) {
        return Err(StoreError::invalid(
            "block size",
            format!("{bs} bytes; it must be a power of two from 4K to 1M (default 64K)"),
        ));
    }
    Ok(bs as u32)
}

/// Checks a disk size: more than zero, a multiple of 512 bytes, and small
/// enough that every byte offset fits in an `i64` (what `lseek` can address).
pub fn check_disk_size(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(StoreError::invalid("size", "a disk cannot be 0 bytes"));
    }
    if size % SECTOR != 0 {
        return Err(StoreError::invalid(
            "size",
            format!("{size} bytes is not a multiple of 512 bytes"),
        ));
    }
    if size > i64::MAX as u64 / 2 {
        return Err(StoreError::invalid(
            "size",
            format!("{size} bytes is larger than strata supports (4 EiB)"),
        ));
    }
    Ok(size)
}

impl Catalog {
    /// Checks every cross-reference; on success the catalog is trusted.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(StoreError::corrupt(path, what));
        for (id, layer) in &self.layers {
            if id.0 >= self.next_layer {
                return bad(format!(
                    "layer {id} is not below next_layer {}",
                    self.next_layer
                ));
            }
            if check_block_size(layer.block_size as u64).is_err()
                || check_disk_size(layer.size).is_err()
            {
                return bad(format!("layer {id} has an invalid size or block size"));
            }
            if let Some(p) = layer.parent {
                // Parents are always older, so chains cannot loop.
                let Some(parent) = self.layers.get(&p).filter(|_| p < *id) else {
                    return bad(format!("layer {id} has a missing or newer parent {p}"));
                };
                if parent.frozen.is_none()
                    || parent.block_size != layer.block_size
                    || parent.size != layer.size
                {
                    return bad(format!("layer {id} does not fit its parent {p}"));
                }
            }
        }
        let mut live_owner = BTreeMap::new();
        for (name, disk) in &self.disks {
            let Some(live) = self.layers.get(&disk.live) else {
                return bad(format!("disk {name} has no live layer {}", disk.live));
            };
            if live.frozen.is_some() || live.size != disk.size || live.block_size != disk.block_size
            {
                return bad(format!(
                    "disk {name}'s live layer {} does not fit it",
                    disk.live
                ));
            }
            if live_owner.insert(disk.live, name).is_some() {
                return bad(format!("layer {} is live in two disks", disk.live));
            }
        }
        for (id, layer) in &self.layers {
            if layer.frozen.is_none() && !live_owner.contains_key(id) {
                return bad(format!("live layer {id} belongs to no disk"));
            }
        }
        for (disk, snaps) in &self.snapshots {
            for (snap, rec) in snaps {
                let frozen = self.layers.get(&rec.layer).and_then(|l| l.frozen);
                if frozen.is_none() || rec.seq >= self.next_seq {
                    return bad(format!("snapshot {disk}@{snap} points at no frozen layer"));
                }
            }
        }
        Ok(())
    }

    /// The chain under and including `top`, newest first.
    pub fn chain(&self, top: LayerId) -> Vec<LayerId> {
        let mut out = vec![top];
        let mut cur = top;
        while let Some(p) = self.layers.get(&cur).and_then(|l| l.parent) {
            out.push(p);
            cur = p;
        }
        out
    }

    pub fn allocate_layer(&mut self) -> LayerId {
        let id = LayerId(self.next_layer);
        self.next_layer += 1;
        id
    }

    /// The disk's snapshots in the order they were taken.
    pub fn snapshots_of(&self, disk: &DiskName) -> Vec<(&SnapName, &SnapshotRecord)> {
        let mut v: Vec<_> = self
            .snapshots
            .get(disk)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        v.sort_by_key(|(_, r)| r.seq);
        v
    }
}
