//! `strata export`

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use strata::control::{Request, Response};
use strata::store::{ExportStats, ImageRef, Repository};
use strata::units::format_size;

use super::output::Progress;
use super::target::{unexpected, Target};
use super::{absolute, inside_repository, parse_image_ref, CmdResult, Failure};

#[derive(Args)]
#[command(
    after_help = "A regular file is written under a temporary name beside FILE and \
renamed only once it is complete and synced, so FILE is never a partial image. \
FILE may not be inside the repository.\n\n\
Examples:\n  \
strata export vm1@draft1 vm1.img\n  \
strata export vm1 vm1-now.img --force          # the live disk, replacing vm1-now.img\n  \
strata export vm1@draft1 - | zstd > d1.zst     # every byte, down a pipe\n  \
strata export vm1@draft1 vm1.vhd --format vhd  # a fixed VHD"
)]
pub struct ExportArgs {
    /// DISK@SNAPSHOT, or DISK for the live disk
    #[arg(value_parser = parse_image_ref)]
    image: ImageRef,
    /// A new raw image file (zero regions become holes), a block device
    /// (written in place), or - for standard output (every byte)
    file: PathBuf,
    /// Replace FILE if it is an existing file
    #[arg(long)]
    force: bool,
    /// raw, or vhd: a fixed VHD (the raw image and a 512-byte footer), as
    /// Hyper-V and Azure take disks
    #[arg(long, value_enum, default_value = "raw")]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Raw,
    Vhd,
}

/// Appends a fixed VHD's footer to an image of `size` bytes just written
/// to `file` (at `size` for a file; next, for a stream).
fn vhd_footer(file: &File, size: u64, seekable: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut id = [0u8; 16];
    id.copy_from_slice(
        &blake3::hash(format!("{size} {now} {}", std::process::id()).as_bytes()).as_bytes()[..16],
    );
    let footer = strata::store::vhd::footer(size, now, id);
    if seekable {
        file.write_all_at(&footer, size)?;
        file.sync_all()
    } else {
        (&*file).write_all(&footer)
    }
}

/// Where the image goes, as decided before anything is written.
enum Output {
    /// A regular file, written as `tmp` and renamed to `path` when done.
    File {
        path: PathBuf,
        tmp: PathBuf,
    },
    Device(PathBuf),
    Stream(PathBuf),
    /// Standard output: every byte, and nothing else on it.
    Stdout,
}

fn refused(path: &Path, why: impl std::fmt::Display) -> Failure {
    Failure::Refused(format!("cannot export to {}: {why}", path.display()))
}

fn plan(repo: &Path, path: &Path, force: bool) -> Result<Output, Failure> {
    if inside_repository(repo, path) {
        return Err(refused(
            path,
            format!("it is inside the repository {}", repo.display()),
        ));
    }
    match fs::metadata(path) {
        Ok(md) if Repository::holds(repo, &md) => Err(refused(
            path,
            format!("it is a file of the repository {}", repo.display()),
        )),
        Ok(md) if md.is_dir() => Err(refused(path, "it is a directory; name a file")),
        Ok(md) if md.is_file() && !force => {
            Err(refused(path, "it exists; add --force to replace it"))
        }
        Ok(md) if md.file_type().is_block_device() => Ok(Output::Device(path.to_owned())),
        Ok(md) if md.is_file() => Ok(Output::File {
            path: path.to_owned(),
            tmp: temp_beside(path),
        }),
        Ok(_) => Ok(Output::Stream(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Output::File {
            path: path.to_owned(),
            tmp: temp_beside(path),
        }),
        Err(e) => Err(refused(path, e)),
    }
}

/// `DIR/.NAME.strata-export-PID.tmp`: hidden, and plainly not finished.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.strata-export-{}.tmp", std::process::id()))
}

pub fn run(repo: &Path, a: ExportArgs) -> CmdResult {
    let stdout = a.file.as_os_str() == "-";
    let path = if stdout {
        PathBuf::from("standard output")
    } else {
        absolute(&a.file)?
    };
    let output = if stdout {
        Output::Stdout
    } else {
        plan(repo, &path, a.force)?
    };
    let file = match &output {
        Output::File { tmp, .. } => OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(tmp)
            .map_err(|e| {
                refused(
                    &path,
                    format!("cannot create {} beside it: {e}", tmp.display()),
                )
            })?,
        Output::Device(p) | Output::Stream(p) => OpenOptions::new()
            .write(true)
            .open(p)
            .map_err(|e| refused(p, e))?,
        Output::Stdout => std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .map_err(|e| refused(&path, e))?,
    };
    if a.format == Format::Vhd && matches!(output, Output::Device(_)) {
        return Err(refused(
            &path,
            "a VHD goes to a file or a stream; export raw onto a device",
        ));
    }
    let footer_to = file.try_clone().map_err(|e| refused(&path, e))?;
    let result = export(repo, &a.image, &path, file).and_then(|(size, stats)| {
        if a.format == Format::Vhd {
            if size % 512 != 0 {
                return Err(refused(
                    &path,
                    "a VHD's size must be a multiple of 512 bytes",
                ));
            }
            let seekable = matches!(output, Output::File { .. });
            vhd_footer(&footer_to, size, seekable).map_err(|e| refused(&path, e))?;
        }
        Ok((size, stats))
    });
    match (&output, result) {
        (Output::File { path, tmp }, Ok((size, stats))) => {
            if let Err(e) = publish(tmp, path, a.force) {
                let _ = fs::remove_file(tmp);
                return Err(e);
            }
            println!("{}", summary(&a.image, path, size, &stats));
            Ok(())
        }
        (Output::File { tmp, .. }, Err(e)) => {
            let _ = fs::remove_file(tmp);
            Err(e)
        }
        (Output::Device(p), Ok((size, stats))) => {
            println!("{}", summary(&a.image, p, size, &stats));
            Ok(())
        }
        // The image itself went down the stream: the summary goes to
        // standard error, so the stream holds the image and nothing else.
        (Output::Stream(_) | Output::Stdout, Ok((size, stats))) => {
            eprintln!("strata: {}", summary(&a.image, &path, size, &stats));
            Ok(())
        }
        (_, Err(e)) => Err(e),
    }
}

fn export(
    repo: &Path,
    image: &ImageRef,
    target: &Path,
    file: File,
) -> Result<(u64, ExportStats), Failure> {
    let mut t = Target::open(repo)?;
    let mut progress = Progress::new("exporting");
    let req = Request::Export {
        image: image.to_string(),
        target: target.display().to_string(),
    };
    let resp = t.call_with(req, vec![file], &mut |d, t| progress.update(d, t));
    progress.finish();
    match resp? {
        Response::Exported { size, stats } => Ok((size, stats)),
        r => Err(unexpected(r)),
    }
}

/// Gives the finished temp file its name: replacing only with --force, and
/// never a file that appeared meanwhile otherwise (a hard link fails if the
/// name exists). Then makes the name durable.
fn publish(tmp: &Path, path: &Path, force: bool) -> CmdResult {
    if force {
        fs::rename(tmp, path).map_err(|e| refused(path, e))?;
    } else {
        fs::hard_link(tmp, path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => refused(
                path,
                "it appeared while exporting; add --force to replace it",
            ),
            _ => refused(path, e),
        })?;
        fs::remove_file(tmp).map_err(|e| refused(tmp, e))?;
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| refused(path, e))
}

fn summary(image: &ImageRef, to: &Path, size: u64, stats: &ExportStats) -> String {
    format!(
        "exported {image} {} {} ({}, {} of data)",
        if stats.device {
            "in place onto block device"
        } else {
            "to"
        },
        to.display(),
        format_size(size),
        format_size(stats.written_bytes)
    )
}
