//! `strata mount` and `strata umount`

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use strata::control::{Client, Request, Response};
use strata::fs::daemon::{self, MountOptions};
use strata::store::Repository;
use strata::sys;

use super::{absolute, mount_point, CmdResult, Failure};

/// Set in the daemon's environment by `strata mount`: say READY on stdout
/// once serving, then let go of the terminal.
const NOTIFY_ENV: &str = "STRATA_DAEMON_NOTIFY";
const READY: &str = "READY";
/// A line the daemon prints before READY for `strata mount` to pass on.
const NOTE: &str = "NOTE ";
const LOG_FILE: &str = "daemon.log";

#[derive(Args)]
#[command(after_help = "Examples:\n  \
strata mount ~/disks                              # the default repository\n  \
strata --repo /var/lib/strata mount /mnt/strata -o allow_other,uid=1000\n  \
strata mount /mnt/strata -o ro,checked            # read-only, every read checked\n\n\
mount -t strata REPO DIR and /etc/fstab work too, once mount-helpers/install has run.")]
pub struct MountArgs {
    /// Directory to mount on
    mountpoint: PathBuf,
    /// Show live images read-only too
    #[arg(long)]
    read_only: bool,
    /// Stay in the foreground and log to stderr (set RUST_LOG=info for more)
    #[arg(long)]
    foreground: bool,
    /// Mount options, comma-separated: ro, rw, allow_other, allow_root,
    /// default_permissions (always on), checked, uid=N, gid=N, umask=OCTAL.
    /// mount(8)'s and fstab's generic ones, such as defaults, nofail,
    /// noauto, _netdev, comment= and x-systemd.*, are accepted and ignored;
    /// nosuid, nodev and noexec always hold (images are plain files)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

impl MountArgs {
    /// Whether this process serves the mount (as opposed to starting the
    /// daemon that does and returning).
    pub fn runs_the_daemon(&self) -> bool {
        self.foreground
    }
}

#[derive(Args)]
#[command(after_help = "Example:\n  strata umount ~/disks    # umount(8) works too")]
pub struct UmountArgs {
    /// Where the repository is mounted
    mountpoint: PathBuf,
}

fn parse_options(a: &MountArgs) -> Result<MountOptions, Failure> {
    let mut opts = MountOptions {
        read_only: a.read_only,
        ..MountOptions::default()
    };
    for opt in a
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|o| !o.is_empty())
    {
        match opt {
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = a.read_only,
            "allow_other" => opts.allow_other = true,
            "allow_root" => opts.allow_root = true,
            "checked" => opts.checked = true,
            o if o.starts_with("uid=") || o.starts_with("gid=") || o.starts_with("umask=") => {
                let (k, v) = o.split_once('=').unwrap_or((o, ""));
                let radix = if k == "umask" { 8 } else { 10 };
                let n = u32::from_str_radix(v, radix)
                    .ok()
                    .filter(|&n| k != "umask" || n <= 0o777)
                    .ok_or_else(|| {
                        Failure::Usage(format!(
                            "invalid mount option {o:?}: {k} takes {}",
                            if k == "umask" { "an octal mask like 022" } else { "a number" }
                        ))
                    })?;
                match k {
                    "uid" => opts.uid = Some(n),
                    "gid" => opts.gid = Some(n),
                    _ => opts.umask = Some(n),
                }
            }
            // What mount(8), fstab and systemd pass along. The kernel's
            // permission checks come with allow_other; images hold no
            // devices or set-uid files, and mount point permissions are
            // the daemon's (umask=).
            // Images are never executable, set-uid or devices, so nosuid,
            // nodev and noexec always hold; access times are not kept.
            "defaults" | "noauto" | "auto" | "nofail" | "user" | "nouser" | "users" | "owner"
            | "group" | "_netdev" | "default_permissions" | "nosuid" | "nodev" | "noexec"
            | "suid" | "dev" | "exec" | "async" | "noatime" | "relatime" | "norelatime"
            | "atime" | "strictatime" | "nostrictatime" | "diratime" | "nodiratime"
            | "lazytime" | "nolazytime" => {}
            o if ["x-", "comment=", "user="].iter().any(|p| o.starts_with(p)) => {}
            "sync" | "dirsync" => {
                return Err(Failure::Usage(format!(
                    "mount option {opt:?} is not supported: strata makes writes durable on \
                     fsync, as a disk does; leave it out (an image's user syncs what must last)"
                )))
            }
            "remount" => {
                return Err(Failure::Usage(
                    "mount option \"remount\" is not supported: unmount, then mount again \
                     with the new options"
                        .into(),
                ))
            }
            o => {
                return Err(Failure::Usage(format!(
                    "unknown mount option {o:?} (strata's own: ro, rw, allow_other, allow_root, \
                     default_permissions, checked, uid=, gid=, umask=; fstab's generic ones \
                     such as defaults, nofail, noauto, _netdev, nosuid and x-systemd.* are accepted)"
                )))
            }
        }
    }
    Ok(opts)
}

pub fn mount(repo: Option<PathBuf>, a: MountArgs) -> CmdResult {
    let opts = parse_options(&a)?;
    // A repository that does not exist yet is created, like the default
    // one, when its directory is missing or empty; a directory holding
    // anything else is left to `open` to refuse.
    let repo = absolute(&match repo {
        Some(p) => p,
        None => Repository::default_path()?,
    })?;
    let mp = mount_point(&a.mountpoint)?;
    // Refused before anything is created, and before any warning about
    // what the directory holds.
    daemon::check_mountpoint(&mp).map_err(|e| Failure::Refused(e.to_string()))?;
    let fresh = match std::fs::read_dir(&repo) {
        Ok(mut d) => d.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if fresh {
        drop(Repository::init(&repo)?);
        eprintln!("created repository {}", repo.display());
    }
    // Said once (not again by the daemon `strata mount` starts), and not
    // looked for under an automount trigger: listing it would fire the
    // trigger, and systemd's mount job would wait on itself.
    let started_by_mount = std::env::var_os(NOTIFY_ENV).is_some();
    if !started_by_mount
        && !daemon::is_automount_trigger(&mp)
        && std::fs::read_dir(&mp).is_ok_and(|mut d| d.next().is_some())
    {
        eprintln!(
            "strata: warning: {} is not empty; its files are hidden while the repository is mounted there",
            mp.display()
        );
    }
    if a.foreground {
        let notify = std::env::var_os(NOTIFY_ENV).is_some();
        let log_path = repo.join(LOG_FILE);
        return daemon::run(&repo, &mp, &opts, |notices| {
            for n in notices {
                if notify {
                    println!("{NOTE}{n}");
                } else {
                    eprintln!("strata: note: {n}");
                }
            }
            // Under systemd (Type=notify), the service is up now.
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                log::warn!("cannot tell systemd the mount is ready: {e}");
            }
            if notify {
                println!("{READY}");
                match OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&log_path)
                {
                    Ok(log) => {
                        if let Err(e) = sys::redirect_stdio(&log) {
                            log::warn!("cannot detach from the terminal: {e}");
                        }
                    }
                    Err(e) => log::warn!("{}: {e}", log_path.display()),
                }
            }
        })
        .map_err(|e| Failure::Refused(e.to_string()));
    }
    spawn_daemon(&repo, &mp, &a)
}

/// Starts the daemon in a session of its own and waits until it says the
/// mount answers, or reports why it could not mount.
fn spawn_daemon(repo: &Path, mp: &Path, a: &MountArgs) -> CmdResult {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Refused(format!("cannot find strata itself: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--repo")
        .arg(repo)
        .arg("mount")
        .arg(mp)
        .arg("--foreground");
    if a.read_only {
        cmd.arg("--read-only");
    }
    for o in &a.options {
        cmd.arg("-o").arg(o);
    }
    cmd.env(NOTIFY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::new_session_on_spawn(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::Refused(format!("cannot start the daemon: {e}")))?;
    let ready = child
        .stdout
        .take()
        .map(|out| {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .inspect(|l| {
                    if let Some(n) = l.strip_prefix(NOTE) {
                        eprintln!("strata: note: {n}");
                    }
                })
                .any(|l| l == READY)
        })
        .unwrap_or(false);
    if ready {
        println!(
            "mounted {} at {} (daemon PID {}; stop with: strata umount {})",
            repo.display(),
            mp.display(),
            child.id(),
            mp.display()
        );
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = child.wait();
    let err = err.trim().trim_start_matches("strata: ");
    Err(Failure::Refused(if err.is_empty() {
        "the daemon stopped before the mount was ready".into()
    } else {
        err.to_string()
    }))
}

pub fn umount(a: UmountArgs) -> CmdResult {
    let mp = mount_point(&a.mountpoint)?;
    let Some(repo) = daemon::mounted_repository(&mp) else {
        return Err(Failure::Refused(format!(
            "{} is not a strata mount",
            mp.display()
        )));
    };
    let client = Client::connect(&repo).map_err(|e| Failure::Refused(e.to_string()))?;
    let Some(mut client) = client else {
        // Nobody serves the socket: the daemon died and left its mount.
        daemon::detach(&mp)
            .map_err(|e| Failure::Refused(format!("cannot detach {}: {e}", mp.display())))?;
        println!(
            "removed the stale mount {} (its daemon had stopped)",
            mp.display()
        );
        return Ok(());
    };
    let flush_failed = match client.call(Request::Unmount, &[], &mut |_, _| {}) {
        Ok(Response::Refused { message, .. }) => return Err(Failure::Refused(message)),
        Ok(Response::Unmounted { flush_failed }) => flush_failed,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            // A daemon of another strata, which cannot read the request:
            // every version unmounts cleanly on SIGTERM.
            let pid = Repository::holder(&repo)?.ok_or_else(|| Failure::Refused(e.to_string()))?;
            sys::terminate(pid).map_err(|t| {
                Failure::Refused(format!("{e}; and it could not be stopped (PID {pid}): {t}"))
            })?;
            None
        }
        // The daemon exited before it answered: unmounted, or it died.
        _ => None,
    };
    wait_for_release(&repo)?;
    if daemon::mounted_repository(&mp).is_some() {
        // It died without unmounting: what it left is a dead mount.
        daemon::detach(&mp)
            .map_err(|e| Failure::Refused(format!("cannot detach {}: {e}", mp.display())))?;
        println!(
            "removed the stale mount {} (its daemon had stopped)",
            mp.display()
        );
        return Ok(());
    }
    if let Some(e) = flush_failed {
        return Err(Failure::Refused(format!(
            "unmounted {}, but the final flush failed: {e}",
            mp.display()
        )));
    }
    println!("unmounted {}", mp.display());
    Ok(())
}

/// Waits until the daemon has let go of the repository, so that a command
/// right after `strata umount` finds it free.
fn wait_for_release(repo: &Path) -> CmdResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let free = Repository::holder(repo)
            .map(|h| h.is_none())
            .unwrap_or(true);
        if free {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::Refused(format!(
                "unmounted, but the daemon still holds {} after 60 s",
                repo.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
