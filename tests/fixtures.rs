//! Old formats keep opening. `tests/fixtures/v<N>/` is a repository written
//! by format version N from one fixed script (below); every build must open
//! each of them, upgrade it in place, and read every image back as the script
//! left it, before and after the upgrade.
//!
//! To add the fixture of a new format version, run once, with the build
//! that writes it:
//!
//! ```text
//! STRATA_WRITE_FIXTURE=1 cargo test --test fixtures -- --ignored write_fixture
//! ```
//!
//! and commit the new `tests/fixtures/v<N>/` (the lock file is left out).

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::copy_tree;
use strata::store::{DiskName, ImageRef, Repository, SnapName};

/// One step of the fixture script.
enum Step {
    Create(&'static str, u64, u32),
    /// Import a raw image made of these writes (offset, length, seed).
    Import(&'static str, u64, u32, &'static [(u64, usize, u8)]),
    Write(&'static str, u64, usize, u8),
    Discard(&'static str, u64, u64),
    Zero(&'static str, u64, usize),
    Flush(&'static str),
    Snapshot(&'static str, &'static str),
}

/// The fixture script: two disks (one imported, with a short last block),
/// whole and partial block writes, zero writes, discards, snapshots, and
/// flushed writes left in the live layers' journals.
fn script() -> Vec<Step> {
    use Step::*;
    vec![
        Create("alpha", 1 << 20, 4096),
        Write("alpha", 0, 8192, 1),
        Write("alpha", 10_000, 30_000, 2),
        Write("alpha", 500_000, 4096, 3),
        Snapshot("alpha", "first"),
        Write("alpha", 4096, 100, 4),
        Discard("alpha", 12_288, 16_384),
        Zero("alpha", 500_000, 4096),
        Write("alpha", 1_040_000, 8576, 5),
        Snapshot("alpha", "second"),
        Write("alpha", 200_000, 70_000, 6),
        Flush("alpha"),
        Discard("alpha", 0, 4096),
        Flush("alpha"),
        Import(
            "beta",
            204_800 + 512,
            65_536,
            &[(0, 3000, 7), (65_536, 65_536, 8), (200_000, 5312, 9)],
        ),
        Snapshot("beta", "imported"),
        Write("beta", 131_000, 2000, 10),
        Snapshot("beta", "patched"),
        Write("beta", 204_000, 1312, 11),
        Flush("beta"),
    ]
}

fn pattern(seed: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(2_654_435_761) ^ (u64::from(seed) * 0x9E37);
            (x >> 7) as u8 | 1
        })
        .collect()
}

/// What every image of the fixture must read: (image, bytes).
fn expected() -> Vec<(String, Vec<u8>)> {
    let mut disks: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    fn disk<'a>(disks: &'a mut [(&str, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
        &mut disks.iter_mut().find(|(n, _)| *n == name).unwrap().1
    }
    for step in script() {
        match step {
            Step::Create(n, size, _) => disks.push((n, vec![0; size as usize])),
            Step::Import(n, size, _, writes) => {
                let mut img = vec![0; size as usize];
                for &(off, len, seed) in writes {
                    img[off as usize..off as usize + len].copy_from_slice(&pattern(seed, off, len));
                }
                disks.push((n, img));
            }
            Step::Write(n, off, len, seed) => disk(&mut disks, n)[off as usize..off as usize + len]
                .copy_from_slice(&pattern(seed, off, len)),
            Step::Discard(n, off, len) => {
                disk(&mut disks, n)[off as usize..(off + len) as usize].fill(0)
            }
            Step::Zero(n, off, len) => {
                disk(&mut disks, n)[off as usize..off as usize + len].fill(0)
            }
            Step::Flush(_) => {}
            Step::Snapshot(n, s) => out.push((format!("{n}@{s}"), disk(&mut disks, n).clone())),
        }
    }
    out.extend(disks.into_iter().map(|(n, img)| (n.to_string(), img)));
    out
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn check_images(root: &Path, what: &str) {
    let repo = Repository::open(root).unwrap_or_else(|e| panic!("{what}: open: {e}"));
    for (image, bytes) in expected() {
        let r = ImageRef::parse(&image).unwrap();
        let img = repo
            .open_image(&r)
            .unwrap_or_else(|e| panic!("{what}: {image}: {e}"));
        assert_eq!(img.size(), bytes.len() as u64, "{what}: size of {image}");
        let mut got = vec![0u8; bytes.len()];
        assert_eq!(img.read_at(0, &mut got).unwrap(), bytes.len());
        assert!(got == bytes, "{what}: {image} reads back different bytes");
        // Every hole it reports reads as zeros.
        let mut pos = 0;
        while let Some(d) = img.seek_data(pos).unwrap() {
            assert!(bytes[pos as usize..d as usize].iter().all(|&b| b == 0));
            pos = img.seek_hole(d).unwrap();
            assert!(pos > d, "{what}: {image}: seek_hole({d}) = {pos}");
        }
        assert!(bytes[pos as usize..].iter().all(|&b| b == 0));
        // A snapshot's identity, from block hashes (computed now for a
        // layer an older version froze), is that of its bytes.
        if let ImageRef::Snapshot(s) = &r {
            assert_eq!(
                repo.identity(s).unwrap(),
                strata::store::identity::Identity::of_bytes(&bytes),
                "{what}: identity of {image}"
            );
        }
    }
}

#[test]
fn every_committed_fixture_opens_and_reads_back() {
    let mut versions: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('v'))
        .collect();
    versions.sort();
    assert!(!versions.is_empty(), "no fixtures in {:?}", fixtures_dir());
    for v in versions {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        copy_tree(&v, &root);
        let what = v.file_name().unwrap().to_string_lossy().into_owned();
        check_images(&root, &format!("{what} as committed"));
        // Opened once, it is in the current format; it must open again.
        check_images(&root, &format!("{what} after opening"));
    }
}

/// Writes `tests/fixtures/v<N>/` with this build (see the module doc).
#[test]
#[ignore = "writes a fixture; run by hand for a new format version"]
fn write_fixture() {
    if std::env::var_os("STRATA_WRITE_FIXTURE").is_none() {
        eprintln!("set STRATA_WRITE_FIXTURE=1 to write the fixture");
        return;
    }
    let version = strata::store::format::FORMAT_VERSION;
    let root = fixtures_dir().join(format!("v{version}"));
    assert!(!root.exists(), "{} exists already", root.display());
    let scratch = tempfile::tempdir().unwrap();
    {
        let repo = Repository::init(&root).unwrap();
        let name = |n: &str| DiskName::parse(n).unwrap();
        for step in script() {
            match step {
                Step::Create(n, size, bs) => {
                    repo.create_disk(&name(n), size, bs).unwrap();
                }
                Step::Import(n, size, bs, writes) => {
                    let src = scratch.path().join(n);
                    let f = fs::File::create(&src).unwrap();
                    f.set_len(size).unwrap();
                    for &(off, len, seed) in writes {
                        std::os::unix::fs::FileExt::write_all_at(&f, &pattern(seed, off, len), off)
                            .unwrap();
                    }
                    let file = fs::File::open(&src).unwrap();
                    let source = strata::store::ImportSource {
                        file: &file,
                        name: &src,
                        size: None,
                    };
                    repo.import_disk(&name(n), &source, bs, &mut |_, _| {})
                        .unwrap();
                }
                Step::Write(n, off, len, seed) => repo
                    .disk(&name(n))
                    .unwrap()
                    .write_at(off, &pattern(seed, off, len))
                    .unwrap(),
                Step::Discard(n, off, len) => {
                    repo.disk(&name(n)).unwrap().discard(off, len).unwrap()
                }
                Step::Zero(n, off, len) => repo
                    .disk(&name(n))
                    .unwrap()
                    .write_at(off, &vec![0; len])
                    .unwrap(),
                Step::Flush(n) => repo.disk(&name(n)).unwrap().flush().unwrap(),
                Step::Snapshot(n, s) => {
                    repo.snapshot(&name(n), Some(SnapName::parse(s).unwrap()))
                        .unwrap();
                }
            }
        }
    }
    fs::remove_file(root.join("lock")).unwrap();
    check_images(&root, "the new fixture");
    fs::remove_file(root.join("lock")).unwrap();
}
