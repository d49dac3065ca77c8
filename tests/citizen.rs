//! strata as a citizen of the system: mounted by mount(8), fstab and its
//! helper; installed and uninstalled; `status`, completions, man pages;
//! every listing's JSON against the README's table; errors that say what
//! happened (a dead daemon, a disk too large for the host).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    fuse_available, is_mounted, pid_alive, sh, strata, strata_ok, wait_until, Loop, STRATA,
};

const INSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mount-helpers/install");
const UNINSTALL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mount-helpers/uninstall");

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Installs the helpers under `dest` (DESTDIR) for this build of strata.
fn install_into(dest: &Path) -> Output {
    run(Command::new(INSTALL)
        .env("DESTDIR", dest)
        .arg("--strata")
        .arg(STRATA))
}

/// The daemon serving `repo`, from its lock file.
fn daemon_pid(repo: &Path) -> u32 {
    fs::read_to_string(repo.join("lock"))
        .expect("lock file")
        .trim()
        .parse()
        .expect("PID")
}

/// Unmounts `mp` and stops the daemon that served it when dropped, also
/// when a test fails.
struct MountGuard {
    mp: PathBuf,
    repo: PathBuf,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let pid = fs::read_to_string(self.repo.join("lock"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg(&self.mp).output();
        }
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).output();
        }
        if let Some(pid) = pid.filter(|&p| pid_alive(p)) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
        }
    }
}

/// `umount MP` (umount(8), not strata's), then waits for the daemon.
fn plain_umount(mp: &Path, pid: u32) {
    sh(&format!("umount '{}'", mp.display()));
    assert!(!is_mounted(mp));
    wait_until("the daemon to exit after umount(8)", || !pid_alive(pid));
}

#[test]
fn mount_helper_called_as_mount_calls_it() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    let out = install_into(&dest);
    assert!(out.status.success(), "install: {}", text(&out));
    let helper = dest.join("sbin/mount.strata");
    // A repository that does not exist yet: the mount creates it.
    let repo = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard {
        mp: mp.clone(),
        repo: repo.clone(),
    };
    // mount(8) calls helpers as: mount.TYPE SPEC DIR [-sfnv] [-o OPTS].
    let mount = |args: &[&str]| run(Command::new(&helper).arg(&repo).arg(&mp).args(args));
    let opts = "rw,nosuid,nodev,noexec,async,nouser,noatime,nodiratime,lazytime,_netdev,\
                x-systemd.automount,comment=test";
    let out = mount(&["-n", "-o", opts]);
    assert!(out.status.success(), "mount.strata: {}", text(&out));
    assert!(is_mounted(&mp));
    assert!(text(&out).contains("created repository"), "{}", text(&out));
    strata_ok(&repo, &["disk", "create", "vm", "--size", "4M"]);
    sh(&format!(
        "printf 'kept across mounts' | dd of='{}' conv=notrunc status=none",
        mp.join("vm/live.img").display()
    ));
    plain_umount(&mp, daemon_pid(&repo));

    // Read-only: no changes through its daemon, no writes to images.
    let out = mount(&["-o", "ro"]);
    assert!(out.status.success(), "mount.strata -o ro: {}", text(&out));
    let got = fs::read(mp.join("vm/live.img")).unwrap();
    assert!(got.starts_with(b"kept across mounts"), "written data lost");
    let refused = strata(&repo, &["disk", "create", "other", "--size", "1M"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused).contains("mounted read-only"),
        "{}",
        text(&refused)
    );
    let write = fs::OpenOptions::new()
        .write(true)
        .open(mp.join("vm/live.img"));
    assert!(
        write.is_err(),
        "a read-only mount let live.img open for writing"
    );
    plain_umount(&mp, daemon_pid(&repo));

    // -f (fake) mounts nothing; -v says what it would run.
    let out = mount(&["-f", "-v", "-o", "defaults"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("mount"), "-v said nothing");
    assert!(!is_mounted(&mp), "-f mounted");
    // What mount(8) cannot take is refused, by name, with mount's status.
    let out = mount(&["-o", "rw,bogus"]);
    assert_eq!(out.status.code(), Some(32), "{}", text(&out));
    assert!(
        text(&out).contains("unknown mount option \"bogus\""),
        "{}",
        text(&out)
    );
    assert!(!is_mounted(&mp));
    let out = mount(&["-z"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!is_mounted(&mp));
}

/// Restores what was at a path when the test began (or removes what the
/// test put there).
struct Restore {
    path: PathBuf,
    before: Option<Vec<u8>>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        match &self.before {
            Some(b) => {
                let _ = fs::write(&self.path, b);
            }
            None => {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

#[test]
fn mount_t_strata_and_fstab_through_mount_8() {
    if !fuse_available() {
        return;
    }
    // mount(8) finds helpers only in /sbin: this build's helper goes there
    // for the test, and whatever was there before comes back after.
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("dest");
    assert!(install_into(&dest).status.success());
    let sbin = PathBuf::from("/sbin/mount.strata");
    let _restore = Restore {
        before: fs::read(&sbin).ok(),
        path: sbin.clone(),
    };
    fs::copy(dest.join("sbin/mount.strata"), &sbin).unwrap();

    let repo = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard {
        mp: mp.clone(),
        repo: repo.clone(),
    };
    let (r, m) = (repo.display(), mp.display());
    sh(&format!("mount -t strata '{r}' '{m}'"));
    assert!(is_mounted(&mp));
    strata_ok(&repo, &["disk", "create", "vm", "--size", "1M"]);
    assert!(mp.join("vm/live.img").exists());
    plain_umount(&mp, daemon_pid(&repo));

    sh(&format!("mount -t strata -o ro '{r}' '{m}'"));
    assert_eq!(
        strata(&repo, &["snapshot", "create", "vm"]).status.code(),
        Some(1)
    );
    plain_umount(&mp, daemon_pid(&repo));

    // An fstab line, mounted by `mount -a` (as systemd's generated units
    // run mount); a second `mount -a` sees it mounted and leaves it.
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!("{r} {m} strata defaults,nofail,_netdev,x-systemd.requires=local-fs.target 0 0\n"),
    )
    .unwrap();
    sh(&format!("mount -a -T '{}'", fstab.display()));
    assert!(is_mounted(&mp));
    sh(&format!("mount -a -T '{}'", fstab.display()));
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == mp.to_str())
        .count();
    assert_eq!(mounts, 1, "mount -a mounted the repository twice");
    plain_umount(&mp, daemon_pid(&repo));
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_and_uninstall_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path();
    assert!(install_into(dest).status.success());
    let first = files_under(dest);
    let out = install_into(dest);
    assert!(out.status.success(), "second install: {}", text(&out));
    assert_eq!(
        files_under(dest),
        first,
        "a second install changed the file set"
    );
    for f in [
        "sbin/mount.strata",
        "etc/systemd/system/strata@.service",
        "etc/systemd/system/strata-snapshot@.service",
        "etc/systemd/system/strata-snapshot@.timer",
        "usr/local/share/bash-completion/completions/strata",
        "usr/local/share/zsh/site-functions/_strata",
        "usr/local/share/fish/vendor_completions.d/strata.fish",
        "usr/local/share/man/man1/strata.1",
        "usr/local/share/man/man1/strata-mount.1",
        "usr/local/share/man/man1/strata-snapshot-create.1",
    ] {
        let p = dest.join(f);
        assert!(
            fs::metadata(&p).is_ok_and(|m| m.len() > 0),
            "{f} missing or empty"
        );
        let body = fs::read_to_string(&p).unwrap();
        assert!(!body.contains("@STRATA@"), "{f}: template not filled in");
    }
    // The helper and units run this binary, named in full.
    let helper = fs::read_to_string(dest.join("sbin/mount.strata")).unwrap();
    assert!(helper.contains(&format!(
        "STRATA={}",
        fs::canonicalize(STRATA).unwrap().display()
    )));
    let unit = fs::read_to_string(dest.join("etc/systemd/system/strata@.service")).unwrap();
    assert!(unit.contains("Type=notify"));
    // systemd reads the units without a complaint, as instances for
    // /mnt/strata.
    let units = dest.join("etc/systemd/system");
    let mut instances = vec![];
    for (template, instance) in [
        ("strata@.service", "strata@mnt-strata.service"),
        (
            "strata-snapshot@.service",
            "strata-snapshot@mnt-strata.service",
        ),
        ("strata-snapshot@.timer", "strata-snapshot@mnt-strata.timer"),
    ] {
        fs::copy(units.join(template), units.join(instance)).unwrap();
        instances.push(units.join(instance));
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&instances));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    for i in &instances {
        fs::remove_file(i).unwrap();
    }
    for _ in 0..2 {
        let out = run(Command::new(UNINSTALL).env("DESTDIR", dest));
        assert!(out.status.success(), "uninstall: {}", text(&out));
        assert_eq!(
            files_under(dest),
            Vec::<String>::new(),
            "uninstall left files"
        );
    }
}

#[test]
fn completions_load_and_man_pages_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(Command::new(STRATA).args(["completions", shell]));
        assert!(out.status.success());
        assert!(
            out.stdout.len() > 1000,
            "{shell} completions are nearly empty"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("snapshot"));
    }
    // The bash script loads and registers a completion for strata.
    let got = sh(&format!(
        "source <('{STRATA}' completions bash) && complete -p strata"
    ));
    assert!(got.contains("strata"), "{got}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(STRATA).arg("manpages").arg(dir.path()));
    assert!(out.status.success(), "{}", text(&out));
    let pages = files_under(dir.path());
    for want in [
        "strata.1",
        "strata-verify.1",
        "strata-disk-create.1",
        "strata-status.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    let page = fs::read_to_string(dir.path().join("strata-disk-create.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "not a man page"
    );
    assert!(page.contains("block\\-size") || page.contains("block-size"));
}

#[test]
fn mount_with_repo_creates_a_missing_or_empty_repository_only() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    for (name, pre) in [
        ("missing", None),
        ("empty", Some(false)),
        ("other", Some(true)),
    ] {
        let repo = dir.path().join(name);
        if let Some(holds_a_file) = pre {
            fs::create_dir(&repo).unwrap();
            if holds_a_file {
                fs::write(repo.join("notes.txt"), "not a repository").unwrap();
            }
        }
        let _guard = MountGuard {
            mp: mp.clone(),
            repo: repo.clone(),
        };
        let out = strata(&repo, &["mount", mp.to_str().unwrap()]);
        if name == "other" {
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(!is_mounted(&mp));
            assert!(!repo.join("strata.repo").exists());
            assert_eq!(
                fs::read_dir(&repo).unwrap().count(),
                1,
                "it wrote into {name}"
            );
            continue;
        }
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("created repository"), "{}", text(&out));
        strata_ok(&repo, &["umount", mp.to_str().unwrap()]);
        // Mounted again, it is opened, not created anew.
        let out = strata(&repo, &["mount", mp.to_str().unwrap()]);
        assert!(out.status.success());
        assert!(!text(&out).contains("created"), "{}", text(&out));
        strata_ok(&repo, &["umount", mp.to_str().unwrap()]);
    }
}

#[test]
fn status_names_the_daemon_and_a_dead_one() {
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard {
        mp: mp.clone(),
        repo: repo.clone(),
    };
    strata_ok(&repo, &["mount", mp.to_str().unwrap()]);
    let pid = daemon_pid(&repo);
    let got: serde_json::Value =
        serde_json::from_str(&strata_ok(&repo, &["status", "--json"])).unwrap();
    assert_eq!(got["strata"], env!("CARGO_PKG_VERSION"));
    assert_eq!(got["repository"]["daemon"], true);
    assert_eq!(got["repository"]["status"]["pid"], pid);
    assert_eq!(got["repository"]["mounted_at"][0], mp.to_str().unwrap());
    let text_status = strata_ok(&repo, &["status"]);
    assert!(
        text_status.contains(&format!("by daemon PID {pid}")),
        "{text_status}"
    );

    // A daemon killed in the middle of a command: the command says so.
    strata_ok(&repo, &["disk", "create", "vm", "--size", "16M"]);
    sh(&format!(
        "dd if=/dev/urandom of='{}' bs=1M count=16 conv=notrunc status=none",
        mp.join("vm/live.img").display()
    ));
    strata_ok(&repo, &["snapshot", "create", "vm", "--name", "a"]);
    let verify = Command::new(STRATA)
        .arg("--repo")
        .arg(&repo)
        .args(["verify", "--rate", "1M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    sh(&format!("kill -9 {pid}"));
    let out = verify.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("stopped before it answered"),
        "{}",
        text(&out)
    );
    wait_until("the daemon to die", || !pid_alive(pid));
    let text_status = strata_ok(&repo, &["status"]);
    assert!(
        text_status.contains("its daemon has stopped"),
        "{text_status}"
    );
    let out = strata_ok(&repo, &["umount", mp.to_str().unwrap()]);
    assert!(out.contains("removed the stale mount"), "{out}");
    assert!(!is_mounted(&mp));
}

#[test]
fn a_disk_too_large_for_the_host_file_system_is_explained() {
    // ext4 with 4 KiB blocks holds files up to 16 TiB.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext4.img");
    sh(&format!(
        "truncate -s 64M '{0}' && mkfs.ext4 -q -b 4096 '{0}'",
        img.display()
    ));
    let mut dev = Loop::attach(&img, false);
    let host = dir.path().join("host");
    dev.mount(&host, "rw");
    let repo = host.join("repo");
    strata_ok(&repo, &["init"]);
    let out = strata(&repo, &["disk", "create", "big", "--size", "17T"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("cannot hold a file of 17 TiB") && msg.contains("XFS"),
        "{msg}"
    );
    assert!(!msg.contains("os error"), "{msg}");
    assert_eq!(strata_ok(&repo, &["disk", "list", "--json"]).trim(), "[]");
    // Nothing of the refused disk is left in the repository.
    assert_eq!(fs::read_dir(repo.join("layers")).unwrap().count(), 0);
    // Growing past the limit is refused the same way, and the disk goes on.
    strata_ok(&repo, &["disk", "create", "small", "--size", "1M"]);
    let out = strata(&repo, &["disk", "resize", "small", "--size", "17T"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("cannot hold a file of 17 TiB"));
    strata_ok(&repo, &["snapshot", "create", "small"]);
    drop(dev);
}

/// One row of the README's JSON table: the command (first cell, in
/// backticks) or a path into the previous command's output (`↳ path`),
/// and the fields it documents.
struct Row {
    command: Option<Vec<String>>,
    path: String,
    fields: Vec<String>,
}

fn json_table() -> Vec<Row> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("### JSON output").expect("README: JSON table");
    let ticked = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with("| `strata"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let first = ticked(cells[1]).remove(0);
            let fields = ticked(cells[3]);
            if cells[1].starts_with('↳') {
                Row {
                    command: None,
                    path: first,
                    fields,
                }
            } else {
                let words = first.split(' ').skip(1).map(str::to_string).collect();
                Row {
                    command: Some(words),
                    path: String::new(),
                    fields,
                }
            }
        })
        .collect()
}

/// The values at `path` (`a[].b` and so on) in `v`: every element of each
/// array on the way, none allowed to be empty.
fn at<'a>(v: &'a serde_json::Value, path: &str, what: &str) -> Vec<&'a serde_json::Value> {
    let mut here = vec![v];
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, each) = match part.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (part, false),
        };
        let mut next = vec![];
        for h in here {
            let x = &h[key];
            assert!(!x.is_null(), "{what}: no {key} in {h}");
            if each {
                let items = x.as_array().expect("an array");
                assert!(
                    !items.is_empty(),
                    "{what}: {key} is empty; the test must fill it"
                );
                next.extend(items);
            } else {
                next.push(x);
            }
        }
        here = next;
    }
    here
}

#[test]
fn every_listing_has_the_json_fields_the_readme_documents() {
    // `status` lists mounts: the repository is mounted for the table.
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    // Something in every listing: a disk with two snapshots that differ, a
    // receive cut short, a file in the quarantine, a damaged block.
    let img = dir.path().join("vm.img");
    fs::write(&img, common::random(1 << 20, 1)).unwrap();
    strata_ok(&repo, &["disk", "import", "vm", img.to_str().unwrap()]);
    strata_ok(&repo, &["snapshot", "create", "vm", "--name", "a"]);
    {
        let r = strata::store::Repository::open(&repo).unwrap();
        let d = r
            .disk(&strata::store::DiskName::parse("vm").unwrap())
            .unwrap();
        d.write_at(4096, &[7; 8192]).unwrap();
        d.flush().unwrap();
    }
    strata_ok(&repo, &["snapshot", "create", "vm", "--name", "b"]);
    let stream = dir.path().join("stream");
    strata_ok(&repo, &["send", "vm@a", "-o", stream.to_str().unwrap()]);
    let len = fs::metadata(&stream).unwrap().len();
    sh(&format!("truncate -s {} '{}'", len / 2, stream.display()));
    let other = dir.path().join("other");
    strata_ok(&other, &["init"]);
    assert_eq!(
        strata(&other, &["receive", "-i", stream.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    fs::write(repo.join("layers/stray.data"), b"nobody names me").unwrap();
    // One flipped byte in a frozen layer's data.
    let data = files_under(&repo.join("layers"))
        .into_iter()
        .filter(|f| f.ends_with(".data"))
        .min()
        .unwrap();
    let path = repo.join("layers").join(data);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&path, bytes).unwrap();

    // Mounted read-only: every listing goes through its daemon, and
    // `status` has a mount to list.
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard {
        mp: mp.clone(),
        repo: repo.clone(),
    };
    strata_ok(&repo, &["mount", mp.to_str().unwrap(), "-o", "ro"]);

    let rows = json_table();
    assert!(rows.len() >= 15, "README's JSON table lost rows");
    let mut last: Option<(String, serde_json::Value)> = None;
    let mut checked_elsewhere = false;
    for row in rows {
        if let Some(words) = &row.command {
            // tests/restore.rs checks it, with images to attach.
            checked_elsewhere = words.first().is_some_and(|w| w == "restore");
            if checked_elsewhere {
                continue;
            }
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let target = if words.first() == Some(&"receive") {
                &other
            } else {
                &repo
            };
            let out = strata(target, &words);
            // verify finds the damage: exit 1, and still its JSON.
            let expect = if words.first() == Some(&"verify") {
                1
            } else {
                0
            };
            assert_eq!(out.status.code(), Some(expect), "{words:?}: {}", text(&out));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("{words:?}: not JSON ({e}): {}", text(&out)));
            last = Some((words.join(" "), v));
        }
        if checked_elsewhere {
            continue;
        }
        let (cmd, v) = last.as_ref().expect("a command row first");
        let what = format!("{cmd} {}", row.path);
        // A top-level array: its elements carry the fields.
        let path = if row.path.is_empty() && v.is_array() {
            assert!(!v.as_array().unwrap().is_empty(), "{what}: empty; fill it");
            "[]".to_string()
        } else {
            row.path.clone()
        };
        let objects: Vec<&serde_json::Value> = if path == "[]" {
            v.as_array().unwrap().iter().collect()
        } else {
            at(v, &path, &what)
        };
        for o in objects {
            for f in &row.fields {
                assert!(o.get(f).is_some(), "{what}: no field {f:?} in {o}");
            }
        }
    }
    strata_ok(&repo, &["umount", mp.to_str().unwrap()]);
}

#[test]
fn a_daemon_of_another_version_is_named_not_misread() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    // A daemon of an older strata: it answers anything with its own
    // envelope, control protocol 4, which carried no version string.
    let listener =
        std::os::unix::net::UnixListener::bind(repo.join(strata::control::SOCKET_FILE)).unwrap();
    let old = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut len = [0u8; 4];
        conn.read_exact(&mut len).unwrap();
        let mut req = vec![0u8; u32::from_le_bytes(len) as usize];
        conn.read_exact(&mut req).unwrap();
        let body = postcard::to_stdvec(&(4u32, 7u32, "an answer of another shape")).unwrap();
        conn.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
        conn.write_all(&body).unwrap();
    });
    let out = strata(&repo, &["disk", "list"]);
    old.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("another strata")
            && msg.contains("control protocol 4")
            && msg.contains(env!("CARGO_PKG_VERSION"))
            && msg.contains("restart the mount"),
        "{msg}"
    );
}

#[test]
fn the_foreground_daemon_tells_systemd_it_is_ready() {
    if !fuse_available() {
        return;
    }
    // What strata@.service runs (Type=notify): the daemon in the
    // foreground, which sends READY=1 to $NOTIFY_SOCKET once the mount
    // answers.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let _guard = MountGuard {
        mp: mp.clone(),
        repo: repo.clone(),
    };
    let sock_path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut daemon = Command::new(STRATA)
        .arg("--repo")
        .arg(&repo)
        .args(["mount", "--foreground", "-o", "defaults"])
        .arg(&mp)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock
        .recv(&mut buf)
        .expect("no notification from the daemon");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said:?}");
    // Ready means ready: the mount answers now.
    assert!(is_mounted(&mp));
    strata_ok(&repo, &["disk", "create", "vm", "--size", "1M"]);
    assert!(mp.join("vm/live.img").exists());
    // systemctl stop: ExecStop runs strata umount; the daemon exits 0.
    strata_ok(&repo, &["umount", mp.to_str().unwrap()]);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "the daemon exited with {status}");
}
