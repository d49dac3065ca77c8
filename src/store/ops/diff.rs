//! Which blocks may differ between two images: the blocks held by the
//! layers one image reads and the other does not.
//!
//! Two images of one history share the layers below their common ancestor;
//! a block that no layer above it holds reads the same in both. So the
//! blocks that may differ are the present blocks (data and zeros) of the
//! layers in one chain and not in the other, and of a live layer when an
//! image is a live disk. Only those layers' indexes are read: the cost
//! grows with the blocks changed between the two images, not with the
//! disk's size or the snapshots in between. Two images with no common
//! layer differ wherever either holds a block; an image and an empty disk,
//! wherever the image's newest copy of a block is data (zeros read the
//! same as nothing).

use std::collections::BTreeSet;

use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::layer::{self, Geometry};
use crate::store::names::{ImageRef, LayerId};
use crate::store::ops::tidy::geometry;
use crate::store::Repository;
use crate::units::format_size;

/// The blocks whose content may differ between two images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Size of the image diffed *to* (the second); ranges stop there.
    pub size: u64,
    /// Size of the image diffed *from* (the first; 0 for an empty disk).
    pub from_size: u64,
    pub block_size: u32,
    pub blocks: ExtentSet,
}

impl Diff {
    /// The byte ranges `(offset, length)` that may differ, merged into
    /// maximal runs and clipped to the second image's size. Applying them,
    /// read from the second image, onto a copy of the first made that size
    /// yields the second image.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let geo = Geometry {
            size: self.size,
            block_size: self.block_size,
        };
        self.blocks
            .runs()
            .filter(|r| r.start < geo.blocks())
            .map(|r| {
                let b = geo.byte_range(r.start..r.end.min(geo.blocks()));
                (b.start, b.end - b.start)
            })
            .collect()
    }

    /// Bytes in [`Diff::ranges`].
    pub fn bytes(&self) -> u64 {
        self.ranges().iter().map(|r| r.1).sum()
    }
}

/// One image as the diff sees it: the frozen layers it reads, top first,
/// and the blocks of its live layer if it is a live disk.
struct Side {
    chain: Vec<LayerId>,
    /// The live layer: its id, every block it holds, and those as zeros.
    live: Option<(LayerId, ExtentSet, ExtentSet)>,
    geo: Geometry,
}

impl Repository {
    /// The blocks that may differ between `from` (an empty disk when
    /// `None`) and `to`, in either order of history, across clones.
    pub fn diff(&self, from: Option<&ImageRef>, to: &ImageRef) -> Result<Diff> {
        // A delete's tidy may merge a layer of one chain while its index is
        // read: then the chains are taken again.
        let mut tries = 0;
        loop {
            let generation = self.catalog().generation;
            match self.try_diff(from, to) {
                Err(e) if tries < 3 && self.catalog().generation != generation => {
                    log::debug!("diff: {e}; the layer tree changed meanwhile, again");
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn try_diff(&self, from: Option<&ImageRef>, to: &ImageRef) -> Result<Diff> {
        let b = self.side(to)?;
        let a = match from {
            Some(r) => Some(self.side(r)?),
            None => None,
        };
        if let Some(a) = &a {
            if a.geo.block_size != b.geo.block_size {
                return Err(StoreError::Refused(format!(
                    "{} has {} blocks and {to} has {}: only images of one block size can be diffed",
                    from.map(ToString::to_string).unwrap_or_default(),
                    format_size(a.geo.block_size as u64),
                    format_size(b.geo.block_size as u64),
                )));
            }
        }
        let in_a: BTreeSet<LayerId> = a.iter().flat_map(|s| s.chain.iter().copied()).collect();
        let in_b: BTreeSet<LayerId> = b.chain.iter().copied().collect();
        let cat = self.catalog();
        let mut blocks = ExtentSet::new();
        let mut add = |id: LayerId| -> Result<()> {
            let idx = layer::read_index(&self.inner.files, id, geometry(&cat, id))?;
            for p in &idx.pieces {
                blocks.union_with(&p.data);
            }
            blocks.union_with(&idx.zero);
            Ok(())
        };
        if a.is_none() {
            // Against an empty disk, a block whose newest copy is zeros
            // reads the same: only the blocks that end up data differ.
            let mut covered = ExtentSet::new();
            if let Some((_, present, zero)) = &b.live {
                blocks.union_with(&present.difference(zero));
                covered.union_with(present);
            }
            for &id in &b.chain {
                let idx = layer::read_index(&self.inner.files, id, geometry(&cat, id))?;
                for p in &idx.pieces {
                    blocks.union_with(&p.data.difference(&covered));
                }
                covered.union_with(&idx.present());
            }
            return Ok(Diff {
                size: b.geo.size,
                from_size: 0,
                block_size: b.geo.block_size,
                blocks,
            });
        }
        for &id in in_b.symmetric_difference(&in_a) {
            add(id)?;
        }
        let same_live = match (&a, &b.live) {
            (
                Some(Side {
                    live: Some((x, ..)),
                    ..
                }),
                Some((y, ..)),
            ) => x == y,
            _ => false,
        };
        if !same_live {
            for side in a.iter().chain(std::iter::once(&b)) {
                if let Some((_, present, _)) = &side.live {
                    blocks.union_with(present);
                }
            }
        }
        Ok(Diff {
            size: b.geo.size,
            from_size: a.map_or(0, |a| a.geo.size),
            block_size: b.geo.block_size,
            blocks,
        })
    }

    fn side(&self, r: &ImageRef) -> Result<Side> {
        match r {
            ImageRef::Snapshot(s) => {
                let info = self.snapshot_info(s)?;
                Ok(Side {
                    chain: self.catalog().chain(info.layer),
                    live: None,
                    geo: Geometry {
                        size: info.size,
                        block_size: info.block_size,
                    },
                })
            }
            ImageRef::Live(name) => {
                let disk = self.disk(name)?;
                loop {
                    let id = disk.live_id();
                    let present = disk.live_present();
                    let zero = disk.live_zero();
                    let cat = self.catalog();
                    // A snapshot swapped the live layer meanwhile: again.
                    if disk.live_id() != id {
                        continue;
                    }
                    let parent = cat.layers.get(&id).and_then(|l| l.parent);
                    return Ok(Side {
                        chain: parent.map(|p| cat.chain(p)).unwrap_or_default(),
                        live: Some((id, present, zero)),
                        geo: geometry(&cat, id),
                    });
                }
            }
        }
    }
}

/// A snapshot's changes as an image: the blocks that may differ from an
/// older image read as the snapshot has them, every other byte as zeros,
/// and `SEEK_DATA`/`SEEK_HOLE` find exactly the changed ranges (a range
/// that changed to zeros is data that reads as zeros).
pub struct Changes {
    snap: crate::store::Snapshot,
    blocks: ExtentSet,
    geo: Geometry,
}

impl Changes {
    pub fn snapshot(&self) -> &crate::store::Snapshot {
        &self.snap
    }

    /// Bytes of the changed ranges.
    pub fn changed_bytes(&self) -> u64 {
        Diff {
            size: self.geo.size,
            from_size: 0,
            block_size: self.geo.block_size,
            blocks: self.blocks.clone(),
        }
        .bytes()
    }
}

impl Repository {
    /// The changes of snapshot `to` since `from` (an empty disk when
    /// `None`), as an image.
    pub fn open_changes(
        &self,
        from: Option<&crate::store::SnapshotRef>,
        to: &crate::store::SnapshotRef,
    ) -> Result<Changes> {
        let snap = self.open_snapshot(to)?;
        let from = from.cloned().map(ImageRef::Snapshot);
        let d = self.diff(from.as_ref(), &ImageRef::Snapshot(to.clone()))?;
        Ok(Changes {
            geo: Geometry {
                size: d.size,
                block_size: d.block_size,
            },
            blocks: d.blocks,
            snap,
        })
    }
}

impl crate::store::ImageRead for Changes {
    fn size(&self) -> u64 {
        self.geo.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = self.geo.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(size);
        let bs = self.geo.block_size as u64;
        for (blocks, inside) in self.blocks.segments(offset / bs..end.div_ceil(bs)) {
            let r = self.geo.byte_range(blocks);
            let (s, e) = (r.start.max(offset), r.end.min(end));
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            if inside {
                self.snap.read_at(s, dst)?;
            } else {
                dst.fill(0);
            }
        }
        Ok((end - offset) as usize)
    }

    fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        let bs = self.geo.block_size as u64;
        let first = offset / bs;
        let hit = self
            .blocks
            .runs()
            .find(|r| r.end > first)
            .map(|r| (r.start * bs).max(offset));
        Ok(hit.filter(|&o| o < self.geo.size))
    }

    fn seek_hole(&self, offset: u64) -> Result<u64> {
        let bs = self.geo.block_size as u64;
        let b = offset / bs;
        let end = self
            .blocks
            .runs()
            .find(|r| r.start <= b && b < r.end)
            .map_or(offset, |r| r.end * bs);
        Ok(end.min(self.geo.size).max(offset.min(self.geo.size)))
    }
}
