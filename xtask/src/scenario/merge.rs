//! `cargo xtask report merge`: several sessions' summary.json (the shards of a CI matrix, or
//! the sessions of several kernels) into one, with flakiness and the verdict recomputed over
//! all the runs, and optionally the evidence of the runs that did not pass copied alongside.
//!
//! Rules: the sessions must be of one commit and one tool; a run (scenario, server, kernel,
//! run number) may appear once only; the shards of each plan must all be there, else the
//! merged verdict is "could not test" (exit 125) and the summary names the missing shards.
//! Merging is associative: a merged summary can be merged again (its shard list goes along).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::report::{self, Head, Session};
use super::run::Outcome;
use super::session::sort_runs;
use super::shard::{self, summaries_under};
use crate::runs::Verdict;
use crate::util::Result;

/// Most summary.json files one merge reads.
const MAX_INPUTS: usize = 1024;
/// Largest summary.json read.
pub const MAX_SUMMARY_BYTES: u64 = 64 << 20;
/// Evidence copy bounds: total bytes, files, directory depth.
const MAX_EVIDENCE_BYTES: u64 = 2 << 30;
const MAX_EVIDENCE_FILES: usize = 100_000;
const MAX_EVIDENCE_DEPTH: usize = 8;

/// A summary.json and what it says.
pub struct Input {
    pub path: PathBuf,
    pub session: Session,
}

/// Every summary.json under the paths given (a file, a session directory, or a directory of
/// them, e.g. downloaded artifacts).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut inputs: Vec<Input> = Vec::new();
    let mut seen = BTreeSet::new();
    for p in paths {
        let files = summaries_under(p, MAX_INPUTS)?;
        if files.is_empty() {
            return Err(format!(
                "{}: no summary.json there (give session directories, or a directory holding them)",
                p.display()
            ));
        }
        for f in files {
            let canon = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone());
            if !seen.insert(canon) {
                return Err(format!("{} is given twice", f.display()));
            }
            let text = crate::input::read_limited(&f, MAX_SUMMARY_BYTES)?;
            let session: Session = serde_json::from_str(&text).map_err(|e| {
                format!(
                    "{}:{}:{}: not a vm-e2e/vm-selftests summary.json: {e}",
                    f.display(),
                    e.line(),
                    e.column()
                )
            })?;
            inputs.push(Input { path: f, session });
        }
    }
    if inputs.len() > MAX_INPUTS {
        return Err(format!("more than {MAX_INPUTS} summaries to merge"));
    }
    Ok(inputs)
}

/// One session of every input's runs.
pub fn merge(inputs: Vec<Input>) -> Result<Session> {
    assert!(!inputs.is_empty(), "load() refuses an empty merge");
    same(&inputs, "commit", |h| h.commit.clone())?;
    same(&inputs, "tool", |h| h.tool.clone())?;
    let mut owner: BTreeMap<(String, String, String, u32), PathBuf> = BTreeMap::new();
    for i in &inputs {
        for o in &i.session.runs {
            let key = (
                o.scenario.clone(),
                o.server.clone(),
                o.kernel.clone(),
                o.run,
            );
            if let Some(other) = owner.insert(key, i.path.clone()) {
                return Err(format!(
                    "run {} #{} is in both {} and {}: merge each session once (two sessions of one plan need distinct shards)",
                    o.label(),
                    o.run,
                    other.display(),
                    i.path.display()
                ));
            }
        }
    }
    let head = merged_head(&inputs);
    let reproduce = merged_reproduce(&inputs);
    let wall_s = inputs.iter().map(|i| i.session.wall_s).fold(0.0, f64::max);
    let mut runs: Vec<Outcome> = inputs.into_iter().flat_map(|i| i.session.runs).collect();
    sort_runs(&mut runs);
    Ok(Session {
        head,
        wall_s,
        kernels: report::kernels(&runs),
        flaky: report::tally(&runs),
        reproduce,
        runs,
    })
}

/// Fails unless every input agrees on `what`.
fn same(inputs: &[Input], what: &str, get: impl Fn(&Head) -> String) -> Result<()> {
    let first = get(&inputs[0].session.head);
    for i in &inputs[1..] {
        let v = get(&i.session.head);
        if v != first {
            return Err(format!(
                "{} has {what} {v} but {} has {first}: merge the sessions of one {what} only",
                i.path.display(),
                inputs[0].path.display()
            ));
        }
    }
    Ok(())
}

fn merged_head(inputs: &[Input]) -> Head {
    let heads: Vec<&Head> = inputs.iter().map(|i| &i.session.head).collect();
    let one_or = |v: Vec<String>, many: &str| -> String {
        let set: BTreeSet<String> = v.into_iter().collect();
        match set.len() {
            1 => set.into_iter().next().expect("one"),
            _ => many.to_string(),
        }
    };
    let seeds: BTreeSet<Option<u64>> = heads.iter().map(|h| h.seed).collect();
    let accels: BTreeSet<&str> = heads.iter().map(|h| h.accelerator.as_str()).collect();
    let mut shards: Vec<shard::ShardInfo> = heads
        .iter()
        .flat_map(|h| h.shards.iter().cloned())
        .collect();
    shards.sort_by(|a, b| (&a.plan, a.index).cmp(&(&b.plan, b.index)));
    Head {
        tool: heads[0].tool.clone(),
        started_at: heads
            .iter()
            .map(|h| h.started_at.clone())
            .min()
            .expect("inputs"),
        seed: if seeds.len() == 1 {
            heads[0].seed
        } else {
            None
        },
        commit: heads[0].commit.clone(),
        image_hash: one_or(
            heads.iter().map(|h| h.image_hash.clone()).collect(),
            "several (see each run)",
        ),
        accelerator: accels.into_iter().collect::<Vec<_>>().join(","),
        jobs: heads.iter().map(|h| h.jobs).sum(),
        repeat: heads.iter().map(|h| h.repeat).max().expect("inputs"),
        timeout_scale: heads.iter().map(|h| h.timeout_scale).fold(0.0, f64::max),
        shards,
        inputs: merged_inputs(&heads),
    }
}

/// Every distinct image-part record of the inputs (shards of one plan share theirs).
fn merged_inputs(heads: &[&Head]) -> Vec<crate::image::fetch::Inputs> {
    let mut out: Vec<crate::image::fetch::Inputs> = Vec::new();
    for i in heads.iter().flat_map(|h| h.inputs.iter()) {
        if !out.contains(i) && out.len() < 64 {
            out.push(i.clone());
        }
    }
    out
}

/// The inputs' reproduce lines for what did not pass (each input's own line names its
/// failures with its seed), or the first line when everything passed.
fn merged_reproduce(inputs: &[Input]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for i in inputs {
        let failed = i.session.runs.iter().any(|o| o.verdict.wants_rerun());
        if failed && !lines.contains(&i.session.reproduce) {
            lines.push(i.session.reproduce.clone());
        }
    }
    if lines.is_empty() {
        return inputs[0].session.reproduce.clone();
    }
    lines.join("\n")
}

/// Copies the run directory of every run that did not pass (fail, timeout, infra-error,
/// interrupted) into `out/runs/`, and points the session at the copies. A directory is found
/// where the summary says it is, else by its name under `roots` (downloaded artifacts keep
/// the name, not the path). Returns the runs whose evidence was not found.
pub fn copy_evidence(s: &mut Session, roots: &[PathBuf], out: &Path) -> Result<Vec<String>> {
    let mut budget = Budget {
        bytes: MAX_EVIDENCE_BYTES,
        files: MAX_EVIDENCE_FILES,
    };
    let mut missing = Vec::new();
    for o in s.runs.iter_mut() {
        if matches!(o.verdict, Verdict::Pass | Verdict::Skip) || o.run_dir.as_os_str().is_empty() {
            continue;
        }
        let Some(name) = o.run_dir.file_name().map(|n| n.to_os_string()) else {
            continue;
        };
        let dest = out.join("runs").join(&name);
        let found = if o.run_dir.is_dir() {
            Some(o.run_dir.clone())
        } else {
            roots.iter().find_map(|r| find_dir(r, &name, 0))
        };
        let Some(src) = found else {
            missing.push(format!(
                "{} #{}: {} not found",
                o.label(),
                o.run,
                o.run_dir.display()
            ));
            continue;
        };
        if std::fs::canonicalize(&src).ok() != std::fs::canonicalize(&dest).ok() {
            copy_tree(&src, &dest, 0, &mut budget)?;
        }
        if let Some(ff) = &o.freeze_frame {
            if let Ok(rest) = ff.strip_prefix(&o.run_dir) {
                o.freeze_frame = Some(dest.join(rest));
            }
        }
        o.run_dir = dest;
    }
    Ok(missing)
}

struct Budget {
    bytes: u64,
    files: usize,
}

fn find_dir(root: &Path, name: &std::ffi::OsStr, depth: usize) -> Option<PathBuf> {
    if depth > shard::MAX_SEARCH_DEPTH {
        return None;
    }
    let entries = std::fs::read_dir(root).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == name {
                return Some(e.path());
            }
            subdirs.push(e.path());
        }
    }
    subdirs.sort();
    subdirs
        .into_iter()
        .find_map(|d| find_dir(&d, name, depth + 1))
}

fn copy_tree(src: &Path, dest: &Path, depth: usize, budget: &mut Budget) -> Result<()> {
    if depth > MAX_EVIDENCE_DEPTH {
        return Err(format!(
            "{}: evidence nested deeper than {MAX_EVIDENCE_DEPTH} directories; not a run directory",
            src.display()
        ));
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    let entries = std::fs::read_dir(src).map_err(|e| format!("read {}: {e}", src.display()))?;
    for e in entries.flatten() {
        let (from, to) = (e.path(), dest.join(e.file_name()));
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            copy_tree(&from, &to, depth + 1, budget)?;
        } else if ft.is_file() {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if len > budget.bytes || budget.files == 0 {
                return Err(format!(
                    "the evidence to copy exceeds {} GiB or {MAX_EVIDENCE_FILES} files (at {}): copy fewer runs",
                    MAX_EVIDENCE_BYTES >> 30,
                    from.display()
                ));
            }
            std::fs::copy(&from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
            budget.bytes -= len;
            budget.files -= 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::shard::{select, Planned, Shard};

    fn outcome(name: &str, run: u32, verdict: Verdict) -> Outcome {
        let mut o = Outcome::named(name, run, 7, Path::new(""), "h");
        o.server = "ublk-mem".into();
        o.kernel = "debian".into();
        o.verdict = verdict;
        o.duration_s = run as f64;
        o
    }

    fn session(runs: Vec<Outcome>, shards: Vec<shard::ShardInfo>) -> Session {
        let head = Head {
            repeat: 3,
            shards,
            ..Head::example()
        };
        Session {
            head,
            wall_s: 10.0,
            kernels: report::kernels(&runs),
            flaky: report::tally(&runs),
            reproduce: "cargo xtask vm-e2e b --seed 7".into(),
            runs,
        }
    }

    /// The full set: a x 3 pass, b x 3 with the second failing, c skipped.
    fn full() -> Vec<Outcome> {
        let mut v = Vec::new();
        for r in 1..=3 {
            v.push(outcome("a", r, Verdict::Pass));
            v.push(outcome(
                "b",
                r,
                if r == 2 { Verdict::Fail } else { Verdict::Pass },
            ));
            v.push(outcome("c", r, Verdict::Skip));
        }
        v
    }

    fn sharded(count: u32) -> Vec<Input> {
        let all = full();
        let planned: Vec<Planned> = all
            .iter()
            .map(|o| Planned {
                key: format!("{}|{}", o.scenario, o.run),
                estimate_s: o.duration_s,
            })
            .collect();
        (1..=count)
            .map(|index| {
                let (runs, info) = select(all.clone(), &planned, Shard { index, count }, "t");
                Input {
                    path: format!("shard{index}/summary.json").into(),
                    session: session(runs, vec![info]),
                }
            })
            .collect()
    }

    #[test]
    fn shards_merge_into_the_full_sessions_verdicts_and_counts() {
        let whole = session(full(), Vec::new());
        let merged = merge(sharded(3)).unwrap();
        let key = |s: &Session| -> Vec<(String, u32, Verdict)> {
            s.runs
                .iter()
                .map(|o| (o.scenario.clone(), o.run, o.verdict))
                .collect()
        };
        let mut want = whole.runs.clone();
        sort_runs(&mut want);
        assert_eq!(
            key(&merged),
            key(&Session {
                runs: want,
                ..whole.clone()
            })
        );
        assert_eq!(merged.flaky, whole.flaky);
        assert_eq!(merged.flaky["b"].describe(), "1 of 3 runs failed (FLAKY)");
        assert_eq!(super::super::session::exit_code(&merged.runs), 1);
        assert!(shard::gaps(&merged.head.shards).is_empty());
        assert_eq!(merged.head.shards.len(), 3);
        // Merging is associative: (1 + 2) + 3 is 1 + 2 + 3.
        let mut parts = sharded(3);
        let third = parts.pop().unwrap();
        let first_two = Input {
            path: "m/summary.json".into(),
            session: merge(parts).unwrap(),
        };
        let again = merge(vec![first_two, third]).unwrap();
        assert_eq!(key(&again), key(&merged));
        assert_eq!(again.head.shards, merged.head.shards);
    }

    #[test]
    fn a_missing_shard_is_named_and_a_run_twice_is_refused() {
        let mut parts = sharded(3);
        parts.remove(1);
        let m = merge(parts).unwrap();
        let gaps = shard::gaps(&m.head.shards);
        assert_eq!(gaps.len(), 1);
        assert!(gaps[0].starts_with("shard 2/3 of plan"), "{gaps:?}");
        let md = super::super::markdown::render(&m, None);
        assert!(
            md.contains("Missing shards") && md.contains("shard 2/3"),
            "{md}"
        );
        let mut parts = sharded(2);
        let dup = Input {
            path: "again/summary.json".into(),
            session: parts[0].session.clone(),
        };
        parts.push(dup);
        let e = merge(parts).unwrap_err();
        assert!(
            e.contains("is in both shard1/summary.json and again/summary.json"),
            "{e}"
        );
    }

    #[test]
    fn sessions_of_different_commits_are_refused() {
        let mut parts = sharded(2);
        parts[1].session.head.commit = "def".into();
        let e = merge(parts).unwrap_err();
        assert!(
            e.contains("has commit def but shard1/summary.json has abc"),
            "{e}"
        );
    }

    #[test]
    fn evidence_is_found_by_name_and_copied() {
        let tmp = std::env::temp_dir().join(format!("xtask-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let shard_dir = tmp.join("artifacts/e2e-1/runs/20261122-b-r2");
        std::fs::create_dir_all(shard_dir.join("freeze")).unwrap();
        std::fs::write(shard_dir.join("serial.log"), "boot\n").unwrap();
        std::fs::write(shard_dir.join("freeze/frame.txt"), "tags\n").unwrap();
        let mut s = session(full(), Vec::new());
        for o in s.runs.iter_mut() {
            o.run_dir = format!("/elsewhere/vm-runs/20261122-{}-r{}", o.scenario, o.run).into();
        }
        let b2 = s
            .runs
            .iter_mut()
            .find(|o| o.verdict == Verdict::Fail)
            .unwrap();
        b2.freeze_frame = Some(b2.run_dir.join("freeze/frame.txt"));
        let out = tmp.join("out");
        let missing = copy_evidence(&mut s, &[tmp.join("artifacts")], &out).unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        let copied = out.join("runs/20261122-b-r2");
        assert_eq!(
            std::fs::read_to_string(copied.join("serial.log")).unwrap(),
            "boot\n"
        );
        let b2 = s.runs.iter().find(|o| o.verdict == Verdict::Fail).unwrap();
        assert_eq!(b2.run_dir, copied);
        assert_eq!(
            b2.freeze_frame.as_deref(),
            Some(copied.join("freeze/frame.txt").as_path())
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
