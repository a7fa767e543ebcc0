//! Runs one scenario in one fresh VM and decides its verdict. The steps themselves live in
//! `steps.rs`; this file owns the rules that keep a verdict honest:
//!
//! - an interrupt (SIGINT/SIGTERM to xtask) is `interrupted`, wherever it lands;
//! - a step whose VM died (QEMU exited, guest panic, agent lost) is `infra-error`, with the
//!   VM's own explanation — never `fail`, never blamed on the code under test;
//! - a hang is `timeout` with a freeze-frame; a wrong result is `fail`;
//! - a VM that died before the first step started gets one more fresh VM (both attempts are
//!   recorded); a run that failed after its first step started is never retried.

use std::path::Path;
use std::time::{Duration, Instant};

use super::model::{DeviceOverride, KernelVersion, Scenario};
use super::runner::{Runner, StepError};
use crate::host::procs::interrupted;
use crate::image::tools::Layer;
use crate::image::Image;
use crate::runs::Verdict;
use crate::server::Profile;
use crate::session::outcome::{failure_verdict, Outcome, MAX_SPLATS, MAX_SPLAT_BYTES};
use crate::vm::ktrace;
use crate::vm::qemu::{Accel, VmConfig};
use crate::vm::Vm;

/// What one run is made of.
pub struct Job<'a> {
    pub sc: &'a Scenario,
    pub server: &'a Profile,
    /// The kernel's name as asked for, for the reports.
    pub kernel: &'a str,
    pub image: &'a Image,
    /// The guest tools layer, for a scenario whose `vm.tools` asks for it.
    pub tools: Option<&'a Layer>,
    pub accel: Accel,
    pub seed: u64,
    pub run: u32,
    /// Every limit of the scenario (its timeout, each step's) is multiplied by this.
    pub timeout_scale: f64,
    /// `--queues`/`--depth` for every device of the run.
    pub overrides: DeviceOverride,
    /// Record and check the kernel's ublk trace (`vm::ktrace`).
    pub kernel_trace: bool,
}

/// A limit of `s` seconds, multiplied by `--timeout-scale`.
fn scaled(s: u64, scale: f64) -> Duration {
    assert!(scale > 0.0 && scale.is_finite());
    Duration::from_secs_f64(s as f64 * scale)
}

/// A run decided before any VM: a scenario the server cannot run, or a kernel known to be
/// too old or to lack a feature it needs, is a skip.
pub fn before_boot(job: &Job) -> Option<Outcome> {
    let mut out = Outcome::named(
        &job.sc.name,
        job.run,
        job.seed,
        Path::new(""),
        job.image.hash(),
    );
    out.server = job.server.name.clone();
    out.kernel = job.kernel.to_string();
    out.kernel_release = job.image.manifest.kernel_release.clone();
    let release = out.kernel_release.clone();
    let why = skip_reason(job.sc, job.server)
        .or_else(|| too_old(job.sc, &release))
        .or_else(|| lacks_known_feature(job.sc, &release, &mut out))?;
    Some(out.finish(Instant::now(), Verdict::Skip, Some(why)))
}

/// What every attempted run records of its job (after `retry_once` over `attempt`).
pub fn stamp(job: &Job, out: &mut Outcome) {
    out.server = job.server.name.clone();
    out.kernel = job.kernel.to_string();
    out.kernel_release = job.image.manifest.kernel_release.clone();
    out.tools = job
        .tools
        .map(|l| l.manifest.packages.clone())
        .unwrap_or_default();
}

/// Why `server` cannot run `sc` (the first capability it lacks, and which step needs it).
pub fn skip_reason(sc: &Scenario, server: &Profile) -> Option<String> {
    if let Some((cap, why)) = sc.needs().into_iter().find(|(c, _)| !server.has(*c)) {
        return Some(format!(
            "server {} lacks {} ({why})",
            server.name,
            cap.name()
        ));
    }
    let modes = server
        .recovery
        .as_ref()
        .map(|r| r.modes())
        .unwrap_or_default();
    let m = sc
        .recovery_modes()
        .into_iter()
        .find(|m| !modes.contains(m))?;
    Some(format!(
        "server {} has no recovery mode {} (it has: {})",
        server.name,
        m.name(),
        modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Why a kernel of `release` is older than the scenario's `requires.kernel_version` (known
/// before boot: no VM is started for it).
pub fn too_old(sc: &Scenario, release: &str) -> Option<String> {
    let min = sc.requires.kernel_version?;
    match KernelVersion::of_release(release) {
        Some(v) if v >= min => None,
        Some(_) => Some(format!(
            "kernel {release} is older than {min} (requires.kernel_version)"
        )),
        None => Some(format!(
            "kernel release {release:?} has no X.Y version to compare with {min} (requires.kernel_version)"
        )),
    }
}

/// Why a kernel whose ublk features an earlier boot recorded lacks one the scenario needs
/// (known before boot: no VM is started for it; the features go into the outcome).
fn lacks_known_feature(sc: &Scenario, release: &str, out: &mut Outcome) -> Option<String> {
    let features = crate::image::kernel::known_features(release)?;
    let missing = sc
        .kernel_needs()
        .into_iter()
        .find(|k| !features.contains(k))?;
    out.kernel_features = features;
    Some(format!(
        "kernel {release} lacks the ublk feature {missing} (requires.kernel, or implied by a recovery mode or a quiesce step; known from an earlier boot)"
    ))
}

/// One attempt in one fresh VM; true if the first step started.
pub fn attempt(job: &Job, dir: &Path) -> (Outcome, bool) {
    let Job {
        sc,
        image,
        accel,
        seed,
        run,
        ..
    } = *job;
    let start = Instant::now();
    let deadline = start + scaled(sc.timeout.0, job.timeout_scale);
    let mut out = Outcome::named(&sc.name, run, seed, dir, image.hash());
    let cfg = VmConfig {
        cpus: sc.cpus(),
        memory_mib: sc.memory_mib(),
        accel,
        tools: job.tools.cloned(),
        icount_shift: None,
    };
    let vm = match Vm::boot(image, &cfg, dir, deadline) {
        Ok(vm) => vm,
        Err(f) => return (out.failed_at(start, "boot", &f), false),
    };
    out.boot_s = Some(vm.boot_s);
    if job.kernel_trace {
        ktrace::install(&vm);
    }
    if let Some((verdict, why)) = kernel_gate(&vm, sc, image, deadline, &mut out) {
        return (out.finish(start, verdict, Some(why)), false);
    }
    if let Err(why) = job.server.install(&vm, deadline) {
        return (out.finish(start, Verdict::Fail, Some(why)), false);
    }
    if job.kernel_trace {
        ktrace::start(&vm, deadline);
    }
    let mut r = Runner::new(job.server, vm, dir, seed);
    r.device = sc.device.clone();
    r.expect_splats = &sc.expect_splats;
    r.overrides = job.overrides;
    let result = run_steps(&mut r, sc, deadline, job.timeout_scale, &mut out);
    if out.freeze_frame.is_none() {
        out.freeze_frame = r.freeze.as_ref().map(|f| f.dir.clone());
    }
    out.device_features = std::mem::take(&mut r.device_features);
    // The kernel log and the kernel trace are always checked, whatever happened, and every
    // cause is kept.
    let trace = ktrace::collect(&r.vm);
    let splats = r.splats();
    r.save_artifacts();
    let protocol = out.record_trace(&r.vm, trace.as_deref());
    r.vm.kill();
    out.splats = bounded_splats(&splats);
    let (verdict, why, step) = judge(result, protocol.as_deref(), &splats);
    if let Some(t) = &trace {
        out.save_trace(t, verdict);
    }
    out.failed_step = step;
    let out = out.finish(start, verdict, why);
    (out, true)
}

/// The run's verdict from its steps' result and the kernel log's splats: a step's verdict
/// stands (a splat is named beside it, never instead of it); steps that passed with a splat
/// in the log fail at "kernel log". Returns (verdict, reason, failed step).
pub fn judge(
    steps: Option<(Verdict, String, String)>,
    protocol: Option<&str>,
    splats: &[String],
) -> (Verdict, Option<String>, Option<String>) {
    // A protocol violation the kernel trace shows is named beside a step's verdict, or fails
    // a run whose steps passed (at "kernel trace"), before any splat.
    let steps = match (steps, protocol) {
        (Some((v, why, step)), Some(p)) => Some((v, format!("{why}; and a {p}"), step)),
        (None, Some(p)) => Some((Verdict::Fail, p.to_string(), "kernel trace".to_string())),
        (steps, None) => steps,
    };
    let splat_note = |first: &str| match splats.len() {
        1 => format!("kernel splat: {first} (see dmesg.txt)"),
        n => format!("kernel splat: {first} (and {} more; see dmesg.txt)", n - 1),
    };
    match (steps, splats.first()) {
        (Some((verdict, why, step)), None) => (verdict, Some(why), Some(step)),
        (Some((verdict, why, step)), Some(first)) => {
            let why = format!("{why}; and a {}", splat_note(first));
            (verdict, Some(why), Some(step))
        }
        (None, Some(first)) => (
            Verdict::Fail,
            Some(splat_note(first)),
            Some("kernel log".into()),
        ),
        (None, None) => (Verdict::Pass, None, None),
    }
}

/// The splats an outcome keeps: the first `MAX_SPLATS`, each bounded.
fn bounded_splats(splats: &[String]) -> Vec<String> {
    splats
        .iter()
        .take(MAX_SPLATS)
        .map(|s| crate::text::bound(s, MAX_SPLAT_BYTES).into_owned())
        .collect()
}

/// The steps in order; the first that does not pass ends the run: (verdict, why, step label).
fn run_steps(
    r: &mut Runner,
    sc: &Scenario,
    deadline: Instant,
    timeout_scale: f64,
    out: &mut Outcome,
) -> Option<(Verdict, String, String)> {
    for (i, step) in sc.steps.iter().enumerate() {
        let label = format!(
            "steps[{i}] {}{}",
            step.kind.name(),
            step.label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        );
        let step_deadline = (Instant::now() + scaled(step.timeout.0, timeout_scale)).min(deadline);
        let t = Instant::now();
        let res = r.step(i, step, step_deadline);
        r.log(&format!(
            "{label}: {} in {:.2} s",
            if res.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        ));
        if let Err(e) = res {
            let (verdict, why) = classify(r, &label, e, out);
            return Some((verdict, why, label));
        }
        if let Some(sig) = interrupted() {
            return Some((
                Verdict::Interrupted,
                crate::session::outcome::interrupted_by(sig),
                label,
            ));
        }
    }
    None
}

/// The verdict of a step that did not pass, with the VM's fate taken into account first.
fn classify(r: &mut Runner, label: &str, e: StepError, out: &mut Outcome) -> (Verdict, String) {
    if let Some(f) = r.vm.gone() {
        return failure_verdict(&f);
    }
    let notes = r.server_notes();
    let e = match (e, notes.is_empty()) {
        (e, true) => e,
        (StepError::Fail(m), false) => StepError::Fail(format!("{m}; {}", notes.join("; "))),
        (StepError::Hang(m), false) => StepError::Hang(format!("{m}; {}", notes.join("; "))),
        (e, false) => e,
    };
    match e {
        StepError::Fail(m) => (Verdict::Fail, m),
        StepError::Infra(m) => (Verdict::InfraError, m),
        StepError::Hang(m) => {
            let dir = r.dir.join("freeze-frame");
            let ff = r.freeze_frame(&dir, &format!("{label} hung: {m}"));
            out.freeze_frame = Some(ff.dir.clone());
            // Collecting takes seconds: an interrupt or a VM death meanwhile still wins.
            if let Some(f) = r.vm.gone() {
                return failure_verdict(&f);
            }
            let summary = ff.dir.join("summary.txt");
            (
                Verdict::Timeout,
                format!("{m}; freeze-frame: {}", summary.display()),
            )
        }
    }
}

/// Reads the guest kernel's ublk features into `out`; a verdict if the run cannot go on
/// (features unreadable: infra-error; a feature `requires.kernel` names is missing: skip).
fn kernel_gate(
    vm: &Vm,
    sc: &Scenario,
    image: &Image,
    deadline: Instant,
    out: &mut Outcome,
) -> Option<(Verdict, String)> {
    let release = &image.manifest.kernel_release;
    match vm.ublk_features(deadline) {
        Ok(f) => {
            crate::image::kernel::remember_features(release, &f);
            out.kernel_features = f;
        }
        Err(why) => return Some((Verdict::InfraError, why)),
    }
    let missing = sc
        .kernel_needs()
        .into_iter()
        .find(|k| !out.kernel_features.contains(k))?;
    let why = format!(
        "kernel {release} lacks the ublk feature {missing} (requires.kernel, or implied by a recovery mode or a quiesce step)"
    );
    Some((Verdict::Skip, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_failure_keeps_the_kernel_splat() {
        let warn =
            "WARNING: CPU: 0 PID: 9 at drivers/block/ublk_drv.c:1 __ublk_complete_rq".to_string();
        let failed = || {
            Some((
                Verdict::Fail,
                "data mismatch".to_string(),
                "steps[1] io".to_string(),
            ))
        };
        let (v, why, step) = judge(failed(), None, std::slice::from_ref(&warn));
        assert_eq!(v, Verdict::Fail);
        let why = why.unwrap();
        assert!(
            why.starts_with("data mismatch; and a kernel splat: WARNING"),
            "{why}"
        );
        assert_eq!(step.as_deref(), Some("steps[1] io"));
        // A hang stays a timeout, its splat named beside the freeze-frame.
        let hung = Some((
            Verdict::Timeout,
            "hung; freeze-frame: x".to_string(),
            "s".to_string(),
        ));
        let (v, why, _) = judge(hung, None, &[warn.clone(), warn.clone()]);
        assert_eq!(v, Verdict::Timeout);
        assert!(why.unwrap().contains("freeze-frame: x; and a kernel splat: WARNING: CPU: 0 PID: 9 at drivers/block/ublk_drv.c:1 __ublk_complete_rq (and 1 more"));
        // Steps that passed: the splat fails the run at the kernel log.
        let (v, why, step) = judge(None, None, &[warn]);
        assert_eq!((v, step.as_deref()), (Verdict::Fail, Some("kernel log")));
        assert!(why.unwrap().contains("(see dmesg.txt)"));
        assert_eq!(judge(None, None, &[]), (Verdict::Pass, None, None));
    }

    #[test]
    fn a_protocol_violation_fails_a_run_and_is_named_beside_every_other_cause() {
        let p = "protocol violation: dev0 q1 tag 5: server COMMIT result 65536 at 1.300 s: rule result-exceeds-request (...)";
        let (v, why, step) = judge(None, Some(p), &[]);
        assert_eq!((v, step.as_deref()), (Verdict::Fail, Some("kernel trace")));
        assert_eq!(why.as_deref(), Some(p));
        let failed = Some((
            Verdict::Fail,
            "io failed: MISMATCH".to_string(),
            "steps[1] io".to_string(),
        ));
        let warn = "WARNING: at drivers/block/ublk_drv.c:1 __ublk_complete_rq".to_string();
        let (v, why, step) = judge(failed, Some(p), &[warn]);
        assert_eq!((v, step.as_deref()), (Verdict::Fail, Some("steps[1] io")));
        let why = why.unwrap();
        assert!(
            why.starts_with("io failed: MISMATCH; and a protocol violation: dev0 q1 tag 5"),
            "{why}"
        );
        assert!(why.contains("rule result-exceeds-request"), "{why}");
        assert!(why.ends_with("; and a kernel splat: WARNING: at drivers/block/ublk_drv.c:1 __ublk_complete_rq (see dmesg.txt)"), "{why}");
    }

    #[test]
    fn splats_kept_in_an_outcome_are_bounded() {
        let many: Vec<String> = (0..50)
            .map(|i| format!("WARNING: {i} {}", "x".repeat(4000)))
            .collect();
        let kept = bounded_splats(&many);
        assert_eq!(kept.len(), MAX_SPLATS);
        assert!(
            kept.iter().all(|s| s.len() <= MAX_SPLAT_BYTES),
            "{}",
            kept[0].len()
        );
    }
}
