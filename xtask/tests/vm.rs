//! Integration tests that boot real VMs through the `xtask` binary, as a user would.
//! They need QEMU and the Debian kernel; xtask installs what is missing when run as root
//! (as `.ci/run` does), so these tests never skip. VMs run one at a time: two emulated
//! guests on a 2-core host would distort each other's timing.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn assert_qemu_gone(result: &Value) {
    let pid = result["qemu_pid"].as_i64().expect("qemu_pid recorded");
    assert!(!alive(pid), "QEMU {pid} outlived its xtask");
    assert!(
        !root()
            .join(format!("target/vm-state/qemu-{pid}.json"))
            .exists(),
        "pid file of QEMU {pid} left behind"
    );
}

#[test]
fn runs_a_command_in_a_612_guest_and_records_the_run() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(&["vm-run", "--", "cat", "/proc/version"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("Linux version 6.12."),
        "not a 6.12 guest: {out}"
    );
    let (dir, r) = result_of(&o);
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["exit_status"], 0);
    let boot = r["boot_s"].as_f64().unwrap();
    assert!(boot > 0.0 && boot < r["wall_s"].as_f64().unwrap());
    assert!(["kvm", "tcg"].contains(&r["accelerator"].as_str().unwrap()));
    assert_eq!(r["image_hash"].as_str().unwrap().len(), 64);
    // No --tools: no tools disk at all (the boot is the one measured without the layer).
    let cmdline = std::fs::read_to_string(dir.join("qemu-cmdline.txt")).unwrap();
    assert!(
        !cmdline.contains("ublk-vm-tools") && !cmdline.contains("-drive"),
        "{cmdline}"
    );
    assert_eq!(r["tools"].as_array().unwrap().len(), 0, "{r}");
    for f in [
        "serial.log",
        "qemu-cmdline.txt",
        "agent-transcript.log",
        "result.json",
        "dmesg.txt",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    let serial = std::fs::read_to_string(dir.join("serial.log")).unwrap();
    assert!(
        serial.contains("init: ready at"),
        "serial log lacks init output:\n{serial}"
    );
    assert!(std::fs::read_to_string(dir.join("agent-transcript.log"))
        .unwrap()
        .contains("Exec id=1"));
    assert!(std::fs::read_to_string(dir.join("qemu-cmdline.txt"))
        .unwrap()
        .contains("-no-reboot"));
    // The accelerator verdict is cached for later runs.
    let probe: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("target/vm-images/accel-probe.json"))
            .unwrap_or_else(|_| "{}".into()),
    )
    .unwrap();
    if r["accelerator_reason"].as_str().unwrap().contains("probe") {
        assert_eq!(
            probe["kvm_works"].as_bool().unwrap(),
            r["accelerator"] == "kvm"
        );
    }
    assert_qemu_gone(&r);
}

#[test]
fn exit_status_ublk_control_and_signals_reach_the_host() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(&["vm-run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(result_of(&o).1["verdict"], "fail");

    // ublk_drv is loaded before the command runs; a missing device must fail (the test can fail).
    let o = run(&[
        "vm-run",
        "--",
        "sh",
        "-c",
        "test -c /dev/ublk-control && grep -q '^ublk_drv ' /proc/modules && ! test -e /dev/no-such",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = run(&[
        "vm-run",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; kill -9 $$",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "to-stdout\n");
    assert!(stderr(&o).contains("to-stderr\n"));

    let o = run(&["vm-run", "--", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot run 'no-such-command'"));
}

#[test]
fn timeout_kills_the_vm_and_exits_124() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let o = run(&["vm-run", "--timeout", "10", "--", "sleep", "600"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let err = stderr(&o);
    assert!(
        err.contains("timed out after 10 s") && err.contains("serial.log"),
        "{err}"
    );
    let (_, r) = result_of(&o);
    assert_eq!(r["verdict"], "timeout");
    assert!(r["exit_status"].is_null());
    assert_qemu_gone(&r);
}

#[test]
fn sigterm_mid_run_takes_qemu_down() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let marker = format!("sigterm-test-{}", std::process::id());
    let child = spawn(&[
        "vm-run",
        "--name",
        &marker,
        "--",
        "sh",
        "-c",
        "echo guest-started; sleep 600",
    ]);
    // Wait until the guest command runs: its run dir's transcript shows the Exec.
    let runs = root().join("target/vm-runs");
    let t = Instant::now();
    let dir = loop {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the guest never started"
        );
        let found = std::fs::read_dir(&runs).ok().and_then(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with(&marker))
        });
        if let Some(d) = found {
            if std::fs::read_to_string(d.join("agent-transcript.log"))
                .unwrap_or_default()
                .contains("guest-started")
            {
                break d;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    let o = finish(child, Duration::from_secs(30));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "xtask took {:?} to stop after SIGTERM",
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["verdict"], "interrupted");
    assert_qemu_gone(&r);
}

#[test]
fn guest_kernel_panic_is_an_infra_error() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(&[
        "vm-run",
        "--",
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger; sleep 600",
    ]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let (_, r) = result_of(&o);
    assert_eq!(r["verdict"], "infra-error");
    assert!(
        r["reason"].as_str().unwrap().contains("Kernel panic"),
        "{r}"
    );
    assert_qemu_gone(&r);
}

#[test]
fn files_and_stdin_cross_the_channel() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = std::env::temp_dir().join(format!("xtask-copy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(tmp.join("blob"), &payload).unwrap();
    let host_sum = Command::new("md5sum")
        .arg(tmp.join("blob"))
        .output()
        .unwrap();
    let host_sum = String::from_utf8_lossy(&host_sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let spec = format!("{}:/root/blob", tmp.join("blob").display());
    let mut child = xtask()
        .args([
            "vm-run",
            "-i",
            "--copy-in",
            &spec,
            "--copy-out",
            "/tmp/out.txt",
            "--",
            "sh",
            "-c",
            "md5sum /root/blob; cat > /tmp/out.txt",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from host stdin\n")
        .unwrap();
    let o = finish(child, LIMIT);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with(&host_sum),
        "guest md5 {out} != host {host_sum}"
    );
    let (dir, _) = result_of(&o);
    assert_eq!(
        std::fs::read_to_string(dir.join("files/tmp_out.txt")).unwrap(),
        "from host stdin\n"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A --copy-out file the guest lacks, or a --copy-in path it cannot write, is the caller's
/// mistake: exit 1 / 2 with the reason, never a pass (0) and never "could not test" (125).
#[test]
fn copy_flags_the_guest_cannot_honour_are_user_errors() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = run(&["vm-run", "--copy-out", "/no/such/file", "--", "true"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let (_, r) = result_of(&o);
    assert_eq!(r["verdict"], "fail");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("--copy-out /no/such/file"),
        "{r}"
    );
    let host = std::env::temp_dir().join(format!("xtask-ci-{}", std::process::id()));
    std::fs::write(&host, b"x").unwrap();
    let spec = format!("{}:/proc/no-such-dir/f", host.display());
    let o = run(&["vm-run", "--copy-in", &spec, "--", "true"]);
    std::fs::remove_file(&host).unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the guest could not write /proc/no-such-dir/f"),
        "{}",
        stderr(&o)
    );
    // The status line names the code vm-run returns, and the command's own beside it.
    assert!(
        stderr(&o).contains("vm-run: fail (exit 2; the command exited 0) |"),
        "{}",
        stderr(&o)
    );
    assert_qemu_gone(&result_of(&o).1);
}

/// `--copy-in` of a directory: its files with their modes, under parent directories it makes;
/// a symbolic link inside is skipped and said.
#[test]
fn copy_in_takes_a_directory_and_makes_its_parents() {
    use std::os::unix::fs::PermissionsExt;
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tree = std::env::temp_dir().join(format!("xtask-tree-{}", std::process::id()));
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(tree.join("sub/b.txt"), "beta\n").unwrap();
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
    let spec = format!("{}:/opt/deep/tree", tree.display());
    let script =
        "cd /opt/deep/tree && find . -type f | sort && cat sub/b.txt && ./run.sh && ! test -e link";
    let o = run(&["vm-run", "--copy-in", &spec, "--", "sh", "-c", script]);
    std::fs::remove_dir_all(&tree).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out, "./a.txt\n./run.sh\n./sub/b.txt\nbeta\nran\n");
    assert!(
        stderr(&o).contains("link (not a regular file or directory)"),
        "{}",
        stderr(&o)
    );
}

/// A splat the command leaves is printed and recorded; `--fail-on-splat` fails the run, and
/// `--expect-splat` accepts a known one.
#[test]
fn vm_run_says_what_the_kernel_said() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let warn = "echo 'WARNING: CPU: 0 PID: 1 at fixture/vmrun.c:1 vm_run_fixture' > /dev/kmsg";
    let o = run(&["vm-run", "--", "sh", "-c", warn]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("kernel splat: ") && stderr(&o).contains("vm_run_fixture"),
        "{}",
        stderr(&o)
    );
    let (_, r) = result_of(&o);
    assert_eq!(r["splats"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["verdict"], "pass");
    let o = run(&["vm-run", "--fail-on-splat", "--", "sh", "-c", warn]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(result_of(&o).1["verdict"], "fail");
    assert!(
        stderr(&o).contains("vm-run: fail (exit 1; the command exited 0)"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "vm-run",
        "--fail-on-splat",
        "--expect-splat",
        "vm_run_fixture",
        "--",
        "sh",
        "-c",
        warn,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(result_of(&o).1["splats"].as_array().unwrap().len(), 0);
}

/// vm-reset kills a VM whose xtask is gone and leaves a running xtask's VM alone.
#[test]
fn vm_reset_takes_only_what_is_orphaned() {
    use std::os::unix::process::CommandExt;
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let since = std::time::SystemTime::now();
    let live = spawn(&[
        "vm-run",
        "--name",
        "reset-live",
        "--",
        "sh",
        "-c",
        "echo live-vm-up; sleep 15; echo still-here",
    ]);
    wait_for_run(
        "reset-live",
        "agent-transcript.log",
        "live-vm-up",
        since,
        LIMIT,
    );
    // An orphan: a process group whose pid file names an owner that has exited.
    let mut orphan = Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_owner = gone.id();
    gone.wait().unwrap();
    let opid = orphan.id() as i32;
    let pf = serde_json::json!({
        "pid": opid, "start_ticks": start_ticks(opid), "run_dir": "/nonexistent/orphan-run",
        "sock_dir": std::env::temp_dir().join(format!("xtask-orphan-{opid}")),
        "owner_pid": dead_owner, "owner_start_ticks": 1,
    });
    std::fs::write(
        root().join(format!("target/vm-state/qemu-{opid}.json")),
        pf.to_string(),
    )
    .unwrap();
    let o = run(&["vm-reset"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains(&format!("killed orphaned QEMU pid {opid}")),
        "{out}"
    );
    assert!(
        out.contains("left QEMU pid") && out.contains("still runs it"),
        "{out}"
    );
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let o = finish(live, LIMIT);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the live VM was harmed: {}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("still-here"));
}

#[test]
fn damaged_cache_is_rebuilt_not_booted_and_rebuild_is_noop() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let initrd = built_initrd();
    let mtime = std::fs::metadata(&initrd).unwrap().modified().unwrap();
    // Unchanged inputs: nothing is rewritten.
    let o = run(&["vm-build"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::metadata(&initrd).unwrap().modified().unwrap(),
        mtime,
        "vm-build rewrote an unchanged image"
    );
    assert!(!stderr(&o).contains("damaged"));
    // Truncate the cached initramfs: detected by checksum and rebuilt.
    let len = std::fs::metadata(&initrd).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&initrd)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = run(&["vm-run", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("is damaged"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&initrd).unwrap().len(), len);
}

#[test]
fn bad_input_gets_one_clear_error() {
    // Bad flag values are usage errors: exit 2, as the README says, with clap's one message.
    let o = run(&["vm-run", "--memory", "lots", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("'--memory <MEMORY>': invalid size \"lots\""),
        "{}",
        stderr(&o)
    );
    let o = run(&["vm-run", "--copy-in", "/no/such/file", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/no/such/file: No such file"),
        "{}",
        stderr(&o)
    );
    let o = run(&["vm-run", "--kernel", "/no/such/tree", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no such file or directory"),
        "{}",
        stderr(&o)
    );
    let o = run(&["vm-run", "--cpus", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "clap usage errors exit 2");
    let o = run(&["vm-run"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Every file that reaches QEMU is verified: a hand-edited image manifest (QEMU's -append comes
/// from it) is rebuilt rather than booted, and a damaged base archive is reported and rebuilt
/// even when the image that contains it is cached.
#[test]
fn manifests_and_base_archive_are_verified_too() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let initrd = built_initrd();
    let manifest = initrd.with_file_name("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("panic=-1"), "{text}");
    std::fs::write(&manifest, text.replace("panic=-1", "panic=,1")).unwrap();
    let o = run(&["vm-run", "--", "true"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is damaged (its command line"),
        "{}",
        stderr(&o)
    );
    let (dir, _) = result_of(&o);
    let booted = std::fs::read_to_string(dir.join("qemu-cmdline.txt")).unwrap();
    assert!(
        booted.contains("panic=-1") && !booted.contains("panic=,1"),
        "{booted}"
    );
    // The base archive (an input of the cached image), as vm-build names it.
    let o = run(&["vm-build"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let base = PathBuf::from(
        out.lines()
            .find_map(|l| l.trim().strip_prefix("base"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no base line in {out}")),
    );
    let len = base.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let o = run(&["vm-build"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("base archive") && stderr(&o).contains("is damaged"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        base.metadata().unwrap().len(),
        len,
        "the base archive was not rebuilt"
    );
}

/// `--kernel PATH` with an installed tree (boot/vmlinuz-<release> + lib/modules/<release>), here
/// the locked Debian package unpacked by hand, as a kernel developer's INSTALL_PATH would be.
#[test]
fn kernel_path_provider_boots_an_installed_tree() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Make sure the default image (and so the downloaded .deb) exists.
    let o = run(&["vm-build"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The locked .deb, from the download cache every checkout shares (by its sha256).
    let dir = run(&["cache", "dir"]);
    let cache = PathBuf::from(String::from_utf8_lossy(&dir.stdout).trim());
    let lock = std::fs::read_to_string(root().join("vm-images/kernel.lock")).unwrap();
    let sha = lock
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .unwrap();
    let deb = cache.join("debs").join(format!("{sha}.deb"));
    assert!(
        deb.is_file(),
        "the locked .deb is not in {}",
        cache.display()
    );
    let tree = std::env::temp_dir().join(format!("xtask-kernel-tree-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tree);
    let x = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    let o = run(&[
        "vm-run",
        "--kernel",
        tree.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "uname -r; test -c /dev/ublk-control && ls /lib/modules/$(uname -r)/kernel/drivers/block/",
    ]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(
        out.starts_with("6.12.") && out.contains("ublk_drv.ko"),
        "{out}"
    );
    assert!(
        stderr(&o).contains("(path, vmlinux)"),
        "not booted from the path provider: {}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&tree).unwrap();
}

/// The guest tools layer: fio (dynamically linked, with its library closure) runs in the guest
/// on a brd disk with verification (a run that does not ask gets no disk: checked in
/// `runs_a_command_in_a_612_guest_and_records_the_run`); an
/// unknown program is one clear error; a layer damaged in place (same size) is rebuilt, never
/// attached.
#[test]
fn tools_layer_runs_fio_only_when_asked_and_is_rebuilt_when_damaged() {
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let apt_before = etc_apt_digest();
    let o = run(&["vm-run", "--tools", "fio,stress-ng", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no program \"stress-ng\"") && e.contains("tools-lock --upgrade"),
        "{e}"
    );
    let fio = "modprobe brd rd_nr=1 rd_size=32768 && fio --name=t --filename=/dev/ram0 \
        --rw=randwrite --bs=4k --size=16M --ioengine=io_uring --iodepth=8 --direct=1 \
        --verify=crc32c --output-format=terse --terse-version=3 | cut -d';' -f2 && readlink /bin/sh";
    let o = run(&["vm-run", "--tools", "fio", "--", "sh", "-c", fio]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("fio-3.") && out.contains("/tools/usr/bin/bash"),
        "{out}"
    );
    let (dir, r) = result_of(&o);
    let packages = r["tools"].as_array().unwrap();
    assert!(
        packages
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("fio=")),
        "{r}"
    );
    let cmdline = std::fs::read_to_string(dir.join("qemu-cmdline.txt")).unwrap();
    let img = cmdline
        .split(['=', ','])
        .find(|w| w.ends_with("/tools.img"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no tools disk in {cmdline}"));
    // One byte flipped in the middle of the image: same size, so only its sha256 can tell.
    let mut bytes = std::fs::read(&img).unwrap();
    let (len, mid) = (bytes.len(), bytes.len() / 2);
    bytes[mid] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let o = run(&[
        "vm-run",
        "--tools",
        "bash",
        "--",
        "bash",
        "-c",
        "echo $BASH_VERSION",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cached tools layer") && e.contains("is damaged"),
        "{e}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("5."));
    let rebuilt = std::fs::read(&img).unwrap();
    assert_eq!(rebuilt.len(), len);
    assert_ne!(rebuilt[mid], bytes[mid], "the damaged image was kept");
    assert_eq!(etc_apt_digest(), apt_before, "/etc/apt was changed");
}

/// A lock naming a version no source carries any more (the real host archive; the snapshot
/// archive pointed at a closed port): the newest 6.12 Debian has today is used with one
/// warning naming both versions and the upgrade command; with --locked, one error and exit
/// 125 (the recipe is a copy, pointed at by UBLK_VM_RECIPE, so the checkout is untouched).
#[test]
fn a_lock_whose_package_left_the_archive_falls_back_or_refuses() {
    let tmp = std::env::temp_dir().join(format!("xtask-gone-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let images = root().join("vm-images");
    for f in ["recipe.yaml", "init", "kernel-7.2.lock", "tools.lock"] {
        std::fs::copy(images.join(f), tmp.join(f)).unwrap();
    }
    let lock = std::fs::read_to_string(images.join("kernel.lock")).unwrap();
    let field = |k: &str| {
        lock.lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .unwrap()
            .to_string()
    };
    let (version, package) = (field("version: "), field("package: "));
    let gone = format!("{version}~gone1");
    // A new version with new content (the cache is keyed by content: an old sha256 would be
    // found there and never fetched), and no snapshot address.
    let lock: String = lock
        .replace(&version, &gone)
        .replace(&field("sha256: "), &"0".repeat(64))
        .lines()
        .filter(|l| !l.trim_start().starts_with("sha1: "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tmp.join("kernel.lock"), lock).unwrap();
    let build = |locked: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["cache", "fetch", "--kernel", "debian-6.12", "--no-tools"])
            .args(locked)
            .env("UBLK_VM_RECIPE", tmp.join("recipe.yaml"))
            .env("UBLK_VM_SNAPSHOT_URL", "http://127.0.0.1:1")
            .env_remove("UBLK_VM_LOCKED")
            .output()
            .unwrap()
    };
    let o = build(&["--locked"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(125), "{e}");
    let line = e
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{e}"));
    assert!(
        line.contains(&format!("{package}={gone} (locked in"))
            && line.contains("--locked forbids")
            && line.contains("run `cargo xtask kernel-lock --upgrade debian-6.12`"),
        "{line}"
    );
    let o = build(&[]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    // The newest 6.12 build is whatever Debian has today: the locked version while it lasts,
    // a newer 6.12.N (another package name: the ABI is in it) once superseded. Either way one
    // warning names the lock, both versions and the upgrade command.
    let prefix = format!(
        "warning: kernel debian-6.12: 1 of 1 packages newer than {}/kernel.lock (",
        tmp.display()
    );
    let warnings: Vec<&str> = e.lines().filter(|l| l.contains(&prefix)).collect();
    assert_eq!(warnings.len(), 1, "{e}");
    let (old, new) = warnings[0]
        .split_once(&prefix)
        .and_then(|(_, r)| r.split_once(" → "))
        .unwrap_or_else(|| panic!("{e}"));
    assert!(old.starts_with(&package) && old.ends_with(&gone), "{e}");
    let patch = |v: &str| -> u32 {
        let at = v
            .find("6.12.")
            .unwrap_or_else(|| panic!("no 6.12.N in {v:?}: {e}"))
            + 5;
        v[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        patch(new) >= patch(&version),
        "{new} is older than the lock's {version}: {e}"
    );
    assert!(
        warnings[0].ends_with("run cargo xtask kernel-lock --upgrade debian-6.12"),
        "{e}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
