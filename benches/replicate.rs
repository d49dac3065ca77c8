//! Replication benchmarks (issue: copy history to a second site). Every
//! figure is printed with a baseline from the same run and the ratio.
//!
//! Run as root: `cargo bench --bench replicate` (or `-- diff` / `-- send`
//! for one part). `STRATA_BENCH_DIR=DIR` puts the ~12 GiB of scratch files
//! elsewhere than the system temp directory.
//!
//! - diff: a 1 TiB disk (64 KiB blocks) and 101 snapshots, 1 % of its
//!   blocks changed between the first and the last (1,678 random blocks
//!   per snapshot); `strata diff` of the two, 100 layers apart. Baselines:
//!   the same diff on a 4 GiB disk with the same changes (the disk's size
//!   must not matter), and a diff of two neighbours (1 layer apart).
//!   Goal: under 1 s.
//! - send: 1 GiB of changes (16,384 random 64 KiB blocks of random data),
//!   `strata send --from | strata --repo B receive` between two
//!   repositories on one file system, data in the page cache. Baseline:
//!   `cp --reflink=never` of a 1 GiB file of the same bytes on the same
//!   file system, then `sync` of the copy (a receive syncs what it
//!   wrote). Goal: ≥ 0.8× cp's speed.

mod common;

use common::{median, ms, scatter, scratch, sh, Rng};
use std::time::{Duration, Instant};

use strata::store::{DiskName, ImageRef, Repository, SnapName, SnapshotRef};

const STRATA: &str = env!("CARGO_BIN_EXE_strata");
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const BLOCK: u64 = 64 << 10;

/// Builds a disk of `size` with 101 snapshots, `per` blocks changed before
/// each after the first, and times diffs of the first and last (median
/// of 5) and of two neighbours.
fn diff_chain(repo: &Repository, disk: &str, size: u64, per: u64) -> (Duration, Duration, u64) {
    let name = DiskName::parse(disk).unwrap();
    repo.create_disk(&name, size, BLOCK as u32).unwrap();
    let d = repo.disk(&name).unwrap();
    let mut rng = Rng(0xd1ff ^ size);
    for i in 0..=100 {
        if i > 0 {
            scatter(&d, &mut rng, per, BLOCK, 256);
        }
        repo.snapshot(&name, Some(SnapName::parse(&format!("s{i}")).unwrap()))
            .unwrap();
    }
    let img = |s: &str| ImageRef::Snapshot(SnapshotRef::parse(&format!("{disk}@{s}")).unwrap());
    let time = |a: &str, b: &str| {
        median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let d = repo.diff(Some(&img(a)), &img(b)).unwrap();
                    std::hint::black_box(d.ranges());
                    t.elapsed()
                })
                .collect(),
        )
    };
    let far = time("s0", "s100");
    let near = time("s50", "s51");
    let bytes = repo.diff(Some(&img("s0")), &img("s100")).unwrap().bytes();
    (far, near, bytes)
}

fn bench_diff() {
    let dir = scratch();
    let repo = Repository::init(&dir.path().join("r")).unwrap();
    // 1 % of a terabyte's 64 KiB blocks, over 100 snapshots.
    let per = (1u64 << 40) / BLOCK / 100 / 100;
    println!("diff: 101 snapshots, {per} random 64 KiB blocks changed before each");
    let (tb_far, tb_near, tb_bytes) = diff_chain(&repo, "tb", 1 << 40, per);
    let (gb_far, _, _) = diff_chain(&repo, "gb", 4 * GIB, per);
    println!(
        "  1 TiB disk, s0..s100 ({} MiB may differ): {:.1} ms (goal < 1000 ms)",
        tb_bytes / MIB,
        ms(tb_far)
    );
    println!(
        "  4 GiB disk, same changes:   {:.1} ms   1 TiB / 4 GiB = {:.2}",
        ms(gb_far),
        ms(tb_far) / ms(gb_far)
    );
    println!(
        "  1 TiB disk, s50..s51:       {:.2} ms   100 layers / 1 layer = {:.0}",
        ms(tb_near),
        ms(tb_far) / ms(tb_near)
    );
}

fn bench_send() {
    let dir = scratch();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    {
        let repo = Repository::init(&a).unwrap();
        let name = DiskName::parse("vm").unwrap();
        repo.create_disk(&name, 4 * GIB, BLOCK as u32).unwrap();
        let d = repo.disk(&name).unwrap();
        let mut rng = Rng(0x5e7d);
        scatter(&d, &mut rng, 1024, BLOCK, 256);
        repo.snapshot(&name, Some(SnapName::parse("s0").unwrap()))
            .unwrap();
        scatter(&d, &mut rng, GIB / BLOCK, BLOCK, BLOCK as usize);
        repo.snapshot(&name, Some(SnapName::parse("s1").unwrap()))
            .unwrap();
    }
    sh(&format!("'{STRATA}' --repo '{}' init", b.display()));
    sh(&format!(
        "'{STRATA}' --repo '{a}' send vm@s0 2>/dev/null | '{STRATA}' --repo '{b}' receive",
        a = a.display(),
        b = b.display()
    ));
    // The baseline's bytes: a 1 GiB file of random data.
    let src = dir.path().join("src.bin");
    sh(&format!(
        "head -c {} /dev/urandom > '{}' && sync",
        GIB,
        src.display()
    ));
    let mut pipe = vec![];
    let mut cp = vec![];
    for round in 0..3 {
        let dst = dir.path().join(format!("copy{round}.bin"));
        let t = Instant::now();
        sh(&format!(
            "cp --reflink=never '{}' '{}' && sync '{}'",
            src.display(),
            dst.display(),
            dst.display()
        ));
        cp.push(t.elapsed());
        std::fs::remove_file(&dst).unwrap();
        sh(&format!(
            "'{STRATA}' --repo '{}' snapshot delete vm@s1 2>/dev/null || true",
            b.display()
        ));
        let t = Instant::now();
        sh(&format!(
            "'{STRATA}' --repo '{a}' send vm@s1 --from vm@s0 2>/dev/null | '{STRATA}' --repo '{b}' receive",
            a = a.display(),
            b = b.display()
        ));
        pipe.push(t.elapsed());
    }
    let (pipe, cp) = (median(pipe), median(cp));
    let rate = |d: Duration| GIB as f64 / MIB as f64 / d.as_secs_f64();
    println!("send | receive of 1 GiB of changes (median of 3):");
    println!(
        "  strata: {:.0} ms ({:.0} MiB/s)   cp --reflink=never + sync: {:.0} ms ({:.0} MiB/s)   speed ratio {:.2} (goal >= 0.8)",
        ms(pipe),
        rate(pipe),
        ms(cp),
        rate(cp),
        cp.as_secs_f64() / pipe.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = |name: &str| {
        let named: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        named.is_empty() || named.iter().any(|a| *a == name)
    };
    if want("diff") {
        bench_diff();
    }
    if want("send") {
        bench_send();
    }
}
