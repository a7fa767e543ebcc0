//! A project's own guest packages (`--package qemu-utils,diffutils`, `--package-lock FILE`):
//! Debian packages from the tools layer's suite, on top of the locked tools layer, without
//! editing our recipe or lock. Resolved once (`closure::resolve` over a `Base` of what the
//! layer already holds: only the asked-for packages and the libraries the layer lacks), then
//! locked like any image input:
//!
//! - with `--package-lock FILE` (the project's, committed): the file is the lock. Missing, it
//!   is resolved and written; asking for other packages than it holds re-resolves and
//!   rewrites it, said in one line. `--locked` refuses both.
//! - without: the resolution is kept in the shared cache, keyed by the suite, the packages and
//!   the tools lock, so the second run resolves nothing; `--locked` refuses it (an unpinned
//!   resolution is not a lock).
//!
//! Either way the packages are fetched, verified by sha256 and recorded (`fetch::all`: the
//! locked build, else the snapshot archive, else the newest build, said loudly) and the
//! combined layer is content-addressed in the store like the tools layer itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::image::apt::Apt;
use crate::image::closure;
use crate::image::fetch;
use crate::image::recipe::Recipe;
use crate::image::tools::{self, Layer, ToolsLock};
use crate::util::{bad_input, Result};

/// Most packages a project may add.
pub const MAX_PACKAGES: usize = 32;
const LOCK_HEADER: &str =
    "# Debian packages this project adds to ublk-vm's guest tools layer, verified by sha256\n\
# before use. Written by `cargo xtask vm-test|vm-run --package ... --package-lock FILE`;\n\
# delete it to resolve again.\n";

/// What the user asked for (flattened into vm-run and vm-test).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Request {
    /// Debian packages the guest needs besides the tools layer (`qemu-utils,diffutils`), from
    /// the layer's suite with the libraries they need; repeatable
    #[arg(long = "package", value_name = "NAME[,...]", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// The project's lock of those packages: used when it exists, written when not (commit
    /// it); without it the resolution is kept in the shared cache
    #[arg(long = "package-lock", value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        self.packages.is_empty() && self.lock.is_none()
    }
}

/// A Debian package name (policy §5.6.1: lowercase letters, digits, `+`, `-`, `.`; at least
/// two characters, starting alphanumeric), at most 64 bytes; at most `MAX_PACKAGES`.
pub fn check_names(packages: &[String]) -> Result<()> {
    if packages.len() > MAX_PACKAGES {
        return Err(bad_input(format!(
            "--package: at most {MAX_PACKAGES} packages"
        )));
    }
    for p in packages {
        let ok = (2..=64).contains(&p.len())
            && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && (p.chars())
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !ok {
            return Err(bad_input(format!(
                "--package {}: not a Debian package name (lowercase letters, digits, `+`, `-`, `.`)",
                crate::text::term(p)
            )));
        }
    }
    Ok(())
}

/// The tools layer offering `names`, with the requested packages on top (just the tools
/// layer when none are requested).
pub fn layer(names: &[String], req: &Request) -> Result<Layer> {
    if req.is_empty() {
        return tools::layer(names);
    }
    check_names(&req.packages)?;
    let recipe = Recipe::load()?;
    let base = ToolsLock::load(&recipe.tools)?;
    let (extra, lock_path) = extra_lock(&base, req)?;
    let combined = combine(&base, &extra);
    if let Some(n) = names.iter().find(|n| !combined.executables.contains(n)) {
        return Err(format!("the guest tools layer has no program {n:?}"));
    }
    let upgrade = format!(
        "rm {} (the next run resolves it again)",
        lock_path.display()
    );
    let lock_ref = fetch::LockRef {
        part: "project packages".into(),
        path: &lock_path,
        upgrade: &upgrade,
        snapshot: extra.snapshot.as_deref(),
        moving: false,
    };
    tools::layer_of(&combined, &lock_ref)
}

/// The tools lock with `extra` on top; a package both hold is the tools lock's.
fn combine(base: &ToolsLock, extra: &ToolsLock) -> ToolsLock {
    let have: BTreeSet<&str> = (base.packages.iter().chain(&base.libraries))
        .map(|d| d.package.as_str())
        .collect();
    let new = |list: &[crate::image::recipe::LockedDeb]| {
        (list.iter())
            .filter(|d| !have.contains(d.package.as_str()))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut executables: BTreeSet<String> = base.executables.iter().cloned().collect();
    executables.extend(extra.executables.iter().cloned());
    ToolsLock {
        suite: base.suite.clone(),
        packages: [base.packages.clone(), new(&extra.packages)].concat(),
        libraries: [base.libraries.clone(), new(&extra.libraries)].concat(),
        executables: executables.into_iter().collect(),
        snapshot: base.snapshot.clone(),
    }
}

/// The project's lock and where it lives: the user's file, or the cache's resolution.
fn extra_lock(base: &ToolsLock, req: &Request) -> Result<(ToolsLock, PathBuf)> {
    let wanted: BTreeSet<&str> = req.packages.iter().map(String::as_str).collect();
    let path = match &req.lock {
        Some(p) => p.clone(),
        None => memo_path(base, &wanted),
    };
    if path.exists() {
        let l = read_lock(&path)?;
        let held: BTreeSet<&str> = l.packages.iter().map(|d| d.package.as_str()).collect();
        if wanted.is_empty() || held == wanted {
            return Ok((l, path));
        }
        if fetch::locked() {
            return Err(format!(
                "--locked: {} locks {}, but the run asks for {}; delete it or ask for what it holds",
                path.display(),
                join(&held),
                join(&wanted)
            ));
        }
        eprintln!(
            "xtask: {} locks {}, the run asks for {}: resolving again",
            path.display(),
            join(&held),
            join(&wanted)
        );
    } else if wanted.is_empty() {
        return Err(bad_input(format!(
            "--package-lock {}: no such file; name the packages with --package to write it",
            path.display()
        )));
    } else if fetch::locked() {
        return Err(match &req.lock {
            Some(p) => format!(
                "--locked: {} does not exist; run once without --locked to write it",
                p.display()
            ),
            None => {
                "--locked: --package needs --package-lock FILE (a lock the project commits)".into()
            }
        });
    }
    let l = resolve(base, &req.packages)?;
    crate::util::write_atomic(&path, format!("{LOCK_HEADER}{}", to_yaml(&l)).as_bytes())?;
    if req.lock.is_some() {
        eprintln!(
            "xtask: wrote {}: {} packages and {} libraries on top of the tools layer; commit it",
            path.display(),
            l.packages.len(),
            l.libraries.len()
        );
    }
    Ok((l, path))
}

fn join(set: &BTreeSet<&str>) -> String {
    set.iter().copied().collect::<Vec<_>>().join(" ")
}

fn to_yaml(l: &ToolsLock) -> String {
    serde_yaml::to_string(l).expect("lock serialises")
}

/// The cache's resolution of `wanted` over this tools lock.
fn memo_path(base: &ToolsLock, wanted: &BTreeSet<&str>) -> PathBuf {
    let key = crate::util::key_of(&[
        ("tools", base.to_text().as_bytes()),
        ("packages", join(wanted).as_bytes()),
    ]);
    crate::image::cache::dir()
        .join("extras")
        .join(format!("{}.yaml", &key[..16]))
}

/// A project lock, bounded and checked (a file the user gave: errors are bad input).
fn read_lock(path: &Path) -> Result<ToolsLock> {
    let text = crate::input::read(path)?;
    ToolsLock::parse(&text, path).map_err(bad_input)
}

/// `packages` resolved in the tools layer's suite over what the layer holds.
fn resolve(base: &ToolsLock, packages: &[String]) -> Result<ToolsLock> {
    crate::host::deps::ensure(crate::host::deps::TOOLS_LAYER.to_vec())?;
    eprintln!(
        "xtask: resolving {} in Debian {} on top of the tools layer",
        packages.join(" "),
        base.suite
    );
    let apt = Apt::new(Some(&base.suite));
    apt.update(false)?;
    let recipe = Recipe::load()?;
    let lock_path = recipe.tools.lock_path();
    let lock_ref = fetch::LockRef {
        part: "tools layer".into(),
        path: &lock_path,
        upgrade: "cargo xtask tools-lock --upgrade",
        snapshot: base.snapshot.as_deref(),
        moving: false,
    };
    let all: Vec<_> = base
        .packages
        .iter()
        .chain(&base.libraries)
        .cloned()
        .collect();
    let (debs, _, _) = fetch::all(&apt, &lock_ref, &all)?;
    let below = closure::Base::of(base, &debs)?;
    let plan = closure::plan(&apt, packages)?;
    closure::resolve(&apt, &base.suite, packages, &plan, &below)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(p: &str, v: &str) -> crate::image::recipe::LockedDeb {
        crate::image::recipe::LockedDeb {
            package: p.into(),
            version: v.into(),
            filename: format!("{p}_{v}_amd64.deb"),
            size: 1,
            sha256: "0".repeat(64),
            archive: None,
            pool: None,
            sha1: None,
        }
    }

    #[test]
    fn the_tools_lock_wins_where_both_hold_a_package() {
        let base = ToolsLock {
            suite: "trixie".into(),
            packages: vec![deb("util-linux", "1")],
            libraries: vec![deb("libc6", "2.41-1")],
            executables: vec!["mount".into()],
            snapshot: None,
        };
        let extra = ToolsLock {
            suite: "trixie".into(),
            packages: vec![deb("qemu-utils", "10")],
            libraries: vec![deb("libc6", "2.41-2"), deb("libglib2.0-0t64", "2.84")],
            executables: vec!["qemu-img".into()],
            snapshot: None,
        };
        let c = combine(&base, &extra);
        let names = |l: &[crate::image::recipe::LockedDeb]| {
            l.iter()
                .map(|d| format!("{}={}", d.package, d.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&c.packages), ["util-linux=1", "qemu-utils=10"]);
        assert_eq!(
            names(&c.libraries),
            ["libc6=2.41-1", "libglib2.0-0t64=2.84"]
        );
        assert_eq!(c.executables, ["mount", "qemu-img"]);
    }

    #[test]
    fn package_names_are_debians() {
        let ok: Vec<String> = ["qemu-utils", "g++", "libc6.1", "0ad"]
            .map(String::from)
            .into();
        assert!(check_names(&ok).is_ok());
        for bad in ["Qemu", "a", "-x", "qemu utils", "x;rm", "../x", ""] {
            let e = check_names(&[bad.to_string()]).unwrap_err();
            assert!(e.contains("not a Debian package name"), "{bad}: {e}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("p{i}")).collect();
        assert!(check_names(&many).is_err());
    }
}
