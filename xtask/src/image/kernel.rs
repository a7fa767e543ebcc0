//! Kernel providers and the cached "kernel part" of an image.
//!
//! A provider yields a boot image (bzImage) and a modules tree: `debian-*` (a locked or
//! moving Debian kernel: `debian.rs`), `host`
//! (/boot/vmlinuz-$(uname -r) and /lib/modules), or a PATH (a kernel build tree, or a
//! directory holding a bzImage and modules). The kernel part is stored content-addressed in
//! `target/vm-images/kernels/<key>/`: the boot file (an uncompressed vmlinux when it carries a
//! PVH note, which boots ~1 s faster under TCG, else the bzImage), the requested modules and
//! their dependencies decompressed, a generated modules.dep, and a manifest with every file's
//! sha256. It is verified before every use and rebuilt when damaged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::image::recipe::Recipe;
use crate::image::{elf, fetch, store};
use crate::util::{key_of, sha256_file, Result};

/// Bumped when the layout or processing of the kernel part changes.
pub(super) const FORMAT: u32 = 1;

/// The name of the default kernel: the recipe's first locked Debian kernel (`debian-6.12`).
/// Reports and reproduce lines leave it out; every other kernel is named.
pub use super::recipe::DEFAULT_KERNEL;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A locked Debian kernel of the recipe, by name (`DEFAULT_KERNEL` is the default one).
    Debian(String),
    Host,
    Path(PathBuf),
}

impl Source {
    pub fn parse(s: &str) -> Source {
        match s {
            "host" => Source::Host,
            n if n == DEFAULT_KERNEL || (n.starts_with("debian-") && !n.contains('/')) => {
                Source::Debian(n.to_string())
            }
            p => Source::Path(PathBuf::from(p)),
        }
    }

    pub fn default_debian() -> Source {
        Source::Debian(DEFAULT_KERNEL.into())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Module {
    pub name: String,
    /// Path below /lib/modules/<release>/ in the guest.
    pub path: String,
    /// Names of the modules it depends on (direct).
    pub depends: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub key: String,
    pub source: String,
    pub release: String,
    /// "vmlinux" (booted via PVH) or "bzImage".
    pub boot_kind: String,
    pub modules: Vec<Module>,
    /// Requested modules that are built into this kernel.
    pub builtin: Vec<String>,
    /// Boot modules that must be loaded (the recipe's, minus built-ins).
    pub load_at_boot: Vec<String>,
    /// Every file of the kernel part: relative path -> (sha256, size).
    pub files: BTreeMap<String, store::FileSum>,
    /// A Debian kernel's packages and where they came from (None: not from packages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<fetch::Inputs>,
}

pub struct Kernel {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What was verified, for the check before every boot.
    pub verified: store::Verified,
}

impl Kernel {
    pub fn boot_file(&self) -> PathBuf {
        self.dir.join("kernel")
    }

    /// modules.dep for busybox modprobe: "path: dep-path dep-path ..." (transitive).
    pub fn modules_dep(&self) -> String {
        let by_name: HashMap<&str, &Module> = self
            .manifest
            .modules
            .iter()
            .map(|m| (m.name.as_str(), m))
            .collect();
        let mut out = String::new();
        for m in &self.manifest.modules {
            let mut seen = BTreeSet::new();
            let mut order = Vec::new();
            let mut stack: Vec<&str> = m.depends.iter().map(|s| s.as_str()).collect();
            while let Some(d) = stack.pop() {
                if let Some(dm) = by_name.get(d) {
                    if seen.insert(d) {
                        order.push(dm.path.clone());
                        stack.extend(dm.depends.iter().map(|s| s.as_str()));
                    }
                }
            }
            out.push_str(&format!(
                "{}:{}{}\n",
                m.path,
                if order.is_empty() { "" } else { " " },
                order.join(" ")
            ));
        }
        out
    }
}

fn features_file(package: &str) -> PathBuf {
    store::dir()
        .join("features")
        .join(format!("{package}.json"))
}

/// Records the ublk features a kernel reported (for `cargo xtask kernels`).
pub fn remember_features(package: &str, names: &[String]) {
    let _ = crate::util::write_atomic(
        &features_file(package),
        serde_json::to_string(names)
            .expect("strings serialise")
            .as_bytes(),
    );
}

pub fn known_features(release: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(features_file(release)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The recipe's module lists, as a cache-key part.
pub(super) fn modules_key(recipe: &Recipe) -> String {
    recipe.modules.join(",") + "|" + &recipe.boot_modules.join(",")
}

/// The host's own kernel image and modules.
pub(super) fn prepare_host(recipe: &Recipe) -> Result<Kernel> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("read host kernel release: {e}"))?;
    let release = release.trim().to_string();
    let bz = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    let modroot = PathBuf::from(format!("/lib/modules/{release}"));
    if !bz.exists() {
        return Err(format!("--kernel host: {} does not exist (the host kernel's image is not installed here); use the default Debian kernel or --kernel PATH", bz.display()));
    }
    let (bz_sum, _) = sha256_file(&bz)
        .map_err(|e| format!("--kernel host: {e} (on Ubuntu: sudo chmod a+r /boot/vmlinuz-*)"))?;
    let key = key_of(&[
        ("format", &FORMAT.to_le_bytes()),
        ("host", bz_sum.as_bytes()),
        ("release", release.as_bytes()),
        ("modules", modules_key(recipe).as_bytes()),
    ]);
    let source = format!("host {release}");
    cached_kernel(&key, |tmp| {
        assemble(tmp, &key, &source, &bz, &modroot, &release, recipe)
    })
}

/// A kernel build tree, an installed tree, or a bzImage on disk.
pub(super) fn prepare_path(p: &Path, recipe: &Recipe) -> Result<Kernel> {
    let (bz, tree) = locate_tree(p)?;
    let data = std::fs::read(&bz).map_err(|e| format!("read {}: {e}", bz.display()))?;
    let release = bzimage_release(&data).ok_or_else(|| {
        format!(
            "{}: not a bzImage (no kernel version in its header)",
            bz.display()
        )
    })?;
    // Modules installed under lib/modules/<release> keep their layout; a build tree is
    // searched as it is.
    let installed = tree.join("lib/modules").join(&release);
    let modroot = if installed.is_dir() { installed } else { tree };
    // Hash the modules we would take too, so a rebuilt module invalidates the cache.
    let index = ModuleIndex::scan(&modroot)?;
    let mut parts = vec![crate::util::sha256_bytes(&data)];
    for name in &recipe.modules {
        if let Some(f) = index.find(name) {
            parts.push(sha256_file(f)?.0);
        }
    }
    let key = key_of(&[
        ("format", &FORMAT.to_le_bytes()),
        ("path", parts.join(",").as_bytes()),
        ("modules", modules_key(recipe).as_bytes()),
    ]);
    let source = format!("path {}", p.display());
    cached_kernel(&key, |tmp| {
        assemble(tmp, &key, &source, &bz, &modroot, &release, recipe)
    })
}

/// For --kernel PATH: (bzImage, modules root). PATH is a build tree, a directory holding a
/// bzImage (and modules), or a bzImage file (modules then come from its directory).
fn locate_tree(p: &Path) -> Result<(PathBuf, PathBuf)> {
    if p.is_file() {
        return Ok((
            p.to_path_buf(),
            p.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ));
    }
    if !p.is_dir() {
        return Err(crate::util::bad_input(format!("--kernel {}: no such file or directory (expected debian, host, a bzImage, or a kernel build tree)", p.display())));
    }
    for cand in [
        "arch/x86/boot/bzImage",
        "bzImage",
        "vmlinuz",
        "boot/vmlinuz",
    ] {
        if p.join(cand).is_file() {
            return Ok((p.join(cand), p.to_path_buf()));
        }
    }
    // An installed tree (INSTALL_PATH/INSTALL_MOD_PATH, an unpacked package): boot/vmlinuz-<release>.
    let boot: Vec<PathBuf> = std::fs::read_dir(p.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    if let [one] = boot.as_slice() {
        return Ok((one.clone(), p.to_path_buf()));
    }
    Err(crate::util::bad_input(format!("--kernel {}: no arch/x86/boot/bzImage, bzImage or vmlinuz inside; build the kernel first (make bzImage modules)", p.display())))
}

pub(super) fn only_subdir(dir: &Path) -> Result<String> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!(
            "{}: expected exactly one kernel release directory, found {names:?}",
            dir.display()
        )),
    }
}

/// Builds the kernel part into `out` from a bzImage and a modules tree.
pub(super) fn assemble(
    out: &Path,
    key: &str,
    source: &str,
    bz: &Path,
    modroot: &Path,
    release: &str,
    recipe: &Recipe,
) -> Result<Manifest> {
    let data = std::fs::read(bz).map_err(|e| format!("read {}: {e}", bz.display()))?;
    let (boot, boot_kind) = match extract_vmlinux(&data) {
        Some(vmlinux) => (vmlinux, "vmlinux"),
        None => (data, "bzImage"),
    };
    std::fs::write(out.join("kernel"), &boot).map_err(|e| format!("write kernel: {e}"))?;

    let index = ModuleIndex::scan(modroot)?;
    let builtin_list = std::fs::read_to_string(modroot.join("modules.builtin")).unwrap_or_default();
    let builtin_names: BTreeSet<String> = builtin_list
        .lines()
        .filter_map(|l| Some(norm(Path::new(l).file_name()?.to_str()?.split('.').next()?)))
        .collect();
    let mut modules: Vec<Module> = Vec::new();
    let mut builtin = Vec::new();
    let mut queue: Vec<String> = recipe.modules.iter().map(|m| norm(m)).collect();
    let mut seen = BTreeSet::new();
    while let Some(name) = queue.pop() {
        assert!(
            seen.len() < 10_000,
            "module dependency walk does not terminate"
        );
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some(file) = index.find(&name) else {
            if builtin_names.contains(&name) {
                builtin.push(name);
                continue;
            }
            return Err(format!(
                "kernel {release} ({source}) has no module {name} and does not list it as built in (modules.builtin); \
                 the guest needs it (for ublk_drv: CONFIG_BLK_DEV_UBLK=m or y, Linux >= 6.0)"
            ));
        };
        let bytes = decompress(file)?;
        let info = elf::modinfo(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let depends: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(',').filter(|s| !s.is_empty()).map(norm))
            .collect();
        let rel = file.strip_prefix(modroot).unwrap().to_string_lossy();
        let rel = rel
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .to_string();
        let dest = out.join("modules").join(&rel);
        std::fs::create_dir_all(dest.parent().unwrap())
            .map_err(|e| format!("create {}: {e}", dest.display()))?;
        std::fs::write(&dest, &bytes).map_err(|e| format!("write {}: {e}", dest.display()))?;
        queue.extend(depends.iter().cloned());
        modules.push(Module {
            name,
            path: rel,
            depends,
        });
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    builtin.sort();
    let load_at_boot = recipe
        .boot_modules
        .iter()
        .map(|m| norm(m))
        .filter(|m| !builtin.contains(m))
        .collect();
    Ok(Manifest {
        format: FORMAT,
        key: key.to_string(),
        source: source.to_string(),
        release: release.to_string(),
        boot_kind: boot_kind.to_string(),
        modules,
        builtin,
        load_at_boot,
        files: BTreeMap::new(), // filled in by the store
        inputs: None,
    })
}

/// Module names compare with '-' and '_' equal, as modprobe does.
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

struct ModuleIndex {
    by_name: HashMap<String, PathBuf>,
}

impl ModuleIndex {
    fn scan(root: &Path) -> Result<ModuleIndex> {
        let mut by_name = HashMap::new();
        let mut stack = vec![root.to_path_buf()];
        let mut visited = 0usize;
        while let Some(dir) = stack.pop() {
            visited += 1;
            if visited > 200_000 {
                return Err(format!(
                    "{}: more than 200000 directories; is this really a kernel tree?",
                    root.display()
                ));
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() && !name.starts_with('.') && name != "source" && name != "build" {
                    stack.push(e.path());
                } else if ft.is_file() {
                    for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
                        if let Some(stem) = name.strip_suffix(ext) {
                            by_name.entry(norm(stem)).or_insert_with(|| e.path());
                        }
                    }
                }
            }
        }
        Ok(ModuleIndex { by_name })
    }

    fn find(&self, name: &str) -> Option<&PathBuf> {
        self.by_name.get(&norm(name))
    }
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut data.as_slice(), &mut out)
            .map_err(|e| format!("{name}: xz: {e:?}"))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd(&data).ok_or_else(|| format!("{name}: bad zstd data"))
    } else if name.ends_with(".gz") {
        Err(format!("{name}: gzip-compressed modules are not supported; build with CONFIG_MODULE_COMPRESS_XZ, _ZSTD or none"))
    } else {
        Ok(data)
    }
}

fn zstd(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut dec = ruzstd::decoding::StreamingDecoder::new(data).ok()?;
    let mut out = Vec::new();
    dec.read_to_end(&mut out).ok()?;
    Some(out)
}

/// The release string from a bzImage's setup header (e.g. "6.12.117+deb12-cloud-amd64").
pub fn bzimage_release(b: &[u8]) -> Option<String> {
    if b.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let off = u16::from_le_bytes(b.get(0x20e..0x210)?.try_into().ok()?) as usize + 0x200;
    let s = b.get(off..off + 256)?;
    let s = &s[..s.iter().position(|c| *c == 0)?];
    Some(
        std::str::from_utf8(s)
            .ok()?
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// Decompresses the vmlinux inside a bzImage if it is zstd or xz and carries a PVH note.
fn extract_vmlinux(bz: &[u8]) -> Option<Vec<u8>> {
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let off = u32::from_le_bytes(bz.get(0x248..0x24c)?.try_into().ok()?) as usize;
    let len = u32::from_le_bytes(bz.get(0x24c..0x250)?.try_into().ok()?) as usize;
    let payload = bz.get(pm_start + off..pm_start + off + len)?;
    let vmlinux = if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd(payload)?
    } else if payload.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &payload[..], &mut out).ok()?;
        out
    } else {
        return None;
    };
    elf::has_pvh_note(&vmlinux).ok()?.then_some(vmlinux)
}

impl store::HasFiles for Manifest {
    fn files(&self) -> &BTreeMap<String, store::FileSum> {
        &self.files
    }
    fn files_mut(&mut self) -> &mut BTreeMap<String, store::FileSum> {
        &mut self.files
    }
}

/// The kernel part cached under `key`, built by `build` into a fresh directory if absent.
pub fn cached_kernel(key: &str, build: impl FnOnce(&Path) -> Result<Manifest>) -> Result<Kernel> {
    let (dir, manifest, verified) = store::cached_dir(
        &store::dir().join("kernels"),
        key,
        "kernel",
        |_| Ok(()),
        build,
    )?;
    Ok(Kernel {
        dir,
        manifest,
        verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let v = format!("{version} (builder@host) #1 SMP\0");
        b[0x500..0x500 + v.len()].copy_from_slice(v.as_bytes());
        b
    }

    #[test]
    fn release_from_bzimage_header() {
        assert_eq!(
            bzimage_release(&fake_bzimage("6.12.117+deb12-cloud-amd64")).as_deref(),
            Some("6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(bzimage_release(b"not a kernel"), None);
        assert_eq!(bzimage_release(&vec![0u8; 0x1000]), None);
        // An unrecognised payload means "boot the bzImage", not an error.
        assert!(extract_vmlinux(&fake_bzimage("6.1")).is_none());
    }

    #[test]
    fn source_parsing_and_tree_errors() {
        assert_eq!(Source::parse("debian"), Source::default_debian());
        assert_eq!(
            Source::parse("debian-7.2"),
            Source::Debian("debian-7.2".into())
        );
        assert_eq!(
            Source::parse("./debian-7.2/"),
            Source::Path("./debian-7.2/".into())
        );
        assert_eq!(Source::parse("host"), Source::Host);
        assert_eq!(
            Source::parse("/src/linux"),
            Source::Path("/src/linux".into())
        );
        let e = locate_tree(Path::new("/nonexistent/linux")).unwrap_err();
        assert!(e.contains("no such file or directory"), "{e}");
        let e = locate_tree(&std::env::temp_dir()).unwrap_err();
        assert!(e.contains("build the kernel first"), "{e}");
    }

    #[test]
    fn modules_dep_is_transitive() {
        let m = |name: &str, deps: &[&str]| Module {
            name: name.into(),
            path: format!("kernel/{name}.ko"),
            depends: deps.iter().map(|s| s.to_string()).collect(),
        };
        let k = Kernel {
            dir: PathBuf::new(),
            manifest: Manifest {
                format: FORMAT,
                key: String::new(),
                source: String::new(),
                release: String::new(),
                boot_kind: String::new(),
                modules: vec![m("a", &["b"]), m("b", &["c"]), m("c", &[])],
                builtin: vec![],
                load_at_boot: vec![],
                files: BTreeMap::new(),
                inputs: None,
            },
            verified: store::Verified::nothing(),
        };
        assert_eq!(
            k.modules_dep(),
            "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko: kernel/c.ko\nkernel/c.ko:\n"
        );
    }
}
