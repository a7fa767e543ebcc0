//! `cargo xtask`: the orchestrator. A thin dispatcher; each command lives in `cmd/`.

mod bisect;
mod cmd;
#[cfg(test)]
mod fuzz_tests;
mod host;
mod image;
mod input;
mod perf;
mod reason;
mod runs;
mod scenario;
mod selftests;
mod server;
mod session;
mod text;
#[cfg(test)]
mod tidy_tests;
mod ui;
mod util;
mod vm;
mod vmtest;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "VM-driven integration tests for ublk servers",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or verify the cached) guest image: kernel + initramfs with ublk_drv and the agent
    VmBuild(cmd::vm_build::Args),
    /// Boot a fresh VM, run one command in it, exit with its status (124 timeout, 125 infra error)
    VmRun(cmd::vm_run::Args),
    /// cargo's `target.runner`: a test binary in a fresh VM, exiting with its status
    VmRunner(cmd::vm_run::runner::Args),
    /// Run YAML scenarios, each in a fresh VM (all of scenarios/ by default)
    VmE2e(cmd::vm_e2e::Args),
    /// Run the simple-e2e scenario
    VmSimpleE2e {
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_name = "debian|host|PATH")]
        kernel: Option<String>,
    },
    /// Performance: brd, null_blk, loop and ublk servers side by side with fio, a chart, a noise-aware baseline gate
    VmPerf(cmd::vm_perf::Args),
    /// Flaky-aware bisection: repeated runs per commit, fresh worktrees, a stated confidence
    Bisect(cmd::bisect::Args),
    /// The simulator: `cargo xtask sim explore|replay|bench ...`
    Sim(cmd::sim::Args),
    /// Server profiles: list the built-in ones, or check profile files without a VM
    Servers(cmd::servers::Args),
    /// Scenario files: check them without a VM
    #[command(subcommand)]
    Scenario(cmd::scenario::Cmd),
    /// Reports: `report merge` joins sessions (CI shards, kernels) into one report
    #[command(subcommand)]
    Report(cmd::report::Cmd),
    /// Kill VMs a previous xtask left running, remove stale state, re-verify the image
    VmReset,
    /// Re-probe whether KVM works on this host and cache the verdict for --accel auto
    VmProbe,
    /// The Debian kernels a run can boot: locked version, suite, cached, ublk features
    Kernels,
    /// Show the locked guest kernels and the newest of each; --upgrade [NAME] locks the newest
    KernelLock(cmd::kernel_lock::Args),
    /// The kernel's own ublk selftests, each script in a fresh VM (hard limit, freeze-frame, splat scan)
    VmSelftests(cmd::vm_selftests::Args),
    /// A project's own test programs and scripts, each in a fresh VM (hard limit, kselftest
    /// exit codes, freeze-frame, splat scan, repeats, shards, reports)
    VmTest(cmd::vm_test::Args),
    /// Compare the guest tools layer's lock with its Debian suite; --upgrade locks the newest
    ToolsLock(cmd::tools_lock::Args),
    /// The download cache shared by every checkout: list, prune, fetch every image input, dir
    #[command(subcommand)]
    Cache(cmd::cache::Cmd),
    /// Every lock (kernels with their selftests sources, the tools layer) against its suite; --upgrade rewrites the stale ones
    Locks(cmd::locks::Args),
}

fn main() {
    host::procs::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::VmBuild(a) => cmd::vm_build::run(a),
        Cmd::VmRun(a) => cmd::vm_run::run(a),
        Cmd::VmRunner(a) => cmd::vm_run::runner::run(a),
        Cmd::VmE2e(a) => cmd::vm_e2e::run(a),
        Cmd::VmPerf(a) => cmd::vm_perf::run(a),
        Cmd::VmSimpleE2e { seed, kernel } => cmd::vm_e2e::run(cmd::vm_e2e::Args {
            session: session::SessionArgs {
                jobs: 1,
                ..session::SessionArgs::none()
            },
            names: vec!["simple-e2e".into()],
            seed,
            kernel: kernel.into_iter().collect(),
            bisect_exit_codes: false,
            server: Vec::new(),
            queues: None,
            depth: None,
        }),
        Cmd::Scenario(c) => cmd::scenario::run(c),
        Cmd::Report(c) => cmd::report::run(c),
        Cmd::Servers(a) => cmd::servers::run(a),
        Cmd::Sim(a) => cmd::sim::run(a),
        Cmd::Bisect(a) => cmd::bisect::run(a),
        Cmd::VmReset => cmd::vm_reset::run(),
        Cmd::VmProbe => cmd::vm_probe::run(),
        Cmd::KernelLock(a) => cmd::kernel_lock::run(a),
        Cmd::Kernels => cmd::kernels::run(),
        Cmd::ToolsLock(a) => cmd::tools_lock::run(a),
        Cmd::VmSelftests(a) => cmd::vm_selftests::run(a),
        Cmd::VmTest(a) => cmd::vm_test::run(a),
        Cmd::Cache(c) => cmd::cache::run(c),
        Cmd::Locks(a) => cmd::locks::run(a),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", text::term_lines(&e));
            match host::procs::interrupted() {
                Some(sig) => 128 + sig,
                None => util::exit_code_for(&e),
            }
        }
    };
    std::process::exit(code);
}
