//! `strata apply`

use std::fs::File;
use std::io::IsTerminal;
use std::path::PathBuf;

use strata::store::apply::{self, ApplyOptions};
use strata::units::format_size;

use super::output::Progress;
use super::{CmdResult, Failure};

/// Arguments of `strata apply` (its help is on the command).
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
strata send vm1@monday | ssh dr 'strata apply /srv/vm1.img'              # the base (a full stream)\n  \
strata send vm1@tuesday --from vm1@monday | ssh dr 'strata apply /srv/vm1.img'\n  \
strata apply /dev/sdc --state /var/lib/vm1.apply -i tuesday.stream")]
pub struct ApplyArgs {
    /// The raw image file or block device to bring to the stream's snapshot
    target: PathBuf,
    /// Read the stream from FILE instead of standard input
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Keep progress in FILE (default: TARGET.strata-apply; give one for a device)
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Do not check that TARGET is the stream's base (it then must be)
    #[arg(long)]
    trust_base: bool,
    /// Do not check TARGET's identity at the end
    #[arg(long)]
    no_verify: bool,
}

pub fn run(a: ApplyArgs) -> CmdResult {
    let mut input: Box<dyn std::io::Read> = match &a.input {
        Some(p) => Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            File::open(p).map_err(|e| Failure::Refused(format!("{}: {e}", p.display())))?,
        )),
        None => {
            if std::io::stdin().is_terminal() {
                return Err(Failure::Usage(
                    "standard input is a terminal; pipe a `strata send` stream in, or give -i FILE"
                        .into(),
                ));
            }
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin()))
        }
    };
    if a.trust_base {
        eprintln!("strata: not checking that the target is the stream's base (--trust-base)");
    }
    let opts = ApplyOptions {
        target: &a.target,
        state: a.state.as_deref(),
        trust_base: a.trust_base,
        no_verify: a.no_verify,
    };
    let mut progress = Progress::new("applying");
    let r = apply::apply(&mut input, &opts, &mut |d, t| progress.update(d, t));
    progress.finish();
    let r = r?;
    println!(
        "{} is now {}{} ({} written{})",
        a.target.display(),
        r.snapshot,
        if r.finished_earlier {
            ", finishing an apply cut short"
        } else {
            ""
        },
        format_size(r.written_bytes),
        if r.verified {
            ", identity checked"
        } else {
            ", not checked (--no-verify)"
        }
    );
    Ok(())
}
