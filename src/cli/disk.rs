//! `strata disk create|import|list`

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use strata::control::{Request, Response};
use strata::store::catalog::DEFAULT_BLOCK_SIZE;
use strata::store::DiskName;
use strata::units::format_size;

use super::output::{self, Progress};
use super::target::{unexpected, Target};
use super::{absolute, parse_block_size, parse_disk_name, parse_size, CmdResult};

#[derive(Subcommand)]
pub enum DiskCommand {
    /// Create an empty disk (instant, whatever its size)
    Create(CreateArgs),
    /// Create a disk from a raw image file; zero blocks are not stored
    Import(ImportArgs),
    /// List disks: size, block size, snapshots, space used
    List(ListArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Disk name: letters, digits, '.', '_', ':', '-'
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// Virtual size, like 64G, 512M or 1T (a multiple of 512 bytes)
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Block size: a power of two from 4K to 1M; the unit of copy-on-write
    #[arg(long, value_parser = parse_block_size, default_value_t = DEFAULT_BLOCK_SIZE)]
    block_size: u32,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Disk name for the new disk
    #[arg(value_parser = parse_disk_name)]
    name: DiskName,
    /// Raw image file (or block device); its size becomes the disk's size
    file: PathBuf,
    /// Block size: a power of two from 4K to 1M
    #[arg(long, value_parser = parse_block_size, default_value_t = DEFAULT_BLOCK_SIZE)]
    block_size: u32,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(repo: &Path, cmd: DiskCommand) -> CmdResult {
    let mut target = Target::open(repo)?;
    match cmd {
        DiskCommand::Create(a) => {
            let req = Request::DiskCreate {
                name: a.name,
                size: a.size,
                block_size: a.block_size,
            };
            let Response::Disk(info) = target.call(req, &mut |_, _| {})? else {
                return Err(unexpected(Response::Done));
            };
            println!(
                "created disk {} ({}, block size {})",
                info.name,
                format_size(info.size),
                format_size(info.block_size as u64)
            );
        }
        DiskCommand::Import(a) => {
            let mut progress = Progress::new("importing");
            let req = Request::DiskImport {
                name: a.name,
                file: absolute(&a.file)?,
                block_size: a.block_size,
            };
            let resp = target.call(req, &mut |d, t| progress.update(d, t));
            progress.finish();
            let info = match resp? {
                Response::Disk(info) => info,
                r => return Err(unexpected(r)),
            };
            println!(
                "imported {} as disk {} ({}, {} stored)",
                a.file.display(),
                info.name,
                format_size(info.size),
                format_size(info.used_bytes)
            );
        }
        DiskCommand::List(a) => {
            let disks = match target.call(Request::DiskList, &mut |_, _| {})? {
                Response::Disks(d) => d,
                r => return Err(unexpected(r)),
            };
            if a.json {
                return output::json(&disks);
            }
            let rows: Vec<Vec<String>> = disks
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        format_size(d.size),
                        format_size(d.block_size as u64),
                        d.snapshots.to_string(),
                        format_size(d.used_bytes),
                    ]
                })
                .collect();
            output::table(&["NAME", "SIZE", "BLOCK", "SNAPSHOTS", "USED"], &rows);
        }
    }
    Ok(())
}
