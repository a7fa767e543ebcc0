//! A device's parameters as a server is asked to create it, and the session-wide
//! `--queues`/`--depth` override of them: used by scenarios' start steps, vm-perf and the
//! session model (recorded in every report).

use serde::{Deserialize, Serialize};

/// What a `start` step asks of its server: the step's values over the scenario's `device:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceParams {
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    pub block_size: u32,
}

/// `--queues`/`--depth`: values that replace every `start` step's (and the `device:`
/// section's) for a whole session, recorded in every report and reproduce line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u16>,
}

/// Largest `--queues` and `--depth` (the kernel's UBLK_MAX_NR_QUEUES is larger; a guest has
/// at most 16 CPUs, and UBLK_MAX_QUEUE_DEPTH is 4096).
pub const MAX_OVERRIDE_QUEUES: u16 = 64;
pub const MAX_OVERRIDE_DEPTH: u16 = 4096;

impl DeviceOverride {
    pub fn is_empty(&self) -> bool {
        self.queues.is_none() && self.depth.is_none()
    }

    pub fn apply(&self, p: DeviceParams) -> DeviceParams {
        DeviceParams {
            queues: self.queues.unwrap_or(p.queues),
            depth: self.depth.unwrap_or(p.depth),
            ..p
        }
    }

    /// The command-line flags that ask for it again.
    pub fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(q) = self.queues {
            v.extend(["--queues".to_string(), q.to_string()]);
        }
        if let Some(d) = self.depth {
            v.extend(["--depth".to_string(), d.to_string()]);
        }
        v
    }

    /// `queues=1 depth=8`, or `none`.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        v.extend(self.queues.map(|q| format!("queues={q}")));
        v.extend(self.depth.map(|d| format!("depth={d}")));
        if v.is_empty() {
            return "none".into();
        }
        v.join(" ")
    }

    /// A recorded override is within the CLI's own bounds (merge checks foreign ones).
    pub fn check(&self) -> std::result::Result<(), String> {
        let q_ok = self
            .queues
            .is_none_or(|q| (1..=MAX_OVERRIDE_QUEUES).contains(&q));
        let d_ok = self
            .depth
            .is_none_or(|d| (1..=MAX_OVERRIDE_DEPTH).contains(&d));
        match q_ok && d_ok {
            true => Ok(()),
            false => Err(format!(
                "device override {} is out of range",
                self.describe()
            )),
        }
    }
}
