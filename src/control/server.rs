//! The daemon side of the control socket: one thread accepting, one thread
//! per connection, each request handed to [`super::execute`].

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use super::{execute, receive, send, Request, Response, SOCKET_FILE};
use crate::store::Repository;

/// What only the daemon can do for a request.
/// How often a command hears how far its long work got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

pub struct ServerHooks {
    /// Flush and unmount; the answer is sent once it is done. `Ok` carries
    /// the flush's failure, if it failed (the unmount goes on regardless).
    pub unmount: Box<dyn Fn() -> Result<Option<String>, String> + Send + Sync>,
    /// Called after each request, before it is answered: returns once the
    /// mount shows what the request changed (the kernel's caches of it are
    /// invalidated), so a command's effect is visible when it returns.
    pub settle: Box<dyn Fn() + Send + Sync>,
    /// The mount is read-only: requests that change the repository are
    /// refused.
    pub read_only: bool,
    /// Called once the answer to an unmount request is sent, so the daemon,
    /// whose mount is gone by then, does not exit before the command has
    /// heard how the unmount went.
    pub unmount_answered: Box<dyn Fn() + Send + Sync>,
}

/// Binds `REPO/control.sock` (mode 0600) and serves it on a thread. The
/// caller holds the repository's lock, so an existing socket file is stale.
pub fn serve(repo: Arc<Repository>, hooks: ServerHooks) -> io::Result<()> {
    let path = repo.path().join(SOCKET_FILE);
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    let hooks = Arc::new(hooks);
    thread::Builder::new()
        .name("strata-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (repo, hooks) = (repo.clone(), hooks.clone());
                let _ = thread::Builder::new()
                    .name("strata-request".into())
                    .spawn(move || handle(conn, &repo, &hooks));
            }
        })?;
    Ok(())
}

/// Removes the socket when the daemon stops.
pub fn remove_socket(repo: &Path) {
    let _ = fs::remove_file(repo.join(SOCKET_FILE));
}

fn handle(conn: UnixStream, repo: &Repository, hooks: &ServerHooks) {
    // Besides the socket's mode (0600), the peer must be the daemon's own
    // user or root.
    let me = crate::sys::effective_uid();
    match crate::sys::peer_uid(&conn) {
        Ok(uid) if uid == me || uid == 0 => {}
        other => {
            let who = other.map_or_else(|e| format!("unknown ({e})"), |u| u.to_string());
            log::warn!("control connection from uid {who} refused");
            // Its request is read (and dropped) first, so the peer, busy
            // writing it, reads the answer rather than a broken pipe.
            let _ = receive::<Request>(&conn);
            let _ = send(
                &conn,
                Response::Refused {
                    message: format!(
                        "the mount's daemon runs as uid {me} and takes requests only from that \
                         user or root (this is uid {who})"
                    ),
                    usage: false,
                },
                &[],
            );
            return;
        }
    }
    loop {
        let (req, fds): (Request, _) = match receive(&conn) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                let _ = send(
                    &conn,
                    Response::Refused {
                        message: e.to_string(),
                        usage: false,
                    },
                    &[],
                );
                return;
            }
        };
        log::info!("control request: {req:?}");
        let resp = match (req, checked_files(repo, fds)) {
            (_, Err(message)) => Response::Refused {
                message,
                usage: false,
            },
            (req, Ok(_)) if hooks.read_only && req.changes_repository() => Response::Refused {
                message: format!(
                    "the repository is mounted read-only, so it takes no changes ({}); \
                     unmount it and mount it without --read-only (or -o ro) to make them",
                    req.name()
                ),
                usage: false,
            },
            (Request::Unmount, Ok(_)) => match (hooks.unmount)() {
                Ok(flush_failed) => Response::Unmounted { flush_failed },
                Err(message) => Response::Refused {
                    message,
                    usage: false,
                },
            },
            (req, Ok(files)) => {
                // Progress goes to the command a few times a second; if it
                // went away, the work goes on all the same.
                let mut last: Option<std::time::Instant> = None;
                let mut progress = |done: u64, total: u64| {
                    if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                        last = Some(std::time::Instant::now());
                        let _ = send(&conn, Response::Progress { done, total }, &[]);
                    }
                };
                let resp = execute(repo, req, files, &mut progress);
                (hooks.settle)();
                resp
            }
        };
        let unmounted = matches!(resp, Response::Unmounted { .. });
        let sent = send(&conn, resp, &[]);
        if unmounted {
            (hooks.unmount_answered)();
        }
        if sent.is_err() {
            return;
        }
    }
}

/// The descriptors a command handed over, unless one is one of the
/// repository's own files: nothing may read or write those through a
/// command, and closing a descriptor of the lock file would drop the
/// daemon's lock, so such a descriptor is kept open, unused.
fn checked_files(repo: &Repository, fds: Vec<OwnedFd>) -> Result<Vec<File>, String> {
    let mut out = Vec::new();
    let mut refused = None;
    for fd in fds {
        let file = File::from(fd);
        let md = file.metadata().map_err(|e| e.to_string())?;
        if md.is_file() && Repository::holds(repo.path(), &md) {
            std::mem::forget(file);
            refused = Some(format!(
                "the file handed over is inside the repository {}; choose a file outside it",
                repo.path().display()
            ));
        } else {
            out.push(file);
        }
    }
    match refused {
        Some(m) => Err(m),
        None => Ok(out),
    }
}
