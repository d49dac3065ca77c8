//! Putting the layer tree in order after snapshots are deleted: what no
//! image reads any more is given back, and no layer is left in a chain
//! that only one image reads through.
//!
//! A *hidden* layer is a frozen layer that no snapshot names (its snapshot
//! was deleted). For each, by what is below and above it:
//!
//! | hidden layer | what tidy does |
//! | --- | --- |
//! | no children | removes it: no image reads it |
//! | one frozen child | collapses it into the child: the child's index takes over its pieces (what the child does not hold itself); no data moves. A run of such layers collapses in one index write and one commit |
//! | a live child, or several children | trims it: punches the blocks every child holds (none of its readers reads them) |
//!
//! A block is punched only after nothing reads it, and before any index
//! stops naming it, so a crash at any step leaves the same images: every
//! step is done again, or found done, by the next tidy. A layer whose
//! deleted snapshot is still open (an image being read) is left as it is
//! until it is closed.

use std::collections::{BTreeMap, BTreeSet};

use crate::store::catalog::{Catalog, FrozenInfo, Intent, IntentKind};
use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::format::LayerFileKind;
use crate::store::layer::{self, FrozenIndex, Geometry};
use crate::store::names::LayerId;
use crate::store::{Event, Repository};

/// What a tidy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TidyOutcome {
    /// Bytes given back to the host file system.
    pub freed_bytes: u64,
    /// Layers removed from the tree (collapsed or unread).
    pub layers_removed: u64,
    /// Hidden layers left as they are because an image of them is open.
    pub waiting: u64,
    /// Why it stopped short, when it did after a committed change.
    pub unfinished: Option<String>,
}

impl TidyOutcome {
    fn add(&mut self, o: TidyOutcome) {
        self.freed_bytes += o.freed_bytes;
        self.layers_removed += o.layers_removed;
        self.waiting = o.waiting;
    }
}

/// The blocks some indexes name, by data file: what a punch must spare.
#[derive(Default)]
struct Named(BTreeMap<LayerId, ExtentSet>);

impl Named {
    fn add(&mut self, idx: &FrozenIndex) {
        for p in &idx.pieces {
            self.0.entry(p.file).or_default().union_with(&p.data);
        }
    }

    /// `garbage` (blocks by data file) without the blocks named here in the
    /// same file: what a remaining index names is never punched.
    fn spare(&self, garbage: Vec<(LayerId, ExtentSet)>) -> Vec<(LayerId, ExtentSet)> {
        garbage
            .into_iter()
            .map(|(file, blocks)| match self.0.get(&file) {
                Some(named) => (file, blocks.difference(named)),
                None => (file, blocks),
            })
            .collect()
    }
}

pub(crate) fn geometry(cat: &Catalog, id: LayerId) -> Geometry {
    let l = cat.layers.get(&id);
    Geometry {
        size: l.map_or(0, |l| l.size),
        block_size: l.map_or(0, |l| l.block_size),
    }
}

/// A layer removed from the tree by one commit.
struct Removal {
    layer: LayerId,
    /// Its data files that another layer takes over (its child's index
    /// names them now), and to which layer.
    transfer: Vec<(LayerId, LayerId)>,
}

impl Repository {
    /// Puts the layer tree in order (see the module doc). Safe at any time,
    /// also while mounted and written.
    pub fn tidy(&self) -> Result<TidyOutcome> {
        let _s = self.inner.structure.lock();
        self.tidy_locked()
    }

    /// Tidies after a change that has committed: a failure here (no space
    /// even for the reserve, an I/O error) does not undo or fail the change;
    /// it is logged and said in `unfinished`, and `strata gc` finishes later.
    pub(crate) fn tidy_after(&self) -> TidyOutcome {
        match self.with_reserve(|| self.tidy()) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("giving back space: {e}; `strata gc` tries again");
                TidyOutcome {
                    unfinished: Some(e.to_string()),
                    ..TidyOutcome::default()
                }
            }
        }
    }

    pub(crate) fn tidy_locked(&self) -> Result<TidyOutcome> {
        if self.bases_stale() {
            self.relay()?;
        }
        if self.nothing_to_tidy() {
            // Every frozen layer is a snapshot's and no removal is under
            // way: the usual case after a snapshot, known without looking
            // at the whole catalog.
            return Ok(TidyOutcome::default());
        }
        let mut out = TidyOutcome::default();
        // Each pass acts on what the last one changed; the tree shrinks
        // every time something is done, so this ends.
        loop {
            let pass = self.tidy_pass()?;
            let acted = pass.layers_removed > 0;
            out.add(pass);
            if !acted {
                break;
            }
        }
        self.drop_finished_removals()?;
        Ok(out)
    }

    fn tidy_pass(&self) -> Result<TidyOutcome> {
        let mut out = TidyOutcome::default();
        let cat = self.catalog();
        let named = cat.named_layers();
        let children = cat.children();
        let hidden: BTreeSet<LayerId> = cat
            .layers
            .iter()
            .filter(|(id, l)| l.frozen.is_some() && !named.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let open = |id: &LayerId| self.inner.views.is_open(*id);
        out.waiting = hidden.iter().filter(|id| open(id)).count() as u64;
        let kids = |id: LayerId| children.get(&id).cloned().unwrap_or_default();

        // Unread: hidden layers without children.
        let unread: Vec<LayerId> = hidden
            .iter()
            .copied()
            .filter(|id| !open(id) && kids(*id).is_empty())
            .collect();
        if !unread.is_empty() {
            let freed = self.allocated(&cat, &unread);
            let removals = unread
                .iter()
                .map(|&layer| Removal {
                    layer,
                    transfer: vec![],
                })
                .collect();
            self.commit_removals(removals, vec![], vec![])?;
            out.freed_bytes += freed;
            out.layers_removed += unread.len() as u64;
            return Ok(out);
        }

        // Runs of hidden single-child layers under a frozen layer: a named
        // one, a branch point, or a hidden one under a live layer (which is
        // trimmed, below, once it has taken the run).
        let single = |id: LayerId| hidden.contains(&id) && !open(&id) && kids(id).len() == 1;
        let frozen = |id: &LayerId| cat.layers.get(id).is_some_and(|l| l.frozen.is_some());
        for (&top, rec) in &cat.layers {
            let in_a_run = single(top) && kids(top).iter().all(frozen);
            if rec.frozen.is_none() || in_a_run {
                continue;
            }
            let mut run = Vec::new();
            let mut p = rec.parent;
            while let Some(id) = p.filter(|&id| single(id)) {
                run.push(id);
                p = cat.layers.get(&id).and_then(|l| l.parent);
            }
            if run.is_empty() {
                continue;
            }
            let freed = self.collapse(&cat, top, &run, p)?;
            out.freed_bytes += freed;
            out.layers_removed += run.len() as u64;
            return Ok(out);
        }

        // Trims: hidden layers under a live layer or a branch.
        for &h in &hidden {
            if open(&h) {
                continue;
            }
            let mut covered: Option<ExtentSet> = None;
            let mut latched = false;
            for k in kids(h) {
                let present = match self.present_with(&cat, k, true) {
                    Ok(p) => p,
                    // A disk that stopped taking writes cannot say what it
                    // holds durably: what is under it waits for a reopen,
                    // the rest of the tree is tidied.
                    Err(StoreError::Latched { .. }) => {
                        latched = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                covered = Some(match covered {
                    None => present,
                    Some(c) => c.intersection(&present),
                });
            }
            let Some(covered) = covered.filter(|_| !latched) else {
                continue;
            };
            let geo = geometry(&cat, h);
            let idx = layer::read_index(&self.inner.files, h, geo)?;
            let (trimmed, garbage) = idx.without(&covered);
            // Blocks of its files a child's index names (after a collapse
            // cut short) are that child's now.
            let mut named = Vec::new();
            for k in kids(h) {
                if cat.layers.get(&k).is_some_and(|l| l.frozen.is_some()) {
                    named.push(layer::read_index(&self.inner.files, k, geometry(&cat, k))?);
                }
            }
            let mut spared = Named::default();
            for k in &named {
                spared.add(k);
            }
            let garbage = spared.spare(garbage);
            if trimmed.present().is_empty() {
                // Every child holds all it holds: no image reads it.
                let freed = self.allocated(&cat, &[h]);
                let transfer = self.transfers(&cat, h, &kids(h))?;
                let relink = kids(h)
                    .into_iter()
                    .map(|k| (k, cat.layers.get(&h).and_then(|l| l.parent)))
                    .collect();
                self.commit_removals(vec![Removal { layer: h, transfer }], relink, vec![])?;
                out.freed_bytes += freed;
                out.layers_removed += 1;
                return Ok(out);
            }
            if garbage.iter().all(|(_, g)| g.is_empty()) && trimmed.zero == idx.zero {
                continue;
            }
            out.freed_bytes += self.punch(&cat, &garbage)?;
            layer::replace_index(&self.inner.files, h, geo, &trimmed)?;
            let info = FrozenInfo {
                blocks: trimmed.present().blocks(),
                stored_bytes: self.allocated(&cat, &[h]),
            };
            self.commit(|c| {
                if let Some(l) = c.layers.get_mut(&h) {
                    l.frozen = Some(info);
                }
                Ok(())
            })
            .map_err(|e| e.into_inner())?;
        }
        Ok(out)
    }

    /// Collapses the hidden layers `run` (parent of `top` first, going
    /// down) into `top`, whose parent becomes `below`. Returns the bytes
    /// given back.
    fn collapse(
        &self,
        cat: &Catalog,
        top: LayerId,
        run: &[LayerId],
        below: Option<LayerId>,
    ) -> Result<u64> {
        let geo = geometry(cat, top);
        let mut idx = layer::read_index(&self.inner.files, top, geo)?;
        // A collapse a crash or an error cut short may have left `top`'s
        // index naming blocks of the run's files already: those stay.
        // And what it takes from one layer of the run may be in the files
        // of another (the same reason): those stay too.
        let mut named = Named::default();
        named.add(&idx);
        let mut covered = idx.present();
        let mut freed = 0;
        for &h in run {
            let hidx = layer::read_index(&self.inner.files, h, geometry(cat, h))?;
            // What the layers above already hold, nothing reads here.
            let (rest, garbage) = hidx.without(&covered);
            freed += self.punch(cat, &named.spare(garbage))?;
            covered.union_with(&rest.present());
            named.add(&rest);
            idx.take(rest);
        }
        layer::replace_index(&self.inner.files, top, geo, &idx)?;
        let index_files: BTreeSet<LayerId> = idx.files().into_iter().collect();
        let removals = run
            .iter()
            .map(|&h| Removal {
                layer: h,
                transfer: cat
                    .layers
                    .get(&h)
                    .map(|l| {
                        l.files
                            .iter()
                            .filter(|f| index_files.contains(f))
                            .map(|&f| (f, top))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        self.commit_removals(removals, vec![(top, below)], vec![(top, idx)])?;
        if let Some(layer) = self.snapshot_info_by_layer(top).map(|i| i.layer) {
            self.emit(Event::SnapshotChanged { layer });
        }
        Ok(freed)
    }

    /// The data files of hidden layer `h` that its children's indexes name
    /// (an interrupted collapse): they go to that child.
    fn transfers(
        &self,
        cat: &Catalog,
        h: LayerId,
        kids: &[LayerId],
    ) -> Result<Vec<(LayerId, LayerId)>> {
        let mine: BTreeSet<LayerId> = cat
            .layers
            .get(&h)
            .map(|l| l.files.iter().copied().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for &k in kids {
            if cat.layers.get(&k).is_some_and(|l| l.frozen.is_some()) {
                let idx = layer::read_index(&self.inner.files, k, geometry(cat, k))?;
                out.extend(
                    idx.files()
                        .into_iter()
                        .filter(|f| mine.contains(f))
                        .map(|f| (f, k)),
                );
            }
        }
        Ok(out)
    }

    /// Every block layer `id` holds: from its index, or, for a live layer,
    /// from memory (which only grows until the layer is frozen or dropped).
    pub(crate) fn present_of(&self, cat: &Catalog, id: LayerId) -> Result<ExtentSet> {
        self.present_with(cat, id, false)
    }

    /// As [`Repository::present_of`]; with `durable`, a live layer is
    /// flushed first and only what it holds durably counts: a block
    /// written but not yet flushed is still read from below after a crash.
    fn present_with(&self, cat: &Catalog, id: LayerId, durable: bool) -> Result<ExtentSet> {
        let rec = cat
            .layers
            .get(&id)
            .ok_or_else(|| StoreError::invalid("layer", format!("{id} is not in the catalog")))?;
        if rec.frozen.is_some() {
            return Ok(layer::read_index(&self.inner.files, id, geometry(cat, id))?.present());
        }
        let disk = cat
            .disks
            .iter()
            .find(|(_, d)| d.live == id)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| StoreError::invalid("layer", format!("live layer {id} has no disk")))?;
        let disk = self.disk(&disk)?;
        if durable {
            disk.flush_present()
        } else {
            Ok(disk.live_present())
        }
    }

    /// Punches `garbage` (blocks by data file) and syncs; returns the bytes
    /// given back.
    fn punch(&self, cat: &Catalog, garbage: &[(LayerId, ExtentSet)]) -> Result<u64> {
        let mut freed = 0;
        if garbage.iter().all(|(_, b)| b.is_empty()) {
            return Ok(0);
        }
        self.wait_for_disk_reads();
        for (file, blocks) in garbage {
            if blocks.is_empty() {
                continue;
            }
            let (f, path) = self.inner.files.open_data_writable(*file)?;
            let io = StoreError::io(&path);
            let before = f.allocated_bytes().unwrap_or(0);
            let len = f.len().unwrap_or(0);
            let bs = cat
                .layers
                .values()
                .find(|l| l.files.contains(file))
                .map_or(0, |l| l.block_size) as u64;
            for r in blocks.runs() {
                // A disk whose size is not a multiple of the host's block
                // ends in a partial block: punched whole (past the end, the
                // size kept), or it stays allocated.
                let (start, end) = ((r.start * bs).min(len), r.end * bs);
                if start < end.min(len) {
                    f.punch_hole(start, end - start)
                        .map_err(StoreError::io(&path))?;
                }
            }
            f.sync_data().map_err(io)?;
            freed += before.saturating_sub(f.allocated_bytes().unwrap_or(before));
        }
        Ok(freed)
    }

    /// Bytes the data files of `layers` occupy.
    pub(crate) fn allocated(&self, cat: &Catalog, layers: &[LayerId]) -> u64 {
        let files: Vec<LayerId> = layers
            .iter()
            .filter_map(|id| cat.layers.get(id))
            .flat_map(|l| l.files.iter().copied())
            .collect();
        self.allocated_files(&files)
    }

    /// Bytes the data files `files` occupy.
    pub(crate) fn allocated_files(&self, files: &[LayerId]) -> u64 {
        files
            .iter()
            .map(|f| {
                self.inner
                    .storage
                    .open(&self.inner.paths.data(*f), false)
                    .and_then(|f| f.allocated_bytes())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// One commit: `removals` leave the tree (their files that no one takes
    /// over listed in a removal intent), `relink` gives layers new parents,
    /// `reindexed` layers get their new stored sizes; then the files go.
    fn commit_removals(
        &self,
        removals: Vec<Removal>,
        relink: Vec<(LayerId, Option<LayerId>)>,
        reindexed: Vec<(LayerId, FrozenIndex)>,
    ) -> Result<()> {
        let mut doomed: Vec<(LayerId, LayerFileKind)> = Vec::new();
        let cat = self.catalog();
        for r in &removals {
            let Some(l) = cat.layers.get(&r.layer) else {
                continue;
            };
            let kept: BTreeSet<LayerId> = r.transfer.iter().map(|(f, _)| *f).collect();
            doomed.extend(
                l.files
                    .iter()
                    .filter(|f| !kept.contains(f))
                    .map(|&f| (f, LayerFileKind::Data)),
            );
            doomed.push((
                r.layer,
                if l.frozen.is_some() {
                    LayerFileKind::Index
                } else {
                    LayerFileKind::Log
                },
            ));
        }
        let mut stats: BTreeMap<LayerId, FrozenInfo> = BTreeMap::new();
        for (id, idx) in &reindexed {
            let mut files: Vec<LayerId> = cat
                .layers
                .get(id)
                .map(|l| l.files.clone())
                .unwrap_or_default();
            for r in &removals {
                files.extend(
                    r.transfer
                        .iter()
                        .filter(|(_, to)| to == id)
                        .map(|(f, _)| *f),
                );
            }
            let stored = self.allocated_files(&files);
            stats.insert(
                *id,
                FrozenInfo {
                    blocks: idx.present().blocks(),
                    stored_bytes: stored,
                },
            );
        }
        self.commit(|c| {
            for r in &removals {
                c.layers.remove(&r.layer);
                for (f, to) in &r.transfer {
                    if let Some(t) = c.layers.get_mut(to) {
                        if !t.files.contains(f) {
                            t.files.push(*f);
                        }
                    }
                }
            }
            for (child, parent) in &relink {
                if let Some(l) = c.layers.get_mut(child) {
                    l.parent = *parent;
                }
            }
            for (id, info) in &stats {
                if let Some(l) = c.layers.get_mut(id) {
                    l.frozen = Some(*info);
                }
            }
            if !doomed.is_empty() {
                c.add_intent(Intent {
                    what: "remove layers nothing reads".into(),
                    kind: IntentKind::Remove,
                    files: doomed.clone(),
                });
            }
            Ok(())
        })
        .map_err(|e| e.into_inner())?;
        self.forget_maps();
        self.wait_for_disk_reads();
        self.remove_files(&doomed);
        Ok(())
    }

    /// Waits for the reads of every open disk that were in flight: one may
    /// have been sent to a block about to be punched or a file about to go
    /// (see [`crate::store::Disk::wait_for_reads`]). Snapshot images need
    /// no wait: their chains are pinned while they are open.
    fn wait_for_disk_reads(&self) {
        let disks: Vec<_> = self.inner.disks.lock().values().cloned().collect();
        for d in disks {
            d.wait_for_reads();
        }
    }

    /// Drops removal intents whose files are all gone.
    fn drop_finished_removals(&self) -> Result<()> {
        let cat = self.catalog();
        let done: Vec<u64> = cat
            .intents
            .iter()
            .filter(|(_, i)| i.kind == IntentKind::Remove)
            .filter(|(_, i)| {
                i.files.iter().all(|&(id, kind)| {
                    self.inner
                        .storage
                        .kind(&self.inner.paths.file(id, kind))
                        .is_ok_and(|k| k.is_none())
                })
            })
            .map(|(n, _)| *n)
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        self.commit(|c| {
            for n in &done {
                c.intents.remove(n);
            }
            Ok(())
        })
        .map_err(|e| e.into_inner())
    }
}
