//! The declarative image recipe (`vm-images/recipe.yaml`) and the kernel lock file
//! (`vm-images/kernel.lock`). Both are strict: unknown fields and bad values are errors that
//! name file:line:column.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::input::{self, key_position, located};
use crate::util::{root, Result};

pub const RECIPE: &str = "vm-images/recipe.yaml";

/// The kernel a run boots when none is named: the recipe's first (`debian-6.12`).
pub const DEFAULT_KERNEL: &str = "debian";
#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version; bump when the meaning of a field changes.
    pub version: u32,
    /// The Debian kernels a run may boot, by name; the first is the default (`debian`).
    pub kernels: Vec<KernelSpec>,
    /// Modules copied into the image (plus their dependencies), by module name.
    pub modules: Vec<String>,
    /// Modules loaded by /init before the agent starts.
    pub boot_modules: Vec<String>,
    /// Kernel command line (console, panic and printk settings live here).
    pub cmdline: String,
    /// The guest /init script, relative to vm-images/.
    pub init: String,
    /// Workspace binaries built statically and installed in the guest's /bin.
    pub guest_binaries: Vec<GuestBinary>,
    /// The optional guest tools layer (Debian userland on a read-only disk).
    pub tools: ToolsSpec,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ToolsSpec {
    /// Debian suite the packages come from, through a private apt configuration.
    pub suite: String,
    /// Debian packages whose programs the layer offers; their shared libraries come along.
    pub packages: Vec<String>,
    /// Lock file, relative to vm-images/.
    pub lock: String,
}

impl ToolsSpec {
    pub fn lock_path(&self) -> PathBuf {
        Recipe::dir().join(&self.lock)
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// What `--kernel` calls it, e.g. debian-6.12.
    pub name: String,
    /// Debian suite to fetch from through a private apt configuration (e.g. unstable); absent:
    /// the host's own apt sources.
    #[serde(default)]
    pub suite: Option<String>,
    /// What `kernel-lock --upgrade` resolves to an exact image package: a (meta)package, or a
    /// pattern with `*` (the newest match wins), e.g. linux-image-7.2.*-cloud-amd64.
    pub package: String,
    /// Lock file, relative to vm-images/ (absent for a moving series).
    #[serde(default)]
    pub lock: Option<String>,
    /// A moving series (`debian-newest`): `package` is resolved when the kernel is used, never
    /// locked; what it resolved to is printed and recorded like a fallback.
    #[serde(default)]
    pub moving: bool,
}

impl KernelSpec {
    /// The lock file (for a moving series: a name that never exists, so loading it fails).
    pub fn lock_path(&self) -> PathBuf {
        match &self.lock {
            Some(l) => Recipe::dir().join(l),
            None => Recipe::dir().join(format!("{}.lock", self.name)),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct GuestBinary {
    pub package: String,
    pub bin: String,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KernelLock {
    /// Exact image package, e.g. linux-image-6.12.117+deb12-cloud-amd64.
    pub package: String,
    /// Exact Debian version, e.g. 6.12.117-1~deb12u1.
    pub version: String,
    /// The .deb files that hold it: the image itself, or (newer Debian) the image's
    /// linux-binary-* (kernel) and linux-modules-* (modules) packages.
    pub debs: Vec<Deb>,
    /// What `vm-selftests` builds the kernel's ublk selftests from (kernels since 6.15):
    /// linux-source-X.Y, linux-libc-dev (uapi headers) and liburing-dev, from the same suite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selftests: Vec<LockedDeb>,
    /// When it was locked (UTC, `YYYYMMDDTHHMMSSZ`): the snapshot archive's timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deb {
    pub package: String,
    /// The .deb file name apt-get download produces.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The archive that published it (`debian`, `debian-security`: the snapshot archive's
    /// names), and its path there (`pool/main/...`): with the lock's `snapshot` time, its
    /// address in the snapshot archive once the live archive has moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// sha1 of the file: its address in the snapshot archive (`/file/<sha1>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedDeb {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The archive that published it (`debian`, `debian-security`: the snapshot archive's
    /// names), and its path there (`pool/main/...`): with the lock's `snapshot` time, its
    /// address in the snapshot archive once the live archive has moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// sha1 of the file: its address in the snapshot archive (`/file/<sha1>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

impl LockedDeb {
    pub fn deb(&self) -> Deb {
        Deb {
            package: self.package.clone(),
            filename: self.filename.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            archive: self.archive.clone(),
            pool: self.pool.clone(),
            sha1: self.sha1.clone(),
        }
    }
}

impl Deb {
    /// This .deb with the version it has (a kernel lock names one for all its files).
    pub fn locked(&self, version: &str) -> LockedDeb {
        LockedDeb {
            package: self.package.clone(),
            version: version.to_string(),
            filename: self.filename.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            archive: self.archive.clone(),
            pool: self.pool.clone(),
            sha1: self.sha1.clone(),
        }
    }
}

fn read(path: &Path) -> Result<String> {
    input::read(path)
}

impl Recipe {
    pub fn load() -> Result<Recipe> {
        let path = Recipe::path();
        Recipe::parse(&read(&path)?, &path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Recipe> {
        let r: Recipe = input::parse(text, path)?;
        let fail = |key: &str, m: String| Err(located(path, key_position(text, &[key]), &m));
        if r.version != 1 {
            let m = format!(
                "version {} is not supported (this xtask reads version 1)",
                r.version
            );
            return fail("version", m);
        }
        for (key, list) in [("modules", &r.modules), ("boot_modules", &r.boot_modules)] {
            let bad = |m: &String| {
                m.is_empty()
                    || !m
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            if let Some(m) = list.iter().find(|m| bad(m)) {
                return fail(key, format!("bad module name {m:?}"));
            }
        }
        if let Some(m) = r.boot_modules.iter().find(|m| !r.modules.contains(m)) {
            let m = format!("boot module {m:?} is not listed under modules");
            return fail("boot_modules", m);
        }
        if r.kernels.is_empty() {
            return fail(
                "kernels",
                "kernels needs at least the default kernel".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for k in &r.kernels {
            let ok = k.name.starts_with("debian-") && !k.name.contains('/');
            if !ok || !names.insert(k.name.as_str()) {
                let m = format!(
                    "kernel name {:?} must be unique, debian-<something>, without '/'",
                    k.name
                );
                return fail("kernels", m);
            }
            if k.moving == k.lock.is_some() {
                let m = format!(
                    "kernel {:?}: give either `lock: FILE` (a locked kernel) or `moving: true` (resolved when used), not both or neither",
                    k.name
                );
                return fail("kernels", m);
            }
        }
        if r.kernels[0].moving {
            let m = "the first kernel is the default and must be locked, not moving".to_string();
            return fail("kernels", m);
        }
        let pkg_ok = |p: &String| {
            p.len() >= 2
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        };
        if let Some(p) = r.tools.packages.iter().find(|p| !pkg_ok(p)) {
            let m = format!("tools.packages: {p:?} is not a Debian package name");
            return Err(located(
                path,
                key_position(text, &["tools", "packages"]),
                &m,
            ));
        }
        if r.tools.packages.is_empty() || r.tools.suite.is_empty() {
            let m = "tools needs a suite and at least one package".to_string();
            return fail("tools", m);
        }
        if !r.guest_binaries.iter().any(|b| b.bin == "vm-agent") {
            let m = "guest_binaries must include vm-agent (the host talks to it)".to_string();
            return fail("guest_binaries", m);
        }
        Ok(r)
    }

    /// `vm-images/recipe.yaml`, or the file `UBLK_VM_RECIPE` names (to try another recipe or
    /// lock without touching the checkout; its init and locks are read beside it).
    pub fn path() -> PathBuf {
        match std::env::var_os("UBLK_VM_RECIPE") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => root().join(RECIPE),
        }
    }

    /// The directory the recipe's relative paths (init, locks) start from.
    pub fn dir() -> PathBuf {
        let path = Recipe::path();
        path.parent()
            .map_or_else(|| root().join("vm-images"), Path::to_path_buf)
    }

    /// The kernel called `name` (`debian` is the first).
    pub fn kernel(&self, name: &str) -> Result<&KernelSpec> {
        if name == DEFAULT_KERNEL {
            return Ok(&self.kernels[0]);
        }
        self.kernels.iter().find(|k| k.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.kernels.iter().map(|k| k.name.as_str()).collect();
            format!(
                "no kernel named {name:?} in {RECIPE}; locked kernels: debian (= {}), {}; or host, or a PATH",
                names[0],
                names.join(", ")
            )
        })
    }
}

pub const LOCK_HEADER: &str = "# Exact guest kernel package, verified by sha256 before use.\n\
# Written by `cargo xtask kernel-lock --upgrade`; do not edit by hand.\n";

impl KernelLock {
    pub fn load(path: &Path) -> Result<KernelLock> {
        KernelLock::parse(&read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<KernelLock> {
        let l: KernelLock = input::parse(text, path)?;
        let fail = |key: &str, m: String| {
            let m = format!("{m}; regenerate it with `cargo xtask kernel-lock --upgrade`");
            Err(located(path, key_position(text, &[key]), &m))
        };
        if !l.package.starts_with("linux-image-") {
            let m = format!("package {:?} is not a linux-image-* package", l.package);
            return fail("package", m);
        }
        if l.version.is_empty() || l.version.contains(char::is_whitespace) {
            return fail("version", format!("bad version {:?}", l.version));
        }
        if l.debs.is_empty() || l.debs.len() > 8 {
            return fail("debs", "debs must list 1..=8 .deb files".into());
        }
        let hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
        for d in l.debs.iter().chain(
            l.selftests
                .iter()
                .map(|s| s.deb())
                .collect::<Vec<_>>()
                .iter(),
        ) {
            if d.sha256.len() != 64 || !d.sha256.chars().all(hex) {
                let m = format!(
                    "{}: sha256 {:?} is not 64 lowercase hex digits",
                    d.package, d.sha256
                );
                return fail("sha256", m);
            }
            if !d.filename.ends_with(".deb") || d.filename.contains('/') {
                let m = format!(
                    "{}: filename {:?} is not a plain .deb file name",
                    d.package, d.filename
                );
                return fail("filename", m);
            }
            if d.size == 0 {
                return fail("size", format!("{}: size is 0", d.package));
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "package: linux-image-6.12.117+deb12-cloud-amd64\nversion: 6.12.117-1~deb12u1\ndebs:\n\
- package: linux-image-6.12.117+deb12-cloud-amd64\n  \
filename: linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1_amd64.deb\n  size: 34307256\n  \
sha256: 5195b288dec79e2981d6b84457f38b7ce7310a2d702930ec7d07209c7f78ce37\n";

    fn p() -> &'static Path {
        Path::new("vm-images/kernel.lock")
    }

    #[test]
    fn lock_roundtrip() {
        let l = KernelLock::parse(GOOD, p()).unwrap();
        assert_eq!(l.version, "6.12.117-1~deb12u1");
        assert_eq!(KernelLock::parse(&l.to_text(), p()).unwrap(), l);
    }

    #[test]
    fn lock_errors_name_file_line_column() {
        let e = KernelLock::parse(&GOOD.replace("size:", "sise:"), p()).unwrap_err();
        assert!(
            e.starts_with("vm-images/kernel.lock:6:3: debs[0]: unknown field `sise`"),
            "{e}"
        );
        let e = KernelLock::parse(&GOOD.replace("34307256", "big"), p()).unwrap_err();
        assert!(
            e.starts_with("vm-images/kernel.lock:6:9: debs[0].size: invalid type"),
            "{e}"
        );
        let e = KernelLock::parse(&GOOD.replace("sha256: 5195", "sha256: X195"), p()).unwrap_err();
        assert!(
            e.contains("not 64 lowercase hex") && e.contains("kernel-lock --upgrade"),
            "{e}"
        );
        let e = KernelLock::parse("package: linux-image-x\n", p()).unwrap_err();
        assert!(e.contains("missing field"), "{e}");
        let e = KernelLock::parse(
            &GOOD.replacen("linux-image-6.12.117+deb12-cloud-amd64\n", "bash\n", 1),
            p(),
        )
        .unwrap_err();
        assert!(e.contains("not a linux-image"), "{e}");
    }

    #[test]
    fn committed_recipe_and_lock_parse() {
        let r = Recipe::load().unwrap();
        assert!(r.boot_modules.contains(&"ublk_drv".to_string()));
        let l = KernelLock::load(&r.kernel("debian").unwrap().lock_path()).unwrap();
        assert!(
            l.package.contains("6.12"),
            "the default guest kernel must be 6.12: {}",
            l.package
        );
        for k in r.kernels.iter().filter(|k| !k.moving) {
            let l = KernelLock::load(&k.lock_path()).unwrap_or_else(|e| panic!("{e}"));
            let version = k.name.trim_start_matches("debian-");
            assert!(
                l.package.contains(&format!("-{version}.")),
                "{}: {}",
                k.name,
                l.package
            );
        }
        assert!(r
            .kernel("debian-9.9")
            .unwrap_err()
            .contains("locked kernels: debian (= debian-6.12)"));
    }

    #[test]
    fn recipe_is_strict() {
        let text = std::fs::read_to_string(root().join(RECIPE)).unwrap();
        let e =
            Recipe::parse(&text.replace("cmdline:", "cmdlin:"), Path::new("r.yaml")).unwrap_err();
        assert!(
            e.starts_with("r.yaml:") && e.contains("unknown field `cmdlin`"),
            "{e}"
        );
        let e = Recipe::parse(
            &text.replace("boot_modules: [ublk_drv]", "boot_modules: [zram]"),
            Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(e.contains("not listed under modules"), "{e}");
        let e = Recipe::parse(
            &text.replace("moving: true", "moving: true, lock: x.lock"),
            Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(e.contains("either `lock: FILE`"), "{e}");
        let e =
            Recipe::parse(&text.replace(", moving: true", ""), Path::new("r.yaml")).unwrap_err();
        assert!(e.contains("not both or neither"), "{e}");
    }
}
