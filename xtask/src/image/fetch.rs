//! Fetching a lock's `.deb` files by content, in order, each step bounded:
//!
//! ```text
//! shared cache (sha256)  →  live archive, locked version  →  snapshot archive (/file/<sha1>,
//!   or /archive/<archive>/<lock time>/<pool path>)  →  fallback: the newest build in the
//!   same suite (kernels: the newest of the same series), verified by the signed indexes
//! ```
//!
//! The first three give exactly what the lock names (checked against its sha256). The
//! fallback gives something newer: it prints one warning line per image part naming every
//! package that moved and the upgrade command, and is recorded (`Inputs`) in the part's
//! manifest and every report. `--locked` (or `UBLK_VM_LOCKED=1`) forbids it: the missing
//! package is then one error and exit 125 ("could not test": the lock is fine, the world
//! no longer offers it). A fallback is remembered in the shared cache (`cache::memo_path`)
//! so later runs — and every candidate of a bisection — use the same resolution without
//! asking the archive again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::host::procs;
use crate::image::apt::Apt;
use crate::image::cache;
use crate::image::recipe::LockedDeb;
use crate::util::{is_root, Result};

/// The snapshot archive (`UBLK_VM_SNAPSHOT_URL` overrides, e.g. a local mirror).
const SNAPSHOT: &str = "http://snapshot.debian.org";
/// One snapshot download (linux-source is ~160 MB).
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(900);

/// Where one `.deb` of an image part came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Used {
    pub package: String,
    pub version: String,
    pub sha256: String,
    /// `cache`, `archive` or `snapshot`.
    pub from: String,
    /// `package=version` of the lock entry this replaces, when it is not what the lock names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead_of: Option<String>,
}

/// What one image part (a kernel, the tools layer, a selftests build) was made from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// `kernel debian-6.12`, `tools layer`, `selftests debian-7.2`.
    pub part: String,
    /// The lock file it follows, relative to the workspace where possible.
    pub lock: String,
    /// The command that locks what the suite offers now.
    pub upgrade: String,
    pub debs: Vec<Used>,
    /// A moving series (`debian-newest`): resolved when used, never locked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moving: bool,
}

impl Inputs {
    pub fn newer(&self) -> Vec<&Used> {
        self.debs
            .iter()
            .filter(|u| u.instead_of.is_some())
            .collect()
    }

    /// One line: as locked (and from where), or the fallback's warning.
    pub fn line(&self) -> String {
        let n = self.debs.len();
        let newer = self.newer();
        if self.moving {
            let what: Vec<String> = self
                .debs
                .iter()
                .map(|u| format!("{} {} from {}", u.package, u.version, u.from))
                .collect();
            return format!(
                "{}: moving series, resolved when used: {}",
                self.part,
                what.join(", ")
            );
        }
        if newer.is_empty() {
            let mut from: BTreeMap<&str, usize> = BTreeMap::new();
            for u in &self.debs {
                *from.entry(u.from.as_str()).or_default() += 1;
            }
            let from: Vec<String> = from.iter().map(|(k, v)| format!("{v} from {k}")).collect();
            return format!(
                "{}: {n} packages as locked in {} ({})",
                self.part,
                self.lock,
                from.join(", ")
            );
        }
        let moved: Vec<String> = newer
            .iter()
            .map(|u| {
                let was = u.instead_of.as_deref().unwrap_or_default();
                match was.split_once('=') {
                    Some((p, v)) if p == u.package => format!("{p} {v} → {}", u.version),
                    _ => format!("{was} → {} {}", u.package, u.version),
                }
            })
            .collect();
        format!(
            "{}: {} of {n} packages newer than {} ({}); run {}",
            self.part,
            newer.len(),
            self.lock,
            moved.join(", "),
            self.upgrade
        )
    }
}

/// Whether fallbacks are forbidden (`--locked`, or `UBLK_VM_LOCKED=1` for the whole tree of
/// processes, bisect candidates included).
pub fn locked() -> bool {
    matches!(
        std::env::var("UBLK_VM_LOCKED").as_deref(),
        Ok("1" | "true" | "yes")
    )
}

/// Sets `--locked` for this process and the processes it starts.
pub fn set_locked(on: bool) {
    if on {
        // Called first thing in a command, before any thread exists.
        std::env::set_var("UBLK_VM_LOCKED", "1");
    }
}

static RECORDED: Mutex<Vec<Inputs>> = Mutex::new(Vec::new());

/// Notes what a part was made from (for the reports); prints the fallback warning, once per
/// part and process.
pub fn record(inputs: &Inputs) {
    let mut all = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    if all.iter().any(|i| i == inputs) {
        return;
    }
    all.retain(|i| i.part != inputs.part);
    if !inputs.newer().is_empty() {
        eprintln!("xtask: warning: {}", inputs.line());
    }
    all.push(inputs.clone());
}

/// Every part recorded by this process so far.
pub fn recorded() -> Vec<Inputs> {
    let mut v = RECORDED.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // By part, not by the order a command happened to build them in: equal sessions record
    // equal inputs.
    v.sort_by(|a, b| a.part.cmp(&b.part));
    v
}

/// The lock a part follows, and how to renew it.
pub struct LockRef<'a> {
    pub part: String,
    pub path: &'a Path,
    pub upgrade: &'a str,
    /// The lock's `snapshot` time.
    pub snapshot: Option<&'a str>,
    /// A moving series: nothing is locked.
    pub moving: bool,
}

impl LockRef<'_> {
    pub fn shown(&self) -> String {
        let root = crate::util::root();
        self.path
            .strip_prefix(&root)
            .unwrap_or(self.path)
            .display()
            .to_string()
    }

    pub fn inputs(&self, debs: Vec<Used>) -> Inputs {
        Inputs {
            part: self.part.clone(),
            lock: self.shown(),
            upgrade: self.upgrade.to_string(),
            debs,
            moving: self.moving,
        }
    }

    /// The one error `--locked` gives for a package no source has any more.
    pub fn refusal(&self, d: &LockedDeb, apt: &Apt, why: &str) -> String {
        crate::util::could_not_test(format!(
            "{}: {}={} (locked in {}) is in neither the shared download cache ({}), {}, nor the snapshot archive ({why}); --locked forbids using a newer build: run `{}` to lock the current one, or drop --locked",
            self.part,
            d.package,
            d.version,
            self.shown(),
            cache::dir().display(),
            apt.describe(),
            self.upgrade
        ))
    }
}

/// Exactly `d`, from the first source that has it: Ok(Err(why)) when none does.
pub fn exact(apt: &Apt, lock: &LockRef, d: &LockedDeb) -> Result<Result<(PathBuf, Used), String>> {
    let used = |from: &str| Used {
        package: d.package.clone(),
        version: d.version.clone(),
        sha256: d.sha256.clone(),
        from: from.into(),
        instead_of: None,
    };
    if let Some(p) = cache::get(&d.sha256, d.size) {
        return Ok(Ok((p, used("cache"))));
    }
    let spec = format!("{}={}", d.package, d.version);
    let archive_why = match apt.has_version(&d.package, &d.version)? {
        true => match download(apt, &spec, d, "archive") {
            Ok(p) => return Ok(Ok((p, used("archive")))),
            Err(e) => e,
        },
        false => format!("{spec} is no longer in {}", apt.describe()),
    };
    match from_snapshot(lock, d) {
        Ok(p) => Ok(Ok((p, used("snapshot")))),
        Err(snap_why) => Ok(Err(format!("{archive_why}; snapshot: {snap_why}"))),
    }
}

/// Every `d` of a lock exactly, or (without `--locked`) the newest build of the same package
/// for those no source has any more: the files, the effective lock entries, and the record.
pub fn all(
    apt: &Apt,
    lock: &LockRef,
    debs: &[LockedDeb],
) -> Result<(Vec<PathBuf>, Vec<LockedDeb>, Inputs)> {
    if let Err(e) = prefetch(apt, debs) {
        eprintln!("xtask: {}: {e}; fetching one package at a time", lock.part);
    }
    let mut paths = Vec::new();
    let mut effective = Vec::new();
    let mut used = Vec::new();
    let mut told = false;
    for d in debs {
        let (p, u, e) = match exact(apt, lock, d)? {
            Ok((p, u)) => (p, u, d.clone()),
            Err(why) if locked() => return Err(lock.refusal(d, apt, &why)),
            Err(why) => {
                // Why the first one could not be had exactly; the warning names them all.
                if !std::mem::replace(&mut told, true) {
                    eprintln!("xtask: {}: {why}; taking the newest build", lock.part);
                }
                newest(apt, d)?
            }
        };
        paths.push(p);
        used.push(u);
        effective.push(e);
    }
    Ok((paths, effective, lock.inputs(used)))
}

/// The suite's current build of `d.package`, checked against the sha256 of the signed index.
pub fn newest(apt: &Apt, d: &LockedDeb) -> Result<(PathBuf, Used, LockedDeb)> {
    let now = crate::image::resolve::print_uri(apt, &d.package).map_err(|e| {
        format!(
            "{}={} is no longer in {} and no other build of it is either: {e}",
            d.package,
            d.version,
            apt.describe()
        )
    })?;
    let version = crate::image::resolve::version_of(&now.filename)?;
    let want = now.locked(&version);
    let p = match cache::get(&want.sha256, want.size) {
        Some(p) => p,
        None => download(
            apt,
            &format!("{}={version}", d.package),
            &want,
            "archive (newer than the lock)",
        )?,
    };
    let used = Used {
        package: want.package.clone(),
        version,
        sha256: want.sha256.clone(),
        from: "archive".into(),
        instead_of: Some(format!("{}={}", d.package, d.version)),
    };
    Ok((p, used, want))
}

/// `apt-get download SPEC` into a scratch directory, verified and moved into the cache.
pub fn download(apt: &Apt, spec: &str, d: &LockedDeb, from: &str) -> Result<PathBuf> {
    let scratch = cache::dir().join(format!(".dl-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    eprintln!("xtask: downloading {spec} from {} ...", apt.describe());
    let out = apt.download(&[spec.to_string()], &scratch);
    let result = out.and_then(|()| {
        let file = scratch.join(&d.filename);
        cache::put(&file, &meta(d, from))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Downloads, in one apt call, every `d` the shared cache lacks and the archive still has,
/// into the cache (each verified against its sha256). What it cannot get is left to `exact`.
pub fn prefetch(apt: &Apt, debs: &[LockedDeb]) -> Result<()> {
    let missing: Vec<&LockedDeb> = debs
        .iter()
        .filter(|d| cache::get(&d.sha256, d.size).is_none())
        .collect();
    if missing.len() < 2 {
        return Ok(());
    }
    let wanted: Vec<(String, String)> = missing
        .iter()
        .map(|d| (d.package.clone(), d.version.clone()))
        .collect();
    let known = apt.known(&wanted)?;
    let get: Vec<&&LockedDeb> = missing
        .iter()
        .filter(|d| known.contains(&(d.package.clone(), d.version.clone())))
        .collect();
    if get.is_empty() {
        return Ok(());
    }
    let scratch = cache::dir().join(format!(".dl-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    eprintln!(
        "xtask: downloading {} packages from {} ...",
        get.len(),
        apt.describe()
    );
    let specs: Vec<String> = get
        .iter()
        .map(|d| format!("{}={}", d.package, d.version))
        .collect();
    let result = apt.download(&specs, &scratch).and_then(|()| {
        for d in &get {
            cache::put(&scratch.join(&d.filename), &meta(d, "archive"))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn meta(d: &LockedDeb, from: &str) -> cache::Meta {
    cache::Meta {
        package: d.package.clone(),
        version: d.version.clone(),
        filename: d.filename.clone(),
        size: d.size,
        sha256: d.sha256.clone(),
        fetched_from: from.into(),
    }
}

/// Set once the snapshot archive failed to answer: later packages do not try it again.
static SNAPSHOT_DOWN: AtomicBool = AtomicBool::new(false);

/// `d` from the snapshot archive, by sha1 or by the lock's time and pool path.
fn from_snapshot(lock: &LockRef, d: &LockedDeb) -> Result<PathBuf, String> {
    let base = std::env::var("UBLK_VM_SNAPSHOT_URL").unwrap_or_else(|_| SNAPSHOT.into());
    let base = base.trim_end_matches('/');
    let mut urls = Vec::new();
    if let Some(sha1) = &d.sha1 {
        urls.push(format!("{base}/file/{sha1}"));
    }
    if let (Some(archive), Some(pool), Some(ts)) = (&d.archive, &d.pool, lock.snapshot) {
        urls.push(format!("{base}/archive/{archive}/{ts}/{pool}"));
    }
    if urls.is_empty() {
        return Err(format!(
            "{} records no snapshot address (locked before locks recorded one; `{}` records it)",
            lock.shown(),
            lock.upgrade
        ));
    }
    let mut why = String::new();
    for url in urls {
        if SNAPSHOT_DOWN.load(Ordering::Relaxed) {
            return Err(format!("{base} did not answer earlier in this run"));
        }
        match snapshot_get(&url, d) {
            Ok(p) => return Ok(p),
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// One snapshot download with apt's own HTTP client (`apt-helper download-file`, which checks
/// the sha256 as it goes, honours apt's proxy settings and gives up on a dead host at once).
fn snapshot_get(url: &str, d: &LockedDeb) -> Result<PathBuf, String> {
    let scratch = cache::dir().join(format!(".snap-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let file = scratch.join(&d.filename);
    eprintln!("xtask: fetching {}={} from {url} ...", d.package, d.version);
    let mut cmd = Command::new("/usr/lib/apt/apt-helper");
    if is_root() {
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args([
        "-o",
        "Acquire::http::Timeout=10",
        "-o",
        "Acquire::Retries=0",
    ])
    .arg("download-file")
    .arg(url)
    .arg(&file)
    .arg(format!("SHA256:{}", d.sha256));
    let out = procs::run(&mut cmd, SNAPSHOT_LIMIT, "apt-helper download-file");
    let result = match out {
        Ok(o) if o.status.success() => cache::put(&file, &meta(d, "snapshot")),
        Ok(o) => {
            let said = o
                .stderr
                .lines()
                .chain(o.stdout.lines())
                .find(|l| l.contains("E:") || l.contains("Err"))
                .unwrap_or("no reason given")
                .trim()
                .to_string();
            let missing =
                said.contains("404") || said.contains("Not Found") || said.contains("Hash Sum");
            if !missing {
                SNAPSHOT_DOWN.store(true, Ordering::Relaxed);
            }
            Err(said)
        }
        Err(e) => {
            SNAPSHOT_DOWN.store(true, Ordering::Relaxed);
            Err(e)
        }
    };
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A fallback remembered for a lock (by the lock's own bytes): the effective lock, and where
/// its packages came from.
#[derive(Debug, Serialize, Deserialize)]
pub struct Memo<T> {
    pub made_at: String,
    pub effective: T,
    pub inputs: Inputs,
}

impl<T> Memo<T> {
    /// The remembered packages, if the shared cache still holds every one of them (no
    /// archive is asked): their files, and the record with each marked as from the cache.
    pub fn cached(&self, debs: &[LockedDeb]) -> Option<(Vec<PathBuf>, Inputs)> {
        let paths: Option<Vec<PathBuf>> =
            debs.iter().map(|d| cache::get(&d.sha256, d.size)).collect();
        let mut inputs = self.inputs.clone();
        for u in &mut inputs.debs {
            u.from = "cache".into();
        }
        Some((paths?, inputs))
    }
}

pub fn memo_key(part: &str, lock_text: &str) -> String {
    crate::util::key_of(&[("part", part.as_bytes()), ("lock", lock_text.as_bytes())])
}

/// The remembered fallback for this lock, unless `--locked`; its record names this lock
/// (another checkout with the same lock may have made it).
pub fn load_memo<T: for<'de> Deserialize<'de>>(key: &str, lock: &LockRef) -> Option<Memo<T>> {
    if locked() {
        return None;
    }
    // A memo is a few KiB; anything larger is not one of ours.
    let text = crate::input::read_bounded(&cache::memo_path(key), 1 << 20).ok()?;
    let mut memo: Memo<T> = serde_json::from_str(&text).ok()?;
    memo.inputs = lock.inputs(std::mem::take(&mut memo.inputs.debs));
    Some(memo)
}

pub fn save_memo<T: Serialize>(key: &str, effective: &T, inputs: &Inputs) {
    if inputs.newer().is_empty() {
        return;
    }
    let memo = Memo {
        made_at: crate::util::rfc3339_now(),
        effective,
        inputs: inputs.clone(),
    };
    let text = serde_json::to_string_pretty(&memo).expect("memo serialises");
    let _ = crate::util::write_atomic(&cache::memo_path(key), text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(p: &str, v: &str, instead: Option<&str>) -> Used {
        Used {
            package: p.into(),
            version: v.into(),
            sha256: "0".repeat(64),
            from: "archive".into(),
            instead_of: instead.map(str::to_string),
        }
    }

    #[test]
    fn lines_say_as_locked_or_name_every_moved_package() {
        let mut i = Inputs {
            part: "tools layer".into(),
            lock: "vm-images/tools.lock".into(),
            upgrade: "cargo xtask tools-lock --upgrade".into(),
            debs: vec![u("fio", "3.39-1", None), u("bash", "5.2", None)],
            moving: false,
        };
        assert_eq!(
            i.line(),
            "tools layer: 2 packages as locked in vm-images/tools.lock (2 from archive)"
        );
        i.debs[1] = u("libc6", "2.41-12+deb13u5", Some("libc6=2.41-12+deb13u4"));
        i.debs.push(u(
            "linux-binary-7.2.14+deb14-cloud-amd64",
            "7.2.14-1",
            Some("linux-binary-7.2.13+deb14-cloud-amd64=7.2.13-1"),
        ));
        assert_eq!(
            i.line(),
            "tools layer: 2 of 3 packages newer than vm-images/tools.lock (libc6 2.41-12+deb13u4 → 2.41-12+deb13u5, \
linux-binary-7.2.13+deb14-cloud-amd64=7.2.13-1 → linux-binary-7.2.14+deb14-cloud-amd64 7.2.14-1); run cargo xtask tools-lock --upgrade"
        );
    }
}
