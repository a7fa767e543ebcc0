//! User recovery: a device that outlives its server.
//!
//! ```text
//!  add --recoverable MODE ─► LIVE ──(server killed: /dev/ublkcN released)──► QUIESCED | FAIL_IO
//!        (store: a file          │                                              │
//!         under STORE_DIR)       └─ quiesce (QUIESCE_DEV): idle tags aborted,   │
//!                                   the server commits what it holds and exits ─┘
//!  recover --id N: START_USER_RECOVERY (EBUSY until the kernel is done with the old server,
//!     retried within RECOVER_LIMIT) → re-open the store → every queue fetches every tag →
//!     END_USER_RECOVERY → LIVE (requests that waited are issued to the new server)
//! ```
//!
//! Modes (ADD_DEV flags): `reissue` (USER_RECOVERY|REISSUE: requests the dead server held are
//! issued again, so a write may reach the store twice), `requeue` (USER_RECOVERY: new requests
//! wait for the next server, the ones the dead server held fail), `fail-io`
//! (USER_RECOVERY|FAIL_IO, kernels ≥ 6.13: every request fails while no server runs).
//! The store lives in a file the next process re-opens; a clean SIGTERM shutdown deletes the
//! device and its store, a crash or a quiesce leaves both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::ctrl::{self, Control};
use crate::server::{CopyChoice, IoChoice, Options, SchedChoice};
use crate::sys;

/// Where recoverable devices keep their stores (tmpfs: memory, like the memfd of a plain add).
pub const STORE_DIR: &str = "/dev/shm/ublk-mem";
/// How long `recover` waits for the kernel to let go of the old server, per control command
/// too: on 6.12, a queue whose every tag the dead server held is aborted only by the block
/// layer's request timeout, and the device's mutex (GET_PARAMS, START_USER_RECOVERY) waits
/// for that.
pub const RECOVER_LIMIT: Duration = Duration::from_secs(60);
/// The request timeout a recoverable device gets (/sys/block/ublkbN/queue/io_timeout; the
/// kernel's default is 30 s). The driver only acts on it when the server is dead (a live
/// server's request just restarts the timer), so it bounds how long a crash with every tag of
/// a queue in flight leaves the device wedged on 6.12.
pub const IO_TIMEOUT_MS: u32 = 3000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Reissue,
    Requeue,
    FailIo,
}

impl Mode {
    pub const NAMES: [&'static str; 3] = ["reissue", "requeue", "fail-io"];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Reissue => "reissue",
            Mode::Requeue => "requeue",
            Mode::FailIo => "fail-io",
        }
    }

    /// The ADD_DEV flags for this mode on a driver with `features` (QUIESCE too when offered,
    /// for planned upgrades).
    pub fn flags(self, features: u64) -> Result<u64, String> {
        let extra = match self {
            Mode::Reissue => sys::UBLK_F_USER_RECOVERY_REISSUE,
            Mode::Requeue => 0,
            Mode::FailIo => sys::UBLK_F_USER_RECOVERY_FAIL_IO,
        };
        let need = sys::UBLK_F_USER_RECOVERY | extra;
        if features & need != need {
            return Err(format!(
                "--recoverable {}: this kernel's ublk driver does not offer {} (it offers: {})",
                self.name(),
                sys::feature_names(need & !features).join(" "),
                sys::feature_names(features).join(" ")
            ));
        }
        Ok(need | features & sys::UBLK_F_QUIESCE)
    }

    /// The mode a device was added with, from its flags (None: not recoverable).
    pub fn of_flags(flags: u64) -> Option<Mode> {
        if flags & sys::UBLK_F_USER_RECOVERY == 0 {
            None
        } else if flags & sys::UBLK_F_USER_RECOVERY_FAIL_IO != 0 {
            Some(Mode::FailIo)
        } else if flags & sys::UBLK_F_USER_RECOVERY_REISSUE != 0 {
            Some(Mode::Reissue)
        } else {
            Some(Mode::Requeue)
        }
    }
}

pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "reissue" => Ok(Mode::Reissue),
        "requeue" => Ok(Mode::Requeue),
        "fail-io" => Ok(Mode::FailIo),
        _ => Err(format!("{s:?}: expected {}", Mode::NAMES.join(", "))),
    }
}

/// The store of device `dev_id`.
pub fn store_path(dev_id: u32) -> PathBuf {
    PathBuf::from(format!("{STORE_DIR}/{dev_id}.store"))
}

/// Where a new store is created before the kernel has given the device its id.
pub fn new_store_path() -> Result<PathBuf, String> {
    std::fs::create_dir_all(STORE_DIR).map_err(|e| format!("create {STORE_DIR}: {e}"))?;
    Ok(PathBuf::from(format!(
        "{STORE_DIR}/new-{}.store",
        std::process::id()
    )))
}

/// What `ublk-mem recover` is told; everything else comes from the kernel.
#[derive(Clone, Debug)]
pub struct RecoverOptions {
    pub id: u32,
    pub trace: Option<PathBuf>,
    pub state_file: Option<PathBuf>,
    pub json: bool,
    pub sched: SchedChoice,
}

/// The options of the device being recovered, as the kernel knows it (GET_DEV_INFO,
/// GET_PARAMS): a device that was not added recoverable is refused with the reason.
pub fn device_options(
    ctl: &mut Control,
    r: &RecoverOptions,
) -> Result<(sys::ublksrv_ctrl_dev_info, Options), String> {
    let id = r.id;
    let info = ctl.get_dev_info(id).map_err(|e| e.to_string())?;
    let Some(mode) = Mode::of_flags(info.flags) else {
        return Err(format!(
            "device {id} was not added with --recoverable (its flags: {}): it cannot be recovered",
            sys::feature_names(info.flags).join(" ")
        ));
    };
    let p = ctl.get_params(id).map_err(|e| e.to_string())?;
    let opts = Options {
        size: p.basic.dev_sectors * 512,
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        block_size: 1 << p.basic.logical_bs_shift,
        max_io_bytes: p.basic.max_sectors * 512,
        id: Some(id),
        trace: r.trace.clone(),
        state_file: r.state_file.clone(),
        json: r.json,
        fault: None,
        copy_mode: match info.flags & sys::UBLK_F_USER_COPY {
            0 => CopyChoice::Buffer,
            _ => CopyChoice::User,
        },
        // The device's own mode: a taken-over device keeps the commands it was added with.
        io_mode: match info.flags & sys::UBLK_F_BATCH_IO {
            0 => IoChoice::PerTag,
            _ => IoChoice::Batch,
        },
        sched: r.sched,
        recovery: Some(mode),
    };
    opts.validate()
        .map_err(|e| format!("device {id} as the kernel reports it: {e}"))?;
    Ok((info, opts))
}

/// START_USER_RECOVERY, retried while the kernel is still busy with the old server.
pub fn start(ctl: &mut Control, dev_id: u32, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut told = false;
    loop {
        match ctl.start_user_recovery(dev_id) {
            Ok(()) => return Ok(()),
            Err(ctrl::Error::Busy { .. }) if Instant::now() < deadline => {
                if !told {
                    eprintln!("ublk-mem: device {dev_id}: waiting for the kernel to let go of the old server");
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(ctrl::Error::Busy { .. }) => {
                let state = ctl.get_dev_info(dev_id).map(|i| state_name(i.state));
                return Err(format!(
                    "device {dev_id}: START_USER_RECOVERY still busy after {} s (device state: {}): is its old server still running?",
                    limit.as_secs(),
                    state.unwrap_or("unknown")
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// `ublk-mem quiesce --id N`: a planned server replacement. The running server finishes what
/// it holds and exits, leaving the device and its store for `ublk-mem recover`; requests wait.
pub fn quiesce(dev_id: u32, wait: Duration) -> Result<(), String> {
    let mut ctl = Control::open(wait + ctrl::DEFAULT_TIMEOUT).map_err(|e| e.to_string())?;
    let info = ctl.get_dev_info(dev_id).map_err(|e| e.to_string())?;
    if info.flags & sys::UBLK_F_QUIESCE == 0 {
        return Err(format!(
            "device {dev_id} has no QUIESCE flag: add it with --recoverable on a kernel that offers QUIESCE (this one offers: {})",
            sys::feature_names(ctl.features).join(" ")
        ));
    }
    ctl.quiesce_dev(dev_id, wait.as_millis() as u64)
        .map_err(|e| match e {
            ctrl::Error::Busy { .. } => format!(
                "device {dev_id}: QUIESCE_DEV: every tag stayed busy for {} ms (the server holds them all)",
                wait.as_millis()
            ),
            e => e.to_string(),
        })?;
    println!(
        "quiesced ublk{dev_id}: its server exits; `ublk-mem recover --id {dev_id}` takes over"
    );
    Ok(())
}

/// Sets [`IO_TIMEOUT_MS`] on a recoverable device (a warning, not an error, if it cannot).
pub fn shorten_io_timeout(dev_id: u32) {
    let path = format!("/sys/block/ublkb{dev_id}/queue/io_timeout");
    if let Err(e) = std::fs::write(&path, IO_TIMEOUT_MS.to_string()) {
        eprintln!("ublk-mem: warning: {path}: {e}: after a crash, recovery may wait for the kernel's default request timeout");
    }
}

pub fn state_name(state: u16) -> &'static str {
    match state {
        sys::UBLK_S_DEV_LIVE => "live",
        sys::UBLK_S_DEV_QUIESCED => "quiesced",
        sys::UBLK_S_DEV_FAIL_IO => "fail-io",
        _ => "dead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_ask_for_what_the_kernel_offers_and_read_back_from_flags() {
        let f612 = 0x1fe; // 6.12: USER_RECOVERY and REISSUE, no FAIL_IO, no QUIESCE
        let r = Mode::Reissue.flags(f612).unwrap();
        assert_eq!(
            r,
            sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE
        );
        assert_eq!(Mode::of_flags(r), Some(Mode::Reissue));
        let e = Mode::FailIo.flags(f612).unwrap_err();
        assert!(e.contains("does not offer USER_RECOVERY_FAIL_IO"), "{e}");
        let newer = f612 | sys::UBLK_F_USER_RECOVERY_FAIL_IO | sys::UBLK_F_QUIESCE;
        let q = Mode::Requeue.flags(newer).unwrap();
        assert_eq!(q, sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_QUIESCE);
        assert_eq!(Mode::of_flags(q), Some(Mode::Requeue));
        let fio = Mode::FailIo.flags(newer).unwrap();
        assert_eq!(Mode::of_flags(fio), Some(Mode::FailIo));
        assert_eq!(Mode::of_flags(sys::UBLK_F_USER_COPY), None);
        for n in Mode::NAMES {
            assert_eq!(parse_mode(n).unwrap().name(), n);
        }
        assert!(parse_mode("retry")
            .unwrap_err()
            .contains("reissue, requeue, fail-io"));
        assert_eq!(store_path(7), PathBuf::from("/dev/shm/ublk-mem/7.store"));
    }
}
