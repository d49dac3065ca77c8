//! Bookmarks: what a replica's base was, kept after the snapshot goes.
//!
//! Each send leaves a bookmark of the snapshot it sent, in
//! `REPO/bookmarks/<disk>#<snap>` (a document, kind `STRATBMK`:
//! [`Bookmark`]): its identity, geometry and the hash of each data block,
//! no data. Sending a newer snapshot of the disk drops the bookmarks of
//! older ones (the replica's next base is the newest it got). Once the
//! snapshot is deleted or pruned, `send --from DISK#SNAP` still makes an
//! incremental stream: the blocks whose hash differs from the bookmark's.

use serde::{Deserialize, Serialize};

use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::format;
use crate::store::identity::{Hash, Identity};
use crate::store::names::{DiskName, SnapName, SnapshotRef};
use crate::store::Repository;

pub(crate) const BOOKMARK_DIR: &str = "bookmarks";
pub(crate) const MAGIC_BOOKMARK: [u8; 8] = *b"STRATBMK";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bookmark {
    pub repo: u64,
    pub disk: String,
    pub snap: String,
    /// Unix nanoseconds when the snapshot was taken.
    pub taken: u64,
    pub identity: [u8; 32],
    pub size: u64,
    pub block_size: u32,
    /// Each data block's hash, by block.
    pub blocks: Vec<(u64, Hash)>,
}

/// A bookmark as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookmarkInfo {
    pub disk: String,
    pub name: String,
    pub taken: u64,
    pub size: u64,
    pub identity: String,
    /// The snapshot it marks is still here.
    pub snapshot_exists: bool,
}

impl Repository {
    fn bookmark_path(&self, r: &SnapshotRef) -> std::path::PathBuf {
        self.path()
            .join(BOOKMARK_DIR)
            .join(format!("{}#{}", r.disk, r.snap))
    }

    /// Leaves a bookmark of snapshot `r` (just sent), and drops the
    /// bookmarks of older snapshots of its disk.
    pub(crate) fn bookmark_sent(&self, r: &SnapshotRef) -> Result<()> {
        let info = self.snapshot_info(r)?;
        let (geo, blocks) = self.snapshot_hashes(r)?;
        let b = Bookmark {
            repo: self.inner.files.repo_id(),
            disk: r.disk.to_string(),
            snap: r.snap.to_string(),
            taken: info.taken,
            identity: self.identity(r)?.0,
            size: geo.size,
            block_size: geo.block_size,
            blocks,
        };
        let st = self.inner.storage.as_ref();
        let dir = self.path().join(BOOKMARK_DIR);
        st.create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        format::write_atomic(
            st,
            &self.inner.paths.tmp,
            &self.bookmark_path(r),
            &format::doc_bytes(MAGIC_BOOKMARK, &format::encode(&b)),
        )?;
        for old in self.bookmarks(Some(&r.disk))? {
            if old.taken < info.taken {
                let or = SnapshotRef {
                    disk: r.disk.clone(),
                    snap: SnapName::parse(&old.name)?,
                };
                let p = self.bookmark_path(&or);
                if let Err(e) = st.remove_file(&p) {
                    log::warn!("{}: {e}", p.display());
                }
            }
        }
        Ok(())
    }

    /// Reads bookmark `DISK#SNAP`.
    pub fn bookmark(&self, r: &SnapshotRef) -> Result<Bookmark> {
        let path = self.bookmark_path(r);
        let b: Bookmark = format::read_doc_payload(
            self.inner.storage.as_ref(),
            &path,
            MAGIC_BOOKMARK,
        )
        .map_err(|e| match e {
            StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StoreError::Refused(format!(
                    "there is no bookmark {}#{} (a send leaves one of the snapshot it sent; \
                         `strata snapshot list {}` shows them)",
                    r.disk, r.snap, r.disk
                ))
            }
            e => e,
        })?;
        if b.repo != self.inner.files.repo_id() {
            return Err(StoreError::corrupt(
                &path,
                "it belongs to another repository",
            ));
        }
        Ok(b)
    }

    /// The bookmarks of `disk` (or of every disk), oldest first.
    pub fn bookmarks(&self, disk: Option<&DiskName>) -> Result<Vec<BookmarkInfo>> {
        let dir = self.path().join(BOOKMARK_DIR);
        let names = match self.inner.storage.read_dir(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(StoreError::io(dir)(e)),
        };
        let mut out = vec![];
        for name in names {
            let Some((d, s)) = name.split_once('#') else {
                continue;
            };
            let (Ok(d), Ok(s)) = (DiskName::parse(d), SnapName::parse(s)) else {
                continue;
            };
            if disk.is_some_and(|x| *x != d) {
                continue;
            }
            let r = SnapshotRef { disk: d, snap: s };
            match self.bookmark(&r) {
                Ok(b) => out.push(BookmarkInfo {
                    snapshot_exists: self.snapshot_info(&r).is_ok(),
                    disk: b.disk,
                    name: b.snap,
                    taken: b.taken,
                    size: b.size,
                    identity: Identity(b.identity).to_string(),
                }),
                Err(e) => log::warn!("bookmark {name}: {e}"),
            }
        }
        out.sort_by_key(|b| b.taken);
        Ok(out)
    }
}

/// The blocks where two block-hash lists differ (a block in one and not
/// the other, or with another hash).
pub fn differing(a: &[(u64, Hash)], b: &[(u64, Hash)]) -> ExtentSet {
    let mut out = ExtentSet::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                if x.1 != y.1 {
                    out.insert(x.0..x.0 + 1);
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.0 < y.0 => {
                out.insert(x.0..x.0 + 1);
                i += 1;
            }
            (Some(_), Some(y)) => {
                out.insert(y.0..y.0 + 1);
                j += 1;
            }
            (Some(x), None) => {
                out.insert(x.0..x.0 + 1);
                i += 1;
            }
            (None, Some(y)) => {
                out.insert(y.0..y.0 + 1);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}
