//! Receiving a snapshot from a stream ([`crate::store::stream`]).
//!
//! What arrives is staged outside the layer tree, in
//! `REPO/receiving/<disk>@<snap>/`: `data` (the new layer's data file,
//! blocks at their own offsets) and `state` (a document, kind `STRATRCV`:
//! [`ReceiveState`]), rewritten at each checkpoint once the data before it
//! is synced. Nothing there is visible: no image reads it. Once `End` has
//! checked out, the new layer's identity is computed from its blocks' hashes
//! over the base's chain and compared with the stream's; only then, under
//! an intent, does the data file become `layers/<id>.data`, its index is
//! written, and one commit adds the layer and the snapshot. A receive cut
//! short keeps its staging: `receive --status` gives a resume token, and a
//! stream sent with it carries on where the staging stops.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::catalog::{FrozenInfo, LayerRecord, SnapshotRecord};
use crate::store::error::{Result, StoreError};
use crate::store::extents::ExtentSet;
use crate::store::format::{self, LayerFileKind};
use crate::store::identity::Identity;
use crate::store::layer::{self, BlockSum, FrozenIndex, Geometry, Piece};
use crate::store::names::{DiskName, LayerId, SnapName, SnapshotRef};
use crate::store::ops::send::ResumeToken;
use crate::store::stream::{Begin, Reader, Record, StreamError};
use crate::store::{Event, Repository};

pub(crate) const STAGING_DIR: &str = "receiving";
pub(crate) const MAGIC_RECEIVE: [u8; 8] = *b"STRATRCV";
/// Data received between two checkpoints.
const CHECKPOINT_BYTES: u64 = 256 << 20;

/// A receive's progress, kept beside its staged data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveState {
    pub repo: u64,
    /// The stream's `Begin` (of its first part).
    pub begin: Begin,
    /// The disk it is received as.
    pub disk: String,
    /// Every range before this offset is in `data` (synced) and below.
    pub received_to: u64,
    pub data: Vec<(u64, u64)>,
    pub zero: Vec<(u64, u64)>,
}

/// A receive that was cut short, as `receive --status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialReceive {
    pub snapshot: String,
    pub received_to: u64,
    pub size: u64,
    pub incremental: bool,
    pub token: String,
}

/// What a receive did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveReport {
    pub snapshot: String,
    pub identity: String,
    pub incremental: bool,
    pub resumed_from: Option<u64>,
    /// Bytes of the stream read.
    pub stream_bytes: u64,
    /// The snapshot was here already (same identity): nothing was done.
    pub already: bool,
}

fn stream_error(e: StreamError) -> StoreError {
    StoreError::Refused(format!(
        "{e}; nothing was received (a receive cut short keeps what it got: `strata receive --status`)"
    ))
}

impl Repository {
    fn staging_root(&self) -> PathBuf {
        self.path().join(STAGING_DIR)
    }

    fn staging(&self, r: &SnapshotRef) -> PathBuf {
        self.staging_root().join(r.to_string())
    }

    /// Receives one stream from `input`, as disk `as_disk` if given.
    pub fn receive(
        &self,
        input: &mut dyn Read,
        as_disk: Option<&DiskName>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ReceiveReport> {
        let mut reader = Reader::new(input).map_err(stream_error)?;
        let begin = match reader.next_record().map_err(stream_error)? {
            Some(Record::Begin(b)) => b,
            _ => {
                return Err(stream_error(StreamError::Truncated(
                    "before its Begin".into(),
                )))
            }
        };
        let disk = match as_disk {
            Some(d) => d.clone(),
            None => DiskName::parse(&begin.disk).map_err(|e| {
                StoreError::Refused(format!(
                    "the stream names disk {:?}, which is not a valid name here ({e}); \
                     receive it with --as NAME",
                    begin.disk
                ))
            })?,
        };
        let snap = SnapName::parse(&begin.snapshot).map_err(|e| {
            StoreError::Refused(format!(
                "the stream names snapshot {:?}, which is not a valid name ({e})",
                begin.snapshot
            ))
        })?;
        let r = SnapshotRef {
            disk: disk.clone(),
            snap,
        };
        let want = Identity(begin.identity);
        if self.snapshot_info(&r).is_ok() {
            let have = self.identity(&r)?;
            if have == want {
                return Ok(ReceiveReport {
                    snapshot: r.to_string(),
                    identity: want.to_string(),
                    incremental: begin.base.is_some(),
                    resumed_from: begin.resume_from,
                    stream_bytes: reader.bytes,
                    already: true,
                });
            }
            return Err(StoreError::Refused(format!(
                "snapshot {r} exists here with other content (identity {have}); \
                 receive the stream --as another disk, or rename or delete {r}"
            )));
        }
        let base_layer = match &begin.base {
            Some(b) => Some(self.find_base(&disk, &begin, b)?),
            None => None,
        };
        let geo = Geometry {
            size: begin.size,
            block_size: begin.block_size,
        };
        let dir = self.staging(&r);
        let st = self.inner.storage.as_ref();
        let data_path = dir.join("data");
        let io = |p: &Path| StoreError::io(p.to_path_buf());
        // The staging to write into: a new one, or the one a resumed
        // stream carries on.
        let mut state = match begin.resume_from {
            Some(from) => {
                let state = self.read_state(&r).map_err(|e| {
                    StoreError::Refused(format!(
                        "this stream resumes a receive of {r} from offset {from}, \
                         but none is under way here ({e}); send it again without --resume"
                    ))
                })?;
                if state.begin.identity != begin.identity
                    || state.begin.base.as_ref().map(|b| b.identity)
                        != begin.base.as_ref().map(|b| b.identity)
                    || state.disk != disk.as_str()
                {
                    return Err(StoreError::Refused(format!(
                        "this stream resumes another receive than the one of {r} under way here; \
                         use the token `strata receive --status` shows"
                    )));
                }
                if state.received_to != from {
                    return Err(StoreError::Refused(format!(
                        "this stream resumes from offset {from}, but the receive of {r} has up \
                         to offset {}; use the token `strata receive --status` shows now",
                        state.received_to
                    )));
                }
                state
            }
            None => {
                // A new stream starts over: what an older attempt left goes.
                self.remove_staging(&r);
                st.create_dir_all(&dir).map_err(io(&dir))?;
                let f = st.create_new(&data_path).map_err(io(&data_path))?;
                f.set_len(geo.size)
                    .map_err(StoreError::io_len(&data_path, geo.size))?;
                f.sync_all().map_err(io(&data_path))?;
                let state = ReceiveState {
                    repo: self.inner.files.repo_id(),
                    begin: begin.clone(),
                    disk: disk.to_string(),
                    received_to: 0,
                    data: vec![],
                    zero: vec![],
                };
                self.write_state(&r, &state)?;
                state
            }
        };
        let file = st.open(&data_path, true).map_err(io(&data_path))?;
        // Whatever a cut-short attempt wrote past its last checkpoint goes.
        if state.received_to < geo.size {
            file.punch_hole(state.received_to, geo.size - state.received_to)
                .map_err(io(&data_path))?;
        }
        let bs = geo.block_size as u64;
        let mut data = ExtentSet::from_extents(state.data.iter().copied());
        let mut zero = ExtentSet::from_extents(state.zero.iter().copied());
        let mut since_checkpoint = 0u64;
        let mut done = 0u64;
        let mut end_of_last = state.received_to;
        // Blocks are summed as they arrive, beside the writing (what an
        // earlier, cut-short part brought is read back at the end).
        let (to_hash, hashed) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(8);
        let hasher = std::thread::spawn(move || {
            let mut sums = std::collections::BTreeMap::new();
            for (offset, bytes) in hashed {
                for (i, block) in bytes.chunks(bs as usize).enumerate() {
                    sums.insert(offset / bs + i as u64, BlockSum::of(block));
                }
            }
            sums
        });
        loop {
            let rec = match reader.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived whole: the next stream resumes there.
                    self.checkpoint(&r, &file, &data_path, &mut state, end_of_last, &data, &zero)?;
                    return Err(stream_error(e));
                }
            };
            match rec {
                Record::Data {
                    offset,
                    data: bytes,
                } => {
                    file.write_all_at(&bytes, offset).map_err(io(&data_path))?;
                    let end = offset + bytes.len() as u64;
                    data.insert(offset / bs..end.div_ceil(bs));
                    end_of_last = end;
                    since_checkpoint += bytes.len() as u64;
                    done += bytes.len() as u64;
                    progress(done, begin.data_bytes);
                    // If the hasher is gone, the blocks are read back below.
                    let _ = to_hash.send((offset, bytes));
                }
                Record::Zero { offset, len } => {
                    let end = offset + len;
                    zero.insert(offset / bs..end.div_ceil(bs));
                    end_of_last = end;
                }
                Record::Begin(_) => {}
                Record::End(_) => {}
            }
            if since_checkpoint >= CHECKPOINT_BYTES {
                self.checkpoint(&r, &file, &data_path, &mut state, end_of_last, &data, &zero)?;
                since_checkpoint = 0;
            }
        }
        file.sync_data().map_err(io(&data_path))?;
        drop(to_hash);
        let mut hashed = hasher.join().unwrap_or_default();
        // The new layer, checked against the stream's identity.
        let missing = ExtentSet::from_extents(
            data.runs()
                .flatten()
                .filter(|b| !hashed.contains_key(b))
                .map(|b| (b, 1)),
        );
        for (b, sum) in
            missing
                .runs()
                .flatten()
                .zip(layer::sums_of(file.as_ref(), &data_path, geo, &missing)?)
        {
            hashed.insert(b, sum);
        }
        let sums: Vec<BlockSum> = data
            .runs()
            .flatten()
            .filter_map(|b| hashed.get(&b).copied())
            .collect();
        let chain = match base_layer {
            Some(b) => self.catalog().chain(b),
            None => vec![],
        };
        let idx = |file: LayerId| FrozenIndex {
            pieces: vec![Piece {
                file,
                data: data.clone(),
                sums: Some(sums.clone()),
            }],
            zero: zero.clone(),
        };
        let got = self.identity_over(geo, Some(&idx(LayerId(0))), &chain)?;
        if got != want {
            self.remove_staging(&r);
            return Err(StoreError::Refused(format!(
                "what the stream holds has identity {got}, but it says {want}: the stream was \
                 altered or its base differs; nothing was received"
            )));
        }
        let stored_bytes = file.allocated_bytes().map_err(io(&data_path))?;
        drop(file);
        self.commit_received(
            &r,
            geo,
            base_layer,
            &data_path,
            idx,
            stored_bytes,
            begin.taken,
        )?;
        self.remove_staging(&r);
        if let Ok(info) = self.snapshot_info(&r) {
            self.inner.identities.lock().insert(info.layer, want);
        }
        Ok(ReceiveReport {
            snapshot: r.to_string(),
            identity: want.to_string(),
            incremental: begin.base.is_some(),
            resumed_from: begin.resume_from,
            stream_bytes: reader.bytes,
            already: false,
        })
    }

    /// The layer of the snapshot here whose identity is the stream's base:
    /// one of `disk`'s first, then any.
    fn find_base(
        &self,
        disk: &DiskName,
        begin: &Begin,
        b: &crate::store::stream::Base,
    ) -> Result<LayerId> {
        let want = Identity(b.identity);
        let cat = self.catalog();
        let mut candidates: Vec<SnapshotRef> = vec![];
        if let Some(m) = cat.snapshots.get(disk) {
            candidates.extend(m.keys().map(|s| SnapshotRef {
                disk: disk.clone(),
                snap: s.clone(),
            }));
        }
        for (d, m) in &cat.snapshots {
            if d != disk {
                candidates.extend(m.keys().map(|s| SnapshotRef {
                    disk: d.clone(),
                    snap: s.clone(),
                }));
            }
        }
        for c in candidates {
            let info = self.snapshot_info(&c)?;
            if info.size == b.size && self.identity(&c)? == want {
                if info.block_size != begin.block_size {
                    return Err(StoreError::Refused(format!(
                        "the base {c} has {} blocks here and the stream {}: receive a full \
                         stream instead",
                        crate::units::format_size(info.block_size as u64),
                        crate::units::format_size(begin.block_size as u64),
                    )));
                }
                return Ok(info.layer);
            }
        }
        Err(StoreError::Refused(format!(
            "this is an incremental stream from {} (identity {want}), and no snapshot here has \
             that content; receive a full stream first, or send from a snapshot this repository \
             has (`strata snapshot list {disk} --json` shows identities)",
            b.name
        )))
    }

    #[allow(clippy::too_many_arguments)]
    fn checkpoint(
        &self,
        r: &SnapshotRef,
        file: &std::sync::Arc<dyn crate::store::storage::StorageFile>,
        data_path: &Path,
        state: &mut ReceiveState,
        to: u64,
        data: &ExtentSet,
        zero: &ExtentSet,
    ) -> Result<()> {
        file.sync_data().map_err(StoreError::io(data_path))?;
        state.received_to = to;
        state.data = data.to_extents();
        state.zero = zero.to_extents();
        self.write_state(r, state)
    }

    fn write_state(&self, r: &SnapshotRef, state: &ReceiveState) -> Result<()> {
        let path = self.staging(r).join("state");
        format::write_atomic(
            self.inner.storage.as_ref(),
            &self.inner.paths.tmp,
            &path,
            &format::doc_bytes(MAGIC_RECEIVE, &format::encode(state)),
        )
    }

    fn read_state(&self, r: &SnapshotRef) -> Result<ReceiveState> {
        let path = self.staging(r).join("state");
        let state: ReceiveState =
            format::read_doc_payload(self.inner.storage.as_ref(), &path, MAGIC_RECEIVE)?;
        if state.repo != self.inner.files.repo_id() {
            return Err(StoreError::corrupt(
                &path,
                "it belongs to another repository",
            ));
        }
        let data = self.staging(r).join("data");
        self.inner
            .storage
            .open(&data, false)
            .map_err(StoreError::io(&data))?;
        Ok(state)
    }

    fn remove_staging(&self, r: &SnapshotRef) {
        let dir = self.staging(r);
        let st = self.inner.storage.as_ref();
        for f in ["data", "state"] {
            let _ = st.remove_file(&dir.join(f));
        }
        let _ = st.remove_dir(&dir);
    }

    /// Receives cut short, with their resume tokens.
    pub fn partial_receives(&self) -> Result<Vec<PartialReceive>> {
        let root = self.staging_root();
        let names = match self.inner.storage.read_dir(&root) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(StoreError::io(root)(e)),
        };
        let mut out = vec![];
        for name in names {
            let Ok(r) = SnapshotRef::parse(&name) else {
                continue;
            };
            match self.read_state(&r) {
                Ok(s) => out.push(PartialReceive {
                    snapshot: name,
                    received_to: s.received_to,
                    size: s.begin.size,
                    incremental: s.begin.base.is_some(),
                    token: ResumeToken {
                        identity: s.begin.identity,
                        base: s.begin.base.map(|b| b.identity),
                        offset: s.received_to,
                    }
                    .encode(),
                }),
                Err(e) => log::warn!("{}: {e}", root.join(&name).display()),
            }
        }
        out.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
        Ok(out)
    }

    /// Discards receives cut short (all, or the one of `r`).
    pub fn abort_receives(&self, r: Option<&SnapshotRef>) -> Result<Vec<String>> {
        let all = self.partial_receives()?;
        let mut gone = vec![];
        for p in all {
            if r.is_some_and(|r| r.to_string() != p.snapshot) {
                continue;
            }
            if let Ok(pr) = SnapshotRef::parse(&p.snapshot) {
                self.remove_staging(&pr);
                gone.push(p.snapshot);
            }
        }
        Ok(gone)
    }

    /// Makes the staged data file a layer and adds the snapshot, in one
    /// commit, under an intent.
    #[allow(clippy::too_many_arguments)]
    fn commit_received(
        &self,
        r: &SnapshotRef,
        geo: Geometry,
        parent: Option<LayerId>,
        staged: &Path,
        index: impl Fn(LayerId) -> FrozenIndex,
        stored_bytes: u64,
        taken: u64,
    ) -> Result<()> {
        let _s = self.inner.structure.lock();
        let (ids, (), made, intent) = self.intend(format!("receive {r}"), 1, |_, ids| {
            Ok((
                (),
                vec![
                    (ids[0], LayerFileKind::Data),
                    (ids[0], LayerFileKind::Index),
                ],
            ))
        })?;
        let id = ids[0];
        let files = &self.inner.files;
        let idx = index(id);
        let placed = (|| {
            let to = files.paths().data(id);
            self.inner
                .storage
                .rename(staged, &to)
                .map_err(StoreError::io(&to))?;
            layer::write_new_index(files, id, geo, &idx)?;
            format::sync_dir(files.storage(), &files.paths().dir)
        })();
        if let Err(e) = placed {
            self.abandon(intent, &made);
            return Err(e);
        }
        let committed = self.commit(|cat| {
            if cat
                .snapshots
                .get(&r.disk)
                .is_some_and(|m| m.contains_key(&r.snap))
            {
                return Err(StoreError::SnapshotExists(r.clone()));
            }
            if let Some(p) = parent {
                if cat.layers.get(&p).is_none_or(|l| l.frozen.is_none()) {
                    return Err(StoreError::Refused(format!(
                        "the base of {r} was deleted while it was received"
                    )));
                }
            }
            let seq = cat.next_seq;
            cat.next_seq += 1;
            cat.layers.insert(
                id,
                LayerRecord {
                    parent,
                    block_size: geo.block_size,
                    size: geo.size,
                    frozen: Some(FrozenInfo {
                        blocks: idx.present().blocks(),
                        stored_bytes,
                    }),
                    files: vec![id],
                },
            );
            cat.snapshots.insert2(
                r.disk.clone(),
                r.snap.clone(),
                SnapshotRecord {
                    layer: id,
                    taken,
                    seq,
                },
            );
            cat.intents.remove(&intent);
            Ok(())
        });
        match committed {
            Ok(()) => {
                self.emit(Event::SnapshotTaken {
                    disk: r.disk.clone(),
                    layer: id,
                });
                Ok(())
            }
            Err(crate::store::catalog::CommitError::NotWritten(e)) => {
                self.abandon(intent, &made);
                Err(e)
            }
            Err(crate::store::catalog::CommitError::Unknown(e)) => Err(e),
        }
    }
}
