//! `cargo xtask vm-e2e [NAME...]`: every scenario (or those named), each run in a fresh VM,
//! up to -j at once, with a progress bar, a table, JUnit XML and JSON.
//!
//! Exit codes: 0 every run passed; 1 a run failed or timed out; 125 no run failed but some
//! could not be tested (infra errors, evidence that could not be written); 128+n interrupted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::image::kernel::Source;
use crate::image::tools::Layer;
use crate::image::{self, Image};
use crate::runs::RunDir;
use crate::scenario::model::{DeviceOverride, Scenario};
use crate::scenario::run::{self, Outcome};
use crate::scenario::{session, shard};
use crate::server::{self, Profile};
use crate::util::{rfc3339_now, Result};
use crate::vm::accel::{self, Choice};
use crate::vm::qemu::Accel;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one (default: the newest build of the same suite, with a warning and a
    /// record in every report); also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    /// Scenario names (files in scenarios/, without .yaml) or paths; default: all
    pub names: Vec<String>,
    /// Run every scenario N times (each in a fresh VM) and report flakiness
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Scenario runs in parallel
    #[arg(short = 'j', long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Seed for every run's data (default: chosen at random and printed)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kernel(s) for every scenario, comma-separated: debian (the default), a locked Debian
    /// kernel by name (debian-6.12, debian-7.2), host or a PATH; each scenario runs on each
    /// (default: the scenario's vm.kernel, else debian)
    #[arg(long, value_name = "NAME|host|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Server(s) to test: built-in profile names or profile paths, comma-separated; every
    /// scenario runs against each (default: each scenario's `server:`, else ublk-mem)
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Run only shard K of N: a deterministic slice of the (scenario x kernel x server x
    /// repeat) runs, balanced by --durations; shards 1..N together are exactly the full set.
    /// Needs --seed (the same for every shard); `report merge` joins the shards' reports
    #[arg(long, value_name = "K/N")]
    pub shard: Option<shard::Shard>,
    /// Earlier sessions' summary.json (a file or a directory of them) whose durations
    /// balance the shards; every shard must be given the same (default: scenario timeouts)
    #[arg(long, value_name = "PATH")]
    pub durations: Option<PathBuf>,
    /// Print the runs this invocation would make (with --shard: this shard's) and exit
    #[arg(long)]
    pub list: bool,
    /// Multiply every scenario and step limit by F [default: 1 under KVM, 2 under TCG]
    #[arg(long, value_name = "F", value_parser = crate::vm::limits::parse_scale)]
    pub timeout_scale: Option<f64>,
    /// Every device gets N queues, replacing each start step's and `device:` value (e.g.
    /// `--queues 1` to see whether a failure needs several queues); recorded in the reports
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..=crate::scenario::model::MAX_OVERRIDE_QUEUES as i64))]
    pub queues: Option<u16>,
    /// Every device gets queue depth N, replacing each start step's and `device:` value
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..=crate::scenario::model::MAX_OVERRIDE_DEPTH as i64))]
    pub depth: Option<u16>,
    /// Accepted for older command lines: the exit codes always follow `git bisect run`
    /// (0 pass, 1 fail or timeout, 125 could not test)
    #[arg(long)]
    pub bisect_exit_codes: bool,
}

pub fn run(args: Args) -> Result<i32> {
    crate::image::fetch::set_locked(args.locked);
    let scenarios = load_scenarios(&args.names)?;
    let mut servers = resolve_servers(&args.server, &scenarios)?;
    let (work, shard_info) = plan_runs(&args, &scenarios, &servers)?;
    if args.list {
        print_plan(&scenarios, &work, shard_info.as_ref());
        return Ok(0);
    }
    let seed = session_seed(&args)?;
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    let images = build_images(&work)?;
    let (accel, accel_reason) = match images.values().next() {
        Some(first) => accel::choose(args.accel, first)?,
        None => (Accel::Tcg, "no run in this shard".to_string()),
    };
    let commit = crate::host::git::commit();
    let limits = crate::vm::limits::Limits::new(accel, args.timeout_scale);
    announce(
        &args,
        &work,
        seed,
        &commit,
        &images,
        (accel, &accel_reason),
        limits,
    );
    prepare_servers(&mut servers, &work)?;
    let used: Vec<&Scenario> = work.iter().map(|w| &scenarios[w.scenario]).collect();
    let tools = tools_layer(&used)?;
    let head = crate::scenario::report::Head {
        tool: "vm-e2e".into(),
        started_at,
        seed: Some(seed),
        commit: commit.clone(),
        accelerator: accel.name().into(),
        jobs: args.jobs as usize,
        repeat: args.repeat,
        timeout_scale: limits.scale,
        shards: shard_info.into_iter().collect(),
        inputs: crate::image::fetch::recorded(),
        overrides: overrides(&args),
        image_hash: first_image_hash(&images),
    };
    let plan = Plan {
        scenarios: Arc::new(scenarios),
        servers,
        cli_servers: args.server.clone(),
        images,
        tools,
        kernel: args.kernel.clone(),
        accel,
        seed,
        commit,
        timeout_scale: limits.scale,
        overrides: overrides(&args),
        repeat: args.repeat,
    };
    let outcomes = run_all(&plan, work, args.jobs as usize);
    Ok(session::conclude(
        head,
        t0,
        outcomes,
        |o| reproduce(&plan, o),
        "e2e",
    ))
}

/// `--seed`, required with `--shard` (every shard must run the same session), else random.
fn session_seed(args: &Args) -> Result<u64> {
    match (args.seed, &args.shard) {
        (Some(s), _) => Ok(s),
        (None, Some(_)) => Err(crate::util::bad_input("--shard needs --seed S, the same for every shard, so the merged report is one session with one seed (e.g. --seed $GITHUB_RUN_ID)".into())),
        (None, None) => Ok(random_seed()),
    }
}

fn first_image_hash(images: &BTreeMap<String, Arc<Image>>) -> String {
    images
        .values()
        .next()
        .map(|i| i.hash().to_string())
        .unwrap_or_default()
}

fn overrides(args: &Args) -> DeviceOverride {
    DeviceOverride {
        queues: args.queues,
        depth: args.depth,
    }
}

/// One run to make: scenario (index), server (key as asked for), kernel (as asked for), repeat.
#[derive(Clone, Debug)]
struct RunSpec {
    scenario: usize,
    server: String,
    kernel: String,
    run: u32,
}

/// Every run of the session, or this shard's.
fn plan_runs(
    args: &Args,
    scenarios: &[Scenario],
    servers: &BTreeMap<String, Profile>,
) -> Result<(Vec<RunSpec>, Option<shard::ShardInfo>)> {
    let mut work = Vec::new();
    for run in 1..=args.repeat {
        for (i, sc) in scenarios.iter().enumerate() {
            for kernel in kernels_of(&args.kernel, sc) {
                for server in servers_of(&args.server, sc) {
                    work.push(RunSpec {
                        scenario: i,
                        server,
                        kernel: kernel.clone(),
                        run,
                    });
                }
            }
        }
    }
    let Some(sh) = args.shard else {
        return Ok((work, None));
    };
    let durations = match &args.durations {
        Some(p) => shard::Durations::load(p)?,
        None => shard::Durations::none(),
    };
    let keys: Vec<(shard::RunKey, u64)> = work
        .iter()
        .map(|w| {
            let sc = &scenarios[w.scenario];
            let server = &servers[&w.server].name;
            (
                shard::RunKey::new(&sc.name, server, &w.kernel, w.run),
                sc.timeout.0,
            )
        })
        .collect();
    let planned = shard::planned(&durations, keys);
    let (work, info) = shard::select(work, &planned, sh, &durations.source);
    Ok((work, Some(info)))
}

fn print_plan(scenarios: &[Scenario], work: &[RunSpec], info: Option<&shard::ShardInfo>) {
    if let Ok(groups) = crate::scenario::groups() {
        for (tag, files) in groups {
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            println!("group {tag}: {}", names.join(" "));
        }
    }
    if let Some(i) = info {
        println!(
            "shard {}/{} of plan {}: {} of {} runs, ~{:.0} s of runs (estimates: {})",
            i.index, i.count, i.plan, i.runs, i.planned_runs, i.estimate_s, i.estimates_from
        );
    }
    for w in work {
        println!(
            "{} {} {} #{}",
            scenarios[w.scenario].name, w.server, w.kernel, w.run
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn announce(
    args: &Args,
    work: &[RunSpec],
    seed: u64,
    commit: &str,
    images: &BTreeMap<String, Arc<Image>>,
    (accel, accel_reason): (Accel, &str),
    limits: crate::vm::limits::Limits,
) {
    let shard = args
        .shard
        .map(|s| format!(", shard {}/{}", s.index, s.count))
        .unwrap_or_default();
    eprintln!(
        "vm-e2e: {} run(s){shard}, -j {}, seed {seed}, commit {commit}",
        work.len(),
        args.jobs
    );
    if let Some(first) = images.values().next() {
        eprintln!(
            "vm-e2e: {} | accel {} ({accel_reason}) | {}",
            image::describe(first),
            accel.name(),
            limits.describe()
        );
    }
}

/// Every run's inputs, shared by the workers.
struct Plan {
    scenarios: Arc<Vec<Scenario>>,
    /// Profiles by the name or path they were asked for with.
    servers: BTreeMap<String, Profile>,
    /// `--server`, if given: every scenario runs against each.
    cli_servers: Vec<String>,
    images: BTreeMap<String, Arc<Image>>,
    /// The guest tools layer, if any scenario asks for a program from it.
    tools: Option<Layer>,
    kernel: Vec<String>,
    accel: Accel,
    seed: u64,
    commit: String,
    timeout_scale: f64,
    overrides: DeviceOverride,
    repeat: u32,
}

fn servers_of(cli: &[String], sc: &Scenario) -> Vec<String> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    vec![sc
        .server
        .clone()
        .unwrap_or_else(|| server::DEFAULT.to_string())]
}

/// The guest tools layer, built (or verified) once if any scenario names a program from it.
fn tools_layer(scenarios: &[&Scenario]) -> Result<Option<Layer>> {
    let mut names: Vec<String> = scenarios.iter().flat_map(|s| s.vm.tools.clone()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok(None);
    }
    crate::image::tools::layer(&names).map(Some)
}

/// Every profile the scenarios name, read and checked (cheap: no build).
fn resolve_servers(cli: &[String], scenarios: &[Scenario]) -> Result<BTreeMap<String, Profile>> {
    let mut out = BTreeMap::new();
    for sc in scenarios {
        for key in servers_of(cli, sc) {
            if let std::collections::btree_map::Entry::Vacant(e) = out.entry(key) {
                let p = Profile::resolve(e.key())?;
                e.insert(p);
            }
        }
    }
    Ok(out)
}

/// The profiles this session's runs use, made ready (binaries built or copied) before any VM.
fn prepare_servers(servers: &mut BTreeMap<String, Profile>, work: &[RunSpec]) -> Result<()> {
    let recipe = crate::image::recipe::Recipe::load()?;
    let used: std::collections::BTreeSet<&str> = work.iter().map(|w| w.server.as_str()).collect();
    for (key, p) in servers.iter_mut() {
        if used.contains(key.as_str()) {
            p.prepare(&recipe)?;
        }
    }
    Ok(())
}

fn kernels_of(cli: &[String], sc: &Scenario) -> Vec<String> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    vec![sc
        .vm
        .kernel
        .clone()
        .unwrap_or_else(|| crate::image::kernel::DEFAULT_KERNEL.into())]
}

/// The scenarios named (or all), each name used once.
fn load_scenarios(names: &[String]) -> Result<Vec<Scenario>> {
    let files = crate::scenario::resolve(names)?;
    if files.is_empty() {
        return Err(crate::util::bad_input(
            "no scenarios found in scenarios/".into(),
        ));
    }
    let scenarios: Vec<Scenario> = files
        .iter()
        .map(|f| Scenario::load(f))
        .collect::<Result<_>>()?;
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for sc in &scenarios {
        if let Some(other) = seen.insert(&sc.name, &sc.source) {
            if std::fs::canonicalize(other).ok() == std::fs::canonicalize(&sc.source).ok() {
                return Err(crate::util::bad_input(format!(
                    "{} is named twice on the command line",
                    sc.source.display()
                )));
            }
            return Err(crate::util::bad_input(format!(
                "{} and {} are both named `{}`: results would merge; give one another `name:`",
                other.display(),
                sc.source.display(),
                sc.name
            )));
        }
    }
    Ok(scenarios)
}

/// One image per kernel the runs use, built before any VM starts.
fn build_images(work: &[RunSpec]) -> Result<BTreeMap<String, Arc<Image>>> {
    let mut images = BTreeMap::new();
    for w in work {
        if !images.contains_key(&w.kernel) {
            let image = Arc::new(image::build(&Source::parse(&w.kernel))?);
            images.insert(w.kernel.clone(), image);
        }
    }
    Ok(images)
}

/// Runs every planned run on `jobs` worker threads; prints each verdict as it lands.
fn run_all(plan: &Plan, work: Vec<RunSpec>, jobs: usize) -> Vec<Outcome> {
    session::run_pool(work, jobs, "vm-e2e", |w| {
        one_run(plan, w.scenario, &w.server, &w.kernel, w.run)
    })
}

/// One scenario run (with its boot retry), its evidence checked and its record written.
fn one_run(plan: &Plan, i: usize, server: &str, kernel: &str, r: u32) -> Outcome {
    let sc = &plan.scenarios[i];
    let profile = &plan.servers[server];
    let job = run::Job {
        sc,
        server: profile,
        kernel,
        image: &plan.images[kernel],
        tools: plan.tools.as_ref().filter(|_| !sc.vm.tools.is_empty()),
        accel: plan.accel,
        seed: run_seed(plan.seed, r),
        run: r,
        timeout_scale: plan.timeout_scale,
        overrides: plan.overrides,
    };
    let mut label = sc.name.clone();
    if profile.name != server::DEFAULT {
        label = format!("{label}-{}", profile.name);
    }
    if kernel != crate::image::kernel::DEFAULT_KERNEL {
        label = format!("{label}-{}", crate::util::slug(kernel));
    }
    let mut outcome = run::run(&job, |attempt| {
        let suffix = if attempt == 1 { "" } else { "-retry" };
        RunDir::create(&format!("{label}-r{r}{suffix}")).map(|d| d.path)
    });
    outcome.reproduce = run_reproduce(plan, sc, server, kernel, job.seed);
    let extra = serde_json::json!({ "commit": &plan.commit });
    session::seal(outcome, "scenario-result.json", extra)
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

/// The command that reruns exactly this one run: its scenario, server and kernel as asked
/// for, its own seed, the session's time scale and overrides.
fn run_reproduce(plan: &Plan, sc: &Scenario, server: &str, kernel: &str, seed: u64) -> String {
    let mut argv: Vec<String> = ["cargo", "xtask", "vm-e2e"].map(String::from).into();
    argv.push(sc.cli_name());
    argv.extend(["--server".into(), server.to_string()]);
    argv.extend(["--kernel".into(), kernel.to_string()]);
    argv.extend(["--seed".into(), seed.to_string()]);
    argv.extend(common_flags(plan));
    crate::util::shell_line(&argv)
}

/// The flags every reproduce line carries beside what it selects.
fn common_flags(plan: &Plan) -> Vec<String> {
    // The scale always: a KVM machine's default differs from TCG's.
    let mut v = vec![
        "--timeout-scale".to_string(),
        plan.timeout_scale.to_string(),
    ];
    v.extend(plan.overrides.args());
    v
}

/// The command that reruns what did not pass (or everything), with the same seed.
fn reproduce(plan: &Plan, outcomes: &[Outcome]) -> String {
    let failed = |sc: &&Scenario| {
        outcomes
            .iter()
            .any(|o| o.scenario == sc.name && o.verdict.wants_rerun())
    };
    let mut names: Vec<String> = plan
        .scenarios
        .iter()
        .filter(failed)
        .map(|s| s.cli_name())
        .collect();
    if names.is_empty() {
        names = plan.scenarios.iter().map(|s| s.cli_name()).collect();
    }
    let mut argv: Vec<String> = ["cargo", "xtask", "vm-e2e"].map(String::from).into();
    argv.extend(names);
    if !plan.kernel.is_empty() {
        argv.extend(["--kernel".into(), plan.kernel.join(",")]);
    }
    if !plan.cli_servers.is_empty() {
        argv.extend(["--server".into(), plan.cli_servers.join(",")]);
    }
    argv.extend(["--seed".into(), plan.seed.to_string()]);
    if plan.repeat > 1 {
        argv.extend(["--repeat".into(), plan.repeat.to_string()]);
    }
    argv.extend(common_flags(plan));
    crate::util::shell_line(&argv)
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32) % 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_files_with_one_name_are_refused() {
        let dir = std::env::temp_dir().join(format!("xtask-dup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        let text = "name: same\ndescription: d\ntimeout: 5\nsteps: [{check: {}, timeout: 1}]\n";
        std::fs::write(dir.join("a.yaml"), text).unwrap();
        std::fs::write(dir.join("b/a.yaml"), text).unwrap();
        let a = dir.join("a.yaml").display().to_string();
        let b = dir.join("b/a.yaml").display().to_string();
        let e = load_scenarios(&[a.clone(), b]).unwrap_err();
        assert!(e.contains("are both named `same`"), "{e}");
        let e = load_scenarios(&[a.clone(), a]).unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
