//! apt for kernels: the host's own sources (bookworm-security carries 6.12), or a private apt
//! configuration per Debian suite under `target/apt/<suite>/` — its own sources list, package
//! lists, status file and cache — so packages of another suite (unstable's newest kernel) come
//! without a single change to the host's `/etc/apt`. Every apt command is bounded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::host::procs;
use std::collections::BTreeMap;

use crate::image::recipe::{Deb, LockedDeb};
use crate::image::store;
use crate::util::{is_root, sha256_file, target_dir, Result};

/// The Debian archive a private configuration points at (`UBLK_VM_DEBIAN_MIRROR` overrides).
const MIRROR: &str = "http://deb.debian.org/debian";
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Private package lists older than this are refreshed before a resolve.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const LIMIT: Duration = Duration::from_secs(600);

pub struct Apt {
    /// None: the host's sources. Some(suite): a private configuration for that suite.
    suite: Option<String>,
}

impl Apt {
    pub fn new(suite: Option<&str>) -> Apt {
        Apt {
            suite: suite.map(str::to_string),
        }
    }

    pub fn is_host(&self) -> bool {
        self.suite.is_none()
    }

    pub fn describe(&self) -> String {
        match &self.suite {
            None => "the host's apt sources".into(),
            Some(s) => format!(
                "Debian {s} (private apt configuration in {})",
                self.dir().display()
            ),
        }
    }

    fn dir(&self) -> PathBuf {
        target_dir()
            .join("apt")
            .join(self.suite.as_deref().unwrap_or("host"))
    }

    /// `apt-get` or `apt-cache`, pointed at this configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        if is_root() {
            // The _apt sandbox user cannot write into target/; act as ourselves.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        if self.suite.is_some() {
            let d = self.dir();
            for (k, v) in [
                ("Dir::Etc::SourceList", d.join("sources.list")),
                ("Dir::Etc::SourceParts", d.join("sources.list.d")),
                ("Dir::Etc::PreferencesParts", d.join("preferences.d")),
                ("Dir::Etc::Preferences", d.join("preferences")),
                ("Dir::State", d.join("state")),
                ("Dir::State::status", d.join("state/status")),
                ("Dir::Cache", d.join("cache")),
            ] {
                cmd.arg("-o").arg(format!("{k}={}", v.display()));
            }
            cmd.args(["-o", "Debug::NoLocking=1"]);
        }
        cmd
    }

    /// Package lists present and fresh (private configurations only refresh themselves; the
    /// host's lists are refreshed only with `force`, and only as root).
    pub fn update(&self, force: bool) -> Result<()> {
        let Some(suite) = &self.suite else {
            if force && is_root() {
                procs::run_ok(
                    Command::new("apt-get").arg("update"),
                    LIMIT,
                    "apt-get update",
                )?;
            }
            return Ok(());
        };
        let d = self.dir();
        let lists = d.join("state/lists");
        let fresh = std::fs::metadata(lists.join("lock"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if fresh && !force {
            return Ok(());
        }
        for sub in [
            "sources.list.d",
            "preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            std::fs::create_dir_all(d.join(sub))
                .map_err(|e| format!("create {}: {e}", d.join(sub).display()))?;
        }
        let mirror = std::env::var("UBLK_VM_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.into());
        let sources = format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n");
        std::fs::write(d.join("sources.list"), sources)
            .map_err(|e| format!("write sources.list: {e}"))?;
        let status = d.join("state/status");
        if !status.exists() {
            std::fs::write(&status, b"")
                .map_err(|e| format!("create {}: {e}", status.display()))?;
        }
        eprintln!("xtask: fetching the package lists of {}", self.describe());
        let mut cmd = self.command("apt-get");
        cmd.arg("update");
        procs::run_ok(&mut cmd, LIMIT, &format!("apt-get update ({suite})"))?;
        std::fs::write(lists.join("lock"), b"").map_err(|e| format!("touch lists: {e}"))
    }
}

impl Apt {
    /// Downloads one locked .deb into the download cache (or reuses a verified copy). A
    /// version the archive no longer carries is one line naming `upgrade`, the command that
    /// locks the current one.
    pub fn fetch(
        &self,
        d: &Deb,
        version: &str,
        lock_path: &Path,
        upgrade: &str,
    ) -> Result<PathBuf> {
        let dir = store::dir().join("downloads");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let deb = dir.join(&d.filename);
        if deb.exists() {
            match sha256_file(&deb) {
                Ok((sum, _)) if sum == d.sha256 => return Ok(deb),
                _ => {
                    eprintln!(
                        "xtask: cached {} does not match the lock's sha256; downloading again",
                        deb.display()
                    );
                    let _ = std::fs::remove_file(&deb);
                }
            }
        }
        let spec = format!("{}={version}", d.package);
        eprintln!("xtask: downloading {spec} from {} ...", self.describe());
        self.update(false)?;
        let download = || {
            let mut cmd = self.command("apt-get");
            cmd.current_dir(&dir).args(["download", &spec]);
            procs::run(&mut cmd, LIMIT, &format!("apt-get download {spec}"))
        };
        let mut out = download()?;
        if !out.status.success() && (is_root() || !self.is_host()) {
            // The package lists may predate the locked version.
            eprintln!(
                "xtask: apt-get could not find {spec}; refreshing the package lists and retrying"
            );
            self.update(true)?;
            out = download()?;
        }
        if !out.status.success() {
            let said = out
                .stderr
                .lines()
                .rfind(|l| l.starts_with("E:"))
                .unwrap_or("no reason given");
            return Err(format!(
                "{spec} (locked in {}) is no longer in {} ({}): run `{upgrade}` to lock the current version",
                lock_path.display(),
                self.describe(),
                said.trim()
            ));
        }
        let (sum, size) = sha256_file(&deb)
            .map_err(|e| format!("apt-get download did not produce {}: {e}", deb.display()))?;
        if sum != d.sha256 || size != d.size {
            let _ = std::fs::remove_file(&deb);
            return Err(format!(
                "{} has sha256 {sum} ({size} bytes) but {} expects {} ({} bytes); refusing to use it",
                d.filename,
                lock_path.display(),
                d.sha256,
                d.size
            ));
        }
        Ok(deb)
    }

    /// `apt-get download` of every package=version in one go; each .deb is then kept in the
    /// download cache (where the layer build finds it) and described for the lock.
    pub fn download_exact(
        &self,
        plan: &BTreeMap<String, String>,
        dir: &Path,
    ) -> Result<BTreeMap<String, (PathBuf, LockedDeb)>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let specs: Vec<String> = plan.iter().map(|(p, v)| format!("{p}={v}")).collect();
        eprintln!(
            "xtask: downloading {} packages to resolve the library closure",
            specs.len()
        );
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).arg("download").args(&specs);
        procs::run_ok(&mut cmd, LIMIT, "apt-get download (tools closure)")?;
        let cache = store::dir().join("downloads");
        std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
        let mut out = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let filename = e.file_name().to_string_lossy().into_owned();
            let Some(package) = filename.split('_').next().map(str::to_string) else {
                continue;
            };
            let Some(version) = plan.get(&package) else {
                continue;
            };
            let (sha256, size) = sha256_file(&e.path())?;
            let kept = cache.join(&filename);
            std::fs::rename(e.path(), &kept).map_err(|err| format!("keep {filename}: {err}"))?;
            let d = LockedDeb {
                package: package.clone(),
                version: version.clone(),
                filename,
                size,
                sha256,
            };
            out.insert(package, (kept, d));
        }
        if let Some(p) = plan.keys().find(|p| !out.contains_key(*p)) {
            return Err(format!("apt-get download produced no .deb for {p}"));
        }
        Ok(out)
    }
}
