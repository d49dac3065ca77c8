//! Block sets and block maps as sorted runs.
//!
//! [`ExtentSet`] is a set of blocks kept as disjoint, non-adjacent runs.
//! [`RunMap`] maps blocks to values, also as runs: a layer's
//! [`PresentMap`] (which blocks it holds, as data or as zeros) and an
//! image's [`OwnerMap`] (which layer holds each block's newest copy). Both
//! answer a lookup in O(log runs) whatever the number of layers below,
//! which is what makes a read cost the same at chain depth 1 and 10,000.

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

    /// The blocks in both sets.
    pub fn intersection(&self, other: &ExtentSet) -> ExtentSet {
        let (small, large) = if self.runs.len() <= other.runs.len() {
            (self, other)
        } else {
            (other, self)
        };
        let mut out = ExtentSet::new();
        for r in small.runs() {
            for (seg, inside) in large.segments(r) {
                if inside {
                    out.insert(seg);
                }
            }
        }
        out
    }

    /// The blocks of `self` not in `other`.
    pub fn difference(&self, other: &ExtentSet) -> ExtentSet {
        let mut out = ExtentSet::new();
        for r in self.runs() {
            for (seg, inside) in other.segments(r) {
                if !inside {
                    out.insert(seg);
                }
            }
        }
        out
    }

    /// Adds every block of `other`.
    pub fn union_with(&mut self, other: &ExtentSet) {
        for r in other.runs() {
            self.insert(r);
        }
    }

    /// Whether every block of `other` is in `self`.
    pub fn covers(&self, other: &ExtentSet) -> bool {
        other
            .runs()
            .all(|r| self.segments(r).iter().all(|(_, inside)| *inside))
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

/// A map from blocks to values, as disjoint runs `start..end → value`;
/// neighbouring runs with the same value are merged, so the map's memory is
/// proportional to how fragmented it is, not to the disk. Blocks in no run
/// have no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMap<V> {
    runs: BTreeMap<u64, (u64, V)>,
    blocks: u64,
}

impl<V> Default for RunMap<V> {
    fn default() -> Self {
        RunMap {
            runs: BTreeMap::new(),
            blocks: 0,
        }
    }
}

impl<V: Copy + Eq> RunMap<V> {
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

    /// Number of blocks that have a value.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn get(&self, block: u64) -> Option<V> {
        self.runs
            .range(..=block)
            .next_back()
            .filter(|(_, &(end, _))| block < end)
            .map(|(_, &(_, v))| v)
    }

    /// Removes every value in `range`, splitting runs that straddle it.
    pub fn clear(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let (start, end) = (range.start, range.end);
        if let Some((&s, &(e, v))) = self.runs.range(..start).next_back() {
            if e > start {
                self.runs.insert(s, (start, v));
                self.blocks -= e - start;
                if e > end {
                    self.runs.insert(end, (e, v));
                    self.blocks += e - end;
                }
            }
        }
        let inside: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((e, v)) = self.runs.remove(&s) {
                self.blocks -= e - s;
                if e > end {
                    self.runs.insert(end, (e, v));
                    self.blocks += e - end;
                }
            }
        }
    }

    /// Gives every block of `range` the value `value`, over whatever it had:
    /// how a newer layer covers the ones below it.
    pub fn paint(&mut self, range: Range<u64>, value: V) {
        if range.is_empty() {
            return;
        }
        self.clear(range.clone());
        let (mut start, mut end) = (range.start, range.end);
        // Merge with neighbours of the same value, to keep runs few.
        if let Some((&s, &(e, v))) = self.runs.range(..start).next_back() {
            if e == start && v == value {
                self.runs.remove(&s);
                start = s;
            }
        }
        if let Some(&(e, v)) = self.runs.get(&end) {
            if v == value {
                self.runs.remove(&end);
                end = e;
            }
        }
        self.runs.insert(start, (end, value));
        self.blocks += range.end - range.start;
    }

    /// The runs, in order.
    pub fn runs(&self) -> impl Iterator<Item = (Range<u64>, V)> + '_ {
        self.runs.iter().map(|(&s, &(e, v))| (s..e, v))
    }

    /// The runs that hold `value`, as `(first, count)` pairs.
    pub fn extents_of(&self, value: V) -> Vec<(u64, u64)> {
        self.runs()
            .filter(|(_, v)| *v == value)
            .map(|(r, _)| (r.start, r.end - r.start))
            .collect()
    }

    /// The one value every block with a value has, when there is exactly one.
    pub fn sole_value(&self) -> Option<V> {
        let mut values = self.runs.values().map(|&(_, v)| v);
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }

    /// Splits `range` into consecutive pieces, each with one value or none.
    pub fn segments(&self, range: Range<u64>) -> Vec<(Range<u64>, Option<V>)> {
        let mut out = Vec::new();
        self.segments_into(range, &mut out);
        out
    }

    pub fn segments_into(&self, range: Range<u64>, out: &mut Vec<(Range<u64>, Option<V>)>) {
        let mut pos = range.start;
        let first = self
            .runs
            .range(..=range.start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(range.start);
        for (&s, &(e, v)) in self.runs.range(first..range.end) {
            if e <= pos {
                continue;
            }
            if s > pos {
                out.push((pos..s, None));
            }
            let stop = e.min(range.end);
            out.push((s.max(pos)..stop, Some(v)));
            pos = stop;
        }
        if pos < range.end {
            out.push((pos..range.end, None));
        }
    }
}

/// Who holds a block's newest copy in a chain: a data file (named by the
/// layer that made it), or a layer that holds the block as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The data file, or for a zero block the layer holding it.
    pub layer: LayerId,
    /// The block is zeros (reads touch no file).
    pub zero: bool,
}

/// Block → who holds its newest copy. Blocks in no run were never written
/// by any layer of the chain and read as zeros.
pub type OwnerMap = RunMap<Owner>;

impl OwnerMap {
    /// Makes layer `layer` the owner of the blocks its index names, over the
    /// layers below: how a newer layer covers the ones below it. Data blocks
    /// are owned by the data file they live in, zero blocks by the layer.
    pub fn cover(&mut self, layer: LayerId, pieces: &[(LayerId, &ExtentSet)], zero: &ExtentSet) {
        for (file, data) in pieces {
            for r in data.runs() {
                self.paint(
                    r,
                    Owner {
                        layer: *file,
                        zero: false,
                    },
                );
            }
        }
        for r in zero.runs() {
            self.paint(r, Owner { layer, zero: true });
        }
    }
}

/// What a layer holds for one of its present blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockKind {
    /// Bytes in the layer's data file.
    Data,
    /// Zeros, recorded without any bytes (a discard or a write of zeros).
    Zero,
}

/// A layer's present blocks and what each holds.
pub type PresentMap = RunMap<BlockKind>;

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
        fn set_operations_match_sets(
            a in prop::collection::vec((0u64..150, 1u64..20), 0..20),
            b in prop::collection::vec((0u64..150, 1u64..20), 0..20),
        ) {
            let sa = ExtentSet::from_extents(a.iter().copied());
            let sb = ExtentSet::from_extents(b.iter().copied());
            let ma: BTreeSet<u64> = a.iter().flat_map(|&(s, n)| s..s + n).collect();
            let mb: BTreeSet<u64> = b.iter().flat_map(|&(s, n)| s..s + n).collect();
            let inter = sa.intersection(&sb);
            let diff = sa.difference(&sb);
            let mut uni = sa.clone();
            uni.union_with(&sb);
            for x in 0..180 {
                prop_assert_eq!(inter.contains(x), ma.contains(&x) && mb.contains(&x));
                prop_assert_eq!(diff.contains(x), ma.contains(&x) && !mb.contains(&x));
                prop_assert_eq!(uni.contains(x), ma.contains(&x) || mb.contains(&x));
            }
            prop_assert_eq!(uni.covers(&sa), true);
            prop_assert_eq!(sa.covers(&sb), mb.is_subset(&ma));
        }

        #[test]
        fn run_map_matches_an_array(ops in prop::collection::vec((0u64..200, 1u64..30, 0u64..6), 0..60)) {
            let mut m = RunMap::<LayerId>::new();
            let mut model = [None; 240];
            for (a, n, l) in ops {
                // Value 5 stands for clearing the range.
                let v = (l < 5).then_some(LayerId(l));
                match v {
                    Some(id) => m.paint(a..a + n, id),
                    None => m.clear(a..a + n),
                }
                for slot in &mut model[a as usize..(a + n) as usize] {
                    *slot = v;
                }
            }
            prop_assert_eq!(m.blocks(), model.iter().filter(|s| s.is_some()).count() as u64);
            for (b, want) in model.iter().enumerate() {
                prop_assert_eq!(m.get(b as u64), *want);
            }
            // Runs are disjoint, and touching runs differ in value.
            let runs: Vec<_> = m.runs().collect();
            for w in runs.windows(2) {
                prop_assert!(w[0].0.end < w[1].0.start || (w[0].0.end == w[1].0.start && w[0].1 != w[1].1));
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
