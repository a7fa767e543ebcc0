//! `cargo xtask vm-selftests [TEST|GROUP...]`: the kernel's own ublk selftests, each script
//! in a fresh VM under a hard limit, with freeze-frames, splat scans, flakiness over repeats
//! and the same reports as vm-e2e. Exit codes as vm-e2e's.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::image::kernel::Source;
use crate::image::{self, tools, Image};
use crate::scenario::model::KernelVersion;
use crate::selftests::run as strun;
use crate::selftests::suite::{self, Suite};
use crate::session::outcome::Outcome;
use crate::session::shard::RunKey;
use crate::session::{self, Context, Run, Unit};
use crate::util::Result;
use crate::vmtest::run::{self as vmrun, Env};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub session: session::SessionArgs,
    /// Tests (null_01, test_null_01.sh) or groups (null, generic, stress, ...); default: all
    pub names: Vec<String>,
    /// Kernel(s) to boot, comma-separated: locked names, or a kernel tree PATH (whose own suite
    /// runs) [default: every locked kernel whose lock carries the suite]
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Run this suite instead of each booted kernel's own: a locked kernel's (e.g. 7.2's on
    /// 6.12) or a kernel source tree's (its tools/testing/selftests/ublk)
    #[arg(long, value_name = "NAME|PATH")]
    pub suite: Option<String>,
    /// Hard limit per test script in seconds, taken as given [default: the suite's own (150)
    /// x the limits scale]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Also run this script of your own with the suite (test_<group>_<nn>.sh; it may source
    /// test_common.sh and use kublk like the suite's own); repeatable
    #[arg(long, value_name = "FILE")]
    pub script: Vec<std::path::PathBuf>,
    /// A kernel-log substring that is known and not a failure (e.g. a splat your kernel is
    /// known for); repeatable
    #[arg(long, value_name = "TEXT")]
    pub expect_splat: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let opts = args.session.options("vm-selftests", "selftests", None);
    crate::vmtest::run::check_jobs(opts.jobs)?;
    // Inputs first: a bad --script is refused before any suite is built.
    let extra = read_scripts(&args.script)?;
    let kernels = kernels_to_boot(&args.kernel)?;
    let suites = suites_for(&kernels, args.suite.as_deref())?;
    let first = suites.values().next().expect("at least one kernel");
    let mut all = first.manifest.tests.clone();
    all.extend(extra.iter().map(|(n, _)| n.clone()));
    let tests = select(&all, &args.names)?;
    let mut suite = Selftests {
        suites,
        tests,
        extra,
        tools: None,
        args,
    };
    session::run(&mut suite, &opts)
}

/// The kernel's ublk selftests on each kernel: vm-selftests' suite.
struct Selftests {
    args: Args,
    /// kernel name → the suite it runs.
    suites: BTreeMap<String, Suite>,
    /// The scripts selected, in the suite's order.
    tests: Vec<String>,
    /// `--script` files: (name, bytes).
    extra: Vec<(String, Vec<u8>)>,
    tools: Option<tools::Layer>,
}

impl Selftests {
    fn env<'a>(&'a self, run: &'a Run<String>) -> Env<'a> {
        let suite = &self.suites[&run.key.kernel];
        let timeout_s =
            (self.args.timeout).unwrap_or(run.ctx.limits.secs(suite.manifest.settings_timeout_s));
        let tools = self.tools.as_ref().expect("prepared");
        Env::of(run, tools, timeout_s, &self.args.expect_splat)
            .traced(!self.args.session.no_kernel_trace)
    }
}

impl session::Suite for Selftests {
    type Test = String;

    /// script × kernel, each estimated by `--timeout` or the suite's usual limit.
    fn units(&self) -> Vec<Unit<String>> {
        let limit_s = self.args.timeout.unwrap_or(150);
        let mut units = Vec::new();
        for t in &self.tests {
            units.extend(self.suites.keys().map(|k| Unit {
                test: t.clone(),
                key: RunKey::new(t, "kublk", k, 1),
                estimate_s: limit_s,
            }));
        }
        units
    }

    fn list_intro(&self, sharded: bool) -> bool {
        if !sharded {
            let first = self.suites.values().next().expect("at least one kernel");
            print_list(first, &self.tests);
        }
        sharded
    }

    fn list_line(&self, test: &String, key: &RunKey) -> String {
        format!("{test} {} #{}", key.kernel, key.repeat)
    }

    fn prepare(
        &mut self,
        images: &BTreeMap<String, Arc<Image>>,
        _used: &[&Unit<String>],
    ) -> Result<()> {
        self.tools = Some(tools::layer(&["fio".into(), "bash".into()])?);
        for (k, image) in images {
            warn_if_newer(k, image, &self.suites[k]);
        }
        Ok(())
    }

    fn dir_label(&self, r: &Run<String>) -> String {
        let id = suite::test_id(r.test);
        format!("selftest-{id}-{}", crate::util::slug(&r.key.kernel))
    }

    fn attempt(&self, r: &Run<String>, dir: &std::path::Path) -> (Outcome, bool) {
        let suite = &self.suites[&r.key.kernel];
        let env = self.env(r);
        let test = strun::test(suite, r.test, &self.extra, env.tools);
        vmrun::attempt(&test, &env, dir)
    }

    fn stamp(&self, r: &Run<String>, outcome: &mut Outcome) {
        vmrun::stamp(&self.env(r), "kublk", outcome)
    }

    fn select_run(&self, r: &Run<String>) -> Vec<String> {
        let id = suite::test_id(r.test).to_string();
        vec![id, "--kernel".into(), r.key.kernel.clone()]
    }

    /// The tests that did not pass (or all) on the session's kernels.
    fn select_session(&self, ctx: &Context, outcomes: &[Outcome]) -> Vec<String> {
        let bad = |o: &&Outcome| o.verdict.wants_rerun();
        let mut ids: Vec<String> = outcomes
            .iter()
            .filter(bad)
            .map(|o| o.scenario.clone())
            .collect();
        ids.dedup();
        if ids.is_empty() {
            ids = (self.tests.iter())
                .map(|t| suite::test_id(t).to_string())
                .collect();
        }
        let kernels: Vec<&str> = ctx.images.keys().map(String::as_str).collect();
        ids.extend(["--kernel".into(), kernels.join(",")]);
        ids
    }

    /// `--suite`, `--timeout`, `--expect-splat`, `--script` as given.
    fn flags(&self) -> Vec<String> {
        let args = &self.args;
        let mut v = Vec::new();
        if let Some(s) = &args.suite {
            v.extend(["--suite".into(), s.clone()]);
        }
        if let Some(t) = args.timeout {
            v.extend(["--timeout".into(), t.to_string()]);
        }
        for e in &args.expect_splat {
            v.extend(["--expect-splat".into(), e.clone()]);
        }
        for p in &args.script {
            v.extend(["--script".into(), p.display().to_string()]);
        }
        v.extend(args.session.run_flags());
        v
    }

    fn record(&self, r: &Run<String>) -> (&'static str, serde_json::Value) {
        let suite = &self.suites[&r.key.kernel];
        let extra = serde_json::json!({ "suite": &suite.manifest.source_version });
        ("selftest-result.json", extra)
    }
}

/// `--script` files, named like the suite's (`test_<group>_<nn>.sh`), at most 1 MiB each.
fn read_scripts(paths: &[std::path::PathBuf]) -> Result<Vec<(String, Vec<u8>)>> {
    paths
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ok = name.starts_with("test_")
                && name.ends_with(".sh")
                && name.matches('_').count() >= 2;
            if !ok {
                return Err(crate::util::bad_input(format!(
                    "--script {}: name it test_<group>_<nn>.sh like the suite's scripts",
                    p.display()
                )));
            }
            let data = crate::input::read_bytes(p, 4 << 20).map_err(|e| format!("--script {e}"))?;
            if data.len() > 1 << 20 {
                return Err(crate::util::bad_input(format!(
                    "--script {}: larger than 1 MiB",
                    p.display()
                )));
            }
            Ok((name, data))
        })
        .collect()
}

/// The kernels asked for, or every locked kernel whose lock carries the suite.
fn kernels_to_boot(cli: &[String]) -> Result<Vec<String>> {
    if !cli.is_empty() {
        return Ok(cli.to_vec());
    }
    let recipe = image::recipe::Recipe::load()?;
    let with: Vec<String> = recipe
        .kernels
        .iter()
        .filter(|k| {
            image::recipe::KernelLock::load(&k.lock_path()).is_ok_and(|l| !l.selftests.is_empty())
        })
        .map(|k| k.name.clone())
        .collect();
    if with.is_empty() {
        return Err("no locked kernel carries the ublk selftests; lock one >= 6.15 with `cargo xtask kernel-lock --upgrade`".into());
    }
    Ok(with)
}

/// kernel → the suite it runs (its own, or `--suite`'s).
fn suites_for(kernels: &[String], suite: Option<&str>) -> Result<BTreeMap<String, Suite>> {
    let mut out = BTreeMap::new();
    for k in kernels {
        let from = suite.unwrap_or(k);
        let built = match matches!(Source::parse(from), Source::Debian(_)) {
            true => suite::for_kernel(from)?,
            // A kernel tree (`--kernel PATH` boots its kernel, `--suite PATH` takes its suite).
            false => suite::for_tree(&suite_tree(from)?)?,
        };
        out.insert(k.clone(), built);
    }
    Ok(out)
}

/// The source tree a PATH names: the tree itself, or the tree above a bzImage or an
/// installed kernel (`boot/vmlinuz-*` trees carry no sources: then say so).
fn suite_tree(path: &str) -> Result<std::path::PathBuf> {
    let p = std::path::Path::new(path);
    let tree = if p.is_file() {
        p.ancestors()
            .find(|a| a.join("tools/testing/selftests").is_dir())
            .map(std::path::Path::to_path_buf)
    } else {
        Some(p.to_path_buf())
    };
    tree.filter(|t| t.is_dir()).ok_or_else(|| {
        crate::util::bad_input(format!("{path}: no kernel source tree here to take the selftests from; name one with --suite PATH or a locked kernel with --suite debian-7.2"))
    })
}

fn warn_if_newer(kernel: &str, image: &Image, suite: &Suite) {
    let booted = KernelVersion::of_release(&image.manifest.kernel_release);
    let of_suite = KernelVersion::of_release(&suite.manifest.source_version);
    if let (Some(b), Some(s)) = (booted, of_suite) {
        if (s.0[0], s.0[1]) > (b.0[0], b.0[1]) {
            eprintln!(
                "vm-selftests: warning: running the {s} suite against {kernel} ({}): its scripts skip what the kernel lacks, but failures may be the suite's expectations, not bugs",
                image.manifest.kernel_release
            );
        }
    }
}

/// The scripts named (by id, file name or group), in the suite's order; all if none named.
fn select(tests: &[String], names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(tests.to_vec());
    }
    for n in names {
        let hit = tests
            .iter()
            .any(|t| t == n || suite::test_id(t) == n || suite::group_of(t) == n);
        if !hit {
            let mut groups: Vec<&str> = tests.iter().map(|t| suite::group_of(t)).collect();
            groups.dedup();
            return Err(crate::util::bad_input(format!(
                "no selftest or group {n:?}; groups: {} (`cargo xtask vm-selftests --list` shows every test)",
                groups.join(" ")
            )));
        }
    }
    Ok(tests
        .iter()
        .filter(|t| {
            names
                .iter()
                .any(|n| *t == n || suite::test_id(t) == n || suite::group_of(t) == n)
        })
        .cloned()
        .collect())
}

fn print_list(suite: &Suite, tests: &[String]) {
    println!(
        "ublk selftests of {} (linux-source {}), limit {} s each by the suite's settings:",
        suite.manifest.kernel, suite.manifest.source_version, suite.manifest.settings_timeout_s
    );
    let mut by_group: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in tests {
        by_group
            .entry(suite::group_of(t))
            .or_default()
            .push(suite::test_id(t));
    }
    for (g, ids) in by_group {
        println!("  {g:<10} {}", ids.join(" "));
    }
}
