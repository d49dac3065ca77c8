//! Streaming a snapshot image to a reader that goes through it in order.
//!
//! The first open of a snapshot image is served straight to the reader's
//! buffer (`FOPEN_DIRECT_IO`, see `StrataFs::cache_policy`), and the kernel
//! then reads nothing ahead: `cp` or `dd` sends one request, waits for it,
//! and sends the next. Served one after another, each request would wait
//! for its pieces to be read from the layer files and checked, with the
//! second CPU idle. A [`Stream`] instead keeps the next few requests read
//! and checked ahead by the [`Streams`] workers (two, one per CPU of the
//! machine this was measured on, each preparing another request), so a
//! request in order is answered from memory while the ones after it are
//! prepared, and the device is asked for [`FAR_AHEAD`] bytes beyond them
//! (`WILLNEED`) so that a cold image's pieces, scattered over many layer
//! files, are fetched many at a time.
//!
//! A stream starts after two reads in order and stops at the first read
//! it did not plan for (out of order, or of another size); such a read is
//! served as any other. Snapshot images never change, so what was
//! prepared stays true.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use crate::store::{ImageRead, Snapshot};

/// Requests prepared ahead of the reader, per stream.
const DEPTH: usize = 4;
/// How far beyond what is prepared the device is asked for data.
const FAR_AHEAD: u64 = 32 << 20;
/// How much more the device is asked for at a time, once cold: in small
/// steps, so the device queue stays full rather than filled in bursts.
const FAR_STEP: u64 = 4 << 20;
/// Buffers kept for reuse: a new one would cost a page fault per page.
const POOL: usize = 4 * DEPTH;
/// The longest a reader waits for a worker before it reads for itself.
const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// A failed read prepared ahead: the errno the reader is told, and the
/// error for the log (the handler names the image, as for any read).
pub struct Failed {
    pub errno: i32,
    pub error: String,
}

enum Chunk {
    /// Planned (`claimed` once a worker is reading it).
    Pending {
        offset: u64,
        len: usize,
        claimed: bool,
    },
    Ready {
        offset: u64,
        data: Result<Vec<u8>, Failed>,
    },
}

#[derive(Default)]
struct State {
    /// Where the next read in order starts.
    next: u64,
    /// Reads in order so far (a stream starts at two).
    in_order: u32,
    /// The length of the reader's requests.
    len: usize,
    /// Planned, being read or ready, in order and end to end.
    chunks: VecDeque<Chunk>,
    /// Where the next chunk to plan starts.
    planned: u64,
    /// How far the device has been asked for.
    fetched: u64,
    /// A prepared read has missed the host cache: from then on the device
    /// is kept asked [`FAR_AHEAD`] beyond the plan.
    cold: bool,
    closed: bool,
}

impl State {
    fn streaming(&self) -> bool {
        self.in_order >= 2 && !self.closed
    }

    /// After a prepared read (`missed`: it went to the device): the bytes
    /// to ask the device for now, if any. Once cold, the device is kept
    /// asked [`FAR_AHEAD`] beyond the plan, [`FAR_STEP`] more at a time,
    /// end to end, so no stretch is left to be read on demand. Nothing
    /// once the stream has stopped: its reader went elsewhere.
    fn far_window(&mut self, missed: bool) -> Option<(u64, u64)> {
        if !self.streaming() {
            return None;
        }
        self.cold |= missed;
        (self.cold && self.fetched < self.planned + FAR_AHEAD - FAR_STEP).then(|| {
            let from = self.fetched.max(self.planned);
            self.fetched = self.planned + FAR_AHEAD;
            (from, self.fetched - from)
        })
    }

    /// The stream starts over at `at`, in requests of `len` bytes:
    /// planned from there, end to end. Returns what was planned before (by
    /// a request served meanwhile on another thread), which goes. What
    /// was asked of the device, and whether it was cold, was of where the
    /// stream was, so it starts over too.
    fn start_at(&mut self, at: u64, len: usize) -> Vec<Chunk> {
        self.len = len;
        self.planned = at;
        self.fetched = at;
        self.cold = false;
        self.chunks.drain(..).collect()
    }

    /// Plans chunks up to [`DEPTH`]; returns how many are new.
    fn plan(&mut self, size: u64) -> usize {
        let mut new = 0;
        while self.streaming() && self.chunks.len() < DEPTH && self.planned < size {
            let len = (self.len as u64).min(size - self.planned) as usize;
            self.chunks.push_back(Chunk::Pending {
                offset: self.planned,
                len,
                claimed: false,
            });
            self.planned += len as u64;
            new += 1;
        }
        new
    }

    /// Stops the stream; what was prepared is handed back.
    fn stop(&mut self) -> Vec<Chunk> {
        self.in_order = 0;
        self.chunks.drain(..).collect()
    }
}

/// One reader's stream through one image.
pub struct Stream {
    image: Arc<Snapshot>,
    state: Mutex<State>,
    ready: Condvar,
    streams: Arc<Shared>,
}

impl Stream {
    /// What was prepared for a read of `len` bytes at `offset`, waiting
    /// for it if a worker is at it; `None` if nothing was (the caller
    /// reads it itself, then calls [`Stream::served`]).
    pub fn take(self: &Arc<Self>, offset: u64, len: usize) -> Option<Result<Vec<u8>, Failed>> {
        let mut st = self.state.lock();
        loop {
            match st.chunks.front() {
                None => return None,
                Some(Chunk::Pending {
                    offset: o, len: l, ..
                }) if *o == offset && *l == len => {
                    // Every change to the chunks notifies; the bound is
                    // only so that nothing unforeseen can hang a reader.
                    if self.ready.wait_for(&mut st, WAIT_MAX).timed_out() {
                        break;
                    }
                }
                Some(Chunk::Ready { offset: o, data })
                    if *o == offset && data.as_ref().map_or(true, |d| d.len() == len) =>
                {
                    if let Some(Chunk::Ready { data, .. }) = st.chunks.pop_front() {
                        st.next = offset + len as u64;
                        let new = st.plan(self.image.size());
                        drop(st);
                        self.streams.schedule(self, new);
                        return Some(data);
                    }
                    break;
                }
                // Elsewhere, or in another size: what was prepared is moot.
                Some(_) => break,
            }
        }
        let dropped = st.stop();
        drop(st);
        self.discard(dropped);
        None
    }

    /// After the caller served a read of `len` bytes at `offset` itself:
    /// a second read in order starts the stream.
    pub fn served(self: &Arc<Self>, offset: u64, len: usize) {
        let mut st = self.state.lock();
        let end = offset + len as u64;
        st.in_order = if offset == st.next && len > 0 {
            st.in_order + 1
        } else {
            0
        };
        st.next = end;
        if !st.streaming() {
            return;
        }
        let stale = st.start_at(end, len);
        let new = st.plan(self.image.size());
        drop(st);
        self.discard(stale);
        self.streams.schedule(self, new);
    }

    /// The reader closed its file: nothing more is prepared.
    pub fn close(&self) {
        let chunks = {
            let mut st = self.state.lock();
            st.closed = true;
            st.stop()
        };
        self.discard(chunks);
    }

    /// Gives a buffer back once its bytes were sent.
    pub fn give_back(&self, buf: Vec<u8>) {
        let mut pool = self.streams.pool.lock();
        if pool.len() < POOL {
            pool.push(buf);
        }
    }

    /// Chunks taken out of the stream: their buffers go back, and a
    /// reader waiting for one of them looks again.
    fn discard(&self, chunks: Vec<Chunk>) {
        if chunks.is_empty() {
            return;
        }
        for c in chunks {
            if let Chunk::Ready { data: Ok(d), .. } = c {
                self.give_back(d);
            }
        }
        self.ready.notify_all();
    }

    /// Keeps the device busy well beyond what is being prepared, once a
    /// prepared read has missed the host cache: more is asked for as the
    /// plan moves on, whether or not the read that gets there found its
    /// bytes already fetched (it usually does: they were asked for
    /// before).
    fn read_far_ahead(&self, missed: bool) {
        let far = self.state.lock().far_window(missed);
        if let Some((at, n)) = far {
            if let Err(e) = self.image.prefetch(at, n) {
                log::debug!("reading ahead at {at}: {e}");
            }
        }
    }

    /// Reads the first planned chunk no worker has claimed; returns
    /// whether there was one.
    fn prepare_one(&self) -> bool {
        let (offset, len) = {
            let mut st = self.state.lock();
            let Some((offset, len)) = st.chunks.iter_mut().find_map(|c| match c {
                Chunk::Pending {
                    offset,
                    len,
                    claimed,
                } if !*claimed => {
                    *claimed = true;
                    Some((*offset, *len))
                }
                _ => None,
            }) else {
                return false;
            };
            (offset, len)
        };
        let mut buf = self.streams.pool.lock().pop().unwrap_or_default();
        buf.resize(len, 0);
        let data = match self.image.read_at_traced(offset, &mut buf) {
            Ok(r) => {
                buf.truncate(r.len);
                self.read_far_ahead(r.missed);
                Ok(buf)
            }
            Err(e) => Err(Failed {
                errno: e.errno(),
                error: e.to_string(),
            }),
        };
        let mut st = self.state.lock();
        let slot = st.chunks.iter_mut().find(|c| {
            matches!(c, Chunk::Pending { offset: o, len: l, claimed: true } if *o == offset && *l == len)
        });
        match slot {
            Some(slot) => {
                *slot = Chunk::Ready { offset, data };
                drop(st);
                self.ready.notify_all();
            }
            // The reader went elsewhere meanwhile.
            None => {
                drop(st);
                self.discard(vec![Chunk::Ready { offset, data }]);
            }
        }
        true
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let chunks: Vec<Chunk> = self.state.get_mut().chunks.drain(..).collect();
        self.discard(chunks);
    }
}

struct Shared {
    queue: Mutex<VecDeque<Weak<Stream>>>,
    work: Condvar,
    pool: Mutex<Vec<Vec<u8>>>,
    /// Set when the mount's file system is dropped: the workers end.
    stop: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Asks the workers to read `chunks` more chunks of `s`.
    fn schedule(&self, s: &Arc<Stream>, chunks: usize) {
        if chunks == 0 {
            return;
        }
        let mut q = self.queue.lock();
        for _ in 0..chunks {
            q.push_back(Arc::downgrade(s));
        }
        drop(q);
        self.work.notify_all();
    }
}

/// The workers that prepare every stream's reads of one mount.
pub struct Streams {
    shared: Arc<Shared>,
}

impl Streams {
    /// Starts `workers` threads; they end when this is dropped.
    pub fn start(workers: usize) -> Streams {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            work: Condvar::new(),
            pool: Mutex::new(Vec::new()),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        for i in 0..workers {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("strata-stream-{i}"))
                .spawn(move || loop {
                    let next = {
                        let mut q = shared.queue.lock();
                        loop {
                            if shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                                return;
                            }
                            if let Some(s) = q.pop_front() {
                                break s;
                            }
                            shared.work.wait(&mut q);
                        }
                    };
                    if let Some(s) = next.upgrade() {
                        s.prepare_one();
                    }
                });
            if let Err(e) = spawned {
                log::warn!("no stream worker: {e}");
            }
        }
        Streams { shared }
    }

    /// A stream for a reader of `image`.
    pub fn open(&self, image: Arc<Snapshot>) -> Arc<Stream> {
        Arc::new(Stream {
            image,
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            streams: self.shared.clone(),
        })
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let _q = self.shared.queue.lock();
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.work.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DiskName, Repository, SnapName, SnapshotRef};

    /// A two-layer snapshot of 4 MiB: every byte's value depends on its
    /// offset, so a piece served at the wrong place shows.
    fn image(dir: &std::path::Path) -> (Repository, Arc<Snapshot>) {
        let repo = Repository::init(&dir.join("repo")).unwrap();
        let name = DiskName::parse("d").unwrap();
        repo.create_disk(&name, 4 << 20, 64 << 10).unwrap();
        let d = repo.disk(&name).unwrap();
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i / 4093) as u8).collect();
        d.write_at(0, &bytes).unwrap();
        repo.snapshot(&name, Some(SnapName::parse("a").unwrap()))
            .unwrap();
        d.write_at(1 << 20, &bytes[(1 << 20)..(1 << 20) + 65536])
            .unwrap();
        repo.snapshot(&name, Some(SnapName::parse("b").unwrap()))
            .unwrap();
        let snap = repo
            .open_snapshot(&SnapshotRef {
                disk: name,
                snap: SnapName::parse("b").unwrap(),
            })
            .unwrap();
        (repo, Arc::new(snap))
    }

    fn expected(snap: &Snapshot, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let n = snap.read_at(offset, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// What the caller does with a read the stream did not prepare.
    fn read(stream: &Arc<Stream>, snap: &Snapshot, offset: u64, len: usize) -> (Vec<u8>, bool) {
        if let Some(got) = stream.take(offset, len) {
            let data = got.map_err(|f| f.error).unwrap();
            let copy = data.clone();
            stream.give_back(data);
            return (copy, true);
        }
        let data = expected(snap, offset, len);
        stream.served(offset, data.len());
        (data, false)
    }

    #[test]
    fn a_cold_stream_asks_for_everything_ahead_end_to_end() {
        let mb = 1u64 << 20;
        // Warm: nothing ever missed, the device is never asked.
        let streaming = || State {
            in_order: 2,
            ..State::default()
        };
        let mut warm = streaming();
        for i in 0..256 {
            warm.planned = i * mb;
            assert_eq!(warm.far_window(false), None);
        }
        // Cold from the third request; later reads find their bytes
        // fetched (they were asked for a window before), as they do.
        let mut st = streaming();
        let mut asked: Vec<(u64, u64)> = Vec::new();
        for i in 2..256 {
            st.planned = i * mb;
            asked.extend(st.far_window(i == 2));
            let asked_to = asked.last().map_or(0, |&(at, n)| at + n);
            assert!(
                asked_to >= st.planned + FAR_AHEAD - FAR_STEP,
                "at {i} MiB the device was asked up to {} MiB only",
                asked_to / mb
            );
        }
        // The windows follow each other with no gap.
        assert_eq!(asked[0].0, 2 * mb);
        for w in asked.windows(2) {
            assert_eq!(w[0].0 + w[0].1, w[1].0, "{asked:?}");
        }
        // A jump back starts over: warm until a read there misses, then
        // asked ahead from there.
        st.start_at(mb, 1 << 20);
        assert_eq!(st.far_window(false), None);
        assert_eq!(st.far_window(true), Some((mb, FAR_AHEAD)));
        // A stopped stream asks for nothing.
        st.in_order = 0;
        st.planned += 8 * FAR_AHEAD;
        assert_eq!(st.far_window(true), None);
    }

    #[test]
    fn reads_in_order_are_prepared_and_a_jump_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let (_repo, snap) = image(dir.path());
        let streams = Streams::start(2);
        let stream = streams.open(snap.clone());
        let len = 256 << 10;
        let mut prepared = 0;
        for i in 0..16u64 {
            let (got, was_prepared) = read(&stream, &snap, i * len as u64, len);
            assert_eq!(got, expected(&snap, i * len as u64, len), "read {i}");
            prepared += was_prepared as u32;
            // The first two are the caller's: they start the stream.
            assert_eq!(was_prepared, i >= 2, "read {i}");
        }
        assert_eq!(prepared, 14);
        // Past the end: nothing, prepared or not.
        assert!(read(&stream, &snap, 4 << 20, len).0.is_empty());
        // A jump back is read by the caller; two in order start again.
        for (i, at) in [0u64, 3 << 20, 65536, 65536 + 4096].into_iter().enumerate() {
            let (got, was_prepared) = read(&stream, &snap, at, 4096);
            assert_eq!(got, expected(&snap, at, 4096), "jump {i}");
            assert!(!was_prepared, "jump {i}");
        }
        // Two reads of 4 KiB in order start a stream of 4 KiB requests; a
        // request of another size where the next would be is read anew.
        let at = 2 << 20;
        for i in 0..2u64 {
            let (got, was_prepared) = read(&stream, &snap, at + i * 4096, 4096);
            assert_eq!(got, expected(&snap, at + i * 4096, 4096));
            assert!(!was_prepared);
        }
        let (got, was_prepared) = read(&stream, &snap, at + 8192, 8192);
        assert_eq!(got, expected(&snap, at + 8192, 8192));
        assert!(!was_prepared, "prepared in another size");
        stream.close();
        assert!(stream.take(81920, 8192).is_none(), "closed");
    }
}
