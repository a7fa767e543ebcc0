//! Child processes that cannot outlive xtask.
//!
//! Every child we start (QEMU, cargo, apt-get, ...) runs in its own process group, is
//! registered here, and gets SIGKILL from the kernel if xtask dies (PR_SET_PDEATHSIG). On
//! SIGINT/SIGTERM/SIGHUP the handler SIGKILLs every registered group at once and records the
//! signal; the command then finishes its bookkeeping and exits 128+signal. A second signal
//! exits immediately. Every wait here is bounded.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::util::Result;

const SLOTS: usize = 64;
static GROUPS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here: kill, write, _exit.
    if INTERRUPTED.swap(sig, Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    kill_all_groups();
}

/// SIGKILLs every registered process group (async-signal-safe).
pub fn kill_all_groups() {
    for slot in &GROUPS {
        let pgid = slot.load(Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: kill is async-signal-safe; a stale group at worst gets ESRCH.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// Installs the handlers and ties xtask's own life to its parent's (cargo, a shell, CI).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // If whoever started us dies (e.g. a CI runner killing `cargo`), act as if SIGTERMed.
    // SAFETY: prctl with PR_SET_PDEATHSIG and getppid have no memory-safety preconditions.
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        if libc::getppid() != parent {
            libc::raise(libc::SIGTERM);
        }
    }
}

/// The signal that interrupted xtask, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

/// A child in its own process group, registered for the signal handler; killed on drop.
pub struct Group {
    pub child: Child,
    slot: usize,
    /// False once the group was killed and the leader reaped: never signal a recycled pid.
    live: bool,
}

impl Group {
    /// Spawns `cmd` in a new process group that dies with xtask.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Group> {
        if let Some(sig) = interrupted() {
            return Err(std::io::Error::other(format!(
                "interrupted by {}",
                signal_name(sig)
            )));
        }
        // SAFETY: getpid is always safe.
        let parent = unsafe { libc::getpid() };
        cmd.process_group(0);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(137); // parent already gone
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let slot = GROUPS
            .iter()
            .position(|s| {
                s.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
            .ok_or_else(|| std::io::Error::other("more than 64 live child process groups"));
        let slot = match slot {
            Ok(s) => s,
            Err(e) => {
                let mut g = Group {
                    child,
                    slot: usize::MAX,
                    live: true,
                };
                g.kill();
                return Err(e);
            }
        };
        // A signal that raced with the spawn must not leave this child behind.
        if interrupted().is_some() {
            let mut g = Group {
                child,
                slot,
                live: true,
            };
            g.kill();
            return Err(std::io::Error::other("interrupted"));
        }
        Ok(Group {
            child,
            slot,
            live: true,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the leader to exit.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(limit).ok().flatten()
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the whole group and reaps the leader (bounded).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if !self.live {
            return self.child.try_wait().ok().flatten();
        }
        self.live = false;
        // SAFETY: plain kill(2) on our own child's group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let status = self
            .child
            .wait_timeout(Duration::from_secs(5))
            .ok()
            .flatten();
        self.release();
        status
    }

    fn release(&mut self) {
        if self.slot < SLOTS {
            GROUPS[self.slot].store(0, Ordering::SeqCst);
            self.slot = usize::MAX;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output of a bounded command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion within `limit`, capturing stdout and stderr. `what` names the
/// step in errors ("apt-get download linux-image-...").
pub fn run(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Group::spawn(cmd).map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = g.child.stdout.take().unwrap();
    let err = g.child.stderr.take().unwrap();
    let t_out = thread::spawn(move || read_all(out));
    let t_err = thread::spawn(move || read_all(err));
    let status = match g.wait_for(limit) {
        Some(s) => s,
        None => {
            g.kill();
            if let Some(sig) = interrupted() {
                return Err(format!("{what}: interrupted by {}", signal_name(sig)));
            }
            return Err(format!(
                "{what}: no result after {} s; killed",
                limit.as_secs()
            ));
        }
    };
    // The leader exited; a background grandchild still holding the pipes dies with the group.
    g.kill();
    if let Some(sig) = interrupted() {
        return Err(format!("{what}: interrupted by {}", signal_name(sig)));
    }
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs a short cleanup command (`git worktree remove`) even after an interrupt, when `run`
/// refuses to start anything: its stdout if it exited 0 within `limit` (killed past it).
/// Not a registered group: a cleanup is what an interrupted command does on its way out.
pub fn run_cleanup(cmd: &mut Command, limit: Duration) -> Option<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().ok()?;
    let out = child.stdout.take()?;
    let reader = thread::spawn(move || read_all(out));
    let status = match child.wait_timeout(limit) {
        Ok(Some(s)) => s,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    };
    let stdout = reader.join().unwrap_or_default();
    status.success().then_some(stdout)
}

/// Like `run`, but a non-zero exit is an error carrying the tail of stderr.
pub fn run_ok(cmd: &mut Command, limit: Duration, what: &str) -> Result<Output> {
    let out = run(cmd, limit, what)?;
    if !out.status.success() {
        return Err(format!(
            "{what}: failed ({}):\n{}",
            out.status,
            tail(&out.stderr, 30)
        ));
    }
    Ok(out)
}

fn read_all(mut r: impl Read) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    String::from_utf8_lossy(&v).into_owned()
}

/// Longest line `tail` keeps whole (a longer one keeps its head and tail), and its total.
const MAX_TAIL_LINE_BYTES: usize = 2048;
const MAX_TAIL_BYTES: usize = 16 << 10;

/// The last `n` lines of `s`, bounded in bytes too: one 70 MB line is not a reason.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let kept: Vec<String> = lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| crate::text::bound(l, MAX_TAIL_LINE_BYTES).into_owned())
        .collect();
    crate::text::bound(&kept.join("\n"), MAX_TAIL_BYTES).into_owned()
}

/// True if `pid` is alive and still the process started at `start_ticks` (guards pid reuse).
pub fn same_process(pid: i32, start_ticks: u64) -> bool {
    start_time(pid) == Some(start_ticks)
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn run_captures_and_reports_failure() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
            "t",
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let e = run_ok(
            Command::new("sh").args(["-c", "echo boom >&2; exit 1"]),
            Duration::from_secs(10),
            "step",
        )
        .unwrap_err();
        assert!(e.contains("step: failed") && e.contains("boom"), "{e}");
    }

    #[test]
    fn run_kills_the_whole_group_on_timeout() {
        let dir = std::env::temp_dir().join(format!("xtask-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        let script = format!("sleep 600 & echo $! > {}; wait", pidfile.display());
        let t = Instant::now();
        let e = run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(500),
            "sleeper",
        )
        .unwrap_err();
        assert!(e.contains("no result after"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let gc: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: it must be gone (or a zombie being reaped by init).
        thread::sleep(Duration::from_millis(200));
        let alive = std::fs::read_to_string(format!("/proc/{gc}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        assert!(!alive, "grandchild {gc} survived the timeout");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_time_identifies_processes() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(same_process(me, t));
        assert!(!same_process(me, t + 1));
        assert!(start_time(i32::MAX).is_none());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("", 3), "");
    }
}
