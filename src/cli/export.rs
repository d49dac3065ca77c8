//! `strata export`

use std::path::{Path, PathBuf};

use clap::Args;
use strata::store::{export, ImageRef};
use strata::units::format_size;

use super::output::Progress;
use super::{open, parse_image_ref, CmdResult};

#[derive(Args)]
pub struct ExportArgs {
    /// DISK@SNAPSHOT, or DISK for the live disk
    #[arg(value_parser = parse_image_ref)]
    image: ImageRef,
    /// Output file; zero regions become holes. A device or pipe gets every byte.
    file: PathBuf,
}

pub fn run(repo: &Path, a: ExportArgs) -> CmdResult {
    let repo = open(repo)?;
    let img = repo.open_image(&a.image)?;
    let mut progress = Progress::new("exporting");
    let stats = export(img.as_ref(), &a.file, &mut |d, t| progress.update(d, t));
    progress.finish();
    let stats = stats?;
    println!(
        "exported {} to {} ({}, {} of data)",
        a.image,
        a.file.display(),
        format_size(img.size()),
        format_size(stats.written_bytes)
    );
    Ok(())
}
