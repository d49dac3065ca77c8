//! The commands as a user runs them: create, import, snapshot, list, export.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::assert_same_sparse;
use strata::store::{DiskName, ImageRead, Repository, SnapName};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");

fn strata(repo: &Path, args: &[&str]) -> String {
    let out = Command::new(STRATA)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "strata {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(repo: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&strata(repo, args)).unwrap()
}

#[test]
fn a_terabyte_disk_costs_nothing_until_written() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata(&repo, &["init"]);
    // The repository itself keeps a few MiB in reserve (for deletes on a
    // full host file system); the disk is what must cost nothing.
    let du = |repo: &Path| -> u64 {
        walk(repo)
            .iter()
            .map(|p| fs::metadata(p).unwrap().blocks() * 512)
            .sum()
    };
    let before = du(&repo);
    strata(&repo, &["disk", "create", "big", "--size", "1T"]);
    let disks = json(&repo, &["disk", "list", "--json"]);
    assert_eq!(disks[0]["name"], "big");
    assert_eq!(disks[0]["size"], 1u64 << 40);
    assert_eq!(disks[0]["block_size"], 65536);
    assert_eq!(disks[0]["used_bytes"], 0);
    let grew = du(&repo).saturating_sub(before);
    assert!(
        grew < 256 << 10,
        "an empty 1 TiB disk occupies {grew} bytes"
    );
    let table = strata(&repo, &["disk", "list"]);
    assert!(
        table.contains("big") && table.contains("1 TiB") && table.contains("64 KiB"),
        "{table}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn import_snapshot_export_round_trip_of_a_sparse_terabyte() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let src = dir.path().join("src.img");
    // 1 TiB sparse, 64 MiB of data in 16 places, one of them unaligned and
    // one reaching the very end.
    let f = File::create(&src).unwrap();
    f.set_len(1 << 40).unwrap();
    let chunk: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    for i in 0..15u64 {
        f.write_all_at(&chunk, i * (67 << 30) + i * 1000).unwrap();
    }
    f.write_all_at(&chunk, (1 << 40) - chunk.len() as u64)
        .unwrap();
    drop(f);

    strata(&repo, &["init"]);
    strata(&repo, &["disk", "import", "vm", src.to_str().unwrap()]);
    let disks = json(&repo, &["disk", "list", "--json"]);
    let used = disks[0]["used_bytes"].as_u64().unwrap();
    // 64 MiB of data; unaligned regions touch one more block each.
    assert!(
        (64 << 20..=(64 << 20) + 32 * 65536 + (1 << 20)).contains(&used),
        "used {used}"
    );

    let out = dir.path().join("out.img");
    strata(&repo, &["export", "vm", out.to_str().unwrap()]);
    assert_same_sparse(&src, &out);
    assert!(
        fs::metadata(&out).unwrap().blocks() * 512 <= (66 << 20),
        "export is not sparse"
    );

    // Snapshot, change the live disk through the library, snapshot again:
    // each export shows its own point in time.
    strata(&repo, &["snapshot", "create", "vm", "--name", "before"]);
    {
        let r = strata::Repository::open(&repo).unwrap();
        let d = r.disk(&strata::DiskName::parse("vm").unwrap()).unwrap();
        d.write_at(12345, b"changed").unwrap();
        d.flush().unwrap();
    }
    strata(&repo, &["snapshot", "create", "vm", "--name", "after"]);
    let snaps = json(&repo, &["snapshot", "list", "vm", "--json"]);
    assert_eq!(snaps[0]["name"], "before");
    assert_eq!(snaps[1]["name"], "after");
    assert_eq!(snaps[1]["stored_bytes"], 65536, "one changed block");
    assert!(snaps[0]["taken"].as_u64() <= snaps[1]["taken"].as_u64());
    let before = dir.path().join("before.img");
    strata(&repo, &["export", "vm@before", before.to_str().unwrap()]);
    assert_same_sparse(&src, &before);
    let after = dir.path().join("after.img");
    strata(&repo, &["export", "vm@after", after.to_str().unwrap()]);
    let f = File::options().write(true).open(&src).unwrap();
    f.write_all_at(b"changed", 12345).unwrap();
    assert_same_sparse(&src, &after);
    let table = strata(&repo, &["snapshot", "list", "vm"]);
    assert!(
        table.starts_with("NAME") && table.contains("before") && table.contains("64 KiB"),
        "{table}"
    );
}

#[test]
fn default_repository_location() {
    let dir = tempfile::tempdir().unwrap();
    let run = |envs: &[(&str, &Path)]| {
        let mut c = Command::new(STRATA);
        c.arg("init")
            .env_remove("STRATA_REPO")
            .env_remove("XDG_DATA_HOME");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[("HOME", &dir.path().join("home"))]);
    assert!(dir
        .path()
        .join("home/.local/share/strata/strata.repo")
        .is_file());
    run(&[
        ("HOME", dir.path()),
        ("XDG_DATA_HOME", &dir.path().join("xdg")),
    ]);
    assert!(dir.path().join("xdg/strata/strata.repo").is_file());
    run(&[
        ("XDG_DATA_HOME", &dir.path().join("xdg2")),
        ("STRATA_REPO", &dir.path().join("r")),
    ]);
    assert!(dir.path().join("r/strata.repo").is_file());
}

#[test]
fn whole_zero_blocks_cost_no_space() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("repo")).unwrap();
    let name = DiskName::parse("z").unwrap();
    repo.create_disk(&name, 64 << 20, 65536).unwrap();
    let disk = repo.disk(&name).unwrap();
    disk.write_at(0, &vec![0u8; 16 << 20]).unwrap();
    disk.flush().unwrap();
    assert_eq!(
        disk.live_stored_bytes().unwrap(),
        0,
        "16 MiB of zero blocks took space"
    );
    // Over data, whole zero blocks give the space back.
    disk.write_at(1 << 20, &vec![5u8; 4 << 20]).unwrap();
    disk.write_at(1 << 20, &vec![0u8; 4 << 20]).unwrap();
    disk.flush().unwrap();
    assert_eq!(disk.live_stored_bytes().unwrap(), 0);
    let s = repo
        .snapshot(&name, Some(SnapName::parse("s").unwrap()))
        .unwrap();
    assert_eq!(s.stored_bytes, 0);
    // 16 MiB of 64 KiB blocks: written zeros are still the snapshot's own
    // blocks (they would cover older data), they just take no space.
    assert_eq!(s.blocks, 256);
    let mut buf = vec![1u8; 8 << 20];
    disk.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}
