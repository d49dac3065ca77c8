//! Faults, injected: the same seeded workload as the power-loss test runs
//! (lifecycle operations included)
//! with the Nth storage operation failing with `EIO` or `ENOSPC` — every N
//! from the first operation to the last, once, and for a full file system
//! from the Nth on. Each run must:
//!
//! - never acknowledge a flush or a snapshot of a disk after an I/O error
//!   on it, until the repository is reopened (the latch; checked as the
//!   workload runs);
//! - leave a repository that opens afterwards, both as the process left it
//!   and after a power cut right after the run, with every acknowledged
//!   write and every committed snapshot in it (the oracle of
//!   `common/workload.rs`).
//!
//! To look into a failure: `FAULTS_NTH=N` runs only the Nth fault,
//! `FAULTS_DEBUG=1` prints each run, and `WORKLOAD_DEBUG=1` prints the ops
//! of a disk the oracle finds wrong.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::workload::{check, run_on, workload};
use strata::store::storage::faults::{FaultyStorage, Op};
use strata::store::storage::sim::SimStorage;

/// Runs the workload of `seed` with the `nth` operation failing; returns
/// how many operations the plan saw and how many faults it delivered.
fn one(seed: u64, ops: usize, nth: u64, errno: i32, persistent: bool) -> (u64, u64) {
    if std::env::var_os("FAULTS_DEBUG").is_some() {
        eprintln!("RUN seed {seed} nth {nth} errno {errno} persistent {persistent}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let sim = SimStorage::new(&[Path::new("/sim")]);
    let faulty = FaultyStorage::new(Arc::new(sim.clone()));
    let plan = faulty.clone();
    let run = run_on(
        &sim,
        Arc::new(faulty.clone()),
        workload(seed, ops),
        scratch.path(),
        || plan.fail(&Op::ALL, nth, errno, persistent),
    );
    let (seen, fired) = (faulty.seen(), faulty.fired());
    faulty.disarm();
    let what = format!(
        "seed {seed}, operation {nth} fails with {}{}",
        std::io::Error::from_raw_os_error(errno),
        if persistent { " from then on" } else { "" }
    );
    let end = sim.position();
    // As the process left it (a clean restart)...
    check(&run, sim.clone(), end, &format!("{what}, reopened"));
    // ...and after a power cut right after the run.
    let mut replay = sim.replay();
    replay.advance_to(end);
    for keep in [0, 50] {
        let state = replay.crash(nth, keep);
        check(
            &run,
            state,
            end,
            &format!("{what}, power cut (keep {keep}%)"),
        );
    }
    (seen, fired)
}

#[test]
fn every_failing_operation_loses_nothing_acknowledged() {
    let ops = 40;
    let mut runs = 0;
    // 11 and 12 write, snapshot and reopen; 34 and 37 also delete
    // snapshots and disks, roll back, clone, make full copies and gc.
    for seed in [11, 12, 34, 37] {
        // A run without faults counts the operations to fail.
        let (total, _) = one(seed, ops, 0, libc::EIO, false);
        assert!(total > 200, "only {total} operations");
        for nth in 1..=total {
            let only = std::env::var("FAULTS_NTH").ok();
            if only.is_some_and(|n| n != nth.to_string()) {
                continue;
            }
            for errno in [libc::EIO, libc::ENOSPC] {
                let (_, fired) = one(seed, ops, nth, errno, false);
                assert_eq!(fired, 1, "seed {seed}: operation {nth} did not fail");
                runs += 1;
            }
            if nth % 7 == 0 {
                one(seed, ops, nth, libc::ENOSPC, true);
                runs += 1;
            }
        }
    }
    eprintln!("{runs} runs with a fault");
}
