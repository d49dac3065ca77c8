//! Recovery destroys nothing it cannot prove was never acknowledged
//! (guarantee 6): a catalog older than its layers, files nothing names,
//! damage in a journal, a failed fsync and a failed journal append, each
//! as a user or the host would cause it.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{assert_same_contents, repo_contents as contents, strata_ok as ok};

use strata::store::storage::faults::{FaultyStorage, Op};
use strata::store::storage::sim::SimStorage;
use strata::store::storage::{LocalStorage, Storage};
use strata::store::{DiskName, ImageRead, Repository, SnapName, StoreError};

fn strata(repo: &Path, args: &[&str]) -> (i32, String, String) {
    let out = common::strata(repo, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed | 1)
        .collect()
}

/// Repro 2 of the durability issue: `cp catalog old; snapshot create;
/// cp old catalog` used to delete the snapshot's layers and the live
/// layer's later writes on the next command.
#[test]
fn a_catalog_older_than_its_layers_is_refused_and_nothing_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    ok(&repo, &["init"]);
    ok(
        &repo,
        &["disk", "create", "d", "--size", "1M", "--block-size", "4K"],
    );
    let img = dir.path().join("in.img");
    fs::write(&img, pattern(1, 1 << 20)).unwrap();
    ok(&repo, &["disk", "import", "e", img.to_str().unwrap()]);
    ok(&repo, &["snapshot", "create", "e", "--name", "s1"]);
    let old = fs::read(repo.join("catalog")).unwrap();
    ok(&repo, &["snapshot", "create", "e", "--name", "s3"]);
    let newest = fs::read(repo.join("catalog")).unwrap();
    fs::write(repo.join("catalog"), &old).unwrap();
    let before = contents(&repo);
    for args in [&["disk", "list"][..], &["export", "e@s1", "/dev/null"]] {
        let (code, _, err) = strata(&repo, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("that the catalog has never handed out"),
            "{err}"
        );
        assert!(err.contains(".data"), "the files are named: {err}");
        assert!(err.contains("nothing was changed"), "{err}");
        assert_same_contents(&before, &contents(&repo), &format!("{args:?}"));
    }
    // Putting the newest catalog back brings everything back.
    fs::write(repo.join("catalog"), &newest).unwrap();
    let out = dir.path().join("s3.img");
    ok(&repo, &["export", "e@s3", out.to_str().unwrap()]);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&img).unwrap());
    assert!(ok(&repo, &["snapshot", "list", "e"]).contains("s3"));
}

/// Both copies of the catalog's last record damaged look like a torn,
/// never acknowledged commit; here that commit was a snapshot's, and its
/// layer's journal says so. Opening refuses, and changes nothing (it used to
/// cut the record off first).
#[test]
fn a_lost_last_commit_is_refused_without_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    ok(&repo, &["init"]);
    ok(&repo, &["disk", "create", "d", "--size", "1M"]);
    ok(&repo, &["snapshot", "create", "d", "--name", "s"]);
    let path = repo.join("catalog");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1024; // the last record: two 512-byte copies
    bytes[last + 32] ^= 1;
    bytes[last + 512 + 32] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let before = contents(&repo);
    let (code, _, err) = strata(&repo, &["disk", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("last records were lost to damage"), "{err}");
    assert_same_contents(&before, &contents(&repo), "a refused open");
}

/// Another repository's catalog copied in is named as such.
#[test]
fn a_catalog_of_another_repository_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for r in [&a, &b] {
        ok(r, &["init"]);
        ok(r, &["disk", "create", "d", "--size", "1M"]);
    }
    fs::copy(b.join("catalog"), a.join("catalog")).unwrap();
    let before = contents(&a);
    let (code, _, err) = strata(&a, &["disk", "list"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("catalog is damaged: it belongs to another repository"),
        "{err}"
    );
    assert_same_contents(&before, &contents(&a), "opening");
}

#[test]
fn files_nothing_names_are_set_aside_and_purged_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("r");
    ok(&repo, &["init"]);
    ok(&repo, &["disk", "create", "d", "--size", "1M"]);
    fs::write(repo.join("layers/notes.txt"), "mine").unwrap();
    // A layer file of an id the catalog handed out but does not name.
    fs::write(repo.join("layers/0000000000000000.data"), "old").unwrap();
    fs::create_dir(repo.join("layers/a-dir")).unwrap();
    // tmp/ is scratch only for the store's own temporary files.
    fs::write(repo.join("tmp/mine.txt"), "not scratch").unwrap();
    fs::write(repo.join("tmp/catalog.4242.7.tmp"), "scratch").unwrap();
    let (code, out, err) = strata(&repo, &["disk", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("d "), "{out}");
    assert!(
        err.contains("strata: note: set aside 4 files that nothing in the catalog names"),
        "{err}"
    );
    assert!(!repo.join("layers/notes.txt").exists());
    assert!(
        !repo.join("tmp/catalog.4242.7.tmp").exists(),
        "scratch is removed"
    );
    let listed = ok(&repo, &["quarantine", "list"]);
    for aside in [
        "layers/notes.txt",
        "layers/0000000000000000.data",
        "layers/a-dir",
        "tmp/mine.txt",
    ] {
        assert!(listed.contains(aside), "{aside} is not listed: {listed}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(&repo, &["quarantine", "list", "--json"])).unwrap();
    let kept = json
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("notes.txt"))
        .unwrap();
    let kept = repo.join(kept["path"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(&kept).unwrap(),
        "mine",
        "set aside, not changed"
    );
    // Nothing is deleted until asked.
    ok(&repo, &["disk", "list"]);
    assert!(kept.exists());
    assert!(ok(&repo, &["quarantine", "purge"]).contains("deleted 4 files"));
    assert!(ok(&repo, &["quarantine", "list"]).contains("nothing is set aside"));
    assert!(!repo.join("quarantine").exists());
}

fn name(s: &str) -> DiskName {
    DiskName::parse(s).unwrap()
}

fn read_all(img: &dyn ImageRead) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).unwrap();
    buf
}

/// Repro 3: one flipped bit in a journal's first record used to make the
/// whole journal a torn tail, and four fsync'ed writes were punched out.
/// Now every single byte of the journal may be flipped: the disk reads the
/// same, nothing is punched, and the journal is mended.
#[test]
fn any_one_flipped_byte_of_a_journal_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let mut want = vec![0u8; 1 << 20];
    {
        let repo = Repository::init(&root).unwrap();
        repo.create_disk(&name("d"), 1 << 20, 4096).unwrap();
        let d = repo.disk(&name("d")).unwrap();
        for (i, at) in [0u64, 70_000, 300_000, 1_000_000].into_iter().enumerate() {
            let data = pattern(i as u8 + 1, 20_000.min((1 << 20) - at as usize));
            d.write_at(at, &data).unwrap();
            want[at as usize..at as usize + data.len()].copy_from_slice(&data);
            d.flush().unwrap();
        }
    }
    let log = root.join("layers/0000000000000001.log");
    let data = root.join("layers/0000000000000001.data");
    let good_log = fs::read(&log).unwrap();
    let good_data = fs::read(&data).unwrap();
    assert!(
        good_log.len() >= 1024 + 4 * 1024,
        "four records of two copies"
    );
    for at in 0..good_log.len() {
        let mut bad = good_log.clone();
        bad[at] ^= 0x08;
        fs::write(&log, &bad).unwrap();
        {
            let repo = Repository::open(&root).unwrap();
            let d = repo.disk(&name("d")).unwrap();
            assert!(
                read_all(d.as_ref()) == want,
                "byte {at} flipped: the disk reads differently"
            );
        }
        assert!(
            fs::read(&data).unwrap() == good_data,
            "byte {at} flipped: data was punched"
        );
        assert!(
            fs::read(&log).unwrap() == good_log,
            "byte {at} flipped: not mended"
        );
    }
}

/// Repro 5: after a failed fsync, a later fsync used to succeed. Now the
/// disk is latched until the repository is opened again, which brings back
/// every write acknowledged before the failure.
#[test]
fn a_failed_fsync_latches_the_disk_until_it_is_opened_again() {
    let sim = SimStorage::new(&[Path::new("/sim")]);
    let faulty = FaultyStorage::new(Arc::new(sim.clone()));
    let root = Path::new("/sim/r");
    let repo = Repository::init_in(Arc::new(faulty.clone()), root).unwrap();
    repo.create_disk(&name("d"), 1 << 20, 4096).unwrap();
    let d = repo.disk(&name("d")).unwrap();
    d.write_at(0, &pattern(1, 8192)).unwrap();
    d.flush().unwrap();
    d.write_at(65536, &pattern(2, 8192)).unwrap();
    faulty.fail(&[Op::Sync], 1, libc::EIO, false);
    let e = d.flush().unwrap_err();
    assert!(e.to_string().contains("Input/output error"), "{e}");
    assert_eq!(faulty.fired(), 1);
    // The fault is gone; the latch is not.
    for e in [
        d.flush().unwrap_err(),
        d.write_at(0, b"x").unwrap_err(),
        d.discard(0, 4096).unwrap_err(),
        repo.snapshot(&name("d"), None).unwrap_err(),
    ] {
        assert!(matches!(e, StoreError::Latched { .. }), "{e}");
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("Open the repository again"), "{e}");
    }
    assert_eq!(
        faulty.fired(),
        1,
        "nothing touched the device after the latch"
    );
    drop(d);
    drop(repo);
    // Power cut, nothing unsynced kept: the acknowledged write is there.
    let mut replay = sim.replay();
    replay.advance_to(sim.position());
    let state = replay.crash(7, 0);
    let repo = Repository::open_in(Arc::new(state), root).unwrap();
    let d = repo.disk(&name("d")).unwrap();
    let got = read_all(d.as_ref());
    assert_eq!(&got[..8192], &pattern(1, 8192)[..]);
    d.write_at(4096, b"after").unwrap();
    d.flush().unwrap();
}

/// Repro 1, in the store: an append that fails with ENOSPC after writing
/// part of its record is cut back out, so no later record can follow
/// garbage; the disk is latched; reopened, everything acknowledged is there
/// and the journal takes records again.
#[test]
fn a_journal_append_torn_by_enospc_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let faulty = FaultyStorage::new(Arc::new(LocalStorage));
    let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
    let log = root.join("layers/0000000000000001.log");
    {
        let repo = Repository::init_in(storage.clone(), &root).unwrap();
        repo.create_disk(&name("f1"), 1 << 30, 16384).unwrap();
        let d = repo.disk(&name("f1")).unwrap();
        d.write_at(100 << 20, &pattern(3, 1 << 20)).unwrap();
        d.flush().unwrap();
        // Zeros to every other block: a journal record of many extents.
        for b in (20_000u64..40_000).step_by(2) {
            d.write_at(b * 16384, &[0u8; 16384]).unwrap();
        }
        let before = fs::metadata(&log).unwrap().len();
        // The data sync passes; the journal append is the next write and
        // fails part-way (the injector writes half of it first).
        faulty.fail(&[Op::Write], 1, libc::ENOSPC, false);
        let e = d.flush().unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(faulty.fired(), 1);
        assert_eq!(
            fs::metadata(&log).unwrap().len(),
            before,
            "the torn record was not taken back"
        );
        faulty.disarm();
        let e = d.write_at(900 << 20, &pattern(4, 4 << 20)).unwrap_err();
        assert!(matches!(e, StoreError::Latched { .. }), "{e}");
        assert!(matches!(d.flush().unwrap_err(), StoreError::Latched { .. }));
    }
    let repo = Repository::open(&root).unwrap();
    let d = repo.disk(&name("f1")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    d.read_at(100 << 20, &mut buf).unwrap();
    assert!(buf == pattern(3, 1 << 20), "the fsync'ed write is gone");
    d.write_at(900 << 20, &pattern(5, 4 << 20)).unwrap();
    d.flush().unwrap();
    drop(d);
    drop(repo);
    let repo = Repository::open(&root).unwrap();
    let d = repo.disk(&name("f1")).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    d.read_at(900 << 20, &mut buf).unwrap();
    assert!(buf == pattern(5, 4 << 20));
    let snap = repo.snapshot(&name("f1"), Some(SnapName::parse("after").unwrap()));
    assert!(snap.is_ok(), "{snap:?}");
}

/// Snapshots of one disk taken at once, while it is written and flushed,
/// each get their own point in the chain: the repository opens again, and
/// every snapshot reads back (finding of a review: two snapshots used to
/// race for one live layer, and the repository no longer opened).
#[test]
fn snapshots_taken_at_once_keep_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("r");
    let repo = Arc::new(Repository::init(&root).unwrap());
    repo.create_disk(&name("d"), 4 << 20, 4096).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || {
            let d = repo.disk(&name("d")).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = (i * 12_345) % ((4 << 20) - 4096) / 512 * 512;
                d.write_at(at, &pattern(i as u8, 3000)).unwrap();
                if i % 7 == 0 {
                    d.flush().unwrap();
                }
                i += 1;
            }
        })
    };
    let takers: Vec<_> = (0..3)
        .map(|t| {
            let repo = repo.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    // Default names collide within a second: each must get
                    // a name of its own.
                    let n = (i % 2 == 0).then(|| SnapName::parse(&format!("t{t}-{i}")).unwrap());
                    repo.snapshot(&name("d"), n).unwrap();
                }
            })
        })
        .collect();
    for t in takers {
        t.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let snaps = repo.snapshots(&name("d")).unwrap();
    assert_eq!(snaps.len(), 45);
    let images: Vec<Vec<u8>> = snaps
        .iter()
        .map(|s| {
            let r = strata::store::SnapshotRef::parse(&format!("d@{}", s.name)).unwrap();
            read_all(&repo.open_snapshot(&r).unwrap())
        })
        .collect();
    drop(repo);
    let repo = Repository::open(&root).unwrap();
    for (s, want) in repo.snapshots(&name("d")).unwrap().iter().zip(&images) {
        let r = strata::store::SnapshotRef::parse(&format!("d@{}", s.name)).unwrap();
        assert!(
            read_all(&repo.open_snapshot(&r).unwrap()) == *want,
            "{r} changed on reopen"
        );
    }
}

/// A catalog restored from a copy taken while a snapshot was half done
/// still names that snapshot's intent. The new layer's journal says the
/// snapshot committed, so opening refuses instead of removing the live
/// layer as the files of an operation that never committed.
#[test]
fn a_catalog_copied_in_the_middle_of_a_snapshot_is_refused() {
    let sim = SimStorage::new(&[Path::new("/sim")]);
    let root = Path::new("/sim/r");
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let repo = Repository::init_in(storage.clone(), root).unwrap();
    repo.create_disk(&name("d"), 1 << 20, 4096).unwrap();
    let d = repo.disk(&name("d")).unwrap();
    d.write_at(0, &pattern(1, 10_000)).unwrap();
    d.flush().unwrap();
    let before = sim.position();
    repo.snapshot(&name("d"), Some(SnapName::parse("s").unwrap()))
        .unwrap();
    let after = sim.position();
    d.write_at(500_000, &pattern(2, 10_000)).unwrap();
    d.flush().unwrap();
    drop(d);
    drop(repo);
    // The catalog (and the old layer's journal, which the snapshot removes
    // once committed) as they were mid-snapshot, with its intent open.
    let catalog = root.join("catalog");
    let log1 = root.join("layers/0000000000000001.log");
    let mut replay = sim.replay();
    let mut stale = None;
    for at in replay
        .barriers()
        .into_iter()
        .filter(|&b| b > before && b < after)
    {
        replay.advance_to(at);
        let state = replay.crash(0, 100);
        let bytes = state.read(&catalog).unwrap();
        if String::from_utf8_lossy(&bytes).contains("snapshot d@s")
            && state
                .read(&root.join("layers/0000000000000001.idx"))
                .is_err()
        {
            stale = Some((bytes, state.read(&log1).unwrap()));
            break;
        }
    }
    let (stale_catalog, old_log) = stale.expect("a point with the intent open");
    let put = |path: &Path, bytes: &[u8]| {
        if storage.kind(path).unwrap().is_none() {
            storage.create_new(path).unwrap();
        }
        let f = storage.open(path, true).unwrap();
        f.set_len(0).unwrap();
        f.write_all_at(bytes, 0).unwrap();
    };
    put(&catalog, &stale_catalog);
    put(&log1, &old_log);
    let files = |s: &dyn Storage| {
        let mut v: Vec<(String, Vec<u8>)> = s
            .read_dir(&root.join("layers"))
            .unwrap()
            .into_iter()
            .map(|n| {
                let b = s.read(&root.join("layers").join(&n)).unwrap();
                (n, b)
            })
            .collect();
        v.sort();
        v
    };
    let before_open = files(storage.as_ref());
    let e = Repository::open_in(storage.clone(), root)
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .contains("whose layer journals say it committed"),
        "{e}"
    );
    assert!(
        files(storage.as_ref()) == before_open,
        "opening changed the layers"
    );
}
