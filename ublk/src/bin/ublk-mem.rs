//! ublk-mem: a memory-backed ublk block device server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ublk::server::{self, Options};
use ublk::util::parse_size;
use ublk::{admin, recovery};

#[derive(Parser)]
#[command(
    name = "ublk-mem",
    version,
    about = "Memory-backed ublk block device (runs in the foreground)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// How a device is served, the same for `add` and `recover`.
#[derive(Args)]
struct Serving {
    /// Record every queue's tag events to PREFIX.q<N> (format: ublk/TRACE.md)
    #[arg(long, value_name = "PREFIX")]
    trace: Option<PathBuf>,
    /// Where SIGUSR1 writes the per-tag state dump (default: stderr)
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Print the ready line as JSON
    #[arg(long)]
    json: bool,
    /// Queue threads' scheduling: batch (SCHED_BATCH: a woken queue thread does not preempt
    /// the submitter on its CPU, it gets the submitter's whole burst) or normal
    #[arg(long, value_name = "batch|normal", default_value = "batch", value_parser = server::parse_sched)]
    sched: server::SchedChoice,
}

/// `add`'s arguments.
#[derive(Args)]
struct AddArgs {
    /// Device size, e.g. 256MiB, 1GiB, 4096 (bytes)
    #[arg(long, value_parser = parse_size)]
    size: u64,
    #[arg(long, default_value_t = 1)]
    queues: u16,
    #[arg(long, default_value_t = 128)]
    depth: u16,
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Largest single request in bytes
    #[arg(long, default_value_t = server::DEFAULT_MAX_IO_BYTES.into(), value_parser = parse_size)]
    max_io: u64,
    /// Device id (default: the kernel picks one)
    #[arg(long)]
    id: Option<u32>,
    #[command(flatten)]
    serving: Serving,
    /// Fault injection for tests: stall-tag=Q:T:after=N (tag T of queue Q never completes its (N+1)th request)
    #[arg(long, value_parser = server::parse_fault)]
    fault: Option<(u16, ublk::core::Fault)>,
    /// How request data reaches the store: auto (USER_COPY when the kernel offers it: one
    /// copy), buffer (per-tag buffers: the kernel's copy and ours), user (USER_COPY or fail)
    #[arg(long, value_name = "auto|buffer|user", default_value = "auto", value_parser = server::parse_copy_mode)]
    copy_mode: server::CopyChoice,
    /// How requests travel: auto (batched when the kernel offers BATCH_IO, Linux 7.0 and
    /// later, with USER_COPY), per-tag (one FETCH/COMMIT per tag and request), batch (or fail)
    #[arg(long, value_name = "auto|per-tag|batch", default_value = "auto", value_parser = server::parse_io_mode)]
    io_mode: server::IoChoice,
    /// User recovery: the device outlives this process; its store is a file under
    /// /dev/shm/ublk-mem that `recover` re-attaches. reissue: requests the dead server held
    /// are issued again; requeue: they fail, new ones wait; fail-io: all fail until recovered
    #[arg(long, value_name = "reissue|requeue|fail-io", value_parser = recovery::parse_mode)]
    recoverable: Option<recovery::Mode>,
}

impl AddArgs {
    fn options(self) -> Result<Options, String> {
        let max_io_bytes =
            u32::try_from(self.max_io).map_err(|_| "--max-io is too large".to_string())?;
        let Serving {
            trace,
            state_file,
            json,
            sched,
        } = self.serving;
        Ok(Options {
            size: self.size,
            queues: self.queues,
            depth: self.depth,
            block_size: self.block_size,
            max_io_bytes,
            id: self.id,
            trace,
            state_file,
            json,
            fault: self.fault,
            copy_mode: self.copy_mode,
            io_mode: self.io_mode,
            sched,
            recovery: self.recoverable,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a device and serve it until SIGINT/SIGTERM; prints /dev/ublkbN once it is ready
    Add(AddArgs),
    /// Take over a recoverable device whose server died or was quiesced, and serve it like `add`
    Recover {
        #[arg(long)]
        id: u32,
        #[command(flatten)]
        serving: Serving,
    },
    /// Planned server replacement (kernels with QUIESCE): the device's server finishes what it
    /// holds and exits; requests wait for `recover`
    Quiesce {
        #[arg(long)]
        id: u32,
        /// How long the kernel may wait for an idle tag on every queue
        #[arg(long, default_value_t = 10000)]
        wait_ms: u64,
    },
    /// List ublk devices
    List {
        #[arg(long)]
        json: bool,
    },
    /// The kernel driver's ublk features (GET_FEATURES), by name
    Features {
        #[arg(long)]
        json: bool,
    },
    /// Stop and delete devices
    Del {
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<u32>,
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Add(args) => args.options().and_then(|o| server::serve(&o)),
        Cmd::Recover { id, serving } => server::recover(&recovery::RecoverOptions {
            id,
            trace: serving.trace,
            state_file: serving.state_file,
            json: serving.json,
            sched: serving.sched,
        }),
        Cmd::Quiesce { id, wait_ms } => recovery::quiesce(
            id,
            std::time::Duration::from_millis(wait_ms.clamp(1, 600_000)),
        ),
        Cmd::List { json } => admin::list(json),
        Cmd::Features { json } => admin::features(json),
        Cmd::Del { id, all } => {
            let ids = if all {
                ublk::ctrl::list_ids()
            } else {
                id.into_iter().collect()
            };
            admin::delete(&ids)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ublk-mem: error: {e}");
            ExitCode::FAILURE
        }
    }
}
