//! `cargo xtask vm-perf`: brd, null_blk, loop and ublk servers measured side by side with fio
//! in one VM per kernel, interleaved over rounds, each cell on a fresh device; a table,
//! perf.json, perf.svg, and a regression gate against a baseline that only fails beyond the
//! noise the runs measured. Exit codes: 0 measured (and no regression), 1 a regression or a
//! kernel splat, 2 the measurement could not be completed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::image::kernel::Source;
use crate::image::{self, tools, Image};
use crate::perf::report::{self, Machine, PerfReport, Session};
use crate::perf::session::{self as perf_session, Plan};
use crate::perf::workload::{self, Target, Workload, KERNEL_TARGETS, REFERENCE, WORKLOADS};
use crate::perf::{baseline, chart};
use crate::runs::RunDir;
use crate::scenario::model::{DeviceSpec, Requires, Scenario, Secs, Size, VmSpec};
use crate::scenario::steps::Runner;
use crate::server::Profile;
use crate::util::{rfc3339_now, Result};
use crate::vm::accel::{self, Choice};
use crate::vm::qemu::{Accel, VmConfig};
use crate::vm::Vm;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one (default: the newest build of the same suite, with a warning and a
    /// record in every report); also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    /// ublk servers to measure: built-in profile names or profile files [default: ublk-mem]
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub server: Vec<String>,
    /// Kernel(s), one VM session each: locked names or a PATH [default: the default kernel]
    #[arg(long, value_name = "NAME|PATH[,...]", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Everything measured: brd, null_blk, loop and server names [default: brd,null_blk,loop
    /// and the --server list]; brd, the reference, is always included
    #[arg(long, value_name = "NAME[,...]", value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Workloads (see README) [default: all]
    #[arg(long, value_name = "NAME[,...]", value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Rounds: each cell is measured once per round, targets interleaved
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Measured seconds per cell (after the warm-up)
    #[arg(long, value_name = "SECS", default_value_t = 2.0, value_parser = secs)]
    pub runtime: f64,
    /// Warm-up seconds per cell, not measured
    #[arg(long, value_name = "SECS", default_value_t = 0.5, value_parser = secs)]
    pub ramp: f64,
    /// Device size in MiB (the region fio works on)
    #[arg(long, value_name = "MIB", default_value_t = 256, allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(16..=4096))]
    pub size: u64,
    /// Virtual CPUs (also the queue count of every multi-queue target)
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub cpus: u32,
    /// Guest clock: `auto` (icount under TCG, plain under KVM), `plain`, or `icount` /
    /// `icount:SHIFT` (QEMU's instruction-counting clock, TCG only; default shift 3)
    #[arg(long, value_name = "auto|plain|icount[:N]", default_value = "auto", value_parser = clock)]
    pub clock: Clock,
    /// Compare with this perf.json: exit 1 if a cell's ratio to brd dropped beyond the noise
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Smallest drop that counts as a regression, in percent (the measured noise may raise it)
    #[arg(long, value_name = "PCT", default_value_t = 5.0, value_parser = percent)]
    pub tolerance: f64,
    /// Also write this run's perf.json here (a new baseline)
    #[arg(long, value_name = "FILE")]
    pub save_baseline: Option<PathBuf>,
    /// No VM: take an earlier run's perf.json (table, chart, --baseline gate)
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// icount:3 under TCG (repeatable), plain under KVM.
    Auto,
    Plain,
    Icount(u32),
}

impl Clock {
    pub fn name(self) -> String {
        match self {
            Clock::Auto => "auto".into(),
            Clock::Plain => "plain".into(),
            Clock::Icount(s) => format!("icount:{s}"),
        }
    }
}

/// 2^3 ns of guest time per instruction: 125 MIPS, about what TCG executes on this host.
const DEFAULT_SHIFT: u32 = 3;

fn clock(s: &str) -> std::result::Result<Clock, String> {
    match s {
        "auto" => Ok(Clock::Auto),
        "plain" => Ok(Clock::Plain),
        "icount" => Ok(Clock::Icount(DEFAULT_SHIFT)),
        _ => s
            .strip_prefix("icount:")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n <= 10)
            .map(Clock::Icount)
            .ok_or_else(|| format!("`{s}`: use auto, plain, icount or icount:SHIFT (0..=10)")),
    }
}

fn secs(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: seconds from 0 to 600")),
    }
}

fn percent(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..100.0).contains(&v) => Ok(v / 100.0),
        _ => Err(format!("`{s}`: a percentage from 0 to 100")),
    }
}

pub fn run(args: Args) -> Result<i32> {
    crate::image::fetch::set_locked(args.locked);
    let base = args
        .baseline
        .as_deref()
        .map(|p| load_report(p, "--baseline"))
        .transpose()?;
    if let Some(from) = &args.from {
        return reevaluate(&load_report(from, "--from")?, base.as_ref(), &args);
    }
    let setup = Setup::prepare(&args)?;
    let (report, splats) = measure_kernels(&args, &setup)?;
    write_outputs(&report, &setup.run.path, args.save_baseline.as_deref())?;
    Ok(verdict(&report, base.as_ref(), args.tolerance, &splats))
}

/// Everything decided before the first VM boots.
struct Setup {
    plan: Plan,
    profiles: BTreeMap<String, Profile>,
    tools: tools::Layer,
    kernels: Vec<(String, Image)>,
    accel: Accel,
    /// `--clock` resolved for the accelerator (never Auto).
    clock: Clock,
    run: RunDir,
}

impl Setup {
    fn prepare(args: &Args) -> Result<Setup> {
        if args.runtime < 0.5 {
            return Err(crate::util::bad_input(
                "--runtime: at least 0.5 s, or fio measures too few I/Os".into(),
            ));
        }
        let targets = targets(args)?;
        let workloads = workloads(&args.workloads)?;
        let profiles = load_profiles(&targets)?;
        let tools = tools::layer(&["fio".into(), "losetup".into(), "truncate".into()])?;
        let kernels = kernels(&args.kernel)?;
        let (accel, why) = accel::choose(args.accel, &kernels[0].1)?;
        let clock = match (args.clock, accel) {
            (Clock::Icount(_), Accel::Kvm) => {
                return Err(crate::util::bad_input(
                    "--clock icount needs TCG (--accel tcg): KVM runs on the host's clock".into(),
                ))
            }
            (Clock::Auto, Accel::Kvm) => Clock::Plain,
            (Clock::Auto, Accel::Tcg) => Clock::Icount(DEFAULT_SHIFT),
            (c, _) => c,
        };
        let plan = plan(args, targets, &profiles, workloads, accel)?;
        let run = RunDir::create("perf")?;
        eprintln!(
            "vm-perf: {} target(s) x {} workload(s) x {} round(s) x {} kernel(s), {} s + {} s warm-up per cell | accel {} ({why}), clock {} | {}",
            plan.targets.len(),
            plan.workloads.len(),
            plan.rounds,
            kernels.len(),
            plan.runtime_s,
            plan.ramp_s,
            accel.name(),
            clock.name(),
            run.path.display()
        );
        Ok(Setup {
            clock,
            plan,
            profiles,
            tools,
            kernels,
            accel,
            run,
        })
    }
}

/// One session per kernel, in order; the report and any kernel splats.
fn measure_kernels(args: &Args, setup: &Setup) -> Result<(PerfReport, Vec<String>)> {
    let mut report = head(args, setup);
    let mut splats = Vec::new();
    for (name, image) in &setup.kernels {
        let dir = setup.run.path.join(crate::util::slug(name));
        let vm = vm_config(args, setup);
        let (session, found) = measure(name, image, &vm, &setup.plan, &setup.profiles, &dir)
            .map_err(|e| format!("vm-perf on {name}: {e} (evidence in {})", dir.display()))?;
        eprintln!(
            "\n{name} ({}):\n{}",
            session.kernel_release,
            report::table(&session)
        );
        splats.extend(found.into_iter().map(|s| format!("{name}: {s}")));
        report.sessions.push(session);
    }
    Ok((report, splats))
}

/// Targets in measurement order, brd first and always present.
fn targets(args: &Args) -> Result<Vec<Target>> {
    let servers = match args.server.is_empty() {
        true => vec![crate::server::DEFAULT.to_string()],
        false => args.server.clone(),
    };
    let mut names: Vec<String> = match args.targets.is_empty() {
        true => KERNEL_TARGETS
            .iter()
            .map(|s| s.to_string())
            .chain(servers)
            .collect(),
        false => args.targets.clone(),
    };
    if !names.iter().any(|n| n == REFERENCE) {
        names.insert(0, REFERENCE.into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in &names {
        if !seen.insert(n.as_str()) {
            return Err(crate::util::bad_input(format!(
                "--targets names `{n}` twice"
            )));
        }
    }
    Ok(names.iter().map(|n| Target::parse(n)).collect())
}

fn workloads(names: &[String]) -> Result<Vec<Workload>> {
    if names.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    names.iter().map(|n| workload::workload(n)).collect()
}

/// Every server target's profile, resolved and its binary prepared before any VM boots.
fn load_profiles(targets: &[Target]) -> Result<BTreeMap<String, Profile>> {
    let recipe = image::recipe::Recipe::load()?;
    let mut out = BTreeMap::new();
    let servers = targets.iter().filter_map(|t| match t {
        Target::Server(n) => Some(n),
        _ => None,
    });
    // The default profile too: the lifecycle runner needs one before any server cell.
    for name in servers.chain([&crate::server::DEFAULT.to_string()]) {
        if out.contains_key(name) {
            continue;
        }
        let mut p = Profile::resolve(name)?;
        p.prepare(&recipe)?;
        out.insert(name.clone(), p);
    }
    Ok(out)
}

/// `--from`: an earlier run's report, shown and gated again without a VM.
fn reevaluate(report: &PerfReport, base: Option<&PerfReport>, args: &Args) -> Result<i32> {
    for s in &report.sessions {
        eprintln!("{} ({}):\n{}", s.kernel, s.kernel_release, report::table(s));
    }
    let run = RunDir::create("perf")?;
    write_outputs(report, &run.path, args.save_baseline.as_deref())?;
    Ok(verdict(report, base, args.tolerance, &[]))
}

fn load_report(path: &Path, flag: &str) -> Result<PerfReport> {
    let text = crate::input::read_limited(path, 64 << 20).map_err(|e| format!("{flag} {e}"))?;
    serde_json::from_str(&text).map_err(|e| {
        crate::util::bad_input(format!(
            "{flag} {}:{}:{}: not a vm-perf perf.json ({e}); write one with --save-baseline",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

fn kernels(cli: &[String]) -> Result<Vec<(String, Image)>> {
    let names = match cli.is_empty() {
        true => vec!["debian".to_string()],
        false => cli.to_vec(),
    };
    names
        .into_iter()
        .map(|n| Ok((n.clone(), image::build(&Source::parse(&n))?)))
        .collect()
}

fn plan(
    args: &Args,
    targets: Vec<Target>,
    profiles: &BTreeMap<String, Profile>,
    workloads: Vec<Workload>,
    accel: Accel,
) -> Result<Plan> {
    let names: Vec<String> = targets
        .iter()
        .map(|t| match t {
            Target::Server(key) => profiles[key].name.clone(),
            other => other.name().to_string(),
        })
        .collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(crate::util::bad_input(format!(
                "two targets are called `{n}`: give one profile another `name:`"
            )));
        }
    }
    Ok(Plan {
        targets,
        names,
        workloads,
        rounds: args.rounds,
        runtime_s: args.runtime,
        ramp_s: args.ramp,
        size_bytes: args.size << 20,
        queues: args.cpus as u16,
        depth: 64,
        cell_budget: Duration::from_secs(20 * accel.timeout_scale()),
    })
}

fn vm_config(args: &Args, setup: &Setup) -> VmConfig {
    VmConfig {
        cpus: args.cpus,
        // One device lives at a time: its data, plus room for the page cache and the servers.
        memory_mib: 768 + 2 * (setup.plan.size_bytes >> 20),
        accel: setup.accel,
        tools: Some(setup.tools.clone()),
        icount_shift: match setup.clock {
            Clock::Icount(s) => Some(s),
            Clock::Plain | Clock::Auto => None,
        },
    }
}

fn head(args: &Args, setup: &Setup) -> PerfReport {
    let plan = &setup.plan;
    PerfReport {
        started_at: rfc3339_now(),
        commit: crate::cmd::vm_e2e::git_commit(),
        machine: machine(),
        accelerator: setup.accel.name().into(),
        clock: setup.clock.name(),
        vcpus: args.cpus,
        rounds: plan.rounds,
        runtime_s: plan.runtime_s,
        ramp_s: plan.ramp_s,
        size_bytes: plan.size_bytes,
        queues: plan.queues,
        depth: plan.depth,
        targets: plan.names.clone(),
        workloads: plan.workloads.iter().map(|w| w.name.to_string()).collect(),
        tools: setup.tools.manifest.packages.clone(),
        sessions: Vec::new(),
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Machine {
        cpu_model,
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        host_kernel,
    }
}

/// One kernel's session: boot, install the servers, measure every cell, scan for splats.
fn measure(
    kernel: &str,
    image: &Image,
    cfg: &VmConfig,
    plan: &Plan,
    profiles: &BTreeMap<String, Profile>,
    dir: &Path,
) -> Result<(Session, Vec<String>)> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let setup_deadline = Instant::now() + Duration::from_secs(60 * cfg.accel.timeout_scale());
    let vm = Vm::boot(image, cfg, dir, setup_deadline).map_err(|f| format!("boot: {f:?}"))?;
    let boot_s = vm.boot_s;
    for p in profiles.values() {
        p.install(&vm, setup_deadline)?;
    }
    let sc = scenario(plan);
    let default = &profiles[crate::server::DEFAULT];
    let mut r = Runner::new(&sc, default, vm, dir, 0);
    let samples = perf_session::run(&mut r, plan, profiles, |s, i, n| {
        eprintln!(
            "  [{i}/{n}] round {} {:<18} {:<12} {:>9.0} IOPS {:>8.1} MB/s",
            s.round + 1,
            s.workload,
            s.target,
            s.iops,
            s.bw_bytes_s / 1e6
        )
    });
    let splats = r.splats();
    r.save_artifacts();
    r.vm.kill();
    let samples = samples?;
    let names = &plan.names;
    let wl: Vec<String> = plan.workloads.iter().map(|w| w.name.to_string()).collect();
    let session = Session {
        kernel: kernel.to_string(),
        kernel_release: image.manifest.kernel_release.clone(),
        image_hash: image.hash().to_string(),
        boot_s,
        device_features: std::mem::take(&mut r.device_features),
        cells: report::cells(&samples, names, &wl),
        samples,
    };
    Ok((session, splats))
}

/// The scenario the server lifecycle code runs under: only its device defaults matter.
fn scenario(plan: &Plan) -> Scenario {
    Scenario {
        name: "vm-perf".into(),
        description: "vm-perf's server cells".into(),
        timeout: Secs(crate::scenario::model::MAX_TIMEOUT_S),
        vm: VmSpec::default(),
        device: DeviceSpec {
            size: Some(Size(plan.size_bytes)),
            queues: Some(plan.queues),
            depth: Some(plan.depth),
            block_size: Some(4096),
        },
        expect_splats: Vec::new(),
        server: None,
        tags: Vec::new(),
        requires: Requires::default(),
        steps: Vec::new(),
        source: PathBuf::from("<vm-perf>"),
    }
}

fn write_outputs(report: &PerfReport, dir: &Path, save: Option<&Path>) -> Result<()> {
    let json = serde_json::to_string_pretty(report).expect("serializable");
    crate::util::write_atomic(&dir.join("perf.json"), json.as_bytes())?;
    crate::util::write_atomic(&dir.join("perf.svg"), chart::svg(report).as_bytes())?;
    eprintln!(
        "vm-perf: {} and {}",
        dir.join("perf.json").display(),
        dir.join("perf.svg").display()
    );
    if let Some(p) = save {
        crate::util::write_atomic(p, json.as_bytes())?;
        eprintln!("vm-perf: baseline saved to {}", p.display());
    }
    Ok(())
}

/// 1 on a regression beyond noise or a kernel splat, else 0.
fn verdict(
    report: &PerfReport,
    base: Option<&PerfReport>,
    tolerance: f64,
    splats: &[String],
) -> i32 {
    for s in splats {
        eprintln!("vm-perf: kernel splat during the measurement: {s}");
    }
    let Some(base) = base else {
        return i32::from(!splats.is_empty());
    };
    for w in baseline::mismatch(base, report) {
        eprintln!("vm-perf: warning: {w}");
    }
    let deltas = baseline::compare(base, report, tolerance);
    let regressed: Vec<_> = deltas.iter().filter(|d| d.regressed()).collect();
    for d in &deltas {
        let mark = if d.regressed() { "REGRESSION" } else { "ok" };
        eprintln!("  {mark:<10} {}", d.describe());
    }
    eprintln!(
        "vm-perf: {} cell(s) compared with the baseline, {} regressed beyond noise",
        deltas.len(),
        regressed.len()
    );
    i32::from(!regressed.is_empty() || !splats.is_empty())
}
