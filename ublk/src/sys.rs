//! The kernel ABI of ublk, mirrored from `include/uapi/linux/ublk_cmd.h` as of Linux 6.12
//! (copy in `abi/ublk_cmd.h`; the tests below parse it and compare every constant and size).

#![allow(non_camel_case_types)]

// ---- control commands (legacy opcodes) ----
pub const UBLK_CMD_GET_QUEUE_AFFINITY: u32 = 0x01;
pub const UBLK_CMD_GET_DEV_INFO: u32 = 0x02;
pub const UBLK_CMD_ADD_DEV: u32 = 0x04;
pub const UBLK_CMD_DEL_DEV: u32 = 0x05;
pub const UBLK_CMD_START_DEV: u32 = 0x06;
pub const UBLK_CMD_STOP_DEV: u32 = 0x07;
pub const UBLK_CMD_SET_PARAMS: u32 = 0x08;
pub const UBLK_CMD_GET_PARAMS: u32 = 0x09;
pub const UBLK_CMD_START_USER_RECOVERY: u32 = 0x10;
pub const UBLK_CMD_END_USER_RECOVERY: u32 = 0x11;
pub const UBLK_CMD_GET_DEV_INFO2: u32 = 0x12;
/// Only exists ioctl-encoded (UBLK_U_CMD_GET_FEATURES).
pub const UBLK_CMD_GET_FEATURES: u32 = 0x13;
pub const UBLK_CMD_DEL_DEV_ASYNC: u32 = 0x14;
/// Newer than 6.12's header (only ioctl-encoded, like GET_FEATURES): checked against 7.2's.
pub const UBLK_CMD_QUIESCE_DEV: u32 = 0x16;

// ---- I/O commands (legacy opcodes) ----
pub const UBLK_IO_FETCH_REQ: u32 = 0x20;
pub const UBLK_IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
pub const UBLK_IO_NEED_GET_DATA: u32 = 0x22;

pub const UBLK_IO_RES_OK: i32 = 0;
pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;
/// Only ABORT means "do not re-fetch" (the device is going away).
pub const UBLK_IO_RES_ABORT: i32 = -libc::ENODEV;

pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
pub const UBLKSRV_IO_BUF_OFFSET: u64 = 0x8000_0000;
pub const UBLK_MAX_QUEUE_DEPTH: u32 = 4096;
pub const UBLK_IO_BUF_BITS: u32 = 25;
pub const UBLK_TAG_BITS: u32 = 16;
pub const UBLK_TAG_OFF: u32 = UBLK_IO_BUF_BITS;
pub const UBLK_QID_OFF: u32 = UBLK_TAG_OFF + UBLK_TAG_BITS;
pub const UBLK_QID_BITS: u32 = 12;
pub const UBLK_MAX_NR_QUEUES: u32 = 1 << UBLK_QID_BITS;
pub const UBLK_FEATURES_LEN: u32 = 8;

/// USER_COPY: where a request's data is in /dev/ublkcN (pread/pwrite at this offset plus the
/// offset inside the request).
pub fn user_copy_pos(q_id: u16, tag: u16) -> u64 {
    UBLKSRV_IO_BUF_OFFSET + ((q_id as u64) << UBLK_QID_OFF | (tag as u64) << UBLK_TAG_OFF)
}

// ---- feature / device flags ----
pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_USER_COPY: u64 = 1 << 7;
pub const UBLK_F_ZONED: u64 = 1 << 8;
// Feature bits of kernels after 6.12, checked against `abi/ublk_cmd-7.2.h` (Linux 7.2). This
// crate serves with 6.12's protocol; these only name what a newer kernel reports.
pub const UBLK_F_USER_RECOVERY_FAIL_IO: u64 = 1 << 9;
pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;
pub const UBLK_F_QUIESCE: u64 = 1 << 12;
pub const UBLK_F_PER_IO_DAEMON: u64 = 1 << 13;
pub const UBLK_F_BUF_REG_OFF_DAEMON: u64 = 1 << 14;
pub const UBLK_F_BATCH_IO: u64 = 1 << 15;
pub const UBLK_F_INTEGRITY: u64 = 1 << 16;
pub const UBLK_F_SAFE_STOP_DEV: u64 = 1 << 17;
pub const UBLK_F_NO_AUTO_PART_SCAN: u64 = 1 << 18;
pub const UBLK_F_SHMEM_ZC: u64 = 1 << 19;

// ---- device states ----
pub const UBLK_S_DEV_DEAD: u16 = 0;
pub const UBLK_S_DEV_LIVE: u16 = 1;
pub const UBLK_S_DEV_QUIESCED: u16 = 2;
/// With USER_RECOVERY_FAIL_IO, while no server runs (7.2's header).
pub const UBLK_S_DEV_FAIL_IO: u16 = 3;

// ---- I/O ops and flags (ublksrv_io_desc.op_flags: op in bits 0-7, flags above) ----
pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;
pub const UBLK_IO_OP_FLUSH: u8 = 2;
pub const UBLK_IO_OP_DISCARD: u8 = 3;
pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
pub const UBLK_IO_OP_ZONE_OPEN: u8 = 10;
pub const UBLK_IO_OP_ZONE_CLOSE: u8 = 11;
pub const UBLK_IO_OP_ZONE_FINISH: u8 = 12;
pub const UBLK_IO_OP_ZONE_APPEND: u8 = 13;
pub const UBLK_IO_OP_ZONE_RESET_ALL: u8 = 14;
pub const UBLK_IO_OP_ZONE_RESET: u8 = 15;
pub const UBLK_IO_OP_REPORT_ZONES: u8 = 18;

pub const UBLK_IO_F_FAILFAST_DEV: u32 = 1 << 8;
pub const UBLK_IO_F_FAILFAST_TRANSPORT: u32 = 1 << 9;
pub const UBLK_IO_F_FAILFAST_DRIVER: u32 = 1 << 10;
pub const UBLK_IO_F_META: u32 = 1 << 11;
pub const UBLK_IO_F_FUA: u32 = 1 << 13;
pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;
pub const UBLK_IO_F_SWAP: u32 = 1 << 16;

// ---- parameters ----
pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const UBLK_ATTR_FUA: u32 = 1 << 3;

pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;

/// Shipped in the SQE's command area of a control URING_CMD.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_ctrl_cmd {
    pub dev_id: u32,
    /// -1 (0xffff) when the command is not for one queue.
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_ctrl_dev_info {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// One per tag in the mmapped descriptor area, written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_io_desc {
    pub op_flags: u32,
    /// Sectors are always 512 bytes here, whatever the logical block size.
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl ublksrv_io_desc {
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
    pub fn flags(&self) -> u32 {
        self.op_flags >> 8
    }
}

/// Shipped in the SQE's command area of an I/O URING_CMD on /dev/ublkcN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublksrv_io_cmd {
    pub q_id: u16,
    pub tag: u16,
    pub result: i32,
    pub addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_basic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_discard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_devt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_param_zoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_params {
    pub len: u32,
    pub types: u32,
    pub basic: ublk_param_basic,
    pub discard: ublk_param_discard,
    pub devt: ublk_param_devt,
    pub zoned: ublk_param_zoned,
}

// ---- ioctl encoding (asm-generic/ioctl.h) ----
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}

const CTRL: usize = std::mem::size_of::<ublksrv_ctrl_cmd>();
const IO: usize = std::mem::size_of::<ublksrv_io_cmd>();

pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ioc(IOC_READ, UBLK_CMD_GET_QUEUE_AFFINITY, CTRL);
pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ioc(IOC_READ, UBLK_CMD_GET_DEV_INFO, CTRL);
pub const UBLK_U_CMD_ADD_DEV: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_ADD_DEV, CTRL);
pub const UBLK_U_CMD_DEL_DEV: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_DEL_DEV, CTRL);
pub const UBLK_U_CMD_START_DEV: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_START_DEV, CTRL);
pub const UBLK_U_CMD_STOP_DEV: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_STOP_DEV, CTRL);
pub const UBLK_U_CMD_SET_PARAMS: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_SET_PARAMS, CTRL);
pub const UBLK_U_CMD_GET_PARAMS: u32 = ioc(IOC_READ, UBLK_CMD_GET_PARAMS, CTRL);
pub const UBLK_U_CMD_GET_FEATURES: u32 = ioc(IOC_READ, UBLK_CMD_GET_FEATURES, CTRL);
pub const UBLK_U_CMD_GET_DEV_INFO2: u32 = ioc(IOC_READ, UBLK_CMD_GET_DEV_INFO2, CTRL);
pub const UBLK_U_CMD_START_USER_RECOVERY: u32 =
    ioc(IOC_READ | IOC_WRITE, UBLK_CMD_START_USER_RECOVERY, CTRL);
pub const UBLK_U_CMD_END_USER_RECOVERY: u32 =
    ioc(IOC_READ | IOC_WRITE, UBLK_CMD_END_USER_RECOVERY, CTRL);
pub const UBLK_U_CMD_QUIESCE_DEV: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_CMD_QUIESCE_DEV, CTRL);
pub const UBLK_U_IO_FETCH_REQ: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_IO_FETCH_REQ, IO);
pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 =
    ioc(IOC_READ | IOC_WRITE, UBLK_IO_COMMIT_AND_FETCH_REQ, IO);

// ---- batched I/O (UBLK_F_BATCH_IO, Linux 7.x; checked against 7.2's header) ----
/// The legacy-style numbers of the batch commands (they only exist ioctl-encoded).
pub const UBLK_IO_PREP_IO_CMDS: u32 = 0x25;
pub const UBLK_IO_COMMIT_IO_CMDS: u32 = 0x26;
pub const UBLK_IO_FETCH_IO_CMDS: u32 = 0x27;
const BATCH: usize = std::mem::size_of::<ublk_batch_io>();
/// Hands the kernel a list of tags the server is ready to serve (the batch FETCH_REQ).
pub const UBLK_U_IO_PREP_IO_CMDS: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_IO_PREP_IO_CMDS, BATCH);
/// Commits a list of (tag, result); the tags are ready again at once (no re-fetch).
pub const UBLK_U_IO_COMMIT_IO_CMDS: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_IO_COMMIT_IO_CMDS, BATCH);
/// Multishot: each completion fills a provided buffer with the tags that got a request.
pub const UBLK_U_IO_FETCH_IO_CMDS: u32 = ioc(IOC_READ | IOC_WRITE, UBLK_IO_FETCH_IO_CMDS, BATCH);
/// `sqe->uring_cmd_flags` bit that makes a URING_CMD multishot (include/uapi/linux/io_uring.h).
pub const IORING_URING_CMD_MULTISHOT: u32 = 1 << 1;

/// The SQE command area of PREP/COMMIT/FETCH_IO_CMDS; the element list is at `sqe->addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_batch_io {
    pub q_id: u16,
    pub flags: u16,
    pub nr_elem: u16,
    /// 8 (this header alone: USER_COPY, zero copy) or more with the optional fields; 2 for FETCH.
    pub elem_bytes: u8,
    pub reserved: u8,
    pub reserved2: u64,
}

/// One element of a PREP/COMMIT_IO_CMDS list (without the optional buffer address / LBA).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ublk_elem_header {
    pub tag: u16,
    pub buf_index: u16,
    /// The request's result (bytes or -errno); COMMIT only.
    pub result: i32,
}

/// Byte offset in /dev/ublkcN of queue `q_id`'s descriptor area. The driver sizes every
/// queue's slot for the maximum depth, rounded to pages (ublk_ch_mmap / ublk_max_cmd_buf_size).
pub fn desc_offset(q_id: u16, page_size: usize) -> u64 {
    let max = (UBLK_MAX_QUEUE_DEPTH as usize * std::mem::size_of::<ublksrv_io_desc>())
        .div_ceil(page_size)
        * page_size;
    UBLKSRV_CMD_BUF_OFFSET + q_id as u64 * max as u64
}

/// Bytes to mmap for one queue's descriptors.
pub fn desc_len(depth: u16, page_size: usize) -> usize {
    (depth as usize * std::mem::size_of::<ublksrv_io_desc>()).div_ceil(page_size) * page_size
}

/// Every feature bit with its name (the header's UBLK_F_ name, shortened as shown).
pub const FEATURE_NAMES: [(u64, &str); 20] = [
    (UBLK_F_SUPPORT_ZERO_COPY, "ZERO_COPY"),
    (UBLK_F_URING_CMD_COMP_IN_TASK, "COMP_IN_TASK"),
    (UBLK_F_NEED_GET_DATA, "NEED_GET_DATA"),
    (UBLK_F_USER_RECOVERY, "USER_RECOVERY"),
    (UBLK_F_USER_RECOVERY_REISSUE, "USER_RECOVERY_REISSUE"),
    (UBLK_F_UNPRIVILEGED_DEV, "UNPRIVILEGED_DEV"),
    (UBLK_F_CMD_IOCTL_ENCODE, "CMD_IOCTL_ENCODE"),
    (UBLK_F_USER_COPY, "USER_COPY"),
    (UBLK_F_ZONED, "ZONED"),
    (UBLK_F_USER_RECOVERY_FAIL_IO, "USER_RECOVERY_FAIL_IO"),
    (UBLK_F_UPDATE_SIZE, "UPDATE_SIZE"),
    (UBLK_F_AUTO_BUF_REG, "AUTO_BUF_REG"),
    (UBLK_F_QUIESCE, "QUIESCE"),
    (UBLK_F_PER_IO_DAEMON, "PER_IO_DAEMON"),
    (UBLK_F_BUF_REG_OFF_DAEMON, "BUF_REG_OFF_DAEMON"),
    (UBLK_F_BATCH_IO, "BATCH_IO"),
    (UBLK_F_INTEGRITY, "INTEGRITY"),
    (UBLK_F_SAFE_STOP_DEV, "SAFE_STOP_DEV"),
    (UBLK_F_NO_AUTO_PART_SCAN, "NO_AUTO_PART_SCAN"),
    (UBLK_F_SHMEM_ZC, "SHMEM_ZC"),
];

/// Human names of feature bits, for `ublk-mem features` and error messages; a bit this crate
/// has no name for shows as BIT<n>.
pub fn feature_names(flags: u64) -> Vec<String> {
    let known: u64 = FEATURE_NAMES.iter().map(|(b, _)| b).fold(0, |a, b| a | b);
    let mut v: Vec<String> = FEATURE_NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    v.extend(
        (0..64)
            .filter(|b| flags & !known & (1 << b) != 0)
            .map(|b| format!("BIT{b}")),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    /// Every named feature bit is the header's: 6.12's for bits 0-8, 7.2's for the rest.
    #[test]
    fn feature_names_are_the_headers() {
        let newer = defines_of(include_str!("../abi/ublk_cmd-7.2.h"));
        for (bit, name) in FEATURE_NAMES {
            let found = newer
                .iter()
                .any(|(k, v)| *v == bit && k.starts_with("UBLK_F_") && k.ends_with(name));
            assert!(found, "{name} = {bit:#x} is not a UBLK_F_ bit of Linux 7.2");
        }
        assert_eq!(
            newer.get("UBLK_S_DEV_FAIL_IO"),
            Some(&(UBLK_S_DEV_FAIL_IO as u64))
        );
        // QUIESCE_DEV has no legacy number in the header: only `_IOWR('u', 0x16, ...)`.
        let text = include_str!("../abi/ublk_cmd-7.2.h");
        let at = text
            .find("#define UBLK_U_CMD_QUIESCE_DEV")
            .expect("7.2 has QUIESCE_DEV");
        let def = &text[at..at + 90];
        assert!(
            def.contains(&format!("_IOWR('u', {UBLK_CMD_QUIESCE_DEV:#x},")),
            "{def}"
        );
        assert_eq!(
            feature_names(UBLK_F_QUIESCE | 1 << 40),
            ["QUIESCE", "BIT40"]
        );
    }

    /// `#define NAME VALUE` pairs of the committed header whose value is a plain number or shift.
    fn header_defines() -> HashMap<String, u64> {
        defines_of(include_str!("../abi/ublk_cmd.h"))
    }

    fn defines_of(text: &str) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if it.next() != Some("#define") {
                continue;
            }
            let Some(name) = it.next() else { continue };
            let value: String = it.collect::<Vec<_>>().join(" ");
            let value = value.trim_start_matches('(').trim_end_matches(')');
            let parsed = if let Some((base, shift)) = value.split_once("<<") {
                let base = base
                    .trim()
                    .trim_end_matches("ULL")
                    .trim_end_matches("UL")
                    .trim_end_matches('U');
                let shift = shift.trim().trim_end_matches(')');
                match (base.parse::<u64>(), shift.parse::<u32>()) {
                    (Ok(b), Ok(s)) => Some(b << s),
                    _ => None,
                }
            } else if let Some(hex) = value.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else {
                value.trim_end_matches('U').parse::<u64>().ok()
            };
            if let Some(v) = parsed {
                out.insert(name.to_string(), v);
            }
        }
        out
    }

    #[test]
    fn constants_match_the_kernel_header() {
        let h = header_defines();
        let ours: &[(&str, u64)] = &[
            (
                "UBLK_CMD_GET_QUEUE_AFFINITY",
                UBLK_CMD_GET_QUEUE_AFFINITY as u64,
            ),
            ("UBLK_CMD_GET_DEV_INFO", UBLK_CMD_GET_DEV_INFO as u64),
            ("UBLK_CMD_ADD_DEV", UBLK_CMD_ADD_DEV as u64),
            ("UBLK_CMD_DEL_DEV", UBLK_CMD_DEL_DEV as u64),
            ("UBLK_CMD_START_DEV", UBLK_CMD_START_DEV as u64),
            ("UBLK_CMD_STOP_DEV", UBLK_CMD_STOP_DEV as u64),
            ("UBLK_CMD_SET_PARAMS", UBLK_CMD_SET_PARAMS as u64),
            ("UBLK_CMD_GET_PARAMS", UBLK_CMD_GET_PARAMS as u64),
            (
                "UBLK_CMD_START_USER_RECOVERY",
                UBLK_CMD_START_USER_RECOVERY as u64,
            ),
            (
                "UBLK_CMD_END_USER_RECOVERY",
                UBLK_CMD_END_USER_RECOVERY as u64,
            ),
            ("UBLK_CMD_GET_DEV_INFO2", UBLK_CMD_GET_DEV_INFO2 as u64),
            ("UBLK_IO_FETCH_REQ", UBLK_IO_FETCH_REQ as u64),
            (
                "UBLK_IO_COMMIT_AND_FETCH_REQ",
                UBLK_IO_COMMIT_AND_FETCH_REQ as u64,
            ),
            ("UBLK_IO_NEED_GET_DATA", UBLK_IO_NEED_GET_DATA as u64),
            ("UBLK_IO_RES_OK", UBLK_IO_RES_OK as u64),
            (
                "UBLK_IO_RES_NEED_GET_DATA",
                UBLK_IO_RES_NEED_GET_DATA as u64,
            ),
            ("UBLKSRV_CMD_BUF_OFFSET", UBLKSRV_CMD_BUF_OFFSET),
            ("UBLKSRV_IO_BUF_OFFSET", UBLKSRV_IO_BUF_OFFSET),
            ("UBLK_MAX_QUEUE_DEPTH", UBLK_MAX_QUEUE_DEPTH as u64),
            ("UBLK_IO_BUF_BITS", UBLK_IO_BUF_BITS as u64),
            ("UBLK_TAG_BITS", UBLK_TAG_BITS as u64),
            ("UBLK_QID_BITS", UBLK_QID_BITS as u64),
            ("UBLK_FEATURES_LEN", UBLK_FEATURES_LEN as u64),
            ("UBLK_F_SUPPORT_ZERO_COPY", UBLK_F_SUPPORT_ZERO_COPY),
            (
                "UBLK_F_URING_CMD_COMP_IN_TASK",
                UBLK_F_URING_CMD_COMP_IN_TASK,
            ),
            ("UBLK_F_NEED_GET_DATA", UBLK_F_NEED_GET_DATA),
            ("UBLK_F_USER_RECOVERY", UBLK_F_USER_RECOVERY),
            ("UBLK_F_USER_RECOVERY_REISSUE", UBLK_F_USER_RECOVERY_REISSUE),
            ("UBLK_F_UNPRIVILEGED_DEV", UBLK_F_UNPRIVILEGED_DEV),
            ("UBLK_F_CMD_IOCTL_ENCODE", UBLK_F_CMD_IOCTL_ENCODE),
            ("UBLK_F_USER_COPY", UBLK_F_USER_COPY),
            ("UBLK_F_ZONED", UBLK_F_ZONED),
            ("UBLK_S_DEV_DEAD", UBLK_S_DEV_DEAD as u64),
            ("UBLK_S_DEV_LIVE", UBLK_S_DEV_LIVE as u64),
            ("UBLK_S_DEV_QUIESCED", UBLK_S_DEV_QUIESCED as u64),
            ("UBLK_IO_OP_READ", UBLK_IO_OP_READ as u64),
            ("UBLK_IO_OP_WRITE", UBLK_IO_OP_WRITE as u64),
            ("UBLK_IO_OP_FLUSH", UBLK_IO_OP_FLUSH as u64),
            ("UBLK_IO_OP_DISCARD", UBLK_IO_OP_DISCARD as u64),
            ("UBLK_IO_OP_WRITE_SAME", UBLK_IO_OP_WRITE_SAME as u64),
            ("UBLK_IO_OP_WRITE_ZEROES", UBLK_IO_OP_WRITE_ZEROES as u64),
            ("UBLK_IO_OP_ZONE_OPEN", UBLK_IO_OP_ZONE_OPEN as u64),
            ("UBLK_IO_OP_ZONE_CLOSE", UBLK_IO_OP_ZONE_CLOSE as u64),
            ("UBLK_IO_OP_ZONE_FINISH", UBLK_IO_OP_ZONE_FINISH as u64),
            ("UBLK_IO_OP_ZONE_APPEND", UBLK_IO_OP_ZONE_APPEND as u64),
            (
                "UBLK_IO_OP_ZONE_RESET_ALL",
                UBLK_IO_OP_ZONE_RESET_ALL as u64,
            ),
            ("UBLK_IO_OP_ZONE_RESET", UBLK_IO_OP_ZONE_RESET as u64),
            ("UBLK_IO_OP_REPORT_ZONES", UBLK_IO_OP_REPORT_ZONES as u64),
            ("UBLK_IO_F_FAILFAST_DEV", UBLK_IO_F_FAILFAST_DEV as u64),
            (
                "UBLK_IO_F_FAILFAST_TRANSPORT",
                UBLK_IO_F_FAILFAST_TRANSPORT as u64,
            ),
            (
                "UBLK_IO_F_FAILFAST_DRIVER",
                UBLK_IO_F_FAILFAST_DRIVER as u64,
            ),
            ("UBLK_IO_F_META", UBLK_IO_F_META as u64),
            ("UBLK_IO_F_FUA", UBLK_IO_F_FUA as u64),
            ("UBLK_IO_F_NOUNMAP", UBLK_IO_F_NOUNMAP as u64),
            ("UBLK_IO_F_SWAP", UBLK_IO_F_SWAP as u64),
            ("UBLK_ATTR_READ_ONLY", UBLK_ATTR_READ_ONLY as u64),
            ("UBLK_ATTR_ROTATIONAL", UBLK_ATTR_ROTATIONAL as u64),
            ("UBLK_ATTR_VOLATILE_CACHE", UBLK_ATTR_VOLATILE_CACHE as u64),
            ("UBLK_ATTR_FUA", UBLK_ATTR_FUA as u64),
            ("UBLK_PARAM_TYPE_BASIC", UBLK_PARAM_TYPE_BASIC as u64),
            ("UBLK_PARAM_TYPE_DISCARD", UBLK_PARAM_TYPE_DISCARD as u64),
            ("UBLK_PARAM_TYPE_DEVT", UBLK_PARAM_TYPE_DEVT as u64),
            ("UBLK_PARAM_TYPE_ZONED", UBLK_PARAM_TYPE_ZONED as u64),
        ];
        for (name, value) in ours {
            assert_eq!(
                h.get(*name),
                Some(value),
                "{name}: header says {:?}, we say {value:#x}",
                h.get(*name)
            );
        }
        // GET_FEATURES has no legacy define; the header spells its ioctl number inline.
        assert!(
            include_str!("../abi/ublk_cmd.h").contains("_IOR('u', 0x13, struct ublksrv_ctrl_cmd)")
        );
        assert_eq!(UBLK_IO_RES_ABORT, -19);
    }

    #[test]
    fn struct_sizes_and_offsets() {
        assert_eq!(size_of::<ublksrv_ctrl_cmd>(), 32);
        assert_eq!(offset_of!(ublksrv_ctrl_cmd, addr), 8);
        assert_eq!(offset_of!(ublksrv_ctrl_cmd, data), 16);
        assert_eq!(offset_of!(ublksrv_ctrl_cmd, dev_path_len), 24);
        assert_eq!(size_of::<ublksrv_ctrl_dev_info>(), 64);
        assert_eq!(offset_of!(ublksrv_ctrl_dev_info, max_io_buf_bytes), 8);
        assert_eq!(offset_of!(ublksrv_ctrl_dev_info, ublksrv_pid), 16);
        assert_eq!(offset_of!(ublksrv_ctrl_dev_info, flags), 24);
        assert_eq!(offset_of!(ublksrv_ctrl_dev_info, owner_uid), 40);
        assert_eq!(size_of::<ublksrv_io_desc>(), 24);
        assert_eq!(offset_of!(ublksrv_io_desc, start_sector), 8);
        assert_eq!(offset_of!(ublksrv_io_desc, addr), 16);
        assert_eq!(size_of::<ublksrv_io_cmd>(), 16);
        assert_eq!(offset_of!(ublksrv_io_cmd, result), 4);
        assert_eq!(offset_of!(ublksrv_io_cmd, addr), 8);
        assert_eq!(size_of::<ublk_param_basic>(), 32);
        assert_eq!(size_of::<ublk_param_discard>(), 20);
        assert_eq!(size_of::<ublk_param_devt>(), 16);
        assert_eq!(size_of::<ublk_param_zoned>(), 32);
        // 108 bytes of fields, padded to the 8-byte alignment of ublk_param_basic.
        assert_eq!(size_of::<ublk_params>(), 112);
        assert_eq!(offset_of!(ublk_params, discard), 40);
        assert_eq!(offset_of!(ublk_params, devt), 60);
    }

    #[test]
    fn ioctl_numbers() {
        // Values as computed by the kernel's _IOR/_IOWR macros (checked against ublksrv).
        assert_eq!(UBLK_U_CMD_GET_QUEUE_AFFINITY, 0x8020_7501);
        assert_eq!(UBLK_U_CMD_GET_DEV_INFO, 0x8020_7502);
        assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(UBLK_U_CMD_DEL_DEV, 0xc020_7505);
        assert_eq!(UBLK_U_CMD_START_DEV, 0xc020_7506);
        assert_eq!(UBLK_U_CMD_STOP_DEV, 0xc020_7507);
        assert_eq!(UBLK_U_CMD_SET_PARAMS, 0xc020_7508);
        assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xc010_7521);
        assert_eq!(UBLK_U_IO_PREP_IO_CMDS, 0xc010_7525);
        assert_eq!(UBLK_U_IO_COMMIT_IO_CMDS, 0xc010_7526);
        assert_eq!(UBLK_U_IO_FETCH_IO_CMDS, 0xc010_7527);
    }

    /// The batch ABI is 7.2's: command numbers, struct sizes and field order as in its header.
    #[test]
    fn batch_abi_matches_the_7_2_header() {
        let text = include_str!("../abi/ublk_cmd-7.2.h");
        for (name, nr) in [
            ("UBLK_U_IO_PREP_IO_CMDS", UBLK_IO_PREP_IO_CMDS),
            ("UBLK_U_IO_COMMIT_IO_CMDS", UBLK_IO_COMMIT_IO_CMDS),
            ("UBLK_U_IO_FETCH_IO_CMDS", UBLK_IO_FETCH_IO_CMDS),
        ] {
            let at = text.find(&format!("#define\t{name}")).expect(name);
            let def = &text[at..at + 90];
            assert!(
                def.contains(&format!("_IOWR('u', {nr:#x}, struct ublk_batch_io)")),
                "{def}"
            );
        }
        let batch = &text[text.find("struct ublk_batch_io {").unwrap()..];
        let batch = &batch[..batch.find("};").unwrap()];
        let fields: Vec<&str> = batch
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.trim().strip_suffix(';'))
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(
            fields,
            [
                "q_id",
                "flags",
                "nr_elem",
                "elem_bytes",
                "reserved",
                "reserved2"
            ]
        );
        assert_eq!(size_of::<ublk_batch_io>(), 16);
        assert_eq!(offset_of!(ublk_batch_io, elem_bytes), 6);
        assert_eq!(size_of::<ublk_elem_header>(), 8);
        assert_eq!(offset_of!(ublk_elem_header, result), 4);
        assert!(text.contains("#define UBLK_F_BATCH_IO\t\t(1ULL << 15)"));
    }

    #[test]
    fn descriptor_area_layout() {
        assert_eq!(desc_offset(0, 4096), 0);
        assert_eq!(desc_offset(1, 4096), 4096 * 24);
        assert_eq!(desc_len(128, 4096), 4096);
        assert_eq!(desc_len(171, 4096), 8192);
        assert_eq!(
            feature_names(0x1fe),
            [
                "COMP_IN_TASK",
                "NEED_GET_DATA",
                "USER_RECOVERY",
                "USER_RECOVERY_REISSUE",
                "UNPRIVILEGED_DEV",
                "CMD_IOCTL_ENCODE",
                "USER_COPY",
                "ZONED"
            ]
        );
    }

    #[test]
    fn user_copy_positions_follow_the_header() {
        let h = include_str!("../abi/ublk_cmd.h");
        assert!(h.contains("#define UBLK_TAG_OFF\t\tUBLK_IO_BUF_BITS"));
        assert!(h.contains("#define UBLK_QID_OFF\t\t(UBLK_TAG_OFF + UBLK_TAG_BITS)"));
        assert_eq!(user_copy_pos(0, 0), 0x8000_0000);
        assert_eq!(user_copy_pos(0, 1), 0x8000_0000 + (1 << 25));
        assert_eq!(user_copy_pos(1, 0), 0x8000_0000 + (1 << 41));
        assert_eq!(
            (user_copy_pos(4095, 65535) - UBLKSRV_IO_BUF_OFFSET) >> 41,
            4095
        );
    }
}
