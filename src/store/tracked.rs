//! Maps that remember what each key held before the commit under way
//! touched it, so that a commit writes, and on failure undoes, only what it
//! changed: its cost follows the change, not the catalog's size.
//!
//! Reads go through `Deref` to the plain map. Every change goes through a
//! method here, which notes the key's old value the first time the key is
//! touched. [`Tracked::touched`] lists what changed since the last
//! [`Tracked::settle`]; [`Tracked::rollback`] puts it all back. On disk
//! (serde) a tracked map is exactly its plain map.

use std::collections::BTreeMap;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `BTreeMap` with a log of the keys changed since it was last settled.
#[derive(Debug, Clone)]
pub struct Tracked<K, V> {
    map: BTreeMap<K, V>,
    /// Each key touched since the last settle, with its value before.
    before: BTreeMap<K, Option<V>>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Tracked {
            map: BTreeMap::new(),
            before: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Tracked<K, V> {
    fn note(&mut self, k: &K) {
        if !self.before.contains_key(k) {
            self.before.insert(k.clone(), self.map.get(k).cloned());
        }
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.note(&k);
        self.map.insert(k, v)
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        if !self.map.contains_key(k) {
            return None;
        }
        self.note(k);
        self.map.remove(k)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        if !self.map.contains_key(k) {
            return None;
        }
        self.note(k);
        self.map.get_mut(k)
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self
            .map
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    pub fn clear(&mut self) {
        self.retain(|_, _| false);
    }

    /// The value `k` had at the last settle, if the commit under way
    /// touched it (`Some(None)`: it was absent).
    pub fn before(&self, k: &K) -> Option<Option<&V>> {
        self.before.get(k).map(Option::as_ref)
    }

    /// What changed since the last settle: each key, its value before and
    /// its value now (`None` where absent), for keys whose value differs.
    pub fn touched(&self) -> impl Iterator<Item = (&K, Option<&V>, Option<&V>)> {
        self.before
            .iter()
            .map(|(k, b)| (k, b.as_ref(), self.map.get(k)))
            .filter(|(_, b, n)| b != n)
    }

    /// Puts back every value as it was at the last settle.
    pub fn rollback(&mut self) {
        for (k, b) in std::mem::take(&mut self.before) {
            match b {
                Some(v) => self.map.insert(k, v),
                None => self.map.remove(&k),
            };
        }
    }

    /// Accepts what changed: the log starts afresh.
    pub fn settle(&mut self) {
        self.before.clear();
    }

    pub fn is_settled(&self) -> bool {
        self.before.is_empty()
    }
}

impl<K, V> Deref for Tracked<K, V> {
    type Target = BTreeMap<K, V>;

    fn deref(&self) -> &BTreeMap<K, V> {
        &self.map
    }
}

impl<'a, K, V> IntoIterator for &'a Tracked<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::btree_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for Tracked<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        Tracked {
            map,
            before: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> FromIterator<(K, V)> for Tracked<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        BTreeMap::from_iter(iter).into()
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Extend<(K, V)> for Tracked<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

/// Equal when the maps are: the log is bookkeeping.
impl<K: PartialEq, V: PartialEq> PartialEq for Tracked<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Eq, V: Eq> Eq for Tracked<K, V> {}

impl<K: Serialize, V: Serialize> Serialize for Tracked<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Deserialize<'de> for Tracked<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::deserialize(d)?.into())
    }
}

/// A map of maps (snapshots by disk, then by name) tracked by the pair of
/// keys, so that touching one snapshot notes one record, not the disk's
/// whole map. An inner map never stays empty: the disk's entry goes with
/// its last snapshot.
#[derive(Debug, Clone)]
pub struct Tracked2<A, B, V> {
    map: BTreeMap<A, BTreeMap<B, V>>,
    before: BTreeMap<(A, B), Option<V>>,
}

impl<A, B, V> Default for Tracked2<A, B, V> {
    fn default() -> Self {
        Tracked2 {
            map: BTreeMap::new(),
            before: BTreeMap::new(),
        }
    }
}

impl<A: Ord + Clone, B: Ord + Clone, V: Clone + PartialEq> Tracked2<A, B, V> {
    fn note(&mut self, a: &A, b: &B) {
        let key = (a.clone(), b.clone());
        if !self.before.contains_key(&key) {
            let old = self.map.get(a).and_then(|m| m.get(b)).cloned();
            self.before.insert(key, old);
        }
    }

    pub fn get2(&self, a: &A, b: &B) -> Option<&V> {
        self.map.get(a)?.get(b)
    }

    pub fn insert2(&mut self, a: A, b: B, v: V) -> Option<V> {
        self.note(&a, &b);
        self.map.entry(a).or_default().insert(b, v)
    }

    pub fn remove2(&mut self, a: &A, b: &B) -> Option<V> {
        self.get2(a, b)?;
        self.note(a, b);
        let m = self.map.get_mut(a)?;
        let v = m.remove(b);
        if m.is_empty() {
            self.map.remove(a);
        }
        v
    }

    pub fn get2_mut(&mut self, a: &A, b: &B) -> Option<&mut V> {
        self.get2(a, b)?;
        self.note(a, b);
        self.map.get_mut(a)?.get_mut(b)
    }

    /// Moves every entry under `from` to `to` (which must have none).
    pub fn move_outer(&mut self, from: &A, to: &A) {
        let Some(inner) = self.map.get(from) else {
            return;
        };
        let moved: Vec<(B, V)> = inner.iter().map(|(b, v)| (b.clone(), v.clone())).collect();
        for (b, v) in moved {
            self.remove2(from, &b);
            self.insert2(to.clone(), b, v);
        }
    }

    /// See [`Tracked::touched`]; keys are pairs.
    pub fn touched(&self) -> impl Iterator<Item = (&(A, B), Option<&V>, Option<&V>)> {
        self.before
            .iter()
            .map(|(k, b)| (k, b.as_ref(), self.get2(&k.0, &k.1)))
            .filter(|(_, b, n)| b != n)
    }

    pub fn rollback(&mut self) {
        for ((a, b), old) in std::mem::take(&mut self.before) {
            match old {
                Some(v) => {
                    self.map.entry(a).or_default().insert(b, v);
                }
                None => {
                    if let Some(m) = self.map.get_mut(&a) {
                        m.remove(&b);
                        if m.is_empty() {
                            self.map.remove(&a);
                        }
                    }
                }
            }
        }
    }

    pub fn settle(&mut self) {
        self.before.clear();
    }

    pub fn is_settled(&self) -> bool {
        self.before.is_empty()
    }
}

impl<A, B, V> Deref for Tracked2<A, B, V> {
    type Target = BTreeMap<A, BTreeMap<B, V>>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<'a, A, B, V> IntoIterator for &'a Tracked2<A, B, V> {
    type Item = (&'a A, &'a BTreeMap<B, V>);
    type IntoIter = std::collections::btree_map::Iter<'a, A, BTreeMap<B, V>>;

    fn into_iter(self) -> Self::IntoIter {
        self.map.iter()
    }
}

impl<A: Ord, B, V> From<BTreeMap<A, BTreeMap<B, V>>> for Tracked2<A, B, V> {
    fn from(mut map: BTreeMap<A, BTreeMap<B, V>>) -> Self {
        map.retain(|_, m| !m.is_empty());
        Tracked2 {
            map,
            before: BTreeMap::new(),
        }
    }
}

impl<A: PartialEq, B: PartialEq, V: PartialEq> PartialEq for Tracked2<A, B, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<A: Eq, B: Eq, V: Eq> Eq for Tracked2<A, B, V> {}

impl<A: Serialize, B: Serialize, V: Serialize> Serialize for Tracked2<A, B, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, A, B, V> Deserialize<'de> for Tracked2<A, B, V>
where
    A: Deserialize<'de> + Ord,
    B: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::deserialize(d)?.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8),
        Bump(u8),
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u8..16).prop_map(Op::Remove),
            (0u8..16).prop_map(Op::Bump),
            (0u8..4).prop_map(Op::Retain),
        ]
    }

    fn run(t: &mut Tracked<u8, u8>, plain: &mut BTreeMap<u8, u8>, ops: &[Op]) {
        for o in ops {
            match *o {
                Op::Insert(k, v) => {
                    assert_eq!(t.insert(k, v), plain.insert(k, v));
                }
                Op::Remove(k) => {
                    assert_eq!(t.remove(&k), plain.remove(&k));
                }
                Op::Bump(k) => {
                    if let Some(v) = t.get_mut(&k) {
                        *v = v.wrapping_add(1);
                    }
                    if let Some(v) = plain.get_mut(&k) {
                        *v = v.wrapping_add(1);
                    }
                }
                Op::Retain(m) => {
                    t.retain(|k, _| k % 4 != m);
                    plain.retain(|k, _| k % 4 != m);
                }
            }
        }
    }

    proptest! {
        /// Whatever the changes, `touched` names exactly the keys whose
        /// value differs, with both values, and rollback restores the map.
        #[test]
        fn touched_is_the_difference(
            start in proptest::collection::btree_map(0u8..16, any::<u8>(), 0..16),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let mut t: Tracked<u8, u8> = start.clone().into();
            let mut plain = start.clone();
            run(&mut t, &mut plain, &ops);
            prop_assert_eq!(&*t, &plain);
            let mut applied = start.clone();
            for (k, b, n) in t.touched() {
                prop_assert_eq!(b, start.get(k));
                prop_assert_eq!(n, plain.get(k));
                match n {
                    Some(v) => applied.insert(*k, *v),
                    None => applied.remove(k),
                };
            }
            prop_assert_eq!(&applied, &plain);
            for (k, v) in &start {
                if plain.get(k) != Some(v) {
                    prop_assert!(t.touched().any(|(tk, _, _)| tk == k));
                }
            }
            t.rollback();
            prop_assert_eq!(&*t, &start);
            prop_assert!(t.is_settled());
        }

        /// The same for a map of maps, where an emptied inner map goes.
        #[test]
        fn touched2_is_the_difference(
            ops in proptest::collection::vec((0u8..4, 0u8..8, proptest::option::of(any::<u8>())), 0..40),
            moves in proptest::collection::vec((0u8..4, 4u8..8), 0..3),
        ) {
            let mut t: Tracked2<u8, u8, u8> = Tracked2::default();
            t.insert2(0, 0, 0);
            t.settle();
            let start = t.clone();
            for &(a, b, v) in &ops {
                match v {
                    Some(v) => { t.insert2(a, b, v); }
                    None => { t.remove2(&a, &b); }
                }
            }
            for &(from, to) in &moves {
                if !t.contains_key(&to) {
                    t.move_outer(&from, &to);
                }
            }
            prop_assert!(t.values().all(|m| !m.is_empty()));
            let mut applied = start.clone();
            for ((a, b), _, n) in t.touched() {
                match n {
                    Some(v) => { applied.insert2(*a, *b, *v); }
                    None => { applied.remove2(a, b); }
                }
            }
            prop_assert_eq!(&*applied, &*t);
            t.rollback();
            prop_assert_eq!(&*t, &*start);
        }
    }
}
