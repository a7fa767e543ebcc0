//! The run pipeline every many-VM command uses: a suite says what its tests are and how one
//! runs in a fresh VM (`Suite`); `run` does the rest, the same for every suite.
//!
//! ```text
//!   suite.units() ─► × --repeat ─► --shard K/N (shard::select) ─► --list? print, exit 0
//!     ─► seed ─► one image per kernel ─► accelerator ─► Limits ─► header ─► suite.prepare
//!     ─► pool (-j workers): per run  suite.before_boot? (a skip, no VM)
//!                                    else retry_once(RunDir + suite.attempt in a fresh VM)
//!                          ─► suite.stamp ─► reproduce line ─► seal (record + evidence rule)
//!     ─► Session ─► summary.json, junit.xml, summary.md, the table ─► exit code
//! ```
//!
//! Exit codes (every suite's): 0 every run passed (or skipped); 1 a run failed or timed out;
//! 2 bad input; 125 no run failed but some could not be tested; 128+n interrupted.
//!
//! The session model (`report`, `outcome`) imports nothing of this module; the renderers
//! (`markdown`, `report::table`/`junit`) and `merge` depend only on it.

pub mod args;
pub mod evidence;
pub mod markdown;
pub mod merge;
pub mod outcome;
pub mod pool;
pub mod report;
pub mod shard;

#[cfg(test)]
mod toy_suite_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::image::{self, kernel::Source, Image};
use crate::runs::{RunDir, Verdict};
use crate::server::device::DeviceOverride;
use crate::util::{rfc3339_now, Result};
use crate::vm::accel::{self, Choice};
use crate::vm::limits::Limits;
use crate::vm::qemu::Accel;
pub use args::SessionArgs;
use outcome::{retry_once, Outcome};
use report::{Head, ShardInfo};
use shard::{RunKey, Shard};

/// The flags every suite's command shares, as given.
pub struct Options {
    /// The command: `vm-e2e`, `vm-selftests`; every header, reproduce line and summary's.
    pub tool: &'static str,
    /// The reports directory's name (`<time>-<reports>` under target/ublk-vm/runs).
    pub reports: &'static str,
    pub jobs: u32,
    pub repeat: u32,
    /// `--seed`; only a suite whose runs take a seed reads it (`Suite::seeded`).
    pub seed: Option<u64>,
    pub shard: Option<Shard>,
    pub durations: Option<PathBuf>,
    pub list: bool,
    pub accel: Choice,
    pub timeout_scale: Option<f64>,
}

/// One test of a suite on one kernel (and server): what the planner and the shards see.
pub struct Unit<T> {
    pub test: T,
    /// Its identity in every report; `repeat` is set by the pipeline.
    pub key: RunKey,
    /// The shards' estimate when no earlier session recorded a duration: its hard limit.
    pub estimate_s: u64,
}

/// What the pipeline decided for the whole session, shared by every run.
pub struct Context {
    pub tool: &'static str,
    /// One image per kernel the session's runs boot (as asked for → image).
    pub images: BTreeMap<String, Arc<Image>>,
    pub accel: Accel,
    pub limits: Limits,
    /// The session's seed (seeded suites only).
    pub seed: Option<u64>,
    pub repeat: u32,
    pub commit: String,
}

/// One run: a unit's test, repeat number and seed, and its kernel's image.
pub struct Run<'a, T> {
    pub test: &'a T,
    pub key: RunKey,
    pub image: &'a Image,
    /// This repeat's seed (`run_seed`); 0 for a suite that takes none.
    pub seed: u64,
    pub ctx: &'a Context,
}

/// A suite of tests that run one per fresh VM. vm-e2e (scenarios × servers) and vm-selftests
/// (the kernel's scripts) implement it; a new suite is one file.
pub trait Suite: Sync {
    type Test: Sync;

    /// Every test × kernel (× server) of one repeat, in report order.
    fn units(&self) -> Vec<Unit<Self::Test>>;

    /// Whether runs take a seed (then `--shard` needs `--seed`, and repeats derive theirs).
    fn seeded(&self) -> bool {
        false
    }

    /// `--list`: what to print before the runs (e.g. the suite's groups); false: the runs
    /// themselves are not listed (an unsharded list said it all).
    fn list_intro(&self, _sharded: bool) -> bool {
        true
    }

    /// `--list`: one run's line.
    fn list_line(&self, _test: &Self::Test, key: &RunKey) -> String {
        format!("{} {} {} #{}", key.test, key.server, key.kernel, key.repeat)
    }

    /// Everything the runs need besides images (servers built, tools layer), once, before
    /// any VM; only for `used`, the units this invocation (this shard) runs.
    fn prepare(
        &mut self,
        images: &BTreeMap<String, Arc<Image>>,
        used: &[&Unit<Self::Test>],
    ) -> Result<()>;

    /// `--queues`/`--depth`, recorded in the reports.
    fn overrides(&self) -> DeviceOverride {
        DeviceOverride::default()
    }

    /// A run decided before any VM: a skip, with its outcome complete.
    fn before_boot(&self, _run: &Run<Self::Test>) -> Option<Outcome> {
        None
    }

    /// The run directory's readable name (`-r<repeat>` and `-retry` are added).
    fn dir_label(&self, run: &Run<Self::Test>) -> String;

    /// One attempt in a fresh VM whose evidence goes to `dir`: its outcome, and whether the
    /// test itself started (a VM that died before gets one more attempt).
    fn attempt(&self, run: &Run<Self::Test>, dir: &Path) -> (Outcome, bool);

    /// What every attempted run's outcome records of the suite (server, kernel, tools).
    fn stamp(&self, run: &Run<Self::Test>, outcome: &mut Outcome);

    /// The words that select this run alone (its name, `--kernel`, `--seed`, ...).
    fn select_run(&self, run: &Run<Self::Test>) -> Vec<String>;

    /// The words that select what did not pass (or everything) for the session's line.
    fn select_session(&self, ctx: &Context, outcomes: &[Outcome]) -> Vec<String>;

    /// The flags beside the selection and the limits that decide what a run does.
    fn flags(&self) -> Vec<String>;

    /// The run's record file in its directory, and the suite's fields beside the outcome.
    fn record(&self, run: &Run<Self::Test>) -> (&'static str, serde_json::Value);
}

/// Runs the suite's session: the pipeline of the module doc.
pub fn run<S: Suite>(suite: &mut S, opts: &Options) -> Result<i32> {
    let units = suite.units();
    let (work, shard_info) = plan(&units, opts)?;
    if opts.list {
        print_list(suite, &units, &work, shard_info.as_ref());
        return Ok(0);
    }
    let seed = session_seed(suite.seeded(), opts)?;
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    let images = build_images(&units, &work)?;
    let (accel, accel_reason) = match images.values().next() {
        Some(first) => accel::choose(opts.accel, first)?,
        None => (Accel::Tcg, "no run in this shard".to_string()),
    };
    let limits = Limits::new(accel, opts.timeout_scale);
    let commit = crate::host::git::commit();
    announce(opts, &work, seed, &commit, &images, &accel_reason, limits);
    let mut used: Vec<usize> = work.iter().map(|w| w.unit).collect();
    used.sort();
    used.dedup();
    let used: Vec<&Unit<S::Test>> = used.iter().map(|&i| &units[i]).collect();
    suite.prepare(&images, &used)?;
    let ctx = Context {
        tool: opts.tool,
        images,
        accel,
        limits,
        seed,
        repeat: opts.repeat,
        commit,
    };
    let head = head(suite, opts, &ctx, started_at, shard_info);
    let suite = &*suite;
    let outcomes = pool::run_pool(work, opts.jobs as usize, opts.tool, |w| {
        one_run(suite, &ctx, &units[w.unit], w.repeat)
    });
    Ok(pool::conclude(
        head,
        t0,
        outcomes,
        |o| reproduce(suite, &ctx, suite.select_session(&ctx, o)),
        opts.reports,
    ))
}

/// One run to make: a unit and its repeat.
struct Work {
    unit: usize,
    repeat: u32,
}

/// Every unit × repeat (repeats outermost), or this shard's.
fn plan<T>(units: &[Unit<T>], opts: &Options) -> Result<(Vec<Work>, Option<ShardInfo>)> {
    let mut work = Vec::new();
    for repeat in 1..=opts.repeat {
        work.extend((0..units.len()).map(|unit| Work { unit, repeat }));
    }
    let Some(sh) = opts.shard else {
        return Ok((work, None));
    };
    let durations = match &opts.durations {
        Some(p) => shard::Durations::load(p)?,
        None => shard::Durations::none(),
    };
    let keys: Vec<(RunKey, u64)> = work
        .iter()
        .map(|w| (key_of(&units[w.unit], w.repeat), units[w.unit].estimate_s))
        .collect();
    let planned = shard::planned(&durations, keys);
    let (work, info) = shard::select(work, &planned, sh, &durations.source);
    Ok((work, Some(info)))
}

fn key_of<T>(unit: &Unit<T>, repeat: u32) -> RunKey {
    RunKey {
        repeat,
        ..unit.key.clone()
    }
}

fn print_list<S: Suite>(
    suite: &S,
    units: &[Unit<S::Test>],
    work: &[Work],
    info: Option<&ShardInfo>,
) {
    if !suite.list_intro(info.is_some()) {
        return;
    }
    if let Some(i) = info {
        println!(
            "shard {}/{} of plan {}: {} of {} runs, ~{:.0} s of runs (estimates: {})",
            i.index, i.count, i.plan, i.runs, i.planned_runs, i.estimate_s, i.estimates_from
        );
    }
    for w in work {
        let unit = &units[w.unit];
        println!("{}", suite.list_line(&unit.test, &key_of(unit, w.repeat)));
    }
}

/// `--seed`, required with `--shard` (every shard must run the same session), else random;
/// none for a suite whose runs take no seed.
fn session_seed(seeded: bool, opts: &Options) -> Result<Option<u64>> {
    match (seeded, opts.seed, &opts.shard) {
        (false, _, _) => Ok(None),
        (true, Some(s), _) => Ok(Some(s)),
        (true, None, Some(_)) => Err(crate::util::bad_input("--shard needs --seed S, the same for every shard, so the merged report is one session with one seed (e.g. --seed $GITHUB_RUN_ID)".into())),
        (true, None, None) => Ok(Some(random_seed())),
    }
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32) % 1_000_000_000
}

/// The seed of repeat `run`: the session's seed for the first, a seed derived from it for
/// each further repeat (so `--repeat` explores other data and crash moments, and every run's
/// own reproduce line names the seed it ran with).
pub fn run_seed(seed: u64, run: u32) -> u64 {
    if run <= 1 {
        return seed;
    }
    let key = crate::util::key_of(&[("seed", &seed.to_le_bytes()), ("run", &run.to_le_bytes())]);
    u64::from_str_radix(&key[..15], 16).expect("hex") % 1_000_000_000
}

/// One image per kernel the runs boot, built before any VM starts.
fn build_images<T>(units: &[Unit<T>], work: &[Work]) -> Result<BTreeMap<String, Arc<Image>>> {
    let mut images = BTreeMap::new();
    for w in work {
        let kernel = &units[w.unit].key.kernel;
        if !images.contains_key(kernel) {
            let image = Arc::new(image::build(&Source::parse(kernel))?);
            images.insert(kernel.clone(), image);
        }
    }
    Ok(images)
}

fn announce(
    opts: &Options,
    work: &[Work],
    seed: Option<u64>,
    commit: &str,
    images: &BTreeMap<String, Arc<Image>>,
    accel_reason: &str,
    limits: Limits,
) {
    let tool = opts.tool;
    let shard = opts
        .shard
        .map(|s| format!(", shard {}/{}", s.index, s.count))
        .unwrap_or_default();
    let seed = seed.map(|s| format!(", seed {s}")).unwrap_or_default();
    eprintln!(
        "{tool}: {} run(s){shard}, -j {}{seed}, commit {commit}",
        work.len(),
        opts.jobs
    );
    if let Some(first) = images.values().next() {
        eprintln!(
            "{tool}: {} | accel {} ({accel_reason}) | {}",
            image::describe(first),
            limits.accel.name(),
            limits.describe()
        );
    }
}

/// The reports' head; taken after every input was fetched (`inputs` records them).
fn head<S: Suite>(
    suite: &S,
    opts: &Options,
    ctx: &Context,
    started_at: String,
    shard_info: Option<ShardInfo>,
) -> Head {
    let image_hash = ctx.images.values().next().map(|i| i.hash().to_string());
    Head {
        tool: opts.tool.into(),
        started_at,
        seed: ctx.seed,
        commit: ctx.commit.clone(),
        image_hash: image_hash.unwrap_or_default(),
        accelerator: ctx.accel.name().into(),
        jobs: opts.jobs as usize,
        repeat: opts.repeat,
        timeout_scale: ctx.limits.scale,
        shards: shard_info.into_iter().collect(),
        inputs: crate::image::fetch::recorded(),
        overrides: suite.overrides(),
    }
}

/// One run: its skip, or its attempts (a VM that died before the test gets a second), its
/// reproduce line, its record and the evidence rule.
fn one_run<S: Suite>(suite: &S, ctx: &Context, unit: &Unit<S::Test>, repeat: u32) -> Outcome {
    let key = key_of(unit, repeat);
    let run = Run {
        test: &unit.test,
        image: &ctx.images[&key.kernel],
        seed: ctx.seed.map(|s| run_seed(s, repeat)).unwrap_or(0),
        key,
        ctx,
    };
    let mut outcome = match suite.before_boot(&run) {
        Some(skipped) => skipped,
        None => {
            let label = suite.dir_label(&run);
            let mut o = retry_once(|attempt| {
                let suffix = if attempt == 1 { "" } else { "-retry" };
                match RunDir::create(&format!("{label}-r{repeat}{suffix}")) {
                    Ok(d) => suite.attempt(&run, &d.path),
                    Err(e) => (unattempted(&run, e), false),
                }
            });
            suite.stamp(&run, &mut o);
            o
        }
    };
    outcome.reproduce = reproduce(suite, ctx, suite.select_run(&run));
    let (file, mut extra) = suite.record(&run);
    if let Some(x) = extra.as_object_mut() {
        x.insert("commit".into(), ctx.commit.clone().into());
    }
    pool::seal(outcome, file, extra)
}

/// The outcome of a run whose directory could not be made.
fn unattempted<T>(run: &Run<T>, why: String) -> Outcome {
    let o = Outcome::named(
        &run.key.test,
        run.key.repeat,
        run.seed,
        Path::new(""),
        run.image.hash(),
    );
    o.finish(Instant::now(), Verdict::InfraError, Some(why))
}

/// `cargo xtask TOOL <selection> --timeout-scale F <suite flags>`, shell-quoted.
fn reproduce<S: Suite>(suite: &S, ctx: &Context, selection: Vec<String>) -> String {
    let mut argv: Vec<String> = vec!["cargo".into(), "xtask".into(), ctx.tool.into()];
    argv.extend(selection);
    // The scale always: a KVM machine's default differs from TCG's.
    argv.extend(ctx.limits.flag());
    argv.extend(suite.flags());
    crate::util::shell_line(&argv)
}
