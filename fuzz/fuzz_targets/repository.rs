//! A whole repository opened from damaged files: a small repository (two
//! disks, snapshots on both, a disk made from a snapshot, an unfrozen
//! journal, a bookmark) is built once in the power-loss simulator's
//! in-memory storage; each input then edits its files (flips bytes,
//! truncates, replaces, removes, adds files under names it chooses in any
//! of the repository's directories, the quarantine included) and the store
//! opens the result, reads every image, lists the quarantine, verifies,
//! writes and snapshots. Any error is fine; none may panic, hang or
//! allocate without bound.
//!
//! Input: a list of edits, each an op byte then its arguments (see `edit`).

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use strata::store::ops::verify::VerifyOptions;
use strata::store::storage::sim::SimStorage;
use strata::store::storage::{EntryKind, Storage};
use strata::store::{DiskName, ImageRead, ImageRef, Repository, SnapName, SnapshotRef};

const ROOT: &str = "/fuzz/repo";
const DIRS: [&str; 8] = [
    "",
    "layers",
    "tmp",
    "bookmarks",
    "quarantine",
    "quarantine/2026-11-23T00-00-00Z",
    "receiving",
    "receiving/a@s3",
];

fn files(st: &dyn Storage, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let mut names = st.read_dir(dir).unwrap();
    names.sort();
    for n in names {
        let p = dir.join(n);
        match st.kind(&p).unwrap() {
            Some(EntryKind::Dir) => files(st, &p, out),
            Some(_) => out.push((p.clone(), st.read(&p).unwrap())),
            None => {}
        }
    }
}

/// The files of the repository every input starts from.
fn base() -> &'static [(PathBuf, Vec<u8>)] {
    static BASE: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = Path::new(ROOT);
        let sim = SimStorage::new(&[root.parent().unwrap()]);
        let repo = Repository::init_in(Arc::new(sim.clone()), root).unwrap();
        let (a, b) = (DiskName::parse("a").unwrap(), DiskName::parse("b").unwrap());
        repo.create_disk(&a, 64 << 10, 4096).unwrap();
        repo.create_disk(&b, 32 << 10, 4096).unwrap();
        let d = repo.disk(&a).unwrap();
        for (i, off) in [0u64, 8192, 40960].into_iter().enumerate() {
            d.write_at(off, &[i as u8 + 1; 6000]).unwrap();
        }
        d.flush().unwrap();
        repo.snapshot(&a, Some(SnapName::parse("s1").unwrap()))
            .unwrap();
        d.write_at(4096, &[9; 4096]).unwrap();
        d.discard(40960, 8192).unwrap();
        d.flush().unwrap();
        repo.snapshot(&a, Some(SnapName::parse("s2").unwrap()))
            .unwrap();
        let s1 = SnapshotRef::parse("a@s1").unwrap();
        repo.create_disk_from(&DiskName::parse("c").unwrap(), &s1)
            .unwrap();
        // A send leaves a bookmark of what it sent.
        repo.send(&s1, None, None, &mut std::io::sink(), &mut |_, _| {})
            .unwrap();
        assert!(repo.bookmark(&s1).is_ok());
        let e = repo.disk(&b).unwrap();
        e.write_at(100, b"unfrozen").unwrap();
        e.flush().unwrap();
        drop((d, e, repo));
        let mut out = vec![];
        files(&sim, root, &mut out);
        out
    })
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (b, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        b
    }
}

/// Applies one edit to `files`; `None` when the input is used up.
fn edit(files: &mut Vec<(PathBuf, Vec<u8>)>, input: &mut Input) -> Option<()> {
    let op = input.byte()?;
    let pick = |files: &Vec<(PathBuf, Vec<u8>)>, b: u8| (b as usize) % files.len().max(1);
    match op % 6 {
        // Flip bits of one byte.
        0 | 1 => {
            let i = pick(files, input.byte()?);
            let (off, x) = (input.u32()?, input.byte()?);
            if let Some((_, c)) = files.get_mut(i) {
                if !c.is_empty() {
                    let n = c.len();
                    c[off as usize % n] ^= x.max(1);
                }
            }
        }
        // Cut a file short.
        2 => {
            let i = pick(files, input.byte()?);
            let len = input.u32()?;
            if let Some((_, c)) = files.get_mut(i) {
                let n = c.len().max(1);
                c.truncate(len as usize % n);
            }
        }
        // Replace a file's contents.
        3 => {
            let i = pick(files, input.byte()?);
            let n = input.byte()? as usize * 16;
            let with = input.bytes(n).to_vec();
            if let Some((_, c)) = files.get_mut(i) {
                *c = with;
            }
        }
        // Remove a file.
        4 => {
            let i = pick(files, input.byte()?);
            if i < files.len() {
                files.remove(i);
            }
        }
        // Add a file under a chosen name in one of the directories.
        _ => {
            let dir = DIRS[input.byte()? as usize % DIRS.len()];
            let n = input.byte()? as usize % 40;
            let name = String::from_utf8_lossy(input.bytes(n)).into_owned();
            let m = input.byte()? as usize * 16;
            let contents = input.bytes(m).to_vec();
            // The simulator holds plain names; one path component each.
            if name.is_empty() || name.contains(['/', '\0']) || name == "." || name == ".." {
                return Some(());
            }
            let dir = Path::new(ROOT).join(dir);
            files.push((dir.join(name), contents));
        }
    }
    Some(())
}

fn read_all(img: &dyn ImageRead) {
    let mut buf = vec![0; 16 << 10];
    let mut off = 0;
    while off < img.size() {
        match img.read_at(off, &mut buf) {
            Ok(0) | Err(_) => off += buf.len() as u64,
            Ok(n) => off += n as u64,
        }
    }
    let _ = img.seek_data(0);
    let _ = img.seek_hole(0);
}

fuzz_target!(|data: &[u8]| {
    let mut files = base().to_vec();
    let mut input = Input(data);
    for _ in 0..64 {
        if edit(&mut files, &mut input).is_none() {
            break;
        }
    }
    let root = Path::new(ROOT);
    let sim = SimStorage::new(&[root]);
    for (p, c) in &files {
        if sim.create_dir_all(p.parent().unwrap()).is_err() {
            continue;
        }
        // A name the edits added twice, or that a directory holds: skip.
        if let Ok(f) = sim.create_new(p) {
            f.write_all_at(c, 0).unwrap();
        }
    }
    let Ok(repo) = Repository::open_in(Arc::new(sim), root) else {
        return;
    };
    let _ = repo.quarantine();
    for name in repo.disk_names() {
        let mut images = vec![ImageRef::Live(name.clone())];
        if let Ok(snaps) = repo.snapshots(&name) {
            for s in snaps {
                if let Ok(r) = SnapshotRef::parse(&format!("{}@{}", s.disk, s.name)) {
                    images.push(ImageRef::Snapshot(r));
                }
            }
        }
        for r in images {
            if let Ok(img) = repo.open_image(&r) {
                read_all(img.as_ref());
            }
        }
    }
    let _ = repo.verify(&VerifyOptions::default(), &mut |_, _| {});
    // What a user does next: write and take a snapshot.
    if let Some(name) = repo.disk_names().first() {
        if let Ok(d) = repo.disk(name) {
            if d.write_at(0, &[7; 4096]).and_then(|_| d.flush()).is_ok() {
                let _ = repo.snapshot(name, None);
            }
        }
    }
});
