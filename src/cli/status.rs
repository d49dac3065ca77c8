//! `strata status`: this strata, the repository, who serves it and what
//! needs attention, and every strata mount on the system.

use std::path::Path;

use clap::Args;
use serde::Serialize;
use strata::control::{Client, Request, Response, Status};
use strata::fs::daemon;
use strata::store::Repository;
use strata::units::format_size;

use super::{absolute, output, CmdResult, Failure};

#[derive(Args)]
#[command(after_help = "Examples:\n  strata status\n  strata --repo /var/lib/strata status --json")]
pub struct StatusArgs {
    /// Print JSON instead of text (fields in the README)
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report {
    /// This binary's version.
    strata: String,
    repository: RepoReport,
    /// Every strata mount on the system.
    mounts: Vec<MountReport>,
}

#[derive(Serialize)]
struct RepoReport {
    path: String,
    exists: bool,
    /// Where it is mounted (empty when it is not).
    mounted_at: Vec<String>,
    /// What the daemon serving it (or this process, when none does) says.
    status: Option<Status>,
    /// Whether a daemon answered (else the status is this process's own).
    daemon: bool,
    /// Why no status could be had.
    error: Option<String>,
}

#[derive(Serialize)]
struct MountReport {
    mountpoint: String,
    repository: String,
    /// PID and version of its daemon, when it answers.
    pid: Option<u32>,
    version: Option<String>,
    /// Why it did not answer.
    error: Option<String>,
}

/// The status from the daemon serving `repo`: `Ok(None)` when none does.
fn daemon_status(repo: &Path) -> Result<Option<Status>, String> {
    let Some(mut c) = Client::connect(repo).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    match c.call(Request::Status, &[], &mut |_, _| {}) {
        Ok(Response::Status(s)) => Ok(Some(s)),
        Ok(Response::Refused { message, .. }) => Err(message),
        Ok(r) => Err(format!("unexpected answer: {r:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(repo: &Path, a: StatusArgs) -> CmdResult {
    let repo = absolute(repo)?;
    let exists = repo.join(strata::store::REPO_FILE).is_file();
    let mounts = daemon::strata_mounts();
    let mounted_at: Vec<String> = daemon::mount_points_of(&repo)
        .iter()
        .map(|mp| mp.display().to_string())
        .collect();
    let (status, daemon, error) = if !exists {
        (None, false, None)
    } else {
        match daemon_status(&repo) {
            Ok(Some(s)) => (Some(s), true, None),
            Ok(None) => match Repository::open(&repo) {
                Ok(r) => match Status::of(&r) {
                    Ok(s) => (Some(s), false, None),
                    Err(e) => (None, false, Some(e.to_string())),
                },
                Err(e) => (None, false, Some(e.to_string())),
            },
            Err(e) => (None, false, Some(e)),
        }
    };
    let mounts: Vec<MountReport> = mounts
        .iter()
        .map(|(mp, r)| {
            let s = daemon_status(r);
            let answer = s.as_ref().ok().and_then(Option::as_ref);
            MountReport {
                mountpoint: mp.display().to_string(),
                repository: r.display().to_string(),
                pid: answer.map(|s| s.pid),
                version: answer.map(|s| s.strata.clone()),
                error: match s {
                    Ok(Some(_)) => None,
                    Ok(None) => Some("its daemon has stopped (strata umount cleans up)".into()),
                    Err(e) => Some(e),
                },
            }
        })
        .collect();
    let report = Report {
        strata: env!("CARGO_PKG_VERSION").to_string(),
        repository: RepoReport {
            path: repo.display().to_string(),
            exists,
            mounted_at,
            status,
            daemon,
            error,
        },
        mounts,
    };
    if a.json {
        return output::json(&report);
    }
    print(&report);
    match &report.repository.error {
        Some(e) => Err(Failure::Refused(e.clone())),
        None => Ok(()),
    }
}

fn print(r: &Report) {
    println!("strata {}", r.strata);
    let repo = &r.repository;
    if !repo.exists {
        println!(
            "repository {}: none yet (`strata init`, or `strata mount DIR`, creates it)",
            repo.path
        );
    } else {
        let at = repo.mounted_at.join(", ");
        let served = match (&repo.status, repo.mounted_at.is_empty()) {
            (Some(_), false) if !repo.daemon => format!(
                "mounted at {at}, but its daemon has stopped (`strata umount {at}` cleans up)"
            ),
            (Some(s), false) => format!(
                "mounted at {at} by daemon PID {} (strata {})",
                s.pid, s.strata
            ),
            (None, false) => format!("mounted at {at}"),
            (_, true) => "not mounted".into(),
        };
        println!("repository {}: {served}", repo.path);
        if let Some(s) = &repo.status {
            if s.quarantined_files == 0 {
                println!("quarantine: empty");
            } else {
                println!(
                    "quarantine: {} file(s), {} set aside (strata quarantine list)",
                    s.quarantined_files,
                    format_size(s.quarantined_bytes)
                );
            }
            if s.latched.is_empty() {
                println!("latched disks: none");
            }
            for l in &s.latched {
                println!(
                    "latched disk {}: takes no writes since: {} (unmount and mount again once the cause is fixed)",
                    l.disk, l.cause
                );
            }
        }
    }
    let others: Vec<_> = r
        .mounts
        .iter()
        .filter(|m| !repo.mounted_at.contains(&m.mountpoint))
        .collect();
    if !others.is_empty() {
        println!("other strata mounts:");
    }
    for m in others {
        let who = match (&m.pid, &m.version, &m.error) {
            (Some(p), Some(v), _) => format!("daemon PID {p} (strata {v})"),
            (_, _, Some(e)) => e.clone(),
            _ => String::new(),
        };
        println!("  {} from {}: {who}", m.mountpoint, m.repository);
    }
}
