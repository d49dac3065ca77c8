//! Crash test that really crashes: a child process runs a seeded workload of
//! writes, discards, flushes and snapshots against a repository and prints
//! `ACK i` after each operation returns. The parent kills it with SIGKILL at
//! a random moment, reopens the repository and checks:
//!
//! - every acknowledged snapshot exists and reads back bit-exact, and no
//!   snapshot exists that was never asked for;
//! - the live disk holds everything as of the last acknowledged flush: each
//!   512-byte sector reads as it was then, or as a later operation that
//!   had started before the kill left it.
//!
//! Then the next round runs a new workload on the recovered repository, so
//! recovery itself is exercised again and again.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata::store::{DiskName, ImageRead, Repository, SnapName, SnapshotRef};

const SIZE: u64 = 256 << 10;
const BLOCK: u32 = 16 << 10;
const SECTOR: usize = 512;
const OPS_PER_ROUND: usize = 3000;
const ROUNDS: u64 = 64;

/// Kill points: 64 in CI, more in a soak run (`STRATA_SOAK_KILLS`).
fn rounds() -> u64 {
    std::env::var("STRATA_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    Discard { offset: u64, len: u64 },
    Flush,
    Snapshot(SnapName),
}

/// A small deterministic generator (SplitMix64), shared by parent and child.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn workload(round: u64) -> Vec<Op> {
    let mut rng = Rng(round.wrapping_mul(0x1234_5678_9ABC_DEF1) ^ 0xC0FFEE);
    (0..OPS_PER_ROUND)
        .map(|i| match rng.below(100) {
            0..=59 => {
                let offset = rng.below(SIZE);
                let max = if rng.below(4) == 0 {
                    3 * BLOCK as u64
                } else {
                    3000
                };
                let len = (1 + rng.below(max)).min(SIZE - offset);
                let tag = rng.next();
                let data = (0..len)
                    .map(|j| (tag.wrapping_add(j * 7) >> 3) as u8 | 1)
                    .collect();
                Op::Write { offset, data }
            }
            60..=69 => {
                let offset = rng.below(SIZE);
                let len = (1 + rng.below(2 * BLOCK as u64)).min(SIZE - offset);
                Op::Discard { offset, len }
            }
            70..=92 => Op::Flush,
            _ => Op::Snapshot(SnapName::parse(&format!("r{round}-{i}")).unwrap()),
        })
        .collect()
}

fn apply(image: &mut [u8], op: &Op) {
    match op {
        Op::Write { offset, data } => {
            image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
        }
        Op::Discard { offset, len } => image[*offset as usize..(*offset + *len) as usize].fill(0),
        Op::Flush | Op::Snapshot(_) => {}
    }
}

fn disk_name() -> DiskName {
    DiskName::parse("crashy").unwrap()
}

/// The child: runs one round's workload, acknowledging each operation.
#[test]
fn crash_child() {
    let (Ok(repo), Ok(round)) = (
        std::env::var("STRATA_CRASH_REPO"),
        std::env::var("STRATA_CRASH_ROUND"),
    ) else {
        return; // Not a child: nothing to do.
    };
    let round: u64 = round.parse().unwrap();
    let repo = Repository::open(Path::new(&repo)).unwrap();
    let disk = repo.disk(&disk_name()).unwrap();
    let ops = workload(round);
    println!("READY");
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Write { offset, data } => disk.write_at(*offset, data).unwrap(),
            Op::Discard { offset, len } => disk.discard(*offset, *len).unwrap(),
            Op::Flush => disk.flush().unwrap(),
            Op::Snapshot(name) => {
                repo.snapshot(&disk_name(), Some(name.clone())).unwrap();
            }
        }
        println!("ACK {i}");
    }
    println!("DONE");
    std::thread::sleep(Duration::from_secs(60));
}

fn read_all(img: &dyn ImageRead) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    assert_eq!(img.read_at(0, &mut buf).unwrap(), buf.len());
    buf
}

fn sectors(image: &[u8]) -> impl Iterator<Item = &[u8]> {
    image.chunks(SECTOR)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    {
        let repo = Repository::init(&root).unwrap();
        repo.create_disk(&disk_name(), SIZE, BLOCK).unwrap();
    }
    let mut live = vec![0u8; SIZE as usize];
    let mut snaps: BTreeMap<SnapName, Vec<u8>> = BTreeMap::new();
    let mut rng = Rng(42);
    let exe = std::env::current_exe().unwrap();
    let mut kills_mid_workload = 0;

    let rounds = rounds();
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("STRATA_CRASH_REPO", &root)
            .env("STRATA_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let last_ack = Arc::new(AtomicI64::new(-1));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = {
            let out = child.stdout.take().unwrap();
            let last_ack = last_ack.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if line.ends_with("READY") {
                        let _ = ready_tx.send(());
                    } else if let Some(n) = line.strip_prefix("ACK ") {
                        last_ack.store(n.trim().parse().unwrap(), Ordering::SeqCst);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child did not start");
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = last_ack.load(Ordering::SeqCst);
        if acked < OPS_PER_ROUND as i64 - 1 {
            kills_mid_workload += 1;
        }

        // Replay the model: ops 0..=acked completed; op acked+1 may have
        // been under way; nothing later started.
        let ops = workload(round);
        let in_flight = ((acked + 1) as usize).min(ops.len());
        let mut last_durable = -1i64;
        for (i, op) in ops.iter().enumerate().take((acked + 1) as usize) {
            if matches!(op, Op::Flush | Op::Snapshot(_)) {
                last_durable = i as i64;
            }
        }
        // The state at the last durable point, and each sector's possible
        // values from then on.
        let mut durable = live.clone();
        for op in ops.iter().take((last_durable + 1) as usize) {
            apply(&mut durable, op);
        }
        let mut allowed: Vec<HashSet<Vec<u8>>> = sectors(&durable)
            .map(|s| HashSet::from([s.to_vec()]))
            .collect();
        let mut state = durable.clone();
        for op in ops
            .iter()
            .take(in_flight + 1)
            .skip((last_durable + 1) as usize)
        {
            apply(&mut state, op);
            for (set, s) in allowed.iter_mut().zip(sectors(&state)) {
                set.insert(s.to_vec());
            }
        }

        let repo =
            Repository::open(&root).unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let disk = repo.disk(&disk_name()).unwrap();
        let actual = read_all(disk.as_ref());
        for (n, (set, s)) in allowed.iter().zip(sectors(&actual)).enumerate() {
            assert!(
                set.contains(s),
                "round {round}: sector {n} of the live disk holds data it never had since the last flush (acked op {acked}, last durable op {last_durable})"
            );
        }

        // Snapshots: the acknowledged ones all exist and match; the one in
        // flight may exist and then matches too; no others.
        let mut expect = live.clone();
        for (i, op) in ops.iter().enumerate().take(in_flight + 1) {
            apply(&mut expect, op);
            if let Op::Snapshot(name) = op {
                // Acknowledged: must exist. In flight: may exist.
                let acknowledged = (i as i64) <= acked;
                let committed = || {
                    repo.snapshots(&disk_name())
                        .unwrap()
                        .iter()
                        .any(|s| s.name == name.as_str())
                };
                if acknowledged || committed() {
                    snaps.insert(name.clone(), expect.clone());
                }
            }
        }
        let listed: Vec<String> = repo
            .snapshots(&disk_name())
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        let expected: Vec<String> = snaps.keys().map(|n| n.to_string()).collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(listed_sorted, expected, "round {round}: snapshot set");
        for (name, image) in &snaps {
            let img = repo
                .open_snapshot(&SnapshotRef {
                    disk: disk_name(),
                    snap: name.clone(),
                })
                .unwrap();
            assert!(
                read_all(&img) == *image,
                "round {round}: snapshot {name} changed"
            );
        }
        live = actual;
    }
    eprintln!("checked {rounds} kill points ({kills_mid_workload} mid-workload)");
    assert!(
        kills_mid_workload * 64 >= 50 * rounds,
        "only {kills_mid_workload} of {rounds} kills landed mid-workload"
    );
}
