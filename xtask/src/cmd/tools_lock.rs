//! `cargo xtask tools-lock [--upgrade]`: show how the guest tools layer's lock compares with
//! what its Debian suite offers now; with --upgrade, resolve the recipe's packages to exact
//! versions, find the packages holding the shared libraries their programs need (by reading
//! every ELF file's DT_NEEDED, not by trusting Depends:, which would drag in python3 and the
//! Ceph client libraries' own dependencies for nothing), and rewrite `vm-images/tools.lock`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::host::{deps, procs};
use crate::image::apt::Apt;
use crate::image::recipe::{Recipe, ToolsSpec};
use crate::image::tools::{self, ToolsLock};
use crate::util::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Resolve the recipe's tools packages to the newest exact versions and rewrite the lock
    #[arg(long)]
    pub upgrade: bool,
}

const LIMIT: Duration = Duration::from_secs(600);
/// More packages than this in one dependency closure means something is wrong.
const MAX_PACKAGES: usize = 400;

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
    let newest = closure(&apt, &spec.packages)?;
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
    let lock = resolve(&apt, spec, &newest)?;
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

/// package → version of everything installing `packages` on an empty system would bring
/// (apt's own resolver, simulated; no recommends).
fn closure(apt: &Apt, packages: &[String]) -> Result<BTreeMap<String, String>> {
    let mut cmd = apt.command("apt-get");
    cmd.args(["-s", "-q", "--no-install-recommends", "install"])
        .args(packages);
    let out = procs::run_ok(&mut cmd, LIMIT, "apt-get -s install (tools layer)")?;
    let plan = parse_simulation(&out.stdout);
    if plan.is_empty() || plan.len() > MAX_PACKAGES {
        return Err(format!(
            "apt-get -s install {} resolved to {} packages; expected 1..={MAX_PACKAGES}",
            packages.join(" "),
            plan.len()
        ));
    }
    Ok(plan)
}

/// `Inst NAME (VERSION SUITE [ARCH])` lines of `apt-get -s install`.
fn parse_simulation(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(" (")?;
            let version = rest.split_whitespace().next()?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

/// Downloads the whole closure, keeps the recipe's packages and the packages that hold the
/// shared libraries their ELF files need, transitively.
fn resolve(apt: &Apt, spec: &ToolsSpec, plan: &BTreeMap<String, String>) -> Result<ToolsLock> {
    let scratch = crate::image::cache::dir().join(".tools-lock");
    let _ = std::fs::remove_dir_all(&scratch);
    let debs = apt.download_exact(plan, &scratch.join("debs"))?;
    let mut provider: BTreeMap<String, String> = BTreeMap::new();
    for (pkg, deb) in &debs {
        let x = scratch.join("x").join(pkg);
        tools::unpack(&deb.0, &x)?;
        tools::merge_usr(&x)?;
        for so in tools::all_sonames(&x)? {
            provider.entry(so).or_insert_with(|| pkg.clone());
        }
    }
    let unpacked = |p: &str| scratch.join("x").join(p);
    let mut chosen: BTreeSet<String> = spec.packages.iter().cloned().collect();
    let mut queue: Vec<String> = spec.packages.clone();
    let mut have: BTreeSet<String> = BTreeSet::new();
    while let Some(p) = queue.pop() {
        assert!(chosen.len() <= MAX_PACKAGES, "bounded by the closure");
        have.extend(tools::all_sonames(&unpacked(&p))?);
        for (file, needs) in tools::elf_needs(&unpacked(&p))? {
            for n in needs.iter().filter(|n| !have.contains(*n)) {
                let q = provider.get(n).ok_or_else(|| {
                    format!(
                        "{p}: {} needs {n}, which no package of the closure holds",
                        file.display()
                    )
                })?;
                if chosen.insert(q.clone()) {
                    queue.push(q.clone());
                }
            }
        }
    }
    let executables: BTreeSet<String> = spec
        .packages
        .iter()
        .flat_map(|p| tools::executables(&unpacked(p)))
        .collect();
    let entry = |p: &String| debs[p].1.clone();
    let lock = ToolsLock {
        suite: spec.suite.clone(),
        packages: spec.packages.iter().map(entry).collect(),
        libraries: chosen
            .iter()
            .filter(|p| !spec.packages.contains(p))
            .map(entry)
            .collect(),
        executables: executables.into_iter().collect(),
        snapshot: Some(crate::image::resolve::snapshot_now()),
    };
    // The rest of the closure was only needed to find the providers.
    for (p, (kept, _)) in &debs {
        if !chosen.contains(p) {
            let _ = std::fs::remove_file(kept);
            let _ = std::fs::remove_file(kept.with_extension("json"));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_lines_give_names_and_exact_versions() {
        let text = "Reading package lists...\n\
Inst libc6 (2.41-12+deb13u4 Debian:13.7/stable [amd64]) []\n\
Inst libattr1 (1:2.5.2-3 Debian:13.7/stable [amd64])\n\
Conf libc6 (2.41-12+deb13u4 Debian:13.7/stable [amd64])\n";
        let p = parse_simulation(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p["libc6"], "2.41-12+deb13u4");
        assert_eq!(p["libattr1"], "1:2.5.2-3");
    }
}
