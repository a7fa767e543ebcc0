//! What vm-e2e and vm-selftests share once their runs are defined: a pool of workers that
//! runs them (each worker owns its VMs), the progress bar, the evidence rule, the reports
//! (summary.json, junit.xml), the terminal summary and the exit code.
//!
//! Exit codes: 0 every run passed (or skipped); 1 a run failed or timed out; 125 no run failed
//! but some could not be tested; the caller maps an interrupt to 128+n.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::markdown;
use super::outcome::Outcome;
use super::report::{self, exit_code, mark_incomplete, sort_runs, Head, Session};
use crate::runs::{self, RunDir, Verdict, EXIT_INFRA};
use crate::text::{bound, term, term_lines};
use crate::util::{write_atomic, Result};

/// Runs `one` over `work` on `jobs` workers, printing each outcome as it ends.
pub fn run_pool<W: Send>(
    work: Vec<W>,
    jobs: usize,
    tool: &str,
    one: impl Fn(&W) -> Outcome + Sync,
) -> Vec<Outcome> {
    let total = work.len();
    let queue = Mutex::new(work.into_iter());
    let (tx, rx) = mpsc::channel::<Outcome>();
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed}] {msg}")
            .expect("a valid template"),
    );
    let mut outcomes = Vec::new();
    // Each worker owns its VMs for their whole life (QEMU's parent-death signal is tied to
    // the thread that started it); scoped threads end before this returns.
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, total.max(1)) {
            let (tx, queue, one) = (tx.clone(), &queue, &one);
            s.spawn(move || loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                let Some(w) = next else {
                    break;
                };
                if crate::host::procs::interrupted().is_some() || tx.send(one(&w)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        while outcomes.len() < total {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(o) => {
                    let line = format!(
                        "{:<12} {} #{} in {:.1} s{}",
                        o.verdict.name(),
                        term(&o.label()),
                        o.run,
                        o.duration_s,
                        o.reason
                            .as_ref()
                            .map(|r| format!(": {}", term(&bound(r, 2048))))
                            .unwrap_or_default()
                    );
                    // A hidden bar (not a terminal, e.g. CI) swallows println: print plainly.
                    if pb.is_hidden() {
                        eprintln!("{tool}: {line}");
                    } else {
                        pb.println(line);
                    }
                    pb.inc(1);
                    outcomes.push(o);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => pb.tick(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        pb.finish_and_clear();
    });
    outcomes
}

/// Sorts the runs, writes the reports into `<time>-<name>`, prints the summary and returns the
/// exit code (128+n if interrupted).
pub fn conclude(
    head: Head,
    t0: Instant,
    mut outcomes: Vec<Outcome>,
    reproduce: impl Fn(&[Outcome]) -> String,
    name: &str,
) -> i32 {
    sort_runs(&mut outcomes);
    let session = Session {
        head,
        wall_s: t0.elapsed().as_secs_f64(),
        kernels: report::kernels(&outcomes),
        flaky: report::tally(&outcomes),
        reproduce: reproduce(&outcomes),
        runs: outcomes,
        notes: Vec::new(),
    };
    let reports = RunDir::create(name).and_then(|d| write_reports(&session, &d.path, None));
    print_summary(&session, &reports);
    if let Some(sig) = crate::host::procs::interrupted() {
        return 128 + sig;
    }
    match reports {
        Err(_) => EXIT_INFRA,
        Ok(_) => exit_code(&session.runs),
    }
}

/// Writes a run's record (`file` in its run directory: the outcome plus `extra` fields) and
/// applies the evidence rule; returns the outcome as it stands then.
/// A run decided before any VM (a skip) has no run directory: there is nothing to write.
pub fn seal(mut outcome: Outcome, file: &str, extra: serde_json::Value) -> Outcome {
    bound_reasons(&mut outcome);
    if outcome.run_dir.as_os_str().is_empty() {
        return outcome;
    }
    let mut record = serde_json::json!({ "outcome": &outcome });
    if let (Some(r), serde_json::Value::Object(x)) = (record.as_object_mut(), extra) {
        r.extend(x);
    }
    let path = outcome.run_dir.join(file);
    let text = serde_json::to_string_pretty(&record).expect("a record serialises");
    if let Err(e) = write_atomic(&path, text.as_bytes()) {
        runs::record::<()>(&path, Err(std::io::Error::other(e)));
    }
    if let Some(why) = runs::evidence_errors(&outcome.run_dir) {
        mark_incomplete(&mut outcome, &why);
    }
    outcome
}

/// Longest reason a report keeps (head and tail; the whole output is in the run directory).
pub const MAX_REASON_BYTES: usize = 16 << 10;

/// Reasons are bounded in bytes, not lines: a server's 70 MB stderr line must not make a
/// summary.json that `report merge` refuses (and so lose the run's failure).
fn bound_reasons(o: &mut Outcome) {
    if let Some(r) = &mut o.reason {
        *r = bound(r, MAX_REASON_BYTES).into_owned();
    }
    if let Some(a) = &mut o.first_attempt {
        a.reason = bound(&a.reason, MAX_REASON_BYTES).into_owned();
    }
}

/// summary.json, junit.xml and summary.md (Markdown for `$GITHUB_STEP_SUMMARY`) in `dir`.
pub fn write_reports(session: &Session, dir: &Path, evidence_url: Option<&str>) -> Result<PathBuf> {
    let json = serde_json::to_string_pretty(session).expect("the session serialises");
    write_atomic(&dir.join("summary.json"), json.as_bytes())?;
    write_atomic(&dir.join("junit.xml"), report::junit(session).as_bytes())?;
    let md = markdown::render(session, evidence_url);
    write_atomic(&dir.join("summary.md"), md.as_bytes())?;
    Ok(dir.to_path_buf())
}

/// The kernels header, the table, flakiness (with repeats), the totals and the reproduce line.
pub fn print_summary(session: &Session, reports: &Result<PathBuf>) {
    let tool = term(&session.head.tool);
    print!("{}", report::kernels_header(&session.kernels));
    if !session.head.overrides.is_empty() {
        println!(
            "{tool}: device override {} (every start step)",
            session.head.overrides.describe()
        );
    }
    println!("{}", report::table(&session.runs));
    if session.head.repeat > 1 {
        for (name, t) in &session.flaky {
            println!("{}: {}", term(name), t.describe());
        }
    }
    let total = session.runs.len();
    let count = |v: Verdict| session.runs.iter().filter(|o| o.verdict == v).count();
    let (passed, skipped) = (count(Verdict::Pass), count(Verdict::Skip));
    let skipped = if skipped > 0 {
        format!(", {skipped} skipped")
    } else {
        String::new()
    };
    let retried = session
        .runs
        .iter()
        .filter(|o| o.first_attempt.is_some())
        .count();
    if retried > 0 {
        println!("{tool}: {retried} run(s) got a second VM after the first died before its first step (both attempts recorded)");
    }
    let wall_s = session.wall_s;
    let seed = session
        .head
        .seed
        .map(|s| format!(" (seed {s})"))
        .unwrap_or_default();
    match reports {
        Ok(dir) => println!(
            "{tool}: {passed}/{total} passed{skipped} in {wall_s:.1} s{seed}; reports: {}",
            dir.display()
        ),
        Err(e) => println!(
            "{tool}: {passed}/{total} passed{skipped} in {wall_s:.1} s{seed}; the reports could not be written ({e}): free space under {} and rerun",
            runs::runs_dir().display()
        ),
    }
    if session
        .runs
        .iter()
        .any(|o| !matches!(o.verdict, Verdict::Pass | Verdict::Skip))
    {
        let lines = term_lines(&bound(&session.reproduce, 16 << 10));
        match lines.contains('\n') {
            false => println!("{tool}: reproduce with: {lines}"),
            true => println!(
                "{tool}: reproduce with:\n    {}",
                lines.replace('\n', "\n    ")
            ),
        }
        print_run_reproduce(&tool, &session.runs);
    }
}

/// Most runs listed with their own reproduce line.
const MAX_RUN_REPRODUCE_LINES: usize = 10;

/// Each failed run's own command (its server, kernel and seed), for the first few.
fn print_run_reproduce(tool: &str, runs: &[Outcome]) {
    let bad: Vec<&Outcome> = runs
        .iter()
        .filter(|o| o.verdict.wants_rerun() && !o.reproduce.is_empty())
        .collect();
    for o in bad.iter().take(MAX_RUN_REPRODUCE_LINES) {
        println!(
            "{tool}: {} #{} alone: {}",
            term(&o.label()),
            o.run,
            term(&bound(&o.reproduce, 4 << 10))
        );
    }
    if bad.len() > MAX_RUN_REPRODUCE_LINES {
        println!(
            "{tool}: ... and {} more (each run's line is in summary.json)",
            bad.len() - MAX_RUN_REPRODUCE_LINES
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn exit_codes_follow_git_bisect_run() {
        let o = |v| {
            let mut o = Outcome::named("t", 1, 1, Path::new("d"), "h");
            o.verdict = v;
            o
        };
        use Verdict::*;
        assert_eq!(exit_code(&[o(Pass), o(Pass)]), 0);
        assert_eq!(exit_code(&[o(Pass), o(InfraError)]), 125);
        assert_eq!(exit_code(&[o(Fail), o(InfraError)]), 1);
        assert_eq!(exit_code(&[o(Timeout)]), 1);
        let mut p = o(Pass);
        mark_incomplete(&mut p, "disk full");
        assert_eq!((p.verdict, exit_code(&[p.clone()])), (InfraError, 125));
        let mut f = o(Fail);
        mark_incomplete(&mut f, "disk full");
        assert_eq!(f.verdict, Fail);
        assert!(f.reason.unwrap().contains("evidence incomplete: disk full"));
    }

    /// A reason of any size is kept within its byte bound, head and tail (the failing part
    /// is usually at the end).
    #[test]
    fn reasons_are_bounded_in_bytes() {
        let mut o = Outcome::named("t", 1, 1, Path::new(""), "h");
        o.verdict = Verdict::Fail;
        o.reason = Some(format!("server said: {}END", "x".repeat(70 << 20)));
        let sealed = seal(o, "unused.json", serde_json::json!({}));
        let r = sealed.reason.unwrap();
        assert!(r.len() <= MAX_REASON_BYTES, "{}", r.len());
        assert!(r.starts_with("server said: ") && r.ends_with("END"));
        let t = crate::host::procs::tail(&format!("a\n{}\nlast", "y".repeat(1 << 20)), 30);
        assert!(t.len() < 4096 && t.ends_with("\nlast"), "{}", t.len());
    }

    /// A skip decided before any VM has no run directory: sealing it writes nothing (it once
    /// wrote `scenario-result.json` into the working directory, and two workers raced there).
    #[test]
    fn a_run_without_a_directory_is_sealed_without_writing() {
        let mut o = Outcome::named("t", 1, 1, Path::new(""), "h");
        o.verdict = Verdict::Skip;
        o.reason = Some("lacks stores-data".into());
        let name = "seal-test-result.json";
        let sealed = seal(o.clone(), name, serde_json::json!({}));
        assert_eq!(sealed.reason, o.reason);
        assert_eq!(sealed.verdict, Verdict::Skip);
        assert!(!Path::new(name).exists());
    }
}
