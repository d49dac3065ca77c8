//! `strata gc`: gives back what nothing refers to. Deleting does most of
//! this itself (see [`super::tidy`]); gc finishes what was left: layers of
//! deleted snapshots that were still open, the bytes a crash left in a
//! layer's files outside its index, and removals a crash cut short.

use crate::store::catalog::IntentKind;
use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::layer;
use crate::store::names::LayerId;
use crate::store::Repository;

use super::tidy::geometry;

/// What a gc did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    /// Bytes given back to the host file system.
    pub freed_bytes: u64,
    /// Layers of deleted snapshots taken out of the tree.
    pub layers_removed: u64,
    /// Layers of deleted snapshots still open, left for a later gc.
    pub waiting: u64,
}

impl Repository {
    /// Gives back what nothing refers to (see the module doc). Safe while
    /// mounted and after a crash in the middle.
    pub fn gc(&self) -> Result<GcReport> {
        self.with_reserve(|| {
            let _s = self.inner.structure.lock();
            let t = self.tidy_locked()?;
            let mut report = GcReport {
                freed_bytes: t.freed_bytes,
                layers_removed: t.layers_removed,
                waiting: t.waiting,
            };
            report.freed_bytes += self.sweep()?;
            // Removals a crash or an error cut short.
            let cat = self.catalog();
            for i in cat
                .intents
                .values()
                .filter(|i| i.kind == IntentKind::Remove)
            {
                self.remove_files(&i.files);
            }
            // What those removals let go.
            let t = self.tidy_locked()?;
            report.freed_bytes += t.freed_bytes;
            report.layers_removed += t.layers_removed;
            report.waiting = t.waiting;
            Ok(report)
        })
    }

    /// Punches what frozen layers' data files hold outside their indexes
    /// (left by a crash, or by blocks a layer wrote and then no longer
    /// held); returns the bytes given back. What each such layer stores is
    /// then recorded anew, so the sizes listed are what the files hold.
    fn sweep(&self) -> Result<u64> {
        let cat = self.catalog();
        let mut freed = 0;
        let mut shrunk = Vec::new();
        for (&id, l) in cat.layers.iter().filter(|(_, l)| l.frozen.is_some()) {
            let geo = geometry(&cat, id);
            let idx = layer::read_index(&self.inner.files, id, geo)?;
            for &file in &l.files {
                let mut named = ExtentSet::new();
                for p in idx.pieces.iter().filter(|p| p.file == file) {
                    named.union_with(&p.data);
                }
                let (f, path) = self.inner.files.open_data_writable(file)?;
                let before = f.allocated_bytes().unwrap_or(0);
                let bs = geo.block_size as u64;
                let len = f.len().map_err(StoreError::io(&path))?;
                let mut pos = 0;
                let mut punched = false;
                while pos < len {
                    let Some(start) = f.seek_data(pos).map_err(StoreError::io(&path))? else {
                        break;
                    };
                    if start >= len {
                        break;
                    }
                    let end = f.seek_hole(start).map_err(StoreError::io(&path))?.min(len);
                    for (r, inside) in named.segments(start / bs..end.div_ceil(bs)) {
                        if !inside {
                            let from = (r.start * bs).max(start);
                            // The last, partial block is punched whole
                            // (see tidy's punch).
                            let to = if end >= len {
                                r.end * bs
                            } else {
                                (r.end * bs).min(end)
                            };
                            if from < to {
                                f.punch_hole(from, to - from)
                                    .map_err(StoreError::io(&path))?;
                                punched = true;
                            }
                        }
                    }
                    pos = end.max(start + 1);
                }
                if punched {
                    f.sync_data().map_err(StoreError::io(&path))?;
                    freed += before.saturating_sub(f.allocated_bytes().unwrap_or(before));
                    shrunk.push(id);
                }
            }
        }
        shrunk.dedup();
        if !shrunk.is_empty() {
            let stored: Vec<(LayerId, u64)> = shrunk
                .iter()
                .filter_map(|id| Some((*id, self.allocated_files(&cat.layers.get(id)?.files))))
                .collect();
            self.commit(|c| {
                for (id, bytes) in &stored {
                    if let Some(f) = c.layers.get_mut(id).and_then(|l| l.frozen.as_mut()) {
                        f.stored_bytes = *bytes;
                    }
                }
                Ok(())
            })
            .map_err(|e| e.into_inner())?;
        }
        Ok(freed)
    }
}
