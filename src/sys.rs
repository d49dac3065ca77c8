//! Every raw `libc` call in strata, each behind a small safe function.
//!
//! The rest of the crate is `#![deny(unsafe_code)]`; this module is the one
//! exception. Each function documents the call it wraps and why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
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
/// another open file description holds it. The lock lasts as long as the
/// descriptor and is dropped by the kernel when the process dies.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
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

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no arguments.
    unsafe { libc::geteuid() }
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
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // u64s keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 8];
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
    // SAFETY: CMSG_FIRSTHDR reads the header just filled in by recvmsg and
    // returns null or a pointer inside `control`.
    let cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    // SAFETY: a non-null `cmsg` points at a complete cmsghdr in `control`.
    if cmsg.is_null()
        || unsafe {
            (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        }
    {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "no file descriptor was received",
        ));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int after its
    // header; read_unaligned copes with the byte buffer's alignment.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
    // SAFETY: the kernel just installed `fd` in this process for us alone.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
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
    fn flock_is_exclusive_across_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let a = File::create(&p).unwrap();
        let b = File::open(&p).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        drop(a);
        assert!(try_lock_exclusive(&b).unwrap());
    }

    #[test]
    fn this_process_exists() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
    }
}
