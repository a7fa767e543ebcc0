//! `cargo xtask vm-e2e [NAME...]`: every scenario (or those named), each run in a fresh VM,
//! up to -j at once, with a progress bar, a table, JUnit XML and JSON. Exit 0 only if all pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::accel::{self, Choice};
use crate::image::{self, Image};
use crate::kernel::Source;
use crate::runs::{RunDir, Verdict};
use crate::scenario::model::Scenario;
use crate::scenario::report::{self, Session};
use crate::scenario::run::{self, Outcome};
use crate::util::{rfc3339_now, target_dir, timestamp, write_atomic, Result};

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
    /// Kernel provider for every scenario: debian, host or PATH (overrides the scenarios' vm.kernel)
    #[arg(long, value_name = "debian|host|PATH")]
    pub kernel: Option<String>,
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Exit like `git bisect run` expects: 0 all pass, 1 a failure or timeout, 125 infra error only
    #[arg(long)]
    pub bisect_exit_codes: bool,
}

pub fn run(args: Args) -> Result<i32> {
    let files = crate::scenario::resolve(&args.names)?;
    if files.is_empty() {
        return Err("no scenarios found in scenarios/".into());
    }
    let scenarios: Vec<Scenario> = files
        .iter()
        .map(|f| Scenario::load(f))
        .collect::<Result<_>>()?;
    let seed = args.seed.unwrap_or_else(random_seed);
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    // One image per kernel provider in use, built before any VM starts.
    let mut images: BTreeMap<String, Arc<Image>> = BTreeMap::new();
    for sc in &scenarios {
        let k = args
            .kernel
            .clone()
            .or(sc.vm.kernel.clone())
            .unwrap_or_else(|| "debian".into());
        if !images.contains_key(&k) {
            images.insert(k.clone(), Arc::new(image::build(&Source::parse(&k))?));
        }
    }
    let first = images.values().next().unwrap().clone();
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

    let mut work: Vec<(usize, u32)> = Vec::new();
    for r in 1..=args.repeat {
        for i in 0..scenarios.len() {
            work.push((i, r));
        }
    }
    let total = work.len();
    let queue = Arc::new(Mutex::new(work.into_iter()));
    let scenarios = Arc::new(scenarios);
    let (tx, rx) = mpsc::channel::<Outcome>();
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} runs [{elapsed}] {msg}").unwrap(),
    );
    let mut handles = Vec::new();
    for _ in 0..(args.jobs as usize).min(total) {
        let (queue, scenarios, tx, images, kernel, commit) = (
            queue.clone(),
            scenarios.clone(),
            tx.clone(),
            images.clone(),
            args.kernel.clone(),
            commit.clone(),
        );
        // Each worker owns its VMs for their whole life (QEMU's parent-death signal is tied
        // to the thread that started it).
        handles.push(std::thread::spawn(move || loop {
            let next = queue.lock().unwrap().next();
            let Some((i, r)) = next else { break };
            if crate::procs::interrupted().is_some() {
                break;
            }
            let sc = &scenarios[i];
            let k = kernel
                .clone()
                .or(sc.vm.kernel.clone())
                .unwrap_or_else(|| "debian".into());
            let img = images[&k].clone();
            let outcome = match RunDir::create(&format!("{}-r{r}", sc.name)) {
                Ok(dir) => run::run(sc, &img, accel, seed, r, &dir.path),
                Err(e) => Outcome {
                    scenario: sc.name.clone(),
                    run: r,
                    verdict: Verdict::InfraError,
                    reason: Some(e),
                    failed_step: None,
                    duration_s: 0.0,
                    boot_s: None,
                    seed,
                    run_dir: PathBuf::new(),
                    freeze_frame: None,
                    image_hash: img.hash().to_string(),
                },
            };
            let record = serde_json::json!({
                "outcome": &outcome,
                "commit": &commit,
                "reproduce": format!("cargo xtask vm-e2e {} --seed {seed}", sc.name),
            });
            let _ = write_atomic(
                &outcome.run_dir.join("scenario-result.json"),
                serde_json::to_string_pretty(&record).unwrap().as_bytes(),
            );
            if tx.send(outcome).is_err() {
                break;
            }
        }));
    }
    drop(tx);
    let mut outcomes: Vec<Outcome> = Vec::new();
    while outcomes.len() < total {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(o) => {
                let line = format!(
                    "{:<12} {} #{} in {:.1} s{}",
                    o.verdict.name(),
                    o.scenario,
                    o.run,
                    o.duration_s,
                    o.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                // A hidden bar (not a terminal, e.g. CI) swallows println: print plainly then.
                if pb.is_hidden() {
                    eprintln!("vm-e2e: {line}");
                } else {
                    pb.println(line);
                }
                pb.inc(1);
                outcomes.push(o);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => pb.tick(),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    pb.finish_and_clear();
    for h in handles {
        let _ = h.join();
    }
    outcomes.sort_by(|a, b| (a.scenario.as_str(), a.run).cmp(&(b.scenario.as_str(), b.run)));
    let wall_s = t0.elapsed().as_secs_f64();
    let flaky = report::failures_by_scenario(&outcomes);
    let names: Vec<&str> = flaky.keys().map(|s| s.as_str()).collect();
    let session = Session {
        started_at,
        seed,
        commit,
        image_hash: first.hash().to_string(),
        accelerator: accel.name().into(),
        jobs: args.jobs as usize,
        repeat: args.repeat,
        wall_s,
        runs: &outcomes,
        flaky: flaky.clone(),
        reproduce: format!("cargo xtask vm-e2e {} --seed {seed}", names.join(" ")),
    };
    let dir = target_dir()
        .join("vm-runs")
        .join(format!("{}-e2e", timestamp()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&session).unwrap().as_bytes(),
    )?;
    write_atomic(&dir.join("junit.xml"), report::junit(&session).as_bytes())?;

    println!("{}", report::table(&outcomes));
    if args.repeat > 1 {
        for (name, (failed, runs)) in &flaky {
            println!(
                "{name}: {failed} of {runs} runs failed{}",
                if *failed > 0 && failed < runs {
                    " (FLAKY)"
                } else {
                    ""
                }
            );
        }
    }
    let passed = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::Pass)
        .count();
    println!(
        "vm-e2e: {passed}/{total} passed in {wall_s:.1} s (seed {seed}); reports: {}",
        dir.display()
    );
    if passed < total {
        println!("vm-e2e: reproduce with: {}", session.reproduce);
    }
    if let Some(sig) = crate::procs::interrupted() {
        return Ok(128 + sig);
    }
    let code = if passed == total && outcomes.len() == total {
        0
    } else if args.bisect_exit_codes
        && outcomes
            .iter()
            .all(|o| matches!(o.verdict, Verdict::Pass | Verdict::InfraError))
    {
        125
    } else {
        1
    };
    Ok(code)
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64) << 32) % 1_000_000_000
}

fn git_commit() -> String {
    let out = crate::procs::run(
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
