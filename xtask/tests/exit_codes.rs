//! The exit-code table (README, "Exit codes") per command, for what can be checked without a
//! VM: bad input is 2 with one line naming it, at once — unknown names, invalid files, bad
//! flags and combinations, FIFOs and devices given as files (which once hung forever or read
//! /dev/zero until memory ran out). The VM-side rows (a failing server 1, a dead VM in
//! vm-perf 125) are in e2e.rs and perf.rs; offline fetch (125) in archive.rs; merge in merge.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Runs xtask; (exit code, stderr, seconds). Bounded (a FIFO used to hang forever); the
/// first command of a fresh checkout may build the guest binaries first.
fn code(args: &[&str]) -> (i32, String, f64) {
    let t = Instant::now();
    let o = finish(spawn(args), Duration::from_secs(600));
    (
        o.status.code().unwrap_or(-1),
        stderr(&o),
        t.elapsed().as_secs_f64(),
    )
}

#[test]
fn bad_input_exits_2_with_one_line_for_every_command() {
    let d = Dir(std::env::temp_dir().join(format!("xtask-codes-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&d.0);
    std::fs::create_dir_all(&d.0).unwrap();
    let p = |n: &str| d.0.join(n).display().to_string();
    fifo(&d.0.join("fifo.yaml"));
    fifo(&d.0.join("test_fifo_01.sh"));
    fifo(&d.0.join("perf.json"));
    fifo(&d.0.join("server-bin"));
    std::fs::write(d.0.join("bad.yaml"), "name: x\nsteps: [\n").unwrap();
    std::fs::write(
        d.0.join("fifo-server.yaml"),
        "name: fifo-server\ndescription: its binary is a FIFO\nbinary: {path: ./server-bin}\nadd:\n  argv: [server-bin, '{dev_id}']\n  mode: foreground\n  ready: kernel\nstop: {signal: TERM}\nstorage: none\n",
    )
    .unwrap();
    let blktests = root()
        .join("xtask/tests/vmtest/blktests-fixture")
        .display()
        .to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["vm-e2e".into(), "nosuch".into()],
            "no scenario or group named \"nosuch\"",
        ),
        (
            vec!["vm-e2e".into(), "--repeat".into(), "-1".into()],
            "-1 is not in 1..=1000",
        ),
        (
            vec![
                "vm-e2e".into(),
                "--server".into(),
                "/no/such.yaml".into(),
                "simple-e2e".into(),
            ],
            "/no/such.yaml: cannot read",
        ),
        (
            vec![
                "vm-e2e".into(),
                "--server".into(),
                "no-such-server".into(),
                "simple-e2e".into(),
            ],
            "no server named",
        ),
        (vec!["vm-e2e".into(), p("bad.yaml")], "bad.yaml:3:1:"),
        (
            vec!["vm-e2e".into(), p("fifo.yaml")],
            "is a FIFO (named pipe), not a regular file",
        ),
        (
            vec!["vm-e2e".into(), "/dev/zero".into()],
            "/dev/zero: is a device",
        ),
        (
            vec![
                "vm-e2e".into(),
                "--shard".into(),
                "1/2".into(),
                "simple-e2e".into(),
            ],
            "--shard needs --seed",
        ),
        (
            vec![
                "vm-e2e".into(),
                "--kernel".into(),
                "/no/such/tree".into(),
                "simple-e2e".into(),
            ],
            "no such file or directory",
        ),
        (vec!["servers".into(), p("fifo-server.yaml")], "is a FIFO"),
        (
            vec!["scenario".into(), "check".into(), p("bad.yaml")],
            "bad.yaml:3:1:",
        ),
        (
            vec![
                "vm-selftests".into(),
                "--script".into(),
                p("test_fifo_01.sh"),
            ],
            "is a FIFO",
        ),
        (
            vec![
                "vm-selftests".into(),
                "--kernel".into(),
                "debian-6.12".into(),
            ],
            "first shipped in 6.15",
        ),
        (
            vec!["vm-selftests".into(), "-j".into(), "17".into()],
            "-j 17: at most 16",
        ),
        (
            vec![
                "vm-test".into(),
                "-j".into(),
                "17".into(),
                "--exec".into(),
                "/bin/true".into(),
            ],
            "-j 17: at most 16",
        ),
        (
            vec![
                "vm-test".into(),
                "--skip-pattern".into(),
                "(unclosed".into(),
                "--exec".into(),
                "/bin/true".into(),
            ],
            "--skip-pattern (unclosed: not a regular expression: unclosed group",
        ),
        (
            vec!["vm-test".into(), "--go".into(), "/tmp".into()],
            "--go /tmp: no go.mod there",
        ),
        (
            vec![
                "vm-test".into(),
                "--only".into(),
                "x".into(),
                "--exec".into(),
                "/bin/true".into(),
            ],
            "--only names a test of --cargo, --go or --blktests",
        ),
        (
            vec!["vm-test".into(), "--blktests".into(), "/tmp".into()],
            "--blktests /tmp: not a blktests checkout",
        ),
        (
            vec![
                "vm-test".into(),
                "--blktests".into(),
                blktests.clone(),
                "--".into(),
                "ublk/9x9".into(),
            ],
            "blktests: no group or test ublk/9x9",
        ),
        (
            vec![
                "vm-test".into(),
                "--server".into(),
                "ublk-mem".into(),
                "--blktests".into(),
                blktests.clone(),
            ],
            "--server ublk-mem: blktests drives its own miniublk or a `rublk` on PATH",
        ),
        (
            vec![
                "vm-test".into(),
                "--server".into(),
                "rublk".into(),
                "--exec".into(),
                "/bin/true".into(),
            ],
            "--server names the server of --blktests",
        ),
        (
            vec!["vm-perf".into(), "--from".into(), p("perf.json")],
            "is a FIFO",
        ),
        (
            vec!["vm-perf".into(), "--from".into(), "/dev/zero".into()],
            "is a device",
        ),
        (
            vec!["vm-perf".into(), "--runtime".into(), "0.1".into()],
            "--runtime: at least 0.5 s",
        ),
        (
            vec![
                "vm-run".into(),
                "--copy-in".into(),
                p("fifo.yaml"),
                "--".into(),
                "true".into(),
            ],
            "is not a regular file",
        ),
        (
            vec![
                "vm-run".into(),
                "--tools".into(),
                "no-such-program".into(),
                "--".into(),
                "true".into(),
            ],
            "has no program \"no-such-program\"",
        ),
        (
            vec![
                "bisect".into(),
                "--good".into(),
                "HEAD~1".into(),
                "--bad".into(),
                "HEAD".into(),
            ],
            "exactly one of --scenario, --sim or --cmd",
        ),
        (
            vec!["report".into(), "merge".into(), p("fifo.yaml")],
            "is a FIFO",
        ),
        (
            vec!["report".into(), "merge".into(), p("nothing-here")],
            "nothing-here: No such file",
        ),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (c, err, secs) = code(&a);
        assert_eq!(c, 2, "{args:?}: {err}");
        if want.contains("FIFO") || want.contains("device") {
            assert!(
                secs < 20.0,
                "{args:?}: a special file took {secs:.1} s to refuse"
            );
        }
        assert!(err.contains(want), "{args:?}: want {want:?} in: {err}");
        let errors = err.lines().filter(|l| l.starts_with("error: ")).count();
        assert!(errors <= 1, "{args:?}: one error line: {err}");
    }
}
