//! `cargo xtask vm-run -- CMD ARGS...`: one command in one fresh VM, under one hard limit.

pub mod runner;

use std::time::{Duration, Instant};

use crate::vm::accel::{self, Choice};
use std::path::{Path, PathBuf};

use crate::host::procs::signal_name;
use crate::image::kernel::Source;
use crate::image::{self, Image};
use crate::runs::{self, RunDir, RunResult, Verdict, EXIT_INFRA, EXIT_TIMEOUT};
use crate::server::Profile;
use crate::util::{parse_mib, rfc3339_now, shell_join, Result};
use crate::vm::qemu::VmConfig;
use crate::vm::{Failure, Outcome, Vm};

/// Default limit for a whole run (boot + command) under KVM; TCG scales it.
const DEFAULT_TIMEOUT_S: u64 = 60;
/// Budget for copying the guest's kernel log out after the command.
const DMESG_BUDGET: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use exactly the packages the locks name, or fail with exit 125 when some source no
    /// longer has one (default: the newest build of the same suite, with a warning and a
    /// record in every report); also UBLK_VM_LOCKED=1
    #[arg(long)]
    pub locked: bool,
    /// Hard limit in seconds for the whole VM run (boot + command), taken as given [default:
    /// 60 x the limits scale: 60 s under KVM, 120 s under TCG]
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: Option<u64>,
    /// Multiply the default limit by F [default: 1 under KVM, 2 under TCG]
    #[arg(long, value_name = "F", value_parser = crate::vm::limits::parse_scale)]
    pub timeout_scale: Option<f64>,
    /// Virtual CPUs
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=crate::vm::qemu::MAX_CPUS as i64))]
    pub cpus: u32,
    /// Guest memory, e.g. 512M or 2G
    #[arg(long, default_value = "1G", value_parser = parse_memory)]
    pub memory: u64,
    /// Accelerator: auto uses KVM only if a probe VM proved it works here
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub accel: Choice,
    /// Kernel provider: debian (the locked package), host, or a PATH (build tree or bzImage)
    #[arg(long, default_value = crate::image::kernel::DEFAULT_KERNEL, value_name = "debian|host|PATH")]
    pub kernel: String,
    /// Name of the run directory (default: derived from the command)
    #[arg(long)]
    pub name: Option<String>,
    /// Copy a host file or directory into the guest before the command:
    /// HOST_PATH[:GUEST_PATH] (default /tmp/NAME); parent directories are made, a directory is
    /// copied whole (its files and modes; symbolic links are skipped and said)
    #[arg(long, value_name = "HOST[:GUEST]", value_parser = parse_copy_in)]
    pub copy_in: Vec<CopyIn>,
    /// Copy a guest file out after the command, into the run directory's files/
    #[arg(long, value_name = "GUEST_PATH")]
    pub copy_out: Vec<String>,
    /// Put a server in the guest's /bin first (built-in profile name or profile path; a
    /// crate server is built on first use, a dynamic one brings its shared libraries)
    #[arg(long, value_name = "NAME|PATH")]
    pub server: Option<String>,
    /// Attach the guest tools layer and check it offers these programs (e.g. fio,bash)
    #[arg(long, value_name = "PROGRAM[,...]", value_delimiter = ',')]
    pub tools: Vec<String>,
    #[command(flatten)]
    pub packages: crate::image::extra::Request,
    /// A kernel-log substring that is known and not a splat (e.g. a warning your kernel is
    /// known for); repeatable
    #[arg(long, value_name = "TEXT")]
    pub expect_splat: Vec<String>,
    /// A kernel splat (WARNING, BUG, UBSAN, KASAN, lockdep, ...) the command left fails the run
    /// (exit 1) even when the command passed; without it a splat is printed and recorded only
    #[arg(long)]
    pub fail_on_splat: bool,
    /// Forward xtask's stdin to the guest command (otherwise it reads an empty stdin)
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The command to run in the guest, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--server`: the profile, its binary ready for the guest.
fn prepared_server(name: &str) -> Result<Profile> {
    let mut p = Profile::resolve(name)?;
    p.prepare(&image::recipe::Recipe::load()?)?;
    Ok(p)
}

/// Where every .deb of the kernel part and the tools layer came from.
fn inputs_of(image: &image::Image, cfg: &VmConfig) -> Vec<crate::image::fetch::Inputs> {
    let tools = cfg.tools.as_ref().and_then(|l| l.manifest.inputs.as_ref());
    image
        .kernel
        .manifest
        .inputs
        .iter()
        .chain(tools)
        .cloned()
        .collect()
}

pub fn run(args: Args) -> Result<i32> {
    crate::image::fetch::set_locked(args.locked);
    if args.command[0].is_empty() || args.command.iter().any(|a| a.contains('\0')) {
        return Err(crate::util::bad_input(
            "the guest command must be non-empty and contain no NUL bytes".into(),
        ));
    }
    image::extra::check_names(&args.packages.packages)?;
    let image = image::build(&Source::parse(&args.kernel))?;
    let server = args.server.as_deref().map(prepared_server).transpose()?;
    let tools = match args.tools.is_empty() && args.packages.is_empty() {
        true => None,
        false => Some(image::extra::layer(&args.tools, &args.packages)?),
    };
    let (accel, accel_reason) = accel::choose(args.accel, &image)?;
    let limits = crate::vm::limits::Limits::new(accel, args.timeout_scale);
    let timeout_s = args.timeout.unwrap_or(limits.secs(DEFAULT_TIMEOUT_S));
    eprintln!(
        "vm-run: {} | accel {} ({accel_reason}) | limit {timeout_s} s{}",
        image::describe(&image),
        accel.name(),
        match args.timeout {
            Some(_) => " (--timeout)".to_string(),
            None => format!(" ({})", limits.describe()),
        }
    );
    let name = args.name.clone().unwrap_or_else(|| args.command.join(" "));
    let run = RunDir::create(&name)?;
    let cfg = VmConfig {
        cpus: args.cpus,
        memory_mib: args.memory,
        accel,
        tools,
        icount_shift: None,
    };
    let started_at = rfc3339_now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout_s);
    let session = execute(&args, server.as_ref(), &image, &cfg, &run.path, deadline);
    let ended = judge(&session.outcome, &session.user_error, timeout_s);
    let ended = with_splats(ended, &session.splats, args.fail_on_splat);
    let result = RunResult {
        name,
        command: args.command.clone(),
        verdict: ended.verdict,
        exit_status: ended.exit_status,
        exit_code: ended.exit_code,
        reason: ended.reason,
        accelerator: accel.name().into(),
        accelerator_reason: accel_reason,
        boot_s: session.boot_s,
        wall_s: start.elapsed().as_secs_f64(),
        timeout_s,
        image_hash: image.hash().to_string(),
        kernel_release: image.manifest.kernel_release.clone(),
        ublk_features: session.ublk_features.clone(),
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        tools: cfg
            .tools
            .as_ref()
            .map(|l| l.manifest.packages.clone())
            .unwrap_or_default(),
        inputs: inputs_of(&image, &cfg),
        started_at,
        qemu_pid: session.qemu_pid,
        splats: session.splats,
        run_dir: run.path.clone(),
    };
    Ok(record(result, &args.command))
}

/// What happened in the VM.
struct Session {
    outcome: Outcome,
    /// A flag the guest could not honour (a --copy-in path it cannot write, a --copy-out file
    /// it does not have): the user's mistake, not the platform's.
    user_error: Option<(i32, String)>,
    boot_s: Option<f64>,
    qemu_pid: Option<i32>,
    ublk_features: Vec<String>,
    /// Kernel splats in the guest's log but the expected ones (bounded).
    splats: Vec<String>,
}

/// Boots, copies in, runs, copies out, saves the kernel log, kills the VM.
fn execute(
    args: &Args,
    server: Option<&Profile>,
    image: &Image,
    cfg: &VmConfig,
    dir: &Path,
    deadline: Instant,
) -> Session {
    let mut vm = match Vm::boot(image, cfg, dir, deadline) {
        Err(f) => {
            return Session {
                outcome: Outcome::Failed(f),
                user_error: None,
                boot_s: None,
                qemu_pid: None,
                ublk_features: Vec::new(),
                splats: Vec::new(),
            }
        }
        Ok(vm) => vm,
    };
    let mut user_error = None;
    // Evidence, not a precondition: a kernel without ublk still runs the command.
    let ublk_features = vm.ublk_features(deadline).unwrap_or_default();
    if !ublk_features.is_empty() {
        crate::image::kernel::remember_features(&image.manifest.kernel_release, &ublk_features);
    }
    let installed = server.map_or(Ok(()), |p| p.install(&vm, deadline));
    let mut outcome = match installed.and_then(|()| copy_files_in(&vm, &args.copy_in, deadline)) {
        Err(e) => match vm.gone() {
            Some(f) => Outcome::Failed(f),
            None => {
                user_error = Some((2, e));
                Outcome::Exited(0)
            }
        },
        Ok(()) => vm.run(
            &args.command,
            args.stdin,
            &mut std::io::stdout(),
            &mut std::io::stderr(),
            deadline,
        ),
    };
    if user_error.is_none() && matches!(outcome, Outcome::Exited(_)) {
        if let Err(e) = copy_files_out(&mut vm, &args.copy_out, dir, deadline) {
            match vm.gone() {
                Some(f) => outcome = Outcome::Failed(f),
                None => user_error = Some((1, e)),
            }
        }
    }
    // Keep the guest's whole kernel log as evidence while the agent still answers; else the
    // serial log holds what the kernel said.
    let log = match matches!(
        outcome,
        Outcome::Exited(_) | Outcome::Failed(Failure::Timeout(_))
    ) {
        true => save_dmesg(&vm, dir),
        false => None,
    };
    let log =
        log.unwrap_or_else(|| std::fs::read_to_string(vm.paths.serial_log()).unwrap_or_default());
    vm.kill();
    Session {
        outcome,
        user_error,
        boot_s: Some(vm.boot_s),
        qemu_pid: Some(vm.qemu_pid()),
        ublk_features,
        splats: bounded_splats(&crate::vm::splat::scan(&log, &args.expect_splat)),
    }
}

struct Ended {
    verdict: Verdict,
    exit_status: Option<i32>,
    exit_code: i32,
    reason: Option<String>,
}

/// The verdict and exit code of a session.
fn judge(outcome: &Outcome, user_error: &Option<(i32, String)>, timeout_s: u64) -> Ended {
    let ended = |verdict, exit_status, exit_code, reason| Ended {
        verdict,
        exit_status,
        exit_code,
        reason,
    };
    match outcome {
        Outcome::Exited(status) => {
            let code = vm_agent::exit_code(*status);
            match user_error {
                // The command's own failure is the better answer; the user error is printed.
                Some((_, e)) if code != 0 => {
                    ended(Verdict::Fail, Some(code), code, Some(e.clone()))
                }
                Some((exit, e)) => ended(Verdict::Fail, Some(code), *exit, Some(e.clone())),
                None if code == 0 => ended(Verdict::Pass, Some(0), 0, None),
                None => ended(Verdict::Fail, Some(code), code, None),
            }
        }
        Outcome::Failed(Failure::Timeout(why)) => {
            let mut msg =
                format!("timed out after {timeout_s} s (--timeout {timeout_s}); QEMU was killed");
            if !why.is_empty() {
                msg = format!("{msg}: {why}");
            }
            ended(Verdict::Timeout, None, EXIT_TIMEOUT, Some(msg))
        }
        Outcome::Failed(Failure::Infra(why)) => ended(
            Verdict::InfraError,
            None,
            EXIT_INFRA,
            Some(format!("infra error: {why}")),
        ),
        Outcome::Failed(Failure::Interrupted(sig)) => ended(
            Verdict::Interrupted,
            None,
            128 + sig,
            Some(format!(
                "interrupted by {}; QEMU was killed",
                signal_name(*sig)
            )),
        ),
    }
}

/// Writes result.json and prints the summary; returns the exit code. Evidence that could not
/// be written turns a pass into "could not test" (125).
fn record(mut result: RunResult, command: &[String]) -> i32 {
    let incomplete = runs::evidence_errors(&result.run_dir);
    let written = result.write();
    let problem = match (&written, incomplete) {
        (Err(e), _) => Some(format!("result.json could not be written ({e})")),
        (Ok(()), Some(why)) => Some(why),
        _ => None,
    };
    if let Some(why) = &problem {
        eprintln!(
            "vm-run: the run's evidence is incomplete: {why}; free space under {} and rerun",
            runs::runs_dir().display()
        );
        if result.verdict == Verdict::Pass {
            result.exit_code = EXIT_INFRA;
        }
    }
    let boot = result
        .boot_s
        .map(|b| format!("{b:.2} s"))
        .unwrap_or_else(|| "-".into());
    let status = match result.exit_status {
        Some(c) if c != result.exit_code => {
            format!(" (exit {}; the command exited {c})", result.exit_code)
        }
        _ => format!(" (exit {})", result.exit_code),
    };
    eprintln!(
        "vm-run: {}{status} | accel {} | boot {boot} | wall {:.2} s | {}",
        result.verdict.name(),
        result.accelerator,
        result.wall_s,
        result.run_dir.display()
    );
    if let Some(r) = &result.reason {
        eprintln!("vm-run: {r}");
        eprintln!(
            "vm-run: command: {}; serial log: {}",
            shell_join(command),
            result.run_dir.join("serial.log").display()
        );
    }
    result.exit_code
}

/// Saves the guest's kernel log as dmesg.txt; returns it.
fn save_dmesg(vm: &Vm, dir: &std::path::Path) -> Option<String> {
    match vm
        .agent
        .run_capture(&["dmesg"], Instant::now() + DMESG_BUDGET)
    {
        Ok((_, out, _)) => {
            let text = String::from_utf8_lossy(&out).into_owned();
            runs::save(&dir.join("dmesg.txt"), &text);
            Some(text)
        }
        Err(e) => {
            vm.agent.note(&format!("dmesg not saved: {e}"));
            None
        }
    }
}

fn bounded_splats(found: &[&str]) -> Vec<String> {
    use crate::session::outcome::{MAX_SPLATS, MAX_SPLAT_BYTES};
    (found.iter())
        .take(MAX_SPLATS)
        .map(|s| crate::text::bound(s.trim(), MAX_SPLAT_BYTES).into_owned())
        .collect()
}

/// A splat is always said; with `--fail-on-splat` it fails a command that passed.
fn with_splats(mut ended: Ended, splats: &[String], fail_on_splat: bool) -> Ended {
    let Some(first) = splats.first() else {
        return ended;
    };
    let what = format!(
        "kernel splat: {first} (and {} more; see dmesg.txt)",
        splats.len() - 1
    );
    if fail_on_splat && ended.verdict == Verdict::Pass {
        ended.verdict = Verdict::Fail;
        ended.exit_code = 1;
        ended.reason = Some(format!("{what} (--fail-on-splat)"));
        return ended;
    }
    ended.reason = Some(match ended.reason {
        Some(r) => format!("{r}; and a {what}"),
        None => format!("{what} (the command passed: --fail-on-splat fails it)"),
    });
    ended
}

fn parse_memory(s: &str) -> Result<u64> {
    parse_mib(s)
}

/// One --copy-in: a readable host file, or a directory's files, and where they go in the
/// guest.
#[derive(Clone, Debug)]
pub struct CopyIn {
    host: PathBuf,
    guest: String,
    /// (host file, guest path, mode): the file itself, or every file under the directory.
    files: Vec<(PathBuf, String, u32)>,
    /// Symbolic links (and other non-files) under a directory, left out and said.
    skipped: Vec<PathBuf>,
}

/// Most files one `--copy-in` directory may hold, and their total size.
const MAX_COPY_IN_FILES: usize = 10_000;
const MAX_COPY_IN_BYTES: u64 = 2 << 30;
/// Deepest directory nesting copied.
const MAX_COPY_IN_DEPTH: usize = 32;

/// HOST[:GUEST], checked at parse time: bad values are usage errors (exit 2).
fn parse_copy_in(spec: &str) -> Result<CopyIn> {
    let (host, guest) = match spec.split_once(':') {
        Some((h, g)) if g.starts_with('/') => (h.to_string(), g.trim_end_matches('/').to_string()),
        Some(_) => return Err(format!("{spec}: the guest path must be absolute")),
        None => {
            let name = Path::new(spec)
                .file_name()
                .ok_or_else(|| format!("{spec}: not a file path"))?;
            (spec.to_string(), format!("/tmp/{}", name.to_string_lossy()))
        }
    };
    if guest.is_empty() || guest.split('/').any(|c| c == "..") {
        return Err(format!(
            "{spec}: the guest path must be absolute, without `..`"
        ));
    }
    let meta = std::fs::metadata(&host).map_err(|e| format!("{host}: {e}"))?;
    let mut c = CopyIn {
        host: host.clone().into(),
        guest: guest.clone(),
        files: Vec::new(),
        skipped: Vec::new(),
    };
    if meta.is_file() {
        c.files.push((host.into(), guest, mode_of(&meta)));
    } else if meta.is_dir() {
        let mut total = 0;
        walk(Path::new(&host), &guest, 0, &mut c, &mut total)?;
    } else {
        return Err(format!("{host} is not a regular file or a directory"));
    }
    Ok(c)
}

fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

/// Every regular file under `dir` (not following links), bounded in count, size and depth.
fn walk(dir: &Path, guest: &str, depth: usize, c: &mut CopyIn, total: &mut u64) -> Result<()> {
    if depth > MAX_COPY_IN_DEPTH {
        return Err(format!(
            "{}: nested deeper than {MAX_COPY_IN_DEPTH} directories",
            dir.display()
        ));
    }
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let to = format!("{guest}/{}", e.file_name().to_string_lossy());
        let meta = e
            .metadata()
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if meta.is_dir() {
            walk(&path, &to, depth + 1, c, total)?;
        } else if meta.is_file() {
            *total += meta.len();
            c.files.push((path, to, mode_of(&meta)));
        } else {
            c.skipped.push(path);
        }
        if c.files.len() > MAX_COPY_IN_FILES || *total > MAX_COPY_IN_BYTES {
            return Err(format!(
                "{}: more than {MAX_COPY_IN_FILES} files or {} GiB to copy",
                c.host.display(),
                MAX_COPY_IN_BYTES >> 30
            ));
        }
    }
    Ok(())
}

/// Copies every --copy-in file, making its parent directories first.
fn copy_files_in(vm: &Vm, copies: &[CopyIn], deadline: Instant) -> Result<()> {
    for c in copies {
        for skipped in &c.skipped {
            eprintln!(
                "vm-run: --copy-in {}: skipped {} (not a regular file or directory)",
                c.host.display(),
                skipped.display()
            );
        }
        let mut dirs: Vec<&str> = (c.files.iter())
            .filter_map(|(_, g, _)| g.rsplit_once('/').map(|(d, _)| d))
            .filter(|d| !d.is_empty())
            .collect();
        dirs.sort();
        dirs.dedup();
        let cannot = |e: String| {
            format!(
                "--copy-in {}: the guest could not write {}: {e}",
                c.host.display(),
                c.guest
            )
        };
        if !dirs.is_empty() {
            let mut argv = vec!["mkdir", "-p", "--"];
            argv.extend(dirs.iter().copied());
            match vm.agent.run_capture(&argv, deadline) {
                Ok((0, _, _)) => {}
                Ok((st, _, err)) => {
                    let why = String::from_utf8_lossy(&err).trim().to_string();
                    return Err(cannot(format!("mkdir exited {st}: {why}")));
                }
                Err(e) => return Err(cannot(e)),
            }
        }
        for (host, guest, mode) in &c.files {
            // Bounded and regular-only: a file that turned into a FIFO since the walk must not
            // block the run.
            let data = crate::input::read_bytes(host, MAX_COPY_IN_BYTES)
                .map_err(|e| format!("--copy-in: {e}"))?;
            vm.agent
                .put_file(guest, *mode, &data, deadline)
                .map_err(|e| cannot(format!("{guest}: {e}")))?;
        }
    }
    Ok(())
}

/// Largest file --copy-out fetches (a bound on host memory).
const COPY_OUT_LIMIT: usize = 256 << 20;

/// Fetches each --copy-out file into the run directory's files/. A file the guest does not
/// have is an error (the caller asked for it); a VM that died meanwhile is the caller's to judge.
fn copy_files_out(vm: &mut Vm, files: &[String], run_dir: &Path, deadline: Instant) -> Result<()> {
    for guest in files {
        let dest = run_dir
            .join("files")
            .join(guest.trim_start_matches('/').replace('/', "_"));
        let data = vm
            .agent
            .get_file(guest, COPY_OUT_LIMIT, deadline)
            .map_err(|e| format!("--copy-out {guest}: {e}"))?;
        runs::record(&dest, std::fs::create_dir_all(run_dir.join("files")));
        if runs::record(&dest, std::fs::write(&dest, data)).is_some() {
            eprintln!("vm-run: copied {guest} to {}", dest.display());
        }
    }
    Ok(())
}
