//! The regression gate: a run against a saved perf.json. Only ratios to brd are compared (they
//! cancel what slows a whole round: host load, TCG), and a cell regresses only when its drop is
//! larger than both the tolerance and the noise both runs measured for that cell.

use super::report::{Cell, PerfReport, Spread};
use super::workload::REFERENCE;

/// One cell's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub kernel: String,
    pub target: String,
    pub workload: String,
    pub base: f64,
    pub now: f64,
    /// (now - base) / base.
    pub change: f64,
    /// The drop a cell must exceed to count: max(tolerance, each run's relative range).
    pub threshold: f64,
}

impl Delta {
    pub fn regressed(&self) -> bool {
        -self.change > self.threshold
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {} on {}: {:.3}x brd, baseline {:.3}x ({:+.1} %; noise/tolerance ±{:.1} %)",
            self.target,
            self.workload,
            self.kernel,
            self.now,
            self.base,
            100.0 * self.change,
            100.0 * self.threshold
        )
    }
}

/// Every cell present in both runs (same kernel, target, workload), brd excluded.
pub fn compare(base: &PerfReport, now: &PerfReport, tolerance: f64) -> Vec<Delta> {
    assert!((0.0..1.0).contains(&tolerance));
    let mut out = Vec::new();
    for s in &now.sessions {
        let Some(b) = base.sessions.iter().find(|b| b.kernel == s.kernel) else {
            continue;
        };
        for c in s.cells.iter().filter(|c| c.target != REFERENCE) {
            let found = b
                .cells
                .iter()
                .find(|x| x.target == c.target && x.workload == c.workload);
            if let Some(d) = delta(&s.kernel, found, c, tolerance) {
                out.push(d);
            }
        }
    }
    out
}

fn delta(kernel: &str, base: Option<&Cell>, now: &Cell, tolerance: f64) -> Option<Delta> {
    let (b, n): (Spread, Spread) = (base?.ratio?, now.ratio?);
    let threshold = tolerance.max(b.rel_range()).max(n.rel_range());
    Some(Delta {
        kernel: kernel.into(),
        target: now.target.clone(),
        workload: now.workload.clone(),
        base: b.median,
        now: n.median,
        change: (n.median - b.median) / b.median,
        threshold,
    })
}

/// Why a baseline may not be comparable at all (printed as a warning).
pub fn mismatch(base: &PerfReport, now: &PerfReport) -> Vec<String> {
    let mut w = Vec::new();
    let pairs = [
        ("accelerator", &base.accelerator, &now.accelerator),
        ("clock", &base.clock, &now.clock),
    ];
    for (what, b, n) in pairs {
        if b != n {
            w.push(format!("the baseline's {what} is {b}, this run's {n}"));
        }
    }
    if base.runtime_s != now.runtime_s || base.size_bytes != now.size_bytes {
        w.push("the baseline ran other cell lengths or device sizes".into());
    }
    let none = now
        .sessions
        .iter()
        .all(|s| base.sessions.iter().all(|b| b.kernel != s.kernel));
    if none {
        w.push("the baseline has none of this run's kernels: nothing to compare".into());
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(target: &str, median: f64, min: f64, max: f64) -> Cell {
        let s = Spread { median, min, max };
        Cell {
            target: target.into(),
            workload: "w".into(),
            rounds: 3,
            iops: s,
            bw_bytes_s: s,
            lat_mean_us: s,
            lat_p99_us: s,
            cpu_us_per_io: None,
            guest_us_per_io: None,
            ratio: Some(s),
        }
    }

    #[test]
    fn a_drop_counts_only_beyond_noise_and_tolerance() {
        let base = cell("ublk-mem", 0.80, 0.78, 0.82); // ±2.5 %
                                                       // 10 % down, both runs tight: a regression.
        let d = delta("k", Some(&base), &cell("ublk-mem", 0.72, 0.71, 0.73), 0.05).unwrap();
        assert!(d.regressed(), "{d:?}");
        assert!(d.describe().contains("-10.0 %"), "{}", d.describe());
        // 10 % down, but this run's rounds spread over 30 %: not provable.
        let noisy = delta("k", Some(&base), &cell("ublk-mem", 0.72, 0.60, 0.84), 0.05).unwrap();
        assert!(!noisy.regressed(), "{noisy:?}");
        // 4 % down: inside the 5 % tolerance.
        let small = delta(
            "k",
            Some(&base),
            &cell("ublk-mem", 0.77, 0.765, 0.775),
            0.05,
        )
        .unwrap();
        assert!(!small.regressed());
        // Faster is never a regression.
        let up = delta("k", Some(&base), &cell("ublk-mem", 1.2, 1.19, 1.21), 0.05).unwrap();
        assert!(!up.regressed());
        assert!(delta("k", None, &base, 0.05).is_none());
    }
}
