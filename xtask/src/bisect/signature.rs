//! Failure signatures: what a failed run looked like, in words that stay the same from one run
//! of the same bug to the next (numbers, offsets, pids and paths taken out).
//!
//! - `--scenario`: `<verdict> @ <step>: <check>` from the candidate's summary.json, e.g.
//!   `fail @ steps[1] io: data mismatch`, `fail @ kernel log: splat UBSAN: array-index-out-of-bounds`,
//!   `timeout @ steps[3] stop: sh -c sleep # did not finish within its timeout`,
//!   `fail @ kernel trace: protocol result-exceeds-request` (the kernel trace's checker).
//! - `--sim`: `<check> check` from the simulator's FAIL line, e.g. `protocol check`.
//! - `--cmd`: `exit <code>`, or `timeout`; with `--match REGEX`, a failure whose output does
//!   not match gets ` (no match)` appended, so only matching failures can be the one looked for.
//!
//! The bisection learns the signature at the bad end (`Learner`) and counts only failures
//! with it as evidence; the others are recorded per commit and never move the posterior.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::runs::Verdict;

/// Appended to a command failure whose output does not match `--match` (never learned).
const NO_MATCH: &str = " (no match)";

/// How failures are told apart (`--signature`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// Every failure is the failure (the behaviour before signatures).
    Any,
    /// The first signature seen `times` times at the bad end.
    Learn { times: u32 },
    /// Exactly this signature.
    Exactly(String),
}

impl Want {
    pub fn parse(s: &str, times: u32) -> Want {
        match s {
            "any" => Want::Any,
            "learn" => Want::Learn { times },
            other => Want::Exactly(other.to_string()),
        }
    }
}

/// Which signature counts, given the failures at the bad end so far (in run order).
#[derive(Clone, Debug)]
pub struct Learner {
    want: Want,
    seen: BTreeMap<String, u32>,
    learned: Option<String>,
}

impl Learner {
    pub fn new(want: Want) -> Learner {
        let learned = match &want {
            Want::Exactly(s) => Some(s.clone()),
            _ => None,
        };
        Learner {
            want,
            seen: BTreeMap::new(),
            learned,
        }
    }

    /// A failure at the bad end, in run order.
    pub fn bad_end_failure(&mut self, sig: &str) {
        let Want::Learn { times } = self.want else {
            return;
        };
        if self.learned.is_some() || sig.ends_with(NO_MATCH) {
            return;
        }
        let n = self.seen.entry(sig.to_string()).or_default();
        *n += 1;
        if *n >= times {
            self.learned = Some(sig.to_string());
        }
    }

    /// Does a failure with `sig` count as the failure looked for? Before a signature is
    /// learned, the most frequent one at the bad end stands in (warm-up counts those).
    pub fn matches(&self, sig: &str) -> bool {
        match (&self.want, &self.learned) {
            (Want::Any, _) => true,
            (_, Some(l)) => l == sig,
            (_, None) => self.leader().is_some_and(|l| l == sig),
        }
    }

    fn leader(&self) -> Option<&str> {
        let mut best: Option<(&str, u32)> = None;
        for (s, n) in &self.seen {
            if best.is_none_or(|(_, b)| *n > b) {
                best = Some((s, *n));
            }
        }
        best.map(|b| b.0)
    }

    /// What is looked for, for the user.
    pub fn describe(&self) -> String {
        match (&self.want, &self.learned) {
            (Want::Any, _) => "any failure (--signature any)".into(),
            (Want::Exactly(s), _) => format!("`{s}` (--signature)"),
            (Want::Learn { times }, Some(s)) => {
                format!("`{s}` (learned from {times} failures at the bad end; --signature to choose another)")
            }
            (Want::Learn { .. }, None) => "not learned yet".into(),
        }
    }
}

/// Takes the varying parts out of a message: digit runs become `#`, the kernel log's
/// timestamp goes, and only the first clause (up to `;`, ` | `, a newline) stays.
pub fn normalize(text: &str) -> String {
    let first = text
        .split([';', '\n'])
        .next()
        .unwrap_or("")
        .split(" | ")
        .next()
        .unwrap_or("");
    let first = match first.find("] ") {
        Some(i) if first.trim_start().starts_with('[') => &first[i + 2..],
        _ => first,
    };
    let mut out = String::new();
    let mut in_digits = false;
    for ch in first.trim().chars() {
        if ch.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(ch);
        }
    }
    out.chars().take(160).collect()
}

/// The check a scenario run's reason names, in stable words.
fn check_of(reason: &str) -> String {
    if reason.contains("MISMATCH") {
        return "data mismatch".into();
    }
    // The kernel trace's checker: the rule is the signature (the tag, sector and times vary
    // from run to run of the same bug).
    if let Some(v) = reason.strip_prefix("protocol violation: ") {
        if let Some((_, rest)) = v.split_once(": rule ") {
            let rule: String = (rest.chars())
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            return format!("protocol {rule}");
        }
    }
    if let Some(splat) = reason.strip_prefix("kernel splat: ") {
        let s = normalize(splat);
        let s = s.split(" (and ").next().unwrap_or(&s).to_string();
        let kind = match s.strip_prefix("WARNING: CPU: # PID: # ") {
            Some(rest) => format!("WARNING {rest}"),
            None => s.split(" in ").next().unwrap_or(&s).to_string(),
        };
        return format!("splat {kind}");
    }
    normalize(reason)
}

/// The fields of a vm-e2e summary.json (`session::report::Session`) a bisection reads. A
/// candidate's xtask may be older or newer than this one: unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct SummaryView {
    pub runs: Vec<RunView>,
}

#[derive(Debug, Deserialize)]
pub struct RunView {
    pub verdict: Verdict,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub failed_step: Option<String>,
}

/// The signature of a failed scenario run (the first run of the summary that did not pass).
pub fn of_summary(s: &SummaryView) -> Option<String> {
    let r = s
        .runs
        .iter()
        .find(|r| !matches!(r.verdict, Verdict::Pass | Verdict::Skip))?;
    let step = r.failed_step.as_deref().unwrap_or("run");
    // "steps[2] expect_timeout (stopped server)": the step, without the detail.
    let step = step.split(" (").next().unwrap_or(step);
    let check = check_of(r.reason.as_deref().unwrap_or(""));
    Some(format!("{} @ {step}: {check}", r.verdict.name()))
}

/// Reads `dir/*/summary.json` (the run directory vm-e2e made under `UBLK_VM_RUNS_DIR`).
pub fn read_summary(dir: &Path) -> Option<SummaryView> {
    let mut sessions: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .take(64)
        .map(|e| e.path())
        .collect();
    // Folder names start with their time: the newest run's summary is the one wanted.
    sessions.sort();
    sessions.iter().rev().find_map(|s| {
        let text = std::fs::read_to_string(s.join("summary.json")).ok()?;
        serde_json::from_str::<SummaryView>(&text).ok()
    })
}

/// The simulator's failure: `<kind> check` from its FAIL line.
pub fn of_sim(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.starts_with("FAIL seed "))?;
    let (_, rest) = line.split_once("): ")?;
    let kind = rest.split(" check:").next()?;
    Some(format!("{kind} check"))
}

/// A command's failure: its exit code (None: killed at the time limit), and whether its
/// output matched `--match` when one is given.
pub fn of_cmd(code: Option<i32>, matched: Option<bool>) -> String {
    let base = match code {
        Some(c) => format!("exit {c}"),
        None => "timeout".into(),
    };
    match matched {
        Some(false) => format!("{base}{NO_MATCH}"),
        _ => base,
    }
}
