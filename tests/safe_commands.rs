//! `export` and `disk import` as users call them, with real files, pipes,
//! FIFOs and loop devices: they refuse what would harm the repository or
//! an existing file, name what they refuse, and never leave a partial
//! result under the name asked for.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    assert_same_contents, fuse_available, repo_contents, sh, strata, strata_ok, Loop, Mounted,
    STRATA,
};
use strata::store::{DiskName, ImportSource, Repository};

fn random_file(path: &Path, bytes: usize) {
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ bytes as u64;
    let data: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(path, data).unwrap();
}

fn refused(repo: &Path, args: &[&str], expect: &str) {
    let out = strata(repo, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(
        err.contains(expect),
        "{args:?}: expected {expect:?} in {err:?}"
    );
}

/// A repository with disk `e1` (4 MiB imported from `src.img`) and its
/// snapshot `e1@a`.
fn fixture(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("repo");
    strata_ok(&repo, &["init"]);
    let src = dir.join("src.img");
    random_file(&src, 4 << 20);
    strata_ok(&repo, &["disk", "import", "e1", src.to_str().unwrap()]);
    strata_ok(&repo, &["snapshot", "create", "e1", "--name", "a"]);
    repo
}

#[test]
fn export_never_writes_into_the_repository_or_over_a_file_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture(dir.path());
    let before = repo_contents(&repo);
    let layer = fs::read_dir(repo.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap();
    // Repro 6 of the durability issue: both used to exit 0.
    let outside_link = dir.path().join("link-to-catalog");
    std::os::unix::fs::symlink(repo.join("catalog"), &outside_link).unwrap();
    let hard = dir.path().join("hard-link.data");
    fs::hard_link(&layer, &hard).unwrap();
    for (target, why) in [
        (layer.clone(), "inside the repository"),
        (repo.join("catalog"), "inside the repository"),
        (repo.join("new.img"), "inside the repository"),
        (repo.join("layers/../x.img"), "inside the repository"),
        (outside_link, "inside the repository"),
        (hard.clone(), "a file of the repository"),
    ] {
        for force in [false, true] {
            let mut args = vec!["export", "e1@a", target.to_str().unwrap()];
            if force {
                args.push("--force");
            }
            refused(&repo, &args, why);
        }
    }
    assert_same_contents(&before, &repo_contents(&repo), "refused exports");
    // An existing file needs --force, and is then replaced whole.
    let out = dir.path().join("out.img");
    fs::write(&out, "keep me").unwrap();
    refused(
        &repo,
        &["export", "e1@a", out.to_str().unwrap()],
        "it exists; add --force to replace it",
    );
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    strata_ok(&repo, &["export", "e1@a", out.to_str().unwrap(), "--force"]);
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(dir.path().join("src.img")).unwrap()
    );
    // Nothing but the export is left beside it.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("strata-export"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

/// `export IMAGE -` (and a pipe) carries the image and nothing else: the
/// summary goes to standard error. Listing into a closed pipe ends quietly.
#[test]
fn export_to_standard_output_carries_the_image_alone() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture(dir.path());
    let src = fs::read(dir.path().join("src.img")).unwrap();
    for target in ["-", "/dev/stdout"] {
        let out = strata(&repo, &["export", "e1@a", target]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == src,
            "{target}: the stream is not exactly the image"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exported e1@a to"), "{err}");
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{STRATA}' --repo '{}' disk list --json | true; echo \"status ${{PIPESTATUS[0]}}\"",
            repo.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_killed_export_leaves_nothing_under_the_name_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    let src = dir.path().join("big.img");
    random_file(&src, 256 << 20);
    strata_ok(&repo, &["disk", "import", "big", src.to_str().unwrap()]);
    fs::remove_file(&src).unwrap();
    let out = dir.path().join("out.img");
    let mut child = Command::new(STRATA)
        .arg("--repo")
        .arg(&repo)
        .args(["export", "big", out.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has started writing its temporary file.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tmp = loop {
        let found = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(".out.img.strata-export-"));
        if let Some(t) = found {
            break t;
        }
        assert!(Instant::now() < deadline, "no temporary file appeared");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.exists(),
        "a killed export left {} looking complete",
        out.display()
    );
    assert!(
        tmp.file_name().unwrap().to_string_lossy().starts_with('.'),
        "what is left is hidden and named as unfinished: {}",
        tmp.display()
    );
}

#[test]
fn export_onto_a_block_device_writes_in_place_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let repo = fixture(dir.path());
    let dev_file = dir.path().join("dev.img");
    fs::write(&dev_file, vec![0xEEu8; 5 << 20]).unwrap();
    let dev = Loop::attach(&dev_file, false);
    let out = strata(&repo, &["export", "e1@a", &dev.dev]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("in place onto block device"), "{said}");
    sh("sync");
    let got = fs::read(&dev_file).unwrap();
    let src = fs::read(dir.path().join("src.img")).unwrap();
    assert!(
        got[..4 << 20] == src[..],
        "the device does not hold the image"
    );
    assert!(
        got[4 << 20..].iter().all(|&b| b == 0xEE),
        "written past the image"
    );
    // Too small a device is refused before anything is written.
    strata_ok(&repo, &["disk", "create", "huge", "--size", "6M"]);
    refused(
        &repo,
        &["export", "huge", &dev.dev],
        "the device holds 5242880 bytes, the image 6291456",
    );
    drop(dev);
    assert!(fs::read(&dev_file).unwrap()[..4 << 20] == src[..]);
}

fn disk_names(repo: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&strata_ok(repo, &["disk", "list", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `strata disk import` with `input` on standard input.
fn import_stdin(repo: &Path, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = Command::new(STRATA)
        .arg("--repo")
        .arg(repo)
        .args(["disk", "import"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The importer may stop reading early (and close the pipe) on error.
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Imports from files, block devices, standard input and FIFOs, with the
/// repository opened by the command and through a mount's daemon.
fn imports_take_every_kind_of_source(repo: &Path, dir: &Path) {
    let src = dir.join("src.img");
    let bytes = fs::read(&src).unwrap();
    let check = |disk: &str| {
        let out = dir.join(format!("{disk}.out"));
        strata_ok(repo, &["export", disk, out.to_str().unwrap()]);
        assert!(
            fs::read(&out).unwrap() == bytes,
            "{disk} differs from its source"
        );
        fs::remove_file(&out).unwrap();
    };
    // Standard input, with --size; without it, or with a wrong one, refused
    // and no disk is left.
    let size = bytes.len().to_string();
    let (code, err) = import_stdin(repo, &["p1", "-", "--size", &size], &bytes);
    assert_eq!(code, 0, "{err}");
    check("p1");
    let (code, err) = import_stdin(repo, &["p2", "-"], &bytes);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("give its exact size with --size"), "{err}");
    let (code, err) = import_stdin(repo, &["p2", "-", "--size", &size], &bytes[..1000]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("ended after 1000 bytes"), "{err}");
    let (code, err) = import_stdin(repo, &["p2", "-", "--size", "1M"], &bytes);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("holds more than the 1048576 bytes --size gives"),
        "{err}"
    );
    assert!(!disk_names(repo).contains(&"p2".to_string()));
    // A FIFO: refused at once without --size (it used to hang), imported
    // with it.
    let fifo = dir.join("fifo");
    if !fifo.exists() {
        sh(&format!("mkfifo '{}'", fifo.display()));
    }
    let t = Instant::now();
    let out = strata(repo, &["disk", "import", "f1", fifo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is a FIFO"));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the FIFO import hung"
    );
    let writer = {
        let (fifo, src) = (fifo.clone(), src.clone());
        std::thread::spawn(move || fs::write(&fifo, fs::read(src).unwrap()).unwrap())
    };
    strata_ok(
        repo,
        &[
            "disk",
            "import",
            "f1",
            fifo.to_str().unwrap(),
            "--size",
            &size,
        ],
    );
    writer.join().unwrap();
    check("f1");
    // A block device imports like the file it holds.
    let dev = Loop::attach(&src, true);
    strata_ok(repo, &["disk", "import", "b1", &dev.dev]);
    drop(dev);
    check("b1");
    // A directory, a missing file and a file of the repository are refused
    // by name.
    refused(
        repo,
        &["disk", "import", "x", dir.to_str().unwrap()],
        "it is a directory",
    );
    refused(
        repo,
        &["disk", "import", "x", "/no/such.img"],
        "/no/such.img: No such file",
    );
    let lock = repo.join("lock");
    refused(
        repo,
        &["disk", "import", "x", lock.to_str().unwrap()],
        "it is a file of the repository",
    );
    assert!(!disk_names(repo).contains(&"x".to_string()));
}

#[test]
fn import_takes_files_devices_and_pipes_and_refuses_what_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    strata_ok(&repo, &["init"]);
    random_file(&dir.path().join("src.img"), 3 << 20);
    imports_take_every_kind_of_source(&repo, dir.path());
}

#[test]
fn import_and_export_through_a_mount_hand_over_their_files() {
    if !fuse_available() {
        return;
    }
    let m = Mounted::new(&[], &[]);
    random_file(&m.path("src.img"), 3 << 20);
    imports_take_every_kind_of_source(&m.repo, m.dir.path());
    // The daemon refuses a descriptor of the repository's own files too.
    refused(
        &m.repo,
        &[
            "export",
            "p1",
            m.repo.join("catalog").to_str().unwrap(),
            "--force",
        ],
        "inside the repository",
    );
    assert!(
        m.live("p1").exists(),
        "an imported disk shows in the mount at once"
    );
}

/// A regular file that shrinks while it is read fails the import (it used
/// to report success), and no disk or file is left behind.
#[test]
fn a_source_that_changes_size_while_it_is_read_fails_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let src = dir.path().join("src.img");
    random_file(&src, 16 << 20);
    let repo = Repository::init(&root).unwrap();
    let layers_before = fs::read_dir(root.join("layers")).unwrap().count();
    let file = fs::File::open(&src).unwrap();
    let shrink = fs::OpenOptions::new().write(true).open(&src).unwrap();
    let source = ImportSource {
        file: &file,
        name: &src,
        size: None,
    };
    let mut first = true;
    let e = repo
        .import_disk(
            &DiskName::parse("s").unwrap(),
            &source,
            65536,
            &mut |_, _| {
                if first {
                    shrink.set_len(5 << 20).unwrap();
                    first = false;
                }
            },
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("ended after") || msg.contains("changed size while it was read"),
        "{msg}"
    );
    assert!(repo.disks().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(root.join("layers")).unwrap().count(),
        layers_before
    );
}
