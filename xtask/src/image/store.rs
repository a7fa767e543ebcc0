//! The content-addressed cache under `target/vm-images/`.
//!
//! Every cached entry is a directory named by the hash of its inputs, built in a temporary
//! directory and renamed into place (never half-written), with a `manifest.json` that lists
//! the sha256 and size of every file. Entries are verified before use; a damaged entry is
//! reported, removed and rebuilt, never booted. One process builds at a time (flock).
//!
//! Verification does not stop at the first use: `Verified` keeps each file's stat stamp from
//! the moment its hash was checked, and `recheck` (before every boot) re-hashes any file whose
//! stamp moved — any write changes ctime, so an unchanged stamp means unchanged content.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::util::{sha256_file, target_dir, write_atomic, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileSum {
    pub sha256: String,
    pub size: u64,
}

pub fn dir() -> PathBuf {
    target_dir().join("vm-images")
}

/// Exclusive lock on the cache, held while building. Bounded wait.
pub struct StoreLock {
    _file: std::fs::File,
}

pub fn lock(limit: Duration) -> Result<StoreLock> {
    std::fs::create_dir_all(dir()).map_err(|e| format!("create {}: {e}", dir().display()))?;
    let path = dir().join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(StoreLock { _file: file });
        }
        if start.elapsed() > limit {
            return Err(format!(
                "another xtask has held {} for over {} s; if none is running, delete the file",
                path.display(),
                limit.as_secs()
            ));
        }
        if !told {
            eprintln!("xtask: waiting for another xtask that is building the guest image ...");
            told = true;
        }
        if let Some(sig) = crate::host::procs::interrupted() {
            return Err(format!(
                "interrupted by {}",
                crate::host::procs::signal_name(sig)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sums of every regular file below `root` (relative paths), except manifest.json.
pub fn sum_tree(root: &Path) -> Result<BTreeMap<String, FileSum>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| format!("read {}: {e}", d.display()))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "manifest.json") {
                let (sha256, size) = sha256_file(&p)?;
                out.insert(
                    p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                    FileSum { sha256, size },
                );
            }
        }
    }
    Ok(out)
}

/// Checks every listed file; returns a description of the first problem.
pub fn verify(root: &Path, files: &BTreeMap<String, FileSum>) -> std::result::Result<(), String> {
    if files.is_empty() {
        return Err("manifest lists no files".into());
    }
    for (rel, want) in files {
        let p = root.join(rel);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{rel}: {e}"))?;
        if meta.len() != want.size {
            return Err(format!(
                "{rel}: size {} but the manifest says {}",
                meta.len(),
                want.size
            ));
        }
        let (sum, _) = sha256_file(&p)?;
        if sum != want.sha256 {
            return Err(format!(
                "{rel}: sha256 {sum} but the manifest says {}",
                want.sha256
            ));
        }
    }
    Ok(())
}

/// A file's identity and times when its content was last hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

pub fn stamp(path: &Path) -> Result<Stamp> {
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    })
}

/// The files of a verified cache entry (manifest.json included, by its bytes), with the stamps
/// they had when verified.
#[derive(Clone, Debug)]
pub struct Verified {
    dir: PathBuf,
    files: Vec<(String, FileSum, Stamp)>,
}

impl Verified {
    /// Nothing verified (tests that never boot).
    #[cfg(test)]
    pub fn nothing() -> Verified {
        Verified {
            dir: PathBuf::new(),
            files: Vec::new(),
        }
    }

    fn capture(dir: &Path, files: &BTreeMap<String, FileSum>) -> Result<Verified> {
        let mut all: Vec<(String, FileSum)> =
            files.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (sha256, size) = sha256_file(&dir.join("manifest.json"))?;
        all.push(("manifest.json".into(), FileSum { sha256, size }));
        let files = all
            .into_iter()
            .map(|(rel, sum)| Ok((rel.clone(), sum, stamp(&dir.join(&rel))?)))
            .collect::<Result<_>>()?;
        Ok(Verified {
            dir: dir.to_path_buf(),
            files,
        })
    }

    /// Err names the first file whose content differs from what was verified.
    pub fn recheck(&self) -> std::result::Result<(), String> {
        for (rel, sum, was) in &self.files {
            let p = self.dir.join(rel);
            if stamp(&p).as_ref() == Ok(was) {
                continue;
            }
            let (now, size) = sha256_file(&p)?;
            if now != sum.sha256 || size != sum.size {
                return Err(format!(
                    "{} changed after it was verified (sha256 {} instead of {})",
                    p.display(),
                    &now[..16],
                    &sum.sha256[..16]
                ));
            }
        }
        Ok(())
    }
}

/// Builds (or reuses) a content-addressed directory `<parent>/<key>`. `build` fills a fresh
/// temporary directory and returns the manifest (without file sums; they are added here).
/// `check` vets a loaded manifest's own fields (e.g. that its hash covers its command line).
pub fn cached_dir<M>(
    parent: &Path,
    key: &str,
    what: &str,
    check: impl Fn(&M) -> std::result::Result<(), String>,
    build: impl FnOnce(&Path) -> Result<M>,
) -> Result<(PathBuf, M, Verified)>
where
    M: Serialize + for<'de> Deserialize<'de> + HasFiles,
{
    let final_dir = parent.join(key);
    let manifest_path = final_dir.join("manifest.json");
    if manifest_path.exists() {
        let loaded = std::fs::read_to_string(&manifest_path)
            .ok()
            .and_then(|t| serde_json::from_str::<M>(&t).ok());
        match loaded {
            Some(m) => match verify(&final_dir, m.files()).and_then(|()| check(&m)) {
                Ok(()) => {
                    let v = Verified::capture(&final_dir, m.files())?;
                    return Ok((final_dir, m, v));
                }
                Err(why) => eprintln!(
                    "xtask: cached {what} {} is damaged ({why}); rebuilding it",
                    final_dir.display()
                ),
            },
            None => eprintln!(
                "xtask: cached {what} {} has an unreadable manifest; rebuilding it",
                final_dir.display()
            ),
        }
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .map_err(|e| format!("remove {}: {e}", final_dir.display()))?;
    }
    let tmp = parent.join(format!(".tmp-{key}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| format!("remove {}: {e}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    let result = build(&tmp).and_then(|mut m| {
        *m.files_mut() = sum_tree(&tmp)?;
        let text = serde_json::to_string_pretty(&m).map_err(|e| e.to_string())?;
        write_atomic(&tmp.join("manifest.json"), text.as_bytes())?;
        std::fs::rename(&tmp, &final_dir)
            .map_err(|e| format!("rename {} to {}: {e}", tmp.display(), final_dir.display()))?;
        Ok(m)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let m = result?;
    check(&m).map_err(|e| format!("the freshly built {what} fails its own check: {e}"))?;
    let v = Verified::capture(&final_dir, m.files())?;
    Ok((final_dir, m, v))
}

pub trait HasFiles {
    fn files(&self) -> &BTreeMap<String, FileSum>;
    fn files_mut(&mut self) -> &mut BTreeMap<String, FileSum>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct M {
        files: BTreeMap<String, FileSum>,
    }
    impl HasFiles for M {
        fn files(&self) -> &BTreeMap<String, FileSum> {
            &self.files
        }
        fn files_mut(&mut self) -> &mut BTreeMap<String, FileSum> {
            &mut self.files
        }
    }

    #[test]
    fn builds_once_then_detects_damage_and_rebuilds() {
        let parent = std::env::temp_dir().join(format!("xtask-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let mut builds = 0;
        let get = |builds: &mut i32| {
            cached_dir(
                &parent,
                "k1",
                "test",
                |_| Ok(()),
                |tmp| {
                    *builds += 1;
                    std::fs::write(tmp.join("a"), b"hello world").unwrap();
                    std::fs::create_dir(tmp.join("sub")).unwrap();
                    std::fs::write(tmp.join("sub/b"), b"second").unwrap();
                    Ok(M {
                        files: BTreeMap::new(),
                    })
                },
            )
            .unwrap()
        };
        let (d, m, v) = get(&mut builds);
        v.recheck().unwrap();
        assert_eq!(builds, 1);
        assert_eq!(m.files.len(), 2);
        get(&mut builds);
        assert_eq!(builds, 1, "unchanged entry must be reused");
        // Truncation is caught by size, same-size corruption by sha256.
        std::fs::write(d.join("a"), b"hello").unwrap();
        get(&mut builds);
        assert_eq!(builds, 2);
        std::fs::write(d.join("sub/b"), b"SECOND").unwrap();
        get(&mut builds);
        assert_eq!(builds, 3);
        std::fs::remove_file(d.join("a")).unwrap();
        get(&mut builds);
        assert_eq!(builds, 4);
        // A file rewritten after verification is caught before use, even at the same size;
        // one merely touched (same content) is not.
        std::fs::write(d.join("a"), b"hello world").unwrap();
        v.recheck().unwrap();
        std::fs::write(d.join("a"), b"hello WORLD").unwrap();
        assert!(v
            .recheck()
            .unwrap_err()
            .contains("changed after it was verified"));
        std::fs::write(d.join("a"), b"hello world").unwrap();
        // So is a manifest edited by hand.
        let text = std::fs::read_to_string(d.join("manifest.json")).unwrap();
        std::fs::write(
            d.join("manifest.json"),
            text.replace("\"size\": 6", "\"size\": 7"),
        )
        .unwrap();
        assert!(v.recheck().unwrap_err().contains("manifest.json changed"));
        std::fs::write(d.join("manifest.json"), text).unwrap();
        // A manifest that fails its own check is not used: it is removed and rebuilt.
        let e = cached_dir::<M>(
            &parent,
            "k1",
            "test",
            |_| Err("bad".into()),
            |_| Err("rebuilding".into()),
        )
        .unwrap_err();
        assert_eq!(e, "rebuilding");
        // A failed build leaves nothing behind.
        let e =
            cached_dir::<M>(&parent, "k2", "test", |_| Ok(()), |_| Err("boom".into())).unwrap_err();
        assert_eq!(e, "boom");
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
