//! summary.md: a session (one run of `vm-e2e`/`vm-selftests`, or shards merged by `report
//! merge`) as Markdown fit for `$GITHUB_STEP_SUMMARY`: the verdict line, one row per scenario,
//! the runs that did not pass with their evidence directories, flaky scenarios, missing shards,
//! the merge's evidence notes and the reproduce line.
//!
//! Every string that is not this file's own goes through `text::md_code` or `text::md_block`:
//! a summary.json written by another job cannot add HTML, links, headings or rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::outcome::Outcome;
use super::report::exit_code;
use super::report::Session;
use crate::runs::Verdict;
use crate::text::{bound, md_block, md_code};

/// Longest reason quoted in a table cell, in bytes.
const MAX_REASON_BYTES: usize = 600;
/// Most failing runs listed (the rest are counted).
const MAX_LISTED_RUNS: usize = 50;
/// Most evidence notes listed (the rest are counted).
const MAX_LISTED_NOTES: usize = 100;
/// Most rows of the scenario table, the flaky and the skipped lists (the rest are counted):
/// summary.md stays readable, and bounded whatever a merged summary holds.
const MAX_ROWS: usize = 500;
/// Longest reproduce text shown.
const MAX_REPRODUCE_BYTES: usize = 16 << 10;

/// The whole summary. `evidence_url`: where the evidence directories can be downloaded (e.g.
/// the workflow run's artifacts page); each directory name links there.
pub fn render(s: &Session, evidence_url: Option<&str>) -> String {
    let mut out = headline(s);
    out += &context(s);
    out += &scenario_table(&s.runs);
    out += &failing_runs(&s.runs, evidence_url.filter(|u| is_plain_url(u)));
    let flaky: Vec<String> = s
        .flaky
        .iter()
        .filter(|(_, t)| t.failed > 0 && t.failed < t.runs)
        .map(|(name, t)| format!("- {}: {}\n", md_code(name), t.describe()))
        .collect();
    if !flaky.is_empty() {
        out += "\n#### Flaky\n\n";
        out += &capped(flaky);
    }
    out += &skipped(&s.runs);
    let gaps = super::report::gaps(&s.head.shards);
    if !gaps.is_empty() {
        out += "\n#### Missing shards (their runs were not tested)\n\n";
        for g in gaps {
            let _ = writeln!(out, "- {}", md_code(&g));
        }
    }
    out += &notes(&s.notes);
    if exit_code(&s.runs) != 0 {
        let _ = write!(
            out,
            "\nReproduce:\n\n{}",
            md_block(&bound(&s.reproduce, MAX_REPRODUCE_BYTES))
        );
    }
    out
}

/// A link target shown as given: http(s), and no character Markdown or HTML could act on.
fn is_plain_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 2048
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~:/?#@!$&'*+,;=%".contains(c))
}

/// The verdict of the whole: what a CI job's status would say.
pub fn verdict_word(s: &Session) -> &'static str {
    match exit_code(&s.runs) {
        0 if super::report::gaps(&s.head.shards).is_empty() => "PASS",
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
    let tool = match super::report::is_tool_name(&s.head.tool) {
        true => s.head.tool.clone(),
        false => md_code(&s.head.tool),
    };
    format!("### {tool} {}: {}\n\n", verdict_word(s), parts.join(", "))
}

fn context(s: &Session) -> String {
    let h = &s.head;
    let mut bits = vec![format!("commit {}", md_code(&h.commit))];
    if let Some(seed) = h.seed {
        bits.push(format!("seed {seed}"));
    }
    bits.push(format!("accel {}", md_code(&h.accelerator)));
    if h.timeout_scale != 1.0 {
        bits.push(format!("limits x{}", h.timeout_scale));
    }
    if !h.overrides.is_empty() {
        bits.push(format!("device override {}", h.overrides.describe()));
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
        let _ = writeln!(out, "- kernel {}: {}", md_code(name), md_code(release));
    }
    for inputs in &h.inputs {
        let warn = if inputs.newer().is_empty() {
            ""
        } else {
            "**warning**: "
        };
        let _ = writeln!(out, "- {warn}{}", md_code(&inputs.line()));
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
    let more = rows.len().saturating_sub(MAX_ROWS);
    for (label, c) in rows.into_iter().take(MAX_ROWS) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md_code(&label),
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5]
        );
    }
    if more > 0 {
        let _ = writeln!(
            out,
            "\n... and {more} more scenarios (summary.json lists every run)"
        );
    }
    out
}

/// Lines of a list, at most `MAX_ROWS` of them (the rest counted).
fn capped(lines: Vec<String>) -> String {
    let more = lines.len().saturating_sub(MAX_ROWS);
    let mut out: String = lines.into_iter().take(MAX_ROWS).collect();
    if more > 0 {
        let _ = writeln!(out, "- ... and {more} more");
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
        "\n#### Runs that did not pass\n\n| run | verdict | step | reason | evidence | reproduce |\n|---|---|---|---|---|---|\n",
    );
    for o in bad.iter().take(MAX_LISTED_RUNS) {
        let dir = o
            .run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut evidence = match (evidence_url, dir.is_empty()) {
            (_, true) => "-".to_string(),
            (Some(url), false) => format!("[{}]({url})", md_code(&dir)),
            (None, false) => md_code(&dir),
        };
        // The per-tag picture a person reading a hang or a failure opens first.
        if let (Some(t), false) = (&o.timeline, dir.is_empty()) {
            evidence += &format!(" (picture: {})", md_code(&format!("{dir}/{t}")));
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            md_code(&format!("{} #{}", o.label(), o.run)),
            o.verdict.name(),
            md_code(o.failed_step.as_deref().unwrap_or("-")),
            md_code(&bound(o.reason.as_deref().unwrap_or("-"), MAX_REASON_BYTES)),
            evidence,
            match o.reproduce.is_empty() {
                true => "-".to_string(),
                false => md_code(&bound(&o.reproduce, MAX_REPRODUCE_BYTES)),
            }
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
        reasons
            .entry(o.label())
            .or_insert_with(|| bound(why, MAX_REASON_BYTES).into_owned());
    }
    if reasons.is_empty() {
        return String::new();
    }
    let lines = reasons
        .into_iter()
        .map(|(label, why)| format!("- {}: {}\n", md_code(&label), md_code(&why)))
        .collect();
    String::from("\n#### Skipped\n\n") + &capped(lines)
}

/// What `report merge` left out of the evidence, and why.
fn notes(notes: &[String]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n#### Evidence notes\n\n");
    for n in notes.iter().take(MAX_LISTED_NOTES) {
        let _ = writeln!(out, "- {}", md_code(&bound(n, MAX_REASON_BYTES)));
    }
    if notes.len() > MAX_LISTED_NOTES {
        let _ = writeln!(out, "- ... and {} more", notes.len() - MAX_LISTED_NOTES);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::report::{kernels, tally, Head};
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
            notes: Vec::new(),
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
            md.contains("- **warning**: ``tools layer: 1 of 2 packages newer than vm-images/tools.lock (libc6 2.41-12+deb13u4 → 2.41-12+deb13u5`\\|<b>); run cargo xtask tools-lock --upgrade``"),
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
            md.contains("| `a on debian-7.2 #2` | fail | `steps[3] io` | `MISMATCH \\| block 3\\nexpected #2` | [`20261122-000000-a-r2`](https://example/run/1) |"),
            "{md}"
        );
        assert!(
            md.contains("- `a on debian-7.2`: 1 of 2 runs failed (FLAKY)"),
            "{md}"
        );
        assert!(md.contains("cargo xtask vm-e2e a --seed 7"), "{md}");
        assert!(md.contains("- kernel `debian-7.2`: `7.2.13`"), "{md}");
        // A run with a timeline picture links it beside its evidence directory.
        let mut hung = run("c", 1, Verdict::Timeout, Some("hung"));
        hung.timeline = Some("freeze-frame/timeline.svg".into());
        let pictured = render(&session(vec![hung]), None);
        assert!(
            pictured.contains("| `20261122-000000-c-r1` (picture: `20261122-000000-c-r1/freeze-frame/timeline.svg`) | - |"),
            "{pictured}"
        );
        assert!(
            md.contains("#### Skipped\n\n- `b on debian-7.2`: `lacks recovery`\n"),
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

    /// A summary.json from another job is hostile: its strings stay inert text (no heading,
    /// no HTML, no link, no extra row), and a link target that is not a plain URL is dropped.
    #[test]
    fn hostile_strings_render_inert() {
        let evil = "vm-e2e PASS: 3/3 passed\n\n<!--";
        let mut o = run(
            "a",
            1,
            Verdict::Fail,
            Some("x\n\n| forged | row |\n<img src=x onerror=alert(1)> [click](https://evil)"),
        );
        o.scenario = "s`cen<b>|".into();
        o.failed_step = Some("step\n### PASS".into());
        let mut s = session(vec![o]);
        s.head.tool = evil.into();
        s.head.accelerator = "tcg\n\n## ALL PASSED".into();
        s.reproduce = "cargo xtask vm-e2e\n```\n<script>alert(1)</script>".into();
        s.notes = vec!["note\n<!--".into()];
        let md = render(&s, Some("https://x/)<script>"));
        assert!(
            md.starts_with("### `vm-e2e PASS: 3/3 passed\\n\\n<!--` FAIL: 0/1 passed, 1 fail\n"),
            "{md}"
        );
        let (outside, _block) = md.split_once("Reproduce:").expect("a reproduce block");
        for line in outside.lines() {
            let forged = line.starts_with('#')
                && !line.starts_with("### `vm-e2e PASS")
                && !line.starts_with("#### ");
            assert!(!forged, "a forged heading: {line}\n{md}");
            assert!(
                !line.starts_with("<") && !line.starts_with("| forged"),
                "{line}\n{md}"
            );
        }
        assert!(!md.contains("](https://x/)"), "{md}");
        assert!(
            md.contains("````text\ncargo xtask vm-e2e\n```\n<script>alert(1)</script>\n````\n"),
            "{md}"
        );
        let rows = md.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, 2, "one scenario row, one failing run: {md}");
    }
}
