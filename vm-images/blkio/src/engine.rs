//! O_DIRECT I/O through io_uring at a chosen queue depth, with a hard deadline: a request
//! that never completes becomes an error naming the requests still in flight, never a hang.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: Kind,
    pub offset: u64,
    pub len: u64,
    /// Write sequence number (block headers) / caller's tag for reads.
    pub seq: u64,
}

pub fn open(dev: &str, write: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("open {dev} with O_DIRECT: {e}"))
}

/// Page-aligned buffers, one slot per in-flight request.
struct Slots {
    ptr: *mut u8,
    slot: usize,
    n: usize,
}

impl Slots {
    fn new(n: usize, slot: usize) -> Result<Slots, String> {
        let slot = slot.div_ceil(4096) * 4096;
        // SAFETY: anonymous mapping, checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n * slot,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "allocating {} bytes of I/O buffers: {}",
                n * slot,
                std::io::Error::last_os_error()
            ));
        }
        Ok(Slots {
            ptr: p as *mut u8,
            slot,
            n,
        })
    }

    fn get(&mut self, i: usize, len: usize) -> &mut [u8] {
        assert!(i < self.n && len <= self.slot);
        // SAFETY: in bounds; each slot is used by one request at a time.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.slot), len) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.n * self.slot) };
    }
}

/// Called with every finished request and its data; an error stops the run.
pub type Complete<'a> = dyn FnMut(&Op, &[u8]) -> Result<(), String> + 'a;
/// Called with a failed request and its errno, when failures do not stop the run.
pub type Failure<'a> = dyn FnMut(&Op, i32) + 'a;

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Most requests in flight (`--qd`).
pub const MAX_QD: usize = 4096;

/// Runs `ops` with up to `qd` in flight. `prepare` fills a write's buffer before submission;
/// `complete` sees every finished request with its data (reads: what the device returned).
/// Stops at the first failed request (unless `failed` takes it: then the run goes on), or at
/// `deadline` with the in-flight list. With
/// `spread`, every submission round runs on the next CPU, so blk-mq maps the rounds to
/// different hardware queues (every ublk queue gets requests).
#[allow(clippy::too_many_arguments)]
pub fn run(
    file: &File,
    ops: &mut dyn Iterator<Item = Op>,
    qd: usize,
    max_len: usize,
    deadline: Instant,
    spread: bool,
    prepare: &mut dyn FnMut(&Op, &mut [u8]),
    complete: &mut Complete,
    mut failed: Option<&mut Failure>,
) -> Result<Stats, String> {
    assert!(qd > 0 && qd <= MAX_QD, "qd {qd} outside 1..={MAX_QD}");
    let mut ring = IoUring::new((qd as u32).next_power_of_two())
        .map_err(|e| format!("io_uring setup: {e}"))?;
    let mut slots = Slots::new(qd, max_len)?;
    let mut inflight: Vec<Option<Op>> = vec![None; qd];
    let mut free: Vec<usize> = (0..qd).rev().collect();
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut exhausted = false;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut rounds = 0usize;
    loop {
        while !exhausted && !free.is_empty() {
            let Some(op) = ops.next() else {
                exhausted = true;
                break;
            };
            assert!(op.len as usize <= max_len && op.len > 0);
            let i = free.pop().unwrap();
            let buf = slots.get(i, op.len as usize);
            let fd = types::Fd(file.as_raw_fd());
            let sqe = match op.kind {
                Kind::Write => {
                    prepare(&op, buf);
                    opcode::Write::new(fd, buf.as_ptr(), op.len as u32)
                        .offset(op.offset)
                        .build()
                }
                Kind::Read => opcode::Read::new(fd, buf.as_mut_ptr(), op.len as u32)
                    .offset(op.offset)
                    .build(),
            };
            inflight[i] = Some(op);
            // SAFETY: the buffer slot stays reserved until this request completes.
            unsafe { ring.submission().push(&sqe.user_data(i as u64)) }.expect("ring sized for qd");
        }
        if free.len() == qd && exhausted {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let stuck: Vec<String> = inflight
                .iter()
                .flatten()
                .take(8)
                .map(|o| format!("{:?}@{}+{}", o.kind, o.offset, o.len))
                .collect();
            return Err(format!(
                "I/O hang: {} request(s) still in flight at the deadline, e.g. {}",
                qd - free.len(),
                stuck.join(", ")
            ));
        }
        if spread {
            rounds += 1;
            pin_to(rounds % cpus);
        }
        let wait = left.min(Duration::from_secs(1));
        ublk::uring::enter_bounded(&ring.submitter(), wait)
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        let done: Vec<(usize, i32)> = ring
            .completion()
            .map(|c| (c.user_data() as usize, c.result()))
            .collect();
        for (i, res) in done {
            let op = inflight[i].take().expect("completion for an idle slot");
            free.push(i);
            if let (true, Some(f)) = (res < 0, failed.as_mut()) {
                f(&op, -res);
                continue;
            }
            if res < 0 {
                return Err(format!(
                    "{:?} of {} bytes at offset {} failed: {}",
                    op.kind,
                    op.len,
                    op.offset,
                    std::io::Error::from_raw_os_error(-res)
                ));
            }
            if res as u64 != op.len {
                return Err(format!(
                    "{:?} of {} bytes at offset {} was short: {res} bytes",
                    op.kind, op.len, op.offset
                ));
            }
            let data = slots.get(i, op.len as usize);
            complete(&op, data)?;
            stats.ops += 1;
            stats.bytes += op.len;
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

fn pin_to(cpu: usize) {
    // SAFETY: applying a one-CPU affinity mask to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Size of a block device or file in bytes.
pub fn size_of(file: &File) -> Result<u64, String> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), 0x8008_1272, &mut size) };
    if r == 0 {
        return Ok(size);
    }
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| format!("size of device: {e}"))
}

/// One line of what a run did: requests, MiB, seconds, IOPS, MiB/s.
pub fn report(what: &str, st: &Stats) {
    let secs = st.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what}: {} requests, {} MiB in {secs:.2} s ({:.0} IOPS, {:.1} MiB/s)",
        st.ops,
        st.bytes >> 20,
        st.ops as f64 / secs,
        st.bytes as f64 / secs / 1048576.0
    );
}
