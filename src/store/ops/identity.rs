//! A snapshot's content identity ([`crate::store::identity`]), from its
//! layers' block hashes: no data is read, except once for a layer frozen
//! by an older strata whose index has no hashes yet.

use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::identity::{self, Hash, Identity};
use crate::store::layer::{self, FrozenIndex, Geometry};
use crate::store::names::{LayerId, SnapshotRef};
use crate::store::ops::tidy::geometry;
use crate::store::Repository;

impl Repository {
    /// The content identity of snapshot `r`.
    pub fn identity(&self, r: &SnapshotRef) -> Result<Identity> {
        let info = self.snapshot_info(r)?;
        if let Some(id) = self.inner.identities.lock().get(&info.layer) {
            return Ok(*id);
        }
        let (geo, blocks) = self.snapshot_hashes(r)?;
        let id = identity::of_blocks(geo.size, geo.block_size, &blocks);
        self.inner.identities.lock().insert(info.layer, id);
        Ok(id)
    }

    /// The hash of every data block of snapshot `r`'s image, by block (the
    /// other blocks read as zeros), and its geometry.
    pub fn snapshot_hashes(&self, r: &SnapshotRef) -> Result<(Geometry, Vec<(u64, Hash)>)> {
        // A delete's tidy may merge a layer of the chain while it is read:
        // then the chain is taken again.
        let mut tries = 0;
        loop {
            let info = self.snapshot_info(r)?;
            let generation = self.catalog().generation;
            let geo = Geometry {
                size: info.size,
                block_size: info.block_size,
            };
            let chain = self.catalog().chain(info.layer);
            match self.hashes_over(None, &chain) {
                Err(e) if tries < 3 && self.catalog().generation != generation => {
                    log::debug!("hashes of {r}: {e}; the layer tree changed meanwhile, again");
                    tries += 1;
                }
                r => return Ok((geo, r?)),
            }
        }
    }

    /// The identity of an image of geometry `geo` made of `first` (an
    /// index not yet in the repository, with its sums) over the layers of
    /// `chain`, top first.
    pub(crate) fn identity_over(
        &self,
        geo: Geometry,
        first: Option<&FrozenIndex>,
        chain: &[LayerId],
    ) -> Result<Identity> {
        let blocks = self.hashes_over(first, chain)?;
        Ok(identity::of_blocks(geo.size, geo.block_size, &blocks))
    }

    /// The hash of each data block of the image `first` over `chain` makes,
    /// sorted by block.
    fn hashes_over(
        &self,
        first: Option<&FrozenIndex>,
        chain: &[LayerId],
    ) -> Result<Vec<(u64, Hash)>> {
        let cat = self.catalog();
        let mut covered = ExtentSet::new();
        let mut blocks: Vec<(u64, Hash)> = Vec::new();
        let mut take = |idx: &FrozenIndex, id: String| -> Result<()> {
            for p in &idx.pieces {
                if p.sums.is_none() && !p.data.is_empty() {
                    return Err(StoreError::Refused(format!(
                        "layer {id} changed while its checksums were computed; try again"
                    )));
                }
                for (b, s) in p.block_sums() {
                    if !covered.contains(b) {
                        blocks.push((b, s.hash));
                    }
                }
            }
            covered.union_with(&idx.present());
            Ok(())
        };
        if let Some(idx) = first {
            take(idx, "being received".into())?;
        }
        for &id in chain {
            let lgeo = geometry(&cat, id);
            if lgeo.block_size == 0 {
                return Err(StoreError::Refused(format!(
                    "layer {id} is not in the catalog"
                )));
            }
            let mut idx = layer::read_index(&self.inner.files, id, lgeo)?;
            if idx
                .pieces
                .iter()
                .any(|p| p.sums.is_none() && !p.data.is_empty())
            {
                idx = self.add_sums(id, lgeo, &idx)?;
            }
            take(&idx, id.to_string())?;
        }
        blocks.sort_unstable_by_key(|(b, _)| *b);
        Ok(blocks)
    }
}
