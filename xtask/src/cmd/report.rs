//! `cargo xtask report merge DIR... [--out DIR] [--evidence] [--evidence-url URL]`: the
//! summaries of several sessions (a CI matrix's shards and kernels) as one report —
//! summary.json, junit.xml and summary.md (for `$GITHUB_STEP_SUMMARY`) — with flakiness and
//! the verdict recomputed over every run.
//!
//! Exit codes as `vm-e2e`: 0 every run passed or skipped and no shard is missing; 1 a run
//! failed or timed out; 2 an input refused (not a summary, a hostile or over-bound one, two
//! sessions of different commits, a run twice, an --out that is a symlink); 125 none failed
//! but some could not be tested, a shard is missing, or the reports could not be written.
//!
//! The inputs may be other jobs' artifacts: see `session::evidence` for what is trusted.

use std::path::{Path, PathBuf};

use crate::runs::{RunDir, EXIT_INFRA};
use crate::session::{evidence, merge, pool, shard};
use crate::text::term;
use crate::util::{bad_input, could_not_test, Result};

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Merge sessions' summary.json (files, session directories, or directories holding them)
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// summary.json files, session directories, or directories searched for them
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Where the merged reports go (default: a new `<time>-merged` under the runs directory)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Copy the run directories of the runs that did not pass into OUT/runs/
    #[arg(long)]
    pub evidence: bool,
    /// Link every evidence directory in summary.md to this URL (default in GitHub Actions:
    /// the workflow run's page, which lists its artifacts)
    #[arg(long)]
    pub evidence_url: Option<String>,
}

pub fn run(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Merge(a) => run_merge(a),
    }
}

fn run_merge(a: MergeArgs) -> Result<i32> {
    let inputs = merge::load(&a.inputs)?;
    let n = inputs.len();
    let origins = merge::origins(&inputs);
    let mut merged = merge::merge(inputs)?;
    let out = output_dir(a.out.as_deref())?;
    if a.evidence {
        evidence::copy(
            &mut merged,
            |o| origins.get(&merge::key_of(o)).cloned(),
            &out,
        )?;
        for note in &merged.notes {
            eprintln!("report merge: evidence: {}", term(note));
        }
    }
    let url = a.evidence_url.clone().or_else(github_run_url);
    let written = pool::write_reports(&merged, &out, url.as_deref());
    eprintln!("report merge: {n} summaries, {} runs", merged.runs.len());
    pool::print_summary(&merged, &written);
    let gaps = shard::gaps(&merged.head.shards);
    for g in &gaps {
        println!("report merge: {}: its runs were not tested", term(g));
    }
    if let Err(e) = written {
        return Err(could_not_test(format!(
            "the merged reports could not be written: {e}"
        )));
    }
    Ok(match crate::session::report::exit_code(&merged.runs) {
        0 if !gaps.is_empty() => EXIT_INFRA,
        code => code,
    })
}

/// `--out` (created when absent; a symlink is refused: the merge writes only inside a
/// directory of its own), or a new `<time>-merged` under the runs directory.
fn output_dir(out: Option<&Path>) -> Result<PathBuf> {
    let Some(dir) = out else {
        return Ok(RunDir::create("merged").map_err(could_not_test)?.path);
    };
    if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(bad_input(format!(
            "--out {}: is a symlink or not a directory; give a directory of its own",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| could_not_test(format!("create {}: {e}", dir.display())))?;
    Ok(dir.to_path_buf())
}

/// `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID` when all are set.
fn github_run_url() -> Option<String> {
    let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    Some(format!(
        "{}/{}/actions/runs/{}",
        v("GITHUB_SERVER_URL")?,
        v("GITHUB_REPOSITORY")?,
        v("GITHUB_RUN_ID")?
    ))
}
