//! Model-based test of the store: random sequences of every operation —
//! writes (any offset and length), discards, flushes, snapshots (plain,
//! full, of several disks at once), deletes of any snapshots (several at
//! once, some of them held open), disks made from snapshots, rollbacks,
//! full copies, renames, resizes, disk deletes, gc and reopens — run
//! against a real repository and against plain in-memory images. After
//! every step every image (each live disk, each snapshot, each snapshot
//! held open across its deletion) must read back exactly as the model says.

use std::collections::BTreeMap;

use proptest::prelude::*;
use strata::store::identity::Identity;
use strata::store::{
    DiskName, ImageRead, ImageRef, Repository, SnapName, Snapshot, SnapshotOptions, SnapshotRef,
};

/// Which disk or snapshot an op acts on: an index into the current ones,
/// taken modulo their count (an op with nothing to act on is skipped).
type Pick = usize;

#[derive(Debug, Clone)]
enum Op {
    /// `at` and `len` are fractions (of 2^16) of the disk's size.
    Write {
        disk: Pick,
        at: u16,
        len: usize,
        seed: u8,
    },
    Discard {
        disk: Pick,
        at: u16,
        len: u64,
    },
    Flush {
        disk: Pick,
    },
    Snapshot {
        disk: Pick,
        full: bool,
    },
    /// One snapshot of two disks in one commit.
    SnapshotTwo {
        a: Pick,
        b: Pick,
    },
    Delete {
        snaps: Vec<Pick>,
    },
    Clone {
        snap: Pick,
    },
    Rollback {
        snap: Pick,
    },
    MakeFull {
        snap: Pick,
    },
    RenameSnapshot {
        snap: Pick,
    },
    RenameDisk {
        disk: Pick,
    },
    Grow {
        disk: Pick,
        blocks: u64,
    },
    DeleteDisk {
        disk: Pick,
    },
    /// Opens a snapshot and keeps it open: it must read the same whatever
    /// happens to it, until released.
    Hold {
        snap: Pick,
    },
    Release {
        held: Pick,
    },
    Gc,
    Reopen,
}

/// Disk geometries that cover whole, partial and odd-sized last blocks.
const GEOMETRIES: [(u64, u32); 3] = [(64 << 10, 4096), (100 << 10, 8192), (200 << 10, 65536)];

fn op() -> impl Strategy<Value = Op> {
    let pick = || 0..64usize;
    prop_oneof![
        12 => (pick(), any::<u16>(), 1..24usize << 10, any::<u8>())
            .prop_map(|(disk, at, len, seed)| Op::Write { disk, at, len, seed }),
        // Whole blocks of zeros take a different path: they become holes.
        2 => (pick(), any::<u16>(), 1..24usize << 10)
            .prop_map(|(disk, at, len)| Op::Write { disk, at, len, seed: 0 }),
        3 => (pick(), any::<u16>(), 1..24u64 << 10)
            .prop_map(|(disk, at, len)| Op::Discard { disk, at, len }),
        2 => pick().prop_map(|disk| Op::Flush { disk }),
        6 => (pick(), prop::bool::weighted(0.15)).prop_map(|(disk, full)| Op::Snapshot { disk, full }),
        1 => (pick(), pick()).prop_map(|(a, b)| Op::SnapshotTwo { a, b }),
        4 => prop::collection::vec(pick(), 1..4).prop_map(|snaps| Op::Delete { snaps }),
        1 => pick().prop_map(|snap| Op::Clone { snap }),
        1 => pick().prop_map(|snap| Op::Rollback { snap }),
        1 => pick().prop_map(|snap| Op::MakeFull { snap }),
        1 => pick().prop_map(|snap| Op::RenameSnapshot { snap }),
        1 => pick().prop_map(|disk| Op::RenameDisk { disk }),
        1 => (pick(), 1..4u64).prop_map(|(disk, blocks)| Op::Grow { disk, blocks }),
        1 => pick().prop_map(|disk| Op::DeleteDisk { disk }),
        1 => pick().prop_map(|snap| Op::Hold { snap }),
        1 => pick().prop_map(|held| Op::Release { held }),
        1 => Just(Op::Gc),
        1 => Just(Op::Reopen),
    ]
}

fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    (0..len as u64)
        .map(|i| ((offset + i).wrapping_mul(31) as u8) ^ seed)
        .collect()
}

fn check_image(img: &dyn ImageRead, model: &[u8], what: &str, probe: u64) {
    assert_eq!(img.size(), model.len() as u64, "{what}: size");
    let mut all = vec![0xAAu8; model.len()];
    let n = img
        .read_at(0, &mut all)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(n, model.len(), "{what}: length");
    assert!(all == model, "{what}: whole-image read differs");
    // A small unaligned read, and one that runs past the end.
    let off = probe % model.len() as u64;
    let mut small = vec![0u8; 777];
    let n = img.read_at(off, &mut small).unwrap();
    assert_eq!(
        n,
        small.len().min(model.len() - off as usize),
        "{what}: short read"
    );
    assert_eq!(
        &small[..n],
        &model[off as usize..off as usize + n],
        "{what} at {off}"
    );
    assert_eq!(img.read_at(model.len() as u64, &mut small).unwrap(), 0);
    // Every region seek_data skips must be zeros.
    let mut pos = 0;
    while let Some(d) = img.seek_data(pos).unwrap() {
        assert!(
            model[pos as usize..d as usize].iter().all(|&b| b == 0),
            "{what}: hole at {pos}..{d} has data"
        );
        let h = img.seek_hole(d).unwrap();
        assert!(h > d, "{what}: seek_hole({d}) = {h}");
        pos = h;
        if pos >= model.len() as u64 {
            break;
        }
    }
    assert!(
        model[pos.min(model.len() as u64) as usize..]
            .iter()
            .all(|&b| b == 0),
        "{what}: tail after {pos}"
    );
}

/// What the repository must hold.
#[derive(Default)]
struct Model {
    /// Live disks: name → content.
    live: BTreeMap<DiskName, Vec<u8>>,
    /// Snapshots: (disk, snapshot) → content.
    snaps: BTreeMap<(DiskName, SnapName), Vec<u8>>,
}

impl Model {
    fn pick_disk(&self, p: Pick) -> Option<DiskName> {
        let n = self.live.len();
        (n > 0).then(|| self.live.keys().nth(p % n).cloned())?
    }

    fn pick_snap(&self, p: Pick) -> Option<SnapshotRef> {
        let n = self.snaps.len();
        let (disk, snap) = (n > 0).then(|| self.snaps.keys().nth(p % n).cloned())??;
        Some(SnapshotRef { disk, snap })
    }
}

fn name<T, E: std::fmt::Debug>(parse: fn(&str) -> Result<T, E>, s: String) -> T {
    parse(&s).unwrap()
}

fn apply(
    repo: &Repository,
    m: &mut Model,
    held: &mut Vec<(Snapshot, Vec<u8>)>,
    step: usize,
    op: Op,
) {
    match op {
        Op::Write {
            disk,
            at,
            len,
            seed,
        } => {
            let Some(d) = m.pick_disk(disk) else { return };
            let live = m.live.get_mut(&d).unwrap();
            let size = live.len() as u64;
            let mut offset = (size * u64::from(at)) >> 16;
            let mut len = len;
            if seed == 0 {
                // Whole 4 KiB blocks of zeros, as a guest's mkfs writes them.
                offset &= !4095;
                len = len.div_ceil(4096) * 4096;
            }
            let len = len.min((size - offset) as usize);
            let data = pattern(seed, offset, len);
            repo.disk(&d).unwrap().write_at(offset, &data).unwrap();
            live[offset as usize..offset as usize + len].copy_from_slice(&data);
        }
        Op::Discard { disk, at, len } => {
            let Some(d) = m.pick_disk(disk) else { return };
            let live = m.live.get_mut(&d).unwrap();
            let size = live.len() as u64;
            let offset = (size * u64::from(at)) >> 16;
            let len = len.min(size - offset);
            repo.disk(&d).unwrap().discard(offset, len).unwrap();
            live[offset as usize..(offset + len) as usize].fill(0);
        }
        Op::Flush { disk } => {
            let Some(d) = m.pick_disk(disk) else { return };
            repo.disk(&d).unwrap().flush().unwrap();
        }
        Op::Snapshot { disk, full } => {
            let Some(d) = m.pick_disk(disk) else { return };
            let snap = name(SnapName::parse, format!("s{step}"));
            let opts = SnapshotOptions {
                full,
                ..SnapshotOptions::default()
            };
            let info = repo
                .snapshot_many(std::slice::from_ref(&d), Some(snap.clone()), &opts)
                .unwrap();
            assert_eq!(info.len(), 1);
            assert!(
                !full || info[0].full,
                "a --full snapshot needs no other: {info:?}"
            );
            m.snaps.insert((d.clone(), snap), m.live[&d].clone());
        }
        Op::SnapshotTwo { a, b } => {
            let (Some(a), Some(b)) = (m.pick_disk(a), m.pick_disk(b)) else {
                return;
            };
            let snap = name(SnapName::parse, format!("s{step}"));
            repo.snapshot_many(
                &[a.clone(), b.clone()],
                Some(snap.clone()),
                &SnapshotOptions::default(),
            )
            .unwrap();
            for d in [a, b] {
                m.snaps
                    .insert((d.clone(), snap.clone()), m.live[&d].clone());
            }
        }
        Op::Delete { snaps } => {
            let mut refs: Vec<SnapshotRef> = snaps.iter().filter_map(|&p| m.pick_snap(p)).collect();
            refs.sort_by(|a, b| (&a.disk, &a.snap).cmp(&(&b.disk, &b.snap)));
            refs.dedup();
            if refs.is_empty() {
                return;
            }
            repo.delete_snapshots(&refs).unwrap();
            for r in refs {
                m.snaps.remove(&(r.disk, r.snap));
            }
        }
        Op::Clone { snap } => {
            let Some(r) = m.pick_snap(snap) else { return };
            if m.live.len() >= 4 {
                return;
            }
            let d = name(DiskName::parse, format!("c{step}"));
            repo.create_disk_from(&d, &r).unwrap();
            let content = m.snaps[&(r.disk, r.snap)].clone();
            m.live.insert(d, content);
        }
        Op::Rollback { snap } => {
            let Some(r) = m.pick_snap(snap) else { return };
            if !m.live.contains_key(&r.disk) {
                return;
            }
            repo.rollback(&r, false).unwrap();
            let content = m.snaps[&(r.disk.clone(), r.snap)].clone();
            m.live.insert(r.disk, content);
        }
        Op::MakeFull { snap } => {
            let Some(r) = m.pick_snap(snap) else { return };
            let info = repo.make_full(&r, &mut |_, _| {}).unwrap();
            assert!(info.full, "{r} after make_full: {info:?}");
        }
        Op::RenameSnapshot { snap } => {
            let Some(r) = m.pick_snap(snap) else { return };
            let to = name(SnapName::parse, format!("r{step}"));
            repo.rename_snapshot(&r, &to).unwrap();
            let content = m.snaps.remove(&(r.disk.clone(), r.snap)).unwrap();
            m.snaps.insert((r.disk, to), content);
        }
        Op::RenameDisk { disk } => {
            let Some(d) = m.pick_disk(disk) else { return };
            let to = name(DiskName::parse, format!("n{step}"));
            repo.rename_disk(&d, &to).unwrap();
            let content = m.live.remove(&d).unwrap();
            m.live.insert(to.clone(), content);
            let moved: Vec<_> = m.snaps.keys().filter(|(x, _)| *x == d).cloned().collect();
            for k in moved {
                let content = m.snaps.remove(&k).unwrap();
                m.snaps.insert((to.clone(), k.1), content);
            }
        }
        Op::Grow { disk, blocks } => {
            let Some(d) = m.pick_disk(disk) else { return };
            let live = m.live.get_mut(&d).unwrap();
            let bs = repo.disk(&d).unwrap().block_size() as u64;
            // Not always a whole number of blocks: the old last block may be partial.
            let size = live.len() as u64 + blocks * bs - 1536;
            repo.resize_disk(&d, size).unwrap();
            live.resize(size as usize, 0);
        }
        Op::DeleteDisk { disk } => {
            let Some(d) = m.pick_disk(disk) else { return };
            if m.live.len() == 1 {
                return;
            }
            repo.delete_disk(&d, false).unwrap();
            m.live.remove(&d);
        }
        Op::Hold { snap } => {
            let Some(r) = m.pick_snap(snap) else { return };
            let img = repo.open_snapshot(&r).unwrap();
            held.push((img, m.snaps[&(r.disk, r.snap)].clone()));
        }
        Op::Release { held: h } => {
            if !held.is_empty() {
                let i = h % held.len();
                held.remove(i);
            }
        }
        Op::Gc => {
            repo.gc().unwrap();
            if held.is_empty() {
                // Deleting gave back what it could, and gc the rest: a
                // second gc finds nothing.
                let again = repo.gc().unwrap();
                assert_eq!(again.freed_bytes, 0, "a second gc freed {again:?}");
                assert_eq!(again.waiting, 0, "nothing is open, yet {again:?}");
            }
        }
        Op::Reopen => unreachable!("the caller reopens"),
    }
}

fn check(repo: &Repository, m: &Model, held: &[(Snapshot, Vec<u8>)], step: usize) {
    for (d, content) in &m.live {
        let disk = repo.disk(d).unwrap();
        check_image(
            disk.as_ref(),
            content,
            &format!("{d} after step {step}"),
            step as u64 * 4099,
        );
    }
    let mut listed = vec![];
    for d in repo.disk_names() {
        for s in repo.snapshots(&d).unwrap() {
            listed.push((d.clone(), SnapName::parse(&s.name).unwrap()));
        }
    }
    let expected: Vec<_> = m.snaps.keys().cloned().collect();
    listed.sort();
    assert_eq!(listed, expected, "snapshots listed after step {step}");
    for ((disk, snap), image) in &m.snaps {
        let r = SnapshotRef {
            disk: disk.clone(),
            snap: snap.clone(),
        };
        let img = repo.open_snapshot(&r).unwrap();
        check_image(
            &img,
            image,
            &format!("{r} after step {step}"),
            step as u64 * 7919,
        );
        // Its identity, from block hashes, is that of its bytes.
        assert_eq!(
            repo.identity(&r).unwrap(),
            Identity::of_bytes(image),
            "identity of {r} after step {step}"
        );
        // A snapshot the kernel would read straight from one layer file
        // (FUSE passthrough) must read the same from it.
        if let Some(file) = img.flat_file() {
            let mut got = std::fs::read(&file).unwrap();
            got.resize(image.len(), 0);
            assert!(
                got == *image,
                "{r} after step {step}: its flat file differs"
            );
        }
    }
    for (i, (img, image)) in held.iter().enumerate() {
        check_image(
            img,
            image,
            &format!("held image {i} after step {step}"),
            step as u64 * 31,
        );
    }
    check_diffs(repo, m, step);
}

/// `diff` is sound: the ranges it gives, read from the second image and
/// written onto a copy of the first made the second's size, give the
/// second image; an image differs from itself nowhere. Each image is
/// diffed against an empty disk, itself, and two others (the pairs rotate
/// with the step, so every pair comes up over a run).
fn check_diffs(repo: &Repository, m: &Model, step: usize) {
    let mut images: Vec<(ImageRef, &Vec<u8>)> = m
        .live
        .iter()
        .map(|(d, c)| (ImageRef::Live(d.clone()), c))
        .collect();
    for ((disk, snap), c) in &m.snaps {
        let r = SnapshotRef {
            disk: disk.clone(),
            snap: snap.clone(),
        };
        images.push((ImageRef::Snapshot(r), c));
    }
    let n = images.len();
    for (i, (to, want)) in images.iter().enumerate() {
        let froms = [
            None,
            Some(i),
            Some((i + step) % n),
            Some((i + 3 * step + 1) % n),
        ];
        for from in froms {
            let (from_ref, base) = match from {
                Some(j) => (Some(&images[j].0), images[j].1.clone()),
                None => (None, vec![]),
            };
            let d = repo.diff(from_ref, to).unwrap();
            let ranges = d.ranges();
            if from == Some(i) {
                assert!(ranges.is_empty(), "{to} differs from itself: {ranges:?}");
            }
            let mut got = base;
            got.resize(want.len(), 0);
            for (off, len) in ranges {
                let r = off as usize..(off + len) as usize;
                got[r.clone()].copy_from_slice(&want[r]);
            }
            assert!(
                got == **want,
                "after step {step}: {from_ref:?} + diff ranges != {to}"
            );
        }
    }
}

fn run(geometry: usize, ops: Vec<Op>) {
    let (size, bs) = GEOMETRIES[geometry];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let first = DiskName::parse("d").unwrap();
    let mut repo = Repository::init(&root).unwrap();
    repo.create_disk(&first, size, bs).unwrap();
    let mut m = Model::default();
    m.live.insert(first, vec![0u8; size as usize]);
    let mut held = vec![];
    let trace = std::env::var_os("MODEL_TRACE").is_some();
    for (step, op) in ops.into_iter().enumerate() {
        if trace {
            eprintln!("step {step}: {op:?}");
        }
        if let Op::Reopen = op {
            // What is held open belongs to the repository being closed.
            held.clear();
            drop(repo);
            repo = Repository::open(&root).unwrap();
        } else {
            apply(&repo, &mut m, &mut held, step, op);
        }
        if trace {
            eprintln!("  live {:?}", m.live.keys().collect::<Vec<_>>());
            eprintln!("  snaps {:?}", m.snaps.keys().collect::<Vec<_>>());
        }
        check(&repo, &m, &held, step);
    }
    // The tree does not keep what nothing reads: once nothing is held open,
    // a layer no snapshot names stays only where several images, or a live
    // disk, still read it (at most one per branch point and per disk).
    drop(held);
    repo.gc().unwrap();
    let usage = repo.usage(None).unwrap();
    let (snaps, live) = (m.snaps.len() as u64, m.live.len() as u64);
    assert!(
        usage.layers <= 2 * snaps + 3 * live,
        "{} layers for {snaps} snapshots and {live} disks",
        usage.layers
    );
    // A snapshot stores at most its own blocks, plus the host file system's
    // bookkeeping for a fragmented file (ext4 adds a 4 KiB extent-tree block
    // once a file has more than four extents).
    for d in repo.disk_names() {
        for s in repo.snapshots(&d).unwrap() {
            assert!(
                s.stored_bytes <= s.blocks * s.block_size as u64 + 8192,
                "{s:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]
    #[test]
    fn store_matches_model(
        (geometry, ops) in (0..GEOMETRIES.len(), prop::collection::vec(op(), 40..90))
    ) {
        run(geometry, ops);
    }
}

#[test]
fn deep_chain_reads_match() {
    // Forty layers each changing a few blocks: every snapshot keeps its view.
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r")).unwrap();
    let name = DiskName::parse("deep").unwrap();
    repo.create_disk(&name, 1 << 20, 4096).unwrap();
    let disk = repo.disk(&name).unwrap();
    let mut live = vec![0u8; 1 << 20];
    let mut snaps = Vec::new();
    for i in 0..40u64 {
        for j in 0..5u64 {
            let off = ((i * 37 + j * 101) % 256) * 4096 + (i % 3) * 100;
            let data = pattern((i + 1) as u8, off, 5000);
            let len = data.len().min((1 << 20) - off as usize);
            disk.write_at(off, &data[..len]).unwrap();
            live[off as usize..off as usize + len].copy_from_slice(&data[..len]);
        }
        let snap = SnapName::parse(&format!("s{i}")).unwrap();
        repo.snapshot(&name, Some(snap.clone())).unwrap();
        snaps.push((snap, live.clone()));
    }
    for (snap, image) in &snaps {
        let img = repo
            .open_snapshot(&SnapshotRef {
                disk: name.clone(),
                snap: snap.clone(),
            })
            .unwrap();
        check_image(&img, image, snap.as_str(), 12345);
    }
}

/// A sequence the model found in CI (2026-12-04, shrunk by proptest): a
/// full snapshot that stored more than its blocks.
#[test]
fn found_in_ci_full_snapshot_stores_no_more_than_its_blocks() {
    use Op::*;
    run(
        0,
        vec![
            Grow { disk: 0, blocks: 1 },
            Write {
                disk: 0,
                at: 0,
                len: 1,
                seed: 0,
            },
            Write {
                disk: 0,
                at: 40483,
                len: 23473,
                seed: 1,
            },
            Snapshot {
                disk: 0,
                full: false,
            },
            Write {
                disk: 0,
                at: 19711,
                len: 1,
                seed: 1,
            },
            Write {
                disk: 0,
                at: 0,
                len: 1,
                seed: 1,
            },
            Write {
                disk: 0,
                at: 47305,
                len: 16385,
                seed: 1,
            },
            Write {
                disk: 0,
                at: 22101,
                len: 5709,
                seed: 1,
            },
            Snapshot {
                disk: 0,
                full: false,
            },
            Write {
                disk: 0,
                at: 43363,
                len: 20481,
                seed: 1,
            },
            Flush { disk: 0 },
            Write {
                disk: 0,
                at: 0,
                len: 1089,
                seed: 140,
            },
            Delete { snaps: vec![41, 7] },
            Write {
                disk: 13,
                at: 16212,
                len: 9580,
                seed: 7,
            },
            Delete {
                snaps: vec![23, 61, 34],
            },
            Snapshot {
                disk: 32,
                full: false,
            },
            MakeFull { snap: 4 },
            Snapshot {
                disk: 63,
                full: true,
            },
            Snapshot {
                disk: 57,
                full: false,
            },
            Clone { snap: 57 },
            Write {
                disk: 38,
                at: 59098,
                len: 11772,
                seed: 180,
            },
            Write {
                disk: 23,
                at: 17825,
                len: 917,
                seed: 168,
            },
            Flush { disk: 2 },
            Write {
                disk: 17,
                at: 28898,
                len: 6219,
                seed: 172,
            },
            Write {
                disk: 32,
                at: 59630,
                len: 21332,
                seed: 96,
            },
            Write {
                disk: 41,
                at: 40198,
                len: 16809,
                seed: 43,
            },
            Write {
                disk: 6,
                at: 12506,
                len: 8471,
                seed: 250,
            },
            RenameSnapshot { snap: 24 },
            Write {
                disk: 10,
                at: 60257,
                len: 21450,
                seed: 47,
            },
            Delete {
                snaps: vec![34, 54, 32],
            },
            Hold { snap: 26 },
            Discard {
                disk: 61,
                at: 63414,
                len: 16146,
            },
            Write {
                disk: 36,
                at: 50887,
                len: 22688,
                seed: 48,
            },
            Snapshot {
                disk: 20,
                full: false,
            },
            Clone { snap: 18 },
            Write {
                disk: 7,
                at: 36621,
                len: 2414,
                seed: 123,
            },
            Gc,
            Write {
                disk: 56,
                at: 32416,
                len: 16200,
                seed: 120,
            },
            MakeFull { snap: 6 },
            Write {
                disk: 39,
                at: 38289,
                len: 22490,
                seed: 39,
            },
        ],
    );
}
