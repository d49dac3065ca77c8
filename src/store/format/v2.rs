//! Format version 2, frozen: the payloads that changed shape in version 3,
//! as version 2 wrote them. A version 2 index is read through these and
//! converted (its pieces have no block hashes: they are computed when
//! first needed). Nothing here may change.

use serde::{Deserialize, Serialize};

/// Payload of a version 2 `layers/<id>.idx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerIndex {
    pub repo: u64,
    pub layer: u64,
    pub block_size: u32,
    pub size: u64,
    pub pieces: Vec<IndexPiece>,
    pub zero: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPiece {
    pub file: u64,
    pub data: Vec<(u64, u64)>,
    pub checksums: Option<Vec<u32>>,
}

impl From<LayerIndex> for super::LayerIndex {
    fn from(old: LayerIndex) -> Self {
        super::LayerIndex {
            repo: old.repo,
            layer: old.layer,
            block_size: old.block_size,
            size: old.size,
            pieces: old
                .pieces
                .into_iter()
                .map(|p| super::IndexPiece {
                    file: p.file,
                    data: p.data,
                    checksums: p.checksums,
                    hashes: None,
                })
                .collect(),
            zero: old.zero,
        }
    }
}
