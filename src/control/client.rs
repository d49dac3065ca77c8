//! The command side of the control socket.

use std::fs::File;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{receive, send, Request, Response, VersionMismatch, SOCKET_FILE};

pub struct Client {
    stream: UnixStream,
}

impl Client {
    /// Connects to the daemon that owns `repo`, if one is listening.
    /// `Ok(None)` when there is no socket or nobody answers on it.
    pub fn connect(repo: &Path) -> io::Result<Option<Client>> {
        let path = repo.join(SOCKET_FILE);
        match UnixStream::connect(&path) {
            Ok(stream) => {
                stream.set_write_timeout(Some(Duration::from_secs(30)))?;
                Ok(Some(Client { stream }))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    /// Sends one request, with the files it works on if any, and waits for
    /// its answer (as long as the work takes); `progress` hears of long
    /// work meanwhile.
    pub fn call(
        &mut self,
        req: Request,
        files: &[File],
        progress: &mut dyn FnMut(u64, u64),
    ) -> io::Result<Response> {
        let answer = (|| {
            send(&self.stream, req, files)?;
            loop {
                match receive(&self.stream)? {
                    (Response::Progress { done, total }, _) => progress(done, total),
                    (resp, _) => return Ok(resp),
                }
            }
        })();
        answer.map_err(explain)
    }
}

/// What a failed call means for the user, and what to do.
fn explain(e: io::Error) -> io::Error {
    use io::ErrorKind::*;
    let kind = e.kind();
    if let Some(m) = e
        .get_ref()
        .and_then(|m| m.downcast_ref::<VersionMismatch>())
    {
        return io::Error::new(
            kind,
            format!(
                "the mount's daemon is of another strata: {m}; restart the mount with this one \
                 (`strata umount MOUNTPOINT`, then `strata mount MOUNTPOINT`)"
            ),
        );
    }
    if matches!(kind, UnexpectedEof | ConnectionReset | BrokenPipe) {
        return io::Error::new(
            kind,
            "the mount's daemon stopped before it answered (killed, or it crashed: see \
             daemon.log in the repository); `strata umount MOUNTPOINT` removes the mount it left",
        );
    }
    e
}
