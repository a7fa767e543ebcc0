//! fio as the load generator: the command line of one cell and the typed subset of fio's
//! JSON output (`--output-format=json`) the harness reads.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::workload::Workload;

/// The fio command for one measured cell on `$DEV` (a shell variable the cell script sets),
/// over the first `size_bytes` of the device. Several jobs are spread over the guest's `cpus`,
/// one CPU each (fio's `split` policy), so every hardware queue carries load: left to the
/// scheduler, a ublk server's completions pull the jobs it wakes onto its own CPU (measured:
/// 99 % of 2 jobs' requests on one queue of two).
pub fn command(w: &Workload, size_bytes: u64, runtime_s: f64, ramp_s: f64, cpus: u32) -> String {
    assert!(cpus >= 1);
    let mut c = format!(
        "fio --name={} --filename=\"$DEV\" --direct=1 --ioengine=io_uring --rw={} --bs={} \
         --iodepth={} --numjobs={} --size={size_bytes} --time_based --runtime={}ms \
         --ramp_time={}ms --group_reporting --randrepeat=0 --norandommap \
         --output-format=json",
        w.name,
        w.rw,
        w.block_bytes,
        w.qd / w.jobs,
        w.jobs,
        (runtime_s * 1000.0) as u64,
        (ramp_s * 1000.0) as u64,
    );
    if w.jobs > 1 {
        c.push_str(&format!(
            " --cpus_allowed=0-{} --cpus_allowed_policy=split",
            cpus - 1
        ));
    }
    if let Some(p) = w.read_percent {
        c.push_str(&format!(" --rwmixread={p}"));
    }
    c
}

/// Writes the first `size_bytes` of `$DEV` once, so reads find data on every target.
pub fn fill_command(size_bytes: u64) -> String {
    format!(
        "fio --name=fill --filename=\"$DEV\" --direct=1 --ioengine=io_uring --rw=write \
         --bs=1M --iodepth=4 --size={size_bytes} --output=/dev/null"
    )
}

#[derive(Deserialize)]
struct Output {
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    error: i32,
    read: Direction,
    write: Direction,
}

#[derive(Deserialize)]
struct Direction {
    total_ios: u64,
    bw_bytes: u64,
    iops: f64,
    lat_ns: Lat,
    clat_ns: Lat,
}

#[derive(Deserialize)]
struct Lat {
    mean: f64,
    #[serde(default)]
    percentile: BTreeMap<String, f64>,
}

/// What one fio run measured (reads and writes together).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measured {
    pub ios: u64,
    pub iops: f64,
    pub bw_bytes_s: f64,
    /// Submission to completion, mean over every I/O.
    pub lat_mean_us: f64,
    /// Completion latency's 99th percentile (the worse direction of a mix).
    pub lat_p99_us: f64,
}

/// Parses fio's JSON (anything fio printed before the JSON object is skipped).
pub fn parse(text: &str) -> Result<Measured, String> {
    let start = text
        .find("{\n")
        .or_else(|| text.find('{'))
        .ok_or("fio printed no JSON")?;
    let out: Output =
        serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    let [job] = &out.jobs[..] else {
        return Err(format!(
            "fio's JSON has {} jobs; group_reporting should give one",
            out.jobs.len()
        ));
    };
    if job.error != 0 {
        return Err(format!("fio reported error {}", job.error));
    }
    let dirs = [&job.read, &job.write];
    let ios: u64 = dirs.iter().map(|d| d.total_ios).sum();
    if ios == 0 {
        return Err("fio completed no I/O".into());
    }
    let lat_sum: f64 = dirs
        .iter()
        .map(|d| d.lat_ns.mean * d.total_ios as f64)
        .sum();
    let p99 = dirs
        .iter()
        .filter(|d| d.total_ios > 0)
        .map(|d| {
            d.clat_ns
                .percentile
                .get("99.000000")
                .copied()
                .unwrap_or(0.0)
        })
        .fold(0.0, f64::max);
    Ok(Measured {
        ios,
        iops: dirs.iter().map(|d| d.iops).sum(),
        bw_bytes_s: dirs.iter().map(|d| d.bw_bytes as f64).sum(),
        lat_mean_us: lat_sum / ios as f64 / 1000.0,
        lat_p99_us: p99 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::workload::workload;

    const MIX: &str = r#"fio: some warning
{
  "fio version" : "fio-3.39",
  "jobs" : [
    { "jobname" : "m", "error" : 0,
      "read" : { "total_ios" : 700, "bw_bytes" : 2867200, "iops" : 700.5,
                 "lat_ns" : { "mean" : 20000.0 },
                 "clat_ns" : { "mean" : 19000.0, "percentile" : { "99.000000" : 50000 } } },
      "write" : { "total_ios" : 300, "bw_bytes" : 1228800, "iops" : 300.25,
                  "lat_ns" : { "mean" : 40000.0 },
                  "clat_ns" : { "mean" : 39000.0, "percentile" : { "99.000000" : 90000 } } } }
  ]
}"#;

    #[test]
    fn a_mixed_run_adds_directions_and_weights_latency() {
        let m = parse(MIX).unwrap();
        assert_eq!(m.ios, 1000);
        assert!((m.iops - 1000.75).abs() < 1e-9);
        assert_eq!(m.bw_bytes_s, 4096000.0);
        assert!((m.lat_mean_us - 26.0).abs() < 1e-9, "{}", m.lat_mean_us);
        assert_eq!(m.lat_p99_us, 90.0);
    }

    #[test]
    fn broken_output_is_an_error_not_a_zero() {
        assert!(parse("fio: command not found").is_err());
        assert!(parse("{\"jobs\": []}").unwrap_err().contains("0 jobs"));
        let failed = MIX.replace("\"error\" : 0", "\"error\" : 5");
        assert!(parse(&failed).unwrap_err().contains("error 5"));
        let idle = MIX.replace("700", "0").replace("300", "0");
        assert!(parse(&idle).unwrap_err().contains("no I/O"));
    }

    #[test]
    fn the_command_splits_depth_over_jobs() {
        let c = command(&workload("randread-4k-qd32").unwrap(), 1 << 28, 3.0, 0.5, 2);
        assert!(c.contains("--iodepth=16 --numjobs=2"), "{c}");
        assert!(c.contains("--runtime=3000ms --ramp_time=500ms"), "{c}");
        assert!(
            c.contains(" --cpus_allowed=0-1 --cpus_allowed_policy=split"),
            "{c}"
        );
        let one = command(&workload("read-128k-qd8").unwrap(), 1 << 28, 3.0, 0.5, 2);
        assert!(
            !one.contains("cpus_allowed"),
            "one job goes where the scheduler puts it: {one}"
        );
        let mix = command(&workload("randrw70-4k-qd32").unwrap(), 1 << 28, 1.0, 0.0, 4);
        assert!(mix.ends_with("--rwmixread=70"), "{mix}");
    }
}
