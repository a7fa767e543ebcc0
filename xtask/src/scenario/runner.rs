//! `Runner`: one VM with the servers it started (`Daemon`) and the background jobs (`Job`),
//! and what every user of it shares — a guest command's log, the freeze-frame, the splat scan,
//! the artifacts. The step kinds are `steps.rs`'s methods on it, the server lifecycle
//! `lifecycle.rs`'s and `recovery.rs`'s; vm-perf drives the lifecycle through it too. A step
//! either passes or says why not (`StepError`); a verdict is `run.rs`'s job.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use vm_agent::Kind as Frame;

use super::freeze::{self, DaemonRef, FreezeFrame};
use super::model;
use super::splat;
use crate::runs;
use crate::server::{Mode, Profile, Vars};
use crate::vm::agent::{wait, Event};
use crate::vm::Vm;

/// A command running in the guest, with its output going to a log file.
pub struct Job {
    pub id: u32,
    rx: Receiver<Event>,
    log: File,
    pub log_path: PathBuf,
    pub status: Option<i32>,
    pub lost: Option<String>,
}

impl Job {
    /// Pumps events until `deadline`, or until `until` (shown each output chunk, with
    /// `Stream::Stdout` or `Stream::Stderr`) says stop. Returns true once the job has ended.
    pub fn pump(
        &mut self,
        deadline: Instant,
        mut until: impl FnMut(Stream, &[u8]) -> bool,
    ) -> bool {
        if self.status.is_some() || self.lost.is_some() {
            return true;
        }
        loop {
            match wait(&self.rx, deadline) {
                Some(Event::Frame(f)) => match f.kind {
                    Frame::Stdout | Frame::Stderr => {
                        runs::record(&self.log_path, self.log.write_all(&f.payload));
                        let stream = match f.kind {
                            Frame::Stdout => Stream::Stdout,
                            _ => Stream::Stderr,
                        };
                        if until(stream, &f.payload) {
                            return false;
                        }
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

/// Which output of a guest command a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a step did not pass.
pub enum StepError {
    Fail(String),
    Hang(String),
    Infra(String),
}

pub struct Runner<'a> {
    /// The device defaults a start step's own values override (a scenario's `device:`).
    pub device: model::DeviceSpec,
    /// Kernel-log substrings that are not splats (a scenario's `expect_splats`).
    pub expect_splats: &'a [String],
    pub server: &'a Profile,
    /// The id the next `start` passes as `{dev_id}`.
    pub next_dev_id: u32,
    pub vm: Vm,
    pub dir: PathBuf,
    pub seed: u64,
    pub daemons: HashMap<String, Daemon>,
    pub jobs: HashMap<String, Job>,
    /// The freeze-frame an `expect_timeout` step took (a hang that was expected).
    pub freeze: Option<FreezeFrame>,
    /// Device name → the ublk features it ran with, as its server (or the kernel) reported.
    pub device_features: BTreeMap<String, Vec<String>>,
    /// `--queues`/`--depth`: replace every start step's values.
    pub overrides: model::DeviceOverride,
}

/// A server the runner started, and how to reach it.
pub struct Daemon {
    /// The `add` command: the server itself in foreground mode; in daemon mode it has exited.
    pub job: Job,
    pub mode: Mode,
    pub pid: i32,
    pub bdev: String,
    /// The values its argv was rendered with (the stop command uses them too).
    pub vars: Vars,
    pub state_file: Option<String>,
    pub trace: Option<(String, u16)>,
    /// A step (stop, signal, reset) saw the server exit, as it expected.
    pub ended: bool,
}

impl Daemon {
    pub fn running(&self) -> bool {
        match self.mode {
            Mode::Foreground => self.job.status.is_none() && self.job.lost.is_none(),
            Mode::Daemon => !self.ended,
        }
    }

    pub fn as_ref<'a>(&'a self, name: &'a str) -> DaemonRef<'a> {
        DaemonRef {
            name,
            exec_id: (self.mode == Mode::Foreground).then_some(self.job.id),
            pid: self.pid,
            state_file: self.state_file.as_deref(),
        }
    }
}

impl<'a> Runner<'a> {
    pub fn new(server: &'a Profile, vm: Vm, dir: &Path, seed: u64) -> Runner<'a> {
        runs::record(
            &dir.join("steps"),
            std::fs::create_dir_all(dir.join("steps")),
        );
        Runner {
            device: model::DeviceSpec::default(),
            expect_splats: &[],
            server,
            next_dev_id: 0,
            vm,
            dir: dir.to_path_buf(),
            seed,
            daemons: HashMap::new(),
            jobs: HashMap::new(),
            freeze: None,
            device_features: BTreeMap::new(),
            overrides: model::DeviceOverride::default(),
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

    pub(super) fn exec(&self, argv: &[String], log_name: &str) -> Result<Job, StepError> {
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
    pub(super) fn finish_job(
        &self,
        job: &mut Job,
        deadline: Instant,
        what: &str,
    ) -> Result<i32, StepError> {
        if !job.pump(deadline, |_, _| false) {
            return Err(StepError::Hang(format!(
                "{what} did not finish within its timeout"
            )));
        }
        if let Some(why) = &job.lost {
            return Err(StepError::Infra(format!("{what}: {why}")));
        }
        Ok(job.status.unwrap())
    }

    /// A freeze-frame of the guest now, with each server's own dump (the profile's `dump:`).
    pub fn freeze_frame(&mut self, dir: &Path, why: &str) -> FreezeFrame {
        let mut ff = freeze::collect(&self.vm, &self.daemon_refs(), dir, why);
        let dumps = self.dump_servers(dir);
        if !dumps.is_empty() {
            freeze::append_notes(&mut ff, &dumps);
        }
        ff
    }

    pub fn daemon_refs(&self) -> Vec<DaemonRef<'_>> {
        self.daemons
            .iter()
            .filter(|(_, d)| d.running())
            .map(|(n, d)| d.as_ref(n))
            .collect()
    }

    /// Kernel splats in the guest's log that the scenario does not expect.
    pub fn splats(&self) -> Vec<String> {
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
        splat::scan(&log, self.expect_splats)
            .into_iter()
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// Daemon output and traces, while the agent still answers.
    pub fn save_artifacts(&mut self) {
        let until = Instant::now() + Duration::from_millis(200);
        for (name, d) in self.daemons.iter_mut() {
            if d.mode == crate::server::Mode::Foreground {
                d.job.pump(until.max(Instant::now()), |_, _| false);
            }
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
            job.pump(Instant::now() + Duration::from_millis(100), |_, _| false);
        }
    }
}

/// What a step's log says went wrong (`reason::of`: its telling lines, else its last `n`).
pub fn reason_of(path: &Path, n: usize) -> String {
    crate::reason::of_file(path, n)
}
