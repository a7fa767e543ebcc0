//! `cargo xtask bisect --good REV --bad REV (--scenario NAME | --sim 'ARGS' | --cmd 'SHELL')`:
//! flaky-aware bisection. Every candidate is checked out into its own git worktree (the
//! user's tree is never touched), built once (shared target dir), and tested as often as the
//! evidence needs (`bisect::bayes`). Every run is logged as a JSON line; `--resume` replays
//! the log of an interrupted session.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::bisect::bayes::{Bayes, Decision};
use crate::host::procs;
use crate::util::{key_of, root, target_dir, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long)]
    pub good: String,
    #[arg(long)]
    pub bad: String,
    /// Test: a scenario of the candidate's own tree, in fresh VMs (cargo xtask vm-e2e NAME)
    #[arg(long, group = "test")]
    pub scenario: Option<String>,
    /// Test: a simulator exploration of the candidate's tree, e.g. --sim 'explore --seeds 200'
    #[arg(long, group = "test")]
    pub sim: Option<String>,
    /// Test: a shell command run in the candidate's tree (0 pass, 125 skip, 1-127 fail, as git bisect run)
    #[arg(long, group = "test")]
    pub cmd: Option<String>,
    /// Repository to bisect (default: this workspace)
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Shell command building a candidate (default: none; a failure skips the commit)
    #[arg(long)]
    pub build: Option<String>,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub max_runs_per_commit: u32,
    /// Runs of the chosen commit in parallel
    #[arg(short = 'j', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub jobs: u32,
    /// Limit of one test run in seconds (a timeout counts as a failure)
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Continue the interrupted session with the same repo, ends and test
    #[arg(long)]
    pub resume: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunResult {
    Pass,
    Fail,
    Skip,
}

struct Candidate {
    hash: String,
    subject: String,
    worktree: Option<PathBuf>,
    /// None: not built yet; Some(false): build failed (skipped).
    built: Option<bool>,
    skips: u32,
}

pub fn run(args: Args) -> Result<i32> {
    if !(0.5..1.0).contains(&args.confidence) {
        return Err("--confidence must be in [0.5, 1)".into());
    }
    // (build, test) commands, run in the candidate's worktree.
    let (build, test) = match (&args.scenario, &args.sim, &args.cmd) {
        (Some(s), None, None) => (
            Some("cargo build --quiet -p xtask".to_string()),
            format!("cargo xtask vm-e2e {s} --bisect-exit-codes -j 1"),
        ),
        (None, Some(s), None) => (
            Some("cargo build --quiet --release -p sim".to_string()),
            format!("cargo run --quiet --release -p sim -- {s}"),
        ),
        (None, None, Some(c)) => (None, c.clone()),
        _ => return Err("give exactly one of --scenario, --sim or --cmd".into()),
    };
    let build = args.build.clone().or(build);
    let repo = args.repo.clone().unwrap_or_else(root);
    let git = |a: &[&str]| -> Result<String> {
        let o = procs::run_ok(
            Command::new("git").arg("-C").arg(&repo).args(a),
            Duration::from_secs(120),
            &format!("git {}", a.join(" ")),
        )?;
        Ok(o.stdout.trim().to_string())
    };
    let good = git(&[
        "rev-parse",
        "--verify",
        &format!("{}^{{commit}}", args.good),
    ])
    .map_err(|e| format!("--good {}: {e}", args.good))?;
    let bad = git(&["rev-parse", "--verify", &format!("{}^{{commit}}", args.bad)])
        .map_err(|e| format!("--bad {}: {e}", args.bad))?;
    git(&["merge-base", "--is-ancestor", &good, &bad])
        .map_err(|_| "--good must be an ancestor of --bad".to_string())?;
    let list = git(&[
        "log",
        "--reverse",
        "--first-parent",
        "--format=%H %s",
        &format!("{good}..{bad}"),
    ])?;
    let mut cands = vec![Candidate {
        hash: good.clone(),
        subject: "(good end)".into(),
        worktree: None,
        built: Some(true),
        skips: 0,
    }];
    for line in list.lines() {
        let (h, s) = line.split_once(' ').unwrap_or((line, ""));
        cands.push(Candidate {
            hash: h.into(),
            subject: s.into(),
            worktree: None,
            built: None,
            skips: 0,
        });
    }
    if cands.len() < 2 {
        return Err("no commits between --good and --bad".into());
    }
    let session = key_of(&[
        ("repo", repo.display().to_string().as_bytes()),
        ("good", good.as_bytes()),
        ("bad", bad.as_bytes()),
        ("test", test.as_bytes()),
    ]);
    let dir = target_dir().join("bisect").join(&session[..16]);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let log_path = dir.join("log.jsonl");
    let mut b = Bayes::new(cands.len());
    if args.resume {
        let text = std::fs::read_to_string(&log_path)
            .map_err(|e| format!("--resume: no log at {} ({e})", log_path.display()))?;
        let index: HashMap<String, usize> = cands
            .iter()
            .enumerate()
            .map(|(i, c)| (c.hash.clone(), i))
            .collect();
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{}: {e}", log_path.display()))?;
            if let (Some(&i), Some(r)) = (
                index.get(v["commit"].as_str().unwrap_or("")),
                v["result"].as_str(),
            ) {
                match r {
                    "pass" | "fail" if i > 0 => {
                        b.observe(i, r == "fail");
                        n += 1;
                    }
                    "skip" => cands[i].skips += 1,
                    _ => {}
                }
            }
        }
        eprintln!("bisect: resumed {n} run(s) from {}", log_path.display());
    } else if log_path.exists() {
        std::fs::rename(
            &log_path,
            dir.join(format!("log.{}.jsonl", crate::util::timestamp())),
        )
        .map_err(|e| e.to_string())?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("open {}: {e}", log_path.display()))?;
    eprintln!(
        "bisect: {} commits between {} and {}; test: {test}; log: {}",
        cands.len() - 1,
        &good[..12],
        &bad[..12],
        log_path.display()
    );
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").unwrap());
    pb.enable_steady_tick(Duration::from_millis(200));
    let bad_i = cands.len() - 1;
    let mut total = b.runs.iter().sum::<u32>();
    let outcome: Result<(usize, f64)> = loop {
        if let Some(sig) = procs::interrupted() {
            break Err(format!(
                "interrupted by {}; continue with --resume",
                procs::signal_name(sig)
            ));
        }
        let i = match b.decide(args.confidence, args.max_runs_per_commit, |i| {
            cands[i].built != Some(false) && cands[i].skips < 3
        }) {
            Decision::Test(i) => i,
            Decision::Done(k, p) => break Ok((k, p)),
            Decision::GiveUp(e) => break Err(e),
        };
        let (k, p) = b.best();
        pb.set_message(format!(
            "{total} runs | testing {} ({}) | best guess {} at {:.0}% | p ~ {:.2}",
            &cands[i].hash[..12],
            cands[i].subject,
            &cands[k].hash[..12],
            p * 100.0,
            b.p_mean()
        ));
        if let Err(e) = prepare(&repo, &dir, &mut cands[i], build.as_deref()) {
            pb.println(format!("skip {}: {e}", &cands[i].hash[..12]));
            cands[i].built = Some(false);
            if i == bad_i {
                break Err(format!("the bad end cannot be built: {e}"));
            }
            continue;
        }
        let wt = cands[i].worktree.clone().unwrap();
        let results = run_tests(
            &wt,
            &test,
            args.jobs,
            Duration::from_secs(args.timeout),
            total,
        );
        for (r, secs, evidence) in results {
            let name = match r {
                RunResult::Pass => "pass",
                RunResult::Fail => "fail",
                RunResult::Skip => "skip",
            };
            let mut rec =
                serde_json::json!({"commit": cands[i].hash, "result": name, "secs": secs});
            if r != RunResult::Pass {
                // The evidence of a failure stays next to the verdict it fed.
                rec["output_tail"] = evidence.into();
            }
            let _ = writeln!(log, "{rec}");
            match r {
                RunResult::Skip => cands[i].skips += 1,
                r => {
                    b.observe(i, r == RunResult::Fail);
                    total += 1;
                }
            }
        }
        if cands[i].skips >= 3 && i == bad_i {
            break Err("the bad end's test keeps skipping (infra errors / exit 125)".into());
        }
    };
    pb.finish_and_clear();
    // The evidence table, then the verdict.
    let marginal = b.marginal();
    println!(
        "{:>4}  {:<12} {:>5} {:>6} {:>9}  subject",
        "#", "commit", "runs", "fails", "P(first)"
    );
    for (i, c) in cands.iter().enumerate() {
        if b.runs[i] > 0 || marginal[i] > 0.001 || i == 0 {
            println!(
                "{i:>4}  {:<12} {:>5} {:>6} {:>8.1}%  {}",
                &c.hash[..12],
                b.runs[i],
                b.fails[i],
                marginal[i] * 100.0,
                c.subject
            );
        }
    }
    for c in &cands {
        if let Some(wt) = &c.worktree {
            let _ = procs::run(
                Command::new("git")
                    .arg("-C")
                    .arg(&repo)
                    .args(["worktree", "remove", "--force"])
                    .arg(wt),
                Duration::from_secs(60),
                "git worktree remove",
            );
        }
    }
    match outcome {
        Ok((k, p)) => {
            println!("first bad commit: {} {}", cands[k].hash, cands[k].subject);
            println!(
                "confidence {:.1}%, {total} runs, estimated failure rate {:.2}; log {}",
                p * 100.0,
                b.p_mean(),
                log_path.display()
            );
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Checks the candidate out into its own worktree and builds it once.
fn prepare(repo: &Path, dir: &Path, c: &mut Candidate, build: Option<&str>) -> Result<()> {
    if c.built == Some(false) {
        return Err("build failed earlier".into());
    }
    if c.worktree.is_none() {
        let wt = dir.join(format!("wt-{}", &c.hash[..12]));
        if wt.exists() {
            let _ = procs::run(
                Command::new("git")
                    .arg("-C")
                    .arg(repo)
                    .args(["worktree", "remove", "--force"])
                    .arg(&wt),
                Duration::from_secs(60),
                "git worktree remove",
            );
            let _ = std::fs::remove_dir_all(&wt);
        }
        procs::run_ok(
            Command::new("git")
                .arg("-C")
                .arg(repo)
                .args(["worktree", "add", "--detach"])
                .arg(&wt)
                .arg(&c.hash),
            Duration::from_secs(300),
            "git worktree add",
        )?;
        c.worktree = Some(wt);
    }
    if c.built.is_none() {
        if let Some(b) = build {
            let wt = c.worktree.as_ref().unwrap();
            let out = procs::run(&mut shell(b, wt, 0), Duration::from_secs(3600), "build")?;
            if !out.status.success() {
                c.built = Some(false);
                return Err(format!("build failed: {}", procs::tail(&out.stderr, 3)));
            }
        }
        c.built = Some(true);
    }
    Ok(())
}

/// `sh -c CMD` in the worktree, with the worktree's own target directory (a shared one lets
/// cargo run a binary built from another candidate: exactly the wrong-commit trap) and the
/// run number in BISECT_RUN.
fn shell(cmd: &str, wt: &Path, run: u32) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(wt)
        .env_remove("CARGO_TARGET_DIR")
        .env("BISECT_RUN", run.to_string());
    c
}

/// `jobs` runs of the test in parallel; (result, seconds, tail of the output) each.
fn run_tests(
    wt: &Path,
    test: &str,
    jobs: u32,
    limit: Duration,
    base: u32,
) -> Vec<(RunResult, f64, String)> {
    let handles: Vec<_> = (0..jobs)
        .map(|j| {
            let (wt, test) = (wt.to_path_buf(), test.to_string());
            std::thread::spawn(move || {
                let t = Instant::now();
                let (r, out) =
                    match procs::run(&mut shell(&test, &wt, base + j), limit, "bisect test") {
                        Ok(o) => {
                            let out = procs::tail(&format!("{}{}", o.stdout, o.stderr), 12);
                            match o.status.code() {
                                Some(0) => (RunResult::Pass, out),
                                Some(125) => (RunResult::Skip, out),
                                _ => (RunResult::Fail, out), // 1-127, or killed by a signal
                            }
                        }
                        Err(e) if e.contains("no result after") => (RunResult::Fail, e), // a timeout is a failure
                        Err(e) => (RunResult::Skip, e),
                    };
                (r, t.elapsed().as_secs_f64(), out)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or((RunResult::Skip, 0.0, "test thread panicked".into()))
        })
        .collect()
}
