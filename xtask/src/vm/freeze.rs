//! Freeze-frames: when a step hangs, capture why before the VM dies. Every probe has its own
//! timeout, so collecting can never hang; if the agent itself is stuck, SysRq t/w go in over
//! the serial console and the kernel's answer lands in the serial log.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ublk::contract::StateDump;

use crate::vm::Vm;

/// Budget of each probe.
const PROBE: Duration = Duration::from_secs(3);

/// What the freeze-frame found, for assertions and the summary.
#[derive(Debug, Default)]
pub struct FreezeFrame {
    pub dir: PathBuf,
    /// "d0 queue 0 tag 5: serving read sector 8 (+8)" or "ublkb0 hctx0: tag 5 in flight (READ)".
    pub stuck_tags: Vec<String>,
    /// "pid 123 dd (D): io_schedule <- ..." — tasks in uninterruptible sleep.
    pub blocked_tasks: Vec<String>,
    pub notes: Vec<String>,
    /// The kernel trace's last events of every tag holding a request (`vm::ktrace`).
    pub traced: Vec<String>,
}

/// A live server the freeze-frame looks at: its threads (by pid) always; its own state dump
/// only if its profile has one.
pub struct DaemonRef<'a> {
    pub name: &'a str,
    /// The agent request that runs it (foreground servers): signals go to its process group.
    pub exec_id: Option<u32>,
    pub pid: i32,
    pub state_file: Option<&'a str>,
}

/// Sends `sig` to a server: through the agent to a foreground server's process group, else
/// with kill(1) to the pid the kernel reported. Bounded.
pub fn signal_server(vm: &Vm, d: &DaemonRef, sig: i32) -> Result<(), String> {
    match d.exec_id {
        Some(id) => vm.agent.signal(id, sig),
        None => {
            let cmd = format!("kill -{sig} {}", d.pid);
            match vm
                .agent
                .run_capture(&["sh", "-c", &cmd], Instant::now() + PROBE)
            {
                Ok((0, _, _)) => Ok(()),
                Ok((st, _, err)) => Err(format!(
                    "{cmd} exited {st}: {}",
                    String::from_utf8_lossy(&err).trim()
                )),
                Err(e) => Err(e),
            }
        }
    }
}

pub fn collect(vm: &Vm, daemons: &[DaemonRef], dir: &Path, why: &str) -> FreezeFrame {
    crate::runs::record(dir, std::fs::create_dir_all(dir));
    let mut ff = FreezeFrame {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let agent_ok = vm
        .agent
        .run_capture(&["true"], Instant::now() + Duration::from_secs(2))
        .is_ok();
    if !agent_ok {
        ff.notes.push("the guest agent did not answer within 2 s: SysRq t/w sent over the serial console (see serial.log)".into());
        sysrq(vm, &mut ff);
        write_summary(&ff, why, "");
        return ff;
    }
    for d in daemons {
        daemon_dump(vm, d, dir, &mut ff);
    }
    let inflight = probe(
        vm,
        dir,
        "inflight",
        "for f in /sys/block/ublkb*/inflight; do [ -e \"$f\" ] && echo \"$f: $(cat $f)\"; done",
    );
    let _ = inflight;
    let debugfs = probe(
        vm,
        dir,
        "blk-mq-debugfs",
        "for h in /sys/kernel/debug/block/ublkb*/hctx*; do [ -d \"$h\" ] || continue; for f in busy tags dispatch; do echo \"== $h/$f\"; cat $h/$f 2>&1; done; done",
    );
    for (hctx, line) in busy_requests(&debugfs) {
        ff.stuck_tags.push(format!("{hctx}: {line}"));
    }
    let blocked = probe(
        vm,
        dir,
        "blocked-tasks",
        // One grep over every task, not a process per task: under TCG, with other VMs busy,
        // a fork per task ran past the probe's budget.
        "for f in $(grep -l '^State:[[:space:]]*D' /proc/[0-9]*/status 2>/dev/null); do p=${f%/status}; echo \"== pid ${p#/proc/} $(cat $p/comm) state D\"; cat $p/stack 2>&1; done",
    );
    ff.blocked_tasks = blocked_tasks(&blocked);
    if let Some(c) = super::ktrace::snapshot(vm) {
        ff.traced = super::ktrace::freeze_lines(&c);
        super::ktrace::save_timeline(&c, &dir.join("timeline.svg"));
    }
    for d in daemons {
        daemon_threads(vm, d, dir, &mut ff);
    }
    let dmesg = probe(vm, dir, "dmesg", "dmesg | tail -n 200");
    let tail: Vec<&str> = dmesg
        .lines()
        .rev()
        .take(15)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    write_summary(&ff, why, &tail.join("\n"));
    ff
}

/// Every thread of a server with its state and kernel stack; its main thread's state noted.
fn daemon_threads(vm: &Vm, d: &DaemonRef, dir: &Path, ff: &mut FreezeFrame) {
    let threads = probe(
        vm,
        dir,
        &format!("daemon-{}-threads", d.name),
        &format!("for t in /proc/{}/task/*; do echo \"== tid ${{t##*/}} $(cat $t/comm) $(awk '/^State:/{{print $2, $3}}' $t/status)\"; cat $t/stack 2>&1; done", d.pid),
    );
    if let Some(state) = threads.lines().find(|l| l.starts_with("== tid")) {
        ff.notes.push(format!(
            "daemon {} (pid {}) main thread: {}",
            d.name,
            d.pid,
            state.trim_start_matches("== ")
        ));
    }
}

/// Most sleeping tasks named (their stacks are all in sleeping-tasks.txt).
const MAX_SLEEPING_TASKS: usize = 16;

/// Every user thread in interruptible sleep (S) with its kernel stack, but the guest's own
/// init and agent (and this probe's shell): what a hang that blocks nothing in D shows (a test waiting forever for a
/// device that never comes), newest first. One grep and shell builtins, no process per task
/// (TCG).
pub fn sleeping_tasks(vm: &Vm, dir: &Path) -> Vec<String> {
    let text = probe(
        vm,
        dir,
        "sleeping-tasks",
        "for f in $(grep -l '^State:[[:space:]]*S' /proc/[0-9]*/task/[0-9]*/status 2>/dev/null); do t=${f%/status}; p=${t%/task/*}; [ $p = /proc/$$ ] && continue; [ -e $p/exe ] || continue; read c < $t/comm; case $c in vm-agent|init) continue;; esac; echo \"== pid ${t##*/} $c state S\"; while read l; do echo \"$l\"; done < $t/stack; done",
    );
    let mut tasks = blocked_tasks(&text);
    // Newest first: the test's own tasks, not the guest's early ones.
    let pid = |t: &String| -> u32 {
        let n = t.strip_prefix("pid ").unwrap_or_default();
        n.split(' ').next().unwrap_or_default().parse().unwrap_or(0)
    };
    tasks.sort_by_key(|t| std::cmp::Reverse(pid(t)));
    tasks.truncate(MAX_SLEEPING_TASKS);
    tasks
}

/// Runs one shell probe (bounded) and saves its output; returns the output.
fn probe(vm: &Vm, dir: &Path, name: &str, script: &str) -> String {
    let out = match vm
        .agent
        .run_capture(&["sh", "-c", script], Instant::now() + PROBE)
    {
        Ok((_, out, err)) => {
            String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err)
        }
        Err(e) => format!("probe failed: {e}\n"),
    };
    crate::runs::save(&dir.join(format!("{name}.txt")), &out);
    out
}

/// Asks a daemon for its state dump (SIGUSR1) and reads it back: (parsed, raw). Bounded.
/// None if it has none, or did not answer.
pub fn daemon_state(vm: &Vm, d: &DaemonRef) -> Option<(StateDump, Vec<u8>)> {
    let state_file = d.state_file?;
    let _ = vm
        .agent
        .run_capture(&["rm", "-f", state_file], Instant::now() + PROBE);
    signal_server(vm, d, libc::SIGUSR1).ok()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Ok(data) = vm
            .agent
            .get_file(state_file, 16 << 20, Instant::now() + PROBE)
        {
            if let Ok(v) = serde_json::from_slice::<StateDump>(&data) {
                return Some((v, data));
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn daemon_dump(vm: &Vm, d: &DaemonRef, dir: &Path, ff: &mut FreezeFrame) {
    if d.state_file.is_none() {
        ff.notes.push(format!(
            "server {} (pid {}) writes no ublk-mem state file: stuck tags come from the kernel side only",
            d.name, d.pid
        ));
        return;
    }
    let dump = daemon_state(vm, d);
    let Some((v, raw)) = dump else {
        let state = vm.agent.run_capture(
            &[
                "sh",
                "-c",
                &format!("awk '/^State:/{{print $2, $3}}' /proc/{}/status", d.pid),
            ],
            Instant::now() + PROBE,
        );
        let state = state
            .map(|(_, o, _)| String::from_utf8_lossy(&o).trim().to_string())
            .unwrap_or_default();
        ff.notes.push(format!(
            "daemon {} (pid {}) did not answer SIGUSR1 within 2 s; process state: {}",
            d.name,
            d.pid,
            if state.is_empty() { "gone" } else { &state }
        ));
        return;
    };
    crate::runs::save(&dir.join(format!("daemon-{}-state.json", d.name)), raw);
    for q in &v.queues {
        for &t in &q.serving_tags {
            let last = q.tags.get(t as usize).and_then(|tag| tag.last.as_ref());
            let what = last.map_or("an unknown request".to_string(), |l| {
                format!("{} sector {} (+{})", l.op, l.sector, l.sectors)
            });
            ff.stuck_tags.push(format!(
                "{} queue {} tag {t}: held by the daemon, serving {what}",
                d.name, q.q_id
            ));
        }
    }
}

/// (hctx path, request line) for every request blk-mq lists as busy.
pub fn busy_requests(debugfs: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in debugfs.lines() {
        if let Some(path) = line.strip_prefix("== ") {
            current = path
                .strip_suffix("/busy")
                .map(|p| p.trim_start_matches("/sys/kernel/debug/block/").to_string());
            continue;
        }
        if let (Some(h), true) = (&current, line.contains(".tag=")) {
            let tag = line
                .split(".tag=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit() && c != '-').next())
                .unwrap_or("?");
            let op = line
                .split(".op=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or("?");
            out.push((h.clone(), format!("tag {tag} in flight ({op})")));
        }
    }
    out
}

/// One line per D-state task: "pid N comm (D): top frames".
pub fn blocked_tasks(probe: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = probe.lines().peekable();
    while let Some(l) = lines.next() {
        let Some(head) = l.strip_prefix("== pid ") else {
            continue;
        };
        let mut frames = Vec::new();
        while let Some(f) = lines.peek() {
            if f.starts_with("== ") {
                break;
            }
            let f = lines.next().unwrap();
            if let Some(sym) = f.split_whitespace().nth(1) {
                frames.push(sym.split('+').next().unwrap_or(sym).to_string());
            }
        }
        let interesting: Vec<&String> = frames
            .iter()
            .filter(|f| !f.starts_with("__schedule") && *f != "schedule")
            .take(4)
            .collect();
        out.push(format!(
            "pid {}: {}",
            head.replace(" state D", " (D)").replace(" state S", " (S)"),
            interesting
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" <- ")
        ));
    }
    out
}

fn sysrq(vm: &Vm, ff: &mut FreezeFrame) {
    // Telnet IAC BREAK becomes a serial break; the next key is the SysRq command.
    let sent = UnixStream::connect(vm.paths.serial_sock()).and_then(|mut s| {
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        for key in [b't', b'w'] {
            s.write_all(&[0xff, 0xf3])?;
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&[key])?;
            std::thread::sleep(Duration::from_millis(700));
        }
        Ok(())
    });
    if let Err(e) = sent {
        ff.notes
            .push(format!("SysRq over the serial console failed: {e}"));
        return;
    }
    let serial = std::fs::read_to_string(vm.paths.serial_log()).unwrap_or_default();
    for l in serial.lines().filter(|l| l.contains("state:D")) {
        ff.blocked_tasks.push(l.trim().to_string());
    }
}

/// Adds `lines` to the freeze-frame's notes and to its summary.txt (the servers' own dumps,
/// taken after the kernel-side probes so that a dump signal cannot disturb them).
pub fn append_notes(ff: &mut FreezeFrame, lines: &[String]) {
    append_section(ff, "server dumps", lines);
}

/// Adds a titled section to the freeze-frame's notes and its summary.txt.
pub fn append_section(ff: &mut FreezeFrame, title: &str, lines: &[String]) {
    ff.notes.extend(lines.iter().cloned());
    let path = ff.dir.join("summary.txt");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text += &format!("\n{title}:\n");
    for l in lines {
        text += &format!("  {l}\n");
    }
    crate::runs::save(&path, text);
}

fn write_summary(ff: &FreezeFrame, why: &str, dmesg_tail: &str) {
    let mut s = format!("freeze-frame: {why}\n\nstuck tags:\n");
    let list = |v: &[String]| {
        if v.is_empty() {
            "  (none found)\n".to_string()
        } else {
            v.iter().map(|x| format!("  {x}\n")).collect()
        }
    };
    s += &list(&ff.stuck_tags);
    if !ff.traced.is_empty() {
        s += "\nkernel trace: the last events of every tag holding a request (timeline.svg):\n";
        s += &list(&ff.traced);
    }
    s += "\nblocked tasks (D state):\n";
    s += &list(&ff.blocked_tasks);
    if !ff.notes.is_empty() {
        s += "\nnotes:\n";
        s += &list(&ff.notes);
    }
    s += "\nlast kernel messages:\n";
    s += dmesg_tail;
    s += "\n";
    crate::runs::save(&ff.dir.join("summary.txt"), s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blk_mq_busy_lists() {
        let text = "== /sys/kernel/debug/block/ublkb0/hctx0/busy\n\
000000003d9a3b2f {.op=READ, .cmd_flags=, .rq_flags=STARTED|IO_STAT, .state=in_flight, .tag=0, .internal_tag=-1}\n\
== /sys/kernel/debug/block/ublkb0/hctx0/tags\nnr_tags=1\n== /sys/kernel/debug/block/ublkb0/hctx1/busy\n";
        assert_eq!(
            busy_requests(text),
            vec![(
                "ublkb0/hctx0".to_string(),
                "tag 0 in flight (READ)".to_string()
            )]
        );
        assert!(busy_requests("").is_empty());
    }

    #[test]
    fn summarises_blocked_tasks() {
        let text = "== pid 140 dd state D\n[<0>] __schedule+0x3c0/0xb20\n[<0>] schedule+0x27/0xf0\n[<0>] io_schedule+0x46/0x70\n[<0>] blkdev_direct_IO+0x4e0/0x7b0\n\
== pid 141 kworker/1:2 state D\n[<0>] msleep+0x2b/0x40\n";
        assert_eq!(
            blocked_tasks(text),
            vec![
                "pid 140 dd (D): io_schedule <- blkdev_direct_IO".to_string(),
                "pid 141 kworker/1:2 (D): msleep".to_string()
            ]
        );
    }
}
