//! blkio: the guest I/O engine. Seeded, verifiable writes and reads with O_DIRECT through
//! io_uring; reports say what went wrong per block (lost, stale, misplaced, corrupt).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::block::{self, Verdict, BLOCK};
use blkio::engine::{self, Kind, Op};
use blkio::plan::{self, Pattern, PlanSpec};
use blkio::rng::Rng;
use clap::{Args, Parser, Subcommand};
use md5::{Digest, Md5};
use ublk::util::parse_size;

#[derive(Parser)]
#[command(
    name = "blkio",
    version,
    about = "Verifiable block I/O for ublk tests (O_DIRECT, io_uring)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Block device (or file)
    #[arg(long)]
    dev: String,
    /// Requests in flight
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Hard limit for the whole command; in-flight requests at the limit are reported as a hang
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args, Clone)]
struct PlanArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = Pattern::Scattered)]
    pattern: Pattern,
    /// Bytes to write
    #[arg(long, value_parser = parse_size)]
    bytes: u64,
    /// Device bytes the writes spread over [default: the device size]
    #[arg(long, value_parser = parse_size)]
    span: Option<u64>,
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    min: u64,
    #[arg(long, default_value = "512KiB", value_parser = parse_size)]
    max: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the seeded plan
    Write {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: PlanArgs,
    },
    /// Read back and verify the seeded plan; with --full also every unwritten block (zeroes)
    /// and the md5 of the span against the reference model
    Verify {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: PlanArgs,
        #[arg(long)]
        full: bool,
    },
    /// Check that a byte range reads back as zeroes (after discard / write-zeroes)
    Zeroes {
        #[command(flatten)]
        c: Common,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: u64,
    },
    /// Discard a byte range (BLKDISCARD), or zero it (BLKZEROOUT: write-zeroes) with --zeroout
    Discard {
        #[arg(long)]
        dev: String,
        #[arg(long, value_parser = parse_size)]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: u64,
        #[arg(long)]
        zeroout: bool,
    },
    /// Random 4 KiB (or --bs) reads or writes for --seconds; prints IOPS
    Bench {
        #[command(flatten)]
        c: Common,
        #[arg(long, value_enum, default_value_t = Rw::Randread)]
        rw: Rw,
        #[arg(long, default_value = "4KiB", value_parser = parse_size)]
        bs: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Rw {
    Randread,
    Randwrite,
}

fn spec(file: &std::fs::File, p: &PlanArgs) -> Result<PlanSpec, String> {
    let span = match p.span {
        Some(s) => s,
        None => engine::size_of(file)?,
    };
    let s = PlanSpec {
        seed: p.seed,
        pattern: p.pattern,
        bytes: p.bytes,
        span,
        min: p.min,
        max: p.max,
    };
    s.validate()?;
    Ok(s)
}

fn deadline(c: &Common) -> Instant {
    Instant::now() + Duration::from_secs(c.timeout)
}

fn report(what: &str, st: &engine::Stats) {
    let secs = st.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{what}: {} requests, {} MiB in {secs:.2} s ({:.0} IOPS, {:.1} MiB/s)",
        st.ops,
        st.bytes >> 20,
        st.ops as f64 / secs,
        st.bytes as f64 / secs / 1048576.0
    );
}

fn write(c: &Common, p: &PlanArgs) -> Result<(), String> {
    let f = engine::open(&c.dev, true)?;
    let s = spec(&f, p)?;
    let plan = plan::writes(&s);
    let mut ops = plan.iter().map(|e| Op {
        kind: Kind::Write,
        offset: e.offset,
        len: e.len,
        seq: e.seq,
    });
    let st = engine::run(
        &f,
        &mut ops,
        c.qd,
        s.max as usize,
        deadline(c),
        &mut |op, buf| block::fill(buf, op.offset, s.seed, op.seq),
        &mut |_, _| Ok(()),
    )?;
    report(&format!("write {:?} seed {}", s.pattern, s.seed), &st);
    Ok(())
}

const MAX_REPORTS: usize = 20;

fn verify(c: &Common, p: &PlanArgs, full: bool) -> Result<(), String> {
    let f = engine::open(&c.dev, false)?;
    let s = spec(&f, p)?;
    let plan = plan::writes(&s);
    let expect = plan::expected_map(&s, &plan);
    let chunk = 1 << 20;
    // Reads in an order unrelated to the write order, so stale caches cannot hide anything.
    let mut extents: Vec<(u64, u64)> = if full {
        (0..s.span)
            .step_by(chunk as usize)
            .map(|o| (o, chunk.min(s.span - o)))
            .collect()
    } else {
        plan.iter().map(|e| (e.offset, e.len)).collect()
    };
    let mut rng = Rng::new(s.seed ^ 0x7e57);
    for i in (1..extents.len()).rev() {
        extents.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut bad = Vec::new();
    let mut bad_blocks = 0u64;
    let mut md5_by_chunk: Vec<Option<[u8; 16]>> = vec![None; if full { extents.len() } else { 0 }];
    let mut ops = extents.iter().enumerate().map(|(i, &(offset, len))| Op {
        kind: Kind::Read,
        offset,
        len,
        seq: i as u64,
    });
    let st = engine::run(
        &f,
        &mut ops,
        c.qd,
        chunk.max(s.max) as usize,
        deadline(c),
        &mut |_, _| {},
        &mut |op, data| {
            for (i, blk) in data.chunks_exact(BLOCK).enumerate() {
                let off = op.offset + (i * BLOCK) as u64;
                let want = expect[(off / BLOCK as u64) as usize];
                let want = (want > 0).then_some(want);
                let v = block::check(blk, off, s.seed, want);
                if v != Verdict::Ok {
                    bad_blocks += 1;
                    if bad.len() < MAX_REPORTS {
                        bad.push(v.describe(off, want));
                    }
                }
            }
            if full {
                md5_by_chunk[(op.offset / chunk) as usize] = Some(Md5::digest(data).into());
            }
            Ok(())
        },
    )?;
    report(&format!("verify {:?} seed {}", s.pattern, s.seed), &st);
    if full {
        // md5 of the span = md5 over the chunk digests in offset order (device vs model).
        let device = md5_hex(md5_by_chunk.iter().map(|d| d.expect("every chunk read")));
        let model = md5_hex((0..s.span).step_by(chunk as usize).map(|o| {
            let mut buf = vec![0u8; chunk.min(s.span - o) as usize];
            for (i, blk) in buf.chunks_exact_mut(BLOCK).enumerate() {
                let off = o + (i * BLOCK) as u64;
                let seq = expect[(off / BLOCK as u64) as usize];
                if seq > 0 {
                    block::fill_block(blk, off, s.seed, seq);
                }
            }
            Md5::digest(&buf).into()
        }));
        println!(
            "md5 of {} MiB: device {device}, reference model {model}",
            s.span >> 20
        );
        if device != model && bad_blocks == 0 {
            return Err(
                "md5 differs from the reference model although every block verified".into(),
            );
        }
    }
    if bad_blocks > 0 {
        for b in &bad {
            println!("MISMATCH {b}");
        }
        return Err(format!(
            "{bad_blocks} block(s) of 4 KiB differ from what was written (first {} listed)",
            bad.len()
        ));
    }
    println!(
        "verify: all {} written blocks match{}",
        expect.iter().filter(|e| **e > 0).count(),
        if full {
            ", every other block is zero"
        } else {
            ""
        }
    );
    Ok(())
}

fn md5_hex(parts: impl Iterator<Item = [u8; 16]>) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn zeroes(c: &Common, offset: u64, len: u64) -> Result<(), String> {
    let f = engine::open(&c.dev, false)?;
    if !offset.is_multiple_of(BLOCK as u64) || !len.is_multiple_of(BLOCK as u64) || len == 0 {
        return Err("--offset and --len must be multiples of 4 KiB".into());
    }
    let chunk = 1 << 20;
    let mut ops = (offset..offset + len).step_by(chunk as usize).map(|o| Op {
        kind: Kind::Read,
        offset: o,
        len: chunk.min(offset + len - o),
        seq: 0,
    });
    engine::run(
        &f,
        &mut ops,
        c.qd,
        chunk as usize,
        deadline(c),
        &mut |_, _| {},
        &mut |op, data| match data.iter().position(|b| *b != 0) {
            None => Ok(()),
            Some(i) => Err(format!(
                "byte {} is {:#04x}, not zero",
                op.offset + i as u64,
                data[i]
            )),
        },
    )?;
    println!("zeroes: {len} bytes at offset {offset} read back as zeroes");
    Ok(())
}

fn discard(dev: &str, offset: u64, len: u64, zeroout: bool) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // _IO(0x12, 119) and _IO(0x12, 127) from linux/fs.h.
    const BLKDISCARD: libc::c_ulong = 0x1277;
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("open {dev}: {e}"))?;
    let range = [offset, len];
    let (req, name) = if zeroout {
        (BLKZEROOUT, "BLKZEROOUT")
    } else {
        (BLKDISCARD, "BLKDISCARD")
    };
    // SAFETY: both ioctls read a u64[2] (start, length).
    if unsafe { libc::ioctl(f.as_raw_fd(), req, range.as_ptr()) } != 0 {
        return Err(format!(
            "{name} {offset}+{len} on {dev}: {}",
            std::io::Error::last_os_error()
        ));
    }
    println!(
        "{}: {len} bytes at offset {offset}",
        if zeroout { "zeroout" } else { "discard" }
    );
    Ok(())
}

fn bench(c: &Common, rw: Rw, bs: u64, seconds: u64, seed: u64) -> Result<(), String> {
    let f = engine::open(&c.dev, rw == Rw::Randwrite)?;
    let size = engine::size_of(&f)?;
    if bs == 0 || !bs.is_multiple_of(512) || bs > size {
        return Err(format!(
            "--bs {bs} must be a multiple of 512 no larger than the device"
        ));
    }
    let mut rng = Rng::new(seed);
    let stop = Instant::now() + Duration::from_secs(seconds);
    let kind = if rw == Rw::Randread {
        Kind::Read
    } else {
        Kind::Write
    };
    let blocks = size / bs;
    let mut seq = 0;
    let mut ops = std::iter::from_fn(|| {
        seq += 1;
        (Instant::now() < stop).then(|| Op {
            kind,
            offset: rng.below(blocks) * bs,
            len: bs,
            seq,
        })
    });
    let limit = Instant::now() + Duration::from_secs(seconds + c.timeout);
    let st = engine::run(
        &f,
        &mut ops,
        c.qd,
        bs as usize,
        limit,
        &mut |_, buf| buf.fill(0xa5),
        &mut |_, _| Ok(()),
    )?;
    report(
        &format!(
            "{} {} KiB qd {} on {}",
            if kind == Kind::Read {
                "randread"
            } else {
                "randwrite"
            },
            bs >> 10,
            c.qd,
            c.dev
        ),
        &st,
    );
    Ok(())
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Write { c, p } => write(&c, &p),
        Cmd::Verify { c, p, full } => verify(&c, &p, full),
        Cmd::Zeroes { c, offset, len } => zeroes(&c, offset, len),
        Cmd::Bench {
            c,
            rw,
            bs,
            seconds,
            seed,
        } => bench(&c, rw, bs, seconds, seed),
        Cmd::Discard {
            dev,
            offset,
            len,
            zeroout,
        } => discard(&dev, offset, len, zeroout),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blkio: error: {e}");
            ExitCode::FAILURE
        }
    }
}
