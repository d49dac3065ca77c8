//! Shared by the benchmarks: a seeded generator for reproducible data and
//! offsets, the median of repeated runs, and running shell commands.
#![allow(dead_code)]

pub mod zerofs;

/// xorshift64: fast, seeded, good enough to make data incompressible and
/// offsets scattered.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// The middle value of a set of measurements.
pub fn median<T: PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.swap_remove(v.len() / 2)
}

/// Runs `cmd` in bash, which must succeed; returns its standard output.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "`{cmd}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Milliseconds, for printing.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A scratch directory: under `STRATA_BENCH_DIR` if set, else the system
/// temp directory.
pub fn scratch() -> tempfile::TempDir {
    match std::env::var_os("STRATA_BENCH_DIR") {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .unwrap()
}

/// `count` blocks of `block` bytes at distinct random blocks of `d`:
/// random data in the first `fill` bytes of each, zeros after.
pub fn scatter(d: &strata::store::Disk, rng: &mut Rng, count: u64, block: u64, fill: usize) {
    use strata::store::ImageRead;
    let blocks = d.size() / block;
    let mut buf = vec![0u8; block as usize];
    let mut chosen = std::collections::HashSet::new();
    while (chosen.len() as u64) < count {
        let b = rng.next() % blocks;
        if chosen.insert(b) {
            rng.fill(&mut buf[..fill]);
            d.write_at(b * block, &buf).unwrap();
        }
    }
}

/// Drops the host's page cache (as root), after writing back what is dirty.
pub fn drop_all_caches() {
    sh("sync && echo 3 > /proc/sys/vm/drop_caches");
}

/// GB/s of reading `path` from start to end in 1 MiB reads.
pub fn read_all(path: &std::path::Path) -> f64 {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = std::time::Instant::now();
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(
        total,
        std::fs::metadata(path).unwrap().len(),
        "{}",
        path.display()
    );
    total as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// A repository mounted with `strata mount` (the release build, as a user
/// runs it), unmounted on drop, so a failing run leaves no mount behind.
pub struct StrataMount {
    pub mp: std::path::PathBuf,
}

impl StrataMount {
    /// Mounts `repo` on `mp` (made if missing) with `extra` arguments.
    pub fn new(repo: &std::path::Path, mp: &std::path::Path, extra: &[&str]) -> StrataMount {
        std::fs::create_dir_all(mp).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("--repo")
            .arg(repo)
            .arg("mount")
            .arg(mp)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata mount {}: {}",
            mp.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        StrataMount { mp: mp.to_owned() }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("umount")
            .arg(&self.mp)
            .output();
    }
}
