//! `strata restore attach|detach`: single files out of a snapshot.
//!
//! attach finds the file systems in a snapshot image (a whole-disk one, or
//! one per partition of an MBR or GPT table) and mounts each read-only
//! under DIR, one directory per partition, through a read-only loop
//! device that mount(8) makes with the partition's offset and size. Those
//! loop devices clear themselves when unmounted, so detach has only to
//! unmount what it finds mounted under DIR; it needs no record that could
//! be lost, and works the same after a failure half-way or a reboot. A
//! small state file in DIR says what is attached there, for people and for
//! detach to remove the directories it made.
//!
//! Probing uses util-linux: `blkid -p` (with an offset and size for a
//! partition) names what a range holds, `partx` lists a partition table.
//! Journals are never replayed (the image is read-only): ext4 mounts with
//! `noload`, xfs with `norecovery,nouuid`, btrfs with
//! `rescue=nologreplay`. LVM and LUKS need device-mapper, which strata does
//! not drive: such partitions are listed, not mounted.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use strata::fs::daemon;
use strata::store::{ImageRef, SnapshotRef};
use strata::units::format_size;

use super::{absolute, output, parse_image_ref, CmdResult, Failure};

/// Names the state file in an attach directory.
const STATE: &str = ".strata-restore";

#[derive(Subcommand)]
pub enum RestoreCommand {
    /// Mount the file systems of a snapshot read-only under DIR
    ///
    /// One directory per partition (p1, p2, ...; `disk` for a file system
    /// on the whole image), each mounted read-only without replaying its
    /// journal. The repository must be mounted (`strata mount`): the image
    /// is read through it. Needs root. `strata restore detach DIR` undoes
    /// it.
    #[command(after_help = "Examples:\n  \
strata restore attach vm1@before-upgrade /mnt/restore\n  \
cp -a /mnt/restore/p2/etc/nginx /etc/nginx.restored\n  \
strata restore detach /mnt/restore")]
    Attach(AttachArgs),
    /// Unmount everything attach mounted under DIR, and free its loop devices
    ///
    /// Works after an attach that failed half-way and after a reboot.
    #[command(after_help = "Example:\n  strata restore detach /mnt/restore")]
    Detach(DetachArgs),
}

#[derive(Args)]
pub struct AttachArgs {
    /// The image: a snapshot as DISK@SNAP, or a live disk as DISK (attached
    /// read-only all the same)
    #[arg(value_parser = parse_image_ref, value_name = "DISK@SNAP")]
    image: ImageRef,
    /// Directory to mount under (created if missing; must be empty)
    dir: PathBuf,
    /// Print what was mounted as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DetachArgs {
    /// The directory given to `restore attach`
    dir: PathBuf,
}

/// What attach found in one range of the image, and what it did with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Part {
    /// `p1`, `p2`, ... or `disk` for the whole image.
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// blkid's TYPE (ext4, xfs, vfat, btrfs, LVM2_member, ...), if any.
    pub fstype: Option<String>,
    /// Where it is mounted, when it is.
    pub mounted_at: Option<String>,
    /// Why it is not mounted.
    pub note: Option<String>,
}

/// What the state file records.
#[derive(Debug, Serialize, Deserialize)]
struct Attached {
    image: String,
    path: String,
    parts: Vec<Part>,
}

pub fn run(repo: &Path, cmd: RestoreCommand) -> CmdResult {
    match cmd {
        RestoreCommand::Attach(a) => attach(repo, a),
        RestoreCommand::Detach(a) => detach(&absolute(&a.dir)?),
    }
}

fn refused(msg: impl Into<String>) -> Failure {
    Failure::Refused(msg.into())
}

/// Runs a tool; its standard output, or its complaint as the error.
fn tool(cmd: &mut Command) -> Result<String, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// blkid's low-level probe of `len` bytes at `offset` of `image`:
/// `KEY=value` pairs (TYPE, PTTYPE, USAGE, ...). Empty when it finds
/// nothing (blkid exits 2 then).
fn probe(image: &Path, offset: u64, len: u64) -> Result<BTreeMap<String, String>, String> {
    let out = Command::new("blkid")
        .args([
            "-p",
            "-o",
            "export",
            "-O",
            &offset.to_string(),
            "-S",
            &len.to_string(),
        ])
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run blkid (util-linux): {e}"))?;
    match out.status.code() {
        Some(0) => {}
        Some(2) => return Ok(BTreeMap::new()),
        _ => {
            return Err(format!(
                "blkid failed on {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The partitions of the table in `image`: (number, offset, size) in bytes.
fn partitions(image: &Path) -> Result<Vec<(u32, u64, u64)>, String> {
    let out = tool(
        Command::new("partx")
            .args(["-g", "-r", "-o", "NR,START,SECTORS"])
            .arg(image),
    )?;
    out.lines()
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .map(|x| x.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("partx said {l:?}"))?;
            match f[..] {
                [nr, start, sectors] => Ok((nr as u32, start * 512, sectors * 512)),
                _ => Err(format!("partx said {l:?}")),
            }
        })
        .collect()
}

/// The read-only mount options for a file system type, or why it is not
/// mounted.
fn mount_options(fstype: &str) -> Result<&'static str, String> {
    Ok(match fstype {
        "ext2" | "ext3" | "ext4" => "ro,noload",
        "xfs" => "ro,norecovery,nouuid",
        "btrfs" => "ro,rescue=nologreplay",
        "vfat" | "exfat" | "ntfs" | "ntfs3" | "iso9660" | "udf" | "f2fs" => "ro",
        "LVM2_member" => {
            return Err("an LVM physical volume: needs device-mapper, not mounted".into())
        }
        "crypto_LUKS" => return Err("LUKS-encrypted: needs device-mapper, not mounted".into()),
        "swap" => return Err("swap: nothing to mount".into()),
        other => return Err(format!("{other}: strata does not mount this type")),
    })
}

/// The image file of `r` in the mount of `repo`.
fn image_path(repo: &Path, r: &ImageRef) -> Result<PathBuf, Failure> {
    let Some(mp) = daemon::mount_points_of(repo).into_iter().next() else {
        return Err(refused(format!(
            "the repository {} is not mounted; restore reads the image through the mount: \
             `strata mount DIR` first",
            repo.display()
        )));
    };
    let path = match r {
        ImageRef::Live(d) => mp.join(d.as_str()).join("live.img"),
        ImageRef::Snapshot(SnapshotRef { disk, snap }) => mp
            .join(disk.as_str())
            .join("snapshots")
            .join(format!("{}.img", snap.as_str())),
    };
    if !path.is_file() {
        return Err(refused(format!(
            "{r} does not exist (no {}); `strata snapshot list DISK` lists the snapshots",
            path.display()
        )));
    }
    Ok(path)
}

fn attach(repo: &Path, a: AttachArgs) -> CmdResult {
    let repo = absolute(repo)?;
    let dir = absolute(&a.dir)?;
    let image = image_path(&repo, &a.image)?;
    fs::create_dir_all(&dir).map_err(|e| refused(format!("{}: {e}", dir.display())))?;
    if fs::read_dir(&dir)
        .map_err(|e| refused(format!("{}: {e}", dir.display())))?
        .next()
        .is_some()
    {
        return Err(refused(format!(
            "{} is not empty (`strata restore detach {0}` if something is attached there)",
            dir.display()
        )));
    }
    let size = fs::metadata(&image)
        .map_err(|e| refused(format!("{}: {e}", image.display())))?
        .len();
    let whole = probe(&image, 0, size).map_err(refused)?;
    let mut parts: Vec<Part> = if whole.contains_key("PTTYPE") {
        partitions(&image)
            .map_err(refused)?
            .into_iter()
            .map(|(nr, offset, size)| Part {
                name: format!("p{nr}"),
                offset,
                size,
                fstype: None,
                mounted_at: None,
                note: None,
            })
            .collect()
    } else {
        vec![Part {
            name: "disk".into(),
            offset: 0,
            size,
            fstype: whole.get("TYPE").cloned(),
            mounted_at: None,
            note: None,
        }]
    };
    let mut state = Attached {
        image: a.image.to_string(),
        path: image.display().to_string(),
        parts: vec![],
    };
    // The state first, so detach knows this directory even if attach dies.
    save(&dir, &state)?;
    for p in &mut parts {
        if p.name != "disk" {
            p.fstype = probe(&image, p.offset, p.size)
                .map_err(refused)?
                .get("TYPE")
                .cloned();
        }
        let Some(fstype) = p.fstype.clone() else {
            p.note = Some(if whole.contains_key("PTTYPE") {
                "no file system found (an extended partition holds its logical ones)".into()
            } else {
                "no file system or partition table found".into()
            });
            continue;
        };
        let opts = match mount_options(&fstype) {
            Ok(o) => o,
            Err(why) => {
                p.note = Some(why);
                continue;
            }
        };
        let at = dir.join(&p.name);
        fs::create_dir_all(&at).map_err(|e| refused(format!("{}: {e}", at.display())))?;
        state.parts.push(p.clone());
        save(&dir, &state)?;
        let mounted = tool(
            Command::new("mount")
                .arg("-t")
                .arg(&fstype)
                .arg("-o")
                .arg(format!(
                    "{opts},loop,offset={},sizelimit={}",
                    p.offset, p.size
                ))
                .arg(&image)
                .arg(&at),
        );
        match mounted {
            Ok(_) => p.mounted_at = Some(at.display().to_string()),
            Err(e) => {
                // Said, and the others still mounted: one file system the
                // kernel cannot mount (no vfat module, say) does not keep
                // the files of the rest out of reach.
                let first = e.lines().next().unwrap_or_default().to_string();
                p.note = Some(format!("not mounted: {first}"));
                let _ = fs::remove_dir(&at);
            }
        }
        *state.parts.last_mut().expect("pushed above") = p.clone();
        save(&dir, &state)?;
    }
    state.parts = parts;
    save(&dir, &state)?;
    if a.json {
        return output::json(&state.parts);
    }
    let rows: Vec<Vec<String>> = state
        .parts
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.fstype.clone().unwrap_or_else(|| "-".into()),
                format_size(p.size),
                p.mounted_at
                    .clone()
                    .unwrap_or_else(|| p.note.clone().unwrap_or_default()),
            ]
        })
        .collect();
    output::table(&["PART", "TYPE", "SIZE", "MOUNTED AT (read-only)"], &rows);
    if state.parts.iter().all(|p| p.mounted_at.is_none()) {
        let _ = detach_quietly(&dir);
        return Err(refused(format!(
            "{} holds no file system strata can mount",
            a.image
        )));
    }
    println!("when done: strata restore detach {}", dir.display());
    Ok(())
}

fn save(dir: &Path, state: &Attached) -> CmdResult {
    let path = dir.join(STATE);
    let json = serde_json::to_vec_pretty(state).map_err(|e| refused(e.to_string()))?;
    fs::write(&path, json).map_err(|e| refused(format!("{}: {e}", path.display())))
}

/// Unmounts everything under `dir` and removes what attach made there.
fn detach_quietly(dir: &Path) -> Result<(), String> {
    for mp in daemon::mounts_under(dir) {
        if mp == dir {
            continue;
        }
        tool(Command::new("umount").arg(&mp)).map_err(|e| {
            format!(
                "{e} (is a file under {} open? `fuser -vm {0}` shows who holds it)",
                mp.display()
            )
        })?;
    }
    let state: Option<Attached> = fs::read(dir.join(STATE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    for p in state.iter().flat_map(|s| &s.parts) {
        // Only the directories attach made, and only when empty.
        let _ = fs::remove_dir(dir.join(&p.name));
    }
    let _ = fs::remove_file(dir.join(STATE));
    Ok(())
}

fn detach(dir: &Path) -> CmdResult {
    let state = dir.join(STATE);
    let mounted: Vec<_> = daemon::mounts_under(dir)
        .into_iter()
        .filter(|m| m != dir)
        .collect();
    if !state.exists() && mounted.is_empty() {
        return Err(refused(format!("nothing is attached at {}", dir.display())));
    }
    detach_quietly(dir).map_err(refused)?;
    println!(
        "detached {} ({} unmounted, loop devices freed)",
        dir.display(),
        match mounted.len() {
            1 => "1 file system".to_string(),
            n => format!("{n} file systems"),
        }
    );
    Ok(())
}
