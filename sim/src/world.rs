//! The simulated world: a deterministic, single-threaded model of the kernel side of one ublk
//! device, driving the daemon's real `ublk::core::QueueCore` (one per queue) and its real
//! bring-up order, with a workload of block requests whose data uses blkio's block format.
//!
//! Each step, the world lists the events that could happen next; a scheduler picks one. The
//! kernel model checks the protocol at every command, data at every read and at the end, and
//! liveness whenever nothing can happen while work is pending.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blkio::block;
use ublk::core::{self, Bringup, Command, IoMode, NoObserver, QueueConfig, QueueCore, VecBacking};
use ublk::sys::{self, ublksrv_io_desc};

use crate::workload::{Op, Request};

/// Bytes per verifiable block in the simulation (a sector: cheap to fill and check).
pub const UNIT: u64 = 512;

#[derive(Clone, Debug)]
pub struct Config {
    pub queues: u16,
    pub depth: u16,
    pub dev_sectors: u64,
    pub max_io_bytes: u32,
    pub seed: u64,
    /// User recovery (REISSUE): the server may die this many times; each time the kernel
    /// requeues what the dead server held and a new server takes the device over.
    pub crashes: u32,
    /// Per-tag commands, or the batched protocol (UBLK_F_BATCH_IO).
    pub mode: IoMode,
}

/// Something that can happen next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The server's main thread performs its next bring-up step.
    Bringup,
    /// The kernel finishes START_DEV (all fetches are in).
    StartDone,
    /// The block layer hands the next request to queue `q`.
    Dispatch(u16),
    /// The kernel takes the command the server submitted for (q, tag).
    Kernel(u16, u16),
    /// The server's queue thread handles the completion posted for (q, tag).
    Deliver(u16, u16),
    /// STOP_DEV: the server begins shutdown and the kernel stops the device.
    Stop,
    /// The server process dies (SIGKILL): its queues and unhandled completions are gone.
    Crash,
    /// A new server process takes the quiesced device over (START_USER_RECOVERY).
    Recover,
    /// Batch mode: the kernel takes queue `q`'s oldest PREP/COMMIT_IO_CMDS.
    BatchKernel(u16),
    /// Batch mode: the kernel posts a fetch completion for `q` (the dispatched tags, or the
    /// abort once the device stopped).
    Post(u16),
    /// Batch mode: `q`'s server handles its oldest fetch completion.
    Fetched(u16),
    /// Batch mode: `q`'s server handles its oldest COMMIT_IO_CMDS completion.
    Committed(u16),
}

impl Event {
    /// The actor an event belongs to (for PCT priorities).
    pub fn actor(&self, depth: u16) -> usize {
        match *self {
            Event::Bringup | Event::StartDone | Event::Stop | Event::Crash | Event::Recover => 0,
            Event::Dispatch(q) => 1 + q as usize,
            Event::Kernel(q, t) | Event::Deliver(q, t) => {
                1 + 64
                    + (q as usize * depth as usize + t as usize) * 2
                    + matches!(self, Event::Deliver(..)) as usize
            }
            // Batch mode has no per-tag actors: these follow the per-queue dispatchers.
            Event::BatchKernel(q) => 1 + 64 + q as usize * 4,
            Event::Post(q) => 1 + 64 + q as usize * 4 + 1,
            Event::Fetched(q) => 1 + 64 + q as usize * 4 + 2,
            Event::Committed(q) => 1 + 64 + q as usize * 4 + 3,
        }
    }
}

/// Which check fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A command the kernel would reject or mis-handle (two outstanding, commit without request, re-fetch after abort).
    Protocol(String),
    /// Nothing can happen while work is pending: a hang, with the blocked state.
    Liveness(String),
    /// A read or the final store does not match the reference model.
    Data(String),
    /// START_DEV can never complete (fetches missing).
    StartOrder(String),
    /// The device-wide in-flight counter is wrong at quiescence.
    Counter(String),
    /// The core itself reported an error.
    Core(String),
}

impl Violation {
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Protocol(_) => "protocol",
            Violation::Liveness(_) => "liveness",
            Violation::Data(_) => "data",
            Violation::StartOrder(_) => "start-order",
            Violation::Counter(_) => "counter",
            Violation::Core(_) => "core",
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Violation::Protocol(m)
            | Violation::Liveness(m)
            | Violation::Data(m)
            | Violation::StartOrder(m)
            | Violation::Counter(m)
            | Violation::Core(m) => m,
        }
    }
}

#[path = "world_batch.rs"]
mod batch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    Fetch,
    Commit(i32),
}

/// The kernel's view of one tag.
#[derive(Clone, Debug, Default)]
struct KTag {
    /// Submitted by the server, not yet taken by the kernel.
    submitted: Option<Cmd>,
    /// The kernel holds a fetch-type command: the tag can receive a request.
    armed: bool,
    /// Request handed to the server, waiting for its commit.
    req: Option<usize>,
    /// Batch mode: the request's tag was posted in a fetch completion (the kernel counts the
    /// tag as the server's from then on; before, it waits in the queue's FIFO).
    posted: bool,
    /// Completion posted to the server, not yet handled: Some(result).
    cqe: Option<i32>,
    aborted: bool,
}

/// One write (or zeroing) that may be what a unit holds. A unit may hold any entry not
/// dominated: E is dominated once some F covering the unit completed after being dispatched
/// after E completed (F certainly landed later). Time is the step counter.
#[derive(Clone, Debug)]
struct Entry {
    /// 0 = zeroes (the initial content, a discard or write-zeroes), else the write's seq.
    seq: u64,
    req: usize,
    dispatched: u64,
    completed: Option<u64>,
}

/// What a read may legally return for one unit.
#[derive(Clone, Debug, Default)]
struct Allowed {
    zero: bool,
    seqs: Vec<u64>,
}

impl Allowed {
    fn add(&mut self, seq: u64) {
        if seq == 0 {
            self.zero = true;
        } else if !self.seqs.contains(&seq) {
            self.seqs.push(seq);
        }
    }
}

pub struct World {
    cfg: Config,
    plan: Vec<Bringup>,
    plan_pos: usize,
    /// START_DEV sent and not finished.
    starting: bool,
    started: bool,
    stopping: bool,
    stop_done: bool,
    cores: Vec<Option<QueueCore>>,
    ktags: Vec<Vec<KTag>>,
    bufs: Vec<Vec<Vec<u8>>>,
    /// The descriptor the kernel wrote for each tag's current request.
    desc_for: Vec<Vec<ublksrv_io_desc>>,
    store: VecBacking,
    inflight: Arc<AtomicU64>,
    requests: Vec<Request>,
    next_req: usize,
    /// Per request: completed with this result.
    done: Vec<Option<i32>>,
    /// Per unit: the writes it may hold.
    expect: Vec<Vec<Entry>>,
    /// Per in-flight read: what each of its units may return (grows while it is in flight).
    reads: Vec<Option<Vec<Allowed>>>,
    /// Indices of the reads in flight.
    reads_in_flight: Vec<usize>,
    cmds: Vec<Command>,
    /// The server died and no new one has taken over yet (the device is quiesced).
    quiesced: bool,
    /// Requests the dead server held, to be issued again (REISSUE), in order.
    requeued: Vec<usize>,
    /// Batch mode: the kernel side of each queue's batched commands.
    bq: Vec<batch::BQueue>,
    /// Crashes so far (each followed by a recovery).
    pub recoveries: u32,
    pub steps: u64,
    pub completed: u64,
}

impl World {
    pub fn new(cfg: Config, requests: Vec<Request>) -> World {
        assert!(cfg.queues > 0 && cfg.depth > 0 && cfg.queues <= 64);
        let units = (cfg.dev_sectors * 512 / UNIT) as usize;
        let n = requests.len();
        World {
            plan: core::bringup(),
            plan_pos: 0,
            starting: false,
            started: false,
            stopping: false,
            stop_done: false,
            cores: (0..cfg.queues).map(|_| None).collect(),
            ktags: (0..cfg.queues)
                .map(|_| vec![KTag::default(); cfg.depth as usize])
                .collect(),
            bufs: (0..cfg.queues)
                .map(|_| {
                    (0..cfg.depth)
                        .map(|_| vec![0u8; cfg.max_io_bytes as usize])
                        .collect()
                })
                .collect(),
            desc_for: (0..cfg.queues)
                .map(|_| vec![ublksrv_io_desc::default(); cfg.depth as usize])
                .collect(),
            store: VecBacking(vec![0u8; (cfg.dev_sectors * 512) as usize]),
            inflight: Arc::new(AtomicU64::new(0)),
            requests,
            next_req: 0,
            done: vec![None; n],
            expect: vec![
                vec![Entry {
                    seq: 0,
                    req: usize::MAX,
                    dispatched: 0,
                    completed: Some(0)
                }];
                units
            ],
            reads: vec![None; n],
            reads_in_flight: Vec::new(),
            cmds: Vec::with_capacity(cfg.depth as usize * 2),
            quiesced: false,
            requeued: Vec::new(),
            bq: (0..cfg.queues).map(|_| batch::BQueue::default()).collect(),
            recoveries: 0,
            steps: 0,
            completed: 0,
            cfg,
        }
    }

    /// Every event that can happen now, in a stable order.
    pub fn enabled(&self, out: &mut Vec<Event>) {
        out.clear();
        if self.plan_pos < self.plan.len() && !self.starting {
            out.push(Event::Bringup);
        }
        if self.starting && self.all_armed() {
            out.push(Event::StartDone);
        }
        for (q, tags) in self.ktags.iter().enumerate() {
            let q = q as u16;
            if self.started
                && !self.stopping
                && self.next_for(q).is_some()
                && tags
                    .iter()
                    .any(|t| t.armed && t.req.is_none() && t.cqe.is_none())
            {
                out.push(Event::Dispatch(q));
            }
            for (t, k) in tags.iter().enumerate() {
                if k.submitted.is_some() {
                    out.push(Event::Kernel(q, t as u16));
                }
                if k.cqe.is_some() {
                    out.push(Event::Deliver(q, t as u16));
                }
            }
        }
        if self.cfg.mode == IoMode::Batch {
            self.enabled_batch(out);
        }
        let all_issued = self.next_req == self.requests.len() && self.requeued.is_empty();
        if self.started && !self.stopping && all_issued {
            out.push(Event::Stop);
        }
        let held = self.ktags.iter().flatten().any(|k| k.req.is_some());
        if self.started && !self.stopping && self.recoveries < self.cfg.crashes && held {
            out.push(Event::Crash);
        }
        if self.quiesced {
            out.push(Event::Recover);
        }
    }

    /// The request queue `q` gets next: one the dead server held first, else a new one.
    fn next_for(&self, q: u16) -> Option<usize> {
        let mine = |ri: &usize| self.requests[*ri].queue % self.cfg.queues == q;
        if let Some(ri) = self.requeued.iter().copied().find(mine) {
            return Some(ri);
        }
        let ri = self.next_req;
        (ri < self.requests.len() && mine(&ri)).then_some(ri)
    }

    fn all_armed(&self) -> bool {
        self.ktags.iter().all(|tags| {
            tags.iter()
                .all(|t| t.armed || t.req.is_some() || t.cqe.is_some())
        })
    }

    /// True once the device was stopped and everything settled.
    pub fn finished(&self) -> bool {
        self.stop_done
    }

    pub fn step(&mut self, e: Event) -> Result<(), Violation> {
        self.steps += 1;
        match e {
            Event::Bringup => self.bring_up(),
            Event::StartDone => {
                self.starting = false;
                self.started = true;
                Ok(())
            }
            Event::Dispatch(q) => self.dispatch(q),
            Event::Kernel(q, t) => self.kernel_take(q, t),
            Event::Deliver(q, t) => self.deliver(q, t),
            Event::BatchKernel(q) => self.batch_kernel(q),
            Event::Post(q) => {
                self.post(q);
                Ok(())
            }
            Event::Fetched(q) => self.fetched(q),
            Event::Committed(q) => self.committed(q),
            Event::Crash => {
                self.crash();
                Ok(())
            }
            Event::Recover => {
                // START_USER_RECOVERY: the new server brings its queues up in its own order.
                assert!(self.quiesced && self.cores.iter().all(Option::is_none));
                self.quiesced = false;
                self.plan = core::recovery_bringup();
                self.plan_pos = 0;
                Ok(())
            }
            Event::Stop => {
                self.stopping = true;
                for q in 0..self.cfg.queues {
                    if let Some(core) = self.cores[q as usize].as_mut() {
                        self.cmds.clear();
                        core.begin_shutdown(&mut self.cmds, &mut NoObserver);
                        core.flush(&mut self.cmds);
                        self.submit(q)?;
                    }
                }
                if self.cfg.mode == IoMode::Batch {
                    return Ok(()); // the fetch ends once no request is left (see `post`)
                }
                // Tags that hold a bare fetch are aborted at once; busy ones when they commit.
                for tags in self.ktags.iter_mut() {
                    for k in tags.iter_mut() {
                        if k.armed && k.req.is_none() && k.cqe.is_none() {
                            k.armed = false;
                            k.cqe = Some(sys::UBLK_IO_RES_ABORT);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The server's next bring-up step: every queue's core (its fetches, or its PREP_IO_CMDS
    /// and multishot fetch), or START_DEV / END_USER_RECOVERY.
    fn bring_up(&mut self) -> Result<(), Violation> {
        let step = self.plan[self.plan_pos];
        self.plan_pos += 1;
        if step == Bringup::StartDev {
            self.starting = true;
            return Ok(());
        }
        for q in 0..self.cfg.queues {
            let cfg = QueueConfig {
                q_id: q,
                depth: self.cfg.depth,
                max_io_bytes: self.cfg.max_io_bytes,
                dev_sectors: self.cfg.dev_sectors,
                fault: None,
                inflight: self.inflight.clone(),
                recovered: self.recoveries > 0,
                mode: self.cfg.mode,
            };
            self.cmds.clear();
            let core = QueueCore::new(cfg, &mut self.cmds, &mut NoObserver);
            self.cores[q as usize] = Some(core);
            self.submit(q)?;
            // The server arms its multishot fetch with the PREP_IO_CMDS.
            self.bq[q as usize].fetch_armed = self.cfg.mode == IoMode::Batch;
        }
        Ok(())
    }

    /// Moves the core's pending commands into the kernel's per-tag inboxes, checking the protocol.
    fn submit(&mut self, q: u16) -> Result<(), Violation> {
        if self.cfg.mode == IoMode::Batch {
            self.submit_batch(q);
            return Ok(());
        }
        for c in self.cmds.drain(..) {
            let (tag, cmd) = match c {
                Command::Fetch { tag } => (tag, Cmd::Fetch),
                Command::CommitAndFetch { tag, result } => (tag, Cmd::Commit(result)),
                Command::Prep { .. } | Command::Commit { .. } => {
                    return Err(Violation::Core(format!(
                        "queue {q}: a per-tag core emitted {c:?}"
                    )))
                }
            };
            let k = &mut self.ktags[q as usize][tag as usize];
            if k.aborted {
                return Err(Violation::Protocol(format!("queue {q} tag {tag}: {cmd:?} submitted after the kernel aborted the tag (re-fetch after abort)")));
            }
            if k.submitted.is_some() || k.armed || k.cqe.is_some() {
                return Err(Violation::Protocol(format!(
                    "queue {q} tag {tag}: {cmd:?} submitted while the tag already has an outstanding command (submitted {:?}, armed {}, completion pending {:?})",
                    k.submitted, k.armed, k.cqe
                )));
            }
            if matches!(cmd, Cmd::Commit(_)) && k.req.is_none() {
                return Err(Violation::Protocol(format!(
                    "queue {q} tag {tag}: COMMIT_AND_FETCH_REQ for a tag that holds no request"
                )));
            }
            if let (Cmd::Fetch, Some(r)) = (cmd, k.req) {
                return Err(Violation::Protocol(format!("queue {q} tag {tag}: FETCH_REQ while request {r} is still being served (tag reused before its commit)")));
            }
            k.submitted = Some(cmd);
        }
        Ok(())
    }

    fn kernel_take(&mut self, q: u16, t: u16) -> Result<(), Violation> {
        let k = &mut self.ktags[q as usize][t as usize];
        let cmd = k
            .submitted
            .take()
            .expect("enabled only with a submitted command");
        if let Cmd::Commit(result) = cmd {
            let r = k.req.take().expect("checked at submit");
            self.complete(r, q, t, result)?;
        }
        let k = &mut self.ktags[q as usize][t as usize];
        if self.stopping {
            k.cqe = Some(sys::UBLK_IO_RES_ABORT);
        } else {
            k.armed = true;
        }
        Ok(())
    }

    fn dispatch(&mut self, q: u16) -> Result<(), Violation> {
        let t = self.ktags[q as usize]
            .iter()
            .position(|k| k.armed && k.req.is_none() && k.cqe.is_none())
            .expect("enabled only with an armed tag") as u16;
        let ri = self.next_for(q).expect("enabled only with a request for q");
        let again = match self.requeued.iter().position(|r| *r == ri) {
            Some(at) => {
                self.requeued.remove(at);
                true
            }
            None => {
                self.next_req += 1;
                false
            }
        };
        let r = self.requests[ri];
        let (op, flags) = match r.op {
            Op::Read => (sys::UBLK_IO_OP_READ, 0),
            Op::Write => (sys::UBLK_IO_OP_WRITE, 0),
            Op::Flush => (sys::UBLK_IO_OP_FLUSH, 0),
            Op::Discard => (sys::UBLK_IO_OP_DISCARD, 0),
            Op::WriteZeroes => (sys::UBLK_IO_OP_WRITE_ZEROES, 0),
        };
        let desc = ublksrv_io_desc {
            op_flags: op as u32 | flags << 8,
            nr_sectors: r.sectors,
            start_sector: r.sector,
            addr: 0,
        };
        let (u0, nu) = (r.sector * 512 / UNIT, r.sectors as u64 * 512 / UNIT);
        match r.op {
            Op::Write => {
                let buf = &mut self.bufs[q as usize][t as usize];
                for i in 0..nu {
                    let off = (u0 + i) * UNIT;
                    block::fill_block(
                        &mut buf[(i * UNIT) as usize..((i + 1) * UNIT) as usize],
                        off,
                        self.cfg.seed,
                        ri as u64 + 1,
                    );
                }
                self.note_write(ri, u0, nu, ri as u64 + 1, again);
            }
            Op::Discard | Op::WriteZeroes => self.note_write(ri, u0, nu, 0, again),
            Op::Read if again => {} // its allowed set kept growing while it waited
            Op::Read => {
                let snap = (u0..u0 + nu)
                    .map(|u| {
                        let mut a = Allowed::default();
                        for e in &self.expect[u as usize] {
                            a.add(e.seq);
                        }
                        a
                    })
                    .collect();
                self.reads[ri] = Some(snap);
                self.reads_in_flight.push(ri);
            }
            Op::Flush => {}
        }
        self.desc_for[q as usize][t as usize] = desc;
        let k = &mut self.ktags[q as usize][t as usize];
        k.armed = false;
        k.req = Some(ri);
        match self.cfg.mode {
            IoMode::PerTag => k.cqe = Some(sys::UBLK_IO_RES_OK),
            IoMode::Batch => self.bq[q as usize].fifo.push_back(t),
        }
        Ok(())
    }

    /// A write (seq > 0) or zeroing (seq 0) of units u0.. is dispatched now (`again`: issued
    /// anew after a crash; it lands again, so it is as recent as this dispatch).
    fn note_write(&mut self, ri: usize, u0: u64, nu: u64, seq: u64, again: bool) {
        let now = self.steps;
        for u in u0..u0 + nu {
            let entries = &mut self.expect[u as usize];
            match entries.iter_mut().find(|e| e.req == ri) {
                Some(e) if again => e.dispatched = now,
                _ => entries.push(Entry {
                    seq,
                    req: ri,
                    dispatched: now,
                    completed: None,
                }),
            }
        }
        // Reads in flight over these units may now see it too.
        for &r in &self.reads_in_flight {
            if let Some(units) = &mut self.reads[r] {
                let rr = self.requests[r];
                let (a, n) = (rr.sector * 512 / UNIT, rr.sectors as u64 * 512 / UNIT);
                for u in u0.max(a)..(u0 + nu).min(a + n) {
                    units[(u - a) as usize].add(seq);
                }
            }
        }
    }

    /// Write request `ri` completed now: it dominates every entry that completed before it started.
    fn note_write_done(&mut self, ri: usize) {
        let now = self.steps;
        let r = self.requests[ri];
        let (u0, nu) = (r.sector * 512 / UNIT, r.sectors as u64 * 512 / UNIT);
        for u in u0..u0 + nu {
            let entries = &mut self.expect[u as usize];
            let Some(me) = entries.iter_mut().find(|e| e.req == ri) else {
                continue;
            };
            me.completed = Some(now);
            let started = me.dispatched;
            entries.retain(|e| !matches!(e.completed, Some(c) if c < started));
        }
    }

    fn deliver(&mut self, q: u16, t: u16) -> Result<(), Violation> {
        let k = &mut self.ktags[q as usize][t as usize];
        let result = k.cqe.take().expect("enabled only with a posted completion");
        if result == sys::UBLK_IO_RES_ABORT {
            k.aborted = true;
        }
        self.cmds.clear();
        self.serve_tag(q, t, result)?;
        self.submit(q)?;
        self.finish_if_all_aborted()
    }

    /// The server's queue core handles `t`'s completion (`result`) with the tag's descriptor and
    /// buffer; its commands collect in `self.cmds`.
    fn serve_tag(&mut self, q: u16, t: u16, result: i32) -> Result<(), Violation> {
        let desc = self.desc_for[q as usize][t as usize];
        let core = self.cores[q as usize]
            .as_mut()
            .expect("completions only after the queue exists");
        core.on_completion(
            t,
            result,
            &desc,
            &mut self.bufs[q as usize][t as usize][..],
            &mut self.store,
            &mut self.cmds,
            &mut NoObserver,
        )
        .map_err(|e| Violation::Core(e.to_string()))
    }

    /// After the device stopped, once every tag was aborted: the end, and the final checks.
    fn finish_if_all_aborted(&mut self) -> Result<(), Violation> {
        if self.stopping && self.ktags.iter().all(|tags| tags.iter().all(|k| k.aborted)) {
            // Each core's last event was an abort, which made any deferred counter store visible.
            self.stop_done = true;
            self.final_checks()?;
        }
        Ok(())
    }

    /// The server dies: its queues, its unhandled completions and the commands the kernel
    /// has not taken are gone. The kernel requeues every request the server held (REISSUE),
    /// forgets the tags, and the device waits quiesced for a new server.
    fn crash(&mut self) {
        self.cores.iter_mut().for_each(|c| *c = None);
        for tags in self.ktags.iter_mut() {
            for k in tags.iter_mut() {
                if let Some(ri) = k.req {
                    self.requeued.push(ri);
                }
                *k = KTag::default();
            }
        }
        self.bq
            .iter_mut()
            .for_each(|b| *b = batch::BQueue::default());
        // The dead server's in-flight counter died with it.
        self.inflight.store(0, Ordering::SeqCst);
        self.started = false;
        self.quiesced = true;
        self.recoveries += 1;
    }

    /// The kernel completes request `ri` with `result` (bytes or -errno).
    fn complete(&mut self, ri: usize, q: u16, t: u16, result: i32) -> Result<(), Violation> {
        if let Some(first) = self.done[ri] {
            return Err(Violation::Protocol(format!(
                "request {ri} completed twice to the block layer (first with {first}, now {result} from queue {q} tag {t})"
            )));
        }
        let r = self.requests[ri];
        let bytes = r.sectors as i32 * 512;
        let want = match r.op {
            Op::Read | Op::Write => bytes,
            _ => 0,
        };
        if result != want {
            return Err(Violation::Data(format!(
                "request {ri} ({:?} sector {} +{}) completed with {result}, expected {want}",
                r.op, r.sector, r.sectors
            )));
        }
        if let Some(recorded) = r.expect_result.filter(|x| *x != result) {
            return Err(Violation::Data(format!("request {ri} ({:?} sector {} +{}): the trace recorded result {recorded}, the core now gives {result}", r.op, r.sector, r.sectors)));
        }
        self.done[ri] = Some(result);
        self.completed += 1;
        match r.op {
            Op::Write | Op::Discard | Op::WriteZeroes => self.note_write_done(ri),
            Op::Read => {
                let units = self.reads[ri].take().expect("read in flight");
                self.reads_in_flight.retain(|r| *r != ri);
                let buf = &self.bufs[q as usize][t as usize];
                let u0 = r.sector * 512 / UNIT;
                for (i, a) in units.iter().enumerate() {
                    let data = &buf[i * UNIT as usize..(i + 1) * UNIT as usize];
                    if let Err(m) = self.check_unit(data, u0 + i as u64, a) {
                        return Err(Violation::Data(format!(
                            "read request {ri} (queue {q} tag {t}, sector {} +{}): {m}",
                            r.sector, r.sectors
                        )));
                    }
                }
            }
            Op::Flush => {}
        }
        Ok(())
    }

    fn check_unit(&self, data: &[u8], u: u64, a: &Allowed) -> Result<(), String> {
        let off = u * UNIT;
        if a.zero && block::header(data).is_none() && block::is_zero(data) {
            return Ok(());
        }
        if a.seqs
            .iter()
            .any(|s| block::check(data, off, self.cfg.seed, Some(*s)) == block::Verdict::Ok)
        {
            return Ok(());
        }
        let want = a.seqs.last().copied();
        Err(block::check(data, off, self.cfg.seed, want).describe(off, want))
    }

    /// After stop: every request answered, the store matches the model, the counter is zero.
    fn final_checks(&mut self) -> Result<(), Violation> {
        if let Some(ri) = (0..self.requests.len()).find(|r| self.done[*r].is_none()) {
            return Err(Violation::Liveness(format!(
                "request {ri} was dispatched but never answered before the device stopped"
            )));
        }
        for u in 0..self.expect.len() as u64 {
            let data = &self.store.0[(u * UNIT) as usize..((u + 1) * UNIT) as usize];
            let mut a = Allowed::default();
            for e in &self.expect[u as usize] {
                a.add(e.seq);
            }
            if let Err(m) = self.check_unit(data, u, &a) {
                return Err(Violation::Data(format!("final store: {m}")));
            }
        }
        let c = self.inflight.load(Ordering::SeqCst);
        if c != 0 {
            return Err(Violation::Counter(format!("the device-wide in-flight counter is {c} after every request completed (a lost update)")));
        }
        Ok(())
    }

    /// Describes the blocked state for a liveness report (an offline freeze-frame).
    pub fn blocked_state(&self) -> Violation {
        if self.starting {
            let missing: usize = self
                .ktags
                .iter()
                .map(|t| t.iter().filter(|k| !k.armed).count())
                .sum();
            let cmd = match self.recoveries {
                0 => "START_DEV",
                _ => "END_USER_RECOVERY",
            };
            return Violation::StartOrder(format!(
                "{cmd} waits for {missing} FETCH_REQ(s) that were never submitted (bring-up order {:?}, at step {})",
                self.plan, self.plan_pos
            ));
        }
        let mut lines = Vec::new();
        for (q, tags) in self.ktags.iter().enumerate() {
            for (t, k) in tags.iter().enumerate() {
                let server = self.cores[q]
                    .as_ref()
                    .map(|c| c.state(t as u16).name())
                    .unwrap_or("no queue");
                if k.req.is_some() || !k.aborted {
                    lines.push(format!(
                        "q{q} t{t}: kernel {{req {:?}, armed {}, cqe {:?}}} server {server}",
                        k.req, k.armed, k.cqe
                    ));
                }
            }
        }
        let pending: Vec<usize> = (0..self.next_req)
            .filter(|r| self.done[*r].is_none())
            .take(8)
            .collect();
        Violation::Liveness(format!(
            "hang: nothing can happen, {} request(s) unanswered (e.g. {pending:?}), stopping {}; {}",
            (0..self.next_req).filter(|r| self.done[*r].is_none()).count(),
            self.stopping,
            lines.into_iter().take(6).collect::<Vec<_>>().join("; ")
        ))
    }
}
