//! Upgrading a repository of an older format version, in place.
//!
//! From version 2: its files read as they are (a version 2 index through
//! [`format::v2`]), so only `strata.repo` is rewritten ([`header`]).
//!
//! From version 1:
//!
//! Every file is rewritten atomically in the new version, in an order that
//! keeps each step idempotent: the catalog first (it chooses the
//! repository id every other file then carries), then every index and
//! journal, and `strata.repo` last. A crash part-way leaves a repository
//! whose `strata.repo` still says version 1, and the next open carries on
//! where this one stopped, reading each file in whichever version it is.

use std::path::Path;
use std::sync::Arc;

use super::catalog::{Catalog, CatalogFile, DiskRecord, FrozenInfo, LayerRecord, SnapshotRecord};
use super::error::{Result, StoreError};
use super::extents::{BlockKind, ExtentSet, PresentMap};
use super::format::{self, v1, IndexPiece, JournalRecord, LayerIndex, LogHeader, RepoHeader};
use super::format::{MAGIC_CATALOG, MAGIC_INDEX, MAGIC_LOG, MAGIC_REPO};
use super::layer::{Geometry, LayerPaths};
use super::names::{DiskName, LayerId, SnapName};
use super::storage::{Storage, StorageFile};

/// Rewrites `strata.repo` in this build's version, once everything else
/// reads as it is.
pub fn header(
    storage: &dyn Storage,
    tmp: &Path,
    repo_file: &Path,
    from: u32,
    header: &RepoHeader,
) -> Result<()> {
    format::write_atomic(
        storage,
        tmp,
        repo_file,
        &format::doc_bytes(MAGIC_REPO, &format::encode(header)),
    )?;
    log::info!(
        "upgraded {} from format version {from} to {}",
        repo_file.display(),
        format::FORMAT_VERSION
    );
    Ok(())
}

/// Upgrades the repository at `root` (whose lock the caller holds) from
/// version 1. `created` is from its version 1 header.
pub fn from_v1(
    storage: &Arc<dyn Storage>,
    root: &Path,
    paths: &LayerPaths,
    created: u64,
) -> Result<()> {
    log::warn!(
        "upgrading {} from format version 1 to {}",
        root.display(),
        format::FORMAT_VERSION
    );
    let catalog_path = root.join(super::CATALOG_FILE);
    let doc = format::read_doc(storage.as_ref(), &catalog_path, MAGIC_CATALOG)?;
    let (cat, repo_id) = if doc.version == 1 {
        let old: v1::Catalog = format::decode(&catalog_path, &doc.payload)?;
        let cat = convert_catalog(&catalog_path, old)?;
        cat.validate(&catalog_path)?;
        let id = super::random_id();
        CatalogFile::write_new(storage, &paths.tmp, &catalog_path, id, &cat)?;
        (cat, id)
    } else {
        // An earlier upgrade got this far.
        let (_, cat, id) = CatalogFile::open(storage.clone(), &paths.tmp, &catalog_path)?;
        cat.validate(&catalog_path)?;
        (cat, id)
    };
    for (id, layer) in &cat.layers {
        let geo = Geometry {
            size: layer.size,
            block_size: layer.block_size,
        };
        if layer.frozen.is_some() {
            upgrade_index(storage.as_ref(), paths, *id, geo, repo_id)?;
        } else {
            upgrade_journal(storage.as_ref(), paths, *id, geo, repo_id)?;
        }
    }
    let header = RepoHeader {
        created,
        id: repo_id,
    };
    format::write_atomic(
        storage.as_ref(),
        &paths.tmp,
        &root.join(super::REPO_FILE),
        &format::doc_bytes(MAGIC_REPO, &format::encode(&header)),
    )?;
    log::warn!(
        "upgraded {} to format version {}",
        root.display(),
        format::FORMAT_VERSION
    );
    Ok(())
}

fn convert_catalog(path: &Path, old: v1::Catalog) -> Result<Catalog> {
    let bad = |what: String| StoreError::corrupt(path, what);
    let disk = |s: &str| DiskName::parse(s).map_err(|e| bad(e.to_string()));
    let mut cat = Catalog {
        generation: old.generation,
        next_layer: old.next_layer,
        next_seq: old.next_seq,
        next_intent: 1,
        ..Catalog::default()
    };
    for (name, d) in old.disks {
        cat.disks.insert(
            disk(&name)?,
            DiskRecord {
                id: LayerId(d.live),
                size: d.size,
                block_size: d.block_size,
                live: LayerId(d.live),
                created: d.created,
            },
        );
    }
    for (name, snaps) in old.snapshots {
        let d = disk(&name)?;
        for (snap, s) in snaps {
            let snap = SnapName::parse(&snap).map_err(|e| bad(e.to_string()))?;
            cat.snapshots.insert2(
                d.clone(),
                snap,
                SnapshotRecord {
                    layer: LayerId(s.layer),
                    taken: s.taken,
                    seq: s.seq,
                },
            );
        }
    }
    for (id, l) in old.layers {
        cat.layers.insert(
            LayerId(id),
            LayerRecord {
                parent: l.parent.map(LayerId),
                block_size: l.block_size,
                size: l.size,
                frozen: l.frozen.map(|f| FrozenInfo {
                    blocks: f.blocks,
                    stored_bytes: f.stored_bytes,
                }),
                files: vec![LayerId(id)],
            },
        );
    }
    cat.settle();
    Ok(cat)
}

/// Splits version 1 present blocks into data and zero blocks: version 1
/// kept a present block of zeros as a hole, so a block that lies wholly in
/// a hole of the data file is a zero block.
fn split_by_holes(
    file: &dyn StorageFile,
    path: &Path,
    geo: Geometry,
    present: &ExtentSet,
) -> Result<PresentMap> {
    let bs = geo.block_size as u64;
    let mut out = PresentMap::new();
    for run in present.runs() {
        out.paint(run.clone(), BlockKind::Zero);
        let bytes = geo.byte_range(run.clone());
        let mut pos = bytes.start;
        while pos < bytes.end {
            let Some(start) = file.seek_data(pos).map_err(StoreError::io(path))? else {
                break;
            };
            if start >= bytes.end {
                break;
            }
            let end = file
                .seek_hole(start)
                .map_err(StoreError::io(path))?
                .min(bytes.end);
            out.paint(start / bs..end.div_ceil(bs), BlockKind::Data);
            pos = end.max(start + 1);
        }
    }
    Ok(out)
}

fn upgrade_index(
    storage: &dyn Storage,
    paths: &LayerPaths,
    id: LayerId,
    geo: Geometry,
    repo: u64,
) -> Result<()> {
    let path = paths.index(id);
    let doc = format::read_doc(storage, &path, MAGIC_INDEX)?;
    if doc.version != 1 {
        return Ok(());
    }
    let old: v1::LayerIndex = format::decode(&path, &doc.payload)?;
    if old.layer != id.0 || old.block_size != geo.block_size || old.size != geo.size {
        return Err(StoreError::corrupt(&path, "it belongs to another layer"));
    }
    let present = ExtentSet::from_extents(old.extents.iter().copied());
    if present.blocks() != old.checksums.len() as u64 {
        return Err(StoreError::corrupt(
            &path,
            "checksum count does not match its blocks",
        ));
    }
    let data_path = paths.data(id);
    let file = storage
        .open(&data_path, false)
        .map_err(StoreError::io(&data_path))?;
    let kinds = split_by_holes(file.as_ref(), &data_path, geo, &present)?;
    // Version 1 kept a checksum for every present block; keep those of the
    // data blocks.
    let mut checksums = Vec::new();
    let mut sums = old.checksums.iter();
    for run in present.runs() {
        for b in run {
            let sum = sums.next().copied().unwrap_or(0);
            if kinds.get(b) == Some(BlockKind::Data) {
                checksums.push(sum);
            }
        }
    }
    let idx = LayerIndex {
        repo,
        layer: id.0,
        block_size: geo.block_size,
        size: geo.size,
        pieces: vec![IndexPiece {
            file: id.0,
            data: kinds.extents_of(BlockKind::Data),
            checksums: Some(checksums),
            hashes: None,
        }],
        zero: kinds.extents_of(BlockKind::Zero),
    };
    let bytes = format::doc_bytes(MAGIC_INDEX, &format::encode(&idx));
    format::write_atomic(storage, &paths.tmp, &path, &bytes)
}

fn upgrade_journal(
    storage: &dyn Storage,
    paths: &LayerPaths,
    id: LayerId,
    geo: Geometry,
    repo: u64,
) -> Result<()> {
    let path = paths.log(id);
    let bytes = storage.read(&path).map_err(StoreError::io(&path))?;
    let doc = format::parse_doc(&path, MAGIC_LOG, &bytes)?;
    if doc.version != 1 {
        return Ok(());
    }
    let old: v1::LogHeader = format::decode(&path, &doc.payload)?;
    if old.layer != id.0 || old.block_size != geo.block_size || old.size != geo.size {
        return Err(StoreError::corrupt(&path, "it belongs to another layer"));
    }
    let start = doc.end as usize;
    let extents = v1::journal_extents(&bytes[start..], geo.blocks()).map_err(|at| {
        StoreError::corrupt(
            &path,
            format!(
                "the record at offset {} is damaged and more records follow it",
                start + at
            ),
        )
    })?;
    let present = ExtentSet::from_extents(extents);
    let data_path = paths.data(id);
    let file = storage
        .open(&data_path, false)
        .map_err(StoreError::io(&data_path))?;
    let kinds = split_by_holes(file.as_ref(), &data_path, geo, &present)?;
    let header = format::encode(&LogHeader {
        repo,
        layer: id.0,
        block_size: geo.block_size,
        size: geo.size,
    });
    let record = format::encode(&JournalRecord::Present {
        data: kinds.extents_of(BlockKind::Data),
        zero: kinds.extents_of(BlockKind::Zero),
    });
    let bytes = format::log_bytes(MAGIC_LOG, &header, &[record]);
    format::write_atomic(storage, &paths.tmp, &path, &bytes)
}
