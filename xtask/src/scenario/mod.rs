//! YAML scenarios: the format (`model`), the runner, freeze-frames and reports.

pub mod evidence;
pub mod freeze;
pub mod lifecycle;
pub mod markdown;
pub mod merge;
pub mod model;
pub mod recovery;
pub mod report;
pub mod run;
pub mod session;
pub mod shard;
pub mod splat;
pub mod steps;

use std::path::{Path, PathBuf};

use crate::util::{root, Result};

/// scenarios/*.yaml, sorted.
pub fn all_files() -> Result<Vec<PathBuf>> {
    let dir = root().join("scenarios");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    Ok(v)
}

/// Resolves scenario names (or paths) to files; no names = all.
pub fn resolve(names: &[String]) -> Result<Vec<PathBuf>> {
    if names.is_empty() {
        return all_files();
    }
    let known = all_files()?;
    names
        .iter()
        .map(|n| {
            let p = Path::new(n);
            // A path (even one that is no regular file: loading it says what it is).
            if p.is_file() || n.contains('/') || n.ends_with(".yaml") || n.ends_with(".yml") {
                return Ok(p.to_path_buf());
            }
            known
                .iter()
                .find(|k| k.file_stem().is_some_and(|s| s == n.as_str()))
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<String> = known
                        .iter()
                        .filter_map(|k| k.file_stem().map(|s| s.to_string_lossy().into_owned()))
                        .collect();
                    crate::util::bad_input(format!(
                        "no scenario named {n:?}; known: {}",
                        names.join(", ")
                    ))
                })
        })
        .collect()
}
