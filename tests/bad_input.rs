//! Bad input never changes the repository (guarantee 5): each bad name, size,
//! block size, range, damaged file, newer format and second writer gets a
//! clear error that names what is wrong, the right exit status, and leaves
//! every stored byte as it was.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_same_contents as assert_same, repo_contents as contents};

use strata::store::{DiskName, Repository, SnapName, StoreError};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

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
    disk.write_at(300_000, &[5u8; 100]).unwrap();
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
        (&["disk", "create", "x", "--size", "0"], 2, "a disk cannot be 0 bytes"),
        (&["disk", "create", "x", "--size", "1000"], 2, "1000 bytes is not a multiple of 512"),
        (&["disk", "resize", "vm", "--size", "0"], 2, "a disk cannot be 0 bytes"),
        (&["disk", "resize", "vm", "--size", "512K"], 1, "shrink"),
        (&["snapshot", "create"], 2, "required"),
        (&["snapshot", "create", "vm", "--all"], 2, "cannot be used with"),
        (&["prune", "vm"], 2, "give at least one --keep"),
        (&["prune"], 2, "required"),
        (&["verify", "--rate", "fast"], 2, "invalid"),
        (&["verify", "--older-than", "soon"], 2, "invalid"),
        (&["verify", "--rate", "0"], 2, "a rate of 0 would never finish"),
        (&["receive", "--json"], 2, "--status"),
        (&["mount", "/nonexistent-dir", "-o", "bogus"], 2, "unknown mount option \"bogus\""),
        (&["mount", "/nonexistent-dir", "-o", "umask=999"], 2, "octal"),
        (&["mount", "/nonexistent-dir", "-o", "sync"], 2, "\"sync\" is not supported"),
        (&["mount", "/nonexistent-dir", "-o", "remount,ro"], 2, "unmount, then mount again"),
        (&["completions", "tcsh"], 2, "invalid value"),
        (&["status", "--frobnicate"], 2, "unexpected argument"),
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
        assert_same(&contents(&root), &before, &format!("{args:?}"));
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
    assert_same(&contents(&root), &before, "the repository");
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
    assert_same(&contents(&root), &before, &format!("{file}: {args:?}"));
}

/// Where copy 1 of the frame at the start of `bytes` begins: every copy
/// starts on a 512-byte boundary (see the format spec).
fn second_copy(bytes: &[u8]) -> usize {
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
    (32 + len).div_ceil(512) * 512
}

/// Flips the same byte in both copies of a document's frame.
fn flip_both(at: usize) -> impl Fn(&mut Vec<u8>) {
    move |b: &mut Vec<u8>| {
        let c1 = second_copy(b);
        b[at] ^= 0x10;
        b[c1 + at] ^= 0x10;
    }
}

const LOG: &str = "layers/0000000000000002.log";
const IDX: &str = "layers/0000000000000001.idx";

/// Metadata survives one damaged copy: the command works, reads the same
/// bytes, and the damaged copy is mended from the good one.
#[test]
fn one_damaged_copy_of_any_metadata_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture(dir.path());
    let good = contents(&root);
    let export = |root: &Path, image: &str| {
        let out = root.parent().unwrap().join("out.img");
        let (code, err) = strata(root, &["export", image, out.to_str().unwrap()]);
        assert_eq!(code, 0, "export {image}: {err}");
        let bytes = fs::read(&out).unwrap();
        fs::remove_file(&out).unwrap();
        bytes
    };
    let want_live = export(&root, "vm");
    let want_snap = export(&root, "vm@s1");
    let after_export = contents(&root);
    let header_copy1 = |f: &str| second_copy(&good[Path::new(f)]);
    let cases: Vec<(&str, usize)> = vec![
        ("catalog", 3),
        ("catalog", 20),
        ("catalog", 32),
        ("catalog", header_copy1("catalog") + 40),
        ("catalog", 2 * header_copy1("catalog") + 40), // the checkpoint record, copy 0
        ("strata.repo", 0),
        ("strata.repo", 32),
        ("strata.repo", header_copy1("strata.repo") + 32),
        (IDX, 32),
        (IDX, header_copy1(IDX) + 32),
        (LOG, 2),
        (LOG, 49),
        (LOG, 2 * header_copy1(LOG) + 32), // record 1, copy 0, payload
        (LOG, 2 * header_copy1(LOG) + 12), // record 1, copy 0, sequence number
        (LOG, 2 * header_copy1(LOG) + 512 + 32), // record 1, copy 1
        (LOG, 2 * header_copy1(LOG) + 1024 + 32), // record 2, copy 0
        (LOG, 3 * 1024 + 32),              // record 3, the last, copy 0
        (LOG, 2 * header_copy1(LOG) + 1536 + 16), // record 2, copy 1, length
    ];
    for (file, at) in cases {
        let path = root.join(file);
        let mut bytes = good[Path::new(file)].clone();
        bytes[at] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(export(&root, "vm"), want_live, "{file} flipped at {at}");
        assert_eq!(export(&root, "vm@s1"), want_snap, "{file} flipped at {at}");
        assert_same(
            &contents(&root),
            &after_export,
            &format!("{file} flipped at {at}: not mended, or something else changed"),
        );
    }
}

#[test]
fn metadata_damaged_beyond_repair_is_named_and_left_alone() {
    // Byte 32 is the first byte of the payload, whatever its length.
    damaged(
        "catalog",
        flip_both(32),
        &["disk", "list"],
        "catalog is damaged: payload checksum mismatch at offset 0, and no good second copy",
    );
    damaged(
        "catalog",
        flip_both(3),
        &["disk", "list"],
        "catalog is damaged: it does not start with \"STRATCAT\" at offset 0",
    );
    damaged(
        "catalog",
        |b| b.truncate(10),
        &["disk", "list"],
        "shorter than a header",
    );
    damaged(
        "strata.repo",
        flip_both(0),
        &["disk", "list"],
        "strata.repo is damaged",
    );
    damaged(
        IDX,
        flip_both(32),
        &["export", "vm@s1", "/dev/null"],
        "0000000000000001.idx is damaged: payload checksum mismatch at offset 0",
    );
    // Both copies of the journal's first record, with a second one after.
    damaged(
        LOG,
        |b| {
            let first = 2 * second_copy(b);
            b[first + 32] ^= 1;
            b[first + 512 + 32] ^= 1;
        },
        &["export", "vm", "/dev/null"],
        "0000000000000002.log is damaged: record 1 at offset 1024 is damaged in both copies, \
         and record 2 follows at offset 2048",
    );
}

/// Sets a `u32` header field of both copies of a document's frame (8:
/// version, 12: incompatible features) and fixes their header checksums,
/// so only that field is wrong.
fn set_header_field(at: usize, value: u32) -> impl Fn(&mut Vec<u8>) {
    move |b: &mut Vec<u8>| {
        let c1 = second_copy(b);
        for c in [0, c1] {
            b[c + at..c + at + 4].copy_from_slice(&value.to_le_bytes());
            let crc = crc32c::crc32c(&b[c..c + 28]);
            b[c + 28..c + 32].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[test]
fn a_newer_format_is_refused_by_name() {
    damaged(
        "strata.repo",
        set_header_field(8, 4),
        &["disk", "list"],
        "written by a newer strata (format version 4; this build reads up to 3)",
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
    assert_same(&contents(&root), &before, "the repository");
    let (code, err) = strata(&root, &["disk", "list"]);
    assert_eq!(code, 0, "{err}");
}
