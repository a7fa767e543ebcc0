//! One run's record (`Outcome`): what every suite's run ends as, what every report renders,
//! what `report merge` joins; and the two rules every suite's runs share — a VM that died
//! before the test started gets one more (`retry_once`), a VM failure maps to a verdict
//! (`failure_verdict`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::host::procs::{interrupted, signal_name};
use crate::runs::Verdict;
use crate::vm::{ktrace, Failure, Vm};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    /// The server profile it ran against.
    pub server: String,
    /// The kernel it booted, as asked for (`debian`, `debian-7.2`, `host`, a path).
    pub kernel: String,
    /// The guest kernel's release and its ublk features (GET_FEATURES), by name.
    pub kernel_release: String,
    pub kernel_features: Vec<String>,
    /// Device name → the ublk features the server's device ran with (ADD_DEV's granted flags).
    pub device_features: BTreeMap<String, Vec<String>>,
    /// package=version of every .deb in the attached guest tools layer; empty: none attached.
    pub tools: Vec<String>,
    pub run: u32,
    pub verdict: Verdict,
    pub reason: Option<String>,
    /// Index and kind of the step that failed or hung.
    pub failed_step: Option<String>,
    pub duration_s: f64,
    pub boot_s: Option<f64>,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub freeze_frame: Option<PathBuf>,
    /// What booted, exactly (with the seed and the session's commit: enough to reproduce).
    pub image_hash: String,
    /// The first attempt, when its VM died before the first step and the run was retried.
    pub first_attempt: Option<Attempt>,
    /// Kernel splats the scenario did not expect, whatever else happened (at most
    /// `MAX_SPLATS`, each at most `MAX_SPLAT_BYTES`; the whole log is dmesg.txt).
    #[serde(default)]
    pub splats: Vec<String>,
    /// Splats an `--expect-splat` accepted: not a failure, still named on the run that
    /// logged them (bounded like `splats`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub known_splats: Vec<String>,
    /// The kernel's ublk trace of the run (`trace/`): its one-line status ("N events, 0 lost;
    /// dev0: ...") or why it is off. At most `MAX_TRACE_BYTES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_trace: Option<String>,
    /// Protocol violations the kernel trace's checker found (the first `MAX_SPLATS`, each at
    /// most `MAX_SPLAT_BYTES`; all are in trace/summary.txt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocol: Vec<String>,
    /// The per-tag timeline picture to look at first, relative to `run_dir`
    /// (`freeze-frame/timeline.svg` for a hang, else `trace/timeline.svg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
    /// The command that reproduces this run alone, as printed (shell-quoted).
    #[serde(default)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reproduce: String,
}

/// Splat lines kept in an outcome (dmesg.txt has them all).
pub const MAX_SPLATS: usize = 10;
pub const MAX_SPLAT_BYTES: usize = 512;
/// The kernel trace's status line in an outcome.
pub const MAX_TRACE_BYTES: usize = 1024;

/// A discarded attempt, kept as evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub verdict: Verdict,
    pub reason: String,
    pub run_dir: PathBuf,
}

impl Outcome {
    /// An outcome of something that is not a scenario file (e.g. a kernel selftest).
    pub fn named(name: &str, run: u32, seed: u64, dir: &Path, image_hash: &str) -> Outcome {
        Outcome {
            scenario: name.to_string(),
            server: String::new(),
            kernel: String::new(),
            kernel_release: String::new(),
            kernel_features: Vec::new(),
            device_features: BTreeMap::new(),
            tools: Vec::new(),
            run,
            verdict: Verdict::Pass,
            reason: None,
            failed_step: None,
            duration_s: 0.0,
            boot_s: None,
            seed,
            run_dir: dir.to_path_buf(),
            freeze_frame: None,
            image_hash: image_hash.to_string(),
            first_attempt: None,
            splats: Vec::new(),
            known_splats: Vec::new(),
            kernel_trace: None,
            protocol: Vec::new(),
            timeline: None,
            reproduce: String::new(),
        }
    }

    /// The scenario's name, with `@server` unless it ran against the default server and
    /// ` on KERNEL` unless it booted the default kernel.
    /// The run's identity in every report and merged artifact: scenario, server, kernel and
    /// run number (a merge refuses two runs with the same four), as a file name. A readable
    /// slug plus a hash of the exact four, so distinct runs never share one.
    pub fn id(&self) -> String {
        let key = crate::util::key_of(&[
            ("scenario", self.scenario.as_bytes()),
            ("server", self.server.as_bytes()),
            ("kernel", self.kernel.as_bytes()),
            ("run", &self.run.to_le_bytes()),
        ]);
        let mut slug = crate::util::slug(&self.label());
        slug.truncate(80);
        format!("{slug}-r{}-{}", self.run, &key[..12])
    }

    pub fn label(&self) -> String {
        let mut l = self.scenario.clone();
        if !self.server.is_empty() && self.server != crate::server::DEFAULT {
            l = format!("{l}@{}", self.server);
        }
        if !self.kernel.is_empty() && self.kernel != crate::image::kernel::DEFAULT_KERNEL {
            l = format!("{l} on {}", self.kernel);
        }
        l
    }

    /// Ends the outcome with the verdict of a VM failure, blaming `step`.
    pub fn failed_at(mut self, start: Instant, step: &str, f: &Failure) -> Outcome {
        let (verdict, why) = failure_verdict(f);
        self.failed_step = Some(step.into());
        self.finish(start, verdict, Some(why))
    }

    /// The kernel trace's record (status or why it is off, violations bounded); the verdict's
    /// words for its violations, if any.
    pub fn record_trace(&mut self, vm: &Vm, trace: Option<&ktrace::Collected>) -> Option<String> {
        let Some(t) = trace else {
            self.kernel_trace = vm.ktrace.lock().unwrap().note.clone();
            return None;
        };
        let bound = |s: &str, n| crate::text::bound(s, n).into_owned();
        self.kernel_trace = Some(bound(&t.status(), MAX_TRACE_BYTES));
        self.protocol = (t.checker.violations.iter())
            .take(MAX_SPLATS)
            .map(|v| bound(&v.message, MAX_SPLAT_BYTES))
            .collect();
        t.violations_named()
    }

    /// Writes the run's `trace/` and names the picture a reader should open first: the
    /// freeze-frame's when the run hung, else the trace's, drawn for a run that did not pass
    /// or left a tag holding a request.
    pub fn save_trace(&mut self, trace: &ktrace::Collected, verdict: Verdict) {
        let draw = verdict != Verdict::Pass || !trace.checker.stuck().is_empty();
        ktrace::save(trace, &self.run_dir, draw);
        let frozen = (self.freeze_frame.as_ref())
            .and_then(|f| f.strip_prefix(&self.run_dir).ok())
            .map(|f| f.join("timeline.svg"))
            .filter(|f| self.run_dir.join(f).is_file());
        self.timeline = match (frozen, draw) {
            (Some(f), _) => Some(f.display().to_string()),
            (None, true) => Some("trace/timeline.svg".into()),
            (None, false) => None,
        };
    }

    pub fn finish(mut self, start: Instant, verdict: Verdict, reason: Option<String>) -> Outcome {
        self.verdict = verdict;
        self.reason = reason;
        self.duration_s = start.elapsed().as_secs_f64();
        self
    }
}

/// The retry rule, apart from VMs: `attempt(n)` returns the outcome and whether the first
/// step started.
pub fn retry_once(mut attempt: impl FnMut(u32) -> (Outcome, bool)) -> Outcome {
    let (first, started) = attempt(1);
    let died_at_boot = first.verdict == Verdict::InfraError && !started;
    if !died_at_boot || interrupted().is_some() {
        return first;
    }
    let (mut second, _) = attempt(2);
    second.first_attempt = Some(Attempt {
        verdict: first.verdict,
        reason: first.reason.unwrap_or_default(),
        run_dir: first.run_dir,
    });
    second
}

pub fn failure_verdict(f: &Failure) -> (Verdict, String) {
    match f {
        Failure::Timeout(why) => (Verdict::Timeout, why.clone()),
        Failure::Infra(why) => (Verdict::InfraError, why.clone()),
        Failure::Interrupted(sig) => (Verdict::Interrupted, interrupted_by(*sig)),
    }
}

pub fn interrupted_by(sig: i32) -> String {
    format!("interrupted by {}", signal_name(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(verdict: Verdict, dir: &str) -> Outcome {
        let mut o = Outcome::named("t", 1, 7, Path::new(dir), "h");
        o.verdict = verdict;
        o.reason = Some(format!("{} in {dir}", verdict.name()));
        o
    }

    #[test]
    fn a_vm_that_died_at_boot_is_retried_once_and_both_attempts_kept() {
        let mut calls = 0;
        let o = retry_once(|n| {
            calls += 1;
            match n {
                1 => (outcome(Verdict::InfraError, "a1"), false),
                _ => (outcome(Verdict::Pass, "a2"), true),
            }
        });
        assert_eq!(calls, 2);
        assert_eq!(o.verdict, Verdict::Pass);
        assert_eq!(o.run_dir, Path::new("a2"));
        let first = o.first_attempt.expect("first attempt recorded");
        assert_eq!(first.run_dir, Path::new("a1"));
        assert_eq!(first.verdict, Verdict::InfraError);
        // Dying at boot twice: two attempts, never a third, and the verdict stays infra-error.
        let mut calls = 0;
        let o = retry_once(|_| {
            calls += 1;
            (outcome(Verdict::InfraError, "x"), false)
        });
        assert_eq!((calls, o.verdict), (2, Verdict::InfraError));
        assert!(o.first_attempt.is_some());
    }

    #[test]
    fn nothing_else_is_retried() {
        for (verdict, started) in [
            (Verdict::InfraError, true), // died after the first step started
            (Verdict::Fail, true),
            (Verdict::Timeout, false), // a boot that hangs is not a VM that died
            (Verdict::Pass, true),
        ] {
            let mut calls = 0;
            let o = retry_once(|_| {
                calls += 1;
                (outcome(verdict, "d"), started)
            });
            assert_eq!(calls, 1, "{verdict:?} started={started}");
            assert!(o.first_attempt.is_none());
        }
    }
}
