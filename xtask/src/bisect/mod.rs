//! Flaky-aware bisection (`cargo xtask bisect`) that tells failures apart: the change-point
//! model (`model`), the decision rule (`policy`), failure signatures (`signature`), the runs
//! and what they mean (`evidence`), worktrees and parallel runs (`runner`) whose builds reuse
//! the repository's compiled third-party crates (`seed`), and the in-process
//! benchmark against git-bayesect's rule and fixed-20 (`bench`). The command is `cmd/bisect.rs`.

pub mod bench;
pub mod evidence;
pub mod model;
pub mod policy;
pub mod runner;
pub mod seed;
pub mod signature;

#[cfg(test)]
mod tests;
