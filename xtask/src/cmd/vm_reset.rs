//! `cargo xtask vm-reset`: kill VMs this project left running (found by pid file, checked by
//! start time so a recycled pid is never touched), clear stale state, re-verify the image.

use crate::image;
use crate::kernel::Source;
use crate::procs::same_process;
use crate::qemu::PidFile;
use crate::util::Result;

pub fn run() -> Result<i32> {
    let mut killed = 0;
    let mut stale = 0;
    for (path, pf) in PidFile::load_all() {
        match pf {
            Some(pf) if same_process(pf.pid, pf.start_ticks) && !is_zombie(pf.pid) => {
                // QEMU leads its own process group: kill the group.
                // SAFETY: kill(2) on a process we started and identified by pid + start time.
                unsafe { libc::kill(-pf.pid, libc::SIGKILL) };
                println!(
                    "vm-reset: killed QEMU pid {} (run {})",
                    pf.pid,
                    pf.run_dir.display()
                );
                killed += 1;
                pf.remove();
            }
            Some(pf) => {
                pf.remove();
                stale += 1;
            }
            None => {
                let _ = std::fs::remove_file(&path);
                stale += 1;
            }
        }
    }
    // Half-built cache entries from an interrupted build.
    for sub in ["kernels", "images"] {
        if let Ok(rd) = std::fs::read_dir(crate::store::dir().join(sub)) {
            for e in rd
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
                stale += 1;
            }
        }
    }
    println!("vm-reset: {killed} VM(s) killed, {stale} stale state file(s) removed");
    let img = image::build(&Source::Debian)?;
    println!("vm-reset: verified {}", image::describe(&img));
    Ok(0)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}
