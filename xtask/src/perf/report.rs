//! perf.json (every sample, and the summary the table, the chart and the baseline gate read)
//! and the terminal table. A cell is one (target, workload) pair; it is measured once per
//! round, and every target's ratio is taken against brd measured in the same round.

use serde::{Deserialize, Serialize};

use super::workload::REFERENCE;

/// One fio run on one fresh device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub round: u32,
    /// Position in the round's order (targets rotate per round and workload).
    pub slot: u32,
    pub target: String,
    pub workload: String,
    pub ios: u64,
    pub iops: f64,
    pub bw_bytes_s: f64,
    pub lat_mean_us: f64,
    pub lat_p99_us: f64,
    /// On-CPU time of the server's threads over the measured run (ublk servers only): their
    /// time over fio's whole run, warm-up included, scaled like `guest_cpu_ns`. (perf.json files
    /// written before the scaling have the unscaled time: ~25 % more at the default run time.)
    pub server_cpu_ns: Option<u64>,
    /// Busy time of the guest's CPUs over the measured run (every target): the average number
    /// of busy CPUs while fio ran (/proc/stat against /proc/uptime, 10 ms resolution) times the
    /// run time. Absent in perf.json files written before it was measured.
    #[serde(default)]
    pub guest_cpu_ns: Option<u64>,
}

/// Median and range over rounds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// The whole range as a fraction of the median: how far apart rounds of one cell were.
    pub fn rel_range(&self) -> f64 {
        if self.median == 0.0 {
            return f64::INFINITY;
        }
        (self.max - self.min) / self.median
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    pub target: String,
    pub workload: String,
    pub rounds: usize,
    pub iops: Spread,
    pub bw_bytes_s: Spread,
    pub lat_mean_us: Spread,
    pub lat_p99_us: Spread,
    pub cpu_us_per_io: Option<Spread>,
    /// The whole guest's busy time per I/O: fio, the block layer, the driver and the server.
    #[serde(default)]
    pub guest_us_per_io: Option<Spread>,
    /// IOPS over brd's in the same round.
    pub ratio: Option<Spread>,
}

/// One kernel's VM session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub kernel: String,
    pub kernel_release: String,
    pub image_hash: String,
    pub boot_s: f64,
    /// The ublk features each server's device ran with (from the kernel or its ready line).
    pub device_features: std::collections::BTreeMap<String, Vec<String>>,
    pub samples: Vec<Sample>,
    pub cells: Vec<Cell>,
    /// Targets that could not be measured (their cells are absent; the others' are complete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

/// A target whose measurement failed: the first cause, where it happened, and its evidence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub target: String,
    pub workload: String,
    pub round: u32,
    /// The failure is a ublk server's own (its cell failed: the thing under test), not a
    /// kernel target's, the VM's or an interrupt's.
    pub server_fault: bool,
    pub cause: String,
    /// A freeze-frame directory or a log, relative to the kernel's session directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
}

impl Failure {
    /// One line for the table: where it failed, why, and where to look.
    pub fn describe(&self) -> String {
        let mut d = format!(
            "not measured: {} (round {}) failed: {}",
            self.workload,
            self.round + 1,
            self.cause
        );
        if let Some(e) = &self.evidence {
            d.push_str(&format!(" [evidence: {e}]"));
        }
        crate::text::term(&crate::text::bound(&d, 1024)).into_owned()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub host_cpus: usize,
    pub host_kernel: String,
}

/// Everything one `vm-perf` run measured: `perf.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerfReport {
    pub started_at: String,
    pub commit: String,
    pub machine: Machine,
    pub accelerator: String,
    /// `plain` (TCG or KVM wall clock) or `icount:N` (QEMU's instruction-counting clock).
    pub clock: String,
    pub vcpus: u32,
    pub rounds: u32,
    pub runtime_s: f64,
    pub ramp_s: f64,
    pub size_bytes: u64,
    pub queues: u16,
    pub depth: u16,
    /// Each cell's limit beyond fio's run time (`--cell-limit`); 0 in reports from before it.
    #[serde(default)]
    pub cell_limit_s: u64,
    /// The limits scale the session ran with (`vm::limits`); 0 in reports from before it.
    #[serde(default)]
    pub timeout_scale: f64,
    pub targets: Vec<String>,
    pub workloads: Vec<String>,
    pub tools: Vec<String>,
    /// The command that measures the same cells again (every choice explicit).
    #[serde(default)]
    pub reproduce: String,
    pub sessions: Vec<Session>,
}

/// A report around `sessions` with neutral values elsewhere, for tests.
#[cfg(test)]
pub fn test_report(targets: &[&str], sessions: Vec<Session>) -> PerfReport {
    PerfReport {
        started_at: String::new(),
        commit: String::new(),
        machine: Machine {
            cpu_model: String::new(),
            host_cpus: 2,
            host_kernel: String::new(),
        },
        accelerator: "tcg".into(),
        clock: "icount:3".into(),
        vcpus: 2,
        rounds: 3,
        runtime_s: 1.0,
        ramp_s: 0.0,
        size_bytes: 1,
        queues: 2,
        depth: 64,
        cell_limit_s: 100,
        timeout_scale: 2.0,
        targets: targets.iter().map(|t| t.to_string()).collect(),
        workloads: vec!["w".into()],
        tools: vec![],
        reproduce: String::new(),
        sessions,
    }
}

/// Summarises the samples into cells, in the order of `targets` × `workloads`.
pub fn cells(samples: &[Sample], targets: &[String], workloads: &[String]) -> Vec<Cell> {
    let mut out = Vec::new();
    for w in workloads {
        for t in targets {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| &s.target == t && &s.workload == w)
                .collect();
            if let Some(c) = cell(samples, &mine) {
                out.push(c);
            }
        }
    }
    out
}

fn cell(all: &[Sample], mine: &[&Sample]) -> Option<Cell> {
    let first = mine.first()?;
    let get = |f: fn(&Sample) -> f64| Spread::of(&mine.iter().map(|s| f(s)).collect::<Vec<_>>());
    let cpu: Option<Vec<f64>> = mine
        .iter()
        .map(|s| s.server_cpu_ns.map(|ns| ns as f64 / 1000.0 / s.ios as f64))
        .collect();
    let guest: Option<Vec<f64>> = mine
        .iter()
        .map(|s| s.guest_cpu_ns.map(|ns| ns as f64 / 1000.0 / s.ios as f64))
        .collect();
    let ratios: Option<Vec<f64>> = mine
        .iter()
        .map(|s| {
            let brd = all.iter().find(|b| {
                b.target == REFERENCE && b.workload == s.workload && b.round == s.round
            })?;
            Some(s.iops / brd.iops)
        })
        .collect();
    Some(Cell {
        target: first.target.clone(),
        workload: first.workload.clone(),
        rounds: mine.len(),
        iops: get(|s| s.iops)?,
        bw_bytes_s: get(|s| s.bw_bytes_s)?,
        lat_mean_us: get(|s| s.lat_mean_us)?,
        lat_p99_us: get(|s| s.lat_p99_us)?,
        cpu_us_per_io: cpu.and_then(|v| Spread::of(&v)),
        guest_us_per_io: guest.and_then(|v| Spread::of(&v)),
        ratio: ratios.and_then(|v| Spread::of(&v)),
    })
}

/// The terminal table of one session.
pub fn table(s: &Session) -> String {
    let tw = s
        .cells
        .iter()
        .map(|c| c.target.len())
        .chain(s.failures.iter().map(|f| f.target.len()))
        .max()
        .unwrap_or(0)
        .max(6);
    let mut t = format!(
        "{:<18} {:<tw$} {:>16} {:>8} {:>9} {:>9} {:>9} {:>11} {:>20}\n",
        "workload",
        "target",
        "IOPS (range)",
        "MB/s",
        "mean us",
        "p99 us",
        "cpu us/IO",
        "guest us/IO",
        "x brd [min-max]"
    );
    for c in &s.cells {
        let range = |sp: &Spread| format!("±{:.0}%", 50.0 * sp.rel_range());
        let cpu = c
            .cpu_us_per_io
            .map_or("-".to_string(), |v| format!("{:.1}", v.median));
        let guest = c
            .guest_us_per_io
            .map_or("-".to_string(), |v| format!("{:.1}", v.median));
        let ratio = c.ratio.map_or("-".to_string(), |r| {
            format!("{:.2} [{:.2}-{:.2}]", r.median, r.min, r.max)
        });
        t.push_str(&format!(
            "{:<18} {:<tw$} {:>16} {:>8.1} {:>9.1} {:>9.1} {:>9} {:>11} {:>20}\n",
            c.workload,
            c.target,
            format!("{:.0} {}", c.iops.median, range(&c.iops)),
            c.bw_bytes_s.median / 1e6,
            c.lat_mean_us.median,
            c.lat_p99_us.median,
            cpu,
            guest,
            ratio
        ));
    }
    for f in &s.failures {
        t.push_str(&format!("{:<18} {:<tw$} {}\n", "-", f.target, f.describe()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample(round: u32, target: &str, workload: &str, iops: f64) -> Sample {
        Sample {
            round,
            slot: 0,
            target: target.into(),
            workload: workload.into(),
            ios: (iops * 3.0) as u64,
            iops,
            bw_bytes_s: iops * 4096.0,
            lat_mean_us: 1e6 / iops,
            lat_p99_us: 2e6 / iops,
            server_cpu_ns: (target != "brd").then_some(3_000_000_000),
            guest_cpu_ns: Some(6_000_000_000),
        }
    }

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 4.0, 3.0]).unwrap().median, 2.5);
        assert!((s.rel_range() - 1.0).abs() < 1e-12);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn ratios_pair_each_round_with_its_own_brd() {
        let w = "randread-4k-qd32";
        let samples = vec![
            sample(0, "brd", w, 1000.0),
            sample(0, "ublk-mem", w, 500.0),
            sample(1, "brd", w, 2000.0), // a slow-host round: both halve together
            sample(1, "ublk-mem", w, 1000.0),
            sample(2, "brd", w, 1000.0),
            sample(2, "ublk-mem", w, 600.0),
        ];
        let cs = cells(&samples, &["brd".into(), "ublk-mem".into()], &[w.into()]);
        assert_eq!(cs.len(), 2);
        let u = &cs[1];
        assert_eq!(u.rounds, 3);
        let r = u.ratio.unwrap();
        assert_eq!((r.median, r.min, r.max), (0.5, 0.5, 0.6));
        assert_eq!(u.iops.median, 600.0);
        assert!(cs[0].cpu_us_per_io.is_none());
        // 3 s of CPU over 1500, 3000 and 1800 I/Os: 2000, 1000 and 1666.7 us per I/O.
        let cpu = u.cpu_us_per_io.unwrap();
        assert_eq!((cpu.min, cpu.max), (1000.0, 2000.0));
        assert!((cpu.median - 1666.67).abs() < 0.01, "{cpu:?}");
        let table = table(&Session {
            kernel: "k".into(),
            kernel_release: "r".into(),
            image_hash: "h".into(),
            boot_s: 1.0,
            device_features: Default::default(),
            samples,
            cells: cs,
            failures: vec![Failure {
                target: "a-long-server-name".into(),
                workload: w.into(),
                round: 1,
                server_fault: true,
                cause: "hang: fio\nstuck".into(),
                evidence: Some("freeze-r1".into()),
            }],
        });
        assert!(table.contains("0.50 [0.50-0.60]"), "{table}");
        let failed = table.lines().last().unwrap();
        assert!(
            failed.contains("a-long-server-name not measured: randread-4k-qd32 (round 2) failed: hang: fio\\nstuck [evidence: freeze-r1]"),
            "one escaped line per failed target: {table}"
        );
        let tw = "a-long-server-name".len();
        for (line, name) in table
            .lines()
            .skip(1)
            .zip(["brd", "ublk-mem", "a-long-server-name"])
        {
            assert!(
                line[19..].starts_with(name),
                "target column aligned: {table}"
            );
            assert_ne!(
                &line[19 + tw..20 + tw],
                "-",
                "name padded to the widest: {table}"
            );
        }
        assert!(failed[19 + tw + 1..].starts_with("not measured"), "{table}");
    }

    #[test]
    fn without_brd_there_is_no_ratio() {
        let cs = cells(
            &[sample(0, "loop", "w", 5.0)],
            &["loop".into()],
            &["w".into()],
        );
        assert!(cs[0].ratio.is_none());
    }
}
