//! Every raw `libc` call in strata, each behind a small safe function.
//!
//! The rest of the crate is `#![deny(unsafe_code)]`; this module is the one
//! exception. Each function documents the call it wraps and why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Turns `len` bytes at `offset` into a hole: the range reads as zeros and
/// occupies no space. The file's size does not change.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off = to_off_t(offset)?;
    let len = to_off_t(len)?;
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // owned by `file`, which outlives the call.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The first offset at or after `offset` that holds data, or `None` when only
/// holes follow (`lseek(SEEK_DATA)`). Does not disturb `pread`/`pwrite`.
pub fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    match lseek(file, offset, libc::SEEK_DATA) {
        Ok(pos) => Ok(Some(pos)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first offset at or after `offset` that is a hole (`lseek(SEEK_HOLE)`);
/// the end of the file counts as a hole.
pub fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    lseek(file, offset, libc::SEEK_HOLE)
}

fn lseek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = to_off_t(offset)?;
    // SAFETY: lseek takes integers only. It moves the descriptor's offset,
    // which strata never relies on: all data I/O is positional.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if pos < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pos as u64)
    }
}

/// Takes an exclusive `flock` on `file` without waiting. `Ok(false)` means
/// another open file description holds it. Format version 1 locked
/// repositories this way; an upgrade checks that no old process holds it.
pub fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes integers only; the descriptor is owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The lock files this process holds, by (device, inode).
static HELD_LOCKS: std::sync::Mutex<Vec<(u64, u64)>> = std::sync::Mutex::new(Vec::new());

/// A repository's exclusive lock: a POSIX record lock (`fcntl(F_SETLK)`) on
/// the whole lock file, with this process's PID written in it.
///
/// Record locks belong to the process, so a child forked by another thread
/// (between its fork and its exec) never holds the lock, as it would hold a
/// `flock` through the inherited descriptor. Their catch is that closing
/// *any* descriptor of the file releases them; so this process never opens
/// a lock file it holds (the in-process table answers instead), and two
/// opens in one process are refused here, since record locks do not
/// conflict within a process.
pub struct RepoLock {
    file: File,
    key: (u64, u64),
}

impl RepoLock {
    /// Takes the lock of the file at `path`, creating it. `Ok(Err(pid))`
    /// when another process (or this one) holds it.
    pub fn take(path: &Path) -> io::Result<Result<RepoLock, Option<u32>>> {
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let mut held = HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(md) = std::fs::metadata(path) {
            if held.contains(&(md.dev(), md.ino())) {
                return Ok(Err(Some(std::process::id())));
            }
        }
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let md = file.metadata()?;
        let key = (md.dev(), md.ino());
        if held.contains(&key) {
            // Created or replaced between the two looks: still ours. Keep
            // the descriptor open, as closing it would drop our lock.
            std::mem::forget(file);
            return Ok(Err(Some(std::process::id())));
        }
        let mut fl = whole_file_lock(libc::F_WRLCK as libc::c_short);
        // SAFETY: `fl` is a valid flock struct, read and written by the call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut fl) } != 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(Err(lock_holder_of(&file))),
                _ => Err(err),
            };
        }
        file.set_len(0)?;
        file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        file.flush()?;
        held.push(key);
        Ok(Ok(RepoLock { file, key }))
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let mut held = HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|k| *k != self.key);
        // Closing `self.file` (after this) releases the record lock.
        let _ = &self.file;
    }
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value of that plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    fl
}

/// Who holds a record lock on `file`: the PID `F_GETLK` reports, else the
/// PID written in the file.
fn lock_holder_of(file: &File) -> Option<u32> {
    let mut fl = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: `fl` is a valid flock struct, read and written by the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    if rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid > 0 {
        return u32::try_from(fl.l_pid).ok();
    }
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// Whether the repository lock file at `path` is held, and by whom. Safe to
/// call in a process that may hold it itself.
pub fn lock_holder(path: &Path) -> io::Result<Option<u32>> {
    use std::os::unix::fs::MetadataExt;
    let held = HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if held.contains(&(md.dev(), md.ino())) {
        return Ok(Some(std::process::id()));
    }
    let file = File::open(path)?;
    let mut fl = whole_file_lock(libc::F_WRLCK as libc::c_short);
    // SAFETY: `fl` is a valid flock struct, read and written by the call.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(u32::try_from(fl.l_pid).unwrap_or(0)))
}

/// Raises the soft limit on open files to the hard limit and returns it. A
/// deep chain keeps one descriptor per layer it reads from.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit read-only for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Whether a process with this PID exists (signal 0 probes without sending).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the PID.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Asks process `pid` to stop (SIGTERM).
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes plain integers; a PID that went away is ESRCH.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads at `offset` only what the page cache already holds, never waiting
/// for the device (`preadv2(RWF_NOWAIT)`). `Ok(0)` when nothing at `offset`
/// is cached; a short count when only the start is.
pub fn pread_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let off = to_off_t(offset)?;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is valid and writable for its
    // whole length and outlives the call; the kernel writes at most
    // `iov_len` bytes into it.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Not cached, or a file system that cannot promise not to wait.
        Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) => Ok(0),
        _ => Err(err),
    }
}

/// Asks the kernel to start reading a range into the page cache, without
/// waiting (`posix_fadvise(WILLNEED)`), so several ranges can be in flight.
pub fn prefetch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let off = to_off_t(offset)?;
    let len = to_off_t(len)?;
    // SAFETY: posix_fadvise takes integers only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_WILLNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Drops a file's clean pages from the page cache
/// (`posix_fadvise(DONTNEED)`), so its next read is a first read.
pub fn drop_cached_pages(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise takes integers only.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Restores the default action of SIGPIPE (Rust starts programs with it
/// ignored), so that writing to a pipe whose reader has gone ends the
/// process quietly instead of failing every write.
pub fn default_sigpipe() {
    // SAFETY: signal only installs the default disposition; no handler of
    // ours runs, so nothing else needs to be async-signal-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
}

/// The user id of the process at the other end of a Unix socket
/// (`SO_PEERCRED`, as the kernel recorded it at connect time).
pub fn peer_uid(sock: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

pub fn effective_gid() -> u32 {
    // SAFETY: getegid cannot fail and has no arguments.
    unsafe { libc::getegid() }
}

/// What `statvfs(2)` says of the file system holding `path`.
pub struct FsStats {
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

pub fn statvfs(path: &Path) -> io::Result<FsStats> {
    let c = cpath(path)?;
    // SAFETY: an all-zero statvfs is a valid value of that plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    let scale = |n: u64| n * frsize / 4096;
    Ok(FsStats {
        bsize: 4096,
        blocks: scale(st.f_blocks as u64),
        bfree: scale(st.f_bfree as u64),
        bavail: scale(st.f_bavail as u64),
        files: st.f_files as u64,
        ffree: st.f_ffree as u64,
    })
}

/// Unmounts `path` (`umount2` without flags: refused while busy; needs
/// root).
pub fn umount(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Detaches a mount now, even if its daemon is gone or it is busy
/// (`umount2(MNT_DETACH)`; needs root).
pub fn umount_detach(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a NUL-terminated path; umount2 only reads it.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes a spawned child the leader of a new session, so it outlives the
/// terminal it was started from (a daemon).
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe, the only kind of call allowed
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Points standard input at /dev/null and standard output and error at
/// `log`, as a daemon does once it no longer talks to its starter.
pub fn redirect_stdio(log: &File) -> io::Result<()> {
    let null = File::open("/dev/null")?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        // SAFETY: both descriptors are open; dup2 replaces `to` atomically.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one file descriptor passed with `SCM_RIGHTS` over `sock` (how
/// the setuid `fusermount3` hands an opened `/dev/fuse` to its caller).
pub fn recv_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    recv_with_fds(sock, &mut [0u8; 1])?
        .into_iter()
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "no file descriptor was received",
            )
        })
}

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 8;

/// Fills `buf` from `sock`, and returns the file descriptors that came with
/// its first bytes (`SCM_RIGHTS`), if any did.
pub fn recv_with_fds(
    sock: &std::os::unix::net::UnixStream,
    buf: &mut [u8],
) -> io::Result<Vec<std::os::fd::OwnedFd>> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 2 + MAX_FDS];
    // SAFETY: an all-zero msghdr is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` and `control`, both live and writable
    // for the call and sized as the header says.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: CMSG_FIRSTHDR reads the header just filled in by recvmsg and
    // returns null or a pointer inside `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null `cmsg` points at a complete cmsghdr in `control`.
    if !cmsg.is_null()
        && unsafe {
            (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS
        }
    {
        // SAFETY: as above; CMSG_LEN(0) is the header's own length.
        let bytes = unsafe { (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize };
        for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
            // SAFETY: the kernel wrote `bytes` bytes of ints after the
            // header; read_unaligned copes with the buffer's alignment.
            let raw = unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>().add(i))
            };
            // SAFETY: the kernel just installed `raw` in this process for us.
            fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
        }
    }
    let n = n as usize;
    if n == 0 && !buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other side closed the connection",
        ));
    }
    let mut rest = sock;
    rest.read_exact(&mut buf[n..])?;
    Ok(fds)
}

/// Sends `bytes` over `sock`, with the descriptors `fds` attached to them
/// (`SCM_RIGHTS`). The receiver gets them with [`recv_with_fds`]. A peer
/// that has gone away is an `EPIPE` error, never a SIGPIPE.
pub fn send_with_fds(
    sock: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fds: &[std::os::fd::RawFd],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS} files go with one request"),
        ));
    }
    let mut sent = 0;
    let mut attach = !fds.is_empty();
    while sent < bytes.len() || attach {
        let rest = &bytes[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let mut control = [0u64; 2 + MAX_FDS];
        // SAFETY: an all-zero msghdr is a valid empty message header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if attach {
            let data = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(data) } as _;
            // SAFETY: `msg.msg_control` points at `control`, large enough
            // for one cmsghdr carrying MAX_FDS ints; the pointers CMSG_*
            // return lie inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data) as _;
                for (i, fd) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::c_int>().add(i),
                        *fd,
                    );
                }
            }
        }
        // SAFETY: `msg` describes `rest` (read only by the kernel) and
        // `control`, both live for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // The descriptors went with the first bytes sent.
        attach = false;
        sent += n as usize;
    }
    Ok(())
}

/// Freezes the file system `dir` is on (`FIFREEZE`): it writes out what it
/// holds and takes no more writes until thawed. Needs CAP_SYS_ADMIN.
pub fn freeze_fs(dir: &File) -> io::Result<()> {
    // FIFREEZE is _IOWR('X', 119, int).
    const FIFREEZE: libc::c_ulong = 0xC004_5877;
    let mut arg: libc::c_int = 0;
    // SAFETY: FIFREEZE reads an int argument the kernel ignores; `arg` is
    // valid for the call and the descriptor is owned by `dir`.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, &mut arg) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Thaws a file system frozen by [`freeze_fs`] (`FITHAW`). `EINVAL` means
/// it was not frozen.
pub fn thaw_fs(dir: &File) -> io::Result<()> {
    // FITHAW is _IOWR('X', 120, int).
    const FITHAW: libc::c_ulong = 0xC004_5878;
    let mut arg: libc::c_int = 0;
    // SAFETY: as for FIFREEZE.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, &mut arg) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Lets a spawned child inherit descriptor `fd` across exec (clears
/// `FD_CLOEXEC` in the child only).
pub fn inherit_fd_on_spawn(cmd: &mut std::process::Command, fd: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: fcntl is async-signal-safe; it only changes the child's copy.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn cpath(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn to_off_t(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn holes_and_data() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(1 << 20).unwrap();
        assert_eq!(seek_data(&f, 0).unwrap(), None);
        f.write_at(&[1u8; 4096], 65536).unwrap();
        assert_eq!(seek_data(&f, 0).unwrap(), Some(65536));
        assert_eq!(seek_hole(&f, 65536).unwrap(), 65536 + 4096);
        punch_hole(&f, 65536, 4096).unwrap();
        assert_eq!(seek_data(&f, 0).unwrap(), None);
        let mut buf = [9u8; 16];
        f.read_at(&mut buf, 65536).unwrap();
        assert_eq!(buf, [0u8; 16]);
    }

    #[test]
    fn repo_lock_is_exclusive_in_and_across_processes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert_eq!(lock_holder(&p).unwrap(), None);
        let a = RepoLock::take(&p).unwrap().expect("first take");
        let me = Some(std::process::id());
        assert_eq!(RepoLock::take(&p).unwrap().err(), Some(me));
        assert_eq!(lock_holder(&p).unwrap(), me);
        drop(a);
        assert_eq!(lock_holder(&p).unwrap(), None);
        assert!(RepoLock::take(&p).unwrap().is_ok());
    }

    #[test]
    fn this_process_exists() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
    }

    #[test]
    fn a_descriptor_travels_over_a_socket() {
        use std::io::{Read, Seek, Write};
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"passed").unwrap();
        send_with_fds(&a, b"hdr", &[f.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 3];
        let fd = recv_with_fds(&b, &mut buf)
            .unwrap()
            .pop()
            .expect("a descriptor");
        assert_eq!(&buf, b"hdr");
        let mut got = File::from(fd);
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "passed");
        send_with_fds(&a, b"xyz", &[]).unwrap();
        assert!(recv_with_fds(&b, &mut buf).unwrap().is_empty());
        assert_eq!(&buf, b"xyz");
    }
}
