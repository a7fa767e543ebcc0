//! `cargo xtask vm-e2e [NAME...]`: every scenario (or those named), each run in a fresh VM,
//! up to -j at once, with a progress bar, a table, JUnit XML and JSON.
//!
//! Exit codes: 0 every run passed; 1 a run failed or timed out; 125 no run failed but some
//! could not be tested (infra errors, evidence that could not be written); 128+n interrupted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::image::tools::Layer;
use crate::image::Image;
use crate::scenario::model::Scenario;
use crate::scenario::run;
use crate::server::device::DeviceOverride;
use crate::server::{self, Profile};
use crate::session::outcome::Outcome;
use crate::session::shard::RunKey;
use crate::session::{self, Context, Run, Suite, Unit};
use crate::util::Result;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub session: session::SessionArgs,
    /// Scenario names (files in scenarios/, without .yaml) or paths; default: all
    pub names: Vec<String>,
    /// Seed for every run's data (default: chosen at random and printed)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Kernel(s) for every scenario, comma-separated: debian (the default), a locked Debian
    /// kernel by name (debian-6.12, debian-7.2), host or a PATH; each scenario runs on each
    /// (default: the scenario's vm.kernel, else debian)
    #[arg(long, value_name = "NAME|host|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Server(s) to test: built-in profile names or profile paths, comma-separated; every
    /// scenario runs against each (default: each scenario's `server:`, else ublk-mem)
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub server: Vec<String>,
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
    let opts = args.session.options("vm-e2e", "e2e", args.seed);
    let scenarios = load_scenarios(&args.names)?;
    let servers = resolve_servers(&args.server, &scenarios)?;
    let mut suite = Scenarios {
        scenarios,
        servers,
        tools: None,
        overrides: DeviceOverride {
            queues: args.queues,
            depth: args.depth,
        },
        args,
    };
    session::run(&mut suite, &opts)
}

/// The scenarios of a session against their servers: vm-e2e's suite.
struct Scenarios {
    args: Args,
    scenarios: Vec<Scenario>,
    /// Profiles by the name or path they were asked for with.
    servers: BTreeMap<String, Profile>,
    /// The guest tools layer, if any scenario asks for a program from it.
    tools: Option<Layer>,
    overrides: DeviceOverride,
}

/// One scenario (index) against one server (as asked for).
struct Test {
    scenario: usize,
    server: String,
}

impl Scenarios {
    fn job<'a>(&'a self, run: &'a Run<Test>) -> run::Job<'a> {
        let sc = &self.scenarios[run.test.scenario];
        run::Job {
            sc,
            server: &self.servers[&run.test.server],
            kernel: &run.key.kernel,
            image: run.image,
            tools: self.tools.as_ref().filter(|_| !sc.vm.tools.is_empty()),
            accel: run.ctx.accel,
            seed: run.seed,
            run: run.key.repeat,
            timeout_scale: run.ctx.limits.scale,
            overrides: self.overrides,
            kernel_trace: !self.args.session.no_kernel_trace,
        }
    }
}

impl Suite for Scenarios {
    type Test = Test;

    /// scenario × kernel × server, each estimated by its scenario's timeout.
    fn units(&self) -> Vec<Unit<Test>> {
        let mut units = Vec::new();
        for (i, sc) in self.scenarios.iter().enumerate() {
            for kernel in kernels_of(&self.args.kernel, sc) {
                for server in servers_of(&self.args.server, sc) {
                    let name = &self.servers[&server].name;
                    units.push(Unit {
                        key: RunKey::new(&sc.name, name, &kernel, 1),
                        test: Test {
                            scenario: i,
                            server,
                        },
                        estimate_s: sc.timeout.0,
                    });
                }
            }
        }
        units
    }

    fn seeded(&self) -> bool {
        true
    }

    fn list_intro(&self, _sharded: bool) -> bool {
        if let Ok(groups) = crate::scenario::groups() {
            for (tag, files) in groups {
                let names: Vec<String> = files
                    .iter()
                    .filter_map(|f| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .collect();
                println!("group {tag}: {}", names.join(" "));
            }
        }
        true
    }

    fn list_line(&self, test: &Test, key: &RunKey) -> String {
        format!(
            "{} {} {} #{}",
            key.test, test.server, key.kernel, key.repeat
        )
    }

    /// The profiles the runs use made ready (binaries built or copied), the tools layer.
    fn prepare(
        &mut self,
        _images: &BTreeMap<String, Arc<Image>>,
        used: &[&Unit<Test>],
    ) -> Result<()> {
        let recipe = crate::image::recipe::Recipe::load()?;
        for (key, p) in self.servers.iter_mut() {
            if used.iter().any(|u| &u.test.server == key) {
                p.prepare(&recipe)?;
            }
        }
        let scenarios: Vec<&Scenario> = used
            .iter()
            .map(|u| &self.scenarios[u.test.scenario])
            .collect();
        self.tools = tools_layer(&scenarios)?;
        Ok(())
    }

    fn overrides(&self) -> DeviceOverride {
        self.overrides
    }

    fn before_boot(&self, r: &Run<Test>) -> Option<Outcome> {
        run::before_boot(&self.job(r))
    }

    fn dir_label(&self, r: &Run<Test>) -> String {
        let sc = &self.scenarios[r.test.scenario];
        let mut label = sc.name.clone();
        if r.key.server != server::DEFAULT {
            label = format!("{label}-{}", r.key.server);
        }
        if r.key.kernel != crate::image::kernel::DEFAULT_KERNEL {
            label = format!("{label}-{}", crate::util::slug(&r.key.kernel));
        }
        label
    }

    fn attempt(&self, r: &Run<Test>, dir: &Path) -> (Outcome, bool) {
        run::attempt(&self.job(r), dir)
    }

    fn stamp(&self, r: &Run<Test>, outcome: &mut Outcome) {
        run::stamp(&self.job(r), outcome)
    }

    /// Its scenario, server and kernel as asked for, its own seed.
    fn select_run(&self, r: &Run<Test>) -> Vec<String> {
        vec![
            self.scenarios[r.test.scenario].cli_name(),
            "--server".into(),
            r.test.server.clone(),
            "--kernel".into(),
            r.key.kernel.clone(),
            "--seed".into(),
            r.seed.to_string(),
        ]
    }

    /// The scenarios that did not pass (or all), the session's kernels, servers and seed.
    fn select_session(&self, ctx: &Context, outcomes: &[Outcome]) -> Vec<String> {
        let failed = |sc: &&Scenario| {
            outcomes
                .iter()
                .any(|o| o.scenario == sc.name && o.verdict.wants_rerun())
        };
        let mut words: Vec<String> = self
            .scenarios
            .iter()
            .filter(failed)
            .map(|s| s.cli_name())
            .collect();
        if words.is_empty() {
            words = self.scenarios.iter().map(|s| s.cli_name()).collect();
        }
        if !self.args.kernel.is_empty() {
            words.extend(["--kernel".into(), self.args.kernel.join(",")]);
        }
        if !self.args.server.is_empty() {
            words.extend(["--server".into(), self.args.server.join(",")]);
        }
        words.extend(["--seed".into(), ctx.seed.unwrap_or(0).to_string()]);
        if ctx.repeat > 1 {
            words.extend(["--repeat".into(), ctx.repeat.to_string()]);
        }
        words
    }

    fn flags(&self) -> Vec<String> {
        let mut f = self.overrides.args();
        f.extend(self.args.session.run_flags());
        f
    }

    fn record(&self, _run: &Run<Test>) -> (&'static str, serde_json::Value) {
        ("scenario-result.json", serde_json::json!({}))
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
