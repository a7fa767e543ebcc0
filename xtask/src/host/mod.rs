//! The host side xtask runs on: child processes that cannot outlive it (`procs`), the host
//! packages it installs or asks for (`deps`), and the checkout's commit (`git`).

pub mod deps;
pub mod git;
pub mod procs;
