//! Schedulers: which enabled event happens next. Both are deterministic from their seed.

use ublk::rng::Rng;

use crate::world::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Random,
    /// Probabilistic Concurrency Testing with `d` priority change points.
    Pct(u32),
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind, String> {
        if s == "random" {
            return Ok(Kind::Random);
        }
        match s.strip_prefix("pct:").and_then(|d| d.parse::<u32>().ok()) {
            Some(d) if (1..=64).contains(&d) => Ok(Kind::Pct(d)),
            _ => Err(format!(
                "scheduler {s:?}: use random or pct:D with 1 <= D <= 64"
            )),
        }
    }
    pub fn name(self) -> String {
        match self {
            Kind::Random => "random".into(),
            Kind::Pct(d) => format!("pct:{d}"),
        }
    }
}

pub struct Scheduler {
    kind: Kind,
    rng: Rng,
    depth: u16,
    /// PCT: priority per actor (higher runs first).
    prio: Vec<u64>,
    /// PCT: steps at which the running actor is demoted.
    change_points: Vec<u64>,
    step: u64,
}

impl Scheduler {
    /// `expected_steps` bounds where PCT's change points fall.
    pub fn new(kind: Kind, seed: u64, depth: u16, actors: usize, expected_steps: u64) -> Scheduler {
        let mut rng = Rng::new(seed ^ 0x9c7e_d00d);
        let mut prio: Vec<u64> = (0..actors as u64).map(|i| i + 1000).collect();
        for i in (1..prio.len()).rev() {
            prio.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let change_points = match kind {
            Kind::Random => Vec::new(),
            Kind::Pct(d) => (1..d).map(|_| rng.below(expected_steps.max(1))).collect(),
        };
        Scheduler {
            kind,
            rng,
            depth,
            prio,
            change_points,
            step: 0,
        }
    }

    pub fn pick(&mut self, enabled: &[Event]) -> Event {
        assert!(!enabled.is_empty());
        self.step += 1;
        match self.kind {
            Kind::Random => enabled[self.rng.below(enabled.len() as u64) as usize],
            Kind::Pct(_) => {
                let actor = |e: &Event| e.actor(self.depth).min(self.prio.len() - 1);
                let best = *enabled
                    .iter()
                    .max_by_key(|e| (self.prio[actor(e)], std::cmp::Reverse(actor(e))))
                    .unwrap();
                if let Some(i) = self.change_points.iter().position(|c| *c == self.step) {
                    let a = actor(&best);
                    self.prio[a] = i as u64; // below every initial priority
                }
                best
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_determinism() {
        assert_eq!(Kind::parse("pct:3").unwrap(), Kind::Pct(3));
        assert!(Kind::parse("pct:0").is_err() && Kind::parse("fifo").is_err());
        let ev = [
            Event::Dispatch(0),
            Event::Kernel(0, 1),
            Event::Deliver(1, 0),
        ];
        for kind in [Kind::Random, Kind::Pct(3)] {
            let mut a = Scheduler::new(kind, 5, 4, 200, 100);
            let mut b = Scheduler::new(kind, 5, 4, 200, 100);
            for _ in 0..50 {
                assert_eq!(a.pick(&ev), b.pick(&ev));
            }
        }
    }
}
