//! Accelerator choice. `/dev/kvm` existing (even opening) proves nothing: on some hosts a
//! guest hangs under it. `auto` uses KVM only after a probe VM reached its agent under KVM
//! within PROBE_LIMIT; the verdict is cached per host in target/vm-images/accel-probe.json.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::Image;
use crate::util::{key_of, rfc3339_now, Result};
use crate::vm::qemu::{Accel, VmConfig};
use crate::vm::Vm;

/// A KVM guest reaches its agent in well under a second; TCG needs ~2.5 s, so anything slower
/// than this is not working KVM.
const PROBE_LIMIT: Duration = Duration::from_secs(4);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeRecord {
    pub host_id: String,
    pub kvm_works: bool,
    pub reason: String,
    pub probe_s: f64,
    pub probed_at: String,
}

fn cache_path() -> PathBuf {
    crate::image::store::dir().join("accel-probe.json")
}

/// Identifies "this host" for the probe cache: hostname, host kernel, CPU, QEMU binary.
fn host_id() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .unwrap_or("")
        .to_string();
    let qemu = crate::host::deps::qemu().ok().and_then(|p| {
        std::fs::metadata(&p)
            .ok()
            .map(|m| format!("{}:{}:{:?}", p.display(), m.len(), m.modified().ok()))
    });
    key_of(&[
        ("hostname", read("/proc/sys/kernel/hostname").as_bytes()),
        ("release", read("/proc/sys/kernel/osrelease").as_bytes()),
        ("cpu", cpu.as_bytes()),
        ("qemu", qemu.unwrap_or_default().as_bytes()),
    ])
}

/// Can we open /dev/kvm read-write? (Necessary, not sufficient.)
fn kvm_device() -> std::result::Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm is not usable ({e})"))
}

/// Picks the accelerator; returns it with a one-line reason for the user.
pub fn choose(choice: Choice, image: &Image) -> Result<(Accel, String)> {
    match choice {
        Choice::Tcg => Ok((Accel::Tcg, "requested with --accel tcg".into())),
        Choice::Kvm => {
            kvm_device().map_err(|e| format!("--accel kvm: {e}; use --accel tcg or auto"))?;
            Ok((Accel::Kvm, "requested with --accel kvm".into()))
        }
        Choice::Auto => {
            if let Err(e) = kvm_device() {
                return Ok((Accel::Tcg, e));
            }
            let id = host_id();
            let cached = std::fs::read_to_string(cache_path())
                .ok()
                .and_then(|t| serde_json::from_str::<ProbeRecord>(&t).ok())
                .filter(|r| r.host_id == id);
            let rec = match cached {
                Some(r) => r,
                None => probe(image)?,
            };
            let accel = if rec.kvm_works {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
            Ok((
                accel,
                format!(
                    "{}; cached probe of {}, redo: cargo xtask vm-probe",
                    rec.reason, rec.probed_at
                ),
            ))
        }
    }
}

/// Boots a probe VM under KVM and records whether its agent answered within PROBE_LIMIT.
pub fn probe(image: &Image) -> Result<ProbeRecord> {
    let start = Instant::now();
    let (kvm_works, reason) = match kvm_device() {
        Err(e) => (false, e),
        Ok(()) => {
            eprintln!(
                "xtask: probing KVM (a guest must reach its agent within {} s) ...",
                PROBE_LIMIT.as_secs()
            );
            let run = crate::runs::RunDir::create("kvm-probe")?;
            let cfg = VmConfig {
                cpus: 1,
                memory_mib: 256,
                accel: Accel::Kvm,
                tools: None,
                icount_shift: None,
            };
            match Vm::boot(image, &cfg, &run.path, start + PROBE_LIMIT) {
                Ok(vm) => (
                    true,
                    format!("KVM probe passed: guest ready in {:.2} s", vm.boot_s),
                ),
                Err(crate::vm::Failure::Interrupted(sig)) => {
                    return Err(format!(
                        "interrupted by {}",
                        crate::host::procs::signal_name(sig)
                    ))
                }
                Err(f) => (false, format!("KVM probe failed: {}", describe(&f))),
            }
        }
    };
    let rec = ProbeRecord {
        host_id: host_id(),
        kvm_works,
        reason,
        probe_s: start.elapsed().as_secs_f64(),
        probed_at: rfc3339_now(),
    };
    crate::util::write_atomic(
        &cache_path(),
        serde_json::to_string_pretty(&rec).unwrap().as_bytes(),
    )?;
    eprintln!("xtask: KVM probe took {:.2} s: {}", rec.probe_s, rec.reason);
    Ok(rec)
}

fn describe(f: &crate::vm::Failure) -> String {
    match f {
        crate::vm::Failure::Timeout(_) => format!(
            "the probe guest did not reach its agent within {} s",
            PROBE_LIMIT.as_secs()
        ),
        crate::vm::Failure::Infra(m) => m.lines().next().unwrap_or("").to_string(),
        crate::vm::Failure::Interrupted(_) => "interrupted".into(),
    }
}
