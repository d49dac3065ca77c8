//! A snapshot's read-only image: a frozen chain read through its owner map.

use std::ops::Range;
use std::sync::Arc;

use super::disk::BaseLayout;
use super::error::Result;
use super::extents::OwnerMap;
use super::image::{self, ImageRead, Layout, Piece};
use super::layer::{Geometry, LayerFiles};
use super::SnapshotInfo;

pub struct Snapshot {
    info: SnapshotInfo,
    geo: Geometry,
    map: Arc<OwnerMap>,
    files: Arc<LayerFiles>,
}

impl Snapshot {
    pub(crate) fn new(
        info: SnapshotInfo,
        geo: Geometry,
        map: Arc<OwnerMap>,
        files: Arc<LayerFiles>,
    ) -> Self {
        Snapshot {
            info,
            geo,
            map,
            files,
        }
    }

    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// When every data block of the image lives in one layer, that layer's
    /// data file read as it is *is* the image (every other byte of it reads
    /// as zero, see [`super::format`]): a file the kernel can serve directly
    /// (FUSE passthrough).
    pub fn flat_file(&self) -> Option<std::path::PathBuf> {
        let layer = self.map.sole_layer()?;
        self.files.local_path(layer)
    }

    fn layout(&self) -> BaseLayout<'_> {
        BaseLayout {
            geo: self.geo,
            map: &self.map,
            files: &self.files,
        }
    }
}

impl Layout for Snapshot {
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece)>> {
        self.layout().pieces(blocks)
    }
}

impl ImageRead for Snapshot {
    fn size(&self) -> u64 {
        self.geo.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        image::read_at(self, offset, buf)
    }
    fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        image::probe(self, offset, true)
    }
    fn seek_hole(&self, offset: u64) -> Result<u64> {
        Ok(image::probe(self, offset, false)?.unwrap_or(self.geo.size))
    }
}
