//! A seeded storage workload and its oracle, shared by the power-loss and
//! fault-injection tests: the operations (writes of any size, zero writes,
//! discards, flushes, snapshots, disk creation and import, reopens, and the
//! lifecycle: snapshot deletes, rollbacks, disks made from snapshots, full
//! copies, disk deletes and gc), a
//! runner that records where in the simulator's history each one ran and
//! whether it succeeded, and a check of a repository against what was
//! acknowledged.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use strata::store::storage::sim::SimStorage;
use strata::store::storage::Storage;
use strata::store::{
    DiskName, ImageRead, ImportSource, Repository, SnapName, SnapshotRef, StoreError,
};

pub const ROOT: &str = "/sim/repo";
const SECTOR: usize = 512;

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    Create {
        disk: String,
        size: u64,
        bs: u32,
    },
    Import {
        disk: String,
        image: Vec<u8>,
        bs: u32,
    },
    Write {
        disk: String,
        offset: u64,
        data: Vec<u8>,
    },
    Discard {
        disk: String,
        offset: u64,
        len: u64,
    },
    Flush {
        disk: String,
    },
    Snapshot {
        disk: String,
        name: String,
    },
    /// Deletes these snapshots (disk, name) in one call.
    Delete {
        snaps: Vec<(String, String)>,
    },
    Rollback {
        disk: String,
        snap: String,
    },
    /// A new disk made from a snapshot.
    Clone {
        disk: String,
        from: (String, String),
    },
    MakeFull {
        snap: (String, String),
    },
    DeleteDisk {
        disk: String,
    },
    Gc,
    Reopen,
}

impl Op {
    pub fn disk(&self) -> Option<&str> {
        match self {
            Op::Create { disk, .. }
            | Op::Import { disk, .. }
            | Op::Write { disk, .. }
            | Op::Discard { disk, .. }
            | Op::Flush { disk }
            | Op::Snapshot { disk, .. }
            | Op::Rollback { disk, .. }
            | Op::Clone { disk, .. }
            | Op::DeleteDisk { disk } => Some(disk),
            Op::Delete { .. } | Op::MakeFull { .. } | Op::Gc | Op::Reopen => None,
        }
    }
}

fn hash(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// One version of a sector.
struct Version {
    op: usize,
    hash: u64,
    bytes: Vec<u8>,
    /// False for what a failed op might have left: a possible version that
    /// later versions are not built on.
    applied: bool,
}

/// A disk as the workload left it, with every sector's history.
pub struct ModelDisk {
    pub image: Vec<u8>,
    /// Per sector, in op order: the versions it had.
    history: Vec<Vec<Version>>,
    /// Ops that made the disk durable and returned success: flushes,
    /// snapshots, creation.
    pub acks: Vec<usize>,
}

impl ModelDisk {
    fn new(image: Vec<u8>, op: usize) -> ModelDisk {
        let history = image
            .chunks(SECTOR)
            .map(|s| {
                vec![Version {
                    op,
                    hash: hash(s),
                    bytes: s.to_vec(),
                    applied: true,
                }]
            })
            .collect();
        ModelDisk {
            image,
            history,
            acks: vec![],
        }
    }

    /// Takes `image`, as read after a reopen, as the disk's durable state
    /// from op `op` on.
    fn resync(&mut self, op: usize, image: Vec<u8>) {
        for (s, sector) in image.chunks(SECTOR).enumerate() {
            self.history[s].push(Version {
                op,
                hash: hash(sector),
                bytes: sector.to_vec(),
                applied: true,
            });
        }
        self.image = image;
        self.acks.push(op);
    }

    /// The last acknowledgement for which `done` holds, or creation.
    fn durable(&self, created: usize, done: impl Fn(usize) -> bool) -> usize {
        self.acks
            .iter()
            .copied()
            .filter(|&a| done(a))
            .max()
            .unwrap_or(created)
    }

    /// Checks that every byte of `got` is what it was at op `durable`, or
    /// what an op after it, up to `newest`, made it.
    fn check(&self, got: &[u8], durable: usize, newest: usize, what: &str) {
        assert_eq!(got.len(), self.image.len(), "{what}: size");
        for (s, sector) in got.chunks(SECTOR).enumerate() {
            let history = &self.history[s];
            // The sector at the durable point, then every version after
            // it that was started by then: later writes, and what failed
            // ops may have left.
            let base = history
                .iter()
                .rposition(|v| v.op <= durable && v.applied)
                .unwrap_or(0);
            let allowed: Vec<&Version> = history[base..]
                .iter()
                .enumerate()
                .filter(|(k, v)| *k == 0 || v.op <= newest)
                .map(|(_, v)| v)
                .collect();
            // A sector as it was at some moment, or, since unsynced writes
            // reach the device in any order and torn, each byte as one of
            // those moments had it.
            let h = hash(sector);
            let bad_byte = if allowed.iter().any(|v| v.hash == h) {
                None
            } else {
                (0..sector.len()).find(|&x| !allowed.iter().any(|v| v.bytes[x] == sector[x]))
            };
            if let Some(x) = bad_byte {
                panic!(
                    "{what}: byte {} holds {:#04x}, what it held neither at its last \
                     acknowledged flush (op {durable}) nor after any later write",
                    s * SECTOR + x,
                    sector[x]
                );
            }
        }
    }

    /// Records op `op` writing `bytes` at `offset`; if it failed, only as
    /// what it might have left, without changing the image.
    fn set(&mut self, op: usize, offset: u64, bytes: &[u8], applied: bool) {
        let (a, b) = (offset as usize, offset as usize + bytes.len());
        let mut after = self.image.clone();
        after[a..b].copy_from_slice(bytes);
        for s in a / SECTOR..b.div_ceil(SECTOR) {
            let sector = &after[s * SECTOR..((s + 1) * SECTOR).min(after.len())];
            self.history[s].push(Version {
                op,
                hash: hash(sector),
                bytes: sector.to_vec(),
                applied,
            });
        }
        if applied {
            self.image = after;
        }
    }
}

/// One operation as it ran: where in the simulator's history it started
/// and ended, and whether it succeeded.
pub struct Ran {
    pub op: Op,
    pub start: usize,
    pub end: usize,
    pub ok: bool,
}

pub struct Run {
    pub sim: SimStorage,
    /// Where the repository first existed whole.
    pub after_init: usize,
    pub ran: Vec<Ran>,
    /// Disk → (op that created it, model).
    pub disks: BTreeMap<String, (usize, ModelDisk)>,
    /// Snapshot → (op index, image).
    pub snaps: BTreeMap<(String, String), (usize, Vec<u8>)>,
    /// Snapshot or disk → the op that deleted it (whether or not it
    /// succeeded).
    pub deleted_snaps: BTreeMap<(String, String), usize>,
    pub deleted_disks: BTreeMap<String, usize>,
}

pub fn workload(seed: u64, ops: usize) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut disks: Vec<(String, u64, u32)> = vec![];
    let mut snaps: Vec<(String, String)> = vec![];
    // Every disk ever made, deleted or not: a snapshot's size and block size.
    let mut geometry: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    geometry.insert("a".into(), (192 << 10, 4096));
    let mut out = vec![Op::Create {
        disk: "a".into(),
        size: 192 << 10,
        bs: 4096,
    }];
    disks.push(("a".into(), 192 << 10, 4096));
    for i in 0..ops {
        let pick = rng.below(100);
        if (pick < 3 && disks.len() < 3) || (i == ops / 3 && disks.len() < 2) {
            let name = format!("d{i}");
            if rng.below(2) == 0 {
                let size = (1 + rng.below(4)) * (32 << 10);
                let bs = [4096u32, 16384][rng.below(2) as usize];
                out.push(Op::Create {
                    disk: name.clone(),
                    size,
                    bs,
                });
                geometry.insert(name.clone(), (size, bs));
                disks.push((name, size, bs));
            } else {
                let size = (1 + rng.below(3)) * (32 << 10) + 512;
                let mut image = vec![0u8; size as usize];
                for _ in 0..4 {
                    let at = rng.below(size) as usize;
                    let n = (rng.below(9000) as usize).min(image.len() - at);
                    let tag = rng.next();
                    for (j, b) in image[at..at + n].iter_mut().enumerate() {
                        *b = (tag.wrapping_add(j as u64 * 13) >> 5) as u8 | 1;
                    }
                }
                out.push(Op::Import {
                    disk: name.clone(),
                    image,
                    bs: 4096,
                });
                geometry.insert(name.clone(), (size, 4096));
                disks.push((name, size, 4096));
            }
            continue;
        }
        let (disk, size, bs) = disks[rng.below(disks.len() as u64) as usize].clone();
        let bs = bs as u64;
        // The lifecycle, when there is something to act on.
        if (93..=97).contains(&pick) && !snaps.is_empty() {
            let one = |rng: &mut Rng| snaps[rng.below(snaps.len() as u64) as usize].clone();
            let op = match rng.below(10) {
                0..=2 => {
                    let mut gone = vec![one(&mut rng)];
                    if rng.below(3) == 0 {
                        gone.push(one(&mut rng));
                    }
                    gone.sort();
                    gone.dedup();
                    snaps.retain(|s| !gone.contains(s));
                    Op::Delete { snaps: gone }
                }
                3 | 4 => {
                    let (d, s) = one(&mut rng);
                    match disks.iter().find(|x| x.0 == d) {
                        Some(_) => Op::Rollback { disk: d, snap: s },
                        None => Op::Gc,
                    }
                }
                5 if disks.len() < 4 => {
                    let from = one(&mut rng);
                    let (size, bs) = geometry[&from.0];
                    let name = format!("c{i}");
                    geometry.insert(name.clone(), (size, bs));
                    disks.push((name.clone(), size, bs));
                    Op::Clone { disk: name, from }
                }
                6 => Op::MakeFull {
                    snap: one(&mut rng),
                },
                7 if disks.len() > 1 => {
                    disks.retain(|x| x.0 != disk);
                    Op::DeleteDisk { disk }
                }
                _ => Op::Gc,
            };
            out.push(op);
            continue;
        }
        out.push(match pick {
            0..=49 => {
                let offset = if rng.below(3) == 0 {
                    rng.below(size / bs) * bs
                } else {
                    rng.below(size)
                };
                let max = [700, 3 * bs, 9000][rng.below(3) as usize];
                let len = (1 + rng.below(max)).min(size - offset);
                let data = if rng.below(6) == 0 {
                    vec![0u8; len as usize]
                } else {
                    let tag = rng.next();
                    (0..len)
                        .map(|j| (tag.wrapping_add(j * 7) >> 3) as u8 | 1)
                        .collect()
                };
                Op::Write { disk, offset, data }
            }
            50..=61 => {
                let offset = rng.below(size);
                let len = (1 + rng.below(4 * bs)).min(size - offset);
                Op::Discard { disk, offset, len }
            }
            62..=83 => Op::Flush { disk },
            84..=97 => {
                snaps.push((disk.clone(), format!("s{i}")));
                Op::Snapshot {
                    disk,
                    name: format!("s{i}"),
                }
            }
            _ => Op::Reopen,
        });
    }
    out
}

pub fn name(s: &str) -> DiskName {
    DiskName::parse(s).unwrap()
}

pub fn snap_ref(disk: &str, snap: &str) -> SnapshotRef {
    SnapshotRef {
        disk: name(disk),
        snap: SnapName::parse(snap).unwrap(),
    }
}

/// Whether an error is an I/O failure of the disk itself (which must latch
/// it), rather than a refusal (no such disk, a repository that would not
/// open).
fn is_io(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Io { .. } | StoreError::Uncertain { .. } | StoreError::Latched { .. }
    )
}

/// Runs `ops` against a repository on `storage` (a view of `sim`), recording
/// where each op ran in `sim`'s history and whether it succeeded. Checks as
/// it goes that once an op failed with an I/O error on a disk, no later
/// flush of that disk succeeds before a reopen.
pub fn run_on(
    sim: &SimStorage,
    storage: Arc<dyn Storage>,
    ops: Vec<Op>,
    scratch: &Path,
    before_ops: impl FnOnce(),
) -> Run {
    let root = Path::new(ROOT);
    let mut repo = Some(Repository::init_in(storage.clone(), root).unwrap());
    let after_init = sim.position();
    before_ops();
    let mut out = Run {
        sim: sim.clone(),
        after_init,
        ran: vec![],
        disks: BTreeMap::new(),
        snaps: BTreeMap::new(),
        deleted_snaps: BTreeMap::new(),
        deleted_disks: BTreeMap::new(),
    };
    // Disks with an I/O error since the last reopen (the latch), and with
    // any failed op (their exact contents are uncertain until a reopen).
    let mut failed_disks: Vec<String> = vec![];
    let mut uncertain: Vec<String> = vec![];
    for (i, op) in ops.into_iter().enumerate() {
        let start = sim.position();
        if repo.is_none() {
            // The last reopen failed: try again (a fault may have passed).
            match Repository::open_in(storage.clone(), root) {
                Ok(r) => repo = Some(r),
                Err(_) => break,
            }
        }
        let Some(r) = repo.as_ref() else { break };
        // Whether the op failed in the live layer's own I/O (a write,
        // discard or flush of an open disk), which must latch the disk.
        let mut latched = false;
        let result: Result<(), StoreError> = match &op {
            Op::Create { disk, size, bs } => {
                let res = r.create_disk(&name(disk), *size, *bs).map(|_| ());
                let mut m = ModelDisk::new(vec![0; *size as usize], i);
                if res.is_ok() {
                    m.acks.push(i);
                }
                out.disks.insert(disk.clone(), (i, m));
                res
            }
            Op::Import { disk, image, bs } => {
                let src = scratch.join(format!("{i}-{disk}"));
                std::fs::write(&src, image).unwrap();
                let file = std::fs::File::open(&src).unwrap();
                let source = ImportSource {
                    file: &file,
                    name: &src,
                    size: None,
                };
                let res = r
                    .import_disk(&name(disk), &source, *bs, &mut |_, _| {})
                    .map(|_| ());
                let mut m = ModelDisk::new(image.clone(), i);
                if res.is_ok() {
                    m.acks.push(i);
                }
                out.disks.insert(disk.clone(), (i, m));
                res
            }
            Op::Write { disk, offset, data } => {
                let res = r
                    .disk(&name(disk))
                    .and_then(|d| d.write_at(*offset, data).inspect_err(|_| latched = true));
                if let Some((_, m)) = out.disks.get_mut(disk) {
                    m.set(i, *offset, data, res.is_ok());
                }
                res
            }
            Op::Discard { disk, offset, len } => {
                let res = r
                    .disk(&name(disk))
                    .and_then(|d| d.discard(*offset, *len).inspect_err(|_| latched = true));
                if let Some((_, m)) = out.disks.get_mut(disk) {
                    m.set(i, *offset, &vec![0u8; *len as usize], res.is_ok());
                }
                res
            }
            Op::Flush { disk } => {
                let res = r
                    .disk(&name(disk))
                    .and_then(|d| d.flush().inspect_err(|_| latched = true));
                if res.is_ok() {
                    assert!(
                        !failed_disks.contains(disk),
                        "op {i}: a flush of disk {disk} succeeded after an I/O error on it"
                    );
                    if let Some((_, m)) = out.disks.get_mut(disk) {
                        m.acks.push(i);
                    }
                }
                res
            }
            Op::Snapshot { disk, name: s } => {
                let res = r
                    .snapshot(&name(disk), Some(SnapName::parse(s).unwrap()))
                    .map(|_| ());
                if let Some((_, m)) = out.disks.get_mut(disk) {
                    if res.is_ok() {
                        assert!(
                            !failed_disks.contains(disk),
                            "op {i}: a snapshot of disk {disk} succeeded after an I/O error on it"
                        );
                        m.acks.push(i);
                    }
                    out.snaps
                        .insert((disk.clone(), s.clone()), (i, m.image.clone()));
                }
                res
            }
            Op::Delete { snaps } => {
                let refs: Vec<SnapshotRef> = snaps.iter().map(|(d, s)| snap_ref(d, s)).collect();
                for s in snaps {
                    out.deleted_snaps.insert(s.clone(), i);
                }
                r.delete_snapshots(&refs).map(|_| ())
            }
            Op::Rollback { disk, snap } => {
                let res = r.rollback(&snap_ref(disk, snap), false).map(|_| ());
                let image = out
                    .snaps
                    .get(&(disk.clone(), snap.clone()))
                    .map(|s| s.1.clone());
                // Refused (no such snapshot, after a failed snapshot): no
                // new versions. An I/O failure may have rolled it back.
                let may_have = res.as_ref().map_or_else(is_io, |_| true);
                if let (Some((_, m)), Some(image), true) =
                    (out.disks.get_mut(disk), image, may_have)
                {
                    m.set(i, 0, &image, res.is_ok());
                    if res.is_ok() {
                        m.acks.push(i);
                    }
                }
                res
            }
            Op::Clone { disk, from } => {
                let res = r
                    .create_disk_from(&name(disk), &snap_ref(&from.0, &from.1))
                    .map(|_| ());
                // A source that was never taken (its snapshot failed) makes
                // no disk; the model needs an image of the right size anyway.
                if let Some((_, image)) = out.snaps.get(from) {
                    let mut m = ModelDisk::new(image.clone(), i);
                    if res.is_ok() {
                        m.acks.push(i);
                    }
                    out.disks.insert(disk.clone(), (i, m));
                }
                res
            }
            Op::MakeFull { snap } => r
                .make_full(&snap_ref(&snap.0, &snap.1), &mut |_, _| {})
                .map(|_| ()),
            Op::DeleteDisk { disk } => {
                out.deleted_disks.insert(disk.clone(), i);
                r.delete_disk(&name(disk), false).map(|_| ())
            }
            Op::Gc => r.gc().map(|_| ()),
            Op::Reopen => {
                // Close as a careful caller does: flush, and hear if that
                // failed (dropping the repository flushes too, but can only
                // log a failure). What the failed flush held is uncertain.
                if r.flush_all().is_err() {
                    for d in out.disks.keys() {
                        if !uncertain.contains(d) {
                            uncertain.push(d.clone());
                        }
                    }
                }
                drop(repo.take());
                failed_disks.clear();
                match Repository::open_in(storage.clone(), root) {
                    Ok(r) => {
                        for disk in uncertain.drain(..) {
                            let Ok(d) = r.disk(&name(&disk)) else {
                                continue;
                            };
                            let Some((created, m)) = out.disks.get_mut(&disk) else {
                                continue;
                            };
                            let got = read_all(d.as_ref());
                            let durable = m.durable(*created, |a| out.ran[a].ok);
                            let what = format!("op {i}, reopened after a failure: disk {disk}");
                            m.check(&got, durable, i, &what);
                            m.resync(i, got);
                        }
                        repo = Some(r);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if let (Err(e), Some(d)) = (&result, op.disk()) {
            // A failure that latched the disk (a snapshot's sync, say) must
            // keep every later flush from succeeding too.
            let latched = latched
                || repo
                    .as_ref()
                    .and_then(|r| r.disk(&name(d)).ok())
                    .is_some_and(|d| d.is_latched());
            if latched && is_io(e) && !failed_disks.iter().any(|f| f == d) {
                failed_disks.push(d.to_string());
            }
            if !uncertain.iter().any(|f| f == d) {
                uncertain.push(d.to_string());
            }
        }
        out.ran.push(Ran {
            op,
            start,
            end: sim.position(),
            ok: result.is_ok(),
        });
    }
    drop(repo);
    out
}

/// Runs the workload of `seed` on a fresh simulator.
pub fn run(seed: u64, ops: usize, scratch: &Path) -> Run {
    let sim = SimStorage::new(&[Path::new("/sim")]);
    run_on(
        &sim,
        Arc::new(sim.clone()),
        workload(seed, ops),
        scratch,
        || {},
    )
}

fn read_all(img: &dyn ImageRead) -> Vec<u8> {
    let mut buf = vec![0u8; img.size() as usize];
    assert_eq!(img.read_at(0, &mut buf).unwrap(), buf.len());
    buf
}

/// Checks the repository in `state`, cut at history position `at`, against
/// what the run acknowledged by then. With `WORKLOAD_DEBUG` set, a failure
/// prints every op of the run: where it ran in the history, and whether it
/// succeeded.
pub fn check(run: &Run, state: SimStorage, at: usize, what: &str) {
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_state(run, state, at, what)
    }));
    if let Err(panic) = checked {
        if std::env::var_os("WORKLOAD_DEBUG").is_some() {
            for (i, r) in run.ran.iter().enumerate() {
                let s = format!("{:?}", r.op);
                eprintln!(
                    "op {i} ok={} [{}..{}] {}",
                    r.ok,
                    r.start,
                    r.end,
                    &s[..s.len().min(100)]
                );
            }
        }
        std::panic::resume_unwind(panic);
    }
}

fn check_state(run: &Run, state: SimStorage, at: usize, what: &str) {
    let repo = Repository::open_in(Arc::new(state), Path::new(ROOT))
        .unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    // Ops that had returned (successfully), and those that had started.
    let done = |i: usize| run.ran[i].end <= at && run.ran[i].ok;
    let started = |i: usize| run.ran[i].start < at;
    let last_started = (0..run.ran.len()).rev().find(|&i| started(i));

    for (key, (i, image)) in &run.snaps {
        let r = snap_ref(&key.0, &key.1);
        let deleted = run.deleted_snaps.get(key).copied();
        match repo.open_snapshot(&r) {
            Ok(img) => {
                assert!(started(*i), "{what}: {r} exists, but was never asked for");
                if let Some(d) = deleted {
                    assert!(
                        !done(d),
                        "{what}: {r} was deleted (op {d}), yet it is there"
                    );
                }
                assert!(
                    read_all(&img) == *image,
                    "{what}: {r} reads back different bytes"
                );
            }
            Err(e) => assert!(
                !done(*i) || deleted.is_some_and(started),
                "{what}: committed snapshot {r} is gone: {e}"
            ),
        }
    }
    let listed: Vec<String> = repo.disks().unwrap().into_iter().map(|d| d.name).collect();
    for (disk, (created, m)) in &run.disks {
        let exists = listed.contains(disk);
        let deleted = run.deleted_disks.get(disk).copied();
        if let Some(d) = deleted {
            assert!(
                !(exists && done(d)),
                "{what}: disk {disk} was deleted (op {d}), yet it is there"
            );
        }
        if done(*created) && !deleted.is_some_and(started) {
            assert!(exists, "{what}: disk {disk} is gone");
        }
        if !started(*created) {
            assert!(
                !exists,
                "{what}: disk {disk} exists, but was never asked for"
            );
        }
        if !exists {
            continue;
        }
        let got = read_all(repo.disk(&name(disk)).unwrap().as_ref());
        let durable = m.durable(*created, done);
        let newest = last_started.unwrap_or(0);
        m.check(&got, durable, newest, &format!("{what}: disk {disk}"));
    }
}
