//! Locked (and moving) Debian kernels: the lock (or what a moving series resolves to now),
//! the part built from it when cached, else its .debs fetched by content (`fetch`) — exactly,
//! or the newest kernel of the same series with a warning — and unpacked into a kernel part.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::kernel::{assemble, modules_key, only_subdir, Kernel, Manifest, FORMAT};
use crate::image::recipe::{KernelLock, KernelSpec, LockedDeb, Recipe};
use crate::image::{fetch, store};
use crate::util::{key_of, Result};

/// The cache key of a locked Debian kernel's part.
fn part_key(recipe: &Recipe, lock: &KernelLock) -> String {
    let sums: Vec<&str> = lock.debs.iter().map(|d| d.sha256.as_str()).collect();
    key_of(&[
        ("format", &FORMAT.to_le_bytes()),
        ("debian", sums.join(",").as_bytes()),
        ("modules", modules_key(recipe).as_bytes()),
    ])
}

/// Whether the kernel part of `lock` is in the cache (not verified here; every use verifies).
pub fn is_cached(recipe: &Recipe, lock: &KernelLock) -> bool {
    store::dir()
        .join("kernels")
        .join(part_key(recipe, lock))
        .join("manifest.json")
        .is_file()
}

/// A locked Debian kernel: the part built from the lock, or from the fallback remembered for
/// it, when one is cached; else its .debs fetched (`fetch`) and unpacked.
pub fn prepare(name: &str, recipe: &Recipe) -> Result<Kernel> {
    let spec = recipe.kernel(name)?;
    let upgrade = match spec.moving {
        true => format!("nothing: {} is a moving series", spec.name),
        false => format!("cargo xtask kernel-lock --upgrade {}", spec.name),
    };
    let lock_path = spec.lock_path();
    let lock = lock_for(spec)?;
    let lock_ref = fetch::LockRef {
        part: format!("kernel {}", spec.name),
        path: &lock_path,
        upgrade: &upgrade,
        snapshot: lock.snapshot.as_deref(),
        moving: spec.moving,
    };
    let exact_inputs = |from: &str| {
        lock_ref.inputs(
            lock.debs
                .iter()
                .map(|d| fetch::Used {
                    package: d.package.clone(),
                    version: lock.version.clone(),
                    sha256: d.sha256.clone(),
                    from: from.into(),
                    instead_of: None,
                })
                .collect(),
        )
    };
    if let Some(k) = cached_part(recipe, &lock) {
        // The part may have been built for another name with the same packages
        // (debian-newest and debian-7.2): the record names this one.
        let built = k.manifest.inputs.clone();
        let debs = built.map_or_else(|| exact_inputs("cache").debs, |i| i.debs);
        fetch::record(&lock_ref.inputs(debs));
        return Ok(k);
    }
    let memo_key = fetch::memo_key(&lock_ref.part, &lock.to_text());
    let memo = fetch::load_memo::<KernelLock>(&memo_key, &lock_ref);
    if let Some(k) = memo
        .as_ref()
        .and_then(|m| cached_part(recipe, &m.effective))
    {
        fetch::record(&memo.expect("memo").inputs);
        return Ok(k);
    }
    let remembered = memo.and_then(|m| {
        let debs: Vec<LockedDeb> = m
            .effective
            .debs
            .iter()
            .map(|d| d.locked(&m.effective.version))
            .collect();
        m.cached(&debs)
            .map(|(paths, inputs)| (m.effective, paths, inputs))
    });
    let apt = Apt::new(spec.suite.as_deref());
    let (effective, debs, inputs) = match remembered {
        Some(r) => r,
        None => fetch_kernel(&apt, &lock_ref, spec, &lock)?,
    };
    fetch::save_memo(&memo_key, &effective, &inputs);
    fetch::record(&inputs);
    let key = part_key(recipe, &effective);
    crate::image::kernel::cached_kernel(&key, |tmp| {
        unpack_debian(tmp, &key, spec, &effective, &debs, inputs, recipe)
    })
}

/// The lock of kernel `spec`: its lock file, or for a moving series what its package
/// resolves to now (once per process; offline, the last resolution, with a warning).
pub fn lock_for(spec: &KernelSpec) -> Result<KernelLock> {
    if !spec.moving {
        let path = spec.lock_path();
        return KernelLock::load(&path).map_err(|e| match path.exists() {
            true => e,
            false => format!(
                "kernel {} is not locked yet: run `cargo xtask kernel-lock --upgrade {}`",
                spec.name, spec.name
            ),
        });
    }
    if fetch::locked() {
        return Err(crate::util::bad_input(format!(
            "{} is a moving series (always {}'s newest), which --locked cannot pin: use a locked kernel (`cargo xtask kernels`) or drop --locked",
            spec.name,
            spec.suite.as_deref().unwrap_or("the host's sources")
        )));
    }
    static RESOLVED: std::sync::Mutex<Vec<(String, KernelLock)>> =
        std::sync::Mutex::new(Vec::new());
    let mut done = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, l)) = done.iter().find(|(n, _)| *n == spec.name) {
        return Ok(l.clone());
    }
    let lock = resolve_moving(spec)?;
    done.push((spec.name.clone(), lock.clone()));
    Ok(lock)
}

fn resolve_moving(spec: &KernelSpec) -> Result<KernelLock> {
    let apt = Apt::new(spec.suite.as_deref());
    let memo = crate::image::cache::memo_path(&format!("moving-{}", spec.name));
    let now = apt
        .update(false)
        .and_then(|()| crate::image::resolve::resolve(&apt, &spec.package));
    match now {
        Ok(lock) => {
            eprintln!(
                "xtask: {} (moving) resolves to {} {} in {}",
                spec.name,
                lock.package,
                lock.version,
                apt.describe()
            );
            let _ = crate::util::write_atomic(&memo, lock.to_text().as_bytes());
            Ok(lock)
        }
        Err(e) => {
            let last = std::fs::read_to_string(&memo).map_err(|_| {
                format!(
                    "{} (moving): {e}; and it was never resolved before",
                    spec.name
                )
            })?;
            let lock = KernelLock::parse(&last, &memo)?;
            eprintln!(
                "xtask: warning: {} (moving) could not be resolved ({e}); using its last resolution, {} {}",
                spec.name, lock.package, lock.version
            );
            Ok(lock)
        }
    }
}

/// The kernel part built from exactly `lock`, if the cache holds it.
fn cached_part(recipe: &Recipe, lock: &KernelLock) -> Option<Kernel> {
    if !is_cached(recipe, lock) {
        return None;
    }
    let key = part_key(recipe, lock);
    crate::image::kernel::cached_kernel(&key, |_| Err("not cached after all".into())).ok()
}

/// The lock's .debs exactly; else (without --locked) the newest kernel of the same series in
/// the suite, e.g. 6.12.119 for a locked 6.12.117 (its package names carry the new ABI).
fn fetch_kernel(
    apt: &Apt,
    lock_ref: &fetch::LockRef,
    spec: &KernelSpec,
    lock: &KernelLock,
) -> Result<(KernelLock, Vec<PathBuf>, fetch::Inputs)> {
    let wanted: Vec<LockedDeb> = lock.debs.iter().map(|d| d.locked(&lock.version)).collect();
    if let Err(e) = fetch::prefetch(apt, &wanted) {
        eprintln!(
            "xtask: {}: {e}; fetching one package at a time",
            lock_ref.part
        );
    }
    let mut paths = Vec::new();
    let mut used = Vec::new();
    for d in &wanted {
        match fetch::exact(apt, lock_ref, d)? {
            Ok((p, u)) => {
                paths.push(p);
                used.push(u);
            }
            Err(why) if fetch::locked() => return Err(lock_ref.refusal(d, apt, &why)),
            Err(why) => {
                eprintln!(
                    "xtask: {}: {why}; looking for the newest {} kernel",
                    lock_ref.part,
                    series(&lock.version)
                );
                return fetch_newer(apt, lock_ref, spec, lock);
            }
        }
    }
    Ok((lock.clone(), paths, lock_ref.inputs(used)))
}

/// `major.minor` of a kernel version ("6.12.117-1~deb12u1" → "6.12").
fn series(version: &str) -> String {
    let v = crate::image::resolve::version_key(version);
    format!("{}.{}", v.first().unwrap_or(&0), v.get(1).unwrap_or(&0))
}

fn fetch_newer(
    apt: &Apt,
    lock_ref: &fetch::LockRef,
    spec: &KernelSpec,
    lock: &KernelLock,
) -> Result<(KernelLock, Vec<PathBuf>, fetch::Inputs)> {
    apt.update(false)?;
    let newer = crate::image::resolve::resolve(apt, &spec.package)?;
    if series(&newer.version) != series(&lock.version) {
        return Err(format!(
            "{}: no {} kernel is left in {} (it offers {} {}); run `{}`",
            lock_ref.part,
            series(&lock.version),
            apt.describe(),
            newer.package,
            newer.version,
            lock_ref.upgrade
        ));
    }
    let mut paths = Vec::new();
    let mut used = Vec::new();
    for (i, d) in newer.debs.iter().enumerate() {
        let want = d.locked(&newer.version);
        let (p, mut u) = match fetch::exact(apt, lock_ref, &want)? {
            Ok(found) => found,
            Err(why) => return Err(format!("{}: {why}", lock_ref.part)),
        };
        let was = lock
            .debs
            .get(i)
            .or(lock.debs.last())
            .expect("a lock has debs");
        u.instead_of = Some(format!("{}={}", was.package, lock.version));
        paths.push(p);
        used.push(u);
    }
    Ok((newer, paths, lock_ref.inputs(used)))
}

/// Unpacks a Debian kernel's .debs and assembles its part.
fn unpack_debian(
    tmp: &Path,
    key: &str,
    spec: &KernelSpec,
    lock: &KernelLock,
    debs: &[PathBuf],
    inputs: fetch::Inputs,
    recipe: &Recipe,
) -> Result<Manifest> {
    let x = tmp.join("deb");
    for deb in debs {
        procs::run_ok(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x),
            Duration::from_secs(300),
            &format!("dpkg-deb -x {}", deb.display()),
        )?;
    }
    // Older packages: lib/modules/<rel> and boot/vmlinuz-<rel>; newer ones keep
    // both under usr/lib/modules/<rel>/.
    let modules = ["lib/modules", "usr/lib/modules"]
        .into_iter()
        .map(|m| x.join(m))
        .find(|m| m.is_dir())
        .ok_or_else(|| format!("{} holds no lib/modules", lock.package))?;
    let release = only_subdir(&modules)?;
    let bz = [
        x.join("boot").join(format!("vmlinuz-{release}")),
        modules.join(&release).join("vmlinuz"),
    ]
    .into_iter()
    .find(|b| b.is_file())
    .ok_or_else(|| format!("{} holds no vmlinuz for {release}", lock.package))?;
    let source = format!("{} {} {}", spec.name, lock.package, lock.version);
    let modroot = modules.join(&release);
    let mut m = assemble(tmp, key, &source, &bz, &modroot, &release, recipe)?;
    m.inputs = Some(inputs);
    std::fs::remove_dir_all(&x).map_err(|e| format!("remove {}: {e}", x.display()))?;
    Ok(m)
}
