//! Lifecycle operations cut short by an I/O error, then followed in the
//! same process (no reopen, so no recovery runs in between) by the
//! operations that build on what they left: the delete of the snapshot
//! above a half-merged one, a full copy of it, gc, and a reopen. For every
//! storage operation of the first delete failing in turn, every remaining
//! image must read back exactly.
//!
//! (The power-loss and fault tests reopen or check right after a fault;
//! this one keeps going, as a mounted daemon does.)

use std::path::Path;
use std::sync::Arc;

use strata::store::storage::faults::{FaultyStorage, Op};
use strata::store::storage::sim::SimStorage;
use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef, StoreError};

const SIZE: u64 = 256 << 10;
const BS: u32 = 4096;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31) ^ seed.wrapping_mul(0x9E37)) as u8 | 1)
        .collect()
}

fn snap(s: &str) -> SnapshotRef {
    SnapshotRef::parse(&format!("d@{s}")).unwrap()
}

fn read_all(img: &dyn ImageRead) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).unwrap();
    buf
}

/// A, B, C and the live disk, each layer writing some blocks of its own
/// and some the others write too; returns each snapshot's image and the
/// live disk's.
fn build(repo: &Repository) -> Vec<(String, Vec<u8>)> {
    let d = DiskName::parse("d").unwrap();
    repo.create_disk(&d, SIZE, BS).unwrap();
    let disk = repo.disk(&d).unwrap();
    let mut image = vec![0u8; SIZE as usize];
    let mut out = vec![];
    for (i, name) in ["A", "B", "C"].into_iter().enumerate() {
        for (j, at) in [0u64, 40, 80, 120].into_iter().enumerate() {
            let offset = (at + i as u64 * 7 + j as u64) * 1024;
            let data = pattern(i as u64 * 10 + j as u64, 9000);
            disk.write_at(offset, &data).unwrap();
            image[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        }
        repo.snapshot(&d, Some(SnapName::parse(name).unwrap()))
            .unwrap();
        out.push((name.to_string(), image.clone()));
    }
    let data = pattern(99, 20000);
    disk.write_at(100_000, &data).unwrap();
    image[100_000..120_000].copy_from_slice(&data);
    disk.flush().unwrap();
    out.push(("live".to_string(), image));
    out
}

fn check(repo: &Repository, expect: &[(String, Vec<u8>)], gone: &[&str], what: &str) {
    for (name, image) in expect {
        if gone.contains(&name.as_str()) {
            continue;
        }
        let got = if name == "live" {
            read_all(repo.disk(&DiskName::parse("d").unwrap()).unwrap().as_ref())
        } else {
            match repo.open_snapshot(&snap(name)) {
                Ok(img) => read_all(&img),
                // The failed delete may have committed (its outcome was
                // unknown): A may be gone, but never half there.
                Err(StoreError::NoSuchSnapshot(_)) if name == "A" => continue,
                Err(e) => panic!("{what}: d@{name}: {e}"),
            }
        };
        assert!(got == *image, "{what}: d@{name} reads back different bytes");
    }
}

#[test]
fn what_a_failed_delete_left_is_finished_right_by_the_next_operation() {
    // A run without faults counts the delete's storage operations.
    let count = {
        let sim = SimStorage::new(&[Path::new("/sim")]);
        let faulty = FaultyStorage::new(Arc::new(sim));
        let repo = Repository::init_in(Arc::new(faulty.clone()), Path::new("/sim/r")).unwrap();
        build(&repo);
        faulty.fail(&Op::ALL, 0, libc::EIO, false);
        repo.delete_snapshots(&[snap("A")]).unwrap();
        faulty.seen()
    };
    assert!(
        count > 10,
        "the delete made only {count} storage operations"
    );
    let mut cases = 0;
    for nth in 1..=count {
        for next in ["delete B", "full B", "gc"] {
            let what = format!("operation {nth} of `delete A` failed, then {next}");
            let sim = SimStorage::new(&[Path::new("/sim")]);
            let faulty = FaultyStorage::new(Arc::new(sim.clone()));
            let storage: Arc<dyn strata::store::storage::Storage> = Arc::new(faulty.clone());
            let root = Path::new("/sim/r");
            let repo = Repository::init_in(storage.clone(), root).unwrap();
            let expect = build(&repo);
            faulty.fail(&Op::ALL, nth, libc::EIO, false);
            // Done, or not: either way A reads as before, or is gone.
            let deleted = repo.delete_snapshots(&[snap("A")]).is_ok();
            faulty.disarm();
            let mut gone = if deleted { vec!["A"] } else { vec![] };
            check(&repo, &expect, &gone, &format!("{what} (before)"));
            let run = |repo: &Repository| -> Result<(), StoreError> {
                match next {
                    "delete B" => repo.delete_snapshots(&[snap("B")]).map(|_| ()),
                    "full B" => {
                        let info = repo.make_full(&snap("B"), &mut |_, _| {})?;
                        assert!(info.full, "{what}: {info:?}");
                        Ok(())
                    }
                    _ => repo.gc().map(|_| ()),
                }
            };
            // A failed commit whose outcome is unknown latches the
            // repository: nothing more until it is opened again.
            let then = |repo: Repository, f: &dyn Fn(&Repository) -> Result<(), StoreError>| match f(
                &repo,
            ) {
                Err(StoreError::CatalogLatched { .. }) => {
                    drop(repo);
                    let repo = Repository::open_in(storage.clone(), root).unwrap();
                    f(&repo).unwrap_or_else(|e| panic!("{what}, reopened: {e}"));
                    repo
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(()) => repo,
            };
            let repo = then(repo, &run);
            if next == "delete B" {
                gone.push("B");
            }
            check(&repo, &expect, &gone, &what);
            // Whatever is left over, gc finishes, and nothing is lost.
            let repo = then(repo, &|r: &Repository| r.gc().map(|_| ()));
            check(&repo, &expect, &gone, &format!("{what}, gc"));
            drop(repo);
            let repo = Repository::open_in(storage, root).unwrap();
            check(&repo, &expect, &gone, &format!("{what}, reopened"));
            cases += 1;
        }
    }
    eprintln!("{cases} cases");
}
