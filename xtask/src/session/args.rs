//! The flags every suite's command shares (`#[command(flatten)]` into vm-e2e, vm-selftests
//! and vm-test), and the pipeline's `Options` made from them.

use std::path::PathBuf;

use super::shard::Shard;
use super::Options;
use crate::vm::accel::Choice;

#[derive(clap::Args, Debug, Clone)]
pub struct SessionArgs {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one (default: the newest build of the same suite, with a warning and a
    /// record in every report); also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    /// Runs of every test, each in a fresh VM (k/N flakiness per test)
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repeat: u32,
    /// VMs at once
    #[arg(short = 'j', long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Run only shard K of N: a deterministic slice of the (test x kernel x server x repeat)
    /// runs, balanced by --durations; shards 1..N together are exactly the full set (vm-e2e:
    /// needs --seed, the same for every shard); `report merge` joins the shards' reports
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Earlier sessions' summary.json (a file or a directory of them) whose durations
    /// balance the shards; every shard must be given the same (default: the tests' limits)
    #[arg(long, value_name = "PATH")]
    pub durations: Option<PathBuf>,
    /// Print the runs this invocation would make (with --shard: this shard's) and exit
    #[arg(long)]
    pub list: bool,
    /// Multiply every default limit (a scenario's and its steps', a suite's) by F
    /// [default: 1 under KVM, 2 under TCG]
    #[arg(long, value_name = "F", value_parser = crate::vm::limits::parse_scale)]
    pub timeout_scale: Option<f64>,
    /// Do not record the kernel's ublk trace (trace/ in each run; its protocol checker fails
    /// a run that breaks a rule): for a kernel whose tracing you distrust, or to measure
    /// without it
    #[arg(long)]
    pub no_kernel_trace: bool,
}

impl SessionArgs {
    /// The flags a reproduce line carries for what this struct changes from the defaults
    /// beyond the pipeline's own (`--no-kernel-trace`).
    pub fn run_flags(&self) -> Vec<String> {
        match self.no_kernel_trace {
            true => vec!["--no-kernel-trace".into()],
            false => Vec::new(),
        }
    }

    /// The pipeline's options for `tool`, its reports under `<time>-<reports>`.
    pub fn options(&self, tool: &'static str, reports: &'static str, seed: Option<u64>) -> Options {
        crate::image::fetch::set_locked(self.locked);
        Options {
            tool,
            reports,
            jobs: self.jobs,
            repeat: self.repeat,
            seed,
            shard: self.shard,
            durations: self.durations.clone(),
            list: self.list,
            accel: self.accel,
            timeout_scale: self.timeout_scale,
        }
    }

    /// The defaults, as if no flag was given.
    pub fn none() -> SessionArgs {
        SessionArgs {
            locked: false,
            repeat: 1,
            jobs: 2,
            accel: Choice::Auto,
            shard: None,
            durations: None,
            list: false,
            timeout_scale: None,
            no_kernel_trace: false,
        }
    }
}
