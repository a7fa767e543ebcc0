//! `cargo xtask bisect --good REV --bad REV (--scenario NAME | --sim 'ARGS' | --cmd 'SHELL')`:
//! flaky-aware bisection that tells failures apart. Every candidate is checked out into its
//! own git worktree and built once (`bisect::runner`); the failure looked for is learned at the
//! bad end (`bisect::signature`); the runs (`bisect::evidence`, logged as JSON lines for
//! `--resume`) feed a change-point model with a background failure rate (`bisect::model`),
//! and the decision rule (`bisect::policy`) picks the next runs or stops.
//! `cargo xtask bisect bench` compares the rule with git-bayesect's and a fixed one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::bisect::bench;
use crate::bisect::evidence::{Evidence, LogLine, Tally};
use crate::bisect::model::{Model, Params};
use crate::bisect::policy::{self, Decision, Limits};
use crate::bisect::runner::{self, Candidate, Job, Test, TestKind};
use crate::bisect::signature::Want;
use crate::host::procs;
use crate::util::{key_of, root, target_dir, Result};

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one (default: the newest build of the same suite, with a warning and a
    /// record in every report); also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    #[command(subcommand)]
    pub sub: Option<Sub>,
    /// A commit where the failure does not happen (or is rare)
    #[arg(long)]
    pub good: Option<String>,
    /// A commit where it happens
    #[arg(long)]
    pub bad: Option<String>,
    /// Test: a scenario of the candidate's own tree, in fresh VMs (cargo xtask vm-e2e NAME)
    #[arg(long, group = "test")]
    pub scenario: Option<String>,
    /// Test: a simulator exploration of the candidate's tree, e.g. --sim 'explore --seeds 200'
    #[arg(long, group = "test")]
    pub sim: Option<String>,
    /// Test: a shell command run in the candidate's tree (0 pass, 125 skip, 1-127 fail, as git bisect run)
    #[arg(long, group = "test")]
    pub cmd: Option<String>,
    /// With --cmd: only failures whose output matches this regular expression are the one looked for
    #[arg(long = "match", value_name = "REGEX", requires = "cmd")]
    pub pattern: Option<String>,
    /// Which failures count: `learn` (the signature seen twice first at the bad end), `any`, or an exact signature
    #[arg(long, default_value = "learn")]
    pub signature: String,
    /// Repository to bisect (default: this workspace)
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Shell command building a candidate (default: per test kind; a failure skips the commit)
    #[arg(long)]
    pub build: Option<String>,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    #[arg(long, default_value_t = 30, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub max_runs_per_commit: u32,
    /// Runs at once (VMs or processes), chosen together for the most information
    #[arg(short = 'j', long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=policy::MAX_BATCH as i64))]
    pub jobs: u32,
    /// Limit of one test run in seconds (a timeout counts as a failure)
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Continue the interrupted session with the same repo, ends and test
    #[arg(long)]
    pub resume: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// The decision rule against git-bayesect's and fixed-20 on synthetic histories (no VMs)
    Bench(BenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Seeded trials per cell
    #[arg(long, default_value_t = 200, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub trials: u32,
    /// Commits per synthetic history (both ends included)
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(3..=1024))]
    pub commits: u64,
    /// Runs chosen at once by ours (the others run one at a time)
    #[arg(short = 'j', long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=policy::MAX_BATCH as i64))]
    pub jobs: u32,
    #[arg(long, default_value_t = 0.98)]
    pub confidence: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Add ours told the true rates: what not knowing them costs (a bound, not a policy)
    #[arg(long)]
    pub told_rates: bool,
    /// Ours with other prior constants, KEY=VALUE,... (prior_no_change, q_spike, q_slab_mean_rate, q_max, min_jump_ratio)
    #[arg(long, value_name = "KEY=VALUE,...")]
    pub prior: Option<String>,
}

pub fn run(args: Args) -> Result<i32> {
    crate::image::fetch::set_locked(args.locked);
    if let Some(Sub::Bench(b)) = args.sub {
        return run_bench(b);
    }
    let test = test_of(&args)?;
    let repo = args.repo.clone().unwrap_or_else(root);
    let mut cands = candidates(&repo, &args)?;
    if matches!(test.kind, TestKind::Scenario) {
        resolve_images_once()?;
    }
    let mut session = Session::open(&repo, &cands, &test, &args)?;
    // Worktrees an earlier, cut-short run of this bisection left are removed now; this run's
    // when `_sweep` drops (also on an error or a panic).
    let stale = runner::sweep_worktrees(&repo, &session.dir);
    if stale > 0 {
        eprintln!("bisect: removed {stale} worktree(s) an earlier run left");
    }
    let _sweep = runner::Sweep {
        repo: repo.clone(),
        dir: session.dir.clone(),
    };
    let limits = Limits {
        confidence: args.confidence,
        max_runs_per_commit: args.max_runs_per_commit,
        jobs: args.jobs as usize,
    };
    let outcome = bisect(&repo, &mut cands, &test, &mut session, limits);
    let tally = session.evidence.tally();
    print_table(&cands, &tally, &session.model);
    let removed = runner::sweep_worktrees(&repo, &session.dir);
    eprintln!("bisect: removed {removed} worktree(s)");
    print_verdict(&cands, &tally, &session, outcome?)
}

/// A scenario bisection resolves its image inputs once, before any candidate: every
/// candidate then finds the same packages (the shared download cache) and the same fallback
/// (remembered beside them), so the environment cannot change mid-bisection.
fn resolve_images_once() -> Result<()> {
    let recipe = crate::image::recipe::Recipe::load()?;
    let source = crate::image::kernel::Source::default_debian();
    crate::image::prepare_kernel(&source, &recipe)?;
    crate::image::tools::layer(&[])?;
    for inputs in crate::image::fetch::recorded() {
        println!("bisect: image inputs: {}", inputs.line());
    }
    Ok(())
}

fn confidence_ok(c: f64) -> Result<()> {
    match (0.5..1.0).contains(&c) {
        true => Ok(()),
        false => Err(format!("--confidence {c}: must be in [0.5, 1)")),
    }
}

/// The test (and build) commands, run in a candidate's worktree.
fn test_of(args: &Args) -> Result<Test> {
    confidence_ok(args.confidence)?;
    let (kind, build, command) = match (&args.scenario, &args.sim, &args.cmd) {
        (Some(s), None, None) => (
            TestKind::Scenario,
            Some("cargo build --quiet -p xtask && cargo xtask vm-build".to_string()),
            format!("cargo xtask vm-e2e {s} --bisect-exit-codes -j 1"),
        ),
        (None, Some(s), None) => (
            TestKind::Sim,
            Some("cargo build --quiet --release -p sim".to_string()),
            format!("cargo run --quiet --release -p sim -- {s}"),
        ),
        (None, None, Some(c)) => {
            let pattern = match &args.pattern {
                Some(p) => Some(
                    regex::Regex::new(p)
                        .map_err(|e| crate::util::bad_input(format!("--match {p:?}: {e}")))?,
                ),
                None => None,
            };
            (TestKind::Cmd { pattern }, None, c.clone())
        }
        _ => {
            return Err(crate::util::bad_input(
                "give exactly one of --scenario, --sim or --cmd".into(),
            ))
        }
    };
    Ok(Test {
        kind,
        build: args.build.clone().or(build),
        command,
        limit: Duration::from_secs(args.timeout),
    })
}

/// --good, then the first-parent commits up to --bad.
fn candidates(repo: &Path, args: &Args) -> Result<Vec<Candidate>> {
    let (Some(good), Some(bad)) = (&args.good, &args.bad) else {
        return Err(crate::util::bad_input(
            "give --good REV and --bad REV (or `bisect bench`)".into(),
        ));
    };
    let git = |a: &[&str]| -> Result<String> {
        let o = procs::run_ok(
            Command::new("git").arg("-C").arg(repo).args(a),
            Duration::from_secs(120),
            &format!("git {}", a.join(" ")),
        )?;
        Ok(o.stdout.trim().to_string())
    };
    let commit = |flag: &str, rev: &str| {
        git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
            .map_err(|e| format!("{flag} {rev}: {e}"))
    };
    let (good, bad) = (commit("--good", good)?, commit("--bad", bad)?);
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
        hash: good,
        subject: "(--good)".into(),
        worktree: None,
        built: None,
    }];
    for line in list.lines() {
        let (h, s) = line.split_once(' ').unwrap_or((line, ""));
        cands.push(Candidate {
            hash: h.into(),
            subject: s.into(),
            worktree: None,
            built: None,
        });
    }
    if cands.len() < 2 {
        return Err(crate::util::bad_input(
            "no commits between --good and --bad".into(),
        ));
    }
    Ok(cands)
}

/// The bisection's directory, its log, and the runs so far.
struct Session {
    dir: PathBuf,
    log_path: PathBuf,
    log: std::fs::File,
    evidence: Evidence,
    model: Model,
}

impl Session {
    fn open(repo: &Path, cands: &[Candidate], test: &Test, args: &Args) -> Result<Session> {
        let key = key_of(&[
            ("repo", repo.display().to_string().as_bytes()),
            ("good", cands[0].hash.as_bytes()),
            ("bad", cands[cands.len() - 1].hash.as_bytes()),
            ("test", test.command.as_bytes()),
        ]);
        let dir = target_dir().join("bisect").join(&key[..16]);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log_path = dir.join("log.jsonl");
        let want = Want::parse(&args.signature, policy::WARMUP_FAILURES);
        let mut evidence = Evidence::new(cands.len(), want);
        if args.resume {
            replay(&log_path, cands, &mut evidence)?;
        } else {
            set_aside(&dir)?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("open {}: {e}", log_path.display()))?;
        eprintln!(
            "bisect: {} commits after {} up to {}; test: {}; log: {}",
            cands.len() - 1,
            &cands[0].hash[..12],
            &cands[cands.len() - 1].hash[..12],
            test.command,
            log_path.display()
        );
        Ok(Session {
            dir,
            log_path,
            log,
            evidence,
            model: Model::new(cands.len()),
        })
    }

    fn record(&mut self, cands: &[Candidate], done: runner::Done) {
        let line = LogLine::new(&cands[done.commit].hash, &done.run, done.secs, done.tail);
        if let Ok(text) = serde_json::to_string(&line) {
            let _ = writeln!(self.log, "{text}");
        }
        self.evidence.add(done.commit, done.run);
    }
}

/// A new session (no --resume) sets the last one's log and run evidence aside under one stamp
/// (`log.STAMP.jsonl`, `runs.STAMP/`): run numbers restart at 0, and run N's evidence folder
/// must hold run N of this session only.
fn set_aside(dir: &Path) -> Result<()> {
    let stamp = crate::util::timestamp();
    for (from, to) in [
        ("log.jsonl", format!("log.{stamp}.jsonl")),
        ("runs", format!("runs.{stamp}")),
    ] {
        if dir.join(from).exists() {
            std::fs::rename(dir.join(from), dir.join(&to))
                .map_err(|e| format!("set {from} aside in {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// Replays an interrupted session's log into `evidence`.
fn replay(log_path: &Path, cands: &[Candidate], evidence: &mut Evidence) -> Result<()> {
    let text = std::fs::read_to_string(log_path)
        .map_err(|e| format!("--resume: no log at {} ({e})", log_path.display()))?;
    let mut n = 0;
    for (no, line) in text.lines().enumerate() {
        let l: LogLine = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: {e}", log_path.display(), no + 1))?;
        let i = cands.iter().position(|c| c.hash == l.commit);
        if let (Some(i), Some(run)) = (i, l.run()) {
            evidence.add(i, run);
            n += 1;
        }
    }
    eprintln!("bisect: resumed {n} run(s) from {}", log_path.display());
    Ok(())
}

/// The loop: decide, build what the batch needs, run it, record. Ok: the decision that ended it.
fn bisect(
    repo: &Path,
    cands: &mut [Candidate],
    test: &Test,
    s: &mut Session,
    limits: Limits,
) -> Result<Decision> {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").unwrap());
    pb.enable_steady_tick(Duration::from_millis(200));
    let bad = cands.len() - 1;
    let mut announced = false;
    let result = loop {
        if let Some(sig) = procs::interrupted() {
            break Err(format!(
                "interrupted by {}; continue with --resume",
                procs::signal_name(sig)
            ));
        }
        let t = s.evidence.tally();
        if !t.runnable(bad, limits.max_runs_per_commit) && t.unusable(bad) > 0 {
            break Err(format!(
                "the bad end cannot be tested: {}",
                unusable_why(&t, bad)
            ));
        }
        if !announced && t.learner.describe() != "not learned yet" {
            say(&pb, format!("bisect: looking for {}", t.learner.describe()));
            announced = true;
        }
        let runnable =
            |i: usize| cands[i].built != Some(false) && t.runnable(i, limits.max_runs_per_commit);
        let batch = match policy::decide(&s.model, &t.counts, limits, runnable) {
            Decision::Test(batch) => batch,
            end => break Ok(end),
        };
        pb.set_message(progress(cands, &t, &s.model, &batch));
        let jobs = match jobs_for(repo, cands, test, s, &batch, &pb) {
            Ok(jobs) => jobs,
            Err(e) => break Err(e),
        };
        for done in runner::run_batch(test, jobs) {
            s.record(cands, done);
        }
    };
    pb.finish_and_clear();
    result
}

/// Prepares the batch's candidates; a build failure takes its commit out (the bad end's: an error).
fn jobs_for(
    repo: &Path,
    cands: &mut [Candidate],
    test: &Test,
    s: &Session,
    batch: &[usize],
    pb: &ProgressBar,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let base = s.evidence.runs.len() as u32;
    for &i in batch {
        // Only a candidate still to be built needs a donor of compiled crates.
        let donor = cands[i].built.is_none().then(|| runner::donor(repo, cands));
        match runner::prepare(repo, &s.dir, &mut cands[i], test, donor.as_deref(), &|m| {
            say(pb, m)
        }) {
            Ok(wt) => {
                let number = base + jobs.len() as u32;
                jobs.push(Job {
                    commit: i,
                    worktree: wt,
                    number,
                    runs_dir: s.dir.join("runs").join(number.to_string()),
                });
            }
            Err(e) if i == cands.len() - 1 => {
                return Err(format!("the bad end cannot be built: {e}"))
            }
            Err(e) => say(pb, format!("skip {}: {e}", &cands[i].hash[..12])),
        }
    }
    Ok(jobs)
}

/// A line above the spinner, or on stderr when there is no spinner (not a terminal: CI logs).
fn say(pb: &ProgressBar, line: String) {
    match pb.is_hidden() {
        true => eprintln!("{line}"),
        false => pb.println(line),
    }
}

fn unusable_why(t: &Tally, i: usize) -> String {
    let mut parts = Vec::new();
    if t.skips[i] > 0 {
        parts.push(format!(
            "{} run(s) skipped (exit 125 / infra errors)",
            t.skips[i]
        ));
    }
    parts.extend(t.others_line(i));
    parts.join("; ")
}

fn progress(cands: &[Candidate], t: &Tally, model: &Model, batch: &[usize]) -> String {
    let post = model.posterior(&t.counts);
    let (k, p) = post.best_commit();
    let mut at: Vec<&str> = batch.iter().map(|i| &cands[*i].hash[..12]).collect();
    at.dedup();
    format!(
        "{} runs | testing {} | best guess {} at {:.0}% | no change {:.0}%",
        t.all.iter().sum::<u32>(),
        at.join(" "),
        &cands[k].hash[..12],
        p * 100.0,
        post.no_change() * 100.0
    )
}

/// The evidence per commit: runs, matching failures, P(first bad), other failures.
fn print_table(cands: &[Candidate], t: &Tally, model: &Model) {
    let post = model.posterior(&t.counts);
    println!(
        "{:>4}  {:<12} {:>5} {:>6} {:>9}  subject",
        "#", "commit", "runs", "fails", "P(first)"
    );
    for (i, c) in cands.iter().enumerate() {
        let w = if i == 0 { 0.0 } else { post.weight[i] };
        if t.all[i] > 0 || w > 0.001 || i == 0 {
            println!(
                "{i:>4}  {:<12} {:>5} {:>6} {:>8.1}%  {}",
                &c.hash[..12],
                t.all[i],
                t.counts.fails[i],
                w * 100.0,
                c.subject
            );
        }
        if let Some(line) = t.others_line(i) {
            println!("{:>20}{line}", "");
        }
        if t.skips[i] > 0 {
            println!("{:>20}{} run(s) skipped", "", t.skips[i]);
        }
    }
}

fn print_verdict(cands: &[Candidate], t: &Tally, s: &Session, end: Decision) -> Result<i32> {
    let post = s.model.posterior(&t.counts);
    let runs: u32 = t.all.iter().sum();
    println!("looked for: {}", t.learner.describe());
    match end {
        Decision::Culprit(k, p) => {
            let (before, after) = post.rates_at(k);
            println!("first bad commit: {} {}", cands[k].hash, cands[k].subject);
            println!(
                "confidence {:.1}%, {runs} runs, fails {:.0}% before it and {:.0}% from it on; log {}",
                p * 100.0,
                before * 100.0,
                after * 100.0,
                s.log_path.display()
            );
            Ok(0)
        }
        Decision::NoChange(p) => {
            println!(
                "no commit explains the failures: the failure rate is the same across the range (~{:.0}%), confidence {:.1}%, {runs} runs; log {}",
                post.rate_after[0] * 100.0,
                p * 100.0,
                s.log_path.display()
            );
            Ok(0)
        }
        Decision::GiveUp(e) => Err(e),
        Decision::Test(_) => unreachable!("the loop ends only on a verdict"),
    }
}

fn run_bench(b: BenchArgs) -> Result<i32> {
    confidence_ok(b.confidence)?;
    let setup = bench::Setup {
        commits: b.commits as usize,
        trials: b.trials,
        confidence: b.confidence,
        jobs: b.jobs as usize,
        seed: b.seed,
        params: Params::DEFAULT.with_overrides(b.prior.as_deref().unwrap_or(""))?,
    };
    eprintln!(
        "bisect bench: {} commits, {} trials per cell, confidence {}, ours with -j {} and {:?} (a few minutes)",
        setup.commits, setup.trials, setup.confidence, setup.jobs, setup.params
    );
    let t = std::time::Instant::now();
    let mut policies = bench::Policy::ALL.to_vec();
    if b.told_rates {
        policies.push(bench::Policy::ToldRates);
    }
    let rows = bench::table(setup, &bench::standard_cells(), &policies);
    print!("{}", bench::render(&rows, &policies));
    println!("({:.1} s)", t.elapsed().as_secs_f64());
    Ok(0)
}
