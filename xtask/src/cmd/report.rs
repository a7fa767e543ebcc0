//! `cargo xtask report merge DIR... [--out DIR] [--evidence] [--evidence-url URL]`: the
//! summaries of several sessions (a CI matrix's shards and kernels) as one report —
//! summary.json, junit.xml and summary.md (for `$GITHUB_STEP_SUMMARY`) — with flakiness and
//! the verdict recomputed over every run.
//!
//! Exit codes as `vm-e2e`: 0 every run passed or skipped and no shard is missing; 1 a run
//! failed or timed out; 125 none failed but some could not be tested or a shard is missing.

use std::path::PathBuf;

use crate::runs::{RunDir, EXIT_INFRA};
use crate::scenario::{merge, session, shard};
use crate::util::Result;

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
    let mut merged = merge::merge(inputs)?;
    let out = match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => RunDir::create("merged")?.path,
    };
    if a.evidence {
        for missing in merge::copy_evidence(&mut merged, &a.inputs, &out)? {
            eprintln!("report merge: no evidence for {missing}");
        }
    }
    let url = a.evidence_url.clone().or_else(github_run_url);
    let written = session::write_reports(&merged, &out, url.as_deref());
    eprintln!("report merge: {n} summaries, {} runs", merged.runs.len());
    session::print_summary(&merged, &written);
    let gaps = shard::gaps(&merged.head.shards);
    for g in &gaps {
        println!("report merge: {g}: its runs were not tested");
    }
    if let Err(e) = written {
        return Err(format!("the merged reports could not be written: {e}"));
    }
    Ok(match session::exit_code(&merged.runs) {
        0 if !gaps.is_empty() => EXIT_INFRA,
        code => code,
    })
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
