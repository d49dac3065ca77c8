//! What a mount lets in: a read-only mount takes no changes, a mount point
//! with another file system on it is refused, and the control socket
//! answers only its own user or root, checked on the connection itself.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{fuse_available, sh, strata, strata_ok, Mounted};

fn refused_with(out: std::process::Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
}

#[test]
fn a_read_only_mount_changes_nothing() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let mut m = Mounted::new(&[("vm", "8M")], &[]);
    m.snapshot("vm", "s1");
    m.umount();
    m.mount(&["--read-only"]);
    let before = stored(&m.repo);
    let img = m.path("x.img");
    std::fs::write(&img, vec![1u8; 1 << 20]).unwrap();
    let stream = m.path("s.stream");
    strata_ok(&m.repo, &["send", "vm@s1", "-o", stream.to_str().unwrap()]);
    let replica = m.path("replica");
    strata_ok(&replica, &["init"]);
    for args in [
        vec!["disk", "create", "new", "--size", "1M"],
        vec!["disk", "import", "imp", img.to_str().unwrap()],
        vec!["disk", "delete", "vm"],
        vec!["disk", "rollback", "vm@s1"],
        vec!["disk", "resize", "vm", "--size", "16M"],
        vec!["disk", "rename", "vm", "other"],
        vec!["disk", "create", "c", "--from", "vm@s1"],
        vec!["snapshot", "create", "vm"],
        vec!["snapshot", "delete", "vm@s1"],
        vec!["snapshot", "full", "vm@s1"],
        vec!["snapshot", "rename", "vm@s1", "x"],
        vec!["prune", "vm", "--keep-last", "1"],
        vec!["gc"],
        vec!["receive", "--as", "copy", "-i", stream.to_str().unwrap()],
        vec!["quarantine", "purge"],
        vec!["verify", "--repair-from", replica.to_str().unwrap()],
    ] {
        refused_with(strata(&m.repo, &args), "mounted read-only");
    }
    // Reading works.
    strata_ok(&m.repo, &["disk", "list"]);
    strata_ok(&m.repo, &["snapshot", "list", "vm", "--json"]);
    strata_ok(&m.repo, &["prune", "vm", "--keep-last", "1", "--dry-run"]);
    strata_ok(&m.repo, &["usage"]);
    strata_ok(&m.repo, &["verify"]);
    let after = stored(&m.repo);
    assert!(before == after, "the repository changed");
}

/// The catalog and every layer file, with their bytes.
fn stored(repo: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "catalog".to_string(),
        std::fs::read(repo.join("catalog")).unwrap(),
    )];
    for e in std::fs::read_dir(repo.join("layers")).unwrap() {
        let e = e.unwrap();
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    out.sort();
    out
}

#[test]
fn a_mount_point_in_use_is_refused_and_a_full_one_warned_of() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    let mp = dir.path().join("mp");
    std::fs::create_dir(&mp).unwrap();
    sh(&format!(
        "mount -t tmpfs -o size=1m tmpfs '{}'",
        mp.display()
    ));
    std::fs::write(mp.join("on-tmpfs"), "x").unwrap();
    // Named directly, or through a symlink: refused, naming what is there,
    // and with no word about what the directory holds.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&mp, &link).unwrap();
    let direct = strata(&repo, &["mount", mp.to_str().unwrap()]);
    let linked = strata(&repo, &["mount", link.to_str().unwrap()]);
    let still = mp.join("on-tmpfs").exists();
    sh(&format!("umount '{}'", mp.display()));
    assert!(still, "the tmpfs was hidden");
    for out in [direct, linked] {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("is not empty"), "{err}");
        refused_with(out, "already has a file system mounted on it (tmpfs");
    }
    std::fs::write(mp.join("note"), "x").unwrap();
    let out = strata(&repo, &["mount", mp.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let ok = out.status.success();
    let mounted = common::is_mounted(&mp);
    if ok {
        // Through the symlink too.
        strata_ok(&repo, &["umount", link.to_str().unwrap()]);
    }
    assert!(ok && mounted, "{err}");
    assert!(!common::is_mounted(&mp), "umount through the symlink");
    assert_eq!(err.matches("is not empty").count(), 1, "{err}");
}

#[test]
fn the_control_socket_answers_only_its_own_user() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv is missing");
        return;
    }
    let m = Mounted::new(&[("vm", "8M")], &[]);
    // Open every door but the credential check: the directories and the
    // socket itself.
    for p in [m.dir.path(), m.repo.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = m.repo.join("control.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let exe = env!("CARGO_BIN_EXE_strata");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            exe,
            "--repo",
        ])
        .arg(&m.repo)
        .args(["disk", "list"])
        .output()
        .unwrap();
    refused_with(out, "takes requests only from that user or root");
    strata_ok(&m.repo, &["disk", "list"]);
}

/// Every file the repository makes is its owner's alone (0600), every
/// directory 0700; names given on the command line never reach outside it.
#[test]
fn the_repository_keeps_to_itself() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let mut m = Mounted::new(&[("vm", "8M")], &[]);
    m.snapshot("vm", "s1");
    let stream = m.path("s.stream");
    strata_ok(&m.repo, &["send", "vm@s1", "-o", stream.to_str().unwrap()]);
    strata_ok(&m.repo, &["verify"]);
    m.umount();
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), md.permissions().mode() & 0o777, md.is_dir()));
            if md.is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut all = vec![];
    walk(&m.repo, &mut all);
    assert!(all.len() > 8, "{all:?}");
    for (p, mode, dir) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", p.display());
    }
    let root = std::fs::metadata(&m.repo).unwrap().permissions().mode() & 0o777;
    assert_eq!(root, 0o700, "the repository directory is {root:o}");
    // Names that would climb out are refused as names.
    for bad in ["../x", "a/b", "..", ".", ""] {
        let out = strata(&m.repo, &["disk", "create", bad, "--size", "1M"]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

/// A user this test creates, removed on drop.
struct TestUser {
    name: String,
    uid: u32,
}

impl TestUser {
    fn create() -> Option<TestUser> {
        let name = format!("strata-t{}", std::process::id());
        let ok = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let uid = sh(&format!("id -u {name}")).trim().parse().ok()?;
        Some(TestUser { name, uid })
    }

    /// Runs `script` in sh as this user; its exit status and stderr.
    fn run(&self, script: &str) -> (i32, String) {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid))
            .args(["--clear-groups", "sh", "-c", script])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Another user sees nothing of a mount by default; with allow_other the
/// kernel checks permissions, and images are private to the mounting user
/// unless uid=, gid=, umask= say otherwise; a snapshot image is written
/// by nobody, root included.
#[test]
fn another_user_gets_only_what_the_options_give() {
    if !fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let Some(user) = TestUser::create() else {
        eprintln!("skipped: cannot create a user (useradd)");
        return;
    };
    let mut m = Mounted::new(&[("vm", "4M")], &[]);
    m.snapshot("vm", "s1");
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mp = m.mp.display().to_string();
    let (snap, live) = (m.snap("vm", "s1"), m.live("vm"));
    let (snap, live) = (snap.display(), live.display());
    // Not even a look without allow_other.
    let (code, _) = user.run(&format!("ls '{mp}'"));
    assert_ne!(code, 0, "another user listed a private mount");
    // allow_other: private to the owner all the same (umask 077).
    m.umount();
    m.mount(&["-o", "allow_other"]);
    let (code, err) = user.run(&format!("ls '{mp}/vm'"));
    assert_ne!(code, 0, "listed with umask 077");
    assert!(err.contains("Permission denied"), "{err}");
    // umask=022: readable, not writable.
    m.umount();
    m.mount(&["-o", "allow_other,umask=022"]);
    let (code, err) = user.run(&format!("cat '{snap}' > /dev/null"));
    assert_eq!(code, 0, "{err}");
    let (code, err) = user.run(&format!(
        "printf x | dd of='{live}' conv=notrunc status=none"
    ));
    assert_ne!(code, 0, "another user wrote live.img");
    assert!(err.contains("Permission denied"), "{err}");
    // uid= gives the tree to that user: the live disk is theirs to write,
    // a snapshot still nobody's.
    m.umount();
    m.mount(&["-o", &format!("allow_other,uid={}", user.uid)]);
    let (code, err) = user.run(&format!(
        "printf x | dd of='{live}' conv=notrunc status=none"
    ));
    assert_eq!(code, 0, "{err}");
    let (code, _) = user.run(&format!(
        "printf x | dd of='{snap}' conv=notrunc status=none"
    ));
    assert_ne!(code, 0, "the owner wrote a snapshot image");
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(m.snap("vm", "s1"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "root: {e}");
    // A bad option is bad usage.
    m.umount();
    let out = strata(&m.repo, &["mount", &mp, "-o", "umask=999"]);
    assert_eq!(out.status.code(), Some(2));
    m.mount(&[]);
}
