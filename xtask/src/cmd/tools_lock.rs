//! `cargo xtask tools-lock [--upgrade]`: show how the guest tools layer's lock compares with
//! what its Debian suite offers now; with --upgrade, resolve the recipe's packages to exact
//! versions, find the packages holding the shared libraries their programs need (by reading
//! every ELF file's DT_NEEDED, not by trusting Depends:, which would drag in python3 and the
//! Ceph client libraries' own dependencies for nothing), and rewrite `vm-images/tools.lock`.

use std::collections::BTreeMap;

use crate::host::deps;
use crate::image::apt::Apt;
use crate::image::closure;
use crate::image::recipe::Recipe;
use crate::image::tools::ToolsLock;
use crate::util::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Resolve the recipe's tools packages to the newest exact versions and rewrite the lock
    #[arg(long)]
    pub upgrade: bool,
}

pub fn run(args: Args) -> Result<i32> {
    check(args).map(|_| 0)
}

/// Shows (and with --upgrade rewrites) the lock; returns 1 when it was stale, else 0.
pub fn check(args: Args) -> Result<usize> {
    let recipe = Recipe::load()?;
    let spec = &recipe.tools;
    deps::ensure(deps::TOOLS_LAYER.to_vec())?;
    let apt = Apt::new(Some(&spec.suite));
    apt.update(args.upgrade)?;
    let newest = closure::plan(&apt, &spec.packages)?;
    let current = ToolsLock::load(spec);
    let stale = match &current {
        Ok(lock) => stale(lock, &newest),
        Err(e) => vec![e.clone()],
    };
    println!(
        "tools layer ({} from Debian {}):",
        spec.packages.join(" "),
        spec.suite
    );
    for s in &stale {
        println!("  {s}");
    }
    if stale.is_empty() {
        println!("  up to date");
        return Ok(0);
    }
    if !args.upgrade {
        println!("  run `cargo xtask tools-lock --upgrade` to lock the newest");
        return Ok(1);
    }
    let lock = closure::resolve(
        &apt,
        &spec.suite,
        &spec.packages,
        &newest,
        &closure::Base::none(),
    )?;
    crate::util::write_atomic(&spec.lock_path(), lock.to_text().as_bytes())?;
    println!(
        "  wrote {}: {} packages, {} library packages, {} programs; commit it",
        spec.lock_path().display(),
        lock.packages.len(),
        lock.libraries.len(),
        lock.executables.len()
    );
    Ok(1)
}

/// What differs between the lock and the suite's current versions, one line each.
fn stale(lock: &ToolsLock, newest: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for d in lock.packages.iter().chain(&lock.libraries) {
        match newest.get(&d.package) {
            Some(v) if *v == d.version => {}
            Some(v) => out.push(format!("{}: locked {}, newest {v}", d.package, d.version)),
            None => out.push(format!("{}: no longer needed", d.package)),
        }
    }
    out
}
