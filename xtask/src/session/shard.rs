//! `--shard K/N`: a deterministic, balanced slice of a session's runs, so that a CI matrix
//! (the distributed engine here) spreads one suite over N machines.
//!
//! ```text
//!   runs (key, estimate_s) ──sort: estimate desc, key asc──► greedy: each run to the least
//!   loaded shard (ties: the lowest index) ──► shard K keeps its runs, in their original order
//! ```
//!
//! Invariants (tested): every run lands in exactly one shard, so shards 1..N are disjoint and
//! their union is the full set; the assignment depends only on the run keys, the estimates
//! and N — never on the machine, the time or the order the runs were listed in. The plan hash
//! (keys, estimates, N) goes into every shard's summary.json; `report merge` accepts shards of
//! one plan only when 1..N are all there, so two shards planned from different estimates can
//! never silently drop or double a run.
//!
//! Estimates: the median duration of the same (scenario, server, kernel) in the summary.json
//! files given with `--durations` (earlier sessions, e.g. the last merged CI report); a run
//! without a recorded duration gets its scenario's timeout scaled by the median
//! duration/timeout ratio of the runs that have one (1 when none has).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use super::report::{gaps, ShardInfo};

use sha2::{Digest, Sha256};

use crate::util::Result;

/// Most shards a suite may be cut into.
pub const MAX_SHARDS: u32 = 64;
/// Most summary.json files one `--durations` directory may hold.
const MAX_DURATION_FILES: usize = 512;
/// Deepest directory level searched for summary.json files.
pub const MAX_SEARCH_DEPTH: usize = 6;

/// `K/N`: this is shard K (1-based) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad =
            || format!("--shard wants K/N with 1 <= K <= N <= {MAX_SHARDS} (e.g. 2/3), got `{s}`");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index == 0 || index > count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// One run of a session: the test (a scenario, a selftest), the server, the kernel and the
/// repeat. Unique within a session; `id()` is its form in plan hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunKey {
    pub test: String,
    pub server: String,
    pub kernel: String,
    pub repeat: u32,
}

impl RunKey {
    pub fn new(test: &str, server: &str, kernel: &str, repeat: u32) -> RunKey {
        RunKey {
            test: test.to_string(),
            server: server.to_string(),
            kernel: kernel.to_string(),
            repeat,
        }
    }

    /// `test|server|kernel|repeat`: what the plan hash and the split's tie-break read.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.test, self.server, self.kernel, self.repeat
        )
    }
}

/// One run as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub key: RunKey,
    pub estimate_s: f64,
}

/// The shard (0-based) of every run, by the greedy rule of the module doc.
pub fn assign(runs: &[Planned], count: u32) -> Vec<usize> {
    assert!((1..=MAX_SHARDS).contains(&count));
    assert!(runs
        .iter()
        .all(|r| r.estimate_s.is_finite() && r.estimate_s >= 0.0));
    let ids: Vec<String> = runs.iter().map(|r| r.key.id()).collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&runs[a], &runs[b]);
        rb.estimate_s
            .total_cmp(&ra.estimate_s)
            .then_with(|| ids[a].cmp(&ids[b]))
    });
    let mut load = vec![0.0f64; count as usize];
    let mut shard_of = vec![usize::MAX; runs.len()];
    for i in order {
        let least = (0..load.len())
            .min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b)))
            .expect("count >= 1");
        load[least] += runs[i].estimate_s;
        shard_of[i] = least;
    }
    assert!(shard_of.iter().all(|s| *s < count as usize));
    shard_of
}

/// The hash that names a plan: two shards agree on the split exactly when it is equal.
pub fn plan_hash(runs: &[Planned], count: u32) -> String {
    let mut keys: Vec<(String, u64)> = runs
        .iter()
        .map(|r| (r.key.id(), r.estimate_s.to_bits()))
        .collect();
    keys.sort();
    let mut h = Sha256::new();
    h.update(count.to_le_bytes());
    for (k, e) in keys {
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(e.to_le_bytes());
    }
    crate::util::hex(&h.finalize()[..8])
}

/// Keeps shard `shard`'s part of `work` (whose planner view is `runs`, same order).
pub fn select<W>(
    work: Vec<W>,
    runs: &[Planned],
    shard: Shard,
    estimates_from: &str,
) -> (Vec<W>, ShardInfo) {
    assert_eq!(work.len(), runs.len());
    let mut seen = std::collections::BTreeSet::new();
    assert!(
        runs.iter().all(|r| seen.insert(r.key.id())),
        "run keys are unique"
    );
    let shard_of = assign(runs, shard.count);
    let mine = shard.index as usize - 1;
    let estimate_s = runs
        .iter()
        .zip(&shard_of)
        .filter(|(_, s)| **s == mine)
        .map(|(r, _)| r.estimate_s)
        .sum();
    let kept: Vec<W> = work
        .into_iter()
        .zip(&shard_of)
        .filter(|(_, s)| **s == mine)
        .map(|(w, _)| w)
        .collect();
    let info = ShardInfo {
        index: shard.index,
        count: shard.count,
        plan: plan_hash(runs, shard.count),
        planned_runs: runs.len(),
        runs: kept.len(),
        estimate_s,
        estimates_from: estimates_from.to_string(),
    };
    (kept, info)
}

/// Recorded durations: (scenario, server, kernel) → the median of its runs' durations.
#[derive(Clone, Debug, Default)]
pub struct Durations {
    median_s: BTreeMap<(String, String, String), f64>,
    pub source: String,
}

impl Durations {
    /// No recorded durations: every run is estimated from its scenario's timeout.
    pub fn none() -> Durations {
        Durations {
            median_s: BTreeMap::new(),
            source: "scenario timeouts".into(),
        }
    }

    /// Reads a summary.json, or every summary.json under a directory.
    pub fn load(path: &Path) -> Result<Durations> {
        let files = summaries_under(path, MAX_DURATION_FILES)?;
        if files.is_empty() {
            return Err(crate::util::bad_input(format!(
                "--durations {}: no summary.json there (give a session directory or its summary.json)",
                path.display()
            )));
        }
        let mut all: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
        for f in &files {
            let text = crate::input::read_limited(f, super::report::MAX_SUMMARY_BYTES)?;
            let s: super::report::Session = serde_json::from_str(&text).map_err(|e| {
                crate::util::bad_input(format!(
                    "--durations {}: not a summary.json ({e})",
                    f.display()
                ))
            })?;
            for r in s.runs.into_iter().filter(|r| r.verdict.judged()) {
                let d = r.duration_s;
                if d.is_finite() && d >= 0.0 {
                    all.entry((r.scenario, r.server, r.kernel))
                        .or_default()
                        .push(d);
                }
            }
        }
        let median_s = all
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by(f64::total_cmp);
                (k, v[v.len() / 2])
            })
            .collect();
        Ok(Durations {
            median_s,
            source: path.display().to_string(),
        })
    }

    /// The recorded median of runs like `key` (any repeat).
    pub fn get(&self, key: &RunKey) -> Option<f64> {
        let k = (key.test.clone(), key.server.clone(), key.kernel.clone());
        self.median_s.get(&k).copied()
    }
}

/// The planner's view of runs given as (key, limit in seconds): each estimate is the recorded
/// median, or the limit scaled by the median recorded/limit ratio.
pub fn planned(durations: &Durations, runs: Vec<(RunKey, u64)>) -> Vec<Planned> {
    let recorded: Vec<Option<f64>> = runs.iter().map(|(k, _)| durations.get(k)).collect();
    let mut ratios: Vec<f64> = runs
        .iter()
        .zip(&recorded)
        .filter_map(|((_, t), d)| d.map(|d| d / (*t).max(1) as f64))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios.get(ratios.len() / 2).copied().unwrap_or(1.0);
    runs.into_iter()
        .zip(recorded)
        .map(|((key, t), d)| Planned {
            key,
            estimate_s: d.unwrap_or(t as f64 * ratio),
        })
        .collect()
}

/// `path` itself if it is a file, else every summary.json under it (depth and count bounded),
/// sorted.
pub fn summaries_under(path: &Path, max_files: usize) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        // searched below
    } else if path.symlink_metadata().is_err() {
        return Err(crate::util::bad_input(format!(
            "{}: no such file or directory",
            path.display()
        )));
    } else {
        crate::input::open_regular(path).map_err(crate::util::bad_input)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(path.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            let ft = e.file_type().map_err(|e| format!("{}: {e}", p.display()))?;
            if ft.is_dir() && depth < MAX_SEARCH_DEPTH {
                stack.push((p, depth + 1));
            } else if ft.is_file() && e.file_name() == "summary.json" {
                out.push(p);
                if out.len() > max_files {
                    return Err(format!(
                        "{}: more than {max_files} summary.json files; name the session directories",
                        path.display()
                    ));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(n: usize) -> Vec<Planned> {
        (0..n)
            .map(|i| Planned {
                key: RunKey::new(
                    &format!("sc{}", i % 7),
                    "ublk-mem",
                    "debian",
                    i as u32 / 7 + 1,
                ),
                estimate_s: ((i * 37) % 50) as f64 + 1.0,
            })
            .collect()
    }

    #[test]
    fn shards_are_disjoint_and_their_union_is_the_whole() {
        for n_runs in [0, 1, 2, 5, 23, 100] {
            let all = runs(n_runs);
            for count in [1, 2, 3, 7, 64] {
                let mut seen: Vec<String> = Vec::new();
                let mut plans = std::collections::BTreeSet::new();
                for index in 1..=count {
                    let work: Vec<String> = all.iter().map(|r| r.key.id()).collect();
                    let (kept, info) = select(work, &all, Shard { index, count }, "t");
                    assert_eq!(info.runs, kept.len());
                    assert_eq!(info.planned_runs, n_runs);
                    plans.insert(info.plan);
                    seen.extend(kept);
                }
                assert_eq!(plans.len(), 1, "every shard names the same plan");
                let mut want: Vec<String> = all.iter().map(|r| r.key.id()).collect();
                seen.sort();
                want.sort();
                assert_eq!(seen, want, "{n_runs} runs in {count} shards");
            }
        }
    }

    #[test]
    fn the_split_ignores_the_order_runs_are_listed_in() {
        let all = runs(40);
        let mut rev = all.clone();
        rev.reverse();
        let a = assign(&all, 3);
        let b = assign(&rev, 3);
        for (i, r) in all.iter().enumerate() {
            let j = rev.iter().position(|x| x.key == r.key).unwrap();
            assert_eq!(a[i], b[j], "{}", r.key.id());
        }
        assert_eq!(plan_hash(&all, 3), plan_hash(&rev, 3));
        assert_ne!(plan_hash(&all, 3), plan_hash(&all, 4));
        let mut other = all.clone();
        other[0].estimate_s += 1.0;
        assert_ne!(plan_hash(&all, 3), plan_hash(&other, 3));
    }

    /// Greedy longest-first is within 4/3 of the best possible makespan; check it against
    /// the lower bound max(total / N, longest run).
    #[test]
    fn shards_are_balanced() {
        let all = runs(100);
        for count in [2, 3, 5] {
            let shard_of = assign(&all, count);
            let mut load = vec![0.0; count as usize];
            for (r, s) in all.iter().zip(&shard_of) {
                load[*s] += r.estimate_s;
            }
            let total: f64 = load.iter().sum();
            let longest = all.iter().map(|r| r.estimate_s).fold(0.0, f64::max);
            let bound = (total / count as f64).max(longest);
            let worst = load.iter().copied().fold(0.0, f64::max);
            assert!(worst <= bound * 4.0 / 3.0, "{load:?} vs bound {bound}");
        }
    }

    #[test]
    fn gaps_name_missing_and_doubled_shards() {
        let all = runs(10);
        let info = |index| select(vec![(); 10], &all, Shard { index, count: 3 }, "t").1;
        assert!(gaps(&[info(1), info(2), info(3)]).is_empty());
        let plan = info(1).plan;
        assert_eq!(
            gaps(&[info(3), info(1), info(1)]),
            vec![
                format!("shard 1/3 of plan {plan} is there 2 times"),
                format!("shard 2/3 of plan {plan} is missing"),
            ]
        );
        assert!(gaps(&[]).is_empty());
    }

    #[test]
    fn shard_arguments_are_checked() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/65", "1/0", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn missing_durations_scale_the_timeout_by_the_recorded_ratio() {
        let mut d = Durations::none();
        let k = |s: &str| (s.to_string(), "ublk-mem".to_string(), "debian".to_string());
        d.median_s.insert(k("a"), 30.0);
        d.median_s.insert(k("b"), 10.0);
        let key = |s: &str| RunKey::new(s, "ublk-mem", "debian", 1);
        let e = planned(&d, vec![(key("a"), 60), (key("b"), 40), (key("c"), 100)]);
        // ratios 0.5 and 0.25: the median (upper) is 0.5.
        let e: Vec<f64> = e.iter().map(|p| p.estimate_s).collect();
        assert_eq!(e, vec![30.0, 10.0, 50.0]);
        let none = planned(&Durations::none(), vec![(RunKey::new("x", "s", "k", 1), 7)]);
        assert_eq!(none[0].estimate_s, 7.0);
    }
}
