//! `cargo xtask report merge` over hostile inputs, as the action's merge job meets them: shard
//! artifacts a pull request can shape. No VM. Each test builds shard folders by hand and
//! asserts by content: nothing outside the inputs is read into `--out` (a canary outside them
//! never appears), nothing is written outside `--out`, the report is still written, hostile
//! text is inert, and the exit code is the documented one.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CANARY: &str = "CANARY-7f3a9c-never-copy-me";

fn outcome(scenario: &str, kernel: &str, verdict: &str, run_dir: &str) -> Value {
    json!({
        "scenario": scenario, "server": "ublk-mem", "kernel": kernel,
        "kernel_release": "7.2.13", "kernel_features": [], "device_features": {}, "tools": [],
        "run": 1, "verdict": verdict, "reason": "it failed", "failed_step": "steps[1] io",
        "duration_s": 1.5, "boot_s": 0.5, "seed": 7, "run_dir": run_dir,
        "freeze_frame": null, "image_hash": "h", "first_attempt": null
    })
}

fn summary(runs: Vec<Value>) -> Value {
    json!({
        "tool": "vm-e2e", "started_at": "2026-12-02T00:00:00Z", "seed": 7, "commit": "abc",
        "image_hash": "h", "accelerator": "tcg", "jobs": 2, "repeat": 1, "timeout_scale": 1.0,
        "shards": [], "inputs": [], "wall_s": 3.0, "kernels": {}, "flaky": {},
        "reproduce": "cargo xtask vm-e2e --seed 7", "runs": runs
    })
}

fn write_summary(dir: &Path, v: &Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_vec_pretty(v).unwrap(),
    )
    .unwrap();
}

fn merge(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec!["report", "merge"];
    all.extend_from_slice(args);
    let env: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(k, v)| (*k, std::ffi::OsStr::new(*v)))
        .collect();
    let o = finish(spawn_env(&all, &env), std::time::Duration::from_secs(120));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code().unwrap_or(-1), out, stderr(&o))
}

/// The merged summary.json in `out`.
fn merged(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

/// The run of scenario `name` in a summary.
fn run_named(v: &Value, name: &str) -> Value {
    let runs = v["runs"].as_array().unwrap();
    runs.iter().find(|r| r["scenario"] == name).unwrap().clone()
}

/// Every file under `dir` (no symlink may be there), read whole.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        assert!(
            !t.is_symlink(),
            "a symlink in --out: {}",
            e.path().display()
        );
        if t.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push((e.path(), std::fs::read(e.path()).unwrap()));
        }
    }
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

/// /etc, `../`, /proc/self (the merge job's environment: its tokens), a directory outside the
/// inputs, symlinks out of the artifact (as a run directory and as a file), a FIFO, a sparse
/// giant file and a deep tree: only the in-tree regular files are copied, each skip is a
/// note in the report, and the merge still reports the failing runs (exit 1).
#[test]
fn hostile_evidence_paths_never_copy_host_files() {
    let t = Tmp::new("hostile-merge");
    let outside = t.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("canary.txt"), CANARY).unwrap();
    let shard = t.0.join("in/ublk-vm-a");
    let good = shard.join("runs/good");
    std::fs::create_dir_all(good.join("freeze")).unwrap();
    std::fs::write(good.join("serial.log"), "boot ok\n").unwrap();
    std::fs::write(good.join("freeze/frame.txt"), "tags\n").unwrap();
    symlink(&outside.join("canary.txt"), &good.join("leak.txt"));
    symlink(&outside, &good.join("leakdir"));
    let fifo = std::ffi::CString::new(good.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let big = std::fs::File::create(good.join("big.img")).unwrap();
    big.set_len((2 << 30) + 1).unwrap(); // sparse: 2 GiB + 1 of holes
    let mut deep = good.join("deep");
    for i in 0..12 {
        deep = deep.join(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), "deep\n").unwrap();
    symlink(&outside, &shard.join("runs/link-out"));
    let mut frozen = outcome("good", "debian-7.2", "fail", good.to_str().unwrap());
    frozen["freeze_frame"] = json!(good.join("freeze/frame.txt"));
    let runs = vec![
        frozen,
        outcome("etc", "debian-7.2", "fail", "/etc"),
        outcome("ssh", "debian-7.2", "timeout", "../../../../etc/ssh"),
        outcome("proc", "debian-7.2", "infra-error", "/proc/self"),
        outcome("outside", "debian-7.2", "fail", outside.to_str().unwrap()),
        outcome("link", "debian-7.2", "fail", "/x/runs/link-out"),
        outcome(
            "dotdot",
            "debian-7.2",
            "fail",
            &format!("{}/runs/../../../outside", shard.display()),
        ),
    ];
    write_summary(&shard, &summary(runs));
    let out = t.0.join("out");
    let before = listing(&t.0, &out);
    let (code, stdout, err) = merge(
        &[
            t.0.join("in").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--evidence",
        ],
        &[("SECRET_TOKEN", CANARY)],
    );
    assert_eq!(code, 1, "{stdout}\n{err}");
    assert_eq!(listing(&t.0, &out), before, "nothing written outside --out");
    let mut files = Vec::new();
    files_under(&out, &mut files);
    for (p, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(CANARY), "{} holds the canary", p.display());
        assert!(
            !text.contains("root:x:0:0"),
            "{} holds /etc/passwd",
            p.display()
        );
    }
    let v = merged(&out);
    let run = |name: &str| run_named(&v, name);
    let copied = PathBuf::from(run("good")["run_dir"].as_str().unwrap());
    assert!(copied.starts_with(out.join("runs")), "{copied:?}");
    assert_eq!(
        std::fs::read_to_string(copied.join("serial.log")).unwrap(),
        "boot ok\n"
    );
    assert_eq!(
        run("good")["freeze_frame"].as_str().map(PathBuf::from),
        Some(copied.join("freeze/frame.txt"))
    );
    for gone in ["leak.txt", "leakdir", "pipe", "big.img"] {
        assert!(
            copied.join(gone).symlink_metadata().is_err(),
            "{gone} copied"
        );
    }
    for name in ["etc", "ssh", "proc", "outside", "link", "dotdot"] {
        assert_eq!(run(name)["run_dir"], "", "{name}: {}", run(name));
    }
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let noted = |what: &str| notes.iter().any(|n| n.contains(what));
    for want in [
        "leak.txt: a symlink; not copied",
        "leakdir: a symlink; not copied",
        "pipe: not a regular file; not copied",
        "big.img: 2147483649 bytes, over the 256 MiB bound for one file",
        "nested deeper than 8 directories",
        "etc on debian-7.2 #1: no evidence: /etc is not a run directory inside its input",
        "proc on debian-7.2 #1: no evidence: /proc/self",
    ] {
        assert!(noted(want), "no note {want:?} in {notes:#?}");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("#### Evidence notes"), "{md}");
}

/// Files and directories of `root` but those under `skip`, with their sizes.
fn listing(root: &Path, skip: &Path) -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.starts_with(skip) {
                continue;
            }
            let m = p.symlink_metadata().unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            v.push((p, m.len()));
        }
    }
    v.sort();
    v
}

/// An --out that holds symlinks is never written through: `runs` pointing outside is
/// refused (exit 2) before anything is copied; a planted `summary.md` link is replaced, its
/// target untouched.
#[test]
fn an_out_directory_with_symlinks_is_not_written_through() {
    let t = Tmp::new("merge-out-links");
    let shard = t.0.join("in/a");
    std::fs::create_dir_all(shard.join("runs/r1")).unwrap();
    std::fs::write(shard.join("runs/r1/serial.log"), "x").unwrap();
    let r1 = shard.join("runs/r1");
    write_summary(
        &shard,
        &summary(vec![outcome("s", "debian", "fail", r1.to_str().unwrap())]),
    );
    let victim = t.0.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("target.md"), "untouched").unwrap();
    let out = t.0.join("out");
    std::fs::create_dir_all(&out).unwrap();
    symlink(&victim, &out.join("runs"));
    symlink(&victim.join("target.md"), &out.join("summary.md"));
    let (code, stdout, err) = merge(
        &[
            shard.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--evidence",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stdout}\n{err}");
    assert!(
        err.contains("runs: is a symlink or not a directory"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
    // Without the evidence, the reports are written: the planted link is replaced.
    let (code, _, err) = merge(
        &[shard.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(victim.join("target.md")).unwrap(),
        "untouched"
    );
    assert!(!out
        .join("summary.md")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    // --out itself a symlink: refused.
    let link_out = t.0.join("link-out");
    symlink(&victim, &link_out);
    let (code, _, err) = merge(
        &[shard.to_str().unwrap(), "--out", link_out.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 1);
}

/// Two shards (6.12 and 7.2) whose run directories have the same timestamp name: each run
/// keeps its own evidence (found beside its own summary, copied under its run id).
#[test]
fn runs_with_the_same_directory_name_keep_their_own_evidence() {
    let t = Tmp::new("merge-same-name");
    let mut args = Vec::new();
    for k in ["debian-6.12", "debian-7.2"] {
        let shard = t.0.join(format!("in/ublk-vm-{k}"));
        let run_dir = shard.join("runs/20261202-101500-simple-e2e-r1");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::write(run_dir.join("serial.log"), format!("booted {k}\n")).unwrap();
        // The path the shard's machine recorded, not where the artifact landed.
        let recorded =
            "/home/runner/work/_temp/ublk-vm-run/runs/20261202-101500-simple-e2e-r1".to_string();
        write_summary(
            &shard,
            &summary(vec![outcome("simple-e2e", k, "fail", &recorded)]),
        );
        args.push(shard.display().to_string());
    }
    let out = t.0.join("out");
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend(["--out", out.to_str().unwrap(), "--evidence"]);
    let (code, stdout, err) = merge(&a, &[]);
    assert_eq!(code, 1, "{stdout}\n{err}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let mut dirs = Vec::new();
    for r in runs {
        let dir = PathBuf::from(r["run_dir"].as_str().unwrap());
        let log = std::fs::read_to_string(dir.join("serial.log")).unwrap();
        assert_eq!(
            log,
            format!("booted {}\n", r["kernel"].as_str().unwrap()),
            "{r}"
        );
        dirs.push(dir);
    }
    assert_ne!(dirs[0], dirs[1]);
}

/// Hostile strings reach neither the log as lines of their own (no `::error::` workflow
/// command) nor summary.md as markup; hostile counts are refused at once (exit 2), never an
/// out-of-memory abort or a panic.
#[test]
fn hostile_strings_are_inert_and_hostile_counts_are_refused() {
    let t = Tmp::new("merge-strings");
    let shard = t.0.join("in/a");
    let mut o = outcome("s\n::error::forged", "debian", "fail", "");
    o["reason"] = json!("boom\n::error title=x::forged\n<!-- hide -->\n| row | x |");
    o["failed_step"] = json!("steps[1]\n### PASS");
    let mut s = summary(vec![o]);
    s["accelerator"] = json!("tcg");
    s["reproduce"] = json!("cargo xtask vm-e2e\n```\n<script>x</script>");
    write_summary(&shard, &s);
    let out = t.0.join("out");
    let (code, stdout, err) = merge(
        &[shard.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    // A name with a control character is refused: names are identifiers.
    assert_eq!(code, 2, "{stdout}\n{err}");
    assert!(
        err.contains("scenario") && err.contains("control characters"),
        "{err}"
    );
    let mut o = outcome("s", "debian", "fail", "");
    o["reason"] = json!("boom\n::error title=x::forged\n<!-- hide -->\n| row | x |");
    o["failed_step"] = json!("steps[1]\n### PASS");
    s["runs"] = json!([o]);
    write_summary(&shard, &s);
    let (code, stdout, err) = merge(
        &[shard.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 1, "{stdout}\n{err}");
    for line in stdout.lines().chain(err.lines()) {
        assert!(
            !line.trim_start().starts_with("::"),
            "an injected command: {line}"
        );
        assert!(!line.starts_with("<script>"), "{line}");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.starts_with("### vm-e2e FAIL: 0/1 passed, 1 fail\n"),
        "{md}"
    );
    let outside_block = md.split("Reproduce:").next().unwrap();
    for line in outside_block.lines() {
        assert!(
            !line.starts_with("<!--") && !line.starts_with("| row"),
            "{line}\n{md}"
        );
        assert!(!line.starts_with("### PASS"), "{line}\n{md}");
    }
    // Counts: a tool that is not ours, a shard count of 3,000,000, jobs of 2^64-1, a run
    // number of 4294967295: each one line, exit 2, fast.
    for (field, value, want) in [
        (
            "tool",
            json!("vm-e2e PASS: 3/3 passed\n\n<!--"),
            "is not a command name",
        ),
        ("jobs", json!(u64::MAX), "jobs 18446744073709551615 is over"),
        (
            "shards",
            json!([{"index": 1, "count": 3000000, "plan": "ab", "planned_runs": 1, "runs": 1, "estimate_s": 1.0, "estimates_from": "x"}]),
            "shard 1/3000000",
        ),
        ("repeat", json!(u32::MAX), "repeat 4294967295 is over"),
    ] {
        let mut bad = summary(vec![outcome("s", "debian", "fail", "")]);
        bad[field] = value;
        write_summary(&shard, &bad);
        let t0 = std::time::Instant::now();
        let (code, _, err) = merge(
            &[shard.to_str().unwrap(), "--out", out.to_str().unwrap()],
            &[],
        );
        assert_eq!(code, 2, "{field}: {err}");
        assert!(err.contains(want), "{field}: {err}");
        assert!(t0.elapsed().as_secs() < 10, "{field}: {:?}", t0.elapsed());
    }
}

/// Merge refusals are bad input (2), not a failed run (1); a merge of the shards together
/// with an earlier merge of them (a re-run merge job downloads both) passes.
#[test]
fn refusals_are_bad_input_and_a_rerun_merge_passes() {
    let t = Tmp::new("merge-refusals");
    let a = t.0.join("in/p-1");
    let b = t.0.join("in/p-2");
    write_summary(&a, &summary(vec![outcome("x", "debian", "pass", "")]));
    write_summary(&b, &summary(vec![outcome("y", "debian", "pass", "")]));
    let merged = t.0.join("in/p-merged");
    let (code, _, err) = merge(
        &[
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = merge(
        &[
            t.0.join("in").to_str().unwrap(),
            "--out",
            t.0.join("again").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "a re-run merge: {err}");
    let mut other = summary(vec![outcome("x", "debian", "pass", "")]);
    other["runs"][0]["duration_s"] = json!(9.0);
    write_summary(&b, &other);
    let merge_ab = |out: &str| {
        let out = t.0.join(out);
        merge(
            &[
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (code, _, err) = merge_ab("o2");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("is in both"), "{err}");
    other["commit"] = json!("def");
    other["runs"][0]["scenario"] = json!("z");
    write_summary(&b, &other);
    let (code, _, err) = merge_ab("o3");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("merge the sessions of one commit only"),
        "{err}"
    );
    // A FIFO named summary.json is no summary; a FIFO given as the input neither: at once.
    let fifo_dir = t.0.join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let c = std::ffi::CString::new(fifo_dir.join("summary.json").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for input in [fifo_dir.clone(), fifo_dir.join("summary.json")] {
        let (code, _, err) = merge(
            &[
                input.to_str().unwrap(),
                "--out",
                t.0.join("o4").to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 2, "{err}");
    }
}

/// The action's scripts check their inputs before anything runs (exit 2, one line naming the
/// input), write `$GITHUB_OUTPUT` only in the delimiter form (a newline in an input cannot add
/// an output), pass scenario words after `--` (a word like `--list` is a name, refused as
/// one) and name shard artifacts so that the merge's download pattern never matches the
/// merged report (a re-run merge job).
#[test]
fn the_action_scripts_refuse_hostile_inputs() {
    let t = Tmp::new("action-inputs");
    let scripts = root().join(".github/actions/ublk-vm/scripts");
    let script = |name: &str, env: &[(&str, &str)]| {
        let mut c = std::process::Command::new("bash");
        c.arg(scripts.join(name))
            .current_dir(&t.0)
            .env_remove("GITHUB_ACTIONS")
            .env("UBLK_VM_XTASK", env!("CARGO_BIN_EXE_xtask"))
            .env("RUNNER_TEMP", &t.0)
            .env("GITHUB_OUTPUT", t.0.join("out.txt"));
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(c.spawn().unwrap(), std::time::Duration::from_secs(120))
    };
    let o = script(
        "where.sh",
        &[("PREFIX", "x\nartifact=evil"), ("MODE", "merge")],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("artifact-prefix must be"),
        "{}",
        stderr(&o)
    );
    assert!(
        !t.0.join("out.txt").exists(),
        "nothing written on bad input"
    );
    let o = script(
        "where.sh",
        &[("PREFIX", "ci"), ("MODE", "run"), ("SERVER", "-x")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let said = gh_outputs(&std::fs::read_to_string(t.0.join("out.txt")).unwrap());
    assert_eq!(said["artifact"], "ci-shard--x-default-1-of-1", "{said:?}");
    assert_eq!(said.len(), 4, "{said:?}");
    let o = script(
        "where.sh",
        &[("PREFIX", "ci"), ("MODE", "run"), ("SUITE", "blktests")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let said = gh_outputs(&std::fs::read_to_string(t.0.join("out.txt")).unwrap());
    assert_eq!(
        said["artifact"], "ci-shard-blktests-default-1-of-1",
        "{said:?}"
    );
    let text = std::fs::read_to_string(t.0.join("out.txt")).unwrap();
    assert!(
        text.lines().all(|l| !l.starts_with("artifact=")),
        "delimiter form: {text}"
    );
    let action =
        std::fs::read_to_string(root().join(".github/actions/ublk-vm/action.yml")).unwrap();
    assert!(
        action.contains("pattern: ${{ inputs.artifact-prefix }}-shard-*"),
        "{action}"
    );
    assert!(
        action.contains("name: ${{ inputs.artifact-prefix }}-merged"),
        "{action}"
    );
    for (k, v, want) in [
        ("UBLK_VM_REPEAT", "-1", "repeat must be"),
        ("UBLK_VM_JOBS", "2; rm -rf /", "jobs must be"),
        ("UBLK_VM_ACCEL", "kvm\n", "accel must be"),
        (
            "UBLK_VM_KERNELS",
            "debian-7.2\n::error::x",
            "kernels must be",
        ),
        (
            "UBLK_VM_SCENARIOS",
            "--list",
            "no scenario or group named \"--list\"",
        ),
        ("UBLK_VM_SUITE", "blktests; id", "suite must be"),
        (
            "UBLK_VM_SUITE",
            "cargo",
            "suite cargo needs tests (UBLK_VM_TESTS)",
        ),
        ("UBLK_VM_PACKAGES", "qemu-utils;id", "packages must be"),
        (
            "UBLK_VM_EXPECT_SPLAT",
            "x\n::error::y",
            "expect-splat must be",
        ),
    ] {
        let out = t.0.join(format!("shard-{}", k.to_lowercase()));
        let o = script(
            "run.sh",
            &[
                ("UBLK_VM_SEED", "7"),
                ("UBLK_VM_OUT", out.to_str().unwrap()),
                (k, v),
            ],
        );
        assert_eq!(o.status.code(), Some(2), "{k}={v:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{k}={v:?}: {}", stderr(&o));
    }
}

/// Runs `report merge` with every file it writes limited to `max_file_bytes` (RLIMIT_FSIZE,
/// SIGXFSZ ignored so a write over it fails with EFBIG): a disk that fills mid-merge.
fn merge_with_file_limit(args: &[&str], max_file_bytes: u64) -> (i32, String, String) {
    use std::os::unix::process::CommandExt;
    let mut c = xtask();
    c.args(["report", "merge"]).args(args);
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: max_file_bytes,
                rlim_max: max_file_bytes,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            Ok(())
        });
    }
    let o = finish(c.spawn().unwrap(), std::time::Duration::from_secs(120));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (o.status.code().unwrap_or(-1), out, stderr(&o))
}

/// A full `--out`: evidence that cannot be written is a note and the run's reason says its
/// evidence is incomplete, the other runs' evidence is still copied and the report written
/// (the failing run keeps exit 1); when even the reports cannot be written, exit 125.
#[test]
fn a_full_out_directory_loses_one_runs_evidence_not_the_report() {
    let t = Tmp::new("merge-full");
    let shard = t.0.join("in/a");
    let big = shard.join("runs/big");
    let small = shard.join("runs/small");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    std::fs::write(big.join("serial.log"), vec![b'x'; 1 << 20]).unwrap();
    std::fs::write(small.join("serial.log"), "small\n").unwrap();
    write_summary(
        &shard,
        &summary(vec![
            outcome("big", "debian", "fail", big.to_str().unwrap()),
            outcome("small", "debian", "fail", small.to_str().unwrap()),
        ]),
    );
    let out = t.0.join("out");
    let (code, stdout, err) = merge_with_file_limit(
        &[
            shard.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--evidence",
        ],
        256 << 10,
    );
    assert_eq!(code, 1, "{stdout}\n{err}");
    let v = merged(&out);
    let run = |name: &str| run_named(&v, name);
    let why = run("big")["reason"].as_str().unwrap().to_string();
    assert!(
        why.contains("evidence incomplete") && why.contains("could not write"),
        "{why}"
    );
    let small_dir = PathBuf::from(run("small")["run_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(small_dir.join("serial.log")).unwrap(),
        "small\n"
    );
    // Nothing can be written at all: could not test.
    let (code, _, err) = merge_with_file_limit(
        &[
            shard.to_str().unwrap(),
            "--out",
            t.0.join("out2").to_str().unwrap(),
        ],
        64,
    );
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("could not be written"), "{err}");
}

/// A merged summary of 100,000 distinct runs still makes a bounded summary.md.
#[test]
fn summary_md_is_bounded_whatever_the_summary_holds() {
    let t = Tmp::new("merge-many");
    let shard = t.0.join("in/a");
    let runs: Vec<Value> = (0..100_000)
        .map(|i| {
            outcome(
                &format!("s{i}"),
                "debian",
                if i % 2 == 0 { "skip" } else { "pass" },
                "",
            )
        })
        .collect();
    write_summary(&shard, &summary(runs));
    let out = t.0.join("out");
    // The terminal table lists every run: more than a pipe holds, so it goes nowhere.
    let mut c = xtask();
    c.args([
        "report",
        "merge",
        shard.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let o = finish(c.spawn().unwrap(), std::time::Duration::from_secs(120));
    assert_eq!(o.status.code(), Some(0));
    let md = std::fs::metadata(out.join("summary.md")).unwrap().len();
    assert!(md < 512 << 10, "summary.md is {md} bytes");
}
