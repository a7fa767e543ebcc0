//! The guest tools layer: Debian userland (fio, bash, util-linux, e2fsprogs, coreutils, ...)
//! with its shared-library closure, as a read-only ext4 disk image.
//!
//! Why a disk and not a second initramfs: the kernel unpacks an initramfs into RAM before
//! /init runs, so every run that carried the layer would pay for copying all of it at boot;
//! a virtio disk costs a module load and a mount, and pages are read only when a program
//! runs (figures in vm-images/README.md). Runs that do not ask for tools get no disk at all:
//! their QEMU command line, and so their boot, is what it was.
//!
//! Locked like the kernel (`vm-images/tools.lock`, written by `cargo xtask tools-lock
//! --upgrade`): every .deb by name, version, size and sha256. The layer is content-addressed
//! by the lock in `target/vm-images/tools/<key>/` (tools.img + manifest.json), verified before
//! every use and rebuilt when damaged. It is kernel-independent: the ext4 and virtio_blk it
//! needs come from each kernel's own part of the image. In the guest, /init mounts it on
//! /tools (the disk is found by its serial, `SERIAL`) and links its programs into /bin and its
//! libraries under /lib, over busybox's applets of the same name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::recipe::{LockedDeb, Recipe, ToolsSpec};
use crate::image::{elf, fetch, store};
use crate::input::{self, key_position, located};
use crate::util::{key_of, Result};

/// Bumped when the layer's layout or processing changes.
const FORMAT: u32 = 1;
/// The virtio-blk serial the guest's /init looks for.
pub const SERIAL: &str = "ublk-vm-tools";
const UPGRADE: &str = "cargo xtask tools-lock --upgrade";
const LIMIT: Duration = Duration::from_secs(300);
/// Where shared libraries live once the tree is merged into /usr.
const LIB_DIRS: [&str; 3] = ["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];
const BIN_DIRS: [&str; 2] = ["usr/bin", "usr/sbin"];
/// What no program needs at run time (and what makes the image large).
const DROP: [&str; 6] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
];

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolsLock {
    pub suite: String,
    /// The recipe's packages, exactly.
    pub packages: Vec<LockedDeb>,
    /// The packages that hold the shared libraries those need (the ELF closure).
    pub libraries: Vec<LockedDeb>,
    /// Program names the layer puts on PATH: what `--tools` and `vm.tools` may ask for.
    pub executables: Vec<String>,
    /// When it was locked (UTC, `YYYYMMDDTHHMMSSZ`): the snapshot archive's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

pub const LOCK_HEADER: &str =
    "# Exact Debian packages of the guest tools layer, verified by sha256 before use.\n\
# Written by `cargo xtask tools-lock --upgrade`; do not edit by hand.\n";

impl ToolsLock {
    pub fn load(spec: &ToolsSpec) -> Result<ToolsLock> {
        let path = spec.lock_path();
        if !path.exists() {
            return Err(format!(
                "the tools layer is not locked yet ({} is missing): run `{UPGRADE}`",
                path.display()
            ));
        }
        let text = input::read(&path)?;
        let l = ToolsLock::parse(&text, &path)?;
        if l.executables.is_empty() {
            let m = format!("the layer offers no executables; regenerate it with `{UPGRADE}`");
            return Err(located(&path, key_position(&text, &["executables"]), &m));
        }
        let locked: BTreeSet<&str> = l.packages.iter().map(|d| d.package.as_str()).collect();
        let wanted: BTreeSet<&str> = spec.packages.iter().map(String::as_str).collect();
        if locked != wanted || l.suite != spec.suite {
            return Err(format!(
                "{} locks {} from {}, but the recipe asks for {} from {}: run `{UPGRADE}`",
                path.display(),
                locked.into_iter().collect::<Vec<_>>().join(" "),
                l.suite,
                wanted.into_iter().collect::<Vec<_>>().join(" "),
                spec.suite
            ));
        }
        Ok(l)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ToolsLock> {
        let l: ToolsLock = input::parse(text, path)?;
        let fail = |key: &str, m: String| {
            let m = format!("{m}; regenerate it with `{UPGRADE}`");
            Err(located(path, key_position(text, &[key]), &m))
        };
        let hex = |s: &str| s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        for (key, list) in [("packages", &l.packages), ("libraries", &l.libraries)] {
            for d in list {
                if !hex(&d.sha256) {
                    return fail(
                        key,
                        format!("{}: sha256 is not 64 lowercase hex digits", d.package),
                    );
                }
                if !d.filename.ends_with(".deb") || d.filename.contains('/') || d.size == 0 {
                    return fail(key, format!("{}: bad filename or size", d.package));
                }
            }
        }
        Ok(l)
    }

    pub fn to_text(&self) -> String {
        format!(
            "{LOCK_HEADER}{}",
            serde_yaml::to_string(self).expect("lock serialises")
        )
    }

    fn all(&self) -> impl Iterator<Item = &LockedDeb> {
        self.packages.iter().chain(&self.libraries)
    }
}

/// Checks that the layer offers every program in `names` (without building it).
pub fn check_names(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let recipe = Recipe::load()?;
    let lock = ToolsLock::load(&recipe.tools)?;
    check_names_in(&lock, names)
}

fn check_names_in(lock: &ToolsLock, names: &[String]) -> Result<()> {
    match names.iter().find(|n| !lock.executables.contains(n)) {
        None => Ok(()),
        Some(n) => Err(crate::util::bad_input(format!(
            "the guest tools layer has no program {n:?}; it offers: {} (to add one, put its Debian package under tools.packages in vm-images/recipe.yaml and run `{UPGRADE}`)",
            lock.executables.join(" ")
        ))),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerManifest {
    pub format: u32,
    pub suite: String,
    /// package=version of every .deb in the layer.
    pub packages: Vec<String>,
    pub executables: Vec<String>,
    pub files: BTreeMap<String, store::FileSum>,
    /// The packages and where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<fetch::Inputs>,
}

impl store::HasFiles for LayerManifest {
    fn files(&self) -> &BTreeMap<String, store::FileSum> {
        &self.files
    }
    fn files_mut(&mut self) -> &mut BTreeMap<String, store::FileSum> {
        &mut self.files
    }
}

/// A verified tools layer, ready to attach.
#[derive(Clone, Debug)]
pub struct Layer {
    pub dir: PathBuf,
    pub manifest: LayerManifest,
    verified: store::Verified,
}

impl Layer {
    pub fn image(&self) -> PathBuf {
        self.dir.join("tools.img")
    }

    /// Before every boot: the disk image and its manifest hold what was verified.
    pub fn recheck(&self) -> Result<()> {
        self.verified
            .recheck()
            .map_err(|e| format!("the guest tools layer is damaged: {e}; the next run rebuilds it"))
    }
}

/// Builds (or reuses) the tools layer the lock describes, after checking that it offers
/// `names`: the layer built from the lock, or from the fallback remembered for it, when one
/// is cached; else the lock's .debs fetched (`fetch`: exactly, or newer and said so).
pub fn layer(names: &[String]) -> Result<Layer> {
    let recipe = Recipe::load()?;
    let lock = ToolsLock::load(&recipe.tools)?;
    check_names_in(&lock, names)?;
    let lock_path = recipe.tools.lock_path();
    let lock_ref = fetch::LockRef {
        part: "tools layer".into(),
        path: &lock_path,
        upgrade: UPGRADE,
        snapshot: lock.snapshot.as_deref(),
        moving: false,
    };
    layer_of(&lock, &lock_ref)
}

/// The layer of exactly `lock` (the recipe's, or the recipe's with a project's packages on
/// top, `image::extra`): cached, or fetched by `lock_ref`'s rules and built.
pub fn layer_of(lock: &ToolsLock, lock_ref: &fetch::LockRef) -> Result<Layer> {
    let _guard = store::lock(Duration::from_secs(1800))?;
    crate::host::deps::ensure(crate::host::deps::TOOLS_LAYER.to_vec())?;
    if let Some(l) = cached_layer(lock) {
        fetch::record(&l.manifest.inputs.clone().unwrap_or_else(|| {
            let used = lock.all().map(|d| fetch::Used {
                package: d.package.clone(),
                version: d.version.clone(),
                sha256: d.sha256.clone(),
                from: "cache".into(),
                instead_of: None,
            });
            lock_ref.inputs(used.collect())
        }));
        return Ok(l);
    }
    let memo_key = fetch::memo_key(&lock_ref.part, &lock.to_text());
    let memo = fetch::load_memo::<ToolsLock>(&memo_key, lock_ref);
    if let Some(l) = memo.as_ref().and_then(|m| cached_layer(&m.effective)) {
        fetch::record(&memo.expect("memo").inputs);
        return Ok(l);
    }
    let remembered = memo.and_then(|m| {
        let debs: Vec<LockedDeb> = m.effective.all().cloned().collect();
        m.cached(&debs)
            .map(|(paths, inputs)| (paths, m.effective, inputs))
    });
    let (debs, effective, inputs) = match remembered {
        Some(r) => r,
        None => {
            let apt = Apt::new(Some(&lock.suite));
            let wanted: Vec<LockedDeb> = lock.all().cloned().collect();
            let (debs, effective, inputs) = fetch::all(&apt, lock_ref, &wanted)?;
            let effective = ToolsLock {
                packages: effective[..lock.packages.len()].to_vec(),
                libraries: effective[lock.packages.len()..].to_vec(),
                ..lock.clone()
            };
            (debs, effective, inputs)
        }
    };
    fetch::save_memo(&memo_key, &effective, &inputs);
    fetch::record(&inputs);
    let (dir, manifest, verified) = store::cached_dir(
        &store::dir().join("tools"),
        &layer_key(&effective),
        "tools layer",
        |_| Ok(()),
        |tmp| build(&effective, &debs, inputs, lock_ref.upgrade, tmp),
    )?;
    Ok(Layer {
        dir,
        manifest,
        verified,
    })
}

fn layer_key(lock: &ToolsLock) -> String {
    key_of(&[
        ("format", &FORMAT.to_le_bytes()),
        ("lock", lock.to_text().as_bytes()),
    ])
}

/// The layer built from exactly `lock`, if the cache holds it.
fn cached_layer(lock: &ToolsLock) -> Option<Layer> {
    let key = layer_key(lock);
    let parent = store::dir().join("tools");
    if !parent.join(&key).join("manifest.json").is_file() {
        return None;
    }
    let (dir, manifest, verified) = store::cached_dir(
        &parent,
        &key,
        "tools layer",
        |_| Ok(()),
        |_| Err("not cached after all".to_string()),
    )
    .ok()?;
    Some(Layer {
        dir,
        manifest,
        verified,
    })
}

fn build(
    lock: &ToolsLock,
    debs: &[PathBuf],
    inputs: fetch::Inputs,
    upgrade: &str,
    tmp: &Path,
) -> Result<LayerManifest> {
    let spinner = crate::ui::spinner("building the guest tools layer");
    let stage = tmp.join("stage");
    let result = (|| {
        for deb in debs {
            unpack(deb, &stage)?;
        }
        merge_usr(&stage)?;
        for d in DROP {
            let p = stage.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| format!("remove {}: {e}", p.display()))?;
            }
        }
        let missing = unresolved(&stage)?;
        if let Some((soname, who)) = missing.iter().next() {
            return Err(format!(
                "the tools lock is incomplete: {who} needs {soname}, which no locked package holds; run `{upgrade}`"
            ));
        }
        mkfs(&stage, &tmp.join("tools.img"))
    })();
    spinner.finish_and_clear();
    let _ = std::fs::remove_dir_all(&stage);
    result?;
    Ok(LayerManifest {
        format: FORMAT,
        suite: lock.suite.clone(),
        packages: lock
            .all()
            .map(|d| format!("{}={}", d.package, d.version))
            .collect(),
        executables: lock.executables.clone(),
        files: BTreeMap::new(),
        inputs: Some(inputs),
    })
}

/// `dpkg-deb -x` one package into `dir`.
pub fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    procs::run_ok(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir),
        LIMIT,
        &format!("dpkg-deb -x {}", deb.display()),
    )
    .map(drop)
}

/// Moves /bin, /sbin, /lib and /lib64 of an unpacked tree under /usr (Debian's merged /usr:
/// older packages still ship files there), leaving relative symlinks behind.
pub fn merge_usr(root: &Path) -> Result<()> {
    for top in ["bin", "sbin", "lib", "lib64"] {
        let from = root.join(top);
        let meta = match std::fs::symlink_metadata(&from) {
            Ok(m) => m,
            Err(_) => continue,
        };
        if meta.is_dir() {
            move_into(&from, &root.join("usr").join(top))?;
            std::fs::remove_dir(&from).map_err(|e| format!("remove {}: {e}", from.display()))?;
        } else {
            std::fs::remove_file(&from).map_err(|e| format!("remove {}: {e}", from.display()))?;
        }
        std::os::unix::fs::symlink(format!("usr/{top}"), &from)
            .map_err(|e| format!("symlink {}: {e}", from.display()))?;
    }
    Ok(())
}

/// Moves every entry of `from` into `to` (merging directories), bounded by the tree's depth.
fn move_into(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| format!("create {}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let is_dir = entry.file_type().map_err(|e| e.to_string())?.is_dir();
        if is_dir && dst.is_dir() {
            move_into(&src, &dst)?;
            std::fs::remove_dir(&src).map_err(|e| format!("remove {}: {e}", src.display()))?;
        } else {
            std::fs::rename(&src, &dst)
                .map_err(|e| format!("move {} to {}: {e}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// Every regular ELF file under `root`, with the sonames it needs that its own search path
/// does not find inside `root`: its DT_RUNPATH (`$ORIGIN` expanded) and its own directory
/// (dlopen'd plugins such as glibc's gconv modules find their siblings there). The default
/// library directories are the caller's business. An ELF file of another class or byte order
/// (linux-perf ships a 32-bit `perf-read-vdso32`) is no concern of the guest's 64-bit loader:
/// it is left out of the closure, not an error.
pub fn elf_needs(root: &Path) -> Result<Vec<(PathBuf, Vec<String>)>> {
    let mut out = Vec::new();
    for path in walk(root)? {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.len() < 64 {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        if !bytes.starts_with(b"\x7fELF") || bytes[4..6] != [2, 1] {
            continue;
        }
        let d = elf::dynamic(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        let own = path.parent().unwrap_or(root).to_path_buf();
        let mut dirs = vec![own.clone()];
        for r in &d.runpath {
            dirs.push(match r.strip_prefix("$ORIGIN") {
                Some(rest) => own.join(rest.trim_start_matches('/')),
                None => root.join(r.trim_start_matches('/')),
            });
        }
        let needs = d
            .needed
            .into_iter()
            .filter(|n| !dirs.iter().any(|dir| dir.join(n).exists()))
            .collect();
        out.push((path, needs));
    }
    Ok(out)
}

/// Shared-library names (files and symlinks) in the loader's default directories of `root`.
pub fn sonames(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in LIB_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        out.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".so")),
        );
    }
    out
}

/// Shared-library names anywhere under `root`'s usr/lib (private directories included: a
/// library found through another package's DT_RUNPATH).
pub fn all_sonames(root: &Path) -> Result<BTreeSet<String>> {
    let lib = root.join("usr/lib");
    if !lib.is_dir() {
        return Ok(BTreeSet::new());
    }
    Ok(walk(&lib)?
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.contains(".so"))
        .collect())
}

/// Sonames some ELF file under `root` needs but the loader would not find: soname → who.
fn unresolved(root: &Path) -> Result<BTreeMap<String, String>> {
    let have = sonames(root);
    let mut missing = BTreeMap::new();
    for (path, needs) in elf_needs(root)? {
        for n in needs.into_iter().filter(|n| !have.contains(n)) {
            let who = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            missing.entry(n).or_insert(who);
        }
    }
    Ok(missing)
}

/// Program names in the bin directories of `root` (files and symlinks).
pub fn executables(root: &Path) -> Vec<String> {
    let mut out = BTreeSet::new();
    for d in BIN_DIRS.iter().chain(&["bin", "sbin"]) {
        let Ok(entries) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        out.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
    out.into_iter().collect()
}

/// Every regular file under `root`.
pub fn walk_files(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(walk(root)?
        .into_iter()
        .filter(|p| p.symlink_metadata().is_ok_and(|m| m.is_file()))
        .collect())
}

/// Every path under `root` (not following symlinks), at most 200000 of them.
fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    const MAX_ENTRIES: usize = 200_000;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
            if out.len() > MAX_ENTRIES {
                return Err(format!(
                    "{} holds more than {MAX_ENTRIES} files",
                    root.display()
                ));
            }
        }
    }
    Ok(out)
}

/// A read-only ext4 image of `stage` (root-owned, no journal), sized to fit with slack.
fn mkfs(stage: &Path, img: &Path) -> Result<()> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for p in walk(stage)? {
        let m = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        bytes += m.len().div_ceil(4096) * 4096;
        inodes += 1;
    }
    // Metadata, directories and inode tables: a quarter more plus 16 MiB is ample.
    let size_bytes = (bytes + bytes / 4 + (16 << 20)).div_ceil(1 << 20) << 20;
    let out = procs::run_ok(
        Command::new("mke2fs")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-m",
                "0",
                "-L",
                "ublk-tools",
            ])
            .args(["-O", "^has_journal", "-E", "root_owner=0:0"])
            .arg("-N")
            .arg((inodes + 1024).to_string())
            .arg("-d")
            .arg(stage)
            .arg(img)
            .arg(format!("{}k", size_bytes / 1024)),
        LIMIT,
        "mke2fs (tools layer)",
    );
    out.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> ToolsLock {
        let d = |p: &str| LockedDeb {
            package: p.into(),
            version: "1.0-1".into(),
            filename: format!("{p}_1.0-1_amd64.deb"),
            size: 10,
            sha256: "ab".repeat(32),
            archive: None,
            pool: None,
            sha1: None,
        };
        ToolsLock {
            suite: "trixie".into(),
            packages: vec![d("fio"), d("bash")],
            libraries: vec![d("libc6")],
            executables: vec!["bash".into(), "fio".into()],
            snapshot: None,
        }
    }

    #[test]
    fn lock_roundtrip_and_errors_name_the_fix() {
        let p = Path::new("vm-images/tools.lock");
        let l = lock();
        assert_eq!(ToolsLock::parse(&l.to_text(), p).unwrap(), l);
        let bad = l.to_text().replacen(&"ab".repeat(32), "XY", 1);
        let e = ToolsLock::parse(&bad, p).unwrap_err();
        assert!(
            e.starts_with("vm-images/tools.lock:") && e.contains(UPGRADE),
            "{e}"
        );
        let e = ToolsLock::parse(&l.to_text().replace("size:", "sise:"), p).unwrap_err();
        assert!(e.contains("unknown field `sise`"), "{e}");
    }

    #[test]
    fn a_lock_from_before_snapshot_addresses_still_loads() {
        // tools.lock as committed on 2026-11-23: five of its packages left trixie within
        // nine days. It must still parse (the fetch then falls back, with a warning).
        let p = crate::util::root().join("xtask/tests/fixtures/tools-2026-11-stale.lock");
        let l = ToolsLock::parse(&std::fs::read_to_string(&p).unwrap(), &p).unwrap();
        assert!(l.snapshot.is_none() && l.all().all(|d| d.sha1.is_none()));
        let libc = l.all().find(|d| d.package == "libc6").unwrap();
        assert_eq!(libc.version, "2.41-12+deb13u4");
        assert_eq!(ToolsLock::parse(&l.to_text(), &p).unwrap(), l);
    }

    #[test]
    fn unknown_programs_are_refused_with_the_list_and_the_fix() {
        assert!(check_names_in(&lock(), &["fio".into()]).is_ok());
        let e = check_names_in(&lock(), &["fio".into(), "stress-ng".into()]).unwrap_err();
        assert!(
            e.contains("no program \"stress-ng\"") && e.contains("offers: bash fio"),
            "{e}"
        );
        assert!(e.contains(UPGRADE), "{e}");
    }

    #[test]
    fn merged_usr_moves_old_style_trees() {
        let t = tempfile_dir("merge");
        std::fs::create_dir_all(t.join("lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(t.join("lib/x86_64-linux-gnu/libold.so.1"), b"x").unwrap();
        std::fs::create_dir_all(t.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::write(t.join("usr/lib/x86_64-linux-gnu/libnew.so.2"), b"y").unwrap();
        std::fs::create_dir_all(t.join("bin")).unwrap();
        std::fs::write(t.join("bin/bash"), b"z").unwrap();
        merge_usr(&t).unwrap();
        let s = sonames(&t);
        assert!(
            s.contains("libold.so.1") && s.contains("libnew.so.2"),
            "{s:?}"
        );
        assert_eq!(executables(&t), ["bash"]);
        assert_eq!(
            std::fs::read_link(t.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn the_closure_check_finds_what_this_test_binary_needs() {
        // This very test binary is a dynamic ELF: it needs libc.so.6, which an empty tree
        // does not hold.
        let t = tempfile_dir("closure");
        std::fs::create_dir_all(t.join("usr/bin")).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), t.join("usr/bin/prog")).unwrap();
        // A 32-bit helper (ELFCLASS32) beside it is not the 64-bit closure's concern.
        let mut elf32 = b"\x7fELF\x01\x01\x01".to_vec();
        elf32.resize(128, 0);
        std::fs::write(t.join("usr/bin/helper32"), elf32).unwrap();
        let missing = unresolved(&t).unwrap();
        assert_eq!(
            missing.get("libc.so.6").map(String::as_str),
            Some("usr/bin/prog"),
            "{missing:?}"
        );
        std::fs::remove_dir_all(&t).unwrap();
    }

    fn tempfile_dir(what: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-tools-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
