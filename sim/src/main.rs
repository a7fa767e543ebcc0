//! `sim` (also `cargo xtask sim ...`): replay traces, explore schedules, measure throughput.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sim::explore::{self, Spec};
use sim::sched::Kind;
use sim::workload::{self, Mix};
use sim::world::Config;
use ublk::core::IoMode;
use ublk::planted::{self, Bug};

#[derive(Parser)]
#[command(
    name = "sim",
    version,
    about = "Deterministic simulation of ublk's kernel side against the real queue core"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Shape {
    #[arg(long, default_value_t = 2)]
    queues: u16,
    #[arg(long, default_value_t = 4)]
    depth: u16,
    /// Requests per schedule
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[arg(long, value_enum, default_value_t = Mix::Mixed)]
    mix: Mix,
    /// random, or pct:D (PCT with D-1 priority change points)
    #[arg(long, default_value = "random")]
    scheduler: String,
    /// Plant a known bug class (tests of the simulator itself)
    #[arg(long)]
    plant: Option<String>,
    /// User recovery: the server dies up to N times per schedule (at any step while it holds
    /// requests); the kernel requeues what it held and a new server takes over
    #[arg(long, default_value_t = 0)]
    crashes: u32,
    /// The protocol: per-tag FETCH/COMMIT_AND_FETCH, or batch (PREP/COMMIT_IO_CMDS and a
    /// multishot FETCH_IO_CMDS, UBLK_F_BATCH_IO)
    #[arg(long, default_value = "per-tag", value_parser = ["per-tag", "batch"])]
    io_mode: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Explore schedules: one per seed
    Explore {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// First seed
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        shape: Shape,
    },
    /// Replay ublk-mem traces (all queue files of one run: PREFIX.q0 PREFIX.q1 ...), a
    /// hand-written tag-sequence file, or a kernel-side trace of any server (a run's
    /// trace/events.txt: its protocol rules checked, then its requests replayed)
    Replay {
        files: Vec<String>,
        /// For a kernel trace: the device whose requests to replay (default: the first)
        #[arg(long)]
        dev: Option<u32>,
        /// Schedules to try
        #[arg(long, default_value_t = 100)]
        seeds: u64,
    },
    /// Throughput benchmark: simulated requests per second on one core
    Bench {
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
}

fn spec(shape: &Shape) -> Result<Spec, String> {
    if shape.queues == 0
        || shape.queues > 64
        || shape.depth == 0
        || shape.depth > 4096
        || shape.requests == 0
        || shape.requests > 10_000_000
    {
        return Err("--queues 1..=64, --depth 1..=4096, --requests 1..=10000000".into());
    }
    if let Some(p) = &shape.plant {
        let bug = Bug::parse(p).ok_or_else(|| {
            format!(
                "--plant {p}: unknown bug; known: {}",
                Bug::ALL
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        planted::plant(bug);
    }
    Ok(Spec {
        queues: shape.queues,
        depth: shape.depth,
        requests: shape.requests,
        mix: shape.mix,
        scheduler: Kind::parse(&shape.scheduler)?,
        plant: shape.plant.clone(),
        crashes: shape.crashes,
        mode: match shape.io_mode.as_str() {
            "batch" => IoMode::Batch,
            _ => IoMode::PerTag,
        },
        ..Spec::default()
    })
}

fn explore_cmd(seeds: u64, first: u64, shape: &Shape) -> Result<bool, String> {
    let spec = spec(shape)?;
    let pb = ProgressBar::new(seeds);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} schedules [{elapsed}] {msg}").unwrap(),
    );
    let t = Instant::now();
    let (mut reqs, mut steps) = (0u64, 0u64);
    for seed in first..first.saturating_add(seeds) {
        match explore::run_seed(&spec, seed) {
            Ok((s, r)) => {
                steps += s;
                reqs += r;
            }
            Err(f) => {
                pb.finish_and_clear();
                let small = explore::shrink(&spec, &f);
                println!(
                    "FAIL seed {seed} after {} schedule(s): {} check: {}",
                    seed - first + 1,
                    f.violation.kind(),
                    f.violation.message()
                );
                println!(
                    "shrunk to {} request(s): {}",
                    small.requests,
                    small.violation.message()
                );
                println!("reproduce: {}", explore::repro(&spec, &small));
                return Ok(false);
            }
        }
        if seed % 64 == 0 {
            pb.set_position(seed - first + 1);
        }
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    println!("explore: {seeds} schedule(s) ({}), {reqs} requests, {steps} steps, 0 failures in {secs:.2} s", spec.scheduler.name());
    println!(
        "throughput: {:.0} simulated requests/s, {:.0} schedules/s",
        reqs as f64 / secs,
        seeds as f64 / secs
    );
    Ok(true)
}

/// Largest trace file read.
const MAX_TRACE_BYTES: u64 = 1 << 30;

fn read_trace(f: &str) -> Result<(String, String), String> {
    use std::io::Read;
    let file = std::fs::File::open(f).map_err(|e| format!("{f}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_TRACE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{f}: {e}"))?;
    if text.len() as u64 > MAX_TRACE_BYTES {
        return Err(format!("{f}: larger than {} MiB", MAX_TRACE_BYTES >> 20));
    }
    Ok((f.to_string(), text))
}

/// A kernel trace's rules, then its requests through the simulator.
fn replay_ktrace(name: &str, text: &str, dev: Option<u32>, seeds: u64) -> Result<bool, String> {
    let (header, events) = ublk::ktrace::parse(text).map_err(|e| format!("{name}:{e}"))?;
    let checker = ublk::ktrace::check::Checker::run(&header, &events);
    println!(
        "replay: kernel trace {name}: {} event(s), {} lost, kernel {}",
        events.len(),
        header.lost,
        header.kernel
    );
    for v in &checker.violations {
        println!("FAIL kernel trace: {} check: {}", v.rule.name(), v.message);
    }
    if checker.violations_total > 0 {
        println!(
            "replay: {} protocol violation(s) in the trace itself",
            checker.violations_total
        );
        return Ok(false);
    }
    println!("replay: the trace keeps every protocol rule");
    let (r, note) = workload::from_ktrace(&events, dev)?;
    println!("replay: {note}");
    replay_requests(r, seeds)
}

fn replay_cmd(files: &[String], dev: Option<u32>, seeds: u64) -> Result<bool, String> {
    if files.is_empty() {
        return Err(
            "give the trace files (PREFIX.q0 PREFIX.q1 ..., or a run's trace/events.txt)".into(),
        );
    }
    let texts = files
        .iter()
        .map(|f| read_trace(f))
        .collect::<Result<Vec<_>, _>>()?;
    if texts[0].1.starts_with(ublk::ktrace::MAGIC) {
        if texts.len() > 1 {
            return Err("a kernel trace is replayed alone (one events.txt)".into());
        }
        return replay_ktrace(&texts[0].0, &texts[0].1, dev, seeds);
    }
    let r = workload::from_traces(&texts)?;
    replay_requests(r, seeds)
}

fn replay_requests(r: workload::Replay, seeds: u64) -> Result<bool, String> {
    println!(
        "replay: {} request(s) on {} queue(s) of depth {}, {} sectors",
        r.requests.len(),
        r.queues,
        r.depth,
        r.dev_sectors
    );
    for seed in 0..seeds {
        let cfg = Config {
            queues: r.queues,
            depth: r.depth,
            dev_sectors: r.dev_sectors,
            max_io_bytes: r.max_io_bytes,
            seed,
            crashes: 0,
            mode: IoMode::PerTag,
        };
        if let Err(v) = explore::run(cfg, r.requests.clone(), Kind::Random, seed) {
            println!(
                "FAIL replay schedule {seed}: {} check: {}",
                v.kind(),
                v.message()
            );
            return Ok(false);
        }
    }
    println!("replay: clean under {seeds} schedule(s); every commit result matched the trace");
    Ok(true)
}

fn bench_cmd(seconds: u64) -> Result<bool, String> {
    // 4 KiB-and-smaller requests (the common block I/O size), mixed ops, 2 queues x depth 4.
    let spec = Spec {
        requests: 2000,
        max_io_bytes: 4096,
        ..Spec::default()
    };
    let t = Instant::now();
    let (mut reqs, mut seeds) = (0u64, 0u64);
    while t.elapsed().as_secs() < seconds {
        seeds += 1;
        let (_, r) = explore::run_seed(&spec, seeds)
            .map_err(|f| format!("seed {}: {}", f.seed, f.violation.message()))?;
        reqs += r;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "bench: {reqs} simulated requests (up to {} KiB, mixed ops) in {secs:.2} s on one core: {:.0} requests/s ({seeds} schedules of {} requests, {} queues x depth {})",
        spec.max_io_bytes / 1024,
        reqs as f64 / secs,
        spec.requests,
        spec.queues,
        spec.depth
    );
    Ok(true)
}

fn main() -> ExitCode {
    // Behave like other command-line tools when piped into `head`: die quietly on SIGPIPE.
    // SAFETY: restoring the default disposition of one signal before any output.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let r = match Cli::parse().cmd {
        Cmd::Explore { seeds, seed, shape } => explore_cmd(seeds, seed, &shape),
        Cmd::Replay { files, dev, seeds } => replay_cmd(&files, dev, seeds),
        Cmd::Bench { seconds } => bench_cmd(seconds),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sim: error: {e}");
            ExitCode::from(2)
        }
    }
}
