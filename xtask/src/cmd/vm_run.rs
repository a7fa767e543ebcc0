//! `cargo xtask vm-run -- CMD ARGS...`: one command in one fresh VM, under one hard limit.

use std::time::{Duration, Instant};

use crate::accel::{self, Choice};
use crate::image;
use crate::kernel::Source;
use crate::procs::signal_name;
use crate::qemu::VmConfig;
use crate::runs::{RunDir, RunResult, Verdict, EXIT_INFRA, EXIT_TIMEOUT};
use crate::util::{parse_mib, rfc3339_now, shell_join, Result};
use crate::vm::{Failure, Outcome, Vm};

/// Default limit for a whole run (boot + command) under KVM; TCG scales it.
const DEFAULT_TIMEOUT_S: u64 = 60;
/// Budget for copying the guest's kernel log out after the command.
const DMESG_BUDGET: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Hard limit in seconds for the whole VM run (boot + command) [default: 60 under KVM, 300 under TCG]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Virtual CPUs
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Guest memory, e.g. 512M or 2G
    #[arg(long, default_value = "1G")]
    pub memory: String,
    /// Accelerator: auto uses KVM only if a probe VM proved it works here
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Kernel provider: debian (the locked package), host, or a PATH (build tree or bzImage)
    #[arg(long, default_value = "debian", value_name = "debian|host|PATH")]
    pub kernel: String,
    /// Name of the run directory (default: derived from the command)
    #[arg(long)]
    pub name: Option<String>,
    /// Copy a host file into the guest before the command: HOST_PATH[:GUEST_PATH] (default /tmp/NAME)
    #[arg(long, value_name = "HOST[:GUEST]")]
    pub copy_in: Vec<String>,
    /// Copy a guest file out after the command, into the run directory's files/
    #[arg(long, value_name = "GUEST_PATH")]
    pub copy_out: Vec<String>,
    /// Forward xtask's stdin to the guest command (otherwise it reads an empty stdin)
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The command to run in the guest, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    let memory_mib = parse_mib(&args.memory).map_err(|e| format!("--memory: {e}"))?;
    if args.command[0].is_empty() || args.command.iter().any(|a| a.contains('\0')) {
        return Err("the guest command must be non-empty and contain no NUL bytes".into());
    }
    let copy_in = args
        .copy_in
        .iter()
        .map(|s| parse_copy_in(s))
        .collect::<Result<Vec<_>>>()?;
    let image = image::build(&Source::parse(&args.kernel))?;
    let (accel, accel_reason) = accel::choose(args.accel, &image)?;
    let timeout_s = args
        .timeout
        .unwrap_or(DEFAULT_TIMEOUT_S * accel.timeout_scale());
    eprintln!(
        "vm-run: {} | accel {} ({accel_reason}) | limit {timeout_s} s",
        image::describe(&image),
        accel.name()
    );
    let name = args.name.clone().unwrap_or_else(|| args.command.join(" "));
    let run = RunDir::create(&name)?;
    let cfg = VmConfig {
        cpus: args.cpus,
        memory_mib,
        accel,
    };
    let started_at = rfc3339_now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout_s);

    let (outcome, boot_s, qemu_pid) = match Vm::boot(&image, &cfg, &run.path, deadline) {
        Err(f) => (Outcome::Failed(f), None, None),
        Ok(mut vm) => {
            let outcome = match copy_files_in(&vm, &copy_in, deadline) {
                Err(e) => Outcome::Failed(Failure::Infra(e)),
                Ok(()) => vm.run(
                    &args.command,
                    args.stdin,
                    &mut std::io::stdout(),
                    &mut std::io::stderr(),
                    deadline,
                ),
            };
            if matches!(outcome, Outcome::Exited(_)) {
                copy_files_out(&vm, &args.copy_out, &run.path, deadline);
            }
            // Keep the guest's whole kernel log as evidence while the agent still answers.
            if matches!(
                outcome,
                Outcome::Exited(_) | Outcome::Failed(Failure::Timeout(_))
            ) {
                save_dmesg(&vm, &run.path);
            }
            vm.kill();
            (outcome, Some(vm.boot_s), Some(vm.qemu_pid()))
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let serial = run.path.join("serial.log");
    let (verdict, exit_status, exit_code, reason) = match &outcome {
        Outcome::Exited(status) => {
            let code = vm_agent::exit_code(*status);
            (
                if code == 0 {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                Some(code),
                code,
                None,
            )
        }
        Outcome::Failed(Failure::Timeout(why)) => {
            let mut msg =
                format!("timed out after {timeout_s} s (--timeout {timeout_s}); QEMU was killed");
            if !why.is_empty() {
                msg = format!("{msg}: {why}");
            }
            (Verdict::Timeout, None, EXIT_TIMEOUT, Some(msg))
        }
        Outcome::Failed(Failure::Infra(why)) => (
            Verdict::InfraError,
            None,
            EXIT_INFRA,
            Some(format!("infra error: {why}")),
        ),
        Outcome::Failed(Failure::Interrupted(sig)) => (
            Verdict::Interrupted,
            None,
            128 + sig,
            Some(format!(
                "interrupted by {}; QEMU was killed",
                signal_name(*sig)
            )),
        ),
    };
    let result = RunResult {
        name,
        command: args.command.clone(),
        verdict,
        exit_status,
        exit_code,
        reason: reason.clone(),
        accelerator: accel.name().into(),
        accelerator_reason: accel_reason,
        boot_s,
        wall_s,
        timeout_s,
        image_hash: image.hash().to_string(),
        kernel_release: image.manifest.kernel_release.clone(),
        cpus: cfg.cpus,
        memory_mib,
        started_at,
        qemu_pid,
        run_dir: run.path.clone(),
    };
    result.write()?;
    let boot = boot_s
        .map(|b| format!("{b:.2} s"))
        .unwrap_or_else(|| "-".into());
    let status = match exit_status {
        Some(c) => format!(" (exit {c})"),
        None => String::new(),
    };
    eprintln!(
        "vm-run: {}{status} | accel {} | boot {boot} | wall {wall_s:.2} s | {}",
        verdict.name(),
        accel.name(),
        run.path.display()
    );
    if let Some(r) = reason {
        eprintln!("vm-run: {r}");
        eprintln!(
            "vm-run: command: {}; serial log: {}",
            shell_join(&args.command),
            serial.display()
        );
    }
    Ok(exit_code)
}

fn save_dmesg(vm: &Vm, dir: &std::path::Path) {
    match vm
        .agent
        .run_capture(&["dmesg"], Instant::now() + DMESG_BUDGET)
    {
        Ok((_, out, _)) => {
            let _ = std::fs::write(dir.join("dmesg.txt"), out);
        }
        Err(e) => vm.agent.note(&format!("dmesg not saved: {e}")),
    }
}

/// (host path, guest path, mode) of one --copy-in.
fn parse_copy_in(spec: &str) -> Result<(std::path::PathBuf, String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let (host, guest) = match spec.split_once(':') {
        Some((h, g)) if g.starts_with('/') => (h.to_string(), g.to_string()),
        Some(_) => return Err(format!("--copy-in {spec}: the guest path must be absolute")),
        None => {
            let name = std::path::Path::new(spec)
                .file_name()
                .ok_or_else(|| format!("--copy-in {spec}: not a file path"))?;
            (spec.to_string(), format!("/tmp/{}", name.to_string_lossy()))
        }
    };
    let meta = std::fs::metadata(&host).map_err(|e| format!("--copy-in {spec}: {host}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("--copy-in {spec}: {host} is not a regular file"));
    }
    Ok((host.into(), guest, meta.permissions().mode() & 0o7777))
}

fn copy_files_in(
    vm: &Vm,
    files: &[(std::path::PathBuf, String, u32)],
    deadline: Instant,
) -> Result<()> {
    for (host, guest, mode) in files {
        let data = std::fs::read(host).map_err(|e| format!("read {}: {e}", host.display()))?;
        vm.agent
            .put_file(guest, *mode, &data, deadline)
            .map_err(|e| format!("copying {} to the guest's {guest}: {e}", host.display()))?;
    }
    Ok(())
}

/// Largest file --copy-out fetches (a bound on host memory).
const COPY_OUT_LIMIT: usize = 256 << 20;

fn copy_files_out(vm: &Vm, files: &[String], run_dir: &std::path::Path, deadline: Instant) {
    for guest in files {
        let dest = run_dir
            .join("files")
            .join(guest.trim_start_matches('/').replace('/', "_"));
        match vm.agent.get_file(guest, COPY_OUT_LIMIT, deadline) {
            Ok(data) => {
                let _ = std::fs::create_dir_all(dest.parent().unwrap());
                match std::fs::write(&dest, data) {
                    Ok(()) => eprintln!("vm-run: copied {guest} to {}", dest.display()),
                    Err(e) => eprintln!("vm-run: warning: write {}: {e}", dest.display()),
                }
            }
            Err(e) => eprintln!("vm-run: warning: could not copy {guest} out: {e}"),
        }
    }
}
