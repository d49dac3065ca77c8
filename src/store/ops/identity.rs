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
        // A delete's tidy may merge a layer of the chain while it is read:
        // then the chain is taken again.
        let mut tries = 0;
        let id = loop {
            let generation = self.catalog().generation;
            match self.compute_identity(info.layer) {
                Err(e) if tries < 3 && self.catalog().generation != generation => {
                    log::debug!("identity of {r}: {e}; the layer tree changed meanwhile, again");
                    tries += 1;
                }
                r => break r?,
            }
        };
        self.inner.identities.lock().insert(info.layer, id);
        Ok(id)
    }

    fn compute_identity(&self, top: LayerId) -> Result<Identity> {
        let cat = self.catalog();
        let geo = geometry(&cat, top);
        if geo.block_size == 0 {
            return Err(StoreError::Refused(format!(
                "layer {top} is not in the catalog"
            )));
        }
        self.identity_over(geo, None, &cat.chain(top))
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
        Ok(identity::of_blocks(geo.size, geo.block_size, &blocks))
    }
}
