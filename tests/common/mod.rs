//! Shared by the tests that mount for real: a repository mounted with the
//! real `strata mount`, unmounted (and its daemon stopped, by PID) when the
//! guard drops, also when a test fails.
#![allow(dead_code)]

pub mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// Whether FUSE can run here; tests that need it skip, saying why, if not.
pub fn fuse_available() -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    eprintln!("skipping: /dev/fuse is missing on this machine");
    false
}

/// Every file of a repository but the lock (which records its holder),
/// by path relative to the repository, with its bytes.
pub fn repo_contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != "lock" {
                let rel = p.strip_prefix(root).unwrap().to_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Asserts two [`repo_contents`] are equal, naming the files that differ
/// rather than printing their bytes.
pub fn assert_same_contents(
    a: &BTreeMap<PathBuf, Vec<u8>>,
    b: &BTreeMap<PathBuf, Vec<u8>>,
    what: &str,
) {
    let differ: Vec<_> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    assert!(differ.is_empty(), "{what}: these files changed: {differ:?}");
}

/// Runs `strata --repo REPO ARGS`.
pub fn strata(repo: &Path, args: &[&str]) -> Output {
    Command::new(STRATA)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .expect("run strata")
}

/// Runs a strata command that must succeed; returns its stdout.
pub fn strata_ok(repo: &Path, args: &[&str]) -> String {
    let out = strata(repo, args);
    assert!(
        out.status.success(),
        "strata {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command that must succeed; returns its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `len` reproducible bytes that differ with `seed` (xorshift64).
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of the file at `path` from `offset`.
pub fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(path)
        .expect("open")
        .read_exact_at(&mut buf, offset)
        .expect("read");
    buf
}

/// A file system image that `e2fsck -fn` finds clean, mounted read-only
/// (without replaying a journal) at `dir`; the loop device goes with the
/// returned guard.
pub fn clean_ext4(img: &Path, dir: &Path) -> Loop {
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck");
    assert!(
        check.status.success(),
        "e2fsck -fn {}: {}",
        img.display(),
        String::from_utf8_lossy(&check.stdout)
    );
    let mut lo = Loop::attach(img, true);
    lo.mount(dir, "ro,noload");
    lo
}

pub fn is_mounted(mp: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mp = mp.to_str().unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4) == Some(mp))
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub mp: PathBuf,
    pub pid: u32,
}

impl Mounted {
    /// A new repository with `disks` (name, size) mounted with `extra` args.
    pub fn new(disks: &[(&str, &str)], extra: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).expect("mkdir");
        strata_ok(&repo, &["init"]);
        for (name, size) in disks {
            strata_ok(&repo, &["disk", "create", name, "--size", size]);
        }
        let mut m = Mounted {
            dir,
            repo,
            mp,
            pid: 0,
        };
        m.mount(extra);
        m
    }

    pub fn mount(&mut self, extra: &[&str]) {
        let mut args = vec!["mount", self.mp.to_str().unwrap()];
        args.extend_from_slice(extra);
        strata_ok(&self.repo, &args);
        self.pid = std::fs::read_to_string(self.repo.join("lock"))
            .expect("lock file")
            .trim()
            .parse()
            .expect("daemon PID in the lock file");
        assert!(
            is_mounted(&self.mp),
            "strata mount returned before the mount was there"
        );
    }

    pub fn umount(&mut self) {
        strata_ok(&self.repo, &["umount", self.mp.to_str().unwrap()]);
        assert!(!is_mounted(&self.mp));
        let pid = self.pid;
        wait_until("the daemon to exit", || !pid_alive(pid));
    }

    pub fn live(&self, disk: &str) -> PathBuf {
        self.mp.join(disk).join("live.img")
    }

    pub fn snap(&self, disk: &str, snap: &str) -> PathBuf {
        self.mp
            .join(disk)
            .join("snapshots")
            .join(format!("{snap}.img"))
    }

    pub fn snapshot(&self, disk: &str, snap: &str) {
        strata_ok(&self.repo, &["snapshot", "create", disk, "--name", snap]);
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A failing test shows what the daemon said.
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.repo.join("daemon.log")) {
                eprintln!("--- daemon.log ---\n{log}--- end of daemon.log ---");
            }
        }
        if is_mounted(&self.mp) {
            let _ = Command::new(STRATA).arg("umount").arg(&self.mp).output();
        }
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).output();
        }
        if self.pid != 0 && pid_alive(self.pid) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(self.pid.to_string())
                .output();
        }
    }
}

/// A loop device attached to `file`, detached (after unmounting what was
/// mounted from it) on drop.
pub struct Loop {
    pub dev: String,
    mounts: Vec<PathBuf>,
}

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let ro = if read_only { "-r" } else { "" };
        let dev = sh(&format!("losetup -f --show {ro} '{}'", file.display()))
            .trim()
            .to_string();
        Loop {
            dev,
            mounts: vec![],
        }
    }

    pub fn mount(&mut self, dir: &Path, opts: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        sh(&format!("mount -o {opts} {} '{}'", self.dev, dir.display()));
        self.mounts.push(dir.to_owned());
    }

    pub fn umount(&mut self, dir: &Path) {
        sh(&format!("umount '{}'", dir.display()));
        self.mounts.retain(|d| d != dir);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for d in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg(d).output();
            if is_mounted(d) {
                let _ = Command::new("umount").arg("-l").arg(d).output();
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// Compares two files through their data regions (SEEK_DATA), so files of
/// many GiB holding little data compare quickly; holes read as zeros.
pub fn assert_same_sparse(a: &Path, b: &Path) {
    let (fa, fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    let size = fa.metadata().unwrap().len();
    assert_eq!(size, fb.metadata().unwrap().len(), "sizes differ");
    let seek = |f: &File, pos: u64, what| strata::sys::seek_data(f, pos).unwrap().filter(|_| what);
    let next = |pos| {
        [seek(&fa, pos, true), seek(&fb, pos, true)]
            .into_iter()
            .flatten()
            .min()
    };
    let mut pos = 0;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    while let Some(start) = next(pos) {
        let end = strata::sys::seek_hole(&fa, start)
            .unwrap()
            .max(strata::sys::seek_hole(&fb, start).unwrap());
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(ba.len());
            fa.read_exact_at(&mut ba[..n], at).unwrap();
            fb.read_exact_at(&mut bb[..n], at).unwrap();
            assert!(
                ba[..n] == bb[..n],
                "{} and {} differ near {at}",
                a.display(),
                b.display()
            );
            at += n as u64;
        }
        pos = end;
        if pos >= size {
            break;
        }
    }
}

/// Copies a directory tree: its directories and regular files (a socket
/// such as a mount's control socket is left out).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
