//! The evidence `report merge --evidence` carries: the run directories of the runs that did
//! not pass, copied into `OUT/runs/<run id>/`. The summaries may come from other jobs (CI
//! artifacts a pull request can shape), so every path in them is hostile:
//!
//! - a run's directory is looked for only **inside the input tree its summary.json was found
//!   in** (the recorded path when it lies there, else `runs/<name>` beside the summary), and
//!   reached without following a symlink or a `..`;
//! - only directories and regular files are copied (a symlink, FIFO or device is skipped), each
//!   file opened without following a link or blocking, and bounded: per file, per run, in all;
//! - everything is written inside `OUT` only, into directories this merge created, with
//!   files that must not exist yet (no symlink there is followed either);
//! - whatever is left out is a note in the report, never the end of the merge.
//!
//! Run directories are named by run id (`Outcome::id`: scenario, server, kernel and run
//! number, unique in a merge), never by the timestamp name they had on their machine.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::outcome::Outcome;
use super::report::Session;
use crate::runs::Verdict;
use crate::util::Result;

/// Bounds of what is copied: one file, one run, the whole merge (bytes and files), depth.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
pub const MAX_RUN_BYTES: u64 = 512 << 20;
pub const MAX_TOTAL_BYTES: u64 = 2 << 30;
const MAX_RUN_FILES: usize = 10_000;
const MAX_TOTAL_FILES: usize = 100_000;
pub const MAX_DEPTH: usize = 8;
/// Most notes kept (the rest are counted in the last).
const MAX_NOTES: usize = 500;

/// Where a run's summary.json was found: the input tree (as given on the command line,
/// canonical) and the summary's directory inside it.
#[derive(Clone, Debug)]
pub struct Origin {
    pub root: PathBuf,
    pub summary_dir: PathBuf,
}

/// What is left of the budgets.
struct Budget {
    total_bytes: u64,
    total_files: usize,
}

/// What one run's copy is allowed and what it left out.
struct RunCopy<'a> {
    budget: &'a mut Budget,
    bytes: u64,
    files: usize,
    notes: Vec<String>,
    write_error: Option<String>,
}

/// Copies the evidence of every run that did not pass into `out/runs/<id>` and points the
/// session at the copies; `origin` says where each run's summary was found. What could not
/// be found or copied becomes a note in the session. Errors only for an unusable `out`.
pub fn copy(
    s: &mut Session,
    origin: impl Fn(&Outcome) -> Option<Origin>,
    out: &Path,
) -> Result<()> {
    let runs_out = prepare_out(out)?;
    let mut budget = Budget {
        total_bytes: MAX_TOTAL_BYTES,
        total_files: MAX_TOTAL_FILES,
    };
    let mut notes = Vec::new();
    for o in s.runs.iter_mut() {
        if matches!(o.verdict, Verdict::Pass | Verdict::Skip) {
            continue;
        }
        let who = format!("{} #{}", o.label(), o.run);
        let recorded = std::mem::take(&mut o.run_dir);
        let freeze = o.freeze_frame.take();
        if recorded.as_os_str().is_empty() {
            continue;
        }
        let Some(src) = origin(o).and_then(|g| locate(&recorded, &g)) else {
            notes.push(format!(
                "{who}: no evidence: {} is not a run directory inside its input",
                recorded.display()
            ));
            continue;
        };
        let dest = runs_out.join(o.id());
        let mut copy = RunCopy {
            budget: &mut budget,
            bytes: 0,
            files: 0,
            notes: Vec::new(),
            write_error: None,
        };
        copy.fresh_dir(&dest);
        if copy.write_error.is_none() {
            copy.tree(&src, &dest, 0);
        }
        notes.extend(copy.notes.iter().map(|n| format!("{who}: {n}")));
        if let Some(e) = &copy.write_error {
            super::report::mark_incomplete(
                o,
                &format!("the merge could not write its evidence: {e}"),
            );
        }
        o.freeze_frame = freeze
            .as_deref()
            .and_then(|f| f.strip_prefix(&recorded).ok())
            .map(|rest| dest.join(rest))
            .filter(|f| f.symlink_metadata().is_ok_and(|m| m.is_file()));
        o.run_dir = dest;
    }
    if notes.len() > MAX_NOTES {
        let more = notes.len() - MAX_NOTES;
        notes.truncate(MAX_NOTES);
        notes.push(format!("... and {more} more notes"));
    }
    s.notes.extend(notes);
    Ok(())
}

/// `out/runs`, a real directory (created when absent); `out` must be one already.
fn prepare_out(out: &Path) -> Result<PathBuf> {
    let refuse = |p: &Path, what: &str| {
        crate::util::bad_input(format!(
            "{}: {what}; give --out a directory of its own (the merge writes only inside it)",
            p.display()
        ))
    };
    match out.symlink_metadata() {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(refuse(out, "is a symlink or not a directory")),
        Err(e) => return Err(refuse(out, &e.to_string())),
    }
    let runs = out.join("runs");
    match runs.symlink_metadata() {
        Ok(m) if m.is_dir() => Ok(runs),
        Ok(_) => Err(refuse(&runs, "is a symlink or not a directory")),
        Err(_) => {
            std::fs::create_dir(&runs).map_err(|e| {
                crate::util::could_not_test(format!("create {}: {e}", runs.display()))
            })?;
            Ok(runs)
        }
    }
}

/// The run directory `recorded` names, if it is a real directory inside the origin's tree:
/// the recorded path itself when it lies in the tree, else `runs/<name>` beside the summary
/// (how a merged artifact keeps them) or `<name>` beside the summary's directory (a runs
/// directory given whole).
fn locate(recorded: &Path, g: &Origin) -> Option<PathBuf> {
    if let Ok(rel) = recorded.strip_prefix(&g.root) {
        if let Some(p) = real_dir_within(&g.root, rel) {
            return Some(p);
        }
    }
    let name = recorded.file_name()?;
    let rel_summary = g.summary_dir.strip_prefix(&g.root).ok()?;
    let mut candidates = vec![rel_summary.join("runs").join(name)];
    if let Some(parent) = rel_summary.parent() {
        candidates.push(parent.join(name));
    }
    candidates
        .iter()
        .find_map(|rel| real_dir_within(&g.root, rel))
}

/// `root/rel` when `rel` is only plain names and every step is a real directory (no
/// symlink, no `..`, no absolute part).
fn real_dir_within(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = root.to_path_buf();
    let mut depth = 0;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return None;
        };
        at.push(name);
        depth += 1;
        let m = at.symlink_metadata().ok()?;
        if !m.is_dir() || depth > 2 * MAX_DEPTH {
            return None;
        }
    }
    (depth > 0).then_some(at)
}

impl RunCopy<'_> {
    /// `dest` as a new, empty directory (an older copy of the same run is replaced).
    fn fresh_dir(&mut self, dest: &Path) {
        match dest.symlink_metadata() {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(dest);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(dest);
            }
            Err(_) => {}
        }
        if let Err(e) = std::fs::create_dir(dest) {
            self.write_error = Some(format!("create {}: {e}", dest.display()));
        }
    }

    fn note(&mut self, n: String) {
        if self.notes.len() < 50 {
            self.notes.push(n);
        }
    }

    fn tree(&mut self, src: &Path, dest: &Path, depth: usize) {
        let Ok(entries) = std::fs::read_dir(src) else {
            self.note(format!("{}: cannot be read", src.display()));
            return;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if self.write_error.is_some() {
                return;
            }
            let (from, to) = (e.path(), dest.join(e.file_name()));
            let rel = from.file_name().map(PathBuf::from).unwrap_or_default();
            // DirEntry::file_type does not follow a symlink: a link is seen as one.
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if depth + 1 > MAX_DEPTH {
                    self.note(format!(
                        "{}: nested deeper than {MAX_DEPTH} directories; not copied",
                        rel.display()
                    ));
                    continue;
                }
                if let Err(err) = std::fs::create_dir(&to) {
                    self.write_error = Some(format!("create {}: {err}", to.display()));
                    return;
                }
                self.tree(&from, &to, depth + 1);
            } else if ft.is_file() {
                self.file(&from, &to);
            } else {
                let what = if ft.is_symlink() {
                    "a symlink"
                } else {
                    "not a regular file"
                };
                self.note(format!("{}: {what}; not copied", from.display()));
            }
        }
    }

    fn file(&mut self, from: &Path, to: &Path) {
        let (mut f, len) = match open_no_follow(from) {
            Ok(v) => v,
            Err(e) => {
                self.note(format!("{}: {e}; not copied", from.display()));
                return;
            }
        };
        let over = if len > MAX_FILE_BYTES {
            Some(format!(
                "the {} MiB bound for one file",
                MAX_FILE_BYTES >> 20
            ))
        } else if self.bytes + len > MAX_RUN_BYTES || self.files >= MAX_RUN_FILES {
            Some(format!(
                "the bound for one run ({} MiB, {MAX_RUN_FILES} files)",
                MAX_RUN_BYTES >> 20
            ))
        } else if len > self.budget.total_bytes || self.budget.total_files == 0 {
            Some(format!(
                "the bound for the whole merge ({} GiB, {MAX_TOTAL_FILES} files)",
                MAX_TOTAL_BYTES >> 30
            ))
        } else {
            None
        };
        if let Some(bound) = over {
            self.note(format!(
                "{}: {len} bytes, over {bound}; not copied",
                from.display()
            ));
            return;
        }
        match write_new(to, &mut f, len) {
            Ok(n) => {
                self.bytes += n;
                self.files += 1;
                self.budget.total_bytes -= n.min(self.budget.total_bytes);
                self.budget.total_files -= 1;
            }
            Err(e) => {
                let _ = std::fs::remove_file(to);
                self.write_error = Some(format!("write {}: {e}", to.display()));
            }
        }
    }
}

/// Opens a regular file without following a symlink or blocking; its size.
fn open_no_follow(p: &Path) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((f, m.len()))
}

/// Writes at most `len` bytes of `src` into the new file `to` (never an existing file or a
/// link); the bytes written.
fn write_new(to: &Path, src: &mut std::fs::File, len: u64) -> std::io::Result<u64> {
    let mut out = crate::util::create_new(to)?;
    std::io::copy(&mut src.take(len), &mut out)
}
