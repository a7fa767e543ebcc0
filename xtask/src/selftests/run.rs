//! One kernel selftest script in one fresh VM: boot with the tools layer, ship the suite,
//! run the script under a hard limit, map its kselftest exit code to a verdict, take a
//! freeze-frame if it hangs, scan the kernel log for splats.
//!
//! ```text
//!   boot ──► ship suite ──► run script ─┬─ exit 0 ─────────────► pass   ─┐
//!                                       ├─ exit 4 ─────────────► skip   ─┤
//!                                       ├─ exit other ─────────► fail   ─┼─► splat scan (a splat
//!                                       ├─ limit reached ─► freeze-frame ─► timeout      turns pass/skip into fail)
//!                                       └─ VM gone ────────────► infra-error (or interrupted)
//! ```

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::suite::Suite;
use crate::image::tools::Layer;
use crate::image::Image;
use crate::runs::{self, Verdict};
use crate::session::outcome::{failure_verdict, Outcome};
use crate::vm::freeze::{self, DaemonRef};
use crate::vm::qemu::{Accel, VmConfig};
use crate::vm::splat;
use crate::vm::{Failure, Outcome as VmOutcome, Vm};

/// kselftest's "skip" exit code.
pub const KSFT_SKIP: i32 = 4;
/// Where the suite lives in the guest (the scripts find kublk beside themselves).
pub const GUEST_DIR: &str = "/root/ublk";
/// Budget for boot and shipping the suite, beyond the test's own limit.
const SETUP_BUDGET: Duration = Duration::from_secs(120);
/// Guest memory: loop and stripe tests keep their backing files on tmpfs.
const MEMORY_MIB: u64 = 2048;

pub struct Job<'a> {
    pub suite: &'a Suite,
    pub script: &'a str,
    /// The kernel as asked for, for the reports.
    pub kernel: &'a str,
    pub image: &'a Image,
    pub tools: &'a Layer,
    pub accel: Accel,
    pub timeout_s: u64,
    pub run: u32,
    /// Scripts of the user's own (`--script`), shipped beside the suite: (file name, bytes).
    pub extra: &'a [(String, Vec<u8>)],
    /// Kernel-log substrings that are known and not failures (`--expect-splat`).
    pub expect_splats: &'a [String],
}

/// What every attempted run records of its job (after `retry_once` over `attempt`).
pub fn stamp(job: &Job, out: &mut Outcome) {
    out.server = "kublk".into();
    out.kernel = job.kernel.to_string();
    out.kernel_release = job.image.manifest.kernel_release.clone();
    out.tools = job.tools.manifest.packages.clone();
}

/// One attempt in one fresh VM; true if the script started.
pub fn attempt(job: &Job, dir: &Path) -> (Outcome, bool) {
    let start = Instant::now();
    let name = super::suite::test_id(job.script);
    let mut out = Outcome::named(name, job.run, 0, dir, job.image.hash());
    let cfg = VmConfig {
        cpus: 2,
        memory_mib: MEMORY_MIB,
        accel: job.accel,
        tools: Some(job.tools.clone()),
        icount_shift: None,
    };
    let setup_deadline = start + SETUP_BUDGET;
    let booted = job
        .suite
        .recheck()
        .map_err(Failure::Infra)
        .and_then(|()| Vm::boot(job.image, &cfg, dir, setup_deadline));
    let mut vm = match booted {
        Ok(vm) => vm,
        Err(f) => return (out.failed_at(start, "boot", &f), false),
    };
    out.boot_s = Some(vm.boot_s);
    out.kernel_features = vm.ublk_features(setup_deadline).unwrap_or_default();
    if let Err(why) = ship(&vm, job.suite, job.extra, setup_deadline) {
        let f = vm.gone().unwrap_or(Failure::Infra(why));
        vm.kill();
        return (out.failed_at(start, "copying the suite", &f), false);
    }
    let (verdict, why) = execute(&mut vm, job, dir, &mut out);
    let (verdict, why) = with_splats(&vm, dir, job.expect_splats, (verdict, why), &mut out);
    vm.kill();
    (out.finish(start, verdict, why), true)
}

/// Copies every file of the suite, and the user's scripts, to GUEST_DIR (executable: scripts
/// and programs alike).
fn ship(
    vm: &Vm,
    suite: &Suite,
    extra: &[(String, Vec<u8>)],
    deadline: Instant,
) -> Result<(), String> {
    let root = suite.root();
    let files = suite.shipped();
    let mut dirs: Vec<String> = files
        .iter()
        .filter_map(|f| Path::new(f).parent().map(|p| p.display().to_string()))
        .collect();
    dirs.sort();
    dirs.dedup();
    let mkdir = dirs
        .iter()
        .map(|d| format!("{GUEST_DIR}/{d}"))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!("mkdir -p {GUEST_DIR} {mkdir}");
    vm.agent.run_capture(&["sh", "-c", &script], deadline)?;
    for f in files {
        let data = std::fs::read(root.join(&f)).map_err(|e| format!("read {f}: {e}"))?;
        vm.agent
            .put_file(&format!("{GUEST_DIR}/{f}"), 0o755, &data, deadline)
            .map_err(|e| format!("copying {f} to the guest: {e}"))?;
    }
    for (name, data) in extra {
        vm.agent
            .put_file(&format!("{GUEST_DIR}/{name}"), 0o755, data, deadline)
            .map_err(|e| format!("copying {name} to the guest: {e}"))?;
    }
    Ok(())
}

/// Runs the script; its output goes to test.log.
fn execute(vm: &mut Vm, job: &Job, dir: &Path, out: &mut Outcome) -> (Verdict, Option<String>) {
    let log_path = dir.join("test.log");
    let mut log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => {
            return (
                Verdict::InfraError,
                Some(format!("create {}: {e}", log_path.display())),
            )
        }
    };
    let cmd = format!("cd {GUEST_DIR} && exec ./{}", job.script);
    let argv = ["bash".to_string(), "-c".to_string(), cmd];
    let deadline = Instant::now() + Duration::from_secs(job.timeout_s);
    let mut err = log.try_clone().expect("a file handle clones");
    let ended = vm.run(&argv, false, &mut log, &mut err, deadline);
    let _ = log.flush();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    out.failed_step = Some(job.script.to_string());
    match ended {
        VmOutcome::Exited(0) => {
            out.failed_step = None;
            (Verdict::Pass, None)
        }
        VmOutcome::Exited(KSFT_SKIP) => (Verdict::Skip, Some(skip_reason(job, &text))),
        VmOutcome::Exited(st) => (
            Verdict::Fail,
            Some(format!("exit {st}: {}", last_line(&text, "no output"))),
        ),
        VmOutcome::Failed(Failure::Timeout(_)) => {
            let why = format!("{} still running after {} s", job.script, job.timeout_s);
            let ff = freeze::collect(
                vm,
                &kublk_refs(vm)
                    .iter()
                    .map(|(n, p)| DaemonRef {
                        name: n,
                        exec_id: None,
                        pid: *p,
                        state_file: None,
                    })
                    .collect::<Vec<_>>(),
                &dir.join("freeze"),
                &why,
            );
            out.freeze_frame = Some(ff.dir.clone());
            let mut named = ff
                .stuck_tags
                .iter()
                .chain(&ff.blocked_tasks)
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ");
            if named.is_empty() {
                named = "no stuck tag or blocked task seen".into();
            }
            (Verdict::Timeout, Some(format!("{why}: {named}")))
        }
        VmOutcome::Failed(f) => {
            let f = vm.gone().unwrap_or(f);
            let (v, why) = failure_verdict(&f);
            (v, Some(why))
        }
    }
}

/// The kublk processes in the guest, for the freeze-frame's per-thread stacks.
fn kublk_refs(vm: &Vm) -> Vec<(String, i32)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let Ok((_, out, _)) = vm.agent.run_capture(&["sh", "-c", "pidof kublk"], deadline) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .take(8)
        .map(|p: i32| (format!("kublk-{p}"), p))
        .collect()
}

/// A kernel splat fails a test that passed or skipped; every verdict keeps the log.
fn with_splats(
    vm: &Vm,
    dir: &Path,
    expected: &[String],
    (verdict, why): (Verdict, Option<String>),
    out: &mut Outcome,
) -> (Verdict, Option<String>) {
    let log = match vm
        .agent
        .run_capture(&["dmesg"], Instant::now() + Duration::from_secs(3))
    {
        Ok((_, text, _)) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => std::fs::read_to_string(vm.paths.serial_log()).unwrap_or_default(),
    };
    runs::save(&dir.join("dmesg.txt"), &log);
    let found = splat::scan(&log, expected);
    match (verdict, found.first()) {
        (Verdict::Pass | Verdict::Skip, Some(first)) => {
            out.failed_step = Some("kernel log".into());
            let why = format!(
                "kernel splat: {} (and {} more; see dmesg.txt)",
                first.trim(),
                found.len() - 1
            );
            (Verdict::Fail, Some(why))
        }
        _ => (verdict, why),
    }
}

/// Why a script skipped: what it printed last, or — scripts that exit 4 silently after
/// `_have_program X` — the programs it checks for that the tools layer lacks.
fn skip_reason(job: &Job, output: &str) -> String {
    if output.trim().is_empty() {
        let script = std::fs::read_to_string(job.suite.root().join(job.script)).unwrap_or_default();
        let missing: Vec<&str> = script
            .split("_have_program")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|p| {
                p.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            })
            .filter(|p| !p.is_empty() && !job.tools.manifest.executables.iter().any(|e| e == p))
            .collect();
        if !missing.is_empty() {
            return format!(
                "exit 4 (kselftest skip) without a message; the script checks for {}, which the guest tools layer does not have",
                missing.join(", ")
            );
        }
    }
    last_line(
        output,
        "exit 4 (kselftest skip); the script printed no reason",
    )
}

/// The last non-empty line of a test's output (a skip's reason, a failure's hint).
fn last_line(text: &str, default: &str) -> String {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(default);
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_is_the_reason() {
        assert_eq!(last_line("a\nublk: need fio\n\n", "x"), "ublk: need fio");
        assert_eq!(last_line("", "skipped"), "skipped");
    }
}
