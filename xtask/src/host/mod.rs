//! The host side xtask runs on: child processes that cannot outlive it (`procs`) and the host
//! packages it installs or asks for (`deps`).

pub mod deps;
pub mod procs;
