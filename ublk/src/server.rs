//! Device lifecycle of a ublk-mem server, synchronous and in protocol order:
//!
//! GET_FEATURES → ADD_DEV → SET_PARAMS → open /dev/ublkcN → one thread per queue (pin, map
//! descriptors, submit every FETCH_REQ, report ready) → START_DEV → serve until a signal →
//! STOP_DEV → queues see aborts → close → DEL_DEV. Every step is bounded; any failure after
//! ADD_DEV still deletes the device. SIGINT/SIGTERM shut down within SHUTDOWN_BUDGET.
//!
//! `recover` (user recovery, see `recovery.rs`) takes a dead server's device over instead of
//! adding one: GET_DEV_INFO/GET_PARAMS → START_USER_RECOVERY → the same queues →
//! END_USER_RECOVERY in place of START_DEV; it serves and shuts down like `add`. A device
//! whose every tag the kernel aborted from outside (stopped, or quiesced for a new server) is
//! left as it is.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::contract;
use crate::core::{Bringup, Fault, IoMode, TagState};
use crate::ctrl::{self, Control};
use crate::io::{run_queue, CopyMode, QueueExit, QueueShared, QueueSpec};
use crate::mem::SharedMem;
use crate::recovery;
use crate::sys;

/// SIGTERM to exit: STOP_DEV, drain, DEL_DEV all fit in this.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(1800);
const READY_LIMIT: Duration = Duration::from_secs(10);

/// Largest single request ublk-mem accepts unless told otherwise (`--max-io`).
pub const DEFAULT_MAX_IO_BYTES: u32 = 512 << 10;

/// Parses ublk-mem's `--fault` syntax: `stall-tag=Q:T:after=N` → (queue, fault).
pub fn parse_fault(s: &str) -> Result<(u16, Fault), String> {
    let bad = || format!("{s:?}: expected stall-tag=Q:T:after=N, e.g. stall-tag=0:5:after=100");
    let spec = s.strip_prefix("stall-tag=").ok_or_else(bad)?;
    let parts: Vec<&str> = spec.split(':').collect();
    let [q, t, after] = parts[..] else {
        return Err(bad());
    };
    let after = after.strip_prefix("after=").ok_or_else(bad)?;
    Ok((
        q.parse().map_err(|_| bad())?,
        Fault::StallTag {
            tag: t.parse().map_err(|_| bad())?,
            after: after.parse().map_err(|_| bad())?,
        },
    ))
}

/// `--copy-mode`: how request data reaches the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyChoice {
    /// USER_COPY when the kernel offers it (one copy), else the tag buffers (two).
    #[default]
    Auto,
    Buffer,
    User,
}

pub fn parse_copy_mode(s: &str) -> Result<CopyChoice, String> {
    match s {
        "auto" => Ok(CopyChoice::Auto),
        "buffer" => Ok(CopyChoice::Buffer),
        "user" => Ok(CopyChoice::User),
        _ => Err(format!("{s:?}: expected auto, buffer or user")),
    }
}

/// `--io-mode`: per-tag commands, or batched ones (UBLK_F_BATCH_IO).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoChoice {
    /// BATCH_IO when the kernel offers it and USER_COPY is used, else per tag.
    #[default]
    Auto,
    PerTag,
    Batch,
}

pub fn parse_io_mode(s: &str) -> Result<IoChoice, String> {
    match s {
        "auto" => Ok(IoChoice::Auto),
        "per-tag" => Ok(IoChoice::PerTag),
        "batch" => Ok(IoChoice::Batch),
        _ => Err(format!("{s:?}: expected auto, per-tag or batch")),
    }
}

/// `--sched`: the queue threads' scheduling policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SchedChoice {
    /// SCHED_BATCH: a woken queue thread does not preempt the task running on its CPU (the
    /// queue's own CPU: usually the submitter, which then hands over its whole burst at once).
    #[default]
    Batch,
    /// SCHED_OTHER: the kernel's default; a woken queue thread may preempt the submitter.
    Normal,
}

pub fn parse_sched(s: &str) -> Result<SchedChoice, String> {
    match s {
        "batch" => Ok(SchedChoice::Batch),
        "normal" => Ok(SchedChoice::Normal),
        _ => Err(format!("{s:?}: expected batch or normal")),
    }
}

/// Where batched I/O is wrong for a device even on a kernel that offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchLimit {
    /// Queue depth 1: 7.2's ADD_DEV refuses BATCH_IO (its per-queue event FIFO needs 2 slots).
    DepthOne,
    /// A recoverable device: on 7.2 a BATCH_IO device fails every request sent while no server
    /// runs (cancelling the batch fetch sets the queue's force_abort), where per-tag devices
    /// keep them for the next server. See README "Performance".
    Recoverable,
}

impl BatchLimit {
    pub fn of(depth: u16, recoverable: bool) -> Option<BatchLimit> {
        match (depth, recoverable) {
            (0..=1, _) => Some(BatchLimit::DepthOne),
            (_, true) => Some(BatchLimit::Recoverable),
            _ => None,
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            BatchLimit::DepthOne => "queue depth 1 (Linux 7.2 refuses BATCH_IO below depth 2)",
            BatchLimit::Recoverable => "a recoverable device (Linux 7.2 fails the requests of a BATCH_IO device while no server runs, instead of keeping them for the next one)",
        }
    }
}

/// The ADD_DEV flags ublk-mem asks for, given the driver's features: the ioctl command
/// encoding when offered, USER_COPY as `--copy-mode` says, BATCH_IO as `--io-mode` says
/// (batched commands carry no buffer address here, so they need USER_COPY; `auto` leaves it
/// out where `limit` says it is wrong, `batch` insists unless the kernel would refuse it).
pub fn wanted_flags(
    copy: CopyChoice,
    io: IoChoice,
    features: u64,
    limit: Option<BatchLimit>,
) -> Result<u64, String> {
    let encode = sys::UBLK_F_CMD_IOCTL_ENCODE & features;
    let user_copy = features & sys::UBLK_F_USER_COPY;
    let offered = || sys::feature_names(features).join(" ");
    let flags = match copy {
        CopyChoice::Buffer => encode,
        CopyChoice::Auto => encode | user_copy,
        CopyChoice::User if user_copy != 0 => encode | user_copy,
        CopyChoice::User => return Err(format!(
            "--copy-mode user: this kernel's ublk driver does not offer USER_COPY (it offers: {}); use --copy-mode buffer or auto",
            offered()
        )),
    };
    let batch = features & sys::UBLK_F_BATCH_IO;
    let with_user_copy = flags & sys::UBLK_F_USER_COPY != 0;
    match io {
        IoChoice::PerTag => Ok(flags),
        IoChoice::Auto if with_user_copy && limit.is_none() => Ok(flags | batch),
        IoChoice::Auto => Ok(flags),
        IoChoice::Batch if batch == 0 => Err(format!(
            "--io-mode batch: this kernel's ublk driver does not offer BATCH_IO (Linux 7.0 and later do; it offers: {}); use --io-mode per-tag or auto",
            offered()
        )),
        IoChoice::Batch if !with_user_copy => Err(
            "--io-mode batch needs USER_COPY: use --copy-mode auto or user with it".to_string(),
        ),
        IoChoice::Batch if limit == Some(BatchLimit::DepthOne) => Err(format!(
            "--io-mode batch: {}; use --depth 2 or more, or --io-mode per-tag",
            BatchLimit::DepthOne.why()
        )),
        IoChoice::Batch => Ok(flags | batch),
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub size: u64,
    pub queues: u16,
    pub depth: u16,
    pub block_size: u32,
    pub max_io_bytes: u32,
    pub id: Option<u32>,
    pub trace: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub json: bool,
    /// (queue, fault)
    pub fault: Option<(u16, Fault)>,
    pub copy_mode: CopyChoice,
    pub io_mode: IoChoice,
    pub sched: SchedChoice,
    /// User recovery (`--recoverable MODE`): the device outlives this process.
    pub recovery: Option<recovery::Mode>,
}

impl Options {
    pub fn validate(&self) -> Result<(), String> {
        if self.block_size != 512 && self.block_size != 4096 {
            return Err(format!(
                "--block-size must be 512 or 4096, not {}",
                self.block_size
            ));
        }
        if self.size == 0 || !self.size.is_multiple_of(self.block_size as u64) {
            return Err(format!(
                "--size {} is not a positive multiple of the block size {}",
                self.size, self.block_size
            ));
        }
        if self.queues == 0 || self.queues as u32 > sys::UBLK_MAX_NR_QUEUES {
            return Err(format!("--queues must be 1..={}", sys::UBLK_MAX_NR_QUEUES));
        }
        if self.depth == 0 || self.depth as u32 > sys::UBLK_MAX_QUEUE_DEPTH {
            return Err(format!("--depth must be 1..={}", sys::UBLK_MAX_QUEUE_DEPTH));
        }
        if self.max_io_bytes < self.block_size
            || !self.max_io_bytes.is_multiple_of(4096)
            || self.max_io_bytes > 1 << sys::UBLK_IO_BUF_BITS
        {
            return Err(format!(
                "max I/O size {} must be a multiple of 4096 between the block size and 32 MiB",
                self.max_io_bytes
            ));
        }
        if let Some((q, Fault::StallTag { tag, .. })) = self.fault {
            if q >= self.queues || tag >= self.depth {
                return Err(format!(
                    "--fault stall-tag={q}:{tag}: queue must be < {} and tag < {}",
                    self.queues, self.depth
                ));
            }
        }
        Ok(())
    }
}

/// Runs a memory-backed device in the foreground until SIGINT/SIGTERM (or until the device is
/// stopped from outside). Prints the block device path once it is ready.
pub fn serve(opts: &Options) -> Result<(), String> {
    opts.validate()?;
    let signals = block_signals();
    let mut ctl = Control::open(ctrl::DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
    let limit = BatchLimit::of(opts.depth, opts.recovery.is_some());
    let mut want = wanted_flags(opts.copy_mode, opts.io_mode, ctl.features, limit)?;
    if let Some(l) = limit.filter(|_| ctl.features & sys::UBLK_F_BATCH_IO != 0) {
        match opts.io_mode {
            IoChoice::Auto => eprintln!(
                "ublk-mem: per-tag I/O although the kernel offers BATCH_IO: {}",
                l.why()
            ),
            _ if want & sys::UBLK_F_BATCH_IO != 0 => {
                eprintln!("ublk-mem: warning: batched I/O as told, for {}", l.why())
            }
            _ => {}
        }
    }
    if let Some(mode) = opts.recovery {
        want |= mode.flags(ctl.features)?;
    }
    let (mem, unnamed) = new_store(opts)?;
    let info = sys::ublksrv_ctrl_dev_info {
        nr_hw_queues: opts.queues,
        queue_depth: opts.depth,
        max_io_buf_bytes: opts.max_io_bytes,
        flags: want,
        ..Default::default()
    };
    let info = ctl.add_dev(opts.id, &info).map_err(|e| {
        if let Some(p) = &unnamed {
            let _ = std::fs::remove_file(p);
        }
        e.to_string()
    })?;
    let dev_id = info.dev_id;
    // From here on, the device exists: every path out deletes it (or leaves it recoverable).
    let result = match unnamed {
        Some(p) => std::fs::rename(&p, recovery::store_path(dev_id)).map_err(|e| {
            let _ = std::fs::remove_file(&p);
            format!("naming the store of device {dev_id}: {e}")
        }),
        None => Ok(()),
    }
    .and_then(|()| run_device(&mut ctl, &mem, opts, &info, &signals, Launch::Add));
    finish(dev_id, opts, result, Launch::Add)
}

/// `ublk-mem recover --id N`: a new server for a recoverable device whose server died (or
/// was quiesced away), on the store it left; then serves like `add` until a signal.
pub fn recover(r: &recovery::RecoverOptions) -> Result<(), String> {
    let signals = block_signals();
    // Patient: the kernel may hold the device's mutex until the old server's requests time out.
    let mut ctl = Control::open(recovery::RECOVER_LIMIT).map_err(|e| e.to_string())?;
    let (info, opts) = recovery::device_options(&mut ctl, r)?;
    let mem = SharedMem::open(&recovery::store_path(r.id), opts.size)?;
    recovery::start(&mut ctl, r.id, recovery::RECOVER_LIMIT)?;
    let result = run_device(&mut ctl, &mem, &opts, &info, &signals, Launch::Recover);
    finish(r.id, &opts, result, Launch::Recover)
}

/// A plain device's store is a private memfd; a recoverable one's a file (named once the
/// kernel has given the device its id: the path is returned until then).
fn new_store(opts: &Options) -> Result<(SharedMem, Option<PathBuf>), String> {
    if opts.recovery.is_none() {
        return Ok((SharedMem::new(opts.size)?, None));
    }
    let path = recovery::new_store_path()?;
    let _ = std::fs::remove_file(&path); // a dead process of the same pid left it
    Ok((SharedMem::create(&path, opts.size)?, Some(path)))
}

/// How a server got its device: added it, or took it over (user recovery).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    Add,
    Recover,
}

/// After serving: delete the device (and a recoverable device's store), unless the kernel
/// aborted every tag from outside (whoever stopped it deletes it; a quiesced device waits for
/// `recover`) or a recovery failed (the device stays recoverable for another attempt).
fn finish(
    dev_id: u32,
    opts: &Options,
    result: Result<RunOutcome, String>,
    launch: Launch,
) -> Result<(), String> {
    let keep = match &result {
        Ok(r) => r.stopped_outside,
        Err(_) => launch == Launch::Recover,
    };
    let del = if keep {
        Ok(())
    } else {
        // A fresh, short-bounded ring: the shutdown budget must hold even if DEL_DEV hangs.
        Control::open(Duration::from_secs(1))
            .and_then(|mut c| c.del_dev(dev_id))
            .or_else(|e| match e {
                ctrl::Error::NoDevice { .. } => Ok(()),
                e => Err(e),
            })
    };
    if opts.recovery.is_some() {
        let store = recovery::store_path(dev_id);
        if keep {
            eprintln!("ublk-mem: device {dev_id} left to a new server: its store stays at {} for `ublk-mem recover --id {dev_id}` (`ublk-mem del --id {dev_id}` removes both)", store.display());
        } else if del.is_ok() {
            let _ = std::fs::remove_file(&store);
        }
    }
    match (result, del) {
        (Ok(_), Ok(())) => Ok(()),
        (Ok(_), Err(e)) => Err(format!("device {dev_id} stopped, but DEL_DEV failed: {e}")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => Err(format!("{e}; also DEL_DEV failed: {d}")),
    }
}

struct RunOutcome {
    stopped_outside: bool,
}

/// A device being served: what the main thread shares with its queue threads.
struct Device {
    dev_id: u32,
    queues: u16,
    depth: u16,
    pid: i32,
    epoch: Instant,
    cdev: Arc<File>,
    /// Set (ms since `epoch`) once STOP_DEV is sent: queues give up after it.
    stop_at: Arc<AtomicU64>,
    shared: Vec<Arc<QueueShared>>,
    inflight: Arc<AtomicU64>,
    /// Taken over from a dead server (user recovery).
    recovered: bool,
    /// Some queue saw an abort (`QueueSpec::aborting`).
    aborting: Arc<std::sync::atomic::AtomicBool>,
}

fn run_device(
    ctl: &mut Control,
    mem: &SharedMem,
    opts: &Options,
    info: &sys::ublksrv_ctrl_dev_info,
    signals: &libc::sigset_t,
    launch: Launch,
) -> Result<RunOutcome, String> {
    // Honour what the kernel granted, not what we asked for.
    let (queues, depth) = (info.nr_hw_queues, info.queue_depth);
    if queues != opts.queues || depth != opts.depth {
        eprintln!("ublk-mem: the kernel adjusted the device to {queues} queue(s) of depth {depth}");
    }
    let max_io = info.max_io_buf_bytes.min(opts.max_io_bytes);
    if launch == Launch::Add {
        ctl.set_params(info.dev_id, &device_params(opts, max_io))
            .map_err(|e| e.to_string())?;
    }
    let dev = Device {
        dev_id: info.dev_id,
        queues,
        depth,
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        epoch: Instant::now(),
        cdev: Arc::new(open_cdev(info.dev_id)?),
        stop_at: Arc::new(AtomicU64::new(0)),
        shared: (0..queues)
            .map(|q| Arc::new(QueueShared::new(q, depth)))
            .collect(),
        inflight: Arc::new(AtomicU64::new(0)),
        recovered: launch == Launch::Recover,
        aborting: Default::default(),
    };
    let (done_tx, done_rx) = mpsc::channel::<Result<QueueExit, String>>();
    // The kernel's START_DEV waits for every FETCH_REQ: the shared bring-up order says so.
    let plan = match launch {
        Launch::Add => crate::core::bringup(),
        Launch::Recover => crate::core::recovery_bringup(),
    };
    for step in plan {
        match step {
            Bringup::FetchAll => start_queues(&dev, ctl, mem, opts, info, max_io, &done_tx)?,
            Bringup::StartDev if launch == Launch::Recover => ctl
                .end_user_recovery(dev.dev_id, dev.pid)
                .map_err(|e| e.to_string())?,
            Bringup::StartDev => ctl
                .start_dev(dev.dev_id, dev.pid)
                .map_err(|e| e.to_string())?,
        }
    }
    drop(done_tx);
    if opts.recovery.is_some() && launch == Launch::Add {
        recovery::shorten_io_timeout(dev.dev_id);
    }
    announce(opts, info, queues, depth, dev.pid);
    let (stopped_outside, finished, failures) = serve_until_signal(&dev, opts, signals, &done_rx);
    let (finished, errors) = shut_down(&dev, finished, failures, &done_rx)?;
    if !errors.is_empty() {
        // A last snapshot helps explain a shutdown that went wrong.
        dump_state(opts, dev.dev_id, dev.pid, &dev.shared, &dev.inflight);
    }
    drop(dev); // DEL_DEV waits for /dev/ublkcN to be closed (by us and every queue thread)
    match errors.is_empty() {
        true => Ok(RunOutcome {
            stopped_outside: stopped_outside && finished == queues as usize,
        }),
        false => Err(errors.join("; ")),
    }
}

/// SET_PARAMS: the device's geometry, cache and discard limits.
fn device_params(opts: &Options, max_io: u32) -> sys::ublk_params {
    let bs_shift = opts.block_size.trailing_zeros() as u8;
    sys::ublk_params {
        types: sys::UBLK_PARAM_TYPE_BASIC | sys::UBLK_PARAM_TYPE_DISCARD,
        basic: sys::ublk_param_basic {
            // A volatile cache with FUA makes the kernel send FLUSH and FUA: both paths get exercised.
            attrs: sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA,
            logical_bs_shift: bs_shift,
            physical_bs_shift: bs_shift,
            io_opt_shift: bs_shift,
            io_min_shift: bs_shift,
            max_sectors: max_io / 512,
            dev_sectors: opts.size / 512,
            ..Default::default()
        },
        discard: sys::ublk_param_discard {
            discard_granularity: opts.block_size,
            max_discard_sectors: u32::MAX >> 9,
            max_write_zeroes_sectors: u32::MAX >> 9,
            max_discard_segments: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One thread per queue (each submits its FETCH_REQs itself), then waits until all are ready.
fn start_queues(
    dev: &Device,
    ctl: &mut Control,
    mem: &SharedMem,
    opts: &Options,
    info: &sys::ublksrv_ctrl_dev_info,
    max_io: u32,
    done_tx: &mpsc::Sender<Result<QueueExit, String>>,
) -> Result<(), String> {
    let (ready_tx, ready_rx) = mpsc::channel::<(u16, Result<(), String>)>();
    for q in 0..dev.queues {
        let spec = QueueSpec {
            dev_id: dev.dev_id,
            q_id: q,
            depth: dev.depth,
            max_io_bytes: max_io,
            dev_sectors: opts.size / 512,
            ioctl_encode: info.flags & sys::UBLK_F_CMD_IOCTL_ENCODE != 0,
            recoverable: info.flags & sys::UBLK_F_USER_RECOVERY != 0,
            recovered: dev.recovered,
            aborting: dev.aborting.clone(),
            copy: match info.flags & sys::UBLK_F_USER_COPY {
                0 => CopyMode::Buffer,
                _ => CopyMode::User,
            },
            mode: match info.flags & sys::UBLK_F_BATCH_IO {
                0 => IoMode::PerTag,
                _ => IoMode::Batch,
            },
            cpus: ctl.get_queue_affinity(dev.dev_id, q).unwrap_or_default(),
            sched_batch: opts.sched == SchedChoice::Batch,
            fault: opts.fault.filter(|(fq, _)| *fq == q).map(|(_, f)| f),
            trace: opts
                .trace
                .as_ref()
                .map(|p| PathBuf::from(format!("{}.q{q}", p.display()))),
            inflight: dev.inflight.clone(),
        };
        let (cdev, sh, stop, view, epoch) = (
            dev.cdev.clone(),
            dev.shared[q as usize].clone(),
            dev.stop_at.clone(),
            mem.view(),
            dev.epoch,
        );
        let (rtx, dtx) = (ready_tx.clone(), done_tx.clone());
        std::thread::Builder::new()
            .name(format!("ublk-q{q}"))
            .spawn(move || {
                let r = run_queue(&cdev, &spec, view, &sh, &stop, epoch, |r| {
                    let _ = rtx.send((q, r));
                });
                let _ = dtx.send(r);
            })
            .map_err(|e| format!("spawn queue thread: {e}"))?;
    }
    let deadline = Instant::now() + READY_LIMIT;
    for _ in 0..dev.queues {
        match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((_, Ok(()))) => {}
            Ok((q, Err(e))) => return Err(format!("queue {q} failed to start: {e}")),
            Err(_) => {
                let s = READY_LIMIT.as_secs();
                return Err(format!("queues not ready within {s} s"));
            }
        }
    }
    Ok(())
}

/// Serves until a signal, or until every queue ended (the device was stopped from outside):
/// (stopped from outside, queues finished, queue failures).
fn serve_until_signal(
    dev: &Device,
    opts: &Options,
    signals: &libc::sigset_t,
    done_rx: &mpsc::Receiver<Result<QueueExit, String>>,
) -> (bool, usize, Vec<String>) {
    let mut finished = 0usize;
    let mut failures = Vec::new();
    loop {
        match wait_signal(signals, Duration::from_millis(100)) {
            Some(libc::SIGUSR1) => {
                dump_state(opts, dev.dev_id, dev.pid, &dev.shared, &dev.inflight)
            }
            Some(_) => return (false, finished, failures),
            None => {}
        }
        while let Ok(r) = done_rx.try_recv() {
            finished += 1;
            if let Err(e) = r {
                failures.push(e);
            }
        }
        if !failures.is_empty() || finished == dev.queues as usize {
            return (failures.is_empty(), finished, failures);
        }
    }
}

/// Shutdown, bounded: STOP_DEV aborts every fetched tag; queues drain within the budget.
/// (queues finished, every error so far).
fn shut_down(
    dev: &Device,
    mut finished: usize,
    mut errors: Vec<String>,
    done_rx: &mpsc::Receiver<Result<QueueExit, String>>,
) -> Result<(usize, Vec<String>), String> {
    let start = Instant::now();
    let budget = |frac: u32| SHUTDOWN_BUDGET * frac / 10;
    let stop_ms = (dev.epoch.elapsed() + budget(6)).as_millis() as u64;
    dev.stop_at.store(stop_ms, Ordering::SeqCst);
    let queues = dev.queues as usize;
    if finished == queues {
        return Ok((finished, errors));
    }
    let mut quick = Control::open(budget(4)).map_err(|e| e.to_string())?;
    if let Err(e) = quick.stop_dev(dev.dev_id) {
        if !matches!(e, ctrl::Error::NoDevice { .. }) {
            errors.push(format!("STOP_DEV: {e}"));
        }
    }
    while finished < queues {
        match done_rx.recv_timeout(budget(8).saturating_sub(start.elapsed())) {
            Ok(Ok(exit)) => {
                finished += 1;
                if let Some(why) = &exit.early {
                    errors.push(format!("queue {}: {why}", exit.q_id));
                }
                let s = exit.stats;
                eprintln!(
                    "ublk-mem: queue {}: {} reads, {} writes, {} flushes, {} discards, {} write-zeroes, {} errors; {} completions in {} waits ({} timed out)",
                    exit.q_id, s.reads, s.writes, s.flushes, s.discards, s.write_zeroes, s.errors, exit.counts.completions, exit.counts.waits, exit.counts.short
                );
            }
            Ok(Err(e)) => {
                finished += 1;
                errors.push(e);
            }
            Err(_) => {
                errors.push(format!(
                    "{} queue thread(s) did not finish in time",
                    queues - finished
                ));
                break;
            }
        }
    }
    Ok((finished, errors))
}

fn open_cdev(dev_id: u32) -> Result<File, String> {
    let path = format!("/dev/ublkc{dev_id}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => return Ok(f),
            // devtmpfs creates the node asynchronously after ADD_DEV.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(format!("open {path}: {e}")),
        }
    }
}

fn announce(opts: &Options, info: &sys::ublksrv_ctrl_dev_info, queues: u16, depth: u16, pid: i32) {
    let dev_id = info.dev_id;
    let bdev = format!("/dev/ublkb{dev_id}");
    let features = sys::feature_names(info.flags);
    eprintln!(
        "ublk-mem: device {dev_id} uses ublk features: {}",
        if features.is_empty() {
            "none".into()
        } else {
            features.join(" ")
        }
    );
    if opts.json {
        let ready = contract::Ready {
            dev_id,
            block_device: bdev,
            char_device: format!("/dev/ublkc{dev_id}"),
            size: opts.size,
            block_size: opts.block_size,
            queues,
            depth,
            pid,
            features,
        };
        println!(
            "{}",
            serde_json::to_string(&ready).expect("plain data serialises")
        );
    } else {
        println!("{}{bdev}", crate::planted::ready_prefix());
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Blocks the daemon's signals in every thread (inherited by threads spawned later), so the
/// main thread can take them synchronously with sigtimedwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: building and applying a signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, limit: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: waiting for signals of our blocked set.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
}

/// Per-queue, per-tag state, read from the queues' published atomics.
pub fn state_dump(
    dev_id: u32,
    pid: i32,
    shared: &[Arc<QueueShared>],
    inflight: &AtomicU64,
) -> contract::StateDump {
    let queue = |q: &Arc<QueueShared>| {
        let tags = (0..q.states.len())
            .map(|t| {
                let last = q.last_req[t].load(Ordering::Relaxed);
                contract::TagDump {
                    tag: t as u16,
                    state: q.state(t).name().to_string(),
                    served: q.served[t].load(Ordering::Relaxed),
                    last: (last != u64::MAX).then(|| contract::LastRequest {
                        op: op_name((last & 0xff) as u8).to_string(),
                        flags: (last >> 8) & 0xff_ffff,
                        sector: q.last_sector[t].load(Ordering::Relaxed),
                        sectors: last >> 32,
                    }),
                }
            })
            .collect();
        contract::QueueDump {
            q_id: q.q_id,
            completions: q.completions.load(Ordering::Relaxed),
            finished: q.finished.load(Ordering::Relaxed),
            serving_tags: (0..q.states.len())
                .filter(|t| q.state(*t) == TagState::Serving)
                .map(|t| t as u16)
                .collect(),
            tags,
        }
    };
    contract::StateDump {
        dev_id,
        pid,
        inflight: inflight.load(Ordering::Relaxed),
        queues: shared.iter().map(queue).collect(),
    }
}

fn dump_state(
    opts: &Options,
    dev_id: u32,
    pid: i32,
    shared: &[Arc<QueueShared>],
    inflight: &AtomicU64,
) {
    let dump = state_dump(dev_id, pid, shared, inflight);
    let text = serde_json::to_string_pretty(&dump).expect("plain data serialises") + "\n";
    match &opts.state_file {
        Some(p) => {
            let tmp = p.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, &text).and_then(|_| std::fs::rename(&tmp, p)) {
                eprintln!("ublk-mem: cannot write state dump {}: {e}", p.display());
            }
        }
        None => eprint!("{text}"),
    }
}

pub fn op_name(op: u8) -> &'static str {
    match op {
        sys::UBLK_IO_OP_READ => "read",
        sys::UBLK_IO_OP_WRITE => "write",
        sys::UBLK_IO_OP_FLUSH => "flush",
        sys::UBLK_IO_OP_DISCARD => "discard",
        sys::UBLK_IO_OP_WRITE_ZEROES => "write-zeroes",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            size: 256 << 20,
            queues: 2,
            depth: 64,
            block_size: 4096,
            max_io_bytes: 512 << 10,
            id: None,
            trace: None,
            state_file: None,
            json: false,
            fault: None,
            copy_mode: CopyChoice::Auto,
            io_mode: IoChoice::Auto,
            sched: SchedChoice::Batch,
            recovery: None,
        }
    }

    #[test]
    fn copy_mode_asks_for_user_copy_only_when_offered_or_told() {
        let both = sys::UBLK_F_CMD_IOCTL_ENCODE | sys::UBLK_F_USER_COPY | sys::UBLK_F_USER_RECOVERY;
        let encode = sys::UBLK_F_CMD_IOCTL_ENCODE;
        let auto = IoChoice::Auto;
        assert_eq!(
            wanted_flags(CopyChoice::Auto, auto, both, None),
            Ok(encode | sys::UBLK_F_USER_COPY)
        );
        assert_eq!(
            wanted_flags(CopyChoice::Auto, auto, encode, None),
            Ok(encode)
        );
        assert_eq!(
            wanted_flags(CopyChoice::Buffer, auto, both, None),
            Ok(encode)
        );
        assert_eq!(
            wanted_flags(CopyChoice::User, auto, both, None),
            Ok(encode | sys::UBLK_F_USER_COPY)
        );
        let e = wanted_flags(CopyChoice::User, auto, encode, None).unwrap_err();
        assert!(
            e.contains("does not offer USER_COPY") && e.contains("CMD_IOCTL_ENCODE"),
            "{e}"
        );
        assert_eq!(parse_copy_mode("user"), Ok(CopyChoice::User));
        assert!(parse_copy_mode("zero")
            .unwrap_err()
            .contains("auto, buffer or user"));
    }

    #[test]
    fn sched_names_parse_and_batch_is_the_default() {
        assert_eq!(parse_sched("batch"), Ok(SchedChoice::Batch));
        assert_eq!(parse_sched("normal"), Ok(SchedChoice::Normal));
        assert_eq!(SchedChoice::default(), SchedChoice::Batch);
        let e = parse_sched("fifo").unwrap_err();
        assert!(e.contains("batch or normal"), "{e}");
    }

    /// BATCH_IO is asked for only when offered, only with USER_COPY, and never when told
    /// per-tag; asking for it where it cannot be had says why and what to do.
    #[test]
    fn io_mode_asks_for_batch_io_only_when_offered_with_user_copy() {
        let encode = sys::UBLK_F_CMD_IOCTL_ENCODE;
        let uc = sys::UBLK_F_USER_COPY;
        let batch = sys::UBLK_F_BATCH_IO;
        let v7 = encode | uc | batch;
        let v6 = encode | uc;
        use CopyChoice as C;
        use IoChoice as I;
        assert_eq!(wanted_flags(C::Auto, I::Auto, v7, None), Ok(v7));
        assert_eq!(wanted_flags(C::Auto, I::Auto, v6, None), Ok(v6));
        assert_eq!(wanted_flags(C::Auto, I::PerTag, v7, None), Ok(v6));
        assert_eq!(wanted_flags(C::Buffer, I::Auto, v7, None), Ok(encode));
        assert_eq!(wanted_flags(C::User, I::Batch, v7, None), Ok(v7));
        let e = wanted_flags(C::Auto, I::Batch, v6, None).unwrap_err();
        assert!(
            e.contains("does not offer BATCH_IO") && e.contains("--io-mode per-tag"),
            "{e}"
        );
        let e = wanted_flags(C::Buffer, I::Batch, v7, None).unwrap_err();
        assert!(e.contains("needs USER_COPY"), "{e}");
        // Where 7.2 gets batched I/O wrong, auto stays per-tag; batch insists where it can.
        assert_eq!(BatchLimit::of(1, false), Some(BatchLimit::DepthOne));
        assert_eq!(BatchLimit::of(32, true), Some(BatchLimit::Recoverable));
        assert_eq!(BatchLimit::of(2, false), None);
        let rec = BatchLimit::of(32, true);
        assert_eq!(wanted_flags(C::Auto, I::Auto, v7, rec), Ok(v6));
        assert_eq!(wanted_flags(C::Auto, I::Batch, v7, rec), Ok(v7));
        let one = BatchLimit::of(1, false);
        assert_eq!(wanted_flags(C::Auto, I::Auto, v7, one), Ok(v6));
        let e = wanted_flags(C::Auto, I::Batch, v7, one).unwrap_err();
        assert!(
            e.contains("below depth 2") && e.contains("--depth 2"),
            "{e}"
        );
        assert_eq!(parse_io_mode("per-tag"), Ok(I::PerTag));
        assert!(parse_io_mode("batched")
            .unwrap_err()
            .contains("auto, per-tag or batch"));
    }

    #[test]
    fn faults() {
        assert_eq!(
            parse_fault("stall-tag=1:5:after=100").unwrap(),
            (1, Fault::StallTag { tag: 5, after: 100 })
        );
        assert!(parse_fault("stall-tag=1:5")
            .unwrap_err()
            .contains("expected stall-tag"));
        assert!(parse_fault("boom").is_err());
    }

    #[test]
    fn validation_explains_bad_options() {
        assert!(opts().validate().is_ok());
        let e = Options {
            size: (256 << 20) + 512,
            ..opts()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("multiple of the block size 4096"), "{e}");
        assert!(Options {
            block_size: 1024,
            ..opts()
        }
        .validate()
        .unwrap_err()
        .contains("512 or 4096"));
        assert!(Options {
            queues: 0,
            ..opts()
        }
        .validate()
        .is_err());
        assert!(Options {
            depth: 5000,
            ..opts()
        }
        .validate()
        .is_err());
        let e = Options {
            fault: Some((2, Fault::StallTag { tag: 0, after: 1 })),
            ..opts()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("queue must be < 2"), "{e}");
    }

    #[test]
    fn state_dump_names_serving_tags() {
        let q = Arc::new(QueueShared::new(0, 4));
        q.states[2].store(TagState::Serving as u8, Ordering::Relaxed);
        q.last_req[2].store(
            sys::UBLK_IO_OP_WRITE as u64 | (16u64 << 32),
            Ordering::Relaxed,
        );
        q.last_sector[2].store(800, Ordering::Relaxed);
        let d = state_dump(7, 42, &[q], &AtomicU64::new(1));
        assert_eq!(d.inflight, 1);
        assert_eq!(d.queues[0].serving_tags, [2]);
        let last = d.queues[0].tags[2].last.as_ref().unwrap();
        assert_eq!(
            (last.op.as_str(), last.sector, last.sectors),
            ("write", 800, 16)
        );
        assert_eq!(d.queues[0].tags[0].state, "in-kernel");
        assert!(d.queues[0].tags[0].last.is_none());
        // What the host reads back is what was written.
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            serde_json::from_str::<contract::StateDump>(&text).unwrap(),
            d
        );
    }
}
