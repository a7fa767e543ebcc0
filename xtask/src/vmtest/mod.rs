//! Test executables in fresh VMs: one program or script per VM under a hard limit, kselftest
//! exit codes (`run`). vm-selftests runs the kernel's scripts through it, vm-test users'
//! programs, a Rust package's tests (`cargo`: built static, listed, one test per VM) and a Go
//! module's (`go`: the same with a locked Debian Go toolchain).

pub mod blktests;
pub mod cargo;
pub mod go;
pub mod run;
