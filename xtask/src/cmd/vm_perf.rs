//! `cargo xtask vm-perf`: brd, null_blk, loop and ublk servers measured side by side with fio
//! in one VM per kernel, interleaved over rounds, each cell on a fresh device; a table,
//! perf.json, perf.svg, and a regression gate against a baseline that only fails beyond the
//! noise the runs measured. A target that fails (a server whose device hangs, a setup error)
//! ends as a row naming its first cause and evidence; a fresh VM measures the others. Exit
//! codes: 0 measured (and no regression), 1 a server target failed, a regression beyond noise
//! or a kernel splat, 2 bad input, 125 could not measure (no VM, or only one of the kernel's
//! own targets failed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::image::kernel::Source;
use crate::image::{self, tools, Image};
use crate::perf::report::{self, Machine, PerfReport, Session};
use crate::perf::session::{self as perf_session, Ended, Plan, Progress};
use crate::perf::workload::{
    self, Shape, Target, Workload, KERNEL_TARGETS, REFERENCE, TRACED_SUFFIX, WORKLOADS,
};
use crate::perf::{baseline, chart};
use crate::runs::RunDir;
use crate::server::fleet::Fleet;
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
    /// and the --server list]; brd, the reference, is always included; NAME@QxD gives a
    /// multi-queue target its own queues and depth (ublk-mem@1x128)
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
    /// Virtual CPUs
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub cpus: u32,
    /// Hardware queues of every multi-queue target (null_blk, the ublk servers) [default: --cpus]
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub queues: Option<u16>,
    /// Queue depth of every multi-queue target (null_blk, the ublk servers)
    #[arg(long, value_name = "N", default_value_t = 64, allow_negative_numbers = true, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub depth: u16,
    /// Guest clock: `auto` (icount under TCG, plain under KVM), `plain`, or `icount` /
    /// `icount:SHIFT` (QEMU's instruction-counting clock, TCG only; default shift 3)
    #[arg(long, value_name = "auto|plain|icount[:N]", default_value = "auto", value_parser = clock)]
    pub clock: Clock,
    /// Per-cell limit in seconds beyond fio's own run time (device setup, fill, teardown),
    /// taken as given; a cell past it is a hang with a freeze-frame [default: 20 x the limits
    /// scale]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub cell_limit: Option<u64>,
    /// Multiply the default limits (boot and setup 60 s, a cell 20 s) by F [default: 1 under
    /// KVM, 2 under TCG]
    #[arg(long, value_name = "F", value_parser = crate::vm::limits::parse_scale)]
    pub timeout_scale: Option<f64>,
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
    /// Measure every server twice per round: as is, and with the kernel's ublk trace
    /// recording (`NAME+ktrace`; its probes are on only during those cells): the trace's cost
    /// in one session. The trace is checked when the VM ends (a protocol violation: exit 1)
    #[arg(long)]
    pub kernel_trace: bool,
    /// Run every cell's fio under `perf record -a -g` (Debian's linux-perf on top of the tools
    /// layer) and keep the profile as steps/<cell>.profile.txt; the figures of a profiled
    /// session are perturbed by the sampling and are not for comparison with unprofiled ones
    #[arg(long)]
    pub profile: bool,
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
    eprintln!(
        "vm-perf: reproduce with: {}",
        crate::text::term(&report.reproduce)
    );
    if let Some(sig) = crate::host::procs::interrupted() {
        eprintln!(
            "vm-perf: interrupted by {}; what was measured is in perf.json",
            crate::host::procs::signal_name(sig)
        );
        return Ok(128 + sig);
    }
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
        if args.profile && (args.baseline.is_some() || args.save_baseline.is_some()) {
            return Err(crate::util::bad_input(
                "--profile perturbs every figure: gate or save a baseline from a run without it"
                    .into(),
            ));
        }
        let (targets, shapes): (Vec<Target>, Vec<Option<Shape>>) =
            targets(args)?.into_iter().unzip();
        let workloads = workloads(&args.workloads)?;
        let profiles = load_profiles(&targets)?;
        let tools = tools_layer(args.profile)?;
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
        let plan = plan(args, (targets, shapes), &profiles, workloads, accel)?;
        let run = RunDir::create("perf")?;
        eprintln!(
            "vm-perf: {} target(s) x {} workload(s) x {} round(s) x {} kernel(s), {} s + {} s warm-up per cell (limit {} s more), {} queue(s) x depth {}{} | accel {} ({why}), {}, clock {} | {}",
            plan.targets.len(),
            plan.workloads.len(),
            plan.rounds,
            kernels.len(),
            plan.runtime_s,
            plan.ramp_s,
            plan.cell_budget.as_secs(),
            plan.queues,
            plan.depth,
            match plan.profile {
                true => ", profiled (perf record -a -g: figures perturbed)",
                false => "",
            },
            accel.name(),
            plan.limits.describe(),
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

/// One session per kernel, in order; the report and any kernel splats. A kernel whose VM
/// could not be had is a session with every target not measured (the others still are).
fn measure_kernels(args: &Args, setup: &Setup) -> Result<(PerfReport, Vec<String>)> {
    let mut report = head(args, setup);
    let mut splats = Vec::new();
    for (name, image) in &setup.kernels {
        let dir = setup.run.path.join(crate::util::slug(name));
        let vm = vm_config(args, setup);
        if let Some(sig) = crate::host::procs::interrupted() {
            let why = format!("interrupted by {}", crate::host::procs::signal_name(sig));
            report
                .sessions
                .push(unmeasured(name, image, &setup.plan, &why));
            continue;
        }
        let session = match measure(name, image, &vm, &setup.plan, &setup.profiles, &dir) {
            Ok((session, found)) => {
                splats.extend(found.into_iter().map(|s| format!("{name}: {s}")));
                session
            }
            Err(e) => unmeasured(
                name,
                image,
                &setup.plan,
                &format!("{e} (evidence in {})", dir.display()),
            ),
        };
        eprintln!(
            "\n{name} ({}):\n{}",
            session.kernel_release,
            report::table(&session)
        );
        report.sessions.push(session);
    }
    Ok((report, splats))
}

/// A kernel's session that never measured: every target failed for `cause` (not the servers'
/// fault: exit 125 unless something else failed).
fn unmeasured(kernel: &str, image: &Image, plan: &Plan, cause: &str) -> Session {
    let failures = plan
        .names
        .iter()
        .map(|n| report::Failure {
            target: n.clone(),
            workload: plan.workloads[0].name.to_string(),
            round: 0,
            server_fault: false,
            cause: cause.to_string(),
            evidence: None,
        })
        .collect();
    Session {
        kernel: kernel.to_string(),
        kernel_release: image.manifest.kernel_release.clone(),
        image_hash: image.hash().to_string(),
        boot_s: 0.0,
        device_features: BTreeMap::new(),
        samples: Vec::new(),
        cells: Vec::new(),
        failures,
    }
}

/// Targets in measurement order, brd first and always present, each with its own shape if
/// it has one (`NAME@QxD`).
fn targets(args: &Args) -> Result<Vec<(Target, Option<Shape>)>> {
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
    let by_name = server_files_by_name(&args.server)?;
    let mut targets = Vec::with_capacity(names.len());
    for n in &names {
        let (base, shape) = Shape::split(n).map_err(crate::util::bad_input)?;
        // A profile file given with --server answers to its `name:` in --targets too.
        let base = by_name.get(base).map_or(base, String::as_str);
        targets.push((Target::parse(base), shape));
    }
    if args.kernel_trace {
        // Each server beside its traced twin: the same rounds, the same rotation.
        targets = targets
            .into_iter()
            .flat_map(|(t, shape)| match &t {
                Target::Server(k) => vec![(t.clone(), shape), (Target::Traced(k.clone()), shape)],
                _ => vec![(t, shape)],
            })
            .collect();
    }
    Ok(targets)
}

/// The profile files among `--server` (paths), by their profiles' names.
fn server_files_by_name(servers: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in servers
        .iter()
        .filter(|s| s.ends_with(".yaml") || s.contains('/'))
    {
        out.insert(Profile::resolve(s)?.name, s.clone());
    }
    Ok(out)
}

fn workloads(names: &[String]) -> Result<Vec<Workload>> {
    if names.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    names.iter().map(|n| workload::workload(n)).collect()
}

/// The guest programs the cells run; `--profile` adds Debian's linux-perf (its own lock lives
/// in the shared cache, like `vm-run --package`).
fn tools_layer(profile: bool) -> Result<tools::Layer> {
    let mut names: Vec<String> = ["fio", "losetup", "truncate"].map(String::from).into();
    if !profile {
        return tools::layer(&names);
    }
    names.push("perf".into());
    let perf = image::extra::Request {
        packages: vec!["linux-perf".into()],
        lock: None,
    };
    image::extra::layer(&names, &perf)
}

/// Every server target's profile, resolved and its binary prepared before any VM boots.
fn load_profiles(targets: &[Target]) -> Result<BTreeMap<String, Profile>> {
    let recipe = image::recipe::Recipe::load()?;
    let mut out = BTreeMap::new();
    let servers = targets
        .iter()
        .filter_map(|t| t.server_key().map(str::to_string));
    // The default profile too: the fleet needs one before any server cell.
    for name in servers.chain([crate::server::DEFAULT.to_string()]) {
        let name = &name;
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
        true => vec![crate::image::kernel::DEFAULT_KERNEL.to_string()],
        false => cli.to_vec(),
    };
    names
        .into_iter()
        .map(|n| Ok((n.clone(), image::build(&Source::parse(&n))?)))
        .collect()
}

fn plan(
    args: &Args,
    (targets, shapes): (Vec<Target>, Vec<Option<Shape>>),
    profiles: &BTreeMap<String, Profile>,
    workloads: Vec<Workload>,
    accel: Accel,
) -> Result<Plan> {
    let limits = crate::vm::limits::Limits::new(accel, args.timeout_scale);
    let names: Vec<String> = (targets.iter().zip(&shapes))
        .map(|(t, shape)| {
            let name = match t {
                Target::Server(key) => profiles[key].name.clone(),
                Target::Traced(key) => format!("{}{TRACED_SUFFIX}", profiles[key].name),
                other => other.name().to_string(),
            };
            name + &Shape::suffix(*shape)
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
        shapes,
        names,
        workloads,
        rounds: args.rounds,
        runtime_s: args.runtime,
        ramp_s: args.ramp,
        size_bytes: args.size << 20,
        queues: args.queues.unwrap_or(args.cpus as u16),
        depth: args.depth,
        cpus: args.cpus,
        cell_budget: Duration::from_secs(args.cell_limit.unwrap_or(limits.secs(20))),
        limits,
        profile: args.profile,
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
        commit: crate::host::git::commit(),
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
        cell_limit_s: plan.cell_budget.as_secs(),
        timeout_scale: plan.limits.scale,
        targets: plan.names.clone(),
        workloads: plan.workloads.iter().map(|w| w.name.to_string()).collect(),
        tools: setup.tools.manifest.packages.clone(),
        reproduce: reproduce(args, setup),
        sessions: Vec::new(),
    }
}

/// The command that measures the same cells the same way: every target and kernel as asked
/// for, each measurement choice explicit (a default that changes later cannot change it).
fn reproduce(args: &Args, setup: &Setup) -> String {
    let plan = &setup.plan;
    let list = |v: Vec<String>| v.join(",");
    let mut argv: Vec<String> = ["cargo", "xtask", "vm-perf"].map(String::from).into();
    let kernels = setup.kernels.iter().map(|(k, _)| k.clone()).collect();
    // A traced twin comes from --kernel-trace, not from --targets.
    let targets = (plan.targets.iter().zip(&plan.shapes))
        .filter(|(t, _)| !matches!(t, Target::Traced(_)))
        .map(|(t, shape)| format!("{}{}", t.name(), Shape::suffix(*shape)))
        .collect();
    let workloads = plan.workloads.iter().map(|w| w.name.to_string()).collect();
    let pairs = [
        ("--kernel", list(kernels)),
        ("--targets", list(targets)),
        ("--workloads", list(workloads)),
        ("--rounds", plan.rounds.to_string()),
        ("--runtime", plan.runtime_s.to_string()),
        ("--ramp", plan.ramp_s.to_string()),
        ("--size", (plan.size_bytes >> 20).to_string()),
        ("--cpus", args.cpus.to_string()),
        ("--queues", plan.queues.to_string()),
        ("--depth", plan.depth.to_string()),
        ("--accel", setup.accel.name().to_string()),
        ("--clock", setup.clock.name()),
        ("--timeout-scale", plan.limits.scale.to_string()),
        ("--cell-limit", plan.cell_budget.as_secs().to_string()),
    ];
    for (flag, value) in pairs {
        argv.extend([flag.to_string(), value]);
    }
    if args.locked {
        argv.push("--locked".into());
    }
    if args.kernel_trace {
        argv.push("--kernel-trace".into());
    }
    if args.profile {
        argv.push("--profile".into());
    }
    crate::util::shell_line(&argv)
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

/// One kernel's session: VMs in turn — a fresh one after each target that failed, so what it
/// left behind (a hung server, a stuck device) cannot disturb the others — every cell measured
/// or its target's failure recorded, the kernel log scanned in each VM.
fn measure(
    kernel: &str,
    image: &Image,
    cfg: &VmConfig,
    plan: &Plan,
    profiles: &BTreeMap<String, Profile>,
    dir: &Path,
) -> Result<(Session, Vec<String>)> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut state = Progress::new(dir);
    let mut splats = Vec::new();
    let mut boot_s = None;
    let mut device_features = BTreeMap::new();
    // Bounded: every VM after the first follows a failure, and a target fails at most once.
    for n in 0..=plan.targets.len() {
        let vm_dir = match n {
            0 => dir.to_path_buf(),
            _ => dir.join(format!("vm{}", n + 1)),
        };
        let vm = match one_vm(image, cfg, plan, profiles, &vm_dir, &mut state) {
            Ok(vm) => vm,
            Err(e) if n == 0 => return Err(e),
            Err(e) => {
                let after = &state.failures.last().expect("a VM after a failure").target;
                state.abandon(plan, &format!("the fresh VM after {after}'s failure: {e}"));
                break;
            }
        };
        boot_s.get_or_insert(vm.boot_s);
        splats.extend(vm.splats);
        device_features.extend(vm.device_features);
        if vm.ended != Ended::TargetFailed || !state.pending(plan) {
            break;
        }
    }
    let (samples, failures) = (state.samples, state.failures);
    let failed: Vec<&str> = failures.iter().map(|f| f.target.as_str()).collect();
    let measured: Vec<String> = plan
        .names
        .iter()
        .filter(|n| !failed.contains(&n.as_str()))
        .cloned()
        .collect();
    let wl: Vec<String> = plan.workloads.iter().map(|w| w.name.to_string()).collect();
    let session = Session {
        kernel: kernel.to_string(),
        kernel_release: image.manifest.kernel_release.clone(),
        image_hash: image.hash().to_string(),
        boot_s: boot_s.unwrap_or_default(),
        device_features,
        cells: report::cells(&samples, &measured, &wl),
        samples,
        failures,
    };
    Ok((session, splats))
}

/// What one VM of a session measured, besides the samples it added.
struct VmRun {
    ended: Ended,
    boot_s: f64,
    splats: Vec<String>,
    device_features: BTreeMap<String, Vec<String>>,
}

/// Boots a VM, installs the servers and measures from where `state` stands until all cells are
/// done or a target fails; then the kernel log, the servers' output, and the VM is killed.
fn one_vm(
    image: &Image,
    cfg: &VmConfig,
    plan: &Plan,
    profiles: &BTreeMap<String, Profile>,
    dir: &Path,
    state: &mut Progress,
) -> Result<VmRun> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let setup_deadline = Instant::now() + Duration::from_secs(plan.limits.secs(60));
    let vm = Vm::boot(image, cfg, dir, setup_deadline).map_err(|f| format!("boot: {f:?}"))?;
    let boot_s = vm.boot_s;
    for p in profiles.values() {
        p.install(&vm, setup_deadline)?;
    }
    let traced = plan.targets.iter().any(|t| matches!(t, Target::Traced(_)));
    if traced {
        crate::vm::ktrace::install(&vm);
        crate::vm::ktrace::start(&vm, setup_deadline);
        crate::vm::ktrace::probes(&vm, false)?;
    }
    let default = &profiles[crate::server::DEFAULT];
    let mut r = Fleet::new(default, vm, dir);
    let ended = perf_session::run(&mut r, plan, profiles, state, |s, i, n| {
        eprintln!(
            "  [{i}/{n}] round {} {:<18} {:<12} {:>9.0} IOPS {:>8.1} MB/s",
            s.round + 1,
            s.workload,
            s.target,
            s.iops,
            s.bw_bytes_s / 1e6
        )
    });
    if ended == Ended::Stopped {
        let f = state.failures.last().expect("the stop was recorded");
        eprintln!(
            "  the session on this kernel ends: {}",
            crate::text::term(&f.cause)
        );
    }
    if ended == Ended::TargetFailed {
        let f = state.failures.last().expect("a failure was recorded");
        eprintln!(
            "  {}: {}; its other cells are skipped and a fresh VM measures the rest",
            crate::text::term(&f.target),
            f.describe()
        );
    }
    let mut splats = r.splats(&[]);
    if let Some(t) = traced.then(|| crate::vm::ktrace::collect(&r.vm)).flatten() {
        crate::vm::ktrace::save(&t, dir, !t.checker.violations.is_empty());
        eprintln!(
            "  kernel trace of the +ktrace cells: {}",
            crate::text::term(&t.status())
        );
        splats.extend(t.violations_named());
    }
    r.save_artifacts();
    r.vm.kill();
    Ok(VmRun {
        ended,
        boot_s,
        splats,
        device_features: std::mem::take(&mut r.device_features),
    })
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

/// 1 on a server target's failure, a regression beyond noise or a kernel splat; else 125 if
/// one of the kernel's own targets failed (the comparison lacks its reference); else 0.
fn verdict(
    report: &PerfReport,
    base: Option<&PerfReport>,
    tolerance: f64,
    splats: &[String],
) -> i32 {
    for s in splats {
        let what = match s.contains(": protocol violation: ") {
            true => "the kernel trace",
            false => "kernel splat",
        };
        eprintln!(
            "vm-perf: {what} during the measurement: {}",
            crate::text::term(s)
        );
    }
    let failures: Vec<_> = report
        .sessions
        .iter()
        .flat_map(|s| s.failures.iter().map(move |f| (s, f)))
        .collect();
    for (s, f) in &failures {
        eprintln!(
            "vm-perf: {} on {}: {}",
            crate::text::term(&f.target),
            crate::text::term(&s.kernel),
            f.describe()
        );
    }
    let server_failed = failures.iter().any(|(_, f)| f.server_fault);
    let regressed = base.is_some_and(|b| gate(report, b, tolerance));
    match (
        server_failed || regressed || !splats.is_empty(),
        failures.is_empty(),
    ) {
        (true, _) => 1,
        (false, false) => 125,
        (false, true) => 0,
    }
}

/// The baseline comparison, printed; true if some cell regressed beyond noise.
fn gate(report: &PerfReport, base: &PerfReport, tolerance: f64) -> bool {
    for w in baseline::mismatch(base, report) {
        eprintln!("vm-perf: warning: {w}");
    }
    let deltas = baseline::compare(base, report, tolerance);
    let regressed = deltas.iter().filter(|d| d.regressed()).count();
    for d in &deltas {
        let mark = if d.regressed() { "REGRESSION" } else { "ok" };
        eprintln!("  {mark:<10} {}", d.describe());
    }
    eprintln!(
        "vm-perf: {} cell(s) compared with the baseline, {regressed} regressed beyond noise",
        deltas.len(),
    );
    regressed > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::report::{test_report, Failure};

    fn session(failures: Vec<Failure>) -> Session {
        Session {
            kernel: "k".into(),
            kernel_release: "r".into(),
            image_hash: String::new(),
            boot_s: 0.0,
            device_features: BTreeMap::new(),
            samples: vec![],
            cells: vec![],
            failures,
        }
    }

    fn failure(target: &str, server: bool) -> Failure {
        Failure {
            target: target.into(),
            workload: "w".into(),
            round: 0,
            server_fault: server,
            cause: "hang".into(),
            evidence: None,
        }
    }

    #[test]
    fn a_failed_server_fails_the_run_and_a_failed_reference_means_could_not_measure() {
        let code = |f: Vec<Failure>, splats: &[String]| {
            verdict(&test_report(&["brd"], vec![session(f)]), None, 0.05, splats)
        };
        assert_eq!(code(vec![], &[]), 0);
        assert_eq!(code(vec![failure("broken", true)], &[]), 1);
        assert_eq!(code(vec![failure("null_blk", false)], &[]), 125);
        let both = vec![failure("null_blk", false), failure("broken", true)];
        assert_eq!(code(both, &[]), 1, "the server's failure is the verdict");
        let splat = ["k: WARNING".to_string()];
        assert_eq!(code(vec![failure("null_blk", false)], &splat), 1);
    }

    #[test]
    fn queues_default_to_the_cpus_and_the_flags_override_them() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let a = Cli::try_parse_from(["x", "--cpus", "4"]).unwrap().a;
        assert_eq!((a.queues, a.depth), (None, 64));
        let a = Cli::try_parse_from(["x", "--queues", "1", "--depth", "8"])
            .unwrap()
            .a;
        assert_eq!((a.queues, a.depth), (Some(1), 8));
        assert!(Cli::try_parse_from(["x", "--queues", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--depth", "5000"]).is_err());
    }

    #[test]
    fn kernel_trace_measures_each_server_beside_its_traced_twin() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let a = Cli::try_parse_from(["x", "--targets", "ublk-mem,null_blk", "--kernel-trace"])
            .unwrap()
            .a;
        assert_eq!(
            targets(&a).unwrap(),
            [
                (Target::Brd, None),
                (Target::Server("ublk-mem".into()), None),
                (Target::Traced("ublk-mem".into()), None),
                (Target::NullBlk, None)
            ]
        );
        // A shaped target keeps its shape, its traced twin too; a shape where there are no
        // queues is bad input.
        let a = Cli::try_parse_from([
            "x",
            "--targets",
            "ublk-mem,ublk-mem@1x128",
            "--kernel-trace",
        ])
        .unwrap()
        .a;
        let one = Some(Shape {
            queues: 1,
            depth: 128,
        });
        assert_eq!(
            targets(&a).unwrap()[3..],
            [
                (Target::Server("ublk-mem".into()), one),
                (Target::Traced("ublk-mem".into()), one)
            ]
        );
        // A profile file from --server is named in --targets by its `name:`, shaped or not.
        let dir = std::env::temp_dir().join(format!("vm-perf-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pt.yaml");
        let builtin = crate::util::root().join("vm-images/servers/ublk-mem.yaml");
        let text = std::fs::read_to_string(builtin)
            .unwrap()
            .replace("name: ublk-mem\n", "name: mem-pt\n");
        std::fs::write(&file, text).unwrap();
        let path = file.display().to_string();
        let a = Cli::try_parse_from(["x", "--server", &path, "--targets", "brd,mem-pt,mem-pt@1x8"])
            .unwrap()
            .a;
        let got = targets(&a).unwrap();
        assert_eq!(got[1], (Target::Server(path.clone()), None));
        let one_by_8 = Some(Shape {
            queues: 1,
            depth: 8,
        });
        assert_eq!(got[2], (Target::Server(path), one_by_8));
        std::fs::remove_dir_all(&dir).unwrap();
        let a = Cli::try_parse_from(["x", "--targets", "loop@1x8"])
            .unwrap()
            .a;
        assert!(targets(&a)
            .unwrap_err()
            .to_string()
            .contains("has no queues"));
        let a = Cli::try_parse_from(["x", "--targets", "ublk-mem"])
            .unwrap()
            .a;
        assert_eq!(targets(&a).unwrap().len(), 2, "off by default");
    }
}
