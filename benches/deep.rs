//! Deep images (issue: deep snapshots as fast as the hardware allows).
//! Every way a user reads a deep snapshot, each against the baseline the
//! issue names, measured in the same run and printed as a ratio.
//!
//! The images: a 4 GiB disk of 64 KiB blocks over a base of random data.
//! `d100` is depth 100, each of its 99 upper layers rewriting 1 % of the
//! blocks (655); `d1000` is a clone of `d100`'s base, depth 1,000, each of
//! its 999 upper layers rewriting 0.1 % (65). About 63 % of either image's
//! blocks come from an upper layer, nearly every one from another file
//! than its neighbours'. A contiguous raw copy of each image is written
//! beside the repository (and compared with the mounted image, so the
//! figures are of the right bytes), and for depth 100 a qcow2 chain with
//! the same writes over the raw base (`qemu-img`'s 64 KiB clusters).
//!
//! | case | what the user does | baseline | goal |
//! | --- | --- | --- | --- |
//! | cold | reads an old snapshot, host cache dropped | the raw copy, cold; and the device's 64 KiB random-read rate at queue depth 32 (fio) | ≥ 0.8× the copy, or ≥ 0.9× the device's random rate |
//! | fresh | reads a snapshot whose layers are in the host cache, the image never read | the null FUSE file system (zeros) with strata's settings | ≥ 0.9× |
//! | warm | reads the same image again | re-reading the raw copy | ≥ 0.9× |
//! | copy | `cp --sparse=always` of the image to `/dev/null` (depth 100) | `qemu-img convert` of the qcow2 chain to its null driver, same cache state | ≥ 3× faster |
//!
//! Reads are 1 MiB `read()`s from start to end, as `cp` and `dd bs=1M`
//! make them. The mount is `strata mount` (the release build), as a user
//! runs it.
//!
//! Run as root: `cargo bench --bench deep`, optionally followed by any of
//! `ext4` `xfs` (the host file systems: the one of `STRATA_BENCH_DIR`, and
//! an XFS loop file system made by the benchmark), `100` `1000` (the
//! depths), and `cold` `fresh` `warm` `copy` (the cases). `DEEP_KEEP=DIR`
//! builds the images into DIR once and reuses them on later runs (~30 GiB
//! per host file system); otherwise they are built in a scratch directory
//! and removed at the end.

mod common;

use common::{drop_all_caches, median, read_all, sh, Rng, StrataMount};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use strata::store::{DiskName, Repository, SnapName, SnapshotRef};

const SIZE: u64 = 4 << 30;
const BLOCK: u64 = 64 << 10;
const BLOCKS: u64 = SIZE / BLOCK;
/// The images: (depth, blocks rewritten per upper layer).
const IMAGES: [(u64, u64); 2] = [(100, BLOCKS / 100), (1000, BLOCKS / 1000)];
/// What a finished build leaves, so a kept directory is reused only whole.
const BUILT: &str = "built-v1";

/// Reads the data of `path` into the host cache (layer files are
/// sparse: only what `SEEK_DATA` finds is read).
fn warm_file(path: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    let f = File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut at = 0;
    while let Some(start) = strata::sys::seek_data(&f, at).unwrap() {
        let end = strata::sys::seek_hole(&f, start).unwrap().min(len);
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off).unwrap();
            off += n as u64;
        }
        at = end;
        if at >= len {
            break;
        }
    }
}

/// Drops what the kernel caches of `path` (a mounted image, or the null
/// file system's file), so the next read fetches it again.
fn forget(path: &Path) {
    strata::sys::drop_cached_pages(&File::open(path).unwrap()).unwrap();
}

fn time(cmd: &str) -> f64 {
    let t = Instant::now();
    sh(cmd);
    t.elapsed().as_secs_f64()
}

fn verdict(ratio: f64, goal: f64) -> &'static str {
    if ratio >= goal {
        "met"
    } else {
        "NOT met"
    }
}

/// The host file system the images live on.
struct Host {
    name: &'static str,
    dir: PathBuf,
    /// The XFS loop file system's mount point and loop device, unmounted
    /// and detached on drop.
    loop_mount: Option<(PathBuf, String)>,
    _scratch: Option<tempfile::TempDir>,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some((mp, dev)) = &self.loop_mount {
            let _ = Command::new("umount").arg(mp).status();
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

impl Host {
    /// `ext4`: a directory of `STRATA_BENCH_DIR` (or the system temp
    /// directory); `xfs`: an XFS made in a sparse file there, loop-mounted.
    fn new(name: &'static str) -> Host {
        let (base, scratch) = match std::env::var_os("DEEP_KEEP") {
            Some(k) => {
                let d = PathBuf::from(k);
                fs::create_dir_all(&d).unwrap();
                (d, None)
            }
            None => {
                let t = common::scratch();
                (t.path().to_owned(), Some(t))
            }
        };
        if name == "ext4" {
            let dir = base.join("ext4");
            fs::create_dir_all(&dir).unwrap();
            let fstype = sh(&format!("findmnt -no FSTYPE -T '{}'", dir.display()));
            println!("host file system: {} ({})", fstype.trim(), dir.display());
            return Host {
                name,
                dir,
                loop_mount: None,
                _scratch: scratch,
            };
        }
        let img = base.join("xfs.img");
        let mp = base.join("xfs");
        fs::create_dir_all(&mp).unwrap();
        if !img.exists() {
            sh(&format!(
                "truncate -s 48G '{0}' && mkfs.xfs -q -m reflink=1 '{0}'",
                img.display()
            ));
        }
        // The loop device reads its file with direct I/O, many requests in
        // flight, as a disk would; buffered, one kernel thread reads its
        // requests one at a time through the host's page cache.
        // A run killed before its drop leaves its device attached: detach
        // any still on the file, so runs do not pile devices up.
        sh(&format!(
            "losetup -j '{}' -O NAME -n | xargs -r -n1 losetup -d",
            img.display()
        ));
        let dev = sh(&format!(
            "losetup --find --show --direct-io=on '{}'",
            img.display()
        ))
        .trim()
        .to_owned();
        // losetup does not fail where the host file system refuses direct
        // I/O (tmpfs): say so rather than measure a buffered loop unawares.
        let dio = sh(&format!(
            "cat /sys/block/{}/loop/dio",
            dev.trim_start_matches("/dev/")
        ));
        assert_eq!(
            dio.trim(),
            "1",
            "{dev} reads {} without direct I/O; put DEEP_KEEP or STRATA_BENCH_DIR on a file \
             system that supports it",
            img.display()
        );
        let host = Host {
            name,
            dir: mp.clone(),
            loop_mount: Some((mp.clone(), dev.clone())),
            _scratch: scratch,
        };
        sh(&format!("mount '{dev}' '{}'", mp.display()));
        println!(
            "host file system: XFS with reflinks, on a loop device with direct I/O ({dev}, {})",
            mp.display()
        );
        host
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }
    fn raw(&self, depth: u64) -> PathBuf {
        self.dir.join(format!("raw-d{depth}.img"))
    }
    fn base(&self) -> PathBuf {
        self.dir.join("base.img")
    }
    fn qcow(&self, depth: u64) -> PathBuf {
        self.dir.join(format!("qcow/l{depth}.qcow2"))
    }
    fn image(&self, mp: &Path, depth: u64) -> PathBuf {
        mp.join(format!("d{depth}/snapshots/s{depth}.img"))
    }
}

/// Builds the repository, the raw copies and the qcow2 chain (once).
fn build(host: &Host) {
    if host.dir.join(BUILT).exists() {
        println!("reusing the images built in {}", host.dir.display());
        return;
    }
    let t = Instant::now();
    for e in fs::read_dir(&host.dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
    let mut rng = Rng(0xdee9);
    let repo = Repository::init(&host.repo()).unwrap();
    let d100 = DiskName::parse("d100").unwrap();
    repo.create_disk(&d100, SIZE, BLOCK as u32).unwrap();
    // The base: random data, in the repository and in a raw file.
    {
        let disk = repo.disk(&d100).unwrap();
        let base = File::create(host.base()).unwrap();
        let mut buf = vec![0u8; 8 << 20];
        for off in (0..SIZE).step_by(buf.len()) {
            rng.fill(&mut buf);
            disk.write_at(off, &buf).unwrap();
            base.write_all_at(&buf, off).unwrap();
        }
        base.sync_all().unwrap();
    }
    repo.snapshot(&d100, Some(SnapName::parse("s1").unwrap()))
        .unwrap();
    let d1000 = DiskName::parse("d1000").unwrap();
    repo.create_disk_from(
        &d1000,
        &SnapshotRef {
            disk: d100.clone(),
            snap: SnapName::parse("s1").unwrap(),
        },
    )
    .unwrap();
    fs::create_dir_all(host.dir.join("qcow")).unwrap();
    for (depth, per_layer) in IMAGES {
        let name = DiskName::parse(&format!("d{depth}")).unwrap();
        let disk = repo.disk(&name).unwrap();
        // The contiguous copy: the base copied byte by byte (no reflink,
        // so it shares nothing), then rewritten in place.
        let raw = host.raw(depth);
        sh(&format!(
            "cp --reflink=never '{}' '{}'",
            host.base().display(),
            raw.display()
        ));
        let raw = OpenOptions::new().write(true).open(&raw).unwrap();
        for layer in 2..=depth {
            let mut chosen = BTreeSet::new();
            while (chosen.len() as u64) < per_layer {
                chosen.insert(rng.next() % BLOCKS);
            }
            let mut qemu = Vec::new();
            for &b in &chosen {
                let pattern = (rng.next() % 255 + 1) as u8;
                let data = vec![pattern; BLOCK as usize];
                disk.write_at(b * BLOCK, &data).unwrap();
                raw.write_all_at(&data, b * BLOCK).unwrap();
                qemu.push(format!("-c 'write -q -P {pattern} {} 64k'", b * BLOCK));
            }
            repo.snapshot(&name, Some(SnapName::parse(&format!("s{layer}")).unwrap()))
                .unwrap();
            if depth == 100 {
                // The same writes into a qcow2 overlay over the last.
                let below = if layer == 2 {
                    format!("-b '{}' -F raw", host.base().display())
                } else {
                    format!("-b l{}.qcow2 -F qcow2", layer - 1)
                };
                let q = host.qcow(layer);
                sh(&format!(
                    "qemu-img create -q -f qcow2 -o cluster_size=64k {below} '{}' && \
                     qemu-io -f qcow2 {} '{}'",
                    q.display(),
                    qemu.join(" "),
                    q.display()
                ));
            }
        }
        raw.sync_all().unwrap();
    }
    drop(repo);
    sh(&format!(
        "sync && touch '{}'",
        host.dir.join(BUILT).display()
    ));
    println!(
        "built the images in {:.0} s ({} of files)",
        t.elapsed().as_secs_f64(),
        sh(&format!("du -sh '{}' | cut -f1", host.dir.display())).trim()
    );
}

/// The data files of each image's chain, written beside the repository
/// (`chain-d100`, one file name a line) so a run can warm exactly those.
fn note_chains(host: &Host) {
    if host.dir.join("chain-d100").exists() {
        return;
    }
    let repo = Repository::open(&host.repo()).unwrap();
    let d100 = DiskName::parse("d100").unwrap();
    let base = repo.snapshots(&d100).unwrap()[0].layer;
    for (depth, _) in IMAGES {
        let name = DiskName::parse(&format!("d{depth}")).unwrap();
        let mut layers = vec![base];
        layers.extend(repo.snapshots(&name).unwrap().iter().map(|s| s.layer));
        layers.dedup();
        let list: Vec<String> = layers.iter().map(|l| format!("{l}.data")).collect();
        fs::write(host.dir.join(format!("chain-d{depth}")), list.join("\n")).unwrap();
    }
}

/// Drops the host cache, then reads the data of the layer files of the
/// image of depth `depth` into it: the state right after the snapshot.
fn warm_chain(host: &Host, depth: u64) {
    drop_all_caches();
    let list = fs::read_to_string(host.dir.join(format!("chain-d{depth}"))).unwrap();
    let layers = host.repo().join("layers");
    for name in list.lines() {
        warm_file(&layers.join(name));
    }
}

/// A new mount of the host's repository, unmounted on drop.
fn mount(host: &Host) -> StrataMount {
    StrataMount::new(&host.repo(), &host.dir.join("mnt"), &[])
}

/// The null FUSE file system, mounted once per host in each of its two
/// ways of opening.
struct Ceiling {
    cached: PathBuf,
    direct: PathBuf,
    _sessions: [fuser::BackgroundSession; 2],
}

impl Ceiling {
    fn new(host: &Host) -> Ceiling {
        let mp = |n: &str| {
            let mp = host.dir.join(n);
            fs::create_dir_all(&mp).unwrap();
            mp
        };
        let (c, d) = (mp("null-cached"), mp("null-direct"));
        Ceiling {
            cached: c.join(common::zerofs::NAME),
            direct: d.join(common::zerofs::NAME),
            _sessions: [
                common::zerofs::mount(&c, SIZE, false),
                common::zerofs::mount(&d, SIZE, true),
            ],
        }
    }
}

struct Row {
    case: String,
    strata: String,
    baseline: String,
    ratio: f64,
    goal: f64,
}

/// GB/s of the first read of the image of depth `depth` on a new mount
/// (so its first open), after `prepare` has set the caches.
fn first_read(host: &Host, depth: u64, prepare: impl FnOnce()) -> f64 {
    let mount = mount(host);
    prepare();
    read_all(&host.image(&mount.mp, depth))
}

fn cold(host: &Host, depth: u64, rows: &mut Vec<Row>) {
    let raw = host.raw(depth);
    let (mut s, mut r) = (vec![], vec![]);
    for _ in 0..2 {
        s.push(first_read(host, depth, drop_all_caches));
        drop_all_caches();
        r.push(read_all(&raw));
    }
    let (s, r) = (median(s), median(r));
    // The device's own rate for the shape of a deep image: 64 KiB reads
    // at random offsets, 32 in flight, from the same file system.
    let out = sh(&format!(
        "fio --name=rand --filename='{}' --rw=randread --bs=64k --iodepth=32 \
         --ioengine=libaio --direct=1 --runtime=10 --time_based --output-format=terse \
         --terse-version=3",
        raw.display()
    ));
    // Terse v3: field 7 is the read bandwidth in KiB/s.
    let kib: f64 = out.split(';').nth(6).unwrap().parse().unwrap();
    let dev = kib * 1024.0 / 1e9;
    println!(
        "  cold: strata {s:.2} GB/s, contiguous copy {r:.2} GB/s ({:.2}x), device 64 KiB random \
         reads at depth 32 {dev:.2} GB/s ({:.2}x)",
        s / r,
        s / dev
    );
    let (ratio, goal, baseline) = if s / r >= 0.8 {
        (s / r, 0.8, format!("copy {r:.2} GB/s"))
    } else {
        (s / dev, 0.9, format!("device random {dev:.2} GB/s"))
    };
    rows.push(Row {
        case: format!("cold, depth {depth}"),
        strata: format!("{s:.2} GB/s"),
        baseline,
        ratio,
        goal,
    });
}

fn fresh(host: &Host, ceiling: &Ceiling, depth: u64, rows: &mut Vec<Row>) {
    let (mut s, mut zd, mut zc) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        // As right after the snapshot: its layers in the host cache, the
        // image itself never read.
        s.push(first_read(host, depth, || warm_chain(host, depth)));
        zd.push(read_all(&ceiling.direct));
        forget(&ceiling.cached);
        zc.push(read_all(&ceiling.cached));
        forget(&ceiling.cached);
    }
    let (s, zd, zc) = (median(s), median(zd), median(zc));
    println!(
        "  fresh: strata {s:.2} GB/s; null FUSE file system {zd:.2} GB/s opened as strata \
         opens a first read (direct) ({:.2}x), {zc:.2} GB/s through the page cache ({:.2}x)",
        s / zd,
        s / zc
    );
    rows.push(Row {
        case: format!("fresh, depth {depth}"),
        strata: format!("{s:.2} GB/s"),
        baseline: format!("null FUSE {zd:.2} GB/s"),
        ratio: s / zd,
        goal: 0.9,
    });
}

fn warm_read(host: &Host, depth: u64, rows: &mut Vec<Row>) {
    let mount = mount(host);
    let img = host.image(&mount.mp, depth);
    let raw = host.raw(depth);
    warm_chain(host, depth);
    // The first open is streamed; the second goes through the page cache
    // and fills it. What the page cache then holds is the image.
    read_all(&img);
    let second = read_all(&img);
    sh(&format!("cmp '{}' '{}'", img.display(), raw.display()));
    let (mut s, mut r) = (vec![], vec![]);
    for _ in 0..3 {
        s.push(read_all(&img));
        r.push(read_all(&raw));
    }
    let (s, r) = (median(s), median(r));
    println!(
        "  warm: strata {s:.2} GB/s, raw copy {r:.2} GB/s ({:.2}x); the second read, which \
         fills the page cache, {second:.2} GB/s ({:.2}x)",
        s / r,
        second / r
    );
    rows.push(Row {
        case: format!("warm, depth {depth}"),
        strata: format!("{s:.2} GB/s"),
        baseline: format!("raw copy {r:.2} GB/s"),
        ratio: s / r,
        goal: 0.9,
    });
}

/// `cp --sparse=always` of the image against `qemu-img convert` of the
/// qcow2 chain, both to a sink (`/dev/null`; qemu's `null-co` driver):
/// what is compared is how fast each
/// reads the image. (To a file, both took 15-17 s here whatever they read:
/// this machine's host takes back memory the guest frees, and handing
/// 4 GiB of new pages to the copy's page cache costs more than the copy.)
/// The mounted image was compared with its raw copy before.
fn copy(host: &Host, depth: u64, rows: &mut Vec<Row>) {
    // qemu's /dev/null: its null block driver, which drops what it is given.
    let qi = format!(
        "qemu-img convert -n -f qcow2 '{}' --target-image-opts driver=null-co,size={SIZE}",
        host.qcow(depth).display(),
    );
    for (state, all_cold) in [("files cached", false), ("all cold", true)] {
        let (mut s, mut q) = (vec![], vec![]);
        for _ in 0..3 {
            let mount = mount(host);
            if all_cold {
                drop_all_caches();
            } else {
                // The layers in the host cache, the image's own pages not.
                warm_chain(host, depth);
            }
            s.push(time(&format!(
                "cp --sparse=always '{}' /dev/null",
                host.image(&mount.mp, depth).display(),
            )));
            drop(mount);
            drop_all_caches();
            if !all_cold {
                for e in fs::read_dir(host.dir.join("qcow")).unwrap() {
                    warm_file(&e.unwrap().path());
                }
                warm_file(&host.base());
            }
            q.push(time(&qi));
        }
        let (s, q) = (median(s), median(q));
        println!(
            "  copy, {state}: cp from the mount {s:.2} s, qemu-img convert {q:.2} s \
             ({:.2}x faster)",
            q / s
        );
        rows.push(Row {
            case: format!("copy, depth {depth}, {state}"),
            strata: format!("{s:.2} s"),
            baseline: format!("qemu-img {q:.2} s"),
            ratio: q / s,
            goal: 3.0,
        });
    }
}

fn main() {
    if !Path::new("/dev/fuse").exists() || strata::sys::effective_uid() != 0 {
        println!("skipping deep: it mounts and drops caches, which needs /dev/fuse and root");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let picked = |all: &[&str], s: &str| {
        !args.iter().any(|a| all.contains(&a.as_str())) || args.iter().any(|a| a == s)
    };
    let hosts = ["ext4", "xfs"];
    let depths = ["100", "1000"];
    let cases = ["cold", "fresh", "warm", "copy"];
    let mut rows = Vec::new();
    for name in hosts.into_iter().filter(|h| picked(&hosts, h)) {
        println!("== {name}");
        let host = Host::new(name);
        build(&host);
        note_chains(&host);
        let ceiling = Ceiling::new(&host);
        for (depth, _) in IMAGES {
            if !picked(&depths, &depth.to_string()) {
                continue;
            }
            println!("depth {depth}:");
            {
                // The image, streamed on its first open, reads back as its
                // raw copy.
                let mount = mount(&host);
                sh(&format!(
                    "cmp '{}' '{}'",
                    host.image(&mount.mp, depth).display(),
                    host.raw(depth).display()
                ));
            }
            let want = |c: &str| picked(&cases, c);
            let mut here = Vec::new();
            if want("fresh") {
                fresh(&host, &ceiling, depth, &mut here);
            }
            if want("warm") {
                warm_read(&host, depth, &mut here);
            }
            if want("cold") {
                cold(&host, depth, &mut here);
            }
            if want("copy") && depth == 100 {
                copy(&host, depth, &mut here);
            }
            rows.extend(here.into_iter().map(|mut r| {
                r.case = format!("{}, {}", host.name, r.case);
                r
            }));
        }
    }
    println!();
    println!("| case | strata | baseline | ratio | goal |");
    println!("| --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | ≥ {} ({}) |",
            r.case,
            r.strata,
            r.baseline,
            r.ratio,
            r.goal,
            verdict(r.ratio, r.goal)
        );
    }
}
