//! Where a command's request goes: to the daemon that owns the repository
//! while it is mounted, or to the repository itself.

use std::fs::File;
use std::path::Path;

use strata::control::{execute, Client, Request, Response};
use strata::store::Repository;

use super::Failure;

pub enum Target {
    Local(Repository),
    Daemon(Client),
}

impl Target {
    /// The daemon if one answers on the repository's socket, else the
    /// repository opened by this process.
    pub fn open(repo: &Path) -> Result<Target, Failure> {
        match Client::connect(repo) {
            Ok(Some(c)) => Ok(Target::Daemon(c)),
            Ok(None) => {
                let repo = Repository::open(repo)?;
                for n in repo.notices() {
                    eprintln!("strata: note: {n}");
                }
                Ok(Target::Local(repo))
            }
            Err(e) => Err(Failure::Refused(e.to_string())),
        }
    }

    /// Carries out one request; a refusal becomes the command's failure.
    pub fn call(
        &mut self,
        req: Request,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response, Failure> {
        self.call_with(req, vec![], progress)
    }

    /// Carries out a request that works on `files` (opened by this command).
    pub fn call_with(
        &mut self,
        req: Request,
        files: Vec<File>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Response, Failure> {
        let resp = match self {
            Target::Local(repo) => execute(repo, req, files, progress),
            Target::Daemon(c) => c
                .call(req, &files, progress)
                .map_err(|e| Failure::Refused(e.to_string()))?,
        };
        match resp {
            Response::Refused {
                message,
                usage: true,
            } => Err(Failure::Usage(message)),
            Response::Refused {
                message,
                usage: false,
            } => Err(Failure::Refused(message)),
            r => Ok(r),
        }
    }
}

impl Target {
    /// The names of every disk, for `--all`.
    pub fn disk_names(&mut self) -> Result<Vec<strata::store::DiskName>, Failure> {
        match self.call(Request::DiskList, &mut |_, _| {})? {
            Response::Disks(d) => d
                .iter()
                .map(|d| {
                    strata::store::DiskName::parse(&d.name)
                        .map_err(|e| Failure::Refused(e.to_string()))
                })
                .collect(),
            r => Err(unexpected(r)),
        }
    }
}

/// The answer was not the kind the request asks for: a daemon of another
/// build, most likely.
pub fn unexpected(resp: Response) -> Failure {
    Failure::Refused(format!("unexpected answer from the repository: {resp:?}"))
}
