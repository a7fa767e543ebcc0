//! The session model and what renders from it alone: `Session`, `Head`, `ShardInfo`, the
//! exit code of a session's verdicts, the order of runs; the terminal table, JUnit XML for CI,
//! JSON for tools. It imports nothing of the planner, the renderers or merge (they import it).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::outcome::Outcome;
use crate::runs::{Verdict, EXIT_INFRA};
use crate::server::device::DeviceOverride;
use crate::text::{bound, term};

/// What a session's reports say about it besides its runs (summary.json's top-level fields).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Head {
    /// The command that ran the session: `vm-e2e` or `vm-selftests`.
    #[serde(default = "vm_e2e")]
    pub tool: String,
    pub started_at: String,
    /// The session's seed (vm-e2e); None where runs take none (vm-selftests).
    pub seed: Option<u64>,
    pub commit: String,
    pub image_hash: String,
    pub accelerator: String,
    pub jobs: usize,
    pub repeat: u32,
    /// Every step and scenario limit was multiplied by this (`--timeout-scale`).
    #[serde(default = "one")]
    pub timeout_scale: f64,
    /// The shard(s) of a plan these runs are (`--shard`; several after `report merge`).
    #[serde(default)]
    pub shards: Vec<ShardInfo>,
    /// What each image part (kernel, tools layer, selftests) was made from: as locked, or
    /// newer than the lock (a fallback), package by package.
    #[serde(default)]
    pub inputs: Vec<crate::image::fetch::Inputs>,
    /// `--queues`/`--depth`, when the session replaced the scenarios' own values.
    #[serde(default, skip_serializing_if = "DeviceOverride::is_empty")]
    pub overrides: DeviceOverride,
}

#[cfg(test)]
impl Head {
    /// A head for tests: vm-e2e, seed 7, commit abc, TCG, -j 2, repeat 2, unsharded.
    pub fn example() -> Head {
        Head {
            tool: "vm-e2e".into(),
            started_at: "2026-11-22T00:00:00Z".into(),
            seed: Some(7),
            commit: "abc".into(),
            image_hash: "h".into(),
            accelerator: "tcg".into(),
            jobs: 2,
            repeat: 2,
            timeout_scale: 1.0,
            shards: Vec::new(),
            inputs: Vec::new(),
            overrides: DeviceOverride::default(),
        }
    }
}

/// A command's name as a session records it (`vm-e2e`, `vm-selftests`, a new suite's): safe
/// as plain text in every report; anything else in a summary is refused or quoted.
pub fn is_tool_name(s: &str) -> bool {
    let rest = s.strip_prefix("vm-").unwrap_or("");
    (1..=30).contains(&rest.len())
        && rest
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn vm_e2e() -> String {
    "vm-e2e".into()
}

fn one() -> f64 {
    1.0
}

/// summary.json: what `vm-e2e`/`vm-selftests` write and `report merge` reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    #[serde(flatten)]
    pub head: Head,
    pub wall_s: f64,
    /// Per kernel booted: its release and the ublk features it reported.
    pub kernels: BTreeMap<String, KernelInfo>,
    /// Per scenario: how its runs ended (flakiness is `failed` of `runs`).
    pub flaky: BTreeMap<String, Tally>,
    pub reproduce: String,
    pub runs: Vec<Outcome>,
    /// What `report merge` left out of the evidence it copied, and why (a skipped symlink,
    /// a file over its bound, a directory that could not be written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    pub ublk_features: Vec<String>,
}

/// What each kernel of the session reported (from its runs that booted).
pub fn kernels(runs: &[Outcome]) -> BTreeMap<String, KernelInfo> {
    let mut m: BTreeMap<String, KernelInfo> = BTreeMap::new();
    for r in runs {
        let k = m.entry(r.kernel.clone()).or_default();
        k.release.clone_from(&r.kernel_release);
        if k.ublk_features.is_empty() {
            k.ublk_features.clone_from(&r.kernel_features);
        }
    }
    m
}

/// Longest details column of the terminal table, in bytes.
const MAX_DETAILS_BYTES: usize = 2048;

/// The report header: one line per kernel.
pub fn kernels_header(kernels: &BTreeMap<String, KernelInfo>) -> String {
    kernels
        .iter()
        .map(|(name, k)| {
            let f = if k.ublk_features.is_empty() {
                "not read (no run booted)".to_string()
            } else {
                k.ublk_features.join(" ")
            };
            format!(
                "kernel {}: {}, ublk features: {}\n",
                term(name),
                term(&k.release),
                term(&f)
            )
        })
        .collect()
}

/// How a scenario's runs ended. Only runs that judged the code under test (pass, fail,
/// timeout) count toward flakiness; infra errors and interrupts are counted apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Runs that failed or timed out.
    pub failed: u32,
    /// Runs that passed, failed or timed out.
    pub runs: u32,
    pub infra_errors: u32,
    pub interrupted: u32,
    pub skipped: u32,
}

impl Tally {
    pub fn describe(&self) -> String {
        let mut s = format!("{} of {} runs failed", self.failed, self.runs);
        if self.failed > 0 && self.failed < self.runs {
            s += " (FLAKY)";
        }
        for (n, what) in [
            (self.infra_errors, "could not test (infra-error)"),
            (self.interrupted, "interrupted"),
            (self.skipped, "skipped"),
        ] {
            if n > 0 {
                s += &format!("; {n} {what}");
            }
        }
        s
    }
}

pub fn tally(runs: &[Outcome]) -> BTreeMap<String, Tally> {
    let mut m: BTreeMap<String, Tally> = BTreeMap::new();
    for r in runs {
        let t = m.entry(r.label()).or_default();
        match r.verdict {
            Verdict::Pass => t.runs += 1,
            Verdict::Fail | Verdict::Timeout => {
                t.runs += 1;
                t.failed += 1;
            }
            Verdict::InfraError => t.infra_errors += 1,
            Verdict::Interrupted => t.interrupted += 1,
            Verdict::Skip => t.skipped += 1,
        }
    }
    m
}

/// The widest label column: longer labels (rare) push their own row only.
const MAX_LABEL_CHARS: usize = 96;

pub fn table(runs: &[Outcome]) -> String {
    let labels: Vec<String> = runs.iter().map(|r| term(&r.label()).into_owned()).collect();
    let w = labels
        .iter()
        .map(|l| l.chars().count())
        .chain([32])
        .max()
        .expect("one")
        .min(MAX_LABEL_CHARS);
    let mut s = format!(
        "{:<w$} {:>4} {:<12} {:>10} {:>8}  {}\n",
        "scenario", "run", "verdict", "duration", "boot", "details"
    );
    for (r, label) in runs.iter().zip(&labels) {
        let boot = r
            .boot_s
            .map(|b| format!("{b:.2} s"))
            .unwrap_or_else(|| "-".into());
        let mut details = match (&r.failed_step, &r.reason) {
            (Some(step), Some(why)) => format!("{step}: {why}"),
            (None, Some(why)) => why.clone(),
            _ => String::new(),
        };
        if let Some(a) = &r.first_attempt {
            let first = a.reason.lines().next().unwrap_or_default();
            details = format!("{details} [second VM; the first died at boot: {first}]")
                .trim_start()
                .to_string();
        }
        let _ = writeln!(
            s,
            "{label:<w$} {:>4} {:<12} {:>8.1} s {:>8}  {}",
            r.run,
            r.verdict.name(),
            r.duration_s,
            boot,
            term(&bound(&details, MAX_DETAILS_BYTES))
        );
    }
    s
}

pub fn junit(session: &Session) -> String {
    let failures = session
        .runs
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail | Verdict::Timeout))
        .count();
    let count = |v: Verdict| session.runs.iter().filter(|r| r.verdict == v).count();
    let errors = count(Verdict::InfraError);
    let skipped = count(Verdict::Interrupted) + count(Verdict::Skip);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites><testsuite name=\"vm-e2e\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{:.3}\" timestamp=\"{}\">",
        session.runs.len(),
        session.wall_s,
        crate::text::xml(&session.head.started_at)
    );
    let _ = writeln!(s, "  <properties><property name=\"seed\" value=\"{}\"/><property name=\"commit\" value=\"{}\"/><property name=\"image_hash\" value=\"{}\"/></properties>", session.head.seed.map(|s| s.to_string()).unwrap_or_default(), crate::text::xml(&session.head.commit), session.head.image_hash);
    for r in &session.runs {
        let _ = write!(
            s,
            "  <testcase classname=\"vm-e2e\" name=\"{}#{}\" time=\"{:.3}\">",
            crate::text::xml(&r.label()),
            r.run,
            r.duration_s
        );
        let msg = crate::text::xml(r.reason.as_deref().unwrap_or(""));
        match r.verdict {
            Verdict::Pass => {}
            Verdict::Fail | Verdict::Timeout => {
                let _ = write!(
                    s,
                    "<failure type=\"{}\" message=\"{msg}\">run dir: {}</failure>",
                    r.verdict.name(),
                    crate::text::xml(&r.run_dir.display().to_string())
                );
            }
            // An interrupt or a skip says nothing about the code under test.
            Verdict::Interrupted | Verdict::Skip => {
                let _ = write!(s, "<skipped message=\"{msg}\"/>");
            }
            Verdict::InfraError => {
                let _ = write!(
                    s,
                    "<error type=\"{}\" message=\"{msg}\">run dir: {}</error>",
                    r.verdict.name(),
                    crate::text::xml(&r.run_dir.display().to_string())
                );
            }
        }
        s += "</testcase>\n";
    }
    s += "</testsuite></testsuites>\n";
    s
}

/// Largest summary.json read (by `report merge`, by `--durations`).
pub const MAX_SUMMARY_BYTES: u64 = 64 << 20;

/// What a shard's summary.json says about the slice it ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: u32,
    pub count: u32,
    /// sha256 (16 hex digits) of every run's key and estimate and of `count`.
    pub plan: String,
    /// Runs in all shards of the plan together.
    pub planned_runs: usize,
    /// Runs in this shard.
    pub runs: usize,
    /// This shard's estimated duration (sum of its runs' estimates).
    pub estimate_s: f64,
    /// Where the estimates came from ("scenario timeouts" or the --durations path).
    pub estimates_from: String,
}

/// What keeps a set of shards from being whole: per plan, each shard missing or present twice.
pub fn gaps(infos: &[ShardInfo]) -> Vec<String> {
    let mut by_plan: BTreeMap<(&str, u32), Vec<u32>> = BTreeMap::new();
    for i in infos {
        by_plan.entry((&i.plan, i.count)).or_default().push(i.index);
    }
    let mut out = Vec::new();
    for ((plan, count), have) in by_plan {
        for k in 1..=count {
            match have.iter().filter(|i| **i == k).count() {
                0 => out.push(format!("shard {k}/{count} of plan {plan} is missing")),
                1 => {}
                n => out.push(format!(
                    "shard {k}/{count} of plan {plan} is there {n} times"
                )),
            }
        }
    }
    out
}

/// The order of every report: scenario, server, kernel, run.
pub fn sort_runs(outcomes: &mut [Outcome]) {
    outcomes.sort_by(|a, b| {
        let key = |o: &Outcome| {
            (
                o.scenario.clone(),
                o.server.clone(),
                o.kernel.clone(),
                o.run,
            )
        };
        key(a).cmp(&key(b))
    });
}

/// A run whose evidence could not be written: a pass cannot be trusted (infra-error, "could
/// not test"); any other verdict stands, with the gap named.
pub fn mark_incomplete(o: &mut Outcome, why: &str) {
    if o.verdict == Verdict::Pass {
        o.verdict = Verdict::InfraError;
        o.reason = Some(format!("passed, but its evidence is incomplete: {why}"));
    } else {
        let r = o.reason.take().unwrap_or_default();
        o.reason = Some(format!("{r}; evidence incomplete: {why}"));
    }
}

/// The session's exit code from its runs' verdicts (README, "Exit codes").
pub fn exit_code(outcomes: &[Outcome]) -> i32 {
    let any = |v: &[Verdict]| outcomes.iter().any(|o| v.contains(&o.verdict));
    if any(&[Verdict::Fail, Verdict::Timeout]) {
        crate::util::EXIT_FAIL
    } else if any(&[Verdict::InfraError, Verdict::Interrupted]) {
        EXIT_INFRA
    } else {
        crate::util::EXIT_PASS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, run: u32, verdict: Verdict, reason: Option<&str>) -> Outcome {
        Outcome {
            scenario: name.into(),
            server: "ublk-mem".into(),
            kernel: "debian".into(),
            kernel_release: "6.12.117".into(),
            kernel_features: vec!["ZONED".into()],
            device_features: Default::default(),
            tools: Vec::new(),
            run,
            verdict,
            reason: reason.map(|s| s.to_string()),
            failed_step: reason.map(|_| "steps[2] io".to_string()),
            duration_s: 12.5,
            boot_s: Some(2.4),
            seed: 7,
            run_dir: "/t/r".into(),
            freeze_frame: None,
            image_hash: "h".into(),
            first_attempt: None,
            splats: Vec::new(),
            known_splats: Vec::new(),
            kernel_trace: None,
            protocol: Vec::new(),
            timeline: None,
            reproduce: String::new(),
        }
    }

    #[test]
    fn junit_and_flakiness() {
        let runs = vec![
            outcome("a", 1, Verdict::Pass, None),
            outcome("a", 2, Verdict::Timeout, Some("hung <here> & \"there\"")),
            outcome("b", 1, Verdict::InfraError, Some("qemu")),
            outcome("b", 2, Verdict::Interrupted, Some("interrupted by SIGINT")),
            outcome("b", 3, Verdict::Pass, None),
            outcome("b", 4, Verdict::Skip, Some("server x lacks trace")),
        ];
        let flaky = tally(&runs);
        assert_eq!(flaky["a"].describe(), "1 of 2 runs failed (FLAKY)");
        assert_eq!(
            flaky["b"],
            Tally {
                failed: 0,
                runs: 1,
                infra_errors: 1,
                interrupted: 1,
                skipped: 1,
            }
        );
        assert_eq!(
            flaky["b"].describe(),
            "0 of 1 runs failed; 1 could not test (infra-error); 1 interrupted; 1 skipped"
        );
        let s = Session {
            head: Head::example(),
            wall_s: 30.0,
            kernels: kernels(&runs),
            runs: runs.clone(),
            flaky,
            reproduce: String::new(),
            notes: Vec::new(),
        };
        let x = junit(&s);
        assert!(
            x.contains("tests=\"6\" failures=\"1\" errors=\"1\" skipped=\"2\""),
            "{x}"
        );
        assert!(
            x.contains("<skipped message=\"interrupted by SIGINT\"/>"),
            "{x}"
        );
        assert!(
            x.contains("message=\"hung &lt;here&gt; &amp; &quot;there&quot;\""),
            "{x}"
        );
        assert!(x.contains("<error type=\"infra-error\""));
        assert_eq!(
            kernels_header(&s.kernels),
            "kernel debian: 6.12.117, ublk features: ZONED\n"
        );
        let t = table(&runs);
        assert!(
            t.contains("timeout") && t.contains("steps[2] io: hung"),
            "{t}"
        );
    }

    #[test]
    fn the_table_stays_aligned_with_long_labels() {
        let mut long = outcome("quiesce-upgrade", 1, Verdict::Fail, Some("x"));
        long.server = "my-go-server-with-a-long-name".into();
        long.kernel = "debian-7.2".into();
        let runs = vec![outcome("a", 1, Verdict::Pass, None), long];
        let t = table(&runs);
        let col = |line: &str| line.find(" fail").or_else(|| line.find(" pass"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(col(lines[1]), col(lines[2]), "{t}");
        assert!(
            lines[2].starts_with("quiesce-upgrade@my-go-server-with-a-long-name on debian-7.2 "),
            "{t}"
        );
    }
}
