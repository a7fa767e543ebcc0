//! The sans-IO queue core: one queue's per-tag state machine and request handling.
//!
//! No syscalls: completion events go in, commands to submit come out, and the data of a
//! request moves between the tag's I/O buffer and a [`Backing`] store. The daemon drives it
//! with io_uring; the simulator drives the very same code against a model kernel.
//!
//! Per tag there are exactly three states, the fewest the protocol allows:
//!
//! ```text
//!             new(): FETCH_REQ
//!   ┌──────────────► InKernel ──── completion(-ENODEV) ───► Aborted (final)
//!   │                   │
//!   │ COMMIT_AND_FETCH  │ completion(0): descriptor holds a request
//!   │   (with result)   ▼
//!   └────────────── Serving   (a stalled tag stays here: fault injection)
//! ```
//!
//! Construction emits the FETCH_REQ of every tag, so no tag can be served, and START_DEV
//! cannot be meaningful, before all fetches exist. A completion for a tag that is not
//! `InKernel` is a protocol violation and an error, never a silent recovery.
//!
//! Batched I/O ([`IoMode::Batch`], UBLK_F_BATCH_IO on 7.x) keeps the same three tag states
//! with other commands: construction emits a `Prep` per tag (one PREP_IO_CMDS), requests
//! arrive through one multishot FETCH_IO_CMDS per queue (each of its tags is handed to
//! [`QueueCore::on_completion`] with result 0), and a commit makes the tag `InKernel` at once
//! but is only collected; [`QueueCore::flush`] emits the collected commits as one numbered
//! COMMIT_IO_CMDS, whose completion ([`QueueCore::on_commit_done`]) must report every element
//! taken. The end of the fetch with -ENODEV ([`QueueCore::on_fetch_end`]) aborts the queue.
//!
//! ```text
//!             new(): Prep (PREP_IO_CMDS)
//!   ┌──────────────► InKernel ──── on_fetch_end(-ENODEV) ──► Aborted (final)
//!   │                   │
//!   │ commit: collected │ a FETCH_IO_CMDS completion names the tag
//!   │   then flush()    ▼
//!   └────────────── Serving
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::planted::{self, Bug};
use crate::sys::{self, ublksrv_io_desc};

/// Bytes per sector in descriptors (always 512, whatever the logical block size).
pub const SECTOR: u64 = 512;
/// Data moves between the tag buffer and the store in segments of this size.
pub const SEGMENT: usize = 4096;

/// The order of device bring-up. The kernel's START_DEV (and END_USER_RECOVERY) waits until
/// every tag's FETCH_REQ has arrived, so the fetches must come first; the daemon and the
/// simulator both follow this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bringup {
    /// Create every queue (each submits the FETCH_REQ of all its tags) and wait until ready.
    FetchAll,
    /// Send START_DEV (a new device) or END_USER_RECOVERY (a device taken over).
    StartDev,
}

pub fn bringup() -> Vec<Bringup> {
    if planted::active(Bug::StartBeforeFetch) {
        return vec![Bringup::StartDev, Bringup::FetchAll];
    }
    vec![Bringup::FetchAll, Bringup::StartDev]
}

/// The bring-up of a server taking over a device (after START_USER_RECOVERY): the same order,
/// every tag fetched exactly once by the new server's queues.
pub fn recovery_bringup() -> Vec<Bringup> {
    if planted::active(Bug::RecoveryRefetch) {
        return vec![Bringup::FetchAll, Bringup::FetchAll, Bringup::StartDev];
    }
    if planted::active(Bug::EarlyEndRecovery) {
        return vec![Bringup::StartDev, Bringup::FetchAll];
    }
    vec![Bringup::FetchAll, Bringup::StartDev]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TagState {
    /// A FETCH_REQ or COMMIT_AND_FETCH_REQ for this tag is with the kernel.
    InKernel = 0,
    /// The kernel handed us a request; we own the tag until we commit.
    Serving = 1,
    /// The kernel aborted the tag (device going away); it is never fetched again.
    Aborted = 2,
}

impl TagState {
    pub fn name(self) -> &'static str {
        match self {
            TagState::InKernel => "in-kernel",
            TagState::Serving => "serving",
            TagState::Aborted => "aborted",
        }
    }
}

/// How a queue exchanges requests with the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoMode {
    /// One FETCH_REQ / COMMIT_AND_FETCH_REQ per tag and request (every kernel).
    #[default]
    PerTag,
    /// UBLK_F_BATCH_IO: PREP_IO_CMDS once, a multishot FETCH_IO_CMDS, COMMIT_IO_CMDS per batch.
    Batch,
}

impl IoMode {
    pub fn name(self) -> &'static str {
        match self {
            IoMode::PerTag => "per-tag",
            IoMode::Batch => "batch",
        }
    }
}

/// The largest commit batch: one element per tag (a tag is committed at most once per batch).
pub const MAX_BATCH: usize = sys::UBLK_MAX_QUEUE_DEPTH as usize;

/// What the executor must submit for a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Fetch {
        tag: u16,
    },
    CommitAndFetch {
        tag: u16,
        result: i32,
    },
    /// Batch mode: one element of the queue's PREP_IO_CMDS (every Prep of one output goes in
    /// one command).
    Prep {
        tag: u16,
    },
    /// Batch mode: one element of COMMIT_IO_CMDS number `batch` (consecutive in the output;
    /// the executor reports that command's completion to [`QueueCore::on_commit_done`]).
    Commit {
        batch: u32,
        tag: u16,
        result: i32,
    },
}

/// Everything the core does, reported to an [`Observer`] (tracing, state publication, checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Fetch {
        tag: u16,
    },
    Request {
        tag: u16,
        op: u8,
        flags: u32,
        sector: u64,
        sectors: u32,
    },
    Commit {
        tag: u16,
        result: i32,
    },
    Abort {
        tag: u16,
    },
    /// Fault injection held the tag's request: it will never be committed.
    Stall {
        tag: u16,
    },
}

pub trait Observer {
    fn event(&mut self, q_id: u16, event: &Event);
}

/// Observes nothing.
pub struct NoObserver;
impl Observer for NoObserver {
    fn event(&mut self, _: u16, _: &Event) {}
}

/// The store behind the device. Offsets and lengths are always validated by the core first.
pub trait Backing {
    fn size_bytes(&self) -> u64;
    fn read(&self, offset: u64, dst: &mut [u8]);
    fn write(&mut self, offset: u64, src: &[u8]);
    fn zero(&mut self, offset: u64, len: u64);
}

/// Where a request's data is while the server handles it. The core moves bytes between it and
/// the store, in runs of whole segments; an error is a negative errno the request fails with.
pub trait RequestData<B: Backing + ?Sized> {
    /// The largest request it holds.
    fn capacity(&self) -> usize;
    /// Device read: `len` bytes of the store at `store_off` into the request at `req_off`.
    fn fill(&mut self, store: &B, store_off: u64, req_off: usize, len: usize) -> Result<(), i32>;
    /// Device write: `len` bytes of the request at `req_off` into the store at `store_off`.
    fn drain(
        &mut self,
        store: &mut B,
        store_off: u64,
        req_off: usize,
        len: usize,
    ) -> Result<(), i32>;
}

/// Buffer copy: the tag's I/O buffer, into which the kernel copied a write's data (and out of
/// which it copies a read's data at commit). The server's copy is the second one.
impl<B: Backing + ?Sized> RequestData<B> for [u8] {
    fn capacity(&self) -> usize {
        self.len()
    }
    fn fill(&mut self, store: &B, store_off: u64, req_off: usize, len: usize) -> Result<(), i32> {
        store.read(store_off, &mut self[req_off..req_off + len]);
        Ok(())
    }
    fn drain(
        &mut self,
        store: &mut B,
        store_off: u64,
        req_off: usize,
        len: usize,
    ) -> Result<(), i32> {
        store.write(store_off, &self[req_off..req_off + len]);
        Ok(())
    }
}

/// A Vec-backed store (tests, simulator).
pub struct VecBacking(pub Vec<u8>);

impl Backing for VecBacking {
    fn size_bytes(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, dst: &mut [u8]) {
        let o = offset as usize;
        dst.copy_from_slice(&self.0[o..o + dst.len()]);
    }
    fn write(&mut self, offset: u64, src: &[u8]) {
        let o = offset as usize;
        self.0[o..o + src.len()].copy_from_slice(src);
    }
    fn zero(&mut self, offset: u64, len: u64) {
        self.0[offset as usize..(offset + len) as usize].fill(0);
    }
}

/// Fault injection for the platform's own tests; `None` in normal operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Tag `tag` serves `after` requests normally, then never commits the next one.
    StallTag { tag: u16, after: u64 },
}

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub q_id: u16,
    pub depth: u16,
    /// Size of each tag's I/O buffer: the largest request the kernel may send.
    pub max_io_bytes: u32,
    /// Device size in 512-byte sectors.
    pub dev_sectors: u64,
    pub fault: Option<Fault>,
    /// Device-wide count of requests being served (shared by every queue).
    pub inflight: Arc<AtomicU64>,
    /// The queue belongs to a server that took the device over (user recovery): requests the
    /// dead server held may arrive again, and must be served like any other.
    pub recovered: bool,
    pub mode: IoMode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// The kernel completed a command for a tag in the wrong state.
    Protocol {
        q_id: u16,
        tag: u16,
        state: TagState,
        result: i32,
    },
    /// The kernel rejected a command (negative result other than abort): a server bug.
    Rejected { q_id: u16, tag: u16, result: i32 },
    /// The kernel refused (part of) a batch command: `what` names it, `tag` the first element
    /// it did not take (when known), `result` its answer.
    BatchRejected {
        q_id: u16,
        what: &'static str,
        tag: Option<u16>,
        result: i32,
    },
}

impl std::fmt::Display for CoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreError::Protocol {
                q_id,
                tag,
                state,
                result,
            } => {
                write!(f, "queue {q_id} tag {tag}: completion (result {result}) while the tag is {}; the kernel and the server disagree", state.name())
            }
            CoreError::Rejected { q_id, tag, result } => {
                write!(
                    f,
                    "queue {q_id} tag {tag}: the kernel rejected our command with {result} ({})",
                    errno_name(-result)
                )
            }
            CoreError::BatchRejected {
                q_id,
                what,
                tag,
                result,
            } => {
                let at = tag.map_or(String::new(), |t| format!(" at tag {t}"));
                let why = match *result {
                    r if r < 0 => format!("{r} ({})", errno_name(-r)),
                    r => format!("only {r} bytes of its elements taken"),
                };
                write!(f, "queue {q_id}: the kernel refused our {what}{at}: {why}")
            }
        }
    }
}

/// Per-queue counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Requests answered with an error (invalid descriptor, unsupported op).
    pub errors: u64,
}

pub struct QueueCore {
    cfg: QueueConfig,
    states: Vec<TagState>,
    /// Requests served per tag (for fault injection and the state dump).
    served: Vec<u64>,
    live: u16,
    stats: Stats,
    /// Shutdown began: held requests were released.
    stopping: bool,
    /// Planted RacyInflight: a counter value loaded at one event, stored at the next.
    deferred_store: Option<u64>,
    /// Batch mode: commits collected since the last flush.
    pending: Vec<(u16, i32)>,
    /// Batch mode: COMMIT_IO_CMDS submitted and not completed, by number, with their elements.
    in_flight: Vec<(u32, Vec<(u16, i32)>)>,
    next_batch: u32,
}

impl QueueCore {
    /// Creates the queue and emits the FETCH_REQ of every tag into `out`.
    pub fn new(cfg: QueueConfig, out: &mut Vec<Command>, obs: &mut impl Observer) -> QueueCore {
        assert!(
            cfg.depth > 0 && u32::from(cfg.depth) <= sys::UBLK_MAX_QUEUE_DEPTH,
            "queue depth {} out of range",
            cfg.depth
        );
        assert!(
            u32::from(cfg.q_id) < sys::UBLK_MAX_NR_QUEUES,
            "queue id {} out of range",
            cfg.q_id
        );
        assert!(
            cfg.max_io_bytes as u64 >= SECTOR && cfg.max_io_bytes <= 1 << sys::UBLK_IO_BUF_BITS,
            "I/O buffer size {} out of range",
            cfg.max_io_bytes
        );
        for tag in 0..cfg.depth {
            out.push(match cfg.mode {
                IoMode::PerTag => Command::Fetch { tag },
                IoMode::Batch => Command::Prep { tag },
            });
            obs.event(cfg.q_id, &Event::Fetch { tag });
        }
        let depth = cfg.depth as usize;
        QueueCore {
            live: cfg.depth,
            states: vec![TagState::InKernel; depth],
            served: vec![0; depth],
            stats: Stats::default(),
            stopping: false,
            deferred_store: None,
            pending: Vec::with_capacity(depth),
            in_flight: Vec::new(),
            next_batch: 0,
            cfg,
        }
    }

    pub fn mode(&self) -> IoMode {
        self.cfg.mode
    }

    /// Batch mode: emits the commits collected since the last flush as one COMMIT_IO_CMDS
    /// (numbered; consecutive `Command::Commit`s). Returns how many elements it holds (0: none
    /// emitted). Per-tag mode commits at once and never has anything to flush.
    pub fn flush(&mut self, out: &mut Vec<Command>) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        debug_assert_eq!(self.cfg.mode, IoMode::Batch);
        let batch = self.next_batch;
        self.next_batch = self.next_batch.wrapping_add(1);
        let mut elems = std::mem::take(&mut self.pending);
        if planted::active(Bug::StaleCommit) {
            // "The list is reset when its COMMIT completes": one still in flight is sent again.
            if let Some((_, old)) = self.in_flight.last() {
                let mut stale = old.clone();
                stale.append(&mut elems);
                elems = stale;
            }
        }
        assert!(
            elems.len() <= MAX_BATCH,
            "a commit batch holds at most one element per tag"
        );
        out.extend(
            elems
                .iter()
                .map(|&(tag, result)| Command::Commit { batch, tag, result }),
        );
        let n = elems.len();
        self.in_flight.push((batch, elems));
        self.pending = Vec::with_capacity(self.cfg.depth as usize);
        n
    }

    /// Batch mode: COMMIT_IO_CMDS number `batch` completed with `result`: the bytes of its
    /// elements the kernel took (`elem_bytes` each), or -errno. Anything short is an error:
    /// the requests of the elements not taken would never complete.
    pub fn on_commit_done(
        &mut self,
        batch: u32,
        result: i32,
        elem_bytes: usize,
    ) -> Result<(), CoreError> {
        let q_id = self.cfg.q_id;
        let at = self.in_flight.iter().position(|(b, _)| *b == batch);
        let Some(at) = at else {
            return Err(CoreError::BatchRejected {
                q_id,
                what: "COMMIT_IO_CMDS (a completion for no batch in flight)",
                tag: None,
                result,
            });
        };
        let (_, elems) = self.in_flight.remove(at);
        let taken = usize::try_from(result).map_or(0, |r| r / elem_bytes);
        if result < 0 || taken < elems.len() {
            return Err(CoreError::BatchRejected {
                q_id,
                what: "COMMIT_IO_CMDS",
                tag: elems.get(taken).map(|e| e.0),
                result,
            });
        }
        Ok(())
    }

    /// Batch mode: the PREP_IO_CMDS completed with `result` (0, or -errno: nothing was taken).
    pub fn on_prep_done(&mut self, result: i32) -> Result<(), CoreError> {
        match result {
            0 => Ok(()),
            r => Err(CoreError::BatchRejected {
                q_id: self.cfg.q_id,
                what: "PREP_IO_CMDS",
                tag: None,
                result: r,
            }),
        }
    }

    /// Batch mode: the multishot FETCH_IO_CMDS ended with `result`. -ENODEV (the device is
    /// going away) aborts every tag the server does not hold, like per-tag aborts; any other
    /// end is the executor's to handle (re-arm on -ENOBUFS or a plain end).
    pub fn on_fetch_end(&mut self, result: i32, obs: &mut impl Observer) {
        if result != sys::UBLK_IO_RES_ABORT {
            return;
        }
        for tag in 0..self.cfg.depth {
            if self.states[tag as usize] == TagState::InKernel {
                self.states[tag as usize] = TagState::Aborted;
                self.live -= 1;
                obs.event(self.cfg.q_id, &Event::Abort { tag });
            }
        }
    }

    /// Batch mode: COMMIT_IO_CMDS submitted and not yet completed.
    pub fn commits_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn q_id(&self) -> u16 {
        self.cfg.q_id
    }
    pub fn depth(&self) -> u16 {
        self.cfg.depth
    }
    pub fn state(&self, tag: u16) -> TagState {
        self.states[tag as usize]
    }
    pub fn served(&self, tag: u16) -> u64 {
        self.served[tag as usize]
    }
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// True once every tag was aborted: the queue is done.
    pub fn all_aborted(&self) -> bool {
        self.live == 0
    }

    /// The kernel aborted at least one tag (the device is stopping or quiescing).
    pub fn aborted_any(&self) -> bool {
        self.live < self.cfg.depth
    }

    /// No tag is being served (none held by the server).
    pub fn holds_no_request(&self) -> bool {
        !self.states.contains(&TagState::Serving)
    }

    /// Handles the completion of `tag`'s outstanding command. `desc` is the tag's descriptor
    /// (read by the executor from the shared descriptor area) and `data` where the request's
    /// data is (the tag's I/O buffer, or the request itself through USER_COPY).
    /// At most one command is pushed to `out`.
    // Every input of the sans-IO boundary is an explicit argument, on purpose.
    #[allow(clippy::too_many_arguments)]
    pub fn on_completion<B: Backing, D: RequestData<B> + ?Sized>(
        &mut self,
        tag: u16,
        result: i32,
        desc: &ublksrv_io_desc,
        data: &mut D,
        backing: &mut B,
        out: &mut Vec<Command>,
        obs: &mut impl Observer,
    ) -> Result<(), CoreError> {
        let q_id = self.cfg.q_id;
        let t = tag as usize;
        assert!(
            t < self.states.len(),
            "queue {q_id}: completion for tag {tag} beyond depth {}",
            self.cfg.depth
        );
        if let Some(v) = self.deferred_store.take() {
            self.cfg.inflight.store(v, Ordering::SeqCst);
        }
        let state = self.states[t];
        if state != TagState::InKernel {
            return Err(CoreError::Protocol {
                q_id,
                tag,
                state,
                result,
            });
        }
        match result {
            sys::UBLK_IO_RES_ABORT => {
                self.states[t] = TagState::Aborted;
                self.live -= 1;
                obs.event(q_id, &Event::Abort { tag });
                Ok(())
            }
            sys::UBLK_IO_RES_OK => {
                self.states[t] = TagState::Serving;
                self.inflight_add(1);
                obs.event(
                    q_id,
                    &Event::Request {
                        tag,
                        op: desc.op(),
                        flags: desc.flags(),
                        sector: desc.start_sector,
                        sectors: desc.nr_sectors,
                    },
                );
                let stall = matches!(self.cfg.fault, Some(Fault::StallTag { tag: ft, after }) if ft == tag && self.served[t] == after);
                self.served[t] += 1;
                if stall {
                    obs.event(q_id, &Event::Stall { tag });
                    return Ok(());
                }
                if self.stopping && planted::active(Bug::ShutdownNoCommit) {
                    return Ok(()); // "shutting down: ignore new work" -- STOP_DEV then waits forever
                }
                let res = self.serve(desc, data, backing);
                if planted::active(Bug::LostCompletion)
                    && (self.stats.reads + self.stats.writes) % 97 == 96
                {
                    self.states[t] = TagState::InKernel; // believes it committed; the kernel never hears
                    self.inflight_add(-1);
                    return Ok(());
                }
                self.commit(tag, res, out, obs);
                if planted::active(Bug::TagReuse) && self.served[t] == 3 {
                    // Re-fetch while the commit is outstanding (batch mode has no fetch).
                    if self.cfg.mode == IoMode::PerTag {
                        out.push(Command::Fetch { tag });
                    }
                }
                Ok(())
            }
            _ => Err(CoreError::Rejected { q_id, tag, result }),
        }
    }

    /// Shutdown begins (STOP_DEV is being sent): fails every request still held (stalled by
    /// fault injection) with -EIO so STOP_DEV can drain, and keeps serving whatever still
    /// arrives. Returns how many held requests were released.
    pub fn begin_shutdown(&mut self, out: &mut Vec<Command>, obs: &mut impl Observer) -> usize {
        self.stopping = true;
        let held: Vec<u16> = (0..self.cfg.depth)
            .filter(|t| self.states[*t as usize] == TagState::Serving)
            .collect();
        for &tag in &held {
            self.stats.errors += 1;
            self.commit(tag, -libc::EIO, out, obs);
        }
        held.len()
    }

    /// Device-wide in-flight accounting (an atomic add; split into load and deferred store
    /// when RacyInflight is planted).
    fn inflight_add(&mut self, delta: i64) {
        let c = &self.cfg.inflight;
        if planted::active(Bug::RacyInflight) {
            if let Some(v) = self.deferred_store.take() {
                c.store(v, Ordering::SeqCst);
            }
            self.deferred_store = Some(c.load(Ordering::SeqCst).wrapping_add_signed(delta));
        } else if delta >= 0 {
            c.fetch_add(delta as u64, Ordering::SeqCst);
        } else {
            c.fetch_sub(delta.unsigned_abs(), Ordering::SeqCst);
        }
    }

    fn commit(&mut self, tag: u16, result: i32, out: &mut Vec<Command>, obs: &mut impl Observer) {
        debug_assert_eq!(self.states[tag as usize], TagState::Serving);
        self.states[tag as usize] = TagState::InKernel;
        self.inflight_add(-1);
        match self.cfg.mode {
            IoMode::PerTag => out.push(Command::CommitAndFetch { tag, result }),
            IoMode::Batch => self.pending.push((tag, result)),
        }
        obs.event(self.cfg.q_id, &Event::Commit { tag, result });
    }

    /// Validates and executes one request; returns the result to commit (bytes or -errno).
    /// An invalid descriptor gets -EIO and touches no memory.
    fn serve<B: Backing, D: RequestData<B> + ?Sized>(
        &mut self,
        desc: &ublksrv_io_desc,
        data: &mut D,
        backing: &mut B,
    ) -> i32 {
        let op = desc.op();
        let bytes = desc.nr_sectors as u64 * SECTOR;
        let in_range = desc
            .start_sector
            .checked_add(desc.nr_sectors as u64)
            .is_some_and(|end| end <= self.cfg.dev_sectors && end * SECTOR <= backing.size_bytes());
        let offset = desc.start_sector.wrapping_mul(SECTOR);
        let res = match op {
            sys::UBLK_IO_OP_READ | sys::UBLK_IO_OP_WRITE => {
                if !in_range
                    || bytes > self.cfg.max_io_bytes as u64
                    || bytes > data.capacity() as u64
                {
                    -libc::EIO
                } else {
                    let read = op == sys::UBLK_IO_OP_READ;
                    let replay = planted::active(Bug::ReplayAck) && self.cfg.recovered && !read;
                    let first = self.served.iter().sum::<u64>() <= self.cfg.depth as u64;
                    let (from, extra) = match read && planted::active(Bug::OversizeCommit) {
                        true if offset + bytes + 4096 <= backing.size_bytes() => {
                            (offset + 4096, 4096)
                        }
                        true => (offset, 4096),
                        false => (offset, 0),
                    };
                    let moved = match replay && first {
                        true => Ok(()), // "already stored by the dead server": not stored
                        false => transfer(read, from, bytes as usize, data, backing),
                    };
                    match moved {
                        Ok(()) if read => {
                            self.stats.reads += 1;
                            self.stats.read_bytes += bytes;
                            bytes as i32 + extra
                        }
                        Ok(()) => {
                            self.stats.writes += 1;
                            self.stats.write_bytes += bytes;
                            bytes as i32
                        }
                        Err(e) => {
                            debug_assert!(e < 0, "a transfer error is a negative errno");
                            e
                        }
                    }
                }
            }
            sys::UBLK_IO_OP_FLUSH => {
                // Memory is its own stable storage: nothing to write back.
                self.stats.flushes += 1;
                0
            }
            sys::UBLK_IO_OP_DISCARD | sys::UBLK_IO_OP_WRITE_ZEROES => {
                if !in_range {
                    -libc::EIO
                } else {
                    // Discarded ranges read back as zeroes: deterministic for verification.
                    backing.zero(offset, bytes);
                    if op == sys::UBLK_IO_OP_DISCARD {
                        self.stats.discards += 1;
                    } else {
                        self.stats.write_zeroes += 1;
                    }
                    0
                }
            }
            _ => -libc::EOPNOTSUPP,
        };
        if res < 0 {
            self.stats.errors += 1;
        }
        res
    }
}

/// Moves a request's `bytes` between `data` and the store at `offset`, segment by segment,
/// coalescing segments that are contiguous on both sides into one call (one copy call per
/// request unless a planted bug scatters them).
fn transfer<B: Backing, D: RequestData<B> + ?Sized>(
    read: bool,
    offset: u64,
    bytes: usize,
    data: &mut D,
    backing: &mut B,
) -> Result<(), i32> {
    let mut run = |(req_off, store_off, len): (usize, u64, usize)| match read {
        true => data.fill(backing, store_off, req_off, len),
        false => data.drain(backing, store_off, req_off, len),
    };
    let mut pending: Option<(usize, u64, usize)> = None;
    for i in 0..bytes.div_ceil(SEGMENT) {
        let n = if planted::active(Bug::SegmentOffset) {
            i.saturating_sub(1)
        } else {
            i
        };
        let req_off = i * SEGMENT;
        let len = SEGMENT.min(bytes - req_off);
        let at = offset + (n * SEGMENT) as u64;
        match &mut pending {
            Some((r, s, l)) if *r + *l == req_off && *s + *l as u64 == at => *l += len,
            _ => {
                if let Some(p) = pending.take() {
                    run(p)?;
                }
                pending = Some((req_off, at, len));
            }
        }
    }
    pending.map_or(Ok(()), run)
}

/// Short errno names for messages.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIME => "ETIME",
        libc::EAGAIN => "EAGAIN",
        libc::EBADF => "EBADF",
        _ => "errno",
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
