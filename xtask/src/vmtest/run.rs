//! One test executable in one fresh VM — a kernel selftest script, a user's test program —
//! under a hard limit: boot with the tools layer, ship its files, run it, map its kselftest
//! exit code to a verdict, take a freeze-frame if it hangs, scan the kernel log for splats.
//!
//! ```text
//!   boot ──► ship files ──► run command ─┬─ exit 0 ─────────────► pass   ─┐   (kselftest's codes;
//!                                        │                                   the test's verdict_of)
//!                                        ├─ exit 4 ─────────────► skip   ─┤
//!                                        ├─ exit other ─────────► fail   ─┼─► splat scan (a splat
//!                                        ├─ limit reached ─► freeze-frame ─► timeout      turns pass/skip into fail)
//!                                        └─ VM gone ────────────► infra-error (or interrupted)
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::image::tools::Layer;
use crate::image::Image;
use crate::runs::{self, Verdict};
use crate::session::outcome::{failure_verdict, Outcome, MAX_SPLATS, MAX_SPLAT_BYTES};
use crate::text::bound;
use crate::vm::freeze::{self, DaemonRef};
use crate::vm::qemu::{Accel, VmConfig};
use crate::vm::{ktrace, splat};
use crate::vm::{Failure, Outcome as VmOutcome, Vm};

/// kselftest's "skip" exit code.
pub const KSFT_SKIP: i32 = 4;
/// Budget for boot and shipping the files, beyond the test's own limit.
const SETUP_BUDGET: Duration = Duration::from_secs(120);
/// Guest memory: tests keep backing files on tmpfs.
pub const MEMORY_MIB: u64 = 2048;
/// Most server processes whose threads a freeze-frame shows.
const MAX_FROZEN_PROCESSES: usize = 8;

/// A file a test needs in the guest.
pub enum Content<'a> {
    /// Read from the host when shipped.
    Host(PathBuf),
    /// Already read (and bounded) by the caller.
    Bytes(&'a [u8]),
}

/// One file to copy, to `dir/path` in the guest (executable: scripts and programs alike).
pub struct Ship<'a> {
    pub path: String,
    pub content: Content<'a>,
}

/// A verdict and its reason.
pub type Judged = (Verdict, Option<String>);

/// How a test's exit status and output become its verdict.
pub type VerdictOf<'a> = Box<dyn Fn(i32, &str) -> Judged + 'a>;

/// What runs: the test's files, its command, how to read it.
pub struct Test<'a> {
    /// The test's name in the reports.
    pub name: &'a str,
    /// Where its files go in the guest; the command runs there.
    pub dir: &'a str,
    pub files: Vec<Ship<'a>>,
    /// What `bash -c` runs, in `dir`.
    pub command: String,
    /// The step name a failure is blamed on (the script, the program).
    pub step: &'a str,
    /// Processes (by name) whose every thread a freeze-frame shows (e.g. `kublk`).
    pub servers: &'a [&'a str],
    /// Checked before boot: the shipped files are still what was built (damage → infra).
    pub recheck: Box<dyn Fn() -> Result<(), String> + 'a>,
    /// The verdict of an exit status and the test's output (`kselftest` for scripts and
    /// programs; libtest's for cargo tests).
    pub verdict_of: VerdictOf<'a>,
}

/// kselftest's exit codes: 0 pass, 4 skip (`skip_reason` of the output), else fail with the
/// output's last line.
pub fn kselftest(
    status: i32,
    output: &str,
    skip_reason: impl Fn(&str) -> String,
) -> (Verdict, Option<String>) {
    match status {
        0 => (Verdict::Pass, None),
        KSFT_SKIP => (Verdict::Skip, Some(skip_reason(output))),
        st => (
            Verdict::Fail,
            Some(format!("exit {st}: {}", last_line(output, "no output"))),
        ),
    }
}

/// Where it runs: the kernel, the tools layer, the limit, the known splats.
pub struct Env<'a> {
    /// The kernel as asked for, for the reports.
    pub kernel: &'a str,
    pub image: &'a Image,
    pub tools: &'a Layer,
    pub accel: Accel,
    pub timeout_s: u64,
    pub run: u32,
    /// Kernel-log substrings that are known and not failures (`--expect-splat`).
    pub expect_splats: &'a [String],
    /// Record and check the kernel's ublk trace (`vm::ktrace`).
    pub kernel_trace: bool,
}

/// Most test VMs at once (each has `MEMORY_MIB`).
pub const MAX_JOBS: u32 = 16;

/// `-j` within `MAX_JOBS`, or bad input.
pub fn check_jobs(jobs: u32) -> crate::util::Result<()> {
    if jobs > MAX_JOBS {
        return Err(crate::util::bad_input(format!(
            "-j {jobs}: at most {MAX_JOBS} test VMs at once (each has {MEMORY_MIB} MiB)"
        )));
    }
    Ok(())
}

impl<'a> Env<'a> {
    /// The environment of one run of a session: its kernel, image and accelerator, with the
    /// suite's tools layer, limit and accepted splats.
    pub fn of<T>(
        run: &'a crate::session::Run<T>,
        tools: &'a Layer,
        timeout_s: u64,
        expect_splats: &'a [String],
    ) -> Env<'a> {
        Env {
            kernel: &run.key.kernel,
            image: run.image,
            tools,
            accel: run.ctx.accel,
            timeout_s,
            run: run.key.repeat,
            expect_splats,
            kernel_trace: false,
        }
    }

    /// With the kernel's ublk trace (`--no-kernel-trace` turns it off).
    pub fn traced(mut self, on: bool) -> Env<'a> {
        self.kernel_trace = on;
        self
    }
}

/// What every attempted run records of where it ran (after `retry_once` over `attempt`).
pub fn stamp(env: &Env, server: &str, out: &mut Outcome) {
    out.server = server.into();
    out.kernel = env.kernel.to_string();
    out.kernel_release = env.image.manifest.kernel_release.clone();
    out.tools = env.tools.manifest.packages.clone();
}

/// One attempt in one fresh VM; true if the command started.
pub fn attempt(job: &Test, env: &Env, dir: &Path) -> (Outcome, bool) {
    let start = Instant::now();
    let mut out = Outcome::named(job.name, env.run, 0, dir, env.image.hash());
    let cfg = VmConfig {
        cpus: 2,
        memory_mib: MEMORY_MIB,
        accel: env.accel,
        tools: Some(env.tools.clone()),
        icount_shift: None,
    };
    let setup_deadline = start + SETUP_BUDGET;
    let booted = (job.recheck)()
        .map_err(Failure::Infra)
        .and_then(|()| Vm::boot(env.image, &cfg, dir, setup_deadline));
    let mut vm = match booted {
        Ok(vm) => vm,
        Err(f) => return (out.failed_at(start, "boot", &f), false),
    };
    out.boot_s = Some(vm.boot_s);
    if env.kernel_trace {
        ktrace::install(&vm);
    }
    out.kernel_features = vm.ublk_features(setup_deadline).unwrap_or_default();
    if let Err(why) = ship(&vm, job, setup_deadline) {
        let f = vm.gone().unwrap_or(Failure::Infra(why));
        vm.kill();
        return (out.failed_at(start, "copying the test", &f), false);
    }
    if env.kernel_trace {
        ktrace::start(&vm, setup_deadline);
    }
    let ended = execute(&mut vm, job, env.timeout_s, dir, &mut out);
    let ended = with_protocol(&vm, ended, &mut out);
    let (verdict, why) = with_splats(&vm, dir, env.expect_splats, ended, &mut out);
    vm.kill();
    (out.finish(start, verdict, why), true)
}

/// Largest file shipped to the guest (a test binary with debug info is tens of MiB).
const MAX_SHIP_BYTES: u64 = 1 << 30;

/// Copies every file of the job to its directory in the guest.
fn ship(vm: &Vm, job: &Test, deadline: Instant) -> Result<(), String> {
    let mut dirs: Vec<String> = (job.files.iter())
        .filter_map(|f| Path::new(&f.path).parent().map(|p| p.display().to_string()))
        .map(|d| format!("{}/{d}", job.dir))
        .collect();
    dirs.sort();
    dirs.dedup();
    let script = format!("mkdir -p {} {}", job.dir, dirs.join(" "));
    vm.agent.run_capture(&["sh", "-c", &script], deadline)?;
    for f in &job.files {
        let read;
        let data = match &f.content {
            Content::Bytes(b) => *b,
            Content::Host(p) => {
                read = crate::input::read_bytes(p, MAX_SHIP_BYTES)?;
                &read[..]
            }
        };
        let to = format!("{}/{}", job.dir, f.path);
        vm.agent
            .put_file(&to, 0o755, data, deadline)
            .map_err(|e| format!("copying {} to the guest: {e}", f.path))?;
    }
    Ok(())
}

/// Runs the command; its output goes to test.log.
fn execute(
    vm: &mut Vm,
    job: &Test,
    timeout_s: u64,
    dir: &Path,
    out: &mut Outcome,
) -> (Verdict, Option<String>) {
    let log_path = dir.join("test.log");
    let mut log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => {
            return (
                Verdict::InfraError,
                Some(format!("create {}: {e}", log_path.display())),
            )
        }
    };
    let cmd = format!("cd {} && {}", job.dir, job.command);
    let argv = ["bash".to_string(), "-c".to_string(), cmd];
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let err = log.try_clone().expect("a file handle clones");
    let (mut stdout, mut stderr) = (Kept::new(&mut log), Kept::new(err));
    let ended = vm.run(&argv, false, &mut stdout, &mut stderr, deadline);
    // The verdict reads stdout, then stderr: each stream in its order, the two never
    // interleaved by arrival (a failure's last line is its last stderr line, every time);
    // test.log keeps them as they came.
    let text = format!("{}{}", stdout.text(), stderr.text());
    drop(stdout);
    let _ = log.flush();
    out.failed_step = Some(job.step.to_string());
    match ended {
        VmOutcome::Exited(st) => {
            let (verdict, why) = (job.verdict_of)(st, &text);
            if verdict == Verdict::Pass {
                out.failed_step = None;
            }
            (verdict, why)
        }
        VmOutcome::Failed(Failure::Timeout(_)) => {
            let why = format!("{} still running after {timeout_s} s", job.step);
            (Verdict::Timeout, Some(frozen(vm, job, dir, out, &why)))
        }
        VmOutcome::Failed(f) => {
            let f = vm.gone().unwrap_or(f);
            let (v, why) = failure_verdict(&f);
            (v, Some(why))
        }
    }
}

/// A hung test's freeze-frame (with every thread of the job's servers); the reason names the
/// first stuck tags or blocked tasks it found.
fn frozen(vm: &Vm, job: &Test, dir: &Path, out: &mut Outcome, why: &str) -> String {
    let refs = server_refs(vm, job.servers);
    let daemons: Vec<DaemonRef> = (refs.iter())
        .map(|(n, p)| DaemonRef {
            name: n,
            exec_id: None,
            pid: *p,
            state_file: None,
        })
        .collect();
    let mut ff = freeze::collect(vm, &daemons, &dir.join("freeze"), why);
    out.freeze_frame = Some(ff.dir.clone());
    let named = (ff.stuck_tags.iter())
        .chain(&ff.blocked_tasks)
        .take(2)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if !named.is_empty() {
        return format!("{why}: {named}");
    }
    // Nothing stuck in the block layer: what every task waits in is the evidence.
    let sleeping = freeze::sleeping_tasks(vm, &ff.dir);
    freeze::append_section(&mut ff, "sleeping tasks (S state)", &sleeping);
    match sleeping.is_empty() {
        true => format!("{why}: no stuck tag, blocked or sleeping task seen"),
        false => format!(
            "{why}: no stuck tag or blocked task; sleeping: {}",
            sleeping
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}

/// The guest processes named `names`, for the freeze-frame's per-thread stacks.
fn server_refs(vm: &Vm, names: &[&str]) -> Vec<(String, i32)> {
    if names.is_empty() {
        return Vec::new();
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let script = format!("pidof {}", names.join(" "));
    let Ok((_, out, _)) = vm.agent.run_capture(&["sh", "-c", &script], deadline) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .take(MAX_FROZEN_PROCESSES)
        .map(|p: i32| (format!("{}-{p}", names[0]), p))
        .collect()
}

/// A kernel splat fails a test that passed or skipped; every verdict keeps the log.
/// The kernel trace read and checked: a protocol violation fails a test that passed (at
/// "kernel trace") and is named beside any other verdict; trace/ is written.
fn with_protocol(
    vm: &Vm,
    (verdict, why): (Verdict, Option<String>),
    out: &mut Outcome,
) -> (Verdict, Option<String>) {
    let trace = ktrace::collect(vm);
    let protocol = out.record_trace(vm, trace.as_deref());
    let ended = match (protocol, verdict) {
        (None, v) => (v, why),
        (Some(p), Verdict::Pass | Verdict::Skip) => {
            out.failed_step = Some("kernel trace".into());
            (Verdict::Fail, Some(p))
        }
        (Some(p), v) => (v, Some(format!("{}; and a {p}", why.unwrap_or_default()))),
    };
    if let Some(t) = &trace {
        out.save_trace(t, ended.0);
    }
    ended
}

fn with_splats(
    vm: &Vm,
    dir: &Path,
    expected: &[String],
    (verdict, why): (Verdict, Option<String>),
    out: &mut Outcome,
) -> (Verdict, Option<String>) {
    let log = match vm
        .agent
        .run_capture(&["dmesg"], Instant::now() + Duration::from_secs(3))
    {
        Ok((_, text, _)) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => std::fs::read_to_string(vm.paths.serial_log()).unwrap_or_default(),
    };
    runs::save(&dir.join("dmesg.txt"), &log);
    let found = splat::scan(&log, expected);
    let kept = |lines: &[&str]| -> Vec<String> {
        (lines.iter())
            .take(MAX_SPLATS)
            .map(|s| bound(s.trim(), MAX_SPLAT_BYTES).into_owned())
            .collect()
    };
    out.splats = kept(&found);
    out.known_splats = kept(&splat::known(&log, expected));
    let Some(first) = found.first() else {
        return match (&verdict, why, out.known_splats.first()) {
            (Verdict::Pass, None, Some(k)) => (verdict, Some(format!("accepted known splat: {k}"))),
            (_, why, _) => (verdict, why),
        };
    };
    // Bisect's signatures read this shape (`bisect::signature::check_of`).
    let more = format!("and {} more; see dmesg.txt", found.len() - 1);
    match verdict {
        Verdict::Pass | Verdict::Skip => {
            out.failed_step = Some("kernel log".into());
            let why = format!("kernel splat: {} ({more})", first.trim());
            (Verdict::Fail, Some(why))
        }
        // The test's own failure stays first; the splat is kept beside it.
        _ => {
            let why = why.unwrap_or_default();
            (
                verdict,
                Some(format!(
                    "{why}; and a kernel splat: {} ({more})",
                    first.trim()
                )),
            )
        }
    }
}

/// A stream of the test's output: written to test.log and kept (its first
/// `MAX_KEPT_BYTES`) for the verdict.
struct Kept<W: Write> {
    file: W,
    kept: Vec<u8>,
}

const MAX_KEPT_BYTES: usize = 4 << 20;

impl<W: Write> Kept<W> {
    fn new(file: W) -> Self {
        Kept {
            file,
            kept: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

impl<W: Write> Write for Kept<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        let room = MAX_KEPT_BYTES.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The last non-empty line of a test's output (a skip's reason, a failure's hint).
pub fn last_line(text: &str, default: &str) -> String {
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(default);
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_is_the_reason() {
        assert_eq!(last_line("a\nublk: need fio\n\n", "x"), "ublk: need fio");
        assert_eq!(last_line("", "skipped"), "skipped");
    }
}
