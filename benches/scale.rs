//! Scale (issue: deep snapshots as fast as the hardware allows). A 1 TiB
//! disk with 1,000 snapshots, each changing 16 MiB in random 64 KiB blocks
//! (16 GiB in all), built through the store's API; then mounted, and every
//! snapshot image opened in turn and read at 1,000 random 64 KiB offsets.
//!
//! Reported, each beside its goal:
//! - the daemon's resident memory, sampled after every image and at its
//!   peak (VmHWM): goal < 256 MiB;
//! - the slowest first byte (a block the snapshot wrote) after the open:
//!   goal < 1 s;
//! - reading every data block of the deepest image in offset order
//!   against as many reads of the first snapshot's blocks, both through
//!   the daemon (`-o checked`, O_DIRECT, so neither the kernel's copy of
//!   the image nor passthrough serves them) with the layer files in the
//!   host cache: goal within 10 %.
//!
//! Run as root: `cargo bench --bench scale`. `SCALE_SNAPSHOTS=N` builds N
//! snapshots instead of 1,000; `STRATA_BENCH_DIR=DIR` puts the ~16 GiB of
//! layers elsewhere than the system temp directory; `SCALE_KEEP=DIR`
//! builds the repository in DIR once and reuses it on later runs.
//!
//! Beside the mount's figure, the same two reads straight through the
//! store (no FUSE) are timed: what the store and the host's memory cost
//! at depth 1,000, apart from what the mount adds.

mod common;

use common::{ms, scratch, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

const TIB: u64 = 1 << 40;
const BLOCK: u64 = 64 << 10;
/// Blocks each snapshot changes: 16 MiB.
const PER_SNAPSHOT: usize = 256;
const READS_PER_IMAGE: usize = 1_000;

/// A block-aligned buffer, as O_DIRECT wants.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, layout }
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: ptr points at layout.size() bytes this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The daemon's resident memory and its peak, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn open_direct(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap()
}

/// Reads each block of `blocks` once, in order; returns the time taken.
fn read_blocks(path: &Path, blocks: &[u64], buf: &mut Aligned) -> Duration {
    let f = open_direct(path);
    let t = Instant::now();
    for &b in blocks {
        f.read_exact_at(buf.buf(), b * BLOCK).unwrap();
    }
    t.elapsed()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn main() {
    if !Path::new("/dev/fuse").exists() || strata::sys::effective_uid() != 0 {
        println!("skipping scale: it mounts, which needs /dev/fuse and root");
        return;
    }
    let snapshots: usize = std::env::var("SCALE_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    println!(
        "== a 1 TiB disk, {snapshots} snapshots of {} MiB each in random 64 KiB blocks",
        (PER_SNAPSHOT as u64 * BLOCK) >> 20
    );
    let (_scratch, dir) = match std::env::var_os("SCALE_KEEP") {
        Some(k) => (None, std::path::PathBuf::from(k)),
        None => {
            let t = scratch();
            let d = t.path().to_owned();
            (Some(t), d)
        }
    };
    let root = dir.join("repo");
    let mp = dir.join("mnt");
    // What a kept repository holds: the number of snapshots it was built
    // with (the blocks follow from it).
    let built_marker = dir.join("built");
    let reuse = fs::read_to_string(&built_marker).is_ok_and(|n| n == snapshots.to_string());
    if !reuse {
        let _ = fs::remove_file(&built_marker);
        let _ = fs::remove_dir_all(&root);
    }
    fs::create_dir_all(&mp).unwrap();
    let blocks_of_disk = TIB / BLOCK;
    let mut rng = Rng(0x5ca1e);
    let mut firsts = Vec::new(); // a block each snapshot wrote, for its first byte
    let mut first_blocks = Vec::new(); // what the first snapshot wrote
    let mut all = BTreeMap::new(); // every block of the deepest image → its snapshot
    let t = Instant::now();
    {
        // A kept repository is not written again; the same random numbers
        // are drawn, so the blocks chosen are the same.
        let repo = (!reuse).then(|| Repository::init(&root).unwrap());
        let name = DiskName::parse("big").unwrap();
        let d = repo.as_ref().map(|repo| {
            repo.create_disk(&name, TIB, BLOCK as u32).unwrap();
            repo.disk(&name).unwrap()
        });
        let mut buf = vec![0u8; BLOCK as usize];
        for i in 0..snapshots {
            let mut chosen = BTreeSet::new();
            while chosen.len() < PER_SNAPSHOT {
                chosen.insert(rng.next() % blocks_of_disk);
            }
            for &b in &chosen {
                rng.fill(&mut buf);
                if let Some(d) = &d {
                    d.write_at(b * BLOCK, &buf).unwrap();
                }
            }
            firsts.push(*chosen.iter().next().unwrap());
            if i == 0 {
                first_blocks = chosen.iter().copied().collect();
            }
            all.extend(chosen.into_iter().map(|b| (b, i)));
            if let Some(repo) = &repo {
                repo.snapshot(&name, Some(SnapName::parse(&format!("s{i:04}")).unwrap()))
                    .unwrap();
            }
        }
    }
    fs::write(&built_marker, snapshots.to_string()).unwrap();
    let built = t.elapsed();
    println!(
        "{} in {:.1} s: {} data blocks ({:.1} GiB) in the deepest image",
        if reuse { "reused" } else { "built" },
        built.as_secs_f64(),
        all.len(),
        (all.len() as u64 * BLOCK) as f64 / (1u64 << 30) as f64
    );

    // The same reads as the mount's below, straight through the store.
    let deepest: Vec<u64> = all.keys().copied().collect();
    let same_count: Vec<u64> = first_blocks
        .iter()
        .copied()
        .cycle()
        .take(deepest.len())
        .collect();
    {
        let repo = Repository::open(&root).unwrap();
        let snap = |i: usize| {
            repo.open_snapshot(&SnapshotRef::parse(&format!("big@s{i:04}")).unwrap())
                .unwrap()
        };
        let (deep_img, first_img) = (snap(snapshots - 1), snap(0));
        let mut block = vec![0u8; BLOCK as usize];
        let mut time = |img: &strata::store::Snapshot, blocks: &[u64]| {
            let t = Instant::now();
            for &b in blocks {
                img.read_at(b * BLOCK, &mut block).unwrap();
            }
            t.elapsed()
        };
        time(&deep_img, &deepest);
        time(&first_img, &first_blocks);
        let (mut d, mut f) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            d.push(time(&deep_img, &deepest));
            f.push(time(&first_img, &same_count));
        }
        let (d, f) = (common::median(d), common::median(f));
        println!(
            "the same reads through the store, no mount: deepest {:.0} ms, first {:.0} ms: \
             ratio {:.2}",
            ms(d),
            ms(f),
            d.as_secs_f64() / f.as_secs_f64()
        );
    }
    // And straight from the layers' data files, where each block lies
    // (block b at b × 64 KiB of the file of the snapshot that last wrote
    // it): what the host's memory gives for 15.5 GiB spread over 1,000
    // files against 16 MiB in one, with no strata at all.
    {
        let layers = root.join("layers");
        let count = fs::read_dir(&layers).unwrap().count();
        assert_eq!(
            count,
            2 * (snapshots + 1),
            "expected a data and an index file per snapshot and for the live layer"
        );
        // A new repository numbers layers from 1, in the order of snapshots.
        let files: Vec<fs::File> = (0..snapshots)
            .map(|i| fs::File::open(layers.join(format!("{:016x}.data", i + 1))).unwrap())
            .collect();
        let mut block = vec![0u8; BLOCK as usize];
        let mut time = |reads: &mut dyn Iterator<Item = (usize, u64)>| {
            let t = Instant::now();
            for (i, b) in reads {
                files[i].read_exact_at(&mut block, b * BLOCK).unwrap();
            }
            t.elapsed()
        };
        let deep_reads = || all.iter().map(|(&b, &i)| (i, b));
        let first_reads = || same_count.iter().map(|&b| (0, b));
        time(&mut deep_reads());
        let (mut d, mut f) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            d.push(time(&mut deep_reads()));
            f.push(time(&mut first_reads()));
        }
        let (d, f) = (common::median(d), common::median(f));
        println!(
            "the same blocks read from the layer files, no strata: deepest {:.0} ms, first \
             {:.0} ms: ratio {:.2} (the host's memory: 15.5 GiB against 16 MiB)",
            ms(d),
            ms(f),
            d.as_secs_f64() / f.as_secs_f64()
        );
    }

    let mounted = common::StrataMount::new(&root, &mp, &["-o", "checked"]);
    let pid: u32 = fs::read_to_string(root.join("lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let image = |i: usize| mp.join("big/snapshots").join(format!("s{i:04}.img"));
    let (rss_mounted, _) = memory(pid);
    let mut buf = Aligned::new(BLOCK as usize);
    let mut worst_first = Duration::ZERO;
    let mut worst_first_at = 0;
    let mut rss_max = 0;
    let t = Instant::now();
    for (i, &first) in firsts.iter().enumerate() {
        let opened = Instant::now();
        let f = open_direct(&image(i));
        f.read_exact_at(buf.buf(), first * BLOCK).unwrap();
        let first_byte = opened.elapsed();
        if first_byte > worst_first {
            worst_first = first_byte;
            worst_first_at = i;
        }
        for _ in 0..READS_PER_IMAGE {
            let b = rng.next() % blocks_of_disk;
            f.read_exact_at(buf.buf(), b * BLOCK).unwrap();
        }
        drop(f);
        rss_max = rss_max.max(memory(pid).0);
    }
    let walked = t.elapsed();
    let (rss_end, hwm) = memory(pid);
    println!(
        "opened every image and read {READS_PER_IMAGE} random 64 KiB blocks of each in {:.1} s",
        walked.as_secs_f64()
    );
    println!(
        "daemon memory: {:.0} MiB after mounting, {:.0} MiB at most after an image, {:.0} MiB \
         at the end, peak (VmHWM) {:.0} MiB (goal < 256 MiB)",
        mib(rss_mounted),
        mib(rss_max),
        mib(rss_end),
        mib(hwm)
    );
    println!(
        "slowest first byte after open: {:.1} ms, of s{worst_first_at:04} (goal < 1 s)",
        ms(worst_first)
    );

    // Every data block of the deepest image, in offset order, against as
    // many reads of the first snapshot's blocks; each warmed first, so both
    // read layer files in the host cache.
    let last = image(snapshots - 1);
    let first = image(0);
    read_blocks(&last, &deepest, &mut buf);
    read_blocks(&first, &first_blocks, &mut buf);
    let mut deep_times = Vec::new();
    let mut first_times = Vec::new();
    for _ in 0..3 {
        deep_times.push(read_blocks(&last, &deepest, &mut buf));
        first_times.push(read_blocks(&first, &same_count, &mut buf));
    }
    let deep = common::median(deep_times);
    let flat = common::median(first_times);
    let rate = |d: Duration| (deepest.len() as u64 * BLOCK) as f64 / d.as_secs_f64() / 1e9;
    println!(
        "{} blocks in offset order: deepest image (depth {snapshots}) {:.0} ms ({:.2} GB/s), \
         first snapshot {:.0} ms ({:.2} GB/s): ratio {:.2} (goal <= 1.10)",
        deepest.len(),
        ms(deep),
        rate(deep),
        ms(flat),
        rate(flat),
        deep.as_secs_f64() / flat.as_secs_f64()
    );
    let (_, hwm) = memory(pid);
    println!(
        "daemon peak memory after the whole run: {:.0} MiB",
        mib(hwm)
    );
    drop(mounted);
}
