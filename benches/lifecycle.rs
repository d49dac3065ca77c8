//! Lifecycle benchmarks (issue: the snapshot lifecycle). Every figure is
//! printed with a baseline from the same run and the ratio between them.
//!
//! Run as root: `cargo bench --bench lifecycle` (or `-- delete` / `-- prune`
//! for one part). `STRATA_BENCH_DIR=DIR` puts the ~12 GiB of scratch files
//! elsewhere than the system temp directory.
//!
//! - delete: delete the middle snapshot of a chain of 100, which holds
//!   256 MiB of changes (4,096 blocks of 64 KiB), the other layers 1 % of a
//!   4 GiB disk's blocks each (655 blocks), on a 4 GiB disk and on a 1 TiB
//!   disk (there the same 655 blocks per layer, spread over the whole
//!   terabyte: a layer of 1 % of a terabyte would not fit this machine).
//!   Reported: the delete's time, the peak extra space the repository used
//!   during it (its files' allocated bytes sampled every millisecond, the
//!   live layers' left out: the writer adds to them meanwhile), and
//!   the longest wait of a 4 KiB writer on the live disk during the delete
//!   against its longest wait before it. Baseline: `qemu-img commit` of a
//!   qcow2 overlay holding the same 256 MiB into its backing file (how a
//!   qcow2 chain drops a snapshot), its time and extra space. Goals: time
//!   and space do not grow with the disk, writer waits < 50 ms.
//! - prune: 10,000 snapshots of one disk (4 KiB changed before each), then
//!   `strata prune --keep-last 100` through the mount's daemon; its time,
//!   and `strata snapshot list` and `ls -l snapshots/` in the mount before
//!   and after, and `stat` of `live.img`. Baselines: `ls -l` of a plain
//!   directory of as many files, `rm` of 9,900 plain files, and
//!   `snapshot create` itself at 10 snapshots (goal: ≤ 1.5× at 10,000).

mod common;

use common::{ms, scatter, scratch, sh, Rng};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;

/// Runs `cmd` in bash and returns how long it took.
fn timed(cmd: &str) -> Duration {
    let t = Instant::now();
    sh(cmd);
    t.elapsed()
}

/// Bytes the repository's files occupy, but for live layers' (those with
/// a journal, `.log`): the benchmark's writer adds to those meanwhile.
fn du_stored(root: &Path) -> u64 {
    let layers = root.join("layers");
    let live: Vec<std::ffi::OsString> = fs::read_dir(&layers)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .filter_map(|p| p.file_stem().map(|s| s.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    du(root)
        - fs::read_dir(&layers)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.path()
                            .file_stem()
                            .is_some_and(|s| live.iter().any(|l| l == s))
                    })
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum::<u64>()
            })
            .unwrap_or(0)
}

/// Bytes the files under `dir` occupy.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => du(&e.path()),
            Ok(md) => md.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

struct DeleteFigures {
    time: Duration,
    peak_extra: u64,
    freed: u64,
    wait_during: Duration,
    wait_before: Duration,
}

/// Builds the chain of 100 on a disk of `size` and deletes its middle.
fn delete_middle(repo: &Repository, root: &Path, disk: &str, size: u64) -> DeleteFigures {
    let name = DiskName::parse(disk).unwrap();
    repo.create_disk(&name, size, BLOCK as u32).unwrap();
    let d = repo.disk(&name).unwrap();
    let mut rng = Rng(0x5eed ^ size);
    let per_layer = 4 * GIB / BLOCK / 100;
    for i in 0..100 {
        let count = if i == 50 {
            256 * MIB / BLOCK
        } else {
            per_layer
        };
        scatter(&d, &mut rng, count, BLOCK, 256);
        repo.snapshot(&name, Some(SnapName::parse(&format!("s{i}")).unwrap()))
            .unwrap();
    }
    let middle = SnapshotRef::parse(&format!("{disk}@s50")).unwrap();
    let stored = repo.snapshot_info(&middle).unwrap().stored_bytes;
    assert!(
        stored >= 250 * MIB,
        "the middle snapshot stores {stored} bytes"
    );
    sh("sync");

    let stop = AtomicBool::new(false);
    let epoch = Instant::now();
    let before = du_stored(root);
    let (time, peak, waits) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(du_stored(root));
                std::thread::sleep(Duration::from_millis(1));
            }
            peak
        });
        let writer = s.spawn(|| {
            let mut rng = Rng(99);
            let mut buf = vec![0u8; 4096];
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                rng.fill(&mut buf[..64]);
                let at = rng.next() % (d.size() / 4096) * 4096;
                let t = Instant::now();
                d.write_at(at, &buf).unwrap();
                out.push((t - epoch, t.elapsed()));
            }
            out
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        repo.delete_snapshots(&[middle]).unwrap();
        let time = t.elapsed();
        let window = (t - epoch, t - epoch + time);
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Relaxed);
        (
            time,
            sampler.join().unwrap(),
            (writer.join().unwrap(), window),
        )
    });
    let (lat, window) = waits;
    let wait_during = lat
        .iter()
        .filter(|(start, l)| *start + *l >= window.0 && *start <= window.1)
        .map(|(_, l)| *l)
        .max()
        .unwrap_or_default();
    let wait_before = lat
        .iter()
        .filter(|(start, _)| *start < window.0)
        .map(|(_, l)| *l)
        .max()
        .unwrap_or_default();
    let after = du_stored(root);
    DeleteFigures {
        time,
        peak_extra: peak.saturating_sub(before),
        freed: before.saturating_sub(after),
        wait_during,
        wait_before,
    }
}

/// `qemu-img commit` of an overlay holding 256 MiB in 4,096 scattered
/// blocks into its 4 GiB backing file, with an overlay above it.
fn qemu_commit(dir: &Path) -> (Duration, u64) {
    let (base, mid, top) = (
        dir.join("base.qcow2"),
        dir.join("mid.qcow2"),
        dir.join("top.qcow2"),
    );
    sh(&format!(
        "qemu-img create -q -f qcow2 '{}' 4G",
        base.display()
    ));
    sh(&format!(
        "qemu-img create -q -f qcow2 -F qcow2 -b '{}' '{}'",
        base.display(),
        mid.display()
    ));
    let mut rng = Rng(50);
    let blocks = 4 * GIB / BLOCK;
    let cmds: Vec<String> = (0..256 * MIB / BLOCK)
        .map(|i| {
            format!(
                "-c 'write -q -P {} {} 64k'",
                i % 250 + 1,
                rng.next() % blocks * BLOCK
            )
        })
        .collect();
    for chunk in cmds.chunks(512) {
        sh(&format!(
            "qemu-io -f qcow2 {} '{}'",
            chunk.join(" "),
            mid.display()
        ));
    }
    sh(&format!(
        "qemu-img create -q -f qcow2 -F qcow2 -b '{}' '{}'",
        mid.display(),
        top.display()
    ));
    sh("sync");
    let before = du(dir);
    let t = Instant::now();
    let mut child = Command::new("qemu-img")
        .args(["commit", "-q"])
        .arg(&mid)
        .spawn()
        .unwrap();
    // It copies into the base, then empties the overlay: the peak is
    // in between.
    let mut peak = before;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(du(dir));
        std::thread::sleep(Duration::from_millis(1));
    }
    let time = t.elapsed();
    (time, peak.saturating_sub(before))
}

fn bench_delete() {
    println!(
        "== delete the middle snapshot (256 MiB) of a chain of 100, 655 blocks of 64 KiB \
         changed per other layer"
    );
    let dir = scratch();
    let root = dir.path().join("repo");
    let repo = Repository::init(&root).unwrap();
    let small = delete_middle(&repo, &root, "four-gib", 4 * GIB);
    let large = delete_middle(&repo, &root, "one-tib", 1 << 40);
    let qemu_dir = dir.path().join("qemu");
    fs::create_dir(&qemu_dir).unwrap();
    let (qemu_time, qemu_extra) = qemu_commit(&qemu_dir);
    for (what, f) in [("4 GiB disk", &small), ("1 TiB disk", &large)] {
        println!(
            "{what}: delete {:.1} ms ({:.0}x faster than qemu-img commit {:.0} ms); \
             peak extra space {:.1} MiB (qemu-img commit: {:.1} MiB); given back {:.1} MiB; \
             longest 4 KiB write during it {:.2} ms, before it {:.2} ms (goal < 50 ms)",
            ms(f.time),
            qemu_time.as_secs_f64() / f.time.as_secs_f64(),
            ms(qemu_time),
            f.peak_extra as f64 / MIB as f64,
            qemu_extra as f64 / MIB as f64,
            f.freed as f64 / MIB as f64,
            ms(f.wait_during),
            ms(f.wait_before),
        );
    }
    println!(
        "1 TiB / 4 GiB delete time: {:.2} (goal: no growth with the disk)",
        large.time.as_secs_f64() / small.time.as_secs_f64()
    );
}

fn bench_prune() {
    println!("== 10,000 snapshots of one disk, then prune to the newest 100");
    let dir = scratch();
    let root = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let t = Instant::now();
    {
        let repo = Repository::init(&root).unwrap();
        let name = DiskName::parse("vm").unwrap();
        repo.create_disk(&name, 4 * GIB, BLOCK as u32).unwrap();
        let d = repo.disk(&name).unwrap();
        let mut rng = Rng(10_000);
        let mut buf = vec![0u8; 4096];
        let mut times = Vec::new();
        for i in 0..10_000 {
            rng.fill(&mut buf[..64]);
            d.write_at(rng.next() % (d.size() / 4096) * 4096, &buf)
                .unwrap();
            let s = Instant::now();
            repo.snapshot(&name, Some(SnapName::parse(&format!("s{i:05}")).unwrap()))
                .unwrap();
            times.push(s.elapsed());
        }
        let at_10 = common::median(times[5..25].to_vec());
        let at_10k = common::median(times[9_900..].to_vec());
        println!(
            "took 10,000 snapshots in {:.1} s: snapshot create median {:.2} ms at ~10 \
             snapshots, {:.2} ms at ~10,000: ratio {:.2} (goal <= 1.5)",
            t.elapsed().as_secs_f64(),
            ms(at_10),
            ms(at_10k),
            at_10k.as_secs_f64() / at_10.as_secs_f64()
        );
    }
    let repo_arg = format!("--repo '{}'", root.display());
    sh(&format!("{STRATA} {repo_arg} mount '{}'", mp.display()));
    let snaps = mp.join("vm").join("snapshots");
    let list = |what: &str| {
        let cli = timed(&format!("{STRATA} {repo_arg} snapshot list vm > /dev/null"));
        let ls = timed(&format!("ls -l '{}' > /dev/null", snaps.display()));
        let again = timed(&format!("ls -l '{}' > /dev/null", snaps.display()));
        let n = fs::read_dir(&snaps).unwrap().count();
        println!(
            "{what} ({n} snapshots): snapshot list {:.0} ms; ls -l snapshots/ {:.0} ms, \
             again {:.0} ms",
            ms(cli),
            ms(ls),
            ms(again)
        );
        (cli, ls)
    };
    let (_, ls_before) = list("before");
    let live = mp.join("vm").join("live.img");
    let getattr = timed(&format!("stat '{}' > /dev/null", live.display()));
    println!(
        "getattr of live.img with 10,000 snapshots: {:.1} ms (goal < 100 ms)",
        ms(getattr)
    );
    let prune = timed(&format!(
        "{STRATA} {repo_arg} prune vm --keep-last 100 > /dev/null"
    ));
    let (_, ls_after) = list("after");
    sh(&format!("{STRATA} umount '{}'", mp.display()));

    // Baselines: the same listing and deleting on plain files.
    let plain = dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    for i in 0..10_000 {
        fs::write(plain.join(format!("s{i:05}.img")), b"").unwrap();
    }
    sh("sync; echo 2 > /proc/sys/vm/drop_caches || true");
    let plain_ls = timed(&format!("ls -l '{}' > /dev/null", plain.display()));
    let plain_rm = timed(&format!(
        "cd '{}' && ls | head -9900 | xargs rm",
        plain.display()
    ));
    let plain_ls_100 = timed(&format!("ls -l '{}' > /dev/null", plain.display()));
    println!(
        "prune 10,000 -> 100: {:.0} ms (rm of 9,900 plain files: {:.0} ms, ratio {:.1})",
        ms(prune),
        ms(plain_rm),
        prune.as_secs_f64() / plain_rm.as_secs_f64()
    );
    println!(
        "ls -l of 10,000: {:.0} ms vs a plain directory {:.0} ms (ratio {:.1}); of 100: {:.1} ms \
         vs {:.1} ms",
        ms(ls_before),
        ms(plain_ls),
        ls_before.as_secs_f64() / plain_ls.as_secs_f64(),
        ms(ls_after),
        ms(plain_ls_100)
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    if want("delete") {
        bench_delete();
    }
    if want("prune") {
        if Path::new("/dev/fuse").exists() && strata::sys::effective_uid() == 0 {
            bench_prune();
        } else {
            println!("skipping prune: it mounts, which needs /dev/fuse and root");
        }
    }
}
