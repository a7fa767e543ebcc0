//! Kernel log scanning: BUG/WARNING/Oops/hung-task/lockdep reports fail a scenario unless
//! the scenario declares them expected.

/// Substrings that mark a kernel splat.
const SPLATS: &[&str] = &[
    "BUG:",
    "WARNING:",
    "Oops",
    "general protection fault",
    "Kernel panic",
    "blocked for more than",
    "INFO: task ",
    "possible circular locking dependency",
    "possible recursive locking",
    "inconsistent lock state",
    "UBSAN:",
    "KASAN:",
    "refcount_t:",
    "list_add corruption",
    "list_del corruption",
    "soft lockup",
    "hard LOCKUP",
    "self-detected stall",
    "rcu_preempt detected stalls",
];

/// Lines of `log` that are splats and not covered by `expected` substrings.
pub fn scan<'a>(log: &'a str, expected: &[String]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| SPLATS.iter().any(|s| l.contains(s)))
        .filter(|l| !expected.iter().any(|e| l.contains(e.as_str())))
        .collect()
}

/// Splat lines of `log` that `expected` substrings cover (accepted, still worth naming).
pub fn known<'a>(log: &'a str, expected: &[String]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| SPLATS.iter().any(|s| l.contains(s)))
        .filter(|l| expected.iter().any(|e| l.contains(e.as_str())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_splats_and_honours_expectations() {
        let log = "[    1.0] ublk: device 0 started\n\
[    2.0] WARNING: CPU: 1 PID: 77 at drivers/block/ublk_drv.c:1234 ublk_foo+0x10/0x20\n\
[    3.0] INFO: task dd:123 blocked for more than 30 seconds.\n\
[    4.0] I/O error, dev ublkb0, sector 8 op 0x0:(READ)\n\
[    5.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n";
        let found = scan(log, &[]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("WARNING"));
        let found = scan(log, &["blocked for more than".to_string()]);
        assert_eq!(found.len(), 2);
        let known = known(log, &["blocked for more than".to_string()]);
        assert_eq!(
            known,
            ["[    3.0] INFO: task dd:123 blocked for more than 30 seconds."]
        );
        assert!(scan("[ 1.0] all quiet\n[ 2.0] I/O error, dev ublkb0", &[]).is_empty());
    }
}
