//! Store benchmarks (issue: the layered delta store). Each figure is printed
//! with its baseline from the same run and their ratio.
//!
//! Run: `cargo bench --bench store` (set `STRATA_BENCH_DIR` to put the
//! scratch repository elsewhere than the system temp directory; it needs
//! about 12 GiB free for the depth-1000 chain).
//!
//! 1. Snapshot create on a 1 GiB and a 1 TiB disk after the same recent
//!    writes: median of each, and the ratio (goal ≤ 1.5, median < 5 ms).
//! 2. Full read of a 1 GiB image (export to /dev/null) at chain depth 1,
//!    100 and 1000, each layer changing 1 % of blocks: throughput and the
//!    ratio depth-1000 / depth-1 (goal ≥ 0.95).
//! 3. Space of an incremental snapshot vs the bytes changed
//!    (goal ≤ 1.01 × changed + 64 KiB).
//! 4. Snapshot create right after discarding the whole disk (what mkfs
//!    does), 1 GiB vs 1 TiB disk (goal: ratio ≤ 1.5, median < 50 ms).
//! 5. The longest wait of a 4 KiB writer while `snapshot create` runs after
//!    2 GiB of writes, against its longest wait over as long without a
//!    snapshot (goal < 50 ms).
//!
//! `cargo bench --bench store -- 4 5` runs only the cases named.

mod common;

use common::{median, ms, Rng};
use std::path::Path;
use std::time::{Duration, Instant};

use strata::store::{export, DiskName, ExportTarget, ImageRead, Repository, SnapName, SnapshotRef};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 64 << 10;

fn name(s: &str) -> SnapName {
    SnapName::parse(s).unwrap()
}

/// Snapshot latency after `recent` bytes of fresh writes in whole blocks.
fn snapshot_latency(
    repo: &Repository,
    disk: &DiskName,
    size: u64,
    recent: u64,
    rounds: usize,
) -> Duration {
    repo.create_disk(disk, size, BLOCK as u32).unwrap();
    let d = repo.disk(disk).unwrap();
    let mut rng = Rng(7);
    let mut buf = vec![0u8; recent as usize];
    let mut times = Vec::new();
    for i in 0..rounds {
        rng.fill(&mut buf);
        // Spread the writes over the whole disk: the 1 TiB disk's are far apart.
        let blocks = recent / BLOCK;
        for b in 0..blocks {
            let at = (rng.next() % (size / BLOCK)) * BLOCK;
            d.write_at(at, &buf[(b * BLOCK) as usize..((b + 1) * BLOCK) as usize])
                .unwrap();
        }
        let t = Instant::now();
        repo.snapshot(disk, Some(name(&format!("s{i}")))).unwrap();
        times.push(t.elapsed());
    }
    median(times)
}

/// Drops the host page cache (needs root); false where it cannot.
fn drop_caches() -> bool {
    std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Warm: median of 5 exports with the page cache (and the repository's
/// mappings) kept. Cold: the repository is closed, the host page cache
/// dropped, and the repository opened again before each of 3 exports.
fn read_throughput(repo: &mut Option<Repository>, root: &Path, r: &SnapshotRef, cold: bool) -> f64 {
    let null = Path::new("/dev/null");
    let mut times = Vec::new();
    for i in 0..if cold { 3 } else { 6 } {
        if cold {
            *repo = None; // unmap everything, so the cache can really be dropped
            if !drop_caches() {
                *repo = Some(Repository::open(root).unwrap());
                return f64::NAN;
            }
            *repo = Some(Repository::open(root).unwrap());
        }
        let img = repo.as_ref().unwrap().open_snapshot(r).unwrap();
        let t = Instant::now();
        let file = std::fs::OpenOptions::new().write(true).open(null).unwrap();
        let target = ExportTarget {
            file: &file,
            name: null,
        };
        export(&img, &target, &mut |_, _| {}).unwrap();
        if cold || i > 0 {
            times.push(t.elapsed());
        }
    }
    img_size(&times, r)
}

fn img_size(times: &[Duration], _r: &SnapshotRef) -> f64 {
    GIB as f64 / median(times.to_vec()).as_secs_f64() / 1e9
}

fn main() {
    let only: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let run = |case: u32| only.is_empty() || only.contains(&case);
    let base = std::env::var_os("STRATA_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let root = dir.path().join("repo");
    let mut repo = Some(Repository::init(&root).unwrap());
    if run(1) {
        snapshot_vs_disk_size(repo.as_ref().unwrap());
    }
    if run(2) {
        read_by_depth(&mut repo, &root);
    }
    if run(3) {
        space(repo.as_ref().unwrap());
    }
    if run(4) {
        snapshot_after_discard(repo.as_ref().unwrap());
    }
    if run(5) {
        writer_wait_during_snapshot(repo.as_ref().unwrap());
    }
}

fn snapshot_vs_disk_size(repo: &Repository) {
    println!("== 1. snapshot create, same recent writes, 1 GiB vs 1 TiB disk");
    for recent in [0, 1 << 20, 4 << 20] {
        let small = snapshot_latency(
            repo,
            &DiskName::parse(&format!("g{recent}")).unwrap(),
            GIB,
            recent,
            31,
        );
        let large = snapshot_latency(
            repo,
            &DiskName::parse(&format!("t{recent}")).unwrap(),
            GIB << 10,
            recent,
            31,
        );
        println!(
            "recent writes {:>5} KiB: 1 GiB median {:.2} ms, 1 TiB median {:.2} ms, ratio 1T/1G {:.2}",
            recent >> 10,
            ms(small),
            ms(large),
            large.as_secs_f64() / small.as_secs_f64()
        );
    }
}

fn read_by_depth(slot: &mut Option<Repository>, root: &Path) {
    println!("== 2. full read of a 1 GiB image by chain depth (1 % of blocks per layer)");
    let repo = slot.as_ref().unwrap();
    let disk = DiskName::parse("chain").unwrap();
    repo.create_disk(&disk, GIB, BLOCK as u32).unwrap();
    let d = repo.disk(&disk).unwrap();
    let mut rng = Rng(99);
    let mut buf = vec![0u8; 8 << 20];
    for off in (0..GIB).step_by(buf.len()) {
        rng.fill(&mut buf);
        d.write_at(off, &buf).unwrap();
    }
    repo.snapshot(&disk, Some(name("d1"))).unwrap();
    let blocks = GIB / BLOCK;
    let per_layer = blocks / 100;
    let mut block = vec![0u8; BLOCK as usize];
    let t = Instant::now();
    for depth in 2..=1000u64 {
        for _ in 0..per_layer {
            rng.fill(&mut block[..64]);
            d.write_at((rng.next() % blocks) * BLOCK, &block).unwrap();
        }
        repo.snapshot(&disk, Some(name(&format!("d{depth}"))))
            .unwrap();
    }
    println!("(built 1000 layers in {:.1} s)", t.elapsed().as_secs_f64());
    let snap = |n: &str| SnapshotRef {
        disk: disk.clone(),
        snap: name(n),
    };
    drop(d);
    for (label, cold) in [("page cache warm", false), ("page cache dropped", true)] {
        let d1 = read_throughput(slot, root, &snap("d1"), cold);
        let d100 = read_throughput(slot, root, &snap("d100"), cold);
        let d1000 = read_throughput(slot, root, &snap("d1000"), cold);
        println!("{label}:");
        println!("  depth    1: {d1:.2} GB/s");
        println!(
            "  depth  100: {d100:.2} GB/s  ratio to depth 1: {:.3}",
            d100 / d1
        );
        println!(
            "  depth 1000: {d1000:.2} GB/s  ratio to depth 1: {:.3}",
            d1000 / d1
        );
    }
}

fn space(repo: &Repository) {
    println!("== 3. space of an incremental snapshot vs bytes changed");
    let mut rng = Rng(1234);
    let sp = DiskName::parse("space").unwrap();
    repo.create_disk(&sp, 4 * GIB, BLOCK as u32).unwrap();
    let d = repo.disk(&sp).unwrap();
    let cases: [(&str, u64, u64, u64); 3] = [
        // (what, offset, length, count)
        ("aligned 64 MiB in whole blocks", 0, 64 << 20, 1),
        ("one unaligned 10 MiB run", 1000, 10 << 20, 1),
        ("1000 unaligned 8 KiB writes", 0, 8 << 10, 1000),
    ];
    for (i, (what, offset, len, count)) in cases.into_iter().enumerate() {
        let mut data = vec![0u8; len as usize];
        rng.fill(&mut data);
        for k in 0..count {
            let at = if count == 1 {
                offset
            } else {
                (rng.next() % (4 * GIB - len)) / 512 * 512 + 512 * (k % 7)
            };
            d.write_at(at.min(4 * GIB - len), &data).unwrap();
        }
        let changed = len * count;
        let s = repo.snapshot(&sp, Some(name(&format!("sp{i}")))).unwrap();
        let limit = changed as f64 * 1.01 + 65536.0;
        println!(
            "{what}: changed {changed} B, stored {} B, ratio {:.3}, goal <= {:.0} B: {}",
            s.stored_bytes,
            s.stored_bytes as f64 / changed as f64,
            limit,
            if (s.stored_bytes as f64) <= limit {
                "met"
            } else {
                "not met (copy-up of 64 KiB blocks)"
            }
        );
    }
}

/// Median `snapshot create` right after a discard of the whole disk (with
/// a little metadata written after it, as mkfs does), 31 rounds.
fn discard_then_snapshot(repo: &Repository, disk: &DiskName, size: u64) -> Duration {
    repo.create_disk(disk, size, BLOCK as u32).unwrap();
    let d = repo.disk(disk).unwrap();
    let mut rng = Rng(5);
    let mut meta = vec![0u8; BLOCK as usize];
    let mut times = Vec::new();
    for i in 0..31 {
        d.discard(0, size).unwrap();
        for k in 0..16u64 {
            rng.fill(&mut meta);
            d.write_at(k * (size / 16), &meta).unwrap();
        }
        let t = Instant::now();
        repo.snapshot(disk, Some(name(&format!("x{i}")))).unwrap();
        times.push(t.elapsed());
    }
    median(times)
}

fn snapshot_after_discard(repo: &Repository) {
    println!("== 4. snapshot create after discarding the whole disk, 1 GiB vs 1 TiB disk");
    let small = discard_then_snapshot(repo, &DiskName::parse("dg").unwrap(), GIB);
    let large = discard_then_snapshot(repo, &DiskName::parse("dt").unwrap(), GIB << 10);
    println!(
        "1 GiB median {:.2} ms, 1 TiB median {:.2} ms, ratio 1T/1G {:.2} (goal <= 1.5, median < 50 ms)",
        ms(small),
        ms(large),
        large.as_secs_f64() / small.as_secs_f64()
    );
}

/// Runs 4 KiB random writes on `d` until `stop`, returning each write's
/// latency and when it started, relative to `epoch`.
fn time_writes(
    d: &strata::store::Disk,
    stop: &std::sync::atomic::AtomicBool,
    epoch: Instant,
) -> Vec<(Duration, Duration)> {
    let mut rng = Rng(77);
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        rng.fill(&mut buf[..64]);
        let at = (rng.next() % (d.size() / 4096)) * 4096;
        let t = Instant::now();
        d.write_at(at, &buf).unwrap();
        out.push((t - epoch, t.elapsed()));
    }
    out
}

fn writer_wait_during_snapshot(repo: &Repository) {
    println!("== 5. a 4 KiB writer's longest wait during snapshot create after 2 GiB of writes");
    use std::sync::atomic::{AtomicBool, Ordering};
    let disk = DiskName::parse("busy").unwrap();
    repo.create_disk(&disk, 4 * GIB, BLOCK as u32).unwrap();
    let d = repo.disk(&disk).unwrap();
    let mut rng = Rng(3);
    let mut buf = vec![0u8; 1 << 20];
    for round in 0..5 {
        for off in (0..2 * GIB).step_by(buf.len()) {
            rng.fill(&mut buf[..4096]);
            d.write_at(off, &buf).unwrap();
        }
        let stop = AtomicBool::new(false);
        let epoch = Instant::now();
        let (lat, snap_time, window) = std::thread::scope(|s| {
            let w = s.spawn(|| time_writes(&d, &stop, epoch));
            // The writer alone first (the baseline), then with a snapshot.
            std::thread::sleep(Duration::from_millis(300));
            let t = Instant::now();
            repo.snapshot(&disk, Some(name(&format!("busy{round}"))))
                .unwrap();
            let snap_time = t.elapsed();
            let window = (t - epoch, t.elapsed() + (t - epoch));
            stop.store(true, Ordering::Relaxed);
            (w.join().unwrap(), snap_time, window)
        });
        let during = lat
            .iter()
            .filter(|(start, l)| *start + *l >= window.0 && *start <= window.1)
            .map(|(_, l)| *l)
            .max()
            .unwrap_or_default();
        let before = lat
            .iter()
            .filter(|(start, _)| *start < window.0)
            .map(|(_, l)| *l)
            .max()
            .unwrap_or_default();
        println!(
            "round {round}: snapshot {:.1} ms; longest 4 KiB write during it {:.2} ms, \
             before it {:.2} ms (ratio {:.1}); {} writes (goal < 50 ms)",
            ms(snap_time),
            ms(during),
            ms(before),
            during.as_secs_f64() / before.as_secs_f64().max(1e-9),
            lat.len()
        );
    }
}
