//! `blkio verify`: read the device back in an order unrelated to the write order and check
//! every block against the reference model `blkio write` saved — each block as one of the
//! writes allowed there (or a legal tear between overlapping ones), unwritten blocks as zero
//! with `--full`, and the md5 of the whole span against the model's.

use md5::{Digest, Md5};

use crate::block::{self, Verdict, BLOCK};
use crate::cli::Common;
use crate::engine::{self, Kind, Op};
use crate::model::{Model, PRIOR};
use crate::rng::Rng;

/// Mismatches described one by one (the count covers the rest).
pub const MAX_REPORTS: usize = 20;

pub fn verify(
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
    let st = read(&f, c, &mut ops, VERIFY_CHUNK as usize, &mut |op, data| {
        for (i, blk) in data.chunks_exact(BLOCK).enumerate() {
            check.block(&model, blk, op.offset + (i * BLOCK) as u64);
        }
        if md5 {
            chunk_md5[(op.offset / VERIFY_CHUNK) as usize] = Some(Md5::digest(data).into());
        }
        Ok(())
    })?;
    engine::report(&format!("verify seed {seed} bytes {lo}..{hi}"), &st);
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

/// Reads `ops` (none longer than `chunk`) at `c`'s depth and by its deadline; `on_data` sees
/// (and may fail on) each one's bytes.
pub fn read(
    f: &std::fs::File,
    c: &Common,
    ops: &mut dyn Iterator<Item = Op>,
    chunk: usize,
    on_data: &mut engine::Complete,
) -> Result<engine::Stats, String> {
    let mut nothing = |_: &Op, _: &mut [u8]| {};
    engine::run(
        f,
        ops,
        c.qd,
        chunk,
        c.deadline(),
        false,
        &mut nothing,
        on_data,
        None,
    )
}

/// Reads are issued in chunks of this many bytes (and md5'd per chunk).
const VERIFY_CHUNK: u64 = 1 << 20;

/// The device and the model `blkio write` left for it, checked to fit.
fn load_model(c: &Common, model_file: &Option<String>) -> Result<(std::fs::File, Model), String> {
    let f = engine::open(&c.dev, false)?;
    let path = crate::model::default_path(&c.dev, model_file);
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
pub fn snapshot(f: &std::fs::File, span: u64, c: &Common) -> Result<Vec<[u8; 16]>, String> {
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
    read(f, c, &mut ops, chunk as usize, &mut keep)?;
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
