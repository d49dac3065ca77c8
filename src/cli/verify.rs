//! `strata verify`

use std::path::Path;
use std::time::Duration;

use strata::control::{Request, Response};
use strata::store::ImageRef;
use strata::units::format_size;

use super::output::{self, Progress};
use super::target::{unexpected, Target};
use super::{parse_image_ref, CmdResult, Failure};

/// A read rate: a size a second, more than nothing (leave `--rate` out for
/// no limit).
fn parse_rate(s: &str) -> Result<u64, String> {
    match super::parse_size(s)? {
        0 => Err("a rate of 0 would never finish; leave --rate out to read at full speed".into()),
        n => Ok(n),
    }
}

/// Arguments of `strata verify` (its help is on the command).
#[derive(clap::Args)]
#[command(
    after_help = "Exit status: 0 when everything checked is intact, 1 when damage is found \
(each damaged block is listed with the images that read it).\n\n\
Examples:\n  \
strata verify                              # every snapshot's blocks, and the metadata\n  \
strata verify vm1@nightly --json\n  \
strata verify --older-than 30d --rate 50M  # a daily scrub: a month to go round, 50 MiB/s at most"
)]
pub struct VerifyArgs {
    /// Check only what these images read: DISK (its snapshots and live disk) or DISK@SNAP
    #[arg(value_name = "IMAGE", value_parser = parse_image_ref)]
    images: Vec<ImageRef>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Skip layers verified less than this long ago (like 30d, 12h, 90m)
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    older_than: Option<Duration>,
    /// Read at most this much a second (like 50M), to run beside a busy mount
    #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
    rate: Option<u64>,
    /// Heal damaged blocks from this repository, a replica holding a
    /// snapshot with the same content (it must not be mounted)
    #[arg(long, value_name = "REPO")]
    repair_from: Option<std::path::PathBuf>,
}

/// An age like `30d`, `12h` or `1w 2d`: jiff's friendly duration format,
/// a day taken as 24 hours.
fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid age {s:?}: give a number and a unit, like 30d, 12h or 90m");
    let span: jiff::Span = s.trim().parse().map_err(|_| bad())?;
    let secs = span
        .total((
            jiff::Unit::Second,
            jiff::SpanRelativeTo::days_are_24_hours(),
        ))
        .map_err(|_| bad())?;
    if !(0.0..=u64::MAX as f64).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(repo: &Path, a: VerifyArgs) -> CmdResult {
    let mut target = Target::open(repo)?;
    let mut progress = Progress::new("verifying");
    let req = Request::Verify {
        images: a.images.iter().map(ToString::to_string).collect(),
        older_than: a.older_than.map(|d| d.as_secs()),
        rate: a.rate,
        repair_from: a
            .repair_from
            .as_deref()
            .map(|p| super::absolute(p).map(|p| p.display().to_string()))
            .transpose()?,
    };
    let resp = target.call(req, &mut |d, t| progress.update(d, t));
    progress.finish();
    let r = match resp? {
        Response::Verified(r) => r,
        r => return Err(unexpected(r)),
    };
    if a.json {
        output::json(&r)?;
    } else {
        println!(
            "checked {} layer(s), {} block(s), {} read{}",
            r.layers_checked,
            r.blocks_checked,
            format_size(r.bytes_read),
            if r.layers_skipped > 0 {
                format!("; {} verified recently, skipped", r.layers_skipped)
            } else {
                String::new()
            }
        );
        if r.blocks_unchecked > 0 {
            println!(
                "{} block(s) of just-frozen layers have no checksum yet and were not checked",
                r.blocks_unchecked
            );
        }
        for m in &r.mended {
            println!("mended a damaged copy of {m} from its other copy");
        }
        for u in &r.unreadable {
            println!("damaged: {u}");
        }
        for d in &r.repaired {
            println!(
                "repaired {} block {} (image offset {}) from the replica, and checked it",
                d.file, d.block, d.offset
            );
        }
        for n in &r.not_repaired {
            println!("could not repair {n}");
        }
        if !r.damaged.is_empty() {
            let rows: Vec<Vec<String>> = r
                .damaged
                .iter()
                .map(|d| {
                    vec![
                        d.file.clone(),
                        d.block.to_string(),
                        d.offset.to_string(),
                        if d.images.is_empty() {
                            "(none)".into()
                        } else {
                            d.images.join(" ")
                        },
                    ]
                })
                .collect();
            output::table(&["FILE", "BLOCK", "OFFSET", "IMAGES THAT READ IT"], &rows);
        }
    }
    if r.intact() {
        if !a.json {
            println!("everything checked is intact");
        }
        Ok(())
    } else {
        Err(Failure::Refused(format!(
            "found {} damaged block(s) and {} damaged metadata file(s); reads of them fail \
             with EIO rather than return wrong bytes. Restore the images that read them from \
             a replica (`strata send` there, `strata receive` here) or a backup",
            r.damaged.len(),
            r.unreadable.len()
        )))
    }
}
