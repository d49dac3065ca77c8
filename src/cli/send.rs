//! `strata send` and `strata receive`

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use strata::control::{Request, Response};
use strata::store::{DiskName, SendBase, SnapshotRef};
use strata::units::format_size;

use super::output::{self, Progress};
use super::target::{unexpected, Target};
use super::{parse_disk_name, parse_snapshot_ref, CmdResult, Failure};

/// Arguments of `strata send` (its help is on the command).
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
strata send vm1@monday | strata --repo /mnt/backup/strata receive\n  \
strata send vm1@tuesday --from vm1@monday | ssh backup strata receive\n  \
strata send vm1@tuesday --from vm1@monday -o tuesday.stream\n  \
strata send vm1@friday --from vm1#tuesday      # tuesday was deleted: its bookmark is the base\n  \
strata send vm1@tuesday --from vm1@monday --resume 1-…   # after `receive --status` at the other end")]
pub struct SendArgs {
    /// The snapshot to send, as DISK@SNAP
    #[arg(value_parser = parse_snapshot_ref, value_name = "DISK@SNAP")]
    snapshot: SnapshotRef,
    /// Send only what differs from this snapshot (the receiver must have
    /// it), or from the bookmark DISK#SNAP a deleted snapshot left
    #[arg(long, value_parser = parse_base, value_name = "DISK@BASE")]
    from: Option<SendBase>,
    /// Write the stream to FILE instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace FILE if it exists
    #[arg(long, requires = "output")]
    force: bool,
    /// Send only what an interrupted receive lacks (its token, from `strata receive --status`)
    #[arg(long, value_name = "TOKEN")]
    resume: Option<String>,
}

/// Arguments of `strata receive` (its help is on the command).
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
strata send vm1@monday | strata --repo /mnt/backup/strata receive\n  \
strata receive --as vm1-copy -i monday.stream\n  \
strata receive --status\n  \
strata receive --abort vm1@tuesday")]
pub struct ReceiveArgs {
    /// Receive as this disk instead of the one the stream names
    #[arg(long = "as", value_parser = parse_disk_name, value_name = "DISK")]
    as_disk: Option<DiskName>,
    /// Read the stream from FILE instead of standard input
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
    /// List receives that were cut short, with their resume tokens
    #[arg(long, conflicts_with_all = ["as_disk", "input", "abort"])]
    status: bool,
    /// With --status: print JSON instead of a table
    #[arg(long, requires = "status")]
    json: bool,
    /// Discard receives cut short (all, or the one of DISK@SNAP)
    #[arg(long, value_name = "DISK@SNAP", num_args = 0..=1, value_parser = parse_snapshot_ref, conflicts_with_all = ["as_disk", "input"])]
    abort: Option<Option<SnapshotRef>>,
}

fn parse_base(s: &str) -> Result<SendBase, String> {
    SendBase::parse(s).map_err(|e| e.to_string())
}

fn refused(path: &Path, why: impl std::fmt::Display) -> Failure {
    Failure::Refused(format!("{}: {why}", path.display()))
}

/// Standard input or output as a file to hand over, refused (with `tty`)
/// when it is a terminal.
fn standard(stream: impl AsFd + IsTerminal, tty: &str) -> Result<File, Failure> {
    if stream.is_terminal() {
        return Err(Failure::Usage(tty.into()));
    }
    let fd = stream
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Failure::Refused(format!("standard input or output: {e}")))?;
    Ok(File::from(fd))
}

pub fn send(repo: &Path, a: SendArgs) -> CmdResult {
    // The regular file this command makes, removed again if the send
    // fails (never a device or FIFO it was given, such as /dev/null).
    let mut made = None;
    let file = match &a.output {
        Some(p) => {
            let mut o = OpenOptions::new();
            o.write(true);
            // A device or a FIFO is written as it is; a regular file is
            // replaced only with --force.
            let special = std::fs::metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir());
            if special {
            } else if a.force {
                o.create(true).truncate(true);
            } else {
                o.create_new(true);
            }
            let f = o.open(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    refused(p, "it exists; add --force to replace it")
                }
                _ => refused(p, e),
            })?;
            if !special {
                made = Some(p.clone());
            }
            f
        }
        None => standard(
            std::io::stdout(),
            "the stream is binary and standard output is a terminal; pipe it into \
             `strata receive`, redirect it, or give -o FILE",
        )?,
    };
    let mut target = Target::open(repo)?;
    let mut progress = Progress::new("sending");
    let req = Request::Send {
        snapshot: a.snapshot.clone(),
        from: a.from.as_ref().map(ToString::to_string),
        resume: a.resume,
    };
    let resp = target.call_with(req, vec![file], &mut |d, t| progress.update(d, t));
    progress.finish();
    let report = match resp {
        Ok(Response::Sent(r)) => r,
        Ok(r) => return Err(unexpected(r)),
        Err(e) => {
            if let Some(p) = &made {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    eprintln!(
        "sent {}{}{}: {} of data in a stream of {}",
        a.snapshot,
        match &a.from {
            Some(b) => format!(" (changes since {b})"),
            None => " (full)".into(),
        },
        match report.resumed_from {
            Some(o) => format!(", resumed at {}", format_size(o)),
            None => String::new(),
        },
        format_size(report.data_bytes),
        format_size(report.stream_bytes),
    );
    Ok(())
}

pub fn receive(repo: &Path, a: ReceiveArgs) -> CmdResult {
    if a.status {
        let mut target = Target::open(repo)?;
        let parts = match target.call(Request::ReceiveStatus, &mut |_, _| {})? {
            Response::PartialReceives(p) => p,
            r => return Err(unexpected(r)),
        };
        if a.json {
            return output::json(&parts);
        }
        if parts.is_empty() {
            println!("no receive is under way or cut short");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = parts
            .iter()
            .map(|p| {
                vec![
                    p.snapshot.clone(),
                    format!("{} of {}", format_size(p.received_to), format_size(p.size)),
                    p.token.clone(),
                ]
            })
            .collect();
        output::table(&["SNAPSHOT", "RECEIVED", "RESUME TOKEN"], &rows);
        println!(
            "resume with: strata send DISK@SNAP [--from DISK@BASE] --resume TOKEN | strata receive"
        );
        return Ok(());
    }
    if let Some(which) = a.abort {
        let mut target = Target::open(repo)?;
        let gone = match target.call(
            Request::ReceiveAbort {
                snapshot: which.clone(),
            },
            &mut |_, _| {},
        )? {
            Response::Aborted(g) => g,
            r => return Err(unexpected(r)),
        };
        if gone.is_empty() {
            return Err(Failure::Refused(match which {
                Some(s) => format!("no receive of {s} is under way or cut short"),
                None => "no receive is under way or cut short".into(),
            }));
        }
        for g in gone {
            println!("discarded the partial receive of {g}");
        }
        return Ok(());
    }
    let file = match &a.input {
        Some(p) => File::open(p).map_err(|e| refused(p, e))?,
        None => standard(
            std::io::stdin(),
            "standard input is a terminal; pipe a `strata send` stream in, or give -i FILE",
        )?,
    };
    let mut target = Target::open(repo)?;
    let mut progress = Progress::new("receiving");
    let req = Request::Receive { as_disk: a.as_disk };
    let resp = target.call_with(req, vec![file], &mut |d, t| progress.update(d, t));
    progress.finish();
    let report = match resp? {
        Response::Received(r) => r,
        r => return Err(unexpected(r)),
    };
    if report.already {
        println!("{} is here already, with the same content", report.snapshot);
    } else {
        println!(
            "received {}{} (identity {})",
            report.snapshot,
            if report.incremental {
                ", incremental"
            } else {
                ", full"
            },
            report.identity
        );
    }
    Ok(())
}
