//! `cargo xtask kernel-lock [--upgrade] [NAME...]`: show each locked Debian kernel and the
//! newest its suite offers; with --upgrade, re-resolve and rewrite the locks (all, or those
//! named). Other suites are read through a private apt configuration (`image/apt.rs`).

use crate::image::apt::Apt;
use crate::image::recipe::{KernelLock, KernelSpec, Recipe};
use crate::image::resolve::resolve;
use crate::util::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Resolve each kernel's package to the newest exact version and rewrite its lock
    #[arg(long)]
    pub upgrade: bool,
    /// Kernels to show or upgrade (default: all), e.g. debian-7.2
    pub names: Vec<String>,
}

pub fn run(args: Args) -> Result<i32> {
    check(args).map(|_| 0)
}

/// Shows (and with --upgrade rewrites) the locks; returns how many were stale.
pub fn check(args: Args) -> Result<usize> {
    let recipe = Recipe::load()?;
    let specs: Vec<&KernelSpec> = if args.names.is_empty() {
        recipe.kernels.iter().collect()
    } else {
        args.names
            .iter()
            .map(|n| recipe.kernel(n))
            .collect::<Result<_>>()?
    };
    let mut stale = 0;
    for spec in specs.into_iter().filter(|s| !s.moving) {
        stale += usize::from(one(spec, args.upgrade)?);
    }
    Ok(stale)
}

/// One kernel's lock against its suite; true when it is stale.
fn one(spec: &KernelSpec, upgrade: bool) -> Result<bool> {
    let path = spec.lock_path();
    let current = KernelLock::load(&path).ok();
    let apt = Apt::new(spec.suite.as_deref());
    apt.update(upgrade)?;
    let newest = resolve(&apt, &spec.package)?;
    let show = |l: &KernelLock| format!("{} {} ({} .deb)", l.package, l.version, l.debs.len());
    println!("{}:", spec.name);
    match &current {
        Some(c) => println!("  locked:  {}", show(c)),
        None => println!("  locked:  nothing valid in {}", path.display()),
    }
    println!("  newest:  {} from {}", show(&newest), apt.describe());
    let stale = !current.as_ref().is_some_and(|c| same_packages(c, &newest));
    // A lock from before locks recorded snapshot addresses is rewritten too (same packages).
    let unaddressed = current
        .as_ref()
        .is_some_and(|c| c.snapshot.is_none() || c.debs.iter().any(|d| d.sha1.is_none()));
    let rewrite = stale || (upgrade && unaddressed);
    if !rewrite {
        match unaddressed {
            true => println!("  up to date (without snapshot addresses: `--upgrade` records them)"),
            false => println!("  up to date"),
        }
    } else if !upgrade {
        println!(
            "  run `cargo xtask kernel-lock --upgrade {}` to lock the newest",
            spec.name
        );
    } else {
        let newest = with_sha1(&apt, spec, newest)?;
        crate::util::write_atomic(&path, newest.to_text().as_bytes())?;
        println!(
            "  wrote {}; commit it. The next run downloads and verifies it.",
            path.display()
        );
    }
    Ok(stale)
}

/// Whether two locks name the same files (their snapshot addresses and times aside).
pub fn same_packages(a: &KernelLock, b: &KernelLock) -> bool {
    let files = |l: &KernelLock| {
        let mut v: Vec<String> = l.debs.iter().map(|d| d.sha256.clone()).collect();
        v.extend(l.selftests.iter().map(|d| d.sha256.clone()));
        v
    };
    a.package == b.package && a.version == b.version && files(a) == files(b)
}

/// Downloads every file of a new lock into the shared cache (the next run needs them anyway)
/// and records its sha1: its address in the snapshot archive once the suite moves on.
fn with_sha1(apt: &Apt, spec: &KernelSpec, mut lock: KernelLock) -> Result<KernelLock> {
    let path = spec.lock_path();
    let upgrade = format!("cargo xtask kernel-lock --upgrade {}", spec.name);
    let lock_ref = crate::image::fetch::LockRef {
        part: format!("kernel {}", spec.name),
        path: &path,
        upgrade: &upgrade,
        snapshot: None,
        moving: false,
    };
    let version = lock.version.clone();
    for d in lock.debs.iter_mut() {
        let want = d.locked(&version);
        let (file, _) = crate::image::fetch::exact(apt, &lock_ref, &want)?
            .map_err(|why| format!("{}: {why}", d.package))?;
        d.sha1 = Some(crate::image::apt::sha1_file(&file)?);
    }
    for d in lock.selftests.iter_mut() {
        let (file, _) = crate::image::fetch::exact(apt, &lock_ref, d)?
            .map_err(|why| format!("{}: {why}", d.package))?;
        d.sha1 = Some(crate::image::apt::sha1_file(&file)?);
    }
    Ok(lock)
}
