//! Every system call strata makes beyond `std`, each behind a small
//! function: through `rustix`'s safe wrappers where it has them, and raw
//! `libc` only where it has none (POSIX record locks, SIGPIPE's
//! disposition, the FIFREEZE/FITHAW ioctls, and `pre_exec`, which is
//! unsafe by its nature).
//!
//! The rest of the crate is `#![deny(unsafe_code)]`; this module is the one
//! exception. Each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{fadvise, Advice, FallocateFlags, FlockOperation, SeekFrom};
use rustix::io::{preadv2, Errno, FdFlags, ReadWriteFlags};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::process::{
    getrlimit, kill_process, setrlimit, test_kill_process, Pid, Resource, Rlimit, Signal,
};

/// Turns `len` bytes at `offset` into a hole: the range reads as zeros and
/// occupies no space. The file's size does not change.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    to_off_t(offset)?;
    to_off_t(len)?;
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    Ok(rustix::fs::fallocate(file, mode, offset, len)?)
}

/// The first offset at or after `offset` that holds data, or `None` when only
/// holes follow (`lseek(SEEK_DATA)`). Does not disturb `pread`/`pwrite`.
pub fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    to_off_t(offset)?;
    match rustix::fs::seek(file, SeekFrom::Data(offset)) {
        Ok(pos) => Ok(Some(pos)),
        Err(Errno::NXIO) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The first offset at or after `offset` that is a hole (`lseek(SEEK_HOLE)`);
/// the end of the file counts as a hole.
pub fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    to_off_t(offset)?;
    // It moves the descriptor's offset, which strata never relies on: all
    // data I/O is positional.
    Ok(rustix::fs::seek(file, SeekFrom::Hole(offset))?)
}

/// Takes an exclusive `flock` on `file` without waiting. `Ok(false)` means
/// another open file description holds it. Format version 1 locked
/// repositories this way; an upgrade checks that no old process holds it.
pub fn try_flock_exclusive(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
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
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return Ok(lim.maximum.unwrap_or(u64::MAX));
        }
    }
    Ok(lim.current.unwrap_or(u64::MAX))
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Whether a process with this PID exists (signal 0 probes without sending).
pub fn process_exists(pid: u32) -> bool {
    let Some(pid) = pid_of(pid) else {
        return false;
    };
    matches!(test_kill_process(pid), Ok(()) | Err(Errno::PERM))
}

/// Asks process `pid` to stop (SIGTERM).
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = pid_of(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(kill_process(pid, Signal::TERM)?)
}

/// Reads at `offset` only what the page cache already holds, never waiting
/// for the device (`preadv2(RWF_NOWAIT)`). `Ok(0)` when nothing at `offset`
/// is cached; a short count when only the start is.
pub fn pread_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    to_off_t(offset)?;
    match preadv2(
        file,
        &mut [IoSliceMut::new(buf)],
        offset,
        ReadWriteFlags::NOWAIT,
    ) {
        Ok(n) => Ok(n),
        // Not cached, or a file system that cannot promise not to wait.
        Err(Errno::AGAIN) | Err(Errno::OPNOTSUPP) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Asks the kernel to start reading a range into the page cache, without
/// waiting (`posix_fadvise(WILLNEED)`), so several ranges can be in flight.
pub fn prefetch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    to_off_t(offset)?;
    to_off_t(len)?;
    Ok(fadvise(
        file,
        offset,
        NonZeroU64::new(len),
        Advice::WillNeed,
    )?)
}

/// Drops a file's clean pages from the page cache
/// (`posix_fadvise(DONTNEED)`), so its next read is a first read.
pub fn drop_cached_pages(file: &File) -> io::Result<()> {
    Ok(fadvise(file, 0, None, Advice::DontNeed)?)
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
    rustix::process::geteuid().as_raw()
}

/// The user id of the process at the other end of a Unix socket
/// (`SO_PEERCRED`, as the kernel recorded it at connect time).
pub fn peer_uid(sock: &std::os::unix::net::UnixStream) -> io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(sock)?.uid.as_raw())
}

pub fn effective_gid() -> u32 {
    rustix::process::getegid().as_raw()
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
    let st = rustix::fs::statvfs(path)?;
    let scale = |n: u64| n * st.f_frsize / 4096;
    Ok(FsStats {
        bsize: 4096,
        blocks: scale(st.f_blocks),
        bfree: scale(st.f_bfree),
        bavail: scale(st.f_bavail),
        files: st.f_files,
        ffree: st.f_ffree,
    })
}

/// Unmounts `path` (`umount2` without flags: refused while busy; needs
/// root).
pub fn umount(path: &Path) -> io::Result<()> {
    Ok(unmount(path, UnmountFlags::empty())?)
}

/// Mounts a FUSE file system (`fstype` "fuse") from `source` at `mp`,
/// with the kernel options `data` (which name the `/dev/fuse` descriptor),
/// never set-uid or device files, no access times, read-only if asked.
pub fn mount_fuse(source: &str, mp: &Path, data: &str, read_only: bool) -> io::Result<()> {
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOATIME;
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = std::ffi::CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in mount options"))?;
    Ok(mount(source, mp, "fuse", flags, Some(data.as_c_str()))?)
}

/// Keeps glibc to `n` malloc arenas, unless `MALLOC_ARENA_MAX` says
/// otherwise. glibc gives threads up to 8 arenas a core; memory freed in
/// one arena serves only later allocations there, so a daemon whose worker
/// threads each build and drop owner maps of many MiB holds what every
/// one of them once freed (237 MiB against 167 MiB with two arenas, in
/// benches/scale.rs). Call it before starting threads.
pub fn limit_malloc_arenas(n: i32) {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets one of the allocator's parameters; it takes no
    // pointers and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

/// Detaches a mount now, even if its daemon is gone or it is busy
/// (`umount2(MNT_DETACH)`; needs root).
pub fn umount_detach(path: &Path) -> io::Result<()> {
    Ok(unmount(path, UnmountFlags::DETACH)?)
}

/// Makes a spawned child the leader of a new session, so it outlives the
/// terminal it was started from (a daemon).
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe, the only kind of call allowed
    // between fork and exec, and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

/// Points standard input at /dev/null and standard output and error at
/// `log`, as a daemon does once it no longer talks to its starter.
pub fn redirect_stdio(log: &File) -> io::Result<()> {
    let null = File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(log)?;
    rustix::stdio::dup2_stderr(log)?;
    Ok(())
}

/// Receives one file descriptor passed with `SCM_RIGHTS` over `sock` (how
/// the setuid `fusermount3` hands an opened `/dev/fuse` to its caller).
pub fn recv_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
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
) -> io::Result<Vec<OwnedFd>> {
    use std::io::Read;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    let n = got.bytes;
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
    fds: &[BorrowedFd<'_>],
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
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if attach {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        let n = match sendmsg(
            sock,
            &[IoSlice::new(&bytes[sent..])],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // The descriptors went with the first bytes sent.
        attach = false;
        sent += n;
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
    // SAFETY: fcntl is async-signal-safe; it only changes the child's copy
    // of a descriptor the parent keeps open until the child has started.
    unsafe {
        cmd.pre_exec(move || {
            let fd = BorrowedFd::borrow_raw(fd);
            rustix::io::fcntl_setfd(fd, FdFlags::empty())?;
            Ok(())
        });
    }
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
        send_with_fds(&a, b"hdr", &[std::os::fd::AsFd::as_fd(&f)]).unwrap();
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
