//! Bad input never changes the repository (guarantee 5): each bad name, size,
//! block size, range, damaged file, newer format and second writer gets a
//! clear error that names what is wrong, the right exit status, and leaves
//! every stored byte as it was.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata::store::{DiskName, Repository, SnapName, StoreError};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Every file of the repository except the lock (which records its holder).
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "lock" {
                out.insert(
                    p.strip_prefix(root).unwrap().to_owned(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn strata(repo: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(STRATA)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A repository with one disk holding data and one snapshot.
fn fixture(dir: &Path) -> PathBuf {
    let root = dir.join("repo");
    let repo = Repository::init(&root).unwrap();
    let vm = DiskName::parse("vm").unwrap();
    repo.create_disk(&vm, 1 << 20, 4096).unwrap();
    let disk = repo.disk(&vm).unwrap();
    disk.write_at(5000, &[7u8; 9000]).unwrap();
    repo.snapshot(&vm, Some(SnapName::parse("s1").unwrap()))
        .unwrap();
    disk.write_at(0, &[9u8; 100]).unwrap();
    disk.flush().unwrap();
    root
}

#[test]
fn bad_arguments_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let odd = dir.path().join("odd.img");
    fs::write(&odd, vec![1u8; 1000]).unwrap();
    let out = dir.path().join("out.img");
    let long = "a".repeat(129);
    let out_s = out.to_str().unwrap();
    let odd_s = odd.to_str().unwrap();
    #[rustfmt::skip]
    let cases: &[(&[&str], i32, &str)] = &[
        (&["disk", "create", "a/b", "--size", "1G"], 2, "character '/' at position 2 is not allowed"),
        (&["disk", "create", ".x", "--size", "1G"], 2, "must not start with '.'"),
        (&["disk", "create", "-x", "--size", "1G"], 2, ""),
        (&["disk", "create", &long, "--size", "1G"], 2, "129 characters long; the limit is 128"),
        (&["disk", "create", "x", "--size", "12X"], 2, "unknown unit \"X\""),
        (&["disk", "create", "x", "--size", "1.5G"], 2, "unknown unit"),
        (&["disk", "create", "x", "--size", "0"], 1, "a disk cannot be 0 bytes"),
        (&["disk", "create", "x", "--size", "1000"], 1, "1000 bytes is not a multiple of 512"),
        (&["disk", "create", "x", "--size", "99999999P"], 2, "too large"),
        (&["disk", "create", "x", "--size", "1G", "--block-size", "3K"], 2, "power of two from 4K to 1M"),
        (&["disk", "create", "x", "--size", "1G", "--block-size", "2M"], 2, "power of two from 4K to 1M"),
        (&["disk", "create", "x", "--size", "1G", "--block-size", "2K"], 2, "power of two from 4K to 1M"),
        (&["disk", "create", "vm", "--size", "1G"], 1, "disk 'vm' already exists"),
        (&["disk", "import", "y", "/nonexistent.img"], 1, "/nonexistent.img: No such file"),
        (&["disk", "import", "y", odd_s], 1, "a disk image must be a non-zero multiple of 512 bytes"),
        (&["snapshot", "create", "vm", "--name", "s1"], 1, "snapshot 'vm@s1' already exists"),
        (&["snapshot", "create", "nope"], 1, "disk 'nope' does not exist"),
        (&["snapshot", "create", "vm", "--name", "a b"], 2, "character ' ' at position 2"),
        (&["snapshot", "list", "nope"], 1, "disk 'nope' does not exist"),
        (&["export", "vm@nope", out_s], 1, "snapshot 'vm@nope' does not exist"),
        (&["export", "vm@", out_s], 2, "invalid snapshot name \"\""),
        (&["export", "nope", out_s], 1, "disk 'nope' does not exist"),
        (&["init"], 1, "already holds a strata repository"),
        (&["disk", "frobnicate"], 2, "unrecognized subcommand"),
    ];
    let before = contents(&root);
    for (args, code, msg) in cases {
        let (got, err) = strata(&root, args);
        assert_eq!(got, *code, "{args:?}: exit status; stderr: {err}");
        assert!(err.contains(msg), "{args:?}: expected {msg:?} in {err:?}");
        assert_eq!(contents(&root), before, "{args:?} changed the repository");
    }
    assert!(!out.exists(), "a failed export left a file behind");
}

#[test]
fn io_outside_the_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let before = contents(&root);
    {
        let repo = Repository::open(&root).unwrap();
        let disk = repo.disk(&DiskName::parse("vm").unwrap()).unwrap();
        for (offset, len) in [
            (1 << 20, 1),
            ((1 << 20) - 1, 2),
            (u64::MAX, 1),
            (u64::MAX - 1, 10),
        ] {
            let e = disk.write_at(offset, &vec![1u8; len]).unwrap_err();
            assert!(matches!(e, StoreError::OutOfRange { .. }), "{e}");
            assert!(
                e.to_string().contains("outside disk 'vm' (1048576 bytes)"),
                "{e}"
            );
            let e = disk.discard(offset, len as u64).unwrap_err();
            assert!(matches!(e, StoreError::OutOfRange { .. }), "{e}");
        }
        // Reads past the end return nothing rather than failing.
        let mut buf = [0u8; 10];
        use strata::store::ImageRead;
        assert_eq!(disk.read_at(1 << 20, &mut buf).unwrap(), 0);
        assert_eq!(disk.read_at((1 << 20) - 4, &mut buf).unwrap(), 4);
    }
    assert_eq!(contents(&root), before);
}

/// Copies the fixture, damages one file with `damage`, and checks the
/// command's error and that the damaged repository is left as it was.
fn damaged(file: &str, damage: impl Fn(&mut Vec<u8>), args: &[&str], expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let path = root.join(file);
    let mut bytes = fs::read(&path).unwrap();
    damage(&mut bytes);
    fs::write(&path, &bytes).unwrap();
    let before = contents(&root);
    let (code, err) = strata(&root, args);
    assert_eq!(code, 1, "{file}: {err}");
    assert!(
        err.contains(expect),
        "{file}: expected {expect:?} in {err:?}"
    );
    assert_eq!(contents(&root), before, "{file}: repository changed");
}

#[test]
fn damaged_metadata_is_named_and_left_alone() {
    let flip = |at: usize| move |b: &mut Vec<u8>| b[at] ^= 0x10;
    damaged(
        "catalog",
        flip(40),
        &["disk", "list"],
        "catalog is corrupt: payload checksum mismatch",
    );
    damaged(
        "catalog",
        flip(3),
        &["disk", "list"],
        "catalog is corrupt: it does not start with \"STRATCAT\"",
    );
    damaged(
        "catalog",
        flip(20),
        &["disk", "list"],
        "catalog is corrupt: header checksum mismatch",
    );
    damaged(
        "catalog",
        |b| b.truncate(10),
        &["disk", "list"],
        "shorter than a header",
    );
    damaged(
        "strata.repo",
        flip(0),
        &["disk", "list"],
        "strata.repo is corrupt",
    );
    let idx = "layers/0000000000000001.idx";
    damaged(
        idx,
        flip(35),
        &["export", "vm@s1", "/dev/null"],
        "0000000000000001.idx is corrupt: payload checksum mismatch",
    );
    let log = "layers/0000000000000002.log";
    damaged(
        log,
        flip(2),
        &["export", "vm", "/dev/null"],
        "0000000000000002.log is corrupt",
    );
}

/// Sets a `u32` header field of a frame (8: version, 12: incompatible
/// features) and fixes the header checksum, so only that field is wrong.
fn set_header_field(at: usize, value: u32) -> impl Fn(&mut Vec<u8>) {
    move |b: &mut Vec<u8>| {
        b[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let crc = crc32c::crc32c(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn a_newer_format_is_refused_by_name() {
    damaged(
        "strata.repo",
        set_header_field(8, 2),
        &["disk", "list"],
        "written by a newer strata (format version 2; this build reads up to 1)",
    );
    damaged(
        "catalog",
        set_header_field(8, 9),
        &["disk", "list"],
        "catalog was written by a newer strata (format version 9",
    );
    damaged(
        "catalog",
        set_header_field(12, 4),
        &["disk", "list"],
        "incompatible feature bits 0x4",
    );
}

#[test]
fn not_a_repository() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = strata(dir.path(), &["disk", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not a strata repository"), "{err}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "opening created files"
    );
    fs::write(dir.path().join("x"), "x").unwrap();
    let (code, err) = strata(dir.path(), &["init"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not empty"), "{err}");
}

#[test]
fn a_second_writer_is_told_who_holds_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let before = contents(&root);
    let holder = Repository::open(&root).unwrap();
    for args in [
        &["disk", "list"][..],
        &["snapshot", "create", "vm"],
        &["disk", "create", "z", "--size", "1M"],
    ] {
        let (code, err) = strata(&root, args);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("is in use by PID {}", std::process::id())),
            "{err}"
        );
    }
    let e = Repository::open(&root)
        .err()
        .expect("second open in-process");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    drop(holder);
    assert_eq!(contents(&root), before);
    let (code, err) = strata(&root, &["disk", "list"]);
    assert_eq!(code, 0, "{err}");
}
