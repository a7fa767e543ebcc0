//! blkio: the guest I/O engine. Seeded, verifiable writes and reads with O_DIRECT through
//! io_uring; reports say what went wrong per block (lost, stale, misplaced, corrupt).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use blkio::block::{self, Verdict, BLOCK};
use blkio::engine::{self, Kind, Op};
use blkio::model::{Model, PRIOR};
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
    #[arg(long, default_value_t = 32, value_parser = parse_qd)]
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
    /// Bytes to write (0: no byte limit)
    #[arg(long, value_parser = parse_size, default_value = "0")]
    bytes: u64,
    /// Number of writes (0: no count limit)
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Device bytes the writes spread over [default: the device size]
    #[arg(long, value_parser = parse_size)]
    span: Option<u64>,
    #[arg(long, default_value_t = plan::DEFAULT_MIN, value_parser = parse_size)]
    min: u64,
    #[arg(long, default_value_t = plan::DEFAULT_MAX, value_parser = parse_size)]
    max: u64,
    /// Scattered: also re-write ranges overlapping earlier writes
    #[arg(long)]
    overlap: bool,
}

fn parse_qd(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=engine::MAX_QD).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a queue depth in 1..={}",
            engine::MAX_QD
        )),
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the seeded plan and save the reference model (for `verify`)
    Write {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        p: PlanArgs,
        /// Where to save the reference model [default: /tmp/blkio-DEVNAME.model]
        #[arg(long)]
        model: Option<String>,
        /// Move the submitting thread across all CPUs so every ublk queue gets requests
        #[arg(long)]
        spread: bool,
        /// A failed write (e.g. EIO while a crashed server is being replaced) does not end the
        /// run: the model lets its blocks hold old or new content; acknowledged writes stay exact
        #[arg(long)]
        allow_errors: bool,
    },
    /// Read back and check against the saved model; with --full also every unwritten block
    /// (zeroes) and the md5 of the whole span against the model
    Verify {
        #[command(flatten)]
        c: Common,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        full: bool,
        /// Only check this range (default: the model's whole span)
        #[arg(long, value_parser = parse_size)]
        offset: Option<u64>,
        #[arg(long, value_parser = parse_size, requires = "offset")]
        len: Option<u64>,
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
        count: p.count,
        span,
        min: p.min,
        max: p.max,
        overlap: p.overlap,
    };
    s.validate()?;
    Ok(s)
}

fn model_path(dev: &str, given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| {
        format!(
            "/tmp/blkio-{}.model",
            dev.rsplit('/').next().unwrap_or("dev")
        )
    })
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
        fresh.prior = snapshot(&f, s.span, c)?;
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
        deadline(c),
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
    let path = model_path(&c.dev, model_file);
    std::fs::write(&path, model.to_bytes())
        .map_err(|e| format!("save the model to {path}: {e}"))?;
    report(&format!("write {:?} seed {}", s.pattern, s.seed), &st);
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

const MAX_REPORTS: usize = 20;

fn verify(
    c: &Common,
    model_file: &Option<String>,
    full: bool,
    range: Option<(u64, u64)>,
) -> Result<(), String> {
    let (f, model) = load_model(c, model_file)?;
    let (seed, span) = (model.seed, model.span);
    let (lo, hi) = verify_range(range, span)?;
    let extents = read_plan(&model, lo, hi, full);
    // The reference md5 knows written blocks and zeroes, not a prior snapshot's content.
    let md5 = full && (lo, hi) == (0, span) && model.prior.is_empty();
    let mut check = Check::new(&model);
    let mut chunk_md5: Vec<Option<[u8; 16]>> = vec![None; if md5 { extents.len() } else { 0 }];
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
        VERIFY_CHUNK as usize,
        deadline(c),
        false,
        &mut |_, _| {},
        &mut |op, data| {
            for (i, blk) in data.chunks_exact(BLOCK).enumerate() {
                check.block(&model, blk, op.offset + (i * BLOCK) as u64);
            }
            if md5 {
                chunk_md5[(op.offset / VERIFY_CHUNK) as usize] = Some(Md5::digest(data).into());
            }
            Ok(())
        },
        None,
    )?;
    report(&format!("verify seed {seed} bytes {lo}..{hi}"), &st);
    check.mismatches()?;
    if md5 && check.torn_blocks > 0 {
        println!(
            "md5 not compared: {} torn block(s) have no single reference content",
            check.torn_blocks
        );
    } else if md5 {
        compare_md5(&model, &chunk_md5, &check.found)?;
    }
    let written = model.last[(lo / BLOCK as u64) as usize..(hi / BLOCK as u64) as usize]
        .iter()
        .filter(|s| **s > 0)
        .count();
    println!(
        "verify: all {written} written blocks match{}{}",
        if full { ", every other block is zero" } else { "" },
        match check.torn_blocks {
            0 => String::new(),
            n => format!(" ({n} torn between overlapping writes that were in flight together: every byte from one of them, as the block layer allows)"),
        }
    );
    Ok(())
}

/// Reads are issued in chunks of this many bytes (and md5'd per chunk).
const VERIFY_CHUNK: u64 = 1 << 20;

/// The device and the model `blkio write` left for it, checked to fit.
fn load_model(c: &Common, model_file: &Option<String>) -> Result<(std::fs::File, Model), String> {
    let f = engine::open(&c.dev, false)?;
    let path = model_path(&c.dev, model_file);
    let model = Model::from_bytes(
        &std::fs::read(&path)
            .map_err(|e| format!("read the model {path} (written by `blkio write`): {e}"))?,
    )
    .map_err(|e| format!("{path}: {e}"))?;
    if engine::size_of(&f)? < model.span {
        return Err(format!(
            "{} is smaller than the model's span {}",
            c.dev, model.span
        ));
    }
    Ok((f, model))
}

/// `--offset/--bytes` as a block-aligned [lo, hi) inside the span (default: all of it).
fn verify_range(range: Option<(u64, u64)>, span: u64) -> Result<(u64, u64), String> {
    let b = BLOCK as u64;
    match range {
        Some((o, l)) if o.is_multiple_of(b) && o < span => {
            Ok((o, o.saturating_add(l).min(span).div_ceil(b) * b))
        }
        Some(_) => Err(format!(
            "--offset must be a multiple of 4 KiB inside the model's span {span}"
        )),
        None => Ok((0, span)),
    }
}

/// Which ranges to read — everything, or the written blocks merged into runs of at most a
/// chunk — in an order unrelated to the write order.
fn read_plan(model: &Model, lo: u64, hi: u64, full: bool) -> Vec<(u64, u64)> {
    let (b, chunk) = (BLOCK as u64, VERIFY_CHUNK);
    let mut extents: Vec<(u64, u64)> = Vec::new();
    if full {
        extents = (lo..hi)
            .step_by(chunk as usize)
            .map(|o| (o, chunk.min(hi - o)))
            .collect();
    } else {
        let (mut blk, n) = (lo / b, hi / b);
        while blk < n {
            if model.last[blk as usize] == 0 {
                blk += 1;
                continue;
            }
            let start = blk;
            while blk < n && model.last[blk as usize] > 0 && (blk - start) * b < chunk {
                blk += 1;
            }
            extents.push((start * b, (blk - start) * b));
        }
    }
    let mut rng = Rng::new(model.seed ^ 0x7e57);
    for i in (1..extents.len()).rev() {
        extents.swap(i, rng.below(i as u64 + 1) as usize);
    }
    extents
}

/// What the blocks read so far say against the model.
struct Check {
    /// The first `MAX_REPORTS` mismatches, described.
    bad: Vec<String>,
    bad_blocks: u64,
    /// Blocks holding a byte-wise mix of writes that raced over them (legal).
    torn_blocks: u64,
    /// The seq each block was found to hold (for the model's md5).
    found: Vec<u64>,
}

impl Check {
    fn new(model: &Model) -> Check {
        Check {
            bad: Vec::new(),
            bad_blocks: 0,
            torn_blocks: 0,
            found: vec![0; (model.span / BLOCK as u64) as usize],
        }
    }

    /// One 4 KiB block read at `off`.
    fn block(&mut self, model: &Model, blk: &[u8], off: u64) {
        let at = off / BLOCK as u64;
        let allowed = model.allowed(at);
        let ok = if allowed.is_empty() {
            holds(model, blk, off, PRIOR)
        } else {
            match allowed.iter().find(|s| holds(model, blk, off, **s)) {
                Some(s) => {
                    self.found[at as usize] = *s;
                    true
                }
                None => false,
            }
        };
        if ok {
            return;
        }
        if torn(model, blk, off, &allowed) {
            self.torn_blocks += 1;
            return;
        }
        self.bad_blocks += 1;
        if self.bad.len() < MAX_REPORTS {
            self.bad.push(mismatch(model, blk, off, &allowed));
        }
    }

    /// Prints the mismatches and fails if there was any.
    fn mismatches(&self) -> Result<(), String> {
        if self.bad_blocks == 0 {
            return Ok(());
        }
        for line in &self.bad {
            println!("MISMATCH {line}");
        }
        Err(format!(
            "{} block(s) of 4 KiB differ from the reference model (first {} listed)",
            self.bad_blocks,
            self.bad.len()
        ))
    }
}

/// md5 of the span (over the chunk digests in offset order): the device's against the model's
/// content, each block as found (one of the writes allowed there) or zero.
fn compare_md5(model: &Model, chunk_md5: &[Option<[u8; 16]>], found: &[u64]) -> Result<(), String> {
    let (b, chunk, span) = (BLOCK as u64, VERIFY_CHUNK, model.span);
    let device = md5_hex(chunk_md5.iter().map(|d| d.expect("every chunk read")));
    let reference = md5_hex((0..span).step_by(chunk as usize).map(|o| {
        let mut buf = vec![0u8; chunk.min(span - o) as usize];
        for (i, blk) in buf.chunks_exact_mut(BLOCK).enumerate() {
            let at = o + i as u64 * b;
            let seq = found[(at / b) as usize];
            if seq > 0 {
                block::fill_block(blk, at, model.seed, seq);
            }
        }
        Md5::digest(&buf).into()
    }));
    println!(
        "md5 of {} MiB: device {device}, reference model {reference}",
        span >> 20
    );
    if device != reference {
        return Err("the device's md5 differs from the reference model".into());
    }
    Ok(())
}

fn holds(model: &Model, blk: &[u8], off: u64, seq: u64) -> bool {
    if seq != PRIOR {
        return block::check(blk, off, model.seed, Some(seq)) == Verdict::Ok;
    }
    match model.prior.get((off / BLOCK as u64) as usize) {
        Some(digest) => <[u8; 16]>::from(Md5::digest(blk)) == *digest,
        None => block::check(blk, off, model.seed, None) == Verdict::Ok,
    }
}

/// Whether a block that holds none of its allowed writes is a byte-wise mix of them (writes
/// that raced over it; with a prior snapshot, the prior content cannot be rendered and is
/// left out).
fn torn(model: &Model, blk: &[u8], off: u64, allowed: &[u64]) -> bool {
    let unrenderable = |s: &&u64| **s == PRIOR && !model.prior.is_empty();
    let candidates: Vec<u64> = allowed
        .iter()
        .filter(|s| !unrenderable(s))
        .copied()
        .collect();
    block::torn_between(blk, off, model.seed, &candidates)
}

/// The md5 of every block of the first `span` bytes: what a failed write may leave behind.
fn snapshot(f: &std::fs::File, span: u64, c: &Common) -> Result<Vec<[u8; 16]>, String> {
    let chunk: u64 = 1 << 20;
    let mut digests = vec![[0u8; 16]; (span / BLOCK as u64) as usize];
    let mut ops = (0..span).step_by(chunk as usize).map(|o| Op {
        kind: Kind::Read,
        offset: o,
        len: chunk.min(span - o),
        seq: 0,
    });
    let mut keep = |op: &Op, data: &[u8]| {
        for (i, blk) in data.chunks_exact(BLOCK).enumerate() {
            digests[op.offset as usize / BLOCK + i] = Md5::digest(blk).into();
        }
        Ok(())
    };
    engine::run(
        f,
        &mut ops,
        c.qd,
        chunk as usize,
        deadline(c),
        false,
        &mut |_, _| {},
        &mut keep,
        None,
    )?;
    Ok(digests)
}

/// One mismatch in words; after failed writes, says whether the expected write was
/// acknowledged (it must survive) or failed (old or new content were both acceptable).
fn mismatch(model: &Model, blk: &[u8], off: u64, allowed: &[u64]) -> String {
    let want = allowed.first().copied();
    let line = block::check(blk, off, model.seed, want).describe(off, want);
    match want {
        _ if model.failed.is_empty() => line,
        Some(w) if model.acknowledged(w) => format!("acknowledged write lost: {line}"),
        _ => format!("a failed write's block holds neither old nor new content (allowed: {allowed:?}): {line}"),
    }
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
        false,
        &mut |_, _| {},
        &mut |op, data| match data.iter().position(|b| *b != 0) {
            None => Ok(()),
            Some(i) => Err(format!(
                "byte {} is {:#04x}, not zero",
                op.offset + i as u64,
                data[i]
            )),
        },
        None,
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
        false,
        &mut |_, buf| buf.fill(0xa5),
        &mut |_, _| Ok(()),
        None,
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
        } => verify(
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
