//! The data path: one thread per queue, each with its own io_uring, driving a [`QueueCore`].
//!
//! The thread maps its queue's descriptors, allocates its tags' I/O buffers, submits the
//! FETCH_REQ of every tag itself (the kernel requires a tag's commands to come from the
//! queue's thread) and only then reports ready; START_DEV comes after every queue is ready.
//! Per loop: one io_uring_enter submits all commands of the previous batch and waits (at most
//! POLL) for completions. No allocation on the per-I/O path.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::batch::{self, BatchIo, Completion};
use crate::core::{
    Command, Event, Fault, IoMode, Observer, QueueConfig, QueueCore, RequestData, Stats, TagState,
};
use crate::mem::MemView;
use crate::sys::{self, ublksrv_io_cmd, ublksrv_io_desc};

/// Longest a queue thread blocks in the kernel before re-checking its stop deadline.
const POLL: Duration = Duration::from_millis(100);
/// Under load the queue waits for several requests per wakeup (half the last batch), but never
/// longer than this for the rest to arrive.
const GATHER: Duration = Duration::from_micros(50);

#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub dev_id: u32,
    pub q_id: u16,
    pub depth: u16,
    pub max_io_bytes: u32,
    pub dev_sectors: u64,
    /// Device flags as granted by ADD_DEV: decides the I/O command encoding.
    pub ioctl_encode: bool,
    /// USER_RECOVERY granted: a quiesce aborts only idle tags, so the queue ends once it holds
    /// no request after the first abort (the rest are aborted when the process exits).
    pub recoverable: bool,
    /// This server took the device over (user recovery).
    pub recovered: bool,
    /// Device-wide: some queue saw the kernel abort a tag. A quiesce marks the whole device
    /// canceling (no queue gets new requests) but guarantees an abort to only one idle tag per
    /// queue, and one may never come to a busy queue: every queue of a recoverable device ends
    /// once it holds no request.
    pub aborting: Arc<std::sync::atomic::AtomicBool>,
    /// How requests' data reaches the store (USER_COPY granted by ADD_DEV, or not).
    pub copy: CopyMode,
    /// Per-tag commands, or batched ones (BATCH_IO granted by ADD_DEV; needs USER_COPY).
    pub mode: IoMode,
    pub cpus: Vec<usize>,
    /// Run the queue thread under SCHED_BATCH (`--sched batch`).
    pub sched_batch: bool,
    pub fault: Option<Fault>,
    /// Trace file for this queue (see TRACE.md).
    pub trace: Option<PathBuf>,
    /// Device-wide in-flight request count, shared by the queues.
    pub inflight: Arc<std::sync::atomic::AtomicU64>,
}

/// What a queue publishes for the state dump: written by the queue thread with relaxed
/// stores, read by the main thread at any time; I/O is never paused for a dump.
pub struct QueueShared {
    pub q_id: u16,
    pub states: Vec<AtomicU8>,
    pub served: Vec<AtomicU64>,
    /// Last request per tag: op | flags << 8 | sectors << 32.
    pub last_req: Vec<AtomicU64>,
    pub last_sector: Vec<AtomicU64>,
    pub completions: AtomicU64,
    pub finished: AtomicBool,
}

impl QueueShared {
    pub fn new(q_id: u16, depth: u16) -> QueueShared {
        let n = depth as usize;
        QueueShared {
            q_id,
            states: (0..n)
                .map(|_| AtomicU8::new(TagState::InKernel as u8))
                .collect(),
            served: (0..n).map(|_| AtomicU64::new(0)).collect(),
            last_req: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
            last_sector: (0..n).map(|_| AtomicU64::new(0)).collect(),
            completions: AtomicU64::new(0),
            finished: AtomicBool::new(false),
        }
    }

    pub fn state(&self, tag: usize) -> TagState {
        match self.states[tag].load(Ordering::Relaxed) {
            0 => TagState::InKernel,
            1 => TagState::Serving,
            _ => TagState::Aborted,
        }
    }
}

/// The daemon's observer: publishes tag states and writes the trace.
struct DaemonObserver<'a> {
    shared: &'a QueueShared,
    trace: Option<BufWriter<File>>,
    trace_error: Option<String>,
}

impl Observer for DaemonObserver<'_> {
    fn event(&mut self, _q: u16, e: &Event) {
        let s = self.shared;
        match *e {
            Event::Fetch { tag } => {
                s.states[tag as usize].store(TagState::InKernel as u8, Ordering::Relaxed)
            }
            Event::Request {
                tag,
                op,
                flags,
                sector,
                sectors,
            } => {
                let t = tag as usize;
                s.states[t].store(TagState::Serving as u8, Ordering::Relaxed);
                s.served[t].fetch_add(1, Ordering::Relaxed);
                s.last_req[t].store(
                    op as u64 | (flags as u64 & 0xff_ffff) << 8 | (sectors as u64) << 32,
                    Ordering::Relaxed,
                );
                s.last_sector[t].store(sector, Ordering::Relaxed);
            }
            Event::Commit { tag, .. } => {
                s.states[tag as usize].store(TagState::InKernel as u8, Ordering::Relaxed)
            }
            Event::Abort { tag } => {
                s.states[tag as usize].store(TagState::Aborted as u8, Ordering::Relaxed)
            }
            Event::Stall { .. } => {}
        }
        if let Some(w) = &mut self.trace {
            if let Err(err) = crate::trace::write_event(w, e) {
                self.trace_error.get_or_insert_with(|| err.to_string());
                self.trace = None;
            }
        }
    }
}

/// How a request's data reaches the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// The kernel copies between the request and a per-tag buffer; the queue copies between
    /// that buffer and the store: two copies.
    Buffer,
    /// USER_COPY: pread/pwrite on /dev/ublkcN at the request's position move its data straight
    /// between the request and the store: one copy, done by the kernel.
    User,
}

impl CopyMode {
    pub fn name(self) -> &'static str {
        match self {
            CopyMode::Buffer => "buffer",
            CopyMode::User => "user",
        }
    }
}

/// USER_COPY access to one tag's request.
struct UserCopy {
    fd: RawFd,
    pos: u64,
    capacity: usize,
}

impl UserCopy {
    /// One syscall: `pwrite` the store's `len` bytes at `store` into the request at `req_off`
    /// (a device read), or `pread` them out of it (a device write). A short transfer is -EIO.
    fn copy(
        &self,
        into_request: bool,
        store: *mut u8,
        req_off: usize,
        len: usize,
    ) -> Result<(), i32> {
        let at = (self.pos + req_off as u64) as libc::off_t;
        let buf = store as *mut libc::c_void;
        // SAFETY: `store` spans `len` bytes of the store (MemView::span checked the range).
        let n = unsafe {
            match into_request {
                true => libc::pwrite(self.fd, buf, len, at),
                false => libc::pread(self.fd, buf, len, at),
            }
        };
        match n {
            n if n == len as isize => Ok(()),
            n if n < 0 => Err(-std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)),
            _ => Err(-libc::EIO),
        }
    }
}

impl RequestData<MemView> for UserCopy {
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn fill(
        &mut self,
        store: &MemView,
        store_off: u64,
        req_off: usize,
        len: usize,
    ) -> Result<(), i32> {
        self.copy(true, store.span(store_off, len), req_off, len)
    }
    fn drain(
        &mut self,
        store: &mut MemView,
        store_off: u64,
        req_off: usize,
        len: usize,
    ) -> Result<(), i32> {
        self.copy(false, store.span(store_off, len), req_off, len)
    }
}

/// Where the queue's requests' data is.
enum DataPath {
    Buffers(Buffers),
    UserCopy {
        fd: RawFd,
        q_id: u16,
        capacity: usize,
    },
}

impl DataPath {
    fn new(cdev: &File, spec: &QueueSpec) -> Result<DataPath, String> {
        Ok(match spec.copy {
            CopyMode::Buffer => DataPath::Buffers(Buffers::new(spec.depth, spec.max_io_bytes)?),
            CopyMode::User => DataPath::UserCopy {
                fd: cdev.as_raw_fd(),
                q_id: spec.q_id,
                capacity: spec.max_io_bytes as usize,
            },
        })
    }

    /// The FETCH/COMMIT command's `addr`: the tag buffer, or 0 (USER_COPY requires it).
    fn addr(&self, tag: u16) -> u64 {
        match self {
            DataPath::Buffers(b) => b.addr(tag),
            DataPath::UserCopy { .. } => 0,
        }
    }
}

/// Per-tag I/O buffers: one anonymous mapping, page aligned, touched lazily.
struct Buffers {
    map: AnonMap,
    per_tag: usize,
}

/// An anonymous private read-write mapping, unmapped on drop: the tag buffers, the fetch
/// buffer ring.
pub(crate) struct AnonMap {
    pub ptr: *mut u8,
    pub len: usize,
}

impl AnonMap {
    /// `len` bytes; `what` names them in the error.
    pub fn new(len: usize, what: &str) -> Result<AnonMap, String> {
        // SAFETY: anonymous private mapping, result checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            return Err(format!("allocating {len} bytes of {what}: {e}"));
        }
        Ok(AnonMap {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl Buffers {
    fn new(depth: u16, per_tag: u32) -> Result<Buffers, String> {
        let map = AnonMap::new(depth as usize * per_tag as usize, "I/O buffers")?;
        Ok(Buffers {
            map,
            per_tag: per_tag as usize,
        })
    }

    fn addr(&self, tag: u16) -> u64 {
        self.map.ptr as u64 + (tag as usize * self.per_tag) as u64
    }

    fn tag(&mut self, tag: u16) -> &mut [u8] {
        // SAFETY: tag < depth (checked by the core); slices of distinct tags never overlap.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.map.ptr.add(tag as usize * self.per_tag),
                self.per_tag,
            )
        }
    }
}

/// The queue's mmapped descriptor area (read-only, written by the kernel).
struct Descriptors {
    ptr: *const ublksrv_io_desc,
    len: usize,
    depth: u16,
}

impl Descriptors {
    fn map(cdev: &File, q_id: u16, depth: u16) -> Result<Descriptors, String> {
        let page = page_size();
        let len = sys::desc_len(depth, page);
        let off = sys::desc_offset(q_id, page);
        // SAFETY: mapping a region of /dev/ublkcN the driver defines for this queue.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                cdev.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "queue {q_id}: mmap of the descriptor area (offset {off}, {len} bytes): {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Descriptors {
            ptr: ptr as *const ublksrv_io_desc,
            len,
            depth,
        })
    }

    fn get(&self, tag: u16) -> ublksrv_io_desc {
        assert!(tag < self.depth);
        // SAFETY: in bounds; volatile because the kernel writes it behind our back.
        unsafe { std::ptr::read_volatile(self.ptr.add(tag as usize)) }
    }
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn pin(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: building a cpu_set_t and applying it to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
    }
    Ok(())
}

/// SCHED_BATCH for this thread: when a request wakes it, it does not preempt the task on its
/// CPU (the submitter, pinned or not) but runs when that task blocks or its slice ends, so a
/// burst of submissions reaches it as one batch. Measured (ublk/README.md "Scheduling"): on
/// the busier queue ~4 -> ~9 requests per wakeup at 4 KiB QD32, IOPS +6 % (6.12) and +7 %
/// (7.2) under icount.
fn sched_batch() -> Result<(), String> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's own policy; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// How a queue thread ended.
#[derive(Debug)]
pub struct QueueExit {
    pub q_id: u16,
    pub stats: Stats,
    /// None: every tag was aborted (clean). Some: why the loop stopped early.
    pub early: Option<String>,
    pub counts: WaitCounts,
}

/// The queue loop's io_uring_enter calls: requests per wakeup (the batching the queue
/// achieved), and how often a wait ended by its time limit before it had what it asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct WaitCounts {
    pub waits: u64,
    pub completions: u64,
    /// Waits cut short by the limit (or a signal).
    pub short: u64,
}

/// Everything a queue thread owns once set up.
struct Queue<'a> {
    spec: &'a QueueSpec,
    /// /dev/ublkcN, registered with the ring (no per-command file lookup).
    fd: types::Fixed,
    descs: Descriptors,
    data: DataPath,
    /// Dropped before `batch`: the kernel lets go of the fetch buffers with the ring.
    ring: IoUring,
    batch: Option<BatchIo>,
    /// FETCH_REQ and COMMIT_AND_FETCH_REQ in the encoding the device was granted.
    ops: (u32, u32),
    /// Batch mode: SQEs built for the next submission (reused: no allocation per I/O).
    sqes: Vec<io_uring::squeue::Entry>,
}

impl Queue<'_> {
    fn open<'a>(
        cdev: &File,
        spec: &'a QueueSpec,
    ) -> Result<(Queue<'a>, Option<BufWriter<File>>), String> {
        if let Err(e) = pin(&spec.cpus) {
            eprintln!(
                "ublk-mem: queue {}: could not pin to CPUs {:?}: {e}",
                spec.q_id, spec.cpus
            );
        }
        if spec.sched_batch {
            if let Err(e) = sched_batch() {
                eprintln!(
                    "ublk-mem: queue {}: could not set SCHED_BATCH: {e}",
                    spec.q_id
                );
            }
        }
        let descs = Descriptors::map(cdev, spec.q_id, spec.depth)?;
        let data = DataPath::new(cdev, spec)?;
        let ring = queue_ring(cdev, spec)?;
        if spec.mode == IoMode::Batch && spec.copy != CopyMode::User {
            return Err(format!("queue {}: batched I/O needs USER_COPY", spec.q_id));
        }
        let batch = match spec.mode {
            IoMode::Batch => Some(BatchIo::new(&ring, spec.q_id, spec.depth)?),
            IoMode::PerTag => None,
        };
        let trace = match &spec.trace {
            Some(p) => {
                let f =
                    File::create(p).map_err(|e| format!("create trace {}: {e}", p.display()))?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                crate::trace::write_header(&mut w, spec)
                    .map_err(|e| format!("write trace {}: {e}", p.display()))?;
                Some(w)
            }
            None => None,
        };
        let ops = match spec.ioctl_encode {
            true => (
                sys::UBLK_U_IO_FETCH_REQ,
                sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ,
            ),
            false => (sys::UBLK_IO_FETCH_REQ, sys::UBLK_IO_COMMIT_AND_FETCH_REQ),
        };
        Ok((
            Queue {
                spec,
                fd: types::Fixed(0),
                descs,
                data,
                ring,
                batch,
                ops,
                sqes: Vec::with_capacity(4),
            },
            trace,
        ))
    }

    /// Turns the core's commands into SQEs (submitted by the next io_uring_enter).
    fn push(&mut self, cmds: &mut Vec<Command>) -> Result<(), String> {
        if let Some(b) = &mut self.batch {
            b.sqes(self.fd, cmds, &mut self.sqes);
            for sqe in self.sqes.drain(..) {
                // SAFETY: the SQE references our element lists, kept by BatchIo until the
                // command completes.
                unsafe { self.ring.submission().push(&sqe) }
                    .map_err(|_| format!("queue {}: submission queue full", self.spec.q_id))?;
            }
            return Ok(());
        }
        for c in cmds.drain(..) {
            let (op, tag, result) = match c {
                Command::Fetch { tag } => (self.ops.0, tag, 0),
                Command::CommitAndFetch { tag, result } => (self.ops.1, tag, result),
                Command::Prep { .. } | Command::Commit { .. } => {
                    unreachable!("a per-tag core emits no batch command")
                }
            };
            let io = ublksrv_io_cmd {
                q_id: self.spec.q_id,
                tag,
                result,
                addr: self.data.addr(tag),
            };
            let sqe = opcode::UringCmd16::new(self.fd, op)
                .cmd(crate::ctrl::as_bytes(&io).try_into().unwrap())
                .build()
                .user_data(tag as u64);
            // SAFETY: the SQE references only the command bytes (copied) and our buffers,
            // which live until the ring is dropped.
            unsafe { self.ring.submission().push(&sqe) }.map_err(|_| {
                format!(
                    "queue {}: submission queue full (more commands than tags?)",
                    self.spec.q_id
                )
            })?;
        }
        Ok(())
    }

    /// Hands one completion to the core with the tag's data path.
    fn complete(
        &mut self,
        core: &mut QueueCore,
        (tag, result): (u16, i32),
        mem: &mut MemView,
        cmds: &mut Vec<Command>,
        obs: &mut DaemonObserver,
    ) -> Result<(), String> {
        let desc = self.descs.get(tag);
        let r = match &mut self.data {
            DataPath::Buffers(b) => {
                core.on_completion(tag, result, &desc, b.tag(tag), mem, cmds, obs)
            }
            DataPath::UserCopy { fd, q_id, capacity } => {
                let mut uc = UserCopy {
                    fd: *fd,
                    pos: sys::user_copy_pos(*q_id, tag),
                    capacity: *capacity,
                };
                core.on_completion(tag, result, &desc, &mut uc, mem, cmds, obs)
            }
        };
        r.map_err(|e| e.to_string())
    }
}

impl Queue<'_> {
    /// Submits the commands that make the tags ready. Batch mode waits (bounded) for the
    /// PREP_IO_CMDS to be taken, then arms the multishot fetch: a refusal is reported before
    /// START_DEV rather than as a device that never starts.
    fn bring_up(&mut self, core: &mut QueueCore) -> Result<(), String> {
        let q_id = self.spec.q_id;
        let Some(b) = &self.batch else {
            return self
                .ring
                .submit()
                .map(drop)
                .map_err(|e| format!("queue {q_id}: submitting FETCH_REQs: {e}"));
        };
        let fetch = b.fetch_sqe(self.fd);
        crate::uring::enter_for(&self.ring.submitter(), 1, PREP_LIMIT)
            .map(drop)
            .map_err(|e| format!("queue {q_id}: submitting PREP_IO_CMDS: {e}"))?;
        let Some(c) = self.ring.completion().next() else {
            let s = PREP_LIMIT.as_secs();
            return Err(format!(
                "queue {q_id}: PREP_IO_CMDS not answered within {s} s"
            ));
        };
        debug_assert_eq!(Completion::of(c.user_data()), Some(Completion::Prep));
        self.batch
            .as_mut()
            .expect("batch")
            .list_done(Completion::Prep);
        core.on_prep_done(c.result()).map_err(|e| e.to_string())?;
        // SAFETY: the fetch SQE points at nothing of ours (the kernel picks a provided buffer).
        unsafe { self.ring.submission().push(&fetch) }
            .map_err(|_| format!("queue {q_id}: submission queue full"))?;
        self.ring
            .submit()
            .map(drop)
            .map_err(|e| format!("queue {q_id}: submitting FETCH_IO_CMDS: {e}"))
    }

    /// Batch mode: one completion of the queue's ring. Fetched tags go to the core like
    /// per-tag completions; list commands report back to it; a fetch that ended is re-armed
    /// unless the kernel aborted it.
    fn complete_batch(
        &mut self,
        core: &mut QueueCore,
        (user_data, result, flags): (u64, i32, u32),
        ctx: &mut (
            &mut MemView,
            &mut Vec<Command>,
            &mut DaemonObserver,
            &mut Vec<u16>,
        ),
    ) -> Result<(), String> {
        let (mem, cmds, obs, tags) = ctx;
        let b = self.batch.as_mut().expect("batch mode");
        match Completion::of(user_data) {
            Some(Completion::Fetch) => {
                b.take_fetched(result, flags, tags)?;
                for &tag in tags.iter() {
                    if tag >= self.spec.depth {
                        let d = self.spec.depth;
                        return Err(format!(
                            "queue {}: fetched tag {tag} beyond depth {d}",
                            self.spec.q_id
                        ));
                    }
                    self.complete(core, (tag, 0), mem, cmds, obs)?;
                }
                if io_uring::cqueue::more(flags) {
                    return Ok(());
                }
                match result {
                    sys::UBLK_IO_RES_ABORT => core.on_fetch_end(result, *obs),
                    r if r >= 0 || r == -libc::ENOBUFS => self.rearm_fetch()?,
                    r => {
                        return Err(format!(
                            "queue {}: FETCH_IO_CMDS failed: {r} ({})",
                            self.spec.q_id,
                            crate::core::errno_name(-r)
                        ))
                    }
                }
                Ok(())
            }
            Some(kind @ Completion::Commit { batch }) => {
                b.list_done(kind);
                core.on_commit_done(batch, result, batch::ELEM_BYTES)
                    .map_err(|e| e.to_string())
            }
            Some(Completion::Prep) | None => Err(format!(
                "queue {}: unexpected completion {user_data:#x} (result {result})",
                self.spec.q_id
            )),
        }
    }

    fn rearm_fetch(&mut self) -> Result<(), String> {
        let sqe = self.batch.as_ref().expect("batch mode").fetch_sqe(self.fd);
        // SAFETY: as in bring_up.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| format!("queue {}: submission queue full", self.spec.q_id))
    }
}

/// Longest the kernel may take to answer PREP_IO_CMDS (it answers inline: this is a backstop).
const PREP_LIMIT: Duration = Duration::from_secs(5);

/// The queue's ring, made by the queue thread that alone submits to it: task work (the
/// kernel handing us requests) runs only when the thread waits for completions, batched
/// (DEFER_TASKRUN), instead of interrupting it per request. /dev/ublkcN is registered as
/// fixed file 0.
fn queue_ring(cdev: &File, spec: &QueueSpec) -> Result<IoUring, String> {
    let entries = (spec.depth as u32).next_power_of_two();
    let mut b = IoUring::builder();
    if std::env::var_os("UBLK_MEM_PLAIN_RING").is_none() {
        b.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
    }
    let ring = b
        .build(entries)
        .map_err(|e| format!("queue {}: io_uring setup: {e}", spec.q_id))?;
    ring.submitter()
        .register_files(&[cdev.as_raw_fd()])
        .map_err(|e| {
            format!(
                "queue {}: registering /dev/ublkc{}: {e}",
                spec.q_id, spec.dev_id
            )
        })?;
    Ok(ring)
}

/// Runs one queue until every tag is aborted or `stop_at` (set by the main thread once it
/// sent STOP_DEV) passes. `ready` is called once all fetches are submitted.
pub fn run_queue(
    cdev: &File,
    spec: &QueueSpec,
    mut mem: MemView,
    shared: &QueueShared,
    stop_at: &AtomicU64,
    epoch: Instant,
    ready: impl FnOnce(Result<(), String>),
) -> Result<QueueExit, String> {
    crate::planted::plant_from_env();
    let (mut q, trace) = match Queue::open(cdev, spec) {
        Ok(x) => x,
        Err(e) => {
            ready(Err(e.clone()));
            return Err(e);
        }
    };
    let mut obs = DaemonObserver {
        shared,
        trace,
        trace_error: None,
    };
    let cfg = QueueConfig {
        q_id: spec.q_id,
        depth: spec.depth,
        max_io_bytes: spec.max_io_bytes,
        dev_sectors: spec.dev_sectors,
        fault: spec.fault,
        inflight: spec.inflight.clone(),
        recovered: spec.recovered,
        mode: spec.mode,
    };
    let mut cmds: Vec<Command> = Vec::with_capacity(spec.depth as usize);
    let mut core = QueueCore::new(cfg, &mut cmds, &mut obs);
    if let Err(msg) = q.push(&mut cmds).and_then(|()| q.bring_up(&mut core)) {
        ready(Err(msg.clone()));
        return Err(msg);
    }
    ready(Ok(()));
    let mut counts = WaitCounts::default();
    let early = serve(
        &mut q,
        &mut core,
        &mut mem,
        &mut cmds,
        &mut obs,
        stop_at,
        epoch,
        &mut counts,
    )?;
    if let Some(mut w) = obs.trace.take() {
        let _ = w.flush();
    }
    if let Some(e) = obs.trace_error {
        eprintln!("ublk-mem: queue {}: trace stopped: {e}", spec.q_id);
    }
    shared.finished.store(true, Ordering::SeqCst);
    Ok(QueueExit {
        q_id: spec.q_id,
        stats: core.stats(),
        early,
        counts,
    })
}

/// Hands one wait's completions to the core (and batch mode's collected commits to the
/// ring); returns how many completions the next wait asks for.
fn handle(
    q: &mut Queue,
    core: &mut QueueCore,
    completions: &[(u64, i32, u32)],
    (mem, cmds, obs, tags): (
        &mut MemView,
        &mut Vec<Command>,
        &mut DaemonObserver,
        &mut Vec<u16>,
    ),
) -> Result<usize, String> {
    if q.batch.is_some() {
        // One fetch completion already carries every tag the kernel had: no gathering. The
        // next wait is for the commits just flushed (the kernel answers them while taking
        // them) and one more: the next fetch completion, in one io_uring_enter.
        let mut ctx = (mem, &mut *cmds, obs, tags);
        for &c in completions {
            q.complete_batch(core, c, &mut ctx)?;
        }
        core.flush(cmds);
        return Ok(core.commits_in_flight() + 1);
    }
    for &(user_data, result, _) in completions {
        q.complete(core, (user_data as u16, result), mem, cmds, obs)?;
    }
    Ok((completions.len() / 2).clamp(1, (q.spec.depth as usize / 2).max(1)))
}

/// The loop: one io_uring_enter submits the previous batch's commands and waits for
/// completions; each goes to the core. Ends when every tag is aborted (None) or early (why).
/// `counts` adds up the waits.
#[allow(clippy::too_many_arguments)]
fn serve(
    q: &mut Queue,
    core: &mut QueueCore,
    mem: &mut MemView,
    cmds: &mut Vec<Command>,
    obs: &mut DaemonObserver,
    stop_at: &AtomicU64,
    epoch: Instant,
    counts: &mut WaitCounts,
) -> Result<Option<String>, String> {
    let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(q.spec.depth as usize);
    let mut tags: Vec<u16> = Vec::with_capacity(q.spec.depth as usize);
    let mut stopping = false;
    let mut want = 1usize;
    loop {
        let limit = if want > 1 { GATHER } else { POLL };
        match crate::uring::enter_for(&q.ring.submitter(), want, limit) {
            Ok(short) => counts.short += short as u64,
            Err(e) => return Ok(Some(format!("io_uring_enter: {e}"))),
        }
        completions.clear();
        completions.extend(
            q.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        counts.waits += 1;
        counts.completions += completions.len() as u64;
        want = handle(
            q,
            core,
            &completions,
            (&mut *mem, &mut *cmds, &mut *obs, &mut tags),
        )?;
        obs.shared
            .completions
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
        q.push(cmds)?;
        if core.all_aborted() {
            // Batch mode: commits flushed with the abort still go out (per-tag has none left).
            q.ring
                .submit()
                .map_err(|e| format!("queue {}: submitting the last commits: {e}", q.spec.q_id))?;
            return Ok(None);
        }
        if q.spec.recoverable && core.aborted_any() {
            q.spec.aborting.store(true, Ordering::SeqCst);
        }
        if q.spec.recoverable && q.spec.aborting.load(Ordering::SeqCst) && core.holds_no_request() {
            q.ring
                .submit()
                .map_err(|e| format!("queue {}: submitting the last commits: {e}", q.spec.q_id))?;
            return Ok(None);
        }
        let stop = stop_at.load(Ordering::Relaxed);
        if stop != 0 && !stopping {
            // Shutting down: a request held by fault injection must not keep STOP_DEV waiting.
            stopping = true;
            if core.begin_shutdown(cmds, obs) > 0 {
                core.flush(cmds);
                q.push(cmds)?;
            }
        }
        if stop != 0 && epoch.elapsed().as_millis() as u64 >= stop {
            let held: Vec<u16> = (0..q.spec.depth)
                .filter(|t| core.state(*t) != TagState::Aborted)
                .collect();
            return Ok(Some(format!(
                "{} tag(s) not aborted by the kernel in time: {:?}",
                held.len(),
                &held[..held.len().min(16)]
            )));
        }
    }
}
