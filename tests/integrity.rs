//! Data that proves itself: a damaged block of a frozen layer is answered
//! with EIO (a `Damaged` error naming the file and block), never with the
//! wrong bytes, through the store, `export`, `send` and the mount; every
//! other block still reads.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{copy_tree, fuse_available, random, read_range, strata, strata_ok, Mounted};
use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef, StoreError};

fn snap(s: &str) -> SnapshotRef {
    SnapshotRef::parse(s).unwrap()
}

fn data_file(root: &Path, layer: strata::store::LayerId) -> PathBuf {
    root.join("layers").join(format!("{layer}.data"))
}

/// Flips one bit of `file` at `at`.
fn flip(file: &Path, at: u64) {
    flip_bit(file, at, 3);
}

/// Flips bit `bit` (0 to 7) of the byte of `file` at `at`.
fn flip_bit(file: &Path, at: u64, bit: u32) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn a_damaged_block_reads_as_an_error_and_only_that_block() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let base = random(4 << 20, 1);
    let top = random(1 << 20, 2);
    let (s1_layer, s2_layer) = {
        let repo = Repository::init(&root).unwrap();
        let vm = DiskName::parse("vm").unwrap();
        repo.create_disk(&vm, 8 << 20, 65536).unwrap();
        let d = repo.disk(&vm).unwrap();
        d.write_at(0, &base).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s1").unwrap()))
            .unwrap();
        d.write_at(6 << 20, &top).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s2").unwrap()))
            .unwrap();
        (
            repo.snapshot_info(&snap("vm@s1")).unwrap().layer,
            repo.snapshot_info(&snap("vm@s2")).unwrap().layer,
        )
    };
    // One bit in block 20 of s1's data (byte 1,310,800 of the image).
    let at = 20 * 65536 + 1234;
    flip(&data_file(&root, s1_layer), at);
    let repo = Repository::open(&root).unwrap();
    for name in ["vm@s1", "vm@s2"] {
        let img = repo.open_snapshot(&snap(name)).unwrap();
        let mut buf = vec![0u8; 4096];
        let e = img.read_at(at / 4096 * 4096, &mut buf).unwrap_err();
        assert!(
            matches!(e, StoreError::Damaged { block: 20, offset, .. } if offset == 20 * 65536),
            "{name}: {e}"
        );
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("does not match its checksum"), "{e}");
        // The blocks around it read as they should.
        let mut ok = vec![0u8; 65536];
        img.read_at(19 * 65536, &mut ok).unwrap();
        assert!(ok == base[19 * 65536..20 * 65536]);
        img.read_at(21 * 65536, &mut ok).unwrap();
        assert!(ok == base[21 * 65536..22 * 65536]);
    }
    // The live disk reads it through its base: the same answer.
    let live = repo.disk(&DiskName::parse("vm").unwrap()).unwrap();
    let mut buf = vec![0u8; 100];
    assert!(matches!(
        live.read_at(at, &mut buf),
        Err(StoreError::Damaged { .. })
    ));
    // s2's own layer is intact: its own blocks read.
    let img = repo.open_snapshot(&snap("vm@s2")).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    img.read_at(6 << 20, &mut buf).unwrap();
    assert!(buf == top);
    let _ = s2_layer;
    drop(img);
    drop(live);
    drop(repo);
    // export and send refuse rather than write wrong bytes.
    let out = strata(
        &root,
        &[
            "export",
            "vm@s2",
            dir.path().join("x.img").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its checksum"));
    assert!(!dir.path().join("x.img").exists());
    let out = strata(
        &root,
        &[
            "send",
            "vm@s2",
            "-o",
            dir.path().join("s").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its checksum"));
}

/// Through the mount: EIO for the damaged range of a layered image, and
/// of a flat one with `-o checked` (passthrough reads are the kernel's).
#[test]
fn the_mount_answers_eio_for_a_damaged_block() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let mut m = Mounted::new(&[("vm", "8M")], &[]);
    let live = m.live("vm");
    let base = random(4 << 20, 3);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .write_all_at(&base, 0)
        .unwrap();
    m.snapshot("vm", "s1");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&live)
        .unwrap()
        .write_all_at(&random(65536, 4), 7 << 20)
        .unwrap();
    m.snapshot("vm", "s2");
    m.umount();
    let layer = {
        let repo = Repository::open(&m.repo).unwrap();
        repo.snapshot_info(&snap("vm@s1")).unwrap().layer
    };
    flip(&data_file(&m.repo, layer), 30 * 65536 + 7);
    m.mount(&["-o", "checked"]);
    for name in ["s1", "s2"] {
        let f = std::fs::File::open(m.snap("vm", name)).unwrap();
        let mut buf = vec![0u8; 65536];
        let e = f.read_exact_at(&mut buf, 30 * 65536).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
        assert!(read_range(&m.snap("vm", name), 29 * 65536, 65536) == base[29 * 65536..30 * 65536]);
    }
    let log = std::fs::read_to_string(m.repo.join("daemon.log")).unwrap();
    assert!(log.contains("reading snapshot vm@s2 at offset"), "{log}");
    strata_ok(&m.repo, &["disk", "list"]);
}

fn verify_json(repo: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = strata(repo, &args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

/// `strata verify`: 0 when intact; a flipped bit in a layer is found and
/// named with the images that read it (1); a damaged copy of an index or
/// of the header is mended and said; `--older-than` skips what was
/// verified lately; it runs while mounted.
#[test]
fn verify_finds_names_and_mends() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let mut m = Mounted::new(&[("vm", "8M")], &[]);
    let live = m.live("vm");
    let w = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
    w.write_all_at(&random(2 << 20, 5), 0).unwrap();
    w.sync_all().unwrap();
    m.snapshot("vm", "s1");
    w.write_all_at(&random(65536, 6), 5 << 20).unwrap();
    w.sync_all().unwrap();
    m.snapshot("vm", "s2");
    drop(w);
    let (code, r) = verify_json(&m.repo, &[]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["layers_checked"], 2);
    assert!(r["damaged"].as_array().unwrap().is_empty());
    // Verified just now: skipped.
    let (code, r) = verify_json(&m.repo, &["--older-than", "1d"]);
    assert_eq!(code, 0);
    assert_eq!(
        (r["layers_checked"].as_u64(), r["layers_skipped"].as_u64()),
        (Some(0), Some(2))
    );
    m.snapshot("vm", "s3");
    let (_, r) = verify_json(&m.repo, &["--older-than", "1d"]);
    assert_eq!(r["layers_checked"], 1, "only the new layer: {r}");
    m.umount();
    let (s1, s2) = {
        let repo = Repository::open(&m.repo).unwrap();
        let l = |s: &str| repo.snapshot_info(&snap(s)).unwrap().layer;
        (l("vm@s1"), l("vm@s2"))
    };
    flip(&data_file(&m.repo, s1), 3 * 65536 + 100);
    // One copy of s2's index, and of the header.
    let idx = m.repo.join("layers").join(format!("{s2}.idx"));
    flip(&idx, 40);
    flip(&m.repo.join("strata.repo"), 40);
    m.mount(&[]);
    let (code, r) = verify_json(&m.repo, &[]);
    assert_eq!(code, 1, "{r}");
    let damaged = r["damaged"].as_array().unwrap();
    assert_eq!(damaged.len(), 1, "{r}");
    assert_eq!(damaged[0]["file"], format!("layers/{s1}.data"));
    assert_eq!(damaged[0]["block"], 3);
    assert_eq!(damaged[0]["offset"], 3 * 65536);
    let images: Vec<&str> = damaged[0]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(images, ["vm@s1", "vm@s2", "vm@s3", "vm"], "{r}");
    let mended: Vec<&str> = r["mended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // The header's damaged copy was mended when the mount opened it, and
    // the first verify says so: both copies (sector 0 and sector 1) are the
    // same again.
    assert_eq!(
        mended,
        ["strata.repo".to_string(), format!("layers/{s2}.idx")],
        "{r}"
    );
    let header = std::fs::read(m.repo.join("strata.repo")).unwrap();
    assert!(
        header[..512] == header[512..1024],
        "the header's copies differ"
    );
    // Only s1's layer, asked by image: the same block.
    let (code, r) = verify_json(&m.repo, &["vm@s1"]);
    assert_eq!((code, r["layers_checked"].as_u64()), (1, Some(1)));
    // A human report names it too, and the exit status says so.
    let out = strata(&m.repo, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("layers/{s1}.data")));
}

/// `verify --repair-from REPLICA` heals a damaged block from a replica's
/// snapshot with the same content, checked before it is written; then
/// everything verifies and reads as before.
#[test]
fn verify_repairs_from_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let data = random(3 << 20, 9);
    let layer = {
        let repo = Repository::init(&a).unwrap();
        let vm = DiskName::parse("vm").unwrap();
        repo.create_disk(&vm, 4 << 20, 65536).unwrap();
        repo.disk(&vm).unwrap().write_at(0, &data).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s1").unwrap()))
            .unwrap();
        repo.snapshot_info(&snap("vm@s1")).unwrap().layer
    };
    strata_ok(&b, &["init"]);
    let exe = env!("CARGO_BIN_EXE_strata");
    common::sh(&format!(
        "'{exe}' --repo '{}' send vm@s1 | '{exe}' --repo '{}' receive --as copy",
        a.display(),
        b.display()
    ));
    flip(&data_file(&a, layer), 10 * 65536 + 5);
    flip(&data_file(&a, layer), 40 * 65536 + 5);
    let out = strata(&a, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let out = strata(&a, &["verify", "--repair-from", b.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("repaired layers/").count(), 2, "{text}");
    strata_ok(&a, &["verify"]);
    let repo = Repository::open(&a).unwrap();
    let img = repo.open_snapshot(&snap("vm@s1")).unwrap();
    let mut got = vec![0u8; 3 << 20];
    img.read_at(0, &mut got).unwrap();
    assert!(got == data, "the healed snapshot differs");
}

/// One flipped bit, anywhere, in every kind of file the repository holds,
/// over many seeds. Every record of a metadata file (header, catalog,
/// index, journal, bookmark, receive state, verify record) has two copies:
/// `verify` names the file whose copy it mended, and every image reads as
/// before. A frozen data block has its checksum: `verify` names the file
/// and block and the images that read it (exit 1), and reading that block
/// fails (`export`, and the daemon with `-o checked`: EIO) instead of
/// returning wrong bytes, while images that do not read it read as before.
/// (Blocks written since the last snapshot have no checksum yet: they are
/// not flipped.)
#[test]
fn every_flipped_bit_is_mended_or_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let (s1_layer, s2_layer, live_layer) = {
        let repo = Repository::init(&base).unwrap();
        let vm = DiskName::parse("vm").unwrap();
        repo.create_disk(&vm, 8 << 20, 65536).unwrap();
        let d = repo.disk(&vm).unwrap();
        d.write_at(0, &random(3 << 20, 11)).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s1").unwrap()))
            .unwrap();
        d.write_at(5 << 20, &random(1 << 20, 12)).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s2").unwrap()))
            .unwrap();
        // Its own copy of block 1: s3 does not read s1's block 1.
        d.write_at(65536, &random(65536, 14)).unwrap();
        repo.snapshot(&vm, Some(SnapName::parse("s3").unwrap()))
            .unwrap();
        d.write_at(7 << 20, &random(65536, 13)).unwrap();
        d.flush().unwrap();
        // A receive cut short leaves its state behind.
        let other = Repository::init(&dir.path().join("other")).unwrap();
        let rx = DiskName::parse("rx").unwrap();
        other.create_disk(&rx, 4 << 20, 65536).unwrap();
        other
            .disk(&rx)
            .unwrap()
            .write_at(0, &random(4 << 20, 15))
            .unwrap();
        other
            .snapshot(&rx, Some(SnapName::parse("r").unwrap()))
            .unwrap();
        let mut stream = Vec::new();
        other
            .send(&snap("rx@r"), None, None, &mut stream, &mut |_, _| {})
            .unwrap();
        repo.receive(&mut &stream[..stream.len() * 3 / 4], None, &mut |_, _| {})
            .unwrap_err();
        assert_eq!(repo.partial_receives().unwrap().len(), 1);
        let l = |s: &str| repo.snapshot_info(&snap(s)).unwrap().layer;
        (l("vm@s1"), l("vm@s2"), repo.disk_info(&vm).unwrap().id)
    };
    let _ = live_layer;
    strata_ok(
        &base,
        &[
            "send",
            "vm@s2",
            "-o",
            dir.path().join("s2.stream").to_str().unwrap(),
        ],
    );
    strata_ok(&base, &["verify"]);
    let export = |root: &Path, img: &str| -> (i32, Vec<u8>, String) {
        let out_path = dir.path().join("out.img");
        let _ = std::fs::remove_file(&out_path);
        let out = strata(root, &["export", img, out_path.to_str().unwrap()]);
        let bytes = std::fs::read(&out_path).unwrap_or_default();
        (
            out.status.code().unwrap(),
            bytes,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let want: Vec<(String, Vec<u8>)> = ["vm@s1", "vm@s2", "vm@s3", "vm"]
        .iter()
        .map(|i| (i.to_string(), export(&base, i).1))
        .collect();
    let layers = base.join("layers");
    let journal = std::fs::read_dir(&layers)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let receive_state = std::fs::read_dir(base.join("receiving"))
        .unwrap()
        .map(|e| e.unwrap().path().join("state"))
        .find(|p| p.is_file())
        .expect("the cut-short receive's state");
    let kinds: Vec<(&str, PathBuf)> = vec![
        ("header", base.join("strata.repo")),
        ("catalog", base.join("catalog")),
        ("index", layers.join(format!("{s2_layer}.idx"))),
        ("journal", journal),
        ("bookmark", base.join("bookmarks").join("vm#s2")),
        ("receive state", receive_state),
        ("verified", base.join("verified")),
        ("data", data_file(&base, s1_layer)),
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..64 {
        let (kind, file) = &kinds[round % kinds.len()];
        let root = dir.path().join(format!("r{round}"));
        copy_tree(&base, &root);
        let target = root.join(file.strip_prefix(&base).unwrap());
        let bytes = std::fs::read(&target).unwrap();
        let (at, block) = if *kind == "data" {
            let b = next(48);
            (b * 65536 + next(65536), Some(b))
        } else {
            (next(bytes.len() as u64), None)
        };
        flip_bit(&target, at, next(8) as u32);
        let rel = target.strip_prefix(&root).unwrap().display().to_string();
        let what = format!("round {round}: {kind} flipped at {at}");
        let out = strata(&root, &["verify", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        match block {
            Some(b) => {
                assert_eq!(out.status.code(), Some(1), "{what}: {report}");
                let d = &report["damaged"];
                assert_eq!(d.as_array().unwrap().len(), 1, "{what}: {report}");
                assert_eq!(d[0]["file"], format!("layers/{s1_layer}.data"), "{what}");
                assert_eq!(d[0]["block"], b, "{what}");
                let readers: Vec<String> = d[0]["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                for (img, bytes) in &want {
                    let (code, got, err) = export(&root, img);
                    if readers.contains(img) {
                        assert_eq!(code, 1, "{what}: {img} exported");
                        assert!(err.contains("does not match its checksum"), "{what}: {err}");
                    } else {
                        assert_eq!(code, 0, "{what}: {img}: {err}");
                        assert!(got == *bytes, "{what}: {img} differs");
                    }
                }
                // Block 1 is s3's own: s3 and the live disk do not read s1's.
                let s3_reads = readers.iter().any(|r| r == "vm@s3");
                assert_eq!(s3_reads, b != 1, "{what}: {readers:?}");
                // Through the daemon, every read checked: EIO for the
                // images that read the block, their bytes for the others.
                if fuse_available() {
                    let mut m = Mounted {
                        dir: tempfile::tempdir().unwrap(),
                        repo: root.clone(),
                        mp: PathBuf::new(),
                        pid: 0,
                    };
                    m.mp = m.dir.path().join("mnt");
                    std::fs::create_dir(&m.mp).unwrap();
                    m.mount(&["-o", "checked"]);
                    let at = b * 65536;
                    for (img, bytes) in &want {
                        let path = match img.split_once('@') {
                            Some((d, s)) => m.snap(d, s),
                            None => m.live(img),
                        };
                        let f = std::fs::File::open(&path).unwrap();
                        let mut buf = vec![0u8; 65536];
                        let got = f.read_exact_at(&mut buf, at);
                        if readers.contains(img) {
                            let e = got.unwrap_err();
                            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {img}");
                        } else {
                            got.unwrap();
                            assert!(buf == bytes[at as usize..][..65536], "{what}: {img}");
                        }
                    }
                    m.umount();
                }
            }
            None => {
                assert_eq!(out.status.code(), Some(0), "{what}: {report}");
                let mended: Vec<&str> = report["mended"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert!(
                    mended.contains(&rel.as_str()),
                    "{what}: {rel} not named: {report}"
                );
                for (img, bytes) in &want {
                    let (code, got, err) = export(&root, img);
                    assert_eq!(code, 0, "{what}: {img}: {err}");
                    assert!(got == *bytes, "{what}: {img} differs");
                }
                // And what reads it takes it as it was.
                if *kind == "bookmark" {
                    strata_ok(
                        &root,
                        &["send", "vm@s2", "--from", "vm#s2", "-o", "/dev/null"],
                    );
                }
                if *kind == "receive state" {
                    let parts = strata_ok(&root, &["receive", "--status"]);
                    assert!(parts.contains("rx@r"), "{what}: {parts}");
                }
                // The damaged copy was mended: the file reads as it was.
                let now = std::fs::read(&target).unwrap();
                assert!(now == bytes || *kind == "verified", "{what}: not mended");
            }
        }
    }
}
