//! Retention: keep the newest snapshots, and the newest of each hour, day,
//! week and month as far back as asked, and delete the rest.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::store::error::{Result, StoreError};
use crate::store::names::{DiskName, LayerId, SnapshotRef};
use crate::store::{utc, Repository};

/// How many of each to keep; the union of the rules is kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// The newest N snapshots.
    pub last: u32,
    /// The newest snapshot of each of the last N hours that have one.
    pub hourly: u32,
    pub daily: u32,
    /// Weeks are ISO weeks (Monday to Sunday, UTC).
    pub weekly: u32,
    pub monthly: u32,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        self.last + self.hourly + self.daily + self.weekly + self.monthly == 0
    }
}

/// What a prune kept and deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub keep: Vec<String>,
    pub delete: Vec<String>,
    /// Bytes given back (for a dry run: what would be, estimated).
    pub freed_bytes: u64,
    pub dry_run: bool,
    /// See [`super::delete::DeleteReport::unfinished`].
    pub unfinished: Option<String>,
}

/// Which period a time falls in, as a comparable key.
type Period = fn(u64) -> (i32, i32, i32, i32);

/// The snapshots (index into `taken`, newest first) the rules keep.
pub fn keep(taken: &[u64], rules: &Retention) -> BTreeSet<usize> {
    let mut kept: BTreeSet<usize> = (0..taken.len().min(rules.last as usize)).collect();
    let periods: [(u32, Period); 4] = [
        (rules.hourly, |t| {
            let d = utc(t);
            (
                d.year().into(),
                d.month().into(),
                d.day().into(),
                d.hour().into(),
            )
        }),
        (rules.daily, |t| {
            let d = utc(t);
            (d.year().into(), d.month().into(), d.day().into(), 0)
        }),
        (rules.weekly, |t| {
            let w = utc(t).date().iso_week_date();
            (w.year().into(), w.week().into(), 0, 0)
        }),
        (rules.monthly, |t| {
            let d = utc(t);
            (d.year().into(), d.month().into(), 0, 0)
        }),
    ];
    for (n, period) in periods {
        let mut last = None;
        let mut count = 0;
        for (i, &t) in taken.iter().enumerate() {
            if count >= n {
                break;
            }
            let p = period(t);
            if last != Some(p) {
                kept.insert(i);
                last = Some(p);
                count += 1;
            }
        }
    }
    kept
}

impl Repository {
    /// Deletes the snapshots of `disk` that `rules` do not keep (or, for a
    /// dry run, says which it would and what that would give back).
    pub fn prune(&self, disk: &DiskName, rules: &Retention, dry_run: bool) -> Result<PruneReport> {
        if rules.is_empty() {
            return Err(StoreError::invalid(
                "retention",
                "give at least one --keep-… rule (without one, every snapshot would go)",
            ));
        }
        let mut snaps = self.snapshots(disk)?;
        // Newest first by the time taken (the order taken, should the
        // clock have stepped back): periods are counted in time.
        snaps.reverse();
        snaps.sort_by_key(|s| std::cmp::Reverse(s.taken));
        let taken: Vec<u64> = snaps.iter().map(|s| s.taken).collect();
        let kept = keep(&taken, rules);
        let (mut keep_names, mut delete) = (vec![], vec![]);
        let mut gone: BTreeSet<LayerId> = BTreeSet::new();
        let mut refs = vec![];
        for (i, s) in snaps.iter().enumerate() {
            if kept.contains(&i) {
                keep_names.push(s.name.clone());
            } else {
                delete.push(s.name.clone());
                gone.insert(s.layer);
                refs.push(SnapshotRef::parse(&format!("{disk}@{}", s.name))?);
            }
        }
        let (freed_bytes, unfinished) = if dry_run {
            (self.estimate_freed(&gone)?, None)
        } else if refs.is_empty() {
            (0, None)
        } else {
            let r = self.delete_snapshots(&refs)?;
            (r.freed_bytes, r.unfinished)
        };
        Ok(PruneReport {
            keep: keep_names,
            delete,
            freed_bytes,
            dry_run,
            unfinished,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600 * 1_000_000_000;

    #[test]
    fn the_newest_of_each_period_is_kept() {
        // Every 6 hours for 10 days, newest first.
        let t0 = 1_767_225_600 * 1_000_000_000; // 2026-01-01T00:00:00Z
        let taken: Vec<u64> = (0..40).rev().map(|i| t0 + i * 6 * HOUR).collect();
        let only = |r: Retention| keep(&taken, &r);
        assert_eq!(
            only(Retention {
                last: 3,
                ..Default::default()
            }),
            [0, 1, 2].into()
        );
        // One a day: the newest of each day, i.e. the 18:00 ones.
        let daily = only(Retention {
            daily: 4,
            ..Default::default()
        });
        assert_eq!(daily, [0, 4, 8, 12].into());
        for &i in &daily {
            assert_eq!(utc(taken[i]).hour(), 18);
        }
        // Union of rules.
        let both = only(Retention {
            last: 2,
            daily: 2,
            ..Default::default()
        });
        assert_eq!(both, [0, 1, 4].into());
        // Asking for more periods than there are keeps one per period.
        assert_eq!(
            only(Retention {
                monthly: 5,
                ..Default::default()
            }),
            [0].into()
        );
        assert_eq!(
            only(Retention {
                weekly: 5,
                ..Default::default()
            })
            .len(),
            2
        );
    }
}
