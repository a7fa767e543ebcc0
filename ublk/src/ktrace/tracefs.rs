//! The probe set and the reading of tracefs' text output into `Event`s.
//!
//! Every probe is an fprobe event with BTF-typed arguments (`f:` in `dynamic_events`), on
//! functions both locked kernels (6.12 and 7.2) offer: the block layer's exported
//! `blk_mq_start_request` / `blk_update_request` / `blk_mq_requeue_request` (filtered to
//! `ublkb*` disks) and the driver's `ublk_ch_uring_cmd` / `ublk_ctrl_uring_cmd` file
//! operations, whose 16/32-byte commands sit in the SQE's command area (offset 48). The
//! driver's inner functions differ between kernels (`__ublk_ch_uring_cmd` is inlined on 7.2,
//! 7.2 dispatches through `ublk_queue_rqs` as well as `ublk_queue_rq`); these do not.
//!
//! Kernels with BATCH_IO (7.x) also get the probes marked `optional`, on the driver's
//! per-element handlers of PREP_IO_CMDS and COMMIT_IO_CMDS (`ublk_batch_prep_io`,
//! `ublk_batch_commit_io`: callbacks, so never inlined): a batched server's tags get their
//! commands in the trace like a per-tag server's. A kernel without those functions says
//! `absent NAME` and is traced without them.
//!
//! A tracefs line: `<comm>-<pid> [<cpu>] <flags> <secs>.<usecs>: <event>: (<where>) k=v ...`.

use std::collections::{BTreeMap, HashMap};

use super::{CtrlCmd, Event, IoCmd, Kind, Op};

/// One tracefs event: its name, its `dynamic_events` definition, its filter.
pub struct Probe {
    pub name: &'static str,
    pub definition: &'static str,
    pub filter: Option<&'static str>,
    /// What it records, for a refusal's message.
    pub what: &'static str,
    /// Only where the kernel has the function (BATCH_IO's handlers): skipped, not refused.
    pub optional: bool,
}

const UBLK_DISK: &str = "name ~ \"ublkb*\"";

/// The probe set, in the order it is installed.
pub const PROBES: &[Probe] = &[
    Probe {
        name: "ublk_disp",
        definition: "f:ublk_disp blk_mq_start_request tag=rq->tag q=rq->mq_hctx->queue_num op=rq->cmd_flags sector=rq->__sector bytes=rq->__data_len name=rq->q->disk->disk_name:string",
        filter: Some(UBLK_DISK),
        what: "requests the driver takes",
        optional: false,
    },
    Probe {
        name: "ublk_cmd",
        definition: "f:ublk_cmd ublk_ch_uring_cmd op=cmd->cmd_op fl=issue_flags q=+48(cmd->sqe):u16 tag=+50(cmd->sqe):u16 res=+52(cmd->sqe):s32 addr=+56(cmd->sqe):x64 rdev=cmd->file->f_inode->i_rdev",
        filter: None,
        what: "the server's io commands",
        optional: false,
    },
    Probe {
        name: "ublk_cmd_ret",
        definition: "f:ublk_cmd_ret ublk_ch_uring_cmd%return ret=$retval",
        filter: None,
        what: "the driver's answers to io commands",
        optional: false,
    },
    Probe {
        name: "ublk_done",
        definition: "f:ublk_done blk_update_request tag=req->tag q=req->mq_hctx->queue_num err=error bytes=nr_bytes major=req->q->disk->major minor=req->q->disk->first_minor name=req->q->disk->disk_name:string",
        filter: Some(UBLK_DISK),
        what: "completions to the block layer",
        optional: false,
    },
    Probe {
        name: "ublk_requeue",
        definition: "f:ublk_requeue blk_mq_requeue_request tag=rq->tag q=rq->mq_hctx->queue_num name=rq->q->disk->disk_name:string",
        filter: Some(UBLK_DISK),
        what: "requeued requests",
        optional: false,
    },
    Probe {
        name: "ublk_ctrl",
        definition: "f:ublk_ctrl ublk_ctrl_uring_cmd op=cmd->cmd_op dev=+48(cmd->sqe):u32 q=+52(cmd->sqe):u16",
        filter: None,
        what: "control commands",
        optional: false,
    },
    Probe {
        name: "ublk_ctrl_ret",
        definition: "f:ublk_ctrl_ret ublk_ctrl_uring_cmd%return ret=$retval",
        filter: None,
        what: "the driver's answers to control commands",
        optional: false,
    },
    Probe {
        name: "ublk_bprep",
        definition: "f:ublk_bprep ublk_batch_prep_io q=ubq->q_id tag=elem->tag rdev=data->cmd->file->f_inode->i_rdev",
        filter: None,
        what: "the elements of batched PREP_IO_CMDS",
        optional: true,
    },
    Probe {
        name: "ublk_bprep_ret",
        definition: "f:ublk_bprep_ret ublk_batch_prep_io%return ret=$retval",
        filter: None,
        what: "the driver's answers to PREP_IO_CMDS elements",
        optional: true,
    },
    Probe {
        name: "ublk_bcommit",
        definition: "f:ublk_bcommit ublk_batch_commit_io q=ubq->q_id tag=elem->tag res=elem->result rdev=data->cmd->file->f_inode->i_rdev",
        filter: None,
        what: "the elements of batched COMMIT_IO_CMDS",
        optional: true,
    },
    Probe {
        name: "ublk_bcommit_ret",
        definition: "f:ublk_bcommit_ret ublk_batch_commit_io%return ret=$retval",
        filter: None,
        what: "the driver's answers to COMMIT_IO_CMDS elements",
        optional: true,
    },
];

/// Ring buffer per guest CPU (tracefs' buffer_size_kb), newest events kept.
pub const RING_KB_PER_CPU: u64 = 4096;
/// Where the image puts `install_script` (xtask runs it after boot for a traced run).
pub const INSTALL_PATH: &str = "etc/ublk-ktrace.sh";
/// Where that run leaves the script's `ok NAME` / `refused NAME: why` lines once it ended.
pub const STATUS_PATH: &str = "/run/ublk-ktrace.out";

/// The guest script that creates every probe, its filter, the ring and its clock, but
/// enables nothing (a probe costs only once enabled): one `ok NAME` or `refused NAME: why`
/// line per probe. Generated from `PROBES` into every image.
pub fn install_script() -> String {
    let mut s = String::from(
        "T=/sys/kernel/tracing\n\
         [ -d $T/events ] || mount -t tracefs nodev $T 2>/dev/null || { echo 'refused tracefs: it cannot be mounted'; exit 0; }\n\
         echo 0 > $T/tracing_on\n\
         echo global > $T/trace_clock\n\
         echo 1 > $T/options/overwrite\n",
    );
    s += &format!("echo {RING_KB_PER_CPU} > $T/buffer_size_kb\n");
    s += "add() {\n\
          \x20 if ! echo \"$2\" >> $T/dynamic_events 2>/dev/null; then\n\
          \x20   echo \"refused $1: $(grep -m1 'error:' $T/error_log | tail -n1)\"; return\n\
          \x20 fi\n\
          \x20 if [ -n \"$3\" ] && ! echo \"$3\" > $T/events/fprobes/$1/filter; then echo \"refused $1: its filter\"; return; fi\n\
          \x20 echo \"ok $1\"\n\
          }\n";
    for p in PROBES {
        assert!(!p.definition.contains('\'') && !p.filter.unwrap_or("").contains('\''));
        if p.optional {
            let function = p
                .definition
                .split_whitespace()
                .nth(1)
                .expect("f:NAME FUNCTION");
            let function = function.trim_end_matches("%return");
            s += &format!(
                "if ! grep -qw '^{function}' $T/available_filter_functions; then echo 'absent {}'; else ",
                p.name
            );
        }
        s += &format!(
            "add {} '{}' '{}'",
            p.name,
            p.definition,
            p.filter.unwrap_or("")
        );
        s += if p.optional { "; fi\n" } else { "\n" };
    }
    s
}

/// `IO_URING_F_CANCEL`: io_uring calls the command's handler to cancel it.
const IO_URING_F_CANCEL: u64 = 1 << 11;
const EAGAIN: i32 = -11;

/// What a tracer writes to `trace_marker` when it turns the probes back on after a pause.
pub const GAP_MARKER: &str = "ublk-ktrace-gap";

/// What reading tracefs' text gave.
#[derive(Debug, Default)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// Lines that were neither comments nor one of our events (kept out, counted).
    pub skipped: u64,
    /// Device id → (major, minor) of its disk, as the completions named it.
    pub disks: BTreeMap<u32, (u32, u32)>,
}

/// One tracefs line, split.
struct Line<'a> {
    pid: u32,
    t_us: u64,
    name: &'a str,
    fields: Vec<(&'a str, &'a str)>,
    /// Everything after the event's name.
    rest: String,
}

fn split(line: &str) -> Option<Line<'_>> {
    let toks: Vec<&str> = line.split_whitespace().collect();
    // The timestamp is the first token "<digits>.<digits>:" followed by "<event>:".
    let i = (1..toks.len().saturating_sub(1)).find(|&i| {
        let t = toks[i];
        t.ends_with(':')
            && toks[i + 1].ends_with(':')
            && t[..t.len() - 1].split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
    })?;
    let (secs, frac) = toks[i][..toks[i].len() - 1].split_once('.')?;
    let frac_us = format!("{frac:0<6}");
    let t_us = (secs.parse::<u64>().ok()?.checked_mul(1_000_000)?)
        .checked_add(frac_us[..6].parse::<u64>().ok()?)?;
    // "<comm>-<pid>" is everything before the "[cpu]" token (comm may hold spaces or '-').
    let cpu = toks[..i]
        .iter()
        .position(|t| t.starts_with('[') && t.ends_with(']'))?;
    let comm_pid = toks[..cpu].join(" ");
    let pid = comm_pid.rsplit_once('-')?.1.parse().ok()?;
    let name = toks[i + 1].strip_suffix(':')?;
    let fields = toks[i + 2..]
        .iter()
        .filter_map(|t| t.split_once('='))
        .collect();
    Some(Line {
        pid,
        t_us,
        name,
        fields,
        rest: toks[i + 2..].join(" "),
    })
}

impl Line<'_> {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| *v)
    }

    fn num(&self, k: &str) -> Option<u64> {
        let v = self.get(k)?;
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    }

    fn int(&self, k: &str) -> Option<i64> {
        self.get(k)?.parse().ok()
    }

    /// The device id of a `ublkb<N>` disk name.
    fn disk(&self) -> Option<u32> {
        self.get("name")?
            .trim_matches('"')
            .strip_prefix("ublkb")?
            .parse()
            .ok()
    }
}

/// Reads tracefs' `trace` text: our events in time order, each command paired with the
/// driver's answer (its return on the same task), a control command the driver bounced to
/// io_uring's worker (-EAGAIN) kept only as the worker's retry.
pub fn parse(text: &str, max_events: usize) -> Parsed {
    let mut out = Parsed::default();
    // The task's command waiting for its return: index into out.events.
    let mut open: HashMap<u32, usize> = HashMap::new();
    // Control commands the driver bounced (-EAGAIN): io_uring's worker sends them again.
    let mut bounced: Vec<usize> = Vec::new();
    for raw in text.lines() {
        if raw.starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        if out.events.len() >= max_events {
            out.skipped += 1;
            continue;
        }
        let Some(l) = split(raw) else {
            out.skipped += 1;
            continue;
        };
        if !apply(&l, &mut out.events, &mut open, &mut bounced) {
            out.skipped += 1;
        }
        if let (Some(dev), Some(major), Some(minor)) = (l.disk(), l.num("major"), l.num("minor")) {
            out.disks.insert(dev, (major as u32, minor as u32));
        }
    }
    bounced.sort_unstable();
    for i in bounced.into_iter().rev() {
        out.events.remove(i);
    }
    // Control commands moved to their returns: back into time order (stable: events of one
    // moment keep the order tracefs gave them).
    out.events.sort_by_key(|e| e.t_us);
    out
}

/// Adds the event of one line (or completes the one waiting for its return); false if the
/// line is not one of ours or lacks a field.
fn apply(
    l: &Line,
    events: &mut Vec<Event>,
    open: &mut HashMap<u32, usize>,
    bounced: &mut Vec<usize>,
) -> bool {
    if matches!(
        l.name,
        "ublk_cmd_ret" | "ublk_ctrl_ret" | "ublk_bprep_ret" | "ublk_bcommit_ret"
    ) {
        // An entry overwritten in the ring has nothing to pair with.
        if let Some(i) = open.remove(&l.pid) {
            pair_return(l, &mut events[i], i, bounced);
        }
        return true;
    }
    let Some(e) = event_of(l) else {
        return false;
    };
    // A task's next command ends any pairing left open (its return was lost); events of
    // the block layer on the same task (a commit completes its request) do not.
    match e.kind {
        Kind::Command { .. } | Kind::Control { .. } => {
            open.insert(l.pid, events.len());
        }
        Kind::Cancel => {
            open.remove(&l.pid);
        }
        _ => {}
    }
    events.push(e);
    true
}

/// A command's return: the driver's answer on its entry event. A control command moves to
/// its return (its effect holds from then on); one bounced to io_uring's worker is dropped.
fn pair_return(l: &Line, entry: &mut Event, i: usize, bounced: &mut Vec<usize>) {
    let ret = l.int("ret").map(|r| r as i32);
    let entry_us = entry.t_us;
    match &mut entry.kind {
        Kind::Command { ret: r, .. } => *r = ret,
        Kind::Control {
            ret: r, took_us, ..
        } => {
            if ret == Some(EAGAIN) {
                bounced.push(i);
            }
            *r = ret;
            *took_us = Some(l.t_us.saturating_sub(entry_us));
            entry.t_us = l.t_us;
        }
        _ => {}
    }
}

/// The event one entry line records; None if it is not ours or lacks a field.
fn event_of(l: &Line) -> Option<Event> {
    let event = |(dev, q, tag): (u32, u16, u16), kind| Event {
        t_us: l.t_us,
        pid: l.pid,
        dev,
        q,
        tag,
        kind,
    };
    Some(match l.name {
        "ublk_disp" => {
            let flags = l.num("op")?;
            let kind = Kind::Dispatch {
                op: Op::from_req_op(flags as u8),
                flags: (flags >> 8) as u32,
                sector: l.num("sector")?,
                sectors: (l.num("bytes")? / 512) as u32,
            };
            event(place(l)?, kind)
        }
        "ublk_done" => {
            let kind = Kind::Complete {
                error: l.int("err")? as i32,
                bytes: l.num("bytes")? as u32,
            };
            event(place(l)?, kind)
        }
        "ublk_requeue" => event(place(l)?, Kind::Requeue),
        "tracing_mark_write" if l.rest.contains(GAP_MARKER) => event((u32::MAX, 0, 0), Kind::Gap),
        "ublk_cmd" => command(l)?,
        "ublk_bprep" | "ublk_bcommit" => batch_element(l)?,
        "ublk_ctrl" => {
            let kind = Kind::Control {
                cmd: CtrlCmd(l.num("op")? as u8),
                ret: None,
                took_us: None,
            };
            event((l.num("dev")? as u32, l.num("q")? as u16, 0), kind)
        }
        _ => return None,
    })
}

fn place(l: &Line) -> Option<(u32, u16, u16)> {
    Some((l.disk()?, l.num("q")? as u16, l.num("tag")? as u16))
}

/// One element of a PREP_IO_CMDS or COMMIT_IO_CMDS, as the driver's per-element handler saw it.
fn batch_element(l: &Line) -> Option<Event> {
    let (cmd, result) = match l.name {
        "ublk_bprep" => (IoCmd::PrepIo, 0),
        _ => (IoCmd::CommitIo, l.int("res")? as i32),
    };
    Some(Event {
        t_us: l.t_us,
        pid: l.pid,
        dev: (l.num("rdev")? & 0xfffff) as u32,
        q: l.num("q")? as u16,
        tag: l.num("tag")? as u16,
        kind: Kind::Command {
            cmd,
            result,
            addr: 0,
            ret: None,
        },
    })
}

fn command(l: &Line) -> Option<Event> {
    let op = l.num("op")?;
    let flags = l.num("fl")?;
    // /dev/ublkcN: the character device's minor is the device id.
    let dev = (l.num("rdev")? & 0xfffff) as u32;
    let q = l.num("q")? as u16;
    let tag = l.num("tag")? as u16;
    let kind = if flags & IO_URING_F_CANCEL != 0 {
        Kind::Cancel
    } else {
        Kind::Command {
            cmd: IoCmd::from_nr(op as u8),
            result: l.int("res")? as i32,
            addr: l.num("addr")?,
            ret: None,
        }
    };
    Some(Event {
        t_us: l.t_us,
        pid: l.pid,
        dev,
        q,
        tag,
        kind,
    })
}
