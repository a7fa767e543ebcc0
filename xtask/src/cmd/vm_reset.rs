//! `cargo xtask vm-reset`: kill VMs a crashed xtask left running and clear its stale state —
//! only what is orphaned. A VM is orphaned when the xtask that started it (its pid file names
//! the owner by pid + start time) is gone; a running xtask's VMs and half-built cache entries
//! are left alone. Then the image is verified.

use crate::host::procs::same_process;
use crate::image;
use crate::image::kernel::Source;
use crate::util::Result;
use crate::vm::qemu::PidFile;

pub fn run() -> Result<i32> {
    let vms = reap_orphaned_vms();
    let tmp = remove_orphaned_builds();
    println!(
        "vm-reset: {} orphaned VM(s) killed, {} stale state file(s) removed, {} live VM(s) of running xtasks left alone, {tmp} half-built cache entr(ies) removed",
        vms.killed, vms.stale, vms.live
    );
    let img = image::build(&Source::default_debian())?;
    println!("vm-reset: verified {}", image::describe(&img));
    Ok(0)
}

#[derive(Default)]
struct Reaped {
    killed: u32,
    stale: u32,
    live: u32,
}

fn reap_orphaned_vms() -> Reaped {
    let mut r = Reaped::default();
    for (path, pf) in PidFile::load_all() {
        let Some(pf) = pf else {
            let _ = std::fs::remove_file(&path);
            r.stale += 1;
            continue;
        };
        let running = same_process(pf.pid, pf.start_ticks) && !is_zombie(pf.pid);
        if running && !pf.orphaned() {
            println!(
                "vm-reset: left QEMU pid {} alone: xtask pid {} still runs it (run {})",
                pf.pid,
                pf.owner_pid,
                pf.run_dir.display()
            );
            r.live += 1;
            continue;
        }
        if running {
            // QEMU leads its own process group: kill the group.
            // SAFETY: kill(2) on a process identified by pid + start time, whose owner is gone.
            unsafe { libc::kill(-pf.pid, libc::SIGKILL) };
            println!(
                "vm-reset: killed orphaned QEMU pid {} (run {})",
                pf.pid,
                pf.run_dir.display()
            );
            r.killed += 1;
        } else {
            r.stale += 1;
        }
        pf.remove();
    }
    r
}

/// `.tmp-<key>-<pid>` build directories whose building xtask is gone.
fn remove_orphaned_builds() -> u32 {
    let mut removed = 0;
    for sub in ["kernels", "images"] {
        let Ok(rd) = std::fs::read_dir(crate::image::store::dir().join(sub)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".tmp-") else {
                continue;
            };
            let builder = rest.rsplit('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive =
                builder.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive && std::fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
