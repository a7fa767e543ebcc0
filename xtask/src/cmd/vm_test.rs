//! `cargo xtask vm-test --exec FILE...`: a project's own test programs and scripts, each in a
//! fresh VM with ublk_drv, under a hard limit, with kselftest exit codes (0 pass, 4 skip, else
//! fail), freeze-frames on a hang, splat scans, repeats, shards and the reports of every
//! suite (`session::run`). Exit codes as vm-e2e's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::image::{tools, Image};
use crate::session::outcome::Outcome;
use crate::session::shard::{self, RunKey};
use crate::session::{self, Context, Options, Run, Unit};
use crate::util::{bad_input, Result};
use crate::vm::accel::Choice;
use crate::vmtest::run::{self as vmrun, last_line, Content, Env, Ship, Test};

/// Where the tests live in the guest (each runs from there).
const GUEST_DIR: &str = "/root/tests";
/// A test's limit when `--timeout` is not given, in KVM seconds (× the limits scale).
const DEFAULT_TIMEOUT_S: u64 = 120;
/// Largest test file shipped (a static test binary with debug info is tens of MiB).
const MAX_TEST_BYTES: u64 = 512 << 20;
/// Most tests in one session.
const MAX_TESTS: usize = 1000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one; also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    /// Test programs or scripts, each one test in its own fresh VM (run as root from
    /// /root/tests, with the guest tools layer: bash, coreutils, util-linux, fio, ...);
    /// exit 0 pass, 4 skip (kselftest), anything else fail
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub exec: Vec<PathBuf>,
    /// Kernel(s), comma-separated: locked names (debian-6.12, debian-7.2), host or a PATH;
    /// every test runs on each [default: debian]
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// VMs at once
    #[arg(short = 'j', long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Runs of each test (k/N flakiness per test)
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Hard limit per test in seconds, taken as given [default: 120 x the limits scale]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Multiply the default limit by F [default: 1 under KVM, 2 under TCG]
    #[arg(long, value_name = "F", value_parser = crate::vm::limits::parse_scale)]
    pub timeout_scale: Option<f64>,
    /// A kernel-log substring that is known and not a failure; repeatable
    #[arg(long, value_name = "TEXT")]
    pub expect_splat: Vec<String>,
    /// List the runs and exit
    #[arg(long)]
    pub list: bool,
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Run only shard K of N of the (test x kernel x repeat) runs (see vm-e2e --shard);
    /// `report merge` joins the shards' reports
    #[arg(long, value_name = "K/N")]
    pub shard: Option<shard::Shard>,
    /// Earlier sessions' summary.json (file or directory) whose durations balance the shards
    #[arg(long, value_name = "PATH")]
    pub durations: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<i32> {
    crate::image::fetch::set_locked(args.locked);
    let tests = check_files(&args.exec)?;
    let opts = Options {
        tool: "vm-test",
        reports: "test",
        jobs: args.jobs,
        repeat: args.repeat,
        seed: None,
        shard: args.shard,
        durations: args.durations.clone(),
        list: args.list,
        accel: args.accel,
        timeout_scale: args.timeout_scale,
    };
    let mut suite = Programs {
        tests,
        tools: None,
        args,
    };
    session::run(&mut suite, &opts)
}

/// One test: its name (the file name) and the file as given.
struct Program {
    name: String,
    path: PathBuf,
}

/// Every test file exists, is a regular file within its bound, and has its own name.
fn check_files(paths: &[PathBuf]) -> Result<Vec<Program>> {
    if paths.len() > MAX_TESTS {
        return Err(bad_input(format!(
            "{} tests given; at most {MAX_TESTS}",
            paths.len()
        )));
    }
    let mut seen: BTreeMap<String, &Path> = BTreeMap::new();
    let mut out = Vec::new();
    for p in paths {
        let meta =
            std::fs::metadata(p).map_err(|e| bad_input(format!("--exec {}: {e}", p.display())))?;
        if !meta.is_file() || meta.len() > MAX_TEST_BYTES {
            return Err(bad_input(format!(
                "--exec {}: not a regular file of at most {} MiB",
                p.display(),
                MAX_TEST_BYTES >> 20
            )));
        }
        let name = (p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| plain_name(n))
            .ok_or_else(|| {
                bad_input(format!(
                    "--exec {}: name the file with letters, digits, `-`, `_` and `.` only (at most 128, not starting with `.`)",
                    p.display()
                ))
            })?;
        if let Some(other) = seen.insert(name.clone(), p) {
            return Err(bad_input(format!(
                "--exec {} and {} are both named `{name}`: results would merge; rename one",
                other.display(),
                p.display()
            )));
        }
        out.push(Program {
            name,
            path: p.clone(),
        });
    }
    Ok(out)
}

/// A test's name as the guest path, the reports and the shell see it: nothing to escape.
fn plain_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The user's test programs: vm-test's suite.
struct Programs {
    args: Args,
    tests: Vec<Program>,
    tools: Option<tools::Layer>,
}

impl Programs {
    fn env<'a>(&'a self, run: &'a Run<usize>) -> Env<'a> {
        let limits = run.ctx.limits;
        Env {
            kernel: &run.key.kernel,
            image: run.image,
            tools: self.tools.as_ref().expect("prepared"),
            accel: run.ctx.accel,
            timeout_s: (self.args.timeout).unwrap_or(limits.secs(DEFAULT_TIMEOUT_S)),
            run: run.key.repeat,
            expect_splats: &self.args.expect_splat,
        }
    }

    fn kernels(&self) -> Vec<String> {
        match self.args.kernel.is_empty() {
            true => vec![crate::image::kernel::DEFAULT_KERNEL.to_string()],
            false => self.args.kernel.clone(),
        }
    }
}

impl session::Suite for Programs {
    type Test = usize;

    /// test × kernel, each estimated by its limit.
    fn units(&self) -> Vec<Unit<usize>> {
        let limit_s = self.args.timeout.unwrap_or(DEFAULT_TIMEOUT_S);
        let mut units = Vec::new();
        for (i, t) in self.tests.iter().enumerate() {
            units.extend(self.kernels().into_iter().map(|k| Unit {
                test: i,
                key: RunKey::new(&t.name, "", &k, 1),
                estimate_s: limit_s,
            }));
        }
        units
    }

    fn list_line(&self, _test: &usize, key: &RunKey) -> String {
        format!("{} {} #{}", key.test, key.kernel, key.repeat)
    }

    fn prepare(
        &mut self,
        _images: &BTreeMap<String, Arc<Image>>,
        _used: &[&Unit<usize>],
    ) -> Result<()> {
        self.tools = Some(tools::layer(&["bash".into()])?);
        Ok(())
    }

    fn dir_label(&self, r: &Run<usize>) -> String {
        let name = &self.tests[*r.test].name;
        format!("test-{name}-{}", crate::util::slug(&r.key.kernel))
    }

    fn attempt(&self, r: &Run<usize>, dir: &Path) -> (Outcome, bool) {
        let t = &self.tests[*r.test];
        let test = Test {
            name: &t.name,
            dir: GUEST_DIR,
            files: vec![Ship {
                path: t.name.clone(),
                content: Content::Host(t.path.clone()),
            }],
            command: format!("exec ./{}", t.name),
            step: &t.name,
            servers: &[],
            recheck: Box::new(|| unchanged(t)),
            skip_reason: Box::new(|out| {
                last_line(out, "exit 4 (kselftest skip); the test printed no reason")
            }),
        };
        vmrun::attempt(&test, &self.env(r), dir)
    }

    fn stamp(&self, r: &Run<usize>, outcome: &mut Outcome) {
        vmrun::stamp(&self.env(r), "", outcome)
    }

    fn select_run(&self, r: &Run<usize>) -> Vec<String> {
        let t = &self.tests[*r.test];
        let path = t.path.display().to_string();
        vec![
            "--exec".into(),
            path,
            "--kernel".into(),
            r.key.kernel.clone(),
        ]
    }

    /// The tests that did not pass (or all) on the session's kernels, as often.
    fn select_session(&self, ctx: &Context, outcomes: &[Outcome]) -> Vec<String> {
        let failed = |t: &&Program| {
            (outcomes.iter()).any(|o| o.scenario == t.name && o.verdict.wants_rerun())
        };
        let mut chosen: Vec<&Program> = self.tests.iter().filter(failed).collect();
        if chosen.is_empty() {
            chosen = self.tests.iter().collect();
        }
        let mut words = vec!["--exec".to_string()];
        words.extend(chosen.iter().map(|t| t.path.display().to_string()));
        let kernels: Vec<&str> = ctx.images.keys().map(String::as_str).collect();
        words.extend(["--kernel".into(), kernels.join(",")]);
        if ctx.repeat > 1 {
            words.extend(["--repeat".into(), ctx.repeat.to_string()]);
        }
        words
    }

    /// `--timeout`, `--expect-splat` as given.
    fn flags(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(t) = self.args.timeout {
            v.extend(["--timeout".into(), t.to_string()]);
        }
        for e in &self.args.expect_splat {
            v.extend(["--expect-splat".into(), e.clone()]);
        }
        v
    }

    fn record(&self, r: &Run<usize>) -> (&'static str, serde_json::Value) {
        let t = &self.tests[*r.test];
        let extra = serde_json::json!({ "program": t.path.display().to_string() });
        ("test-result.json", extra)
    }
}

/// A test file is still a regular file within its bound when its VM boots.
fn unchanged(t: &Program) -> std::result::Result<(), String> {
    match std::fs::metadata(&t.path) {
        Ok(m) if m.is_file() && m.len() <= MAX_TEST_BYTES => Ok(()),
        Ok(_) => Err(format!("{} changed into something else", t.path.display())),
        Err(e) => Err(format!("{}: {e}", t.path.display())),
    }
}
