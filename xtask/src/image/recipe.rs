//! The declarative image recipe (`vm-images/recipe.yaml`) and the kernel lock file
//! (`vm-images/kernel.lock`). Both are strict: unknown fields and bad values are errors that
//! name file:line:column.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::input::{self, key_position, located};
use crate::util::{root, Result};

pub const RECIPE: &str = "vm-images/recipe.yaml";

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Recipe format version; bump when the meaning of a field changes.
    pub version: u32,
    pub kernel: KernelSpec,
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
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// Debian package that `kernel-lock --upgrade` resolves to an exact image package.
    pub package: String,
    /// Lock file, relative to vm-images/.
    pub lock: String,
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
    /// Exact binary package, e.g. linux-image-6.12.117+deb12-cloud-amd64.
    pub package: String,
    /// Exact Debian version, e.g. 6.12.117-1~deb12u1.
    pub version: String,
    /// The .deb file name apt-get download produces.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

fn read(path: &Path) -> Result<String> {
    input::read(path)
}

impl Recipe {
    pub fn load() -> Result<Recipe> {
        let path = root().join(RECIPE);
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
        if !r.guest_binaries.iter().any(|b| b.bin == "vm-agent") {
            let m = "guest_binaries must include vm-agent (the host talks to it)".to_string();
            return fail("guest_binaries", m);
        }
        Ok(r)
    }

    pub fn dir() -> PathBuf {
        root().join("vm-images")
    }

    pub fn lock_path(&self) -> PathBuf {
        Recipe::dir().join(&self.kernel.lock)
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
        let hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
        if l.sha256.len() != 64 || !l.sha256.chars().all(hex) {
            let m = format!("sha256 {:?} is not 64 lowercase hex digits", l.sha256);
            return fail("sha256", m);
        }
        if !l.filename.ends_with(".deb") || l.filename.contains('/') {
            let m = format!("filename {:?} is not a plain .deb file name", l.filename);
            return fail("filename", m);
        }
        if l.size == 0 {
            return fail("size", "size is 0".into());
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
        "package: linux-image-6.12.117+deb12-cloud-amd64\nversion: 6.12.117-1~deb12u1\n\
filename: linux-image-6.12.117+deb12-cloud-amd64_6.12.117-1~deb12u1_amd64.deb\nsize: 34307256\n\
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
            e.starts_with("vm-images/kernel.lock:4:1: unknown field `sise`"),
            "{e}"
        );
        let e = KernelLock::parse(&GOOD.replace("34307256", "big"), p()).unwrap_err();
        assert!(
            e.starts_with("vm-images/kernel.lock:4:7: size: invalid type"),
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
            &GOOD.replace("linux-image-6.12.117+deb12-cloud-amd64\n", "bash\n"),
            p(),
        )
        .unwrap_err();
        assert!(e.contains("not a linux-image"), "{e}");
    }

    #[test]
    fn committed_recipe_and_lock_parse() {
        let r = Recipe::load().unwrap();
        assert!(r.boot_modules.contains(&"ublk_drv".to_string()));
        let l = KernelLock::load(&r.lock_path()).unwrap();
        assert!(
            l.package.contains("6.12"),
            "the guest kernel must be 6.12: {}",
            l.package
        );
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
    }
}
