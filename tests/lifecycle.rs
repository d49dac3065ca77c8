//! The snapshot lifecycle through a real mount and the real command line:
//! deletes while a writer writes, handles that outlive their snapshot's
//! name, names reused, deleted disks whose snapshots stay, disks made from
//! snapshots, rollback, resize, renames, freezing a file system for a
//! snapshot, retention, usage as billed, and the space deletes give back.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const MIB: u64 = 1 << 20;

/// `len` bytes that differ with `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    random(len, seed)
}

fn write_range(path: &Path, offset: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

fn json(repo: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&strata_ok(repo, args)).unwrap()
}

fn snapshot_names(m: &Mounted, disk: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(m.mp.join(disk).join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn usage_layers(repo: &Path) -> u64 {
    json(repo, &["usage", "--json"])["layers"].as_u64().unwrap()
}

/// A refused command: exit status 1 and a message that says `expect`.
fn refused(repo: &Path, args: &[&str], expect: &str) {
    let out = strata(repo, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(expect), "{args:?} said: {err}");
}

/// Runs a command that is refused while an image is open for writing,
/// until it is not: the kernel tells the mount a file was closed a moment
/// after `close` returns.
fn ok_once_closed(repo: &Path, args: &[&str]) -> String {
    let mut out = String::new();
    wait_until("the image to be closed", || {
        let o = strata(repo, args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success() || err.contains("open for writing"),
            "{args:?}: {err}"
        );
        out = String::from_utf8_lossy(&o.stdout).into_owned();
        o.status.success()
    });
    out
}

/// Writes to the last 16 MiB of a live image until stopped, each write
/// checked against what it wrote; returns the region as it must read.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u8>>,
}

const WRITER_AT: u64 = 48 * MIB;
const WRITER_LEN: usize = 16 << 20;

impl Writer {
    fn start(live: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, live) = (stop.clone(), live.to_owned());
        let thread = std::thread::spawn(move || {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&live)
                .unwrap();
            let mut model = vec![0u8; WRITER_LEN];
            f.read_exact_at(&mut model, WRITER_AT).unwrap();
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let at = (i * 7919 * 4096) % (WRITER_LEN as u64 - 65536);
                let data = pattern(1000 + i, 65536);
                f.write_all_at(&data, WRITER_AT + at).unwrap();
                model[at as usize..at as usize + data.len()].copy_from_slice(&data);
                if i % 8 == 0 {
                    f.sync_data().unwrap();
                }
                i += 1;
            }
            assert!(i > 10, "the writer hardly wrote ({i} writes)");
            model
        });
        Writer { stop, thread }
    }

    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the writer failed")
    }
}

#[test]
fn delete_while_writing_keeps_open_handles_and_reused_names_fresh() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "64M")], &[]);
    let live = m.live("vm");
    let a = pattern(1, 32 << 20);
    write_range(&live, 0, &a);
    m.snapshot("vm", "s1");
    let b = pattern(2, 8 << 20);
    write_range(&live, 4 * MIB, &b);
    m.snapshot("vm", "s2");
    let s2_expected = read_range(&m.snap("vm", "s2"), 0, 48 << 20);
    // The kernel caches s2's attributes now (for an hour: snapshots do not
    // change); a delete below it changes what it stores.
    let s2_blocks_before = fs::metadata(m.snap("vm", "s2")).unwrap().blocks();

    let writer = Writer::start(&live);
    // Opened, and read (into the page cache), before the delete.
    let old = File::open(m.snap("vm", "s1")).unwrap();
    let mut whole = vec![0u8; 32 << 20];
    old.read_exact_at(&mut whole, 0).unwrap();
    assert!(whole == a, "s1 reads wrong before the delete");

    let out = strata_ok(&m.repo, &["snapshot", "delete", "vm@s1"]);
    assert!(out.contains("deleted 1 snapshot"), "{out}");
    // Its layer is open: it waits.
    assert!(out.contains("once they are closed"), "{out}");
    assert_eq!(snapshot_names(&m, "vm"), ["s2.img"]);
    assert!(
        !m.snap("vm", "s1").exists(),
        "s1.img still answers a lookup"
    );
    let mut again = vec![0u8; 32 << 20];
    old.read_exact_at(&mut again, 0).unwrap();
    assert!(
        again == a,
        "the handle opened before the delete reads wrong"
    );

    // A new snapshot under the old name reads its own data.
    let c = pattern(3, 32 << 20);
    write_range(&live, 0, &c);
    m.snapshot("vm", "s1");
    let new = read_range(&m.snap("vm", "s1"), 0, 32 << 20);
    assert!(
        new == c,
        "the new s1 reads the old one's data (cached pages of a reused name?)"
    );
    assert_ne!(
        fs::metadata(m.snap("vm", "s1")).unwrap().ino(),
        old.metadata().unwrap().ino(),
        "the new s1 has the old one's inode"
    );
    old.read_exact_at(&mut again, 0).unwrap();
    assert!(again == a, "the old handle reads the new s1");
    assert!(
        read_range(&m.snap("vm", "s2"), 0, 48 << 20) == s2_expected,
        "s2 changed"
    );

    // Closing the last handle gives the deleted layer back (the mount does
    // it, without `strata gc`): it merges into s2, which stores more now.
    let layers = usage_layers(&m.repo);
    drop(old);
    wait_until("the deleted snapshot's layer to be given back", || {
        usage_layers(&m.repo) == layers - 1
    });
    let listed = json(&m.repo, &["snapshot", "list", "vm", "--json"]);
    let s2_stored = listed[0]["stored_bytes"].as_u64().unwrap();
    let s2_blocks = fs::metadata(m.snap("vm", "s2")).unwrap().blocks();
    assert_ne!(
        s2_blocks, s2_blocks_before,
        "s2 stores no more after the merge"
    );
    assert_eq!(
        s2_blocks * 512,
        s2_stored.div_ceil(512) * 512,
        "du of s2.img is stale: the kernel kept its old attributes"
    );
    assert!(
        read_range(&m.snap("vm", "s2"), 0, 48 << 20) == s2_expected,
        "s2 changed when s1's layer merged into it"
    );

    let model = writer.finish();
    assert!(
        read_range(&live, WRITER_AT, WRITER_LEN) == model,
        "the writer's data is wrong after the deletes"
    );
    assert!(read_range(&live, 0, 32 << 20) == c);
}

#[test]
fn a_deleted_disk_keeps_its_snapshots_and_clones_outlive_their_source() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "32M")], &[]);
    let live = m.live("vm");
    let a = pattern(10, 32 << 20);
    write_range(&live, 0, &a);
    m.snapshot("vm", "base");

    // A disk from a snapshot: its content, at once, sharing its blocks.
    let before = json(&m.repo, &["usage", "--json"])["used_bytes"]
        .as_u64()
        .unwrap();
    let out = strata_ok(&m.repo, &["disk", "create", "test", "--from", "vm@base"]);
    assert!(out.contains("created disk test from vm@base"), "{out}");
    let after = json(&m.repo, &["usage", "--json"])["used_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        after < before + MIB,
        "a disk from a snapshot copied data: {before} -> {after}"
    );
    assert!(read_range(&m.live("test"), 0, 32 << 20) == a);
    // Writes to it never reach the source.
    let b = pattern(11, 4 << 20);
    write_range(&m.live("test"), 8 * MIB, &b);
    assert!(read_range(&m.snap("vm", "base"), 0, 32 << 20) == a);

    // Deleting the disk leaves its snapshots, in the mount under its name.
    let open = OpenOptions::new().write(true).open(&live).unwrap();
    refused(&m.repo, &["disk", "delete", "vm"], "open for writing");
    drop(open);
    let out = ok_once_closed(&m.repo, &["disk", "delete", "vm"]);
    assert!(out.contains("its snapshot stays"), "{out}");
    assert!(!live.exists(), "live.img of a deleted disk is still there");
    let mut entries: Vec<String> = fs::read_dir(m.mp.join("vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["changes", "snapshots"]);
    assert!(read_range(&m.snap("vm", "base"), 0, 32 << 20) == a);
    let listed = json(&m.repo, &["snapshot", "list", "vm", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // Its name stays taken while its snapshots remain.
    refused(
        &m.repo,
        &["disk", "create", "vm", "--size", "1M"],
        "1 snapshot of it remains",
    );

    // Deleting the source snapshot changes nothing the clone reads.
    strata_ok(&m.repo, &["snapshot", "delete", "vm@base"]);
    assert!(
        !m.mp.join("vm").exists(),
        "the deleted disk's directory stays"
    );
    let mut expect = a.clone();
    expect[8 << 20..12 << 20].copy_from_slice(&b);
    assert!(read_range(&m.live("test"), 0, 32 << 20) == expect);
    // Now the name is free again.
    strata_ok(&m.repo, &["disk", "create", "vm", "--size", "1M"]);
    assert_eq!(fs::metadata(m.live("vm")).unwrap().len(), MIB);
}

#[test]
fn rollback_resize_and_renames_show_in_the_mount_at_once() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "16M")], &[]);
    let live = m.live("vm");
    let a = pattern(20, 16 << 20);
    write_range(&live, 0, &a);
    m.snapshot("vm", "good");
    let b = pattern(21, 16 << 20);
    write_range(&live, 0, &b);
    m.snapshot("vm", "later");
    let c = pattern(22, 2 << 20);
    write_range(&live, MIB, &c);
    // Read through the page cache, so a stale page would show.
    assert_eq!(read_range(&live, MIB, 4096), c[..4096]);

    // Refused while open for writing, unless forced.
    let writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&live)
        .unwrap();
    refused(&m.repo, &["disk", "rollback", "vm@good"], "--force");
    assert_eq!(
        read_range(&live, MIB, 4096),
        c[..4096],
        "a refused rollback changed the disk"
    );
    strata_ok(&m.repo, &["disk", "rollback", "vm@good", "--force"]);
    let mut buf = vec![0u8; 16 << 20];
    writer.read_exact_at(&mut buf, 0).unwrap();
    assert!(
        buf == a,
        "the open handle reads stale data after the rollback"
    );
    drop(writer);
    assert!(read_range(&live, 0, 16 << 20) == a);
    // Later snapshots stay.
    assert_eq!(snapshot_names(&m, "vm"), ["good.img", "later.img"]);
    assert!(read_range(&m.snap("vm", "later"), 0, 16 << 20) == b);
    ok_once_closed(&m.repo, &["disk", "rollback", "vm@later"]);
    assert!(read_range(&live, 0, 16 << 20) == b);

    // Grow: the image is larger at once, the new part zeros; snapshots
    // keep their size. Shrinking is refused.
    strata_ok(&m.repo, &["disk", "resize", "vm", "--size", "24M"]);
    assert_eq!(fs::metadata(&live).unwrap().len(), 24 << 20);
    assert!(read_range(&live, 16 * MIB, 8 << 20).iter().all(|&x| x == 0));
    assert!(read_range(&live, 0, 16 << 20) == b);
    assert_eq!(fs::metadata(m.snap("vm", "later")).unwrap().len(), 16 << 20);
    refused(
        &m.repo,
        &["disk", "resize", "vm", "--size", "8M"],
        "only grows",
    );
    let d = pattern(23, 8 << 20);
    write_range(&live, 16 * MIB, &d);
    m.snapshot("vm", "grown");
    assert!(read_range(&m.snap("vm", "grown"), 16 * MIB, 8 << 20) == d);

    // Renames: the same images under new names.
    let ino = fs::metadata(m.snap("vm", "good")).unwrap().ino();
    strata_ok(&m.repo, &["snapshot", "rename", "vm@good", "known-good"]);
    assert!(!m.snap("vm", "good").exists());
    assert_eq!(fs::metadata(m.snap("vm", "known-good")).unwrap().ino(), ino);
    assert!(read_range(&m.snap("vm", "known-good"), 0, 16 << 20) == a);
    strata_ok(&m.repo, &["disk", "rename", "vm", "web"]);
    assert!(!m.mp.join("vm").exists());
    assert!(read_range(&m.live("web"), 16 * MIB, 8 << 20) == d);
    assert!(read_range(&m.snap("web", "known-good"), 0, 16 << 20) == a);
    let names: Vec<String> = json(&m.repo, &["snapshot", "list", "web", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["known-good", "later", "grown"]);
}

#[test]
fn freeze_holds_the_file_system_still_for_the_snapshot_only() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "128M")], &[]);
    let live = m.live("vm");
    sh(&format!("mkfs.ext4 -q -F '{}'", live.display()));
    let mut lo = Loop::attach(&live, false);
    let fsdir = m.path("fs");
    lo.mount(&fsdir, "rw");
    let fs = fsdir.to_str().unwrap();
    // Written, not synced: freezing flushes it into the disk.
    sh(&format!("head -c 5M /dev/urandom > '{fs}/data.bin'"));
    let sum = sh(&format!("md5sum < '{fs}/data.bin'"));

    let out = strata_ok(
        &m.repo,
        &[
            "snapshot", "create", "vm", "--name", "frozen", "--freeze", fs,
        ],
    );
    assert!(out.contains("created snapshot vm@frozen"), "{out}");
    // Thawed: a write returns (it would hang on a frozen file system).
    sh(&format!(
        "timeout 10 sh -c 'echo after > {fs}/after.txt && sync -f {fs}/after.txt'"
    ));
    // The snapshot holds a clean file system with the unsynced file in it.
    let img = m.snap("vm", "frozen");
    let snapdir = m.path("snapfs");
    let snap_lo = clean_ext4(&img, &snapdir);
    assert_eq!(
        sh(&format!("md5sum < '{}/data.bin'", snapdir.display())),
        sum
    );
    drop(snap_lo);

    // A snapshot that fails thaws too.
    refused(
        &m.repo,
        &[
            "snapshot", "create", "vm", "--name", "frozen", "--freeze", fs,
        ],
        "exists",
    );
    sh(&format!(
        "timeout 10 sh -c 'echo again > {fs}/after.txt && sync -f {fs}/after.txt'"
    ));
    // The file system holding the repository is never frozen.
    refused(
        &m.repo,
        &[
            "snapshot",
            "create",
            "vm",
            "--freeze",
            m.dir.path().to_str().unwrap(),
        ],
        "holds the repository",
    );
    // The guard thaws what a killed command left frozen.
    sh(&format!("fsfreeze -f '{fs}'"));
    let guard = Command::new(STRATA)
        .args(["thaw-guard", "--after", "1", fs])
        .output()
        .unwrap();
    assert!(guard.status.success());
    let said = String::from_utf8_lossy(&guard.stderr);
    assert!(
        said.contains("thawed"),
        "the guard did not say it thawed: {said}"
    );
    sh(&format!(
        "timeout 10 sh -c 'echo thawed > {fs}/after.txt && sync -f {fs}/after.txt'"
    ));
    drop(lo);
}

#[test]
fn several_disks_in_one_snapshot_all_or_none() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("root", "8M"), ("data", "8M")], &[]);
    write_range(&m.live("root"), 0, &pattern(30, 1 << 20));
    write_range(&m.live("data"), 0, &pattern(31, 1 << 20));
    let out = strata_ok(
        &m.repo,
        &["snapshot", "create", "root", "data", "--name", "nightly"],
    );
    assert!(
        out.contains("root@nightly") && out.contains("data@nightly"),
        "{out}"
    );
    assert!(read_range(&m.snap("root", "nightly"), 0, 1 << 20) == pattern(30, 1 << 20));
    assert!(read_range(&m.snap("data", "nightly"), 0, 1 << 20) == pattern(31, 1 << 20));
    // One name taken on one disk: none is taken.
    m.snapshot("data", "weekly");
    refused(
        &m.repo,
        &["snapshot", "create", "root", "data", "--name", "weekly"],
        "exists",
    );
    assert_eq!(snapshot_names(&m, "root"), ["nightly.img"]);
    // Both snapshots were taken in one commit, at one time.
    let t = |d| json(&m.repo, &["snapshot", "list", d, "--json"])[0]["taken"].clone();
    assert_eq!(t("root"), t("data"));
}

/// A repository with one disk of `size` filled from `data` (an import).
fn imported(dir: &Path, disk: &str, data: &[u8], extra: &[&str]) -> std::path::PathBuf {
    let repo = dir.join("repo");
    strata_ok(&repo, &["init"]);
    let img = dir.join(format!("{disk}.img"));
    fs::write(&img, data).unwrap();
    let mut args = vec!["disk", "import", disk, img.to_str().unwrap()];
    args.extend_from_slice(extra);
    strata_ok(&repo, &args);
    repo
}

#[test]
fn usage_says_what_each_snapshot_stores_and_would_give_back() {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB, of which 4 MiB data, at the start.
    let mut data = vec![0u8; 16 << 20];
    data[..4 << 20].copy_from_slice(&pattern(40, 4 << 20));
    let repo = imported(dir.path(), "vm", &data, &[]);
    strata_ok(&repo, &["snapshot", "create", "vm", "--name", "one"]);
    // Then 1 MiB of it overwritten, and 1 MiB more written, in a second.
    {
        let r = strata::store::Repository::open(&repo).unwrap();
        let vm = strata::store::DiskName::parse("vm").unwrap();
        let disk = r.disk(&vm).unwrap();
        disk.write_at(MIB, &pattern(41, 1 << 20)).unwrap();
        disk.write_at(8 * MIB, &pattern(42, 1 << 20)).unwrap();
        let two = strata::store::SnapName::parse("two").unwrap();
        r.snapshot(&vm, Some(two)).unwrap();
    }
    let u = json(&repo, &["usage", "vm", "--json"]);
    let disk = &u["disks"][0];
    assert_eq!(disk["name"], "vm");
    assert_eq!(disk["size"], 16u64 << 20);
    let (one, two) = (&disk["snapshots"][0], &disk["snapshots"][1]);
    assert_eq!(one["name"], "one");
    assert_eq!(one["stored_bytes"], 4u64 << 20);
    // Deleting it gives back only what no later image reads: the MiB the
    // second snapshot overwrote.
    assert_eq!(one["reclaimable_bytes"], 1u64 << 20);
    assert_eq!(one["image_bytes"], 4u64 << 20);
    assert_eq!(two["stored_bytes"], 2u64 << 20);
    // The live disk reads all it holds: deleting it gives nothing back.
    assert_eq!(two["reclaimable_bytes"], 0);
    assert_eq!(two["image_bytes"], 5u64 << 20);
    assert_eq!(u["provisioned_bytes"], 16u64 << 20);
    // What the usage report estimated, a delete gives back.
    let out = strata_ok(&repo, &["snapshot", "delete", "vm@one"]);
    assert!(out.contains("(1 MiB given back)"), "{out}");

    // The table says the same, for people.
    let table = strata_ok(&repo, &["usage"]);
    // vm@two took over what vm@one held that it reads.
    assert!(!table.contains("vm@one"), "{table}");
    let row = table.lines().find(|l| l.starts_with("vm@two")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["vm@two", "5", "MiB", "0", "B", "5", "MiB"]
    );
    assert!(table.contains("IMAGE USED"), "{table}");

    // The history: today, the snapshot's bytes over the days of this
    // month, in GiB-months.
    let daily = json(&repo, &["usage", "--daily", "--json"]);
    let days = daily["days"].as_array().unwrap();
    let today = days.last().unwrap();
    let date: jiff::civil::Date = today["date"].as_str().unwrap().parse().unwrap();
    // A snapshot counts as the day ends (today: now): vm@one, deleted,
    // does not; vm@two counts with what it took over from it.
    let listed = today["snapshots"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{today}");
    assert_eq!(listed[0]["snapshot"], "two");
    assert_eq!(listed[0]["bytes"], 5u64 << 20);
    let expect = (5u64 << 20) as f64 / (1u64 << 30) as f64 / f64::from(date.days_in_month());
    let got = listed[0]["gib_months"].as_f64().unwrap();
    assert!(
        (got - expect).abs() < 1e-9,
        "{got} GiB-months, not {expect}"
    );
    // Days to come are not reported.
    let next_year = format!("{}-01-01", date.year() + 1);
    let ahead = json(&repo, &["usage", "--daily", "--to", &next_year, "--json"]);
    let last = ahead["days"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["date"], today["date"]);
    // A range names its days.
    let d = date.to_string();
    let ranged = json(
        &repo,
        &["usage", "--daily", "--from", &d, "--to", &d, "--json"],
    );
    assert_eq!(ranged["days"].as_array().unwrap().len(), 1);
    let bad = strata(&repo, &["usage", "--daily", "--from", "23/11/2026"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("YYYY-MM-DD"));
}

#[test]
fn prune_keeps_the_newest_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = imported(
        dir.path(),
        "vm",
        &pattern(50, 1 << 20),
        &["--block-size", "4K"],
    );
    for i in 0..6 {
        strata_ok(
            &repo,
            &["snapshot", "create", "vm", "--name", &format!("s{i}")],
        );
    }
    let before = repo_contents(&repo);
    let out = strata_ok(&repo, &["prune", "vm", "--keep-last", "2", "--dry-run"]);
    for i in 0..4 {
        assert!(out.contains(&format!("would delete vm@s{i}")), "{out}");
    }
    assert!(!out.contains("vm@s4") && !out.contains("vm@s5"), "{out}");
    assert_same_contents(&before, &repo_contents(&repo), "a dry run");
    let out = strata_ok(&repo, &["prune", "vm", "--keep-last", "2"]);
    assert!(out.contains("deleted 4 of 6"), "{out}");
    let names: Vec<String> = json(&repo, &["snapshot", "list", "vm", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["s4", "s5"]);
    // All taken this hour: one per hour keeps the newest.
    strata_ok(&repo, &["prune", "vm", "--keep-hourly", "1"]);
    let listed = json(&repo, &["snapshot", "list", "vm", "--json"]);
    assert_eq!(listed[0]["name"], "s5");
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // No rule: refused, as a usage error.
    let none = strata(&repo, &["prune", "vm"]);
    assert_eq!(none.status.code(), Some(2));
}

/// Bytes the files under `dir` occupy.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            du(&e.path())
        } else {
            md.blocks() * 512
        };
    }
    total
}

#[test]
fn deleting_all_but_the_newest_leaves_only_its_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = strata::store::Repository::init(&root).unwrap();
    let name = strata::store::DiskName::parse("vm").unwrap();
    repo.create_disk(&name, 256 << 20, 65536).unwrap();
    let disk = repo.disk(&name).unwrap();
    // Twelve snapshots, each overwriting, adding and discarding some.
    for i in 0..12u64 {
        for j in 0..6u64 {
            let at = ((i * 37 + j * 11) % 240) * MIB + (i * 4096) % 65536;
            disk.write_at(at, &pattern(i * 10 + j, (1 << 20) + 1234))
                .unwrap();
        }
        disk.discard(((i * 53) % 250) * MIB, 2 * MIB).unwrap();
        repo.snapshot(&name, None).unwrap();
    }
    let snaps = repo.snapshots(&name).unwrap();
    let newest = snaps.last().unwrap().clone();
    let refs: Vec<strata::store::SnapshotRef> = snaps[..snaps.len() - 1]
        .iter()
        .map(|s| strata::store::SnapshotRef::parse(&format!("vm@{}", s.name)).unwrap())
        .collect();
    repo.delete_snapshots(&refs).unwrap();
    let usage = repo.usage(None).unwrap();
    let image = usage.disks[0].snapshots[0].image_bytes;
    assert_eq!(usage.disks[0].snapshots[0].name, newest.name);
    let used = du(&root.join("layers"));
    assert!(
        used <= image + image / 100 + MIB,
        "{used} bytes used for an image of {image}"
    );
    // Nothing was lost to get there.
    assert!(used >= image, "{used} bytes used for an image of {image}");
    let again = repo.gc().unwrap();
    assert_eq!(again.freed_bytes, 0, "gc found more: {again:?}");
}

#[test]
fn bad_lifecycle_requests_say_what_is_wrong_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = imported(dir.path(), "vm", &pattern(60, 1 << 20), &[]);
    strata_ok(&repo, &["snapshot", "create", "vm", "--name", "s"]);
    let before = repo_contents(&repo);
    for (args, expect) in [
        (&["snapshot", "delete", "vm@s", "vm@nope"][..], "nope"),
        (&["snapshot", "delete", "ghost@s"][..], "ghost"),
        (&["snapshot", "rename", "vm@s", "s"][..], "exists"),
        (&["disk", "rollback", "vm@nope"][..], "nope"),
        (&["disk", "create", "vm", "--from", "vm@s"][..], "exists"),
        (&["disk", "create", "x", "--from", "vm@nope"][..], "nope"),
        (&["disk", "rename", "vm", "vm"][..], "exists"),
        (&["disk", "delete", "ghost"][..], "ghost"),
        (
            &["disk", "resize", "vm", "--size", "512K"][..],
            "only grows",
        ),
    ] {
        refused(&repo, args, expect);
        assert_same_contents(&before, &repo_contents(&repo), &format!("{args:?}"));
    }
    for args in [
        &["snapshot", "delete", "vm"][..],
        &["disk", "create", "x", "--from", "vm@s", "--size", "1M"][..],
        &["disk", "create", "x"][..],
        &["prune", "vm", "--keep-last", "0"][..],
        &["usage", "vm", "--daily"][..],
    ] {
        let out = strata(&repo, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_same_contents(&before, &repo_contents(&repo), "bad usage");
}

#[test]
fn gc_while_mounted_reports_and_du_shrinks() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "32M")], &[]);
    let live = m.live("vm");
    write_range(&live, 0, &pattern(70, 16 << 20));
    m.snapshot("vm", "a");
    write_range(&live, 0, &pattern(71, 16 << 20));
    m.snapshot("vm", "b");
    // Held open, a deleted snapshot keeps its space...
    let mut held = File::open(m.snap("vm", "a")).unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).unwrap();
    let du_before = du(&m.repo.join("layers"));
    strata_ok(&m.repo, &["snapshot", "delete", "vm@a"]);
    let out = strata_ok(&m.repo, &["gc"]);
    assert!(out.contains("still open"), "{out}");
    assert!(du(&m.repo.join("layers")) + MIB > du_before);
    // ...and once closed, gc (or the mount itself) gives it back.
    drop(held);
    wait_until("the space to come back", || {
        strata_ok(&m.repo, &["gc"]);
        du(&m.repo.join("layers")) + 15 * MIB < du_before
    });
    let out = strata_ok(&m.repo, &["gc"]);
    assert!(out.contains("gave back 0 B"), "{out}");
}

#[test]
fn du_of_live_img_is_what_no_remaining_snapshot_holds() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "64M")], &[]);
    let live = m.live("vm");
    let du_live = || fs::metadata(&live).unwrap().blocks() * 512;
    write_range(&live, 0, &pattern(80, 8 << 20));
    assert!(du_live() >= 8 * MIB, "du of live.img before any snapshot");
    m.snapshot("vm", "s1");
    // At once: the kernel is told live.img stores nothing of its own now.
    assert_eq!(du_live(), 0, "du of live.img right after a snapshot");
    write_range(&live, 16 * MIB, &pattern(81, 4 << 20));
    m.snapshot("vm", "s2");
    assert_eq!(du_live(), 0);
    // The newest snapshot deleted: its 4 MiB are what only live.img reads.
    strata_ok(&m.repo, &["snapshot", "delete", "vm@s2"]);
    let du = du_live();
    assert!(
        (4 * MIB..5 * MIB).contains(&du),
        "du of live.img after its last snapshot was deleted: {du}"
    );
    let disks = json(&m.repo, &["disk", "list", "--json"]);
    let s1 = json(&m.repo, &["snapshot", "list", "vm", "--json"])[0]["stored_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(disks[0]["used_bytes"].as_u64().unwrap(), s1 + du);
    let usage = json(&m.repo, &["usage", "vm", "--json"]);
    assert_eq!(usage["disks"][0]["live_bytes"].as_u64().unwrap(), du);
    assert_eq!(
        usage["used_bytes"], disks[0]["used_bytes"],
        "usage of one disk, totals"
    );
    // The next snapshot takes them over.
    let out = strata_ok(&m.repo, &["snapshot", "create", "vm", "--name", "s3"]);
    assert!(out.contains("(4 MiB changed)"), "{out}");
    assert_eq!(du_live(), 0);
}
