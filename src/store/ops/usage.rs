//! What a repository stores, as the cloud bills it: per disk its
//! provisioned size and what it uses; per snapshot what it stores itself,
//! what deleting it now would give back, and its whole image's used size;
//! and, from the usage history the catalog keeps, each day's GiB-months.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::store::catalog::Catalog;
use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::layer;
use crate::store::names::{DiskName, LayerId};
use crate::store::{date_of_day, today, Repository};

use super::tidy::geometry;

/// A snapshot's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUsage {
    pub name: String,
    /// Unix nanoseconds when taken.
    pub taken: u64,
    /// Bytes it stores itself (its `du`).
    pub stored_bytes: u64,
    /// Bytes deleting it now would give back.
    pub reclaimable_bytes: u64,
    /// Used size of its whole image (what a full copy of it stores).
    pub image_bytes: u64,
}

/// A disk's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub name: String,
    /// Its live disk exists (a deleted disk's snapshots are listed too).
    pub live: bool,
    /// Provisioned size (0 for a deleted disk).
    pub size: u64,
    /// Bytes it holds that none of its snapshots does (what changed since
    /// its last remaining snapshot): its `du live.img`.
    pub live_bytes: u64,
    /// Bytes its live layer and its snapshots store.
    pub used_bytes: u64,
    pub snapshots: Vec<SnapshotUsage>,
}

/// A repository's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    pub disks: Vec<DiskUsage>,
    pub provisioned_bytes: u64,
    /// Bytes all data files occupy (for a report of one disk: what that
    /// disk's live layer and snapshots occupy).
    pub used_bytes: u64,
    /// Bytes kept for deleted snapshots that several images still read
    /// (where disks made from snapshots branch off); what only one live
    /// disk reads counts in its `live_bytes`. 0 in a report of one disk.
    pub shared_bytes: u64,
    /// Layers in the tree: one per snapshot and per live disk, and those of
    /// deleted snapshots that other images still read through.
    pub layers: u64,
}

/// One snapshot on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotDay {
    pub disk: String,
    pub snapshot: String,
    pub bytes: u64,
    /// `bytes` in GiB, over the days of that month.
    pub gib_months: f64,
}

/// One day of the usage history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub snapshots: Vec<SnapshotDay>,
    pub bytes: u64,
    pub gib_months: f64,
}

/// The usage history over a range of days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyUsage {
    pub days: Vec<DayUsage>,
    pub gib_months: f64,
}

/// A layer as the simulation of a delete sees it.
#[derive(Clone)]
struct Node {
    parent: Option<LayerId>,
    present: ExtentSet,
    data: ExtentSet,
    frozen: bool,
    block_size: u64,
}

impl Repository {
    /// Usage of every disk, or of one.
    pub fn usage(&self, disk: Option<&DiskName>) -> Result<UsageReport> {
        let cat = self.catalog();
        if let Some(d) = disk {
            if !cat.disks.contains_key(d) && !cat.snapshots.contains_key(d) {
                return Err(StoreError::NoSuchDisk(d.clone()));
            }
        }
        let named = cat.named_layers();
        let mut report = UsageReport {
            disks: vec![],
            provisioned_bytes: 0,
            used_bytes: 0,
            shared_bytes: 0,
            layers: cat.layers.len() as u64,
        };
        // Layers of deleted snapshots that only one live disk reads count
        // as that disk's; the rest of them are shared.
        let mut held: BTreeMap<LayerId, Vec<LayerId>> = BTreeMap::new();
        for d in cat.disks.values() {
            held.insert(d.live, self.held_below(d.live));
        }
        let attributed: BTreeSet<LayerId> = held.values().flatten().copied().collect();
        if disk.is_none() {
            for &id in cat.layers.keys() {
                let bytes = self.allocated(&cat, &[id]);
                report.used_bytes += bytes;
                if !named.contains(&id) && !attributed.contains(&id) {
                    report.shared_bytes += bytes;
                }
            }
        }
        let nodes = self.nodes(&cat)?;
        let children = cat.children();
        for name in self.disk_names() {
            if disk.is_some_and(|d| *d != name) {
                continue;
            }
            let rec = cat.disks.get(&name);
            let live_bytes = rec.map_or(0, |d| {
                let mut layers = vec![d.live];
                layers.extend(held.get(&d.live).into_iter().flatten());
                self.allocated(&cat, &layers)
            });
            let mut u = DiskUsage {
                name: name.to_string(),
                live: rec.is_some(),
                size: rec.map_or(0, |d| d.size),
                live_bytes,
                used_bytes: live_bytes,
                snapshots: vec![],
            };
            report.provisioned_bytes += u.size;
            for (snap, r) in cat.snapshots_of(&name) {
                let stored = self.allocated(&cat, &[r.layer]);
                u.used_bytes += stored;
                u.snapshots.push(SnapshotUsage {
                    name: snap.to_string(),
                    taken: r.taken,
                    stored_bytes: stored,
                    reclaimable_bytes: reclaimable(&nodes, &children, r.layer).min(stored),
                    image_bytes: self.image_bytes(&cat, r.layer)?,
                });
            }
            if disk.is_some() {
                report.used_bytes += u.used_bytes;
            }
            report.disks.push(u);
        }
        Ok(report)
    }

    /// The used size of the image of frozen layer `top`: the bytes its data
    /// blocks occupy where they live (what a sparse copy of it stores).
    fn image_bytes(&self, cat: &Catalog, top: LayerId) -> Result<u64> {
        let map = self.frozen_map(top)?;
        let bs = geometry(cat, top).block_size as u64;
        let mut total = 0;
        for (run, owner) in map.map.runs().filter(|(_, o)| !o.zero) {
            let file = self.inner.files.get(owner.layer)?;
            let path = self.inner.paths.data(owner.layer);
            let io = |e| StoreError::io(&path)(e);
            let (mut pos, end) = (run.start * bs, run.end * bs);
            while pos < end {
                match file.seek_data(pos).map_err(io)? {
                    Some(d) if d < end => {
                        let h = file.seek_hole(d).map_err(io)?.min(end);
                        total += h - d;
                        pos = h.max(d + 1);
                    }
                    _ => break,
                }
            }
        }
        Ok(total)
    }

    /// Every layer, as the simulation of a delete needs it.
    fn nodes(&self, cat: &Catalog) -> Result<BTreeMap<LayerId, Node>> {
        let mut out = BTreeMap::new();
        for (&id, l) in &cat.layers {
            let (present, data) = if l.frozen.is_some() {
                let idx = layer::read_index(&self.inner.files, id, geometry(cat, id))?;
                let mut data = ExtentSet::new();
                for p in &idx.pieces {
                    data.union_with(&p.data);
                }
                (idx.present(), data)
            } else {
                // A live layer only covers what is below; it is never freed.
                (self.present_of(cat, id)?, ExtentSet::new())
            };
            out.insert(
                id,
                Node {
                    parent: l.parent,
                    present,
                    data,
                    frozen: l.frozen.is_some(),
                    block_size: l.block_size as u64,
                },
            );
        }
        Ok(out)
    }

    /// What deleting the snapshots naming `gone` would give back (an
    /// estimate: data blocks times the block size).
    pub(crate) fn estimate_freed(&self, gone: &BTreeSet<LayerId>) -> Result<u64> {
        let cat = self.catalog();
        let nodes = self.nodes(&cat)?;
        Ok(simulate(&cat, nodes, gone))
    }

    /// Each day's stored size of each snapshot, in bytes and GiB-months,
    /// from `from` to `to` (days since 1970-01-01; default: from the first
    /// day of the history to today).
    pub fn daily_usage(&self, from: Option<u32>, to: Option<u32>) -> Result<DailyUsage> {
        let cat = self.catalog();
        let today = today();
        let first = cat.usage.keys().map(|(_, d)| *d).min().unwrap_or(today);
        // Days to come have no usage yet: the report stops at today.
        let (from, to) = (from.unwrap_or(first), to.unwrap_or(today).min(today));
        if from > to {
            return Err(StoreError::invalid(
                "date range",
                if from > today {
                    format!(
                        "--from {} is after today ({})",
                        date_of_day(from),
                        date_of_day(today)
                    )
                } else {
                    "--from is after --to".to_string()
                },
            ));
        }
        let mut layers: BTreeSet<LayerId> = BTreeSet::new();
        layers.extend(cat.usage.keys().map(|(l, _)| *l));
        let mut out = DailyUsage {
            days: vec![],
            gib_months: 0.0,
        };
        for day in from..=to {
            let date = date_of_day(day);
            let month_days = f64::from(date.days_in_month());
            let mut d = DayUsage {
                date: date.to_string(),
                snapshots: vec![],
                bytes: 0,
                gib_months: 0.0,
            };
            for &l in &layers {
                // As the day ended (today: as it is now). A snapshot deleted
                // that day does not count: what other images still read of
                // it counts in theirs.
                let Some((_, e)) = cat.usage.range((l, 0)..=(l, day)).next_back() else {
                    continue;
                };
                if !e.alive {
                    continue;
                }
                let gm = e.bytes as f64 / (1u64 << 30) as f64 / month_days;
                d.bytes += e.bytes;
                d.gib_months += gm;
                d.snapshots.push(SnapshotDay {
                    disk: e.disk.to_string(),
                    snapshot: e.snap.to_string(),
                    bytes: e.bytes,
                    gib_months: gm,
                });
            }
            out.gib_months += d.gib_months;
            out.days.push(d);
        }
        Ok(out)
    }
}

/// What deleting the snapshot of layer `id` alone would give back: the data
/// blocks every child holds too, or all of them if it has no child. (Not
/// counted: an earlier deleted snapshot's layer this one would let go.)
fn reclaimable(
    nodes: &BTreeMap<LayerId, Node>,
    children: &BTreeMap<LayerId, Vec<LayerId>>,
    id: LayerId,
) -> u64 {
    let Some(node) = nodes.get(&id) else { return 0 };
    let kids = children.get(&id).map(Vec::as_slice).unwrap_or(&[]);
    let mut covered: Option<ExtentSet> = None;
    for k in kids {
        let Some(kid) = nodes.get(k) else { continue };
        covered = Some(match covered {
            None => kid.present.clone(),
            Some(c) => c.intersection(&kid.present),
        });
    }
    let blocks = match covered {
        None => node.data.blocks(),
        Some(c) => node.data.intersection(&c).blocks(),
    };
    blocks * node.block_size
}

/// Runs tidy's rules (see `super::tidy`) on a copy of the tree with the
/// snapshots naming `gone` deleted, and sums what it would punch or remove.
fn simulate(cat: &Catalog, mut nodes: BTreeMap<LayerId, Node>, gone: &BTreeSet<LayerId>) -> u64 {
    let mut named = cat.named_layers();
    for g in gone {
        named.remove(g);
    }
    let mut freed = 0;
    loop {
        let mut children: BTreeMap<LayerId, Vec<LayerId>> = BTreeMap::new();
        for (&id, n) in &nodes {
            if let Some(p) = n.parent {
                children.entry(p).or_default().push(id);
            }
        }
        let hidden: Vec<LayerId> = nodes
            .iter()
            .filter(|(id, n)| n.frozen && !named.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let mut acted = false;
        for h in hidden {
            let kids = children.get(&h).cloned().unwrap_or_default();
            let node = nodes[&h].clone();
            if kids.is_empty() {
                freed += node.data.blocks() * node.block_size;
                nodes.remove(&h);
                acted = true;
                break;
            }
            let mut covered = nodes[&kids[0]].present.clone();
            for k in &kids[1..] {
                covered = covered.intersection(&nodes[k].present);
            }
            freed += node.data.intersection(&covered).blocks() * node.block_size;
            let rest = node.present.difference(&covered);
            let rest_data = node.data.difference(&covered);
            let single_frozen = kids.len() == 1 && nodes[&kids[0]].frozen;
            if rest.is_empty() || single_frozen {
                for k in &kids {
                    let kid = nodes.get_mut(k).expect("a child is a node");
                    kid.parent = node.parent;
                    if single_frozen {
                        kid.present.union_with(&rest);
                        kid.data.union_with(&rest_data);
                    }
                }
                nodes.remove(&h);
                acted = true;
                break;
            }
            if let Some(n) = nodes.get_mut(&h) {
                n.present = rest;
                n.data = rest_data;
            }
        }
        if !acted {
            return freed;
        }
    }
}
