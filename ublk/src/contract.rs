//! What ublk-mem tells the outside world, as types: the ready line of `add --json`, the
//! SIGUSR1 state dump and `list --json`. xtask deserializes exactly these structs, so a field
//! renamed here breaks the build, not a test run in a VM.

use serde::{Deserialize, Serialize};

/// The one line `ublk-mem add --json` prints once its device serves I/O.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub dev_id: u32,
    pub block_device: String,
    pub char_device: String,
    pub size: u64,
    pub block_size: u32,
    pub queues: u16,
    pub depth: u16,
    /// The server process (the one to signal).
    pub pid: i32,
    /// The ublk features this device runs with (the flags the kernel granted at ADD_DEV),
    /// by name (`sys::feature_names`). Absent from other servers' lines: empty.
    #[serde(default)]
    pub features: Vec<String>,
}

/// The state dump SIGUSR1 writes (to `--state-file`, else stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDump {
    pub dev_id: u32,
    pub pid: i32,
    /// Requests taken from the kernel and not yet committed, across queues.
    pub inflight: u64,
    pub queues: Vec<QueueDump>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDump {
    pub q_id: u16,
    pub completions: u64,
    /// The queue thread has exited.
    pub finished: bool,
    /// Tags the server holds (state Serving): a stuck one is the server's fault.
    pub serving_tags: Vec<u16>,
    pub tags: Vec<TagDump>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagDump {
    pub tag: u16,
    /// InKernel, Serving or Aborted (`core::TagState::name`).
    pub state: String,
    /// Requests this tag has completed.
    pub served: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<LastRequest>,
}

/// The last request a tag took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRequest {
    pub op: String,
    pub flags: u64,
    pub sector: u64,
    pub sectors: u64,
}

/// One line of `ublk-mem list --json`: a device as the kernel reports it (GET_DEV_INFO), whoever
/// created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub dev_id: u32,
    /// live, quiesced, fail-io (user recovery, no server) or dead.
    pub state: String,
    pub queues: u16,
    pub depth: u16,
    pub size: u64,
    /// The server process the kernel knows (START_DEV's pid).
    pub pid: i32,
    pub flags: Vec<String>,
}

/// `ublk-mem features --json`: what the running kernel's ublk driver supports (GET_FEATURES).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub bits: u64,
    /// Names of the set bits (`sys::feature_names`), unknown ones as BIT<n>.
    pub names: Vec<String>,
}
