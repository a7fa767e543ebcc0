//! `cargo xtask vm-e2e [NAME...]`: every scenario (or those named), each run in a fresh VM,
//! up to -j at once, with a progress bar, a table, JUnit XML and JSON.
//!
//! Exit codes: 0 every run passed; 1 a run failed or timed out; 125 no run failed but some
//! could not be tested (infra errors, evidence that could not be written); 128+n interrupted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::kernel::Source;
use crate::image::tools::Layer;
use crate::image::{self, Image};
use crate::runs::RunDir;
use crate::scenario::model::Scenario;
use crate::scenario::run::{self, Outcome};
use crate::scenario::session;
use crate::server::{self, Profile};
use crate::util::{rfc3339_now, Result};
use crate::vm::accel::{self, Choice};
use crate::vm::qemu::Accel;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Scenario names (files in scenarios/, without .yaml) or paths; default: all
    pub names: Vec<String>,
    /// Run every scenario N times (each in a fresh VM) and report flakiness
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// Scenario runs in parallel
    #[arg(short = 'j', long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
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
    /// Accepted for older command lines: the exit codes always follow `git bisect run`
    /// (0 pass, 1 fail or timeout, 125 could not test)
    #[arg(long)]
    pub bisect_exit_codes: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let scenarios = load_scenarios(&args.names)?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    let images = build_images(&scenarios, &args.kernel)?;
    let first = images
        .values()
        .next()
        .expect("one image per kernel in use")
        .clone();
    let (accel, accel_reason) = accel::choose(args.accel, &first)?;
    let commit = git_commit();
    eprintln!(
        "vm-e2e: {} scenario(s) x {} run(s), -j {}, seed {seed}, commit {commit}",
        scenarios.len(),
        args.repeat,
        args.jobs
    );
    eprintln!(
        "vm-e2e: {} | accel {} ({accel_reason})",
        image::describe(&first),
        accel.name()
    );
    let servers = load_servers(&args.server, &scenarios)?;
    let tools = tools_layer(&scenarios)?;
    let plan = Plan {
        scenarios: Arc::new(scenarios),
        servers,
        cli_servers: args.server.clone(),
        images,
        tools,
        kernel: args.kernel.clone(),
        accel,
        seed,
        commit: commit.clone(),
    };
    let outcomes = run_all(&plan, args.repeat, args.jobs as usize);
    let head = crate::scenario::report::Head {
        started_at,
        seed: Some(seed),
        commit,
        image_hash: first.hash().to_string(),
        accelerator: accel.name().into(),
        jobs: args.jobs as usize,
        repeat: args.repeat,
    };
    Ok(session::conclude(
        head,
        t0,
        outcomes,
        |o| reproduce(&plan, o),
        "e2e",
        "vm-e2e",
    ))
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
}

impl Plan {
    fn kernels_of(&self, sc: &Scenario) -> Vec<String> {
        kernels_of(&self.kernel, sc)
    }

    /// The servers scenario `sc` runs against (keys of `servers`).
    fn servers_of(&self, sc: &Scenario) -> Vec<String> {
        servers_of(&self.cli_servers, sc)
    }
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
fn tools_layer(scenarios: &[Scenario]) -> Result<Option<Layer>> {
    let names: Vec<String> = scenarios.iter().flat_map(|s| s.vm.tools.clone()).collect();
    if names.is_empty() {
        return Ok(None);
    }
    crate::image::tools::layer(&names).map(Some)
}

/// Every profile in use, loaded (and checked) before any VM starts.
fn load_servers(cli: &[String], scenarios: &[Scenario]) -> Result<BTreeMap<String, Profile>> {
    let recipe = crate::image::recipe::Recipe::load()?;
    let mut out = BTreeMap::new();
    for sc in scenarios {
        for key in servers_of(cli, sc) {
            if !out.contains_key(&key) {
                let mut p = Profile::resolve(&key)?;
                p.prepare(&recipe)?;
                out.insert(key.clone(), p);
            }
        }
    }
    Ok(out)
}

fn kernels_of(cli: &[String], sc: &Scenario) -> Vec<String> {
    if !cli.is_empty() {
        return cli.to_vec();
    }
    vec![sc.vm.kernel.clone().unwrap_or_else(|| "debian".into())]
}

/// The scenarios named (or all), each name used once.
fn load_scenarios(names: &[String]) -> Result<Vec<Scenario>> {
    let files = crate::scenario::resolve(names)?;
    if files.is_empty() {
        return Err("no scenarios found in scenarios/".into());
    }
    let scenarios: Vec<Scenario> = files
        .iter()
        .map(|f| Scenario::load(f))
        .collect::<Result<_>>()?;
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for sc in &scenarios {
        if let Some(other) = seen.insert(&sc.name, &sc.source) {
            if std::fs::canonicalize(other).ok() == std::fs::canonicalize(&sc.source).ok() {
                return Err(format!(
                    "{} is named twice on the command line",
                    sc.source.display()
                ));
            }
            return Err(format!(
                "{} and {} are both named `{}`: results would merge; give one another `name:`",
                other.display(),
                sc.source.display(),
                sc.name
            ));
        }
    }
    Ok(scenarios)
}

/// One image per kernel provider in use, built before any VM starts.
fn build_images(scenarios: &[Scenario], kernel: &[String]) -> Result<BTreeMap<String, Arc<Image>>> {
    let mut images = BTreeMap::new();
    for sc in scenarios {
        for k in kernels_of(kernel, sc) {
            if !images.contains_key(&k) {
                images.insert(k.clone(), Arc::new(image::build(&Source::parse(&k))?));
            }
        }
    }
    Ok(images)
}

/// Runs every (scenario, server, repeat) on `jobs` worker threads; prints each verdict as it
/// lands.
fn run_all(plan: &Plan, repeat: u32, jobs: usize) -> Vec<Outcome> {
    let mut work: Vec<(usize, String, String, u32)> = Vec::new();
    for r in 1..=repeat {
        for (i, sc) in plan.scenarios.iter().enumerate() {
            for k in plan.kernels_of(sc) {
                work.extend(
                    plan.servers_of(sc)
                        .into_iter()
                        .map(|s| (i, s, k.clone(), r)),
                );
            }
        }
    }
    session::run_pool(work, jobs, "vm-e2e", |(i, server, kernel, r)| {
        one_run(plan, *i, server, kernel, *r)
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
        seed: plan.seed,
        run: r,
    };
    let mut label = sc.name.clone();
    if profile.name != server::DEFAULT {
        label = format!("{label}-{}", profile.name);
    }
    if kernel != "debian" {
        label = format!("{label}-{}", crate::util::slug(kernel));
    }
    let outcome = run::run(&job, |attempt| {
        let suffix = if attempt == 1 { "" } else { "-retry" };
        RunDir::create(&format!("{label}-r{r}{suffix}")).map(|d| d.path)
    });
    let extra = serde_json::json!({
        "commit": &plan.commit,
        "reproduce": format!("cargo xtask vm-e2e {} --seed {}", sc.cli_name(), plan.seed),
    });
    session::seal(outcome, "scenario-result.json", extra)
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
    let mut kernel = String::new();
    if !plan.kernel.is_empty() {
        kernel = format!(
            " --kernel {}",
            crate::util::shell_quote(&plan.kernel.join(","))
        );
    }
    if !plan.cli_servers.is_empty() {
        kernel += &format!(
            " --server {}",
            crate::util::shell_quote(&plan.cli_servers.join(","))
        );
    }
    let names: Vec<String> = names.iter().map(|n| crate::util::shell_quote(n)).collect();
    format!(
        "cargo xtask vm-e2e {}{kernel} --seed {}",
        names.join(" "),
        plan.seed
    )
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32) % 1_000_000_000
}

pub fn git_commit() -> String {
    let out = crate::host::procs::run(
        std::process::Command::new("git")
            .current_dir(crate::util::root())
            .args(["describe", "--always", "--dirty", "--abbrev=12"]),
        Duration::from_secs(10),
        "git describe",
    );
    match out {
        Ok(o) if o.status.success() => o.stdout.trim().to_string(),
        _ => "unknown".into(),
    }
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
