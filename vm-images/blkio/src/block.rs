//! The verifiable block format shared by the guest I/O engine and the simulator.
//!
//! Every 4 KiB block written carries a 32-byte header (magic, its own byte offset, the
//! workload seed, the write's sequence number) followed by content generated from
//! (seed, offset, seq). Reading a block back therefore tells *what* went wrong, not just
//! that something did: never written, landed at the wrong offset, stale (an older write),
//! or corrupt (right header, wrong bytes).

use crate::rng::Rng;

pub const BLOCK: usize = 4096;
pub const HEADER: usize = 32;
pub const MAGIC: u64 = u64::from_le_bytes(*b"UBLKBLK1");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub offset: u64,
    pub seed: u64,
    pub seq: u64,
}

/// Fills `buf` (a multiple of BLOCK, starting at device byte `offset`) with write `seq`.
pub fn fill(buf: &mut [u8], offset: u64, seed: u64, seq: u64) {
    assert!(
        buf.len().is_multiple_of(BLOCK) && offset.is_multiple_of(BLOCK as u64),
        "blocks are 4 KiB aligned"
    );
    for (i, block) in buf.chunks_exact_mut(BLOCK).enumerate() {
        fill_block(block, offset + (i * BLOCK) as u64, seed, seq);
    }
}

pub fn fill_block(block: &mut [u8], offset: u64, seed: u64, seq: u64) {
    block[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    block[8..16].copy_from_slice(&offset.to_le_bytes());
    block[16..24].copy_from_slice(&seed.to_le_bytes());
    block[24..32].copy_from_slice(&seq.to_le_bytes());
    let mut g = Content::new(content_seed(offset, seed, seq));
    let mut words = block[HEADER..].chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&g.next().to_le_bytes());
    }
    let rest = words.into_remainder();
    let last = g.next().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

/// Whether `block` is torn between racing writes: every byte equals the same byte of one of
/// `candidates` (write seqs; 0 = a never-written, zero block), with at least two of them
/// contributing. The block layer promises no atomicity to overlapping writes in flight
/// together: two servers' (or two queues') copies may interleave at any byte.
pub fn torn_between(block: &[u8], offset: u64, seed: u64, candidates: &[u64]) -> bool {
    assert_eq!(block.len(), BLOCK);
    if candidates.len() < 2 {
        return false;
    }
    let rendered: Vec<Vec<u8>> = candidates
        .iter()
        .map(|seq| {
            let mut b = vec![0u8; BLOCK];
            if *seq != 0 {
                fill_block(&mut b, offset, seed, *seq);
            }
            b
        })
        .collect();
    let mut used = vec![false; rendered.len()];
    for (i, byte) in block.iter().enumerate() {
        let Some(c) = rendered.iter().position(|r| r[i] == *byte) else {
            return false;
        };
        // Credit a candidate only where it alone explains the byte.
        if rendered.iter().filter(|r| r[i] == *byte).count() == 1 {
            used[c] = true;
        }
    }
    used.iter().filter(|u| **u).count() >= 2
}

/// Block content: a 64-bit LCG started from a SplitMix-scrambled seed. Not random-quality,
/// but unique per (offset, seed, seq) and position, and cheap enough for the simulator,
/// which fills and checks millions of blocks a second.
struct Content(u64);

impl Content {
    fn new(seed: u64) -> Content {
        Content(Rng::new(seed).next_u64())
    }
    #[inline(always)]
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 ^ (self.0 >> 29)
    }
}

fn content_seed(offset: u64, seed: u64, seq: u64) -> u64 {
    seed ^ offset.rotate_left(17) ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// True if every byte is zero (word at a time).
pub fn is_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(8);
    words.remainder().iter().all(|x| *x == 0)
        && words
            .into_iter()
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == 0)
}

pub fn header(block: &[u8]) -> Option<Header> {
    let word = |i: usize| u64::from_le_bytes(block[i..i + 8].try_into().unwrap());
    (word(0) == MAGIC).then(|| Header {
        offset: word(8),
        seed: word(16),
        seq: word(24),
    })
}

/// What a block holds compared with what it should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// All zeroes where a write was expected (lost write, or discarded).
    Zeroes,
    /// Neither zeroes nor a block header: garbage.
    NoHeader,
    /// A valid block that belongs at another offset (misdirected write/read).
    WrongOffset {
        found: u64,
    },
    /// The right block from an older write (lost update).
    Stale {
        found_seq: u64,
    },
    /// A block from a newer write than expected (the model is behind: a test bug).
    Newer {
        found_seq: u64,
    },
    /// A block from another workload seed.
    WrongSeed {
        found: u64,
    },
    /// Header right, content wrong from this byte on.
    Corrupt {
        first_bad: usize,
    },
}

/// Checks one block read from device byte `offset` against the expectation: `Some(seq)` =
/// written by write `seq` of workload `seed`; `None` = never written (must be zeroes).
/// Blocks are 4 KiB on devices; the simulator uses smaller ones (down to 64 bytes).
pub fn check(block: &[u8], offset: u64, seed: u64, expect: Option<u64>) -> Verdict {
    assert!(
        (64..=BLOCK).contains(&block.len()),
        "block of {} bytes",
        block.len()
    );
    let zero = header(block).is_none() && is_zero(block);
    let Some(seq) = expect else {
        return if zero {
            Verdict::Ok
        } else {
            match header(block) {
                Some(h) if h.offset != offset => Verdict::WrongOffset { found: h.offset },
                Some(h) => Verdict::Newer { found_seq: h.seq },
                None => Verdict::NoHeader,
            }
        };
    };
    if zero {
        return Verdict::Zeroes;
    }
    let Some(h) = header(block) else {
        return Verdict::NoHeader;
    };
    if h.offset != offset {
        return Verdict::WrongOffset { found: h.offset };
    }
    if h.seed != seed {
        return Verdict::WrongSeed { found: h.seed };
    }
    if h.seq < seq {
        return Verdict::Stale { found_seq: h.seq };
    }
    if h.seq > seq {
        return Verdict::Newer { found_seq: h.seq };
    }
    // Regenerate the content stream and compare as we go (no buffer: this is hot in the simulator).
    let mut rng = Content::new(content_seed(offset, seed, seq));
    let body = &block[HEADER..];
    let words = body.chunks_exact(8);
    let rest = words.remainder();
    for (i, w) in words.enumerate() {
        let want = rng.next();
        let got = u64::from_le_bytes(w.try_into().unwrap());
        if got != want {
            let j = ((got ^ want).trailing_zeros() / 8) as usize;
            return Verdict::Corrupt {
                first_bad: HEADER + i * 8 + j,
            };
        }
    }
    let want = rng.next().to_le_bytes();
    if let Some(j) = rest.iter().zip(want.iter()).position(|(a, b)| a != b) {
        return Verdict::Corrupt {
            first_bad: block.len() - rest.len() + j,
        };
    }
    Verdict::Ok
}

impl Verdict {
    /// One line for a mismatch report: what was expected vs what was found.
    pub fn describe(&self, offset: u64, expect: Option<u64>) -> String {
        let want = match expect {
            Some(seq) => format!("write #{seq}"),
            None => "zeroes (never written)".into(),
        };
        let found = match self {
            Verdict::Ok => "as expected".to_string(),
            Verdict::Zeroes => "zeroes: the write was lost".into(),
            Verdict::NoHeader => "garbage without a block header: corrupt".into(),
            Verdict::WrongOffset { found } => {
                format!("the block written for offset {found}: data landed at the wrong offset")
            }
            Verdict::Stale { found_seq } => format!("older write #{found_seq}: stale data"),
            Verdict::Newer { found_seq } => format!("write #{found_seq}, newer than expected"),
            Verdict::WrongSeed { found } => format!("a block of workload seed {found:#x}"),
            Verdict::Corrupt { first_bad } => {
                format!("the right header but corrupt content from byte {first_bad}")
            }
        };
        format!(
            "offset {offset} (block {}): expected {want}, found {found}",
            offset / BLOCK as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_torn_between_racing_writes_is_recognised_and_nothing_else_is() {
        let (seed, off) = (0xabc, 8192);
        let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        fill_block(&mut a, off, seed, 3);
        fill_block(&mut b, off, seed, 4);
        let mut torn = a.clone();
        torn[668..].copy_from_slice(&b[668..]);
        assert!(torn_between(&torn, off, seed, &[3, 4]));
        assert!(torn_between(&torn, off, seed, &[4, 3, 9]));
        assert!(
            !torn_between(&torn, off, seed, &[3]),
            "one candidate is a plain mismatch"
        );
        assert!(
            !torn_between(&torn, off, seed, &[3, 5]),
            "bytes from a write not racing"
        );
        assert!(
            !torn_between(&a, off, seed, &[3, 4]),
            "a whole write is not torn"
        );
        let mut zero_torn = a.clone();
        zero_torn[..100].fill(0);
        assert!(torn_between(&zero_torn, off, seed, &[0, 3]));
        let mut garbage = torn.clone();
        garbage[2000] = (0..=255u8)
            .find(|v| *v != a[2000] && *v != b[2000])
            .unwrap();
        assert!(
            !torn_between(&garbage, off, seed, &[3, 4]),
            "a byte from neither write"
        );
    }

    #[test]
    fn classifies_every_failure() {
        let seed = 0xabc;
        let mut b = vec![0u8; BLOCK];
        assert_eq!(check(&b, 8192, seed, None), Verdict::Ok);
        assert_eq!(check(&b, 8192, seed, Some(3)), Verdict::Zeroes);
        fill_block(&mut b, 8192, seed, 3);
        assert_eq!(check(&b, 8192, seed, Some(3)), Verdict::Ok);
        assert_eq!(
            check(&b, 8192, seed, Some(4)),
            Verdict::Stale { found_seq: 3 }
        );
        assert_eq!(
            check(&b, 8192, seed, Some(2)),
            Verdict::Newer { found_seq: 3 }
        );
        assert_eq!(
            check(&b, 4096, seed, Some(3)),
            Verdict::WrongOffset { found: 8192 }
        );
        assert_eq!(
            check(&b, 4096, seed, None),
            Verdict::WrongOffset { found: 8192 }
        );
        assert_eq!(
            check(&b, 8192, seed + 1, Some(3)),
            Verdict::WrongSeed { found: seed }
        );
        b[1000] ^= 1;
        assert_eq!(
            check(&b, 8192, seed, Some(3)),
            Verdict::Corrupt { first_bad: 1000 }
        );
        b[0] ^= 1;
        assert_eq!(check(&b, 8192, seed, Some(3)), Verdict::NoHeader);
        assert!(Verdict::Stale { found_seq: 1 }
            .describe(8192, Some(3))
            .contains("expected write #3, found older write #1"));
    }

    #[test]
    fn multi_block_fill_gives_each_block_its_own_offset() {
        let mut buf = vec![0u8; 3 * BLOCK];
        fill(&mut buf, 40960, 7, 9);
        for i in 0..3 {
            let off = 40960 + (i * BLOCK) as u64;
            assert_eq!(
                header(&buf[i * BLOCK..]).unwrap(),
                Header {
                    offset: off,
                    seed: 7,
                    seq: 9
                }
            );
            assert_eq!(
                check(&buf[i * BLOCK..(i + 1) * BLOCK], off, 7, Some(9)),
                Verdict::Ok
            );
        }
        assert_ne!(
            buf[HEADER..BLOCK],
            buf[BLOCK + HEADER..2 * BLOCK],
            "content must differ per block"
        );
    }
}
