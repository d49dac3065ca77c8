//! `snapshot create --freeze PATH`: the file systems at the paths are
//! frozen for exactly the snapshot's critical section (after the disks'
//! data is synced, until the commit), and thawed also when the snapshot
//! fails. A guard process thaws them after [`GUARD_SECONDS`] even if the
//! process that froze them is killed.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parking_lot::Mutex;

use crate::store::{Critical, Result, StoreError};
use crate::sys;

/// How long a file system may stay frozen before the guard thaws it.
pub const GUARD_SECONDS: u64 = 30;

/// The file systems to freeze around one snapshot.
pub struct Freezer {
    dirs: Vec<(File, String)>,
    guard: Mutex<Option<Child>>,
}

impl Freezer {
    /// `dirs`: a directory on each file system, opened by the command, and
    /// its name. Refuses a file system that holds the repository `repo`
    /// (its commit would wait for a thaw that waits for the commit).
    pub fn new(repo: &Path, dirs: Vec<(File, String)>) -> Result<Freezer> {
        let repo_dev = std::fs::metadata(repo).map_err(StoreError::io(repo))?.dev();
        for (f, name) in &dirs {
            let md = f.metadata().map_err(StoreError::io(name))?;
            if !md.is_dir() {
                return Err(StoreError::Refused(format!(
                    "cannot freeze {name}: it is not a directory (give the mount point of the \
                     file system to freeze)"
                )));
            }
            if md.dev() == repo_dev {
                return Err(StoreError::Refused(format!(
                    "cannot freeze {name}: it is on the file system that holds the repository \
                     {}; strata would wait for itself",
                    repo.display()
                )));
            }
        }
        Ok(Freezer {
            dirs,
            guard: Mutex::new(None),
        })
    }
}

impl Critical for Freezer {
    fn enter(&self) -> Result<()> {
        *self.guard.lock() = spawn_guard(self.dirs.iter().map(|(_, n)| n.as_str()));
        for (i, (f, name)) in self.dirs.iter().enumerate() {
            if let Err(e) = sys::freeze_fs(f) {
                for (f, _) in &self.dirs[..i] {
                    let _ = sys::thaw_fs(f);
                }
                self.stop_guard();
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    " (freezing a file system needs root)"
                } else {
                    ""
                };
                return Err(StoreError::Refused(format!(
                    "cannot freeze {name}: {e}{hint}"
                )));
            }
        }
        Ok(())
    }

    fn leave(&self) {
        for (f, name) in &self.dirs {
            match sys::thaw_fs(f) {
                Ok(()) => {}
                // Not frozen any more: the guard thawed it.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => log::error!("thawing {name}: {e}"),
            }
        }
        self.stop_guard();
    }
}

impl Freezer {
    fn stop_guard(&self) {
        if let Some(mut g) = self.guard.lock().take() {
            let _ = g.kill();
            let _ = g.wait();
        }
    }
}

/// Starts `strata thaw-guard`, in a session of its own so it outlives us.
fn spawn_guard<'a>(paths: impl Iterator<Item = &'a str>) -> Option<Child> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Command::new(exe);
    cmd.arg("thaw-guard")
        .arg("--after")
        .arg(GUARD_SECONDS.to_string())
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sys::new_session_on_spawn(&mut cmd);
    cmd.spawn()
        .map_err(|e| log::warn!("cannot start the thaw guard: {e}"))
        .ok()
}

/// What `strata thaw-guard` does: waits, then thaws what is still frozen.
pub fn guard(after: Duration, paths: &[std::path::PathBuf]) {
    std::thread::sleep(after);
    for p in paths {
        if let Ok(f) = File::open(p) {
            match sys::thaw_fs(&f) {
                Ok(()) => log::warn!("thawed {} after {}s", p.display(), after.as_secs()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => log::error!("thawing {}: {e}", p.display()),
            }
        }
    }
}
