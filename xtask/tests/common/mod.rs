//! Shared helpers of the VM integration tests: run the xtask binary as a user would, with a
//! bound on every invocation, and read back what it recorded.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use wait_timeout::ChildExt;

/// VMs run one at a time: two emulated guests on a 2-core host would distort each other.
pub static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Bound on any single xtask invocation in these tests (first one may build the image).
pub const LIMIT: Duration = Duration::from_secs(900);

pub fn xtask() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.current_dir(root());
    c
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn finish(mut child: Child, limit: Duration) -> Output {
    match child.wait_timeout(limit).unwrap() {
        Some(_) => child.wait_with_output().unwrap(),
        None => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "xtask did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Starts xtask with `args` and extra environment, output captured, stdin empty.
pub fn spawn_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut c = xtask();
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

pub fn spawn(args: &[&str]) -> Child {
    spawn_env(args, &[])
}

pub fn run(args: &[&str]) -> Output {
    finish(spawn(args), LIMIT)
}

/// `vm-build`s the default image; the path of its initrd.cpio.
pub fn built_initrd() -> PathBuf {
    let o = run(&["vm-build"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    PathBuf::from(
        out.lines()
            .find_map(|l| l.trim().strip_prefix("initrd"))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no initrd line in:\n{out}")),
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run directory xtask printed, and its result.json.
pub fn result_of(o: &Output) -> (PathBuf, Value) {
    let err = stderr(o);
    let line = err
        .lines()
        .find(|l| l.starts_with("vm-run: ") && l.contains(" | wall "))
        .unwrap_or_else(|| panic!("no summary line in:\n{err}"));
    let dir = PathBuf::from(line.rsplit(" | ").next().unwrap().trim());
    let text = std::fs::read_to_string(dir.join("result.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

pub fn alive(pid: i64) -> bool {
    // A zombie has exited; only its parent's bookkeeping remains.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The newest run directory whose name ends with `suffix`, created at or after `since`, once
/// its `file` (e.g. agent-transcript.log, steps.log) contains `needle`. Panics after `limit`.
pub fn wait_for_run(
    suffix: &str,
    file: &str,
    needle: &str,
    since: std::time::SystemTime,
    limit: Duration,
) -> PathBuf {
    let runs = root().join("target/vm-runs");
    let t = std::time::Instant::now();
    loop {
        assert!(
            t.elapsed() < limit,
            "no run *{suffix} showed {needle:?} within {limit:?}"
        );
        let found = std::fs::read_dir(&runs).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .filter(|p| {
                    p.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m >= since)
                })
                .find(|p| {
                    std::fs::read_to_string(p.join(file))
                        .unwrap_or_default()
                        .contains(needle)
                })
        });
        if let Some(d) = found {
            return d;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The session directory vm-e2e printed on its last line, and its summary.json.
pub fn summary(o: &Output) -> (PathBuf, Value) {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("reports: "))
        .unwrap_or_else(|| panic!("no reports line:\n{out}\n{}", stderr(o)));
    let dir = PathBuf::from(line.rsplit("reports: ").next().unwrap().trim());
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

/// summary.json's run of `scenario`.
pub fn run_of<'a>(summary: &'a Value, scenario: &str) -> &'a Value {
    summary["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["scenario"] == scenario)
        .unwrap_or_else(|| panic!("no run of {scenario} in {summary}"))
}

/// Field 22 of /proc/PID/stat (start time in clock ticks), as xtask's pid files record it.
pub fn start_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// A digest of every file under /etc/apt: the host's apt configuration must never change.
pub fn etc_apt_digest() -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "find /etc/apt -type f | sort | xargs sha256sum | sha256sum",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `$GITHUB_OUTPUT` as GitHub reads it: `NAME=VALUE` lines and `NAME<<DELIM` blocks.
pub fn gh_outputs(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if let Some((name, delim)) = l.split_once("<<") {
            let mut value = Vec::new();
            for v in lines.by_ref() {
                if v == delim {
                    break;
                }
                value.push(v);
            }
            out.insert(name.to_string(), value.join("\n"));
        } else if let Some((name, value)) = l.split_once('=') {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}

/// A shell line run as printed (cwd: the repository), bounded.
pub fn run_line(line: &str) -> std::process::Output {
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .current_dir(root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, LIMIT)
}
