//! A full host file system, for real: repositories on a small tmpfs, the
//! mount used with real tools (`dd`, `fallocate`, `cmp`) until writes fail
//! with ENOSPC. What was fsync'ed survives; nothing is acknowledged after
//! the failure until a remount; a snapshot reads the same through
//! FUSE passthrough, through the daemon and through `export`; and deleting
//! and gc still work with no byte free.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fuse_available, random, read_range, sh, strata, strata_ok, Mounted};

/// A tmpfs of `mib` MiB mounted at a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: PathBuf, mib: u64) -> Tmpfs {
        fs::create_dir_all(&dir).unwrap();
        sh(&format!(
            "mount -t tmpfs -o size={mib}m tmpfs '{}'",
            dir.display()
        ));
        Tmpfs { dir }
    }

    /// Takes all but `leave` bytes of the free space, in a file it returns.
    fn fill(&self, leave: u64) -> PathBuf {
        let free = strata::sys::statvfs(&self.dir).unwrap();
        let avail = free.bavail * free.bsize as u64;
        let filler = self.dir.join("filler");
        let take = avail.saturating_sub(leave) / 4096 * 4096;
        sh(&format!("fallocate -l {take} '{}'", filler.display()));
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        if common::is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
    }
}

/// A strata mount whose repository lives on `fs`.
fn mounted_on(fs_: &Tmpfs, disks: &[&[&str]]) -> Mounted {
    let dir = tempfile::tempdir_in(&fs_.dir).unwrap();
    let repo = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    strata_ok(&repo, &["init"]);
    for d in disks {
        let mut args = vec!["disk", "create"];
        args.extend_from_slice(d);
        strata_ok(&repo, &args);
    }
    let mut m = Mounted {
        dir,
        repo,
        mp,
        pid: 0,
    };
    m.mount(&[]);
    m
}

fn pwrite_fsync(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_all()
}

/// Kills the daemon with SIGKILL, cleans up its mount, and mounts again.
fn kill_and_remount(m: &mut Mounted) {
    sh(&format!("kill -9 {}", m.pid));
    common::wait_until("the daemon to die", || !common::pid_alive(m.pid));
    strata_ok(&m.repo, &["umount", m.mp.to_str().unwrap()]);
    m.mount(&[]);
}

/// Repro 1 of the durability issue: an fsync that failed with ENOSPC left
/// half a journal record, and the fsync'ed write that followed was erased
/// on the next mount.
#[test]
fn enospc_latches_the_disk_and_a_remount_keeps_everything_fsynced() {
    if !fuse_available() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let fs_ = Tmpfs::mount(top.path().join("fs"), 200);
    let mut m = mounted_on(&fs_, &[&["f1", "--size", "1G", "--block-size", "16K"]]);
    let live = m.live("f1");
    let a = random(4 << 20, 1);
    pwrite_fsync(&live, 100 << 20, &a).unwrap();
    // Zeros to every other block: the next journal record is large.
    {
        let f = OpenOptions::new().write(true).open(&live).unwrap();
        let zeros = vec![0u8; 16384];
        for b in (20_000u64..40_000).step_by(2) {
            f.write_all_at(&zeros, b * 16384).unwrap();
        }
        let filler = fs_.fill(12 << 10);
        let e = f.sync_all().unwrap_err();
        assert!(
            matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EIO)),
            "{e}"
        );
        fs::remove_file(filler).unwrap();
        // Space is back, but the disk stays latched until a remount.
        let e = f.write_all_at(&random(4 << 20, 2), 900 << 20).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let e = f.sync_all().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let out = strata(&m.repo, &["snapshot", "create", "f1"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("stopped accepting writes"));
    }
    kill_and_remount(&mut m);
    assert!(
        read_range(&live, 100 << 20, 4 << 20) == a,
        "the fsync'ed write is gone"
    );
    let b = random(4 << 20, 3);
    pwrite_fsync(&live, 900 << 20, &b).unwrap();
    kill_and_remount(&mut m);
    assert!(read_range(&live, 100 << 20, 4 << 20) == a);
    assert!(
        read_range(&live, 900 << 20, 4 << 20) == b,
        "a later fsync'ed write is gone"
    );
    // The journal took no garbage: the repository opens without a word.
    m.umount();
    let out = strata(&m.repo, &["disk", "list"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Repro 4: a write that failed half-way with ENOSPC left its bytes in
/// blocks the layer did not hold; the next snapshot froze them, and read
/// through passthrough they showed while `export` read zeros.
#[test]
fn after_enospc_a_snapshot_reads_the_same_through_every_path() {
    if !fuse_available() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let fs_ = Tmpfs::mount(top.path().join("fs"), 64);
    let mut m = mounted_on(&fs_, &[&["t1", "--size", "1G"]]);
    let live = m.live("t1");
    let filler = fs_.fill(200 << 10);
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "head -c 2M /dev/zero | tr '\\0' '\\253' | dd of='{}' bs=2M count=1 oflag=direct \
             iflag=fullblock conv=notrunc status=none",
            live.display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the 2 MiB write did not fail");
    fs::remove_file(filler).unwrap();
    let e = pwrite_fsync(&live, 10 << 20, &random(65536, 4)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let out = strata(&m.repo, &["snapshot", "create", "t1", "--name", "first"]);
    assert_eq!(out.status.code(), Some(1), "a latched disk was snapshotted");
    // `strata umount` unmounts a latched disk, and says its flush failed.
    let out = strata(&m.repo, &["umount", m.mp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("but the final flush failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&m.mp));
    m.mount(&[]);
    let block = random(65536, 5);
    pwrite_fsync(&live, 10 << 20, &block).unwrap();
    strata_ok(&m.repo, &["snapshot", "create", "t1", "--name", "first"]);
    let snap = m.snap("t1", "first");
    let exported = m.path("first.img");
    strata_ok(&m.repo, &["export", "t1@first", exported.to_str().unwrap()]);
    // The first snapshot is one layer: the kernel reads it by passthrough.
    sh(&format!(
        "cmp '{}' '{}'",
        snap.display(),
        exported.display()
    ));
    assert!(
        read_range(&snap, 0, 2 << 20).iter().all(|&b| b == 0),
        "the failed write shows"
    );
    assert!(read_range(&snap, 10 << 20, 65536) == block);
    // The live image through the daemon reads the same too.
    let live_out = m.path("live.img");
    strata_ok(&m.repo, &["export", "t1", live_out.to_str().unwrap()]);
    sh(&format!(
        "cmp '{}' '{}'",
        live.display(),
        live_out.display()
    ));
}

/// Deleting and gc on a host file system with no byte left: they commit
/// in the space the repository keeps in reserve, give their blocks back,
/// and every remaining image reads the same.
#[test]
fn delete_and_gc_work_when_the_host_is_full() {
    if !fuse_available() {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    let fs_ = Tmpfs::mount(top.path().join("fs"), 96);
    let m = mounted_on(&fs_, &[&["t1", "--size", "1G"]]);
    let live = m.live("t1");
    pwrite_fsync(&live, 0, &random(8 << 20, 6)).unwrap();
    strata_ok(&m.repo, &["snapshot", "create", "t1", "--name", "old"]);
    let b = random(8 << 20, 7);
    pwrite_fsync(&live, 0, &b).unwrap();
    strata_ok(&m.repo, &["snapshot", "create", "t1", "--name", "new"]);
    let c = random(1 << 20, 8);
    pwrite_fsync(&live, 32 << 20, &c).unwrap();

    let filler = fs_.fill(0);
    let avail = |p: &Path| {
        let s = strata::sys::statvfs(p).unwrap();
        s.bavail * s.bsize as u64
    };
    assert!(avail(&fs_.dir) < 64 << 10, "the tmpfs is not full");
    // The live disk cannot take a new block now.
    assert!(pwrite_fsync(&live, 64 << 20, &random(1 << 20, 9)).is_err());

    let out = strata(&m.repo, &["snapshot", "delete", "t1@old"]);
    assert!(
        out.status.success(),
        "delete on a full host: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        avail(&fs_.dir) >= 7 << 20,
        "the delete gave back {} bytes of the old snapshot's 8 MiB",
        avail(&fs_.dir)
    );
    let out = strata(&m.repo, &["gc"]);
    assert!(
        out.status.success(),
        "gc on a full host: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!m.snap("t1", "old").exists());
    assert!(read_range(&m.snap("t1", "new"), 0, 8 << 20) == b);
    let log = fs::read_to_string(m.repo.join("daemon.log")).unwrap();
    assert!(
        log.contains("using the space kept in reserve"),
        "the delete did not need the reserve, so this test shows nothing:\n{log}"
    );
    fs::remove_file(filler).unwrap();
    // What was fsync'ed before the host filled reads back after a remount.
    let mut m = m;
    kill_and_remount(&mut m);
    assert!(read_range(&m.snap("t1", "new"), 0, 8 << 20) == b);
    assert!(read_range(&live, 32 << 20, 1 << 20) == c);
    assert!(read_range(&live, 0, 8 << 20) == b);
}
