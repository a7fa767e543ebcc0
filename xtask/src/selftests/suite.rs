//! The kernel's ublk selftests (`tools/testing/selftests/ublk`) for one locked kernel, built
//! for the guest: the test scripts, `test_common.sh`, `trace/`, and `kublk` + `metadata_size`
//! compiled statically on the host against the same kernel's uapi headers (linux-libc-dev) and
//! Debian's liburing — all three .debs locked in the kernel's lock (`selftests:`). Cached
//! content-addressed in `target/vm-images/selftests/<key>/`, verified before every use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::recipe::{KernelLock, KernelSpec, Recipe};
use crate::image::store;
use crate::util::{key_of, Result};

/// Bumped when the build changes.
const FORMAT: u32 = 1;
const LIMIT: Duration = Duration::from_secs(600);
const SUITE_DIR: &str = "tools/testing/selftests/ublk";
/// At most this many files are shipped to the guest (scripts, programs, trace scripts).
pub const MAX_FILES: usize = 400;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteManifest {
    pub format: u32,
    /// The kernel (by name) whose source the suite comes from, and that source's version.
    pub kernel: String,
    pub source_version: String,
    /// The test scripts in the order the suite's Makefile lists them (TEST_PROGS).
    pub tests: Vec<String>,
    /// The suite's own per-test timeout (`settings`), seconds.
    pub settings_timeout_s: u64,
    pub files: BTreeMap<String, store::FileSum>,
}

impl store::HasFiles for SuiteManifest {
    fn files(&self) -> &BTreeMap<String, store::FileSum> {
        &self.files
    }
    fn files_mut(&mut self) -> &mut BTreeMap<String, store::FileSum> {
        &mut self.files
    }
}

/// A verified, built suite: `dir/ublk/` is what goes to the guest.
#[derive(Clone, Debug)]
pub struct Suite {
    pub dir: PathBuf,
    pub manifest: SuiteManifest,
    verified: store::Verified,
}

impl Suite {
    pub fn root(&self) -> PathBuf {
        self.dir.join("ublk")
    }

    pub fn recheck(&self) -> Result<()> {
        self.verified.recheck().map_err(|e| {
            format!("the built selftests are damaged: {e}; the next run rebuilds them")
        })
    }

    /// Every shipped file, relative to `root()`.
    pub fn shipped(&self) -> Vec<String> {
        self.manifest
            .files
            .keys()
            .filter_map(|k| k.strip_prefix("ublk/").map(str::to_string))
            .collect()
    }
}

/// The suite of locked kernel `name` (`debian-7.2`), built if needed. A kernel older than the
/// suite gets one clear error saying how to run a newer suite against it.
pub fn for_kernel(name: &str) -> Result<Suite> {
    let recipe = Recipe::load()?;
    let spec = recipe.kernel(name)?;
    let lock = crate::image::debian::lock_for(spec)?;
    if lock.selftests.is_empty() {
        let newer: Vec<&str> = recipe
            .kernels
            .iter()
            .filter(|k| KernelLock::load(&k.lock_path()).is_ok_and(|l| !l.selftests.is_empty()))
            .map(|k| k.name.as_str())
            .collect();
        let (major, minor) = crate::image::resolve::SELFTESTS_SINCE;
        return Err(crate::util::bad_input(format!(
            "kernel {} ({}) has no ublk selftests: the suite first shipped in {major}.{minor}. Run a newer suite against it: `cargo xtask vm-selftests --kernel {} --suite {}` (its scripts skip what the kernel lacks)",
            spec.name,
            lock.version,
            spec.name,
            newer.first().copied().unwrap_or("debian-7.2")
        )));
    }
    cached(&Origin::Locked(spec, &lock), None)
}

/// The built suite for `origin` from the cache, built under the store lock if missing. The
/// key: the locked .debs, and for a tree the digest of its suite files and headers.
fn cached(origin: &Origin, tree_digest: Option<&str>) -> Result<Suite> {
    let lock = match origin {
        Origin::Locked(_, l) | Origin::Tree(_, _, l) => *l,
    };
    let _guard = store::lock(Duration::from_secs(1800))?;
    crate::host::deps::ensure(crate::host::deps::SELFTESTS_BUILD.to_vec())?;
    let debs = serde_json::to_string(&lock.selftests).expect("serialises");
    let format = FORMAT.to_le_bytes();
    let mut parts: Vec<(&str, &[u8])> = vec![("format", &format)];
    if let Some(d) = tree_digest {
        parts.push(("tree", d.as_bytes()));
    }
    parts.push(("debs", debs.as_bytes()));
    let (dir, manifest, verified) = store::cached_dir(
        &store::dir().join("selftests"),
        &key_of(&parts),
        "selftests build",
        |_| Ok(()),
        |tmp| build(origin, tmp),
    )?;
    Ok(Suite {
        dir,
        manifest,
        verified,
    })
}

/// Where a suite's inputs come from: a locked kernel's .debs, or a source tree.
enum Origin<'a> {
    Locked(&'a KernelSpec, &'a KernelLock),
    /// A tree, with the locked kernel that lends liburing (and uapi headers if the tree has
    /// no `usr/include` from `make headers_install`).
    Tree(&'a Path, &'a KernelSpec, &'a KernelLock),
}

fn build(origin: &Origin, tmp: &Path) -> Result<SuiteManifest> {
    let spinner = crate::ui::spinner("building the kernel's ublk selftests (kublk)");
    let work = tmp.join("work");
    let result = (|| {
        let (spec, lock) = match origin {
            Origin::Locked(s, l) | Origin::Tree(_, s, l) => (*s, *l),
        };
        let deb = |prefix: &str| locked_deb(spec, lock, prefix);
        let sysroot = work.join("sysroot");
        crate::image::tools::unpack(&deb("liburing-dev")?.0, &sysroot)?;
        let (src, name, version) = match origin {
            Origin::Locked(..) => {
                crate::image::tools::unpack(&deb("linux-libc-dev")?.0, &sysroot)?;
                let (source, version) = deb("linux-source-")?;
                (extract_suite(&source, &work)?, spec.name.clone(), version)
            }
            Origin::Tree(tree, ..) => {
                tree_headers(tree, &sysroot, || deb("linux-libc-dev").map(|d| d.0))?;
                let name = format!("tree {}", tree.display());
                (
                    tree.join(SUITE_DIR),
                    name,
                    tree_version(tree).unwrap_or_else(|| "unknown".into()),
                )
            }
        };
        assemble(&src, &sysroot, &tmp.join("ublk"), name, version)
    })();
    spinner.finish_and_clear();
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// One of the kernel lock's `selftests:` .debs (by package prefix), fetched and verified:
/// its path and the version used.
fn locked_deb(spec: &KernelSpec, lock: &KernelLock, prefix: &str) -> Result<(PathBuf, String)> {
    let apt = Apt::new(spec.suite.as_deref());
    let upgrade = format!("cargo xtask kernel-lock --upgrade {}", spec.name);
    let lock_path = spec.lock_path();
    let lock_ref = crate::image::fetch::LockRef {
        part: format!("selftests {}", spec.name),
        path: &lock_path,
        upgrade: &upgrade,
        snapshot: lock.snapshot.as_deref(),
        moving: spec.moving,
    };
    let d = (lock.selftests.iter())
        .find(|d| d.package.starts_with(prefix))
        .ok_or_else(|| {
            format!(
                "{}: selftests lack {prefix}*; run `{upgrade}`",
                lock_path.display()
            )
        })?;
    let (paths, effective, inputs) =
        crate::image::fetch::all(&apt, &lock_ref, std::slice::from_ref(d))?;
    if !inputs.newer().is_empty() {
        crate::image::fetch::record(&inputs);
    }
    Ok((paths[0].clone(), effective[0].version.clone()))
}

/// The newest locked kernel whose lock carries the selftests' .debs (liburing, uapi headers).
fn newest_with_selftests(recipe: &Recipe) -> Result<(&KernelSpec, KernelLock)> {
    (recipe.kernels.iter().rev())
        .find_map(|k| {
            KernelLock::load(&k.lock_path())
                .ok()
                .filter(|l| !l.selftests.is_empty())
                .map(|l| (k, l))
        })
        .ok_or_else(|| "no locked kernel carries the selftests' liburing; lock one >= 6.15 with `cargo xtask kernel-lock --upgrade`".into())
}

/// The .debs of a sysroot (package prefixes in a kernel lock's `selftests:`).
const SYSROOT_DEBS: [&str; 2] = ["liburing-dev", "linux-libc-dev"];

/// A sysroot for a static ublk program (`gcc -static -I DIR/usr/include -L DIR/usr/lib/...
/// -luring`): liburing-dev and linux-libc-dev of the newest locked kernel that carries them,
/// unpacked into `dir`. Returns what it used (`package version` lines), for a cache key.
pub fn uring_sysroot(dir: &Path) -> Result<String> {
    let recipe = Recipe::load()?;
    let (spec, lock) = newest_with_selftests(&recipe)?;
    crate::host::deps::ensure(crate::host::deps::SELFTESTS_BUILD.to_vec())?;
    let mut used = String::new();
    for prefix in SYSROOT_DEBS {
        let (deb, version) = locked_deb(spec, &lock, prefix)?;
        crate::image::tools::unpack(&deb, dir)?;
        used.push_str(&format!("{prefix} {version} ({})\n", spec.name));
    }
    Ok(used)
}

/// What `uring_sysroot` would unpack (`package version sha256` lines), without fetching: a
/// cache key for what is built against it.
pub fn uring_debs() -> Result<String> {
    let recipe = Recipe::load()?;
    let (spec, lock) = newest_with_selftests(&recipe)?;
    let mut out = String::new();
    for prefix in SYSROOT_DEBS {
        let d = (lock.selftests.iter())
            .find(|d| d.package.starts_with(prefix))
            .ok_or_else(|| format!("{}: selftests lack {prefix}*", spec.lock_path().display()))?;
        out.push_str(&format!("{} {} {}\n", d.package, d.version, d.sha256));
    }
    Ok(out)
}

/// The include and library flags of a `uring_sysroot`.
pub fn sysroot_flags(sysroot: &Path) -> Vec<String> {
    let inc = sysroot.join("usr/include");
    vec![
        format!("-I{}", inc.display()),
        format!("-I{}", inc.join("x86_64-linux-gnu").display()),
        format!("-L{}", sysroot.join("usr/lib/x86_64-linux-gnu").display()),
    ]
}

/// Copies the scripts, compiles the programs and reads the test list of a suite source dir.
fn assemble(
    src: &Path,
    sysroot: &Path,
    out: &Path,
    kernel: String,
    version: String,
) -> Result<SuiteManifest> {
    copy_suite(src, out)?;
    compile(src, sysroot, out)?;
    let makefile = std::fs::read_to_string(src.join("Makefile"))
        .map_err(|e| format!("read the suite's Makefile: {e}"))?;
    let tests = test_progs(&makefile);
    if tests.is_empty() {
        return Err("the suite's Makefile lists no TEST_PROGS".into());
    }
    let settings = std::fs::read_to_string(src.join("settings")).unwrap_or_default();
    Ok(SuiteManifest {
        format: FORMAT,
        kernel,
        source_version: version,
        tests,
        settings_timeout_s: settings_timeout(&settings).unwrap_or(45),
        files: BTreeMap::new(),
    })
}

/// uapi headers for a tree's suite: its own `usr/include` (`make headers_install`), else the
/// locked linux-libc-dev with the tree's own ublk_cmd.h over it (the header kublk is about).
fn tree_headers(
    tree: &Path,
    sysroot: &Path,
    libc_dev: impl FnOnce() -> Result<PathBuf>,
) -> Result<()> {
    let inc = sysroot.join("usr/include");
    let installed = tree.join("usr/include");
    if installed.join("linux/ublk_cmd.h").is_file() {
        return copy_tree(&installed, &inc);
    }
    crate::image::tools::unpack(&libc_dev()?, sysroot)?;
    let own = tree.join("include/uapi/linux/ublk_cmd.h");
    std::fs::copy(&own, inc.join("linux/ublk_cmd.h"))
        .map(drop)
        .map_err(|e| format!("{}: {e} (not a kernel source tree?)", own.display()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    procs::run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to),
        LIMIT,
        "cp -a (headers)",
    )
    .and_then(|_| std::fs::create_dir_all(to).map_err(|e| e.to_string()))
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` of a tree's top Makefile.
pub fn tree_version(tree: &Path) -> Option<String> {
    let mk = std::fs::read_to_string(tree.join("Makefile")).ok()?;
    let get = |k: &str| {
        mk.lines().find_map(|l| {
            l.strip_prefix(k)?
                .trim_start()
                .strip_prefix('=')
                .map(|v| v.trim().to_string())
        })
    };
    Some(format!(
        "{}.{}.{}",
        get("VERSION")?,
        get("PATCHLEVEL")?,
        get("SUBLEVEL")?
    ))
}

/// The suite of a kernel source tree (`tools/testing/selftests/ublk` under `tree`), built with
/// liburing from the newest locked kernel that carries the suite. Cached by the tree's suite
/// files and headers.
pub fn for_tree(tree: &Path) -> Result<Suite> {
    if !tree.join(SUITE_DIR).join("Makefile").is_file() {
        return Err(format!(
            "{} has no {SUITE_DIR} (not a kernel source tree, or a kernel older than the suite, which first shipped in 6.15)",
            tree.display()
        ));
    }
    let recipe = Recipe::load()?;
    let (spec, lock) = newest_with_selftests(&recipe)?;
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    for rel in [
        "include/uapi/linux/ublk_cmd.h",
        "usr/include/linux/ublk_cmd.h",
    ] {
        parts.push((
            rel.into(),
            std::fs::read(tree.join(rel)).unwrap_or_default(),
        ));
    }
    let suite_dir = tree.join(SUITE_DIR);
    let mut files: Vec<PathBuf> = crate::image::tools::walk_files(&suite_dir)?;
    files.sort();
    for f in files.iter().take(MAX_FILES) {
        let data = std::fs::read(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        parts.push((
            f.strip_prefix(&suite_dir)
                .unwrap_or(f)
                .display()
                .to_string(),
            data,
        ));
    }
    let digest = crate::util::sha256_bytes(&serde_json::to_vec(&parts).expect("serialises"));
    cached(&Origin::Tree(tree, spec, &lock), Some(&digest))
}

/// Unpacks only the suite directory out of linux-source's tarball; returns its path.
fn extract_suite(deb: &Path, work: &Path) -> Result<PathBuf> {
    let x = work.join("deb");
    crate::image::tools::unpack(deb, &x)?;
    let tarball = std::fs::read_dir(x.join("usr/src"))
        .map_err(|e| format!("linux-source has no usr/src: {e}"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .ok_or("linux-source holds no .tar.xz")?;
    let top = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.xz"))
        .ok_or("odd linux-source tarball name")?
        .to_string();
    let src = work.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("create {}: {e}", src.display()))?;
    procs::run_ok(
        Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg(format!("{top}/{SUITE_DIR}")),
        LIMIT,
        "tar -xJf linux-source (selftests/ublk only)",
    )?;
    let _ = std::fs::remove_dir_all(&x);
    Ok(src.join(top).join(SUITE_DIR))
}

/// The scripts, settings and trace/ (not the C sources) into `out`.
fn copy_suite(src: &Path, out: &Path) -> Result<()> {
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let from = src.join(&rel);
        std::fs::create_dir_all(out.join(&rel))
            .map_err(|e| format!("create {}: {e}", out.join(&rel).display()))?;
        for e in std::fs::read_dir(&from)
            .map_err(|e| format!("read {}: {e}", from.display()))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = rel.join(&name);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(r);
            } else if !(name.ends_with(".c")
                || name.ends_with(".h")
                || name == "Makefile"
                || name == "config")
            {
                std::fs::copy(e.path(), out.join(&r))
                    .map_err(|err| format!("copy {}: {err}", r.display()))?;
                n += 1;
            }
            if n > MAX_FILES {
                return Err(format!("the suite has more than {MAX_FILES} files"));
            }
        }
    }
    Ok(())
}

/// kublk and metadata_size, static, against the locked uapi headers and liburing.
fn compile(src: &Path, sysroot: &Path, out: &Path) -> Result<()> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(|e| format!("read {}: {e}", src.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    let (standalone, kublk): (Vec<PathBuf>, Vec<PathBuf>) = sources
        .into_iter()
        .partition(|p| p.ends_with("metadata_size.c"));
    let gcc = |output: &str, files: &[PathBuf], libs: &[&str]| {
        let mut cmd = Command::new("gcc");
        cmd.current_dir(src)
            .args(["-O2", "-static", "-D_GNU_SOURCE", "-Wall"])
            .args(sysroot_flags(sysroot))
            .arg("-o")
            .arg(out.join(output))
            .args(files)
            .args(libs);
        let o = procs::run(&mut cmd, LIMIT, &format!("gcc {output}"))?;
        if !o.status.success() {
            return Err(format!(
                "building {output} failed:\n{}",
                procs::tail(&o.stderr, 30)
            ));
        }
        Ok(())
    };
    gcc("kublk", &kublk, &["-luring", "-lpthread", "-lm"])?;
    if !standalone.is_empty() {
        gcc("metadata_size", &standalone, &[])?;
    }
    Ok(())
}

/// `TEST_PROGS := a.sh` / `TEST_PROGS += b.sh` lines of the suite's Makefile, in order.
pub fn test_progs(makefile: &str) -> Vec<String> {
    makefile
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("TEST_PROGS")?;
            let rest = rest
                .trim_start()
                .strip_prefix(":=")
                .or_else(|| rest.trim_start().strip_prefix("+="))?;
            Some(
                rest.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .filter(|t| t.ends_with(".sh"))
        .collect()
}

/// `timeout=N` of the suite's `settings` file.
fn settings_timeout(settings: &str) -> Option<u64> {
    settings
        .lines()
        .find_map(|l| l.trim().strip_prefix("timeout=")?.parse().ok())
}

/// `null_01` for `test_null_01.sh`; the group is `null`.
pub fn test_id(script: &str) -> &str {
    script.trim_start_matches("test_").trim_end_matches(".sh")
}

pub fn group_of(script: &str) -> &str {
    test_id(script).split('_').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makefile_lists_settings_and_names() {
        let mk = "TEST_PROGS := test_generic_02.sh\nTEST_PROGS += test_null_01.sh\n\nTEST_FILES := settings\nTEST_PROGS += test_stress_09.sh\n";
        assert_eq!(
            test_progs(mk),
            ["test_generic_02.sh", "test_null_01.sh", "test_stress_09.sh"]
        );
        assert_eq!(settings_timeout("timeout=150\n"), Some(150));
        assert_eq!(test_id("test_null_01.sh"), "null_01");
        assert_eq!(group_of("test_stress_09.sh"), "stress");
    }

    #[test]
    fn a_tree_without_the_suite_is_one_clear_error_and_versions_come_from_its_makefile() {
        let t = std::env::temp_dir().join(format!("xtask-tree-{}", std::process::id()));
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(
            t.join("Makefile"),
            "# x\nVERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n",
        )
        .unwrap();
        assert_eq!(tree_version(&t).as_deref(), Some("7.3.0"));
        let e = for_tree(&t).unwrap_err();
        assert!(
            e.contains("has no tools/testing/selftests/ublk") && e.contains("6.15"),
            "{e}"
        );
        std::fs::remove_dir_all(&t).unwrap();
    }
}
