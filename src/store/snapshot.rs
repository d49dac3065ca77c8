//! A snapshot's read-only image: a frozen chain read through its owner map.

use std::ops::Range;
use std::sync::Arc;

use super::disk::BaseLayout;
use super::error::Result;
use super::image::{self, ImageRead, Layout, Piece};
use super::layer::{Geometry, LayerFiles};
use super::{ImageMap, SnapshotInfo, ViewGuard};

/// A snapshot's image, open. While it is open its layer stays as it is,
/// even if the snapshot is deleted: it reads the same until it is dropped.
pub struct Snapshot {
    info: SnapshotInfo,
    geo: Geometry,
    map: Arc<ImageMap>,
    files: Arc<LayerFiles>,
    _view: ViewGuard,
}

impl Snapshot {
    pub(crate) fn new(
        info: SnapshotInfo,
        geo: Geometry,
        map: Arc<ImageMap>,
        files: Arc<LayerFiles>,
        view: ViewGuard,
    ) -> Self {
        Snapshot {
            info,
            geo,
            map,
            files,
            _view: view,
        }
    }

    pub fn info(&self) -> &SnapshotInfo {
        &self.info
    }

    /// When the image is a layer with no parent whose data all lives in its
    /// own data file, that file read as it is *is* the image (every other
    /// byte of it reads as zero, see [`super::format`]): a file the kernel
    /// can serve directly (FUSE passthrough).
    pub fn flat_file(&self) -> Option<std::path::PathBuf> {
        self.files.local_path(self.map.flat?)
    }

    fn layout(&self) -> BaseLayout<'_, '_> {
        BaseLayout {
            geo: self.geo,
            map: &self.map.map,
            files: &self.files,
        }
    }
}

impl Layout for Snapshot {
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn pieces(&self, blocks: Range<u64>) -> Result<Vec<(Range<u64>, Piece<'_>)>> {
        self.layout().pieces_of(blocks)
    }
}

impl ImageRead for Snapshot {
    fn size(&self) -> u64 {
        self.geo.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        Ok(image::read_at(self, offset, buf)?.len)
    }
    fn read_at_traced(&self, offset: u64, buf: &mut [u8]) -> Result<image::Traced> {
        image::read_at(self, offset, buf)
    }
    fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        image::prefetch(self, offset, len)
    }
    fn seek_data(&self, offset: u64) -> Result<Option<u64>> {
        image::probe(self, offset, true)
    }
    fn seek_hole(&self, offset: u64) -> Result<u64> {
        Ok(image::probe(self, offset, false)?.unwrap_or(self.geo.size))
    }
}
