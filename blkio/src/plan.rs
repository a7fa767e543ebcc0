//! Seeded workload plans: which extents are written, in which order, with which sequence
//! numbers — and therefore what the device must contain afterwards (the reference model).

use crate::block::BLOCK;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Back to back from offset 0.
    Sequential,
    /// Non-overlapping extents at shuffled positions across the whole span.
    Scattered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    /// 1-based write sequence number (what the block headers carry).
    pub seq: u64,
}

#[derive(Clone, Debug)]
pub struct PlanSpec {
    pub seed: u64,
    pub pattern: Pattern,
    /// Total bytes to write.
    pub bytes: u64,
    /// Device bytes the extents may cover.
    pub span: u64,
    pub min: u64,
    pub max: u64,
}

impl PlanSpec {
    pub fn validate(&self) -> Result<(), String> {
        let b = BLOCK as u64;
        if self.min == 0
            || !self.min.is_multiple_of(b)
            || !self.max.is_multiple_of(b)
            || self.min > self.max
        {
            return Err(format!(
                "block sizes must be multiples of 4 KiB with min <= max (got {}..{})",
                self.min, self.max
            ));
        }
        if !self.span.is_multiple_of(b)
            || !self.bytes.is_multiple_of(b)
            || self.bytes > self.span
            || self.max > self.span
        {
            return Err(format!(
                "--bytes {} must fit in --span {} and both be multiples of 4 KiB",
                self.bytes, self.span
            ));
        }
        Ok(())
    }
}

/// The ordered list of writes.
pub fn writes(spec: &PlanSpec) -> Vec<Extent> {
    spec.validate().expect("validated plan");
    let mut rng = Rng::new(spec.seed);
    let b = BLOCK as u64;
    let size = |rng: &mut Rng| rng.range(spec.min / b, spec.max / b) * b;
    let mut out = Vec::new();
    match spec.pattern {
        Pattern::Sequential => {
            let mut off = 0;
            while off < spec.bytes {
                let len = size(&mut rng).min(spec.bytes - off);
                out.push(Extent {
                    offset: off,
                    len,
                    seq: 0,
                });
                off += len;
            }
        }
        Pattern::Scattered => {
            // Cut the whole span into mixed-size extents, shuffle them, take enough to write.
            let mut cuts = Vec::new();
            let mut off = 0;
            while off < spec.span {
                let len = size(&mut rng).min(spec.span - off);
                cuts.push(Extent {
                    offset: off,
                    len,
                    seq: 0,
                });
                off += len;
            }
            for i in (1..cuts.len()).rev() {
                cuts.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let mut total = 0;
            for e in cuts {
                if total >= spec.bytes {
                    break;
                }
                let len = e.len.min(spec.bytes - total);
                out.push(Extent { len, ..e });
                total += len;
            }
        }
    }
    for (i, e) in out.iter_mut().enumerate() {
        e.seq = i as u64 + 1;
    }
    out
}

/// For every 4 KiB block of the span, the seq of the write that must be there (0 = none).
pub fn expected_map(spec: &PlanSpec, writes: &[Extent]) -> Vec<u64> {
    let mut map = vec![0u64; (spec.span / BLOCK as u64) as usize];
    for e in writes {
        for blk in e.offset / BLOCK as u64..(e.offset + e.len) / BLOCK as u64 {
            map[blk as usize] = map[blk as usize].max(e.seq);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: Pattern) -> PlanSpec {
        PlanSpec {
            seed: 1,
            pattern,
            bytes: 64 << 20,
            span: 256 << 20,
            min: 4096,
            max: 512 << 10,
        }
    }

    #[test]
    fn scattered_is_mixed_non_overlapping_and_not_sequential() {
        let s = spec(Pattern::Scattered);
        let w = writes(&s);
        assert_eq!(w.iter().map(|e| e.len).sum::<u64>(), s.bytes);
        let mut sorted = w.clone();
        sorted.sort_by_key(|e| e.offset);
        for p in sorted.windows(2) {
            assert!(p[0].offset + p[0].len <= p[1].offset, "overlap: {p:?}");
        }
        assert!(
            w.windows(2)
                .filter(|p| p[1].offset == p[0].offset + p[0].len)
                .count()
                < w.len() / 10,
            "too sequential"
        );
        assert!(
            w.iter().any(|e| e.len == 4096) && w.iter().any(|e| e.len > 256 << 10),
            "sizes not mixed"
        );
        assert!(
            sorted.last().unwrap().offset > 200 << 20,
            "not spread over the span"
        );
        assert_eq!(writes(&s), w, "plans are reproducible from the seed");
        let map = expected_map(&s, &w);
        assert_eq!(
            map.iter().filter(|m| **m > 0).count() as u64 * 4096,
            s.bytes
        );
    }

    #[test]
    fn sequential_and_validation() {
        let w = writes(&spec(Pattern::Sequential));
        assert_eq!(w[0].offset, 0);
        assert!(w.windows(2).all(|p| p[1].offset == p[0].offset + p[0].len));
        assert!(PlanSpec {
            min: 1000,
            ..spec(Pattern::Scattered)
        }
        .validate()
        .is_err());
        assert!(PlanSpec {
            bytes: 512 << 20,
            ..spec(Pattern::Scattered)
        }
        .validate()
        .is_err());
    }
}
