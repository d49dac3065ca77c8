//! What checking every block on read costs (issue: data that proves
//! itself). A snapshot of a 2 GiB disk at depth 10 (10 % of the 64 KiB
//! blocks rewritten in each layer, so reads span many layer files), its
//! layers in the page cache: the worst case for the check, which is then
//! all CPU. Sequential 1 MiB reads of the whole image through the store,
//! with checks and without, alternating, median of 5 each. Goal: ≤ 5 %.
//!
//! Run: `cargo bench --bench integrity`.

mod common;

use common::{median, Rng};
use std::time::{Duration, Instant};

use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

const GIB: u64 = 1 << 30;
const BLOCK: u64 = 64 << 10;

fn read_all(img: &dyn ImageRead) -> Duration {
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut at = 0;
    while at < img.size() {
        let n = img.read_at(at, &mut buf).unwrap();
        std::hint::black_box(&buf[..n]);
        at += n as u64;
    }
    t.elapsed()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(&dir.path().join("r")).unwrap();
    let vm = DiskName::parse("vm").unwrap();
    let size = 2 * GIB;
    repo.create_disk(&vm, size, BLOCK as u32).unwrap();
    let d = repo.disk(&vm).unwrap();
    let mut rng = Rng(0xc4ec);
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..size).step_by(1 << 20) {
        rng.fill(&mut buf);
        d.write_at(at, &buf).unwrap();
    }
    let blocks = size / BLOCK;
    let mut block = vec![0u8; BLOCK as usize];
    for i in 0..10 {
        repo.snapshot(&vm, Some(SnapName::parse(&format!("s{i}")).unwrap()))
            .unwrap();
        for _ in 0..blocks / 10 {
            rng.fill(&mut block[..64]);
            d.write_at(rng.next() % blocks * BLOCK, &block).unwrap();
        }
    }
    repo.snapshot(&vm, Some(SnapName::parse("top").unwrap()))
        .unwrap();
    let img = repo
        .open_snapshot(&SnapshotRef::parse("vm@top").unwrap())
        .unwrap();
    read_all(&img); // into the page cache
    let (mut on, mut off) = (vec![], vec![]);
    for _ in 0..5 {
        repo.set_read_checks(true);
        on.push(read_all(&img));
        repo.set_read_checks(false);
        off.push(read_all(&img));
    }
    repo.set_read_checks(true);
    let (on, off) = (median(on), median(off));
    let rate = |d: Duration| size as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "2 GiB snapshot at depth 10, cached, 1 MiB reads: checked {:.0} ms ({:.0} MiB/s), unchecked {:.0} ms ({:.0} MiB/s): checking costs {:+.1} %",
        on.as_secs_f64() * 1e3,
        rate(on),
        off.as_secs_f64() * 1e3,
        rate(off),
        (on.as_secs_f64() / off.as_secs_f64() - 1.0) * 100.0
    );
}
