//! Workloads: seeded request streams, and request streams read from traces recorded by
//! `ublk-mem --trace` or written by hand (same line format, see ublk/TRACE.md).

use ublk::rng::Rng;
use ublk::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Hardware queue the block layer sends it to.
    pub queue: u16,
    pub op: Op,
    pub sector: u64,
    pub sectors: u32,
    /// The commit result the trace recorded for it (replays check it).
    pub expect_result: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Reads, writes (mostly overlapping, some multi-segment), flush, discard, write-zeroes.
    Mixed,
    /// Writes only.
    Writes,
    /// Small sequential writes then reads.
    Sequential,
}

/// `n` requests from `seed` over a device of `dev_sectors`, for `queues` queues.
pub fn generate(
    seed: u64,
    n: usize,
    mix: Mix,
    queues: u16,
    dev_sectors: u64,
    max_sectors: u32,
) -> Vec<Request> {
    let mut rng = Rng::new(seed ^ 0x5151_5eed);
    let mut out = Vec::with_capacity(n);
    let mut seq_pos = 0u64;
    for i in 0..n {
        let queue = rng.below(queues as u64) as u16;
        let op = match mix {
            Mix::Writes => Op::Write,
            Mix::Sequential => {
                if i < n / 2 {
                    Op::Write
                } else {
                    Op::Read
                }
            }
            Mix::Mixed => match rng.below(100) {
                0..=39 => Op::Read,
                40..=87 => Op::Write,
                88..=91 => Op::Flush,
                92..=95 => Op::Discard,
                _ => Op::WriteZeroes,
            },
        };
        let sectors = match rng.below(4) {
            0 => 1,
            1 => rng.range(1, 8) as u32,
            2 => rng.range(8, 24) as u32, // crosses 4 KiB segments
            _ => rng.range(1, max_sectors as u64) as u32,
        }
        .min(max_sectors)
        .min(dev_sectors as u32);
        let (op, sectors) = if op == Op::Flush {
            (op, 0)
        } else {
            (op, sectors)
        };
        let sector = if mix == Mix::Sequential {
            let s = seq_pos % (dev_sectors - sectors as u64 + 1);
            seq_pos = if i + 1 == n / 2 {
                0
            } else {
                seq_pos + sectors as u64
            };
            s
        } else {
            rng.below(dev_sectors - sectors as u64 + 1)
        };
        out.push(Request {
            queue,
            op,
            sector,
            sectors,
            expect_result: None,
        });
    }
    out
}

/// Geometry and requests of a set of per-queue trace files.
#[derive(Debug, Clone)]
pub struct Replay {
    pub depth: u16,
    pub dev_sectors: u64,
    pub max_io_bytes: u32,
    pub queues: u16,
    pub requests: Vec<Request>,
}

/// Reads trace files (PREFIX.q0, PREFIX.q1, ...). Requests of different queues are
/// interleaved in file order; each keeps the result the trace committed for it.
pub fn from_traces(texts: &[(String, String)]) -> Result<Replay, String> {
    let mut per_queue: Vec<(u16, Vec<Request>)> = Vec::new();
    let mut geometry = None;
    for (name, text) in texts {
        let (h, events) = ublk::trace::parse(text).map_err(|e| format!("{name}: {e}"))?;
        match geometry {
            None => geometry = Some((h.depth, h.dev_sectors, h.max_io_bytes)),
            Some(g) if g != (h.depth, h.dev_sectors, h.max_io_bytes) => {
                return Err(format!(
                    "{name}: geometry differs from the other trace files"
                ))
            }
            _ => {}
        }
        let mut pending: Vec<Option<usize>> = vec![None; h.depth as usize];
        let mut reqs = Vec::new();
        for e in events {
            match e {
                ublk::core::Event::Request {
                    tag,
                    op,
                    sector,
                    sectors,
                    ..
                } => {
                    let op = match op {
                        sys::UBLK_IO_OP_READ => Op::Read,
                        sys::UBLK_IO_OP_WRITE => Op::Write,
                        sys::UBLK_IO_OP_FLUSH => Op::Flush,
                        sys::UBLK_IO_OP_DISCARD => Op::Discard,
                        sys::UBLK_IO_OP_WRITE_ZEROES => Op::WriteZeroes,
                        other => return Err(format!("{name}: op {other} cannot be replayed")),
                    };
                    pending[tag as usize] = Some(reqs.len());
                    reqs.push(Request {
                        queue: h.queue,
                        op,
                        sector,
                        sectors,
                        expect_result: None,
                    });
                }
                ublk::core::Event::Commit { tag, result } => {
                    if let Some(i) = pending[tag as usize].take() {
                        reqs[i].expect_result = Some(result);
                    }
                }
                _ => {}
            }
        }
        per_queue.push((h.queue, reqs));
    }
    let (depth, dev_sectors, max_io_bytes) = geometry.ok_or("no trace files")?;
    let queues = per_queue.iter().map(|(q, _)| q + 1).max().unwrap_or(1);
    let mut requests = Vec::new();
    let longest = per_queue.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (_, reqs) in &per_queue {
            if let Some(r) = reqs.get(i) {
                requests.push(*r);
            }
        }
    }
    Ok(Replay {
        depth,
        dev_sectors,
        max_io_bytes,
        queues,
        requests,
    })
}

/// Most tags per queue and queues a kernel trace may ask the simulator for.
const MAX_KTRACE_DEPTH: u16 = 1024;
const MAX_KTRACE_QUEUES: u16 = 64;
/// Largest device a kernel trace may ask the simulator for: 4 GiB in 512-byte sectors.
const MAX_KTRACE_SECTORS: u64 = 8 << 20;

/// The simulator's request for a kernel trace's dispatch; None for an operation it does not
/// model; an error for one beyond its limits.
fn request_of(e: &ublk::ktrace::Event) -> Result<Option<Request>, String> {
    use ublk::ktrace::{Kind, Op as KOp};
    let Kind::Dispatch {
        op,
        sector,
        sectors,
        ..
    } = e.kind
    else {
        return Ok(None);
    };
    let op = match op {
        KOp::Read => Op::Read,
        KOp::Write => Op::Write,
        KOp::Flush => Op::Flush,
        KOp::Discard => Op::Discard,
        KOp::WriteZeroes => Op::WriteZeroes,
        KOp::Other(_) => return Ok(None),
    };
    // A flush carries no range (the block layer leaves its sector at -1).
    let (sector, sectors) = match op {
        Op::Flush => (0, 0),
        _ => (sector, sectors),
    };
    if sector.saturating_add(sectors as u64) > MAX_KTRACE_SECTORS {
        return Err(format!(
            "{}: {} reaches past the {} GiB the simulator models",
            e.place(),
            e.describe(),
            MAX_KTRACE_SECTORS >> 21
        ));
    }
    if e.tag >= MAX_KTRACE_DEPTH || e.q >= MAX_KTRACE_QUEUES {
        return Err(format!(
            "{}: beyond what the simulator models ({MAX_KTRACE_QUEUES} queues of {MAX_KTRACE_DEPTH} tags)",
            e.place()
        ));
    }
    Ok(Some(Request {
        queue: e.q,
        op,
        sector,
        sectors,
        expect_result: None,
    }))
}

/// A kernel-side trace (`ublk/KTRACE.md`) as a workload: one device's requests in the order
/// the kernel dispatched them (`dev`: which device; default the first with requests), each
/// READ/WRITE expecting the result the traced server committed (an error it returned is not
/// compared: ublk-mem would serve the request). Returns the replay and a note on what was
/// left out.
pub fn from_ktrace(
    events: &[ublk::ktrace::Event],
    dev: Option<u32>,
) -> Result<(Replay, String), String> {
    use ublk::ktrace::{IoCmd, Kind};
    let dev = dev
        .or_else(|| {
            events
                .iter()
                .find(|e| matches!(e.kind, Kind::Dispatch { .. }))
                .map(|e| e.dev)
        })
        .ok_or("the kernel trace holds no request")?;
    let mut pending: std::collections::BTreeMap<(u16, u16), usize> = Default::default();
    let (mut requests, mut other_ops, mut errors) = (Vec::new(), 0u64, 0u64);
    let (mut depth, mut queues, mut end, mut largest) = (1u16, 1u16, 0u64, 4096u64);
    for e in events.iter().filter(|e| e.dev == dev) {
        match e.kind {
            Kind::Dispatch { .. } => {
                let Some(r) = request_of(e)? else {
                    other_ops += 1;
                    continue;
                };
                depth = depth.max(e.tag + 1);
                queues = queues.max(e.q + 1);
                end = end.max(r.sector.saturating_add(r.sectors as u64));
                largest = largest.max(r.sectors as u64 * 512);
                pending.insert((e.q, e.tag), requests.len());
                requests.push(r);
            }
            Kind::Command {
                cmd: IoCmd::CommitAndFetch,
                result,
                ..
            } => {
                let Some(i) = pending.remove(&(e.q, e.tag)) else {
                    continue;
                };
                let r: &mut Request = &mut requests[i];
                match (r.op, result < 0) {
                    (Op::Read | Op::Write, false) => r.expect_result = Some(result),
                    (_, true) => errors += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if requests.is_empty() {
        return Err(format!(
            "device {dev} has no request the simulator can replay"
        ));
    }
    let note = format!(
        "device {dev}: {} request(s){}{}",
        requests.len(),
        match other_ops {
            0 => String::new(),
            n => format!(", {n} of other operations left out"),
        },
        match errors {
            0 => String::new(),
            n => format!(", {n} the traced server failed (results not compared)"),
        }
    );
    let replay = Replay {
        depth,
        // The device: at least what the requests touch, in whole MiB.
        dev_sectors: end.div_ceil(2048).max(1) * 2048,
        max_io_bytes: largest.next_power_of_two().min(1 << 30) as u32,
        queues,
        requests,
    };
    Ok((replay, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_trace_flush_has_no_range_and_a_huge_device_is_refused() {
        use ublk::ktrace::{Event, Kind, Op as KOp};
        let d = |op, sector, sectors| Event {
            t_us: 1,
            pid: 1,
            dev: 0,
            q: 0,
            tag: 0,
            kind: Kind::Dispatch {
                op,
                flags: 0,
                sector,
                sectors,
            },
        };
        // The block layer leaves a flush's sector at -1.
        let (r, _) = from_ktrace(&[d(KOp::Flush, u64::MAX, 0), d(KOp::Read, 8, 8)], None).unwrap();
        assert_eq!((r.requests[0].sector, r.requests[0].sectors), (0, 0));
        assert_eq!(r.dev_sectors, 2048);
        let e = from_ktrace(&[d(KOp::Write, 1 << 40, 8)], None).unwrap_err();
        assert!(
            e.contains("reaches past the 4 GiB the simulator models"),
            "{e}"
        );
    }

    #[test]
    fn generated_requests_fit_the_device() {
        let r = generate(3, 5000, Mix::Mixed, 2, 2048, 64);
        assert_eq!(r, generate(3, 5000, Mix::Mixed, 2, 2048, 64));
        assert!(r
            .iter()
            .all(|q| q.sector + q.sectors as u64 <= 2048 && q.sectors <= 64 && q.queue < 2));
        assert!(r.iter().any(|q| q.op == Op::Discard) && r.iter().any(|q| q.sectors > 8));
    }

    #[test]
    fn traces_become_requests_with_their_results() {
        let q0 = "# ublk-trace v1 dev=0 queue=0 depth=2 dev_sectors=2048 max_io_bytes=65536\nF 0\nF 1\nR 0 1 0 8 8\nC 0 4096\nR 1 0 0 8 8\nC 1 4096\nA 0\nA 1\n";
        let q1 = "# ublk-trace v1 dev=0 queue=1 depth=2 dev_sectors=2048 max_io_bytes=65536\nF 0\nF 1\nR 1 2 0 0 0\nC 1 0\n";
        let r = from_traces(&[("a.q0".into(), q0.into()), ("a.q1".into(), q1.into())]).unwrap();
        assert_eq!((r.depth, r.queues, r.requests.len()), (2, 2, 3));
        assert_eq!(
            r.requests[0],
            Request {
                queue: 0,
                op: Op::Write,
                sector: 8,
                sectors: 8,
                expect_result: Some(4096)
            }
        );
        assert_eq!(r.requests[1].op, Op::Flush);
        assert_eq!(r.requests[2].op, Op::Read);
    }
}
