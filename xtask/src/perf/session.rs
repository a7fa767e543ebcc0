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
//! A cell past its limit takes a freeze-frame and ends the session with the cell named.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::fio;
use super::report::Sample;
use super::workload::{Target, Workload};
use crate::scenario::freeze::{self, DaemonRef};
use crate::scenario::model::Start;
use crate::scenario::steps::{Runner, StepError};

pub struct Plan {
    pub targets: Vec<Target>,
    /// What reports call each target (a server's profile name, not the path it came from).
    pub names: Vec<String>,
    pub workloads: Vec<Workload>,
    pub rounds: u32,
    pub runtime_s: f64,
    pub ramp_s: f64,
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    /// Per-cell limit beyond fio's own run time (device setup, fill, teardown).
    pub cell_budget: Duration,
}

/// The targets in the order round `round` measures workload `w` (a rotation).
pub fn order(targets: usize, round: u32, w: usize) -> Vec<usize> {
    assert!(targets > 0);
    let shift = (round as usize + w) % targets;
    (0..targets).map(|i| (i + shift) % targets).collect()
}

/// Runs every cell; `progress` sees each sample as it lands.
pub fn run<'a>(
    r: &mut Runner<'a>,
    plan: &Plan,
    profiles: &'a BTreeMap<String, crate::server::Profile>,
    mut progress: impl FnMut(&Sample, usize, usize),
) -> Result<Vec<Sample>, String> {
    let total = plan.rounds as usize * plan.workloads.len() * plan.targets.len();
    let mut samples = Vec::with_capacity(total);
    for round in 0..plan.rounds {
        for (wi, w) in plan.workloads.iter().enumerate() {
            for (slot, ti) in order(plan.targets.len(), round, wi).into_iter().enumerate() {
                let t = &plan.targets[ti];
                let name = &plan.names[ti];
                let label = format!("r{round}-{}-{}", w.name, crate::util::slug(name));
                let m = match t {
                    Target::Server(name) => {
                        r.server = profiles.get(name).expect("every server target is loaded");
                        server_cell(r, plan, w, &label)
                    }
                    _ => kernel_cell(r, plan, t, w, &label),
                }
                .map_err(|e| format!("{} on {name} (round {}): {e}", w.name, round + 1))?;
                let s = Sample {
                    round,
                    slot: slot as u32,
                    target: name.clone(),
                    workload: w.name.to_string(),
                    ios: m.0.ios,
                    iops: m.0.iops,
                    bw_bytes_s: m.0.bw_bytes_s,
                    lat_mean_us: m.0.lat_mean_us,
                    lat_p99_us: m.0.lat_p99_us,
                    server_cpu_ns: m.1,
                };
                samples.push(s);
                progress(samples.last().expect("just pushed"), samples.len(), total);
            }
        }
    }
    Ok(samples)
}

type CellResult = Result<(fio::Measured, Option<u64>), String>;

/// brd, null_blk, loop: the whole cell is one guest script.
fn kernel_cell(r: &mut Runner, plan: &Plan, t: &Target, w: &Workload, label: &str) -> CellResult {
    let setup = t
        .setup(plan.size_bytes, plan.queues, plan.depth)
        .expect("a kernel target");
    let script = format!(
        "set -e\n{setup}\n{}\n{}",
        measure_script(plan, w, None),
        t.teardown()
    );
    let (out, cpu) = guest_script(r, plan, &script, label, &[])?;
    assert!(cpu.is_none(), "no server, no server CPU time");
    Ok((out, None))
}

/// A ublk server: its profile adds the device, the script measures it, the profile stops it.
fn server_cell(r: &mut Runner, plan: &Plan, w: &Workload, label: &str) -> CellResult {
    let deadline = Instant::now() + plan.cell_budget;
    r.start(&Start::named("perf"), deadline, &format!("{label}.add"))
        .map_err(step_error)?;
    let features = r.device_features.remove("perf").unwrap_or_default();
    r.device_features.insert(r.server.name.clone(), features);
    let d = &r.daemons["perf"];
    let (pid, bdev) = (d.pid, d.bdev.clone());
    let script = format!("set -e\nDEV={bdev}\n{}", measure_script(plan, w, Some(pid)));
    let measured = guest_script(r, plan, &script, label, &["perf"]);
    r.stop(
        "perf",
        Instant::now() + plan.cell_budget,
        &format!("{label}.stop"),
    )
    .map_err(|e| format!("stopping the server: {}", step_error(e)))?;
    let (out, cpu) = measured?;
    Ok((
        out,
        Some(cpu.ok_or("the script printed no server CPU time")?),
    ))
}

fn step_error(e: StepError) -> String {
    match e {
        StepError::Fail(m) | StepError::Infra(m) => m,
        StepError::Hang(m) => format!("hang: {m}"),
    }
}

/// Fill, CPU snapshot, fio, CPU snapshot; with `pid`, the CPU time of that process's threads
/// (schedstat, ns) goes to stderr as `perf-cpu-ns BEFORE AFTER`. Every device is filled first
/// so every target is measured in its steady state: what a first write to a page costs
/// differs between targets (brd allocates without zeroing, a server's memory comes zeroed)
/// and is not what the ratios compare.
fn measure_script(plan: &Plan, w: &Workload, pid: Option<i32>) -> String {
    let fill = fio::fill_command(plan.size_bytes);
    let cpu = match pid {
        Some(p) => format!(
            "cpu() {{ cat /proc/{p}/task/*/schedstat | awk '{{s+=$1}} END {{printf \"%.0f\", s}}'; }}\n\
             A=$(cpu)\n{}\nB=$(cpu)\necho \"perf-cpu-ns $A $B\" >&2",
            fio::command(w, plan.size_bytes, plan.runtime_s, plan.ramp_s)
        ),
        None => fio::command(w, plan.size_bytes, plan.runtime_s, plan.ramp_s),
    };
    format!("{fill}\n{cpu}")
}

/// Runs a cell script under the cell's limit; fio's JSON from stdout, the CPU line from
/// stderr. Both streams are kept in steps/<label>.log.
fn guest_script(
    r: &Runner,
    plan: &Plan,
    script: &str,
    label: &str,
    daemons: &[&str],
) -> Result<(fio::Measured, Option<u64>), String> {
    let limit = plan.cell_budget + Duration::from_secs_f64(2.0 * (plan.runtime_s + plan.ramp_s));
    let started = Instant::now();
    let res =
        r.vm.agent
            .run_capture(&["sh", "-c", script], started + limit);
    let (status, out, err) = match res {
        Ok(x) => x,
        Err(why) if started.elapsed() >= limit => return Err(freeze(r, daemons, label, &why)),
        Err(why) => return Err(why),
    };
    let log = r.dir.join("steps").join(format!("{label}.log"));
    crate::runs::save(&log, [&out[..], b"\n--- stderr\n", &err[..]].concat());
    let status = vm_agent::exit_code(status);
    let err = String::from_utf8_lossy(&err);
    if status != 0 {
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        return Err(format!(
            "cell script exited {status}: {} (see {})",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            log.display()
        ));
    }
    let measured = fio::parse(&String::from_utf8_lossy(&out))?;
    Ok((measured, cpu_ns(&err)?))
}

/// `perf-cpu-ns A B` → B - A.
fn cpu_ns(stderr: &str) -> Result<Option<u64>, String> {
    let Some(line) = stderr.lines().find(|l| l.starts_with("perf-cpu-ns ")) else {
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

/// A cell past its limit: freeze-frame, then the error that ends the session.
fn freeze(r: &Runner, daemons: &[&str], label: &str, why: &str) -> String {
    let refs: Vec<DaemonRef> = daemons
        .iter()
        .filter_map(|n| r.daemons.get(*n).map(|d| d.as_ref(n)))
        .collect();
    let dir = r.dir.join(format!("freeze-{label}"));
    let f = freeze::collect(&r.vm, &refs, &dir, why);
    format!(
        "hang: {why}; freeze-frame {} (stuck: {})",
        f.dir.display(),
        if f.stuck_tags.is_empty() {
            "none seen".to_string()
        } else {
            f.stuck_tags.join("; ")
        }
    )
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
        assert_eq!(cpu_ns("x\nperf-cpu-ns 100 350\n").unwrap(), Some(250));
        assert_eq!(cpu_ns("nothing").unwrap(), None);
        assert!(cpu_ns("perf-cpu-ns 5 3").is_err());
        assert!(cpu_ns("perf-cpu-ns a b").is_err());
    }
}
