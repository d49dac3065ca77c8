//! The commands as a user runs them: create, import, snapshot, list, export.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use strata::sys;

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

/// Compares two sparse files through their data regions only, so that two
/// 1 TiB files holding a little data compare in milliseconds. Where either
/// has data both are read; everywhere else both are holes, hence zeros.
fn assert_same_sparse(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let size = fa.metadata().unwrap().len();
    assert_eq!(size, fb.metadata().unwrap().len(), "sizes differ");
    let next = |pos| {
        [&fa, &fb]
            .iter()
            .filter_map(|f| sys::seek_data(f, pos).unwrap())
            .min()
    };
    let mut pos = 0;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    while let Some(start) = next(pos) {
        let end = sys::seek_hole(&fa, start)
            .unwrap()
            .max(sys::seek_hole(&fb, start).unwrap());
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(ba.len());
            fa.read_exact_at(&mut ba[..n], at).unwrap();
            fb.read_exact_at(&mut bb[..n], at).unwrap();
            assert!(
                ba[..n] == bb[..n],
                "{} and {} differ near offset {at}",
                a.display(),
                b.display()
            );
            at += n as u64;
        }
        pos = end;
    }
}

#[test]
fn a_terabyte_disk_costs_nothing_until_written() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata(&repo, &["init"]);
    strata(&repo, &["disk", "create", "big", "--size", "1T"]);
    let disks = json(&repo, &["disk", "list", "--json"]);
    assert_eq!(disks[0]["name"], "big");
    assert_eq!(disks[0]["size"], 1u64 << 40);
    assert_eq!(disks[0]["block_size"], 65536);
    assert_eq!(disks[0]["used_bytes"], 0);
    let du: u64 = walk(&repo)
        .iter()
        .map(|p| fs::metadata(p).unwrap().blocks() * 512)
        .sum();
    assert!(du < 256 << 10, "an empty 1 TiB disk occupies {du} bytes");
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
