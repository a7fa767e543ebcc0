//! ublk-mem in real VMs: each test boots a fresh guest and runs one script from
//! ublk/tests/vm/ (copied in with the shared lib.sh). A script prints PASS and exits 0, or
//! prints FAIL with the reason.

mod common;

use common::*;

/// Runs ublk/tests/vm/NAME.sh in a fresh VM; returns its stdout after checking it passed.
fn guest_script(name: &str) -> String {
    guest_script_on(name, "debian")
}

/// The same on one kernel (`--kernel`).
fn guest_script_on(name: &str, kernel: &str) -> String {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("ublk/tests/vm");
    let lib = format!("{}:/tmp/lib.sh", dir.join("lib.sh").display());
    let script = format!("{}:/tmp/test.sh", dir.join(format!("{name}.sh")).display());
    let o = run(&[
        "vm-run",
        "--kernel",
        kernel,
        "--name",
        &format!("ublk-{name}"),
        "--timeout",
        "240",
        "--copy-in",
        &lib,
        "--copy-in",
        &script,
        "--",
        "sh",
        "/tmp/test.sh",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{name}.sh failed in the guest:\n{out}\n{}",
        stderr(&o)
    );
    assert!(
        out.trim_end().ends_with("PASS"),
        "{name}.sh did not reach PASS:\n{out}"
    );
    out
}

#[test]
fn scattered_writes_verify_byte_exact_and_sigterm_is_clean() {
    let out = guest_script("scattered");
    assert!(
        out.contains("verify: all 16384 written blocks match, every other block is zero"),
        "{out}"
    );
    let md5 = out
        .lines()
        .find(|l| l.starts_with("md5 of 256 MiB"))
        .expect("md5 line");
    let sums: Vec<&str> = md5
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 32)
        .collect();
    assert!(sums.len() == 2 && sums[0] == sums[1], "{md5}");
}

/// On 7.2 the same data travels batched (BATCH_IO, chosen by `--io-mode auto`): byte-exact,
/// both queues served, a clean SIGTERM.
#[test]
fn batched_io_on_7_2_verifies_byte_exact() {
    let out = guest_script_on("scattered", "debian-7.2");
    let features = out
        .lines()
        .find(|l| l.contains("uses ublk features:"))
        .unwrap_or_else(|| panic!("no features line: {out}"));
    assert!(features.contains(" BATCH_IO"), "{features}");
    assert!(
        out.contains("verify: all 16384 written blocks match, every other block is zero"),
        "{out}"
    );
}

#[test]
fn sigkill_fails_pending_io_and_the_dead_device_is_deleted() {
    let out = guest_script("sigkill");
    let secs: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("sigkill: I/O ended with exit "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .expect("timing line");
    assert!(secs < 30.0, "pending I/O took {secs} s to fail");
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    guest_script("discard");
}

#[test]
fn stalled_tag_is_named_by_the_state_dump_and_shutdown_still_clean() {
    guest_script("stall");
}

#[test]
fn usual_mistakes_get_clear_errors() {
    let out = guest_script("errors");
    assert!(
        out.contains(
            "ok: ublk-mem add --size 16MiB -> ublk-mem: error: /dev/ublk-control does not exist"
        ),
        "{out}"
    );
    // 6.12 has no batched I/O: asking for it says so and what to do.
    assert!(
        out.contains("--io-mode batch -> ublk-mem: error: --io-mode batch: this kernel's ublk driver does not offer BATCH_IO"),
        "{out}"
    );
}
