//! `strata quarantine list|purge`

use std::path::Path;

use clap::{Args, Subcommand};
use strata::control::{Request, Response};
use strata::units::format_size;

use super::output;
use super::target::{unexpected, Target};
use super::CmdResult;

#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// List the files set aside
    #[command(after_help = "Examples:\n  strata quarantine list\n  strata quarantine list --json")]
    List(ListArgs),
    /// Delete every file set aside, for good
    #[command(after_help = "Example:\n  strata quarantine list && strata quarantine purge")]
    Purge,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, cmd: QuarantineCommand) -> CmdResult {
    let mut target = Target::open(repo)?;
    let (req, json) = match cmd {
        QuarantineCommand::List(a) => (Request::QuarantineList, a.json),
        QuarantineCommand::Purge => (Request::QuarantinePurge, false),
    };
    let purge = matches!(req, Request::QuarantinePurge);
    let files = match target.call(req, &mut |_, _| {})? {
        Response::Quarantine(f) => f,
        r => return Err(unexpected(r)),
    };
    if json {
        return output::json(&files);
    }
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    if purge {
        println!(
            "deleted {} set aside ({})",
            if files.len() == 1 {
                "1 file".to_string()
            } else {
                format!("{} files", files.len())
            },
            format_size(bytes)
        );
    } else if files.is_empty() {
        println!("nothing is set aside");
    } else {
        let rows: Vec<Vec<String>> = files
            .iter()
            .map(|f| vec![f.path.clone(), format_size(f.bytes)])
            .collect();
        output::table(&["PATH", "SIZE"], &rows);
    }
    Ok(())
}
