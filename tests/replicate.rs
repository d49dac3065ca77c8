//! Copying history to a second repository: full and incremental streams,
//! through the store and through the command line (`send | receive`);
//! bad streams refused with their own message and the target unchanged;
//! receives cut short and resumed.

mod common;

use std::path::Path;

use common::{random, repo_contents, strata, strata_ok};
use strata::store::identity::Identity;
use strata::store::{DiskName, ImageRead, Repository, SendBase, SnapName, SnapshotRef};

fn snap(s: &str) -> SnapshotRef {
    SnapshotRef::parse(s).unwrap()
}

fn read_all(img: &dyn ImageRead) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    img.read_at(0, &mut buf).unwrap();
    buf
}

/// A source repository with disk `vm` (8 MiB, 64 KiB blocks) and three
/// snapshots `s1`..`s3`, each after random writes, a discard and zeros;
/// the disk grows before `s3`. Returns each snapshot's bytes.
fn source(root: &Path) -> (Repository, Vec<(String, Vec<u8>)>) {
    let repo = Repository::init(root).unwrap();
    let vm = DiskName::parse("vm").unwrap();
    repo.create_disk(&vm, 8 << 20, 65536).unwrap();
    let disk = repo.disk(&vm).unwrap();
    let mut out = vec![];
    for round in 1..=3u64 {
        if round == 3 {
            repo.resize_disk(&vm, (10 << 20) + 4096).unwrap();
        }
        let disk = if round == 3 {
            repo.disk(&vm).unwrap()
        } else {
            disk.clone()
        };
        if round == 1 {
            disk.write_at(0, &random(6 << 20, 99)).unwrap();
        }
        for i in 0..12u64 {
            let off = (i * 7 + round * 13) % 120 * 65536 + (i % 3) * 1000;
            disk.write_at(off, &random(70_000, round * 100 + i))
                .unwrap();
        }
        disk.write_at(round * 300_000, &vec![0u8; 65536 * 2])
            .unwrap();
        disk.discard(round * 1_000_000, 3 * 65536).unwrap();
        let name = format!("s{round}");
        repo.snapshot(&vm, Some(SnapName::parse(&name).unwrap()))
            .unwrap();
        let img = repo.open_snapshot(&snap(&format!("vm@{name}"))).unwrap();
        out.push((name, read_all(&img)));
    }
    (repo, out)
}

fn send(repo: &Repository, s: &str, from: Option<&str>) -> Vec<u8> {
    let mut out = vec![];
    repo.send(
        &snap(s),
        from.map(|f| SendBase::parse(f).unwrap()).as_ref(),
        None,
        &mut out,
        &mut |_, _| {},
    )
    .unwrap();
    out
}

#[test]
fn full_then_incrementals_arrive_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (src, images) = source(&dir.path().join("a"));
    let dst = Repository::init(&dir.path().join("b")).unwrap();
    let mut prev: Option<String> = None;
    let mut sizes = vec![];
    for (name, bytes) in &images {
        let s = format!("vm@{name}");
        let stream = send(&src, &s, prev.as_deref());
        sizes.push(stream.len());
        let rep = dst.receive(&mut &stream[..], None, &mut |_, _| {}).unwrap();
        assert_eq!(rep.snapshot, s);
        assert!(!rep.already);
        let got = dst.open_snapshot(&snap(&s)).unwrap();
        assert!(read_all(&got) == *bytes, "{s} arrived different");
        assert_eq!(
            dst.identity(&snap(&s)).unwrap(),
            src.identity(&snap(&s)).unwrap()
        );
        assert_eq!(dst.identity(&snap(&s)).unwrap(), Identity::of_bytes(bytes));
        // The same stream again changes nothing.
        let again = dst.receive(&mut &stream[..], None, &mut |_, _| {}).unwrap();
        assert!(again.already);
        prev = Some(s);
    }
    // Incremental streams carry the changes, not the disk.
    assert!(sizes[1] < sizes[0], "{sizes:?}");
    // A drill disk on the replica: written to, it changes no received
    // snapshot, and a later receive still applies.
    let drill = DiskName::parse("drill").unwrap();
    dst.create_disk_from(&drill, &snap("vm@s2")).unwrap();
    dst.disk(&drill)
        .unwrap()
        .write_at(0, &[0xee; 65536])
        .unwrap();
    assert!(read_all(&dst.open_snapshot(&snap("vm@s2")).unwrap()) == images[1].1);
    // Sent again (while the drill exists) as another disk, from s1: the
    // base is found by identity.
    let stream = send(&src, "vm@s3", Some("vm@s1"));
    let rep = dst
        .receive(
            &mut &stream[..],
            Some(&DiskName::parse("copy").unwrap()),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(rep.snapshot, "copy@s3");
    assert!(read_all(&dst.open_snapshot(&snap("copy@s3")).unwrap()) == images[2].1);
    // Deleting the drill gives its space back, and the replica reads the same.
    let used = dst.usage(None).unwrap().used_bytes;
    dst.delete_disk(&drill, false).unwrap();
    let after = dst.usage(None).unwrap().used_bytes;
    assert!(
        after + 65536 <= used,
        "the drill's block stayed: {used} then {after}"
    );
    assert!(read_all(&dst.open_snapshot(&snap("vm@s2")).unwrap()) == images[1].1);
}

/// Receives `stream` into a fresh copy of `base_root` and checks it is
/// refused with `expect` in its message and leaves the repository as it was.
fn refused(base_root: &Path, stream: &[u8], expect: &str, what: &str) {
    let before = repo_contents(base_root);
    let repo = Repository::open(base_root).unwrap();
    let e = repo
        .receive(&mut &stream[..], None, &mut |_, _| {})
        .expect_err(what)
        .to_string();
    assert!(e.contains(expect), "{what}: expected {expect:?} in {e:?}");
    repo.abort_receives(None).unwrap();
    drop(repo);
    let after = repo_contents(base_root);
    let visible = |m: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>| {
        m.iter()
            .filter(|(p, _)| !p.starts_with("reserve"))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert!(
        visible(&before) == visible(&after),
        "{what}: the target changed"
    );
}

#[test]
fn bad_streams_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(&dir.path().join("a"));
    let b = dir.path().join("b");
    {
        let dst = Repository::init(&b).unwrap();
        let full = send(&src, "vm@s1", None);
        dst.receive(&mut &full[..], None, &mut |_, _| {}).unwrap();
    }
    let inc = send(&src, "vm@s2", Some("vm@s1"));
    // Cut short anywhere.
    for cut in [0, 10, 16, 30, 200, inc.len() / 2, inc.len() - 1] {
        refused(&b, &inc[..cut], "", &format!("cut at {cut}"));
    }
    refused(&b, &inc[..inc.len() / 2], "cut short", "cut in the middle");
    // One flipped bit anywhere: header, data, checksums, trailer.
    for at in [
        3,
        12,
        20,
        40,
        60,
        100,
        500,
        inc.len() / 3,
        inc.len() - 40,
        inc.len() - 1,
    ] {
        let mut bad = inc.clone();
        bad[at] ^= 0x20;
        // The preamble names what it is; past it, every byte is covered by
        // a record checksum or the whole-stream hash.
        let expect = match at {
            0..8 => "not a strata send stream",
            8..12 => "format version",
            _ => "damaged",
        };
        refused(&b, &bad, expect, &format!("bit flipped at {at}"));
    }
    refused(
        &b,
        &{
            let mut x = inc.clone();
            x[0] ^= 1;
            x
        },
        "not a strata send stream",
        "bad magic",
    );
    let mut bad = inc.clone();
    bad[200] ^= 0x20;
    refused(&b, &bad, "damaged", "flipped data");
    // Records reordered or repeated: a record's sequence number gives it away.
    let recs = records(&inc);
    assert!(recs.len() >= 4, "{}", recs.len());
    let mut swapped = inc[..16].to_vec();
    swapped.extend_from_slice(&inc[recs[0].clone()]);
    swapped.extend_from_slice(&inc[recs[2].clone()]);
    swapped.extend_from_slice(&inc[recs[1].clone()]);
    for r in &recs[3..] {
        swapped.extend_from_slice(&inc[r.clone()]);
    }
    refused(&b, &swapped, "reordered", "records swapped");
    let mut repeated = inc[..16].to_vec();
    repeated.extend_from_slice(&inc[recs[0].clone()]);
    repeated.extend_from_slice(&inc[recs[1].clone()]);
    repeated.extend_from_slice(&inc[recs[1].clone()]);
    refused(&b, &repeated, "reordered or repeated", "record repeated");
    // The wrong base: s3 from s2, which the target does not have.
    let wrong = send(&src, "vm@s3", Some("vm@s2"));
    refused(
        &b,
        &wrong,
        "no snapshot here has that content",
        "wrong base",
    );
    // Another geometry: a disk of 4 KiB blocks with the same bytes as s1
    // has s1's identity, but a stream from it cannot extend s1's layers.
    let c = dir.path().join("c");
    let other = Repository::init(&c).unwrap();
    let img = src.open_snapshot(&snap("vm@s1")).unwrap();
    let vm = DiskName::parse("vm").unwrap();
    other.create_disk(&vm, img.size(), 4096).unwrap();
    other
        .disk(&vm)
        .unwrap()
        .write_at(0, &read_all(&img))
        .unwrap();
    other
        .snapshot(&vm, Some(SnapName::parse("s1").unwrap()))
        .unwrap();
    other.disk(&vm).unwrap().write_at(0, b"more").unwrap();
    other
        .snapshot(&vm, Some(SnapName::parse("x").unwrap()))
        .unwrap();
    assert_eq!(
        other.identity(&snap("vm@s1")).unwrap(),
        src.identity(&snap("vm@s1")).unwrap()
    );
    let mut geo = vec![];
    other
        .send(
            &snap("vm@x"),
            Some(&SendBase::Snapshot(snap("vm@s1"))),
            None,
            &mut geo,
            &mut |_, _| {},
        )
        .unwrap();
    refused(&b, &geo, "blocks here and the stream", "other block size");
    // The good stream still applies after all that.
    let dst = Repository::open(&b).unwrap();
    dst.receive(&mut &inc[..], None, &mut |_, _| {}).unwrap();
}

/// The byte ranges of each record after the preamble.
fn records(s: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = vec![];
    let mut at = 16;
    while at + 24 <= s.len() {
        let len = u32::from_le_bytes(s[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push(at..at + 24 + len);
        at += 24 + len;
    }
    out
}

#[test]
fn a_receive_cut_short_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a");
    let repo = Repository::init(&root).unwrap();
    let vm = DiskName::parse("big").unwrap();
    // 200 MiB of data: across a receive checkpoint or two.
    repo.create_disk(&vm, 256 << 20, 65536).unwrap();
    let disk = repo.disk(&vm).unwrap();
    for i in 0..200u64 {
        disk.write_at(i << 20, &random(1 << 20, i)).unwrap();
    }
    repo.snapshot(&vm, Some(SnapName::parse("s").unwrap()))
        .unwrap();
    let full = send(&repo, "big@s", None);
    let dst = Repository::init(&dir.path().join("b")).unwrap();
    for cut in [full.len() / 3, full.len() * 3 / 4] {
        dst.receive(&mut &full[..cut], None, &mut |_, _| {})
            .unwrap_err();
        assert!(
            dst.snapshot_info(&snap("big@s")).is_err(),
            "half a receive is visible"
        );
        let parts = dst.partial_receives().unwrap();
        assert_eq!(parts.len(), 1, "{parts:?}");
        assert!(parts[0].received_to > 0, "{parts:?}");
        let token = strata::store::ResumeToken::parse(&parts[0].token).unwrap();
        let mut rest = vec![];
        repo.send(
            &snap("big@s"),
            None,
            Some(&token),
            &mut rest,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(rest.len() < full.len() - parts[0].received_to as usize + (1 << 20));
        if cut == full.len() / 3 {
            // Cut short again: the resumed stream resumes too.
            dst.receive(&mut &rest[..rest.len() / 2], None, &mut |_, _| {})
                .unwrap_err();
            continue;
        }
        dst.receive(&mut &rest[..], None, &mut |_, _| {}).unwrap();
    }
    assert!(dst.partial_receives().unwrap().is_empty());
    let got = read_all(&dst.open_snapshot(&snap("big@s")).unwrap());
    let want = read_all(&repo.open_snapshot(&snap("big@s")).unwrap());
    assert!(got == want, "the resumed receive differs");
    // A token for another snapshot is refused by the sender.
    let other = strata::store::ResumeToken {
        identity: [1; 32],
        base: None,
        offset: 0,
    };
    let e = repo
        .send(
            &snap("big@s"),
            None,
            Some(&other),
            &mut vec![],
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(e.to_string().contains("another snapshot"), "{e}");
}

/// The commands, piped: `strata send … | strata --repo R2 receive`.
#[test]
fn send_piped_into_receive_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    drop(source(&a));
    strata_ok(&b, &["init"]);
    let exe = env!("CARGO_BIN_EXE_strata");
    let pipe = |args: &str| {
        common::sh(&format!(
            "'{exe}' --repo '{}' send {args} | '{exe}' --repo '{}' receive",
            a.display(),
            b.display()
        ))
    };
    assert!(pipe("vm@s1").contains("received vm@s1, full"));
    assert!(pipe("vm@s2 --from vm@s1").contains("received vm@s2, incremental"));
    assert_eq!(
        strata_ok(&a, &["snapshot", "id", "vm@s2"]),
        strata_ok(&b, &["snapshot", "id", "vm@s2"])
    );
    // A stream to a file, then taken in from it.
    let f = dir.path().join("s3.stream");
    strata_ok(
        &a,
        &[
            "send",
            "vm@s3",
            "--from",
            "vm@s2",
            "-o",
            f.to_str().unwrap(),
        ],
    );
    let out = strata(&a, &["send", "vm@s3", "-o", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --force"));
    strata_ok(&b, &["receive", "-i", f.to_str().unwrap()]);
    let ea = dir.path().join("a.img");
    let eb = dir.path().join("b.img");
    strata_ok(&a, &["export", "vm@s3", ea.to_str().unwrap()]);
    strata_ok(&b, &["export", "vm@s3", eb.to_str().unwrap()]);
    common::sh(&format!("cmp '{}' '{}'", ea.display(), eb.display()));
    assert!(strata_ok(&b, &["receive", "--status"]).contains("no receive"));
}

/// Both repositories mounted: the sender's daemon writes the stream while
/// `live.img` is written; the receiver's daemon takes it in, and the
/// snapshot shows in its mount at once and reads the same with `cmp`.
#[test]
fn send_and_receive_between_two_mounts() {
    if !common::fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let a = common::Mounted::new(&[("vm", "64M")], &[]);
    let b = common::Mounted::new(&[], &[]);
    let live = a.live("vm");
    let f = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random(8 << 20, 1), 0).unwrap();
    f.sync_all().unwrap();
    a.snapshot("vm", "one");
    f.write_all_at(&random(1 << 20, 2), 32 << 20).unwrap();
    f.sync_all().unwrap();
    a.snapshot("vm", "two");
    let exe = env!("CARGO_BIN_EXE_strata");
    for (s, from) in [("vm@one", ""), ("vm@two", "--from vm@one")] {
        // A writer keeps writing meanwhile.
        f.write_all_at(&random(65536, 3), 40 << 20).unwrap();
        common::sh(&format!(
            "'{exe}' --repo '{}' send {s} {from} | '{exe}' --repo '{}' receive",
            a.repo.display(),
            b.repo.display()
        ));
        let name = s.split_once('@').unwrap().1;
        common::sh(&format!(
            "cmp '{}' '{}'",
            a.snap("vm", name).display(),
            b.snap("vm", name).display()
        ));
    }
    assert_eq!(
        strata_ok(&a.repo, &["snapshot", "id", "vm@two"]),
        strata_ok(&b.repo, &["snapshot", "id", "vm@two"])
    );
}

/// `apply` onto a raw file: three rounds leave it equal to each snapshot;
/// a stream for another base is refused before anything is written; an
/// apply cut short says so and the same stream again finishes it.
#[test]
fn apply_brings_a_raw_file_to_each_snapshot() {
    use strata::store::apply::{apply, ApplyOptions};
    let dir = tempfile::tempdir().unwrap();
    let (src, images) = source(&dir.path().join("a"));
    let target = dir.path().join("vm.img");
    std::fs::File::create(&target).unwrap();
    let opts = ApplyOptions {
        target: &target,
        state: None,
        trust_base: false,
        no_verify: false,
    };
    let full = send(&src, "vm@s1", None);
    apply(&mut &full[..], &opts, &mut |_, _| {}).unwrap();
    assert!(std::fs::read(&target).unwrap() == images[0].1);
    // s3 from s2 onto a file that is s1: refused, the file unchanged.
    let wrong = send(&src, "vm@s3", Some("vm@s2"));
    let e = apply(&mut &wrong[..], &opts, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("is not the stream's base"), "{e}");
    assert!(std::fs::read(&target).unwrap() == images[0].1);
    // Cut short half-way: reported, then finished by the same stream.
    let inc = send(&src, "vm@s2", Some("vm@s1"));
    apply(&mut &inc[..inc.len() / 2], &opts, &mut |_, _| {}).unwrap_err();
    let e = apply(&mut &wrong[..], &opts, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("was cut short"), "{e}");
    let r = apply(&mut &inc[..], &opts, &mut |_, _| {}).unwrap();
    assert!(r.finished_earlier && r.verified);
    assert!(std::fs::read(&target).unwrap() == images[1].1);
    let inc = send(&src, "vm@s3", Some("vm@s2"));
    apply(&mut &inc[..], &opts, &mut |_, _| {}).unwrap();
    assert!(
        std::fs::read(&target).unwrap() == images[2].1,
        "the disk grew: so does the file"
    );
    assert!(!dir.path().join("vm.img.strata-apply").exists());
}

/// The same onto a loop device, through the command.
#[test]
fn apply_onto_a_loop_device() {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("skipped: no loop devices");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let (src, images) = source(&a);
    let size = images[2].1.len() as u64;
    let backing = dir.path().join("dev.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(size)
        .unwrap();
    // Garbage where the full stream leaves zeros: it must be zeroed.
    common::sh(&format!(
        "dd if=/dev/urandom of='{}' bs=64K count=8 seek=100 conv=notrunc status=none",
        backing.display()
    ));
    let lo = common::Loop::attach(&backing, false);
    let state = dir.path().join("dev.apply");
    let streams = [
        send(&src, "vm@s1", None),
        send(&src, "vm@s2", Some("vm@s1")),
        send(&src, "vm@s3", Some("vm@s2")),
    ];
    drop(src);
    for (i, s) in streams.iter().enumerate() {
        let f = dir.path().join(format!("{i}.stream"));
        std::fs::write(&f, s).unwrap();
        let out = strata(
            &a,
            &[
                "apply",
                lo.dev.as_str(),
                "--state",
                state.to_str().unwrap(),
                "-i",
                f.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = images[i].1.len();
        let got = common::read_range(Path::new(&lo.dev), 0, n);
        assert!(got == images[i].1, "round {i}: the device differs");
    }
}

/// A sent snapshot deleted at the source leaves a bookmark: `send --from
/// DISK#SNAP` still makes an incremental stream the replica takes.
#[test]
fn a_bookmark_outlives_the_sent_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let (src, images) = source(&a);
    let dst = Repository::init(&b).unwrap();
    let full = send(&src, "vm@s1", None);
    dst.receive(&mut &full[..], None, &mut |_, _| {}).unwrap();
    src.delete_snapshots(&[snap("vm@s1")]).unwrap();
    src.delete_snapshots(&[snap("vm@s2")]).unwrap();
    let marks = src.bookmarks(None).unwrap();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert!(!marks[0].snapshot_exists);
    let inc = send(&src, "vm@s3", Some("vm#s1"));
    assert!(
        inc.len() < full.len() * 2,
        "{} vs {}",
        inc.len(),
        full.len()
    );
    let rep = dst.receive(&mut &inc[..], None, &mut |_, _| {}).unwrap();
    assert!(rep.incremental);
    assert!(read_all(&dst.open_snapshot(&snap("vm@s3")).unwrap()) == images[2].1);
    // Sending s3 dropped the older bookmark; s3's own is there.
    let marks = src.bookmarks(None).unwrap();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].name, "s3");
    drop(src);
    // The listing shows bookmarks apart, and a missing one is named.
    let out = strata_ok(&a, &["snapshot", "list", "vm"]);
    assert!(!out.contains("Bookmarks"), "{out}");
    strata_ok(&a, &["snapshot", "delete", "vm@s3"]);
    let out = strata_ok(&a, &["snapshot", "list", "vm"]);
    assert!(
        out.contains("Bookmarks of deleted snapshots") && out.contains("vm#s3"),
        "{out}"
    );
    let out = strata(
        &a,
        &["send", "vm@s3", "--from", "vm#nope", "-o", "/dev/null"],
    );
    assert_eq!(out.status.code(), Some(1));
}

/// `changes/` in the mount: each image's data ranges (SEEK_DATA and
/// SEEK_HOLE, as tools walk them) are what `strata diff` gives, they read
/// as the snapshot, and everything else reads as zeros; `A~B.img` is
/// looked up for any pair.
#[test]
fn changes_images_hold_what_each_snapshot_changed() {
    if !common::fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let m = common::Mounted::new(&[("vm", "32M")], &[]);
    let live = m.live("vm");
    let f = std::fs::OpenOptions::new().write(true).open(&live).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random(3 << 20, 1), 1 << 20).unwrap();
    f.sync_all().unwrap();
    m.snapshot("vm", "a");
    f.write_all_at(&vec![0u8; 65536], 1 << 20).unwrap(); // changed to zeros
    f.write_all_at(&random(200_000, 2), 20 << 20).unwrap();
    f.sync_all().unwrap();
    m.snapshot("vm", "b");
    f.write_all_at(&random(4096, 3), 30 << 20).unwrap();
    f.sync_all().unwrap();
    m.snapshot("vm", "c");
    let changes = m.mp.join("vm").join("changes");
    let mut names: Vec<String> = std::fs::read_dir(&changes)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.img", "b.img", "c.img"]);
    for (name, from, to) in [
        ("a.img", None, "a"),
        ("b.img", Some("a"), "b"),
        ("c.img", Some("b"), "c"),
        ("a~c.img", Some("a"), "c"),
    ] {
        let path = changes.join(name);
        let mut args = vec!["diff", "--json"];
        let (fa, ta) = (from.map(|f| format!("vm@{f}")), format!("vm@{to}"));
        if let Some(f) = &fa {
            args.push(f);
        }
        args.push(&ta);
        let want: Vec<(u64, u64)> =
            serde_json::from_str::<serde_json::Value>(&strata_ok(&m.repo, &args))
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
                .collect();
        assert!(!want.is_empty(), "{name}");
        assert_eq!(data_ranges(&path), want, "{name}");
        let img = std::fs::read(&path).unwrap();
        let snap = std::fs::read(m.snap("vm", to)).unwrap();
        let mut pos = 0usize;
        for &(o, l) in &want {
            assert!(
                img[pos..o as usize].iter().all(|&b| b == 0),
                "{name}: a hole holds data"
            );
            assert!(img[o as usize..(o + l) as usize] == snap[o as usize..(o + l) as usize]);
            pos = (o + l) as usize;
        }
        assert!(img[pos..].iter().all(|&b| b == 0));
    }
    // The block changed to zeros is data in b's changes.
    assert_eq!(data_ranges(&changes.join("b.img"))[0], (1 << 20, 65536));
}

/// Data ranges of a file, walked with SEEK_DATA and SEEK_HOLE.
fn data_ranges(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    let mut out = vec![];
    let mut pos = 0;
    while pos < size {
        let Some(d) = strata::sys::seek_data(&f, pos).unwrap() else {
            break;
        };
        let h = strata::sys::seek_hole(&f, d).unwrap();
        out.push((d, h - d));
        pos = h;
    }
    out
}

/// `export --format vhd` writes a fixed VHD qemu-img reads with the right
/// size and finds identical to the raw export; `disk import` takes it back
/// (footer checked) with the same identity.
#[test]
fn vhd_out_and_in() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    drop(source(&a));
    let vhd = dir.path().join("s3.vhd");
    let raw = dir.path().join("s3.img");
    strata_ok(
        &a,
        &["export", "vm@s3", vhd.to_str().unwrap(), "--format", "vhd"],
    );
    strata_ok(&a, &["export", "vm@s3", raw.to_str().unwrap()]);
    let info = common::sh(&format!(
        "qemu-img info -f vpc --output json '{}'",
        vhd.display()
    ));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let raw_len = std::fs::metadata(&raw).unwrap().len();
    assert_eq!(info["virtual-size"].as_u64(), Some(raw_len));
    common::sh(&format!(
        "qemu-img compare -f vpc -F raw '{}' '{}'",
        vhd.display(),
        raw.display()
    ));
    strata_ok(&a, &["disk", "import", "back", vhd.to_str().unwrap()]);
    strata_ok(&a, &["snapshot", "create", "back", "--name", "s"]);
    assert_eq!(
        strata_ok(&a, &["snapshot", "id", "back@s"]),
        strata_ok(&a, &["snapshot", "id", "vm@s3"])
    );
    // A damaged footer is named, and nothing is imported.
    let mut bytes = std::fs::read(&vhd).unwrap();
    let n = bytes.len();
    bytes[n - 300] ^= 1;
    let bad = dir.path().join("bad.vhd");
    std::fs::write(&bad, &bytes).unwrap();
    let out = strata(&a, &["disk", "import", "bad", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!strata_ok(&a, &["disk", "list"]).contains("bad"));
}

/// Three rounds of ext4 with files: a full send, then incrementals, one
/// of them while both repositories are mounted. Each received snapshot has
/// its source's identity, exports bit-identical, and its ext4 mounts
/// read-only with the files of its round; a drill disk made from the first
/// received snapshot is written between rounds and changes none of them.
#[test]
fn ext4_history_copied_round_by_round() {
    if !common::fuse_available() {
        eprintln!("skipped: /dev/fuse is missing");
        return;
    }
    let a = common::Mounted::new(&[("vm", "64M")], &[]);
    let top = tempfile::tempdir().unwrap();
    let b_repo = top.path().join("b");
    let b_mp = top.path().join("bmnt");
    std::fs::create_dir(&b_mp).unwrap();
    strata_ok(&b_repo, &["init"]);
    let live = a.live("vm");
    common::sh(&format!("mkfs.ext4 -q -F '{}'", live.display()));
    let exe = env!("CARGO_BIN_EXE_strata");
    let fsdir = top.path().join("fs");
    let mut b_pid = None;
    for round in 1..=3u64 {
        {
            let mut lo = common::Loop::attach(&live, false);
            lo.mount(&fsdir, "rw");
            std::fs::write(
                fsdir.join(format!("round{round}.bin")),
                random(300_000, round),
            )
            .unwrap();
            std::fs::write(fsdir.join("latest"), format!("round {round}")).unwrap();
            if round == 3 {
                std::fs::remove_file(fsdir.join("round1.bin")).unwrap();
            }
            lo.umount(&fsdir);
        }
        let name = format!("r{round}");
        a.snapshot("vm", &name);
        if round == 2 {
            strata_ok(&b_repo, &["mount", b_mp.to_str().unwrap()]);
            b_pid = Some(
                std::fs::read_to_string(b_repo.join("lock"))
                    .unwrap()
                    .trim()
                    .to_string(),
            );
            // The drill is written through the replica's mount.
            let drill = b_mp.join("drill").join("live.img");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&drill)
                .unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&random(1 << 20, 77), 0).unwrap();
            f.sync_all().unwrap();
        }
        let from = if round == 1 {
            String::new()
        } else {
            format!("--from vm@r{}", round - 1)
        };
        common::sh(&format!(
            "'{exe}' --repo '{}' send vm@{name} {from} | '{exe}' --repo '{}' receive",
            a.repo.display(),
            b_repo.display()
        ));
        if round == 1 {
            strata_ok(&b_repo, &["disk", "create", "drill", "--from", "vm@r1"]);
        }
        if round == 2 {
            strata_ok(&b_repo, &["umount", b_mp.to_str().unwrap()]);
            let pid = b_pid.take().unwrap();
            common::wait_until("the replica's daemon to exit", || {
                !common::pid_alive(pid.parse().unwrap())
            });
        }
        let id = |repo: &Path, s: &str| strata_ok(repo, &["snapshot", "id", s]);
        for r in 1..=round {
            let s = format!("vm@r{r}");
            assert_eq!(id(&a.repo, &s), id(&b_repo, &s), "{s} after round {round}");
        }
        let (ea, eb) = (top.path().join("a.img"), top.path().join("b.img"));
        strata_ok(
            &a.repo,
            &[
                "export",
                &format!("vm@{name}"),
                ea.to_str().unwrap(),
                "--force",
            ],
        );
        strata_ok(
            &b_repo,
            &[
                "export",
                &format!("vm@{name}"),
                eb.to_str().unwrap(),
                "--force",
            ],
        );
        common::sh(&format!("cmp '{}' '{}'", ea.display(), eb.display()));
        let seen = top.path().join("seen");
        let _lo = common::clean_ext4(&eb, &seen);
        assert_eq!(
            std::fs::read_to_string(seen.join("latest")).unwrap(),
            format!("round {round}")
        );
        assert!(
            std::fs::read(seen.join(format!("round{round}.bin"))).unwrap()
                == random(300_000, round)
        );
        assert_eq!(seen.join("round1.bin").exists(), round < 3);
    }
}

/// Receives cut at random points (a killed sender, a dropped connection),
/// each resumed with the token `receive --status` gives: every result is
/// the snapshot, byte for byte.
#[test]
fn receives_cut_at_random_points_resume_to_the_same_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (src, images) = source(&dir.path().join("a"));
    let full = send(&src, "vm@s1", None);
    let inc = send(&src, "vm@s2", Some("vm@s1"));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..6 {
        let dst = Repository::init(&dir.path().join(format!("b{round}"))).unwrap();
        for (stream, base, name, want) in [
            (&full, None, "vm@s1", &images[0].1),
            (&inc, Some("vm@s1"), "vm@s2", &images[1].1),
        ] {
            let mut rest = stream.clone();
            // Up to three cuts in a row, each resumed from where it stopped.
            for _ in 0..1 + next(3) {
                let cut = next(rest.len());
                dst.receive(&mut &rest[..cut], None, &mut |_, _| {})
                    .unwrap_err();
                assert!(dst.snapshot_info(&snap(name)).is_err());
                // Cut before its Begin record, nothing was under way: the
                // whole stream again.
                let parts = dst.partial_receives().unwrap();
                assert!(parts.len() <= 1, "{parts:?}");
                let token = parts
                    .first()
                    .map(|p| strata::store::ResumeToken::parse(&p.token).unwrap());
                rest.clear();
                src.send(
                    &snap(name),
                    base.map(|b| SendBase::parse(b).unwrap()).as_ref(),
                    token.as_ref(),
                    &mut rest,
                    &mut |_, _| {},
                )
                .unwrap();
            }
            dst.receive(&mut &rest[..], None, &mut |_, _| {}).unwrap();
            let got = read_all(&dst.open_snapshot(&snap(name)).unwrap());
            assert!(got == *want, "round {round}: {name} differs after resuming");
            assert!(dst.partial_receives().unwrap().is_empty());
        }
    }
}

/// A send that fails removes the file it made, and never a device or FIFO
/// it was given: /dev/null stays /dev/null.
#[test]
fn a_failed_send_removes_only_what_it_made() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    drop(source(&a));
    let out = strata(&a, &["send", "vm@nope", "-o", "/dev/null"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    let f = dir.path().join("s.stream");
    let out = strata(&a, &["send", "vm@nope", "-o", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!f.exists(), "a failed send left its file");
}
