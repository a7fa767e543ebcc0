//! The servers of one VM (`Fleet`), through their profiles (`server::Profile`): `start` adds a
//! device — a foreground server keeps running as the agent job that started it, a daemonizing
//! one's `add` exits 0 — and the platform learns the device and the server's pid from the ready
//! line or from the kernel (`ublk-mem list --json`, GET_DEV_INFO on /dev/ublk-control, for any
//! server). `stop`, `send`, `await_end` and `reset` end servers the way their profile says;
//! `freeze_frame` adds each server's own dump. Scenarios (their start/stop/signal/recover
//! steps) and vm-perf (its server cells) both drive servers through it, with the device
//! parameters they choose.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ublk::contract;

use super::device::{DeviceOverride, DeviceParams};
use super::{Mode, Profile, Ready, RecoveryMode, Sig, Stop, Storage, Vars};
use crate::runs;
use crate::vm::freeze::{self, DaemonRef, FreezeFrame};
use crate::vm::job::{Job, JobError, Stream};
use crate::vm::Vm;

/// What a start asks of the fleet's server: a device by name, with its parameters.
#[derive(Clone, Debug)]
pub struct Start {
    /// The device's name in the run (`$DEV_<name>`, log and artifact names).
    pub name: String,
    pub params: DeviceParams,
    /// The profile's fault option with this value (`{fault}`), if any.
    pub fault: Option<String>,
    /// The profile's trace option (ublk-mem's per-queue tag trace).
    pub trace: bool,
    /// Start the device for this user-recovery mode (the profile's `recovery.add`).
    pub recovery: Option<RecoveryMode>,
}

impl Start {
    /// A plain device `name` with `params`.
    pub fn new(name: &str, params: DeviceParams) -> Start {
        Start {
            name: name.into(),
            params,
            fault: None,
            trace: false,
            recovery: None,
        }
    }
}

/// The servers one VM runs, and the VM.
pub struct Fleet<'a> {
    pub server: &'a Profile,
    pub vm: Vm,
    /// The run directory (steps.log, steps/, dumps, traces).
    pub dir: PathBuf,
    /// The id the next `start` passes as `{dev_id}`.
    pub next_dev_id: u32,
    pub daemons: HashMap<String, Daemon>,
    /// Device name → the ublk features it ran with, as its server (or the kernel) reported.
    pub device_features: BTreeMap<String, Vec<String>>,
    /// `--queues`/`--depth`: replace every start's values.
    pub overrides: DeviceOverride,
}

/// A server the fleet started, and how to reach it.
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

impl<'a> Fleet<'a> {
    pub fn new(server: &'a Profile, vm: Vm, dir: &Path) -> Fleet<'a> {
        runs::record(
            &dir.join("steps"),
            std::fs::create_dir_all(dir.join("steps")),
        );
        Fleet {
            server,
            vm,
            dir: dir.to_path_buf(),
            next_dev_id: 0,
            daemons: HashMap::new(),
            device_features: BTreeMap::new(),
            overrides: DeviceOverride::default(),
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

    pub fn exec(&self, argv: &[String], log_name: &str) -> Result<Job, JobError> {
        let log_path = self.dir.join("steps").join(log_name);
        let log = File::create(&log_path)
            .map_err(|e| JobError::Infra(format!("create {}: {e}", log_path.display())))?;
        let (id, rx) = self.vm.agent.exec(argv).map_err(JobError::Infra)?;
        self.vm.agent.stdin(id, &[]).map_err(JobError::Infra)?;
        Ok(Job::new(id, rx, log, log_path))
    }

    /// Waits for a job to exit; Hang at the deadline.
    pub fn finish_job(
        &self,
        job: &mut Job,
        deadline: Instant,
        what: &str,
    ) -> Result<i32, JobError> {
        if !job.pump(deadline, |_, _| false) {
            return Err(JobError::Hang(format!(
                "{what} did not finish within its timeout"
            )));
        }
        if let Some(why) = &job.lost {
            return Err(JobError::Infra(format!("{what}: {why}")));
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

    /// Kernel splats in the guest's log (saved as dmesg.txt) but the `expected` ones.
    pub fn splats(&self, expected: &[String]) -> Vec<String> {
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
        crate::vm::splat::scan(&log, expected)
            .into_iter()
            .map(|s| s.trim().to_string())
            .collect()
    }

    /// Server output and traces, while the agent still answers.
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
    }
}

/// Longest ready line read (a longer line is not one).
const MAX_READY_LINE_BYTES: usize = 64 << 10;

/// `/dev/ublkbN` → N.
fn bdev_id(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/ublkb")?.parse().ok()
}

/// The device id a ready line's `dev` or `dev_id` group names (None: no such group).
fn id_of(c: &regex::Captures, line: &str) -> Result<Option<u32>, String> {
    if let Some(m) = c.name("dev") {
        return bdev_id(m.as_str())
            .map(Some)
            .ok_or_else(|| format!("group `dev` is {:?}, not /dev/ublkbN: {line:?}", m.as_str()));
    }
    if let Some(m) = c.name("dev_id") {
        return m
            .as_str()
            .parse()
            .map(Some)
            .map_err(|_| format!("group `dev_id` is {:?}, not a number: {line:?}", m.as_str()));
    }
    Ok(None)
}

/// At most this many servers are quoted in one step's reason.
const MAX_SERVER_NOTES: usize = 4;

/// How often the kernel's device list is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

/// One poll interval of waiting for a server's device: `what` failed if its foreground job
/// exited non-zero meanwhile (it will never bring the device up: "`what` exited N `dead`"),
/// hung if the deadline passed ("`what` `late`").
fn wait_a_poll(
    job: &mut Job,
    deadline: Instant,
    what: &str,
    dead: &str,
    late: &str,
) -> Result<(), JobError> {
    if job.pump(Instant::now() + POLL, |_, _| false) && job.status.is_some_and(|s| s != 0) {
        let st = job.status.unwrap_or(-1);
        return Err(JobError::Fail(format!("{what} exited {st} {dead}")));
    }
    if Instant::now() >= deadline {
        return Err(JobError::Hang(format!("{what} {late}")));
    }
    Ok(())
}

impl Fleet<'_> {
    /// Starts a device: the profile's add command (with the session's overrides applied to
    /// `s.params`), then the device and the server's pid.
    pub fn start(&mut self, s: &Start, deadline: Instant, log_name: &str) -> Result<(), JobError> {
        let p = self.overrides.apply(s.params);
        let vars = Vars {
            size: p.size_bytes,
            queues: p.queues,
            depth: p.depth,
            block_size: p.block_size,
            dev_id: self.next_dev_id,
            backing_file: format!("/run/ublk-{}.img", s.name),
            fault: s.fault.clone().unwrap_or_default(),
            trace: format!("/run/ublk-{}.trace", s.name),
            state_file: format!("/run/ublk-{}.state.json", s.name),
            recovery: s.recovery.map(|m| m.name().to_string()).unwrap_or_default(),
        };
        self.next_dev_id += 1;
        if self.server.storage == Storage::File {
            self.backing_file(&vars, deadline, log_name)?;
        }
        let argv = self.add_argv(s, &vars);
        let how = &self.server.add;
        let before = match how.uses_dev_id() {
            true => Vec::new(),
            false => self.device_ids()?,
        };
        let mut job = self.exec(&argv, log_name)?;
        let (dev_id, pid, features) = self.ready(
            how,
            &mut job,
            &argv,
            vars.dev_id,
            &before,
            deadline,
            log_name,
        )?;
        let vars = Vars { dev_id, ..vars }; // the id the kernel gave, for stop and recover
        self.log(&format!(
            "device {} (ublk{dev_id}) runs with ublk features: {}",
            s.name,
            features.join(" ")
        ));
        self.device_features.insert(s.name.clone(), features);
        let has_dump = self.server.options.state_file.is_some();
        let daemon = Daemon {
            job,
            mode: self.server.add.mode,
            pid,
            bdev: format!("/dev/ublkb{dev_id}"),
            state_file: has_dump.then(|| vars.state_file.clone()),
            trace: s.trace.then(|| (vars.trace.clone(), p.queues)),
            vars,
            ended: false,
        };
        self.daemons.insert(s.name.clone(), daemon);
        Ok(())
    }

    /// A file of the device's size on the guest's tmpfs, for `storage: file` servers.
    fn backing_file(&self, vars: &Vars, deadline: Instant, log_name: &str) -> Result<(), JobError> {
        let mk = format!("truncate -s {} {}", vars.size, vars.backing_file);
        let log = format!("{log_name}.backing");
        let mut job = self.exec(&["sh".into(), "-c".into(), mk], &log)?;
        if self.finish_job(&mut job, deadline, "creating the backing file")? != 0 {
            let m = format!("could not create {}", vars.backing_file);
            return Err(JobError::Infra(m));
        }
        Ok(())
    }

    /// The add command: the profile's template plus the options this step asks for.
    fn add_argv(&self, s: &Start, vars: &Vars) -> Vec<String> {
        let opts = &self.server.options;
        let mut argv = vars.render(&self.server.add.argv);
        let extra = [
            (s.fault.is_some(), &opts.fault),
            (s.trace, &opts.trace),
            (true, &opts.state_file),
        ];
        for (wanted, template) in extra {
            if let (true, Some(t)) = (wanted, template) {
                argv.extend(vars.render(t));
            }
        }
        let recovery = s.recovery.zip(self.server.recovery.as_ref());
        if let Some(extra) = recovery.and_then(|(m, r)| r.add.get(&m)) {
            argv.extend(vars.render(extra));
        }
        argv
    }

    /// (device id, server pid, the ublk features the device runs with) once the device is up,
    /// the way the profile says to learn it. `before`: the devices the kernel had before the
    /// command started (a server that chooses its own id is found as the one new device).
    #[allow(clippy::too_many_arguments)]
    pub fn ready(
        &self,
        how: &crate::server::Add,
        job: &mut Job,
        argv: &[String],
        dev_id: u32,
        before: &[u32],
        deadline: Instant,
        log_name: &str,
    ) -> Result<(u32, i32, Vec<String>), JobError> {
        let what = &self.server.name;
        let said: Option<u32> = match (how.mode, &how.ready) {
            (Mode::Foreground, Ready::Json) => {
                let r = self.first_stdout_line(job, deadline, log_name, what)?;
                let ready: contract::Ready = serde_json::from_str(&r).map_err(|e| {
                    let m =
                        format!("{what}'s ready line is not a ublk::contract::Ready ({e}): {r}");
                    JobError::Fail(m)
                })?;
                return Ok((ready.dev_id, ready.pid, ready.features));
            }
            (Mode::Foreground, Ready::Path) => {
                let r = self.first_stdout_line(job, deadline, log_name, what)?;
                let id = bdev_id(r.trim());
                Some(id.ok_or_else(|| {
                    JobError::Fail(format!("{what}'s first line is not /dev/ublkbN: {r:?}"))
                })?)
            }
            (mode, Ready::Line(_)) => {
                let re = how.ready.regex().expect("checked when the profile loaded");
                let id = self.matching_line(job, &re, deadline, log_name, what)?;
                if mode == Mode::Daemon {
                    self.daemon_add_exited(job, argv, deadline, log_name)?;
                }
                id
            }
            (Mode::Foreground, Ready::Kernel) => None,
            (Mode::Daemon, Ready::Kernel) => {
                self.daemon_add_exited(job, argv, deadline, log_name)?;
                None
            }
            (Mode::Daemon, _) => unreachable!("a daemon's ready is kernel or line (checked)"),
        };
        let id = match said.or(how.uses_dev_id().then_some(dev_id)) {
            Some(id) => id,
            None => self.new_device(before, deadline, job, what)?,
        };
        // Any server: the kernel's GET_DEV_INFO flags are the features the device runs with.
        let d = self.live_device(id, deadline, job, what)?;
        Ok((id, d.pid, d.flags))
    }

    /// A daemonizing add command must exit 0 once its device is up.
    fn daemon_add_exited(
        &self,
        job: &mut Job,
        argv: &[String],
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), JobError> {
        let what = &self.server.name;
        let status = self.finish_job(job, deadline, &format!("{what} add"))?;
        if status != 0 {
            let log = crate::reason::of_file(&self.dir.join("steps").join(log_name), 6);
            let m = format!("`{}` exited {status}: {log}", argv.join(" "));
            return Err(JobError::Fail(m));
        }
        Ok(())
    }

    /// The first stdout line of a foreground server, or why there is none.
    fn first_stdout_line(
        &self,
        job: &mut Job,
        deadline: Instant,
        log_name: &str,
        what: &str,
    ) -> Result<String, JobError> {
        let mut line = Vec::new();
        let mut ready = false;
        job.pump(deadline, |stream, chunk| {
            if stream == Stream::Stdout && line.len() < MAX_READY_LINE_BYTES {
                line.extend_from_slice(chunk);
                ready = line.contains(&b'\n');
            }
            ready || line.len() >= MAX_READY_LINE_BYTES
        });
        if ready {
            let text = String::from_utf8_lossy(&line);
            return Ok(text.lines().next().unwrap_or_default().to_string());
        }
        Err(self.not_ready(job, log_name, what, "not ready within the step timeout"))
    }

    /// Waits for the first stdout or stderr line `re` matches; the device id its `dev` or
    /// `dev_id` group names, if it has one.
    fn matching_line(
        &self,
        job: &mut Job,
        re: &regex::Regex,
        deadline: Instant,
        log_name: &str,
        what: &str,
    ) -> Result<Option<u32>, JobError> {
        let mut bufs = [Vec::new(), Vec::new()];
        let mut found: Option<Result<Option<u32>, String>> = None;
        job.pump(deadline, |stream, chunk| {
            let buf = &mut bufs[stream as usize];
            buf.extend_from_slice(chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(c) = re.captures(line.trim_end()) {
                    found = Some(id_of(&c, line.trim_end()));
                    return true;
                }
            }
            if buf.len() > MAX_READY_LINE_BYTES {
                buf.clear(); // a line this long is not the ready line
            }
            false
        });
        match found {
            Some(Ok(id)) => Ok(id),
            Some(Err(m)) => Err(JobError::Fail(format!("{what}'s ready line: {m}"))),
            None => {
                let why = format!(
                    "printed no line matching {:?} within the step timeout",
                    re.as_str()
                );
                Err(self.not_ready(job, log_name, what, &why))
            }
        }
    }

    /// Why a server that should have said it was ready did not: it exited, the VM was lost, or
    /// it hung.
    fn not_ready(&self, job: &Job, log_name: &str, what: &str, hang: &str) -> JobError {
        let log = crate::reason::of_file(&self.dir.join("steps").join(log_name), 6);
        match (job.status, job.lost.clone()) {
            (Some(st), _) => JobError::Fail(format!(
                "{what} exited {st} before the device was ready: {log}"
            )),
            (None, Some(why)) => JobError::Infra(why),
            (None, None) => JobError::Hang(format!("{what} {hang}: {log}")),
        }
    }

    /// The one device a server added (new since `before`), for servers that choose their own id.
    fn new_device(
        &self,
        before: &[u32],
        deadline: Instant,
        job: &mut Job,
        what: &str,
    ) -> Result<u32, JobError> {
        loop {
            let new: Vec<u32> = self
                .devices()?
                .into_iter()
                .map(|d| d.dev_id)
                .filter(|id| !before.contains(id))
                .collect();
            match new.as_slice() {
                [id] => return Ok(*id),
                [] => {}
                many => {
                    return Err(JobError::Fail(format!(
                        "{what} added {} devices ({many:?}) for one start step",
                        many.len()
                    )))
                }
            }
            let dead = "before adding a device";
            wait_a_poll(
                job,
                deadline,
                what,
                dead,
                "added no device within the step timeout",
            )?;
        }
    }

    /// Waits until the kernel has released device `dev_id` for recovery: `quiesced` or
    /// `fail-io`, no longer `live` (it takes the kernel a moment to see a killed server go).
    /// The kernel's own selftests wait for this before `kublk recover`; so does the platform,
    /// so a server that does not retry START_USER_RECOVERY's EBUSY is not failed for the race
    /// (one that retries, like ublk-mem, loses nothing). Still live at the deadline: a hang.
    pub fn await_released(&self, dev_id: u32, deadline: Instant) -> Result<(), JobError> {
        loop {
            let devices = self.devices()?;
            let state = devices
                .iter()
                .find(|d| d.dev_id == dev_id)
                .map(|d| d.state.as_str());
            match state {
                Some("quiesced" | "fail-io") => return Ok(()),
                None | Some("dead") => {
                    let m = format!("device ublk{dev_id} is gone (or dead): nothing to recover");
                    return Err(JobError::Fail(m));
                }
                Some(other) if Instant::now() >= deadline => {
                    return Err(JobError::Hang(format!(
                        "device ublk{dev_id} is still {other} after its server ended: the kernel did not release it for recovery within the step timeout"
                    )))
                }
                Some(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// The ids of every device the kernel has now.
    pub fn device_ids(&self) -> Result<Vec<u32>, JobError> {
        Ok(self.devices()?.into_iter().map(|d| d.dev_id).collect())
    }

    /// Device `id` as the kernel reports it, once live and served (a server pid set).
    fn live_device(
        &self,
        id: u32,
        deadline: Instant,
        job: &mut Job,
        what: &str,
    ) -> Result<contract::Device, JobError> {
        loop {
            if let Some(d) = self.devices()?.into_iter().find(|d| d.dev_id == id) {
                if d.state == "live" && d.pid > 0 {
                    return Ok(d);
                }
            }
            let (dead, late) = (
                format!("before device {id} was live"),
                format!("had device {id} not live within the step timeout"),
            );
            wait_a_poll(job, deadline, what, &dead, &late)?;
        }
    }

    /// Every ublk device the kernel knows, whoever created it.
    pub fn devices(&self) -> Result<Vec<contract::Device>, JobError> {
        let (status, out, err) = self
            .vm
            .agent
            .run_capture(
                &["ublk-mem", "list", "--json"],
                Instant::now() + Duration::from_secs(5),
            )
            .map_err(JobError::Infra)?;
        if status != 0 {
            let err = String::from_utf8_lossy(&err);
            return Err(JobError::Infra(format!(
                "ublk-mem list exited {status}: {}",
                err.trim()
            )));
        }
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .map_err(|e| JobError::Infra(format!("ublk-mem list: {e}: {l}")))
            })
            .collect()
    }

    /// The `stop` step: the profile's way to end the server; it must end in time.
    pub fn stop(
        &mut self,
        device: &str,
        deadline: Instant,
        log_name: &str,
    ) -> Result<(), JobError> {
        let how = self.server.stop.clone();
        match how {
            Stop::Signal(sig) => {
                self.send(device, libc::SIGCONT)?;
                self.send(device, sig.number())?;
            }
            Stop::Command(template) => {
                let argv = self.daemon(device)?.vars.render(&template);
                let mut job = self.exec(&argv, log_name)?;
                let status = self.finish_job(&mut job, deadline, &argv.join(" "))?;
                if status != 0 {
                    let log = crate::reason::of_file(&self.dir.join("steps").join(log_name), 6);
                    return Err(JobError::Fail(format!(
                        "`{}` exited {status}: {log}",
                        argv.join(" ")
                    )));
                }
            }
        }
        let status = self.await_end(device, deadline, "stop")?;
        match status {
            Some(st) if st != 0 => Err(JobError::Fail(format!(
                "server `{device}` exited {st} on stop, expected 0"
            ))),
            _ => Ok(()),
        }
    }

    pub fn daemon(&self, name: &str) -> Result<&Daemon, JobError> {
        self.daemons
            .get(name)
            .filter(|d| d.running())
            .ok_or_else(|| JobError::Fail(format!("device `{name}` is not running")))
    }

    pub fn send(&self, name: &str, sig: i32) -> Result<(), JobError> {
        let d = self.daemon(name)?;
        freeze::signal_server(&self.vm, &d.as_ref(name), sig).map_err(JobError::Infra)
    }

    /// Waits until the server has exited: Some(status) for a foreground server (our child),
    /// None for a daemon (seen gone from /proc).
    pub fn await_end(
        &mut self,
        name: &str,
        deadline: Instant,
        after: &str,
    ) -> Result<Option<i32>, JobError> {
        let (mode, pid) = {
            let d = self.daemon(name)?;
            (d.mode, d.pid)
        };
        if mode == Mode::Daemon {
            let probe = format!("test -e /proc/{pid}");
            loop {
                let (st, _, _) = self
                    .vm
                    .agent
                    .run_capture(
                        &["sh", "-c", &probe],
                        Instant::now() + Duration::from_secs(5),
                    )
                    .map_err(JobError::Infra)?;
                if st != 0 {
                    self.daemons.get_mut(name).expect("checked above").ended = true;
                    return Ok(None);
                }
                if Instant::now() >= deadline {
                    return Err(JobError::Hang(format!(
                        "server `{name}` (pid {pid}) still running after {after}"
                    )));
                }
                std::thread::sleep(POLL);
            }
        }
        let d = self.daemons.get_mut(name).expect("checked above");
        if !d.job.pump(deadline, |_, _| false) {
            return Err(JobError::Hang(format!(
                "daemon `{name}` still running after {after}"
            )));
        }
        if let Some(why) = &d.job.lost {
            return Err(JobError::Infra(format!("daemon `{name}`: {why}")));
        }
        d.ended = true;
        Ok(d.job.status)
    }

    /// What the servers said that a failed step's reason should carry: a foreground server
    /// that exited with no step expecting it, with the telling lines of its output (or its
    /// last ones); a running one only if its output has error lines. In name order, bounded.
    pub fn server_notes(&mut self) -> Vec<String> {
        let until = Instant::now() + Duration::from_millis(200);
        let mut names: Vec<String> = self.daemons.keys().cloned().collect();
        names.sort();
        let mut notes = Vec::new();
        for name in names.into_iter().take(MAX_SERVER_NOTES) {
            let d = self.daemons.get_mut(&name).expect("listed above");
            if d.mode != Mode::Foreground || d.ended {
                continue;
            }
            d.job.pump(until.max(Instant::now()), |_, _| false);
            let log = crate::reason::read_tail(&d.job.log_path);
            match d.job.status {
                Some(st) => notes.push(format!(
                    "server `{name}` exited {st}: {}",
                    crate::reason::of(&log, 3)
                )),
                None => {
                    if let Some(said) = crate::reason::telling(&log) {
                        notes.push(format!("server `{name}` printed: {said}"));
                    }
                }
            }
        }
        notes
    }

    /// Stops every server, deletes every device, reloads ublk_drv, and checks the state is clean.
    pub fn reset(&mut self, deadline: Instant, log_name: &str) -> Result<(), JobError> {
        let mut running: Vec<String> = self
            .daemons
            .iter()
            .filter(|(_, d)| d.running())
            .map(|(n, _)| n.clone())
            .collect();
        running.sort();
        for name in running {
            self.stop(&name, deadline, &format!("{log_name}.stop-{name}"))
                .map_err(|e| match e {
                    JobError::Hang(m) => JobError::Hang(format!("reset: {m}")),
                    other => other,
                })?;
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
            return Err(JobError::Fail(format!(
                "reset failed: {}",
                crate::reason::of_file(&self.dir.join("steps").join(log_name), 6)
            )));
        }
        self.daemons.retain(|_, d| d.running());
        Ok(())
    }
}

/// How long a server's dump (after its signal) is read, and the most of it kept.
const DUMP_WAIT: Duration = Duration::from_secs(3);
const MAX_DUMP_BYTES: usize = 4 << 20;

impl Fleet<'_> {
    /// Each running server's own state dump (the profile's `dump:`), into `dir` as
    /// `dump-NAME.txt`; one line per server for the freeze-frame's summary.
    pub fn dump_servers(&mut self, dir: &std::path::Path) -> Vec<String> {
        let Some(how) = self.server.dump.clone() else {
            return Vec::new();
        };
        let mut names: Vec<String> = self
            .daemons
            .iter()
            .filter(|(_, d)| d.running())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        let mut lines = Vec::new();
        for name in names {
            let (text, line) = match &how {
                crate::server::Dump::Signal(sig) => self.dump_by_signal(&name, *sig),
                crate::server::Dump::Command(t) => self.dump_by_command(&name, t),
            };
            let file = format!("dump-{}.txt", crate::util::slug(&name));
            crate::runs::save(&dir.join(&file), &text);
            lines.push(format!("server dump of `{name}`: {line}; see {file}"));
        }
        lines
    }

    /// Sends the dump signal and keeps what the server prints in the next seconds (a
    /// daemonized server's output is not ours to read: only the signal is sent).
    fn dump_by_signal(&mut self, name: &str, sig: Sig) -> (Vec<u8>, String) {
        let d = &self.daemons[name];
        if let Err(e) = freeze::signal_server(&self.vm, &d.as_ref(name), sig.number()) {
            return (
                Vec::new(),
                format!("SIG{} could not be sent: {e}", sig.name()),
            );
        }
        if d.mode == Mode::Daemon {
            let m = "a daemonized server's output is not captured: look in its own log";
            return (Vec::new(), format!("SIG{} sent ({m})", sig.name()));
        }
        let mut out = Vec::new();
        let d = self.daemons.get_mut(name).expect("listed above");
        let ended = d.job.pump(Instant::now() + DUMP_WAIT, |_, chunk| {
            let room = MAX_DUMP_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
            false
        });
        let mut line = format!(
            "SIG{} sent, {} bytes of output in {} s",
            sig.name(),
            out.len(),
            DUMP_WAIT.as_secs()
        );
        if ended {
            let st = d
                .job
                .status
                .map_or("lost".to_string(), |s| format!("exited {s}"));
            line += &format!(" (the server {st} after it)");
        }
        (out, line)
    }

    /// Runs the dump command (rendered with the device's values), bounded.
    fn dump_by_command(&self, name: &str, template: &[String]) -> (Vec<u8>, String) {
        let argv = self.daemons[name].vars.render(template);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        match self
            .vm
            .agent
            .run_capture(&refs, Instant::now() + Duration::from_secs(10))
        {
            Ok((st, mut out, err)) => {
                out.extend_from_slice(&err);
                out.truncate(MAX_DUMP_BYTES);
                (out, format!("`{}` exited {st}", argv.join(" ")))
            }
            Err(e) => (
                Vec::new(),
                format!("`{}` did not finish: {e}", argv.join(" ")),
            ),
        }
    }
}
