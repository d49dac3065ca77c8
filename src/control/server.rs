//! The daemon side of the control socket: one thread accepting, one thread
//! per connection, each request handed to [`super::execute`].

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;

use super::{execute, receive, send, Request, Response, SOCKET_FILE};
use crate::store::Repository;

/// What only the daemon can do for a request.
pub struct ServerHooks {
    /// Flush and unmount; the answer is sent once it is done.
    pub unmount: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
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

fn handle(mut conn: UnixStream, repo: &Repository, hooks: &ServerHooks) {
    loop {
        let req: Request = match receive(&mut conn) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                let _ = send(
                    &mut conn,
                    Response::Refused {
                        message: e.to_string(),
                        usage: false,
                    },
                );
                return;
            }
        };
        log::info!("control request: {req:?}");
        let resp = match req {
            Request::Unmount => match (hooks.unmount)() {
                Ok(()) => Response::Done,
                Err(message) => Response::Refused {
                    message,
                    usage: false,
                },
            },
            req => execute(repo, req, &mut |_, _| {}),
        };
        if send(&mut conn, resp).is_err() {
            return;
        }
    }
}
