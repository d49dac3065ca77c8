//! Block sets and owner maps as sorted runs.
//!
//! [`ExtentSet`] is a set of blocks kept as disjoint, non-adjacent runs: a
//! layer's present blocks. [`OwnerMap`] maps every block to the layer that
//! holds its newest copy, also as runs. Both answer a lookup in
//! O(log runs) whatever the number of layers below, which is what makes a
//! read cost the same at chain depth 1 and 10,000.

use std::collections::BTreeMap;
use std::ops::Range;

use super::names::LayerId;

/// A set of block numbers, as runs `start..end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentSet {
    runs: BTreeMap<u64, u64>,
    blocks: u64,
}

impl ExtentSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from `(first, count)` pairs in any order.
    pub fn from_extents(extents: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut s = Self::new();
        for (first, count) in extents {
            s.insert(first..first.saturating_add(count));
        }
        s
    }

    /// Number of blocks in the set.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn contains(&self, block: u64) -> bool {
        self.runs
            .range(..=block)
            .next_back()
            .is_some_and(|(_, &end)| block < end)
    }

    /// Adds `range`, merging it with runs it overlaps or touches.
    pub fn insert(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (mut start, mut end) = (range.start, range.end);
        if let Some((&s, &e)) = self.runs.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        let absorbed: Vec<(u64, u64)> = self
            .runs
            .range(start..=end)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in absorbed {
            self.runs.remove(&s);
            self.blocks -= e - s;
            end = end.max(e);
        }
        self.runs.insert(start, end);
        self.blocks += end - start;
    }

    /// The runs, in order.
    pub fn runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs.iter().map(|(&s, &e)| s..e)
    }

    /// The runs as `(first, count)` pairs, the index encoding.
    pub fn to_extents(&self) -> Vec<(u64, u64)> {
        self.runs.iter().map(|(&s, &e)| (s, e - s)).collect()
    }

    /// Splits `range` into consecutive pieces, each wholly inside the set
    /// (`true`) or wholly outside it (`false`).
    pub fn segments(&self, range: Range<u64>) -> Vec<(Range<u64>, bool)> {
        let mut out = Vec::new();
        let mut pos = range.start;
        let first = self
            .runs
            .range(..=range.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        for (&s, &e) in self.runs.range(first..range.end) {
            if e <= pos {
                continue;
            }
            if s > pos {
                out.push((pos..s, false));
            }
            let stop = e.min(range.end);
            out.push((s.max(pos)..stop, true));
            pos = stop;
        }
        if pos < range.end {
            out.push((pos..range.end, false));
        }
        out
    }
}

/// Block → layer holding the block's newest copy, as disjoint runs. Blocks in
/// no run belong to no layer and read as zeros.
#[derive(Debug, Clone, Default)]
pub struct OwnerMap {
    runs: BTreeMap<u64, (u64, LayerId)>,
}

impl OwnerMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of runs (the map's memory is proportional to it).
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Makes `layer` the owner of every block of `range`, over whatever owned
    /// them before: how a newer layer covers the ones below it.
    pub fn paint(&mut self, range: Range<u64>, layer: LayerId) {
        if range.is_empty() {
            return;
        }
        let (start, end) = (range.start, range.end);
        // Split a run that straddles `start`, keeping its left part.
        if let Some((&s, &(e, l))) = self.runs.range(..start).next_back() {
            if e > start {
                self.runs.insert(s, (start, l));
                if e > end {
                    self.runs.insert(end, (e, l));
                }
            }
        }
        // Remove runs that start inside the range, keeping a right remainder.
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, l)) = self.runs.remove(&s) {
                if e > end {
                    self.runs.insert(end, (e, l));
                }
            }
        }
        // Merge with neighbours held by the same layer, to keep runs few.
        let mut start = start;
        let mut end = end;
        if let Some((&s, &(e, l))) = self.runs.range(..start).next_back() {
            if e == start && l == layer {
                self.runs.remove(&s);
                start = s;
            }
        }
        if let Some(&(e, l)) = self.runs.get(&end) {
            if l == layer {
                self.runs.remove(&end);
                end = e;
            }
        }
        self.runs.insert(start, (end, layer));
    }

    /// The one layer that owns every owned block, when there is exactly one:
    /// then that layer's file alone is the whole image.
    pub fn sole_owner(&self) -> Option<LayerId> {
        let mut owners = self.runs.values().map(|&(_, l)| l);
        let first = owners.next()?;
        owners.all(|l| l == first).then_some(first)
    }

    /// Splits `range` into consecutive pieces, each owned by one layer or by
    /// none.
    pub fn segments(&self, range: Range<u64>) -> Vec<(Range<u64>, Option<LayerId>)> {
        let mut out = Vec::new();
        self.segments_into(range, &mut out);
        out
    }

    pub fn segments_into(&self, range: Range<u64>, out: &mut Vec<(Range<u64>, Option<LayerId>)>) {
        let mut pos = range.start;
        let first = self
            .runs
            .range(..=range.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        for (&s, &(e, l)) in self.runs.range(first..range.end) {
            if e <= pos {
                continue;
            }
            if s > pos {
                out.push((pos..s, None));
            }
            let stop = e.min(range.end);
            out.push((s.max(pos)..stop, Some(l)));
            pos = stop;
        }
        if pos < range.end {
            out.push((pos..range.end, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn extent_set_matches_a_set(ops in prop::collection::vec((0u64..200, 1u64..20), 0..60)) {
            let mut s = ExtentSet::new();
            let mut model = BTreeSet::new();
            for (a, n) in ops {
                s.insert(a..a + n);
                model.extend(a..a + n);
            }
            prop_assert_eq!(s.blocks(), model.len() as u64);
            for b in 0..230 {
                prop_assert_eq!(s.contains(b), model.contains(&b));
            }
            // Runs are disjoint and non-adjacent.
            let runs: Vec<_> = s.runs().collect();
            for w in runs.windows(2) {
                prop_assert!(w[0].end < w[1].start);
            }
            let segs = s.segments(17..211);
            let mut pos = 17;
            for (r, inside) in segs {
                prop_assert_eq!(r.start, pos);
                for b in r.clone() {
                    prop_assert_eq!(model.contains(&b), inside);
                }
                pos = r.end;
            }
            prop_assert_eq!(pos, 211);
        }

        #[test]
        fn owner_map_matches_an_array(ops in prop::collection::vec((0u64..200, 1u64..30, 0u64..5), 0..60)) {
            let mut m = OwnerMap::new();
            let mut model = [None; 240];
            for (a, n, l) in ops {
                m.paint(a..a + n, LayerId(l));
                for slot in &mut model[a as usize..(a + n) as usize] {
                    *slot = Some(LayerId(l));
                }
            }
            let segs = m.segments(3..237);
            let mut pos = 3;
            for (r, owner) in segs {
                prop_assert_eq!(r.start, pos);
                for b in r.clone() {
                    prop_assert_eq!(model[b as usize], owner);
                }
                pos = r.end;
            }
            prop_assert_eq!(pos, 237);
        }
    }
}
