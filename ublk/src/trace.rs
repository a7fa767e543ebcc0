//! The tag-event trace (`ublk-mem --trace PREFIX` writes PREFIX.q<N> per queue). Line format,
//! documented in ublk/TRACE.md and replayed by the simulator:
//!
//! ```text
//! # ublk-trace v1 dev=0 queue=0 depth=128 dev_sectors=524288 max_io_bytes=524288
//! F <tag>                                   FETCH_REQ submitted
//! R <tag> <op> <flags-hex> <sector> <sectors>   request received
//! C <tag> <result>                          COMMIT_AND_FETCH_REQ submitted with result
//! A <tag>                                   tag aborted by the kernel
//! S <tag>                                   request held by fault injection (never committed)
//! ```

use std::io::{self, Write};

use crate::core::Event;
use crate::io::QueueSpec;

pub const MAGIC: &str = "# ublk-trace v1";

pub fn write_header(w: &mut impl Write, s: &QueueSpec) -> io::Result<()> {
    writeln!(
        w,
        "{MAGIC} dev={} queue={} depth={} dev_sectors={} max_io_bytes={}",
        s.dev_id, s.q_id, s.depth, s.dev_sectors, s.max_io_bytes
    )
}

/// One line per event, formatted by hand into a stack buffer: this runs for every tag event
/// of a traced device, so it must cost next to nothing (no `fmt` machinery, no allocation).
pub fn write_event(w: &mut impl Write, e: &Event) -> io::Result<()> {
    let mut line = Line::default();
    match *e {
        Event::Fetch { tag } => line.kind(b'F').num(tag as u64),
        Event::Request {
            tag,
            op,
            flags,
            sector,
            sectors,
        } => line
            .kind(b'R')
            .num(tag as u64)
            .num(op as u64)
            .hex(flags as u64)
            .num(sector)
            .num(sectors as u64),
        Event::Commit { tag, result } => line.kind(b'C').num(tag as u64).signed(result as i64),
        Event::Abort { tag } => line.kind(b'A').num(tag as u64),
        Event::Stall { tag } => line.kind(b'S').num(tag as u64),
    };
    line.buf[line.len] = b'\n';
    w.write_all(&line.buf[..line.len + 1])
}

/// A trace line under construction: "K n n n\n" fits easily in 96 bytes.
struct Line {
    buf: [u8; 96],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 96],
            len: 0,
        }
    }
}

impl Line {
    fn kind(&mut self, k: u8) -> &mut Line {
        self.buf[0] = k;
        self.len = 1;
        self
    }

    fn digits(&mut self, mut v: u64, radix: u64) -> &mut Line {
        self.buf[self.len] = b' ';
        self.len += 1;
        let mut tmp = [0u8; 20];
        let mut n = 0;
        loop {
            tmp[n] = b"0123456789abcdef"[(v % radix) as usize];
            n += 1;
            v /= radix;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            self.buf[self.len] = tmp[i];
            self.len += 1;
        }
        self
    }

    fn num(&mut self, v: u64) -> &mut Line {
        self.digits(v, 10)
    }

    fn hex(&mut self, v: u64) -> &mut Line {
        self.digits(v, 16)
    }

    fn signed(&mut self, v: i64) -> &mut Line {
        if v >= 0 {
            return self.num(v as u64);
        }
        self.digits(v.unsigned_abs(), 10);
        // Insert the sign after the separating space.
        let start = self.buf[..self.len]
            .iter()
            .rposition(|b| *b == b' ')
            .unwrap()
            + 1;
        self.buf.copy_within(start..self.len, start + 1);
        self.buf[start] = b'-';
        self.len += 1;
        self
    }
}

/// Header fields of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dev: u32,
    pub queue: u16,
    pub depth: u16,
    pub dev_sectors: u64,
    pub max_io_bytes: u32,
}

/// Parses a whole trace; errors name the line.
pub fn parse(text: &str) -> Result<(Header, Vec<Event>), String> {
    let mut lines = text.lines().enumerate();
    let (_, first) = lines.next().ok_or("empty trace")?;
    let rest = first
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("line 1: not a ublk trace (expected `{MAGIC} ...`)"))?;
    let field = |k: &str| -> Result<u64, String> {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .ok_or_else(|| format!("line 1: header lacks {k}="))?
            .parse()
            .map_err(|_| format!("line 1: bad {k}"))
    };
    let header = Header {
        dev: field("dev")? as u32,
        queue: field("queue")? as u16,
        depth: field("depth")? as u16,
        dev_sectors: field("dev_sectors")?,
        max_io_bytes: field("max_io_bytes")? as u32,
    };
    let mut events = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |j: usize| -> Result<u64, String> {
            f.get(j)
                .ok_or_else(|| format!("line {n}: missing field {j}"))?
                .parse()
                .map_err(|_| format!("line {n}: bad number {:?}", f[j]))
        };
        let tag = || -> Result<u16, String> {
            let t = num(1)?;
            u16::try_from(t)
                .ok()
                .filter(|t| *t < header.depth)
                .ok_or_else(|| format!("line {n}: tag {t} out of range"))
        };
        let e = match f.first().copied() {
            None => continue,
            Some(l) if l.starts_with('#') => continue,
            Some("F") => Event::Fetch { tag: tag()? },
            Some("R") => Event::Request {
                tag: tag()?,
                op: num(2)? as u8,
                flags: u32::from_str_radix(f.get(3).ok_or(format!("line {n}: missing flags"))?, 16)
                    .map_err(|_| format!("line {n}: bad flags"))?,
                sector: num(4)?,
                sectors: num(5)? as u32,
            },
            Some("C") => Event::Commit {
                tag: tag()?,
                result: f
                    .get(2)
                    .and_then(|r| r.parse().ok())
                    .ok_or(format!("line {n}: bad result"))?,
            },
            Some("A") => Event::Abort { tag: tag()? },
            Some("S") => Event::Stall { tag: tag()? },
            Some(k) => return Err(format!("line {n}: unknown event kind {k:?}")),
        };
        events.push(e);
    }
    Ok((header, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let spec = QueueSpec {
            dev_id: 3,
            q_id: 1,
            depth: u16::MAX,
            max_io_bytes: 65536,
            dev_sectors: 2048,
            ioctl_encode: true,
            recoverable: false,
            recovered: false,
            aborting: Default::default(),
            copy: crate::io::CopyMode::Buffer,
            mode: Default::default(),
            cpus: vec![],
            sched_batch: false,
            fault: None,
            trace: None,
            inflight: Default::default(),
        };
        let events = [
            Event::Fetch { tag: 0 },
            Event::Request {
                tag: 0,
                op: 1,
                flags: 0x20,
                sector: 100,
                sectors: 8,
            },
            Event::Commit {
                tag: 0,
                result: 4096,
            },
            Event::Commit { tag: 0, result: -5 },
            Event::Commit {
                tag: 65534,
                result: i32::MIN,
            },
            Event::Request {
                tag: 1,
                op: 255,
                flags: 0xff_ffff,
                sector: u64::MAX,
                sectors: u32::MAX,
            },
            Event::Stall { tag: 3 },
            Event::Abort { tag: 2 },
        ];
        let mut buf = Vec::new();
        write_header(&mut buf, &spec).unwrap();
        for e in &events {
            write_event(&mut buf, e).unwrap();
        }
        let (h, back) = parse(std::str::from_utf8(&buf).unwrap()).unwrap();
        assert_eq!(
            h,
            Header {
                dev: 3,
                queue: 1,
                depth: u16::MAX,
                dev_sectors: 2048,
                max_io_bytes: 65536
            }
        );
        assert_eq!(back, events);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("hello").unwrap_err().contains("line 1"));
        let h = "# ublk-trace v1 dev=0 queue=0 depth=2 dev_sectors=8 max_io_bytes=4096\n";
        assert!(parse(&format!("{h}F 0\nF 9\n"))
            .unwrap_err()
            .starts_with("line 3: tag 9 out of range"));
        assert!(parse(&format!("{h}X 0\n"))
            .unwrap_err()
            .contains("unknown event kind"));
        assert!(parse(&format!("{h}R 0 1\n"))
            .unwrap_err()
            .contains("line 2"));
    }
}
