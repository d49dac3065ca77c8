//! Inode numbers for the mount's tree. A node keeps the number it was first
//! given for the life of the mount, so the kernel's caches stay coherent.
//!
//! Directories are named by the disk they show; images by their identity:
//! a snapshot's image by its layer, a live image by its disk's id. So a
//! name reused for another snapshot or disk is another inode, and what the
//! kernel cached for the old one is never served for the new.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::store::{DiskName, LayerId};

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// `<disk>/`
    DiskDir(DiskName),
    /// `<disk>/live.img`, by the disk's id
    Live(LayerId),
    /// `<disk>/snapshots/`
    SnapDir(DiskName),
    /// `<disk>/snapshots/<snap>.img`, by the snapshot's layer
    SnapImg(LayerId),
    /// `<disk>/changes/`
    ChangesDir(DiskName),
    /// `<disk>/changes/<snap>.img` or `<a>~<b>.img`: the changes of the
    /// snapshot of layer `to` since the one of layer `from` (none: an
    /// empty disk)
    ChangesImg {
        from: Option<LayerId>,
        to: LayerId,
    },
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(
            self,
            Node::Root | Node::DiskDir(_) | Node::SnapDir(_) | Node::ChangesDir(_)
        )
    }
}

pub const ROOT_INO: u64 = 1;

pub struct Inodes {
    inner: Mutex<Table>,
}

struct Table {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Table {
            by_node: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.by_node.insert(Node::Root, ROOT_INO);
        t.by_ino.insert(ROOT_INO, Node::Root);
        Inodes {
            inner: Mutex::new(t),
        }
    }
}

impl Inodes {
    /// The inode number of `node`, assigning one on first sight.
    pub fn ino(&self, node: &Node) -> u64 {
        let mut t = self.inner.lock();
        if let Some(&ino) = t.by_node.get(node) {
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_node.insert(node.clone(), ino);
        t.by_ino.insert(ino, node.clone());
        ino
    }

    /// The inode numbers of every live image given one.
    pub fn lives(&self) -> Vec<u64> {
        let t = self.inner.lock();
        t.by_node
            .iter()
            .filter(|(n, _)| matches!(n, Node::Live(_)))
            .map(|(_, &i)| i)
            .collect()
    }

    /// The inode number of `node` if it has one already.
    pub fn get(&self, node: &Node) -> Option<u64> {
        self.inner.lock().by_node.get(node).copied()
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.inner.lock().by_ino.get(&ino).cloned()
    }
}
