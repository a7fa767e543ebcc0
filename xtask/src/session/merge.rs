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

use super::evidence::Origin;
use super::outcome::Outcome;
use super::report::{self, sort_runs, Head, Session, MAX_SUMMARY_BYTES};
use super::shard::{self, summaries_under};
use crate::util::{bad_input, Result};

/// Most summary.json files one merge reads.
const MAX_INPUTS: usize = 1024;
/// Bounds a summary.json must keep (see `validate`).
const MAX_RUNS_TOTAL: usize = 200_000;
const MAX_JOBS: u64 = 4096;
const MAX_REPEAT: u64 = 100_000;
const MAX_SHARD_ENTRIES: u64 = 1024;
const MAX_NAME_BYTES: usize = 512;
const MAX_REPRODUCE_BYTES: usize = 64 << 10;
/// A reason read from a summary is cut to this (head and tail kept).
const MAX_REASON_BYTES: usize = 16 << 10;

/// A summary.json and what it says, and where it was found (evidence is looked for there).
pub struct Input {
    pub path: PathBuf,
    pub session: Session,
    pub origin: Origin,
}

/// Every summary.json under the paths given (a file, a session directory, or a directory of
/// them, e.g. downloaded artifacts), each checked by `validate`. Errors are bad input.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let mut inputs: Vec<Input> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut runs = 0usize;
    for p in paths {
        let root =
            std::fs::canonicalize(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
        let files = summaries_under(&root, MAX_INPUTS).map_err(bad_input)?;
        if files.is_empty() {
            return Err(bad_input(format!(
                "{}: no summary.json there (give session directories, or a directory holding them)",
                p.display()
            )));
        }
        let tree = if root.is_dir() {
            root.clone()
        } else {
            root.parent().unwrap_or(Path::new("/")).to_path_buf()
        };
        for f in files {
            if !seen.insert(f.clone()) {
                return Err(bad_input(format!("{} is given twice", f.display())));
            }
            let session = read_summary(&f)?;
            runs += session.runs.len();
            if runs > MAX_RUNS_TOTAL || inputs.len() >= MAX_INPUTS {
                return Err(bad_input(format!(
                    "more than {MAX_INPUTS} summaries or {MAX_RUNS_TOTAL} runs to merge"
                )));
            }
            let summary_dir = f.parent().unwrap_or(&tree).to_path_buf();
            let origin = Origin {
                root: tree.clone(),
                summary_dir,
            };
            inputs.push(Input {
                path: f,
                session,
                origin,
            });
        }
    }
    Ok(inputs)
}

/// One summary.json, parsed, checked and with its free text bounded.
fn read_summary(f: &Path) -> Result<Session> {
    let text = crate::input::read_limited(f, MAX_SUMMARY_BYTES)?;
    let mut session: Session = serde_json::from_str(&text).map_err(|e| {
        bad_input(format!(
            "{}:{}:{}: not a vm-e2e/vm-selftests summary.json: {e}",
            f.display(),
            e.line(),
            e.column()
        ))
    })?;
    validate(&session).map_err(|e| bad_input(format!("{}: {e}", f.display())))?;
    for o in &mut session.runs {
        if let Some(r) = &mut o.reason {
            *r = crate::text::bound(r, MAX_REASON_BYTES).into_owned();
        }
    }
    Ok(session)
}

/// What a summary.json must be before anything of it is used: a command's name, bounded counts
/// (shards, jobs, repeats, runs, notes), names without control characters, finite times.
pub fn validate(s: &Session) -> std::result::Result<(), String> {
    let h = &s.head;
    if !super::report::is_tool_name(&h.tool) {
        return Err(format!(
            "tool {} is not a command name (vm-, then at most 30 lowercase letters, digits or dashes)",
            crate::text::term(&crate::text::bound(&h.tool, 80))
        ));
    }
    word("commit", &h.commit, 128)?;
    word("accelerator", &h.accelerator, 64)?;
    word("started_at", &h.started_at, 64)?;
    word("image_hash", &h.image_hash, 256)?;
    word(
        "reproduce",
        &s.reproduce.replace('\n', " "),
        MAX_REPRODUCE_BYTES,
    )?;
    bounded("jobs", h.jobs as u64, MAX_JOBS)?;
    bounded("repeat", h.repeat as u64, MAX_REPEAT)?;
    bounded("runs", s.runs.len() as u64, MAX_RUNS_TOTAL as u64)?;
    bounded("shards", h.shards.len() as u64, MAX_SHARD_ENTRIES)?;
    bounded("inputs", h.inputs.len() as u64, 64)?;
    bounded("notes", s.notes.len() as u64, 1000)?;
    h.shards.iter().try_for_each(valid_shard)?;
    let finite = [s.wall_s, h.timeout_scale]
        .into_iter()
        .chain(s.runs.iter().map(|o| o.duration_s))
        .all(|x| x.is_finite() && (0.0..=1e9).contains(&x));
    if !finite {
        return Err("a duration or scale is not a finite, non-negative number".into());
    }
    h.overrides.check()?;
    s.runs.iter().try_for_each(valid_run)
}

/// A text field of a summary: bounded, no control characters.
fn word(what: &str, v: &str, max: usize) -> std::result::Result<(), String> {
    if v.len() > max || v.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{what} {} is longer than {max} bytes or holds control characters",
            crate::text::term(&crate::text::bound(v, 80))
        ));
    }
    Ok(())
}

/// A count of a summary: at most `max`.
fn bounded(what: &str, v: u64, max: u64) -> std::result::Result<(), String> {
    match v <= max {
        true => Ok(()),
        false => Err(format!("{what} {v} is over {max}")),
    }
}

fn valid_shard(i: &super::report::ShardInfo) -> std::result::Result<(), String> {
    if i.index == 0 || i.index > i.count || i.count > shard::MAX_SHARDS {
        return Err(format!(
            "shard {}/{} is not K/N with 1 <= K <= N <= {}",
            i.index,
            i.count,
            shard::MAX_SHARDS
        ));
    }
    if i.plan.is_empty() || i.plan.len() > 64 || !i.plan.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "shard plan {} is not a hex digest",
            crate::text::term(&crate::text::bound(&i.plan, 80))
        ));
    }
    Ok(())
}

fn valid_run(o: &Outcome) -> std::result::Result<(), String> {
    word("reproduce", &o.reproduce, MAX_REPRODUCE_BYTES)?;
    bounded(
        "splats",
        o.splats.len() as u64,
        super::outcome::MAX_SPLATS as u64,
    )?;
    bounded(
        "known splats",
        o.known_splats.len() as u64,
        super::outcome::MAX_SPLATS as u64,
    )?;
    for splat in o.splats.iter().chain(&o.known_splats) {
        word("splat", splat, super::outcome::MAX_SPLAT_BYTES)?;
    }
    bounded(
        "protocol violations",
        o.protocol.len() as u64,
        super::outcome::MAX_SPLATS as u64,
    )?;
    for v in &o.protocol {
        word("protocol violation", v, super::outcome::MAX_SPLAT_BYTES)?;
    }
    if let Some(t) = &o.kernel_trace {
        word("kernel trace", t, super::outcome::MAX_TRACE_BYTES)?;
    }
    if let Some(t) = &o.timeline {
        word("timeline", t, MAX_NAME_BYTES)?;
    }
    word("scenario", &o.scenario, MAX_NAME_BYTES)?;
    word("server", &o.server, MAX_NAME_BYTES)?;
    word("kernel", &o.kernel, MAX_NAME_BYTES)?;
    bounded("run number", o.run as u64, MAX_REPEAT)
}

/// One session of every input's runs.
pub fn merge(inputs: Vec<Input>) -> Result<Session> {
    assert!(!inputs.is_empty(), "load() refuses an empty merge");
    same(&inputs, "commit", |h| h.commit.clone())?;
    same(&inputs, "tool", |h| h.tool.clone())?;
    same(&inputs, "device override", |h| h.overrides.describe())?;
    let mut owner: BTreeMap<RunKey, (PathBuf, String)> = BTreeMap::new();
    for i in &inputs {
        for o in &i.session.runs {
            let record = fingerprint(o);
            if let Some((other, theirs)) = owner.get(&key_of(o)) {
                if *theirs == record {
                    continue; // the same run reported twice (a shard and a merge of it)
                }
                return Err(bad_input(format!(
                    "run {} #{} is in both {} and {}: merge each session once (two sessions of one plan need distinct shards)",
                    crate::text::term(&o.label()),
                    o.run,
                    other.display(),
                    i.path.display()
                )));
            }
            owner.insert(key_of(o), (i.path.clone(), record));
        }
    }
    let head = merged_head(&inputs);
    let reproduce = merged_reproduce(&inputs);
    let wall_s = inputs.iter().map(|i| i.session.wall_s).fold(0.0, f64::max);
    let mut seen = BTreeSet::new();
    let mut runs: Vec<Outcome> = inputs
        .into_iter()
        .flat_map(|i| i.session.runs)
        .filter(|o| seen.insert(key_of(o)))
        .collect();
    sort_runs(&mut runs);
    Ok(Session {
        head,
        wall_s,
        kernels: report::kernels(&runs),
        flaky: report::tally(&runs),
        reproduce,
        runs,
        notes: Vec::new(),
    })
}

/// A run's identity in a merge: scenario, server, kernel, run number.
pub type RunKey = (String, String, String, u32);

pub fn key_of(o: &Outcome) -> RunKey {
    (
        o.scenario.clone(),
        o.server.clone(),
        o.kernel.clone(),
        o.run,
    )
}

/// What a run recorded, but where its evidence lies (a merge moves that).
fn fingerprint(o: &Outcome) -> String {
    let mut o = o.clone();
    o.run_dir = PathBuf::new();
    o.freeze_frame = None;
    serde_json::to_string(&o).expect("an outcome serialises")
}

/// Fails unless every input agrees on `what`.
fn same(inputs: &[Input], what: &str, get: impl Fn(&Head) -> String) -> Result<()> {
    let first = get(&inputs[0].session.head);
    for i in &inputs[1..] {
        let v = get(&i.session.head);
        if v != first {
            return Err(bad_input(format!(
                "{} has {what} {} but {} has {}: merge the sessions of one {what} only",
                i.path.display(),
                crate::text::term(&v),
                inputs[0].path.display(),
                crate::text::term(&first)
            )));
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
    shards.dedup(); // one shard in two inputs (a shard and a merge of it) counts once
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
        jobs: heads.iter().fold(0usize, |n, h| n.saturating_add(h.jobs)),
        repeat: heads.iter().map(|h| h.repeat).max().expect("inputs"),
        timeout_scale: heads.iter().map(|h| h.timeout_scale).fold(0.0, f64::max),
        shards,
        inputs: merged_inputs(&heads),
        overrides: heads[0].overrides,
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

/// The origin of every run (where its summary.json was found), by run key.
pub fn origins(inputs: &[Input]) -> BTreeMap<RunKey, Origin> {
    let mut m = BTreeMap::new();
    for i in inputs {
        for o in &i.session.runs {
            m.entry(key_of(o)).or_insert_with(|| i.origin.clone());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Verdict;
    use crate::session::shard::{select, Planned, Shard};

    fn origin() -> Origin {
        Origin {
            root: "/nowhere".into(),
            summary_dir: "/nowhere".into(),
        }
    }

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
            notes: Vec::new(),
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
                key: crate::session::shard::RunKey::new(&o.scenario, "", "", o.run),
                estimate_s: o.duration_s,
            })
            .collect();
        (1..=count)
            .map(|index| {
                let (runs, info) = select(all.clone(), &planned, Shard { index, count }, "t");
                Input {
                    path: format!("shard{index}/summary.json").into(),
                    session: session(runs, vec![info]),
                    origin: origin(),
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
        assert_eq!(super::super::report::exit_code(&merged.runs), 1);
        assert!(shard::gaps(&merged.head.shards).is_empty());
        assert_eq!(merged.head.shards.len(), 3);
        // Merging is associative: (1 + 2) + 3 is 1 + 2 + 3.
        let mut parts = sharded(3);
        let third = parts.pop().unwrap();
        let first_two = Input {
            path: "m/summary.json".into(),
            session: merge(parts).unwrap(),
            origin: origin(),
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
        // The same records twice (a shard and an earlier merge of it: a re-run merge job
        // downloads both) are one run each; the verdict and the shards are unchanged.
        let mut parts = sharded(2);
        let earlier = merge(sharded(2)).unwrap();
        parts.push(Input {
            path: "merged/summary.json".into(),
            session: earlier,
            origin: origin(),
        });
        let again = merge(parts).unwrap();
        assert_eq!(again.runs.len(), 9);
        assert!(
            shard::gaps(&again.head.shards).is_empty(),
            "{:?}",
            again.head.shards
        );
        // Another session of the same run (it took another time) is refused.
        let mut parts = sharded(2);
        let mut other = parts[0].session.clone();
        other.runs[0].duration_s += 1.0;
        parts.push(Input {
            path: "again/summary.json".into(),
            session: other,
            origin: origin(),
        });
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

    /// A merged artifact keeps each run's evidence in `runs/<name>` beside its summary: found
    /// there (not by searching every input for the name), copied under the run's id.
    #[test]
    fn evidence_is_found_beside_its_summary_and_copied_under_the_run_id() {
        let tmp = std::env::temp_dir().join(format!("xtask-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let shard_dir = tmp.join("artifacts/e2e-1");
        let run_dir = shard_dir.join("runs/20261122-b-r2");
        std::fs::create_dir_all(run_dir.join("freeze")).unwrap();
        std::fs::write(run_dir.join("serial.log"), "boot\n").unwrap();
        std::fs::write(run_dir.join("freeze/frame.txt"), "tags\n").unwrap();
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
        std::fs::create_dir_all(&out).unwrap();
        let g = Origin {
            root: std::fs::canonicalize(tmp.join("artifacts")).unwrap(),
            summary_dir: std::fs::canonicalize(&shard_dir).unwrap(),
        };
        super::super::evidence::copy(&mut s, |_| Some(g.clone()), &out).unwrap();
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        let b2 = s.runs.iter().find(|o| o.verdict == Verdict::Fail).unwrap();
        let copied = out.join("runs").join(b2.id());
        assert_eq!(
            std::fs::read_to_string(copied.join("serial.log")).unwrap(),
            "boot\n"
        );
        assert_eq!(b2.run_dir, copied);
        assert_eq!(
            b2.freeze_frame.as_deref(),
            Some(copied.join("freeze/frame.txt").as_path())
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
