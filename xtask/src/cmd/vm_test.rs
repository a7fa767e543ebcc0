//! `cargo xtask vm-test --exec FILE... | --cargo PATH | --go PATH | --blktests PATH [-- ARGS]`:
//! a project's own tests, each in a fresh VM with ublk_drv, under a hard limit: programs and
//! scripts with kselftest exit codes (0 pass, 4 skip, else fail), a Rust package's tests one
//! by one (libtest's result; `#[ignore]` and a "skipping:" line are skips), a Go module's, or a
//! blktests checkout's (`./check`'s `[passed]`/`[not run]`/`[failed]`); freeze-frames on a
//! hang, splat scans, repeats, shards and the reports of every suite (`session::run`). Exit
//! codes as vm-e2e's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::image::{tools, Image};
use crate::runs::Verdict;
use crate::session::outcome::Outcome;
use crate::session::shard::RunKey;
use crate::session::{self, Context, Run, Unit};
use crate::util::{bad_input, Result};
use crate::vmtest::blktests::{self, Checkout};
use crate::vmtest::cargo::{self, Built};
use crate::vmtest::go;
use crate::vmtest::run::{self as vmrun, kselftest, last_line, Content, Env, Ship, Test};

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
    #[command(flatten)]
    pub session: session::SessionArgs,
    #[command(flatten)]
    pub packages: crate::image::extra::Request,
    /// Test programs or scripts, each one test in its own fresh VM (run as root from
    /// /root/tests, with the guest tools layer: bash, coreutils, util-linux, fio, ...);
    /// exit 0 pass, 4 skip (kselftest), anything else fail
    #[arg(long, value_name = "FILE", num_args = 1.., required_unless_present_any = ["cargo", "go", "blktests"], conflicts_with_all = ["cargo", "go", "blktests"])]
    pub exec: Vec<PathBuf>,
    /// A Rust package (its directory): its tests built static on the host (`cargo test
    /// --no-run`, `+crt-static`), each test run alone in its own fresh VM (`--exact`), with the
    /// package's bins and examples at the paths cargo gave them
    #[arg(long, value_name = "PATH", conflicts_with_all = ["go", "blktests"])]
    pub cargo: Option<PathBuf>,
    /// A Go module (its directory): each package's tests built static on the host (`go test
    /// -c`, CGO off, a locked Debian Go toolchain, offline), each test run alone in its own
    /// fresh VM (`-test.run '^NAME$'`) from its package directory; after `--`: packages
    #[arg(long, value_name = "PATH", conflicts_with = "blktests")]
    pub go: Option<PathBuf>,
    /// A blktests checkout (its directory): each test alone in its own fresh VM through its
    /// `./check`, with `src/miniublk` built static (or `--server rublk`); after `--`: groups
    /// or tests as `./check` takes them (default `ublk`)
    #[arg(long, value_name = "PATH")]
    pub blktests: Option<PathBuf>,
    /// `--blktests`: the server blktests drives instead of its miniublk, from a profile whose
    /// binary is named `rublk` (blktests runs rublk when one is on PATH)
    #[arg(long, value_name = "NAME|PATH", requires = "blktests")]
    pub server: Option<String>,
    /// `--cargo`, `--go`, `--blktests`: run only this test (as the reports name it); repeatable
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// `--cargo`: a line of a passing test's output matching this makes it a skip
    #[arg(long, value_name = "REGEX", default_value = "skipping:")]
    pub skip_pattern: String,
    /// `--cargo`: arguments for `cargo test --no-run` (features, `-p NAME`, `--test NAME`);
    /// `--go`: the packages to test (default `./...`); `--blktests`: groups or tests
    /// (default `ublk`)
    #[arg(last = true, value_name = "CARGO ARGS | GO PACKAGES | BLKTESTS TESTS")]
    pub cargo_args: Vec<String>,
    /// Kernel(s), comma-separated: locked names (debian-6.12, debian-7.2), host or a PATH;
    /// every test runs on each [default: debian]
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Hard limit per test in seconds, taken as given [default: 120 x the limits scale]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// A kernel-log substring that is known and not a failure; repeatable
    #[arg(long, value_name = "TEXT")]
    pub expect_splat: Vec<String>,
}

pub fn run(mut args: Args) -> Result<i32> {
    let opts = args.session.options("vm-test", "test", None);
    crate::vmtest::run::check_jobs(opts.jobs)?;
    crate::image::extra::check_names(&args.packages.packages)?;
    if let (Some(dir), true) = (&args.cargo, args.packages.is_empty()) {
        args.packages = cargo::asked_packages(dir)?;
    }
    let skip = skip_regex(&args.skip_pattern)?;
    if !args.only.is_empty() && !args.exec.is_empty() {
        return Err(bad_input(
            "--only names a test of --cargo, --go or --blktests".into(),
        ));
    }
    if args.server.is_some() && args.blktests.is_none() {
        // clap's `requires` is not enforced beside `--exec`'s conflicts: checked here.
        return Err(bad_input(
            "--server names the server of --blktests (the other suites start their own)".into(),
        ));
    }
    let server = args.server.as_deref().map(blktests_server).transpose()?;
    let (mut go_built, mut built, mut checkout) = (None, None, None);
    let tests = match (&args.cargo, &args.go, &args.blktests) {
        (Some(dir), _, _) => {
            let (tests, b) = cargo_tests(dir, &args.cargo_args, &args.only)?;
            built = Some(b);
            tests
        }
        (None, Some(dir), _) => {
            let (tests, b) = go_tests(dir, &args.cargo_args, &args.only)?;
            go_built = Some(b);
            tests
        }
        (None, None, Some(dir)) => {
            let c = blktests::open(dir, &args.cargo_args)?;
            let names = c
                .tests
                .iter()
                .map(|t| (t.clone(), Kind::Blktests as fn(usize) -> Kind));
            let tests = selected(names, &args.only, dir, "GROUP/NNN")?;
            checkout = Some(c);
            tests
        }
        (None, None, None) => check_files(&args.exec)?,
    };
    let mut suite = Programs {
        tests,
        built,
        go_built,
        checkout,
        server,
        skip,
        tools: None,
        args,
    };
    session::run(&mut suite, &opts)
}

/// `--skip-pattern` compiled, or one line saying why not (the regex crate's message spans
/// several lines, with a caret under the offending character).
fn skip_regex(pattern: &str) -> Result<regex::Regex> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let why = text.lines().last().unwrap_or("").trim();
            let why = why.strip_prefix("error: ").unwrap_or(why);
            bad_input(format!(
                "--skip-pattern {}: not a regular expression: {why}",
                crate::text::term(pattern)
            ))
        })
}

/// One test: its name in the reports and what it is.
struct Program {
    name: String,
    kind: Kind,
}

enum Kind {
    /// `--exec`: the file as given.
    Exec(PathBuf),
    /// `--cargo`: a test of the built package (`Built::tests`).
    Cargo(usize),
    /// `--go`: a test of the built module (`go::Built::tests`).
    Go(usize),
    /// `--blktests`: a test of the checkout (`Checkout::tests`).
    Blktests(usize),
}

/// `--server`: a profile blktests can drive (its binary named `rublk`), built for the guest.
fn blktests_server(name: &str) -> Result<crate::server::Profile> {
    let mut p = crate::server::Profile::resolve(name)?;
    p.prepare(&crate::image::recipe::Recipe::load()?)?;
    let bin = (p.host_binary.as_ref())
        .and_then(|b| b.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    if bin.as_deref() != Some("rublk") {
        return Err(bad_input(format!(
            "--server {}: blktests drives its own miniublk or a `rublk` on PATH; this profile's binary is {} (give a rublk profile, or no --server)",
            crate::text::term(name),
            bin.as_deref().unwrap_or("built into the image")
        )));
    }
    Ok(p)
}

/// The package's tests, built; each one a test of the session.
fn cargo_tests(
    dir: &Path,
    cargo_args: &[String],
    only: &[String],
) -> Result<(Vec<Program>, Built)> {
    let built = cargo::build(dir, cargo_args, &build_dir("cargo", dir))?;
    let names = built.tests.iter().map(|t| t.id(&built));
    let tests = selected(
        names.map(|n| (n, Kind::Cargo as fn(usize) -> Kind)),
        only,
        dir,
        "TARGET::PATH",
    )?;
    Ok((tests, built))
}

/// The module's tests, built; each one a test of the session.
fn go_tests(dir: &Path, packages: &[String], only: &[String]) -> Result<(Vec<Program>, go::Built)> {
    let built = go::build(dir, packages, &build_dir("go-build", dir))?;
    let names = built.tests.iter().map(|t| t.id(&built));
    let tests = selected(
        names.map(|n| (n, Kind::Go as fn(usize) -> Kind)),
        only,
        dir,
        "IMPORT/PATH.TestName",
    )?;
    Ok((tests, built))
}

/// A package's own build directory under target/vm-test/ (by its path).
fn build_dir(what: &str, dir: &Path) -> PathBuf {
    let key = crate::util::key_of(&[("package", dir.display().to_string().as_bytes())]);
    crate::util::target_dir()
        .join("vm-test")
        .join(what)
        .join(&key[..16])
}

/// The built tests as programs, narrowed to `--only` (every name given must be one of them).
fn selected(
    tests: impl Iterator<Item = (String, fn(usize) -> Kind)>,
    only: &[String],
    dir: &Path,
    names_are: &str,
) -> Result<Vec<Program>> {
    let tests: Vec<Program> = (tests.enumerate())
        .map(|(i, (name, kind))| Program {
            name,
            kind: kind(i),
        })
        .filter(|p| only.is_empty() || only.contains(&p.name))
        .collect();
    if let Some(missing) = only.iter().find(|n| !tests.iter().any(|t| &t.name == *n)) {
        return Err(bad_input(format!(
            "--only {missing}: no such test in {} (names are {names_are}, as `--list` prints)",
            dir.display()
        )));
    }
    Ok(tests)
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
            kind: Kind::Exec(p.clone()),
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
    /// `--cargo`: the package, built.
    built: Option<Built>,
    /// `--go`: the module, built.
    go_built: Option<go::Built>,
    /// `--blktests`: the checkout, its programs built; `--server`: the rublk it drives.
    checkout: Option<Checkout>,
    server: Option<crate::server::Profile>,
    /// `--skip-pattern`.
    skip: regex::Regex,
    tools: Option<tools::Layer>,
}

impl Programs {
    fn env<'a>(&'a self, run: &'a Run<usize>) -> Env<'a> {
        let timeout_s = (self.args.timeout).unwrap_or(run.ctx.limits.secs(DEFAULT_TIMEOUT_S));
        let tools = self.tools.as_ref().expect("prepared");
        Env::of(run, tools, timeout_s, &self.args.expect_splat)
            .traced(!self.args.session.no_kernel_trace)
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
        let packages = match self.checkout {
            Some(_) => blktests::packages(&self.args.packages),
            None => self.args.packages.clone(),
        };
        self.tools = Some(crate::image::extra::layer(&["bash".into()], &packages)?);
        Ok(())
    }

    fn dir_label(&self, r: &Run<usize>) -> String {
        let name = &self.tests[*r.test].name;
        format!(
            "test-{}-{}",
            crate::util::slug(name),
            crate::util::slug(&r.key.kernel)
        )
    }

    /// An `#[ignore]`d cargo test is a skip, without a VM.
    fn before_boot(&self, r: &Run<usize>) -> Option<Outcome> {
        let Kind::Cargo(i) = self.tests[*r.test].kind else {
            return None;
        };
        if !self.built.as_ref()?.tests[i].ignored {
            return None;
        }
        let t = &self.tests[*r.test];
        let mut out = Outcome::named(&t.name, r.key.repeat, 0, Path::new(""), r.image.hash());
        out.kernel = r.key.kernel.clone();
        out.kernel_release = r.image.manifest.kernel_release.clone();
        let why = "#[ignore]d (run it with `cargo test -- --ignored` on a machine with ublk)";
        Some(out.finish(std::time::Instant::now(), Verdict::Skip, Some(why.into())))
    }

    fn attempt(&self, r: &Run<usize>, dir: &Path) -> (Outcome, bool) {
        let t = &self.tests[*r.test];
        let test = match &t.kind {
            Kind::Exec(path) => exec_test(t, path),
            Kind::Cargo(i) => {
                cargo_test(self.built.as_ref().expect("built"), *i, &t.name, &self.skip)
            }
            Kind::Go(i) => go_test(self.go_built.as_ref().expect("built"), *i, &t.name),
            Kind::Blktests(i) => self.blktests_test(*i, &t.name),
        };
        vmrun::attempt(&test, &self.env(r), dir)
    }

    fn stamp(&self, r: &Run<usize>, outcome: &mut Outcome) {
        vmrun::stamp(&self.env(r), "", outcome)
    }

    fn select_run(&self, r: &Run<usize>) -> Vec<String> {
        let mut words = self.selection(&[&self.tests[*r.test]]);
        words.extend(["--kernel".into(), r.key.kernel.clone()]);
        words
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
        let mut words = self.selection(&chosen);
        let kernels: Vec<&str> = ctx.images.keys().map(String::as_str).collect();
        words.extend(["--kernel".into(), kernels.join(",")]);
        if ctx.repeat > 1 {
            words.extend(["--repeat".into(), ctx.repeat.to_string()]);
        }
        words
    }

    /// `--timeout`, `--expect-splat`, `--skip-pattern`, `--package(-lock)` as given; cargo's
    /// arguments last.
    fn flags(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.args.cargo.is_some() && self.args.skip_pattern != "skipping:" {
            v.extend(["--skip-pattern".into(), self.args.skip_pattern.clone()]);
        }
        if let Some(t) = self.args.timeout {
            v.extend(["--timeout".into(), t.to_string()]);
        }
        if let Some(s) = &self.args.server {
            v.extend(["--server".into(), s.clone()]);
        }
        for e in &self.args.expect_splat {
            v.extend(["--expect-splat".into(), e.clone()]);
        }
        if !self.args.packages.packages.is_empty() {
            v.extend(["--package".into(), self.args.packages.packages.join(",")]);
        }
        if let Some(l) = &self.args.packages.lock {
            v.extend(["--package-lock".into(), l.display().to_string()]);
        }
        v.extend(self.args.session.run_flags());
        if self.args.exec.is_empty() && !self.args.cargo_args.is_empty() {
            v.push("--".into());
            v.extend(self.args.cargo_args.iter().cloned());
        }
        v
    }

    fn record(&self, r: &Run<usize>) -> (&'static str, serde_json::Value) {
        let extra = match &self.tests[*r.test].kind {
            Kind::Exec(path) => serde_json::json!({ "program": path.display().to_string() }),
            Kind::Cargo(i) => {
                let built = self.built.as_ref().expect("built");
                let bin = &built.binaries[built.tests[*i].binary];
                serde_json::json!({
                    "binary": bin.path.display().to_string(),
                    "package": built.package_dir.display().to_string(),
                })
            }
            Kind::Go(i) => {
                let built = self.go_built.as_ref().expect("built");
                let bin = &built.binaries[built.tests[*i].binary];
                serde_json::json!({
                    "binary": bin.path.display().to_string(),
                    "package": bin.import_path,
                })
            }
            Kind::Blktests(_) => serde_json::json!({
                "blktests": self.args.blktests.as_ref().map(|d| d.display().to_string()),
                "server": self.server.as_ref().map_or("miniublk".into(), |p| p.name.clone()),
            }),
        };
        ("test-result.json", extra)
    }
}

impl Programs {
    /// One blktests test: the checkout's files and its built programs under GUEST_DIR, the
    /// `--server`'s rublk on PATH, `./check` on the test.
    fn blktests_test<'a>(&'a self, i: usize, name: &'a str) -> Test<'a> {
        let c = self.checkout.as_ref().expect("opened");
        let under = |rel: &str| format!("{}/{rel}", blktests::GUEST_DIR);
        let mut files: Vec<Ship> = (c.files.iter())
            .map(|rel| Ship {
                path: under(rel),
                content: Content::Host(c.root.join(rel)),
            })
            .collect();
        files.extend(c.built.iter().map(|(rel, host)| Ship {
            path: under(rel),
            content: Content::Host(host.clone()),
        }));
        if let Some(p) = &self.server {
            files.extend(server_files(p));
        }
        let test = &c.tests[i];
        Test {
            name,
            dir: "/",
            files,
            command: blktests::command(test),
            step: test,
            servers: &["miniublk", "rublk"],
            recheck: Box::new(|| Ok(())),
            verdict_of: Box::new(move |st, out| {
                blktests::verdict_of(st, out, test, &self.args.expect_splat)
            }),
        }
    }

    /// The words that select `tests` again: their files (`--exec`), or the package and, when
    /// not all of its tests, each by `--only`.
    fn selection(&self, tests: &[&Program]) -> Vec<String> {
        let package = match (&self.args.cargo, &self.args.go, &self.args.blktests) {
            (Some(dir), _, _) => Some(("--cargo", dir)),
            (None, Some(dir), _) => Some(("--go", dir)),
            (None, None, Some(dir)) => Some(("--blktests", dir)),
            (None, None, None) => None,
        };
        match package {
            Some((flag, dir)) => {
                let mut words = vec![flag.to_string(), dir.display().to_string()];
                if tests.len() < self.tests.len() || !self.args.only.is_empty() {
                    for t in tests {
                        words.extend(["--only".to_string(), t.name.clone()]);
                    }
                }
                words
            }
            None => {
                let mut words = vec!["--exec".to_string()];
                for t in tests {
                    if let Kind::Exec(p) = &t.kind {
                        words.push(p.display().to_string());
                    }
                }
                words
            }
        }
    }
}

/// An `--exec` file: shipped to GUEST_DIR, run there, kselftest's codes.
fn exec_test<'a>(t: &'a Program, path: &'a Path) -> Test<'a> {
    Test {
        name: &t.name,
        dir: GUEST_DIR,
        files: vec![Ship {
            path: t.name.clone(),
            content: Content::Host(path.to_path_buf()),
        }],
        command: format!("exec ./{}", t.name),
        step: &t.name,
        servers: &[],
        recheck: Box::new(move || unchanged(path)),
        verdict_of: Box::new(|st, out| {
            kselftest(st, out, |out| {
                last_line(out, "exit 4 (kselftest skip); the test printed no reason")
            })
        }),
    }
}

/// One cargo test: its binary and the package's bins and examples at their host paths, run
/// alone from the package directory as `cargo test` would.
fn cargo_test<'a>(built: &'a Built, i: usize, name: &'a str, skip: &'a regex::Regex) -> Test<'a> {
    let t = &built.tests[i];
    let bin = &built.binaries[t.binary].path;
    let files = std::iter::once(bin)
        .chain(&built.companions)
        .map(|p| Ship {
            path: p.display().to_string().trim_start_matches('/').to_string(),
            content: Content::Host(p.clone()),
        })
        .collect();
    let pkg = crate::util::shell_line(&[built.package_dir.display().to_string()]);
    let run = crate::util::shell_line(&[
        bin.display().to_string(),
        "--exact".into(),
        t.name.clone(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]);
    Test {
        name,
        dir: "/",
        files,
        command: format!(
            "mkdir -p {pkg} && cd {pkg} && CARGO_MANIFEST_DIR={pkg} RUST_BACKTRACE=1 exec {run}"
        ),
        step: &t.name,
        servers: &[],
        recheck: Box::new(move || unchanged(bin)),
        verdict_of: Box::new(move |st, out| cargo::verdict_of(st, out, skip)),
    }
}

/// One Go test: its package's binary at its host path, run alone from the package directory.
fn go_test<'a>(built: &'a go::Built, i: usize, name: &'a str) -> Test<'a> {
    let t = &built.tests[i];
    let b = &built.binaries[t.binary];
    Test {
        name,
        dir: "/",
        files: (std::iter::once(&b.path).chain(&b.data))
            .map(|p| Ship {
                path: p.display().to_string().trim_start_matches('/').to_string(),
                content: Content::Host(p.clone()),
            })
            .collect(),
        command: go::command(b, &t.name),
        step: &t.name,
        servers: &[],
        recheck: Box::new(move || unchanged(&b.path)),
        verdict_of: Box::new(move |st, out| go::verdict_of(st, out, &t.name)),
    }
}

/// A server profile's binary on the guest's PATH (`/bin`) and its shared libraries.
fn server_files(p: &crate::server::Profile) -> Vec<Ship<'static>> {
    let Some(bin) = &p.host_binary else {
        return Vec::new();
    };
    let name = bin.file_name().unwrap_or_default().to_string_lossy();
    let mut files = vec![Ship {
        path: format!("bin/{name}"),
        content: Content::Host(bin.clone()),
    }];
    files.extend(p.host_libs.iter().map(|l| Ship {
        path: l.display().to_string().trim_start_matches('/').to_string(),
        content: Content::Host(l.clone()),
    }));
    files
}

/// A test file is still a regular file within its bound when its VM boots.
fn unchanged(path: &Path) -> std::result::Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() <= MAX_TEST_BYTES => Ok(()),
        Ok(_) => Err(format!("{} changed into something else", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}
