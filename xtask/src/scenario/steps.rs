//! The steps of a scenario, each against the running VM: `Runner` owns the VM, the daemons
//! it started and the background jobs. A step either passes or says why not (`StepError`);
//! turning that into a verdict is `run.rs`'s job, which also knows whether the VM survived.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use vm_agent::Kind as Frame;

use super::freeze::{self, DaemonRef, FreezeFrame};
use super::model::{self, Expect, Kind, Name, Scenario, Step};
use super::splat;
use crate::runs;
use crate::vm::agent::{wait, Event};
use crate::vm::Vm;

/// A command running in the guest, with its output going to a log file.
pub struct Job {
    id: u32,
    rx: Receiver<Event>,
    log: File,
    log_path: PathBuf,
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
                        runs::record(&self.log_path, self.log.write_all(&f.payload));
                        if until(&f.payload) {
                            return false;
                        }
                    }
                    Frame::Stderr => {
                        runs::record(&self.log_path, self.log.write_all(&f.payload));
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

pub struct Daemon {
    job: Job,
    pid: i32,
    bdev: String,
    state_file: String,
    trace: Option<(String, u16)>,
}

/// Why a step did not pass.
pub enum StepError {
    Fail(String),
    Hang(String),
    Infra(String),
}

pub struct Runner<'a> {
    pub sc: &'a Scenario,
    pub vm: Vm,
    pub dir: PathBuf,
    pub seed: u64,
    pub daemons: HashMap<String, Daemon>,
    pub jobs: HashMap<String, Job>,
    /// The freeze-frame an `expect_timeout` step took (a hang that was expected).
    pub freeze: Option<FreezeFrame>,
}

impl<'a> Runner<'a> {
    pub fn new(sc: &'a Scenario, vm: Vm, dir: &Path, seed: u64) -> Runner<'a> {
        runs::record(
            &dir.join("steps"),
            std::fs::create_dir_all(dir.join("steps")),
        );
        Runner {
            sc,
            vm,
            dir: dir.to_path_buf(),
            seed,
            daemons: HashMap::new(),
            jobs: HashMap::new(),
            freeze: None,
        }
    }

    /// Appends a line to steps.log.
    pub fn log(&self, line: &str) {
        let path = self.dir.join("steps.log");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        runs::record(&path, f.and_then(|mut f| writeln!(f, "{line}")));
    }

    fn exec(&self, argv: &[String], log_name: &str) -> Result<Job, StepError> {
        let log_path = self.dir.join("steps").join(log_name);
        let log = File::create(&log_path)
            .map_err(|e| StepError::Infra(format!("create {}: {e}", log_path.display())))?;
        let (id, rx) = self.vm.agent.exec(argv).map_err(StepError::Infra)?;
        self.vm.agent.stdin(id, &[]).map_err(StepError::Infra)?;
        Ok(Job {
            id,
            rx,
            log,
            log_path,
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

    pub fn daemon_refs(&self) -> Vec<DaemonRef<'_>> {
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

    pub fn step(&mut self, i: usize, step: &Step, deadline: Instant) -> Result<(), StepError> {
        let log_name = format!("{i:02}-{}.log", step.kind.name());
        match &step.kind {
            Kind::Start(s) => self.start(s, deadline, &log_name),
            Kind::Io(io) => self.io(io, deadline, &log_name),
            Kind::Shell(sh) => self.shell(sh, deadline, &log_name),
            Kind::Wait(w) => self.wait(w, deadline),
            Kind::Signal(sg) => self.signal(sg, deadline),
            Kind::ExpectTimeout(e) => self.expect_timeout(i, e, deadline, &log_name),
            Kind::Reset(_) => self.reset(deadline, &log_name),
            Kind::Check(_) => self.check(deadline, &log_name),
        }
    }

    fn io(&mut self, io: &model::Io, deadline: Instant, log_name: &str) -> Result<(), StepError> {
        let argv = self.io_argv(io)?;
        let mut job = self.exec(&argv, log_name)?;
        if let Some(name) = &io.background {
            self.jobs.insert(name.clone(), job);
            return Ok(());
        }
        let status = self.finish_job(&mut job, deadline, "io")?;
        if status != 0 {
            return Err(StepError::Fail(format!(
                "io failed with status {status}: {}",
                tail_of(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        if io.spread && io.write {
            self.check_every_queue_served(&io.device)?;
        }
        Ok(())
    }

    fn shell(
        &mut self,
        sh: &model::Shell,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let mut job = self.exec(&self.shell_argv(&sh.run), log_name)?;
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
                tail_of(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        Ok(())
    }

    fn wait(&mut self, w: &model::Wait, deadline: Instant) -> Result<(), StepError> {
        let mut job = self
            .jobs
            .remove(&w.job)
            .ok_or_else(|| StepError::Fail(format!("no background job `{}`", w.job)))?;
        let status = self.finish_job(&mut job, deadline, &format!("background job `{}`", w.job))?;
        match (w.expect, status) {
            (Expect::Pass, 0) => Ok(()),
            (Expect::Fail, s) if s != 0 => Ok(()),
            (e, s) => Err(StepError::Fail(format!(
                "background job `{}` exited {s}, expected {e:?}",
                w.job
            ))),
        }
    }

    fn signal(&mut self, sg: &model::Signal, deadline: Instant) -> Result<(), StepError> {
        let d = self
            .daemons
            .get_mut(&sg.device)
            .ok_or_else(|| StepError::Fail(format!("device `{}` is not running", sg.device)))?;
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
        if let Some(why) = &d.job.lost {
            return Err(StepError::Infra(format!("daemon `{}`: {why}", sg.device)));
        }
        let status = d.job.status.expect("an ended job has a status or a loss");
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

    fn expect_timeout(
        &mut self,
        i: usize,
        e: &model::ExpectTimeout,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let argv = match (&e.shell, &e.io) {
            (Some(sh), _) => self.shell_argv(sh),
            (None, Some(io)) => self.io_argv(io)?,
            (None, None) => unreachable!("validated"),
        };
        let mut job = self.exec(&argv, log_name)?;
        if job.pump(deadline, |_| false) {
            return Err(match (&job.lost, job.status) {
                (Some(why), _) => StepError::Infra(why.clone()),
                (None, status) => StepError::Fail(format!(
                    "expected a hang, but the command exited {}: {}",
                    status.expect("an ended job has a status or a loss"),
                    tail_of(&self.dir.join("steps").join(log_name), 6)
                )),
            });
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
                Name::BlockedTask if ff.blocked_tasks.is_empty() => missing.push("a blocked task"),
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

    /// No splat so far, and exactly one ublk block device per running daemon.
    fn check(&mut self, deadline: Instant, log_name: &str) -> Result<(), StepError> {
        let found = self.splats().map_err(StepError::Infra)?;
        if let Some(first) = found.first() {
            return Err(StepError::Fail(format!("kernel splat: {first}")));
        }
        let live = self
            .daemons
            .values()
            .filter(|d| d.job.status.is_none())
            .count();
        let listing = "ls /dev/ublkb* /dev/ublkc* 2>/dev/null; true";
        let mut job = self.exec(&["sh".into(), "-c".into(), listing.into()], log_name)?;
        self.finish_job(&mut job, deadline, "device listing")?;
        let listing =
            std::fs::read_to_string(self.dir.join("steps").join(log_name)).unwrap_or_default();
        let devices = listing
            .lines()
            .filter(|l| l.starts_with("/dev/ublkb"))
            .count();
        if devices != live {
            return Err(StepError::Fail(format!(
                "{devices} ublk block device(s) present but {live} daemon(s) running: leftovers ({})",
                listing.trim().replace('\n', " ")
            )));
        }
        Ok(())
    }

    fn start(
        &mut self,
        s: &model::Start,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), StepError> {
        let p = self.sc.device_params(s);
        let (size, queues, depth, bs) = (p.size_bytes, p.queues, p.depth, p.block_size);
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
        let ready: ublk::contract::Ready = serde_json::from_str(first.lines().next().unwrap_or(""))
            .map_err(|e| {
                StepError::Fail(format!(
                    "ublk-mem's ready line is not its contract ({e}): {first}"
                ))
            })?;
        let (bdev, pid) = (ready.block_device, ready.pid);
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
        let idle: Vec<String> = v
            .queues
            .iter()
            .filter(|q| q.completions == 0)
            .map(|q| q.q_id.to_string())
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
    pub fn splats(&self) -> Result<Vec<String>, String> {
        let log = match self
            .vm
            .agent
            .run_capture(&["dmesg"], Instant::now() + Duration::from_secs(3))
        {
            Ok((_, out, _)) => {
                let text = String::from_utf8_lossy(&out).into_owned();
                runs::save(&self.dir.join("dmesg.txt"), &text);
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
    pub fn save_artifacts(&mut self) {
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
                        runs::save(&self.dir.join(format!("trace-{name}.q{q}")), data);
                    }
                }
            }
        }
        for job in self.jobs.values_mut() {
            job.pump(Instant::now() + Duration::from_millis(100), |_| false);
        }
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    crate::host::procs::tail(&text, n).replace('\n', " | ")
}
