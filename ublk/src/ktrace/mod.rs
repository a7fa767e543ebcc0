//! The kernel's view of any ublk server: per-tag events recorded inside the guest by tracefs
//! probes on the ublk driver and the block layer (no change to the server, none to the
//! kernel), in one documented line format (`ublk/KTRACE.md`), checked offline by protocol
//! rules (`check`) and replayed by the simulator.
//!
//! ```text
//!   tracefs text (guest)  ──tracefs::parse──►  Vec<Event>  ──write──►  trace/events.txt
//!                                                  │                        │ parse
//!                                                  ▼                        ▼
//!                                       check::Checker (rules)     sim replay (requests)
//! ```
//!
//! Where an event comes from (the probe set is in xtask's `ktrace::probes`):
//! - `Dispatch`: `blk_mq_start_request` on a `ublkb*` disk — the driver took the request;
//! - `Command`: `ublk_ch_uring_cmd` (entry: the server's 16-byte io command as it sent it;
//!   return: what the driver answered, -EIOCBQUEUED = accepted and pending);
//! - `Complete`: `blk_update_request` on a `ublkb*` disk — completion to the block layer;
//! - `Requeue`: `blk_mq_requeue_request` (user recovery, partial completion);
//! - `Control`: `ublk_ctrl_uring_cmd` entry and return (ADD/START/STOP/DEL, recovery, ...).

pub mod check;
pub mod tracefs;

use std::fmt::Write as _;

pub const MAGIC: &str = "# ublk-ktrace v1";

/// Most events a trace file may hold (the guest ring buffer holds far fewer).
pub const MAX_EVENTS: usize = 4_000_000;

/// Block-layer operations (`REQ_OP_*`, the low 8 bits of `cmd_flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
    /// Any other REQ_OP (zoned operations, secure erase, driver-private).
    Other(u8),
}

impl Op {
    pub fn from_req_op(op: u8) -> Op {
        match op {
            0 => Op::Read,
            1 => Op::Write,
            2 => Op::Flush,
            3 => Op::Discard,
            9 => Op::WriteZeroes,
            n => Op::Other(n),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Op::Read => "READ".into(),
            Op::Write => "WRITE".into(),
            Op::Flush => "FLUSH".into(),
            Op::Discard => "DISCARD".into(),
            Op::WriteZeroes => "WRITE_ZEROES".into(),
            Op::Other(n) => format!("OP{n}"),
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "READ" => Op::Read,
            "WRITE" => Op::Write,
            "FLUSH" => Op::Flush,
            "DISCARD" => Op::Discard,
            "WRITE_ZEROES" => Op::WriteZeroes,
            _ => Op::Other(s.strip_prefix("OP")?.parse().ok()?),
        })
    }

    /// Whether the request moves data (a commit's result is bounded by its length).
    pub fn moves_data(&self) -> bool {
        matches!(self, Op::Read | Op::Write)
    }
}

/// A server's io command (`cmd_op & 0xff`, ioctl-encoded or legacy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCmd {
    Fetch,
    CommitAndFetch,
    NeedGetData,
    RegisterBuf,
    UnregisterBuf,
    /// BATCH_IO: one element of a PREP_IO_CMDS (the tag is the server's to receive requests,
    /// like a FETCH).
    PrepIo,
    /// BATCH_IO: one element of a COMMIT_IO_CMDS (the tag's result; the tag is ready again at
    /// once, like a COMMIT_AND_FETCH).
    CommitIo,
    Other(u8),
}

impl IoCmd {
    /// Takes a tag for requests: FETCH, or a PREP_IO_CMDS element.
    pub fn fetches(self) -> bool {
        matches!(self, IoCmd::Fetch | IoCmd::PrepIo)
    }

    /// Commits a tag's request (and keeps the tag): COMMIT_AND_FETCH, or a COMMIT_IO_CMDS element.
    pub fn commits(self) -> bool {
        matches!(self, IoCmd::CommitAndFetch | IoCmd::CommitIo)
    }

    pub fn from_nr(nr: u8) -> IoCmd {
        match nr {
            0x20 => IoCmd::Fetch,
            0x21 => IoCmd::CommitAndFetch,
            0x22 => IoCmd::NeedGetData,
            0x23 => IoCmd::RegisterBuf,
            0x24 => IoCmd::UnregisterBuf,
            n => IoCmd::Other(n),
        }
    }

    pub fn name(&self) -> String {
        match self {
            IoCmd::Fetch => "FETCH".into(),
            IoCmd::CommitAndFetch => "COMMIT".into(),
            IoCmd::NeedGetData => "GET_DATA".into(),
            IoCmd::RegisterBuf => "REG_BUF".into(),
            IoCmd::UnregisterBuf => "UNREG_BUF".into(),
            IoCmd::PrepIo => "PREP_IO".into(),
            IoCmd::CommitIo => "COMMIT_IO".into(),
            IoCmd::Other(n) => format!("IO_0x{n:02x}"),
        }
    }

    fn parse(s: &str) -> Option<IoCmd> {
        Some(match s {
            "FETCH" => IoCmd::Fetch,
            "COMMIT" => IoCmd::CommitAndFetch,
            "GET_DATA" => IoCmd::NeedGetData,
            "REG_BUF" => IoCmd::RegisterBuf,
            "UNREG_BUF" => IoCmd::UnregisterBuf,
            "PREP_IO" => IoCmd::PrepIo,
            "COMMIT_IO" => IoCmd::CommitIo,
            _ => IoCmd::Other(u8::from_str_radix(s.strip_prefix("IO_0x")?, 16).ok()?),
        })
    }
}

/// A control command (`cmd_op & 0xff` on /dev/ublk-control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtrlCmd(pub u8);

const CTRL_NAMES: &[(u8, &str)] = &[
    (0x01, "GET_QUEUE_AFFINITY"),
    (0x02, "GET_DEV_INFO"),
    (0x04, "ADD_DEV"),
    (0x05, "DEL_DEV"),
    (0x06, "START_DEV"),
    (0x07, "STOP_DEV"),
    (0x08, "SET_PARAMS"),
    (0x09, "GET_PARAMS"),
    (0x10, "START_USER_RECOVERY"),
    (0x11, "END_USER_RECOVERY"),
    (0x12, "GET_DEV_INFO2"),
    (0x13, "GET_FEATURES"),
    (0x14, "DEL_DEV_ASYNC"),
    (0x15, "UPDATE_SIZE"),
    (0x16, "QUIESCE_DEV"),
    (0x17, "TRY_STOP_DEV"),
];

impl CtrlCmd {
    pub const ADD_DEV: CtrlCmd = CtrlCmd(0x04);
    pub const DEL_DEV: CtrlCmd = CtrlCmd(0x05);
    pub const STOP_DEV: CtrlCmd = CtrlCmd(0x07);
    pub const START_USER_RECOVERY: CtrlCmd = CtrlCmd(0x10);
    pub const END_USER_RECOVERY: CtrlCmd = CtrlCmd(0x11);
    pub const DEL_DEV_ASYNC: CtrlCmd = CtrlCmd(0x14);

    pub fn name(&self) -> String {
        match CTRL_NAMES.iter().find(|(n, _)| *n == self.0) {
            Some((_, name)) => (*name).into(),
            None => format!("CTRL_0x{:02x}", self.0),
        }
    }

    fn parse(s: &str) -> Option<CtrlCmd> {
        if let Some((n, _)) = CTRL_NAMES.iter().find(|(_, name)| *name == s) {
            return Some(CtrlCmd(*n));
        }
        Some(CtrlCmd(
            u8::from_str_radix(s.strip_prefix("CTRL_0x")?, 16).ok()?,
        ))
    }
}

/// The driver's answer to a command: -EIOCBQUEUED (accepted, its completion comes later).
pub const EIOCBQUEUED: i32 = -529;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The driver took a request from the block layer for (q, tag).
    Dispatch {
        op: Op,
        /// `cmd_flags >> 8`: the block layer's request flags (FUA, PREFLUSH, SYNC, ...).
        flags: u32,
        sector: u64,
        /// Length in 512-byte sectors (0 for a flush).
        sectors: u32,
    },
    /// A command the server sent for (q, tag), as the driver received it, and its answer
    /// (None when the return was not recorded: ring overwritten, or the trace ended first).
    Command {
        cmd: IoCmd,
        result: i32,
        addr: u64,
        ret: Option<i32>,
    },
    /// io_uring cancelled the tag's pending command (the server's ring is going away).
    Cancel,
    /// Completion to the block layer: `error` is the blk_status (0 ok), `bytes` completed.
    Complete { error: i32, bytes: u32 },
    /// The request went back to the block layer to be dispatched again.
    Requeue,
    /// The probes were off until now (vm-perf turns them on only for its traced cells): what
    /// happened in between is unknown, and every tag starts over as after a lost ring.
    Gap,
    /// A control command for `dev` (queue in `q` for per-queue ones) and its answer. The
    /// event stands at its return (what it changed is true from then on), `took_us` after
    /// its entry; a command that never returned stands at its entry (`ret`, `took_us` None).
    Control {
        cmd: CtrlCmd,
        ret: Option<i32>,
        took_us: Option<u64>,
    },
}

/// One event. `dev` is the device id (u32::MAX: none yet, e.g. ADD_DEV asking for any id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Microseconds since the guest booted (tracefs' global clock).
    pub t_us: u64,
    pub pid: u32,
    pub dev: u32,
    pub q: u16,
    pub tag: u16,
    pub kind: Kind,
}

impl Event {
    /// "1.204 s".
    pub fn at(&self) -> String {
        format!(
            "{}.{:03} s",
            self.t_us / 1_000_000,
            (self.t_us / 1000) % 1000
        )
    }

    /// What happened, for people: "dispatched READ 8+8", "COMMIT result 65536", ...
    pub fn describe(&self) -> String {
        match self.kind {
            Kind::Dispatch {
                op,
                sector,
                sectors,
                ..
            } => format!("dispatched {} {sector}+{sectors}", op.name()),
            Kind::Command {
                cmd, result, ret, ..
            } => {
                let answer = match ret {
                    Some(EIOCBQUEUED) | None => String::new(),
                    Some(0) => ", done".into(),
                    Some(r) => format!(", refused {r}"),
                };
                match cmd {
                    IoCmd::CommitAndFetch => format!("server COMMIT result {result}{answer}"),
                    IoCmd::CommitIo => format!("server COMMIT_IO result {result}{answer}"),
                    c => format!("server {}{answer}", c.name()),
                }
            }
            Kind::Cancel => "command cancelled by io_uring".into(),
            Kind::Complete { error: 0, bytes } => format!("completed {bytes} bytes"),
            Kind::Complete { error, bytes } => {
                format!("completed with blk_status {error} ({bytes} bytes)")
            }
            Kind::Requeue => "requeued".into(),
            Kind::Gap => "the trace resumes after a gap".into(),
            Kind::Control { cmd, ret, .. } => match ret {
                Some(r) => format!("{} -> {r}", cmd.name()),
                None => format!("{} (no answer)", cmd.name()),
            },
        }
    }

    /// "dev0 q1 tag 5".
    pub fn place(&self) -> String {
        match self.kind {
            Kind::Control { .. } | Kind::Gap => format!("dev{}", dev_name(self.dev)),
            _ => format!("dev{} q{} tag {}", self.dev, self.q, self.tag),
        }
    }
}

fn dev_name(dev: u32) -> String {
    if dev == u32::MAX {
        "?".into()
    } else {
        dev.to_string()
    }
}

/// What the guest's tracing reported besides the events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub kernel: String,
    /// Events the ring buffer overwrote (the oldest are gone; the newest are kept).
    pub lost: u64,
}

/// One line per event (`ublk/KTRACE.md`).
pub fn write(header: &Header, events: &[Event]) -> String {
    let mut s = String::with_capacity(64 + events.len() * 48);
    let _ = writeln!(
        s,
        "{MAGIC} kernel={} lost={}",
        header.kernel.replace(char::is_whitespace, "_"),
        header.lost
    );
    for e in events {
        let tag = |s: &mut String| {
            let _ = write!(s, "{} {} {} {} {}", e.t_us, e.pid, e.dev, e.q, e.tag);
        };
        match e.kind {
            Kind::Control { cmd, ret, took_us } => {
                let _ = write!(s, "{} {} {} {} -", e.t_us, e.pid, dev_name(e.dev), e.q);
                let took = took_us.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
                let _ = writeln!(s, " X {} {} {took}", cmd.name(), opt(ret));
            }
            Kind::Dispatch {
                op,
                flags,
                sector,
                sectors,
            } => {
                tag(&mut s);
                let _ = writeln!(s, " D {} {flags:x} {sector} {sectors}", op.name());
            }
            Kind::Command {
                cmd,
                result,
                addr,
                ret,
            } => {
                tag(&mut s);
                let _ = writeln!(s, " C {} {result} {addr:x} {}", cmd.name(), opt(ret));
            }
            Kind::Cancel => {
                tag(&mut s);
                s.push_str(" K\n");
            }
            Kind::Complete { error, bytes } => {
                tag(&mut s);
                let _ = writeln!(s, " E {error} {bytes}");
            }
            Kind::Requeue => {
                tag(&mut s);
                s.push_str(" Q\n");
            }
            Kind::Gap => {
                let _ = writeln!(s, "{} {} ? 0 - G", e.t_us, e.pid);
            }
        }
    }
    s
}

fn opt(v: Option<i32>) -> String {
    v.map(|r| r.to_string()).unwrap_or_else(|| "-".into())
}

/// Parses an events file; an error names the line (`LINE: what is wrong`).
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), String> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or("empty kernel trace")?;
    let rest = first
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("1: not a ublk kernel trace (expected `{MAGIC} ...`)"))?;
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let header = Header {
        // A file from elsewhere: only printable characters, bounded, reach a terminal.
        kernel: (field("kernel").unwrap_or_default().chars())
            .filter(|c| c.is_ascii_graphic())
            .take(128)
            .collect(),
        lost: field("lost").and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    let mut events = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if events.len() >= MAX_EVENTS {
            return Err(format!("{}: more than {MAX_EVENTS} events", i + 1));
        }
        events.push(parse_line(line).map_err(|e| format!("{}: {e}", i + 1))?);
    }
    Ok((header, events))
}

fn parse_line(line: &str) -> Result<Event, String> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |j: usize| f.get(j).copied().ok_or(format!("missing field {}", j + 1));
    let num = |j: usize| -> Result<u64, String> {
        let s = get(j)?;
        s.parse()
            .map_err(|_| format!("field {}: bad number {s:?}", j + 1))
    };
    let int = |j: usize| -> Result<i32, String> {
        let s = get(j)?;
        s.parse()
            .map_err(|_| format!("field {}: bad number {s:?}", j + 1))
    };
    let ret = |j: usize| -> Result<Option<i32>, String> {
        match get(j)? {
            "-" => Ok(None),
            _ => int(j).map(Some),
        }
    };
    let small = |j: usize, max: u64| -> Result<u64, String> {
        let v = num(j)?;
        (v <= max)
            .then_some(v)
            .ok_or(format!("field {}: {v} is out of range", j + 1))
    };
    let dev = match get(2)? {
        "?" => u32::MAX,
        _ => small(2, u32::MAX as u64 - 1)? as u32,
    };
    let q = small(3, u16::MAX as u64)? as u16;
    let tag = match get(4)? {
        "-" => 0,
        _ => small(4, u16::MAX as u64)? as u16,
    };
    let kind = match get(5)? {
        "D" => Kind::Dispatch {
            op: Op::parse(get(6)?).ok_or("unknown op")?,
            flags: u32::from_str_radix(get(7)?, 16).map_err(|_| "bad flags")?,
            sector: num(8)?,
            sectors: small(9, u32::MAX as u64)? as u32,
        },
        "C" => Kind::Command {
            cmd: IoCmd::parse(get(6)?).ok_or("unknown io command")?,
            result: int(7)?,
            addr: u64::from_str_radix(get(8)?, 16).map_err(|_| "bad address")?,
            ret: ret(9)?,
        },
        "K" => Kind::Cancel,
        "E" => Kind::Complete {
            error: int(6)?,
            bytes: small(7, u32::MAX as u64)? as u32,
        },
        "Q" => Kind::Requeue,
        "G" => Kind::Gap,
        "X" => Kind::Control {
            cmd: CtrlCmd::parse(get(6)?).ok_or("unknown control command")?,
            ret: ret(7)?,
            took_us: match get(8)? {
                "-" => None,
                _ => Some(num(8)?),
            },
        },
        k => return Err(format!("unknown event kind {k:?}")),
    };
    Ok(Event {
        t_us: num(0)?,
        pid: small(1, u32::MAX as u64)? as u32,
        dev,
        q,
        tag,
        kind,
    })
}

#[cfg(test)]
mod tests;
