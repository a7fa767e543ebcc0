//! `vm-perf` end to end, short enough for CI: brd and ublk-mem on two workloads under QEMU's
//! instruction-counting clock (repeatable within a few percent on a loaded host, where the
//! plain TCG clock varied by tens of percent), gated against the committed baseline
//! `.ci/perf-baseline.json`. Then the gate itself, without a VM (`--from`): a baseline
//! claiming ublk-mem was faster than the measured noise allows fails, naming the cell; one
//! inside the noise passes.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// The CI slice. `.ci/perf-baseline.json` is its output: after a change meant to move
/// performance, regenerate it with these arguments, `--save-baseline .ci/perf-baseline.json`
/// instead of `--baseline ...`, and say why in the commit.
const SLICE: &[&str] = &[
    "vm-perf",
    "--accel",
    "tcg",
    "--clock",
    "icount:3",
    "--targets",
    "brd,ublk-mem",
    "--workloads",
    "randread-4k-qd32,write-128k-qd8",
    "--rounds",
    "2",
    "--runtime",
    "1",
    "--ramp",
    "0.5",
    "--size",
    "64",
    "--baseline",
    ".ci/perf-baseline.json",
];

fn outputs(o: &std::process::Output) -> PathBuf {
    let e = stderr(o);
    let line = e
        .lines()
        .find_map(|l| {
            l.strip_prefix("vm-perf: ")?
                .split_once(" and ")
                .map(|x| x.0)
        })
        .unwrap_or_else(|| panic!("no output paths: {e}"));
    PathBuf::from(line)
}

/// A copy of `report` whose ublk-mem randread ratio is scaled by `factor`.
fn doctored(report: &Path, factor: f64, out: &Path) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    for s in v["sessions"].as_array_mut().unwrap() {
        for c in s["cells"].as_array_mut().unwrap() {
            if c["target"] == "ublk-mem" && c["workload"] == "randread-4k-qd32" {
                for k in ["median", "min", "max"] {
                    let x = c["ratio"][k].as_f64().unwrap();
                    c["ratio"][k] = (x * factor).into();
                }
            }
        }
    }
    std::fs::write(out, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn a_short_run_passes_the_committed_baseline_and_the_gate_can_fail() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(SLICE);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(
        e.contains("x brd [min-max]") && e.contains("regressed beyond noise"),
        "{e}"
    );
    let perf = outputs(&o);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&perf).unwrap()).unwrap();
    let session = &report["sessions"][0];
    assert_eq!(
        session["samples"].as_array().unwrap().len(),
        8,
        "2 targets x 2 workloads x 2 rounds"
    );
    assert_eq!(report["clock"], "icount:3");
    let cells = session["cells"].as_array().unwrap();
    let ublk = cells.iter().find(|c| c["target"] == "ublk-mem").unwrap();
    assert!(
        ublk["cpu_us_per_io"]["median"].as_f64().unwrap() > 0.0,
        "{ublk}"
    );
    // The whole guest's CPU per I/O, for every target: more than the server's own share.
    for c in cells {
        let guest = c["guest_us_per_io"]["median"].as_f64().unwrap_or(0.0);
        assert!(guest > 0.0, "{c}");
        if let Some(server) = c["cpu_us_per_io"]["median"].as_f64() {
            assert!(guest > server, "{c}");
        }
    }
    let features = session["device_features"]["ublk-mem"].as_array().unwrap();
    assert!(
        features.iter().any(|f| f == "USER_COPY"),
        "one copy on 6.12: {features:?}"
    );
    let svg = std::fs::read_to_string(perf.with_file_name("perf.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("write-128k-qd8"),
        "{svg}"
    );

    // The gate, on the run just made: a baseline 30 % better fails and names the cell...
    let dir = tempdir();
    let better = dir.join("better.json");
    doctored(&perf, 1.3, &better);
    let gate = |baseline: &Path| {
        let perf_s = perf.display().to_string();
        run(&[
            "vm-perf",
            "--from",
            &perf_s,
            "--baseline",
            baseline.to_str().unwrap(),
        ])
    };
    let o = gate(&better);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("REGRESSION") && e.contains("ublk-mem randread-4k-qd32"),
        "{e}"
    );
    // ...one 1 % better is inside tolerance and noise.
    doctored(&perf, 1.01, &better);
    let o = gate(&better);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // A file that is not a perf.json is one clear error with its position.
    std::fs::write(&better, "{\"sessions\": 3}").unwrap();
    let o = gate(&better);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "bad input: {e}");
    assert!(
        e.contains("better.json:1:") && e.contains("--save-baseline"),
        "{e}"
    );
}

fn tempdir() -> PathBuf {
    let d = root().join("target/test-perf");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// QEMU's pid among the descendants of `pid`, if one runs.
fn qemu_under(pid: u32) -> Option<i32> {
    let mut parent = std::collections::BTreeMap::new();
    let mut comm = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok());
        parent.insert(p, ppid.unwrap_or(0));
        comm.insert(p, stat[open + 1..close].to_string());
    }
    comm.iter()
        .filter(|(_, c)| c.starts_with("qemu-system"))
        .map(|(p, _)| *p)
        .find(|p| {
            let mut at = *p;
            for _ in 0..16 {
                match parent.get(&at) {
                    Some(&pp) if pp == pid as i32 => return true,
                    Some(&pp) if pp > 1 => at = pp,
                    _ => return false,
                }
            }
            false
        })
}

/// A VM that dies in the middle of the measurement (QEMU killed after the first cell) is
/// "could not test" (exit 125): every target it could not measure is a row naming the VM's
/// end, never a regression or a server failure (exit 1); perf.json keeps the cell measured.
#[test]
fn a_vm_that_dies_mid_measurement_is_could_not_test() {
    use std::io::BufRead;
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = spawn(&[
        "vm-perf",
        "--accel",
        "tcg",
        "--clock",
        "icount:3",
        "--targets",
        "brd,ublk-mem",
        "--workloads",
        "randread-4k-qd32",
        "--rounds",
        "3",
        "--runtime",
        "1",
        "--ramp",
        "0.5",
        "--size",
        "64",
    ]);
    let pid = child.id();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut killed = false;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < LIMIT {
        match rx.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(line) => {
                let first_cell = line.trim_start().starts_with("[1/");
                seen.push(line);
                if first_cell && !killed {
                    let q = qemu_under(pid).expect("a QEMU under vm-perf");
                    // SAFETY: a signal to a process of this test's own tree.
                    unsafe { libc::kill(q, libc::SIGKILL) };
                    killed = true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let o = finish(child, LIMIT);
    reader.join().unwrap();
    let text = seen.join("\n");
    assert!(killed, "no cell was measured: {text}");
    assert_eq!(o.status.code(), Some(125), "{text}");
    assert!(
        !text.contains("regress") && !text.contains("REGRESSION"),
        "{text}"
    );
    let rows: Vec<&String> = seen.iter().filter(|l| l.contains("not measured")).collect();
    assert!(
        rows.iter().any(|l| l.contains("the VM died")),
        "the VM's end named in the table: {text}"
    );
    let perf = PathBuf::from(
        text.lines()
            .find_map(|l| {
                l.strip_prefix("vm-perf: ")?
                    .split_once(" and ")
                    .map(|x| x.0.to_string())
            })
            .unwrap_or_else(|| panic!("perf.json written: {text}")),
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&perf).unwrap()).unwrap();
    let session = &report["sessions"][0];
    assert_eq!(session["samples"].as_array().unwrap().len(), 1, "{session}");
    let failures = session["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "{session}");
    assert!(
        failures.iter().all(|f| f["server_fault"] == false),
        "not the server's fault: {session}"
    );
}

/// The acceptance line: `vm-perf --server ublk-mem,BROKEN` where BROKEN's device stops
/// answering in the fill. Every other target is measured in every round (a fresh VM after the hang),
/// BROKEN's row names the phase that hung and the stuck tag, its freeze-frame holds the
/// profile's dump, perf.json, the chart and `--queues 1` are recorded, and the run fails
/// (exit 1: a server under test failed).
#[test]
fn a_server_that_hangs_is_one_row_and_the_others_are_measured() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(&[
        "vm-perf",
        "--accel",
        "tcg",
        "--server",
        "ublk-mem,xtask/tests/servers/ublk-mem-stalls.yaml",
        "--workloads",
        "randread-4k-qd32",
        "--rounds",
        "2",
        "--runtime",
        "1",
        "--ramp",
        "0",
        "--size",
        "16",
        "--queues",
        "1",
        "--cell-limit",
        "30",
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("1 queue(s) x depth 64"),
        "the override in the header: {e}"
    );
    let row = e
        .lines()
        .find(|l| l.starts_with("-") && l.contains("broken-stall"))
        .unwrap_or_else(|| panic!("a row for the broken server: {e}"));
    // Under the icount clock an idle guest's time runs ahead: fio's own watchdog may give up
    // on the stuck job before the cell's limit. Either way the row names the hang.
    let hung = (row.contains("hang: the fill") && row.contains("did not finish"))
        || (row.contains("job 'fill'") && row.contains("appears to be stuck"));
    assert!(row.contains("not measured") && hung, "the fill hung: {row}");
    assert!(row.contains("stuck: ") && row.contains("tag 0"), "{row}");
    let perf = outputs(&o);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&perf).unwrap()).unwrap();
    assert_eq!(report["queues"], 1, "recorded: {report}");
    let session = &report["sessions"][0];
    let cells = session["cells"].as_array().unwrap();
    for t in ["brd", "null_blk", "loop", "ublk-mem"] {
        let c = cells
            .iter()
            .find(|c| c["target"] == t)
            .unwrap_or_else(|| panic!("{t} measured: {session}"));
        assert_eq!(c["rounds"], 2, "{t} in every round: {c}");
        assert!(c["ratio"]["median"].as_f64().unwrap() > 0.0, "{c}");
    }
    assert!(
        !cells.iter().any(|c| c["target"] == "broken-stall"),
        "{session}"
    );
    let f = &session["failures"][0];
    assert_eq!(
        (&f["target"], &f["server_fault"]),
        (&"broken-stall".into(), &true.into()),
        "{f}"
    );
    let kernel_dir = perf.parent().unwrap().join("debian");
    let freeze = kernel_dir.join(f["evidence"].as_str().unwrap());
    let dump = std::fs::read_to_string(freeze.join("dump-perf.txt")).unwrap();
    assert!(
        dump.contains("broken-stall dump"),
        "the profile's dump hook ran: {dump}"
    );
    let summary = std::fs::read_to_string(freeze.join("summary.txt")).unwrap();
    assert!(summary.contains("server dumps:"), "{summary}");
    assert!(
        kernel_dir.join("vm2").is_dir(),
        "a fresh VM measured the rest"
    );
    let svg = std::fs::read_to_string(perf.with_file_name("perf.svg")).unwrap();
    assert!(svg.contains("broken-stall (not measured"), "charted: {svg}");

    // The reproduce line, run as printed, measures the same cells the same way.
    let line = report["reproduce"].as_str().unwrap();
    for part in [
        "--targets brd,null_blk,loop,ublk-mem,xtask/tests/servers/ublk-mem-stalls.yaml",
        "--queues 1",
        "--cell-limit 30",
        "--rounds 2",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    let o = run_line(line);
    assert_eq!(o.status.code(), Some(1), "{line}: {}", stderr(&o));
    let rerun: Value =
        serde_json::from_str(&std::fs::read_to_string(outputs(&o)).unwrap()).unwrap();
    let s = &rerun["sessions"][0];
    assert_eq!(s["failures"][0]["target"], "broken-stall", "{s}");
    assert_eq!(s["cells"].as_array().unwrap().len(), cells.len(), "{s}");
    assert_eq!(
        rerun["reproduce"], report["reproduce"],
        "the line reproduces itself"
    );
}
