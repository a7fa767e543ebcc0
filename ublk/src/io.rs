//! The data path: one thread per queue, each with its own io_uring, driving a [`QueueCore`].
//!
//! The thread maps its queue's descriptors, allocates its tags' I/O buffers, submits the
//! FETCH_REQ of every tag itself (the kernel requires a tag's commands to come from the
//! queue's thread) and only then reports ready; START_DEV comes after every queue is ready.
//! Per loop: one io_uring_enter submits all commands of the previous batch and waits (at most
//! POLL) for completions. No allocation on the per-I/O path.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use crate::core::{Command, Event, Fault, Observer, QueueConfig, QueueCore, Stats, TagState};
use crate::mem::MemView;
use crate::sys::{self, ublksrv_io_cmd, ublksrv_io_desc};

/// Longest a queue thread blocks in the kernel before re-checking its stop deadline.
const POLL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub dev_id: u32,
    pub q_id: u16,
    pub depth: u16,
    pub max_io_bytes: u32,
    pub dev_sectors: u64,
    /// Device flags as granted by ADD_DEV: decides the I/O command encoding.
    pub ioctl_encode: bool,
    pub cpus: Vec<usize>,
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

/// Per-tag I/O buffers: one anonymous mapping, page aligned, touched lazily.
struct Buffers {
    ptr: *mut u8,
    len: usize,
    per_tag: usize,
}

impl Buffers {
    fn new(depth: u16, per_tag: u32) -> Result<Buffers, String> {
        let len = depth as usize * per_tag as usize;
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
            return Err(format!(
                "allocating {len} bytes of I/O buffers: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Buffers {
            ptr: ptr as *mut u8,
            len,
            per_tag: per_tag as usize,
        })
    }

    fn addr(&self, tag: u16) -> u64 {
        self.ptr as u64 + (tag as usize * self.per_tag) as u64
    }

    fn tag(&mut self, tag: u16) -> &mut [u8] {
        // SAFETY: tag < depth (checked by the core); slices of distinct tags never overlap.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(tag as usize * self.per_tag), self.per_tag)
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
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

/// How a queue thread ended.
#[derive(Debug)]
pub struct QueueExit {
    pub q_id: u16,
    pub stats: Stats,
    /// None: every tag was aborted (clean). Some: why the loop stopped early.
    pub early: Option<String>,
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
    let setup = || -> Result<_, String> {
        if let Err(e) = pin(&spec.cpus) {
            eprintln!(
                "ublk-mem: queue {}: could not pin to CPUs {:?}: {e}",
                spec.q_id, spec.cpus
            );
        }
        let descs = Descriptors::map(cdev, spec.q_id, spec.depth)?;
        let bufs = Buffers::new(spec.depth, spec.max_io_bytes)?;
        let ring = IoUring::builder()
            .build((spec.depth as u32).next_power_of_two())
            .map_err(|e| format!("queue {}: io_uring setup: {e}", spec.q_id))?;
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
        Ok((descs, bufs, ring, trace))
    };
    let (descs, mut bufs, mut ring, trace) = match setup() {
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
    let (fetch_op, commit_op) = if spec.ioctl_encode {
        (
            sys::UBLK_U_IO_FETCH_REQ,
            sys::UBLK_U_IO_COMMIT_AND_FETCH_REQ,
        )
    } else {
        (sys::UBLK_IO_FETCH_REQ, sys::UBLK_IO_COMMIT_AND_FETCH_REQ)
    };
    let cfg = QueueConfig {
        q_id: spec.q_id,
        depth: spec.depth,
        max_io_bytes: spec.max_io_bytes,
        dev_sectors: spec.dev_sectors,
        fault: spec.fault,
        inflight: spec.inflight.clone(),
    };
    let mut cmds: Vec<Command> = Vec::with_capacity(spec.depth as usize);
    let mut core = QueueCore::new(cfg, &mut cmds, &mut obs);
    let fd = types::Fd(cdev.as_raw_fd());
    let push =
        |ring: &mut IoUring, cmds: &mut Vec<Command>, bufs: &Buffers| -> Result<(), String> {
            for c in cmds.drain(..) {
                let (op, tag, result) = match c {
                    Command::Fetch { tag } => (fetch_op, tag, 0),
                    Command::CommitAndFetch { tag, result } => (commit_op, tag, result),
                };
                let io = ublksrv_io_cmd {
                    q_id: spec.q_id,
                    tag,
                    result,
                    addr: bufs.addr(tag),
                };
                let sqe = opcode::UringCmd16::new(fd, op)
                    .cmd(crate::ctrl::as_bytes(&io).try_into().unwrap())
                    .build()
                    .user_data(tag as u64);
                // SAFETY: the SQE references only the command bytes (copied) and our buffers,
                // which live until the ring is dropped.
                unsafe { ring.submission().push(&sqe) }.map_err(|_| {
                    format!(
                        "queue {}: submission queue full (more commands than tags?)",
                        spec.q_id
                    )
                })?;
            }
            Ok(())
        };
    push(&mut ring, &mut cmds, &bufs)?;
    if let Err(e) = ring.submit() {
        let msg = format!("queue {}: submitting FETCH_REQs: {e}", spec.q_id);
        ready(Err(msg.clone()));
        return Err(msg);
    }
    ready(Ok(()));

    let mut completions: Vec<(u16, i32)> = Vec::with_capacity(spec.depth as usize);
    let mut stopping = false;
    let early = loop {
        if let Err(e) = crate::uring::enter_bounded(&ring.submitter(), POLL) {
            break Some(format!("io_uring_enter: {e}"));
        }
        completions.clear();
        completions.extend(
            ring.completion()
                .map(|c| (c.user_data() as u16, c.result())),
        );
        for &(tag, result) in &completions {
            let desc = descs.get(tag);
            core.on_completion(
                tag,
                result,
                &desc,
                bufs.tag(tag),
                &mut mem,
                &mut cmds,
                &mut obs,
            )
            .map_err(|e| e.to_string())?;
        }
        shared
            .completions
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
        push(&mut ring, &mut cmds, &bufs)?;
        if core.all_aborted() {
            break None;
        }
        let stop = stop_at.load(Ordering::Relaxed);
        if stop != 0 && !stopping {
            // Shutting down: a request held by fault injection must not keep STOP_DEV waiting.
            stopping = true;
            if core.begin_shutdown(&mut cmds, &mut obs) > 0 {
                push(&mut ring, &mut cmds, &bufs)?;
            }
        }
        if stop != 0 && epoch.elapsed().as_millis() as u64 >= stop {
            let held: Vec<u16> = (0..spec.depth)
                .filter(|t| core.state(*t) != TagState::Aborted)
                .collect();
            break Some(format!(
                "{} tag(s) not aborted by the kernel in time: {:?}",
                held.len(),
                &held[..held.len().min(16)]
            ));
        }
    };
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
    })
}
