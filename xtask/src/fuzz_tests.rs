//! Seeded mutations of every file format xtask reads (the shipped scenarios, the server
//! profiles, the image recipe, the kernel lock) fed to their parsers: no panic, a `file:line:column` on every error, and
//! well under a second each. Byte-level edits here; `tests/e2e.rs` mutates whole lines and
//! goes through the `scenario check` command line.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::image::recipe::{KernelLock, Recipe};
use crate::scenario::model::Scenario;
use crate::util::root;

/// Mutants per seed file.
const MUTANTS: u64 = 120;
/// Tokens that tend to reach odd corners of YAML and of our checks.
const TOKENS: [&str; 16] = [
    "[", "{", "]", "}", ": ", "- ", "\n", "  ", "#", "'", "\"", "&a ", "*a", "-0", "0", "~",
];

fn mutate(seed: u64, text: &str) -> String {
    let mut rng = ublk::rng::Rng::new(seed);
    let mut b = text.as_bytes().to_vec();
    for _ in 0..rng.range(1, 4) {
        let at = rng.range(0, b.len() as u64) as usize;
        match rng.range(0, 5) {
            0 => {
                b.drain(at..(at + rng.range(1, 16) as usize).min(b.len()));
            }
            1 => {
                let t = TOKENS[rng.range(0, TOKENS.len() as u64 - 1) as usize];
                b.splice(at..at, t.bytes());
            }
            2 => {
                let end = (at + rng.range(1, 64) as usize).min(b.len());
                let piece = b[at..end].to_vec();
                b.splice(
                    at..at,
                    piece
                        .iter()
                        .cycle()
                        .take(piece.len() * rng.range(1, 3) as usize)
                        .copied(),
                );
            }
            3 if at < b.len() => b[at] = rng.range(0, 255) as u8,
            _ => b.truncate(at),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// `path:line:column: ...` with numbers.
fn has_location(e: &str, path: &Path) -> bool {
    let Some(rest) = e.strip_prefix(&format!("{}:", path.display())) else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|l| l.parse::<u32>().ok());
    let col = parts.next().and_then(|c| c.parse::<u32>().ok());
    line.is_some_and(|l| l > 0) && col.is_some_and(|c| c > 0) && parts.next().is_some()
}

fn fuzz(name: &str, text: &str, parse: impl Fn(&str, &Path) -> Result<(), String>) {
    let path = Path::new(name);
    let (mut rejected, mut slowest) = (0, Duration::ZERO);
    for seed in 1..=MUTANTS {
        let m = mutate(seed, text);
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| parse(&m, path)));
        slowest = slowest.max(t.elapsed());
        let r = r.unwrap_or_else(|_| panic!("{name} seed {seed}: the parser panicked on:\n{m}"));
        if let Err(e) = r {
            rejected += 1;
            assert!(
                has_location(&e, path),
                "{name} seed {seed}: no location in {e:?} for:\n{m}"
            );
            assert!(!e.contains('\n'), "{name} seed {seed}: not one line: {e:?}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{name} seed {seed} took {:?}",
            t.elapsed()
        );
    }
    // The mutations must actually reach the error paths.
    assert!(
        rejected > MUTANTS / 4,
        "{name}: only {rejected} of {MUTANTS} mutants rejected"
    );
    eprintln!("{name}: {rejected}/{MUTANTS} rejected, slowest {slowest:?}");
}

#[test]
fn shipped_scenarios_survive_mutation() {
    for f in crate::scenario::all_files().unwrap() {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        fuzz(&name, &text, |t, p| Scenario::parse(t, p).map(|_| ()));
    }
}

#[test]
fn server_profiles_survive_mutation() {
    for name in crate::server::builtin_names() {
        let path = root().join(crate::server::DIR).join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        fuzz(&format!("{name}.yaml"), &text, |t, p| {
            crate::server::Profile::parse(t, p).map(|_| ())
        });
    }
}

#[test]
fn recipe_and_lock_survive_mutation() {
    let recipe = std::fs::read_to_string(root().join(crate::image::recipe::RECIPE)).unwrap();
    fuzz("recipe.yaml", &recipe, |t, p| {
        Recipe::parse(t, p).map(|_| ())
    });
    for k in Recipe::load()
        .unwrap()
        .kernels
        .into_iter()
        .filter(|k| !k.moving)
    {
        let lock = std::fs::read_to_string(k.lock_path()).unwrap();
        fuzz(k.lock.as_deref().unwrap_or_default(), &lock, |t, p| {
            KernelLock::parse(t, p).map(|_| ())
        });
    }
}

/// The kernel trace's two readers — tracefs' text from a guest that runs the server under
/// test, and an events file given to `sim replay` — and the checker behind them: no panic on
/// any mutant, an events-file error names its line and is one line, well under a second.
#[test]
fn kernel_traces_survive_mutation() {
    use ublk::ktrace::{self, check::Checker, tracefs};
    let events = std::fs::read_to_string(root().join("sim/fixtures/rublk-loop.ktrace.txt"))
        .unwrap()
        .lines()
        .take(400)
        .collect::<Vec<_>>()
        .join("\n");
    let raw = ktrace::write(&Default::default(), &ktrace::parse(&events).unwrap().1);
    let mut rejected = 0;
    for seed in 1..=MUTANTS {
        let m = mutate(seed, &raw);
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| match ktrace::parse(&m) {
            Ok((h, ev)) => Checker::run(&h, &ev).violations.len() as i64,
            Err(e) => {
                let line = e.split(':').next().unwrap_or_default();
                assert!(line.parse::<u32>().is_ok_and(|l| l > 0), "{e}");
                assert!(!e.contains('\n'), "{e}");
                -1
            }
        }))
        .unwrap_or_else(|_| panic!("events seed {seed}: panicked on:\n{m}"));
        rejected += i64::from(r < 0);
        assert!(t.elapsed() < Duration::from_secs(1), "events seed {seed}");
    }
    assert!(rejected > MUTANTS as i64 / 4, "only {rejected} rejected");
    // tracefs text: whatever the guest printed, the reader and checker take it without panic.
    let text = "        ublk-q0-167     [000] ...1.     3.664340: ublk_cmd: (ublk_ch_uring_cmd+0x4/0x170 [ublk_drv]) op=3222304032 fl=2147483649 q=0 tag=3 res=0 addr=0x0 rdev=254803968\n         ublk-q0-167     [000] ...1.     3.665008: ublk_cmd_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ch_uring_cmd) ret=-529\n     iou-wrk-163-166     [000] .N...     3.709546: ublk_disp: (blk_mq_start_request+0x4/0x1a0) tag=3 q=0 op=8388608 sector=16 bytes=4096 name=\"ublkb0\"\n         ublk-q0-167     [000] b....     3.722494: ublk_done: (blk_update_request+0x4/0x4a0) tag=3 q=0 err=0 bytes=4096 major=259 minor=0 name=\"ublkb0\"\n        ublk-mem-163     [001] .....     3.626740: ublk_ctrl_ret: (io_uring_cmd+0x98/0x1d0 <- ublk_ctrl_uring_cmd) ret=0\n";
    for seed in 1..=MUTANTS {
        let m = mutate(seed, &text.repeat(3));
        catch_unwind(AssertUnwindSafe(|| {
            let p = tracefs::parse(&m, 1000);
            Checker::run(&Default::default(), &p.events)
                .violations
                .len()
        }))
        .unwrap_or_else(|_| panic!("tracefs seed {seed}: panicked on:\n{m}"));
    }
}
