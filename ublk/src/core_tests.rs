use super::*;
use crate::rng::Rng;

const DEPTH: u16 = 8;
const MAX_IO: u32 = 512 * 1024;
const SECTORS: u64 = 32 * 1024 * 1024 / SECTOR; // 32 MiB device

#[derive(Default)]
struct Recorder(Vec<Event>);
impl Observer for Recorder {
    fn event(&mut self, q: u16, e: &Event) {
        assert_eq!(q, 3);
        self.0.push(*e);
    }
}

fn setup(fault: Option<Fault>) -> (QueueCore, VecBacking, Vec<Command>, Recorder) {
    setup_mode(fault, IoMode::PerTag)
}

fn setup_mode(
    fault: Option<Fault>,
    mode: IoMode,
) -> (QueueCore, VecBacking, Vec<Command>, Recorder) {
    let mut out = Vec::new();
    let mut rec = Recorder::default();
    let core = QueueCore::new(
        QueueConfig {
            q_id: 3,
            depth: DEPTH,
            max_io_bytes: MAX_IO,
            dev_sectors: SECTORS,
            fault,
            inflight: Default::default(),
            recovered: false,
            mode,
        },
        &mut out,
        &mut rec,
    );
    (
        core,
        VecBacking(vec![0; (SECTORS * SECTOR) as usize]),
        out,
        rec,
    )
}

fn desc(op: u8, flags: u32, sector: u64, sectors: u32) -> ublksrv_io_desc {
    ublksrv_io_desc {
        op_flags: op as u32 | (flags << 8),
        nr_sectors: sectors,
        start_sector: sector,
        addr: 0xdead_beef,
    }
}

#[test]
fn construction_fetches_every_tag_first() {
    let (core, _, out, rec) = setup(None);
    assert_eq!(
        out,
        (0..DEPTH)
            .map(|tag| Command::Fetch { tag })
            .collect::<Vec<_>>()
    );
    assert_eq!(rec.0.len(), DEPTH as usize);
    assert!((0..DEPTH).all(|t| core.state(t) == TagState::InKernel));
    assert!(!core.all_aborted());
}

#[test]
fn every_op() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut buf = vec![0u8; MAX_IO as usize];
    // WRITE 8 sectors at sector 16 (FUA accepted).
    out.clear();
    buf[..4096].fill(0xab);
    core.on_completion(
        1,
        0,
        &desc(sys::UBLK_IO_OP_WRITE, sys::UBLK_IO_F_FUA >> 8, 16, 8),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 1,
            result: 4096
        }]
    );
    assert!(mem.0[16 * 512..16 * 512 + 4096].iter().all(|b| *b == 0xab));
    assert_eq!(mem.0[16 * 512 - 1], 0);
    assert_eq!(mem.0[16 * 512 + 4096], 0);
    // READ it back through another tag.
    out.clear();
    let mut rbuf = vec![0u8; MAX_IO as usize];
    core.on_completion(
        2,
        0,
        &desc(sys::UBLK_IO_OP_READ, 0, 16, 8),
        &mut rbuf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 2,
            result: 4096
        }]
    );
    assert!(rbuf[..4096].iter().all(|b| *b == 0xab));
    // FLUSH.
    out.clear();
    core.on_completion(
        3,
        0,
        &desc(sys::UBLK_IO_OP_FLUSH, 0, 0, 0),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert_eq!(out, [Command::CommitAndFetch { tag: 3, result: 0 }]);
    // WRITE_ZEROES the first half, DISCARD the second half.
    out.clear();
    core.on_completion(
        4,
        0,
        &desc(sys::UBLK_IO_OP_WRITE_ZEROES, 0, 16, 4),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    core.on_completion(
        5,
        0,
        &desc(sys::UBLK_IO_OP_DISCARD, 0, 20, 4),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert_eq!(
        out,
        [
            Command::CommitAndFetch { tag: 4, result: 0 },
            Command::CommitAndFetch { tag: 5, result: 0 }
        ]
    );
    assert!(mem.0[16 * 512..16 * 512 + 4096].iter().all(|b| *b == 0));
    // Unknown and unsupported ops.
    out.clear();
    for (tag, op) in [
        (6, sys::UBLK_IO_OP_WRITE_SAME),
        (7, sys::UBLK_IO_OP_REPORT_ZONES),
    ] {
        core.on_completion(
            tag,
            0,
            &desc(op, 0, 0, 1),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap();
    }
    core.on_completion(
        0,
        0,
        &desc(0xee, 0, 0, 1),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert!(
        out.iter().all(
            |c| matches!(c, Command::CommitAndFetch { result, .. } if *result == -libc::EOPNOTSUPP)
        ),
        "{out:?}"
    );
    let s = core.stats();
    assert_eq!(
        (
            s.reads,
            s.writes,
            s.flushes,
            s.discards,
            s.write_zeroes,
            s.errors
        ),
        (1, 1, 1, 1, 1, 3)
    );
    assert_eq!((s.read_bytes, s.write_bytes), (4096, 4096));
    assert!(rec.0.contains(&Event::Request {
        tag: 1,
        op: sys::UBLK_IO_OP_WRITE,
        flags: sys::UBLK_IO_F_FUA >> 8,
        sector: 16,
        sectors: 8
    }));
}

#[test]
fn bounds_violations_get_eio_and_touch_nothing() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut buf = vec![0x5au8; MAX_IO as usize];
    let cases = [
        desc(sys::UBLK_IO_OP_WRITE, 0, SECTORS, 1), // starts at the end
        desc(sys::UBLK_IO_OP_WRITE, 0, SECTORS - 1, 2), // crosses the end
        desc(sys::UBLK_IO_OP_WRITE, 0, u64::MAX - 1, 8), // overflows
        desc(sys::UBLK_IO_OP_READ, 0, 0, MAX_IO / 512 + 1), // larger than the buffer
        desc(sys::UBLK_IO_OP_READ, 0, 0, u32::MAX), // absurd length
        desc(sys::UBLK_IO_OP_DISCARD, 0, SECTORS - 4, 8), // discard past the end
        desc(sys::UBLK_IO_OP_WRITE_ZEROES, 0, u64::MAX / 512, 1), // zeroes past the end
    ];
    for (i, d) in cases.iter().enumerate() {
        out.clear();
        let tag = (i % DEPTH as usize) as u16;
        core.on_completion(tag, 0, d, &mut buf[..], &mut mem, &mut out, &mut rec)
            .unwrap();
        assert_eq!(
            out,
            [Command::CommitAndFetch {
                tag,
                result: -libc::EIO
            }],
            "case {i}: {d:?}"
        );
    }
    assert!(
        mem.0.iter().all(|b| *b == 0),
        "an invalid request changed the backing store"
    );
    assert!(
        buf.iter().all(|b| *b == 0x5a),
        "an invalid read changed the I/O buffer"
    );
    assert_eq!(core.stats().errors, cases.len() as u64);
}

#[test]
fn abort_is_final_and_ends_the_queue() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut buf = vec![0u8; MAX_IO as usize];
    out.clear();
    for tag in 0..DEPTH {
        core.on_completion(
            tag,
            sys::UBLK_IO_RES_ABORT,
            &desc(0, 0, 0, 0),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap();
    }
    assert!(
        out.is_empty(),
        "an aborted tag must not be re-fetched: {out:?}"
    );
    assert!(core.all_aborted());
    // A late completion for an aborted tag is a protocol error.
    let e = core
        .on_completion(
            2,
            0,
            &desc(0, 0, 0, 1),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap_err();
    assert_eq!(
        e,
        CoreError::Protocol {
            q_id: 3,
            tag: 2,
            state: TagState::Aborted,
            result: 0
        }
    );
    assert!(e.to_string().contains("tag 2"));
}

#[test]
fn rejected_commands_and_double_completion_are_errors() {
    let (mut core, mut mem, mut out, mut rec) = setup(Some(Fault::StallTag { tag: 1, after: 0 }));
    let mut buf = vec![0u8; MAX_IO as usize];
    let e = core
        .on_completion(
            0,
            -libc::EINVAL,
            &desc(0, 0, 0, 1),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap_err();
    assert!(e.to_string().contains("EINVAL"), "{e}");
    // Tag 1 stalls on its first request: it stays Serving, nothing is committed ...
    out.clear();
    core.on_completion(
        1,
        0,
        &desc(sys::UBLK_IO_OP_READ, 0, 0, 1),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert!(out.is_empty());
    assert_eq!(core.state(1), TagState::Serving);
    assert_eq!(rec.0.last(), Some(&Event::Stall { tag: 1 }));
    // ... and a second completion for it (the kernel reusing a tag we hold) is caught.
    let e = core
        .on_completion(
            1,
            0,
            &desc(sys::UBLK_IO_OP_READ, 0, 0, 1),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap_err();
    assert!(matches!(
        e,
        CoreError::Protocol {
            tag: 1,
            state: TagState::Serving,
            ..
        }
    ));
}

#[test]
fn stall_fault_fires_after_n_requests() {
    let (mut core, mut mem, mut out, mut rec) = setup(Some(Fault::StallTag { tag: 2, after: 3 }));
    let mut buf = vec![0u8; MAX_IO as usize];
    for i in 0..3 {
        out.clear();
        core.on_completion(
            2,
            0,
            &desc(sys::UBLK_IO_OP_READ, 0, i, 1),
            &mut buf[..],
            &mut mem,
            &mut out,
            &mut rec,
        )
        .unwrap();
        assert_eq!(out.len(), 1);
    }
    out.clear();
    core.on_completion(
        2,
        0,
        &desc(sys::UBLK_IO_OP_READ, 0, 9, 1),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert!(out.is_empty());
    assert_eq!(core.served(2), 4);
    // Other tags are unaffected.
    core.on_completion(
        3,
        0,
        &desc(sys::UBLK_IO_OP_READ, 0, 0, 1),
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert_eq!(out.len(), 1);
}

/// 100k random scattered reads and writes of mixed sizes through the core, with several tags
/// in flight at once, against a reference model: byte-exact.
#[test]
fn random_scattered_io_matches_a_reference_model() {
    let (mut core, mut mem, _, _) = setup(None);
    let mut model = vec![0u8; mem.0.len()];
    let mut rng = Rng::new(0x5eed);
    let mut bufs: Vec<Vec<u8>> = (0..DEPTH).map(|_| vec![0u8; MAX_IO as usize]).collect();
    let mut out = Vec::with_capacity(DEPTH as usize);
    let mut obs = NoObserver;
    let mut total = 0u64;
    for i in 0..100_000u32 {
        let tag = rng.below(DEPTH as u64) as u16;
        let sectors = match rng.below(4) {
            0 => 1,
            1 => 8,
            2 => rng.range(1, 64) as u32,
            _ => rng.range(1, MAX_IO as u64 / 512) as u32,
        };
        let sector = rng.below(SECTORS - sectors as u64 + 1);
        let (lo, hi) = (
            (sector * 512) as usize,
            ((sector + sectors as u64) * 512) as usize,
        );
        let buf = &mut bufs[tag as usize];
        out.clear();
        if rng.chance(50) {
            rng.fill(&mut buf[..hi - lo]);
            model[lo..hi].copy_from_slice(&buf[..hi - lo]);
            core.on_completion(
                tag,
                0,
                &desc(sys::UBLK_IO_OP_WRITE, 0, sector, sectors),
                &mut buf[..],
                &mut mem,
                &mut out,
                &mut obs,
            )
            .unwrap();
        } else {
            buf[..hi - lo].fill(0xee);
            core.on_completion(
                tag,
                0,
                &desc(sys::UBLK_IO_OP_READ, 0, sector, sectors),
                &mut buf[..],
                &mut mem,
                &mut out,
                &mut obs,
            )
            .unwrap();
            assert!(
                buf[..hi - lo] == model[lo..hi],
                "request {i}: read of sectors {sector}+{sectors} differs from the model"
            );
        }
        assert_eq!(
            out,
            [Command::CommitAndFetch {
                tag,
                result: (hi - lo) as i32
            }]
        );
        total += (hi - lo) as u64;
    }
    assert!(
        mem.0 == model,
        "backing store differs from the reference model"
    );
    assert!(
        total > 1 << 30,
        "the workload should move well over 1 GiB ({total})"
    );
}

/// A request's data path that records each copy call (USER_COPY makes each one a syscall)
/// and can fail them.
struct Calls {
    calls: Vec<(bool, u64, usize, usize)>,
    fail: Option<i32>,
}

impl<B: Backing> RequestData<B> for Calls {
    fn capacity(&self) -> usize {
        MAX_IO as usize
    }
    fn fill(&mut self, _: &B, store_off: u64, req_off: usize, len: usize) -> Result<(), i32> {
        self.calls.push((true, store_off, req_off, len));
        self.fail.map_or(Ok(()), Err)
    }
    fn drain(&mut self, _: &mut B, store_off: u64, req_off: usize, len: usize) -> Result<(), i32> {
        self.calls.push((false, store_off, req_off, len));
        self.fail.map_or(Ok(()), Err)
    }
}

#[test]
fn a_request_moves_in_one_call_and_a_failed_copy_fails_only_that_request() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut data = Calls {
        calls: Vec::new(),
        fail: None,
    };
    out.clear();
    // 128 KiB + 512 bytes: 33 segments, the last one short, still one call.
    let d = desc(sys::UBLK_IO_OP_READ, 0, 8, 257);
    core.on_completion(0, 0, &d, &mut data, &mut mem, &mut out, &mut rec)
        .unwrap();
    assert_eq!(data.calls, [(true, 4096, 0, 257 * 512)]);
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 0,
            result: 257 * 512
        }]
    );
    let d = desc(sys::UBLK_IO_OP_WRITE, 0, 0, 8);
    data.calls.clear();
    out.clear();
    core.on_completion(1, 0, &d, &mut data, &mut mem, &mut out, &mut rec)
        .unwrap();
    assert_eq!(data.calls, [(false, 0, 0, 4096)]);
    // The kernel refused a copy (say -EFAULT): the request fails with it, nothing counted as
    // served, and the tag goes back to the kernel as always.
    data.fail = Some(-libc::EFAULT);
    out.clear();
    core.on_completion(2, 0, &d, &mut data, &mut mem, &mut out, &mut rec)
        .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 2,
            result: -libc::EFAULT
        }]
    );
    let s = core.stats();
    assert_eq!((s.reads, s.writes, s.errors), (1, 1, 1));
    assert_eq!(core.state(2), TagState::InKernel);
}

/// Shutdown releases a held (stalled) request with -EIO and counts it as an error.
#[test]
fn shutdown_fails_held_requests_with_eio_and_counts_them() {
    let (mut core, mut mem, mut out, mut rec) = setup(Some(Fault::StallTag { tag: 1, after: 0 }));
    let mut buf = vec![0u8; MAX_IO as usize];
    out.clear();
    let held = desc(sys::UBLK_IO_OP_READ, 0, 0, 1);
    core.on_completion(1, 0, &held, &mut buf[..], &mut mem, &mut out, &mut rec)
        .unwrap();
    assert!(out.is_empty(), "stalled");
    assert_eq!(core.stats().errors, 0);
    assert_eq!(core.begin_shutdown(&mut out, &mut rec), 1);
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 1,
            result: -libc::EIO
        }]
    );
    assert_eq!(core.stats().errors, 1);
    assert_eq!(core.state(1), TagState::InKernel);
    // Nothing else is held: a second call releases nothing.
    out.clear();
    assert_eq!(core.begin_shutdown(&mut out, &mut rec), 0);
    assert!(out.is_empty());
}

/// What a queue of a recoverable device ends on: some tag aborted, no request held.
#[test]
fn aborts_and_held_requests_are_visible_for_a_quiesce() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut buf = vec![0u8; MAX_IO as usize];
    assert_eq!((core.q_id(), core.depth()), (3, DEPTH));
    assert!(!core.aborted_any() && core.holds_no_request());
    out.clear();
    let read = desc(sys::UBLK_IO_OP_READ, 0, 0, 1);
    core.on_completion(
        0,
        sys::UBLK_IO_RES_ABORT,
        &read,
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert!(core.aborted_any() && core.holds_no_request() && !core.all_aborted());
    // A tag still serving (here: a stalled one) keeps the queue alive.
    let (mut core, mut mem, mut out, mut rec) = setup(Some(Fault::StallTag { tag: 2, after: 0 }));
    core.on_completion(2, 0, &read, &mut buf[..], &mut mem, &mut out, &mut rec)
        .unwrap();
    assert!(!core.holds_no_request() && !core.aborted_any());
    core.on_completion(
        5,
        sys::UBLK_IO_RES_ABORT,
        &read,
        &mut buf[..],
        &mut mem,
        &mut out,
        &mut rec,
    )
    .unwrap();
    assert!(core.aborted_any() && !core.holds_no_request());
}

/// The store double-checks the range: a device larger than its store (a server bug) gets -EIO
/// past the store's end, never a write outside it; a request larger than the largest I/O the
/// device accepts gets -EIO even if the buffer could hold it.
#[test]
fn requests_past_the_store_or_the_max_io_size_get_eio() {
    let (mut core, _, mut out, mut rec) = setup(None);
    let mut small = VecBacking(vec![0; 64 * 1024]); // the device claims SECTORS sectors
    let mut buf = vec![0u8; 2 * MAX_IO as usize];
    let past = desc(sys::UBLK_IO_OP_WRITE, 0, 64 * 1024 / SECTOR, 8);
    out.clear();
    core.on_completion(0, 0, &past, &mut buf[..], &mut small, &mut out, &mut rec)
        .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 0,
            result: -libc::EIO
        }]
    );
    let inside = desc(sys::UBLK_IO_OP_WRITE, 0, 64 * 1024 / SECTOR - 8, 8);
    out.clear();
    core.on_completion(0, 0, &inside, &mut buf[..], &mut small, &mut out, &mut rec)
        .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 0,
            result: 4096
        }]
    );
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let too_big = desc(sys::UBLK_IO_OP_READ, 0, 0, MAX_IO / SECTOR as u32 + 8);
    out.clear();
    core.on_completion(1, 0, &too_big, &mut buf[..], &mut mem, &mut out, &mut rec)
        .unwrap();
    assert_eq!(
        out,
        [Command::CommitAndFetch {
            tag: 1,
            result: -libc::EIO
        }]
    );
    assert_eq!((core.stats().reads, core.stats().errors), (0, 1));
}

/// Each op is counted under its own kind, with its bytes.
#[test]
fn statistics_count_each_op_by_kind_and_bytes() {
    let (mut core, mut mem, mut out, mut rec) = setup(None);
    let mut buf = vec![0u8; MAX_IO as usize];
    let ops = [
        (sys::UBLK_IO_OP_READ, 8),
        (sys::UBLK_IO_OP_READ, 16),
        (sys::UBLK_IO_OP_WRITE, 8),
        (sys::UBLK_IO_OP_FLUSH, 0),
        (sys::UBLK_IO_OP_DISCARD, 8),
        (sys::UBLK_IO_OP_WRITE_ZEROES, 8),
        (sys::UBLK_IO_OP_WRITE_ZEROES, 8),
    ];
    for (i, (op, sectors)) in ops.into_iter().enumerate() {
        out.clear();
        let d = desc(op, 0, 64 * i as u64, sectors);
        core.on_completion(i as u16, 0, &d, &mut buf[..], &mut mem, &mut out, &mut rec)
            .unwrap();
    }
    let s = core.stats();
    assert_eq!(
        (
            s.reads,
            s.writes,
            s.flushes,
            s.discards,
            s.write_zeroes,
            s.errors
        ),
        (2, 1, 1, 1, 2, 0)
    );
    assert_eq!((s.read_bytes, s.write_bytes), (24 * SECTOR, 8 * SECTOR));
}

#[test]
fn errno_names_for_messages() {
    let named = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENODEV, "ENODEV"),
        (libc::EINVAL, "EINVAL"),
        (libc::EACCES, "EACCES"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ETIME, "ETIME"),
        (libc::EAGAIN, "EAGAIN"),
        (libc::EBADF, "EBADF"),
        (libc::ENOSPC, "errno"),
    ];
    for (e, name) in named {
        assert_eq!(errno_name(e), name, "{e}");
    }
}

// ---- batch mode ----

/// Serves `tag` a 4 KiB write at `sector` (buffer data) in batch mode; returns the commands.
fn batch_write(
    core: &mut QueueCore,
    store: &mut VecBacking,
    tag: u16,
    sector: u64,
) -> Vec<Command> {
    let mut out = Vec::new();
    let mut buf = vec![tag as u8; 4096];
    core.on_completion(
        tag,
        0,
        &desc(sys::UBLK_IO_OP_WRITE, 0, sector, 8),
        &mut buf[..],
        store,
        &mut out,
        &mut NoObserver,
    )
    .unwrap();
    out
}

#[test]
fn batch_mode_preps_every_tag_and_commits_only_on_flush() {
    let (mut core, mut store, out, _) = setup_mode(None, IoMode::Batch);
    assert_eq!(
        out,
        (0..DEPTH)
            .map(|tag| Command::Prep { tag })
            .collect::<Vec<_>>()
    );
    core.on_prep_done(0).unwrap();
    assert!(
        batch_write(&mut core, &mut store, 2, 0).is_empty(),
        "a commit waits for the flush"
    );
    assert!(batch_write(&mut core, &mut store, 5, 8).is_empty());
    assert_eq!(
        core.state(2),
        TagState::InKernel,
        "committed, as far as the server is concerned"
    );
    let mut out = Vec::new();
    assert_eq!(core.flush(&mut out), 2);
    assert_eq!(
        out,
        [
            Command::Commit {
                batch: 0,
                tag: 2,
                result: 4096
            },
            Command::Commit {
                batch: 0,
                tag: 5,
                result: 4096
            }
        ]
    );
    assert_eq!(core.flush(&mut out), 0, "nothing new: no empty command");
    assert_eq!(core.commits_in_flight(), 1);
    core.on_commit_done(0, 16, 8).unwrap();
    assert_eq!(core.commits_in_flight(), 0);
    assert_eq!(&store.0[4096..4097], &[5]);
}

/// A COMMIT_IO_CMDS the kernel took only partly leaves requests that never complete: the
/// core names the first element not taken.
#[test]
fn batch_mode_refuses_a_partly_taken_commit() {
    let (mut core, mut store, _, _) = setup_mode(None, IoMode::Batch);
    batch_write(&mut core, &mut store, 1, 0);
    batch_write(&mut core, &mut store, 3, 8);
    let mut out = Vec::new();
    core.flush(&mut out);
    let e = core.on_commit_done(0, 8, 8).unwrap_err();
    assert_eq!(
        e,
        CoreError::BatchRejected {
            q_id: 3,
            what: "COMMIT_IO_CMDS",
            tag: Some(3),
            result: 8
        }
    );
    assert!(e.to_string().contains("at tag 3: only 8 bytes"), "{e}");
    batch_write(&mut core, &mut store, 1, 0);
    core.flush(&mut out);
    let e = core
        .on_commit_done(1, -libc::EBUSY, 8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at tag 1: -16 (EBUSY)"), "{e}");
    assert!(core.on_commit_done(9, 8, 8).is_err(), "no such batch");
    assert!(core
        .on_prep_done(-libc::EINVAL)
        .unwrap_err()
        .to_string()
        .contains("PREP_IO_CMDS"));
}

/// The fetch's end with -ENODEV aborts every tag not held; other ends abort nothing.
#[test]
fn batch_mode_aborts_on_the_fetch_end() {
    let (mut core, mut store, _, _) =
        setup_mode(Some(Fault::StallTag { tag: 4, after: 0 }), IoMode::Batch);
    batch_write(&mut core, &mut store, 4, 0);
    assert_eq!(core.state(4), TagState::Serving);
    core.on_fetch_end(-libc::ENOBUFS, &mut NoObserver);
    assert!(!core.aborted_any());
    core.on_fetch_end(sys::UBLK_IO_RES_ABORT, &mut NoObserver);
    assert!(core.aborted_any() && !core.all_aborted());
    assert_eq!(
        core.state(4),
        TagState::Serving,
        "a held request is still the server's"
    );
    let mut out = Vec::new();
    assert_eq!(core.begin_shutdown(&mut out, &mut NoObserver), 1);
    assert!(out.is_empty());
    core.flush(&mut out);
    assert_eq!(
        out,
        [Command::Commit {
            batch: 0,
            tag: 4,
            result: -libc::EIO
        }]
    );
}

/// The planted batch bug: a batch flushed while the previous one is in flight carries its
/// elements again.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_stale_commit_resends_the_batch_in_flight() {
    let (mut core, mut store, _, _) = setup_mode(None, IoMode::Batch);
    crate::planted::plant(Bug::StaleCommit);
    batch_write(&mut core, &mut store, 1, 0);
    let mut out = Vec::new();
    core.flush(&mut out);
    batch_write(&mut core, &mut store, 2, 8);
    out.clear();
    core.flush(&mut out);
    crate::planted::plant(Bug::None);
    let tags: Vec<u16> = out
        .iter()
        .map(|c| match c {
            Command::Commit { tag, .. } => *tag,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(tags, [1, 2]);
}
