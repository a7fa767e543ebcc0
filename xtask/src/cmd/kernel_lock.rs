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
    let recipe = Recipe::load()?;
    let specs: Vec<&KernelSpec> = if args.names.is_empty() {
        recipe.kernels.iter().collect()
    } else {
        args.names
            .iter()
            .map(|n| recipe.kernel(n))
            .collect::<Result<_>>()?
    };
    for spec in specs {
        one(spec, args.upgrade)?;
    }
    Ok(0)
}

fn one(spec: &KernelSpec, upgrade: bool) -> Result<()> {
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
    if current.as_ref() == Some(&newest) {
        println!("  up to date");
    } else if !upgrade {
        println!(
            "  run `cargo xtask kernel-lock --upgrade {}` to lock the newest",
            spec.name
        );
    } else {
        crate::util::write_atomic(&path, newest.to_text().as_bytes())?;
        println!(
            "  wrote {}; commit it. The next run downloads and verifies it.",
            path.display()
        );
    }
    Ok(())
}
