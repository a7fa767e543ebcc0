//! One kernel's measurement session in one VM: every target measured on every workload, once
//! per round, interleaved (the target order rotates per round and workload, so slow phases of
//! the host spread over all targets), each cell on a fresh device.
//!
//! ```text
//!   for round, for workload, for target (rotated):
//!     create device (modprobe / losetup / the server profile's add)
//!     ─► fill it (steady state) ─► server CPU snapshot ─► fio ─► CPU snapshot
//!     ─► remove device (rmmod / losetup -d / the profile's stop: it must exit cleanly)
//! ```
//! A cell past its limit takes a freeze-frame. A failed cell ends its target's part of the
//! session (its first cause and evidence recorded as a `Failure`); the caller boots a fresh VM
//! and the other targets go on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::fio;
use super::report::{Failure, Sample};
use super::workload::{Shape, Target, Workload};
use crate::server::device::DeviceParams;
use crate::server::fleet::{Fleet, Start};
use crate::vm::job::JobError;
use crate::vm::Failure as VmFailure;

pub struct Plan {
    pub targets: Vec<Target>,
    /// Per target: its own queues x depth (`@QxD`), else `queues` and `depth`.
    pub shapes: Vec<Option<Shape>>,
    /// What reports call each target (a server's profile name, not the path it came from).
    pub names: Vec<String>,
    pub workloads: Vec<Workload>,
    pub rounds: u32,
    pub runtime_s: f64,
    pub ramp_s: f64,
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    /// The guest's vCPUs: a workload's fio jobs are spread over them, one CPU each.
    pub cpus: u32,
    /// Per-cell limit beyond fio's own run time (device setup, fill, teardown).
    pub cell_budget: Duration,
    /// The command's limits policy (boot and setup, the cell default).
    pub limits: crate::vm::limits::Limits,
    /// `--profile`: fio runs under `perf record -a -g`; each cell's report is kept.
    pub profile: bool,
}

impl Plan {
    /// Target `t`'s queues and depth.
    pub fn shape(&self, t: usize) -> Shape {
        self.shapes[t].unwrap_or(Shape {
            queues: self.queues,
            depth: self.depth,
        })
    }
}

/// The targets in the order round `round` measures workload `w` (a rotation).
pub fn order(targets: usize, round: u32, w: usize) -> Vec<usize> {
    assert!(targets > 0);
    let shift = (round as usize + w) % targets;
    (0..targets).map(|i| (i + shift) % targets).collect()
}

/// One cell of the session: which round, workload and target, and the target's position in
/// that round's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellRef {
    pub round: u32,
    pub workload: usize,
    pub slot: usize,
    pub target: usize,
}

/// Every cell in measurement order.
pub fn cells(plan: &Plan) -> Vec<CellRef> {
    let mut out =
        Vec::with_capacity(plan.rounds as usize * plan.workloads.len() * plan.targets.len());
    for round in 0..plan.rounds {
        for wi in 0..plan.workloads.len() {
            for (slot, ti) in order(plan.targets.len(), round, wi).into_iter().enumerate() {
                out.push(CellRef {
                    round,
                    workload: wi,
                    slot,
                    target: ti,
                });
            }
        }
    }
    out
}

/// Where one kernel's session stands, across the VMs it takes: the samples so far, the
/// targets that failed (each once, with its first cause), and the next cell to measure.
pub struct Progress {
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    next: usize,
    /// Evidence paths are recorded relative to this directory (the kernel's session directory).
    root: PathBuf,
}

impl Progress {
    pub fn new(root: &std::path::Path) -> Progress {
        Progress {
            samples: Vec::new(),
            failures: Vec::new(),
            next: 0,
            root: root.to_path_buf(),
        }
    }

    /// Every target with cells still ahead, not measured for `cause` (a replacement VM that
    /// would not come up); the session ends.
    pub fn abandon(&mut self, plan: &Plan, cause: &str) {
        let all = cells(plan);
        for c in &all[self.next.min(all.len())..] {
            let name = &plan.names[c.target];
            if !self.failed(name) {
                self.failures.push(Failure {
                    target: name.clone(),
                    workload: plan.workloads[c.workload].name.to_string(),
                    round: c.round,
                    server_fault: false, // the VM's end or an interrupt: not the target's doing
                    cause: cause.to_string(),
                    evidence: None,
                });
            }
        }
        self.next = all.len();
    }

    /// True if a cell ahead belongs to a target that has not failed (another VM has work).
    pub fn pending(&self, plan: &Plan) -> bool {
        let all = cells(plan);
        all[self.next.min(all.len())..]
            .iter()
            .any(|c| !self.failed(&plan.names[c.target]))
    }

    pub fn failed(&self, target: &str) -> bool {
        self.failures.iter().any(|f| f.target == target)
    }
}

/// Why `run` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every cell was measured or skipped (its target had failed).
    AllCells,
    /// A target failed (the last entry of `failures`): the VM may hold its leftovers (a hung
    /// server, a stuck device), so the caller boots a fresh one before it calls `run` again.
    TargetFailed,
    /// The VM died or the user interrupted: every target with cells ahead is recorded as not
    /// measured, for that reason (not its fault), and the session ends.
    Stopped,
}

/// Measures cells from where `state` stands until all are done or a target fails; the cells
/// of a target that failed earlier are skipped. `progress` sees each sample as it lands.
pub fn run<'a>(
    r: &mut Fleet<'a>,
    plan: &Plan,
    profiles: &'a BTreeMap<String, crate::server::Profile>,
    state: &mut Progress,
    mut progress: impl FnMut(&Sample, usize, usize),
) -> Ended {
    let all = cells(plan);
    while state.next < all.len() {
        if let Some(sig) = crate::host::procs::interrupted() {
            let why = format!("interrupted by {}", crate::host::procs::signal_name(sig));
            state.abandon(plan, &why);
            return Ended::Stopped;
        }
        let c = all[state.next];
        state.next += 1;
        let (t, name, w) = (
            &plan.targets[c.target],
            &plan.names[c.target],
            &plan.workloads[c.workload],
        );
        if state.failed(name) {
            continue;
        }
        let label = format!("r{}-{}-{}", c.round, w.name, crate::util::slug(name));
        let shape = plan.shape(c.target);
        let measured = match t {
            Target::Server(key) => {
                r.server = profiles.get(key).expect("every server target is loaded");
                server_cell(r, plan, shape, w, &label)
            }
            Target::Traced(key) => {
                r.server = profiles.get(key).expect("every server target is loaded");
                traced_cell(r, plan, shape, w, &label)
            }
            _ => kernel_cell(r, plan, (t, shape), w, &label),
        };
        match measured {
            Ok((m, cpu)) => {
                state.samples.push(sample(c, name, w, m, cpu));
                progress(
                    state.samples.last().expect("just pushed"),
                    state.next,
                    all.len(),
                );
            }
            Err(e) => return failed(r, plan, state, c, &label, e),
        }
    }
    Ended::AllCells
}

/// A cell failed: if the VM is gone (or the user interrupted), every target with cells ahead
/// is not measured for that reason; else the cell's target failed with `e`, its first cause.
fn failed(
    r: &mut Fleet,
    plan: &Plan,
    state: &mut Progress,
    c: CellRef,
    label: &str,
    e: CellError,
) -> Ended {
    if let Some(f) = r.vm.gone() {
        state.next -= 1; // the cell that saw it was not measured either
        let why = match f {
            VmFailure::Interrupted(sig) => {
                format!("interrupted by {}", crate::host::procs::signal_name(sig))
            }
            VmFailure::Timeout(w) | VmFailure::Infra(w) => format!("the VM died: {w}"),
        };
        state.abandon(plan, &format!("{why} (in cell {label})"));
        return Ended::Stopped;
    }
    let evidence = e.evidence.map(|p| {
        p.strip_prefix(&state.root)
            .unwrap_or(&p)
            .display()
            .to_string()
    });
    state.failures.push(Failure {
        target: plan.names[c.target].clone(),
        workload: plan.workloads[c.workload].name.to_string(),
        round: c.round,
        server_fault: plan.targets[c.target].server_key().is_some(),
        cause: e.cause,
        evidence,
    });
    Ended::TargetFailed
}

fn sample(c: CellRef, target: &str, w: &Workload, m: fio::Measured, cpu: Cpu) -> Sample {
    Sample {
        round: c.round,
        slot: c.slot as u32,
        target: target.to_string(),
        workload: w.name.to_string(),
        ios: m.ios,
        iops: m.iops,
        bw_bytes_s: m.bw_bytes_s,
        lat_mean_us: m.lat_mean_us,
        lat_p99_us: m.lat_p99_us,
        server_cpu_ns: cpu.server_ns,
        guest_cpu_ns: cpu.guest_ns,
    }
}

/// Why a cell failed, and the file or directory that shows it.
#[derive(Debug)]
pub struct CellError {
    pub cause: String,
    pub evidence: Option<PathBuf>,
}

impl CellError {
    fn new(cause: String) -> CellError {
        CellError {
            cause,
            evidence: None,
        }
    }
}

/// CPU time a cell's measurement took: the server's threads (ublk servers), the whole guest.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Cpu {
    server_ns: Option<u64>,
    guest_ns: Option<u64>,
}

type CellResult = Result<(fio::Measured, Cpu), CellError>;

/// brd, null_blk, loop: the whole cell is one guest script.
fn kernel_cell(
    r: &mut Fleet,
    plan: &Plan,
    (t, shape): (&Target, Shape),
    w: &Workload,
    label: &str,
) -> CellResult {
    let setup = t
        .setup(plan.size_bytes, shape.queues, shape.depth)
        .expect("a kernel target");
    let script = format!(
        "set -e\n{}{setup}\n{}\n{}{}",
        phase(&format!("setting up {}", t.name())),
        measure_script(plan, w, None),
        phase(&format!("removing {}", t.name())),
        t.teardown()
    );
    let (out, cpu) = guest_script(r, plan, &script, label)?;
    assert!(cpu.server_ns.is_none(), "no server, no server CPU time");
    Ok((out, cpu))
}

/// A ublk server: its profile adds the device, the script measures it, the profile stops it.
/// A failed measurement ends the cell at once: stopping a server whose I/O hung would only
/// put a second error over the first, and the caller replaces the VM anyway.
fn server_cell(r: &mut Fleet, plan: &Plan, shape: Shape, w: &Workload, label: &str) -> CellResult {
    let deadline = Instant::now() + plan.cell_budget;
    let server_log = r.dir.join("steps").join(format!("{label}.add"));
    let lifecycle = |what: &str, e: JobError| CellError {
        cause: format!("{what}: {}", step_error(e)),
        evidence: Some(server_log.clone()),
    };
    let params = DeviceParams {
        size_bytes: plan.size_bytes,
        queues: shape.queues,
        depth: shape.depth,
        block_size: 4096,
    };
    r.start(
        &Start::new("perf", params),
        deadline,
        &format!("{label}.add"),
    )
    .map_err(|e| lifecycle("adding the device", e))?;
    let features = r.device_features.remove("perf").unwrap_or_default();
    r.device_features.insert(r.server.name.clone(), features);
    let d = &r.daemons["perf"];
    let (pid, bdev) = (d.pid, d.bdev.clone());
    let script = format!("set -e\nDEV={bdev}\n{}", measure_script(plan, w, Some(pid)));
    let (out, cpu) =
        guest_script(r, plan, &script, label).map_err(|e| server_failure(r, label, e))?;
    r.stop(
        "perf",
        Instant::now() + plan.cell_budget,
        &format!("{label}.stop"),
    )
    .map_err(|e| lifecycle("stopping the server", e))?;
    if cpu.server_ns.is_none() {
        return Err(CellError::new(
            "the script printed no server CPU time".into(),
        ));
    }
    Ok((out, cpu))
}

/// A server cell with the kernel trace's probes on for its duration only (`vm::ktrace::probes`).
fn traced_cell(r: &mut Fleet, plan: &Plan, shape: Shape, w: &Workload, label: &str) -> CellResult {
    crate::vm::ktrace::probes(&r.vm, true).map_err(CellError::new)?;
    let measured = server_cell(r, plan, shape, w, label);
    let off = crate::vm::ktrace::probes(&r.vm, false);
    let measured = measured?;
    off.map_err(CellError::new)?;
    Ok(measured)
}

fn step_error(e: JobError) -> String {
    match e {
        JobError::Fail(m) | JobError::Infra(m) => m,
        JobError::Hang(m) => format!("hang: {m}"),
    }
}

/// Fill, CPU snapshot, fio, CPU snapshot: the guest's busy time (/proc/stat's `cpu` line:
/// user, nice, system, irq, softirq, steal; in USER_HZ ticks, 100 per second on x86) goes to
/// stderr as `perf-guest-ticks BEFORE AFTER`; with `pid`, the CPU time of that process's
/// threads (schedstat, ns) as `perf-cpu-ns BEFORE AFTER`. Every device is filled first
/// so every target is measured in its steady state: what a first write to a page costs
/// differs between targets (brd allocates without zeroing, a server's memory comes zeroed)
/// and is not what the ratios compare.
fn measure_script(plan: &Plan, w: &Workload, pid: Option<i32>) -> String {
    let fill = fio::fill_command(plan.size_bytes);
    let guest = "gcpu() { awk '/^cpu / {printf \"%.0f\", $2+$3+$4+$7+$8+$9}' /proc/stat; }\n\
                 up() { awk '{printf \"%.0f\", $1 * 100}' /proc/uptime; }\n";
    let server = match pid {
        Some(p) => format!(
            "cpu() {{ cat /proc/{p}/task/*/schedstat | awk '{{s+=$1}} END {{printf \"%.0f\", s}}'; }}\n"
        ),
        None => "cpu() { echo 0; }\n".to_string(),
    };
    let report = match pid {
        Some(_) => "echo \"perf-cpu-ns $A $B\" >&2\n",
        None => "",
    };
    let fio = fio::command(w, plan.size_bytes, plan.runtime_s, plan.ramp_s, plan.cpus);
    let (fio, profile) = match plan.profile {
        true => (
            format!("perf record -q -a -g -F {PROFILE_HZ} -o {PROFILE_DATA} -- {fio}"),
            format!(
                "echo '{PROFILE_MARK}' >&2\n\
                 perf report -i {PROFILE_DATA} --stdio --no-children --sort comm -g none \
                 --percent-limit 0.5 2>/dev/null | grep -v '^#' | head -n {PROFILE_LINES} >&2\n\
                 perf report -i {PROFILE_DATA} --stdio --no-children --sort dso,sym -g none \
                 --percent-limit 0.5 2>/dev/null | head -n {PROFILE_LINES} >&2\n"
            ),
        ),
        false => (fio, String::new()),
    };
    let cpu = format!(
        "{guest}{server}A=$(cpu)\nUA=$(up)\nGA=$(gcpu)\n{fio}\nGB=$(gcpu)\nUB=$(up)\nB=$(cpu)\n\
         echo \"perf-guest-ticks $GA $GB\" >&2\necho \"perf-uptime-ticks $UA $UB\" >&2\n{report}{profile}"
    );
    format!(
        "{}{fill}\n{}{cpu}",
        phase("the fill (fio --name=fill)"),
        phase(&format!("the measurement (fio --name={})", w.name))
    )
}

/// `--profile`: samples per second per CPU, where the data goes, the report's first line and
/// its length (symbols above 0.5 %).
const PROFILE_HZ: u32 = 499;
const PROFILE_DATA: &str = "/run/perf.data";
pub const PROFILE_MARK: &str = "--- perf report";
const PROFILE_LINES: usize = 200;

/// The profile a cell script printed after `PROFILE_MARK` on stderr, if any.
fn profile_text(stderr: &str) -> Option<&str> {
    stderr
        .split_once(&format!("{PROFILE_MARK}\n"))
        .map(|(_, report)| report)
}

/// Where a cell script says what it is doing, so a hang names the phase that hung.
const PHASE_FILE: &str = "/run/perf-phase";

fn phase(what: &str) -> String {
    assert!(!what.contains('\''), "a phase name is quoted in shell");
    format!("echo '{what}' > {PHASE_FILE}\n")
}

/// The phase a hung cell script was in, from the guest (bounded).
fn hung_phase(r: &Fleet) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    match r.vm.agent.run_capture(&["cat", PHASE_FILE], deadline) {
        Ok((0, out, _)) => String::from_utf8_lossy(&out).trim().to_string(),
        _ => "the cell script".to_string(),
    }
}

/// Runs a cell script under the cell's limit; fio's JSON from stdout, the CPU line from
/// stderr. Both streams are kept in steps/<label>.log.
fn guest_script(r: &mut Fleet, plan: &Plan, script: &str, label: &str) -> CellResult {
    let limit = plan.cell_budget + Duration::from_secs_f64(2.0 * (plan.runtime_s + plan.ramp_s));
    let started = Instant::now();
    let res =
        r.vm.agent
            .run_capture(&["sh", "-c", script], started + limit);
    let (status, out, err) = match res {
        Ok(x) => x,
        Err(_) if started.elapsed() >= limit => {
            let why = format!(
                "{} did not finish within {} s",
                hung_phase(r),
                limit.as_secs()
            );
            return Err(freeze(r, label, &why));
        }
        Err(why) => return Err(CellError::new(format!("the guest agent: {why}"))),
    };
    let log = r.dir.join("steps").join(format!("{label}.log"));
    crate::runs::save(&log, [&out[..], b"\n--- stderr\n", &err[..]].concat());
    let status = vm_agent::exit_code(status);
    let err = String::from_utf8_lossy(&err);
    if let Some(report) = profile_text(&err) {
        let file = r.dir.join("steps").join(format!("{label}.profile.txt"));
        crate::runs::save(&file, report.as_bytes());
    }
    if status != 0 {
        return Err(CellError {
            cause: format!(
                "cell script exited {status}: {}",
                crate::reason::of(&err, 4)
            ),
            evidence: Some(log),
        });
    }
    let bad = |why: String| CellError {
        cause: why,
        evidence: Some(log.clone()),
    };
    let measured = fio::parse(&String::from_utf8_lossy(&out)).map_err(bad)?;
    let busy = delta(&err, "perf-guest-ticks ").map_err(bad)?;
    let elapsed = delta(&err, "perf-uptime-ticks ").map_err(bad)?;
    let server = delta(&err, "perf-cpu-ns ").map_err(bad)?;
    let cpu = Cpu {
        server_ns: in_run(server.map(|ns| ns as f64 / 1e7), elapsed, plan.runtime_s),
        guest_ns: in_run(busy.map(|t| t as f64), elapsed, plan.runtime_s),
    };
    Ok((measured, cpu))
}

/// CPU time over fio's measured `runtime_s`, from `busy` (in 10 ms ticks) over a snapshot
/// window of `elapsed_ticks`: the window spans fio's start, warm-up and exit too, whose I/Os
/// fio does not count, so what it gives is the average number of busy CPUs, applied to the
/// measured run. None without a window.
fn in_run(busy: Option<f64>, elapsed_ticks: Option<u64>, runtime_s: f64) -> Option<u64> {
    let (busy, elapsed) = (busy?, elapsed_ticks?);
    if elapsed == 0 {
        return None;
    }
    Some((busy / elapsed as f64 * runtime_s * 1e9) as u64)
}

/// `<prefix>A B` → B - A (None: no such line).
fn delta(stderr: &str, prefix: &str) -> Result<Option<u64>, String> {
    let Some(line) = stderr.lines().find(|l| l.starts_with(prefix)) else {
        return Ok(None);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad CPU snapshot `{line}`: {e}"))?;
    match v[..] {
        [a, b] if b >= a => Ok(Some(b - a)),
        _ => Err(format!("bad CPU snapshot `{line}`")),
    }
}

/// A cell past its limit: a freeze-frame (with the servers' own dumps), named as the cause.
fn freeze(r: &mut Fleet, label: &str, why: &str) -> CellError {
    let (stuck, dir) = freeze_frame(r, label, why);
    CellError {
        cause: format!("hang: {why}; stuck: {stuck}"),
        evidence: Some(dir),
    }
}

/// The stuck tags (or "none seen") and the directory of a freeze-frame taken now.
fn freeze_frame(r: &mut Fleet, label: &str, why: &str) -> (String, PathBuf) {
    let dir = r.dir.join(format!("freeze-{label}"));
    let f = r.freeze_frame(&dir, why);
    let stuck = match f.stuck_tags.is_empty() {
        true => "none seen".to_string(),
        false => f.stuck_tags.join("; "),
    };
    (stuck, f.dir)
}

/// A server cell's script failed without hanging (fio gave up on a stuck job, an I/O error,
/// a mismatch): the device's state now is the evidence (a freeze-frame, the server's own
/// dump), and what the server printed joins the cause. A hang has its freeze-frame already.
fn server_failure(r: &mut Fleet, label: &str, e: CellError) -> CellError {
    let hung = e.cause.starts_with("hang: ");
    if r.vm.gone().is_some() {
        return e;
    }
    let notes = r.server_notes();
    let mut cause = e.cause;
    if !notes.is_empty() {
        cause = format!("{cause}; {}", notes.join("; "));
    }
    if hung {
        return CellError { cause, ..e };
    }
    let log = e.evidence.as_ref().map(|p| p.display().to_string());
    let why = format!("{cause} (log: {})", log.unwrap_or_default());
    let (stuck, dir) = freeze_frame(r, label, &why);
    CellError {
        cause: format!("{cause}; stuck: {stuck}"),
        evidence: Some(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_puts_every_target_first_once_over_the_rounds() {
        for n in 1..6 {
            let mut firsts = std::collections::BTreeSet::new();
            for round in 0..n as u32 {
                let o = order(n, round, 0);
                let mut sorted = o.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
                firsts.insert(o[0]);
            }
            assert_eq!(firsts.len(), n, "rotation, not a fixed order");
        }
        assert_ne!(order(3, 0, 0), order(3, 0, 1), "workloads rotate too");
    }

    #[test]
    fn cpu_snapshot_is_a_difference_and_garbage_is_an_error() {
        assert_eq!(
            delta("x\nperf-cpu-ns 100 350\n", "perf-cpu-ns ").unwrap(),
            Some(250)
        );
        assert_eq!(delta("nothing", "perf-cpu-ns ").unwrap(), None);
        assert!(delta("perf-cpu-ns 5 3", "perf-cpu-ns ").is_err());
        assert!(delta("perf-cpu-ns a b", "perf-cpu-ns ").is_err());
        assert_eq!(
            delta("perf-guest-ticks 10 410\n", "perf-guest-ticks ").unwrap(),
            Some(400)
        );
        assert!(delta("perf-guest-ticks 9", "perf-guest-ticks ").is_err());
        // 2 CPUs busy for the whole span: 2 s of CPU per second of the measured run.
        assert_eq!(in_run(Some(600.0), Some(300), 2.0), Some(4_000_000_000));
        assert_eq!(in_run(Some(150.0), Some(300), 1.0), Some(500_000_000));
        assert_eq!(in_run(Some(1.0), Some(0), 1.0), None);
        assert_eq!(in_run(None, Some(3), 1.0), None);
        let err = "perf-cpu-ns 1 2\n--- perf report\n  40.00%  [kernel.kallsyms]  [k] memcpy\n";
        assert_eq!(
            profile_text(err),
            Some("  40.00%  [kernel.kallsyms]  [k] memcpy\n")
        );
        assert_eq!(profile_text("perf-cpu-ns 1 2\n"), None);
    }
}
