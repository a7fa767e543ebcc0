//! Runs one scenario in one fresh VM: steps in order, each under its own deadline inside the
//! scenario's; a hang becomes a freeze-frame and a `timeout` verdict, a wrong result a `fail`.
//! Every command's output is kept in the run directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde::Serialize;
use vm_agent::Kind as Frame;

use super::freeze::{self, DaemonRef, FreezeFrame};
use super::model::{self, Expect, Kind, Name, Scenario, Step};
use super::splat;
use crate::agent::{wait, Event};
use crate::image::Image;
use crate::qemu::{Accel, VmConfig};
use crate::runs::Verdict;
use crate::vm::{Failure, Vm};

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub run: u32,
    pub verdict: Verdict,
    pub reason: Option<String>,
    /// Index and kind of the step that failed or hung.
    pub failed_step: Option<String>,
    pub duration_s: f64,
    pub boot_s: Option<f64>,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub freeze_frame: Option<PathBuf>,
    /// What booted, exactly (with the seed and the session's commit: enough to reproduce).
    pub image_hash: String,
}

/// A command running in the guest, with its output going to a log file.
struct Job {
    id: u32,
    rx: Receiver<Event>,
    log: File,
    status: Option<i32>,
    lost: Option<String>,
}

impl Job {
    /// Pumps events until `deadline`, or until `until` (shown each stdout chunk) says stop.
    /// Returns true once the job has ended.
    fn pump(&mut self, deadline: Instant, mut until: impl FnMut(&[u8]) -> bool) -> bool {
        if self.status.is_some() || self.lost.is_some() {
            return true;
        }
        loop {
            match wait(&self.rx, deadline) {
                Some(Event::Frame(f)) => match f.kind {
                    Frame::Stdout => {
                        let _ = self.log.write_all(&f.payload);
                        if until(&f.payload) {
                            return false;
                        }
                    }
                    Frame::Stderr => {
                        let _ = self.log.write_all(&f.payload);
                    }
                    Frame::Exit => {
                        self.status = Some(vm_agent::exit_code(f.payload_i32().unwrap_or(-1)));
                        return true;
                    }
                    Frame::Error => {
                        self.lost = Some(String::from_utf8_lossy(&f.payload).into_owned());
                        return true;
                    }
                    _ => {}
                },
                Some(Event::Lost(why)) => {
                    self.lost = Some(why);
                    return true;
                }
                None => return false,
            }
        }
    }
}

struct Daemon {
    job: Job,
    pid: i32,
    bdev: String,
    state_file: String,
    trace: Option<(String, u16)>,
}

/// Why a step did not pass.
enum StepError {
    Fail(String),
    Hang(String),
    Infra(String),
}

struct Runner<'a> {
    sc: &'a Scenario,
    vm: Vm,
    dir: PathBuf,
    seed: u64,
    deadline: Instant,
    daemons: HashMap<String, Daemon>,
    jobs: HashMap<String, Job>,
    freeze: Option<FreezeFrame>,
}

pub fn run(sc: &Scenario, image: &Image, accel: Accel, seed: u64, run: u32, dir: &Path) -> Outcome {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(sc.timeout.0);
    let memory = sc
        .vm
        .memory
        .as_deref()
        .map(crate::util::parse_mib)
        .transpose();
    let mut out = Outcome {
        scenario: sc.name.clone(),
        run,
        verdict: Verdict::Pass,
        reason: None,
        failed_step: None,
        duration_s: 0.0,
        boot_s: None,
        seed,
        run_dir: dir.to_path_buf(),
        freeze_frame: None,
        image_hash: image.hash().to_string(),
    };
    let finish = |mut out: Outcome, verdict, reason: String| {
        out.verdict = verdict;
        out.reason = Some(reason);
        out.duration_s = start.elapsed().as_secs_f64();
        out
    };
    let memory_mib = match memory {
        Ok(m) => m.unwrap_or(1024),
        Err(e) => return finish(out, Verdict::InfraError, format!("vm.memory: {e}")),
    };
    let cfg = VmConfig {
        cpus: sc.vm.cpus.unwrap_or(2),
        memory_mib,
        accel,
    };
    let vm = match Vm::boot(image, &cfg, dir, deadline) {
        Ok(vm) => vm,
        Err(Failure::Timeout(why)) => return finish(out, Verdict::Timeout, format!("boot: {why}")),
        Err(Failure::Infra(why)) => return finish(out, Verdict::InfraError, why),
        Err(Failure::Interrupted(sig)) => {
            return finish(
                out,
                Verdict::Interrupted,
                format!("interrupted by {}", crate::procs::signal_name(sig)),
            )
        }
    };
    out.boot_s = Some(vm.boot_s);
    let _ = std::fs::create_dir_all(dir.join("steps"));
    let mut r = Runner {
        sc,
        vm,
        dir: dir.to_path_buf(),
        seed,
        deadline,
        daemons: HashMap::new(),
        jobs: HashMap::new(),
        freeze: None,
    };
    let mut result: Option<(Verdict, String, String)> = None;
    for (i, step) in sc.steps.iter().enumerate() {
        let label = format!(
            "steps[{i}] {}{}",
            step.kind.name(),
            step.label
                .as_deref()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default()
        );
        let step_deadline = (Instant::now() + Duration::from_secs(step.timeout.0)).min(deadline);
        let t = Instant::now();
        let res = r.step(i, step, step_deadline);
        let _ = writeln!(
            r.log(),
            "{label}: {} in {:.2} s",
            if res.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if let Err(e) = res {
            let (verdict, why) = match e {
                StepError::Fail(m) => (Verdict::Fail, m),
                StepError::Hang(m) => {
                    let ff = freeze::collect(
                        &r.vm,
                        &r.daemon_refs(),
                        &r.dir.join("freeze-frame"),
                        &format!("{label} hung: {m}"),
                    );
                    out.freeze_frame = Some(ff.dir.clone());
                    (
                        Verdict::Timeout,
                        format!(
                            "{m}; freeze-frame: {}",
                            ff.dir.join("summary.txt").display()
                        ),
                    )
                }
                StepError::Infra(m) => (Verdict::InfraError, m),
            };
            result = Some((verdict, why, label));
            break;
        }
        if crate::procs::interrupted().is_some() {
            result = Some((Verdict::Interrupted, "interrupted".into(), label));
            break;
        }
    }
    if out.freeze_frame.is_none() {
        out.freeze_frame = r.freeze.as_ref().map(|f| f.dir.clone());
    }
    // The kernel log is always checked, whatever happened.
    let splats = r.splats();
    r.save_artifacts();
    r.vm.kill();
    match (result, splats) {
        (Some((v, why, step)), _) => {
            out.failed_step = Some(step);
            finish(out, v, why)
        }
        (None, Err(m)) => finish(out, Verdict::InfraError, m),
        (None, Ok(found)) if !found.is_empty() => {
            out.failed_step = Some("kernel log".into());
            finish(
                out,
                Verdict::Fail,
                format!(
                    "kernel splat: {} (and {} more; see dmesg.txt)",
                    found[0],
                    found.len() - 1
                ),
            )
        }
        (None, Ok(_)) => {
            out.duration_s = start.elapsed().as_secs_f64();
            out
        }
    }
}

impl Runner<'_> {
    fn log(&self) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("steps.log"))
            .expect("run dir is writable")
    }

    fn exec(&self, argv: &[String], log_name: &str) -> Result<Job, StepError> {
        let log = File::create(self.dir.join("steps").join(log_name))
            .map_err(|e| StepError::Infra(format!("create step log: {e}")))?;
        let (id, rx) = self.vm.agent.exec(argv).map_err(StepError::Infra)?;
        self.vm.agent.stdin(id, &[]).map_err(StepError::Infra)?;
        Ok(Job {
            id,
            rx,
            log,
            status: None,
            lost: None,
        })
    }

    /// Waits for a job to exit; Hang at the deadline.
    fn finish_job(&self, job: &mut Job, deadline: Instant, what: &str) -> Result<i32, StepError> {
        if !job.pump(deadline, |_| false) {
            return Err(StepError::Hang(format!(
                "{what} did not finish within its timeout"
            )));
        }
        if let Some(why) = &job.lost {
            return Err(StepError::Infra(format!("{what}: {why}")));
        }
        Ok(job.status.unwrap())
    }

    fn daemon_refs(&self) -> Vec<DaemonRef<'_>> {
        self.daemons
            .iter()
            .filter(|(_, d)| d.job.status.is_none())
            .map(|(n, d)| DaemonRef {
                name: n,
                exec_id: d.job.id,
                pid: d.pid,
                state_file: &d.state_file,
            })
            .collect()
    }

    /// `sh -c` with `$DEV_<name>` (the block device of each running daemon) exported.
    fn shell_argv(&self, script: &str) -> Vec<String> {
        let mut exports: Vec<String> = self
            .daemons
            .iter()
            .filter(|(_, d)| d.job.status.is_none())
            .map(|(n, d)| format!("export DEV_{}={};", n.replace('-', "_"), d.bdev))
            .collect();
        exports.sort();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{}\n{script}", exports.join(" ")),
        ]
    }

    fn io_argv(&self, io: &model::Io) -> Result<Vec<String>, StepError> {
        let d = self
            .daemons
            .get(&io.device)
            .ok_or_else(|| StepError::Fail(format!("device `{}` is not running", io.device)))?;
        let seed = io.seed.unwrap_or(self.seed);
        let qd = io.qd.unwrap_or(32).to_string();
        let mut script = String::new();
        if io.write {
            let pattern = match io.pattern {
                model::Pattern::Sequential => "sequential",
                model::Pattern::Scattered => "scattered",
                model::Pattern::Random => "random",
            };
            script += &format!(
                "blkio write --dev {} --seed {seed} --pattern {pattern} --qd {qd}",
                d.bdev
            );
            if let Some(b) = io.bytes {
                script += &format!(" --bytes {}", b.arg());
            }
            if let Some(c) = io.count {
                script += &format!(" --count {c}");
            }
            if let Some(m) = io.min {
                script += &format!(" --min {}", m.arg());
            }
            if let Some(m) = io.max {
                script += &format!(" --max {}", m.arg());
            }
            if io.overlap {
                script += " --overlap";
            }
            if io.spread {
                script += " --spread";
            }
        }
        if io.verify {
            if !script.is_empty() {
                script += " && ";
            }
            script += &format!(
                "blkio verify --dev {} --qd {qd}{}",
                d.bdev,
                if io.full { " --full" } else { "" }
            );
        }
        Ok(vec!["sh".into(), "-c".into(), script])
    }

    fn step(&mut self, i: usize, step: &Step, deadline: Instant) -> Result<(), StepError> {
        let log_name = |extra: &str| format!("{i:02}-{}{extra}.log", step.kind.name());
        match &step.kind {
            Kind::Start(s) => self.start(s, deadline, &log_name("")),
            Kind::Io(io) => {
                let argv = self.io_argv(io)?;
                let mut job = self.exec(&argv, &log_name(""))?;
                if let Some(name) = &io.background {
                    self.jobs.insert(name.clone(), job);
                    return Ok(());
                }
                let status = self.finish_job(&mut job, deadline, "io")?;
                if status != 0 {
                    return Err(StepError::Fail(format!(
                        "io failed with status {status}: {}",
                        tail_of(&self.dir.join("steps").join(log_name("")), 6)
                    )));
                }
                if io.spread && io.write {
                    self.check_every_queue_served(&io.device)?;
                }
                Ok(())
            }
            Kind::Shell(sh) => {
                let mut job = self.exec(&self.shell_argv(&sh.run), &log_name(""))?;
                if let Some(name) = &sh.background {
                    self.jobs.insert(name.clone(), job);
                    return Ok(());
                }
                let status = self.finish_job(&mut job, deadline, "shell command")?;
                if status != sh.expect_status {
                    return Err(StepError::Fail(format!(
                        "`{}` exited {status}, expected {}: {}",
                        sh.run,
                        sh.expect_status,
                        tail_of(&self.dir.join("steps").join(log_name("")), 6)
                    )));
                }
                Ok(())
            }
            Kind::Wait(w) => {
                let mut job = self
                    .jobs
                    .remove(&w.job)
                    .ok_or_else(|| StepError::Fail(format!("no background job `{}`", w.job)))?;
                let status =
                    self.finish_job(&mut job, deadline, &format!("background job `{}`", w.job))?;
                match (w.expect, status) {
                    (Expect::Pass, 0) => Ok(()),
                    (Expect::Fail, s) if s != 0 => Ok(()),
                    (e, s) => Err(StepError::Fail(format!(
                        "background job `{}` exited {s}, expected {e:?}",
                        w.job
                    ))),
                }
            }
            Kind::Signal(sg) => {
                let d = self.daemons.get_mut(&sg.device).ok_or_else(|| {
                    StepError::Fail(format!("device `{}` is not running", sg.device))
                })?;
                self.vm
                    .agent
                    .signal(d.job.id, sg.signal.number())
                    .map_err(StepError::Infra)?;
                if !sg.signal.ends_daemon() {
                    return Ok(());
                }
                if !d.job.pump(deadline, |_| false) {
                    return Err(StepError::Hang(format!(
                        "daemon `{}` still running after SIG{:?}",
                        sg.device, sg.signal
                    )));
                }
                let status = d.job.status.unwrap_or(-1);
                let want = match sg.signal {
                    model::Sig::Kill => 128 + libc::SIGKILL,
                    _ => sg.expect_exit.unwrap_or(0),
                };
                if status != want {
                    return Err(StepError::Fail(format!(
                        "daemon `{}` exited {status} after SIG{:?}, expected {want}",
                        sg.device, sg.signal
                    )));
                }
                Ok(())
            }
            Kind::ExpectTimeout(e) => {
                let argv = match (&e.shell, &e.io) {
                    (Some(sh), _) => self.shell_argv(sh),
                    (None, Some(io)) => self.io_argv(io)?,
                    (None, None) => unreachable!("validated"),
                };
                let mut job = self.exec(&argv, &log_name(""))?;
                if job.pump(deadline, |_| false) {
                    return Err(StepError::Fail(format!(
                        "expected a hang, but the command ended with status {:?}",
                        job.status
                    )));
                }
                let ff = freeze::collect(
                    &self.vm,
                    &self.daemon_refs(),
                    &self.dir.join(format!("freeze-frame-{i:02}")),
                    &format!("steps[{i}] hung as expected"),
                );
                let _ = self.vm.agent.signal(job.id, libc::SIGKILL);
                let mut missing = Vec::new();
                for n in &e.must_name {
                    match n {
                        Name::StuckTag if ff.stuck_tags.is_empty() => missing.push("a stuck tag"),
                        Name::BlockedTask if ff.blocked_tasks.is_empty() => {
                            missing.push("a blocked task")
                        }
                        _ => {}
                    }
                }
                let dir = ff.dir.clone();
                self.freeze = Some(ff);
                if !missing.is_empty() {
                    return Err(StepError::Fail(format!(
                        "the freeze-frame names no {}; see {}",
                        missing.join(" and no "),
                        dir.join("summary.txt").display()
                    )));
                }
                Ok(())
            }
            Kind::Reset(_) => self.reset(deadline, &log_name("")),
            Kind::Check(_) => {
                let found = self.splats().map_err(StepError::Infra)?;
                if let Some(first) = found.first() {
                    return Err(StepError::Fail(format!("kernel splat: {first}")));
                }
                let live: Vec<&String> = self
                    .daemons
                    .iter()
                    .filter(|(_, d)| d.job.status.is_none())
                    .map(|(n, _)| n)
                    .collect();
                let mut job = self.exec(
                    &[
                        "sh".into(),
                        "-c".into(),
                        "ls /dev/ublkb* /dev/ublkc* 2>/dev/null; true".into(),
                    ],
                    &log_name(""),
                )?;
                self.finish_job(&mut job, deadline, "device listing")?;
                let listing = std::fs::read_to_string(self.dir.join("steps").join(log_name("")))
                    .unwrap_or_default();
                let devices = listing
                    .lines()
                    .filter(|l| l.starts_with("/dev/ublkb"))
                    .count();
                if devices != live.len() {
                    return Err(StepError::Fail(format!("{devices} ublk block device(s) present but {} daemon(s) running: leftovers ({})", live.len(), listing.trim().replace('\n', " "))));
                }
                Ok(())
            }
        }
    }

    fn start(
        &mut self,
        s: &model::Start,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let dflt = &self.sc.device;
        let size = s.size.or(dflt.size).map(|v| v.0).unwrap_or(256 << 20);
        let queues = s.queues.or(dflt.queues).unwrap_or(1);
        let depth = s.depth.or(dflt.depth).unwrap_or(64);
        let bs = s.block_size.or(dflt.block_size).unwrap_or(4096);
        let state_file = format!("/run/ublk-{}.state.json", s.name);
        let mut argv: Vec<String> = ["ublk-mem", "add", "--json", "--state-file", &state_file]
            .iter()
            .map(|x| x.to_string())
            .collect();
        argv.extend([
            "--size".into(),
            size.to_string(),
            "--queues".into(),
            queues.to_string(),
            "--depth".into(),
            depth.to_string(),
            "--block-size".into(),
            bs.to_string(),
        ]);
        if let Some(f) = &s.fault {
            argv.extend(["--fault".into(), f.0.clone()]);
        }
        let trace = s
            .trace
            .then(|| (format!("/run/ublk-{}.trace", s.name), queues));
        if let Some((t, _)) = &trace {
            argv.extend(["--trace".into(), t.clone()]);
        }
        let mut job = self.exec(&argv, log_name)?;
        let mut line = Vec::new();
        let ready = !job.pump(deadline, |chunk| {
            line.extend_from_slice(chunk);
            line.contains(&b'\n') && line.starts_with(b"{")
        });
        if !ready {
            let log = tail_of(&self.dir.join("steps").join(log_name), 6);
            return Err(match (job.status, job.lost.clone()) {
                (Some(st), _) => StepError::Fail(format!(
                    "ublk-mem exited {st} before the device was ready: {log}"
                )),
                (None, Some(why)) => StepError::Infra(why),
                (None, None) => {
                    StepError::Hang(format!("ublk-mem not ready within the step timeout: {log}"))
                }
            });
        }
        let first = String::from_utf8_lossy(&line);
        let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap_or(""))
            .map_err(|e| {
                StepError::Fail(format!("ublk-mem's ready line is not JSON ({e}): {first}"))
            })?;
        let bdev = v["block_device"].as_str().unwrap_or_default().to_string();
        let pid = v["pid"].as_i64().unwrap_or(0) as i32;
        self.daemons.insert(
            s.name.clone(),
            Daemon {
                job,
                pid,
                bdev,
                state_file,
                trace,
            },
        );
        Ok(())
    }

    /// `spread` promises requests on every queue: the daemon's own counters must show it.
    fn check_every_queue_served(&self, device: &str) -> Result<(), StepError> {
        let d = &self.daemons[device];
        let r = DaemonRef {
            name: device,
            exec_id: d.job.id,
            pid: d.pid,
            state_file: &d.state_file,
        };
        let (v, _) = freeze::daemon_state(&self.vm, &r)
            .ok_or_else(|| StepError::Fail(format!("daemon `{device}` did not answer SIGUSR1")))?;
        let idle: Vec<String> = v["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["completions"].as_u64().unwrap_or(0) == 0)
            .map(|q| q["q_id"].to_string())
            .collect();
        if !idle.is_empty() {
            return Err(StepError::Fail(format!(
                "spread I/O left queue(s) {} of `{device}` without a single request",
                idle.join(", ")
            )));
        }
        Ok(())
    }

    /// Stops every daemon, deletes every device, reloads ublk_drv, and checks the state is clean.
    fn reset(&mut self, deadline: Instant, log_name: &str) -> Result<(), StepError> {
        for (name, d) in self
            .daemons
            .iter_mut()
            .filter(|(_, d)| d.job.status.is_none())
        {
            let _ = self.vm.agent.signal(d.job.id, libc::SIGCONT);
            let _ = self.vm.agent.signal(d.job.id, libc::SIGTERM);
            if !d.job.pump(deadline, |_| false) {
                return Err(StepError::Hang(format!(
                    "reset: daemon `{name}` did not exit after SIGTERM"
                )));
            }
        }
        let script = "set -e\n\
            ublk-mem del --all\n\
            rmmod ublk_drv\n\
            modprobe ublk_drv\n\
            if ls /dev/ublkb* /dev/ublkc* 2>/dev/null; then echo 'leftover ublk devices after reset'; exit 1; fi\n\
            test -c /dev/ublk-control\n\
            echo reset: clean";
        let mut job = self.exec(&["sh".into(), "-c".into(), script.into()], log_name)?;
        let status = self.finish_job(&mut job, deadline, "reset")?;
        if status != 0 {
            return Err(StepError::Fail(format!(
                "reset failed: {}",
                tail_of(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        self.daemons.retain(|_, d| d.job.status.is_none());
        Ok(())
    }

    /// Kernel splats in the guest's log that the scenario does not expect.
    fn splats(&self) -> Result<Vec<String>, String> {
        let log = match self
            .vm
            .agent
            .run_capture(&["dmesg"], Instant::now() + Duration::from_secs(3))
        {
            Ok((_, out, _)) => {
                let text = String::from_utf8_lossy(&out).into_owned();
                let _ = std::fs::write(self.dir.join("dmesg.txt"), &text);
                text
            }
            // The agent may be gone (the kernel died): the serial log is the fallback.
            Err(_) => std::fs::read_to_string(self.vm.paths.serial_log()).unwrap_or_default(),
        };
        Ok(splat::scan(&log, &self.sc.expect_splats)
            .into_iter()
            .map(|s| s.trim().to_string())
            .collect())
    }

    /// Daemon output and traces, while the agent still answers.
    fn save_artifacts(&mut self) {
        let until = Instant::now() + Duration::from_millis(200);
        for (name, d) in self.daemons.iter_mut() {
            d.job.pump(until.max(Instant::now()), |_| false);
            if let Some((prefix, queues)) = &d.trace {
                for q in 0..*queues {
                    let path = format!("{prefix}.q{q}");
                    if let Ok(data) = self.vm.agent.get_file(
                        &path,
                        256 << 20,
                        Instant::now() + Duration::from_secs(10),
                    ) {
                        let _ = std::fs::write(self.dir.join(format!("trace-{name}.q{q}")), data);
                    }
                }
            }
        }
        for job in self.jobs.values_mut() {
            job.pump(Instant::now() + Duration::from_millis(100), |_| false);
        }
        let _ = self.deadline;
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    crate::procs::tail(&text, n).replace('\n', " | ")
}
