//! Every run of a bisection, in order, and what it means for the model.
//!
//! The runs are the state; everything else is derived from them each time (`tally`): the
//! signature learned at the bad end, the counts the model sees (passes, and failures with that
//! signature), and per commit the failures that looked different and the skips. The log
//! (`log.jsonl`, one `LogLine` per run) holds the same runs, so `--resume` replays it into the
//! same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::Counts;
use super::signature::{Learner, Want};

/// A usable commit's unusable runs (skips, failures that look different) may reach this ...
pub const MAX_UNUSABLE_RUNS: u32 = 3;

/// One run's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Run {
    Pass,
    /// A failure with its signature (None: from a log written before signatures; it matches).
    Fail(Option<String>),
    /// Could not test (exit 125, infra error, the runner itself failed).
    Skip,
}

/// One line of log.jsonl.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub commit: String,
    /// pass, fail or skip.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default)]
    pub secs: f64,
    /// The end of the output of a run that did not pass (its evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

impl LogLine {
    pub fn run(&self) -> Option<Run> {
        match self.result.as_str() {
            "pass" => Some(Run::Pass),
            "fail" => Some(Run::Fail(self.signature.clone())),
            "skip" => Some(Run::Skip),
            _ => None,
        }
    }

    pub fn new(commit: &str, run: &Run, secs: f64, output_tail: Option<String>) -> LogLine {
        let (result, signature) = match run {
            Run::Pass => ("pass", None),
            Run::Fail(s) => ("fail", s.clone()),
            Run::Skip => ("skip", None),
        };
        LogLine {
            commit: commit.into(),
            result: result.into(),
            signature,
            secs,
            output_tail,
        }
    }
}

/// The runs of one bisection over `n` commits.
#[derive(Clone, Debug)]
pub struct Evidence {
    n: usize,
    want: Want,
    pub runs: Vec<(usize, Run)>,
}

/// What the runs say, derived.
#[derive(Clone, Debug)]
pub struct Tally {
    pub learner: Learner,
    /// What the model sees: passes and matching failures.
    pub counts: Counts,
    /// Per commit: failures that looked different, by signature.
    pub others: Vec<BTreeMap<String, u32>>,
    pub skips: Vec<u32>,
    /// Per commit: every run, whatever it ended in.
    pub all: Vec<u32>,
}

impl Evidence {
    pub fn new(n: usize, want: Want) -> Evidence {
        Evidence {
            n,
            want,
            runs: Vec::new(),
        }
    }

    pub fn add(&mut self, i: usize, run: Run) {
        assert!(i < self.n);
        self.runs.push((i, run));
    }

    pub fn tally(&self) -> Tally {
        let bad = self.n - 1;
        let mut learner = Learner::new(self.want.clone());
        for (i, r) in &self.runs {
            if let (true, Run::Fail(Some(s))) = (*i == bad, r) {
                learner.bad_end_failure(s);
            }
        }
        let mut t = Tally {
            counts: Counts::new(self.n),
            others: vec![BTreeMap::new(); self.n],
            skips: vec![0; self.n],
            all: vec![0; self.n],
            learner,
        };
        for (i, r) in &self.runs {
            t.all[*i] += 1;
            match r {
                Run::Pass => t.counts.observe(*i, false),
                Run::Fail(None) => t.counts.observe(*i, true),
                Run::Fail(Some(s)) if t.learner.matches(s) => t.counts.observe(*i, true),
                Run::Fail(Some(s)) => *t.others[*i].entry(s.clone()).or_default() += 1,
                Run::Skip => t.skips[*i] += 1,
            }
        }
        t
    }
}

impl Tally {
    pub fn unusable(&self, i: usize) -> u32 {
        self.skips[i] + self.others[i].values().sum::<u32>()
    }

    /// Can commit i still tell us something? Not when its runs mostly skip or fail
    /// differently, nor past the run cap.
    pub fn runnable(&self, i: usize, max_runs_per_commit: u32) -> bool {
        let bad_runs = self.unusable(i);
        let mostly_unusable = bad_runs >= MAX_UNUSABLE_RUNS && bad_runs >= 2 * self.counts.runs[i];
        self.all[i] < max_runs_per_commit && !mostly_unusable
    }

    /// "3 runs failed differently: exit 2 (2), timeout (1)" for commit i, if any.
    pub fn others_line(&self, i: usize) -> Option<String> {
        let o = &self.others[i];
        let n: u32 = o.values().sum();
        if n == 0 {
            return None;
        }
        let list: Vec<String> = o.iter().map(|(s, k)| format!("{s} ({k})")).collect();
        Some(format!(
            "{n} run(s) failed differently: {}",
            list.join(", ")
        ))
    }
}
