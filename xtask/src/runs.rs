//! Per-run artifact directories under `target/vm-runs/<timestamp>-<name>/` (or
//! `$UBLK_VM_RUNS_DIR`), result.json, and the bookkeeping that keeps evidence honest: every
//! evidence write that fails is recorded, and a run whose evidence is incomplete says so.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::util::{slug, target_dir, timestamp, write_atomic, Result};

/// Where run and session directories go.
pub fn runs_dir() -> PathBuf {
    match std::env::var_os("UBLK_VM_RUNS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => target_dir().join("vm-runs"),
    }
}

/// Evidence writes that failed, by path (all runs of this process; bounded).
static WRITE_ERRORS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
const MAX_WRITE_ERRORS: usize = 1000;

/// Records the result of writing evidence to `path`; errors are kept for `evidence_errors`.
pub fn record<T>(path: &Path, r: std::io::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let mut errs = WRITE_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
            if errs.len() < MAX_WRITE_ERRORS {
                errs.push((path.to_path_buf(), e.to_string()));
            }
            None
        }
    }
}

/// Writes an evidence file, recording a failure.
pub fn save(path: &Path, data: impl AsRef<[u8]>) {
    record(path, std::fs::write(path, data));
}

/// Why the evidence under `dir` is incomplete, if it is: a recorded write error, or a file
/// system with no space left (QEMU's own logs fail silently then).
pub fn evidence_errors(dir: &Path) -> Option<String> {
    let errs = WRITE_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    let mine: Vec<&(PathBuf, String)> = errs.iter().filter(|(p, _)| p.starts_with(dir)).collect();
    if let Some((path, why)) = mine.first() {
        let rel = path.strip_prefix(dir).unwrap_or(path).display();
        return Some(format!(
            "{} evidence write(s) failed, first {rel}: {why}",
            mine.len()
        ));
    }
    match free_bytes(dir) {
        Some(free) if free < LOW_SPACE_BYTES => Some(format!(
            "the file system of {} is full ({free} bytes free): its logs may be cut short",
            dir.display()
        )),
        _ => None,
    }
}

/// Below this, a run's logs (QEMU writes serial.log itself) cannot be trusted to be whole.
const LOW_SPACE_BYTES: u64 = 64 << 10;

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut st) == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
    }
}

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates a new, unique run directory (a numeric suffix if the second is already taken).
    pub fn create(name: &str) -> Result<RunDir> {
        RunDir::create_in(&runs_dir(), name)
    }

    /// Creates `<base>/<timestamp>-<name>[-N]`, never one that exists (sessions finishing in
    /// the same second get their own).
    pub fn create_in(base: &Path, name: &str) -> Result<RunDir> {
        std::fs::create_dir_all(base).map_err(|e| format!("create {}: {e}", base.display()))?;
        let stem = format!("{}-{}", timestamp(), slug(name));
        for n in 0..1000 {
            let path = if n == 0 {
                base.join(&stem)
            } else {
                base.join(format!("{stem}-{n}"))
            };
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("create {}: {e}", path.display())),
            }
        }
        Err(format!(
            "could not create a unique run directory for {stem}"
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    InfraError,
    /// xtask itself was interrupted (SIGINT/SIGTERM); says nothing about the code under test.
    Interrupted,
    /// Not run, with the reason (e.g. the server lacks a capability the scenario needs).
    Skip,
}

impl Verdict {
    /// A verdict a reproduce line should rerun: the run failed, hung or could not be tested.
    pub fn wants_rerun(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Timeout | Verdict::InfraError)
    }

    /// A verdict about the code under test (pass, fail, timeout): what flakiness counts.
    pub fn judged(self) -> bool {
        matches!(self, Verdict::Pass | Verdict::Fail | Verdict::Timeout)
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Timeout => "timeout",
            Verdict::InfraError => "infra-error",
            Verdict::Interrupted => "interrupted",
            Verdict::Skip => "skip",
        }
    }
}

/// Exit code for "timed out", as timeout(1).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code for "could not test" (infra error), as `git bisect run`'s skip.
pub const EXIT_INFRA: i32 = crate::util::EXIT_COULD_NOT_TEST;

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub name: String,
    pub command: Vec<String>,
    pub verdict: Verdict,
    /// Guest command's exit code (128+n if killed by signal n); null if it never finished.
    pub exit_status: Option<i32>,
    /// What xtask exited with.
    pub exit_code: i32,
    pub reason: Option<String>,
    pub accelerator: String,
    pub accelerator_reason: String,
    /// QEMU start to agent ready, seconds.
    pub boot_s: Option<f64>,
    /// VM start to result, seconds.
    pub wall_s: f64,
    pub timeout_s: u64,
    pub image_hash: String,
    pub kernel_release: String,
    /// The guest kernel's ublk features (GET_FEATURES), by name; empty if never read.
    pub ublk_features: Vec<String>,
    pub cpus: u32,
    pub memory_mib: u64,
    /// package=version of every .deb in the attached guest tools layer; empty: none attached.
    pub tools: Vec<String>,
    /// The packages the kernel and the tools layer were made from, and where each came from
    /// (cache, archive, snapshot; `instead_of` when newer than the lock).
    pub inputs: Vec<crate::image::fetch::Inputs>,
    pub started_at: String,
    pub qemu_pid: Option<i32>,
    /// Kernel splats in the guest's log but the `--expect-splat` ones (at most `MAX_SPLATS`).
    #[serde(default)]
    pub splats: Vec<String>,
    pub run_dir: PathBuf,
}

impl RunResult {
    pub fn write(&self) -> Result<()> {
        write_atomic(
            &self.run_dir.join("result.json"),
            (serde_json::to_string_pretty(self).unwrap() + "\n").as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_created_in_the_same_second_are_distinct() {
        let base = std::env::temp_dir().join(format!("xtask-runs-{}", std::process::id()));
        let dirs: Vec<PathBuf> = (0..5)
            .map(|_| RunDir::create_in(&base, "e2e").unwrap().path)
            .collect();
        let unique: std::collections::BTreeSet<&PathBuf> = dirs.iter().collect();
        assert_eq!(unique.len(), 5, "{dirs:?}");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn failed_evidence_writes_are_reported_for_their_run_only() {
        let dir = std::env::temp_dir().join(format!("xtask-ev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(evidence_errors(&dir), None);
        save(&dir.join("no-such-subdir/dmesg.txt"), b"x");
        let e = evidence_errors(&dir).unwrap();
        assert!(
            e.contains("1 evidence write(s) failed, first no-such-subdir/dmesg.txt"),
            "{e}"
        );
        assert_eq!(evidence_errors(&dir.with_extension("other")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
