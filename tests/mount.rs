//! The mount, used with real tools: dd, cp, cmp, qemu-img, mkfs.ext4,
//! losetup, mount -o loop, fsfreeze, e2fsck, fstrim, fsx and fio.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn random_file(path: &Path, mib: u64) {
    sh(&format!(
        "head -c {}M /dev/urandom > '{}'",
        mib,
        path.display()
    ));
}

/// Writes `src` into `dst` at `offset` MiB with dd, as a user would.
fn dd_into(src: &Path, dst: &Path, offset_mib: u64) {
    sh(&format!(
        "dd if='{}' of='{}' bs=1M seek={offset_mib} conv=notrunc status=none",
        src.display(),
        dst.display()
    ));
}

fn snapshot_json(m: &Mounted, disk: &str) -> serde_json::Value {
    serde_json::from_str(&strata_ok(&m.repo, &["snapshot", "list", disk, "--json"])).unwrap()
}

#[test]
fn dd_cp_cmp_and_qemu_img_see_every_point_in_time() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm1", "64M")], &[]);
    let live = m.live("vm1");
    assert_eq!(fs::metadata(&live).unwrap().len(), 64 << 20);

    // The reference is a plain file that gets the same writes.
    let reference = m.path("ref.img");
    File::create(&reference).unwrap().set_len(64 << 20).unwrap();
    let (a, b) = (m.path("a.bin"), m.path("b.bin"));
    random_file(&a, 5);
    random_file(&b, 3);
    for (src, at) in [(&a, 0), (&b, 20), (&a, 59)] {
        dd_into(src, &live, at);
        dd_into(src, &reference, at);
    }
    // An unaligned small write too.
    sh(&format!(
        "printf 'hello strata' | dd of='{}' bs=1 seek=1234567 conv=notrunc status=none",
        live.display()
    ));
    sh(&format!(
        "printf 'hello strata' | dd of='{}' bs=1 seek=1234567 conv=notrunc status=none",
        reference.display()
    ));
    sh(&format!(
        "cmp '{}' '{}'",
        live.display(),
        reference.display()
    ));
    m.snapshot("vm1", "s1");
    let ref1 = m.path("ref1.img");
    fs::copy(&reference, &ref1).unwrap();

    // Overwrite, snapshot again.
    for (src, at) in [(&b, 1), (&a, 40)] {
        dd_into(src, &live, at);
        dd_into(src, &reference, at);
    }
    m.snapshot("vm1", "s2");

    let (s1, s2) = (m.snap("vm1", "s1"), m.snap("vm1", "s2"));
    sh(&format!("cmp '{}' '{}'", s1.display(), ref1.display()));
    sh(&format!("cmp '{}' '{}'", s2.display(), reference.display()));
    sh(&format!(
        "cmp '{}' '{}'",
        live.display(),
        reference.display()
    ));
    let copy = m.path("copy.img");
    sh(&format!(
        "cp '{}' '{}' && cmp '{}' '{}'",
        s1.display(),
        copy.display(),
        copy.display(),
        ref1.display()
    ));
    sh(&format!(
        "qemu-img compare -f raw -F raw '{}' '{}'",
        s1.display(),
        ref1.display()
    ));
    sh(&format!(
        "qemu-img compare -f raw -F raw '{}' '{}'",
        s2.display(),
        reference.display()
    ));
    for img in [&live, &s1, &s2] {
        let info = sh(&format!("qemu-img info -f raw '{}'", img.display()));
        assert!(
            info.contains("file format: raw") && info.contains("virtual size: 64 MiB"),
            "{info}"
        );
    }

    // Attributes: size, time taken, and what each snapshot stores.
    let snaps = snapshot_json(&m, "vm1");
    for (i, path) in [&s1, &s2].iter().enumerate() {
        let md = fs::metadata(path).unwrap();
        assert_eq!(md.len(), 64 << 20);
        // Read-only, and private to the mounting user (umask 077 unless
        // the mount says otherwise).
        assert_eq!(md.permissions().mode() & 0o777, 0o400);
        let taken = snaps[i]["taken"].as_u64().unwrap();
        assert_eq!(
            md.mtime() as u64,
            taken / 1_000_000_000,
            "mtime is the time taken"
        );
        let stored = snaps[i]["stored_bytes"].as_u64().unwrap();
        assert_eq!(
            md.blocks(),
            stored.div_ceil(512),
            "st_blocks is what the snapshot stores"
        );
    }
    let listing = sh(&format!("ls -t '{}'", m.mp.join("vm1/snapshots").display()));
    assert_eq!(
        listing.split_whitespace().collect::<Vec<_>>(),
        ["s2.img", "s1.img"],
        "ls -t is the history"
    );
}

#[test]
fn ext4_inside_frozen_snapshot_checks_clean_and_keeps_its_files() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "256M")], &[]);
    let live = m.live("vm");
    sh(&format!("mkfs.ext4 -q -F '{}'", live.display()));
    let mut lo = Loop::attach(&live, false);
    let fsdir = m.path("fs");
    lo.mount(&fsdir, "rw");
    sh(&format!(
        "cd '{d}' && head -c 3M /dev/urandom > keep.bin && head -c 1M /dev/urandom > change.bin \
         && mkdir sub && echo 'before the snapshot' > sub/note.txt && head -c 2M /dev/urandom > gone.bin",
        d = fsdir.display()
    ));
    let sums_before = sh(&format!(
        "cd '{}' && find . -type f | sort | xargs md5sum",
        fsdir.display()
    ));
    sh(&format!("fsfreeze -f '{}'", fsdir.display()));
    let snap = strata(&m.repo, &["snapshot", "create", "vm", "--name", "frozen"]);
    sh(&format!("fsfreeze -u '{}'", fsdir.display()));
    assert!(
        snap.status.success(),
        "{}",
        String::from_utf8_lossy(&snap.stderr)
    );
    sh(&format!(
        "cd '{d}' && rm gone.bin && head -c 1M /dev/urandom > change.bin && echo after > sub/note.txt \
         && head -c 1M /dev/urandom > new.bin && sync",
        d = fsdir.display()
    ));

    let img = m.snap("vm", "frozen");
    let snapdir = m.path("snapfs");
    let snap_lo = clean_ext4(&img, &snapdir);
    let sums_snap = sh(&format!(
        "cd '{}' && find . -type f | sort | xargs md5sum",
        snapdir.display()
    ));
    assert_eq!(
        sums_snap, sums_before,
        "files in the snapshot differ from the files at the snapshot"
    );
    drop(snap_lo);
    drop(lo);
}

/// fsx's own verdict on `live.img`, with size-changing operations off.
#[test]
fn fsx_ten_thousand_operations() {
    if !fuse_available() {
        return;
    }
    let fsx = which("fsx")
        .expect("fsx is not installed: cargo install --locked fsx@0.3.2 (.ci/run does)");
    let m = Mounted::new(&[("fsx", "64M")], &[]);
    let conf = m.path("fsx.toml");
    fs::write(
        &conf,
        "blockmode = true\n[weights]\ntruncate = 0\npunch_hole = 1\n",
    )
    .unwrap();
    let artifacts = m.path("fsx-artifacts");
    fs::create_dir(&artifacts).unwrap();
    let out = Command::new(fsx)
        .args([
            "-f",
            conf.to_str().unwrap(),
            "-N",
            "10000",
            "-S",
            "7",
            "-P",
            artifacts.to_str().unwrap(),
        ])
        .arg(m.live("fsx"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("All operations completed A-OK!"),
        "fsx:\n{text}"
    );
}

#[test]
fn fio_verified_random_io_with_odd_sizes_and_several_jobs() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("fio", "128M")], &[]);
    let out = Command::new("fio")
        .args([
            "--name=verify",
            &format!("--filename={}", m.live("fio").display()),
            "--size=32M",
            "--offset_increment=32M",
            "--numjobs=4",
            "--rw=randrw",
            "--bsrange=512-1M",
            "--ioengine=psync",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--fsync=32",
            "--group_reporting",
        ])
        // fio writes its verify state files into the current directory.
        .current_dir(m.dir.path())
        .output()
        .expect("fio is not installed (apt-get install fio; .ci/run does)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("err= 0"), "fio reported errors:\n{text}");
}

#[test]
fn snapshots_refuse_every_change_and_stay_unchanged() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "16M")], &[]);
    let live = m.live("vm");
    let data = m.path("d.bin");
    random_file(&data, 2);
    dd_into(&data, &live, 3);
    m.snapshot("vm", "s");
    let snap = m.snap("vm", "s");
    let before = fs::read(&snap).unwrap();
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());

    assert_eq!(
        errno(OpenOptions::new().write(true).open(&snap).map(drop)),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(OpenOptions::new().append(true).open(&snap).map(drop)),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&snap)
                .map(drop)
        ),
        Some(libc::EROFS)
    );
    assert_eq!(errno(fs::remove_file(&snap)), Some(libc::EROFS));
    assert_eq!(
        errno(fs::set_permissions(
            &snap,
            fs::Permissions::from_mode(0o666)
        )),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(fs::rename(&snap, m.mp.join("vm/snapshots/t.img"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno(File::create(m.mp.join("vm/snapshots/new.img")).map(drop)),
        Some(libc::EROFS)
    );
    for cmd in [
        "truncate -s 0",
        "truncate -s 1G",
        "chmod 666",
        "rm -f",
        "touch",
    ] {
        // Captured, so the refusals do not litter the test log.
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{cmd} '{}'", snap.display()))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd} on a snapshot succeeded");
    }
    sh(&format!(
        "! dd if=/dev/zero of='{}' bs=4k count=1 conv=notrunc status=none",
        snap.display()
    ));
    sh(&format!("! fallocate -p -o 0 -l 1M '{}'", snap.display()));
    assert!(fs::read(&snap).unwrap() == before, "the snapshot changed");
    assert_eq!(snapshot_json(&m, "vm").as_array().unwrap().len(), 1);

    // live.img: fixed size, block-device semantics at the end.
    let f = OpenOptions::new().write(true).open(&live).unwrap();
    assert_eq!(errno(f.set_len(1 << 30)), Some(libc::EPERM));
    assert_eq!(errno(f.set_len(0)), Some(libc::EPERM));
    assert_eq!(
        errno(f.write_at(b"x", 16 << 20).map(drop)),
        Some(libc::EFBIG)
    );
    assert_eq!(
        f.write_at(&[7u8; 100], (16 << 20) - 10).unwrap(),
        10,
        "a write across the end is short"
    );
    assert_eq!(fs::metadata(&live).unwrap().len(), 16 << 20);
    assert_eq!(errno(fs::remove_file(&live)), Some(libc::EPERM));
    // `>` opens with O_TRUNC, which a block device ignores: nothing is lost.
    sh(&format!("printf abc > '{}'", live.display()));
    assert_eq!(fs::metadata(&live).unwrap().len(), 16 << 20);
    let mut head = [0u8; 3];
    File::open(&live)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"abc");
    let mut rest = vec![0u8; 2 << 20];
    File::open(&live)
        .unwrap()
        .read_exact_at(&mut rest, 3 << 20)
        .unwrap();
    assert!(
        rest == fs::read(&data).unwrap(),
        "data after the O_TRUNC write changed"
    );
}

#[test]
fn a_second_mount_of_one_repository_is_refused() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "16M")], &[]);
    let other = m.path("mnt2");
    fs::create_dir(&other).unwrap();
    let out = strata(&m.repo, &["mount", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("is in use by PID {}", m.pid)),
        "{err}"
    );
    assert!(!is_mounted(&other));
}

#[test]
fn sigterm_flushes_and_unmounts() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(&[("vm", "16M")], &[]);
    let data = m.path("d.bin");
    random_file(&data, 4);
    dd_into(&data, &m.live("vm"), 5); // no fsync: the shutdown must flush
    sh(&format!("kill -TERM {}", m.pid));
    let pid = m.pid;
    wait_until("the daemon to exit after SIGTERM", || !pid_alive(pid));
    assert!(!is_mounted(&m.mp), "SIGTERM left the mount behind");
    assert!(
        !m.repo.join("control.sock").exists(),
        "SIGTERM left the socket behind"
    );
    m.mount(&[]);
    sh(&format!(
        "cmp <(dd if='{}' bs=1M skip=5 count=4 status=none) '{}'",
        m.live("vm").display(),
        data.display()
    ));
}

#[test]
fn kill_9_then_umount_and_remount_keeps_everything_fsynced() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(&[("vm", "32M")], &[]);
    let (a, b) = (m.path("a.bin"), m.path("b.bin"));
    random_file(&a, 6);
    random_file(&b, 5);
    let dd_sync = |src: &Path, at: u64| {
        sh(&format!(
            "dd if='{}' of='{}' bs=1M seek={at} conv=notrunc,fsync status=none",
            src.display(),
            m.live("vm").display()
        ))
    };
    dd_sync(&a, 7);
    m.snapshot("vm", "before-kill");
    // After the snapshot only fsync can make this durable.
    dd_sync(&b, 20);
    sh(&format!("kill -9 {}", m.pid));
    let pid = m.pid;
    wait_until("the daemon to die", || !pid_alive(pid));
    let err = fs::read_dir(&m.mp).err().and_then(|e| e.raw_os_error());
    assert!(
        matches!(err, Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)),
        "a dead daemon's mount answers ENOTCONN or ECONNABORTED, not {err:?}"
    );
    let out = strata_ok(&m.repo, &["umount", m.mp.to_str().unwrap()]);
    assert!(out.contains("stale"), "{out}");
    assert!(!is_mounted(&m.mp), "strata umount left a stale mount");
    fs::read_dir(&m.mp).expect("the mount point is a plain directory again");
    m.mount(&[]);
    let region = |img: &Path, at: u64, mib: u64, data: &Path| {
        sh(&format!(
            "cmp <(dd if='{}' bs=1M skip={at} count={mib} status=none) '{}'",
            img.display(),
            data.display()
        ))
    };
    region(&m.live("vm"), 7, 6, &a);
    region(&m.live("vm"), 20, 5, &b);
    region(&m.snap("vm", "before-kill"), 7, 6, &a);
    sh(&format!(
        "cmp <(dd if='{}' bs=1M skip=20 count=5 status=none) <(head -c 5M /dev/zero)",
        m.snap("vm", "before-kill").display()
    ));
}

/// A snapshot image the daemon serves (a layer over another) is streamed
/// on its first open, with reads prepared ahead, and cached on later
/// opens: a shared mapping, read() in any size, O_DIRECT, a reader that
/// jumps back and around, each gives the image's bytes.
#[test]
fn layered_snapshots_read_the_same_streamed_mapped_and_cached() {
    if !fuse_available() {
        return;
    }
    let mut m = Mounted::new(&[("vm", "64M")], &[]);
    let live = m.live("vm");
    let reference = m.path("ref.img");
    File::create(&reference).unwrap().set_len(64 << 20).unwrap();
    let (a, b) = (m.path("a.bin"), m.path("b.bin"));
    random_file(&a, 48);
    random_file(&b, 5);
    dd_into(&a, &live, 0);
    dd_into(&a, &reference, 0);
    m.snapshot("vm", "s1");
    for at in [3, 17, 40, 59] {
        dd_into(&b, &live, at);
        dd_into(&b, &reference, at);
    }
    m.snapshot("vm", "s2");
    let snap = m.snap("vm", "s2");
    let hash = |cmd: String| sh(&cmd).split_whitespace().next().unwrap().to_string();
    let want = hash(format!("sha256sum < '{}'", reference.display()));
    // The first open, mapped shared as a tool that maps an image would.
    let mapped = hash(format!(
        "python3 -c \"import mmap, hashlib; f = open('{}', 'rb'); \
         m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print(hashlib.sha256(m).hexdigest())\"",
        snap.display()
    ));
    assert_eq!(mapped, want, "mapped on its first open");
    let cached = hash(format!("sha256sum < '{}'", snap.display()));
    assert_eq!(cached, want, "read through the page cache");
    let direct = hash(format!(
        "dd if='{}' bs=1M iflag=direct status=none | sha256sum",
        snap.display()
    ));
    assert_eq!(direct, want, "O_DIRECT");

    // Streamed again on a new mount, in requests of 64 KiB: each prepared
    // ahead once two came in order.
    m.umount();
    m.mount(&[]);
    let small = hash(format!(
        "dd if='{}' bs=64k status=none | sha256sum",
        snap.display()
    ));
    assert_eq!(small, want, "streamed in 64 KiB reads");

    // A reader that goes in order, jumps back, goes on, and jumps about:
    // what was prepared for the order it left is never what it gets.
    m.umount();
    m.mount(&[]);
    let f = File::open(&snap).unwrap();
    let expect = File::open(&reference).unwrap();
    let mut got = vec![0u8; 1 << 20];
    let mut exp = vec![0u8; 1 << 20];
    let mut offsets: Vec<u64> = (0..12).map(|i| i << 20).collect();
    offsets.extend((0..12).map(|i| i << 20));
    offsets.extend([
        40 << 20,
        7 << 20,
        (63 << 20) + 4096,
        41 << 20,
        42 << 20,
        43 << 20,
    ]);
    for at in offsets {
        let n = f.read_at(&mut got, at).unwrap();
        let e = expect.read_at(&mut exp, at).unwrap();
        assert_eq!(n, e, "length at {at}");
        assert!(got[..n] == exp[..e], "bytes at {at}");
    }
}

#[test]
fn sparse_copy_of_a_mostly_empty_64g_snapshot() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("big", "64G")], &[]);
    let live = m.live("big");
    let data = m.path("d.bin");
    random_file(&data, 1);
    for at in [0, 10_000, 40_000, 65_535] {
        dd_into(&data, &live, at);
    }
    m.snapshot("big", "s");
    let snap = m.snap("big", "s");
    let f = File::open(&snap).unwrap();
    assert_eq!(strata::sys::seek_data(&f, 0).unwrap(), Some(0));
    assert_eq!(strata::sys::seek_hole(&f, 0).unwrap(), 1 << 20);
    assert_eq!(
        strata::sys::seek_data(&f, 1 << 20).unwrap(),
        Some(10_000 << 20)
    );
    assert_eq!(
        strata::sys::seek_hole(&f, (65_535 << 20) + 5).unwrap(),
        64 << 30
    );
    let copy = m.path("copy.img");
    sh(&format!(
        "cp --sparse=always '{}' '{}'",
        snap.display(),
        copy.display()
    ));
    let du = fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(
        du <= 8 << 20,
        "the copy of 4 MiB of data occupies {du} bytes"
    );
    assert_same_sparse(&copy, &snap);
}

#[test]
fn discard_and_fstrim_give_space_back() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "256M")], &[]);
    let live = m.live("vm");
    let used = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&strata_ok(&m.repo, &["disk", "list", "--json"])).unwrap();
        v[0]["used_bytes"].as_u64().unwrap()
    };
    // fallocate --punch-hole on live.img.
    let data = m.path("d.bin");
    random_file(&data, 8);
    dd_into(&data, &live, 100);
    let with_data = used();
    assert!(with_data >= 8 << 20, "{with_data}");
    sh(&format!(
        "fallocate -p -o {} -l {} '{}'",
        100 << 20,
        8 << 20,
        live.display()
    ));
    assert!(
        used() < with_data - (7 << 20),
        "punching 8 MiB gave back too little: {} -> {}",
        with_data,
        used()
    );
    sh(&format!(
        "cmp -n {} <(dd if='{}' bs=1M skip=100 count=8 status=none) /dev/zero",
        8 << 20,
        live.display()
    ));

    // fstrim inside an ext4 on live.img.
    sh(&format!(
        "mkfs.ext4 -q -F -E nodiscard '{}'",
        live.display()
    ));
    let mut lo = Loop::attach(&live, false);
    let fsdir = m.path("fs");
    lo.mount(&fsdir, "rw");
    sh(&format!(
        "head -c 64M /dev/urandom > '{}/big' && sync",
        fsdir.display()
    ));
    let full = used();
    sh(&format!(
        "rm '{d}/big' && sync && fstrim '{d}'",
        d = fsdir.display()
    ));
    let trimmed = used();
    assert!(
        trimmed + (56 << 20) < full,
        "fstrim gave back too little: {full} -> {trimmed}"
    );
    drop(lo);
}

#[test]
fn commands_work_while_mounted_and_show_up_at_once() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[("vm", "64M")], &[]);
    strata_ok(&m.repo, &["disk", "create", "added", "--size", "8M"]);
    assert!(
        m.live("added").exists(),
        "a disk created while mounted is not in the mount"
    );
    let img = m.path("import.img");
    random_file(&img, 4);
    strata_ok(
        &m.repo,
        &["disk", "import", "imported", img.to_str().unwrap()],
    );
    sh(&format!(
        "cmp '{}' '{}'",
        m.live("imported").display(),
        img.display()
    ));
    let list: serde_json::Value =
        serde_json::from_str(&strata_ok(&m.repo, &["disk", "list", "--json"])).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["added", "imported", "vm"]);

    // A snapshot under write load holds what was written before it.
    let live = m.live("vm");
    let data = m.path("d.bin");
    random_file(&data, 8);
    let mut writer = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 40); do dd if=/dev/urandom of='{}' bs=1M count=8 seek=32 conv=notrunc status=none; done",
            live.display()
        ))
        .spawn()
        .unwrap();
    dd_into(&data, &live, 0);
    m.snapshot("vm", "busy");
    assert!(
        m.snap("vm", "busy").exists(),
        "the new snapshot is not in the mount"
    );
    let st = writer.wait().unwrap();
    assert!(st.success());
    sh(&format!(
        "cmp <(dd if='{}' bs=1M count=8 status=none) '{}'",
        m.snap("vm", "busy").display(),
        data.display()
    ));
    let out = strata_ok(
        &m.repo,
        &["export", "vm@busy", m.path("busy.img").to_str().unwrap()],
    );
    assert!(out.contains("exported vm@busy"), "{out}");
    sh(&format!(
        "cmp '{}' '{}'",
        m.path("busy.img").display(),
        m.snap("vm", "busy").display()
    ));
}

#[test]
fn read_only_mounts_refuse_writes_to_live_images() {
    if !fuse_available() {
        return;
    }
    for opts in [&["--read-only"][..], &["-o", "ro"]] {
        let m = Mounted::new(&[("vm", "16M")], opts);
        let err = OpenOptions::new().write(true).open(m.live("vm")).err();
        assert_eq!(
            err.and_then(|e| e.raw_os_error()),
            Some(libc::EROFS),
            "{opts:?}"
        );
        let mut buf = vec![1u8; 4096];
        File::open(m.live("vm"))
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }
}

#[test]
fn mount_reports_why_it_failed() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    let missing = dir.path().join("nowhere");
    let out = strata(&repo, &["mount", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file or directory"));
    let out = strata(
        &repo,
        &["mount", dir.path().to_str().unwrap(), "-o", "bogus"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option \"bogus\""));
    let out = strata(&repo, &["umount", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a strata mount"));
    let mut f = File::create(dir.path().join("file")).unwrap();
    f.write_all(b"x").unwrap();
    let out = strata(&repo, &["mount", dir.path().join("file").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<_> = std::env::split_paths(&path).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(cmd)).find(|p| p.is_file())
}
