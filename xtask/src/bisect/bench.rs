//! `cargo xtask bisect bench`: the decision rule against two baselines on synthetic histories,
//! in process (no git, no VMs).
//!
//! A trial: `commits` commits, the first bad one K drawn uniformly from 1..commits; a run fails
//! with probability `background` before K and `p` from K on. The "equal rates" cells have no K:
//! every commit fails with probability p, and the right answer is "no commit explains the
//! failures". Each policy sees the same seeded histories. Policies:
//!
//! - `ours`: `policy::decide` on `model::Model` (background rate, no-change hypothesis).
//! - `bayesect-greedy`: git-bayesect's model and policy, re-implemented (Beta(1/2, 1/2) rates on
//!   both sides, no direction, uniform prior over the commits; the run that minimises the
//!   expected posterior entropy; ties to the middle), stopped at the same confidence.
//! - `fixed-20`: binary search, 20 runs per commit, a commit is bad if any run fails.
//! - `told-rates` (with `--told-rates`): ours with the model told the true p and background
//!   rate. Not a policy anyone can use; it measures what not knowing the rates costs ours.

use ublk::rng::Rng;

use super::model::{Counts, Model, Params};
use super::policy::{decide, Decision, Limits};

/// Most runs one trial may use (a trial that needs more counts as wrong).
const MAX_TRIAL_RUNS: u32 = 5000;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    pub p: f64,
    pub background: f64,
    /// No change point: every commit fails with probability p.
    pub equal_rates: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Ours,
    BayesectGreedy,
    Fixed20,
    ToldRates,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Ours, Policy::BayesectGreedy, Policy::Fixed20];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Ours => "ours",
            Policy::BayesectGreedy => "bayesect-greedy",
            Policy::Fixed20 => "fixed-20",
            Policy::ToldRates => "told-rates",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub commits: usize,
    pub trials: u32,
    pub confidence: f64,
    pub jobs: usize,
    pub seed: u64,
    /// The prior `ours` uses.
    pub params: Params,
}

/// One cell x policy of the table.
#[derive(Clone, Debug)]
pub struct Row {
    pub cell: Cell,
    pub policy: Policy,
    pub correct: u32,
    pub trials: u32,
    pub mean_runs: f64,
    /// Mean rounds of parallel runs (= mean runs with jobs 1).
    pub mean_rounds: f64,
}

impl Row {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.trials as f64
    }
}

/// The cells of the table: p x background, then equal rates.
pub fn standard_cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for background in [0.0, 0.03] {
        for p in [0.1, 0.3, 0.6, 1.0] {
            cells.push(Cell {
                p,
                background,
                equal_rates: false,
            });
        }
    }
    for p in [0.1, 0.3] {
        cells.push(Cell {
            p,
            background: p,
            equal_rates: true,
        });
    }
    cells
}

/// The truth of one trial and its coin flips.
struct History {
    culprit: Option<usize>,
    cell: Cell,
    rng: Rng,
}

impl History {
    fn new(cell: Cell, commits: usize, seed: u64) -> History {
        let mut rng = Rng::new(seed);
        let k = rng.range(1, commits as u64 - 1) as usize;
        History {
            culprit: (!cell.equal_rates).then_some(k),
            cell,
            rng,
        }
    }

    fn run(&mut self, i: usize) -> bool {
        let rate = match self.culprit {
            Some(k) if i < k => self.cell.background,
            _ => self.cell.p,
        };
        (self.rng.below(1 << 30) as f64) < rate * (1u64 << 30) as f64
    }
}

/// Every policy on every cell; rows in cell order, then in `policies` order.
pub fn table(setup: Setup, cells: &[Cell], policies: &[Policy]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (ci, cell) in cells.iter().enumerate() {
        for policy in policies {
            let mut row = Row {
                cell: *cell,
                policy: *policy,
                correct: 0,
                trials: setup.trials,
                mean_runs: 0.0,
                mean_rounds: 0.0,
            };
            if *policy == Policy::ToldRates && cell.equal_rates {
                row.trials = 0; // "no change" told is no question: not applicable
            }
            for t in 0..row.trials {
                let seed = setup.seed ^ ((ci as u64) << 40) ^ t as u64;
                let mut h = History::new(*cell, setup.commits, seed);
                let (verdict, runs, rounds) = trial(*policy, setup, &mut h);
                row.correct += (verdict == h.culprit) as u32;
                row.mean_runs += runs as f64 / row.trials as f64;
                row.mean_rounds += rounds as f64 / row.trials as f64;
            }
            rows.push(row);
        }
    }
    rows
}

/// (named commit or None for "no change"/gave up, runs, rounds). A give-up names nothing,
/// which is wrong for a culprit and wrong for "no change" too (`Some(usize::MAX)`).
fn trial(policy: Policy, setup: Setup, h: &mut History) -> (Option<usize>, u32, u32) {
    match policy {
        Policy::Ours => ours(Model::with(setup.commits, setup.params), setup, h),
        Policy::ToldRates => {
            let told = Model::told(setup.commits, h.cell.p.min(0.999), h.cell.background);
            ours(told, setup, h)
        }
        Policy::BayesectGreedy => bayesect(setup, h),
        Policy::Fixed20 => {
            let (k, runs) = fixed(setup.commits, 20, |i| h.run(i));
            (Some(k), runs, runs)
        }
    }
}

fn ours(model: Model, setup: Setup, h: &mut History) -> (Option<usize>, u32, u32) {
    let mut c = Counts::new(setup.commits);
    let limits = Limits {
        confidence: setup.confidence,
        max_runs_per_commit: MAX_TRIAL_RUNS,
        jobs: setup.jobs,
    };
    let mut rounds = 0;
    while c.total_runs() < MAX_TRIAL_RUNS {
        match decide(&model, &c, limits, |_| true) {
            Decision::Test(batch) => {
                rounds += 1;
                for i in batch {
                    let failed = h.run(i);
                    c.observe(i, failed);
                }
            }
            Decision::Culprit(k, _) => return (Some(k), c.total_runs(), rounds),
            Decision::NoChange(_) => return (None, c.total_runs(), rounds),
            Decision::GiveUp(_) => break,
        }
    }
    (Some(usize::MAX), c.total_runs(), rounds)
}

fn bayesect(setup: Setup, h: &mut History) -> (Option<usize>, u32, u32) {
    let mut b = Bayesect::new(setup.commits);
    while b.counts.total_runs() < MAX_TRIAL_RUNS {
        let post = b.posterior();
        let (k, p) =
            post.iter()
                .enumerate()
                .skip(1)
                .fold((1, 0.0), |a, (k, p)| if *p > a.1 { (k, *p) } else { a });
        if p >= setup.confidence {
            let runs = b.counts.total_runs();
            return (Some(k), runs, runs);
        }
        let i = b.select(&post);
        let failed = h.run(i);
        b.counts.observe(i, failed);
    }
    let runs = b.counts.total_runs();
    (Some(usize::MAX), runs, runs)
}

/// Binary search with a fixed number of runs per commit; a commit is bad if any run fails.
/// Returns (first bad index, runs).
pub fn fixed(n: usize, runs_per_commit: u32, mut test: impl FnMut(usize) -> bool) -> (usize, u32) {
    let (mut good, mut bad) = (0usize, n - 1);
    let mut total = 0;
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        let mut failed = false;
        for _ in 0..runs_per_commit {
            total += 1;
            if test(mid) {
                failed = true;
                break;
            }
        }
        if failed {
            bad = mid;
        } else {
            good = mid;
        }
    }
    (bad, total)
}

/// git-bayesect's model: K splits the commits into old (< K) and new (>= K) sides, each with an
/// unknown rate under a Jeffreys Beta(1/2, 1/2) prior, integrated out in closed form.
struct Bayesect {
    counts: Counts,
    /// ln_rise[a][m] = ln(a + 0) + ... + ln(a + m - 1) for a = 1/2 (0) and a = 1 (1).
    ln_rise: [Vec<f64>; 2],
}

impl Bayesect {
    fn new(n: usize) -> Bayesect {
        let rise = |a: f64| {
            let mut v = vec![0.0];
            for m in 0..MAX_TRIAL_RUNS as usize + 1 {
                v.push(v[m] + (a + m as f64).ln());
            }
            v
        };
        Bayesect {
            counts: Counts::new(n),
            ln_rise: [rise(0.5), rise(1.0)],
        }
    }

    /// ln of the Beta-Bernoulli marginal likelihood of (fails, passes).
    fn ln_marginal(&self, f: u32, s: u32) -> f64 {
        let [half, one] = &self.ln_rise;
        half[f as usize] + half[s as usize] - one[(f + s) as usize]
    }

    /// (ln weight, old-side rate mean, new-side rate mean) per K (index 0 unused).
    fn split(&self, k: usize) -> (f64, f64, f64) {
        let c = &self.counts;
        let (fo, ro): (u32, u32) = (c.fails[..k].iter().sum(), c.runs[..k].iter().sum());
        let (fnew, rnew): (u32, u32) = (c.fails[k..].iter().sum(), c.runs[k..].iter().sum());
        let ln = self.ln_marginal(fo, ro - fo) + self.ln_marginal(fnew, rnew - fnew);
        let mean = |f: u32, r: u32| (f as f64 + 0.5) / (r as f64 + 1.0);
        (ln, mean(fo, ro), mean(fnew, rnew))
    }

    fn posterior(&self) -> Vec<f64> {
        let n = self.counts.len();
        let mut ln = vec![f64::NEG_INFINITY; n];
        for (k, v) in ln.iter_mut().enumerate().skip(1) {
            *v = self.split(k).0;
        }
        let m = ln[1..].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut w: Vec<f64> = ln.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = w.iter().sum();
        w.iter_mut().for_each(|v| *v /= s);
        w
    }

    /// The commit whose run minimises the expected posterior entropy; ties to the middle.
    fn select(&self, post: &[f64]) -> usize {
        let n = post.len();
        let rates: Vec<(f64, f64)> = (0..n)
            .map(|k| {
                if k == 0 {
                    (0.0, 0.0)
                } else {
                    let s = self.split(k);
                    (s.1, s.2)
                }
            })
            .collect();
        let mut best: Option<(usize, f64)> = None;
        for i in 0..n {
            let (mut pf, mut af, mut ap) = (0.0, vec![0.0; n], vec![0.0; n]);
            for k in 1..n {
                let f = if i >= k { rates[k].1 } else { rates[k].0 };
                pf += post[k] * f;
                af[k] = post[k] * f;
                ap[k] = post[k] * (1.0 - f);
            }
            let expected = pf * entropy_of(&af, pf) + (1.0 - pf) * entropy_of(&ap, 1.0 - pf);
            let closer = |j: usize, b: usize| j.abs_diff(n / 2) < b.abs_diff(n / 2);
            best = match best {
                Some((b, e)) if expected > e + 1e-12 => Some((b, e)),
                Some((b, e)) if expected > e - 1e-12 && !closer(i, b) => Some((b, e)),
                _ => Some((i, expected)),
            };
        }
        best.expect("n >= 2").0
    }
}

/// Entropy of the distribution `v / mass`.
fn entropy_of(v: &[f64], mass: f64) -> f64 {
    if mass <= 1e-15 {
        return 0.0;
    }
    v.iter()
        .map(|x| x / mass)
        .filter(|x| *x > 0.0)
        .map(|x| -x * x.ln())
        .sum()
}

/// The table as text, one row per cell, the policies side by side.
pub fn render(rows: &[Row], policies: &[Policy]) -> String {
    let mut out = format!("{:<14} {:>6}", "cell", "");
    for p in policies {
        out += &format!(" | {:>16} {:>7}", p.name(), "runs");
    }
    out += "\n";
    for chunk in rows.chunks(policies.len()) {
        let c = chunk[0].cell;
        let label = match c.equal_rates {
            true => format!("equal {:.2}", c.p),
            false => format!("p {:.2} bg {:.2}", c.p, c.background),
        };
        out += &format!("{label:<14} {:>6}", "");
        for (r, p) in chunk.iter().zip(policies) {
            assert_eq!(r.policy, *p, "rows in policy order");
            if r.trials == 0 {
                out += &format!(" | {:>16} {:>7}", "n/a", "");
                continue;
            }
            out += &format!(
                " | {:>8}/{:<3} {:>3.0}% {:>7.1}",
                r.correct,
                r.trials,
                r.accuracy() * 100.0,
                r.mean_runs
            );
        }
        out += "\n";
    }
    out
}
