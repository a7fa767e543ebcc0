//! Seeded write plans: which extents are written, in which order, with which sequence
//! numbers. Reproducible from the spec alone.

use crate::block::BLOCK;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Back to back from offset 0.
    Sequential,
    /// Extents at shuffled positions across the whole span (non-overlapping unless --overlap).
    Scattered,
    /// Uniformly random aligned offsets: overlaps happen by chance.
    Random,
}

impl Pattern {
    /// As the command line and scenario files write it.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Sequential => "sequential",
            Pattern::Scattered => "scattered",
            Pattern::Random => "random",
        }
    }
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
    /// Stop after this many bytes (0: no byte limit).
    pub bytes: u64,
    /// Stop after this many writes (0: no count limit).
    pub count: u64,
    /// Device bytes the extents may cover.
    pub span: u64,
    pub min: u64,
    pub max: u64,
    /// Scattered: re-write ranges overlapping earlier writes (about one write in five).
    pub overlap: bool,
}

/// Smallest and largest write unless told otherwise (`--min`, `--max`).
pub const DEFAULT_MIN: u64 = 4 << 10;
pub const DEFAULT_MAX: u64 = 512 << 10;

/// Hard cap on the number of writes in one plan (bounds memory and time).
pub const MAX_WRITES: u64 = 10_000_000;

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
        if self.span == 0 || !self.span.is_multiple_of(b) || self.max > self.span {
            return Err(format!(
                "the span {} must be a multiple of 4 KiB and hold the largest write {}",
                self.span, self.max
            ));
        }
        if !self.bytes.is_multiple_of(b) {
            return Err(format!(
                "--bytes {} must be a multiple of 4 KiB",
                self.bytes
            ));
        }
        if self.bytes == 0 && self.count == 0 {
            return Err("give --bytes or --count (or both)".into());
        }
        if self.count > MAX_WRITES {
            return Err(format!("--count is limited to {MAX_WRITES}"));
        }
        if self.pattern != Pattern::Random && !self.overlap && self.bytes > self.span {
            return Err(format!(
                "--bytes {} exceeds the span {} (use --pattern random or --overlap to write more)",
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
    let blocks = spec.span / b;
    let mut out: Vec<Extent> = Vec::new();
    let mut total = 0u64;
    let done = |out: &Vec<Extent>, total: u64| {
        (spec.bytes > 0 && total >= spec.bytes)
            || (spec.count > 0 && out.len() as u64 >= spec.count)
            || out.len() as u64 >= MAX_WRITES
    };
    let push = |out: &mut Vec<Extent>, total: &mut u64, offset: u64, len: u64| {
        let len = if spec.bytes > 0 {
            len.min(spec.bytes - *total)
        } else {
            len
        };
        out.push(Extent {
            offset,
            len,
            seq: out.len() as u64 + 1,
        });
        *total += len;
    };
    match spec.pattern {
        Pattern::Sequential => {
            let mut off = 0;
            while !done(&out, total) {
                let len = size(&mut rng).min(spec.span - off);
                push(&mut out, &mut total, off, len);
                off = (off + len) % spec.span;
            }
        }
        Pattern::Random => {
            while !done(&out, total) {
                let len = size(&mut rng);
                let off = rng.below(blocks - len / b + 1) * b;
                push(&mut out, &mut total, off, len);
            }
        }
        Pattern::Scattered => {
            // Cut the span into mixed-size extents and shuffle them; repeat with a new cut when
            // a limit asks for more than one pass.
            while !done(&out, total) {
                let mut cuts = Vec::new();
                let mut off = 0;
                while off < spec.span {
                    let len = size(&mut rng).min(spec.span - off);
                    cuts.push((off, len));
                    off += len;
                }
                for i in (1..cuts.len()).rev() {
                    cuts.swap(i, rng.below(i as u64 + 1) as usize);
                }
                for (off, len) in cuts {
                    if done(&out, total) {
                        break;
                    }
                    if spec.overlap && !out.is_empty() && rng.chance(20) {
                        // Straddle an earlier write: start inside it, run past its end.
                        let prev = out[rng.below(out.len() as u64) as usize];
                        let start = prev.offset + rng.below(prev.len / b) * b;
                        let len = size(&mut rng).min(spec.span - start);
                        push(&mut out, &mut total, start, len);
                        if done(&out, total) {
                            break;
                        }
                    }
                    push(&mut out, &mut total, off, len);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: Pattern) -> PlanSpec {
        PlanSpec {
            seed: 1,
            pattern,
            bytes: 64 << 20,
            count: 0,
            span: 256 << 20,
            min: 4096,
            max: 512 << 10,
            overlap: false,
        }
    }

    fn overlaps(w: &[Extent]) -> usize {
        let mut sorted = w.to_vec();
        sorted.sort_by_key(|e| e.offset);
        sorted
            .windows(2)
            .filter(|p| p[0].offset + p[0].len > p[1].offset)
            .count()
    }

    #[test]
    fn scattered_is_mixed_non_overlapping_and_not_sequential() {
        let s = spec(Pattern::Scattered);
        let w = writes(&s);
        assert_eq!(w.iter().map(|e| e.len).sum::<u64>(), s.bytes);
        assert_eq!(overlaps(&w), 0);
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
            w.iter().map(|e| e.offset).max().unwrap() > 200 << 20,
            "not spread over the span"
        );
        assert_eq!(writes(&s), w, "plans are reproducible from the seed");
        assert!(w.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1));
    }

    #[test]
    fn overlap_and_random_patterns_overlap_and_respect_counts() {
        let s = PlanSpec {
            count: 10_000,
            bytes: 0,
            overlap: true,
            max: 64 << 10,
            ..spec(Pattern::Scattered)
        };
        let w = writes(&s);
        assert_eq!(w.len(), 10_000);
        assert!(overlaps(&w) > 500, "only {} overlaps", overlaps(&w));
        assert!(w.iter().all(|e| e.offset + e.len <= s.span
            && e.offset % 4096 == 0
            && e.len % 4096 == 0
            && e.len > 0));
        let r = writes(&PlanSpec {
            count: 2000,
            bytes: 0,
            ..spec(Pattern::Random)
        });
        assert_eq!(r.len(), 2000);
        assert!(r.iter().all(|e| e.offset + e.len <= 256 << 20));
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
        .unwrap_err()
        .contains("exceeds the span"));
        assert!(PlanSpec {
            bytes: 0,
            count: 0,
            ..spec(Pattern::Random)
        }
        .validate()
        .unwrap_err()
        .contains("--count"));
    }
}
