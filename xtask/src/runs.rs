//! Per-run artifact directories under `target/vm-runs/<timestamp>-<name>/` and result.json.

use std::path::PathBuf;

use serde::Serialize;

use crate::util::{slug, target_dir, timestamp, write_atomic, Result};

pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates a new, unique run directory (a numeric suffix if the second is already taken).
    pub fn create(name: &str) -> Result<RunDir> {
        let base = target_dir().join("vm-runs");
        std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    InfraError,
    /// xtask itself was interrupted (SIGINT/SIGTERM); says nothing about the code under test.
    Interrupted,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Timeout => "timeout",
            Verdict::InfraError => "infra-error",
            Verdict::Interrupted => "interrupted",
        }
    }
}

/// Exit code for "timed out", as timeout(1).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code for "could not test" (infra error), as `git bisect run`'s skip.
pub const EXIT_INFRA: i32 = 125;

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
    pub cpus: u32,
    pub memory_mib: u64,
    pub started_at: String,
    pub qemu_pid: Option<i32>,
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
