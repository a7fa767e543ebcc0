//! The download cache shared by every checkout of the user: each `.deb` an image was built
//! from, stored under its sha256 in `$UBLK_VM_CACHE` (default `$XDG_CACHE_HOME/ublk-vm`, else
//! `~/.cache/ublk-vm`). Clones, bisect worktrees and CI caches all read it; a checkout's own
//! `target/` keeps only what is built from it (kernel parts, layers, images).
//!
//! ```text
//! <cache>/debs/<sha256>.deb    the package, verified by sha256 on every use
//! <cache>/debs/<sha256>.json   what it is (package, version, file name, where it came from)
//! <cache>/resolved/<key>.json  how a lock was last resolved when it could not be had exactly
//! ```
//!
//! Entries are written to a temporary name and renamed into place (never half-written); a
//! damaged entry is named, removed and fetched again. The cache is bounded
//! (`UBLK_VM_CACHE_MAX`, default 8 GiB): after every addition the least recently used
//! entries go until it fits. `cargo xtask cache list|prune` shows and trims it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::util::{sha256_file, write_atomic, Result};

/// Default size bound of the cache.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;
/// No single entry may be larger than this (linux-source is ~160 MB).
const ENTRY_MAX_BYTES: u64 = 2 << 30;

/// What a cached file is, beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// Where it was first fetched from: `archive`, `snapshot` or `archive (newer than the lock)`.
    pub fetched_from: String,
}

/// The cache directory.
pub fn dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("UBLK_VM_CACHE") {
        return absolute(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return absolute(d).join("ublk-vm");
    }
    match var("HOME") {
        Some(h) => h.join(".cache/ublk-vm"),
        None => crate::util::target_dir().join("ublk-vm-cache"),
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    }
}

fn debs() -> PathBuf {
    dir().join("debs")
}

/// The size bound in bytes (`UBLK_VM_CACHE_MAX`, e.g. 4G or 500M).
pub fn max_bytes() -> Result<u64> {
    match std::env::var("UBLK_VM_CACHE_MAX") {
        Ok(v) if !v.is_empty() => parse_bytes(&v)
            .ok_or_else(|| format!("UBLK_VM_CACHE_MAX={v:?}: expected a size such as 8G or 500M")),
        _ => Ok(DEFAULT_MAX_BYTES),
    }
}

/// "8G", "500M", "4096" (bytes).
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..split].parse().ok()?;
    let mult: u64 = match t[split..].to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// The cached file with this content, verified now; a damaged one is removed (and named).
pub fn get(sha256: &str, size: u64) -> Option<PathBuf> {
    if !valid_sha256(sha256) {
        return None;
    }
    let path = debs().join(format!("{sha256}.deb"));
    let meta = std::fs::metadata(&path).ok()?;
    let ok = meta.len() == size
        && sha256_file(&path).is_ok_and(|(sum, len)| sum == sha256 && len == size);
    if !ok {
        eprintln!(
            "xtask: the shared download cache's {} is damaged (not the sha256 or size it is filed under); fetching it again",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("json"));
        return None;
    }
    // Recently used entries are the last to be pruned.
    let _ = std::fs::File::options()
        .append(true)
        .open(&path)
        .and_then(|f| f.set_modified(SystemTime::now()));
    Some(path)
}

/// Moves (or copies) a downloaded file into the cache after checking it is what `meta`
/// says; returns its cached path. Prunes the cache to its bound afterwards.
pub fn put(file: &Path, meta: &Meta) -> Result<PathBuf> {
    let (sum, size) = sha256_file(file)?;
    if sum != meta.sha256 || size != meta.size {
        return Err(format!(
            "{} has sha256 {sum} ({size} bytes), not the {} ({} bytes) it should have; refusing it",
            meta.filename, meta.sha256, meta.size
        ));
    }
    if size > ENTRY_MAX_BYTES {
        return Err(format!(
            "{} is {size} bytes, over the cache's per-file limit of {ENTRY_MAX_BYTES}",
            meta.filename
        ));
    }
    let dir = debs();
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let dest = dir.join(format!("{sum}.deb"));
    let tmp = dir.join(format!(".tmp-{sum}-{}", std::process::id()));
    if std::fs::rename(file, &tmp).is_err() {
        std::fs::copy(file, &tmp)
            .map_err(|e| format!("copy {} into {}: {e}", file.display(), dir.display()))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| format!("rename into {}: {e}", dest.display()))?;
    let text = serde_json::to_string_pretty(meta).expect("meta serialises");
    write_atomic(&dest.with_extension("json"), text.as_bytes())?;
    let max = max_bytes()?;
    prune(max, Some(&dest))?;
    Ok(dest)
}

/// One cached file.
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub size: u64,
    pub used: SystemTime,
    pub meta: Option<Meta>,
}

/// Every cached file, least recently used first.
pub fn list() -> Result<Vec<Entry>> {
    let dir = debs();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten().take(100_000) {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "deb") {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let meta = std::fs::read_to_string(path.with_extension("json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        out.push(Entry {
            path,
            size: m.len(),
            used: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta,
        });
    }
    out.sort_by_key(|e| e.used);
    Ok(out)
}

/// Removes least recently used files (never `keep`) until the cache holds at most
/// `max_bytes`; also removes leftovers of interrupted writes older than an hour. Returns
/// (files removed, bytes freed).
pub fn prune(max_bytes: u64, keep: Option<&Path>) -> Result<(usize, u64)> {
    let entries = list()?;
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let (mut removed, mut freed) = (0, 0);
    for e in &entries {
        if total <= max_bytes {
            break;
        }
        if Some(e.path.as_path()) == keep {
            continue;
        }
        if std::fs::remove_file(&e.path).is_ok() {
            let _ = std::fs::remove_file(e.path.with_extension("json"));
            total -= e.size;
            removed += 1;
            freed += e.size;
        }
    }
    for e in std::fs::read_dir(debs()).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if e.file_name().to_string_lossy().starts_with(".tmp-") && old {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok((removed, freed))
}

/// A remembered resolution of a lock (`resolved/<key>.json`).
pub fn memo_path(key: &str) -> PathBuf {
    dir().join("resolved").join(format!("{key}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("500M"), Some(500 << 20));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("1T"), None);
        assert_eq!(parse_bytes("99999999999999999999G"), None);
    }
}
