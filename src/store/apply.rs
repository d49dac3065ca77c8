//! Applying a stream onto a raw image file or a block device, with no
//! repository at that end: the seed's own flow (a base image there, then
//! only the changes copied onto it).
//!
//! An incremental stream is applied only when the target's content is the
//! stream's base, checked by computing the target's identity first. Only
//! the stream's ranges are written; zero ranges are punched in a file. At
//! the end the target's identity is computed again and compared with the
//! snapshot's. Progress is kept in a small state file (beside a file
//! target: `NAME.strata-apply`), written before the first write and
//! removed after the last check: an apply cut short is reported as such,
//! and running the same stream again finishes it (its base check is then
//! skipped: the state says the target was that base before this stream
//! began to change it).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::identity::{self, Identity, LEAF};
use super::stream::{Reader, Record, StreamError};
use crate::sys;

/// How to apply.
pub struct ApplyOptions<'a> {
    pub target: &'a Path,
    /// Where the state goes (default: beside the target).
    pub state: Option<&'a Path>,
    /// Skip checking that the target is the stream's base.
    pub trust_base: bool,
    /// Skip checking the result's identity.
    pub no_verify: bool,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub snapshot: String,
    pub identity: String,
    pub incremental: bool,
    pub written_bytes: u64,
    pub verified: bool,
    /// An earlier apply of this stream had been cut short.
    pub finished_earlier: bool,
}

/// The state file's contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ApplyState {
    snapshot: String,
    identity: String,
    base: Option<String>,
}

fn refused(target: &Path, why: impl std::fmt::Display) -> StoreError {
    StoreError::Refused(format!("cannot apply onto {}: {why}", target.display()))
}

/// The state file of `target`.
pub fn state_path(target: &Path, state: Option<&Path>) -> PathBuf {
    match state {
        Some(s) => s.to_path_buf(),
        None => {
            let mut name = target.file_name().unwrap_or_default().to_os_string();
            name.push(".strata-apply");
            target.with_file_name(name)
        }
    }
}

/// The content identity of the first `size` bytes of `file`: holes (where
/// the file says so) cost nothing, data is read in 1 MiB pieces.
pub fn identity_of_file(file: &File, size: u64, sparse: bool) -> std::io::Result<Identity> {
    let n = identity::leaves(size).max(1);
    let top = file_node(file, size, sparse, 0, n)?;
    Ok(identity::root(size, &top))
}

fn file_node(
    file: &File,
    size: u64,
    sparse: bool,
    lo: u64,
    hi: u64,
) -> std::io::Result<identity::Hash> {
    let (start, end) = (lo * LEAF, (hi * LEAF).min(size));
    if sparse && sys::seek_data(file, start)?.is_none_or(|d| d >= end) {
        return Ok(identity::zeros(end - start));
    }
    if hi - lo <= 256 {
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)?;
        return Ok(identity::tree(&buf));
    }
    let mid = lo + (1u64 << (63 - (hi - lo - 1).leading_zeros()));
    Ok(identity::join(
        &file_node(file, size, sparse, lo, mid)?,
        &file_node(file, size, sparse, mid, hi)?,
    ))
}

/// Applies the stream read from `input` onto `opts.target`.
pub fn apply(
    input: &mut dyn Read,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ApplyReport> {
    let target = opts.target;
    let bad_stream =
        |e: StreamError| refused(target, format!("{e}; the target was not changed by it"));
    let mut reader = Reader::new(input).map_err(bad_stream)?;
    let begin = match reader.next_record().map_err(bad_stream)? {
        Some(Record::Begin(b)) => b,
        _ => {
            return Err(bad_stream(StreamError::Truncated(
                "before its Begin".into(),
            )))
        }
    };
    if begin.resume_from.is_some() {
        return Err(refused(
            target,
            "this stream is a resumed one, for `strata receive`; apply the whole stream again",
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .map_err(|e| refused(target, e))?;
    let md = file.metadata().map_err(|e| refused(target, e))?;
    let device = md.file_type().is_block_device();
    if !device && !md.file_type().is_file() {
        return Err(refused(
            target,
            "it is neither a regular file nor a block device",
        ));
    }
    let io = |e: std::io::Error| refused(target, e);
    let len = if device {
        use std::io::Seek;
        (&file).seek(std::io::SeekFrom::End(0)).map_err(io)?
    } else {
        md.len()
    };
    let want = Identity(begin.identity);
    let state_file = state_path(target, opts.state);
    let ours = ApplyState {
        snapshot: format!("{}@{}", begin.disk, begin.snapshot),
        identity: want.to_string(),
        base: begin
            .base
            .as_ref()
            .map(|b| Identity(b.identity).to_string()),
    };
    let earlier = match std::fs::read(&state_file) {
        Ok(bytes) => {
            let st: ApplyState = serde_json::from_slice(&bytes).map_err(|e| {
                refused(
                    target,
                    format!("its state file {} is damaged ({e})", state_file.display()),
                )
            })?;
            if st != ours {
                return Err(refused(
                    target,
                    format!(
                        "an apply of {} onto it was cut short ({}): apply that stream again to \
                         finish it, or remove the state file if the target was restored",
                        st.snapshot,
                        state_file.display()
                    ),
                ));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(refused(target, format!("{}: {e}", state_file.display()))),
    };
    // The target must be the base, checked before anything is written.
    if let Some(base) = &begin.base {
        if !earlier && !opts.trust_base {
            // A device may be larger than the image: its first bytes are.
            if len != base.size && !(device && len > base.size) {
                return Err(refused(
                    target,
                    format!(
                        "it is {len} bytes and the stream's base {} is {}: it is not that base",
                        base.name, base.size
                    ),
                ));
            }
            let have = identity_of_file(&file, base.size, !device).map_err(io)?;
            if have != Identity(base.identity) {
                return Err(refused(
                    target,
                    format!(
                        "its content (identity {have}) is not the stream's base {} (identity {}); \
                         nothing was written",
                        base.name,
                        Identity(base.identity)
                    ),
                ));
            }
        }
    }
    if device && len < begin.size {
        return Err(refused(
            target,
            format!("the device holds {len} bytes and the image {}", begin.size),
        ));
    }
    write_state(&state_file, &ours)
        .map_err(|e| refused(target, format!("{}: {e}", state_file.display())))?;
    if !device {
        if begin.base.is_none() {
            // A full stream: everything it does not carry reads as zeros.
            file.set_len(0).map_err(io)?;
        }
        file.set_len(begin.size).map_err(io)?;
    }
    let mut written = 0u64;
    let mut zeros = vec![];
    let mut done = 0u64;
    // On a device, a full stream's gaps are written with zeros too.
    let mut next = 0u64;
    let fill_gap = |from: u64, to: u64, zeros: &mut Vec<u8>| -> Result<()> {
        if device && begin.base.is_none() {
            zero_range(&file, from, to, true, zeros).map_err(io)?;
        }
        Ok(())
    };
    loop {
        match reader.next_record().map_err(bad_stream)? {
            Some(Record::Data { offset, data }) => {
                fill_gap(next, offset, &mut zeros)?;
                file.write_all_at(&data, offset).map_err(io)?;
                written += data.len() as u64;
                done += data.len() as u64;
                next = offset + data.len() as u64;
                progress(done, begin.data_bytes);
            }
            Some(Record::Zero { offset, len }) => {
                fill_gap(next, offset, &mut zeros)?;
                zero_range(&file, offset, offset + len, device, &mut zeros).map_err(io)?;
                next = offset + len;
            }
            Some(_) => {}
            None => break,
        }
    }
    fill_gap(next, begin.size, &mut zeros)?;
    file.sync_all().map_err(io)?;
    let verified = !opts.no_verify;
    if verified {
        let got = identity_of_file(&file, begin.size, !device).map_err(io)?;
        if got != want {
            return Err(refused(
                target,
                format!(
                    "after applying, its identity is {got} and the snapshot's {want}: it was not \
                     the stream's base (or changed meanwhile); the state file {} stays",
                    state_file.display()
                ),
            ));
        }
    }
    let _ = std::fs::remove_file(&state_file);
    Ok(ApplyReport {
        snapshot: ours.snapshot,
        identity: want.to_string(),
        incremental: begin.base.is_some(),
        written_bytes: written,
        verified,
        finished_earlier: earlier,
    })
}

/// Writes the state file durably: a temporary file beside it, synced,
/// renamed over it, the directory synced.
fn write_state(path: &Path, state: &ApplyState) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = File::create(&tmp)?;
    f.write_all_at(&serde_json::to_vec(state).unwrap_or_default(), 0)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Makes `from..to` read as zeros: punched in a file, written on a device.
fn zero_range(
    file: &File,
    from: u64,
    to: u64,
    device: bool,
    zeros: &mut Vec<u8>,
) -> std::io::Result<()> {
    if from >= to {
        return Ok(());
    }
    if !device {
        return sys::punch_hole(file, from, to - from);
    }
    if zeros.is_empty() {
        zeros.resize(1 << 20, 0);
    }
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}
