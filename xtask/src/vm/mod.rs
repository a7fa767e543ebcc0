//! One VM's life: start QEMU in its own process group, connect to the agent, run commands
//! under deadlines, explain how it ended, and kill it. Dropping a `Vm` always kills QEMU.

pub mod accel;
pub mod agent;
pub mod freeze;
pub mod job;
pub mod ktrace;
pub mod ktrace_data;
pub mod limits;
pub mod qemu;
pub mod splat;
pub mod timeline;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_agent::Kind;

use crate::host::procs::{self, Group};
use crate::image::Image;
use crate::util::shell_join;
use agent::{wait, Agent, Event};
use qemu::{command_line, Paths, PidFile, VmConfig};

/// Why a VM session did not produce a normal command result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The deadline passed (while booting or running).
    Timeout(String),
    /// The platform broke: QEMU crashed, the guest kernel panicked, the agent vanished.
    Infra(String),
    /// xtask received this signal; the VM was killed.
    Interrupted(i32),
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status as the agent reported it (>= 0 exit code, < 0 killed by signal -n).
    Exited(i32),
    Failed(Failure),
}

pub struct Vm {
    qemu: Group,
    pidfile: PidFile,
    pub agent: Arc<Agent>,
    pub paths: Paths,
    /// QEMU start to agent READY.
    pub boot_s: f64,
    /// The agent's READY text (protocol, kernel release, guest uptime).
    pub ready: String,
    /// The kernel's ublk trace in this VM (started and read by the ktrace module).
    pub ktrace: std::sync::Mutex<ktrace_data::State>,
}

static SOCK_SEQ: AtomicU32 = AtomicU32::new(0);

impl Vm {
    /// Boots a fresh VM from `image`; its files go to `run_dir`. Fails at `deadline`.
    pub fn boot(
        image: &Image,
        cfg: &VmConfig,
        run_dir: &Path,
        deadline: Instant,
    ) -> Result<Vm, Failure> {
        image.recheck().map_err(Failure::Infra)?;
        if let Some(layer) = &cfg.tools {
            layer.recheck().map_err(Failure::Infra)?;
        }
        let paths = fresh_paths(run_dir)?;
        let start = Instant::now();
        let (mut qemu, pidfile) = spawn_qemu(image, cfg, &paths)?;
        let stream = match connect_agent(&mut qemu, &paths, deadline) {
            Ok(s) => s,
            Err(f) => {
                pidfile.remove();
                return Err(f);
            }
        };
        let transcript_path = run_dir.join("agent-transcript.log");
        let transcript = File::create(&transcript_path)
            .map_err(|e| Failure::Infra(format!("create {}: {e}", transcript_path.display())))?;
        let agent = Agent::new(stream, transcript, &transcript_path).map_err(Failure::Infra)?;
        let mut vm = Vm {
            qemu,
            pidfile,
            agent: Arc::new(agent),
            paths,
            boot_s: 0.0,
            ready: String::new(),
            ktrace: Default::default(),
        };
        match vm.agent.hello(deadline) {
            Ok(text) => {
                vm.boot_s = start.elapsed().as_secs_f64();
                vm.ready = text;
                Ok(vm)
            }
            Err(why) if Instant::now() >= deadline => Err(Failure::Timeout(format!(
                "the guest did not reach its agent within {:.1} s ({why}); see {}",
                start.elapsed().as_secs_f64(),
                vm.paths.serial_log().display()
            ))),
            Err(why) => Err(vm.diagnose(&why)),
        }
    }

    /// The guest kernel's release, as its agent said when it became ready.
    pub fn ready_release(&self) -> String {
        self.ready
            .lines()
            .find_map(|l| l.strip_prefix("release="))
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `argv` in the guest, streaming its output to `out`/`err`, until it exits or `deadline`.
    /// With `stdin`, xtask's stdin is forwarded; otherwise the command's stdin is empty.
    pub fn run(
        &mut self,
        argv: &[String],
        stdin: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
        deadline: Instant,
    ) -> Outcome {
        let (id, rx) = match self.agent.exec(argv) {
            Ok(x) => x,
            Err(why) => return Outcome::Failed(self.diagnose(&why)),
        };
        if stdin {
            let agent = self.agent.clone();
            // Detached: a read of our stdin cannot be bounded, and nothing waits for this thread.
            std::thread::spawn(move || {
                let mut buf = vec![0u8; vm_agent::CHUNK];
                let mut input = std::io::stdin().lock();
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if agent.stdin(id, &buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = agent.stdin(id, &[]);
            });
        } else if let Err(why) = self.agent.stdin(id, &[]) {
            return Outcome::Failed(self.diagnose(&why));
        }
        loop {
            let tick = (Instant::now() + Duration::from_millis(100)).min(deadline);
            match wait(&rx, tick) {
                Some(Event::Frame(f)) => match f.kind {
                    Kind::Stdout => {
                        let _ = out.write_all(&f.payload).and_then(|_| out.flush());
                    }
                    Kind::Stderr => {
                        let _ = err.write_all(&f.payload).and_then(|_| err.flush());
                    }
                    Kind::Exit => {
                        self.agent.close(id);
                        return Outcome::Exited(f.payload_i32().unwrap_or(-1));
                    }
                    Kind::Error => {
                        self.agent.close(id);
                        return Outcome::Failed(Failure::Infra(format!(
                            "the agent could not run the command: {}",
                            String::from_utf8_lossy(&f.payload)
                        )));
                    }
                    _ => {}
                },
                Some(Event::Lost(why)) => return Outcome::Failed(self.diagnose(&why)),
                None => {
                    if let Some(sig) = procs::interrupted() {
                        return Outcome::Failed(Failure::Interrupted(sig));
                    }
                    if Instant::now() >= deadline {
                        self.agent.note("deadline reached");
                        return Outcome::Failed(Failure::Timeout(String::new()));
                    }
                }
            }
        }
    }

    /// None while the VM runs; otherwise why it is gone (interrupt, panic, QEMU exit, agent
    /// lost), so a step is never blamed for its VM's death.
    pub fn gone(&mut self) -> Option<Failure> {
        if let Some(sig) = procs::interrupted() {
            return Some(Failure::Interrupted(sig));
        }
        let lost = self.agent.lost();
        if lost.is_none() && self.qemu.try_wait().is_none() {
            return None;
        }
        Some(self.diagnose(&lost.unwrap_or_else(|| "QEMU exited".into())))
    }

    /// Explains a lost agent connection: interrupt, kernel panic, agent exit, or QEMU crash.
    pub fn diagnose(&mut self, why: &str) -> Failure {
        if let Some(sig) = procs::interrupted() {
            return Failure::Interrupted(sig);
        }
        let status = self.qemu.wait_for(Duration::from_secs(3));
        let serial = std::fs::read_to_string(self.paths.serial_log()).unwrap_or_default();
        if let Some(line) = serial
            .lines()
            .find(|l| l.contains("Kernel panic - not syncing"))
        {
            return Failure::Infra(format!("guest kernel panic: {}", line.trim()));
        }
        if let Some(line) = serial.lines().find(|l| l.contains("init: vm-agent exited")) {
            return Failure::Infra(format!(
                "the guest agent died ({}); the VM powered off",
                line.trim()
            ));
        }
        match status {
            Some(st) => {
                let log = std::fs::read_to_string(self.paths.run_dir.join("qemu-stderr.log"))
                    .unwrap_or_default();
                Failure::Infra(
                    format!(
                        "QEMU exited unexpectedly ({st}); {why}\n{}",
                        procs::tail(&log, 10)
                    )
                    .trim_end()
                    .to_string(),
                )
            }
            None => Failure::Infra(format!("{why} while QEMU kept running")),
        }
    }

    /// The guest kernel's ublk features, by name (`ublk-mem features --json`, GET_FEATURES).
    pub fn ublk_features(&self, deadline: Instant) -> Result<Vec<String>, String> {
        let limit = (Instant::now() + Duration::from_secs(10)).min(deadline);
        let (status, out, err) = self
            .agent
            .run_capture(&["ublk-mem", "features", "--json"], limit)
            .map_err(|e| format!("reading the kernel's ublk features: {e}"))?;
        if status != 0 {
            let err = String::from_utf8_lossy(&err);
            return Err(format!("ublk-mem features exited {status}: {}", err.trim()));
        }
        let f: ublk::contract::Features =
            serde_json::from_slice(&out).map_err(|e| format!("ublk-mem features: {e}"))?;
        Ok(f.names)
    }

    pub fn qemu_pid(&self) -> i32 {
        self.pidfile.pid
    }

    /// Kills QEMU (its whole process group) and removes its pid file and sockets.
    pub fn kill(&mut self) {
        self.qemu.kill();
        self.pidfile.remove();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A fresh, short socket directory for one VM, and its run directory.
fn fresh_paths(run_dir: &Path) -> Result<Paths, Failure> {
    let sock_dir = std::env::temp_dir().join(format!(
        "ublk-vm-{}-{}",
        std::process::id(),
        SOCK_SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&sock_dir);
    std::fs::create_dir_all(&sock_dir)
        .map_err(|e| Failure::Infra(format!("create {}: {e}", sock_dir.display())))?;
    Ok(Paths {
        sock_dir,
        run_dir: run_dir.to_path_buf(),
    })
}

/// Starts QEMU in its own process group (it dies with us), its command line and stderr in
/// the run directory, and records its pid file.
fn spawn_qemu(image: &Image, cfg: &VmConfig, paths: &Paths) -> Result<(Group, PidFile), Failure> {
    let infra = |m: String| Failure::Infra(m);
    let qemu_bin = crate::host::deps::qemu().map_err(infra)?;
    let run_dir = &paths.run_dir;
    let argv = command_line(&qemu_bin, image, cfg, paths);
    std::fs::write(run_dir.join("qemu-cmdline.txt"), shell_join(&argv) + "\n")
        .map_err(|e| infra(format!("write qemu-cmdline.txt: {e}")))?;
    let stderr = File::create(run_dir.join("qemu-stderr.log"))
        .map_err(|e| infra(format!("create qemu-stderr.log: {e}")))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let qemu = Group::spawn(&mut cmd).map_err(|e| match procs::interrupted() {
        Some(sig) => Failure::Interrupted(sig),
        None => infra(format!("cannot start {}: {e}", argv[0])),
    })?;
    let pidfile = PidFile::new(qemu.pid() as i32, run_dir, &paths.sock_dir);
    if let Err(e) = pidfile.write() {
        eprintln!("xtask: warning: {e} (vm-reset will not know about this VM)");
    }
    Ok((qemu, pidfile))
}

/// QEMU creates the agent socket, then waits for us before starting the guest: connect, or
/// say why not (interrupted, QEMU gone, deadline).
fn connect_agent(
    qemu: &mut Group,
    paths: &Paths,
    deadline: Instant,
) -> Result<UnixStream, Failure> {
    loop {
        if let Some(sig) = procs::interrupted() {
            return Err(Failure::Interrupted(sig));
        }
        if let Some(status) = qemu.try_wait() {
            let log =
                std::fs::read_to_string(paths.run_dir.join("qemu-stderr.log")).unwrap_or_default();
            return Err(Failure::Infra(format!(
                "QEMU exited at start ({status}):\n{}",
                procs::tail(&log, 10)
            )));
        }
        if let Ok(s) = UnixStream::connect(paths.agent_sock()) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            return Err(Failure::Timeout(
                "QEMU did not open its agent socket in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
