//! Running a bisection's tests: one git worktree per candidate (the user's tree is never
//! touched), built once, and batches of runs in parallel, each run's result and signature.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::evidence::Run;
use super::{seed, signature};
use crate::host::procs;
use crate::util::Result;

/// Longest a candidate's build may take.
const BUILD_LIMIT: Duration = Duration::from_secs(3600);
/// Lines of output kept as a failed run's evidence.
const TAIL_LINES: usize = 12;

/// What kind of test, and how its failures are told apart.
#[derive(Clone, Debug)]
pub enum TestKind {
    /// `cargo xtask vm-e2e NAME` of the candidate's tree; the signature from its summary.json.
    Scenario,
    /// The candidate's simulator; the signature from its FAIL line.
    Sim,
    /// A shell command; the signature is its exit code (and `--match`).
    Cmd { pattern: Option<regex::Regex> },
}

#[derive(Clone, Debug)]
pub struct Test {
    pub kind: TestKind,
    pub build: Option<String>,
    pub command: String,
    pub limit: Duration,
}

pub struct Candidate {
    pub hash: String,
    pub subject: String,
    pub worktree: Option<PathBuf>,
    /// None: not built yet; Some(false): build failed (never run).
    pub built: Option<bool>,
}

/// Checks the candidate out into its own worktree and builds it once, its third-party crates
/// copied from `donor` (a target directory, see `donor`; None: build from scratch); `say`:
/// progress notes.
pub fn prepare(
    repo: &Path,
    dir: &Path,
    c: &mut Candidate,
    test: &Test,
    donor: Option<&Path>,
    say: &dyn Fn(String),
) -> Result<PathBuf> {
    if c.built == Some(false) {
        return Err("build failed earlier".into());
    }
    let wt = match &c.worktree {
        Some(wt) => wt.clone(),
        None => {
            let wt = dir.join(format!("wt-{}", &c.hash[..12]));
            remove_worktree(repo, &wt);
            let _ = std::fs::remove_dir_all(&wt);
            procs::run_ok(
                git(repo)
                    .args(["worktree", "add", "--detach"])
                    .arg(&wt)
                    .arg(&c.hash),
                Duration::from_secs(300),
                "git worktree add",
            )?;
            if matches!(test.kind, TestKind::Scenario) {
                seed_vm_caches(&wt);
            }
            c.worktree = Some(wt.clone());
            wt
        }
    };
    if c.built.is_none() {
        if let Some(b) = &test.build {
            let short = &c.hash[..12];
            match donor.map(|d| seed::seed_cargo_target(d, &wt)) {
                None | Some(Ok(0)) => {}
                Some(Ok(n)) => say(format!("{short}: reusing {n} compiled third-party units")),
                Some(Err(e)) => say(format!("{short}: building from scratch ({e})")),
            }
            let out = procs::run(&mut shell(b, &wt), BUILD_LIMIT, "build")?;
            if !out.status.success() {
                c.built = Some(false);
                return Err(format!("build failed: {}", procs::tail(&out.stderr, 3)));
            }
        }
        c.built = Some(true);
    }
    Ok(wt)
}

/// Where a new candidate's compiled third-party crates come from: the repository's own target
/// directory when it has been built, else the target directory of a candidate built earlier in
/// this session (so only the first candidate of a never-built clone compiles them).
pub fn donor(repo: &Path, cands: &[Candidate]) -> PathBuf {
    let own = cargo_target_of(repo);
    if seed::has_units(&own) {
        return own;
    }
    cands
        .iter()
        .filter(|c| c.built == Some(true))
        .find_map(|c| c.worktree.as_ref().map(|wt| wt.join("target")))
        .unwrap_or(own)
}

/// The target directory the repository's own builds use (the candidates' is `<wt>/target`).
fn cargo_target_of(repo: &Path) -> PathBuf {
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    match same(repo, &crate::util::root()) {
        true => crate::util::target_dir(),
        false => repo.join("target"),
    }
}

/// A scenario candidate gets our built kernels (content-keyed caches its xtask verifies) as
/// hard links; the packages themselves are in the download cache every checkout shares (and
/// candidates older than it get our old per-checkout downloads, if any).
fn seed_vm_caches(wt: &Path) {
    for sub in ["vm-images/downloads", "vm-images/kernels"] {
        let from = crate::util::target_dir().join(sub);
        let to = wt.join("target").join(sub);
        if from.is_dir() && std::fs::create_dir_all(to.parent().unwrap_or(wt)).is_ok() {
            let _ = procs::run(
                Command::new("cp").arg("-al").arg(&from).arg(&to),
                Duration::from_secs(120),
                "cp -al",
            );
        }
    }
}

pub fn remove_worktree(repo: &Path, wt: &Path) {
    if wt.exists() {
        let _ = procs::run(
            git(repo).args(["worktree", "remove", "--force"]).arg(wt),
            Duration::from_secs(60),
            "git worktree remove",
        );
    }
}

/// Removes every worktree of `repo` that a bisection in `dir` made (`dir/wt-*`: this run's, or
/// those of an earlier run of the same bisection that a second signal or a crash cut short),
/// then prunes registrations whose directory is gone. Returns how many it removed. Bounded:
/// one `git worktree list`, one remove per worktree found, one prune.
pub fn sweep_worktrees(repo: &Path, dir: &Path) -> usize {
    let ours = |p: &Path| {
        let named = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("wt-"));
        let canon = |x: &Path| x.canonicalize().unwrap_or_else(|_| x.to_path_buf());
        named && p.parent().map(canon) == Some(canon(dir))
    };
    let limit = Duration::from_secs(60);
    let listed = procs::run_cleanup(git(repo).args(["worktree", "list", "--porcelain"]), limit);
    let mut found: Vec<PathBuf> = listed
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("worktree "))
        .map(PathBuf::from)
        .filter(|p| ours(p))
        .collect();
    // Left on disk but no longer registered (a registration pruned by hand, say).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten().take(10_000) {
            let p = e.path();
            if ours(&p) && p.is_dir() && !found.contains(&p) {
                found.push(p);
            }
        }
    }
    for wt in &found {
        // An interrupted `git worktree add` leaves its worktree locked ("initializing"): a
        // locked one is neither removed by one --force nor pruned. Unlock, then force twice.
        let _ = procs::run_cleanup(git(repo).args(["worktree", "unlock"]).arg(wt), limit);
        let _ = procs::run_cleanup(
            git(repo)
                .args(["worktree", "remove", "--force", "--force"])
                .arg(wt),
            limit,
        );
        let _ = std::fs::remove_dir_all(wt);
    }
    let _ = procs::run_cleanup(git(repo).args(["worktree", "prune"]), limit);
    found.len()
}

/// Sweeps a bisection's worktrees when dropped: at the end of the command, on an error, and
/// on a panic. (A second signal exits at once; the next run of the bisection sweeps then.)
pub struct Sweep {
    pub repo: PathBuf,
    pub dir: PathBuf,
}

impl Drop for Sweep {
    fn drop(&mut self) {
        let n = sweep_worktrees(&self.repo, &self.dir);
        if n > 0 {
            eprintln!(
                "bisect: removed {n} worktree(s) under {}",
                self.dir.display()
            );
        }
    }
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(repo);
    c
}

/// `sh -c CMD` in the worktree, with the worktree's own target directory (a shared one lets
/// cargo run a binary built from another candidate: exactly the wrong-commit trap).
fn shell(cmd: &str, wt: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(wt)
        .env_remove("CARGO_TARGET_DIR");
    c
}

/// One run to make: in this worktree, as run number `number` of the bisection, its vm-e2e
/// evidence (for scenarios) under `runs_dir`.
pub struct Job {
    pub commit: usize,
    pub worktree: PathBuf,
    pub number: u32,
    pub runs_dir: PathBuf,
}

/// What one run ended in: result, seconds, the tail of its output (not for a pass).
pub struct Done {
    pub commit: usize,
    pub run: Run,
    pub secs: f64,
    pub tail: Option<String>,
}

/// Runs the jobs in parallel (one thread and process each) and returns them in job order.
pub fn run_batch(test: &Test, jobs: Vec<Job>) -> Vec<Done> {
    let handles: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let test = test.clone();
            let commit = job.commit;
            (commit, std::thread::spawn(move || run_one(&test, &job)))
        })
        .collect();
    handles
        .into_iter()
        .map(|(commit, h)| {
            h.join().unwrap_or(Done {
                commit,
                run: Run::Skip,
                secs: 0.0,
                tail: Some("test thread panicked".into()),
            })
        })
        .collect()
}

fn run_one(test: &Test, job: &Job) -> Done {
    let t = Instant::now();
    let _ = std::fs::create_dir_all(&job.runs_dir);
    let mut cmd = shell(&test.command, &job.worktree);
    cmd.env("BISECT_RUN", job.number.to_string())
        .env("UBLK_VM_RUNS_DIR", &job.runs_dir);
    let (run, tail) = match procs::run(&mut cmd, test.limit, "bisect test") {
        Ok(o) => {
            let output = format!("{}{}", o.stdout, o.stderr);
            let run = classify(test, o.status.code(), &output, &job.runs_dir);
            let tail = (run != Run::Pass).then(|| procs::tail(&output, TAIL_LINES));
            (run, tail)
        }
        // A run past its limit is a failure (a hang is what we may be looking for).
        Err(e) if e.contains("no result after") => (Run::Fail(Some("timeout".into())), Some(e)),
        Err(e) => (Run::Skip, Some(e)),
    };
    Done {
        commit: job.commit,
        run,
        secs: t.elapsed().as_secs_f64(),
        tail,
    }
}

/// Exit codes as `git bisect run` (0 pass, 125 skip, others fail; killed by a signal: fail),
/// and the failure's signature by test kind.
fn classify(test: &Test, code: Option<i32>, output: &str, runs_dir: &Path) -> Run {
    match code {
        Some(0) => return Run::Pass,
        Some(125) => return Run::Skip,
        _ => {}
    }
    let sig = match &test.kind {
        TestKind::Cmd { pattern } => {
            signature::of_cmd(code, pattern.as_ref().map(|p| p.is_match(output)))
        }
        TestKind::Sim => signature::of_sim(output).unwrap_or_else(|| signature::of_cmd(code, None)),
        TestKind::Scenario => signature::read_summary(runs_dir)
            .and_then(|s| signature::of_summary(&s))
            .unwrap_or_else(|| format!("{} (no summary.json)", signature::of_cmd(code, None))),
    };
    Run::Fail(Some(sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_never_built_clone_takes_its_crates_from_a_candidate_built_before() {
        let root = std::env::temp_dir().join(format!("xtask-donor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (repo, wt) = (root.join("repo"), root.join("wt-a"));
        std::fs::create_dir_all(wt.join("target/debug/.fingerprint")).unwrap();
        std::fs::create_dir_all(&repo).unwrap();
        let cand = |built, worktree: Option<&Path>| Candidate {
            hash: "0".repeat(40),
            subject: String::new(),
            worktree: worktree.map(Path::to_path_buf),
            built,
        };
        let unbuilt = [cand(None, Some(&wt)), cand(Some(false), Some(&wt))];
        assert_eq!(donor(&repo, &unbuilt), repo.join("target"));
        let built = [cand(None, None), cand(Some(true), Some(&wt))];
        assert_eq!(donor(&repo, &built), wt.join("target"));
        // Once the repository has its own build, that is the source.
        std::fs::create_dir_all(repo.join("target/release/.fingerprint")).unwrap();
        assert_eq!(donor(&repo, &built), repo.join("target"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn git_ok(repo: &Path, args: &[&str]) -> String {
        let o = git(repo).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A worktree whose `git worktree add` was interrupted stays locked ("initializing"):
    /// plain `remove --force` and `prune` both leave it. The sweep removes it anyway.
    #[test]
    fn a_locked_worktree_left_by_an_interrupted_add_is_swept() {
        let base = std::env::temp_dir().join(format!("xtask-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (repo, dir) = (base.join("repo"), base.join("bisect"));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        git_ok(&repo, &["init", "-q"]);
        std::fs::write(repo.join("f"), "x").unwrap();
        git_ok(&repo, &["add", "f"]);
        git_ok(
            &repo,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "c",
            ],
        );
        let wt = dir.join("wt-1");
        git_ok(
            &repo,
            &["worktree", "add", "-q", "--detach", wt.to_str().unwrap()],
        );
        git_ok(
            &repo,
            &[
                "worktree",
                "lock",
                "--reason",
                "initializing",
                wt.to_str().unwrap(),
            ],
        );
        assert_eq!(sweep_worktrees(&repo, &dir), 1);
        let listed = git_ok(&repo, &["worktree", "list", "--porcelain"]);
        assert!(!listed.contains("wt-1"), "{listed}");
        assert!(!wt.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
