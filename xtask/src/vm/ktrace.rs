//! The kernel's view of any server in one VM: every image carries the install script of
//! `ublk::ktrace::tracefs::PROBES`; `install` runs it in the background after boot (traced
//! runs only: a created probe costs even while disabled), `start` turns them on
//! (a refused probe: a note, the run goes on untraced), `collect` stops
//! the ring, reads it once (bounded) and checks it; `save` writes the run's `trace/`
//! directory (events.txt in `ublk/KTRACE.md`'s format, summary.txt, timeline.svg) and
//! `freeze_lines` gives a freeze-frame the last events of every stuck tag.
//!
//! The ring keeps the newest events (`tracefs::RING_KB_PER_CPU` per CPU, overwrite mode); what it
//! overwrote is counted (`lost`) and the checker judges only tags whose past it saw. The
//! block layer's own count of completed requests per disk (a hist trigger on
//! `block:block_rq_complete`, no ring space) is the trace's cross-check.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ublk::ktrace::check::Checker;
use ublk::ktrace::{self, tracefs, Header};

pub use super::ktrace_data::Collected;
use super::ktrace_data::{block_hist, complete_from_us, overruns, uptime_us, MAX_TEXT_BYTES};
use super::Vm;

/// How long `install` may take to create the probes.
const INSTALL_WAIT_S: u64 = 20;
/// Budget of the setup and of the stop+dump commands.
const SETUP: Duration = Duration::from_secs(10);
const DUMP: Duration = Duration::from_secs(30);
/// Budget of reading the text back (virtio-serial under TCG: several MB/s).
const READ: Duration = Duration::from_secs(60);
const TEXT_PATH: &str = "/tmp/ublk-ktrace.txt";

/// Creates the probes in the background (the image's `tracefs::install_script`: about 0.6 s
/// of guest time under TCG), so that the host's post-boot work (features, server install)
/// hides it; `start` waits for it. Only a traced run calls this: a created probe costs every
/// call of its function something even while disabled (ftrace's call site is patched).
pub fn install(vm: &Vm) {
    let script = format!(
        "rm -f {status}; (sh /{script} > /run/ublk-ktrace.part 2>&1; mv /run/ublk-ktrace.part {status}) < /dev/null > /dev/null 2>&1 &",
        status = tracefs::STATUS_PATH,
        script = tracefs::INSTALL_PATH,
    );
    let _ = vm
        .agent
        .run_capture(&["sh", "-c", &script], Instant::now() + SETUP);
}

/// Starts the ring once `install` created the probes. Tracing is all or nothing: a refused
/// probe turns it off, with a note naming the probe and the kernel's reason.
pub fn start(vm: &Vm, deadline: Instant) {
    // The guest script waits up to INSTALL_WAIT_S for the install: the agent call outlasts it.
    let deadline = deadline.min(Instant::now() + Duration::from_secs(INSTALL_WAIT_S + 5));
    let out = vm
        .agent
        .run_capture(&["sh", "-c", &enable_script()], deadline);
    let mut state = vm.ktrace.lock().unwrap();
    let text = match out {
        Ok((_, out, err)) => {
            String::from_utf8_lossy(&out).into_owned() + &String::from_utf8_lossy(&err)
        }
        Err(e) => {
            state.note = Some(format!("kernel trace off: its setup failed: {e}"));
            return;
        }
    };
    if let Some(refused) = text.lines().find(|l| l.starts_with("refused ")) {
        let name = refused["refused ".len()..].split(':').next().unwrap_or("");
        let what = tracefs::PROBES
            .iter()
            .find(|p| p.name == name)
            .map(|p| format!(" ({})", p.what))
            .unwrap_or_default();
        state.note = Some(format!(
            "kernel trace off on this kernel: {}{what}; the run goes on untraced",
            crate::text::term(&crate::text::bound(
                refused.trim_start_matches("refused "),
                300
            ))
        ));
        drop(state);
        let off = "T=/sys/kernel/tracing; echo 0 > $T/tracing_on; echo 0 > $T/events/fprobes/enable; echo > $T/dynamic_events";
        let _ = vm
            .agent
            .run_capture(&["sh", "-c", off], Instant::now() + SETUP);
        return;
    }
    if !text.lines().any(|l| l == "ok on") {
        state.note = Some(format!(
            "kernel trace off: the guest did not confirm it ({})",
            crate::text::term(&crate::text::bound(text.trim(), 300))
        ));
        return;
    }
    state.on = true;
}

/// Waits (bounded) for `install`, passes on its lines, and turns the probes and the
/// block layer's count on; prints `ok on`, or a `refused ...` line.
fn enable_script() -> String {
    format!(
        "T=/sys/kernel/tracing; S={status}
         for i in $(seq {polls}); do [ -e $S ] && break; sleep 0.05; done
         [ -e $S ] || {{ echo 'refused install: the probes were not created within {wait_s} s'; exit 0; }}
         cat $S
         grep -q '^refused ' $S && exit 0
         echo 1 > $T/events/fprobes/enable || {{ echo 'refused enable: the probes could not be enabled'; exit 0; }}
         echo 'hist:keys=dev' > $T/events/block/block_rq_complete/trigger || {{ echo 'refused hist: block:block_rq_complete takes no hist trigger'; exit 0; }}
         : > $T/trace; echo 1 > $T/tracing_on && echo 'ok on'
",
        status = tracefs::STATUS_PATH,
        polls = INSTALL_WAIT_S * 20,
        wait_s = INSTALL_WAIT_S,
    )
}

/// Turns the installed probes (and the block layer's count) on or off, keeping the ring: what
/// vm-perf does around each traced cell, so the untraced cells run without them. Bounded.
pub fn probes(vm: &Vm, on: bool) -> Result<(), String> {
    if !vm.ktrace.lock().unwrap().on {
        return Err("the kernel trace is not installed in this VM".into());
    }
    let hist = match on {
        true => "hist:keys=dev",
        false => "!hist:keys=dev",
    };
    // Back on after a pause: the trace says so, and its checker starts every tag over.
    let gap = match on {
        true => format!(" && echo {} > $T/trace_marker", tracefs::GAP_MARKER),
        false => String::new(),
    };
    let script = format!(
        "T=/sys/kernel/tracing; echo {} > $T/events/fprobes/enable && echo '{hist}' >> $T/events/block/block_rq_complete/trigger{gap}",
        on as u8
    );
    match vm
        .agent
        .run_capture(&["sh", "-c", &script], Instant::now() + SETUP)
    {
        Ok((0, _, _)) => Ok(()),
        Ok((st, _, err)) => Err(format!(
            "turning the kernel trace's probes {} failed (exit {st}): {}",
            if on { "on" } else { "off" },
            String::from_utf8_lossy(&err).trim()
        )),
        Err(e) => Err(format!("turning the kernel trace's probes on or off: {e}")),
    }
}

/// Stops the ring and reads it, once per VM (the run's end). None if tracing is off or the
/// guest no longer answers.
pub fn collect(vm: &Vm) -> Option<Arc<Collected>> {
    let mut state = vm.ktrace.lock().unwrap();
    if !state.on {
        return None;
    }
    if let Some(c) = &state.collected {
        return Some(c.clone());
    }
    let c = Arc::new(read(vm, true)?);
    state.collected = Some(c.clone());
    Some(c)
}

/// Reads the ring as it is now and leaves it running (a freeze-frame: the run may go on).
pub fn snapshot(vm: &Vm) -> Option<Collected> {
    if !vm.ktrace.lock().unwrap().on {
        return None;
    }
    read(vm, false)
}

/// The ring's text, its overruns, the block layer's counts and the guest's uptime, read
/// back (bounded) and checked.
fn read(vm: &Vm, stop: bool) -> Option<Collected> {
    let dump = format!(
        "T=/sys/kernel/tracing; {} cat $T/trace > {TEXT_PATH}; cat /proc/uptime; \
         cat $T/per_cpu/cpu*/stats | grep -E '^(overrun|oldest event ts):'; cat $T/events/block/block_rq_complete/hist",
        if stop { "echo 0 > $T/tracing_on;" } else { "" }
    );
    let (_, out, _) = vm
        .agent
        .run_capture(&["sh", "-c", &dump], Instant::now() + DUMP)
        .ok()?;
    let stats = String::from_utf8_lossy(&out);
    let text = vm
        .agent
        .get_file(TEXT_PATH, MAX_TEXT_BYTES + 1, Instant::now() + READ)
        .ok()?;
    let truncated = text.len() > MAX_TEXT_BYTES;
    let text = String::from_utf8_lossy(&text[..text.len().min(MAX_TEXT_BYTES)]);
    let mut parsed = tracefs::parse(&text, ktrace::MAX_EVENTS);
    // Before every CPU's ring holds its events, the merged trace has holes: left out, counted.
    let mut lost = overruns(&stats);
    if let Some(from) = complete_from_us(&stats) {
        let before = parsed.events.len();
        parsed.events.retain(|e| e.t_us >= from);
        lost += (before - parsed.events.len()) as u64;
    }
    let header = Header {
        kernel: vm.ready_release(),
        lost,
    };
    let checker = Checker::run(&header, &parsed.events);
    Some(Collected {
        header,
        events: parsed.events,
        checker,
        disks: parsed.disks,
        block_completed: block_hist(&stats),
        end_us: uptime_us(&stats),
        skipped: parsed.skipped,
        truncated,
    })
}

/// Writes `dir/trace/`: events.txt, summary.txt and, when asked, timeline.svg.
pub fn save(c: &Collected, dir: &Path, timeline: bool) {
    let tdir = dir.join("trace");
    crate::runs::record(&tdir, std::fs::create_dir_all(&tdir));
    crate::runs::save(
        &tdir.join("events.txt"),
        ktrace::write(&c.header, &c.events),
    );
    let mut s = format!("kernel trace: {}\n", c.status());
    if c.skipped > 0 {
        s += &format!("{} tracefs lines were not ublk events\n", c.skipped);
    }
    s += &format!("\nprotocol violations: {}\n", c.checker.violations_total);
    for v in &c.checker.violations {
        s += &format!("  {}\n", v.message);
    }
    s += "\ntags holding a request when the trace ended:\n";
    let stuck = c.checker.stuck();
    if stuck.is_empty() {
        s += "  (none)\n";
    }
    for t in &stuck {
        s += &format!("  {}\n", t.summary);
        for e in &t.last {
            s += &format!("      {} {}\n", e.at(), e.describe());
        }
    }
    crate::runs::save(&tdir.join("summary.txt"), s);
    if timeline {
        save_timeline(c, &tdir.join("timeline.svg"));
    }
}

/// The per-tag timeline picture (`vm::timeline`).
pub fn save_timeline(c: &Collected, path: &Path) {
    let svg = super::timeline::render(
        &c.events,
        &c.checker.stuck(),
        &c.checker.violations,
        c.end_us,
    );
    crate::runs::save(path, svg);
}

/// A freeze-frame's lines: the last events of every tag still holding a request.
pub fn freeze_lines(c: &Collected) -> Vec<String> {
    let mut out = Vec::new();
    for t in c.checker.stuck() {
        out.push(t.summary.clone());
        for e in t.last.iter().rev().take(4).rev() {
            out.push(format!("    {} {}", e.at(), e.describe()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_answers_are_read() {
        let stats = "12.50 3.00\noverrun: 0\noverrun: 17\n\
            # event histogram\n{ dev:  271581184 } hitcount:         29\n\
            { dev:  265289728 } hitcount:          3\n\nTotals:\n    Hits: 32\n";
        assert_eq!(uptime_us(stats), 12_500_000);
        // CPU 1 overwrote its oldest events up to 7.25 s; CPU 0 did not (its 2.0 s is whole).
        let cpus = "overrun: 0\noldest event ts:     2.000000\noverrun: 5\noldest event ts:     7.250000\n";
        assert_eq!(complete_from_us(cpus), Some(7_250_000));
        assert_eq!(complete_from_us("overrun: 0\noldest event ts: 1.5\n"), None);
        assert_eq!(overruns(stats), 17);
        let hist = block_hist(stats);
        assert_eq!(hist.get(&(259, 0)), Some(&29));
        assert_eq!(hist.get(&(253, 0)), Some(&3));
        assert_eq!(uptime_us("garbage"), 0);
        assert!(block_hist("{ dev: x } hitcount: y").is_empty());
    }

    #[test]
    fn the_start_waits_for_the_install_then_enables_everything() {
        let s = enable_script();
        assert!(s.contains(&format!("S={}", tracefs::STATUS_PATH)));
        assert!(s.contains("for i in $(seq 400)"), "{s}");
        assert!(s.contains("grep -q '^refused ' $S && exit 0"));
        assert!(s.contains("echo 1 > $T/events/fprobes/enable"));
        assert!(s.ends_with("echo 1 > $T/tracing_on && echo 'ok on'\n"));
    }
}
