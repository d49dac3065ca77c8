//! Content identity: a hash tree over an image's bytes.
//!
//! The image is cut into 4 KiB leaves (the last may be short). A leaf's hash
//! is BLAKE3, keyed for leaves, of its bytes; a node's hash is BLAKE3,
//! keyed for nodes, of its two children's hashes. The tree is
//! *left-balanced*: a range of more than one leaf splits at the largest
//! power of two below its length, the left part a perfect tree. The
//! identity is BLAKE3, keyed for roots, of the image size (`u64`
//! little-endian) and the top node. (Keys: `blake3::derive_key` of the
//! contexts below.)
//!
//! Two properties make it cheap. Every block of a disk (a power of two of
//! at least 4 KiB, aligned; the last maybe short) is a node of this tree
//! whatever the block size, so a layer keeps one hash per data block,
//! computed once when it is frozen, and an image's identity is computed
//! from its layers' block hashes without reading a byte. And a hash does
//! not depend on where its bytes are, so the hash of any run of zeros is
//! known from a table: an empty terabyte costs forty hashes. Two images
//! with the same size and bytes have the same identity, whatever their
//! history or block size.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Leaf size: every block size is a multiple of it.
pub const LEAF: u64 = 4096;

pub type Hash = [u8; 32];

const LEAF_CONTEXT: &str = "strata 2026-11 content identity leaf";
const NODE_CONTEXT: &str = "strata 2026-11 content identity node";
const ROOT_CONTEXT: &str = "strata 2026-11 content identity root";

struct Keys {
    leaf: Hash,
    node: Hash,
    root: Hash,
    /// `zero[k]`: the perfect tree over 2^k leaves of zeros.
    zero: Vec<Hash>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let leaf = blake3::derive_key(LEAF_CONTEXT, b"");
        let node = blake3::derive_key(NODE_CONTEXT, b"");
        let root = blake3::derive_key(ROOT_CONTEXT, b"");
        let mut zero = vec![*blake3::keyed_hash(&leaf, &[0u8; LEAF as usize]).as_bytes()];
        // 2^52 leaves of 4 KiB: 16 EiB, past any u64 size.
        for k in 1..=52 {
            let z = zero[k - 1];
            zero.push(join_with(&node, &z, &z));
        }
        Keys {
            leaf,
            node,
            root,
            zero,
        }
    })
}

fn join_with(key: &Hash, left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// A leaf's hash (at most [`LEAF`] bytes).
pub fn leaf(bytes: &[u8]) -> Hash {
    debug_assert!(bytes.len() as u64 <= LEAF);
    *blake3::keyed_hash(&keys().leaf, bytes).as_bytes()
}

/// A node's hash, from its children's.
pub fn join(left: &Hash, right: &Hash) -> Hash {
    join_with(&keys().node, left, right)
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Number of leaves of `len` bytes.
pub fn leaves(len: u64) -> u64 {
    len.div_ceil(LEAF)
}

/// The tree over `bytes` (a block, or a whole small image).
pub fn tree(bytes: &[u8]) -> Hash {
    let n = leaves(bytes.len() as u64).max(1);
    if n == 1 {
        return leaf(bytes);
    }
    let cut = (split(n) * LEAF) as usize;
    join(&tree(&bytes[..cut]), &tree(&bytes[cut..]))
}

/// The tree over `len` zero bytes, from the table: O(log len).
pub fn zeros(len: u64) -> Hash {
    let n = leaves(len).max(1);
    if n == 1 {
        return leaf(&vec![0u8; len as usize]);
    }
    if n.is_power_of_two() && len % LEAF == 0 {
        return keys().zero[n.trailing_zeros() as usize];
    }
    let p = split(n);
    join(
        &keys().zero[p.trailing_zeros() as usize],
        &zeros(len - p * LEAF),
    )
}

/// The identity of an image of `size` bytes whose top node is `top`.
pub fn root(size: u64, top: &Hash) -> Identity {
    let mut h = blake3::Hasher::new_keyed(&keys().root);
    h.update(&size.to_le_bytes());
    h.update(top);
    Identity(*h.finalize().as_bytes())
}

/// The identity of an image given as its size, its block size and the
/// hash of each data block (sorted by block; every other block reads as
/// zeros). Costs O(data blocks × log), reading nothing.
pub fn of_blocks(size: u64, block_size: u32, blocks: &[(u64, Hash)]) -> Identity {
    let per = block_size as u64 / LEAF;
    let n = leaves(size).max(1);
    let top = node(size, per, blocks, 0, n);
    root(size, &top)
}

/// The node over leaves `lo..hi`.
fn node(size: u64, per: u64, blocks: &[(u64, Hash)], lo: u64, hi: u64) -> Hash {
    let first = lo / per;
    let end = hi.div_ceil(per);
    let at = blocks.partition_point(|(b, _)| *b < first);
    let any = blocks.get(at).is_some_and(|(b, _)| *b < end);
    if !any {
        return zeros((hi * LEAF).min(size) - lo * LEAF);
    }
    if hi - lo <= per {
        // One block (the tree's nodes include every block): its hash.
        return blocks[at].1;
    }
    let mid = lo + split(hi - lo);
    join(
        &node(size, per, blocks, lo, mid),
        &node(size, per, blocks, mid, hi),
    )
}

/// A content identity, shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity(pub Hash);

impl Identity {
    /// The identity of `bytes` as a whole image.
    pub fn of_bytes(bytes: &[u8]) -> Identity {
        root(bytes.len() as u64, &tree(bytes))
    }

    pub fn parse(s: &str) -> Option<Identity> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Identity(out))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The identity from block hashes equals the identity of the bytes,
    /// for every block size, sizes that are not whole blocks or leaves,
    /// and blocks that are zeros but held as data.
    #[test]
    fn from_blocks_equals_from_bytes() {
        for size in [4096u64, 5000, 65536, 100 << 10, 200 * 1024 + 1536, 1 << 20] {
            let mut img = bytes(size as usize, size);
            // Some zero runs, some of them in blocks held as data.
            for z in (0..size as usize).step_by(3 * 8192).take(4) {
                let end = (z + 9000).min(img.len());
                img[z..end].fill(0);
            }
            let want = Identity::of_bytes(&img);
            for bs in [4096u32, 8192, 65536, 1 << 20] {
                let per = bs as usize;
                let mut blocks = vec![];
                for (b, chunk) in img.chunks(per).enumerate() {
                    // Leave some all-zero blocks out, as a sparse image does.
                    if chunk.iter().all(|&x| x == 0) && b % 2 == 0 {
                        continue;
                    }
                    blocks.push((b as u64, tree(chunk)));
                }
                assert_eq!(of_blocks(size, bs, &blocks), want, "size {size} bs {bs}");
            }
        }
    }

    #[test]
    fn zeros_match_and_cost_nothing() {
        for len in [1u64, 4095, 4096, 4097, 3 * 4096, 65536 + 512, 1 << 20] {
            assert_eq!(zeros(len), tree(&vec![0u8; len as usize]), "len {len}");
        }
        // An empty terabyte, at once.
        let t = std::time::Instant::now();
        let id = of_blocks(1 << 40, 65536, &[]);
        assert!(t.elapsed().as_millis() < 100);
        assert_ne!(id, of_blocks((1 << 40) + 4096, 65536, &[]));
    }

    #[test]
    fn any_change_changes_it() {
        let img = bytes(64 << 10, 1);
        let id = Identity::of_bytes(&img);
        for at in [0usize, 4095, 4096, 40000, (64 << 10) - 1] {
            let mut other = img.clone();
            other[at] ^= 1;
            assert_ne!(Identity::of_bytes(&other), id, "flip at {at}");
        }
        let mut longer = img.clone();
        longer.push(0);
        assert_ne!(Identity::of_bytes(&longer), id);
        assert_eq!(Identity::parse(&id.to_string()), Some(id));
    }
}
