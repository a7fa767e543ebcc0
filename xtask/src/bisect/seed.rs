//! A candidate's worktree starts with the third-party crates already compiled in the
//! repository's own target directory, so building a candidate compiles the workspace's crates
//! only (measured: 30 s instead of ~2 min 45 s for `cargo build -p xtask` on this machine).
//!
//! Invariants:
//! - Only packages with a `source` in the *candidate's* Cargo.lock (crates.io, git) are copied:
//!   the workspace's own crates never are, so no binary built from another commit can run as
//!   this one (the wrong-commit trap a shared target directory fell into).
//! - Copies, never hard links: a rebuild in the worktree must not rewrite the user's files.
//! - Bounded: at most `MAX_ENTRIES` entries, each `cp` call within `COPY_LIMIT`.
//! - An optimisation only: whatever goes wrong, cargo rebuilds what it cannot reuse.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::procs;
use crate::util::Result;

/// The per-profile folders cargo keeps compiled units in.
const UNIT_DIRS: [&str; 3] = ["deps", ".fingerprint", "build"];
/// Top-level folders of a target directory that are not cargo's (or hold worktrees).
const NOT_CARGO: [&str; 6] = ["bisect", "vm-images", "vm-runs", "vm-state", "tmp", "apt"];
const MAX_ENTRIES: usize = 100_000;
const COPY_LIMIT: Duration = Duration::from_secs(300);
const ARGS_PER_COPY: usize = 500;
const MAX_LOCK_BYTES: u64 = 16 << 20;

/// Copies the third-party units of `from` (a target directory) into `wt`'s `target/`.
/// Returns how many entries were copied (0 when the candidate has no Cargo.lock).
pub fn seed_cargo_target(from: &Path, wt: &Path) -> Result<usize> {
    let lock = wt.join("Cargo.lock");
    if !lock.is_file() || !from.is_dir() {
        return Ok(0);
    }
    let third_party = lock_sources(&crate::input::read_limited(&lock, MAX_LOCK_BYTES)?);
    let mut copied = 0;
    for profile in profile_dirs(from) {
        let rel = profile.strip_prefix(from).expect("found under from");
        for sub in UNIT_DIRS {
            let picked = pick(&profile.join(sub), &third_party)?;
            copied += picked.len();
            if copied > MAX_ENTRIES {
                return Err(format!(
                    "{}: more than {MAX_ENTRIES} compiled units",
                    from.display()
                ));
            }
            copy_into(&picked, &wt.join("target").join(rel).join(sub))?;
        }
    }
    Ok(copied)
}

/// Whether `target` holds any cargo profile folder (something to copy from).
pub fn has_units(target: &Path) -> bool {
    target.is_dir() && !profile_dirs(target).is_empty()
}

/// Crate names (`-` as `_`) of the packages a Cargo.lock says come from a source.
pub fn lock_sources(lock: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut name: Option<String> = None;
    for line in lock.lines().map(str::trim) {
        if line == "[[package]]" {
            name = None;
        } else if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').replace('-', "_"));
        } else if line.starts_with("source = ") {
            out.extend(name.take());
        }
    }
    out
}

/// Cargo profile folders (those holding `.fingerprint`) at depth 1-3: `debug`, `release`,
/// `guest/release`, `guest/x86_64-unknown-linux-gnu/release`, ...
fn profile_dirs(from: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut level = vec![from.to_path_buf()];
    for depth in 1..=3 {
        let mut next = Vec::new();
        for dir in &level {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let skip = (depth == 1 && NOT_CARGO.contains(&name.as_str()))
                    || UNIT_DIRS.contains(&name.as_str())
                    || name == "incremental";
                if skip || !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                match e.path().join(".fingerprint").is_dir() {
                    true => out.push(e.path()),
                    false => next.push(e.path()),
                }
            }
        }
        level = next;
    }
    out.sort();
    out
}

/// The entries of `dir` that belong to a third-party crate: `NAME-HASH[.ext]` or
/// `libNAME-HASH.ext`.
fn pick(dir: &Path, third_party: &HashSet<String>) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if is_third_party(&file, third_party) {
            out.push(e.path());
        }
        if out.len() > MAX_ENTRIES {
            return Err(format!(
                "{}: more than {MAX_ENTRIES} entries",
                dir.display()
            ));
        }
    }
    out.sort();
    Ok(out)
}

pub fn is_third_party(file: &str, third_party: &HashSet<String>) -> bool {
    let Some((name, _hash)) = file.rsplit_once('-') else {
        return false;
    };
    let name = name.replace('-', "_");
    third_party.contains(&name)
        || name
            .strip_prefix("lib")
            .is_some_and(|n| third_party.contains(n))
}

fn copy_into(files: &[PathBuf], dest: &Path) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    for chunk in files.chunks(ARGS_PER_COPY) {
        let mut cp = std::process::Command::new("cp");
        cp.args(["-a", "--reflink=auto"]).args(chunk).arg(dest);
        procs::run_ok(&mut cp, COPY_LIMIT, "cp -a (seeding a candidate's target)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"
version = 4

[[package]]
name = "blkio"
version = "0.1.0"
dependencies = ["libc"]

[[package]]
name = "libc"
version = "0.2.170"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "00"

[[package]]
name = "proc-macro2"
version = "1.0.95"
source = "registry+https://github.com/rust-lang/crates.io-index"

[[package]]
name = "xtask"
version = "0.1.0"
"#;

    #[test]
    fn only_packages_with_a_source_are_third_party() {
        let set = lock_sources(LOCK);
        let mut names: Vec<_> = set.iter().cloned().collect();
        names.sort();
        assert_eq!(names, ["libc", "proc_macro2"]);
        for yes in [
            "liblibc-0a1b.rlib",
            "libc-0a1b.d",
            "libc-0a1b",
            "proc-macro2-77ff",
        ] {
            assert!(is_third_party(yes, &set), "{yes}");
        }
        for no in [
            "libblkio-0a1b.rlib",
            "xtask-0a1b",
            "blkio",
            "libxtask-1.d",
            "nohash",
        ] {
            assert!(!is_third_party(no, &set), "{no}");
        }
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, p.to_string_lossy().as_bytes()).unwrap();
    }

    #[test]
    fn a_candidate_gets_copies_of_third_party_units_and_never_the_workspace_ones() {
        let root = std::env::temp_dir().join(format!("xtask-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (from, wt) = (root.join("target"), root.join("wt"));
        let profiles = [
            "debug",
            "guest/release",
            "guest/x86_64-unknown-linux-gnu/release",
        ];
        for p in profiles
            .iter()
            .chain(&["bisect/s/wt/target/debug", "vm-images/debug"])
        {
            let d = from.join(p);
            touch(&d.join("deps/liblibc-aa.rlib"));
            touch(&d.join("deps/libblkio-bb.rlib"));
            touch(&d.join(".fingerprint/proc-macro2-cc/lib"));
            touch(&d.join(".fingerprint/xtask-dd/bin"));
            touch(&d.join("build/libc-ee/output"));
            touch(&d.join("incremental/libc-ff/x"));
        }
        touch(&wt.join("Cargo.lock"));
        std::fs::write(wt.join("Cargo.lock"), LOCK).unwrap();

        assert_eq!(seed_cargo_target(&from, &wt).unwrap(), 3 * 3);
        for p in profiles {
            let d = wt.join("target").join(p);
            assert!(d.join("deps/liblibc-aa.rlib").is_file(), "{p}");
            assert!(d.join(".fingerprint/proc-macro2-cc/lib").is_file(), "{p}");
            assert!(d.join("build/libc-ee/output").is_file(), "{p}");
            assert!(
                !d.join("deps/libblkio-bb.rlib").exists(),
                "{p}: workspace crate copied"
            );
            assert!(
                !d.join(".fingerprint/xtask-dd").exists(),
                "{p}: workspace crate copied"
            );
            assert!(!d.join("incremental").exists(), "{p}");
        }
        assert!(!wt.join("target/bisect").exists() && !wt.join("target/vm-images").exists());
        // Copies, not links: writing the copy leaves the original alone.
        let copy = wt.join("target/debug/deps/liblibc-aa.rlib");
        std::fs::write(&copy, b"rebuilt").unwrap();
        let original = std::fs::read(from.join("debug/deps/liblibc-aa.rlib")).unwrap();
        assert_ne!(original, b"rebuilt");
        assert!(has_units(&from) && has_units(&wt.join("target")));
        assert!(!has_units(&root.join("nothing")));
        // No Cargo.lock: nothing to reuse.
        std::fs::remove_file(wt.join("Cargo.lock")).unwrap();
        assert_eq!(seed_cargo_target(&from, &wt).unwrap(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
