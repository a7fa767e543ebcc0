//! summary.md: a session (one run of `vm-e2e`/`vm-selftests`, or shards merged by `report
//! merge`) as Markdown fit for `$GITHUB_STEP_SUMMARY`: the verdict line, one row per scenario,
//! the runs that did not pass with their evidence directories, flaky scenarios, missing shards
//! and the reproduce line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::Session;
use super::run::Outcome;
use super::session::exit_code;
use super::shard;
use crate::runs::Verdict;

/// Longest reason quoted in a table cell.
const MAX_REASON_CHARS: usize = 300;
/// Most failing runs listed (the rest are counted).
const MAX_LISTED_RUNS: usize = 50;

/// The whole summary. `evidence_url`: where the evidence directories can be downloaded (e.g.
/// the workflow run's artifacts page); each directory name links there.
pub fn render(s: &Session, evidence_url: Option<&str>) -> String {
    let mut out = headline(s);
    out += &context(s);
    out += &scenario_table(&s.runs);
    out += &failing_runs(&s.runs, evidence_url);
    let flaky: Vec<String> = s
        .flaky
        .iter()
        .filter(|(_, t)| t.failed > 0 && t.failed < t.runs)
        .map(|(name, t)| format!("- `{}`: {}\n", cell(name), t.describe()))
        .collect();
    if !flaky.is_empty() {
        out += "\n#### Flaky\n\n";
        out += &flaky.concat();
    }
    out += &skipped(&s.runs);
    let gaps = shard::gaps(&s.head.shards);
    if !gaps.is_empty() {
        out += "\n#### Missing shards (their runs were not tested)\n\n";
        for g in gaps {
            let _ = writeln!(out, "- {g}");
        }
    }
    if exit_code(&s.runs) != 0 {
        let _ = write!(out, "\nReproduce:\n\n```\n{}\n```\n", s.reproduce);
    }
    out
}

/// The verdict of the whole: what a CI job's status would say.
pub fn verdict_word(s: &Session) -> &'static str {
    match exit_code(&s.runs) {
        0 if shard::gaps(&s.head.shards).is_empty() => "PASS",
        0 | 125 => "COULD NOT TEST",
        _ => "FAIL",
    }
}

fn headline(s: &Session) -> String {
    let count = |v: Verdict| s.runs.iter().filter(|o| o.verdict == v).count();
    let mut parts = vec![format!("{}/{} passed", count(Verdict::Pass), s.runs.len())];
    for v in [
        Verdict::Fail,
        Verdict::Timeout,
        Verdict::InfraError,
        Verdict::Interrupted,
        Verdict::Skip,
    ] {
        if count(v) > 0 {
            parts.push(format!("{} {}", count(v), v.name()));
        }
    }
    format!(
        "### {} {}: {}\n\n",
        s.head.tool,
        verdict_word(s),
        parts.join(", ")
    )
}

fn context(s: &Session) -> String {
    let h = &s.head;
    let mut bits = vec![format!("commit `{}`", cell(&h.commit))];
    if let Some(seed) = h.seed {
        bits.push(format!("seed {seed}"));
    }
    bits.push(format!("accel {}", h.accelerator));
    if h.timeout_scale != 1.0 {
        bits.push(format!("limits x{}", h.timeout_scale));
    }
    if !h.shards.is_empty() {
        let names: Vec<String> = h
            .shards
            .iter()
            .map(|i| format!("{}/{}", i.index, i.count))
            .collect();
        bits.push(format!("shards {}", names.join(", ")));
    }
    let machine_s: f64 = s.runs.iter().map(|o| o.duration_s).sum();
    bits.push(format!(
        "wall {:.0} s, {:.0} s of runs",
        s.wall_s, machine_s
    ));
    let mut out = bits.join(" · ") + "\n\n";
    for (name, k) in &s.kernels {
        let release = if k.release.is_empty() {
            "not booted"
        } else {
            &k.release
        };
        let _ = writeln!(out, "- kernel `{}`: {}", cell(name), cell(release));
    }
    for inputs in &h.inputs {
        let warn = if inputs.newer().is_empty() {
            ""
        } else {
            "**warning**: "
        };
        let _ = writeln!(out, "- {warn}`{}`", cell(&inputs.line()));
    }
    out + "\n"
}

/// One row per scenario label: its runs by verdict.
fn scenario_table(runs: &[Outcome]) -> String {
    let mut rows: BTreeMap<String, [usize; 6]> = BTreeMap::new();
    for o in runs {
        let col = match o.verdict {
            Verdict::Pass => 0,
            Verdict::Fail => 1,
            Verdict::Timeout => 2,
            Verdict::InfraError => 3,
            Verdict::Interrupted => 4,
            Verdict::Skip => 5,
        };
        rows.entry(o.label()).or_default()[col] += 1;
    }
    let mut out = String::from(
        "| scenario | pass | fail | timeout | infra-error | interrupted | skip |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (label, c) in rows {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            cell(&label),
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5]
        );
    }
    out
}

/// The runs that failed, hung or could not be tested, each with its evidence directory.
fn failing_runs(runs: &[Outcome], evidence_url: Option<&str>) -> String {
    let bad: Vec<&Outcome> = runs
        .iter()
        .filter(|o| o.verdict.wants_rerun() || o.verdict == Verdict::Interrupted)
        .collect();
    if bad.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n#### Runs that did not pass\n\n| run | verdict | step | reason | evidence |\n|---|---|---|---|---|\n",
    );
    for o in bad.iter().take(MAX_LISTED_RUNS) {
        let dir = o
            .run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let evidence = match (evidence_url, dir.is_empty()) {
            (_, true) => "-".to_string(),
            (Some(url), false) => format!("[`{}`]({url})", cell(&dir)),
            (None, false) => format!("`{}`", cell(&dir)),
        };
        let _ = writeln!(
            out,
            "| `{} #{}` | {} | {} | {} | {} |",
            cell(&o.label()),
            o.run,
            o.verdict.name(),
            cell(o.failed_step.as_deref().unwrap_or("-")),
            cell(&shorten(o.reason.as_deref().unwrap_or("-"))),
            evidence
        );
    }
    if bad.len() > MAX_LISTED_RUNS {
        let _ = writeln!(
            out,
            "\n... and {} more (summary.json lists every run)",
            bad.len() - MAX_LISTED_RUNS
        );
    }
    out
}

/// Each skipped scenario once, with its reason (a skip is never a pass: say why).
fn skipped(runs: &[Outcome]) -> String {
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    for o in runs.iter().filter(|o| o.verdict == Verdict::Skip) {
        let why = o.reason.as_deref().unwrap_or("no reason recorded");
        reasons.entry(o.label()).or_insert_with(|| shorten(why));
    }
    if reasons.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n#### Skipped\n\n");
    for (label, why) in reasons {
        let _ = writeln!(out, "- `{}`: {}", cell(&label), cell(&why));
    }
    out
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_REASON_CHARS {
        return s.to_string();
    }
    let cut: String = s.chars().take(MAX_REASON_CHARS).collect();
    format!("{cut}...")
}

/// Text safe inside a table cell (and inside backticks): no pipes, newlines or backticks.
fn cell(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '|' => '/',
            '\n' | '\r' | '\t' => ' ',
            '`' => '\'',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::report::{kernels, tally, Head};
    use std::path::Path;

    fn run(name: &str, r: u32, v: Verdict, why: Option<&str>) -> Outcome {
        let dir = format!("/x/target/vm-runs/20261122-000000-{name}-r{r}");
        let mut o = Outcome::named(name, r, 7, Path::new(&dir), "h");
        o.server = "ublk-mem".into();
        o.kernel = "debian-7.2".into();
        o.kernel_release = "7.2.13".into();
        o.verdict = v;
        o.reason = why.map(String::from);
        o.failed_step = why.map(|_| "steps[3] io".into());
        o.duration_s = 10.0;
        o
    }

    pub fn session(runs: Vec<Outcome>) -> Session {
        Session {
            head: Head::example(),
            wall_s: 20.0,
            kernels: kernels(&runs),
            flaky: tally(&runs),
            reproduce: "cargo xtask vm-e2e a --seed 7".into(),
            runs,
        }
    }

    #[test]
    fn image_inputs_newer_than_the_lock_are_a_warning_line() {
        let mut s = session(vec![run("a", 1, Verdict::Pass, None)]);
        let used = |p: &str, v: &str, instead: Option<&str>| crate::image::fetch::Used {
            package: p.into(),
            version: v.into(),
            sha256: "0".repeat(64),
            from: "archive".into(),
            instead_of: instead.map(String::from),
        };
        s.head.inputs = vec![crate::image::fetch::Inputs {
            part: "tools layer".into(),
            lock: "vm-images/tools.lock".into(),
            upgrade: "cargo xtask tools-lock --upgrade".into(),
            debs: vec![
                used("fio", "3.39-1", None),
                used(
                    "libc6",
                    "2.41-12+deb13u5`|<b>",
                    Some("libc6=2.41-12+deb13u4"),
                ),
            ],
            moving: false,
        }];
        let md = render(&s, None);
        assert!(
            md.contains("- **warning**: `tools layer: 1 of 2 packages newer than vm-images/tools.lock (libc6 2.41-12+deb13u4 → 2.41-12+deb13u5'/<b>); run cargo xtask tools-lock --upgrade`"),
            "{md}"
        );
        s.head.inputs[0].debs.pop();
        let md = render(&s, None);
        assert!(
            md.contains(
                "- `tools layer: 1 packages as locked in vm-images/tools.lock (1 from archive)`"
            ),
            "{md}"
        );
    }

    #[test]
    fn a_failing_session_names_its_runs_and_evidence() {
        let s = session(vec![
            run("a", 1, Verdict::Pass, None),
            run(
                "a",
                2,
                Verdict::Fail,
                Some("MISMATCH | block 3\nexpected #2"),
            ),
            run("b", 1, Verdict::Skip, Some("lacks recovery")),
        ]);
        let md = render(&s, Some("https://example/run/1"));
        assert!(
            md.starts_with("### vm-e2e FAIL: 1/3 passed, 1 fail, 1 skip\n"),
            "{md}"
        );
        assert!(
            md.contains("| `a on debian-7.2` | 1 | 1 | 0 | 0 | 0 | 0 |"),
            "{md}"
        );
        assert!(
            md.contains("| `a on debian-7.2 #2` | fail | steps[3] io | MISMATCH / block 3 expected #2 | [`20261122-000000-a-r2`](https://example/run/1) |"),
            "{md}"
        );
        assert!(
            md.contains("- `a on debian-7.2`: 1 of 2 runs failed (FLAKY)"),
            "{md}"
        );
        assert!(md.contains("cargo xtask vm-e2e a --seed 7"), "{md}");
        assert!(md.contains("- kernel `debian-7.2`: 7.2.13"), "{md}");
        assert!(
            md.contains("#### Skipped\n\n- `b on debian-7.2`: lacks recovery\n"),
            "{md}"
        );
    }

    #[test]
    fn a_passing_session_has_no_failure_sections() {
        let s = session(vec![run("a", 1, Verdict::Pass, None)]);
        let md = render(&s, None);
        assert!(md.starts_with("### vm-e2e PASS: 1/1 passed\n"), "{md}");
        assert!(
            !md.contains("did not pass") && !md.contains("Reproduce"),
            "{md}"
        );
    }
}
