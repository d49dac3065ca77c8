//! Changing a disk in place: rollback to a snapshot, growing it, and
//! renaming disks and snapshots.

use crate::store::catalog::{self, Intent, IntentKind, LayerRecord};
use crate::store::error::{Result, StoreError};
use crate::store::extents::OwnerMap;
use crate::store::format::{self, LayerFileKind};
use crate::store::journal::Journal;
use crate::store::layer::{Geometry, LiveLayer};
use crate::store::names::{DiskName, SnapName, SnapshotRef};
use crate::store::{DiskInfo, Event, ImageRead, Repository};

impl Repository {
    /// Makes the disk's content that of snapshot `r` again (of the same
    /// disk): its live layer is replaced by an empty one over the snapshot;
    /// what was written since is discarded; later snapshots stay. Refused
    /// while the disk's image is open for writing (in the mount) unless
    /// `force`.
    pub fn rollback(&self, r: &SnapshotRef, force: bool) -> Result<DiskInfo> {
        let disk = self.disk(&r.disk)?;
        self.snapshot_info(r)?;
        disk.refuse_if_written("roll back", force)?;
        disk.check_latch()?;
        let _snaps = disk.lock_snapshots();
        let _s = self.inner.structure.lock();
        let info = self.snapshot_info(r)?;
        let geo = Geometry {
            size: info.size,
            block_size: info.block_size,
        };
        let (ids, (), made, intent) = self.intend(format!("rollback {r}"), 1, |_, ids| {
            Ok((
                (),
                vec![(ids[0], LayerFileKind::Data), (ids[0], LayerFileKind::Log)],
            ))
        })?;
        let new = ids[0];
        let files = &self.inner.files;
        let fresh = LiveLayer::create(files, new, geo).and_then(|live| {
            let journal = Journal::create(files.clone(), new, geo)?;
            format::sync_dir(files.storage(), &files.paths().dir)?;
            Ok((live, journal))
        });
        let (fresh, mut journal) = match fresh {
            Ok(f) => f,
            Err(e) => {
                self.abandon(intent, &made);
                return Err(e);
            }
        };
        let base = match self.frozen_map(info.layer) {
            Ok(m) => OwnerMap::clone(&m.map),
            Err(e) => {
                self.abandon(intent, &made);
                return Err(e);
            }
        };
        let lock = disk.lock_freeze();
        let old = disk.live_id();
        let committed = self.commit(|cat| {
            let d = cat
                .disks
                .get_mut(&r.disk)
                .filter(|d| d.live == old)
                .ok_or_else(|| StoreError::NoSuchDisk(r.disk.clone()))?;
            d.live = new;
            d.size = geo.size;
            let gone = cat.layers.remove(&old);
            cat.layers.insert(
                new,
                LayerRecord {
                    parent: Some(info.layer),
                    block_size: geo.block_size,
                    size: geo.size,
                    frozen: None,
                    files: vec![new],
                },
            );
            cat.intents.remove(&intent);
            let mut doomed: Vec<_> = gone
                .map(|l| l.files.iter().map(|&f| (f, LayerFileKind::Data)).collect())
                .unwrap_or_default();
            doomed.push((old, LayerFileKind::Log));
            cat.add_intent(Intent {
                what: format!("rollback {r}: the live layer it replaced"),
                kind: IntentKind::Remove,
                files: doomed.clone(),
            });
            Ok(doomed)
        });
        let doomed = match committed {
            Ok(d) => d,
            Err(catalog::CommitError::NotWritten(e)) => {
                drop(lock);
                self.abandon(intent, &made);
                return Err(e);
            }
            Err(catalog::CommitError::Unknown(e)) => {
                lock.latch(&e);
                return Err(e);
            }
        };
        if let Err(e) = journal.mark_committed() {
            log::warn!(
                "disk {} is rolled back, but its journal could not say so: {e}",
                r.disk
            );
        }
        disk.replace_live(lock, fresh, journal, base);
        self.remove_files(&doomed);
        self.emit(Event::LiveChanged {
            disk: r.disk.clone(),
            id: disk.id(),
        });
        drop(_s);
        self.tidy_after();
        self.disk_info(&r.disk)
    }

    /// Grows a disk to `size` bytes (never shrinks it). Its snapshots keep
    /// their own size.
    pub fn resize_disk(&self, name: &DiskName, size: u64) -> Result<DiskInfo> {
        let size = catalog::check_disk_size(size)?;
        let disk = self.disk(name)?;
        let current = disk.size();
        if size < current {
            return Err(StoreError::Refused(format!(
                "disk '{name}' is {}; a disk only grows (shrinking would cut off what its file \
                 systems may use)",
                crate::units::format_size(current)
            )));
        }
        if size == current {
            return self.disk_info(name);
        }
        disk.check_latch()?;
        let _snaps = disk.lock_snapshots();
        // Durable before the new size is: see `own_partial_tail`.
        disk.own_partial_tail()?;
        disk.flush()?;
        let _s = self.inner.structure.lock();
        let mut lock = disk.lock_freeze();
        // Past the host's largest file, refused before anything changes.
        format::probe_file_size(self.inner.storage.as_ref(), &self.inner.paths.tmp, size)?;
        let live = disk.live_id();
        let committed = self.commit(|cat| {
            let d = cat
                .disks
                .get_mut(name)
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            d.size = size;
            if let Some(l) = cat.layers.get_mut(&live) {
                l.size = size;
            }
            Ok(())
        });
        match committed {
            Ok(()) => {}
            Err(catalog::CommitError::NotWritten(e)) => return Err(e),
            Err(catalog::CommitError::Unknown(e)) => {
                lock.latch(&e);
                return Err(e);
            }
        }
        disk.grow(&mut lock, size)?;
        drop(lock);
        self.emit(Event::LiveChanged {
            disk: name.clone(),
            id: disk.id(),
        });
        self.disk_info(name)
    }

    /// Renames a snapshot; its image (and its identity in the mount) stays.
    pub fn rename_snapshot(&self, r: &SnapshotRef, to: &SnapName) -> Result<()> {
        let _s = self.inner.structure.lock();
        let layer = self
            .commit(|cat| {
                if cat.snapshots.get2(&r.disk, &r.snap).is_none() {
                    return Err(cat.no_such_snapshot(r));
                }
                if cat.snapshots.get2(&r.disk, to).is_some() {
                    return Err(StoreError::SnapshotExists(SnapshotRef {
                        disk: r.disk.clone(),
                        snap: to.clone(),
                    }));
                }
                let rec = cat
                    .snapshots
                    .remove2(&r.disk, &r.snap)
                    .ok_or_else(|| StoreError::NoSuchSnapshot(r.clone()))?;
                let layer = rec.layer;
                cat.snapshots.insert2(r.disk.clone(), to.clone(), rec);
                Ok(layer)
            })
            .map_err(|e| e.into_inner())?;
        self.emit(Event::SnapshotRenamed {
            disk: r.disk.clone(),
            from: r.snap.clone(),
            to: to.clone(),
            layer,
        });
        Ok(())
    }

    /// Renames a disk, and with it the name its snapshots are listed under.
    pub fn rename_disk(&self, from: &DiskName, to: &DiskName) -> Result<()> {
        let _s = self.inner.structure.lock();
        // Held across the commit: a disk opened under its new name in
        // between would be a second instance of the same live layer.
        let mut disks = self.inner.disks.lock();
        self.commit(|cat| {
            super::create::name_free(cat, to)?;
            let d = cat
                .disks
                .remove(from)
                .ok_or_else(|| StoreError::NoSuchDisk(from.clone()))?;
            cat.disks.insert(to.clone(), d);
            cat.snapshots.move_outer(from, to);
            Ok(())
        })
        .map_err(|e| e.into_inner())?;
        if let Some(d) = disks.remove(from) {
            d.set_name(to.clone());
            disks.insert(to.clone(), d);
        }
        drop(disks);
        self.emit(Event::DiskRenamed {
            from: from.clone(),
            to: to.clone(),
        });
        Ok(())
    }
}
