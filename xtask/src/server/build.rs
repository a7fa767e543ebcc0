//! Servers built by the platform: a crate from the Rust registry, pinned by exact version,
//! built static for the guest on first use (`cargo install --locked`, crt-static) and cached
//! as a content-addressed entry of the image store under `target/servers/` — verified by
//! sha256 before every use, never rebuilt while its spec is unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::{deps, procs};
use crate::image::store::{self, FileSum, HasFiles};
use crate::image::{elf, GUEST_TRIPLE};
use crate::util::{key_of, target_dir, Result};

/// `binary: {crate: {...}}` of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateSpec {
    pub name: String,
    /// Exact version ("0.2.15"): the build is reproducible and cached by it.
    pub version: String,
    /// The binary the crate installs.
    pub bin: String,
    #[serde(default = "yes")]
    pub default_features: bool,
    #[serde(default)]
    pub features: Vec<String>,
    /// Debian packages the build needs on the host (e.g. libclang-dev for bindgen).
    #[serde(default)]
    pub host_packages: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Longest a server build may take.
const BUILD_LIMIT: Duration = Duration::from_secs(1800);

#[derive(Debug, Serialize, Deserialize)]
struct BuildManifest {
    spec: CrateSpec,
    files: BTreeMap<String, FileSum>,
}

impl HasFiles for BuildManifest {
    fn files(&self) -> &BTreeMap<String, FileSum> {
        &self.files
    }
    fn files_mut(&mut self) -> &mut BTreeMap<String, FileSum> {
        &mut self.files
    }
}

impl CrateSpec {
    pub fn check(&self) -> std::result::Result<(), String> {
        let exact = self.version.split('.').count() == 3
            && self
                .version
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !exact {
            return Err(format!(
                "version {:?} must be exact (e.g. 0.2.15): builds are pinned",
                self.version
            ));
        }
        let word = |s: &String| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c))
        };
        if let Some(bad) = [&self.name, &self.bin]
            .into_iter()
            .chain(&self.features)
            .chain(&self.host_packages)
            .find(|s| !word(s))
        {
            return Err(format!(
                "{bad:?} is not a plain crate, binary, feature or package name"
            ));
        }
        Ok(())
    }
}

/// The static binary of a crate-built server: cached, or built now.
pub fn crate_binary(spec: &CrateSpec) -> Result<PathBuf> {
    let key = key_of(&[
        (
            "spec",
            serde_json::to_string(spec).expect("plain data").as_bytes(),
        ),
        ("target", GUEST_TRIPLE.as_bytes()),
        ("rustflags", b"-Ctarget-feature=+crt-static"),
    ]);
    let parent = target_dir().join("servers");
    let _lock = store::lock(BUILD_LIMIT)?;
    let check = |m: &BuildManifest| {
        (m.spec == *spec)
            .then_some(())
            .ok_or_else(|| "its spec differs".to_string())
    };
    let what = format!("server build {} {}", spec.name, spec.version);
    let (dir, _, _) = store::cached_dir(&parent, &key, &what, check, |tmp| {
        build(spec, tmp, &parent.join("build"))?;
        Ok(BuildManifest {
            spec: spec.clone(),
            files: BTreeMap::new(),
        })
    })?;
    Ok(dir.join("bin").join(&spec.bin))
}

fn build(spec: &CrateSpec, root: &Path, target_dir: &Path) -> Result<()> {
    deps::ensure_packages(&spec.host_packages)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "install",
        "--locked",
        "--version",
        &spec.version,
        "--target",
        GUEST_TRIPLE,
    ])
    .arg("--root")
    .arg(root)
    .arg("--target-dir")
    .arg(target_dir)
    .args(["--bin", &spec.bin])
    // An explicit --target keeps these flags off build scripts and proc macros.
    .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
    .env_remove("RUSTFLAGS");
    if !spec.default_features {
        cmd.arg("--no-default-features");
    }
    if !spec.features.is_empty() {
        cmd.args(["--features", &spec.features.join(",")]);
    }
    cmd.arg(&spec.name);
    let msg = format!(
        "building server {} {} (cargo install, first use only)",
        spec.name, spec.version
    );
    let spinner = crate::ui::spinner(&msg);
    let t = Instant::now();
    let out = procs::run(
        &mut cmd,
        BUILD_LIMIT,
        &format!("cargo install {}", spec.name),
    );
    spinner.finish_and_clear();
    let out = out?;
    if !out.status.success() {
        return Err(format!(
            "building server {} {} failed:\n{}",
            spec.name,
            spec.version,
            procs::tail(&out.stderr, 30)
        ));
    }
    let bin = root.join("bin").join(&spec.bin);
    let data = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    if !elf::is_static(&data)? {
        return Err(format!("{} is not statically linked", bin.display()));
    }
    eprintln!(
        "xtask: built server {} {} in {:.0} s",
        spec.name,
        spec.version,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
