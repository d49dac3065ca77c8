//! A live layer's journal: the durable record of which blocks the layer
//! holds, as data or as zeros (format: [`super::format`], a log of
//! [`JournalRecord`]s).
//!
//! The journal never leads the data: a record is appended only after the
//! data of every block it names is synced, and the layer's writer stops (is
//! latched, see [`super::disk`]) if an append fails and cannot be taken back,
//! so no record can ever follow garbage.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::{Result, StoreError};
use super::extents::{BlockKind, PresentMap};
use super::format::{self, AppendError, JournalRecord, LogHeader, MAGIC_LOG};
use super::layer::{Geometry, LayerFiles};
use super::names::LayerId;
use super::storage::StorageFile;

/// A journal is rewritten as one record once it is this many times larger
/// than that record would be (and larger than [`MIN_REWRITE_BYTES`]).
const REWRITE_RATIO: u64 = 8;
const MIN_REWRITE_BYTES: u64 = 1 << 20;

pub struct Journal {
    files: Arc<LayerFiles>,
    id: LayerId,
    geo: Geometry,
    path: PathBuf,
    file: Arc<dyn StorageFile>,
    /// Where the next record goes.
    end: u64,
    next_seq: u64,
}

impl Journal {
    fn header(files: &LayerFiles, id: LayerId, geo: Geometry) -> Vec<u8> {
        format::encode(&LogHeader {
            repo: files.repo_id(),
            layer: id.0,
            block_size: geo.block_size,
            size: geo.size,
        })
    }

    /// Creates the empty journal of a new live layer and syncs it (the
    /// caller syncs the directory).
    pub fn create(files: Arc<LayerFiles>, id: LayerId, geo: Geometry) -> Result<Journal> {
        let path = files.paths().log(id);
        let bytes = format::log_bytes(MAGIC_LOG, &Self::header(&files, id, geo), &[]);
        let file = files
            .storage()
            .create_new(&path)
            .and_then(|f| {
                f.write_all_at(&bytes, 0)?;
                f.sync_all()?;
                Ok(f)
            })
            .map_err(StoreError::io(&path))?;
        Ok(Journal {
            files,
            id,
            geo,
            path,
            file,
            end: bytes.len() as u64,
            next_seq: 1,
        })
    }

    /// Opens a journal after a clean stop or a crash: mends damaged copies,
    /// cuts off a torn last record (never acknowledged), refuses damage it
    /// cannot mend, and returns the present blocks it records.
    pub fn open(
        files: Arc<LayerFiles>,
        id: LayerId,
        geo: Geometry,
    ) -> Result<(Journal, PresentMap)> {
        let path = files.paths().log(id);
        let storage = files.storage();
        let bytes = storage.read(&path).map_err(StoreError::io(&path))?;
        let log = format::parse_log(&path, MAGIC_LOG, &bytes)?;
        if log.header.version == 1 {
            return Err(StoreError::corrupt(
                &path,
                "it is in format version 1 while strata.repo says version 2",
            ));
        }
        let header: LogHeader = format::decode(&path, &log.header.payload)?;
        if header.repo != files.repo_id() {
            return Err(StoreError::corrupt(
                &path,
                "it belongs to another repository",
            ));
        }
        // A disk that grew may have crashed before its journal said so.
        if header.layer != id.0 || header.block_size != geo.block_size || header.size > geo.size {
            return Err(StoreError::corrupt(&path, "it belongs to another layer"));
        }
        let grown = header.size < geo.size;
        let mut present = PresentMap::new();
        for (i, r) in log.records.iter().enumerate() {
            let (data, zero) = match format::decode(&path, r)? {
                JournalRecord::Present { data, zero } => (data, zero),
                JournalRecord::Committed => continue,
            };
            for (kind, extents) in [(BlockKind::Data, data), (BlockKind::Zero, zero)] {
                for (first, count) in extents {
                    let end = first
                        .checked_add(count)
                        .filter(|&e| count > 0 && e <= geo.blocks());
                    let Some(end) = end else {
                        return Err(StoreError::corrupt(
                            &path,
                            format!("record {} names blocks outside the disk", i + 1),
                        ));
                    };
                    present.paint(first..end, kind);
                }
            }
        }
        let file = storage.open(&path, true).map_err(StoreError::io(&path))?;
        format::apply_repairs(storage, &path, &log.repairs)?;
        if log.torn > 0 {
            log::warn!(
                "{}: cutting off a torn, never acknowledged record ({} bytes at offset {})",
                path.display(),
                log.torn,
                log.end
            );
            file.set_len(log.end)
                .and_then(|_| file.sync_data())
                .map_err(StoreError::io(&path))?;
        }
        let mut journal = Journal {
            files,
            id,
            geo,
            path,
            file,
            end: log.end,
            next_seq: log.records.len() as u64 + 1,
        };
        if grown {
            journal.rewrite(&present)?;
        }
        Ok((journal, present))
    }

    fn record(changes: &PresentMap) -> Vec<u8> {
        format::encode(&JournalRecord::Present {
            data: changes.extents_of(BlockKind::Data),
            zero: changes.extents_of(BlockKind::Zero),
        })
    }

    /// Appends a record of `changes` and syncs it. The data of every block
    /// it names must already be durable. On failure the journal is as it
    /// was before if the torn record could be taken back out; the caller
    /// latches the disk either way.
    pub fn append(&mut self, changes: &PresentMap) -> Result<()> {
        self.append_record(&Self::record(changes))
    }

    /// Records that the operation creating this layer has committed.
    pub fn mark_committed(&mut self) -> Result<()> {
        self.append_record(&format::encode(&JournalRecord::Committed))
    }

    fn append_record(&mut self, payload: &[u8]) -> Result<()> {
        let bytes = format::record_bytes(self.next_seq, payload);
        format::append_synced(self.file.as_ref(), self.end, &bytes).map_err(|e| match e {
            AppendError::TakenBack(e) | AppendError::Unknown(e) => StoreError::io(&self.path)(e),
        })?;
        self.end += bytes.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Whether a journal's bytes hold a `Committed` record (recovery asks
    /// before removing a layer an unfinished intent names).
    pub fn holds_committed(path: &std::path::Path, bytes: &[u8]) -> bool {
        let Ok(log) = format::parse_log(path, MAGIC_LOG, bytes) else {
            return false;
        };
        log.records.iter().any(|r| {
            matches!(
                format::decode::<JournalRecord>(path, r),
                Ok(JournalRecord::Committed)
            )
        })
    }

    /// The layer's new size, once the disk grew; the next rewrite records it.
    pub fn set_geometry(&mut self, geo: Geometry) {
        self.geo = geo;
    }

    /// Whether the journal has grown well past a single record of `present`.
    pub fn wants_rewrite(&self, present: &PresentMap) -> bool {
        let full = 1024 + 24 * present.len() as u64;
        self.end > MIN_REWRITE_BYTES.max(REWRITE_RATIO * full)
    }

    /// Replaces the journal, atomically, with one record of `present` (every
    /// block of which must be durable).
    pub fn rewrite(&mut self, present: &PresentMap) -> Result<()> {
        let header = Self::header(&self.files, self.id, self.geo);
        let committed = format::encode(&JournalRecord::Committed);
        let bytes = format::log_bytes(MAGIC_LOG, &header, &[Self::record(present), committed]);
        let storage = self.files.storage();
        format::write_atomic(storage, &self.files.paths().tmp, &self.path, &bytes)?;
        self.file = storage
            .open(&self.path, true)
            .map_err(StoreError::io(&self.path))?;
        self.end = bytes.len() as u64;
        self.next_seq = 3;
        Ok(())
    }
}
