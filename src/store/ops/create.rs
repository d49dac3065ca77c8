//! Making disks: empty, imported from a raw image, or from a snapshot (a
//! clone, instant: the new disk's live layer sits on the snapshot's layer
//! and shares every block below it).

use crate::store::catalog::{self, CommitError, DiskRecord, LayerRecord};
use crate::store::error::{Result, StoreError};
use crate::store::format::{self, LayerFileKind};
use crate::store::import::{self, ImportSource};
use crate::store::journal::Journal;
use crate::store::layer::{Geometry, LiveLayer};
use crate::store::names::{DiskName, LayerId, SnapshotRef};
use crate::store::{now_ns, DiskInfo, Repository};

impl Repository {
    /// Creates an empty disk.
    pub fn create_disk(&self, name: &DiskName, size: u64, block_size: u32) -> Result<DiskInfo> {
        let size = catalog::check_disk_size(size)?;
        let block_size = catalog::check_block_size(block_size as u64)?;
        self.create_disk_with(name, Geometry { size, block_size }, None, |_| Ok(()))
    }

    /// Creates a disk whose content is snapshot `from`, instantly and
    /// sharing its blocks: writes to it never change the snapshot, and
    /// deleting the snapshot (or its disk) never changes it.
    pub fn create_disk_from(&self, name: &DiskName, from: &SnapshotRef) -> Result<DiskInfo> {
        // The snapshot's layer must not go while the disk is made on it.
        let _s = self.inner.structure.lock();
        let info = self.snapshot_info(from)?;
        let geo = Geometry {
            size: info.size,
            block_size: info.block_size,
        };
        self.create_disk_with(name, geo, Some(info.layer), |_| Ok(()))
    }

    /// Creates a disk from a raw image: a regular file (only its data
    /// regions are read), a block device or a stream. All-zero blocks are
    /// not stored. Fails, leaving no disk, if the source is shorter than it
    /// said or changes size while it is read (see [`import`]).
    pub fn import_disk(
        &self,
        name: &DiskName,
        source: &ImportSource,
        block_size: u32,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<DiskInfo> {
        let block_size = catalog::check_block_size(block_size as u64)?;
        let checked = import::check(source)?;
        let geo = Geometry {
            size: checked.size,
            block_size,
        };
        self.create_disk_with(name, geo, None, |live| {
            import::copy_into(live, source, &checked, progress)
        })
    }

    /// Creates a disk over `parent` (or none) whose live layer `fill` writes
    /// before the disk is committed: if anything fails, no disk appears and
    /// no file is left.
    fn create_disk_with(
        &self,
        name: &DiskName,
        geo: Geometry,
        parent: Option<LayerId>,
        fill: impl FnOnce(&mut LiveLayer) -> Result<()>,
    ) -> Result<DiskInfo> {
        let name_free = |cat: &catalog::Catalog| name_free(cat, name);
        name_free(&self.inner.catalog.lock().cat)?;
        let (ids, (), made, intent) =
            self.intend(format!("create disk {name}"), 1, |cat, ids| {
                name_free(cat)?;
                Ok((
                    (),
                    vec![(ids[0], LayerFileKind::Data), (ids[0], LayerFileKind::Log)],
                ))
            })?;
        let id = ids[0];
        let files = &self.inner.files;
        let prepared = (|| {
            let mut live = LiveLayer::create(files, id, geo)?;
            let mut journal = Journal::create(files.clone(), id, geo)?;
            format::sync_dir(files.storage(), &files.paths().dir)?;
            fill(&mut live)?;
            live.data
                .sync_data()
                .map_err(StoreError::io(&live.data_path))?;
            let changes = live.take_unlogged();
            if !changes.is_empty() {
                journal.append(&changes)?;
            }
            Ok(journal)
        })();
        let mut journal = match prepared {
            Ok(j) => j,
            Err(e) => {
                self.abandon(intent, &made);
                return Err(e);
            }
        };
        let committed = self.commit(|cat| {
            name_free(cat)?;
            if let Some(p) = parent {
                if cat.layers.get(&p).is_none_or(|l| l.frozen.is_none()) {
                    return Err(StoreError::invalid(
                        "source",
                        "the snapshot went away while the disk was made",
                    ));
                }
            }
            cat.layers.insert(
                id,
                LayerRecord {
                    parent,
                    block_size: geo.block_size,
                    size: geo.size,
                    frozen: None,
                    files: vec![id],
                },
            );
            cat.disks.insert(
                name.clone(),
                DiskRecord {
                    id,
                    size: geo.size,
                    block_size: geo.block_size,
                    live: id,
                    created: now_ns(),
                },
            );
            cat.intents.remove(&intent);
            Ok(())
        });
        match committed {
            Ok(()) => {
                if let Err(e) = journal.mark_committed() {
                    log::warn!("disk {name} is created, but its journal could not say so: {e}");
                }
                drop(journal);
                self.disk_info(name)
            }
            Err(CommitError::NotWritten(e)) => {
                self.abandon(intent, &made);
                Err(e)
            }
            Err(CommitError::Unknown(e)) => Err(e),
        }
    }
}

/// Whether a disk may take `name`: no disk has it, and no deleted disk's
/// snapshots are listed under it.
pub(crate) fn name_free(cat: &catalog::Catalog, name: &DiskName) -> Result<()> {
    if cat.disks.contains_key(name) {
        return Err(StoreError::DiskExists(name.clone()));
    }
    if let Some(left) = cat.snapshots.get(name) {
        let n = left.len();
        return Err(StoreError::Refused(format!(
            "disk '{name}' was deleted, but {n} snapshot{} of it remain{} under its name; delete \
             {} or choose another name",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
            if n == 1 { "it" } else { "them" },
        )));
    }
    Ok(())
}
