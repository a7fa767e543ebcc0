//! Reasons chosen for meaning. A failed command's last lines are often a summary, a progress
//! line or a usage hint; the line that says what went wrong is earlier. `of` picks, from a
//! command's output, in this order: blkio's first mismatches (`MISMATCH …`), fio's error
//! lines (`verify: bad magic header …`, `fio: pid=…, err=5/…`, an `err= 5` job line), then
//! error, panic and failure lines — at most `MAX_TELLING` lines, each bounded. Output with
//! none of them gives its last `n` lines, as before.

/// At most this many telling lines make a reason (the log has the rest).
pub const MAX_TELLING: usize = 4;
/// At most this many of them are blkio mismatches (the first ones: the rest look alike).
const MAX_MISMATCHES: usize = 2;
/// Each line of a reason is cut to this (head and tail kept).
const MAX_LINE_BYTES: usize = 300;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Mismatch,
    Fio,
    Error,
}

/// The lines of `output` that say what went wrong, joined with ` | `; else its last `n` lines.
pub fn of(output: &str, n: usize) -> String {
    let lines = lines(output);
    telling(output).unwrap_or_else(|| join(lines[lines.len().saturating_sub(n)..].iter().copied()))
}

fn lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

/// The lines of `output` that say what went wrong, joined with ` | `, if it has any.
pub fn telling(output: &str) -> Option<String> {
    let lines = lines(output);
    let mut telling: Vec<(Kind, &str)> = Vec::new();
    for &line in &lines {
        if let Some(k) = kind(line) {
            if !telling.iter().any(|(_, l)| *l == line) {
                telling.push((k, line));
            }
        }
    }
    if telling.is_empty() {
        return None;
    }
    let mut chosen: Vec<(usize, &str)> = Vec::new();
    for want in [Kind::Mismatch, Kind::Fio, Kind::Error] {
        let cap = match want {
            Kind::Mismatch => MAX_MISMATCHES,
            _ => MAX_TELLING,
        };
        let of_kind = telling.iter().enumerate().filter(|(_, (k, _))| *k == want);
        for (i, (_, l)) in of_kind.take(cap) {
            if chosen.len() < MAX_TELLING {
                chosen.push((i, l));
            }
        }
    }
    chosen.sort_by_key(|(i, _)| *i); // in the order the command printed them
    Some(join(chosen.iter().map(|(_, l)| *l)))
}

fn join<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let bounded: Vec<String> = lines
        .map(|l| crate::text::bound(l, MAX_LINE_BYTES).into_owned())
        .collect();
    bounded.join(" | ")
}

/// How much of a log's end `of_file` reads (a server may log for hours).
const MAX_LOG_TAIL_BYTES: u64 = 4 << 20;

/// The reason in a file's last `MAX_LOG_TAIL_BYTES` (a step's or a server's log); empty if
/// it cannot be read.
pub fn of_file(path: &std::path::Path, n: usize) -> String {
    of(&read_tail(path), n)
}

/// A log's last `MAX_LOG_TAIL_BYTES`, lossily decoded; empty if it cannot be read.
pub fn read_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let mut buf = Vec::new();
    let from = SeekFrom::Start(len.saturating_sub(MAX_LOG_TAIL_BYTES));
    match f
        .seek(from)
        .and_then(|_| f.take(MAX_LOG_TAIL_BYTES).read_to_end(&mut buf))
    {
        Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => String::new(),
    }
}

fn kind(line: &str) -> Option<Kind> {
    if line.starts_with("MISMATCH ") {
        return Some(Kind::Mismatch);
    }
    let lower = line.to_ascii_lowercase();
    const FIO: [&str; 7] = [
        "verify: bad",
        "verify failed",
        "bad magic header",
        "io_u error",
        "expected crc",
        "received crc",
        "verify type mismatch",
    ];
    if FIO.iter().any(|p| lower.contains(p)) || fio_err(&lower) {
        return Some(Kind::Fio);
    }
    const ERROR: [&str; 9] = [
        "error:",
        "error=",
        "panicked at",
        "panic:",
        "fatal",
        "failed",
        "no such file",
        "permission denied",
        "timed out",
    ];
    ERROR
        .iter()
        .any(|p| lower.contains(p))
        .then_some(Kind::Error)
}

/// fio's `err=N` with N ≠ 0 (its job summary says `err= 0` when all went well).
fn fio_err(lower: &str) -> bool {
    lower.match_indices("err=").any(|(at, m)| {
        let rest = lower[at + m.len()..].trim_start();
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        !digits.is_empty() && digits.bytes().any(|b| b != b'0')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_verify_errors_beat_its_summary_tail() {
        let out = "verify: bad magic header 0, wanted acca at file /dev/ublkb0 offset 8192, length 4096 (requested block: offset=8192, length=4096)\n\
                   fio: pid=312, err=84/file:io_u.c:2208, func=io_u_queued_complete, error=Invalid or incomplete multibyte or wide character\n\
                   \n\
                   v: (groupid=0, jobs=1): err=84 (file:io_u.c:2208, func=io_u_queued_complete, error=Invalid): pid=312\n\
                   Run status group 0 (all jobs):\n\
                   \x20  READ: bw=1000KiB/s (1024kB/s), io=64.0KiB, run=64-64msec\n\
                   Disk stats (read/write):\n\
                   \x20 ublkb0: ios=16/0, merge=0/0, ticks=1/0, in_queue=1, util=1.0%\n";
        let r = of(out, 4);
        assert!(r.starts_with("verify: bad magic header 0"), "{r}");
        assert!(r.contains("err=84/file:io_u.c:2208"), "{r}");
        assert!(!r.contains("Disk stats") && !r.contains("READ: bw"), "{r}");
    }

    #[test]
    fn a_clean_fio_summary_is_not_an_error() {
        let out = "r: (groupid=0, jobs=1): err= 0: pid=1: Thu Dec  3\n  read: IOPS=10\ntail line\n";
        assert_eq!(of(out, 2), "read: IOPS=10 | tail line");
    }

    #[test]
    fn blkio_names_its_first_mismatches_and_its_count() {
        let mut out = String::from("wrote 512 block(s)\n");
        for i in 0..16 {
            out += &format!("MISMATCH block at offset {i}: seq 3 expected, found seq 0\n");
        }
        out += "md5 of 64 MiB: device 1, reference model 2\n";
        out += "blkio: error: 16 block(s) of 4 KiB differ from the reference model (first 16 listed)\n";
        let r = of(&out, 6);
        assert_eq!(
            r,
            "MISMATCH block at offset 0: seq 3 expected, found seq 0 | \
             MISMATCH block at offset 1: seq 3 expected, found seq 0 | \
             blkio: error: 16 block(s) of 4 KiB differ from the reference model (first 16 listed)"
        );
    }

    #[test]
    fn a_panic_among_chatter_is_the_reason_and_plain_output_keeps_its_tail() {
        let out = "starting\nqueue 0 up\nthread 'q1' panicked at src/io.rs:9:5:\nindex out of bounds\nqueue 1 up\n";
        assert_eq!(of(out, 2), "thread 'q1' panicked at src/io.rs:9:5:");
        assert_eq!(of("a\nb\nc\n", 2), "b | c");
        assert_eq!(of("", 2), "");
    }

    #[test]
    fn a_reason_is_bounded_however_long_the_lines() {
        let long = format!("error: {}\n", "x".repeat(100_000));
        let r = of(&long.repeat(20), 4);
        assert!(r.len() < MAX_TELLING * (MAX_LINE_BYTES + 8), "{}", r.len());
    }
}
