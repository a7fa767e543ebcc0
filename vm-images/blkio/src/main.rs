//! blkio: the guest I/O engine. Seeded, verifiable writes and reads with O_DIRECT through
//! io_uring; reports say what went wrong per block (lost, stale, misplaced, corrupt).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::block::{self, BLOCK};
use blkio::cli::{Cli, Cmd, Common, PlanArgs, Rw};
use blkio::engine::{self, Kind, Op};
use blkio::model::Model;
use blkio::plan::{self, PlanSpec};
use blkio::rng::Rng;
use clap::Parser;

fn spec(file: &std::fs::File, p: &PlanArgs) -> Result<PlanSpec, String> {
    let span = match p.span {
        Some(s) => s,
        None => engine::size_of(file)?,
    };
    let s = PlanSpec {
        seed: p.seed,
        pattern: p.pattern,
        bytes: p.bytes,
        count: p.count,
        span,
        min: p.min,
        max: p.max,
        overlap: p.overlap,
    };
    s.validate()?;
    Ok(s)
}

fn write(
    c: &Common,
    p: &PlanArgs,
    model_file: &Option<String>,
    spread: bool,
    allow_errors: bool,
) -> Result<(), String> {
    let f = engine::open(&c.dev, true)?;
    let s = spec(&f, p)?;
    let plan = plan::writes(&s);
    let mut fresh = Model::new(s.seed, s.span);
    if allow_errors {
        // A failed write may leave a block as it was: remember what that is.
        fresh.prior = blkio::verify::snapshot(&f, s.span, c)?;
    }
    let model = std::cell::RefCell::new(fresh);
    let inflight = std::cell::RefCell::new(Vec::<(u64, u64, u64)>::with_capacity(c.qd));
    let failed = std::cell::RefCell::new(Failed::default());
    let mut on_failed = |op: &Op, errno: i32| {
        inflight.borrow_mut().retain(|(seq, _, _)| *seq != op.seq);
        model.borrow_mut().fail(op.seq);
        failed.borrow_mut().note(op, errno);
    };
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
        c.deadline(),
        spread,
        &mut |op, buf| {
            block::fill(buf, op.offset, s.seed, op.seq);
            let mut infl = inflight.borrow_mut();
            model.borrow_mut().submit(op.seq, op.offset, op.len, &infl);
            infl.push((op.seq, op.offset, op.len));
        },
        &mut |op, _| {
            inflight.borrow_mut().retain(|(seq, _, _)| *seq != op.seq);
            model.borrow_mut().complete(op.seq);
            Ok(())
        },
        allow_errors.then_some(&mut on_failed),
    )?;
    let model = model.into_inner();
    let path = blkio::model::default_path(&c.dev, model_file);
    std::fs::write(&path, model.to_bytes())
        .map_err(|e| format!("save the model to {path}: {e}"))?;
    engine::report(&format!("write {:?} seed {}", s.pattern, s.seed), &st);
    failed.into_inner().report();
    println!(
        "model: {} blocks written, {} may hold either of two racing writes; saved to {path}",
        model.written_blocks(),
        model.also.len()
    );
    Ok(())
}

/// Writes that failed under `--allow-errors`: how many, and the first one described.
#[derive(Default)]
struct Failed {
    count: u64,
    first: String,
}

impl Failed {
    fn note(&mut self, op: &Op, errno: i32) {
        if self.count == 0 {
            let e = std::io::Error::from_raw_os_error(errno);
            self.first = format!(
                "write #{} of {} bytes at offset {}: {e}",
                op.seq, op.len, op.offset
            );
        }
        self.count += 1;
    }

    fn report(&self) {
        if self.count > 0 {
            println!(
                "failed writes: {} (their blocks may hold old or new content), first: {}",
                self.count, self.first
            );
        }
    }
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
    blkio::verify::read(&f, c, &mut ops, chunk as usize, &mut |op, data| match data
        .iter()
        .position(|b| *b != 0)
    {
        None => Ok(()),
        Some(i) => Err(format!(
            "byte {} is {:#04x}, not zero",
            op.offset + i as u64,
            data[i]
        )),
    })?;
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
        false,
        &mut |_, buf| buf.fill(0xa5),
        &mut |_, _| Ok(()),
        None,
    )?;
    engine::report(
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
    // Behave like other command-line tools when piped into `head`: die quietly on SIGPIPE.
    // SAFETY: restoring the default disposition of one signal before any output.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let r = match Cli::parse().cmd {
        Cmd::Write {
            c,
            p,
            model,
            spread,
            allow_errors,
        } => write(&c, &p, &model, spread, allow_errors),
        Cmd::Verify {
            c,
            model,
            full,
            offset,
            len,
        } => blkio::verify::verify(
            &c,
            &model,
            full,
            offset.map(|o| (o, len.unwrap_or(u64::MAX))),
        ),
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
