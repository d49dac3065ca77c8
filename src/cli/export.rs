//! `strata export`

use std::path::{Path, PathBuf};

use clap::Args;
use strata::control::{Request, Response};
use strata::store::ImageRef;
use strata::units::format_size;

use super::output::Progress;
use super::target::{unexpected, Target};
use super::{absolute, parse_image_ref, CmdResult};

#[derive(Args)]
pub struct ExportArgs {
    /// DISK@SNAPSHOT, or DISK for the live disk
    #[arg(value_parser = parse_image_ref)]
    image: ImageRef,
    /// Output file; zero regions become holes. A device or pipe gets every byte.
    file: PathBuf,
}

pub fn run(repo: &Path, a: ExportArgs) -> CmdResult {
    let mut target = Target::open(repo)?;
    let mut progress = Progress::new("exporting");
    let req = Request::Export {
        image: a.image.to_string(),
        file: absolute(&a.file)?,
    };
    let resp = target.call(req, &mut |d, t| progress.update(d, t));
    progress.finish();
    let (size, stats) = match resp? {
        Response::Exported { size, stats } => (size, stats),
        r => return Err(unexpected(r)),
    };
    println!(
        "exported {} to {} ({}, {} of data)",
        a.image,
        a.file.display(),
        format_size(size),
        format_size(stats.written_bytes)
    );
    Ok(())
}
