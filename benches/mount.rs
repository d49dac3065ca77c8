//! Mount benchmarks (issue: the mount). Every figure is printed with a
//! baseline from the same run and the ratio between them.
//!
//! Run as root: `cargo bench --bench mount` (optionally followed by
//! `-- read`, `-- checks` or `-- write` for one part). `STRATA_BENCH_DIR=DIR`
//! puts the ~30 GiB of scratch files elsewhere than the system temp
//! directory.
//!
//! - read: sequential read of a 4 GiB snapshot image through the mount vs a
//!   minimal FUSE file system serving zeros with the same settings (the FUSE
//!   ceiling) vs the raw file on the host; re-read with the kernel cache
//!   kept vs the raw file. Goals: first read ≥ 0.9× the ceiling, cached
//!   re-read ≥ 0.8× the raw file.
//! - checks: the layered image's first read with every block checked
//!   against its CRC-32C and without, alternating in one in-process mount
//!   of the same repository. Goal: checking costs <= 5 %.
//! - write: sequential 1 MiB and random 4 KiB writes to live.img vs the raw
//!   file.
//!
//! The copy of a deep snapshot against `qemu-img convert` of a qcow2 chain
//! (once the `chain` part here) is the `copy` case of `benches/deep.rs`.

mod common;

use common::{drop_all_caches, median, read_all, Rng};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use std::sync::Arc;
use strata::fs::daemon::{session_config, tune_readahead, MountOptions};
use strata::fs::StrataFs;
use strata::store::{DiskName, Repository, SnapName};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
const GIB: u64 = 1 << 30;
const SIZE: u64 = 4 * GIB;
const BLOCK: u64 = 64 << 10;

fn strata(repo: &Path, args: &[&str]) {
    let out = Command::new(STRATA)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("strata");
    assert!(
        out.status.success(),
        "strata {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// First read: the file's own page cache dropped before each of 3 runs.
fn first_read(path: &Path) -> f64 {
    median(
        (0..3)
            .map(|_| {
                strata::sys::drop_cached_pages(&File::open(path).unwrap()).unwrap();
                read_all(path)
            })
            .collect(),
    )
}

fn cached_read(path: &Path) -> f64 {
    read_all(path);
    median((0..3).map(|_| read_all(path)).collect())
}

struct Bench {
    _dir: tempfile::TempDir,
    work: PathBuf,
    repo: PathBuf,
    mp: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = Command::new(STRATA).arg("umount").arg(&self.mp).output();
    }
}

fn setup() -> Bench {
    let dir = match std::env::var_os("STRATA_BENCH_DIR") {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .unwrap();
    let work = dir.path().to_owned();
    let repo = work.join("repo");
    let mp = work.join("mnt");
    fs::create_dir(&mp).unwrap();
    strata(&repo, &["init"]);
    // The same 4 GiB of data in a snapshot and in a raw file.
    {
        let r = Repository::open(&repo).unwrap();
        let name = DiskName::parse("data").unwrap();
        r.create_disk(&name, SIZE, BLOCK as u32).unwrap();
        let d = r.disk(&name).unwrap();
        let mut raw = File::create(work.join("raw.img")).unwrap();
        let mut rng = Rng(2026);
        let mut buf = vec![0u8; 8 << 20];
        for off in (0..SIZE).step_by(buf.len()) {
            rng.fill(&mut buf);
            d.write_at(off, &buf).unwrap();
            raw.write_all(&buf).unwrap();
        }
        raw.sync_all().unwrap();
        r.snapshot(&name, Some(SnapName::parse("full").unwrap()))
            .unwrap();
        // The same data over two layers: 1 % of its blocks rewritten with
        // what they already hold, so the image is no longer one file and
        // the daemon serves it (no passthrough).
        let mut block = vec![0u8; BLOCK as usize];
        let raw = File::open(work.join("raw.img")).unwrap();
        for _ in 0..SIZE / BLOCK / 100 {
            let off = rng.next() % (SIZE / BLOCK) * BLOCK;
            raw.read_exact_at(&mut block, off).unwrap();
            d.write_at(off, &block).unwrap();
        }
        r.snapshot(&name, Some(SnapName::parse("layered").unwrap()))
            .unwrap();
    }
    strata(&repo, &["mount", mp.to_str().unwrap()]);
    Bench {
        _dir: dir,
        work,
        repo,
        mp,
    }
}

fn bench_read(b: &Bench) {
    println!("== read: 4 GiB snapshot image, 1 MiB sequential reads");
    let zmp = b.work.join("zero");
    fs::create_dir_all(&zmp).unwrap();
    let zero = common::zerofs::mount(&zmp, SIZE, false);
    let (zimg, raw) = (zmp.join(common::zerofs::NAME), b.work.join("raw.img"));
    let r = cached_read(&raw);
    let z = first_read(&zimg);
    println!("baselines: zero-fs FUSE ceiling {z:.2} GB/s, raw file in the host cache {r:.2} GB/s");
    let images = [
        ("flat image (kernel passthrough)", "full"),
        ("layered image (served by the daemon)", "layered"),
    ];
    for (what, name) in images {
        let snap = b.mp.join(format!("data/snapshots/{name}.img"));
        read_all(&snap); // its layer files in the host cache, like the raw file
        let s = first_read(&snap);
        let sc = cached_read(&snap);
        println!("{what}:");
        println!(
            "  first read {s:.2} GB/s: {:.3} of the FUSE ceiling (goal >= 0.9), {:.3} of the raw file",
            s / z,
            s / r
        );
        println!(
            "  re-read, kernel cache kept {sc:.2} GB/s: {:.3} of the raw file (goal >= 0.8)",
            sc / r
        );
    }
    let cold = |p: &Path| {
        median(
            (0..2)
                .map(|_| {
                    drop_all_caches();
                    read_all(p)
                })
                .collect(),
        )
    };
    let flat = b.mp.join("data/snapshots/full.img");
    let layered = b.mp.join("data/snapshots/layered.img");
    let (fc, lc, rc) = (cold(&flat), cold(&layered), cold(&raw));
    println!(
        "first read, host cache dropped too: flat {fc:.2} GB/s ({:.3} of raw), layered {lc:.2} GB/s ({:.3} of raw), raw file {rc:.2} GB/s",
        fc / rc,
        lc / rc
    );
    drop(zero);
}

/// The cost of checking every block read against its checksum, measured
/// where the issue sets its goal: the first read of a layered image
/// through the mount. The CLI's daemon cannot turn its checks off, so the
/// repository is mounted here, in this process, and the checks toggled
/// between runs on the same mount.
fn bench_checks(b: &Bench) {
    println!(
        "== read checks: first read of the 4 GiB layered image, checked vs unchecked, same mount"
    );
    strata(&b.repo, &["umount", b.mp.to_str().unwrap()]);
    let repo = Arc::new(Repository::open(&b.repo).unwrap());
    let mp = b.work.join("checks");
    fs::create_dir_all(&mp).unwrap();
    let opts = MountOptions {
        read_only: true,
        checked: true,
        ..MountOptions::default()
    };
    let session = fuser::spawn_mount(
        StrataFs::new(repo.clone(), true),
        &mp,
        &session_config("strata-bench", &opts),
    )
    .unwrap();
    tune_readahead(&mp);
    let img = mp.join("data/snapshots/layered.img");
    read_all(&img); // its layer files in the host cache
    let (mut on, mut off) = (vec![], vec![]);
    for _ in 0..5 {
        repo.set_read_checks(true);
        on.push(first_read(&img));
        repo.set_read_checks(false);
        off.push(first_read(&img));
    }
    repo.set_read_checks(true);
    drop(session);
    drop(repo);
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "runs, GB/s: checked {}; unchecked {}",
        list(&on),
        list(&off)
    );
    let (on, off) = (median(on), median(off));
    println!(
        "checked {on:.2} GB/s, unchecked {off:.2} GB/s: checking costs {:+.1} % (goal <= 5 %)",
        (off / on - 1.0) * 100.0
    );
    strata(&b.repo, &["mount", b.mp.to_str().unwrap()]);
}

/// Writes through `path` and returns (seq GB/s, random 4 KiB IOPS).
fn write_pattern(path: &Path, random_ops: u64) -> (f64, f64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    let mut rng = Rng(7);
    let mut buf = vec![0u8; 1 << 20];
    rng.fill(&mut buf);
    let t = Instant::now();
    for off in (0..SIZE).step_by(buf.len()) {
        f.write_all_at(&buf, off).unwrap();
    }
    f.sync_all().unwrap();
    let seq = SIZE as f64 / t.elapsed().as_secs_f64() / 1e9;
    let t = Instant::now();
    for _ in 0..random_ops {
        let off = rng.next() % (SIZE / 4096) * 4096;
        f.write_all_at(&buf[..4096], off).unwrap();
    }
    f.sync_all().unwrap();
    (seq, random_ops as f64 / t.elapsed().as_secs_f64())
}

fn bench_write(b: &Bench) {
    println!("== write: 4 GiB of 1 MiB sequential writes, then 40,000 random 4 KiB writes, each pass ending in fsync");
    strata(&b.repo, &["disk", "create", "w", "--size", "4G"]);
    let raw = b.work.join("raw-w.img");
    File::create(&raw).unwrap().set_len(SIZE).unwrap();
    let live = b.mp.join("w/live.img");
    // The write-through ceiling: a FUSE file system that drops what it is
    // sent, written through the page cache as live.img is (it opens with
    // KEEP_CACHE, live.img with no flag: the same for writes).
    let zmp = b.work.join("null-w");
    fs::create_dir_all(&zmp).unwrap();
    let zero = common::zerofs::mount(&zmp, SIZE, false);
    let null = zmp.join(common::zerofs::NAME);
    // Alternate the three, twice, so none always runs after another's
    // dirty pages; keep the median. strata's first pass fills live.img's
    // blocks, its second overwrites them.
    let (mut sseq, mut srand, mut rseq, mut rrand) = (vec![], vec![], vec![], vec![]);
    let (mut nseq, mut nrand) = (vec![], vec![]);
    for _ in 0..2 {
        let (a, b) = write_pattern(&live, 40_000);
        sseq.push(a);
        srand.push(b);
        let (a, b) = write_pattern(&null, 40_000);
        nseq.push(a);
        nrand.push(b);
        let (a, b) = write_pattern(&raw, 40_000);
        rseq.push(a);
        rrand.push(b);
    }
    drop(zero);
    println!(
        "runs: strata {sseq:.2?} GB/s, {srand:.0?} IOPS; null FUSE {nseq:.2?} GB/s, {nrand:.0?} IOPS"
    );
    let (sseq, srand, rseq, rrand) = (median(sseq), median(srand), median(rseq), median(rrand));
    let (nseq, nrand) = (median(nseq), median(nrand));
    println!(
        "sequential 1 MiB: strata {sseq:.2} GB/s, null FUSE (write-through ceiling) {nseq:.2} GB/s \
         ({:.2}x, goal >= 0.8), raw file {rseq:.2} GB/s ({:.2}x)",
        sseq / nseq,
        sseq / rseq
    );
    println!(
        "random 4 KiB: strata {srand:.0} IOPS, null FUSE {nrand:.0} IOPS ({:.2}x), raw file \
         {rrand:.0} IOPS ({:.2}x, goal >= 1.0)",
        srand / nrand,
        srand / rrand
    );
    // Right after a snapshot every first write to a block copies it up.
    strata(&b.repo, &["snapshot", "create", "w", "--name", "s"]);
    let f = OpenOptions::new().write(true).open(&live).unwrap();
    let mut rng = Rng(11);
    let t = Instant::now();
    for _ in 0..40_000u64 {
        let off = rng.next() % (SIZE / 4096) * 4096;
        f.write_all_at(&[1u8; 4096], off).unwrap();
    }
    f.sync_all().unwrap();
    let cu = 40_000.0 / t.elapsed().as_secs_f64();
    println!("random 4 KiB right after a snapshot (copy-up of 64 KiB blocks): strata {cu:.0} IOPS, ratio to raw {:.3}", cu / rrand);
}

fn main() {
    if !Path::new("/dev/fuse").exists() || strata::sys::effective_uid() != 0 {
        println!("skipping: the mount benchmarks need /dev/fuse and root");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let b = setup();
    if want("read") {
        bench_read(&b);
    }
    if want("checks") {
        bench_checks(&b);
    }
    if want("write") {
        bench_write(&b);
    }
}
