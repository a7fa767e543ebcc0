//! `vm-selftests` end to end: the kernel's own ublk suite from debian-7.2's locked source,
//! each script in a fresh VM. A short slice runs here (CI); the whole suite is a command.

mod common;

use common::*;

fn fixture(name: &str) -> String {
    root()
        .join("xtask/tests/selftests")
        .join(name)
        .display()
        .to_string()
}

/// 6.12 predates the suite: one line that says so and names the way to run a newer suite.
#[test]
fn a_kernel_without_the_suite_gets_one_line_naming_the_fix() {
    let o = run(&["vm-selftests", "--kernel", "debian-6.12"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{e}");
    assert!(
        errors[0].contains("first shipped in 6.15") && errors[0].contains("--suite debian-7.2"),
        "{e}"
    );
    let o = run(&["vm-selftests", "--list", "no_such_group"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("groups: "), "{}", stderr(&o));
}

/// kselftest exit codes become verdicts: a suite script that passes, one that skips (with the
/// program it looked for), and two fixtures that exit 0 after a kernel warning: the splat
/// fails one; the other's is accepted by `--expect-splat`.
#[test]
fn exit_codes_skips_and_splats_become_verdicts() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (splat, known) = (fixture("test_splat_01.sh"), fixture("test_splat_02.sh"));
    let o = run(&[
        "vm-selftests",
        "--kernel",
        "debian-7.2",
        "-j",
        "2",
        "--script",
        &splat,
        "--script",
        &known,
        "--expect-splat",
        "known_fixture_warning",
        "null_01",
        "generic_02",
        "splat",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    let (dir, v) = summary(&o);
    assert!(dir.join("junit.xml").is_file());
    let verdict = |t: &str| run_of(&v, t)["verdict"].as_str().unwrap().to_string();
    let reason = |t: &str| {
        run_of(&v, t)["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(verdict("null_01"), "pass", "{v}");
    assert_eq!(verdict("generic_02"), "skip", "{v}");
    let why = reason("generic_02");
    assert!(
        why.contains("checks for bpftrace, which") && !why.contains("fio"),
        "{v}"
    );
    assert_eq!(verdict("splat_01"), "fail", "{v}");
    let why = reason("splat_01");
    assert!(
        why.contains("kernel splat: ") && why.contains("vm_selftests_fixture"),
        "{v}"
    );
    assert_eq!(verdict("splat_02"), "pass", "{v}");
    let session_line = out
        .lines()
        .find_map(|l| l.split_once("reproduce with: ").map(|x| x.1))
        .unwrap_or_else(|| panic!("a reproduce line: {out}"));
    assert!(
        session_line
            .starts_with("cargo xtask vm-selftests splat_01 --kernel debian-7.2 --timeout-scale ")
            && session_line.contains(" --expect-splat known_fixture_warning --script "),
        "{out}"
    );
    // The run's own line selects the same: its test, kernel, expectations and scripts.
    let line = run_of(&v, "splat_01")["reproduce"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        line.starts_with("cargo xtask vm-selftests splat_01 --kernel debian-7.2 --timeout-scale ")
            && line.contains(" --expect-splat known_fixture_warning --script ")
            && line.matches("--script ").count() == 2,
        "{line}"
    );
}

/// A script that hangs (its server stopped, a direct read sent) ends as `timeout` within its
/// limit + 10 s, with a freeze-frame naming the stuck tag and the blocked task.
#[test]
fn a_hanging_script_is_a_timeout_with_a_freeze_frame() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let limit_s = 10.0;
    let o = run(&[
        "vm-selftests",
        "--kernel",
        "debian-7.2",
        "--script",
        &fixture("test_hang_01.sh"),
        "hang_01",
        "--timeout",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, v) = summary(&o);
    let r = run_of(&v, "hang_01");
    assert_eq!(r["verdict"], "timeout", "{r}");
    let (duration, boot) = (
        r["duration_s"].as_f64().unwrap(),
        r["boot_s"].as_f64().unwrap(),
    );
    assert!(duration <= boot + limit_s + 10.0, "{r}");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("tag") && why.contains("in flight") && why.contains("dd (D)"),
        "{why}"
    );
    let ff = std::path::PathBuf::from(r["freeze_frame"].as_str().unwrap());
    let summary = std::fs::read_to_string(ff.join("summary.txt")).unwrap();
    assert!(
        summary.contains("dd") && summary.contains("tag"),
        "{summary}"
    );
}
