//! What to run next, and when to stop: the decision rule of `cargo xtask bisect`.
//!
//! 1. Warm-up: run the bad end until it has failed `WARMUP_FAILURES` times (that failure is
//!    what the bisection looks for, and its rate makes passes count for what they are worth).
//! 2. Stop when one hypothesis holds `confidence` of the posterior: a first bad commit, or
//!    "no change" (the failures are as frequent before every commit as after).
//! 3. Otherwise run where the outcome tells the most: the batch of `jobs` runs whose outcomes
//!    carry the most information about the hypothesis (mutual information, exact over the
//!    batch's joint outcomes). One run is the classic greedy expected-entropy step; a batch is
//!    chosen slot by slot, each slot scored jointly with the ones already in it, so parallel runs
//!    spread over the commits that are informative together rather than repeat one.

use super::model::{Counts, Model, Posterior};

/// Matching failures to see at the bad end before bisecting.
pub const WARMUP_FAILURES: u32 = 2;
/// Most runs scored together (2^8 joint outcomes).
pub const MAX_BATCH: usize = 8;

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Run the test once at each of these commits (repeats allowed).
    Test(Vec<usize>),
    /// The first bad commit, with its posterior probability.
    Culprit(usize, f64),
    /// No commit explains the failures, with the posterior probability of that.
    NoChange(f64),
    /// No verdict is reachable within the limits.
    GiveUp(String),
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub confidence: f64,
    pub max_runs_per_commit: u32,
    /// Runs to choose at once (1..=MAX_BATCH).
    pub jobs: usize,
}

/// The rule, in one place. `runnable(i)` excludes commits that cannot run (unbuildable, always
/// skipping); the run cap is applied here.
pub fn decide(
    model: &Model,
    c: &Counts,
    limits: Limits,
    runnable: impl Fn(usize) -> bool,
) -> Decision {
    assert!((1..=MAX_BATCH).contains(&limits.jobs));
    let bad = c.len() - 1;
    let open = |i: usize| c.runs[i] < limits.max_runs_per_commit && runnable(i);
    if c.fails[bad] < WARMUP_FAILURES && open(bad) {
        return Decision::Test(vec![bad; limits.jobs]);
    }
    if c.fails[bad] == 0 {
        return Decision::GiveUp(format!(
            "the bad end never failed in {} runs (counting the failure looked for only): nothing to bisect (raise --max-runs-per-commit?)",
            c.runs[bad]
        ));
    }
    let post = model.posterior(c);
    if post.no_change() >= limits.confidence {
        return Decision::NoChange(post.no_change());
    }
    let (k, p) = post.best_commit();
    if p >= limits.confidence {
        return Decision::Culprit(k, p);
    }
    let batch = choose(&post, c, limits, open);
    if batch.is_empty() {
        return Decision::GiveUp(format!(
            "every testable commit reached its run limit; best guess is index {k} at {:.0}%",
            p * 100.0
        ));
    }
    Decision::Test(batch)
}

/// The batch of up to `limits.jobs` runs with the most information about the hypothesis.
fn choose(
    post: &Posterior,
    c: &Counts,
    limits: Limits,
    open: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let mut batch = Batch::new(post);
    let mut planned = vec![0u32; c.len()];
    for _ in 0..limits.jobs {
        let mut best: Option<(usize, f64)> = None;
        for (i, planned_i) in planned.iter().enumerate() {
            if !open(i) || c.runs[i] + planned_i >= limits.max_runs_per_commit {
                continue;
            }
            let gain = batch.information_with(post, i);
            if best.is_none_or(|(_, g)| gain > g + 1e-12) {
                best = Some((i, gain));
            }
        }
        let Some((i, _)) = best else { break };
        batch.add(post, i);
        planned[i] += 1;
    }
    batch.commits
}

/// A batch of runs and, per hypothesis, the probability of each joint outcome of the batch.
struct Batch {
    commits: Vec<usize>,
    /// [outcome][h]: P(outcome | h); outcome bit s = run s failed.
    given: Vec<Vec<f64>>,
    /// Sum over the batch's runs of E_h[ H(run | h) ].
    noise: f64,
}

impl Batch {
    fn new(post: &Posterior) -> Batch {
        Batch {
            commits: Vec::new(),
            given: vec![vec![1.0; post.weight.len()]],
            noise: 0.0,
        }
    }

    /// The outcome table with one more run at commit i.
    fn extended(&self, post: &Posterior, i: usize) -> Vec<Vec<f64>> {
        let mut out = Vec::with_capacity(self.given.len() * 2);
        for o in &self.given {
            let f = |h: usize| post.fail_prob(h, i);
            out.push(
                o.iter()
                    .enumerate()
                    .map(|(h, v)| v * (1.0 - f(h)))
                    .collect(),
            );
            out.push(o.iter().enumerate().map(|(h, v)| v * f(h)).collect());
        }
        out
    }

    fn noise_of(post: &Posterior, i: usize) -> f64 {
        post.weight
            .iter()
            .enumerate()
            .map(|(h, w)| w * binary_entropy(post.fail_prob(h, i)))
            .sum()
    }

    /// I(hypothesis; outcomes of the batch plus a run at i) = H(outcomes) - H(outcomes | h).
    fn information_with(&self, post: &Posterior, i: usize) -> f64 {
        let table = self.extended(post, i);
        let h_out: f64 = table
            .iter()
            .map(|o| {
                let p: f64 = o.iter().zip(&post.weight).map(|(v, w)| v * w).sum();
                if p > 0.0 {
                    -p * p.ln()
                } else {
                    0.0
                }
            })
            .sum();
        h_out - (self.noise + Batch::noise_of(post, i))
    }

    fn add(&mut self, post: &Posterior, i: usize) {
        assert!(self.commits.len() < MAX_BATCH);
        self.given = self.extended(post, i);
        self.noise += Batch::noise_of(post, i);
        self.commits.push(i);
    }
}

fn binary_entropy(p: f64) -> f64 {
    let h = |x: f64| if x > 0.0 { -x * x.ln() } else { 0.0 };
    h(p) + h(1.0 - p)
}
