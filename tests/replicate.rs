//! Copying history to a second repository: full and incremental streams,
//! through the store and through the command line (`send | receive`);
//! bad streams refused with their own message and the target unchanged;
//! receives cut short and resumed.

mod common;

use std::path::Path;

use common::{random, repo_contents, strata, strata_ok};
use strata::store::identity::Identity;
use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

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
        from.map(snap).as_ref(),
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
    // Sent again as another disk, from s1: base found by identity.
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
        refused(&b, &bad, "", &format!("bit flipped at {at}"));
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
            Some(&snap("vm@s1")),
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
    // 200 MiB of data: past the receive's 64 MiB checkpoints.
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
