//! Deleting snapshots and disks. A delete commits first (the names go), and
//! then puts the layer tree in order ([`super::tidy`]): what no remaining
//! image reads is given back, and nothing any of them reads moves or
//! changes. It needs no free space beyond the reserve for its commit, and
//! costs what the deleted layers hold, not the size of the disk or chain.

use std::sync::Arc;

use crate::store::catalog::{Intent, IntentKind};
use crate::store::error::{Result, StoreError};
use crate::store::format::LayerFileKind;
use crate::store::names::{DiskName, SnapshotRef};
use crate::store::{Event, Repository};

/// What a delete did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeleteReport {
    /// Snapshots (or disks) deleted.
    pub deleted: u64,
    /// Bytes given back to the host file system.
    pub freed_bytes: u64,
    /// Layers of deleted snapshots still open (being read); their space is
    /// given back once they are closed (`strata gc`).
    pub waiting: u64,
    /// For a disk delete: its snapshots, which stay.
    #[serde(default)]
    pub kept_snapshots: u64,
    /// The delete is done, but giving space back stopped short, and why
    /// (`strata gc` finishes it).
    pub unfinished: Option<String>,
}

impl Repository {
    /// Deletes the snapshots `refs` (all, or none if one does not exist).
    /// Every other snapshot, every disk made from one, and the live disks
    /// read back exactly as before.
    pub fn delete_snapshots(&self, refs: &[SnapshotRef]) -> Result<DeleteReport> {
        let mut gone = Vec::new();
        self.with_reserve(|| {
            let _s = self.inner.structure.lock();
            gone = self
                .commit(|cat| {
                    let mut gone = Vec::new();
                    for r in refs {
                        let rec = cat.snapshots.remove2(&r.disk, &r.snap);
                        match rec {
                            Some(rec) => gone.push((r.clone(), rec.layer)),
                            // The same one named twice is deleted once.
                            None if gone.iter().any(|(g, _)| g == r) => {}
                            None => return Err(cat.no_such_snapshot(r)),
                        }
                    }
                    Ok(gone)
                })
                .map_err(|e| e.into_inner())?;
            Ok(())
        })?;
        for (r, layer) in &gone {
            self.inner.maps.lock().pop(layer);
            self.emit(Event::SnapshotGone {
                disk: r.disk.clone(),
                snap: r.snap.clone(),
                layer: *layer,
            });
        }
        let t = self.tidy_after();
        Ok(DeleteReport {
            deleted: gone.len() as u64,
            freed_bytes: t.freed_bytes,
            waiting: t.waiting,
            kept_snapshots: 0,
            unfinished: t.unfinished,
        })
    }

    /// Deletes a disk's live layer. Its snapshots stay, listed and usable
    /// under its name, until they are deleted too. Refused while its image
    /// is open for writing (in the mount) unless `force`.
    pub fn delete_disk(&self, name: &DiskName, force: bool) -> Result<DeleteReport> {
        loop {
            // The open instance, if any, is held still; `disks` is then held
            // across the commit, so no instance can be opened meanwhile.
            let disk = self.open_disk(name);
            let rec = self
                .inner
                .catalog
                .lock()
                .cat
                .disks
                .get(name)
                .cloned()
                .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
            if let Some(d) = &disk {
                d.refuse_if_written("delete", force)?;
            }
            let _snaps = disk.as_ref().map(|d| d.lock_snapshots());
            let freed_live = self.allocated(&self.catalog(), &[rec.live]);
            let done = self.with_reserve(|| {
                let _s = self.inner.structure.lock();
                let _held = disk.as_ref().map(|d| d.lock_freeze());
                let mut disks = self.inner.disks.lock();
                let now = disks.get(name).cloned();
                if now.as_ref().map(Arc::as_ptr) != disk.as_ref().map(Arc::as_ptr) {
                    // Opened since we looked: again, holding that one.
                    return Ok(false);
                }
                let doomed = self
                    .commit(|cat| {
                        let d = cat
                            .disks
                            .remove(name)
                            .ok_or_else(|| StoreError::NoSuchDisk(name.clone()))?;
                        let live = cat.layers.remove(&d.live);
                        let mut files: Vec<_> = live
                            .map(|l| l.files.iter().map(|&f| (f, LayerFileKind::Data)).collect())
                            .unwrap_or_default();
                        files.push((d.live, LayerFileKind::Log));
                        cat.add_intent(Intent {
                            what: format!("delete disk {name}"),
                            kind: IntentKind::Remove,
                            files: files.clone(),
                        });
                        Ok(files)
                    })
                    .map_err(|e| e.into_inner())?;
                if let Some(d) = &disk {
                    d.retire();
                }
                disks.remove(name);
                drop(disks);
                self.remove_files(&doomed);
                Ok(true)
            })?;
            if !done {
                continue;
            }
            self.emit(Event::DiskGone { disk: name.clone() });
            let t = self.tidy_after();
            let kept = self.snapshots(name).map_or(0, |s| s.len() as u64);
            return Ok(DeleteReport {
                deleted: 1,
                freed_bytes: t.freed_bytes + freed_live,
                waiting: t.waiting,
                kept_snapshots: kept,
                unfinished: t.unfinished,
            });
        }
    }
}
