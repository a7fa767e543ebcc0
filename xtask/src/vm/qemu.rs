//! QEMU command lines and the pid files that let `vm-reset` find VMs a crashed xtask left.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::Image;
use crate::util::{target_dir, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Most virtual CPUs a VM gets (`--cpus`, a scenario's `vm.cpus`).
pub const MAX_CPUS: u32 = 64;

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    /// The guest tools layer, attached as a read-only disk; None: no disk at all.
    pub tools: Option<crate::image::tools::Layer>,
    /// TCG only: QEMU's instruction-counting clock (`-icount shift=N,sleep=off`): guest time
    /// advances 2^N ns per executed instruction, whatever the host's load.
    pub icount_shift: Option<u32>,
}

/// Where one VM's host-side endpoints live.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Short directory for the unix sockets (sun_path is limited to 108 bytes).
    pub sock_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl Paths {
    pub fn agent_sock(&self) -> PathBuf {
        self.sock_dir.join("agent.sock")
    }
    pub fn serial_sock(&self) -> PathBuf {
        self.sock_dir.join("serial.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join("serial.log")
    }
}

/// TCG's vCPU threading. `single` runs every vCPU on one host thread: with `multi`, QEMU's
/// translated code can lag a kernel text patch made on another vCPU, and the Debian 6.12
/// guest then oopses ("Oops: int3" in sched_clock_cpu while late initcalls enable the
/// sched_clock static keys) in about 1 % of boots. `UBLK_VM_TCG_THREAD=multi` trades that for
/// speed.
pub fn tcg_thread() -> &'static str {
    match std::env::var("UBLK_VM_TCG_THREAD").as_deref() {
        Ok("multi") => "multi",
        _ => "single",
    }
}

/// TCG's CPU model: QEMU's `max` without ERMS. With ERMS the guest kernel copies to and from
/// user memory with `rep movsb`, which TCG executes one byte per iteration; without it, with
/// `rep movsq` (8 bytes). Linux 7.x's ublk USER_COPY is such a copy (6.12 pinned the pages and
/// used the kernel's memcpy), so with ERMS a 128 KiB request's copy took 287 us on 7.2 against
/// 52 us on 6.12 — a TCG artifact, not the kernel's (measured with function_graph, median per
/// `ublk_ch_write_iter`; 53.5 us on 7.2 without ERMS; README "Performance"). Real CPUs with
/// ERMS copy fast either way; KVM guests get the host's CPU.
/// `UBLK_VM_TCG_CPU=max` brings ERMS back (to reproduce the measurement); any QEMU `-cpu`
/// value of letters, digits and `,+-_=.` is taken, anything else ignored with a warning.
pub const TCG_CPU: &str = "max,-erms";

pub fn tcg_cpu() -> String {
    tcg_cpu_of(std::env::var("UBLK_VM_TCG_CPU").ok())
}

fn tcg_cpu_of(setting: Option<String>) -> String {
    let Some(v) = setting else {
        return TCG_CPU.into();
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || ",+-_=.".contains(c);
    if !v.is_empty() && v.len() <= 200 && v.chars().all(ok) {
        return v;
    }
    eprintln!(
        "warning: UBLK_VM_TCG_CPU={} is not a QEMU CPU model (letters, digits, ,+-_=.); using {TCG_CPU}",
        crate::text::term(&crate::text::bound(&v, 200))
    );
    TCG_CPU.into()
}

/// Every QEMU option, one place. The serial console is a socket (so the host can later send
/// SysRq over it) whose output QEMU also logs to serial.log; the agent port waits for the host
/// to connect before the guest starts, so no agent output can be lost.
pub fn command_line(qemu: &Path, image: &Image, cfg: &VmConfig, paths: &Paths) -> Vec<String> {
    let tcg = format!("tcg,thread={}", tcg_thread());
    let tcg_cpu = tcg_cpu();
    let (accel, cpu) = match cfg.accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => (tcg.as_str(), tcg_cpu.as_str()),
    };
    let mut v: Vec<String> = vec![qemu.display().to_string()];
    let mut push = |args: &[&str]| v.extend(args.iter().map(|s| s.to_string()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ]);
    push(&["-machine", "q35", "-accel", accel, "-cpu", cpu]);
    if let (Accel::Tcg, Some(shift)) = (cfg.accel, cfg.icount_shift) {
        push(&["-icount", &format!("shift={shift},sleep=off")]);
    }
    push(&[
        "-smp",
        &cfg.cpus.to_string(),
        "-m",
        &format!("{}M", cfg.memory_mib),
    ]);
    push(&["-kernel", &image.kernel.boot_file().display().to_string()]);
    push(&["-initrd", &image.initrd().display().to_string()]);
    push(&["-append", &image.manifest.cmdline]);
    let serial = format!(
        "socket,id=ser0,path={},server=on,wait=off,telnet=on,logfile={},logappend=on",
        paths.serial_sock().display(),
        paths.serial_log().display()
    );
    push(&["-chardev", &serial, "-serial", "chardev:ser0"]);
    let agent = format!(
        "socket,id=agent0,path={},server=on,wait=on",
        paths.agent_sock().display()
    );
    push(&["-device", "virtio-serial-pci,id=vser0", "-chardev", &agent]);
    if let Some(layer) = &cfg.tools {
        let drive = format!(
            "file={},format=raw,if=none,id=tools,readonly=on",
            layer.image().display()
        );
        let device = format!(
            "virtio-blk-pci,drive=tools,serial={}",
            crate::image::tools::SERIAL
        );
        push(&["-drive", &drive, "-device", &device]);
    }
    push(&[
        "-device",
        &format!(
            "virtserialport,bus=vser0.0,chardev=agent0,name={}",
            vm_agent::PORT_NAME
        ),
    ]);
    v
}

/// A pid file for one running QEMU: enough to find and kill exactly that process later.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PidFile {
    pub pid: i32,
    /// /proc/PID/stat start time: a recycled pid never matches.
    pub start_ticks: u64,
    pub run_dir: PathBuf,
    pub sock_dir: PathBuf,
    /// The xtask that started it (pid + start time): the VM is orphaned once that process is
    /// gone. Pid files without an owner (older xtasks) count as orphaned.
    #[serde(default)]
    pub owner_pid: i32,
    #[serde(default)]
    pub owner_start_ticks: u64,
}

pub fn state_dir() -> PathBuf {
    target_dir().join("vm-state")
}

impl PidFile {
    /// A pid file for QEMU `pid`, owned by this process.
    pub fn new(pid: i32, run_dir: &Path, sock_dir: &Path) -> PidFile {
        let me = std::process::id() as i32;
        PidFile {
            pid,
            start_ticks: crate::host::procs::start_time(pid).unwrap_or(0),
            run_dir: run_dir.to_path_buf(),
            sock_dir: sock_dir.to_path_buf(),
            owner_pid: me,
            owner_start_ticks: crate::host::procs::start_time(me).unwrap_or(0),
        }
    }

    /// Whether the xtask that started this VM is gone (so nothing will ever kill it).
    pub fn orphaned(&self) -> bool {
        self.owner_pid <= 0
            || !crate::host::procs::same_process(self.owner_pid, self.owner_start_ticks)
    }

    pub fn path(pid: i32) -> PathBuf {
        state_dir().join(format!("qemu-{pid}.json"))
    }

    pub fn write(&self) -> Result<()> {
        crate::util::write_atomic(
            &PidFile::path(self.pid),
            serde_json::to_string_pretty(self).unwrap().as_bytes(),
        )
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(PidFile::path(self.pid));
        let _ = std::fs::remove_dir_all(&self.sock_dir);
    }

    pub fn load_all() -> Vec<(PathBuf, Option<PidFile>)> {
        let Ok(rd) = std::fs::read_dir(state_dir()) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let pf = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
                (p, pf)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_roundtrip() {
        let pf = PidFile::new(42, Path::new("/r"), Path::new("/s"));
        assert!(!pf.orphaned(), "this test process owns it");
        let text = serde_json::to_string(&pf).unwrap();
        assert_eq!(serde_json::from_str::<PidFile>(&text).unwrap(), pf);
        assert!(PidFile::path(42).ends_with("vm-state/qemu-42.json"));
        // Older pid files have no owner: orphaned.
        let old: PidFile =
            serde_json::from_str(r#"{"pid":1,"start_ticks":2,"run_dir":"/r","sock_dir":"/s"}"#)
                .unwrap();
        assert!(old.orphaned());
    }

    /// A CPU model from the environment is taken only when it is one: nothing reaches QEMU's
    /// command line that could be another option.
    #[test]
    fn the_tcg_cpu_model_is_max_without_erms_unless_told() {
        assert_eq!(tcg_cpu_of(None), "max,-erms");
        assert_eq!(tcg_cpu_of(Some("max".into())), "max");
        assert_eq!(
            tcg_cpu_of(Some("Skylake-Client,+fsrm".into())),
            "Skylake-Client,+fsrm"
        );
        for bad in ["", "max -smp 64", "max\n", &"x".repeat(201)] {
            assert_eq!(tcg_cpu_of(Some(bad.into())), TCG_CPU, "{bad:?}");
        }
    }

    #[test]
    fn tcg_runs_get_longer_default_limits() {
        use crate::vm::limits::Limits;
        assert!(Limits::new(Accel::Tcg, None).scale > Limits::new(Accel::Kvm, None).scale);
        assert_eq!(Accel::Kvm.name(), "kvm");
    }
}
