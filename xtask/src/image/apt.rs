//! apt for kernels: the host's own sources (bookworm-security carries 6.12), or a private apt
//! configuration per Debian suite under `target/apt/<suite>/` — its own sources list, package
//! lists, status file and cache — so packages of another suite (unstable's newest kernel) come
//! without a single change to the host's `/etc/apt`. Every apt command is bounded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::host::procs;
use std::collections::{BTreeMap, BTreeSet};

use crate::image::recipe::LockedDeb;
use crate::util::{is_root, sha256_file, target_dir, Result};

/// The Debian archive a private configuration points at (`UBLK_VM_DEBIAN_MIRROR` overrides).
const MIRROR: &str = "http://deb.debian.org/debian";
/// The keys its indexes must be signed with (`UBLK_VM_DEBIAN_KEYRING` overrides, for a
/// mirror of one's own).
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
        let mirror = std::env::var("UBLK_VM_DEBIAN_MIRROR").unwrap_or_else(|_| MIRROR.into());
        let keyring = std::env::var("UBLK_VM_DEBIAN_KEYRING").unwrap_or_else(|_| KEYRING.into());
        let sources = format!("deb [signed-by={keyring}] {mirror} {suite} main\n");
        let same = std::fs::read_to_string(d.join("sources.list")).is_ok_and(|t| t == sources);
        if fresh && same && !force {
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
        procs::run_ok(&mut cmd, LIMIT, &format!("apt-get update ({suite})")).map_err(|e| {
            crate::util::could_not_test(format!(
                "could not fetch the package lists of {} (offline, or the mirror is unreachable?): {e}\ncheck the network or UBLK_VM_DEBIAN_MIRROR and rerun: packages fetched before are served from the shared download cache (`cargo xtask cache list`)",
                self.describe()
            ))
        })?;
        self.refreshed();
        std::fs::write(lists.join("lock"), b"").map_err(|e| format!("touch lists: {e}"))
    }
}

impl Apt {
    /// Whether the package lists know `package=version` (quietly: no failure is printed for
    /// a version the archive has dropped). Lists that were never fetched are fetched first;
    /// lists that do not know it are refreshed once per process (the host's only as root).
    pub fn has_version(&self, package: &str, version: &str) -> Result<bool> {
        let want = (package.to_string(), version.to_string());
        Ok(self.known(std::slice::from_ref(&want))?.contains(&want))
    }

    /// Which of `wanted` (package, version) the package lists know, asked in one go.
    pub fn known(&self, wanted: &[(String, String)]) -> Result<BTreeSet<(String, String)>> {
        if !self.lists_present() {
            self.update(self.is_host())?;
        }
        // `apt-cache madison P...`: one `P | VERSION | SOURCE` line per version the lists
        // know (`apt-cache show P=V` exits 0 even for a version it does not know).
        let ask = || -> Result<BTreeSet<(String, String)>> {
            let mut names: Vec<&str> = wanted.iter().map(|(p, _)| p.as_str()).collect();
            names.dedup();
            let mut cmd = self.command("apt-cache");
            cmd.arg("madison").args(&names);
            let out = procs::run(&mut cmd, LIMIT, "apt-cache madison")?;
            let all: BTreeSet<(String, String)> = out
                .stdout
                .lines()
                .filter_map(|l| {
                    let mut f = l.split('|').map(str::trim);
                    Some((f.next()?.to_string(), f.next()?.to_string()))
                })
                .collect();
            Ok(wanted
                .iter()
                .filter(|w| all.contains(*w))
                .cloned()
                .collect())
        };
        let known = ask()?;
        if known.len() < wanted.len() && (is_root() || !self.is_host()) && !self.refreshed() {
            self.update(true)?;
            return ask();
        }
        Ok(known)
    }

    /// Whether this configuration has package lists at all.
    fn lists_present(&self) -> bool {
        let lists = match self.suite {
            None => PathBuf::from("/var/lib/apt/lists"),
            Some(_) => self.dir().join("state/lists"),
        };
        std::fs::read_dir(lists).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with("Packages")
                    || e.file_name().to_string_lossy().contains("_Packages")
            })
        })
    }

    /// Marks this configuration's lists as fetched by this process; true when they already
    /// were (a forced refresh is then pointless).
    fn refreshed(&self) -> bool {
        static DONE: std::sync::Mutex<Vec<Option<String>>> = std::sync::Mutex::new(Vec::new());
        let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
        if done.contains(&self.suite) {
            return true;
        }
        done.push(self.suite.clone());
        false
    }

    /// `apt-get download SPEC...` into `dir`; Err carries apt's own error line.
    pub fn download(&self, specs: &[String], dir: &Path) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).arg("download").args(specs);
        let spec = specs.join(" ");
        let out = procs::run(&mut cmd, LIMIT, &format!("apt-get download {spec}"))?;
        if out.status.success() {
            return Ok(());
        }
        let said = out
            .stderr
            .lines()
            .rfind(|l| l.starts_with("E:"))
            .unwrap_or("no reason given");
        Err(format!(
            "could not fetch {spec} (apt-get download): {}",
            said.trim()
        ))
    }

    /// `apt-get download` of every package=version in one go; each .deb is then kept in the
    /// shared download cache (where the layer build finds it) and described for the lock,
    /// with its archive path and sha1 (its snapshot addresses).
    pub fn download_exact(
        &self,
        plan: &BTreeMap<String, String>,
        dir: &Path,
    ) -> Result<BTreeMap<String, (PathBuf, LockedDeb)>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let specs: Vec<String> = plan.iter().map(|(p, v)| format!("{p}={v}")).collect();
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir)
            .args(["download", "--print-uris"])
            .args(&specs);
        let uris = procs::run_ok(
            &mut cmd,
            LIMIT,
            "apt-get download --print-uris (tools closure)",
        )?;
        let where_of: BTreeMap<String, (Option<String>, Option<String>)> = uris
            .stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let url = f.next()?.trim_matches('\'');
                Some((f.next()?.to_string(), archive_and_pool(url)))
            })
            .collect();
        eprintln!(
            "xtask: downloading {} packages to resolve the library closure",
            specs.len()
        );
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).arg("download").args(&specs);
        procs::run_ok(&mut cmd, LIMIT, "apt-get download (tools closure)")?;
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
            let sha1 = Some(sha1_file(&e.path())?);
            let (archive, pool) = where_of.get(&filename).cloned().unwrap_or_default();
            let d = LockedDeb {
                package: package.clone(),
                version: version.clone(),
                filename,
                size,
                sha256,
                archive,
                pool,
                sha1,
            };
            let meta = crate::image::cache::Meta {
                package: package.clone(),
                version: version.clone(),
                filename: d.filename.clone(),
                size,
                sha256: d.sha256.clone(),
                fetched_from: "archive".into(),
            };
            let kept = crate::image::cache::put(&e.path(), &meta)?;
            out.insert(package, (kept, d));
        }
        if let Some(p) = plan.keys().find(|p| !out.contains_key(*p)) {
            return Err(format!("apt-get download produced no .deb for {p}"));
        }
        Ok(out)
    }
}
/// `http://deb.debian.org/debian-security/pool/updates/main/...deb` → (`debian-security`,
/// `pool/updates/main/...deb`): the archive's name and the file's path in it.
pub fn archive_and_pool(url: &str) -> (Option<String>, Option<String>) {
    let Some(at) = url.find("/pool/") else {
        return (None, None);
    };
    let archive = url[..at].rsplit('/').next().filter(|a| !a.is_empty());
    (archive.map(str::to_string), Some(url[at + 1..].to_string()))
}

/// sha1 of a file (`sha1sum`, bounded): the snapshot archive addresses files by it.
pub fn sha1_file(path: &std::path::Path) -> Result<String> {
    let out = procs::run_ok(
        std::process::Command::new("sha1sum").arg(path),
        Duration::from_secs(300),
        "sha1sum",
    )?;
    let sum = out.stdout.split_whitespace().next().unwrap_or_default();
    match sum.len() == 40 && sum.chars().all(|c| c.is_ascii_hexdigit()) {
        true => Ok(sum.to_ascii_lowercase()),
        false => Err(format!("sha1sum printed {:?}", out.stdout.trim())),
    }
}
