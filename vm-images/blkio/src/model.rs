//! The reference model: what every 4 KiB block of the span must hold after a run.
//!
//! Built while writing, at submission time: a block's expected write is the last one
//! submitted over it, and if other writes over that block were still in flight at that
//! moment, the device may legally hold any of them (the kernel may complete concurrent
//! overlapping writes in any order). Those blocks accept a set of writes, so overlapping
//! in-flight writes never cause false reports, while everything else is exact.
//!
//! A crash (the server killed, user recovery) can fail writes that were in flight. A failed
//! write may or may not have reached each of its blocks, so wherever it might be the content,
//! what it overwrote might be too ([`Model::fail`]; [`PRIOR`] stands for what the block held
//! before the run: its digest in `prior` when the writer took a snapshot, else zeroes). An
//! acknowledged write is never relaxed: it must survive byte for byte until a later write
//! covers it.

use std::collections::HashMap;

use crate::block::BLOCK;

#[derive(Clone, Debug)]
pub struct Model {
    pub seed: u64,
    pub span: u64,
    /// Per block: seq of the last write submitted over it (0 = never written).
    pub last: Vec<u64>,
    /// Blocks that may also hold other writes that were in flight with the last one.
    pub also: HashMap<u64, Vec<u64>>,
    /// Writes that failed (sorted): their blocks accept old or new content.
    pub failed: Vec<u64>,
    /// Per block, the md5 of its content before the run (empty: no snapshot; unwritten
    /// blocks then must be zeroes).
    pub prior: Vec<[u8; 16]>,
    /// Per in-flight write: each block's allowed writes just before it (what a failure restores).
    pending: HashMap<u64, Vec<(u64, Vec<u64>)>>,
}

const MAGIC: &[u8; 8] = b"BLKIOMD2";
/// In an allowed set: the block's content before the run (see `prior`).
pub const PRIOR: u64 = 0;

impl Model {
    pub fn new(seed: u64, span: u64) -> Model {
        Model {
            seed,
            span,
            last: vec![0; (span / BLOCK as u64) as usize],
            also: HashMap::new(),
            failed: Vec::new(),
            prior: Vec::new(),
            pending: HashMap::new(),
        }
    }

    /// Records write `seq` over `offset..offset+len`, submitted while `inflight` writes
    /// (seq, offset, len) had not completed.
    pub fn submit(&mut self, seq: u64, offset: u64, len: u64, inflight: &[(u64, u64, u64)]) {
        let b = BLOCK as u64;
        let mut before = Vec::with_capacity((len / b) as usize);
        for blk in offset / b..(offset + len) / b {
            let at = blk * b;
            before.push((blk, self.allowed_or_zeroes(blk)));
            let racing: Vec<u64> = inflight
                .iter()
                .filter(|(s, o, l)| *s != seq && *o <= at && at < o + l)
                .map(|(s, _, _)| *s)
                .collect();
            if racing.is_empty() {
                self.also.remove(&blk);
            } else {
                self.also.insert(blk, racing);
            }
            self.last[blk as usize] = seq;
        }
        self.pending.insert(seq, before);
    }

    /// Write `seq` completed: acknowledged, its content is now required (until overwritten).
    pub fn complete(&mut self, seq: u64) {
        self.pending.remove(&seq);
    }

    /// Write `seq` failed: each block it might hold may instead hold what it overwrote, unless
    /// a later write over the block was acknowledged (then it is that one, or `seq`).
    pub fn fail(&mut self, seq: u64) {
        let before = self
            .pending
            .remove(&seq)
            .expect("fail() of a write in flight");
        for (blk, prior) in before {
            let mut now = self.allowed_or_zeroes(blk);
            let acked_later = now
                .iter()
                .any(|s| *s > seq && !self.pending.contains_key(s) && self.acknowledged(*s));
            if !now.contains(&seq) || acked_later {
                continue;
            }
            now.extend(prior);
            let last = self.last[blk as usize];
            let mut also: Vec<u64> = now.into_iter().filter(|s| *s != last).collect();
            also.sort_unstable();
            also.dedup();
            self.also.insert(blk, also);
        }
        if let Err(at) = self.failed.binary_search(&seq) {
            self.failed.insert(at, seq);
        }
    }

    /// Whether write `seq` was acknowledged (or still in flight), not failed.
    pub fn acknowledged(&self, seq: u64) -> bool {
        self.failed.binary_search(&seq).is_err()
    }

    fn allowed_or_zeroes(&self, blk: u64) -> Vec<u64> {
        match self.allowed(blk) {
            v if v.is_empty() => vec![PRIOR],
            v => v,
        }
    }

    /// Writes that block `blk` may hold (empty = its prior content; [`PRIOR`] in a set: may be).
    pub fn allowed(&self, blk: u64) -> Vec<u64> {
        let last = self.last[blk as usize];
        if last == 0 {
            return Vec::new();
        }
        let mut v = vec![last];
        if let Some(a) = self.also.get(&blk) {
            v.extend(a);
        }
        v
    }

    pub fn written_blocks(&self) -> usize {
        self.last.iter().filter(|s| **s > 0).count()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut put = |v: u64| out.extend_from_slice(&v.to_le_bytes());
        put(self.seed);
        put(self.span);
        for s in &self.last {
            put(*s);
        }
        let mut also: Vec<(&u64, &Vec<u64>)> = self.also.iter().collect();
        also.sort();
        put(also.iter().map(|(_, v)| v.len() as u64).sum());
        for (blk, seqs) in also {
            for s in seqs {
                put(*blk);
                put(*s);
            }
        }
        put(self.failed.len() as u64);
        for s in &self.failed {
            put(*s);
        }
        put(self.prior.len() as u64);
        for d in &self.prior {
            out.extend_from_slice(d);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Model, String> {
        let bad = || "not a blkio model file (or truncated)".to_string();
        if b.len() < 24 || &b[..8] != MAGIC {
            return Err(bad());
        }
        let word = |i: usize| -> Result<u64, String> {
            Ok(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8).ok_or_else(bad)?.try_into().unwrap(),
            ))
        };
        let (seed, span) = (word(1)?, word(2)?);
        let n = (span / BLOCK as u64) as usize;
        if !span.is_multiple_of(BLOCK as u64) || b.len() < (3 + n + 1) * 8 {
            return Err(bad());
        }
        let last = (0..n).map(|i| word(3 + i)).collect::<Result<Vec<_>, _>>()?;
        let nalso = word(3 + n)? as usize;
        let mut also: HashMap<u64, Vec<u64>> = HashMap::new();
        for k in 0..nalso {
            let blk = word(4 + n + 2 * k)?;
            if blk as usize >= n {
                return Err(bad());
            }
            also.entry(blk).or_default().push(word(5 + n + 2 * k)?);
        }
        let at = 4 + n + 2 * nalso;
        let nfailed = word(at)? as usize;
        let failed = (0..nfailed)
            .map(|k| word(at + 1 + k))
            .collect::<Result<Vec<_>, _>>()?;
        let at = at + 1 + nfailed;
        let nprior = word(at)? as usize;
        if nprior != 0 && nprior != n {
            return Err(bad());
        }
        let digests = b
            .get((at + 1) * 8..(at + 1) * 8 + nprior * 16)
            .ok_or_else(bad)?;
        let prior = digests
            .chunks_exact(16)
            .map(|d| d.try_into().unwrap())
            .collect();
        Ok(Model {
            seed,
            span,
            last,
            also,
            failed,
            prior,
            pending: HashMap::new(),
        })
    }
}

/// Where `blkio write` saves the model of `dev` and `blkio verify` looks for it, unless given.
pub fn default_path(dev: &str, given: &Option<String>) -> String {
    given.clone().unwrap_or_else(|| {
        format!(
            "/tmp/blkio-{}.model",
            dev.rsplit('/').next().unwrap_or("dev")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_overlaps_allow_either_write() {
        let mut m = Model::new(9, 64 * 1024);
        m.submit(1, 0, 16384, &[]);
        // Write 2 overlaps blocks 2-3 of write 1 while write 1 is still in flight.
        m.submit(2, 8192, 16384, &[(1, 0, 16384)]);
        assert_eq!(m.allowed(0), vec![1]);
        assert_eq!(m.allowed(2), vec![2, 1]);
        assert_eq!(m.allowed(4), vec![2]);
        assert_eq!(m.allowed(9), Vec::<u64>::new());
        // A later write with nothing in flight makes the block exact again.
        m.submit(3, 8192, 4096, &[]);
        assert_eq!(m.allowed(2), vec![3]);
        let back = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!((&back.last, &back.also), (&m.last, &m.also));
        assert_eq!(back.written_blocks(), 6);
        assert!(Model::from_bytes(b"junk").is_err());
        assert!(Model::from_bytes(&m.to_bytes()[..40]).is_err());
    }

    #[test]
    fn a_failed_write_allows_old_or_new_and_nothing_else() {
        let mut m = Model::new(9, 64 * 1024);
        m.submit(1, 0, 8192, &[]);
        m.complete(1); // acknowledged: blocks 0-1 must hold write 1
        m.submit(2, 4096, 8192, &[]); // over block 1 (write 1) and block 2 (never written)
        m.fail(2);
        assert_eq!(m.allowed(0), vec![1]);
        assert_eq!(m.allowed(1), vec![2, 1]);
        assert_eq!(m.allowed(2), vec![2, PRIOR]);
        assert!(m.acknowledged(1) && !m.acknowledged(2));
        // A later acknowledged write makes the block exact again.
        m.submit(3, 4096, 4096, &[]);
        m.complete(3);
        assert_eq!(m.allowed(1), vec![3]);
        m.prior = vec![[7u8; 16]; 16];
        let back = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!((back.also, back.failed), (m.also.clone(), vec![2]));
        assert_eq!(back.prior, m.prior);
    }

    #[test]
    fn two_racing_writes_that_both_fail_allow_what_was_there_before() {
        let mut m = Model::new(9, 16 * 1024);
        m.submit(1, 0, 4096, &[]);
        m.complete(1);
        m.submit(2, 0, 4096, &[]);
        m.submit(3, 0, 4096, &[(2, 0, 4096)]);
        m.fail(3);
        // What 3 overwrote was 2 (in flight): 1 becomes possible only if 2 fails too.
        assert_eq!(m.allowed(0), vec![3, 2]);
        m.fail(2);
        assert_eq!(m.allowed(0), vec![3, 1, 2]);
        // A failure after an acknowledged overwrite changes nothing.
        m.submit(4, 0, 4096, &[]);
        m.submit(5, 0, 4096, &[(4, 0, 4096)]);
        m.complete(5);
        m.fail(4);
        assert_eq!(m.allowed(0), vec![5, 4]);
    }
}
