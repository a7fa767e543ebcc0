//! Debian packages resolved to a layer's lock: apt's own install plan (simulated, no
//! recommends), downloaded, and narrowed to the asked-for packages plus those holding the
//! shared libraries their ELF files need, transitively — by reading every ELF file's
//! DT_NEEDED, not by trusting Depends:, which would drag in python3 and the Ceph client
//! libraries' own dependencies for nothing.
//!
//! Two users: `tools-lock --upgrade` (the recipe's packages, from nothing) and a project's own
//! guest packages (`image::extra`), resolved on top of the locked tools layer (`Base`): what
//! the layer already holds is neither downloaded nor locked again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::tools::{self, ToolsLock};
use crate::util::Result;

const LIMIT: Duration = Duration::from_secs(600);
/// More packages than this in one dependency closure means something is wrong.
pub const MAX_PACKAGES: usize = 400;

/// What a layer below already holds: its packages by name and the shared libraries in them.
pub struct Base {
    pub packages: BTreeSet<String>,
    pub sonames: BTreeSet<String>,
}

impl Base {
    /// Nothing below (the tools layer itself).
    pub fn none() -> Base {
        Base {
            packages: BTreeSet::new(),
            sonames: BTreeSet::new(),
        }
    }

    /// The packages of `lock`, unpacked from `debs` (its .deb files, in the cache) to read
    /// their sonames.
    pub fn of(lock: &ToolsLock, debs: &[std::path::PathBuf]) -> Result<Base> {
        let scratch = scratch_dir("base");
        let mut sonames = BTreeSet::new();
        for (i, deb) in debs.iter().enumerate() {
            let x = scratch.join(i.to_string());
            tools::unpack(deb, &x)?;
            tools::merge_usr(&x)?;
            sonames.extend(tools::all_sonames(&x)?);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        let packages = (lock.packages.iter().chain(&lock.libraries))
            .map(|d| d.package.clone())
            .collect();
        Ok(Base { packages, sonames })
    }
}

/// package → version of everything installing `packages` on an empty system would bring.
pub fn plan(apt: &Apt, packages: &[String]) -> Result<BTreeMap<String, String>> {
    let mut cmd = apt.command("apt-get");
    cmd.args(["-s", "-q", "--no-install-recommends", "install"])
        .args(packages);
    let what = format!("apt-get -s install {}", packages.join(" "));
    let out = procs::run_ok(&mut cmd, LIMIT, &what)?;
    let plan = parse_simulation(&out.stdout);
    if plan.is_empty() || plan.len() > MAX_PACKAGES {
        return Err(format!(
            "{what} resolved to {} packages; expected 1..={MAX_PACKAGES}",
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

fn scratch_dir(what: &str) -> std::path::PathBuf {
    let d = (crate::image::cache::dir()).join(format!(".closure-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Downloads `plan` (less what `base` holds), keeps `packages` and the packages that hold the
/// shared libraries their ELF files need and `base` lacks, transitively: the lock of the
/// layer (or of the part on top of `base`).
pub fn resolve(
    apt: &Apt,
    suite: &str,
    packages: &[String],
    plan: &BTreeMap<String, String>,
    base: &Base,
) -> Result<ToolsLock> {
    let scratch = scratch_dir("resolve");
    let plan: BTreeMap<String, String> = (plan.iter())
        .filter(|(p, _)| !base.packages.contains(*p) || packages.contains(p))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect();
    let debs = apt.download_exact(&plan, &scratch.join("debs"))?;
    let unpacked = |p: &str| scratch.join("x").join(p);
    let mut provider: BTreeMap<String, String> = BTreeMap::new();
    for (pkg, deb) in &debs {
        tools::unpack(&deb.0, &unpacked(pkg))?;
        tools::merge_usr(&unpacked(pkg))?;
        for so in tools::all_sonames(&unpacked(pkg))? {
            provider.entry(so).or_insert_with(|| pkg.clone());
        }
    }
    let chosen = chase(packages, &provider, base, &unpacked)?;
    let executables: BTreeSet<String> = (packages.iter())
        .flat_map(|p| tools::executables(&unpacked(p)))
        .collect();
    let entry = |p: &String| debs[p].1.clone();
    let lock = ToolsLock {
        suite: suite.to_string(),
        packages: packages.iter().map(entry).collect(),
        libraries: (chosen.iter())
            .filter(|p| !packages.contains(p))
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

/// `packages` and, transitively, the providers of every soname their ELF files need that
/// neither they nor `base` hold.
fn chase(
    packages: &[String],
    provider: &BTreeMap<String, String>,
    base: &Base,
    unpacked: &dyn Fn(&str) -> std::path::PathBuf,
) -> Result<BTreeSet<String>> {
    let mut chosen: BTreeSet<String> = packages.iter().cloned().collect();
    let mut queue: Vec<String> = packages.to_vec();
    let mut have: BTreeSet<String> = base.sonames.clone();
    while let Some(p) = queue.pop() {
        assert!(chosen.len() <= MAX_PACKAGES + 1, "bounded by the plan");
        have.extend(tools::all_sonames(&unpacked(&p))?);
        for (file, needs) in tools::elf_needs(&unpacked(&p))? {
            for n in needs.iter().filter(|n| !have.contains(*n)) {
                let q = provider.get(n).ok_or_else(|| {
                    format!(
                        "{p}: {} needs {n}, which no package of the closure holds",
                        Path::new(&file).display()
                    )
                })?;
                if chosen.insert(q.clone()) {
                    queue.push(q.clone());
                }
            }
        }
    }
    Ok(chosen)
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
