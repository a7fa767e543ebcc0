//! `vm-test --exec`: a project's own test programs, each in a fresh VM with ublk_drv, through
//! the one run pipeline (repeats, shards, reports, merge).

mod common;

use common::*;

fn fixture(name: &str) -> String {
    root()
        .join("xtask/tests/vmtest")
        .join(name)
        .display()
        .to_string()
}

/// Bad `--exec` files are refused before any VM, each with one line and exit 2.
#[test]
fn bad_test_files_are_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("vm-test-bad-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("t.sh"), "exit 0\n").unwrap();
    std::fs::write(dir.join("b/t.sh"), "exit 0\n").unwrap();
    std::fs::write(dir.join("a b.sh"), "exit 0\n").unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    for (args, want) in [
        (vec![p("missing.sh")], "No such file"),
        (vec![p("b")], "not a regular file"),
        (vec![p("t.sh"), p("b/t.sh")], "are both named `t.sh`"),
        (vec![p("a b.sh")], "name the file with letters"),
    ] {
        let mut argv = vec!["vm-test", "--exec"];
        argv.extend(args.iter().map(String::as_str));
        let o = run(&argv);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
        assert!(
            errors.len() == 1 && errors[0].contains(want),
            "{args:?}: {e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Five fixtures, twice each, as two shards merged: pass, fail (its message), skip (its
/// reason), timeout (a freeze-frame naming where the test sleeps) and a splat that fails a
/// test that exited 0 — then accepted by `--expect-splat`; a run's reproduce line, run as
/// printed, fails the same way.
#[test]
fn test_programs_get_verdicts_shards_repeats_and_merge() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let names = ["passes.sh", "fails.sh", "skips.sh", "hangs.sh", "warns.sh"];
    let files: Vec<String> = names.iter().map(|n| fixture(n)).collect();
    let mut dirs = Vec::new();
    for shard in ["1/2", "2/2"] {
        let mut argv = vec!["vm-test", "--timeout", "10", "--repeat", "2"];
        argv.extend(["-j", "2", "--shard", shard, "--exec"]);
        argv.extend(files.iter().map(String::as_str));
        let o = run(&argv);
        assert_eq!(o.status.code(), Some(1), "{shard}: {}", stderr(&o));
        dirs.push(summary(&o).0);
    }
    let merged = std::env::temp_dir().join(format!("vm-test-merged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&merged);
    let mut argv = vec!["report", "merge", "--out", merged.to_str().unwrap()];
    argv.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    let o = run(&argv);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("summary.json")).unwrap())
            .unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 10, "{v}");
    for (name, want) in [
        ("passes.sh", "pass"),
        ("fails.sh", "fail"),
        ("skips.sh", "skip"),
        ("hangs.sh", "timeout"),
        ("warns.sh", "fail"),
    ] {
        let of: Vec<&serde_json::Value> = runs.iter().filter(|r| r["scenario"] == name).collect();
        assert_eq!(of.len(), 2, "{name} ran twice: {v}");
        assert!(of.iter().all(|r| r["verdict"] == want), "{name}: {v}");
    }
    let why = |name: &str| run_of(&v, name)["reason"].as_str().unwrap().to_string();
    assert!(
        why("fails.sh").contains("exit 3: the device never appeared"),
        "{v}"
    );
    assert_eq!(why("skips.sh"), "skipping: needs a zoned device");
    let hang = why("hangs.sh");
    assert!(
        hang.contains("still running after 10 s")
            && hang.contains("sleeping: pid ")
            && hang.contains("sleep (S): hrtimer_nanosleep")
            && hang.contains("hangs.sh (S)"),
        "{hang}"
    );
    let ff = std::path::PathBuf::from(run_of(&v, "hangs.sh")["freeze_frame"].as_str().unwrap());
    let text = std::fs::read_to_string(ff.join("summary.txt")).unwrap();
    assert!(
        text.contains("sleeping tasks (S state)") && text.contains("sleep (S)"),
        "{text}"
    );
    assert!(
        why("warns.sh").contains("kernel splat: ") && why("warns.sh").contains("vm_test_fixture")
    );
    assert_eq!(v["flaky"]["fails.sh"]["failed"], 2, "{v}");
    let junit = std::fs::read_to_string(merged.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 10, "{junit}");
    let md = std::fs::read_to_string(merged.join("summary.md")).unwrap();
    assert!(md.contains("### vm-test FAIL"), "{md}");
    // The failing run's own line, run as printed, fails the same way.
    let line = run_of(&v, "fails.sh")["reproduce"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        line.starts_with("cargo xtask vm-test --exec ") && line.contains(" --timeout 10"),
        "{line}"
    );
    let o = run_line(&line);
    assert_eq!(o.status.code(), Some(1), "{line}: {}", stderr(&o));
    let (_, again) = summary(&o);
    assert_eq!(run_of(&again, "fails.sh")["verdict"], "fail");
    // A known splat is not a failure.
    let o = run(&[
        "vm-test",
        "--exec",
        &fixture("warns.sh"),
        "--expect-splat",
        "vm_test_fixture",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // ... and still named on the run that logged it.
    let (_, known) = summary(&o);
    let warns = run_of(&known, "warns.sh");
    let accepted = warns["known_splats"][0].as_str().unwrap_or_default();
    assert!(accepted.contains("vm_test_fixture"), "{warns}");
    let why = warns["reason"].as_str().unwrap_or_default();
    assert!(why.starts_with("accepted known splat: "), "{warns}");
    std::fs::remove_dir_all(&merged).unwrap();
}

/// A Rust package's tests, built static on the host and each run alone in a fresh VM: pass,
/// fail (its panic), timeout (a freeze-frame of where it sleeps), a "skipping:" line and an
/// `#[ignore]` as skips (the latter without a VM), an integration test that runs the
/// package's example by its path; one test's reproduce line reruns that test alone.
#[test]
fn a_rust_packages_tests_run_one_per_vm() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("xtask/tests/vmtest/cargo-fixture");
    let dir = dir.to_str().unwrap();
    let o = run(&["vm-test", "--cargo", dir, "--timeout", "10", "-j", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, v) = summary(&o);
    let t = |name: &str| run_of(&v, &format!("vmtest_fixture::tests::{name}")).clone();
    assert_eq!(v["runs"].as_array().unwrap().len(), 6, "{v}");
    assert_eq!(t("passes_with_ublk")["verdict"], "pass", "{v}");
    let fail = t("fails");
    assert_eq!(fail["verdict"], "fail");
    assert!(
        fail["reason"]
            .as_str()
            .unwrap()
            .starts_with("exit 101: thread ")
            && fail["reason"]
                .as_str()
                .unwrap()
                .contains("arithmetic is broken"),
        "{fail}"
    );
    let hang = t("hangs");
    assert_eq!(hang["verdict"], "timeout", "{hang}");
    let why = hang["reason"].as_str().unwrap();
    // The test's own thread (libtest names it after the test) is where it waits.
    assert!(
        why.contains("still running after 10 s")
            && why.contains("tests::hangs (S): hrtimer_nanosleep"),
        "{why}"
    );
    assert!(hang["freeze_frame"].as_str().is_some());
    let skip = t("skips_when_the_kernel_lacks_a_feature");
    assert_eq!(skip["verdict"], "skip");
    assert_eq!(skip["reason"], "skipping: kernel lacks UBLK_F_FIXTURE");
    let ignored = t("ignored");
    assert_eq!(ignored["verdict"], "skip");
    assert_eq!(ignored["run_dir"], "", "no VM for an ignored test");
    assert_eq!(
        run_of(&v, "companion::runs_the_example_beside_it")["verdict"],
        "pass",
        "{v}"
    );
    let line = fail["reproduce"].as_str().unwrap().to_string();
    assert!(
        line.contains(" --only vmtest_fixture::tests::fails "),
        "{line}"
    );
    let o = run_line(&line);
    assert_eq!(o.status.code(), Some(1), "{line}: {}", stderr(&o));
    let (_, again) = summary(&o);
    assert_eq!(again["runs"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again["runs"][0]["verdict"], "fail");
    // A name that is no test of the package is bad input, named, before any VM.
    let o = run(&[
        "vm-test",
        "--cargo",
        dir,
        "--only",
        "vmtest_fixture::tests::nosuch",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--only vmtest_fixture::tests::nosuch: no such test"),
        "{}",
        stderr(&o)
    );
}

/// The README's runner snippet, as environment (what `.cargo/config.toml` says): plain `cargo
/// test` in the fixture package runs each test binary in a fresh VM (the unit test that needs
/// /dev/ublk-control passes; the example beside the integration test is shipped and runs) and
/// exits as cargo does — 0, and 101 when a test failed.
#[test]
fn plain_cargo_test_runs_in_vms_through_the_runner() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let base = std::env::temp_dir().join(format!("vm-runner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join("cargo-fixture");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(root().join("xtask/tests/vmtest/cargo-fixture"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copy.success());
    let runner = format!("{} vm-runner --timeout 120", env!("CARGO_BIN_EXE_xtask"));
    let cargo_test = |args: &[&str]| {
        let mut c = std::process::Command::new("cargo");
        c.current_dir(&dir)
            .args(["test", "--locked"])
            .args(args)
            .env("CARGO_BUILD_TARGET", "x86_64-unknown-linux-gnu")
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            )
            .env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", &runner)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env_remove("RUSTFLAGS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(c.spawn().unwrap(), LIMIT)
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = cargo_test(&["--lib", "--", "passes_with_ublk"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("test tests::passes_with_ublk ... ok"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("vm-run: pass (exit 0)"), "{}", text(&o));
    // A whole `cargo test` builds the examples too: the integration test finds its example.
    let o = cargo_test(&["--no-fail-fast", "--", "--skip", "hangs"]);
    assert_eq!(o.status.code(), Some(101), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("test tests::fails ... FAILED"), "{t}");
    assert!(t.contains("test runs_the_example_beside_it ... ok"), "{t}");
    assert!(
        !dir.join("target/vm-runs").exists(),
        "the runner's runs stay in its checkout"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The action with `suite: exec`: run.sh runs the project's test files (paths relative to the
/// job's directory) as two shards through vm-test, merge.sh joins them; the verdict is the
/// failing test's, the step summary names it.
#[test]
fn the_action_runs_a_projects_own_tests_as_shards() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("vm-test-action-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("t")).unwrap();
    for f in ["passes.sh", "fails.sh", "skips.sh"] {
        std::fs::copy(fixture(f), dir.join("t").join(f)).unwrap();
    }
    let scripts = root().join(".github/actions/ublk-vm/scripts");
    let script = |name: &str, args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new("bash");
        c.arg(scripts.join(name)).args(args).current_dir(&dir);
        c.env_remove("GITHUB_ACTIONS")
            .env("UBLK_VM_XTASK", env!("CARGO_BIN_EXE_xtask"))
            .env("RUNNER_TEMP", &dir);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(c.spawn().unwrap(), LIMIT)
    };
    let mut codes = Vec::new();
    for k in 1..=2 {
        let (shard, out) = (format!("{k}/2"), format!("shard-{k}"));
        let o = script(
            "run.sh",
            &[],
            &[
                ("UBLK_VM_SUITE", "exec"),
                ("UBLK_VM_TESTS", "t/passes.sh t/fails.sh t/skips.sh"),
                ("UBLK_VM_SHARD", &shard),
                ("UBLK_VM_SEED", "7"),
                ("UBLK_VM_ACCEL", "tcg"),
                ("UBLK_VM_OUT", &out),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let code = std::fs::read_to_string(dir.join(&out).join("exit-code")).unwrap();
        codes.push(code.trim().to_string());
    }
    codes.sort();
    assert_eq!(codes, ["0", "1"], "one shard holds the failing test");
    let step_summary = dir.join("step-summary.md");
    let summary_s = step_summary.to_str().unwrap();
    let o = script(
        "merge.sh",
        &["merged", "shard-1", "shard-2"],
        &[("GITHUB_STEP_SUMMARY", summary_s)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.join("merged/summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["tool"], "vm-test", "{v}");
    assert_eq!(v["runs"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(run_of(&v, "passes.sh")["verdict"], "pass");
    assert_eq!(run_of(&v, "skips.sh")["verdict"], "skip");
    assert_eq!(run_of(&v, "fails.sh")["verdict"], "fail");
    let md = std::fs::read_to_string(&step_summary).unwrap();
    assert!(md.starts_with("### vm-test FAIL: 1/3 passed"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vm-test --go`: a Go module built with the locked Debian toolchain, offline; each test in
/// its own VM from its package directory (testdata shipped): pass, fail with its log line,
/// timeout with a freeze-frame naming the test's goroutine wait, skip with its reason; the
/// reproduce line reruns one test; a second build is cached.
#[test]
fn a_go_modules_tests_run_one_per_vm() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("go-fixture");
    let o = run(&["vm-test", "--go", &dir, "--timeout", "10", "-j", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, v) = summary(&o);
    let t = |name: &str| run_of(&v, &format!("example.com/gofixture.{name}")).clone();
    assert_eq!(v["runs"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(t("TestPassesWithUblk")["verdict"], "pass", "{v}");
    let fail = t("TestFails");
    assert_eq!(fail["verdict"], "fail");
    assert_eq!(
        fail["reason"], "exit 1: fix_test.go:16: arithmetic is broken",
        "{fail}"
    );
    let hang = t("TestHangs");
    assert_eq!(hang["verdict"], "timeout", "{hang}");
    assert!(hang["freeze_frame"].as_str().is_some(), "{hang}");
    let skip = t("TestSkips");
    assert_eq!(skip["verdict"], "skip");
    assert_eq!(
        skip["reason"],
        "fix_test.go:24: kernel lacks UBLK_F_FIXTURE"
    );
    assert_eq!(
        run_of(&v, "example.com/gofixture/queue.TestReadsItsTestdata")["verdict"],
        "pass",
        "{v}"
    );
    let line = fail["reproduce"].as_str().unwrap().to_string();
    assert!(
        line.contains(" --only example.com/gofixture.TestFails "),
        "{line}"
    );
    let o = run_line(&line);
    assert_eq!(o.status.code(), Some(1), "{line}: {}", stderr(&o));
    assert!(stderr(&o).contains("built in"), "{}", stderr(&o));
    let (_, again) = summary(&o);
    assert_eq!(again["runs"].as_array().unwrap().len(), 1, "{again}");
}

/// `vm-test --blktests`: a blktests-shaped checkout, each test through its `./check` in its
/// own VM with its `src/miniublk.c` built static: `[passed]` pass, an output diff a fail naming
/// the changed lines, `[not run]` a skip with blktests' reason, a hang a timeout with a
/// freeze-frame, blktests' dmesg failure a pass when `--expect-splat` covers it; a group not
/// named does not run; the reproduce line reruns one test.
#[test]
fn a_blktests_checkout_runs_one_test_per_vm() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = fixture("blktests-fixture");
    let splat = "blktests-fixture planted";
    let args = [
        "vm-test",
        "--blktests",
        &dir,
        "--timeout",
        "10",
        "--expect-splat",
        splat,
    ];
    let o = run(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, v) = summary(&o);
    assert_eq!(
        v["runs"].as_array().unwrap().len(),
        5,
        "only the ublk group: {v}"
    );
    assert_eq!(run_of(&v, "ublk/001")["verdict"], "pass", "{v}");
    let fail = run_of(&v, "ublk/002").clone();
    assert_eq!(fail["verdict"], "fail");
    assert_eq!(
        fail["reason"],
        "blktests: failed: output differs from 002.out: -Test complete; +device came up with 0 sectors",
        "{fail}"
    );
    let skip = run_of(&v, "ublk/003");
    assert_eq!(skip["verdict"], "skip");
    assert_eq!(
        skip["reason"],
        "blktests: not run: fixture-tool-nobody-has is not available"
    );
    let hang = run_of(&v, "ublk/004");
    assert_eq!(hang["verdict"], "timeout", "{hang}");
    assert!(hang["freeze_frame"].as_str().is_some(), "{hang}");
    assert!(
        hang["reason"].as_str().unwrap().contains(" sleep (S)"),
        "the hung test's process is named: {hang}"
    );
    assert_eq!(run_of(&v, "ublk/005")["verdict"], "pass", "{v}");
    let line = fail["reproduce"].as_str().unwrap().to_string();
    assert!(line.contains(" --only ublk/002 "), "{line}");
    let o = run_line(&line);
    assert_eq!(o.status.code(), Some(1), "{line}: {}", stderr(&o));
    let (_, again) = summary(&o);
    assert_eq!(again["runs"].as_array().unwrap().len(), 1, "{again}");
}

/// The action's `suite: blktests`: the checkout and the tests it names, through run.sh.
#[test]
fn the_action_runs_a_blktests_checkout() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("vm-test-action-bt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tests = format!("{} ublk/001 other/001", fixture("blktests-fixture"));
    let o = std::process::Command::new("bash")
        .arg(root().join(".github/actions/ublk-vm/scripts/run.sh"))
        .current_dir(&dir)
        .env_remove("GITHUB_ACTIONS")
        .env("UBLK_VM_XTASK", env!("CARGO_BIN_EXE_xtask"))
        .env("RUNNER_TEMP", &dir)
        .envs([
            ("UBLK_VM_SUITE", "blktests"),
            ("UBLK_VM_TESTS", tests.as_str()),
            ("UBLK_VM_SEED", "7"),
            ("UBLK_VM_ACCEL", "tcg"),
            ("UBLK_VM_OUT", "out"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let code = std::fs::read_to_string(dir.join("out/exit-code")).unwrap();
    assert_eq!(code.trim(), "0", "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.join("out/summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(run_of(&v, "other/001")["verdict"], "pass", "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
