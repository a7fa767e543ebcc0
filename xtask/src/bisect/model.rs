//! The change-point model behind `cargo xtask bisect`.
//!
//! Commits are indexed 0..n in history order: 0 is `--good`, n-1 is `--bad`. A run at a commit
//! either fails (with the failure the bisection is after, see `signature`) or passes. The
//! hypotheses, indexed h as in `Posterior::weight`:
//!
//! ```text
//!   h = 0        "no change": every commit fails with one rate r (the failures are background)
//!   h = k >= 1   "commit k is the first bad one": commits before k fail with rate q (the
//!                background), commits from k on with rate p >= min_jump_ratio * q
//! ```
//!
//! Priors (`Params`): P(no change) = `prior_no_change`, the rest uniform over k. p and r are uniform on a
//! grid. q has `q_spike` of its mass at exactly 0 and the rest decaying from 0 (mean
//! `q_slab_mean_rate`): good commits are expected not to fail, but may (a flaky host, a different
//! bug). A first bad commit at least doubles the failure rate: a smaller step is not a
//! regression anyone can bisect, and letting it count as "a change" made "no change" almost
//! unprovable (with equal rates of 10% the bench said "no change" in 67% of trials after 2600
//! runs; with the doubling, 98% after ~300). The rates are
//! integrated out, never fixed: the posterior is recomputed from the per-commit counts in
//! O(n * grid), and predictive failure probabilities come out of the same sums.

/// The prior's constants (`Params::DEFAULT` is what `cargo xtask bisect` uses).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Prior probability that no commit changes the failure rate.
    pub prior_no_change: f64,
    /// q's prior: this much mass at exactly 0 ...
    pub q_spike: f64,
    /// ... and the rest proportional to exp(-q / this) on `Q_POINTS` up to `q_max`.
    pub q_slab_mean_rate: f64,
    pub q_max: f64,
    /// p >= this * q for a change hypothesis.
    pub min_jump_ratio: f64,
}

impl Params {
    pub const DEFAULT: Params = Params {
        prior_no_change: 0.1,
        q_spike: 0.4,
        q_slab_mean_rate: 0.05,
        q_max: 0.4,
        min_jump_ratio: 2.0,
    };

    /// The names `with_overrides` takes: each with its allowed range (inclusive) and field.
    #[allow(clippy::type_complexity)]
    pub const KEYS: [(&'static str, f64, f64, fn(&mut Params) -> &mut f64); 5] = [
        ("prior_no_change", 1e-6, 0.5, |p| &mut p.prior_no_change),
        ("q_spike", 0.0, 1.0, |p| &mut p.q_spike),
        ("q_slab_mean_rate", 1e-3, 1.0, |p| &mut p.q_slab_mean_rate),
        ("q_max", 0.0, 0.4, |p| &mut p.q_max),
        ("min_jump_ratio", 1.0, 100.0, |p| &mut p.min_jump_ratio),
    ];

    /// These constants with `KEY=VALUE,...` applied (`bisect bench --prior`), or what is wrong.
    pub fn with_overrides(mut self, spec: &str) -> Result<Params, String> {
        for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
            let names = || Params::KEYS.map(|k| k.0).join(", ");
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "--prior {item:?}: expected KEY=VALUE (keys: {})",
                    names()
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some((_, lo, hi, field)) = Params::KEYS.iter().find(|k| k.0 == key) else {
                return Err(format!("--prior: unknown key {key:?} (keys: {})", names()));
            };
            let v: f64 = match value.parse() {
                Ok(v) if (*lo..=*hi).contains(&v) => v,
                _ => {
                    return Err(format!(
                        "--prior {key}={value}: must be a number in [{lo}, {hi}]"
                    ))
                }
            };
            *field(&mut self) = v;
        }
        if self.q_spike == 0.0 && self.q_max < Q_POINTS[0] {
            return Err(format!(
                "--prior: q_spike=0 with q_max below {} leaves the background rate no value",
                Q_POINTS[0]
            ));
        }
        Ok(self)
    }
}

/// Grid points for p and r: the midpoints of 50 equal cells of (0, 1).
const P_STEPS: usize = 50;
const Q_POINTS: [f64; 16] = [
    0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.17, 0.22, 0.3,
    0.4,
];

/// Runs and failures per commit (index as in the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counts {
    pub runs: Vec<u32>,
    pub fails: Vec<u32>,
}

impl Counts {
    pub fn new(n: usize) -> Counts {
        assert!(n >= 2, "need a good and a bad commit");
        Counts {
            runs: vec![0; n],
            fails: vec![0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.runs.len()
    }

    pub fn observe(&mut self, i: usize, failed: bool) {
        assert!(i < self.len(), "commit index {i} out of 0..{}", self.len());
        self.runs[i] += 1;
        self.fails[i] += failed as u32;
        assert!(self.fails[i] <= self.runs[i]);
    }

    pub fn total_runs(&self) -> u32 {
        self.runs.iter().sum()
    }

    /// (failures, passes) over commits `range`.
    fn tally(&self, range: std::ops::Range<usize>) -> (u32, u32) {
        let f: u32 = self.fails[range.clone()].iter().sum();
        let r: u32 = self.runs[range].iter().sum();
        (f, r - f)
    }
}

/// Rate values with their prior masses, ascending, and the logs the likelihood needs.
#[derive(Clone, Debug)]
struct Grid {
    x: Vec<f64>,
    ln_x: Vec<f64>,
    ln_1mx: Vec<f64>,
    ln_prior: Vec<f64>,
}

impl Grid {
    fn new(points: &[(f64, f64)]) -> Grid {
        let mass: f64 = points.iter().map(|p| p.1).sum();
        assert!(mass > 0.0);
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "grid ascending");
        assert!(points.iter().all(|p| (0.0..1.0).contains(&p.0)));
        Grid {
            x: points.iter().map(|p| p.0).collect(),
            ln_x: points.iter().map(|p| p.0.ln()).collect(),
            ln_1mx: points.iter().map(|p| (1.0 - p.0).ln()).collect(),
            ln_prior: points.iter().map(|p| (p.1 / mass).ln()).collect(),
        }
    }

    /// ln(prior * x^fails * (1-x)^passes) per point (0^0 = 1).
    fn log_lik(&self, (fails, passes): (u32, u32), out: &mut Vec<f64>) {
        out.clear();
        for j in 0..self.x.len() {
            let f = if fails == 0 {
                0.0
            } else {
                fails as f64 * self.ln_x[j]
            };
            out.push(self.ln_prior[j] + f + passes as f64 * self.ln_1mx[j]);
        }
    }
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// What the runs so far say.
#[derive(Clone, Debug)]
pub struct Posterior {
    /// P(hypothesis | runs): [0] no change, [k] commit k is the first bad one. Sums to 1.
    pub weight: Vec<f64>,
    /// Per hypothesis: the predicted failure probability of one more run at a commit before
    /// it / from it on (the posterior means of q and p; of r for h = 0).
    pub rate_before: Vec<f64>,
    pub rate_after: Vec<f64>,
}

impl Posterior {
    /// P(a run at commit i fails | hypothesis h, runs so far).
    pub fn fail_prob(&self, h: usize, i: usize) -> f64 {
        if h == 0 || i >= h {
            self.rate_after[h]
        } else {
            self.rate_before[h]
        }
    }

    /// The most probable first bad commit and its probability.
    pub fn best_commit(&self) -> (usize, f64) {
        let mut best = (1, self.weight[1]);
        for (k, w) in self.weight.iter().enumerate().skip(2) {
            if *w > best.1 {
                best = (k, *w);
            }
        }
        best
    }

    pub fn no_change(&self) -> f64 {
        self.weight[0]
    }

    /// Failure rates before and after commit k as the runs estimate them (posterior means).
    pub fn rates_at(&self, k: usize) -> (f64, f64) {
        (self.rate_before[k], self.rate_after[k])
    }
}

/// The model for n commits: its grids and prior constants.
#[derive(Clone, Debug)]
pub struct Model {
    n: usize,
    prior_no_change: f64,
    q: Grid,
    p: Grid,
    /// For p's point l: how many q points are allowed with it (q * min_jump_ratio < p).
    q_below: Vec<usize>,
    /// ln of the constrained joint prior's mass (the allowed (q, p) pairs).
    ln_z_change: f64,
}

impl Model {
    pub fn new(n: usize) -> Model {
        Model::with(n, Params::DEFAULT)
    }

    pub fn with(n: usize, params: Params) -> Model {
        let Params {
            q_spike,
            q_slab_mean_rate,
            q_max,
            min_jump_ratio,
            prior_no_change,
        } = params;
        assert!((0.0..=1.0).contains(&q_spike) && q_slab_mean_rate > 0.0);
        let ps: Vec<(f64, f64)> = (0..P_STEPS)
            .map(|l| ((l as f64 + 0.5) / P_STEPS as f64, 1.0))
            .collect();
        let points = || Q_POINTS.iter().filter(|q| **q <= q_max);
        let slab: f64 = points().map(|q| (-q / q_slab_mean_rate).exp()).sum();
        let mut qs = vec![(0.0, q_spike)];
        qs.extend(points().map(|q| (*q, (1.0 - q_spike) * (-q / q_slab_mean_rate).exp() / slab)));
        Model::from_grids(
            n,
            prior_no_change,
            min_jump_ratio,
            Grid::new(&qs),
            Grid::new(&ps),
        )
    }

    /// The model told the true rates (q before the culprit, p from it on): a bound for the
    /// benchmark, never for a real bisection, where nobody knows them.
    pub fn told(n: usize, p: f64, q: f64) -> Model {
        assert!(q < p && p < 1.0, "told rates q {q} < p {p} < 1");
        let (qs, ps) = (Grid::new(&[(q, 1.0)]), Grid::new(&[(p, 1.0)]));
        Model::from_grids(n, Params::DEFAULT.prior_no_change, 1.0, qs, ps)
    }

    fn from_grids(n: usize, prior_no_change: f64, min_jump_ratio: f64, q: Grid, p: Grid) -> Model {
        assert!(n >= 2, "need a good and a bad commit");
        assert!(prior_no_change > 0.0 && prior_no_change < 1.0 && min_jump_ratio >= 1.0);
        let q_below: Vec<usize> =
            p.x.iter()
                .map(|pl| {
                    q.x.iter()
                        .take_while(|qj| **qj * min_jump_ratio < *pl)
                        .count()
                })
                .collect();
        let z: f64 = (0..p.x.len())
            .map(|l| {
                p.ln_prior[l].exp()
                    * q.ln_prior[..q_below[l]]
                        .iter()
                        .map(|v| v.exp())
                        .sum::<f64>()
            })
            .sum();
        assert!(z > 0.0, "no allowed (q, p) pair");
        Model {
            n,
            prior_no_change,
            q,
            p,
            q_below,
            ln_z_change: z.ln(),
        }
    }

    /// The posterior over every hypothesis given the counts.
    pub fn posterior(&self, c: &Counts) -> Posterior {
        assert_eq!(c.len(), self.n);
        let n = self.n;
        let mut ln_w = vec![0.0; n];
        let mut before = vec![0.0; n];
        let mut after = vec![0.0; n];
        let (ln_l, r) = self.no_change(c.tally(0..n));
        ln_w[0] = self.prior_no_change.ln() + ln_l;
        (before[0], after[0]) = (r, r);
        let ln_prior_k = ((1.0 - self.prior_no_change) / (n - 1) as f64).ln();
        let mut scratch = (Vec::new(), Vec::new());
        for k in 1..n {
            let (ln_l, q, p) = self.change_at(c.tally(0..k), c.tally(k..n), &mut scratch);
            ln_w[k] = ln_prior_k + ln_l;
            (before[k], after[k]) = (q, p);
        }
        let m = max_of(&ln_w);
        assert!(m.is_finite(), "every hypothesis ruled out: {c:?}");
        let mut weight: Vec<f64> = ln_w.iter().map(|v| (v - m).exp()).collect();
        let total: f64 = weight.iter().sum();
        weight.iter_mut().for_each(|w| *w /= total);
        Posterior {
            weight,
            rate_before: before,
            rate_after: after,
        }
    }

    /// "No change": ln P(runs) and the posterior mean of r.
    fn no_change(&self, all: (u32, u32)) -> (f64, f64) {
        let mut lr = Vec::new();
        self.p.log_lik(all, &mut lr);
        let m = max_of(&lr);
        let (mut s, mut sx) = (0.0, 0.0);
        for (l, v) in lr.iter().enumerate() {
            let w = (v - m).exp();
            s += w;
            sx += w * self.p.x[l];
        }
        (s.ln() + m, sx / s)
    }

    /// "First bad commit here": ln P(runs), E[q], E[p] over the allowed (q, p) grid, given the
    /// (failures, passes) before and from the commit.
    fn change_at(
        &self,
        before: (u32, u32),
        after: (u32, u32),
        (lq, lp): &mut (Vec<f64>, Vec<f64>),
    ) -> (f64, f64, f64) {
        self.q.log_lik(before, lq);
        self.p.log_lik(after, lp);
        let (mq, mp) = (max_of(lq), max_of(lp));
        // Running sums over the q points below p's current point (both grids ascend).
        let (mut c, mut cq, mut j) = (0.0, 0.0, 0);
        let (mut s, mut sq, mut sp) = (0.0, 0.0, 0.0);
        for (l, lp_l) in lp.iter().enumerate() {
            while j < self.q_below[l] {
                let w = (lq[j] - mq).exp();
                c += w;
                cq += w * self.q.x[j];
                j += 1;
            }
            let w = (lp_l - mp).exp();
            s += w * c;
            sq += w * cq;
            sp += w * c * self.p.x[l];
        }
        if s <= 0.0 || !mq.is_finite() {
            return (f64::NEG_INFINITY, 0.0, 1.0);
        }
        (s.ln() + mq + mp - self.ln_z_change, sq / s, sp / s)
    }
}
