//! The control device (/dev/ublk-control): io_uring URING_CMD with 128-byte SQEs, the
//! 32-byte `ublksrv_ctrl_cmd` in the SQE's command area. Every command is bounded by a
//! timeout (some kernels have hung ADD_DEV forever); a timed-out command poisons the ring and
//! its buffer is leaked on purpose, because the kernel may still write into it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::core::errno_name;
use crate::sys::{self, ublk_params, ublksrv_ctrl_cmd, ublksrv_ctrl_dev_info};

pub const CONTROL_PATH: &str = "/dev/ublk-control";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// /dev/ublk-control does not exist.
    NotLoaded,
    NotPermitted {
        cmd: &'static str,
    },
    NoDevice {
        id: u32,
    },
    Exists {
        id: u32,
    },
    Busy {
        id: u32,
    },
    Timeout {
        cmd: &'static str,
        after: Duration,
    },
    Kernel {
        cmd: &'static str,
        errno: i32,
    },
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotLoaded => write!(f, "{CONTROL_PATH} does not exist: the ublk_drv module is not loaded; run `modprobe ublk_drv` (as root)"),
            Error::NotPermitted { cmd } => write!(f, "{cmd}: not permitted; ublk devices need root (CAP_SYS_ADMIN)"),
            Error::NoDevice { id } => write!(f, "there is no ublk device with id {id} (see `ublk-mem list`)"),
            Error::Exists { id } => write!(f, "ublk device id {id} is already in use; pick another --id or omit it"),
            Error::Busy { id } => write!(f, "ublk device {id} is busy (still open or mounted?)"),
            Error::Timeout { cmd, after } => write!(f, "{cmd}: no answer from the kernel within {} s; the driver may be hung (see dmesg)", after.as_secs_f64()),
            Error::Kernel { cmd, errno } => write!(f, "{cmd}: the kernel answered -{} ({errno})", errno_name(*errno)),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Default bound on one control command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Control {
    file: File,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Use ioctl-encoded opcodes (the kernel reported UBLK_F_CMD_IOCTL_ENCODE).
    ioctl_encode: bool,
    /// Features reported by GET_FEATURES (0 if the kernel predates it).
    pub features: u64,
    timeout: Duration,
    poisoned: bool,
}

impl Control {
    /// Opens the control device and learns the kernel's features (and so the encoding).
    pub fn open(timeout: Duration) -> Result<Control> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => Error::NotLoaded,
                Some(libc::EACCES) | Some(libc::EPERM) => Error::NotPermitted {
                    cmd: "open /dev/ublk-control",
                },
                _ => Error::Other(format!("open {CONTROL_PATH}: {e}")),
            })?;
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(4).map_err(|e| Error::Other(format!("io_uring setup (SQE128) failed: {e}; ublk needs Linux >= 6.0 with io_uring enabled")))?;
        let mut c = Control {
            file,
            ring,
            ioctl_encode: true,
            features: 0,
            timeout,
            poisoned: false,
        };
        // GET_FEATURES exists only ioctl-encoded (6.5+). Older kernels reject it: legacy opcodes.
        let mut features = 0u64;
        match c.cmd(
            sys::UBLK_CMD_GET_FEATURES,
            "GET_FEATURES",
            u32::MAX,
            Some(as_bytes_mut(&mut features)),
            0,
        ) {
            Ok(_) => {
                c.features = features;
                c.ioctl_encode = features & sys::UBLK_F_CMD_IOCTL_ENCODE != 0;
            }
            Err(Error::Kernel { errno, .. })
                if errno == libc::EINVAL || errno == libc::EOPNOTSUPP || errno == libc::ENOTTY =>
            {
                c.ioctl_encode = false
            }
            Err(e) => return Err(e),
        }
        Ok(c)
    }

    pub fn ioctl_encode(&self) -> bool {
        self.ioctl_encode
    }

    /// Issues one command and waits (bounded) for its completion. Returns the CQE result.
    fn cmd(
        &mut self,
        nr: u32,
        name: &'static str,
        dev_id: u32,
        buf: Option<&mut [u8]>,
        data: u64,
    ) -> Result<i32> {
        self.cmd_q(nr, name, dev_id, u16::MAX, buf, data)
    }

    fn cmd_q(
        &mut self,
        nr: u32,
        name: &'static str,
        dev_id: u32,
        queue_id: u16,
        buf: Option<&mut [u8]>,
        data: u64,
    ) -> Result<i32> {
        if self.poisoned {
            return Err(Error::Other(format!(
                "{name}: the control ring is unusable after an earlier command timed out"
            )));
        }
        // The kernel reads/writes through this heap copy, which outlives a timeout (leaked).
        let mut heap: Vec<u8> = buf.as_ref().map(|b| b.to_vec()).unwrap_or_default();
        let cmd = ublksrv_ctrl_cmd {
            dev_id,
            queue_id,
            len: heap.len() as u16,
            addr: if heap.is_empty() {
                0
            } else {
                heap.as_mut_ptr() as u64
            },
            data: [data],
            ..Default::default()
        };
        let mut area = [0u8; 80];
        area[..32].copy_from_slice(as_bytes(&cmd));
        let op = if self.ioctl_encode || nr == sys::UBLK_CMD_GET_FEATURES {
            encode(nr)
        } else {
            nr
        };
        let sqe = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), op)
            .cmd(area)
            .build()
            .user_data(nr as u64);
        // SAFETY: the SQE points at `heap`, which stays alive until the completion (or forever).
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| Error::Other(format!("{name}: control submission queue full")))?;
        }
        let deadline = Instant::now() + self.timeout;
        let res = loop {
            if let Some(cqe) = self.ring.completion().next() {
                break cqe.result();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.poisoned = true;
                std::mem::forget(heap);
                return Err(Error::Timeout {
                    cmd: name,
                    after: self.timeout,
                });
            }
            if let Err(e) = crate::uring::enter_bounded(&self.ring.submitter(), left) {
                // The command may still be in the kernel: same rule as a timeout.
                self.poisoned = true;
                std::mem::forget(heap);
                return Err(Error::Other(format!("{name}: io_uring_enter: {e}")));
            }
        };
        if let Some(b) = buf {
            b.copy_from_slice(&heap);
        }
        if res < 0 {
            let errno = -res;
            return Err(match errno {
                libc::EPERM | libc::EACCES => Error::NotPermitted { cmd: name },
                libc::ENODEV if dev_id != u32::MAX => Error::NoDevice { id: dev_id },
                libc::EEXIST => Error::Exists { id: dev_id },
                libc::EBUSY => Error::Busy { id: dev_id },
                _ => Error::Kernel { cmd: name, errno },
            });
        }
        Ok(res)
    }

    /// ADD_DEV. `id` None lets the kernel choose. Returns the info as the kernel adjusted it
    /// (it may change flags, depth or buffer size: honour what it returns).
    pub fn add_dev(
        &mut self,
        id: Option<u32>,
        info: &ublksrv_ctrl_dev_info,
    ) -> Result<ublksrv_ctrl_dev_info> {
        let mut out = *info;
        out.dev_id = id.unwrap_or(u32::MAX);
        let dev_id = out.dev_id;
        self.cmd(
            sys::UBLK_CMD_ADD_DEV,
            "ADD_DEV",
            dev_id,
            Some(as_bytes_mut(&mut out)),
            0,
        )
        .map_err(|e| match (e, id) {
            (Error::NoDevice { .. }, None) => Error::Other("ADD_DEV: no free device id".into()),
            (e, _) => e,
        })?;
        Ok(out)
    }

    pub fn set_params(&mut self, dev_id: u32, params: &ublk_params) -> Result<()> {
        let mut p = *params;
        p.len = std::mem::size_of::<ublk_params>() as u32;
        self.cmd(
            sys::UBLK_CMD_SET_PARAMS,
            "SET_PARAMS",
            dev_id,
            Some(as_bytes_mut(&mut p)),
            0,
        )
        .map(|_| ())
    }

    pub fn get_params(&mut self, dev_id: u32) -> Result<ublk_params> {
        let mut p = ublk_params {
            len: std::mem::size_of::<ublk_params>() as u32,
            ..Default::default()
        };
        self.cmd(
            sys::UBLK_CMD_GET_PARAMS,
            "GET_PARAMS",
            dev_id,
            Some(as_bytes_mut(&mut p)),
            0,
        )?;
        Ok(p)
    }

    /// START_DEV: the kernel waits until every tag's FETCH_REQ has arrived, so call it only
    /// after every queue submitted its fetches (from the queue's own thread).
    pub fn start_dev(&mut self, dev_id: u32, pid: i32) -> Result<()> {
        self.cmd(
            sys::UBLK_CMD_START_DEV,
            "START_DEV",
            dev_id,
            None,
            pid as u64,
        )
        .map(|_| ())
    }

    pub fn stop_dev(&mut self, dev_id: u32) -> Result<()> {
        self.cmd(sys::UBLK_CMD_STOP_DEV, "STOP_DEV", dev_id, None, 0)
            .map(|_| ())
    }

    /// DEL_DEV blocks in the kernel while anything holds /dev/ublkcN: close it first.
    pub fn del_dev(&mut self, dev_id: u32) -> Result<()> {
        self.cmd(sys::UBLK_CMD_DEL_DEV, "DEL_DEV", dev_id, None, 0)
            .map(|_| ())
    }

    /// START_USER_RECOVERY: -EBUSY (`Error::Busy`) until the dead server's /dev/ublkcN is
    /// released and the device quiesced (or in FAIL_IO); the caller retries, bounded.
    pub fn start_user_recovery(&mut self, dev_id: u32) -> Result<()> {
        let nr = sys::UBLK_CMD_START_USER_RECOVERY;
        self.cmd(nr, "START_USER_RECOVERY", dev_id, None, 0)
            .map(|_| ())
    }

    /// END_USER_RECOVERY: like START_DEV, the kernel waits for every tag's FETCH_REQ.
    pub fn end_user_recovery(&mut self, dev_id: u32, pid: i32) -> Result<()> {
        let nr = sys::UBLK_CMD_END_USER_RECOVERY;
        self.cmd(nr, "END_USER_RECOVERY", dev_id, None, pid as u64)
            .map(|_| ())
    }

    /// QUIESCE_DEV (UBLK_F_QUIESCE): new requests wait, idle tags are aborted, the server
    /// finishes what it holds and exits; the kernel waits at most `wait_ms` for idle tags.
    /// The ring's own timeout must exceed it.
    pub fn quiesce_dev(&mut self, dev_id: u32, wait_ms: u64) -> Result<()> {
        assert!(wait_ms > 0, "0 means forever to the kernel");
        assert!(Duration::from_millis(wait_ms) < self.timeout);
        let nr = sys::UBLK_CMD_QUIESCE_DEV;
        self.cmd(nr, "QUIESCE_DEV", dev_id, None, wait_ms)
            .map(|_| ())
    }

    pub fn get_dev_info(&mut self, dev_id: u32) -> Result<ublksrv_ctrl_dev_info> {
        let mut info = ublksrv_ctrl_dev_info::default();
        self.cmd(
            sys::UBLK_CMD_GET_DEV_INFO,
            "GET_DEV_INFO",
            dev_id,
            Some(as_bytes_mut(&mut info)),
            0,
        )?;
        Ok(info)
    }

    /// CPUs the kernel maps queue `q_id` to.
    pub fn get_queue_affinity(&mut self, dev_id: u32, q_id: u16) -> Result<Vec<usize>> {
        let mut mask = [0u8; 128];
        self.cmd_q(
            sys::UBLK_CMD_GET_QUEUE_AFFINITY,
            "GET_QUEUE_AFFINITY",
            dev_id,
            q_id,
            Some(&mut mask),
            0,
        )?;
        Ok((0..mask.len() * 8)
            .filter(|cpu| mask[cpu / 8] & (1 << (cpu % 8)) != 0)
            .collect())
    }
}

/// `_IOR`/`_IOWR('u', nr, struct ublksrv_ctrl_cmd)` for a legacy number.
pub fn encode(nr: u32) -> u32 {
    match nr {
        sys::UBLK_CMD_GET_QUEUE_AFFINITY => sys::UBLK_U_CMD_GET_QUEUE_AFFINITY,
        sys::UBLK_CMD_GET_DEV_INFO => sys::UBLK_U_CMD_GET_DEV_INFO,
        sys::UBLK_CMD_ADD_DEV => sys::UBLK_U_CMD_ADD_DEV,
        sys::UBLK_CMD_DEL_DEV => sys::UBLK_U_CMD_DEL_DEV,
        sys::UBLK_CMD_START_DEV => sys::UBLK_U_CMD_START_DEV,
        sys::UBLK_CMD_STOP_DEV => sys::UBLK_U_CMD_STOP_DEV,
        sys::UBLK_CMD_SET_PARAMS => sys::UBLK_U_CMD_SET_PARAMS,
        sys::UBLK_CMD_GET_PARAMS => sys::UBLK_U_CMD_GET_PARAMS,
        sys::UBLK_CMD_GET_FEATURES => sys::UBLK_U_CMD_GET_FEATURES,
        sys::UBLK_CMD_GET_DEV_INFO2 => sys::UBLK_U_CMD_GET_DEV_INFO2,
        sys::UBLK_CMD_START_USER_RECOVERY => sys::UBLK_U_CMD_START_USER_RECOVERY,
        sys::UBLK_CMD_END_USER_RECOVERY => sys::UBLK_U_CMD_END_USER_RECOVERY,
        sys::UBLK_CMD_QUIESCE_DEV => sys::UBLK_U_CMD_QUIESCE_DEV,
        other => panic!("no ioctl encoding known for control command {other:#x}"),
    }
}

/// Ids of the ublk devices that exist (from /sys/class/ublk-char-dev or /dev/ublkc*).
pub fn list_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/dev")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("ublkc")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

pub(crate) fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain-old-data repr(C) ABI struct (all callers); reading its bytes is fine.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

pub(crate) fn as_bytes_mut<T: Copy>(v: &mut T) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is valid for these integer-only structs.
    unsafe { std::slice::from_raw_parts_mut(v as *mut T as *mut u8, std::mem::size_of::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_cover_every_command_used() {
        for nr in [1, 2, 4, 5, 6, 7, 8, 9, 0x12, 0x13] {
            let e = encode(nr);
            assert_eq!(e & 0xff, nr);
            assert_eq!((e >> 8) & 0xff, b'u' as u32);
            assert_eq!(
                (e >> 16) & 0x3fff,
                32,
                "size field is sizeof(ublksrv_ctrl_cmd)"
            );
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(Error::NotLoaded.to_string().contains("modprobe ublk_drv"));
        assert!(Error::NotPermitted { cmd: "ADD_DEV" }
            .to_string()
            .contains("root"));
        assert!(Error::NoDevice { id: 9 }
            .to_string()
            .contains("no ublk device with id 9"));
        assert!(Error::Kernel {
            cmd: "SET_PARAMS",
            errno: libc::EINVAL
        }
        .to_string()
        .contains("-EINVAL"));
        assert!(Error::Timeout {
            cmd: "ADD_DEV",
            after: Duration::from_secs(10)
        }
        .to_string()
        .contains("within 10 s"));
    }

    #[test]
    fn opening_reports_a_missing_driver_clearly() {
        // The host running the unit tests has no ublk_drv (the guest does): the error must say so.
        if std::path::Path::new(CONTROL_PATH).exists() {
            return; // covered by the VM tests instead
        }
        assert_eq!(Control::open(DEFAULT_TIMEOUT).err(), Some(Error::NotLoaded));
    }
}
