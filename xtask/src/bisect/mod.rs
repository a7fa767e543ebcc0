//! Flaky-aware bisection (`cargo xtask bisect`): the decision rule in `bayes`, the git and
//! test plumbing in `cmd/bisect.rs`.

pub mod bayes;
