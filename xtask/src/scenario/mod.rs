//! YAML scenarios: the format (`model`), the steps, one run's rules (`run`), freeze-frames.

pub mod model;
pub mod recovery;
pub mod run;
pub mod runner;
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

/// Resolves scenario names (or paths) to files; no names = all. A word that names no
/// scenario file but a group (a scenario's `tags:`) stands for every scenario of the group.
pub fn resolve(names: &[String]) -> Result<Vec<PathBuf>> {
    if names.is_empty() {
        return all_files();
    }
    let known = all_files()?;
    let mut out = Vec::new();
    for n in names {
        let p = Path::new(n);
        // A path (even one that is no regular file: loading it says what it is).
        if p.is_file() || n.contains('/') || n.ends_with(".yaml") || n.ends_with(".yml") {
            out.push(p.to_path_buf());
            continue;
        }
        if let Some(k) = known
            .iter()
            .find(|k| k.file_stem().is_some_and(|s| s == n.as_str()))
        {
            out.push(k.clone());
            continue;
        }
        let groups = groups()?;
        match groups.get(n) {
            Some(members) => {
                let new: Vec<PathBuf> = members
                    .iter()
                    .filter(|m| !out.contains(m))
                    .cloned()
                    .collect();
                out.extend(new);
            }
            None => {
                let names: Vec<String> = known
                    .iter()
                    .filter_map(|k| k.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .collect();
                let groups: Vec<&str> = groups.keys().map(String::as_str).collect();
                return Err(crate::util::bad_input(format!(
                    "no scenario or group named {n:?}; scenarios: {}; groups: {}",
                    names.join(", "),
                    groups.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The shipped scenarios' groups: tag → the files tagged with it, sorted.
pub fn groups() -> Result<std::collections::BTreeMap<String, Vec<PathBuf>>> {
    let mut groups: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for f in all_files()? {
        let sc = model::Scenario::load(&f)?;
        for t in sc.tags {
            groups.entry(t).or_default().push(f.clone());
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_group_name_stands_for_its_members_once_each() {
        let ff = resolve(&["freeze-frame".into()]).unwrap();
        assert_eq!(stems(&ff), ["stalled-tag", "stopped-server"]);
        let both = resolve(&["stalled-tag".into(), "freeze-frame".into()]).unwrap();
        assert_eq!(
            stems(&both),
            ["stalled-tag", "stopped-server"],
            "no duplicate"
        );
        let g = groups().unwrap();
        assert!(
            g.contains_key("recovery") && g.contains_key("data"),
            "{g:?}"
        );
        let e = resolve(&["no-such".into()]).unwrap_err();
        assert!(e.contains("groups: ") && e.contains("freeze-frame"), "{e}");
    }
}
