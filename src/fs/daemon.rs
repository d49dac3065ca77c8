//! The mount's daemon: owns the repository while it is mounted, serves the
//! file system and the control socket, and on `strata umount`, `umount`,
//! SIGTERM or SIGINT flushes everything and unmounts.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use parking_lot::{Condvar, Mutex};

use super::StrataFs;
use crate::control::{self, ServerHooks};
use crate::store::{Repository, StoreError};
use crate::sys;

/// FUSE worker threads: reads of cold data block on the device, so more
/// than the two cores keep the device busy.
const WORKERS: usize = 4;
/// See [`tune_readahead`].
const READ_AHEAD_KB: u32 = 16 << 10;

#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    pub read_only: bool,
    /// Let other users see the mount (needs `user_allow_other` for non-root).
    pub allow_other: bool,
    pub allow_root: bool,
    /// Every read goes through the daemon, which checks each block against
    /// its checksum (no FUSE passthrough for flat snapshots).
    pub checked: bool,
    /// Who owns the tree (default: the mounting user and group).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits taken away from every entry (default 077: private
    /// to its owner).
    pub umask: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path} is a mount whose daemon has stopped; run `strata umount {path}` first", path = .0.display())]
    StaleMount(PathBuf),
    #[error("mount point {}: {source}", .path.display())]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("cannot mount on {}: {source}", .path.display())]
    Mount { path: PathBuf, source: io::Error },
    #[error("control socket: {0}")]
    Control(io::Error),
    #[error("{0}")]
    MountedOver(String),
}

/// Mounts `repo` at `mountpoint` and serves it until it is unmounted.
/// `ready` is called once the mount answers and the control socket listens,
/// with what opening the repository found worth telling.
pub fn run(
    repo: &Path,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(&[String]),
) -> Result<(), DaemonError> {
    check_mountpoint(mountpoint)?;
    // Before any worker thread starts (see the function).
    sys::limit_malloc_arenas(2);
    let repo = Arc::new(Repository::open(repo)?);
    let mut fs = StrataFs::new(repo.clone(), opts.read_only);
    fs.set_checked(opts.checked);
    fs.set_owner(opts.uid, opts.gid, opts.umask);
    let keeper = fs.keeper();
    let settle = keeper.settler();
    let config = session_config(&repo.path().display().to_string(), opts);
    let mp = mountpoint.to_owned();
    let mount_err = |source| DaemonError::Mount {
        path: mp.clone(),
        source,
    };
    // Root mounts directly; anyone else through the setuid fusermount3.
    // Either way the mount is strata's: fuser serves its descriptor and
    // never unmounts it (see [`Unmounter`]).
    let (fd, unmounter) = if sys::effective_uid() == 0 {
        let fd = mount_direct(mountpoint, &config, opts.read_only).map_err(mount_err)?;
        (fd, Unmounter::Direct(mp.clone()))
    } else {
        let fd = fusermount_open(mountpoint, &config).map_err(mount_err)?;
        (fd, Unmounter::Fusermount(mp.clone()))
    };
    let session = match Session::from_fd(fs, fd, config.acl, config.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = unmounter.unmount();
            return Err(mount_err(e));
        }
    };
    let unmounter = Arc::new(unmounter);
    keeper.start(session.notifier());

    let unmount = {
        let (repo, unmounter, mp) = (repo.clone(), unmounter.clone(), mp.clone());
        // A flush that fails does not keep the mount up: what it could not
        // make durable was never acknowledged, and a latched disk would
        // otherwise never let go. It is reported instead.
        move || -> Result<Option<String>, String> {
            let flushed = repo.flush_all().err().map(|e| {
                log::error!("flushing before unmount: {e}");
                e.to_string()
            });
            unmounter.unmount().map_err(|e| {
                format!(
                    "cannot unmount {}: {e} (is a file on it open, a loop device attached, or a \
                     `strata restore attach` not yet detached?)",
                    mp.display()
                )
            })?;
            Ok(flushed)
        }
    };
    // Set once a command's unmount has been answered; the daemon waits
    // for it (briefly) after its mount is gone.
    let answered = Arc::new((Mutex::new(false), Condvar::new()));
    let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    control::serve(
        repo.clone(),
        ServerHooks {
            unmount: Box::new({
                let (unmount, requested) = (unmount.clone(), requested.clone());
                move || {
                    // Set before the mount goes, so the main thread sees it.
                    requested.store(true, std::sync::atomic::Ordering::SeqCst);
                    let r = unmount();
                    if r.is_err() {
                        requested.store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                }
            }),
            settle: Box::new(settle),
            read_only: opts.read_only,
            unmount_answered: Box::new({
                let answered = answered.clone();
                move || {
                    *answered.0.lock() = true;
                    answered.1.notify_all();
                }
            }),
        },
    )
    .map_err(DaemonError::Control)?;
    watch_signals(unmount, mp.clone());
    tune_readahead(&mp);
    log::info!("serving {} at {}", repo.path().display(), mp.display());
    for n in repo.notices() {
        log::warn!("{n}");
    }
    ready(repo.notices());

    let served = session.run();
    if requested.load(std::sync::atomic::Ordering::SeqCst) {
        let (done, cv) = &*answered;
        let mut done = done.lock();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !*done && !cv.wait_until(&mut done, deadline).timed_out() {}
    }
    control::remove_socket(repo.path());
    repo.flush_all()?;
    log::info!("unmounted {}", mp.display());
    served.map_err(|source| DaemonError::Mount { path: mp, source })
}

/// How this daemon's mount is taken down.
enum Unmounter {
    /// Mounted directly (root, [`mount_direct`]): unmounted by one
    /// umount(2) of the mount point, when asked, as often as asked (a busy
    /// mount, a loop device attached, may be unmounted by a later request).
    Direct(PathBuf),
    /// Mounted by fusermount3: only fusermount3 may unmount it.
    Fusermount(PathBuf),
}

impl Unmounter {
    fn unmount(&self) -> io::Result<()> {
        match self {
            Unmounter::Direct(mp) => sys::umount(mp),
            Unmounter::Fusermount(mp) => fusermount(&["-u"], mp),
        }
    }
}

/// Mounts the file system at `mp` as root: opens `/dev/fuse` and calls
/// mount(2) with what fuser would pass (and [`fusermount_options`] says
/// to fusermount3), returning the descriptor to serve. Not through fuser's
/// own mount, for two reasons. It opens the mount point to read its mode,
/// which fires an automount trigger there (systemd's mount job would then
/// wait on itself); `stat` does not. And a session that mounted unmounts
/// when it ends, by path, with a check that races the kernel's teardown:
/// once strata's mount is gone that path names what the mount covered (an
/// automount trigger), which it would unmount too.
fn mount_direct(mp: &Path, config: &Config, read_only: bool) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(mp)?.mode();
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let mut data = format!(
        "fd={},rootmode={mode:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        sys::effective_uid(),
        sys::effective_gid(),
    );
    if config.acl != SessionACL::Owner {
        // allow_root too: fuser refuses other users itself.
        data.push_str(",allow_other");
    }
    let source = config
        .mount_options
        .iter()
        .find_map(|o| match o {
            MountOption::FSName(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("strata");
    sys::mount_fuse(source, mp, &data, read_only)?;
    Ok(dev)
}

/// Has the setuid `fusermount3` mount `mp` and hand over the `/dev/fuse`
/// descriptor (libfuse's protocol: a socket named in `_FUSE_COMMFD`, the
/// descriptor sent with SCM_RIGHTS). fuser only falls back to fusermount3
/// when mount(2) fails, not when `/dev/fuse` itself is closed to the user.
fn fusermount_open(mp: &Path, config: &Config) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let options = fusermount_options(config);
    let mut cmd = Command::new(FUSERMOUNT);
    cmd.arg("-o")
        .arg(&options)
        .arg("--")
        .arg(mp)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    sys::inherit_fd_on_spawn(&mut cmd, theirs.as_raw_fd());
    let child = cmd.spawn().map_err(missing_fusermount)?;
    drop(theirs);
    let fd = sys::recv_fd(&ours);
    let out = child.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match fd {
        Ok(fd) if out.status.success() => Ok(fd),
        _ if said.contains("/dev/fuse") && said.contains("Permission denied") => {
            Err(io::Error::other(format!(
                "fusermount3 failed: {said}: /dev/fuse must be readable and writable by \
                 every user (crw-rw-rw-, as udev makes it; some containers ship it 0600): \
                 as root, `chmod 0666 /dev/fuse`"
            )))
        }
        _ => Err(io::Error::other(format!("fusermount3 failed: {said}"))),
    }
}

const FUSERMOUNT: &str = "fusermount3";

/// The `-o` string that tells fusermount3 what [`session_config`] tells
/// fuser, so both ways of mounting mount alike.
fn fusermount_options(config: &Config) -> String {
    let mut options: Vec<String> = config
        .mount_options
        .iter()
        .filter_map(|o| {
            Some(match o {
                MountOption::FSName(s) => format!("fsname={s}"),
                MountOption::Subtype(s) => format!("subtype={s}"),
                MountOption::DefaultPermissions => "default_permissions".into(),
                MountOption::NoAtime => "noatime".into(),
                MountOption::RO => "ro".into(),
                MountOption::RW => "rw".into(),
                // session_config sets no others.
                _ => return None,
            })
        })
        .collect();
    match config.acl {
        SessionACL::All => options.push("allow_other".into()),
        SessionACL::RootAndOwner => options.push("allow_root".into()),
        SessionACL::Owner => {}
    }
    options.join(",")
}

fn missing_fusermount(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            e.kind(),
            "fusermount3 is not installed; ordinary users mount through it (install fuse3)",
        )
    } else {
        e
    }
}

/// Runs `fusermount3 ARGS MP`; its complaint becomes the error.
fn fusermount(args: &[&str], mp: &Path) -> io::Result<()> {
    let out = Command::new(FUSERMOUNT)
        .args(args)
        .arg("--")
        .arg(mp)
        .output()
        .map_err(missing_fusermount)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Detaches the mount at `mp` now, even if it is busy or its daemon is
/// gone: umount2(MNT_DETACH) as root, `fusermount3 -u -z` otherwise.
pub fn detach(mp: &Path) -> io::Result<()> {
    match sys::umount_detach(mp) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount(&["-u", "-z"], mp),
        r => r,
    }
}

/// The session settings of a strata mount (threads, options, access);
/// public so a benchmark's baseline file system can use the same.
pub fn session_config(source: &str, opts: &MountOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.to_string()),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(WORKERS);
    config.clone_fd = true;
    config
}

/// Refuses a mount point that is not a directory, is a dead mount, or has
/// another file system mounted on it. `mp` must be canonical (symlinks
/// resolved): mountinfo names mount points that way.
pub fn check_mountpoint(mp: &Path) -> Result<(), DaemonError> {
    match std::fs::metadata(mp) {
        Ok(md) if md.is_dir() => not_mounted_over(mp).map_err(DaemonError::MountedOver),
        Ok(_) => Err(DaemonError::MountPoint {
            path: mp.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(DaemonError::StaleMount(mp.to_owned()))
        }
        Err(source) => Err(DaemonError::MountPoint {
            path: mp.to_owned(),
            source,
        }),
    }
}

/// SIGTERM, SIGINT and SIGHUP unmount cleanly. If the mount is busy it is
/// detached instead, so the daemon still flushes and stops.
fn watch_signals(
    unmount: impl Fn() -> Result<Option<String>, String> + Send + 'static,
    mp: PathBuf,
) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot watch signals: {e}");
            return;
        }
    };
    let _ = std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                log::info!("signal {sig}: flushing and unmounting");
                if let Err(e) = unmount() {
                    log::warn!("{e}; detaching instead");
                    if let Err(e) = detach(&mp) {
                        log::error!("detaching {}: {e}", mp.display());
                    }
                }
            }
        });
}

/// Raises the mount's read-ahead window from the kernel's 128 KiB for FUSE
/// to 16 MiB, so a sequential reader keeps several 1 MiB requests in flight
/// for the worker threads (and the device). Measured on a depth-100 copy
/// (BENCHMARKS.md): 1 MiB 3.67 s, 4 MiB 2.99 s, 16 MiB 2.88 s warm; 5.80,
/// 4.99 and 4.56 s cold. The window only grows for sequential readers.
/// Best effort: it needs root and sysfs.
pub fn tune_readahead(mp: &Path) {
    let Some(dev) = mount_device(mp) else { return };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        log::debug!("{path}: {e}");
    }
}

/// What /proc/self/mountinfo says of a mount.
struct MountEntry {
    mountpoint: String,
    /// `major:minor`
    device: String,
    fstype: String,
    source: String,
}

/// Every mount, oldest first, from /proc/self/mountinfo (parsed by
/// `procfs`, which leaves the kernel's octal escapes in place).
fn mount_entries() -> Vec<MountEntry> {
    let Ok(infos) = procfs::process::Process::myself().and_then(|p| p.mountinfo()) else {
        return vec![];
    };
    infos
        .into_iter()
        .map(|m| MountEntry {
            mountpoint: unescape(&m.mount_point.to_string_lossy()),
            device: m.majmin,
            fstype: m.fs_type,
            source: unescape(m.mount_source.as_deref().unwrap_or("")),
        })
        .collect()
}

/// The newest mount at `mp` (a `stat` of the mount point would ask this
/// very daemon, which may not be serving yet).
fn mount_entry(mp: &Path) -> Option<MountEntry> {
    let want = mp.to_str()?;
    mount_entries()
        .into_iter()
        .rev()
        .find(|e| e.mountpoint == want)
}

/// Refuses a mount point where another file system is mounted already
/// (mounting over it would hide it), but for an automount trigger.
fn not_mounted_over(mp: &Path) -> Result<(), String> {
    if let Some(e) = mount_entry(mp) {
        if e.fstype != "autofs" {
            let fix = "unmount it first, or choose another directory";
            return Err(format!(
                "{} already has a file system mounted on it ({}, from {}); {fix}",
                mp.display(),
                e.fstype,
                e.source
            ));
        }
    }
    Ok(())
}

/// Whether an automount trigger (autofs, as systemd's automount units make)
/// is what is mounted at `mp`.
pub fn is_automount_trigger(mp: &Path) -> bool {
    mount_entry(mp).is_some_and(|e| e.fstype == "autofs")
}

fn mount_device(mp: &Path) -> Option<String> {
    mount_entry(mp).map(|e| e.device)
}

/// Finds the strata mount at `mp`: the repository it serves. Its source is
/// the repository's path; its type is `fuse` when mounted directly (the
/// kernel keeps no subtype then) or `fuse.strata` through fusermount3.
pub fn mounted_repository(mp: &Path) -> Option<PathBuf> {
    strata_mount(&mount_entry(mp)?)
}

fn strata_mount(entry: &MountEntry) -> Option<PathBuf> {
    let repo = PathBuf::from(&entry.source);
    let fuse = matches!(entry.fstype.as_str(), "fuse" | "fuse.strata");
    (fuse && repo.join("strata.repo").is_file()).then_some(repo)
}

/// Every strata mount on this system, as (mount point, repository).
pub fn strata_mounts() -> Vec<(PathBuf, PathBuf)> {
    mount_entries()
        .iter()
        .filter_map(|e| Some((PathBuf::from(&e.mountpoint), strata_mount(e)?)))
        .collect()
}

/// Where the repository at `repo` is mounted (the same directory, however
/// named), oldest first.
pub fn mount_points_of(repo: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(repo).ok();
    strata_mounts()
        .into_iter()
        .filter(|(_, r)| want.is_some() && std::fs::canonicalize(r).ok() == want)
        .map(|(mp, _)| mp)
        .collect()
}

/// Every mount at `dir` or below it, deepest (newest) first: the order to
/// unmount them in.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mount_entries()
        .into_iter()
        .map(|e| PathBuf::from(e.mountpoint))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    out.reverse();
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal; other
/// bytes (UTF-8 names) pass as they are.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusermount_gets_the_options_fuser_gets() {
        let opts = MountOptions {
            read_only: true,
            allow_root: true,
            ..MountOptions::default()
        };
        assert_eq!(
            fusermount_options(&session_config("/r", &opts)),
            "fsname=/r,subtype=strata,default_permissions,noatime,ro,allow_root"
        );
        let plain = session_config("/r", &MountOptions::default());
        assert!(fusermount_options(&plain).ends_with(",noatime,rw"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/my\040disks"), "/mnt/my disks");
        assert_eq!(unescape(r"/a\134b\011c"), "/a\\b\tc");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/café\\040x"), "/café x");
        assert_eq!(unescape(r"/odd\777"), r"/odd\777");
    }
}
