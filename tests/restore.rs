//! Single-file restore: `strata restore attach` finds the file systems of
//! a snapshot (whole-disk, GPT, MBR) and mounts them read-only; `detach`
//! leaves no mount and no loop device, also after an attach cut short or a
//! reboot.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{fuse_available, is_mounted, sh, strata, strata_ok, Mounted};

/// An ext4 file system image of `mib` MiB holding `files` (name, text).
fn ext4(dir: &Path, name: &str, mib: u64, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    fs::create_dir_all(&src).unwrap();
    for (f, text) in files {
        fs::write(src.join(f), text).unwrap();
    }
    let img = dir.join(format!("{name}.fs"));
    sh(&format!(
        "mkfs.ext4 -q -d '{}' '{}' {mib}M",
        src.display(),
        img.display()
    ));
    img
}

/// A disk image of `mib` MiB with the partition table `sfdisk` makes from
/// `script`, and each (start sector, file system image) copied in place.
fn partitioned(dir: &Path, name: &str, mib: u64, script: &str, parts: &[(u64, &Path)]) -> PathBuf {
    let img = dir.join(name);
    sh(&format!("truncate -s {mib}M '{}'", img.display()));
    sh(&format!(
        "printf '{script}' | sfdisk -q '{}'",
        img.display()
    ));
    for (start, fs_img) in parts {
        sh(&format!(
            "dd if='{}' of='{}' bs=512 seek={start} conv=notrunc status=none",
            fs_img.display(),
            img.display()
        ));
    }
    img
}

/// Loop devices backed by `image` (none once detached).
fn loops_of(image: &Path) -> String {
    sh(&format!("losetup -j '{}'", image.display()))
}

fn mounts_under(dir: &Path) -> usize {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    info.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m.starts_with(&format!("{dir}/")))
        })
        .count()
}

/// Unmounts whatever a failing test left under a directory.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["restore", "detach"])
            .arg(&self.0)
            .output();
    }
}

/// Imports `image` as disk `disk` of the mounted repository, snapshots it
/// as `disk@s`, and attaches that under `dir`; returns what attach printed.
fn attach(m: &Mounted, disk: &str, image: &Path, dir: &Path) -> String {
    strata_ok(&m.repo, &["disk", "import", disk, image.to_str().unwrap()]);
    strata_ok(&m.repo, &["snapshot", "create", disk, "--name", "s"]);
    strata_ok(
        &m.repo,
        &[
            "restore",
            "attach",
            &format!("{disk}@s"),
            dir.to_str().unwrap(),
        ],
    )
}

fn assert_read_only(file: &Path) {
    let err = fs::OpenOptions::new().append(true).open(file).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EROFS),
        "{}: {err}",
        file.display()
    );
}

fn detach(m: &Mounted, dir: &Path, snap_img: &Path) {
    let out = strata_ok(&m.repo, &["restore", "detach", dir.to_str().unwrap()]);
    assert!(out.contains("detached"), "{out}");
    assert_eq!(mounts_under(dir), 0, "detach left mounts");
    assert_eq!(loops_of(snap_img).trim(), "", "detach left loop devices");
    assert_eq!(
        fs::read_dir(dir).unwrap().count(),
        0,
        "detach left files in {}",
        dir.display()
    );
}

#[test]
fn whole_disk_gpt_and_mbr_images() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(&[], &[]);
    let work = m.path("work");
    fs::create_dir(&work).unwrap();

    // A file system on the whole disk.
    let whole = ext4(&work, "whole", 16, &[("hello.txt", "whole disk\n")]);
    let dir = m.path("r-whole");
    let _c = Cleanup(dir.clone());
    let out = attach(&m, "whole", &whole, &dir);
    assert!(out.contains("disk") && out.contains("ext4"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("disk/hello.txt")).unwrap(),
        "whole disk\n"
    );
    assert_read_only(&dir.join("disk/hello.txt"));
    detach(&m, &dir, &m.snap("whole", "s"));

    // GPT, two ext4 partitions.
    let a = ext4(&work, "a", 20, &[("etc.conf", "partition one\n")]);
    let b = ext4(&work, "b", 30, &[("data.txt", "partition two\n")]);
    let gpt = partitioned(
        &work,
        "gpt.img",
        64,
        "label: gpt\\n,20M\\n,30M\\n",
        &[(2048, &a), (43008, &b)],
    );
    let dir = m.path("r-gpt");
    let _c = Cleanup(dir.clone());
    let out = attach(&m, "gpt", &gpt, &dir);
    assert!(out.contains("p1") && out.contains("p2"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("p1/etc.conf")).unwrap(),
        "partition one\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("p2/data.txt")).unwrap(),
        "partition two\n"
    );
    assert_read_only(&dir.join("p2/data.txt"));
    assert_eq!(mounts_under(&dir), 2);
    // The repository cannot be unmounted from under the loop devices.
    let busy = strata(&m.repo, &["umount", m.mp.to_str().unwrap()]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(is_mounted(&m.mp));
    detach(&m, &dir, &m.snap("gpt", "s"));

    // MBR: an ext4 partition and one with no file system, which is named.
    let c = ext4(&work, "c", 20, &[("boot.cfg", "mbr one\n")]);
    let mbr = partitioned(
        &work,
        "mbr.img",
        48,
        "label: dos\\n,20M,83\\n,,83\\n",
        &[(2048, &c)],
    );
    let dir = m.path("r-mbr");
    let _c = Cleanup(dir.clone());
    let out = attach(&m, "mbr", &mbr, &dir);
    assert!(out.contains("no file system found"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("p1/boot.cfg")).unwrap(),
        "mbr one\n"
    );
    assert!(
        !dir.join("p2").exists(),
        "a directory for a partition with nothing to mount"
    );
    // JSON says the same.
    detach(&m, &dir, &m.snap("mbr", "s"));
    let json = strata_ok(
        &m.repo,
        &[
            "restore",
            "attach",
            "mbr@s",
            dir.to_str().unwrap(),
            "--json",
        ],
    );
    let parts: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Every field the README's JSON table documents, in every part.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `strata restore attach"))
        .expect("README: restore attach's JSON row");
    let fields: Vec<&str> = row
        .split('|')
        .nth(3)
        .unwrap()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(fields.len() >= 6, "{row}");
    for p in parts.as_array().unwrap() {
        for f in &fields {
            assert!(p.get(*f).is_some(), "no field {f:?} in {p}");
        }
    }
    assert_eq!(parts[0]["fstype"], "ext4");
    assert_eq!(parts[0]["mounted_at"], dir.join("p1").to_str().unwrap());
    assert!(parts[1]["mounted_at"].is_null());
    detach(&m, &dir, &m.snap("mbr", "s"));
    // Refused once while busy, the repository unmounts once detached.
    m.umount();
}

#[test]
fn detach_after_an_attach_cut_short_and_after_a_reboot() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[], &[]);
    let work = m.path("work");
    fs::create_dir(&work).unwrap();
    let a = ext4(&work, "a", 20, &[("one", "1\n")]);
    let b = ext4(&work, "b", 20, &[("two", "2\n")]);
    let gpt = partitioned(
        &work,
        "gpt.img",
        48,
        "label: gpt\\n,20M\\n,20M\\n",
        &[(2048, &a), (43008, &b)],
    );
    let dir = m.path("restore");
    let _c = Cleanup(dir.clone());
    attach(&m, "gpt", &gpt, &dir);
    let snap = m.snap("gpt", "s");

    // A reboot: the mounts and loop devices are gone, the directories and
    // the state file stay.
    sh(&format!("umount '{0}/p1' '{0}/p2'", dir.display()));
    assert_eq!(mounts_under(&dir), 0);
    assert!(dir.join("p1").exists());
    detach(&m, &dir, &snap);

    // Cut short after its first mount: what attach would have recorded by
    // then, and one partition mounted the way attach mounts it.
    attach_by_hand_half_way(&dir, &snap);
    assert_eq!(mounts_under(&dir), 1);
    assert!(!loops_of(&snap).trim().is_empty());
    detach(&m, &dir, &snap);

    // Nothing attached: detach says so, and fails.
    let out = strata(&m.repo, &["restore", "detach", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is attached"));
}

/// The state of an attach killed after mounting its first partition: the
/// state file names p1 and p2, only p1 is mounted.
fn attach_by_hand_half_way(dir: &Path, snap: &Path) {
    for p in ["p1", "p2"] {
        fs::create_dir_all(dir.join(p)).unwrap();
    }
    let state = serde_json::json!({
        "image": "gpt@s",
        "path": snap.to_str().unwrap(),
        "parts": [
            {"name": "p1", "offset": 1048576, "size": 20971520, "fstype": "ext4",
             "mounted_at": null, "note": null},
            {"name": "p2", "offset": 22020096, "size": 20971520, "fstype": "ext4",
             "mounted_at": null, "note": null},
        ],
    });
    fs::write(dir.join(".strata-restore"), state.to_string()).unwrap();
    sh(&format!(
        "mount -t ext4 -o ro,noload,loop,offset=1048576,sizelimit=20971520 '{}' '{}'",
        snap.display(),
        dir.join("p1").display()
    ));
}

#[test]
fn attach_refuses_what_it_cannot_do() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("blank", "8M")], &[]);
    strata_ok(&m.repo, &["snapshot", "create", "blank", "--name", "s"]);
    let dir = m.path("restore");
    let _c = Cleanup(dir.clone());
    // Nothing to mount in an empty disk: refused, nothing left behind.
    let out = strata(
        &m.repo,
        &["restore", "attach", "blank@s", dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no file system"));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    // A snapshot that does not exist; a directory that is not empty.
    let out = strata(
        &m.repo,
        &["restore", "attach", "blank@nope", dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    fs::write(dir.join("mine"), "keep").unwrap();
    let out = strata(
        &m.repo,
        &["restore", "attach", "blank@s", dir.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    assert_eq!(fs::read_to_string(dir.join("mine")).unwrap(), "keep");
}

#[test]
fn xfs_and_btrfs_partitions_mount_read_only() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[], &[]);
    let work = m.path("work");
    fs::create_dir(&work).unwrap();
    // XFS (its smallest is 300 MiB), a file written through a loop mount.
    let xfs = work.join("x.fs");
    sh(&format!(
        "truncate -s 320M '{0}' && mkfs.xfs -q '{0}'",
        xfs.display()
    ));
    {
        let mut dev = common::Loop::attach(&xfs, false);
        let at = work.join("x.mnt");
        dev.mount(&at, "rw");
        fs::write(at.join("xfs.txt"), "from xfs\n").unwrap();
        dev.umount(&at);
    }
    // btrfs, filled from a directory.
    let src = work.join("b.src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("btrfs.txt"), "from btrfs\n").unwrap();
    let btrfs = work.join("b.fs");
    sh(&format!(
        "truncate -s 128M '{0}' && mkfs.btrfs -q --rootdir '{1}' '{0}' >/dev/null",
        btrfs.display(),
        src.display()
    ));
    let img = partitioned(
        &work,
        "gpt.img",
        480,
        "label: gpt\\n,320M\\n,128M\\n",
        &[(2048, &xfs), (2048 + 320 * 2048, &btrfs)],
    );
    let dir = m.path("restore");
    let _c = Cleanup(dir.clone());
    let out = attach(&m, "vm", &img, &dir);
    assert!(out.contains("xfs") && out.contains("btrfs"), "{out}");
    assert_eq!(
        fs::read_to_string(dir.join("p1/xfs.txt")).unwrap(),
        "from xfs\n"
    );
    assert_eq!(
        fs::read_to_string(dir.join("p2/btrfs.txt")).unwrap(),
        "from btrfs\n"
    );
    assert_read_only(&dir.join("p1/xfs.txt"));
    assert_read_only(&dir.join("p2/btrfs.txt"));
    detach(&m, &dir, &m.snap("vm", "s"));
}
