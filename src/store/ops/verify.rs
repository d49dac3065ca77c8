//! Verify and scrub: read frozen layers back and check every block against
//! the CRC-32C its index keeps, and the metadata documents against their
//! own checksums (a damaged copy is mended from its twin, and said).
//!
//! When each layer was last verified is kept in `REPO/verified` (a
//! document, kind `STRATVFY`: [`Verified`]), so `--older-than` checks only
//! what was not verified lately: a daily run with `--older-than 30d`
//! scrubs the whole repository over a month at a steady small cost. It
//! is bookkeeping no image depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::store::error::{Result, StoreError};
use crate::store::format::{self, MAGIC_CATALOG, MAGIC_INDEX, MAGIC_LOG};
use crate::store::layer;
use crate::store::names::{ImageRef, LayerId};
use crate::store::ops::tidy::geometry;
use crate::store::storage::{EntryKind, Storage};
use crate::store::Repository;

const VERIFIED_FILE: &str = "verified";
const MAGIC_VERIFIED: [u8; 8] = *b"STRATVFY";
/// Bytes read at a time.
const CHUNK: u64 = 4 << 20;

/// When each layer was last verified, in Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub repo: u64,
    pub layers: BTreeMap<LayerId, u64>,
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The images whose layers to check (none: every frozen layer).
    pub images: Vec<ImageRef>,
    /// Skip layers verified less than this long ago.
    pub older_than: Option<Duration>,
    /// Read at most this many bytes a second.
    pub rate: Option<u64>,
    /// Heal damaged blocks from this repository (a replica).
    pub repair_from: Option<std::path::PathBuf>,
}

/// A block that does not match its checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedBlock {
    /// The data file, relative to the repository.
    pub file: String,
    pub block: u64,
    /// Byte offset of the block in the images.
    pub offset: u64,
    /// The images that read this block from this file: `DISK@SNAP` or
    /// `DISK` (the live disk).
    pub images: Vec<String>,
}

/// What a verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub layers_checked: u64,
    /// Layers left out: verified within `--older-than`.
    pub layers_skipped: u64,
    pub blocks_checked: u64,
    pub bytes_read: u64,
    /// Data blocks of layers frozen so recently that their checksums are
    /// not computed yet: not checked.
    pub blocks_unchecked: u64,
    pub damaged: Vec<DamagedBlock>,
    /// Metadata files with a damaged copy, mended from the other.
    pub mended: Vec<String>,
    /// Metadata files damaged beyond repair, and why.
    pub unreadable: Vec<String>,
    /// Blocks healed from another repository (`--repair-from`), checked
    /// again since; `damaged` holds what is still damaged.
    #[serde(default)]
    pub repaired: Vec<DamagedBlock>,
    /// Why each block left damaged could not be healed.
    #[serde(default)]
    pub not_repaired: Vec<String>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.damaged.is_empty() && self.unreadable.is_empty()
    }
}

/// What checking the copies of the metadata file `path` found: mends the
/// damaged ones from their twins (`copies` lists them) and names the file,
/// relative to `root`, in `mended`; or says in `unreadable` why it cannot
/// be read. Returns whether it can.
fn mend(
    st: &dyn Storage,
    root: &Path,
    path: &Path,
    copies: Result<Vec<format::Repair>>,
    report: &mut VerifyReport,
) -> Result<bool> {
    match copies {
        Ok(repairs) if !repairs.is_empty() => {
            format::apply_repairs(st, path, &repairs)?;
            let name = path.strip_prefix(root).unwrap_or(path);
            report.mended.push(name.display().to_string());
            Ok(true)
        }
        Ok(_) => Ok(true),
        Err(e) => {
            report.unreadable.push(e.to_string());
            Ok(false)
        }
    }
}

impl Repository {
    fn read_verified(&self) -> Verified {
        let path = self.path().join(VERIFIED_FILE);
        match format::read_doc_payload::<Verified>(
            self.inner.storage.as_ref(),
            &path,
            MAGIC_VERIFIED,
        ) {
            Ok(v) if v.repo == self.inner.files.repo_id() => v,
            Ok(_) => Verified::default(),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Verified::default()
            }
            Err(e) => {
                log::warn!(
                    "{}: {e}; verifying as if nothing was verified before",
                    path.display()
                );
                Verified::default()
            }
        }
    }

    /// The frozen layers the images of `opts` read (every one if none).
    fn layers_to_verify(&self, opts: &VerifyOptions) -> Result<BTreeSet<LayerId>> {
        let cat = self.catalog();
        let frozen = |id: &LayerId| cat.layers.get(id).is_some_and(|l| l.frozen.is_some());
        if opts.images.is_empty() {
            return Ok(cat.layers.keys().copied().filter(|id| frozen(id)).collect());
        }
        let mut out = BTreeSet::new();
        for r in &opts.images {
            let top = match r {
                ImageRef::Snapshot(s) => self.snapshot_info(s)?.layer,
                ImageRef::Live(d) => {
                    // The disk's live chain and every snapshot of it.
                    for s in self.snapshots(d)? {
                        out.extend(cat.chain(s.layer));
                    }
                    match cat.disks.get(d) {
                        Some(rec) => rec.live,
                        None if cat.snapshots.contains_key(d) => continue,
                        None => return Err(StoreError::NoSuchDisk(d.clone())),
                    }
                }
            };
            out.extend(cat.chain(top));
        }
        out.retain(|id| frozen(id));
        Ok(out)
    }

    /// Checks the layers `opts` names and the repository's documents, and
    /// heals damaged blocks from a replica when asked.
    pub fn verify(
        &self,
        opts: &VerifyOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        let mut report = self.verify_once(opts, progress)?;
        let Some(from) = &opts.repair_from else {
            return Ok(report);
        };
        if report.damaged.is_empty() {
            return Ok(report);
        }
        let other = Repository::open(from).map_err(|e| {
            StoreError::Refused(format!(
                "cannot open {} to repair from: {e}",
                from.display()
            ))
        })?;
        // Each healed block was read back and checked as it was written.
        let healed = self.repair_from(&other, &report.damaged)?;
        report.repaired = healed.repaired;
        report.not_repaired = healed
            .left
            .iter()
            .map(|(d, why)| format!("{} block {}: {why}", d.file, d.block))
            .collect();
        report.damaged.retain(|d| !report.repaired.contains(d));
        Ok(report)
    }

    /// Reads back the header, the catalog, every live layer's journal, the
    /// bookmarks, the receive states and the verify record, each while
    /// nothing writes it, and checks every copy of every record; a damaged
    /// copy is mended from its twin (and said in `mended`), damage past
    /// mending is said in `unreadable`.
    fn verify_metadata(&self, report: &mut VerifyReport) -> Result<()> {
        let st = self.inner.storage.as_ref();
        let root = self.path().to_owned();
        let doc = |path: &Path, magic| format::read_doc(st, path, magic).map(|d| d.repairs);
        let log = |path: &Path, magic| {
            st.read(path)
                .map_err(StoreError::io(path))
                .and_then(|bytes| format::parse_log(path, magic, &bytes))
                .map(|l| l.repairs)
        };
        let header = root.join(crate::store::REPO_FILE);
        mend(st, &root, &header, doc(&header, format::MAGIC_REPO), report)?;
        {
            // Commits append under this lock.
            let _c = self.inner.catalog.lock();
            let path = root.join(crate::store::CATALOG_FILE);
            mend(st, &root, &path, log(&path, MAGIC_CATALOG), report)?;
        }
        let lives: Vec<_> = self
            .catalog()
            .disks
            .iter()
            .map(|(n, d)| (n.clone(), d.live))
            .collect();
        for (disk, live) in lives {
            let path = self.inner.paths.log(live);
            let disks = self.inner.disks.lock();
            match disks.get(&disk).cloned() {
                Some(d) if d.live_id() == live => {
                    drop(disks);
                    d.with_journal_held(|| mend(st, &root, &path, log(&path, MAGIC_LOG), report))?;
                }
                // Not open: held closed while it is read.
                None => {
                    mend(st, &root, &path, log(&path, MAGIC_LOG), report)?;
                }
                // A snapshot has moved it on since: the next verify looks.
                Some(_) => {}
            }
        }
        let mut docs: Vec<(PathBuf, [u8; 8])> = Vec::new();
        for (dir, magic, file) in [
            (
                crate::store::ops::bookmark::BOOKMARK_DIR,
                crate::store::ops::bookmark::MAGIC_BOOKMARK,
                None,
            ),
            (
                crate::store::ops::receive::STAGING_DIR,
                crate::store::ops::receive::MAGIC_RECEIVE,
                Some("state"),
            ),
        ] {
            let Ok(names) = st.read_dir(&root.join(dir)) else {
                continue;
            };
            for n in names.iter().filter(|n| !format::is_scratch_name(n)) {
                let p = match file {
                    Some(f) => root.join(dir).join(n).join(f),
                    None => root.join(dir).join(n),
                };
                docs.push((p, magic));
            }
        }
        docs.push((root.join(VERIFIED_FILE), MAGIC_VERIFIED));
        docs.sort();
        for (path, magic) in docs {
            if matches!(st.kind(&path), Ok(Some(EntryKind::File))) {
                mend(st, &root, &path, doc(&path, magic), report)?;
            }
        }
        Ok(())
    }

    fn verify_once(
        &self,
        opts: &VerifyOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            mended: self.take_mended_at_open(),
            ..VerifyReport::default()
        };
        let st = self.inner.storage.as_ref();
        let now = crate::store::now_ns() / 1_000_000_000;
        self.verify_metadata(&mut report)?;
        let mut verified = self.read_verified();
        verified.repo = self.inner.files.repo_id();
        let mut layers = self.layers_to_verify(opts)?;
        if let Some(age) = opts.older_than {
            let before = layers.len() as u64;
            let cutoff = now.saturating_sub(age.as_secs());
            layers.retain(|id| verified.layers.get(id).is_none_or(|&t| t < cutoff));
            report.layers_skipped = before - layers.len() as u64;
        }
        let cat = self.catalog();
        // Read every index first: the total for progress, and its copies.
        let mut indexes = Vec::new();
        for &id in &layers {
            let geo = geometry(&cat, id);
            let path = self.inner.paths.index(id);
            let copies = format::read_doc(st, &path, MAGIC_INDEX).map(|d| d.repairs);
            if !mend(st, self.path(), &path, copies, &mut report)? {
                continue;
            }
            match layer::read_index(&self.inner.files, id, geo) {
                Ok(idx) => indexes.push((id, geo, idx)),
                Err(e) => report.unreadable.push(e.to_string()),
            }
        }
        let total: u64 = indexes
            .iter()
            .map(|(_, geo, idx)| idx.data_blocks() * geo.block_size as u64)
            .sum();
        let started = Instant::now();
        let mut damaged: Vec<(LayerId, u64, u64)> = Vec::new();
        for (id, geo, idx) in &indexes {
            let bs = geo.block_size as u64;
            let mut ok = true;
            for p in &idx.pieces {
                let Some(sums) = &p.sums else {
                    report.blocks_unchecked += p.data.blocks();
                    continue;
                };
                let file = self.inner.files.get(p.file)?;
                let mut sums = sums.iter();
                let mut buf = vec![0u8; CHUNK as usize];
                for run in p.data.runs() {
                    let mut b = run.start;
                    while b < run.end {
                        let n = (CHUNK / bs).max(1).min(run.end - b);
                        let bytes = geo.byte_range(b..b + n);
                        let len = (bytes.end - bytes.start) as usize;
                        file.read_exact_at(&mut buf[..len], bytes.start)
                            .map_err(StoreError::io(self.inner.paths.data(p.file)))?;
                        for (i, block) in buf[..len].chunks(bs as usize).enumerate() {
                            let want = sums.next().map(|s| s.crc);
                            if want != Some(crc32c::crc32c(block)) {
                                damaged.push((p.file, b + i as u64, bytes.start + i as u64 * bs));
                                ok = false;
                            }
                        }
                        report.blocks_checked += n;
                        report.bytes_read += len as u64;
                        progress(report.bytes_read, total);
                        if let Some(rate) = opts.rate.filter(|&r| r > 0) {
                            let due =
                                Duration::from_secs_f64(report.bytes_read as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                std::thread::sleep(wait);
                            }
                        }
                        b += n;
                    }
                }
            }
            report.layers_checked += 1;
            if ok {
                verified.layers.insert(*id, now);
            } else {
                verified.layers.remove(id);
            }
        }
        // Which images read each damaged block from that file.
        for (file, block, offset) in damaged {
            report.damaged.push(DamagedBlock {
                file: format!("layers/{file}.data"),
                block,
                offset,
                images: self.images_reading(file, block)?,
            });
        }
        verified.layers.retain(|id, _| cat.layers.contains_key(id));
        let path = self.path().join(VERIFIED_FILE);
        if let Err(e) = format::write_atomic(
            st,
            &self.inner.paths.tmp,
            &path,
            &format::doc_bytes(MAGIC_VERIFIED, &format::encode(&verified)),
        ) {
            log::warn!(
                "{}: {e}; the next --older-than run checks these layers again",
                path.display()
            );
        }
        Ok(report)
    }

    /// The images (snapshots and live disks) that read `block` from data
    /// file `file`.
    fn images_reading(&self, file: LayerId, block: u64) -> Result<Vec<String>> {
        let cat = self.catalog();
        let reads = |top: LayerId| -> Result<bool> {
            let map = self.frozen_map(top)?;
            Ok(map
                .map
                .get(block)
                .is_some_and(|o| !o.zero && o.layer == file))
        };
        let mut out = Vec::new();
        for (disk, snaps) in &cat.snapshots {
            for (name, rec) in snaps {
                if reads(rec.layer)? {
                    out.push(format!("{disk}@{name}"));
                }
            }
        }
        for (name, d) in &cat.disks {
            let holds = self
                .disk(name)
                .map(|disk| disk.live_present().contains(block))
                .unwrap_or(false);
            let parent = cat.layers.get(&d.live).and_then(|l| l.parent);
            if !holds && parent.is_some_and(|p| reads(p).unwrap_or(false)) {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

/// What a repair did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// Damaged blocks rewritten from the other repository and checked.
    pub repaired: Vec<DamagedBlock>,
    /// Damaged blocks it could not repair, and why.
    pub left: Vec<(DamagedBlock, String)>,
}

impl Repository {
    /// Heals the blocks `damaged` lists from `other`, a repository holding
    /// a snapshot with the same content as an image that reads each (a
    /// replica): the block is read there, checked against the CRC kept
    /// here, written back into its data file and synced. Nothing is
    /// written unless the replacement checks out.
    pub fn repair_from(
        &self,
        other: &Repository,
        damaged: &[DamagedBlock],
    ) -> Result<RepairReport> {
        let mut report = RepairReport::default();
        // Snapshots of the other repository by identity, found on demand.
        let mut theirs: Option<BTreeMap<[u8; 32], crate::store::SnapshotRef>> = None;
        for d in damaged {
            let outcome = (|| -> Result<()> {
                let file = d
                    .file
                    .strip_prefix("layers/")
                    .and_then(layer::parse_file_name)
                    .filter(|(_, k)| *k == crate::store::format::LayerFileKind::Data)
                    .map(|(id, _)| id)
                    .ok_or_else(|| {
                        StoreError::invalid(
                            "damaged block",
                            format!("{} is not a data file", d.file),
                        )
                    })?;
                let want = self
                    .inner
                    .files
                    .crc(file, d.block)
                    .ok_or_else(|| StoreError::Refused("its checksum is not known".into()))?;
                let index = theirs.get_or_insert_with(|| {
                    let mut m = BTreeMap::new();
                    for disk in other.catalog().snapshots.keys() {
                        for s in other.snapshots(disk).unwrap_or_default() {
                            let Ok(snap) = crate::store::SnapName::parse(&s.name) else {
                                continue;
                            };
                            let r = crate::store::SnapshotRef {
                                disk: disk.clone(),
                                snap,
                            };
                            if let Ok(id) = other.identity(&r) {
                                m.insert(id.0, r);
                            }
                        }
                    }
                    m
                });
                // A snapshot here that reads the block, with a twin there.
                let mut source = None;
                for img in &d.images {
                    let Ok(r) = crate::store::SnapshotRef::parse(img) else {
                        continue;
                    };
                    let Ok(id) = self.identity(&r) else { continue };
                    if let Some(t) = index.get(&id.0) {
                        source = Some(t.clone());
                        break;
                    }
                }
                let source = source.ok_or_else(|| {
                    StoreError::Refused(
                        "no snapshot there has the content of a snapshot here that reads it".into(),
                    )
                })?;
                let img = other.open_snapshot(&source)?;
                let bs = img.info().block_size as u64;
                let size = crate::store::ImageRead::size(&img);
                let len = size.saturating_sub(d.offset).min(bs) as usize;
                let mut buf = vec![0u8; len];
                crate::store::ImageRead::read_at(&img, d.offset, &mut buf)?;
                if crc32c::crc32c(&buf) != want {
                    return Err(StoreError::Refused(format!(
                        "{source} there does not hold the block as it was stored"
                    )));
                }
                let (f, path) = self.inner.files.open_data_writable(file)?;
                f.write_all_at(&buf, d.offset)
                    .and_then(|_| f.sync_data())
                    .map_err(StoreError::io(&path))?;
                let mut check = vec![0u8; len];
                f.read_exact_at(&mut check, d.offset)
                    .map_err(StoreError::io(&path))?;
                if crc32c::crc32c(&check) != want {
                    return Err(StoreError::Refused(
                        "it reads back damaged again: the device may be failing".into(),
                    ));
                }
                Ok(())
            })();
            match outcome {
                Ok(()) => report.repaired.push(d.clone()),
                Err(e) => report.left.push((d.clone(), e.to_string())),
            }
        }
        Ok(report)
    }
}
