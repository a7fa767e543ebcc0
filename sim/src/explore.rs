//! Running the world under a scheduler: one run, many seeds, shrinking, repro commands.

use crate::sched::{Kind, Scheduler};
use crate::workload::{self, Mix, Request};
use crate::world::{Config, Event, Violation, World};
use ublk::core::IoMode;

#[derive(Clone, Debug)]
pub struct Spec {
    pub queues: u16,
    pub depth: u16,
    pub dev_sectors: u64,
    pub max_io_bytes: u32,
    pub requests: usize,
    pub mix: Mix,
    pub scheduler: Kind,
    /// Server crashes per schedule, each followed by user recovery (0: none).
    pub crashes: u32,
    /// Name of the planted bug (for the repro command only).
    pub plant: Option<String>,
    pub mode: IoMode,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            queues: 2,
            depth: 4,
            dev_sectors: 2048,
            max_io_bytes: 32 * 1024,
            requests: 200,
            mix: Mix::Mixed,
            scheduler: Kind::Random,
            crashes: 0,
            plant: None,
            mode: IoMode::PerTag,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub requests: usize,
}

/// Runs one schedule to completion (or to the first violation). Returns (steps, requests done).
pub fn run(
    cfg: Config,
    requests: Vec<Request>,
    kind: Kind,
    seed: u64,
) -> Result<(u64, u64), Violation> {
    let depth = cfg.depth;
    let actors = 1 + 64 + cfg.queues as usize * (cfg.depth as usize * 2).max(4);
    let bound = requests.len() as u64 * 16 + cfg.queues as u64 * cfg.depth as u64 * 16 + 64;
    let mut w = World::new(cfg, requests);
    let mut sched = Scheduler::new(kind, seed, depth, actors, bound / 4);
    let mut enabled: Vec<Event> = Vec::with_capacity(64);
    loop {
        w.enabled(&mut enabled);
        if enabled.is_empty() {
            return if w.finished() {
                Ok((w.steps, w.completed))
            } else {
                Err(w.blocked_state())
            };
        }
        if w.steps > bound {
            return Err(Violation::Liveness(format!(
                "no end after {bound} steps (livelock)"
            )));
        }
        let e = sched.pick(&enabled);
        w.step(e)?;
    }
}

pub fn config(spec: &Spec, seed: u64) -> Config {
    Config {
        queues: spec.queues,
        depth: spec.depth,
        dev_sectors: spec.dev_sectors,
        max_io_bytes: spec.max_io_bytes,
        seed,
        crashes: spec.crashes,
        mode: spec.mode,
    }
}

pub fn requests(spec: &Spec, seed: u64, n: usize) -> Vec<Request> {
    workload::generate(
        seed,
        n,
        spec.mix,
        spec.queues,
        spec.dev_sectors,
        spec.max_io_bytes / 512,
    )
}

/// One seed of an exploration.
pub fn run_seed(spec: &Spec, seed: u64) -> Result<(u64, u64), Failure> {
    run(
        config(spec, seed),
        requests(spec, seed, spec.requests),
        spec.scheduler,
        seed,
    )
    .map_err(|violation| Failure {
        seed,
        violation,
        requests: spec.requests,
    })
}

/// Shrinks a failure: the fewest requests (same seed and scheduler) that still fail the same
/// check. Tries half, three quarters, then one fewer; at most 64 rounds of 3 runs.
pub fn shrink(spec: &Spec, f: &Failure) -> Failure {
    let kind = f.violation.kind();
    let attempt = |n: usize| match run(
        config(spec, f.seed),
        requests(spec, f.seed, n),
        spec.scheduler,
        f.seed,
    ) {
        Err(v) if v.kind() == kind => Some(Failure {
            seed: f.seed,
            violation: v,
            requests: n,
        }),
        _ => None,
    };
    let mut best = f.clone();
    for _ in 0..64 {
        let n = best.requests;
        match [n / 2, n * 3 / 4, n.saturating_sub(1)]
            .into_iter()
            .filter(|c| (1..n).contains(c))
            .find_map(attempt)
        {
            Some(smaller) => best = smaller,
            None => break,
        }
    }
    best
}

/// The command that reproduces a failure exactly.
pub fn repro(spec: &Spec, f: &Failure) -> String {
    let mut s = format!(
        "cargo xtask sim explore --seed {} --seeds 1 --scheduler {} --requests {} --queues {} --depth {} --mix {}",
        f.seed,
        spec.scheduler.name(),
        f.requests,
        spec.queues,
        spec.depth,
        format!("{:?}", spec.mix).to_lowercase()
    );
    if spec.crashes > 0 {
        s += &format!(" --crashes {}", spec.crashes);
    }
    if spec.mode != IoMode::PerTag {
        s += &format!(" --io-mode {}", spec.mode.name());
    }
    if let Some(p) = &spec.plant {
        s += &format!(" --plant {p}");
    }
    s
}
