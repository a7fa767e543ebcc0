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
