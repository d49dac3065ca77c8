//! Model-based test of the store: random sequences of writes (any offset and
//! length), discards, flushes, snapshots and reopens run against a real
//! repository and against plain in-memory images, one per snapshot. After
//! every step every image — the live disk and each snapshot — must read back
//! exactly as the model says, at random offsets and as a whole.

use proptest::prelude::*;
use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Discard { offset: u64, len: u64 },
    Flush,
    Snapshot,
    Reopen,
}

/// Disk geometries that cover whole, partial and odd-sized last blocks.
const GEOMETRIES: [(u64, u32); 3] = [(64 << 10, 4096), (100 << 10, 8192), (200 << 10, 65536)];

fn op(size: u64) -> impl Strategy<Value = Op> {
    let max_len: usize = 24 << 10;
    prop_oneof![
        8 => (0..size, 1..max_len, any::<u8>()).prop_map(move |(o, l, seed)| Op::Write {
            offset: o,
            len: l.min((size - o) as usize),
            seed
        }),
        // Whole blocks of zeros take a different path: they become holes.
        2 => (0..size / 4096, 1u64..6).prop_map(move |(b, n)| Op::Write {
            offset: b * 4096,
            len: (n * 4096).min(size - b * 4096) as usize,
            seed: 0
        }),
        2 => (0..size, 1..max_len as u64).prop_map(move |(o, l)| Op::Discard {
            offset: o,
            len: l.min(size - o)
        }),
        2 => Just(Op::Flush),
        2 => Just(Op::Snapshot),
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
    assert_eq!(
        img.read_at(0, &mut all).unwrap(),
        model.len(),
        "{what}: length"
    );
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

fn run(geometry: usize, ops: Vec<Op>) {
    let (size, bs) = GEOMETRIES[geometry];
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let name = DiskName::parse("d").unwrap();
    let mut repo = Repository::init(&root).unwrap();
    repo.create_disk(&name, size, bs).unwrap();
    let mut live = vec![0u8; size as usize];
    let mut snaps: Vec<(SnapName, Vec<u8>)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let disk = repo.disk(&name).unwrap();
        match op {
            Op::Write { offset, len, seed } => {
                let data = pattern(seed, offset, len);
                disk.write_at(offset, &data).unwrap();
                live[offset as usize..offset as usize + len].copy_from_slice(&data);
            }
            Op::Discard { offset, len } => {
                disk.discard(offset, len).unwrap();
                live[offset as usize..(offset + len) as usize].fill(0);
            }
            Op::Flush => disk.flush().unwrap(),
            Op::Snapshot => {
                let snap = SnapName::parse(&format!("s{step}")).unwrap();
                repo.snapshot(&name, Some(snap.clone())).unwrap();
                snaps.push((snap, live.clone()));
            }
            Op::Reopen => {
                drop(disk);
                drop(repo);
                repo = Repository::open(&root).unwrap();
            }
        }
        let disk = repo.disk(&name).unwrap();
        check_image(
            disk.as_ref(),
            &live,
            &format!("live after step {step}"),
            step as u64 * 4099,
        );
        for (snap, image) in &snaps {
            let r = SnapshotRef {
                disk: name.clone(),
                snap: snap.clone(),
            };
            let img = repo.open_snapshot(&r).unwrap();
            check_image(
                &img,
                image,
                &format!("{r} after step {step}"),
                step as u64 * 7919,
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
    }
    // A snapshot stores at most its own blocks, plus the host file system's
    // bookkeeping for a fragmented file (ext4 adds a 4 KiB extent-tree block
    // once a file has more than four extents).
    for s in repo.snapshots(&name).unwrap() {
        assert!(s.stored_bytes <= s.blocks * bs as u64 + 8192, "{s:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]
    #[test]
    fn store_matches_model(
        (geometry, ops) in (0..GEOMETRIES.len()).prop_flat_map(|g| {
            (Just(g), prop::collection::vec(op(GEOMETRIES[g].0), 40..80))
        }).no_shrink()
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
