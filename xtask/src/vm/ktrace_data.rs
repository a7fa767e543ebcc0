//! What one VM's kernel trace holds (`vm::ktrace` reads it from the guest): whether tracing
//! runs, the events read and checked, the block layer's counts, and what reports say of them.
//! Apart from `vm::ktrace` so that `Vm` can hold its `State` without an import circle.

use std::collections::BTreeMap;
use std::sync::Arc;

use ublk::ktrace::check::Checker;
use ublk::ktrace::{Event, Header};

/// Violations named in a verdict (all are in summary.txt).
pub const MAX_NAMED: usize = 3;
/// Most bytes of tracefs text read back (the ring's text is about 3x its binary size).
pub const MAX_TEXT_BYTES: usize = 64 << 20;

/// Whether tracing runs in this VM, and what was read once it stopped.
#[derive(Default)]
pub struct State {
    pub on: bool,
    /// Why tracing is off (a refused probe, a guest without tracefs), for the run's record.
    pub note: Option<String>,
    pub collected: Option<Arc<Collected>>,
}

/// One VM's trace, read and checked.
pub struct Collected {
    pub header: Header,
    pub events: Vec<Event>,
    pub checker: Checker,
    /// Device id → (major, minor) of its disk, from the completions.
    pub disks: BTreeMap<u32, (u32, u32)>,
    /// (major, minor) → requests the block layer completed (block:block_rq_complete).
    pub block_completed: BTreeMap<(u32, u32), u64>,
    /// Guest uptime when the ring was read (µs): how long a stuck tag has been stuck.
    pub end_us: u64,
    /// Text lines that were not our events, and a read that hit its bound.
    pub skipped: u64,
    pub truncated: bool,
}

/// A BATCH_IO device (its commands were batch elements) whose block-layer count is exactly twice
/// its completions: Linux 7.2 fires block:block_rq_complete twice for every request a
/// COMMIT_IO_CMDS completes (in blk_update_request, then in blk_mq_end_request_batch).
fn batch_note(batched: u64, completed: u64, block: u64) -> &'static str {
    match batched > 0 && completed > 0 && block == 2 * completed {
        true => "; twice per request: a batched completion fires the tracepoint in blk_update_request and again in blk_mq_end_request_batch",
        false => "",
    }
}

impl Collected {
    /// One line per device: what the trace saw beside what the block layer counted.
    pub fn device_lines(&self) -> Vec<String> {
        self.checker
            .counts
            .iter()
            .filter(|(dev, _)| **dev != u32::MAX)
            .map(|(dev, c)| {
                let block = self
                    .disks
                    .get(dev)
                    .and_then(|d| self.block_completed.get(d).map(|n| (d, n)));
                let block = match block {
                    Some(((ma, mi), n)) => format!(
                        "; the block layer completed {n} (block:block_rq_complete on {ma}:{mi}{})",
                        batch_note(c.batched, c.completed, *n)
                    ),
                    None => String::new(),
                };
                format!(
                    "dev{dev}: {} requests dispatched, {} completed, {} server commands{block}",
                    c.dispatched, c.completed, c.commands
                )
            })
            .collect()
    }

    /// The run record's one line: "1234 events, 0 lost; dev0: ...".
    pub fn status(&self) -> String {
        let mut s = format!("{} events, {} lost", self.events.len(), self.header.lost);
        if self.header.lost > 0 {
            s += " (the ring kept the newest: the counts below are of what it kept)";
        }
        if self.truncated {
            s += &format!(", text cut at {} MiB", MAX_TEXT_BYTES >> 20);
        }
        for d in self.device_lines() {
            s += "; ";
            s += &d;
        }
        s
    }

    /// The verdict's words for the violations: the first few, and how many in all.
    pub fn violations_named(&self) -> Option<String> {
        let v = &self.checker.violations;
        if v.is_empty() {
            return None;
        }
        let mut s = v
            .iter()
            .take(MAX_NAMED)
            .map(|v| v.message.clone())
            .collect::<Vec<_>>()
            .join("; ");
        let total = self.checker.violations_total;
        if total > MAX_NAMED as u64 {
            s += &format!(
                " (and {} more; see trace/summary.txt)",
                total - MAX_NAMED as u64
            );
        }
        Some(format!("protocol violation: {s}"))
    }
}

/// Sum of every CPU's `overrun:` (events the ring overwrote).
pub fn overruns(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("overrun:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// From when the merged trace holds every CPU's events (µs): each CPU's ring keeps its own
/// newest events, so once one overwrote, the trace is whole only from the latest "oldest
/// event" of the CPUs that overwrote. None when no ring overwrote anything. Reads the
/// `overrun:` / `oldest event ts:` lines of `per_cpu/cpu*/stats`, CPU by CPU.
pub fn complete_from_us(stats: &str) -> Option<u64> {
    let mut from: Option<u64> = None;
    let mut overran = false;
    for l in stats.lines() {
        if let Some(v) = l.strip_prefix("overrun:") {
            overran = v.trim().parse::<u64>().is_ok_and(|n| n > 0);
        } else if let Some(v) = l.strip_prefix("oldest event ts:") {
            let ts = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t >= 0.0);
            if let (true, Some(ts)) = (overran, ts) {
                let us = (ts * 1e6) as u64;
                from = Some(from.map_or(us, |f| f.max(us)));
            }
            overran = false;
        }
    }
    from
}

/// `{ dev:  271581184 } hitcount:  29` → (259, 0) → 29.
pub fn block_hist(stats: &str) -> BTreeMap<(u32, u32), u64> {
    let mut out = BTreeMap::new();
    for l in stats.lines() {
        let Some(rest) = l.trim().strip_prefix("{ dev:") else {
            continue;
        };
        let Some((dev, count)) = rest.split_once('}') else {
            continue;
        };
        let (Ok(dev), Some(Ok(n))) = (
            dev.trim().parse::<u32>(),
            count
                .trim()
                .strip_prefix("hitcount:")
                .map(|c| c.trim().parse::<u64>()),
        ) else {
            continue;
        };
        out.insert((dev >> 20, dev & 0xfffff), n);
    }
    out
}

/// `/proc/uptime`'s first number ("12.34 5.67") in µs; 0 if absent.
pub fn uptime_us(stats: &str) -> u64 {
    let first = stats
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next());
    first
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * 1e6) as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::batch_note;

    /// Only the exact doubling on a device with batched commands is explained as batching.
    #[test]
    fn the_batch_doubling_is_named_only_when_it_is_exact() {
        assert!(batch_note(3834, 3706, 7412).contains("twice per request"));
        assert_eq!(batch_note(3834, 3706, 7411), "");
        assert_eq!(batch_note(0, 1, 2), "", "not a batched device");
        assert_eq!(batch_note(5, 0, 0), "");
    }
}
