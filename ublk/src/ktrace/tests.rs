use super::check::{Checker, Rule};
use super::*;

/// Lines as debian-6.12 printed them for ublk-mem (2 queues x depth 4) serving a 4 KiB read:
/// the control command bounced to io_uring's worker, fetches, dispatch, commit, completion.
const TRACEFS_612: &str = r#"# tracer: nop
#
        ublk-mem-163     [001] .....     3.626732: ublk_ctrl: (ublk_ctrl_uring_cmd+0x4/0x10c0 [ublk_drv]) op=3223352580 dev=4294967295 q=65535
        ublk-mem-163     [001] .....     3.626740: ublk_ctrl_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ctrl_uring_cmd) ret=-11
     iou-wrk-163-166     [000] .....     3.628948: ublk_ctrl: (ublk_ctrl_uring_cmd+0x4/0x10c0 [ublk_drv]) op=3223352580 dev=4294967295 q=65535
     iou-wrk-163-166     [000] .....     3.629000: ublk_ctrl_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ctrl_uring_cmd) ret=0
         ublk-q0-167     [000] ...1.     3.664340: ublk_cmd: (ublk_ch_uring_cmd+0x4/0x170 [ublk_drv]) op=3222304032 fl=2147483649 q=0 tag=3 res=0 addr=0x0 rdev=254803968
         ublk-q0-167     [000] ...1.     3.665008: ublk_cmd_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ch_uring_cmd) ret=-529
     iou-wrk-163-166     [000] .N...     3.709546: ublk_disp: (blk_mq_start_request+0x4/0x1a0) tag=3 q=0 op=8388608 sector=16 bytes=4096 name="ublkb0"
         ublk-q0-167     [000] ...1.     3.722089: ublk_cmd: (ublk_ch_uring_cmd+0x4/0x170 [ublk_drv]) op=3222304033 fl=2147483649 q=0 tag=3 res=4096 addr=0x0 rdev=254803968
         ublk-q0-167     [000] b....     3.722494: ublk_done: (blk_update_request+0x4/0x4a0) tag=3 q=0 err=0 bytes=4096 name="ublkb0"
         ublk-q0-167     [000] b....     3.722618: block_rq_complete: 259,0 R () 0 + 8 be,0,4 [0]
         ublk-q0-167     [000] .N.1.     3.726143: ublk_cmd_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ch_uring_cmd) ret=-529
"#;

#[test]
fn tracefs_text_becomes_paired_events() {
    let p = tracefs::parse(TRACEFS_612, 100);
    assert_eq!(p.skipped, 1, "the block tracepoint line is not ours");
    let kinds: Vec<String> = p.events.iter().map(|e| e.describe()).collect();
    assert_eq!(
        kinds,
        [
            "ADD_DEV -> 0",
            "server FETCH",
            "dispatched READ 16+8",
            "server COMMIT result 4096",
            "completed 4096 bytes"
        ],
        "{:#?}",
        p.events
    );
    let add = &p.events[0];
    assert_eq!((add.pid, add.dev, add.t_us), (166, u32::MAX, 3_629_000));
    assert!(
        matches!(
            add.kind,
            Kind::Control {
                took_us: Some(52),
                ..
            }
        ),
        "a control command stands at its return: {add:?}"
    );
    let commit = &p.events[3];
    assert_eq!((commit.dev, commit.q, commit.tag), (0, 0, 3));
    assert!(
        matches!(
            commit.kind,
            Kind::Command {
                ret: Some(EIOCBQUEUED),
                ..
            }
        ),
        "the commit's return follows the completion on its task: {commit:?}"
    );
    let c = Checker::run(&Header::default(), &p.events);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    assert_eq!(c.counts[&0].dispatched, 1);
    assert_eq!(c.counts[&0].completed, 1);
}

#[test]
fn the_events_file_round_trips() {
    let p = tracefs::parse(TRACEFS_612, 100);
    let header = Header {
        kernel: "6.12.117+deb12-cloud-amd64".into(),
        lost: 3,
    };
    let text = write(&header, &p.events);
    assert!(text.starts_with("# ublk-ktrace v1 kernel=6.12.117+deb12-cloud-amd64 lost=3\n"));
    assert!(
        text.contains("\n3722089 167 0 0 3 C COMMIT 4096 0 -529\n"),
        "{text}"
    );
    assert_eq!(parse(&text).unwrap(), (header, p.events));
}

#[test]
fn a_bad_events_file_names_its_line() {
    let e = parse("# ublk-ktrace v1 kernel=x lost=0\n1 2 0 0 3 D READ 0 8\n").unwrap_err();
    assert_eq!(e, "2: missing field 10");
    let e = parse("# ublk-ktrace v1\n1 2 0 0 3 Z\n").unwrap_err();
    assert_eq!(e, "2: unknown event kind \"Z\"");
    let e = parse("# ublk-ktrace v1\n1 2 0 99999 3 K\n").unwrap_err();
    assert_eq!(e, "2: field 4: 99999 is out of range");
    assert!(parse("hello")
        .unwrap_err()
        .starts_with("1: not a ublk kernel trace"));
}

fn ev(t_us: u64, tag: u16, kind: Kind) -> Event {
    Event {
        t_us,
        pid: 7,
        dev: 0,
        q: 1,
        tag,
        kind,
    }
}

fn fetch(t: u64, tag: u16) -> Event {
    cmd(t, tag, IoCmd::Fetch, 0)
}

fn cmd(t: u64, tag: u16, cmd: IoCmd, result: i32) -> Event {
    ev(
        t,
        tag,
        Kind::Command {
            cmd,
            result,
            addr: 0,
            ret: Some(EIOCBQUEUED),
        },
    )
}

fn read(t: u64, tag: u16, sector: u64, sectors: u32) -> Event {
    ev(
        t,
        tag,
        Kind::Dispatch {
            op: Op::Read,
            flags: 0,
            sector,
            sectors,
        },
    )
}

fn done(t: u64, tag: u16, bytes: u32) -> Event {
    ev(t, tag, Kind::Complete { error: 0, bytes })
}

fn ctrl(t: u64, c: CtrlCmd) -> Event {
    ev(
        t,
        0,
        Kind::Control {
            cmd: c,
            ret: Some(0),
            took_us: Some(10),
        },
    )
}

fn rules(events: &[Event]) -> Vec<(Rule, String)> {
    let c = Checker::run(&Header::default(), events);
    c.violations
        .into_iter()
        .map(|v| (v.rule, v.message))
        .collect()
}

#[test]
fn a_clean_sequence_breaks_no_rule() {
    let events = [
        fetch(1, 5),
        read(1_204_000, 5, 8, 8),
        cmd(1_300_000, 5, IoCmd::CommitAndFetch, 4096),
        done(1_300_010, 5, 4096),
        read(1_400_000, 5, 16, 8),
        cmd(1_500_000, 5, IoCmd::CommitAndFetch, -5),
        ev(
            1_500_010,
            5,
            Kind::Complete {
                error: 10,
                bytes: 4096,
            },
        ),
        ctrl(2_000_000, CtrlCmd::STOP_DEV),
        ctrl(2_100_000, CtrlCmd::DEL_DEV),
    ];
    assert_eq!(rules(&events), []);
}

#[test]
fn each_rule_fires_with_the_tag_the_event_and_the_rule() {
    let oversize = rules(&[
        fetch(1, 5),
        read(1_204_000, 5, 8, 8),
        cmd(1_300_000, 5, IoCmd::CommitAndFetch, 65536),
    ]);
    assert_eq!(
        oversize,
        [(
            Rule::ResultExceedsRequest,
            "dev0 q1 tag 5: server COMMIT result 65536 at 1.300 s, for a 4096-byte READ 8+8 \
             dispatched at 1.204 s: rule result-exceeds-request (a commit's result is \
             at most its request's length)"
                .to_string()
        )]
    );
    let cases: Vec<(Vec<Event>, Rule)> = vec![
        (
            vec![fetch(1, 5), cmd(2, 5, IoCmd::CommitAndFetch, 0)],
            Rule::CommitWithoutRequest,
        ),
        (
            vec![fetch(1, 5), read(2, 5, 0, 8), fetch(3, 5)],
            Rule::FetchWhileBusy,
        ),
        (vec![fetch(1, 5), fetch(2, 5)], Rule::FetchWhileBusy),
        (
            vec![
                fetch(1, 5),
                read(2, 5, 0, 8),
                cmd(3, 5, IoCmd::CommitAndFetch, 4096),
                done(4, 5, 4096),
                done(5, 5, 4096),
            ],
            Rule::CompletedTwice,
        ),
        (
            vec![fetch(1, 5), read(2, 5, 0, 8), read(3, 5, 8, 8)],
            Rule::DispatchWhileBusy,
        ),
        (
            vec![fetch(1, 5), read(2, 5, 0, 8), ctrl(3, CtrlCmd::STOP_DEV)],
            Rule::StopWithOutstanding,
        ),
        (
            vec![
                fetch(1, 5),
                fetch(1, 6),
                ctrl(2, CtrlCmd::START_USER_RECOVERY),
                fetch(3, 5),
                ctrl(4, CtrlCmd::END_USER_RECOVERY),
            ],
            Rule::RecoveryOrder,
        ),
    ];
    for (events, rule) in cases {
        let got = rules(&events);
        assert_eq!(got.len(), 1, "{rule:?}: {got:?}");
        assert_eq!(got[0].0, rule, "{got:?}");
        assert!(got[0].1.starts_with("dev0"), "{got:?}");
        assert!(got[0].1.contains(rule.name()), "{got:?}");
    }
    let mut refused = fetch(1, 5);
    if let Kind::Command { ret, .. } = &mut refused.kind {
        *ret = Some(-22);
    }
    let got = rules(&[refused]);
    assert_eq!(got[0].0, Rule::CommandRefused);
    assert!(got[0].1.contains("server FETCH, refused -22"), "{got:?}");
}

#[test]
fn a_request_refused_at_dispatch_is_not_a_second_completion() {
    // 7.2 with FAIL_IO and no server: queue_rq returns BLK_STS_TARGET; the block layer ends
    // the request with it, never started (no dispatch event).
    let refused = ev(
        4,
        5,
        Kind::Complete {
            error: 5,
            bytes: 98304,
        },
    );
    let events = [
        fetch(1, 5),
        read(2, 5, 0, 8),
        ev(
            3,
            5,
            Kind::Complete {
                error: 10,
                bytes: 4096,
            },
        ),
        refused,
    ];
    assert_eq!(rules(&events), []);
    // A flush request borrows a waiting request's tag; when it completes, the waiting
    // request (a pure flush) is ended too, on the same tag: 0 bytes, not a second completion.
    let flush = ev(
        5,
        6,
        Kind::Dispatch {
            op: Op::Flush,
            flags: 0,
            sector: 0,
            sectors: 0,
        },
    );
    let events = [
        fetch(1, 6),
        flush,
        cmd(6, 6, IoCmd::CommitAndFetch, 0),
        done(7, 6, 0),
        done(8, 6, 0),
    ];
    assert_eq!(rules(&events), []);
}

#[test]
fn a_lossy_trace_checks_a_tag_only_once_its_past_is_seen() {
    // The ring lost the dispatch of tag 5: its commit cannot be judged; tag 6's can.
    let events = [
        cmd(1, 5, IoCmd::CommitAndFetch, 4096),
        done(2, 5, 4096),
        read(3, 6, 0, 8),
        done(4, 6, 4096),
        done(5, 6, 4096),
    ];
    let lossy = Header {
        kernel: String::new(),
        lost: 10,
    };
    let c = Checker::run(&lossy, &events);
    let got: Vec<Rule> = c.violations.iter().map(|v| v.rule).collect();
    assert_eq!(got, [Rule::CompletedTwice]);
    assert_eq!(
        rules(&events).iter().map(|v| v.0).collect::<Vec<_>>(),
        [
            Rule::CommitWithoutRequest,
            Rule::CompletedTwice,
            Rule::CompletedTwice
        ],
        "without loss every tag is known from the start"
    );
}

#[test]
fn a_stuck_tag_is_summarised_with_its_last_events() {
    let c = Checker::run(
        &Header::default(),
        &[fetch(1, 5), read(1_204_000, 5, 8, 8), fetch(2, 6)],
    );
    let stuck = c.stuck();
    assert_eq!(stuck.len(), 1);
    assert_eq!(
        stuck[0].summary,
        "dev0 q1 tag 5: dispatched READ 8+8 at 1.204 s; no command from the server since"
    );
    assert_eq!(stuck[0].last.len(), 2);
}

/// The stalled-tag scenario's end on 6.12: STOP_DEV enters while tag 0 is held, the server
/// fails the held request, and only then does STOP_DEV return. The command stands at its
/// return, so no request is outstanding when it takes effect.
const STOP_WHILE_HELD: &str = r#"
         ublk-q0-167     [000] ...1.     3.309616: ublk_cmd: (ublk_ch_uring_cmd+0x4/0x170 [ublk_drv]) op=3222304032 fl=2147483649 q=0 tag=0 res=0 addr=0x0 rdev=254803968
              dd-193     [001] .....     3.314236: ublk_disp: (blk_mq_start_request+0x4/0x1a0) tag=0 q=0 op=0 sector=160 bytes=4096 name="ublkb0"
        ublk-mem-166     [001] .....    19.667486: ublk_ctrl: (ublk_ctrl_uring_cmd+0x4/0x10c0 [ublk_drv]) op=3223352583 dev=0 q=65535
         ublk-q0-167     [000] ...1.    19.725408: ublk_cmd: (ublk_ch_uring_cmd+0x4/0x170 [ublk_drv]) op=3222304033 fl=2147483649 q=0 tag=0 res=-5 addr=0x0 rdev=254803968
         ublk-q0-167     [000] b....    19.725509: ublk_done: (blk_update_request+0x4/0x4a0) tag=0 q=0 err=10 bytes=4096 major=259 minor=0 name="ublkb0"
        ublk-mem-166     [001] .....    19.780000: ublk_ctrl_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ctrl_uring_cmd) ret=0
"#;

#[test]
fn a_control_command_takes_effect_at_its_return() {
    let p = tracefs::parse(STOP_WHILE_HELD, 100);
    assert_eq!(p.skipped, 0);
    assert_eq!(p.disks.get(&0), Some(&(259, 0)));
    let last = p.events.last().unwrap();
    assert_eq!(last.describe(), "STOP_DEV -> 0");
    assert_eq!(last.t_us, 19_780_000);
    assert!(matches!(
        last.kind,
        Kind::Control {
            took_us: Some(112_514),
            ..
        }
    ));
    let c = Checker::run(&Header::default(), &p.events);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // Returned before the held request was failed: that is the rule.
    let early = STOP_WHILE_HELD.replace("19.780000: ublk_ctrl_ret", "19.700000: ublk_ctrl_ret");
    let c = Checker::run(&Header::default(), &tracefs::parse(&early, 100).events);
    assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    assert!(c.violations[0]
        .message
        .contains("rule stop-with-outstanding"));
}

#[test]
fn a_gap_in_the_trace_starts_every_tag_over() {
    // vm-perf's probes off between its traced cells: the device was deleted and added again
    // unseen; its tags' old requests must not make the new ones look like double dispatches.
    let marker =
        "          <...>-201     [000] .....    50.000000: tracing_mark_write: ublk-ktrace-gap\n";
    let p = tracefs::parse(marker, 10);
    assert_eq!(p.events.len(), 1);
    assert_eq!(p.events[0].kind, Kind::Gap);
    let gap = p.events[0];
    let before = [fetch(1, 5), read(2, 5, 0, 8)];
    let after = [
        read(60_000_000, 5, 8, 8),
        done(60_000_100, 5, 4096),
        done(60_000_200, 5, 4096),
    ];
    let with_gap: Vec<Event> = before
        .iter()
        .chain([&gap])
        .chain(after.iter())
        .copied()
        .collect();
    let got: Vec<Rule> = Checker::run(&Header::default(), &with_gap)
        .violations
        .iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(
        got,
        [Rule::CompletedTwice],
        "judged again from the dispatch after the gap"
    );
    let without: Vec<Event> = before.iter().chain(after.iter()).copied().collect();
    let got: Vec<Rule> = Checker::run(&Header::default(), &without)
        .violations
        .iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(got, [Rule::DispatchWhileBusy, Rule::CompletedTwice]);
    let text = write(&Header::default(), &with_gap);
    assert!(text.contains("\n50000000 201 ? 0 - G\n"), "{text}");
    assert_eq!(parse(&text).unwrap().1, with_gap);
}

#[test]
fn a_timestamp_past_u64_is_not_an_event() {
    let line = "  x-1 [000] ..... 18446744073709.999999: ublk_ctrl: (f) op=1 dev=0 q=0\n";
    let p = tracefs::parse(line, 10);
    assert_eq!((p.events.len(), p.skipped), (0, 1));
}

#[test]
fn the_install_script_creates_every_probe_and_enables_none() {
    let s = tracefs::install_script();
    for p in tracefs::PROBES {
        assert!(
            s.contains(&format!("add {} '{}'", p.name, p.definition)),
            "{}",
            p.name
        );
    }
    assert!(s.contains(&format!(
        "echo {} > $T/buffer_size_kb",
        tracefs::RING_KB_PER_CPU
    )));
    assert!(s.contains("echo global > $T/trace_clock"));
    assert!(!s.contains("enable"), "{s}");
    assert!(!s.contains("tracing_on\necho 1"), "{s}");
}

/// A BATCH_IO server's commands as 7.2's per-element handlers show them: PREP elements, a
/// dispatch, COMMIT_IO elements (each with its return), the completion.
const TRACEFS_BATCH: &str = r#"# tracer: nop
         ublk-q0-170     [000] ...1.     3.100000: ublk_bprep: (ublk_batch_prep_io+0x4/0x1a0 [ublk_drv]) q=0 tag=0 rdev=254803968
         ublk-q0-170     [000] ...1.     3.100010: ublk_bprep_ret: (ublk_walk_cmd_buf+0x9e/0x150 [ublk_drv] <- ublk_batch_prep_io) ret=0
         ublk-q0-170     [000] ...1.     3.100020: ublk_bprep: (ublk_batch_prep_io+0x4/0x1a0 [ublk_drv]) q=0 tag=1 rdev=254803968
         ublk-q0-170     [000] ...1.     3.100030: ublk_bprep_ret: (ublk_walk_cmd_buf+0x9e/0x150 [ublk_drv] <- ublk_batch_prep_io) ret=0
              dd-193     [001] .....     3.200000: ublk_disp: (blk_mq_start_request+0x4/0x1a0) tag=1 q=0 op=0 sector=16 bytes=4096 name="ublkb0"
         ublk-q0-170     [000] ...1.     3.210000: ublk_bcommit: (ublk_batch_commit_io+0x4/0x220 [ublk_drv]) q=0 tag=1 res=4096 rdev=254803968
         ublk-q0-170     [000] b....     3.210010: ublk_done: (blk_update_request+0x4/0x4a0) tag=1 q=0 err=0 bytes=4096 name="ublkb0"
         ublk-q0-170     [000] ...1.     3.210020: ublk_bcommit_ret: (ublk_walk_cmd_buf+0x9e/0x150 [ublk_drv] <- ublk_batch_commit_io) ret=0
"#;

#[test]
fn batched_commands_are_per_tag_commands() {
    let p = tracefs::parse(TRACEFS_BATCH, 100);
    let kinds: Vec<String> = p.events.iter().map(|e| e.describe()).collect();
    assert_eq!(
        kinds,
        [
            "server PREP_IO, done",
            "server PREP_IO, done",
            "dispatched READ 16+8",
            "server COMMIT_IO result 4096, done",
            "completed 4096 bytes"
        ]
    );
    assert!(p.events.iter().all(|e| e.dev == 0 && e.q == 0));
    let c = Checker::run(&Header::default(), &p.events);
    assert!(c.violations.is_empty(), "{:?}", c.violations);
    // The events file keeps them (round trip), and the rules apply to them as to per-tag ones.
    let text = write(&Header::default(), &p.events);
    assert_eq!(parse(&text).unwrap().1, p.events);
    let bad = vec![
        cmd(1, 0, IoCmd::PrepIo, 0),
        cmd(2, 1, IoCmd::PrepIo, 0),
        read(3, 1, 0, 8),
        cmd(4, 1, IoCmd::CommitIo, 8192),
        cmd(5, 0, IoCmd::CommitIo, 4096),
        cmd(6, 1, IoCmd::PrepIo, 0),
    ];
    let rules: Vec<Rule> = Checker::run(&Header::default(), &bad)
        .violations
        .iter()
        .map(|v| v.rule)
        .collect();
    assert_eq!(
        rules,
        [
            Rule::ResultExceedsRequest,
            Rule::CommitWithoutRequest,
            Rule::FetchWhileBusy
        ]
    );
}
